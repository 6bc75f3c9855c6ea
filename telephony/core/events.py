"""Call events shared by every port driver.  Pure: frozen dataclasses, no I/O.

A call that reaches a port becomes one :class:`CallArrival`, whatever the driver (SIP, SCCP,
analog, SMDI or the loopback test port).  Its dict form is the "call-arrival object" of the
local control channel (docs/design.md, "Local control channel").
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any

#: Longest string accepted in any call-arrival field.
MAX_FIELD = 64
#: the control characters no text field may hold (C0 and DEL); one regex pass, since every
#: health report checks each port's fields (a character-by-character loop cost the service
#: and the node manager most of their idle CPU with a few hundred ports)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Reason(StrEnum):
    """Why the call reached voice mail (the PBX's forwarding reason)."""

    DIRECT = "direct"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    ALL = "all"
    UNKNOWN = "unknown"


#: Fields that must not be empty.  The numbers may be (withheld caller, direct dial).
_REQUIRED_NONEMPTY = frozenset({"node", "port", "call_id", "integration"})


def check_text(name: str, value: Any, *, nonempty: bool = False, limit: int = MAX_FIELD) -> str:
    """Validate one bounded, printable, single-line string field; return it or raise ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"{name} is {len(value)} characters long; at most {limit} are allowed")
    if nonempty and not value:
        raise ValueError(f"{name} must not be empty")
    if _CONTROL.search(value):
        raise ValueError(f"{name} must not contain control characters")
    return value


@dataclass(frozen=True)
class CallArrival:
    """A call offered to one port.  ``forwarding`` is the number that forwarded the call
    ("" when the call was dialled directly); ``integration`` names the integration profile."""

    node: str
    port: str
    call_id: str
    calling: str
    called: str
    forwarding: str
    reason: Reason
    integration: str

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "reason":
                continue
            check_text(f.name, getattr(self, f.name), nonempty=f.name in _REQUIRED_NONEMPTY)
        object.__setattr__(self, "reason", _reason(self.reason))

    def to_dict(self) -> dict[str, str]:
        d = asdict(self)
        d["reason"] = str(self.reason)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> CallArrival:
        """Build from the wire form.  Raises ValueError naming the bad field.  Keys this version
        does not know are ignored (a newer peer may add some)."""
        if not isinstance(d, dict):
            raise ValueError(f"a call-arrival object must be a JSON object, got {type(d).__name__}")
        missing = [f.name for f in fields(cls) if f.name not in d]
        if missing:
            raise ValueError(f"call-arrival object lacks {', '.join(missing)}")
        return cls(**{f.name: d[f.name] for f in fields(cls)})

    def summary(self) -> str:
        """One line for logs."""
        fwd = f" fwd {self.forwarding}" if self.forwarding else ""
        return (f"call {self.call_id} on {self.node}/{self.port}: {self.calling or '?'} -> "
                f"{self.called or '?'}{fwd} ({self.reason}, {self.integration})")


def _reason(value: Any) -> Reason:
    if isinstance(value, Reason):
        return value
    if isinstance(value, str):
        try:
            return Reason(value)
        except ValueError:
            pass
    allowed = ", ".join(r.value for r in Reason)
    raise ValueError(f"reason must be one of {allowed}; got {value!r:.70}")
