"""The SIP worker's pipe protocol (telephony/sip/core/worker_protocol.py), without a process:
the op lines as the worker's shell reads them (the shared ``LineFramer`` with ``resync=True``
and :func:`take_ops`), the op checks, the event encoding and the SIP text helpers.  Bad input
of every kind, and property tests: arbitrary bytes in arbitrary chunks give only dicts with a
string ``"op"`` or ``ControlError`` items, exactly the lines of the stream, with the framer's
buffer bounded."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.core.control import ControlError
from telephony.core.framing import LineFramer
from telephony.sip.core.worker_protocol import (
    MAX_BODY,
    MAX_HEADERS,
    MAX_ID,
    MAX_LINE,
    MAX_TRANSFER_URI,
    NOTIFY_TYPE,
    OpError,
    check_op,
    clean_text,
    dtmf_from_info,
    encode_event,
    error_event,
    is_plain_dtmf_info,
    request_uri_of,
    take_ops,
)

OVERLONG = ControlError(f"line longer than {MAX_LINE} bytes", b"")


def read(*chunks: bytes, eof: bool = False, max_line: int = MAX_LINE) -> list:
    """What the worker's reader makes of ``chunks``: everything take_ops returns, in order."""
    framer = LineFramer(max_line, resync=True)
    out = []
    for chunk in chunks:
        framer.receive_data(chunk)
        out += take_ops(framer)
    if eof:
        framer.receive_data(b"")
        out += take_ops(framer)
    return out


# ============================================================================ reading op lines

def test_ops_come_out_in_order_across_chunks():
    stream = b'{"op": "stats"}\n{"op": "answer", "call": "w1-1"}\r\n{"op": "shut'
    assert read(stream, b'down"}\n') == [
        {"op": "stats"}, {"op": "answer", "call": "w1-1"}, {"op": "shutdown"}]
    assert read(*(bytes([b]) for b in stream + b'down"}\n')) == read(stream + b'down"}\n')


def test_blank_lines_are_ignored():
    assert read(b"\n\r\n   \n\t\r\n" + b'{"op": "stats"}\n') == [{"op": "stats"}]


@pytest.mark.parametrize("line, reason", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object but list"),
    (b'{"no": "op"}', 'no string "op" field'),
    (b'{"op": 5}', '"op" is not a string'),
    (b'\xff\xfe{"op": "stats"}', "not UTF-8"),
    (b'{"op": NaN}', "not JSON"),
    (b"[" * 60_000, "JSON nested too deeply"),
])
def test_a_line_that_is_no_op_is_a_control_error_and_the_next_line_parses(line, reason):
    out = read(line + b"\n" + b'{"op": "stats"}\n')
    assert len(out) == 2 and isinstance(out[0], ControlError), out
    assert out[0].reason.startswith(reason) and out[0].raw == line
    assert out[1] == {"op": "stats"}


def test_a_line_over_the_limit_is_reported_once_and_skipped_to_its_end():
    # in one chunk, and cut the way the worker's 64 KiB reads cut it
    line = b"x" * 70000 + b"\n" + b'{"op": "stats"}\n'
    assert read(line) == [OVERLONG, {"op": "stats"}]
    assert read(line[:65536], line[65536:]) == [OVERLONG, {"op": "stats"}]
    assert read(*(line[i:i + 1000] for i in range(0, len(line), 1000))) == \
        [OVERLONG, {"op": "stats"}]


def test_the_limit_is_inclusive():
    op = b'{"op": "stats", "pad": "'
    exact = op + b"p" * (MAX_LINE - len(op) - 2) + b'"}'
    assert len(exact) == MAX_LINE
    assert read(exact + b"\n") == [{"op": "stats", "pad": "p" * (MAX_LINE - len(op) - 2)}]
    assert read(exact[:-2] + b'p"}\n') == [OVERLONG]


def test_end_of_stream_drops_an_unfinished_line_and_reports_an_overlong_one():
    assert read(b'{"op": "stats"}\n{"op": "shutdown"}', eof=True) == [{"op": "stats"}]
    assert read(b"y" * (MAX_LINE + 5), eof=True) == [OVERLONG]
    assert read(b"y" * (MAX_LINE + 5)) == []            # reported at its end, not before
    assert read(b"", eof=True) == []


def test_the_message_names_the_framers_limit():
    assert read(b"x" * 20 + b"\n", max_line=16) == [ControlError("line longer than 16 bytes", b"")]


def expected(stream: bytes, max_line: int) -> list:
    """The spec, on the whole stream at once: every ``\\n``-terminated line in order; one over
    ``max_line`` bytes is an over-long error, a blank one nothing, any other a parsed op line
    (or its ControlError); the unfinished end is dropped."""
    out = []
    for line in stream.split(b"\n")[:-1]:
        if len(line) > max_line:
            out.append(ControlError(f"line longer than {max_line} bytes", b""))
        elif line.strip():
            out.append(read(line + b"\n")[0])
    return out


PIECES = st.sampled_from([b"\n", b"\r\n", b"x" * 40, b'{"op": "stats"}', b'{"op": 5}', b"[",
                          b"\xff", b" ", b'{"op": "play", "call": "c", "id": 1, "path": "a"}'])
STREAM = st.lists(st.one_of(st.binary(max_size=80), PIECES), max_size=40).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(STREAM, st.lists(st.integers(min_value=1, max_value=90), max_size=30),
       st.sampled_from([16, 64, 1000]), st.booleans())
def test_any_bytes_in_any_chunks_give_exactly_the_streams_lines(stream, cuts, max_line, eof):
    framer = LineFramer(max_line, resync=True)
    out: list = []
    rest = stream
    for n in [*cuts, len(stream)]:
        chunk, rest = rest[:n], rest[n:]
        if chunk:
            framer.receive_data(chunk)
        items = take_ops(framer)      # never raises
        assert framer.buffered <= max_line
        for item in items:
            assert isinstance(item, ControlError) or (
                isinstance(item, dict) and isinstance(item["op"], str)), item
        out += items
    assert not rest
    # reported over-long lines come out once, at their end; the end of the stream adds only
    # the over-long line it cut (an unfinished line is dropped)
    if eof:
        framer.receive_data(b"")
        out += take_ops(framer)
        assert framer.buffered == 0
        last = stream.rsplit(b"\n", 1)[-1]
        tail = [ControlError(f"line longer than {max_line} bytes", b"")] \
            if len(last) > max_line else []
    else:
        tail = []
    assert out == expected(stream, max_line) + tail


# ============================================================================ op checks

def test_every_op_checked_and_normalized():
    assert check_op({"op": "answer", "call": "w1-1", "extra": [1]}) == {"op": "answer", "call": "w1-1"}
    assert check_op({"op": "hangup", "call": "w1-1"}) == {"op": "hangup", "call": "w1-1"}
    assert check_op({"op": "reject", "call": "c"}) == {"op": "reject", "call": "c", "code": 486}
    assert check_op({"op": "reject", "call": "c", "code": 603})["code"] == 603
    assert check_op({"op": "play", "call": "c", "id": 0, "path": "a.wav"}) == \
        {"op": "play", "call": "c", "id": 0, "path": "a.wav"}
    assert check_op({"op": "record", "call": "c", "id": MAX_ID, "path": "/x/M.WAV"})["id"] == MAX_ID
    assert check_op({"op": "stop_play", "call": "c", "id": 3}) == \
        {"op": "stop_play", "call": "c", "id": 3}
    assert check_op({"op": "stop_record", "call": "c", "id": 3})["id"] == 3
    assert check_op({"op": "stats"}) == {"op": "stats"}
    assert check_op({"op": "shutdown", "call": 5}) == {"op": "shutdown"}
    target = "sip:" + "0" * (MAX_TRANSFER_URI - 4)
    assert check_op({"op": "transfer", "call": "c", "id": 1, "target": target}) == \
        {"op": "transfer", "call": "c", "id": 1, "target": target}


def test_notify_fields():
    f = check_op({"op": "notify", "id": 7, "target": "sips:1001@pbx:5061", "body": "b",
                  "headers": {"Event": "message-summary", "c": "text/plain", "X-A": "1"}})
    assert f == {"op": "notify", "id": 7, "target": "sips:1001@pbx:5061", "account": None,
                 "body": "b", "content_type": "text/plain",
                 "headers": [("Event", "message-summary"), ("X-A", "1")]}
    f = check_op({"op": "notify", "id": 1, "target": "sip:a@b", "account": "sip:1001@pbx",
                  "headers": None})
    assert (f["account"], f["body"], f["content_type"], f["headers"]) == \
        ("sip:1001@pbx", "", NOTIFY_TYPE, [])
    assert check_op({"op": "notify", "id": 1, "target": "sip:a@b",
                     "headers": {"Content-Type": "x/y"}})["content_type"] == "x/y"


NOTIFY = {"op": "notify", "id": 1, "target": "sip:a@127.0.0.1"}


@pytest.mark.parametrize("msg, message", [
    ({"op": "dance"}, "unknown op 'dance'"),
    ({"op": "answer"}, "call must be a non-empty string"),
    ({"op": "answer", "call": ""}, "call must be a non-empty string"),
    ({"op": "answer", "call": 5}, "call must be a non-empty string"),
    ({"op": "answer", "call": "c" * 65}, "call is longer than 64 characters"),
    ({"op": "hangup", "call": "a\x00b"}, "call contains NUL"),
    ({"op": "reject", "call": "c", "code": 200}, "code must be an integer from 300 to 699"),
    ({"op": "reject", "call": "c", "code": 700}, "code must be an integer from 300 to 699"),
    ({"op": "reject", "call": "c", "code": True}, "code must be an integer from 300 to 699"),
    ({"op": "reject", "call": "c", "code": "486"}, "code must be an integer from 300 to 699"),
    ({"op": "play", "call": "c", "id": "x", "path": "a.wav"}, "id must be an integer"),
    ({"op": "play", "call": "c", "id": True, "path": "a.wav"}, "id must be an integer"),
    ({"op": "play", "call": "c", "id": -1, "path": "a.wav"}, "id must be an integer"),
    ({"op": "play", "call": "c", "id": MAX_ID + 1, "path": "a.wav"}, "id must be an integer"),
    ({"op": "play", "call": "c", "id": 1.0, "path": "a.wav"}, "id must be an integer"),
    ({"op": "play", "call": "c", "id": 1}, "path must be a non-empty string"),
    ({"op": "play", "call": "c", "id": 1, "path": "p" * 4097}, "path is longer than 4096"),
    ({"op": "record", "call": "c", "id": 1, "path": "a.mp3"}, "path of a recording must end"),
    ({"op": "stop_record", "call": "c"}, "id must be an integer"),
    ({**NOTIFY, "target": "mailto:x"}, "target must be a sip: or sips: URI"),
    ({**NOTIFY, "target": "sip:a b"}, "target must be a sip: or sips: URI"),
    ({**NOTIFY, "id": None}, "id must be an integer"),
    ({**NOTIFY, "account": "tel:1001"}, "account must be a sip: or sips: URI"),
    ({**NOTIFY, "body": 5}, f"body must be a string of at most {MAX_BODY} characters"),
    ({**NOTIFY, "body": "b" * (MAX_BODY + 1)}, "body must be a string"),
    ({**NOTIFY, "body": "a\x00"}, "body must be a string"),
    ({**NOTIFY, "headers": ["Event"]}, f"headers must be an object of at most {MAX_HEADERS}"),
    ({**NOTIFY, "headers": {f"X-{i}": "1" for i in range(MAX_HEADERS + 1)}}, "headers must be"),
    ({**NOTIFY, "headers": {"Via": "x"}}, "header Via is set by the SIP stack"),
    ({**NOTIFY, "headers": {"i": "x"}}, "header i is set by the SIP stack"),
    ({**NOTIFY, "headers": {"CONTACT": "x"}}, "header CONTACT is set by the SIP stack"),
    ({**NOTIFY, "headers": {"X": "a\r\nB: c"}}, "header X must not contain CR or LF"),
    ({**NOTIFY, "headers": {"X": 1}}, "header X must be a string of at most 1024"),
    ({**NOTIFY, "headers": {"X": "v" * 1025}}, "header X must be a string of at most 1024"),
    ({**NOTIFY, "headers": {"Bad Name": "1"}}, "is not a SIP token"),
    ({**NOTIFY, "headers": {"": "1"}}, "is not a SIP token"),
    ({"op": "transfer", "call": "c", "id": 7, "target": "tel:0"}, "target must be a sip:"),
    ({"op": "transfer", "call": "c", "id": 8, "target": "sip:0@a\r\nX: y"},
     "target must not contain CR or LF"),
    ({"op": "transfer", "call": "c", "id": 9, "target": "sip:" + "0" * MAX_TRANSFER_URI},
     f"target is longer than {MAX_TRANSFER_URI} characters"),
])
def test_bad_ops_are_refused_with_a_message(msg, message):
    with pytest.raises(OpError) as exc:
        check_op(msg)
    assert message in str(exc.value)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["answer", "reject", "play", "record", "stop_play", "stop_record",
                        "hangup", "transfer", "notify", "stats", "shutdown", "x"]),
       st.dictionaries(st.sampled_from(["call", "id", "path", "code", "target", "account",
                                        "body", "headers"]),
                       st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=30),
                                    lambda c: st.lists(c, max_size=3)
                                    | st.dictionaries(st.text(max_size=8), c, max_size=3),
                                    max_leaves=6)))
def test_check_op_raises_only_op_errors(op, fields):
    try:
        out = check_op({**fields, "op": op})
    except OpError as exc:
        assert str(exc)
    else:
        assert out["op"] == op


# ============================================================================ events out

def test_encode_event_is_one_compact_utf8_line():
    line = encode_event({"ev": "dtmf", "call": "w1-1", "digit": "5", "via": "rfc2833"})
    assert line == b'{"ev":"dtmf","call":"w1-1","digit":"5","via":"rfc2833"}\n'
    assert encode_event({"ev": "busy", "from": "\u00e9"}) == '{"ev":"busy","from":"\u00e9"}\n'.encode()
    assert json.loads(encode_event({"ev": "x", "reason": "a\ud800b"})) == {"ev": "x", "reason": "a?b"}


def test_an_incoming_event_too_long_has_its_raw_cut_and_any_other_becomes_an_error():
    raw = "INVITE " + "\u00e9" * MAX_LINE
    ev = {"ev": "incoming", "call": "w1-1", "raw": raw}
    line = encode_event(ev)
    assert len(line) <= MAX_LINE and line.endswith(b"\n")
    got = json.loads(line)
    assert got["call"] == "w1-1" and raw.startswith(got["raw"]) and len(got["raw"]) > 1000
    assert ev["raw"] == raw                                   # the caller's dict is not changed
    assert json.loads(encode_event({"ev": "busy", "reason": "r" * MAX_LINE})) == \
        {"ev": "error", "message": "busy event too long"}
    assert json.loads(encode_event({"ev": "incoming", "raw": "", "to": "t" * MAX_LINE})) == \
        {"ev": "error", "message": "incoming event too long"}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=3000), st.integers(min_value=0, max_value=MAX_LINE // 2))
def test_encode_event_always_fits_a_line(raw, pad):
    line = encode_event({"ev": "incoming", "raw": raw * 30, "to": "t" * pad})
    assert len(line) <= MAX_LINE and line.count(b"\n") == 1 and line.endswith(b"\n")
    assert json.loads(line)["ev"] in ("incoming", "error")


def test_error_event_takes_ref_op_and_call_from_the_op():
    assert error_event("no call 'w1-9'", {"op": "play", "call": "w1-9", "id": 4}) == \
        {"ev": "error", "message": "no call 'w1-9'", "ref": 4, "op": "play", "call": "w1-9"}
    assert error_event("bad line: not JSON") == {"ev": "error", "message": "bad line: not JSON"}
    assert error_event("m", {"op": 5, "call": ["x"], "id": True}) == {"ev": "error", "message": "m"}
    assert error_event("m", {"op": "o" * 100, "call": "c" * 100, "id": -3}) == \
        {"ev": "error", "message": "m", "ref": -3, "op": "o" * 64, "call": "c" * 64}
    assert error_event("x" * 5000, "not a dict")["message"] == "x" * 1000  # type: ignore[arg-type]


def test_clean_text():
    cleaned = clean_text("Caller \udce9!")   # SWIG's decoding of a Latin-1 byte
    assert cleaned.startswith("Caller \ufffd") and cleaned.endswith("\ufffd!")
    assert set(cleaned[7:-1]) == {"\ufffd"} and cleaned.encode("utf-8")
    assert clean_text("ok \u00e9") == "ok \u00e9"
    assert clean_text(None) == "" and clean_text(b"x") == ""


# ============================================================================ SIP text

def test_request_uri_of():
    assert request_uri_of("INVITE sip:5000@127.0.0.1:5070 SIP/2.0\r\nVia: x\r\n") == \
        "sip:5000@127.0.0.1:5070"
    assert request_uri_of("INVITE sip:5000@pbx SIP/2.0") == "sip:5000@pbx"
    for bad in ("", "garbage", "INVITE sip:a@b HTTP/1.1\r\n", "INVITE  sip:a SIP/2.0", "\r\n"):
        assert request_uri_of(bad) == ""


def info(ctype: str, body: str, eol: str = "\r\n") -> str:
    return eol.join(["INFO sip:w@127.0.0.1 SIP/2.0", "Via: SIP/2.0/UDP x", ctype,
                     f"Content-Length: {len(body)}", "", body])


@pytest.mark.parametrize("ctype, body, digit", [
    ("Content-Type: application/dtmf-relay", "Signal=5\r\nDuration=160\r\n", "5"),
    ("content-type: Application/DTMF-Relay", "Duration=160\r\nsignal = 10\r\n", "*"),
    ("c: application/dtmf-relay", "Signal=11", "#"),
    ("Content-Type: application/dtmf-relay", "Signal=a", "A"),
    ("Content-Type: application/dtmf", "7", "7"),
    ("Content-Type: application/dtmf;x=1", " d\r\n", "D"),
    ("Content-Type: application/dtmf", "12", None),
    ("Content-Type: application/dtmf-relay", "Duration=160", None),
    ("Content-Type: application/dtmf-relay", "Signal=E", None),
    ("Content-Type: text/plain", "5", None),
    ("X-No-Type: 1", "5", None),
])
def test_dtmf_from_info(ctype, body, digit):
    assert dtmf_from_info(info(ctype, body)) == digit
    assert dtmf_from_info(info(ctype, body, eol="\n")) == digit


def test_is_plain_dtmf_info():
    assert is_plain_dtmf_info(info("Content-Type: application/dtmf", "5"))
    assert is_plain_dtmf_info(info("c: APPLICATION/DTMF ; x=1", "5"))
    assert is_plain_dtmf_info(info("Content-Type: application/dtmf", "5", eol="\n"))
    assert not is_plain_dtmf_info(info("Content-Type: application/dtmf-relay", "Signal=5"))
    assert not is_plain_dtmf_info(info("Content-Type: text/plain", "application/dtmf"))
    assert not is_plain_dtmf_info("")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_sip_text_helpers_take_any_text(text):
    assert isinstance(request_uri_of(text), str)
    assert isinstance(is_plain_dtmf_info(text), bool)
    digit = dtmf_from_info(text)
    assert digit is None or (len(digit) == 1 and digit in "0123456789*#ABCD")
    assert clean_text(text) == text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
