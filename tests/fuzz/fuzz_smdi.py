"""SMDI (telephony.smdi.core.codec): the switch's stream (``SmdiReader``) and the voice mail's
MWI commands as a PBX reads them (``CommandReader``, in the default or a fuzzed format).

Invariants, the guarantees of the codec's docstring: ``feed``/``close`` never raise; split
invariance (events for the stream cut into reads equal those for one piece); conservation
(the bytes of the events' ``raw`` are the stream minus framing bytes skipped silently);
``buffered`` never above ``max_buffer``; fields as documented (desk 0..999, terminal 0..9999,
numbers 0..32 digits); an accepted call record or MWI failure, encoded again, reads back equal.
"""
from __future__ import annotations

from telephony.smdi.core.codec import (
    MAX_DIGITS,
    CallRecord,
    CommandReader,
    MwiCommand,
    MwiFailure,
    MwiFormat,
    ProtocolError,
    SmdiReader,
    encode_call_record,
    encode_mwi_failure,
)
from tests.fuzz.common import Input, check, chunks

SMDI_FRAMING = frozenset(b"\r\n\x19\x7f\xff")
FORMATS = (MwiFormat(), MwiFormat("OP:MWI ", "RMV:MWI ", "!\x04", 10),
           MwiFormat("MWION ", "MWIOFF ", "\r\n"), MwiFormat("L1:", "L0:", ""))




def conserved(stream: bytes, events: list, framing: frozenset) -> None:
    kept = bytes(b for b in stream if b not in framing)
    raws = bytes(b for ev in events for b in ev.raw if b not in framing)
    check(kept == raws, "the events' raw bytes are not the stream's non-framing bytes")
    for ev in events:
        check(ev.raw and ev.raw[0] not in framing or isinstance(ev, (CallRecord, MwiFailure,
                                                                     MwiCommand)),
              f"a ProtocolError starts with a framing byte: {ev!r:.80}")


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    which, pattern = inp.u8(), inp.u8()
    max_buffer = 256 + inp.u8() * 4
    stream = inp.rest()
    if which & 1:
        fmt = FORMATS[(which >> 1) % len(FORMATS)]
        make = lambda: CommandReader(max_buffer=max_buffer, fmt=fmt)  # noqa: E731
        framing = frozenset(b"\r\n\x7f\xff") | frozenset(
            fmt.suffix.encode()[len(fmt.suffix.encode().rstrip(bytes(range(32)) + b"\x7f")):])
    else:
        make = lambda: SmdiReader(max_buffer=max_buffer)  # noqa: E731
        framing = SMDI_FRAMING
    reader = make()
    events = []
    for piece in chunks(stream, pattern):
        events += reader.feed(piece)
        check(reader.buffered <= max_buffer, f"{reader.buffered} bytes held > {max_buffer}")
    events += reader.close()
    whole = make()
    check(whole.feed(stream) + whole.close() == events, "events depend on how the stream was cut")
    conserved(stream, events, framing)
    for ev in events:
        check(isinstance(ev, (CallRecord, MwiFailure, MwiCommand, ProtocolError)), f"{ev!r:.80}")
        if isinstance(ev, ProtocolError):
            check(ev.raw, "empty ProtocolError")
        elif isinstance(ev, CallRecord):
            check(0 <= ev.desk <= 999 and 0 <= ev.terminal <= 9999, f"bad record {ev}")
            check(len(ev.forwarding) <= MAX_DIGITS and len(ev.calling) <= MAX_DIGITS, f"{ev}")
            again = SmdiReader().feed(encode_call_record(ev.terminal, ev.call_type, ev.forwarding,
                                                         ev.calling, desk=ev.desk))
            check(len(again) == 1 and isinstance(again[0], CallRecord)
                  and (again[0].desk, again[0].terminal, again[0].call_type, again[0].forwarding,
                       again[0].calling) == (ev.desk, ev.terminal, ev.call_type, ev.forwarding,
                                             ev.calling), f"round trip of {ev} gave {again}")
        elif isinstance(ev, MwiFailure):
            again = SmdiReader().feed(encode_mwi_failure(ev.number, ev.cause))
            check(len(again) == 1 and isinstance(again[0], MwiFailure)
                  and (again[0].number, again[0].cause) == (ev.number, ev.cause),
                  f"round trip of {ev} gave {again}")
        else:
            fmt = FORMATS[(which >> 1) % len(FORMATS)]
            check(1 <= len(ev.number) <= MAX_DIGITS and ev.number.isdigit(), f"{ev}")
            again = CommandReader(fmt=fmt).feed(fmt.encode(ev.on, ev.number) + b"\r\n")
            check(len(again) == 1 and isinstance(again[0], MwiCommand)
                  and (again[0].on, again[0].number.lstrip("0")) == (ev.on, ev.number.lstrip("0")),
                  f"round trip of {ev} gave {again}")


def seeds() -> list[bytes]:
    """Call records, MWI failures (each switch's form) and MWI commands in each format."""
    smdi = (encode_call_record(7, "N", "1002", "5551001") + encode_call_record(1, "D", "", "")
            + encode_call_record(12, "B", "1" * 10, "2" * 10, desk=999, eot=False)
            + encode_mwi_failure("1002") + encode_mwi_failure("1003", "BLK", space=True, bang=True)
            + b"\r\nMD0010007A 1001  \r\n\x19" + b"garbage\r\nMWI 12 INV\r\n\x7f\x7f\x19")
    out = [bytes([0, 0, 255]) + smdi, bytes([0, 1, 0]) + smdi]
    for k, fmt in enumerate(FORMATS):
        cmds = fmt.encode(True, "1002") + fmt.encode(False, "1003") + b"\r\n" + fmt.encode(True, "9")
        out.append(bytes([1 + 2 * k, 0, 255]) + cmds)
    return out
