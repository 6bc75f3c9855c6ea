"""The local control channel (telephony.core.control): JSON lines between the node manager and
the messaging service.

The input is a ``max_line``, a read pattern and the stream.  Invariants: ``next_event`` gives
dicts with a string ``op``, ``ControlError`` events or the end markers, and raises only
``FramingError`` (a line over ``max_line``), then again on every call; ``validate`` raises only
``FieldError``; a message that validates is sent again by ``send`` (``LocalFramingError`` only
when its line is over the limit) and that line parses back to an equal message.
"""
from __future__ import annotations

from telephony.core.control import (
    FROM_SERVICE,
    TO_SERVICE,
    Closed,
    ControlConnection,
    ControlError,
    FieldError,
    FramingError,
    LocalFramingError,
    parse_line,
    validate,
)
from telephony.core.framing import NeedData
from tests.fuzz.common import Input, check, chunks


def drain(conn: ControlConnection) -> tuple[list, bool]:
    out = []
    while True:
        try:
            ev = conn.next_event()
        except FramingError:
            try:
                conn.next_event()
            except FramingError:
                return out, True
            raise AssertionError("FramingError was not raised again") from None
        if isinstance(ev, (NeedData, Closed)):
            return out, False
        out.append(ev)


def check_message(conn: ControlConnection, msg: dict) -> None:
    check(isinstance(msg.get("op"), str), f"message without a string op: {msg!r:.80}")
    for table in (TO_SERVICE, FROM_SERVICE):
        try:
            validate(msg, table)
        except FieldError:
            continue
        try:
            line = conn.send(msg)
        except LocalFramingError as e:
            check("limit" in str(e), f"a valid message could not be sent: {e}")
            continue
        check(line.endswith(b"\n") and b"\n" not in line[:-1], "sent line is not one line")
        back = parse_line(line[:-1])
        check(back == msg, f"round trip changed {msg!r:.80} into {back!r:.80}")


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    max_line = 65536 if inp.flag() else 8 + inp.uint(2) % 4096
    pattern = inp.u8()
    conn = ControlConnection(max_line)
    events, broken = [], False
    for piece in chunks(inp.rest(), pattern):
        conn.receive_data(piece)
        got, broken = drain(conn)
        events += got
        if broken:
            break
    if not broken:
        conn.receive_data(b"")
        events += drain(conn)[0]
    for ev in events:
        if isinstance(ev, ControlError):
            check(isinstance(ev.reason, str) and isinstance(ev.raw, bytes), f"bad error {ev!r:.80}")
            check(len(ev.raw) <= max_line, f"a ControlError holds {len(ev.raw)} bytes")
        else:
            check(isinstance(ev, dict), f"unexpected event {ev!r:.80}")
            check_message(conn, ev)


def seeds() -> list[bytes]:
    """Real control lines of both directions, made with ``make`` and ``send``."""
    from telephony.core.control import make

    conn = ControlConnection()
    call = {"node": "ums-a", "port": "sip-1", "call_id": "c-1", "calling": "5551001",
            "called": "2000", "forwarding": "1002", "reason": "busy", "integration": "cucm-sip"}
    msgs = [make("activate", term=3, lease=4.5), make("renew", term=3, lease=4.5, until=1000.5),
            make("deactivate", term=3, drain=True), make("shutdown"),
            make("refuse_call", call_id="c-1", reason="inactive"),
            {"op": "hello", "pid": 1234, "node": "ums-a", "ports": ["sip-1", "sip-2"]},
            {"op": "health", "seq": 1, "state": "active", "term": 3, "calls": 1,
             "ports": [{"name": "sip-1", "kind": "sip", "state": "up", "detail": "registered"}]},
            {"op": "call_offered", "call": call},
            {"op": "call", "event": "answered", "call": call, "term": 3},
            {"op": "event", "level": "warning", "event": "smdi_noise", "message": "é ✓"},
            {"op": "counters", "groups": {"smdi": {"records": 3, "noise": 0}}}]
    stream = b"".join(conn.send(m) for m in msgs)
    return [bytes([1, 0]) + stream, bytes([0, 64, 0, 3]) + stream,
            bytes([1, 0]) + b'{"op":"activate","term":1e400}\n[1]\n{"op":5}\n\xff\n{"a":' + b"[" * 50]
