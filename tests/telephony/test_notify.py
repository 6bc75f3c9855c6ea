"""E-mail notification against a real SMTP server process (aiosmtpd) on 127.0.0.1.

The server is ``lab/smtp_server.py`` started as a child process and stopped by PID
(``smtp_server.SmtpServerProcess``).  Its start and stop block the Trio loop for a moment;
nothing else runs in these tests meanwhile.
"""
from __future__ import annotations

import io
import wave
from datetime import datetime, timezone

import pytest
import trio

from lab.pair import free_port
from lab.smtp_server import SmtpServerProcess, smtp_server
from telephony.core.events import Reason
from telephony.core.message import VoiceMessage, message_id_for
from telephony.notify import (
    MemoryNotificationLedger,
    NotificationFailed,
    NotificationLedger,
    NotifyError,
    SmtpNotifier,
    build_notification,
    notification_key,
    notification_message_id,
)

GUARD = 30  # seconds; only a guard against a hang


def wav(samples: int = 800) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x01\x00" * samples)
    return buf.getvalue()


def voice_message(call_id: str = "call-1", term: int = 2, caller: str = "5551234") -> VoiceMessage:
    return VoiceMessage(
        message_id=message_id_for(call_id, "a", term), mailbox="ada", extension="1001",
        caller=caller, forwarding="1001", reason=Reason.NO_ANSWER, duration_s=12.4, node="a",
        call_id=call_id, term=term, recorded_at="2024-03-01T10:15:00Z", audio=wav())


class Events:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, str, dict | None]] = []

    def write(self, level, event, message, fields=None):
        self.records.append((level, event, message, fields))

    def events(self) -> list[str]:
        return [r[1] for r in self.records]


@pytest.fixture
def smtp(tmp_path):
    with smtp_server(tmp_path / "mail") as server:
        yield server


def notifier(server, ledger=None, **kw) -> SmtpNotifier:
    return SmtpNotifier(server.host, server.port, ledger=ledger or MemoryNotificationLedger(),
                        timeout=GUARD, **kw)


ADA = [{"type": "email", "address": "ada@example.com"}]


# --------------------------------------------------------------------------- delivery

async def test_notification_arrives_with_the_right_headers(smtp):
    msg = voice_message()
    events = Events()
    n = notifier(smtp, events=events)
    with trio.fail_after(GUARD):
        sent = await n.notify(msg, ADA, term=2)
    assert sent == ["ada@example.com"]
    [mail] = smtp.messages()
    assert mail["Subject"] == "New voice message from 5551234"
    assert mail["To"] == "ada@example.com" and mail["From"] == "vmha@localhost"
    assert mail["Message-ID"] == notification_message_id(msg.message_id, "ada@example.com")
    assert mail["X-VMHA-Message-ID"] == msg.message_id
    assert mail["X-VMHA-Mailbox"] == "ada"
    assert mail["Date"].datetime == datetime(2024, 3, 1, 10, 15, tzinfo=timezone.utc)
    assert not mail.is_multipart()  # no audio unless asked for
    assert "5551234" in mail.get_content() and msg.message_id in mail.get_content()
    assert smtp.envelopes()[0]["rcpt_tos"] == ["ada@example.com"]
    assert smtp.envelopes()[0]["mail_from"] == "vmha@localhost"
    assert n.ledger.state(notification_key(msg.message_id, "ada@example.com")) == ("sent", 2)
    assert events.events() == ["notify_sent"]


async def test_audio_attached_when_asked(smtp):
    msg = voice_message()
    with trio.fail_after(GUARD):
        await notifier(smtp, attach_audio=True).notify(msg, ADA, term=2)
    [mail] = smtp.messages()
    [part] = list(mail.iter_attachments())
    assert part.get_content_type() == "audio/wav"
    assert part.get_filename().endswith(".wav")
    assert part.get_content() == msg.audio


async def test_second_notify_sends_nothing_even_from_the_next_term(smtp):
    msg = voice_message()
    ledger = MemoryNotificationLedger()  # replicated between the nodes in production
    events = Events()
    with trio.fail_after(GUARD):
        assert await notifier(smtp, ledger).notify(msg, ADA, term=2) == ["ada@example.com"]
        assert await notifier(smtp, ledger, events=events).notify(msg, ADA, term=2) == []
        # after a failover the new active node (term 3) does not send it again either
        assert await notifier(smtp, ledger).notify(msg, ADA, term=3) == []
    assert len(smtp.files()) == 1
    assert events.events() == ["notify_duplicate"]


async def test_several_devices_each_once_and_other_types_ignored(smtp):
    msg = voice_message()
    events = Events()
    devices = [{"type": "email", "address": "ada@example.com"},
               {"type": "pager", "address": "555"},
               {"type": "email", "address": "ada@EXAMPLE.com"},  # the same mailbox
               {"type": "email", "address": "boss@example.org"}]
    with trio.fail_after(GUARD):
        sent = await notifier(smtp, events=events).notify(msg, devices, term=2)
    assert sent == ["ada@example.com", "boss@example.org"]
    assert sorted(e["rcpt_tos"][0] for e in smtp.envelopes()) == sent
    ids = {m["Message-ID"] for m in smtp.messages()}
    assert len(ids) == 2  # one Message-ID per recipient
    assert events.records[0][:2] == ("debug", "notify_skipped")


async def test_login(tmp_path):
    with smtp_server(tmp_path / "mail", auth="vm:secret") as server:
        msg = voice_message()
        ledger = MemoryNotificationLedger()
        with trio.fail_after(GUARD):
            with pytest.raises(NotificationFailed, match="535"):
                await notifier(server, ledger, username="vm", password="wrong").notify(
                    msg, ADA, term=2)
            assert ledger.rows == {}  # released
            sent = await notifier(server, ledger, username="vm", password="secret").notify(
                msg, ADA, term=2)
        assert sent == ["ada@example.com"] and len(server.files()) == 1


# --------------------------------------------------------------------------- failures

async def test_server_down_reports_releases_and_a_retry_sends_once(tmp_path):
    server = SmtpServerProcess(tmp_path / "mail")  # its port, nothing listening yet
    msg = voice_message()
    ledger = MemoryNotificationLedger()
    events = Events()
    n = notifier(server, ledger, events=events)
    try:
        with trio.fail_after(GUARD):
            with pytest.raises(NotificationFailed) as info:
                await n.notify(msg, ADA, term=2)
        assert info.value.sent == []
        assert "ada@example.com" in info.value.errors
        assert "refused" in info.value.errors["ada@example.com"]
        assert ledger.rows == {}  # the claim was released
        assert events.events() == ["notify_failed"]
        server.start()
        with trio.fail_after(GUARD):
            assert await n.notify(msg, ADA, term=2) == ["ada@example.com"]
            assert await n.notify(msg, ADA, term=2) == []
        assert len(server.files()) == 1
    finally:
        assert server.stop() in (0, None)


async def test_server_stopped_mid_way_then_back(tmp_path):
    with smtp_server(tmp_path / "mail") as server:
        ledger = MemoryNotificationLedger()
        n = notifier(server, ledger)
        first, second = voice_message("c1"), voice_message("c2")
        with trio.fail_after(GUARD):
            await n.notify(first, ADA, term=2)
        assert server.stop() == 0  # SIGTERM: a clean exit
        with trio.fail_after(GUARD):
            with pytest.raises(NotificationFailed):
                await n.notify(second, ADA, term=2)
        server.start()
        with trio.fail_after(GUARD):
            assert await n.notify(second, ADA, term=2) == ["ada@example.com"]
            assert await n.notify(first, ADA, term=2) == []
        assert [m["X-VMHA-Message-ID"] for m in server.messages()] == [
            first.message_id, second.message_id]


@pytest.mark.parametrize("devices, match", [
    ([{"type": "email", "address": "not-an-address"}], "device 0"),
    ([{"type": "email", "address": "ada@example.com"},
      {"type": "email", "address": "bob@@example.com"}], "device 1"),
    ([{"type": "email"}], "None is not an e-mail address"),
    ([{"type": "email", "address": "ada@example.com\r\nBcc: x@evil.example"}], "device 0"),
    (["ada@example.com"], "device 0 must be an object"),
    ({"type": "email", "address": "ada@example.com"}, "must be a list"),
])
async def test_bad_address_clear_error_nothing_claimed(smtp, devices, match):
    ledger = MemoryNotificationLedger()
    with pytest.raises(NotifyError, match=match):
        await notifier(smtp, ledger).notify(voice_message(), devices, term=2)
    assert ledger.rows == {} and smtp.files() == []


async def test_bad_term_or_message(smtp):
    n = notifier(smtp)
    for term in (-1, True, "2", None):
        with pytest.raises(NotifyError, match="term"):
            await n.notify(voice_message(), ADA, term=term)
    with pytest.raises(NotifyError, match="VoiceMessage"):
        await n.notify({"message_id": "x"}, ADA, term=2)
    assert n.ledger.rows == {} and smtp.files() == []


def test_bad_notifier_settings():
    ledger = MemoryNotificationLedger()
    for kw, match in [({"host": ""}, "host"), ({"port": 0}, "port"), ({"port": "25"}, "port"),
                      ({"timeout": 0}, "timeout"), ({"username": "u"}, "together"),
                      ({"sender": "nobody"}, "sender"), ({"ledger": object()}, "claim")]:
        args = {"host": "127.0.0.1", "port": 25, "ledger": ledger, **kw}
        with pytest.raises(NotifyError, match=match):
            SmtpNotifier(args.pop("host"), args.pop("port"), **args)


# --------------------------------------------------------------------------- across failovers

class CrashAfterSend(MemoryNotificationLedger):
    """The node dies after the SMTP server accepted the message, before mark_sent."""

    def mark_sent(self, key, term):
        raise RuntimeError("node crashed")


async def test_crash_window_duplicate_is_recognisable(smtp):
    """The documented window: a's claim (term 2) stays, b (term 3) sends again; the receiving
    end sees two messages with one Message-ID."""
    msg = voice_message()
    ledger = CrashAfterSend()
    with trio.fail_after(GUARD):
        with pytest.raises(RuntimeError, match="crashed"):
            await notifier(smtp, ledger).notify(msg, ADA, term=2)
        key = notification_key(msg.message_id, "ada@example.com")
        assert ledger.state(key) == ("claimed", 2)
        # the same term does not send twice ...
        assert await notifier(smtp, ledger).notify(msg, ADA, term=2) == []
        # ... the next term does
        survivor = MemoryNotificationLedger()
        survivor.rows = dict(ledger.rows)
        assert await notifier(smtp, survivor).notify(msg, ADA, term=3) == ["ada@example.com"]
    first, second = smtp.messages()
    assert first["Message-ID"] == second["Message-ID"]
    assert first["X-VMHA-Message-ID"] == second["X-VMHA-Message-ID"] == msg.message_id


async def test_claim_of_a_newer_term_is_respected(smtp):
    msg = voice_message()
    ledger = MemoryNotificationLedger()
    key = notification_key(msg.message_id, "ada@example.com")
    assert ledger.claim(key, 5)
    with trio.fail_after(GUARD):
        assert await notifier(smtp, ledger).notify(msg, ADA, term=4) == []
    assert smtp.files() == [] and ledger.state(key) == ("claimed", 5)


# --------------------------------------------------------------------------- pure parts

def test_memory_ledger_rules():
    ledger = MemoryNotificationLedger()
    assert isinstance(ledger, NotificationLedger)
    assert ledger.claim("k", 2)
    assert not ledger.claim("k", 2) and not ledger.claim("k", 1)
    ledger.release("k", 1)  # not its claim: kept
    assert ledger.state("k") == ("claimed", 2)
    assert ledger.claim("k", 3)  # a newer term takes over a dead node's claim
    ledger.release("k", 2)
    assert ledger.state("k") == ("claimed", 3)
    ledger.mark_sent("k", 3)
    assert not ledger.claim("k", 9)
    ledger.release("k", 3)
    assert ledger.state("k") == ("sent", 3)
    with pytest.raises(NotifyError):
        ledger.claim("k2", -1)


def test_message_id_is_deterministic_per_message_and_recipient():
    a = build_notification(voice_message(), "ada@example.com")
    b = build_notification(voice_message(), "ada@EXAMPLE.COM")
    c = build_notification(voice_message(), "boss@example.com")
    d = build_notification(voice_message("call-2"), "ada@example.com")
    assert a["Message-ID"] == b["Message-ID"]
    assert len({a["Message-ID"], c["Message-ID"], d["Message-ID"]}) == 3
    assert a["Message-ID"].startswith("<") and a["Message-ID"].endswith("@vmha>")


def test_subject_cannot_inject_headers():
    mail = build_notification(voice_message(caller="x\r\nBcc: evil@example.com"),
                              "ada@example.com")
    assert "\n" not in mail["Subject"] and mail["Bcc"] is None
    assert build_notification(voice_message(caller=""), "ada@example.com")["Subject"] == \
        "New voice message from an unknown caller"


def test_build_notification_bad_input():
    with pytest.raises(NotifyError, match="e-mail address"):
        build_notification(voice_message(), "ada")
    with pytest.raises(NotifyError, match="sender"):
        build_notification(voice_message(), "ada@example.com", sender="x y@z")


def test_server_script_stops_on_sigterm(tmp_path):
    server = SmtpServerProcess(tmp_path / "mail", port=free_port())
    server.start()
    pid = server.pid
    assert server.running
    assert server.stop() == 0
    assert not server.running and pid is not None
