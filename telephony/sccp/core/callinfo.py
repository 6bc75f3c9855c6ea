"""What CallManager says about a call (the ``CallInfo`` message) and how it becomes the fields
of a :class:`~telephony.core.events.CallArrival` (docs/sccp.md, "Contract: the station
machine").  Pure.

CallManager puts the forwarding data of a call in ``CallInfo``: the caller, the number dialled
on this leg (the pilot), the first number dialled before any forwarding (``original_called``),
the number that forwarded it last (``last_redirecting``), the call type (3 = forward) and two
numeric redirect reasons.  The numbers are CallManager's CDR "redirect reason" codes; which
code means what is not documented for SCCP, so the table is configurable
(:data:`REDIRECT_REASONS` is the default, :func:`reason_table` checks a configured one).

Every string is cleaned on the way in: NULs and other non-printable characters removed,
surrounding blanks stripped, at most :data:`~telephony.core.events.MAX_FIELD` characters kept,
so a :class:`CallDetails` can always become a valid ``CallArrival``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from telephony.core.events import MAX_FIELD, Reason
from telephony.sccp.core.messages import CallType, Message

__all__ = ["CallDetails", "REDIRECT_REASONS", "arrival_fields", "clean_text", "reason_table"]

_U32 = 0xFFFF_FFFF

#: CallManager's CDR redirect-reason codes → our reasons (1 forward busy, 2 forward no answer,
#: 10 call forward, 15 call forward all).  Codes not in the table give ``unknown``.
REDIRECT_REASONS: Mapping[int, Reason] = MappingProxyType({
    1: Reason.BUSY,
    2: Reason.NO_ANSWER,
    10: Reason.ALL,
    15: Reason.ALL,
})


def clean_text(value: Any, limit: int = MAX_FIELD) -> str:
    """A wire string made safe for a call-arrival field: only printable characters, no
    surrounding blanks, at most ``limit`` characters.  Anything that is not a string gives ""."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("latin-1")
    if not isinstance(value, str):
        return ""
    kept = "".join(c for c in value if c.isprintable())
    return kept.strip()[:limit].strip()


def _u32(value: Any) -> int:
    """An integer field as CallManager can send it (u32); anything else gives 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return value if 0 <= value <= _U32 else 0


@dataclass(frozen=True)
class CallDetails:
    """The parts of ``CallInfo`` the voice-mail port uses, cleaned (see the module doc)."""

    calling: str = ""
    calling_name: str = ""
    called: str = ""
    original_called: str = ""
    last_redirecting: str = ""
    call_type: int = 0
    original_reason: int = 0
    last_reason: int = 0
    call_reference: int = 0
    line_instance: int = 0

    def __post_init__(self) -> None:
        for name in ("calling", "calling_name", "called", "original_called", "last_redirecting"):
            object.__setattr__(self, name, clean_text(getattr(self, name)))
        for name in ("call_type", "original_reason", "last_reason", "call_reference", "line_instance"):
            object.__setattr__(self, name, _u32(getattr(self, name)))

    @classmethod
    def from_message(cls, msg: Message) -> CallDetails:
        """From a decoded ``CallInfo``.  Fields the message lacks (a short payload) are empty."""
        f = msg.fields
        return cls(
            calling=f.get("calling_party", ""),
            calling_name=f.get("calling_party_name", ""),
            called=f.get("called_party", ""),
            original_called=f.get("original_called_party", ""),
            last_redirecting=f.get("last_redirecting_party", ""),
            call_type=f.get("call_type", 0),
            original_reason=f.get("original_cdpn_redirect_reason", 0),
            last_reason=f.get("last_redirecting_reason", 0),
            call_reference=f.get("call_reference", 0),
            line_instance=f.get("line_instance", 0),
        )

    @property
    def forwarded(self) -> bool:
        """CallManager says the call was forwarded: call type "forward", or a redirecting
        number is present."""
        return self.call_type == CallType.FORWARD or bool(self.last_redirecting)


def arrival_fields(d: CallDetails, reasons: Mapping[int, Reason] = REDIRECT_REASONS) -> dict[str, Any]:
    """``calling``, ``called``, ``forwarding`` and ``reason`` of a ``CallArrival``.

    A forwarded call (:attr:`CallDetails.forwarded`) is keyed on the number that forwarded it
    last, else the number first dialled; its reason is the table's entry for the last
    redirecting reason, else for the original one, else ``unknown``.  A direct call has no
    forwarding number and the reason ``direct``.  ``called`` is the number dialled on this leg.
    """
    if not d.forwarded:
        return {"calling": d.calling, "called": d.called, "forwarding": "", "reason": Reason.DIRECT}
    reason = reasons.get(d.last_reason) or reasons.get(d.original_reason) or Reason.UNKNOWN
    return {"calling": d.calling, "called": d.called,
            "forwarding": d.last_redirecting or d.original_called, "reason": Reason(reason)}


def reason_table(table: Mapping[Any, Any]) -> dict[int, Reason]:
    """A configured redirect-reason table (code → reason name) checked and converted.  Codes
    are integers 0..2^32-1 (or their decimal strings, as TOML keys are); reasons are those of
    :class:`Reason` except ``direct``.  Raises ValueError naming the bad entry."""
    if not isinstance(table, Mapping):
        raise ValueError(f"redirect reasons must be a table of code = reason, got {type(table).__name__}")
    out: dict[int, Reason] = {}
    allowed = [r.value for r in Reason if r is not Reason.DIRECT]
    for key, value in table.items():
        code = key
        if isinstance(key, str) and key.strip().isdigit():
            code = int(key.strip())
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= _U32:
            raise ValueError(f"redirect reason code {key!r:.40} is not an integer 0..{_U32}")
        if value not in allowed:
            raise ValueError(f"redirect reason {code} maps to {value!r:.40}; "
                             f"use one of {', '.join(allowed)}")
        out[code] = Reason(value)
    return out
