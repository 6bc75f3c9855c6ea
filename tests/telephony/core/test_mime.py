"""telephony/core/mime.py: the MIME form of a stored message, without I/O."""
from __future__ import annotations

import email.utils
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.core.events import Reason
from telephony.core.mime import (
    HEADER_LIMIT,
    MAX_MESSAGE,
    StoredMessage,
    StoreError,
    age_key,
    build_mime,
    check_mailbox,
    check_message,
    parse_headers,
    parse_mime,
    parse_time,
    safe_name,
    stored_message,
)
from tests.telephony.messages import make_message


def test_mime_round_trip():
    msg = make_message(3, caller="+49 (30) 1234", forwarding="", reason=Reason.BUSY)
    data = build_mime(msg)
    headers, wav = parse_mime(data)
    assert wav == msg.audio
    assert headers["from"] == "Voice Mail <vmha@localhost>"
    assert headers["to"] == "mb1001@vmha"
    assert headers["subject"] == "Voice message from +49 (30) 1234"
    assert headers["message-id"] == f"<{msg.message_id}>"
    assert headers["x-vmha-caller"] == "+49 (30) 1234"
    assert headers["x-vmha-forwarding"] == ""
    assert headers["x-vmha-reason"] == "busy"
    assert headers["x-vmha-duration"] == "4.250"
    assert headers["x-vmha-node"] == "node-a"
    assert headers["x-vmha-call-id"] == "call-3"
    assert headers["x-vmha-term"] == "2"
    assert headers["x-vmha-recorded-at"] == msg.recorded_at
    assert email.utils.parsedate_to_datetime(headers["date"]) == \
        datetime(2026, 11, 25, 10, 3, tzinfo=timezone.utc)
    parsed = email.message_from_bytes(data)
    parts = [p for p in parsed.walk() if p.get_content_type() == "audio/wav"]
    assert [p.get_filename() for p in parts] == [f"{safe_name(msg.message_id)}.wav"]
    assert any(p.get_content_type() == "text/plain" for p in parsed.walk())


def test_mime_unknown_caller_and_unicode():
    assert parse_mime(build_mime(make_message(caller="")))[0]["subject"] == \
        "Voice message from unknown caller"
    h, _ = parse_mime(build_mime(make_message(caller="Jürgen Müller =?x?=", node="nøde")))
    assert h["x-vmha-caller"] == "Jürgen Müller =?x?="
    assert h["subject"] == "Voice message from Jürgen Müller =?x?="
    assert h["x-vmha-node"] == "nøde"


@pytest.mark.parametrize("text", ["", " ", " lead", "trail ", "a  b", "\x85", "\u2028x", "é" * 200])
def test_mime_text_fields_kept_exactly(text):
    h, _ = parse_mime(build_mime(make_message(caller=text, forwarding=text, call_id=text or "c")))
    assert h["x-vmha-caller"] == h["x-vmha-forwarding"] == text


@pytest.mark.parametrize("mid", ['a"b\\c@vmha', "x" * 200, "a(b)c,d;e:f@[x]", "=?utf-8?q?x?="])
def test_mime_message_id_kept_exactly(mid):
    assert parse_mime(build_mime(make_message(message_id=mid)))[0]["message-id"] == f"<{mid}>"


_text = st.text(st.characters(min_codepoint=0x20, blacklist_categories=("Cs",),
                              blacklist_characters="\x7f"), max_size=200)
_mid = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, blacklist_characters="<>"),
               min_size=1, max_size=200)


@settings(max_examples=150, deadline=None)
@given(caller=_text, forwarding=_text, mid=_mid)
def test_mime_round_trip_property(caller, forwarding, mid):
    msg = make_message(caller=caller, forwarding=forwarding, message_id=mid)
    h, wav = parse_mime(build_mime(msg))
    assert (h["x-vmha-caller"], h["x-vmha-forwarding"], h["message-id"], wav) == \
        (caller, forwarding, f"<{mid}>", msg.audio)


def test_parse_mime_is_bounded():
    with pytest.raises(StoreError, match="64 MiB"):
        parse_mime(b"x" * (MAX_MESSAGE + 1))
    with pytest.raises(StoreError, match="too large"):
        build_mime(make_message(audio=b"RIFF" + bytes(MAX_MESSAGE)))


def test_parse_mime_refuses_what_is_not_a_voice_message():
    with pytest.raises(StoreError, match="no audio/wav part"):
        parse_mime(b"Subject: hello\n\njust text\n")
    with pytest.raises(StoreError, match="must be bytes"):
        parse_mime("Subject: text")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_parse_mime_fuzz(data):
    try:
        headers, wav = parse_mime(data)
    except StoreError:
        return
    assert isinstance(headers, dict) and isinstance(wav, bytes)


@pytest.mark.parametrize("over, match", [
    (dict(mailbox="../evil"), "bad mailbox id"),
    (dict(mailbox=""), "bad mailbox id"),
    (dict(mailbox="a" * 65), "bad mailbox id"),
    (dict(caller="123\r\nBcc: x"), "control characters"),
    (dict(recorded_at="yesterday"), "ISO 8601"),
    (dict(duration_s=float("nan")), "duration_s"),
    (dict(message_id="a\x01b"), "control characters"),
])
def test_build_mime_refuses_bad_fields(over, match):
    with pytest.raises(StoreError, match=match):
        build_mime(make_message(**over))


# ============================================================================ the shared checks


@pytest.mark.parametrize("good", ["1", "mb1001", "A.b_c-d", "9" * 64])
def test_check_mailbox_accepts_mailbox_ids(good):
    assert check_mailbox(good) == good


@pytest.mark.parametrize("bad", ["", "../x", ".hidden", "_x", "-x", "a/b", "mb 1", "a" * 65,
                                 "mb\n", None, 1001])
def test_check_mailbox_refuses_anything_else(bad):
    with pytest.raises(StoreError, match="bad mailbox id"):
        check_mailbox(bad)


def test_safe_name_keeps_only_file_name_characters():
    assert safe_name("call-1.node-a.2@vmha") == "call-1.node-a.2@vmha"
    assert safe_name('a/b\\c"d e:f') == "a_b_c_d_e_f"


def test_parse_time():
    assert parse_time("2026-11-25T10:03:00+00:00") == datetime(2026, 11, 25, 10, 3,
                                                               tzinfo=timezone.utc)
    assert parse_time("2026-11-25T10:03:00") == datetime(2026, 11, 25, 10, 3,
                                                         tzinfo=timezone.utc)  # no zone: UTC
    assert parse_time("2026-11-25T12:03:00+02:00").utcoffset().total_seconds() == 7200
    for bad in ("yesterday", "", None):
        assert parse_time(bad) is None


def test_check_message_returns_the_time_and_duration():
    msg = make_message(3)
    assert check_message(msg) == (datetime(2026, 11, 25, 10, 3, tzinfo=timezone.utc), 4.25)
    with pytest.raises(StoreError, match="expected a VoiceMessage"):
        check_message({"message_id": "x"})  # type: ignore[arg-type]
    for over, match in [(dict(node=""), "node must not be empty"),
                        (dict(term=-1), "term must be an integer"),
                        (dict(term=True), "term must be an integer"),
                        (dict(duration_s=-0.5), "duration_s")]:
        with pytest.raises(StoreError, match=match):
            check_message(make_message(1, **over))


def test_parse_headers_reads_the_header_block_alone():
    data = build_mime(make_message(2, caller="Jürgen"))
    head = data[:data.index(b"\n\n") + 2]
    assert parse_headers(head) == parse_headers(data) == parse_mime(data)[0]
    assert parse_headers(head)["x-vmha-caller"] == "Jürgen"
    # a listing reads at most HEADER_LIMIT bytes of a message
    huge = b"Subject: x\nX-Long: " + b"a" * (2 * HEADER_LIMIT) + b"\n\nbody"
    assert len(parse_headers(huge)["x-long"]) < HEADER_LIMIT


def test_stored_message_from_headers_and_defaults():
    msg = make_message(4)
    m = stored_message("7", parse_headers(build_mime(msg)), heard=True)
    assert m == StoredMessage(uid="7", message_id=msg.message_id, caller=msg.caller,
                              forwarding="4711", reason="no_answer", duration_s=5.25,
                              heard=True, recorded_at=msg.recorded_at)
    bare = stored_message("8", {"x-vmha-duration": "nan"}, heard=False)
    assert (bare.message_id, bare.caller, bare.reason, bare.duration_s, bare.recorded_at) == \
        ("", "", "unknown", 0.0, "")
    assert stored_message("9", {"x-vmha-duration": "long"}, heard=False).duration_s == 0.0


def test_age_key_orders_oldest_first_and_unparsable_first_of_all():
    def listed(at: str) -> StoredMessage:
        return StoredMessage("1", "m", "", "", "busy", 1.0, False, at)

    times = ["2026-11-25T10:05:00+00:00", "not a time", "2026-11-25T11:00:00+02:00"]
    assert sorted(times, key=lambda t: age_key(listed(t))) == [
        "not a time", "2026-11-25T11:00:00+02:00", "2026-11-25T10:05:00+00:00"]
