"""The message store: MIME form, MaildirStore, and ImapStore against a real Dovecot."""
from __future__ import annotations

import email.utils
import io
import mailbox
import math
import socket
import wave
from datetime import datetime, timezone

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.core.events import Reason
from telephony.core.message import VoiceMessage, message_id_for
from telephony.store import (
    MAX_MESSAGE, ImapStore, MaildirStore, StoreError, StoredMessage, StoreUnavailable,
    build_mime, parse_mime, safe_name,
)

from lab import dovecot
from lab.dovecot import DovecotServer

SKIP_IMAP = dovecot.available()
needs_dovecot = pytest.mark.skipif(SKIP_IMAP is not None, reason=SKIP_IMAP or "")


# ============================================================================ factories


def make_wav(seed: int = 0, frames: int = 800) -> bytes:
    """A small 8 kHz 16-bit mono WAV whose samples depend on ``seed``."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"".join(
            int(8000 * math.sin((i + seed * 7) / 5)).to_bytes(2, "little", signed=True)
            for i in range(frames)))
    return buf.getvalue()


def make_message(n: int = 1, mailbox: str = "mb1001", **over) -> VoiceMessage:
    fields = dict(
        message_id=message_id_for(f"call-{n}", "node-a", 2), mailbox=mailbox,
        extension="1001", caller=f"030123{n:04d}", forwarding="4711",
        reason=Reason.NO_ANSWER, duration_s=1.25 + n, node="node-a", call_id=f"call-{n}",
        term=2, recorded_at=f"2026-11-25T10:{n % 60:02d}:00+00:00", audio=make_wav(n))
    fields.update(over)
    return VoiceMessage(**fields)


# ============================================================================ fixtures


@pytest.fixture(scope="module")
def dovecot_server(tmp_path_factory):
    if SKIP_IMAP:
        pytest.skip(SKIP_IMAP)
    with DovecotServer(tmp_path_factory.mktemp("dovecot")) as server:
        yield server


@pytest.fixture(params=["maildir", "imap"])
def store(request, tmp_path):
    """An empty store of each kind (the IMAP one on the module's Dovecot, mail wiped)."""
    if request.param == "maildir":
        root = tmp_path / "store"
        root.mkdir()
        return MaildirStore(root)
    if SKIP_IMAP:
        pytest.skip(SKIP_IMAP)
    server = request.getfixturevalue("dovecot_server")
    server.reset_mail()
    return ImapStore(server.host, server.port, credentials=server.credentials,
                     mailboxes=server.mailboxes)


# ============================================================================ MIME


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


# ============================================================================ both stores


async def test_deliver_counts_list_fetch(store):
    msg = make_message(1)
    assert await store.deliver(msg) is True
    assert await store.counts("mb1001") == (1, 0)
    [m] = await store.list("mb1001")
    assert isinstance(m, StoredMessage)
    assert (m.message_id, m.caller, m.forwarding, m.reason, m.duration_s, m.heard,
            m.recorded_at) == (msg.message_id, msg.caller, "4711", "no_answer", 2.25, False,
                               msg.recorded_at)
    assert await store.fetch_audio("mb1001", m.uid) == msg.audio


async def test_second_delivery_is_a_duplicate(store):
    msg = make_message(1)
    assert await store.deliver(msg) is True
    assert await store.deliver(msg) is False
    # the same message_id with other content is still the same message: the first one stays
    assert await store.deliver(make_message(1, audio=make_wav(99))) is False
    [m] = await store.list("mb1001")
    assert await store.fetch_audio("mb1001", m.uid) == msg.audio
    assert await store.counts("mb1001") == (1, 0)


async def test_message_ids_are_compared_exactly(store):
    """IMAP SEARCH is a case-insensitive substring match; ids differing in case or being a
    prefix of another are still different messages."""
    ids = ["Call-7.a.2@vmha", "call-7.a.2@vmha", "call-7.a.2@vmh", 'q"uo\\te(x)@vmha']
    for mid in ids:
        assert await store.deliver(make_message(1, message_id=mid)) is True
    for mid in ids:
        assert await store.deliver(make_message(1, message_id=mid)) is False
    assert sorted(m.message_id for m in await store.list("mb1001")) == sorted(ids)


async def test_list_oldest_first_and_new_only(store):
    for n in (12, 10, 11):
        await store.deliver(make_message(n))
    listed = await store.list("mb1001")
    assert [m.message_id for m in listed] == [make_message(n).message_id for n in (10, 11, 12)]
    await store.mark_heard("mb1001", listed[1].uid)
    assert [m.heard for m in await store.list("mb1001")] == [False, True, False]
    assert [m.message_id for m in await store.list("mb1001", new_only=True)] == \
        [make_message(n).message_id for n in (10, 12)]


async def test_mark_heard(store):
    await store.deliver(make_message(1))
    await store.deliver(make_message(2))
    first = (await store.list("mb1001"))[0]
    await store.mark_heard("mb1001", first.uid)
    assert await store.counts("mb1001") == (1, 1)
    await store.mark_heard("mb1001", first.uid)  # idempotent
    assert await store.counts("mb1001") == (1, 1)
    assert await store.fetch_audio("mb1001", first.uid) == make_message(1).audio
    # a heard message is still a duplicate
    assert await store.deliver(make_message(1)) is False
    assert await store.counts("mb1001") == (1, 1)


async def test_all_counts(store):
    assert await store.all_counts() == {}
    await store.deliver(make_message(1, "mb1001"))
    await store.deliver(make_message(2, "mb1001"))
    await store.deliver(make_message(3, "mb1002"))
    uid = (await store.list("mb1001"))[0].uid
    await store.mark_heard("mb1001", uid)
    assert await store.all_counts() == {"mb1001": (1, 1), "mb1002": (1, 0)}
    assert await store.counts("mb1003") == (0, 0)
    assert await store.list("mb1003") == []


@pytest.mark.parametrize("bad", ["../x", "", ".hidden", "a/b", "a" * 65, "mb 1", None])
async def test_bad_mailbox_id_is_refused_and_nothing_written(store, bad):
    with pytest.raises(StoreError, match="bad mailbox id"):
        await store.deliver(make_message(1, mailbox=bad))
    for call in (store.counts(bad), store.list(bad), store.fetch_audio(bad, "1"),
                 store.mark_heard(bad, "1")):
        with pytest.raises(StoreError, match="bad mailbox id"):
            await call
    assert await store.all_counts() == {}
    if isinstance(store, MaildirStore):
        assert list(store.root.iterdir()) == []


async def test_bad_message_is_refused_and_nothing_written(store):
    with pytest.raises(StoreError, match="control characters"):
        await store.deliver(make_message(1, caller="12\n34"))
    with pytest.raises(StoreError, match="ISO 8601"):
        await store.deliver(make_message(2, recorded_at="not a time"))
    assert await store.all_counts() == {}


async def test_unknown_or_bad_uid(store):
    await store.deliver(make_message(1))
    with pytest.raises(StoreError, match="no message"):
        await store.fetch_audio("mb1001", "4242")
    with pytest.raises(StoreError, match="no message"):
        await store.mark_heard("mb1001", "4242")
    for bad in ("a/b", "", "../x", "1:2,S"):
        with pytest.raises(StoreError, match="bad .*uid"):
            await store.fetch_audio("mb1001", bad)
    assert await store.counts("mb1001") == (1, 0)


async def test_concurrent_deliveries_store_one(store):
    msg = make_message(5)
    results = []

    async def one():
        results.append(await store.deliver(msg))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert sorted(results) == [False] * 4 + [True]
    assert await store.counts("mb1001") == (1, 0)


# ============================================================================ Maildir only


async def test_maildir_files_are_standard_maildir(tmp_path):
    store = MaildirStore(tmp_path)
    msg = make_message(1)
    await store.deliver(msg)
    key = MaildirStore.key_for(msg.message_id)
    md = mailbox.Maildir(tmp_path / "mb1001", create=False)
    assert md.keys() == [key]
    assert md[key]["Message-ID"] == f"<{msg.message_id}>"
    assert md[key].get_subdir() == "new" and md[key].get_flags() == ""
    await store.mark_heard("mb1001", key)
    md = mailbox.Maildir(tmp_path / "mb1001", create=False)
    assert md[key].get_subdir() == "cur" and md[key].get_flags() == "S"
    assert list((tmp_path / "mb1001" / "tmp").iterdir()) == []


async def test_maildir_root_missing_is_unavailable(tmp_path):
    store = MaildirStore(tmp_path / "not-mounted")
    with pytest.raises(StoreUnavailable, match="not mounted"):
        await store.deliver(make_message(1))
    with pytest.raises(StoreUnavailable):
        await store.all_counts()
    assert not (tmp_path / "not-mounted").exists()


async def test_maildir_closed_store_is_unavailable(tmp_path):
    store = MaildirStore(tmp_path)
    await store.aclose()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.deliver(make_message(1))


async def test_maildir_race_with_a_heard_copy(tmp_path, monkeypatch):
    """The other node stored the message and it was heard (moved to cur/) between our look
    and our link: our copy is dropped."""
    store = MaildirStore(tmp_path)
    msg = make_message(1)
    await store.deliver(msg)
    await store.mark_heard("mb1001", MaildirStore.key_for(msg.message_id))
    real = MaildirStore._find
    calls = []

    def blind_once(d, key):
        calls.append(key)
        return None if len(calls) == 1 else real(d, key)

    monkeypatch.setattr(MaildirStore, "_find", staticmethod(blind_once))
    assert await store.deliver(msg) is False
    assert await store.counts("mb1001") == (0, 1)


# ============================================================================ IMAP only


@needs_dovecot
async def test_imap_race_keeps_the_older_copy(dovecot_server, monkeypatch):
    """Another node appended the same message between our search and our append: the
    re-check after APPEND finds two, keeps the older UID and expunges ours."""
    dovecot_server.reset_mail()
    store = ImapStore(dovecot_server.host, dovecot_server.port,
                      credentials=dovecot_server.credentials)
    msg = make_message(1)
    assert await store.deliver(msg) is True
    real = ImapStore._find_uids
    calls = []

    def blind_once(conn, message_id):
        calls.append(message_id)
        return [] if len(calls) == 1 else real(conn, message_id)

    monkeypatch.setattr(ImapStore, "_find_uids", staticmethod(blind_once))
    assert await store.deliver(msg) is False
    assert [m.uid for m in await store.list("mb1001")] == ["1"]
    assert await store.counts("mb1001") == (1, 0)


@needs_dovecot
async def test_imap_wrong_password_is_unavailable_with_a_clear_message(dovecot_server):
    store = ImapStore(dovecot_server.host, dovecot_server.port,
                      credentials=lambda mb: (mb, "not-the-password"))
    with pytest.raises(StoreUnavailable) as exc:
        await store.deliver(make_message(1))
    text = str(exc.value)
    assert "login as 'mb1001'" in text and "refused" in text
    assert "AUTHENTICATIONFAILED" in text
    assert "not-the-password" not in text


@needs_dovecot
async def test_imap_unknown_account_is_a_store_error(dovecot_server):
    store = ImapStore(dovecot_server.host, dovecot_server.port,
                      credentials=dovecot_server.credentials)
    with pytest.raises(StoreError, match="no IMAP account for mailbox mb9999"):
        await store.counts("mb9999")
    with pytest.raises(StoreError, match="mailboxes="):
        await store.all_counts()


@needs_dovecot
async def test_imap_server_stopped_is_unavailable(tmp_path):
    with DovecotServer(tmp_path) as server:
        store = ImapStore(server.host, server.port, credentials=server.credentials,
                          mailboxes=server.mailboxes)
        assert await store.deliver(make_message(1)) is True
        await trio.to_thread.run_sync(server.stop)
        for call in (store.deliver(make_message(2)), store.counts("mb1001"),
                     store.list("mb1001"), store.all_counts()):
            with pytest.raises(StoreUnavailable, match="cannot connect .*refused"):
                await call
        await trio.to_thread.run_sync(server.start)
        assert await store.counts("mb1001") == (1, 0)


async def test_imap_silent_server_times_out():
    """A server that accepts but never greets: StoreUnavailable after the timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)  # never accepted: the kernel completes the handshake, no greeting
        store = ImapStore("127.0.0.1", listener.getsockname()[1],
                          credentials=lambda mb: (mb, "x"), timeout=0.2)
        with pytest.raises(StoreUnavailable, match="timed out"):
            await store.counts("mb1001")


def test_imap_store_constructor_checks():
    with pytest.raises(ValueError, match="port"):
        ImapStore("127.0.0.1", 0, credentials=dovecot.USERS.get)
    with pytest.raises(ValueError, match="timeout"):
        ImapStore("127.0.0.1", 143, credentials=dovecot.USERS.get, timeout=0)
