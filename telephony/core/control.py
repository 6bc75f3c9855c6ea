"""Sans-IO codec of the local control channel (node manager <-> messaging service).

The contract is docs/design.md, "Local control channel": one JSON object per line (UTF-8,
``\\n``-terminated), at most ``max_line`` (65,536) bytes per line, every message has ``"op"``.

Three verbs, h11-style::

    conn = ControlConnection()
    conn.receive_data(chunk)        # b"" means end of stream
    ev = conn.next_event()          # dict | ControlError | NEED_DATA | Closed
    wire = conn.send({"op": "hello", ...})

A line that is not JSON, not an object, or has no string ``"op"`` comes out as a
:class:`ControlError` event: the receiver logs it and carries on (the next line parses).  A
line longer than ``max_line`` raises :class:`FramingError`: the stream cannot be
trusted any more and the caller closes it.

The codec does not judge fields.  :func:`validate` does, for both directions, from the
tables :data:`TO_SERVICE` and :data:`FROM_SERVICE`; :func:`make` builds a checked message.

Pure: no trio, socket, time, threading or os.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from telephony.core.events import CallArrival, check_text
from telephony.core.framing import (
    MAX_LINE,
    NEED_DATA,
    Closed,
    FramingError,
    LineFramer,
    LocalFramingError,
    NeedData,
    Unfinished,
    decode_json_object,
    encode_json_line,
)

__all__ = ["MAX_LINE", "NEED_DATA", "Closed", "FramingError", "LocalFramingError", "ControlError",
           "ControlConnection", "FieldError", "parse_line", "validate", "make"]

@dataclass(frozen=True)
class ControlError:
    """A line that is not a control message.  ``raw`` is the line without its ``\\n``."""

    reason: str
    raw: bytes


class FieldError(ValueError):
    """A control message whose fields do not match the contract."""


Event = dict | ControlError | Closed


class ControlConnection:
    """Bounded JSON-lines framing (:class:`LineFramer`), one per direction pair (it does not
    know its role).  A line over ``max_line`` raises :class:`FramingError`: close the channel.
    Misuse (data after end of stream, a message that cannot be sent) raises
    :class:`LocalFramingError`."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._framer = LineFramer(max_line)
        self.max_line = max_line

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side."""
        self._framer.receive_data(data)

    def next_event(self) -> Event | NeedData:
        item = self._framer.next_line()
        if isinstance(item, bytes):
            return parse_line(item)
        if isinstance(item, Unfinished):
            return ControlError("incomplete line at end of stream", item.raw)
        return item  # NEED_DATA or Closed (an Overlong never comes: resync is off)

    def send(self, msg: dict) -> bytes:
        """Encode one message as a line.  Raises LocalFramingError if it cannot be sent."""
        if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
            raise LocalFramingError('a control message is a dict with a string "op"')
        try:
            return encode_json_line(msg, self.max_line)
        except LocalFramingError as exc:
            raise LocalFramingError(f"{msg['op']!r} message: {exc}") from None


def parse_line(raw: bytes) -> dict | ControlError:
    """Parse one line (without ``\\n``) into a message dict or a ControlError."""
    obj = decode_json_object(raw)
    if isinstance(obj, str):
        return ControlError(obj, raw)
    op = obj.get("op")
    if not isinstance(op, str):
        return ControlError('no string "op" field' if op is None else '"op" is not a string', raw)
    return obj


# ============================================================================ field checks

Check = Callable[[str, Any], Any]

MAX_TERM: Final = 2**64 - 1  # terms travel as u64 on the node link
MAX_LEASE: Final = 86400.0
SERVICE_STATES: Final = ("inactive", "active", "draining", "fenced")
CALL_EVENTS: Final = ("answered", "ended", "rejected", "dropped")


def _int(lo: int, hi: int) -> Check:
    def check(name: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise FieldError(f"{name} must be an integer, got {_show(v)}")
        if not lo <= v <= hi:
            raise FieldError(f"{name} must be between {lo} and {hi}, got {v}")
        return v
    return check


def _opt(check: Check) -> Check:
    def opt(name: str, v: Any) -> Any:
        return None if v is None else check(name, v)
    return opt


def _lease(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FieldError(f"{name} must be a number of seconds, got {_show(v)}")
    if not (math.isfinite(v) and 0 < v <= MAX_LEASE):
        raise FieldError(f"{name} must be above 0 and at most {MAX_LEASE:g} seconds, got {v}")
    return float(v)


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise FieldError(f"{name} must be true or false, got {_show(v)}")
    return v


def _text(limit: int, *, nonempty: bool = False) -> Check:
    def check(name: str, v: Any) -> str:
        try:
            return check_text(name, v, nonempty=nonempty, limit=limit)
        except ValueError as exc:
            raise FieldError(str(exc)) from None
    return check


def _choice(options: tuple[str, ...]) -> Check:
    def check(name: str, v: Any) -> str:
        if v not in options or not isinstance(v, str):
            raise FieldError(f"{name} must be one of {', '.join(options)}, got {_show(v)}")
        return v
    return check


def _list(item: Check, limit: int = 1024) -> Check:
    def check(name: str, v: Any) -> list:
        if not isinstance(v, list):
            raise FieldError(f"{name} must be a list, got {_show(v)}")
        if len(v) > limit:
            raise FieldError(f"{name} has {len(v)} items; at most {limit} are allowed")
        return [item(f"{name}[{i}]", x) for i, x in enumerate(v)]
    return check


def _object(schema: dict[str, Check]) -> Check:
    def check(name: str, v: Any) -> dict:
        if not isinstance(v, dict):
            raise FieldError(f"{name} must be an object, got {_show(v)}")
        _check_fields(v, schema, prefix=f"{name}.")
        return v
    return check


def _call(name: str, v: Any) -> dict:
    try:
        CallArrival.from_dict(v)
    except ValueError as exc:
        raise FieldError(f"{name}: {exc}") from None
    return v


def _show(v: Any) -> str:
    return "null" if v is None else f"{type(v).__name__} {v!r:.40}"


_TERM = _int(0, MAX_TERM)


def _opt_until(name: str, v: Any) -> None:
    """Optional absolute lease deadline (seconds on the host's CLOCK_MONOTONIC)."""
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e12):
        raise FieldError(f"{name} must be a positive number of seconds, got {_show(v)}")


_opt_until.may_be_absent = True  # type: ignore[attr-defined]
_COUNT = _int(0, 2**31 - 1)
_NAME = _text(64, nonempty=True)
_DETAIL = _text(200)
_DETAIL.may_be_absent = True  # type: ignore[attr-defined]
#: a port in a health report; ``detail`` (optional): what the driver says of it (an SCCP
#: port's registration: ``registered with 10.0.0.1:2000``, ``rejected: ...``)
_PORT_STATUS = _object({"name": _NAME, "kind": _NAME, "state": _NAME, "detail": _DETAIL})
#: a driver's (or the message store's) health in a health report: ``score`` 0..100 (usable
#: ports in percent; the store: 100 when its last probe answered, else 0)
_DRIVER_HEALTH = _object({"name": _NAME, "score": _int(0, 100), "detail": _text(200)})
_DRIVERS = _opt(_list(_DRIVER_HEALTH, 32))
_DRIVERS.may_be_absent = True  # type: ignore[attr-defined]
MAX_COUNTER_GROUPS: Final = 16
MAX_COUNTERS: Final = 64


def _counters(name: str, v: Any) -> dict:
    """``{group: {counter: int >= 0}}``: at most 16 groups (a driver kind, ``messaging``) of at
    most 64 counters, names as node names."""
    if not isinstance(v, dict) or len(v) > MAX_COUNTER_GROUPS:
        raise FieldError(f"{name} must be an object of at most {MAX_COUNTER_GROUPS} groups, "
                         f"got {_show(v)}")
    for group, counters in v.items():
        _NAME(f"{name} group", group)
        if not isinstance(counters, dict) or len(counters) > MAX_COUNTERS:
            raise FieldError(f"{name}.{group:.64} must be an object of at most {MAX_COUNTERS} "
                             f"counters, got {_show(counters)}")
        for key, n in counters.items():
            _NAME(f"{name}.{group:.64} counter", key)
            _int(0, 2**63 - 1)(f"{name}.{group:.64}.{key:.64}", n)
    return v

#: node manager -> service: op -> {field: check}
TO_SERVICE: Final[dict[str, dict[str, Check]]] = {
    "activate": {"term": _TERM, "lease": _lease, "until": _opt_until},
    "renew": {"term": _TERM, "lease": _lease, "until": _opt_until},
    "deactivate": {"term": _TERM, "drain": _bool},
    "refuse_call": {"call_id": _text(64, nonempty=True), "reason": _text(200)},
    "shutdown": {},
    # the node manager's view of its peer, after hello and on every change (docs/smdi.md,
    # "A shared line in a partition")
    "link": {"peer_reachable": _bool},
}

#: service -> node manager: op -> {field: check}
FROM_SERVICE: Final[dict[str, dict[str, Check]]] = {
    "hello": {"pid": _int(1, 2**31 - 1), "node": _NAME, "ports": _list(_NAME)},
    "health": {"seq": _int(0, 2**63 - 1), "state": _choice(SERVICE_STATES), "term": _opt(_TERM),
               "calls": _COUNT, "ports": _list(_PORT_STATUS), "drivers": _DRIVERS},
    "activated": {"term": _TERM},
    "deactivated": {"term": _TERM, "calls": _COUNT},
    "fenced": {"term": _TERM, "reason": _text(200)},
    "call_offered": {"call": _call},
    "call": {"event": _choice(CALL_EVENTS), "call": _call, "term": _opt(_TERM)},
    "error": {"message": _text(1000), "ref": _opt(_text(64))},
    "event": {"level": _choice(("info", "warning", "error")), "event": _NAME,
              "message": _text(1000)},
    "counters": {"groups": _counters},
}


def _check_fields(msg: dict, schema: dict[str, Check], prefix: str = "") -> None:
    for name, check in schema.items():
        if name not in msg:
            if getattr(check, "may_be_absent", False):
                continue
            raise FieldError(f"{prefix}{name} is missing")
        check(prefix + name, msg[name])


def validate(msg: dict, table: dict[str, dict[str, Check]]) -> dict:
    """Check ``msg`` against ``table`` (:data:`TO_SERVICE` or :data:`FROM_SERVICE`).

    Returns ``msg`` unchanged or raises :class:`FieldError` with a message fit for the
    ``error`` reply.  Fields this version does not know are ignored (forward compatible).
    """
    op = msg.get("op")
    schema = table.get(op) if isinstance(op, str) else None
    if schema is None:
        raise FieldError(f"unknown op {op!r:.40}")
    _check_fields(msg, schema)
    return msg


def make(op: str, **fields: Any) -> dict:
    """Build a message and check it against whichever table knows ``op``."""
    msg = {"op": op, **fields}
    table = TO_SERVICE if op in TO_SERVICE else FROM_SERVICE
    return validate(msg, table)
