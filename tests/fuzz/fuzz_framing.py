"""Line framing (telephony.core.framing.LineFramer) and what reads its lines: the SIP workers'
op lines (telephony.sip.core.worker_protocol.take_ops / check_op) and the loopback trunk's
call lines (telephony.loopback.wire.parse_call_op).

Invariants: the framer never holds more than ``max_line`` bytes once drained; its lines hold no
``\\n`` and are at most ``max_line`` bytes; without an over-long line the lines (and the
unfinished tail) give back the stream exactly; the events do not depend on how the stream was
cut into reads; ``resync=False`` raises only ``FramingError`` and keeps raising it;
``decode_json_object`` never raises and what it decodes is encoded back to an equal object;
``take_ops`` never raises; ``check_op`` raises only ``OpError``; ``parse_call_op`` raises only
``ValueError``.
"""
from __future__ import annotations

from telephony.core.control import ControlError
from telephony.core.framing import (
    Closed,
    FramingError,
    LineFramer,
    LocalFramingError,
    NeedData,
    Overlong,
    Unfinished,
    decode_json_object,
    encode_json_line,
)
from telephony.loopback.wire import parse_call_op
from telephony.sip.core.worker_protocol import OpError, check_op, take_ops
from tests.fuzz.common import Input, check, chunks


def frame(stream: bytes, max_line: int, resync: bool, pattern: int) -> tuple[list, bool]:
    f = LineFramer(max_line, resync=resync)
    items: list = []
    for piece in chunks(stream, pattern):
        f.receive_data(piece)
        while True:
            try:
                item = f.next_line()
            except FramingError:
                check(not resync, "FramingError with resync on")
                try:
                    f.next_line()
                except FramingError:
                    return items, True
                raise AssertionError("FramingError was not raised again") from None
            if isinstance(item, NeedData):
                break
            items.append(item)
        check(f.buffered <= max_line, f"{f.buffered} bytes held, max_line {max_line}")
    f.receive_data(b"")
    while not isinstance(item := f.next_line(), Closed):
        check(not isinstance(item, NeedData), "NEED_DATA after the end of the stream")
        items.append(item)
    return items, False


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    max_line = 1 + inp.uint(2) % 300
    resync, pattern = inp.flag(), inp.u8()
    stream = inp.rest()
    items, broken = frame(stream, max_line, resync, pattern)
    whole, broken_whole = frame(stream, max_line, resync, 0)
    check((items, broken) == (whole, broken_whole), "events depend on how the stream was cut")
    lines = [i for i in items if isinstance(i, bytes)]
    for line in lines:
        check(b"\n" not in line and len(line) <= max_line, f"bad line {line[:40]!r}")
    if not broken and not any(isinstance(i, Overlong) for i in items):
        rebuilt = b"".join(i + b"\n" if isinstance(i, bytes) else i.raw for i in items)
        check(rebuilt == stream, "lines do not give back the stream")
        check(all(isinstance(i, Unfinished) for i in items if not isinstance(i, bytes)),
              f"unexpected items {items!r:.80}")
    for line in lines:
        obj = decode_json_object(line)
        if isinstance(obj, dict):
            try:
                again = encode_json_line(obj, 1 << 20)
            except LocalFramingError as e:
                raise AssertionError(f"a decoded object cannot be encoded: {e}") from None
            check(decode_json_object(again[:-1]) == obj, "JSON round trip changed the object")
            if isinstance(obj.get("op"), str):
                try:
                    parse_call_op(obj)
                except ValueError:
                    pass
    worker = LineFramer(max_line, resync=True)
    worker.receive_data(stream)
    worker.receive_data(b"")
    for op in take_ops(worker):
        if isinstance(op, ControlError):
            continue
        check(isinstance(op, dict) and isinstance(op.get("op"), str), f"bad op {op!r:.80}")
        try:
            out = check_op(op)
        except OpError:
            continue
        check(out["op"] == op["op"], "check_op changed the op")


def seeds() -> list[bytes]:
    """Worker ops, loopback call lines and control lines as our encoders write them."""
    import base64

    from telephony.loopback.wire import line_bytes

    ops = [{"op": "answer", "call": "w1-3"}, {"op": "reject", "call": "w1-3", "code": 486},
           {"op": "play", "call": "w1-3", "id": 1, "path": "greeting.wav"},
           {"op": "record", "call": "w1-3", "id": 2, "path": "m.wav"},
           {"op": "notify", "id": 3, "target": "sip:1001@pbx", "body": "Messages-Waiting: yes\r\n",
            "headers": {"Event": "message-summary"}},
           {"op": "transfer", "call": "w1-3", "id": 4, "target": "sip:0@10.0.0.5:5060"},
           {"op": "stats"}]
    stream = b"".join(encode_json_line(o) for o in ops)
    call = (line_bytes(op="audio", audio=base64.b64encode(b"\x01\x00" * 80).decode())
            + line_bytes(op="dtmf", digit="5") + line_bytes(op="transfer", ok=True)
            + line_bytes(op="hangup"))
    return [bytes([0, 1, 1, 0]) + stream, bytes([0, 16, 0, 1]) + call,
            bytes([40, 0, 1, 7]) + b"short\nline that is longer than forty bytes, skipped\nx"]
