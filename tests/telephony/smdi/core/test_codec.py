"""SMDI codec (telephony/smdi/core/codec.py): golden bytes from docs/protocols.md section 1, tolerance
rules of 1.5, bounds, and property tests (split invariance, conservation, no exceptions)."""
from __future__ import annotations

import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.core.events import Reason
from telephony.smdi.core.codec import (
    DEFAULT_MAX_BUFFER,
    MAX_RECORD,
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

SMDI_FRAMING = frozenset(b"\r\n\x19\x7f\xff")
CMD_FRAMING = frozenset(b"\r\n\x7f\xff\x04")

# docs/protocols.md 1.2 (and the worked examples of the SMDI manuals)
DIRECT_HEX = "0d 0a 4d 44 30 30 31 30 30 30 37 44 20 31 30 30 31 20 0d 0a 19"
NO_ANSWER_HEX = ("0d 0a 4d 44 30 30 31 30 30 30 37 4e 35 35 35 31 30 30 32 20 35 35 35 31 30 30 31"
                 " 20 0d 0a 19")
# docs/protocols.md 1.3
OP_HEX = "4f 50 3a 4d 57 49 20 35 35 35 31 30 30 32 21 04"
RMV_HEX = "52 4d 56 3a 4d 57 49 20 35 35 35 31 30 30 32 21 04"
# docs/protocols.md 1.4 (DMS-100 INV; the DEL bytes go before 19 on a DMS-100)
INV_HEX = "0d 0a 4d 57 49 35 35 35 31 30 30 32 20 49 4e 56 0d 0a 19"


def parse(data: bytes, **kw) -> list:
    r = SmdiReader(**kw)
    events = r.feed(data)
    events += r.close()
    assert r.buffered == 0
    return events


def parse_split(data: bytes, cuts: list[int], **kw) -> list:
    r = SmdiReader(**kw)
    events: list = []
    last = 0
    for cut in sorted(cuts) + [len(data)]:
        events += r.feed(data[last:cut])
        last = cut
    return events + r.close()


def parse_commands(data: bytes, **kw) -> list:
    r = CommandReader(**kw)
    return r.feed(data) + r.close()


def records(events: list) -> list:
    return [e for e in events if not isinstance(e, ProtocolError)]


def errors(events: list) -> list[ProtocolError]:
    return [e for e in events if isinstance(e, ProtocolError)]


def record_raw(encoded: bytes) -> bytes:
    """The raw of the record in encoder output: from the M to the first LF (module docstring)."""
    return encoded[2:encoded.index(b"\n", 2) + 1]


def assert_conserved(data: bytes, events: list, framing: frozenset[int]) -> None:
    """Each event's raw appears in order in the input; everything between is framing only."""
    pos = 0
    for e in events:
        assert e.raw and e.raw[0] not in framing
        while pos < len(data) and data[pos] in framing:
            pos += 1
        assert data.startswith(e.raw, pos), (data[pos:pos + 40], e)
        pos += len(e.raw)
    assert all(b in framing for b in data[pos:]), data[pos:]


# --------------------------------------------------------------------------- golden bytes

def test_worked_example_direct_call():
    wire = bytes.fromhex(DIRECT_HEX)
    rec = CallRecord(desk=1, terminal=7, call_type="D", forwarding="", calling="1001",
                     raw=b"MD0010007D 1001 \r\n")
    assert parse(wire) == [rec]
    assert rec.reason is Reason.DIRECT
    assert encode_call_record(7, "D", "", "1001") == wire


def test_worked_example_no_answer_forward():
    wire = bytes.fromhex(NO_ANSWER_HEX)
    rec = CallRecord(desk=1, terminal=7, call_type="N", forwarding="5551002", calling="5551001",
                     raw=b"MD0010007N5551002 5551001 \r\n")
    assert parse(wire) == [rec]
    assert rec.reason is Reason.NO_ANSWER
    assert encode_call_record(7, "N", "5551002", "5551001") == wire


@pytest.mark.parametrize("wire,forwarding,calling", [
    (b"\r\nMD0010012B5551002 5551001 \r\n\x19", "5551002", "5551001"),   # shape I
    (b"\r\nMD0010012B5551002  \r\n\x19", "5551002", ""),                  # shape II
    (b"\r\nMD0010012D 5551001 \r\n\x19", "", "5551001"),                  # shape III
])
def test_record_shapes(wire, forwarding, calling):
    assert parse(wire) == [CallRecord(1, 12, wire[11:12].decode(), forwarding, calling, wire[2:-1])]
    assert encode_call_record(12, wire[11:12].decode(), forwarding, calling) == wire


@pytest.mark.parametrize("call_type,reason", [
    ("D", Reason.DIRECT), ("A", Reason.ALL), ("B", Reason.BUSY), ("N", Reason.NO_ANSWER),
    ("U", Reason.UNKNOWN), ("R", Reason.UNKNOWN), ("C", Reason.UNKNOWN), ("I", Reason.UNKNOWN),
])
def test_every_call_type(call_type, reason):
    wire = encode_call_record(42, call_type, "4000", "4021", desk=63)
    [rec] = parse(wire)
    assert (rec.desk, rec.terminal, rec.call_type, rec.forwarding, rec.calling) == (
        63, 42, call_type, "4000", "4021")
    assert rec.reason is reason
    assert wire.startswith(b"\r\nMD0630042" + call_type.encode() + b"4000 4021 ")


@pytest.mark.parametrize("length", [4, 7, 10, 15, 32])
def test_number_lengths(length):
    fwd, calling = "1" * length, "9" * length
    [rec] = parse(encode_call_record(9999, "A", fwd, calling, desk=999))
    assert (rec.desk, rec.terminal, rec.forwarding, rec.calling) == (999, 9999, fwd, calling)
    [fail] = parse(encode_mwi_failure("5" * length))
    assert fail.number == "5" * length


def test_numbers_longer_than_32_digits_are_protocol_errors():
    wire = b"\r\nMD0010001A" + b"1" * 33 + b" 4021 \r\n\x19"
    [err] = parse(wire)
    assert "forwarding number: more than 32 digits" in err.reason
    assert err.raw == b"MD0010001A" + b"1" * 33 + b" 4021 "
    [err] = parse(b"\r\nMD0010001A4000 " + b"2" * 33 + b" \r\n")
    assert "calling number: more than 32 digits" in err.reason


def test_zero_desk_and_terminal():
    assert parse(b"MD0000000D  \r\n") == [CallRecord(0, 0, "D", "", "", b"MD0000000D  \r\n")]


def test_mwi_commands_exact_bytes():
    fmt = MwiFormat()
    assert fmt.encode(True, "5551002") == bytes.fromhex(OP_HEX)
    assert fmt.encode(False, "5551002") == bytes.fromhex(RMV_HEX)
    assert parse_commands(bytes.fromhex(OP_HEX) + bytes.fromhex(RMV_HEX)) == [
        MwiCommand(True, "5551002", b"OP:MWI 5551002!\x04"),
        MwiCommand(False, "5551002", b"RMV:MWI 5551002!\x04")]


def test_mwi_format_padding_and_line_bytes():
    fmt = MwiFormat(pad_to=10)
    assert fmt.encode(True, "5551002") == b"OP:MWI 0005551002!\x04"
    assert fmt.encode(False, "12345678901") == b"RMV:MWI 12345678901!\x04"   # longer: as is
    assert fmt.line_bytes(7) == len(b"RMV:MWI 0005551002!\x04") == 20
    assert fmt.line_bytes(11) == 21
    assert MwiFormat().line_bytes(7) == len(MwiFormat().encode(False, "5551002")) == 17
    assert parse_commands(fmt.encode(True, "42")) == [
        MwiCommand(True, "0000000042", b"OP:MWI 0000000042!\x04")]


def test_mwi_failure_dms100_form():
    wire = bytes.fromhex(INV_HEX)
    assert parse(wire) == [MwiFailure("5551002", "INV", b"MWI5551002 INV\r\n")]
    with_dels = wire[:-1] + b"\x7f\x7f\x19"
    assert encode_mwi_failure("5551002") == with_dels
    assert parse(with_dels) == [MwiFailure("5551002", "INV", b"MWI5551002 INV\r\n")]


@pytest.mark.parametrize("kw,raw", [
    ({"space": True}, b"MWI 5551002 INV\r\n"),                      # TOSHVP
    ({"bang": True}, b"MWI5551002! INV\r\n"),                       # KSIAZEK
    ({"space": True, "bang": True}, b"MWI 5551002! INV\r\n"),
    ({"dels": b"\xff\xff"}, b"MWI5551002 INV\r\n"),
    ({"dels": b""}, b"MWI5551002 INV\r\n"),
])
def test_mwi_failure_variants(kw, raw):
    wire = encode_mwi_failure("5551002", **kw)
    assert wire == b"\r\n" + raw + kw.get("dels", b"\x7f\x7f") + b"\x19"
    assert parse(wire) == [MwiFailure("5551002", "INV", raw)]


@pytest.mark.parametrize("cause", ["INV", "BLK", "XYZ"])
def test_mwi_failure_causes_and_missing_eot(cause):
    wire = b"\r\nMWI5551002 " + cause.encode() + b"\r\n"
    r = SmdiReader()
    assert r.feed(wire) == [MwiFailure("5551002", cause, wire[2:])]   # at once, without ^Y
    assert encode_mwi_failure("5551002", cause).startswith(wire)


def test_dels_inside_the_trailer_are_skipped():
    for raw in (b"MWI5551002 BLK\x7f\r\xff\n", b"MD0010007D 1001 \xff\x7f\r\n",
                b"MD0010007D 1001 \r\x7f\n"):
        [rec] = parse(b"\r\n" + raw + b"\x7f\x19")
        assert rec.raw == raw


def test_bad_mwi_failure_records():
    for wire, why in [(b"MWI5551002 IN\r\n", "cause: expected an uppercase letter"),
                      (b"MWI5551002 inv\r\n", "cause: expected an uppercase letter"),
                      (b"MWI5551002INV\r\n", "a space before the cause"),
                      (b"MWI INV\r\n", "station number: expected a digit"),
                      (b"MWI5551002 INVX\r\n", "expected CR LF or ^Y")]:
        [err] = parse(wire)
        assert why in err.reason and err.reason.startswith("malformed MWI failure record")
        assert err.raw == wire[:-2]


# --------------------------------------------------------------------------- tolerance

GOOD = encode_call_record(7, "N", "5551002", "5551001")
GOOD_REC = CallRecord(1, 7, "N", "5551002", "5551001", record_raw(GOOD))


@pytest.mark.parametrize("noise", [b"M", b"MD0", b"MW", b"MWX", b"MMD", b"MDMD00", b"garbage",
                                   b"\x80\xfe", b"\xff\x7fM", b"D 1001 \r\n\x19"])
def test_leading_noise_is_reported_and_the_record_found(noise):
    for glue in (b"", b"\r\n"):
        wire = noise + glue + GOOD
        events = parse(wire)
        assert records(events) == [GOOD_REC]
        assert events[-1] == GOOD_REC
        skipped = b"".join(e.raw for e in errors(events))
        assert skipped == bytes(b for b in noise if b not in SMDI_FRAMING)
        assert_conserved(wire, events, SMDI_FRAMING)


def test_partial_md_in_noise_is_a_malformed_record():
    events = parse(b"MD0" + GOOD)
    assert events == [ProtocolError(events[0].reason, b"MD0"), GOOD_REC]
    assert events[0].reason.startswith("malformed MD record: desk number")


def test_record_without_eot_is_delivered_at_once():
    r = SmdiReader()
    wire = encode_call_record(3, "B", "4000", "4021", eot=False)
    assert r.feed(wire) == [CallRecord(1, 3, "B", "4000", "4021", wire[2:])]
    assert r.buffered == 0


def test_records_with_cr_lf_only_and_eot_only():
    wire = (b"MD0010001D 4021 \r\nMD0010002A4000 4021 \r\nMWI4000 INV\r\n"
            b"MD0010003B4000 \x19MWI4001 BLK\x19")
    assert parse(wire) == [
        CallRecord(1, 1, "D", "", "4021", b"MD0010001D 4021 \r\n"),
        CallRecord(1, 2, "A", "4000", "4021", b"MD0010002A4000 4021 \r\n"),
        MwiFailure("4000", "INV", b"MWI4000 INV\r\n"),
        CallRecord(1, 3, "B", "4000", "", b"MD0010003B4000 \x19"),
        MwiFailure("4001", "BLK", b"MWI4001 BLK\x19")]


def test_missing_trailing_space_and_stray_space():
    assert parse(b"MD0010007N5551002 5551001\r\n")[0].calling == "5551001"
    assert parse(b"MD0010007D 1001\r\n")[0].calling == "1001"
    # Asterisk's stray space after a full 10-digit forwarding field
    [rec] = parse(b"MD0010007N5551234567  5551001 \r\n")
    assert (rec.forwarding, rec.calling) == ("5551234567", "5551001")
    [rec] = parse(b"MD0010007D  1001 \r\n")
    assert (rec.forwarding, rec.calling) == ("", "1001")
    # only one stray space, and none once a calling number was read
    assert isinstance(parse(b"MD0010007D   1001 \r\n")[0], ProtocolError)
    assert isinstance(parse(b"MD0010007D 1001 1002 \r\n")[0], ProtocolError)


@pytest.mark.parametrize("wire,why", [
    (b"MD0010007N5551002\r\n", "a space after the forwarding number"),
    (b"MD001007D 1001 \r\n", "terminal number: expected 4 digits"),
    (b"MD01X0007D 1001 \r\n", "desk number: expected 3 digits"),
    (b"MD0010007d 1001 \r\n", "call type: expected an uppercase letter"),
    (b"MD0010007D 10a1 \r\n", "expected CR LF or ^Y, got b'a'"),
    (b"MD0010007D 1001 \rX\n", "expected LF after CR, got b'X' at offset 17"),
])
def test_malformed_md_records(wire, why):
    events = parse(wire)
    assert why in events[0].reason and events[0].reason.startswith("malformed MD record")
    assert records(events) == []
    assert_conserved(wire, events, SMDI_FRAMING)


def test_noise_runs_are_split_by_framing_and_high_bit_bytes_are_noise():
    events = parse(b"ab\r\ncd\x19\x80\x81\xffe")
    assert [e.raw for e in events] == [b"ab", b"cd", b"\x80\x81", b"e"]
    assert all(e.reason == "noise outside a record" for e in events)


def test_garbage_between_records():
    a = encode_call_record(1, "D", "", "4021")
    b = encode_mwi_failure("4000", "BLK", bang=True)
    c = encode_call_record(2, "B", "4000", "")
    wire = a + b"\x00junk MX" + b + b"\x80MW\r\nMD12" + c + b"tail"
    events = parse(wire)
    assert records(events) == [CallRecord(1, 1, "D", "", "4021", record_raw(a)),
                               MwiFailure("4000", "BLK", record_raw(b)),
                               CallRecord(1, 2, "B", "4000", "", record_raw(c))]
    assert [e.raw for e in errors(events)] == [b"\x00junk MX", b"\x80MW", b"MD12", b"tail"]
    assert_conserved(wire, events, SMDI_FRAMING)


def test_truncated_record_followed_by_a_good_one():
    for truncated in (b"\r\nMD0010008N55510", b"\r\nMD0010008", b"\r\nMWI55", b"\r\nMWI55 IN"):
        # the good record's leading CR LF ends the bad bytes
        events = parse(truncated + GOOD)
        assert records(events) == [GOOD_REC]
        assert [e.raw for e in errors(events)] == [truncated[2:]]
    # "MD...5551003 555" + CR LF is a complete record (missing trailing space tolerated)
    assert records(parse(b"\r\nMD0010008N5551003 555" + GOOD))[0].calling == "555"
    events = parse(b"\r\nMD0010008N5551003 5MD0010009D 1001 \r\n\x19")
    assert [e.raw for e in errors(events)] == [b"MD0010008N5551003 5"]
    assert records(events) == [CallRecord(1, 9, "D", "", "1001", b"MD0010009D 1001 \r\n")]


def test_garbage_with_partial_md_before_a_record():
    wire = b"MD0010007MD001MDMD0010009D 1001 \r\n"
    events = parse(wire)
    assert records(events) == [CallRecord(1, 9, "D", "", "1001", b"MD0010009D 1001 \r\n")]
    assert [e.raw for e in errors(events)] == [b"MD0010007", b"MD001", b"MD"]


def test_over_long_record():
    head = b"MD0010007D 1001 "
    exact = head + b"\x7f" * (MAX_RECORD - len(head) - 2) + b"\r\n"
    assert len(exact) == MAX_RECORD
    assert parse(exact) == [CallRecord(1, 7, "D", "", "1001", exact)]
    too_long = head + b"\x7f" * (MAX_RECORD - len(head) - 1) + b"\r\n"
    events = parse(too_long + GOOD)
    assert events == [ProtocolError(f"malformed MD record: no end within {MAX_RECORD} bytes",
                                    head), GOOD_REC]
    # the reader does not hold more than MAX_RECORD bytes of a candidate
    r = SmdiReader()
    r.feed(head + b"\x7f" * 1000)
    assert r.buffered == 0


def test_noise_run_is_cut_at_the_limit():
    limit = 256 - MAX_RECORD
    events = parse(b"x" * (limit * 2 + 5), max_buffer=256)
    assert [len(e.raw) for e in events] == [limit, limit, 5]
    assert events[0].reason.endswith(f"(run cut at {limit} bytes)")


def test_buffer_bound_with_a_megabyte_of_noise():
    rng = random.Random(1)
    noise = bytes(rng.choice(b"abcdefgMDW\x80\xfe ") for _ in range(1 << 20))
    r = SmdiReader()
    events = r.feed(noise)
    assert r.buffered <= DEFAULT_MAX_BUFFER
    events += r.close()
    assert sum(len(e.raw) for e in events) == len(noise)
    assert all(isinstance(e, ProtocolError) and len(e.raw) <= DEFAULT_MAX_BUFFER for e in events)
    assert_conserved(noise, events, SMDI_FRAMING)
    # feeding in pieces keeps the held bytes and the allocated memory bounded
    r = SmdiReader()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for k in range(0, len(noise), 4096):
            r.feed(noise[k:k + 4096])
            assert r.buffered <= DEFAULT_MAX_BUFFER
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak - base < 256 * 1024
    assert records(r.feed(GOOD)) == [GOOD_REC]


def test_close_reports_a_partial_record_and_resets():
    r = SmdiReader()
    assert r.feed(b"\r\nMD0010007N5551") == []
    assert r.buffered == len(b"MD0010007N5551")
    [err] = r.close()
    assert err.raw == b"MD0010007N5551"
    assert err.reason == "malformed MD record: the stream ended inside the record at offset 14"
    assert r.buffered == 0 and r.close() == []
    assert r.feed(GOOD) == [GOOD_REC]


def test_close_joins_a_trailing_m_to_the_noise_run():
    r = SmdiReader()
    assert r.feed(b"abcM") == []
    assert r.buffered == 4
    assert r.close() == [ProtocolError("noise outside a record", b"abcM")]


@pytest.mark.parametrize("cut", range(len(GOOD + encode_mwi_failure("5551002")) + 1))
def test_record_split_at_every_offset(cut):
    wire = GOOD + encode_mwi_failure("5551002")
    expected = [GOOD_REC, MwiFailure("5551002", "INV", b"MWI5551002 INV\r\n")]
    r = SmdiReader()
    first = r.feed(wire[:cut])
    assert all(isinstance(e, (CallRecord, MwiFailure)) for e in first)
    assert first + r.feed(wire[cut:]) + r.close() == expected


def long_stream(seed: int, count: int = 150) -> tuple[bytes, list]:
    rng = random.Random(seed)
    wire, expected = bytearray(), []
    for _ in range(count):
        if rng.random() < 0.7:
            args = (rng.randrange(10000), rng.choice("DABNUR"),
                    "".join(rng.choices("0123456789", k=rng.choice([0, 4, 7, 10]))),
                    "".join(rng.choices("0123456789", k=rng.choice([0, 4, 7, 10]))))
            desk = rng.randrange(1000)
            enc = encode_call_record(*args, desk=desk, eot=rng.random() < 0.8)
            expected.append(CallRecord(desk, *args, raw=record_raw(enc)))
        else:
            number = "".join(rng.choices("0123456789", k=7))
            cause = rng.choice(["INV", "BLK"])
            enc = encode_mwi_failure(number, cause, space=rng.random() < .5,
                                     bang=rng.random() < .5,
                                     dels=rng.choice([b"", b"\x7f\x7f", b"\xff\xff"]))
            expected.append(MwiFailure(number, cause, record_raw(enc)))
        wire += enc
        if rng.random() < 0.3:
            wire += bytes(rng.choice(b"xyzD0 \x80\xfe\r\n\x19MW") for _ in range(rng.randrange(9)))
    return bytes(wire), expected


def test_byte_by_byte_equals_one_shot():
    wire, expected = long_stream(7)
    one_shot = parse(wire)
    r = SmdiReader()
    by_byte: list = []
    for k in range(len(wire)):
        by_byte += r.feed(wire[k:k + 1])
        assert r.buffered <= MAX_RECORD
    by_byte += r.close()
    assert by_byte == one_shot
    assert records(one_shot) == expected
    assert_conserved(wire, one_shot, SMDI_FRAMING)


# --------------------------------------------------------------------------- command reader

def test_command_reader_variants():
    wire = (b"OP: MWI 5551002!\x04RMV: MWI 4000!\r\nOP:MWI 1!OP:MWI 2!\r\n"
            b"RMV:MWI 3!\x04\x04\x7fOP:MWI 4!\n")
    assert parse_commands(wire) == [
        MwiCommand(True, "5551002", b"OP: MWI 5551002!\x04"),
        MwiCommand(False, "4000", b"RMV: MWI 4000!"),
        MwiCommand(True, "1", b"OP:MWI 1!"),
        MwiCommand(True, "2", b"OP:MWI 2!"),
        MwiCommand(False, "3", b"RMV:MWI 3!\x04"),
        MwiCommand(True, "4", b"OP:MWI 4!")]


@pytest.mark.parametrize("wire,why", [
    (b"OP:MWI 5551002\x04", "expected b'!' after the number"),
    (b"OP:MWI 5551002!x", "expected b'\\x04', CR, LF or a next command"),
    (b"OP:MWI !\x04", "station number: expected a digit"),
    (b"OP:MWI5551002!\x04", "expected b'OP:MWI '"),
    (b"OP:  MWI 1!\x04", "expected b'OP:MWI '"),
    (b"RMV:MWI 1" + b"2" * 32 + b"!\x04", "more than 32 digits"),
])
def test_command_reader_rejects(wire, why):
    events = parse_commands(wire + b"OP:MWI 9!\x04")
    assert why in events[0].reason, events[0].reason
    assert events[-1] == MwiCommand(True, "9", b"OP:MWI 9!\x04")
    assert_conserved(wire, events[:-1], CMD_FRAMING)


def test_command_reader_missing_eot_waits_for_the_next_tag():
    r = CommandReader()
    assert r.feed(b"OP:MWI 1!RM") == []
    assert r.feed(b"V:MWI 2!\x04") == [MwiCommand(True, "1", b"OP:MWI 1!"),
                                      MwiCommand(False, "2", b"RMV:MWI 2!\x04")]
    assert r.feed(b"OP:MWI 3!") == []
    [err] = r.close()
    assert err.raw == b"OP:MWI 3!" and "stream ended" in err.reason


def test_command_reader_custom_format_round_trip():
    fmt = MwiFormat(on_prefix="MWON ", off_prefix="MWOFF ", suffix="\r", pad_to=4)
    wire = fmt.encode(True, "7") + fmt.encode(False, "12345") + b"noise\n" + fmt.encode(True, "8")
    assert wire.startswith(b"MWON 0007\rMWOFF 12345\r")
    assert parse_commands(wire, fmt=fmt) == [
        MwiCommand(True, "0007", b"MWON 0007\r"), MwiCommand(False, "12345", b"MWOFF 12345\r"),
        ProtocolError("noise outside a record", b"noise"), MwiCommand(True, "0008", b"MWON 0008\r")]


@pytest.mark.parametrize("fmt,field", [
    (MwiFormat(off_prefix="OP:X "), "must differ before their colon"),
    (MwiFormat(on_prefix="OP", off_prefix="OPX"), "must differ before their colon"),
    (MwiFormat(suffix="1!"), "suffix must not start with a digit"),
    (MwiFormat(on_prefix="ÖP:MWI "), "on_prefix must be printable ASCII"),
])
def test_command_reader_rejects_ambiguous_formats(fmt, field):
    with pytest.raises(ValueError, match=field):
        CommandReader(fmt=fmt)


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize("args,kw,name", [
    ((10000, "D"), {}, "terminal"), ((-1, "D"), {}, "terminal"), ((True, "D"), {}, "terminal"),
    ((1, "D"), {"desk": 1000}, "desk"), ((1, "D"), {"desk": "1"}, "desk"),
    ((1, "d"), {}, "call_type"), ((1, "DA"), {}, "call_type"), ((1, ""), {}, "call_type"),
    ((1, "É"), {}, "call_type"), ((1, "D", "12a"), {}, "forwarding"),
    ((1, "D", "1" * 33), {}, "forwarding"), ((1, "D", "", "٣"), {}, "calling"),
    ((1, "D", "", " 1"), {}, "calling"), ((1, "D", 1234), {}, "forwarding"),
    ((1, "D"), {"eot": 1}, "eot"),
])
def test_encode_call_record_rejects(args, kw, name):
    with pytest.raises(ValueError, match=f"^{name} "):
        encode_call_record(*args, **kw)


@pytest.mark.parametrize("args,kw,name", [
    (("",), {}, "number"), (("12a",), {}, "number"), (("1" * 33,), {}, "number"),
    (("１２",), {}, "number"), (("1", "inv"), {}, "cause"), (("1", "IN"), {}, "cause"),
    (("1",), {"dels": b"\x00"}, "dels"), (("1",), {"dels": "\x7f"}, "dels"),
    (("1",), {"space": "yes"}, "space"), (("1",), {"bang": None}, "bang"),
])
def test_encode_mwi_failure_rejects(args, kw, name):
    with pytest.raises(ValueError, match=f"^{name} "):
        encode_mwi_failure(*args, **kw)


@pytest.mark.parametrize("fmt,on,number,name", [
    (MwiFormat(), True, "", "number"), (MwiFormat(), True, "55x", "number"),
    (MwiFormat(), True, "1" * 33, "number"), (MwiFormat(), 1, "1", "on"),
    (MwiFormat(on_prefix="ÖP:MWI "), True, "1", "on_prefix"),
    (MwiFormat(suffix="!é"), True, "1", "suffix"), (MwiFormat(off_prefix=""), True, "1",
                                                    "off_prefix"),
    (MwiFormat(pad_to=33), True, "1", "pad_to"), (MwiFormat(pad_to=-1), True, "1", "pad_to"),
])
def test_mwi_format_encode_rejects(fmt, on, number, name):
    with pytest.raises(ValueError, match=f"^{name} "):
        fmt.encode(on, number)


def test_line_bytes_and_readers_reject_bad_sizes():
    for bad in (0, 33, "7"):
        with pytest.raises(ValueError, match="^number_len "):
            MwiFormat().line_bytes(bad)
    for bad in (2 * MAX_RECORD - 1, 0, 4096.0):
        with pytest.raises(ValueError, match="^max_buffer "):
            SmdiReader(max_buffer=bad)
        with pytest.raises(ValueError, match="^max_buffer "):
            CommandReader(max_buffer=bad)
    with pytest.raises(TypeError):
        SmdiReader().feed("MD0010007D 1001 \r\n")


# --------------------------------------------------------------------------- properties

SMDI_PIECES = [b"M", b"D", b"W", b"I", b"MD", b"MWI", b"MD0010007", b"0", b"7", b"1001", b" ",
               b"!", b"INV", b"N", b"\r", b"\n", b"\r\n", b"\x19", b"\x7f", b"\xff", b"\x80", b"x"]
CMD_PIECES = [b"OP:", b"RMV:", b"MWI ", b"O", b"R", b"P", b": ", b"5551002", b"!", b"\x04", b"\r",
              b"\n", b"\x7f", b"\xff", b"\x80", b"x", b" "]


def stream(pieces: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=400),
                     st.lists(st.sampled_from(pieces), max_size=120).map(b"".join))


def split_feed(reader, data: bytes, cuts: list[int], max_buffer: int) -> list:
    events: list = []
    last = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        events += reader.feed(data[last:cut])
        assert reader.buffered <= max_buffer
        last = cut
    return events + reader.close()


@settings(max_examples=300, deadline=None)
@given(data=stream(SMDI_PIECES), cuts=st.lists(st.integers(0, 400), max_size=20),
       max_buffer=st.sampled_from([2 * MAX_RECORD, 300, DEFAULT_MAX_BUFFER]))
def test_fuzz_smdi_reader(data, cuts, max_buffer):
    events = split_feed(SmdiReader(max_buffer=max_buffer), data, cuts, max_buffer)
    assert all(type(e) in (CallRecord, MwiFailure, ProtocolError) for e in events)
    assert all(type(e.raw) is bytes and len(e.raw) <= max_buffer for e in events)
    assert events == parse(data, max_buffer=max_buffer)
    assert_conserved(data, events, SMDI_FRAMING)


@settings(max_examples=300, deadline=None)
@given(data=stream(CMD_PIECES), cuts=st.lists(st.integers(0, 400), max_size=20),
       max_buffer=st.sampled_from([2 * MAX_RECORD, DEFAULT_MAX_BUFFER]))
def test_fuzz_command_reader(data, cuts, max_buffer):
    events = split_feed(CommandReader(max_buffer=max_buffer), data, cuts, max_buffer)
    assert all(type(e) in (MwiCommand, ProtocolError) for e in events)
    assert all(type(e.raw) is bytes and len(e.raw) <= max_buffer for e in events)
    assert events == parse_commands(data, max_buffer=max_buffer)
    assert_conserved(data, events, CMD_FRAMING)


digits = st.text("0123456789", max_size=12)
number = st.text("0123456789", min_size=1, max_size=12)


@st.composite
def smdi_record(draw) -> tuple[bytes, CallRecord | MwiFailure]:
    if draw(st.booleans()):
        terminal, desk = draw(st.integers(0, 9999)), draw(st.integers(0, 999))
        call_type = draw(st.sampled_from("DABNUCEHIR"))
        fwd, calling = draw(digits), draw(digits)
        enc = encode_call_record(terminal, call_type, fwd, calling, desk=desk,
                                 eot=draw(st.booleans()))
        return enc, CallRecord(desk, terminal, call_type, fwd, calling, record_raw(enc))
    num, cause = draw(number), draw(st.sampled_from(["INV", "BLK", "ABC"]))
    enc = encode_mwi_failure(num, cause, space=draw(st.booleans()), bang=draw(st.booleans()),
                             dels=draw(st.binary(max_size=3).map(
                                 lambda b: bytes(0x7F | (x & 0x80) for x in b))))
    return enc, MwiFailure(num, cause, record_raw(enc))


@settings(max_examples=300, deadline=None)
@given(items=st.lists(st.tuples(smdi_record(), st.binary(max_size=12).map(
           lambda b: b.replace(b"M", b""))), max_size=12),
       cuts=st.lists(st.integers(0, 600), max_size=10))
def test_valid_records_survive_noise(items, cuts):
    wire = b"".join(enc + noise for (enc, _), noise in items)
    events = parse_split(wire, cuts)
    assert records(events) == [rec for (_, rec), _ in items]
    assert_conserved(wire, events, SMDI_FRAMING)


@st.composite
def command(draw) -> tuple[bytes, MwiCommand]:
    on, num = draw(st.booleans()), draw(number)
    wire = MwiFormat().encode(on, num)
    form = draw(st.sampled_from(["std", "dms", "cr"]))
    if form == "dms":
        wire = wire.replace(b":", b": ", 1)
    elif form == "cr":
        wire = wire[:-1]
    return wire + (b"\r\n" if form == "cr" else b""), MwiCommand(on, num, wire)


@settings(max_examples=300, deadline=None)
@given(items=st.lists(st.tuples(command(), st.binary(max_size=12).map(
           lambda b: b.replace(b"O", b"").replace(b"R", b""))), max_size=12),
       cuts=st.lists(st.integers(0, 400), max_size=10))
def test_valid_commands_survive_noise(items, cuts):
    wire = b"".join(enc + noise for (enc, _), noise in items)
    r = CommandReader()
    events = split_feed(r, wire, cuts, DEFAULT_MAX_BUFFER)
    assert records(events) == [cmd for (_, cmd), _ in items]
    assert_conserved(wire, events, CMD_FRAMING)
