"""New-message notification by e-mail over SMTP, sent once per message across failovers.

Each (message, address) pair has a key in a :class:`NotificationLedger` (a replicated table in
production).  :meth:`SmtpNotifier.notify` **claims** the key for its term, sends with
``smtplib`` in a worker thread, then **marks it sent**; on failure it releases the claim so
that a later retry (on this node or the next active one) sends it.  A claim by an older term
does not block a newer term: the node that held it may have died.

The remaining window: a node that crashes (or is fenced) after the SMTP server accepted the
message but before ``mark_sent`` was written and replicated leaves a claim without a sent mark;
the next active node sends the notification again.  The duplicate carries the same
``Message-ID`` (derived from the voice message's ``message_id`` and the recipient) and the same
``X-VMHA-Message-ID`` header, so the receiving end can recognise it (many mail stores drop a
second message with a known Message-ID).
"""
from __future__ import annotations

import datetime as _dt
import email.utils
import hashlib
import re
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol, runtime_checkable

import trio

from telephony.configdb.core.validators import EMAIL_LABEL, EMAIL_LOCAL, BadValue, v_email
from telephony.core.message import VoiceMessage
from telephony.core.terms import check_term

DEFAULT_SENDER = "vmha@localhost"

# a recipient is checked as the configuration database checks it (v_email); a sender may also
# be a bare "user@host" on a local domain such as vmha@localhost
_SENDER = re.compile(rf"{EMAIL_LOCAL}@{EMAIL_LABEL}(?:\.{EMAIL_LABEL})*")


class NotifyError(ValueError):
    """Bad input (an address, a device list, a term); nothing was claimed or sent."""


class NotificationFailed(Exception):
    """Sending to one or more devices failed.  ``sent``: the addresses sent by this call
    anyway; ``errors``: address -> why (each of those claims was released: retry later)."""

    def __init__(self, message_id: str, sent: list[str], errors: dict[str, str]) -> None:
        detail = "; ".join(f"{a}: {e}" for a, e in errors.items())
        super().__init__(f"notification of {message_id} failed for {len(errors)} "
                         f"address(es): {detail}")
        self.message_id = message_id
        self.sent = sent
        self.errors = errors


# --------------------------------------------------------------------------- ledger

@runtime_checkable
class NotificationLedger(Protocol):
    """Who has claimed or sent which notification key.

    * ``claim(key, term)``: True and the key is claimed by ``term``, or False when it was sent
      already or is claimed by a term >= ``term`` (nothing changed);
    * ``mark_sent(key, term)``: the notification was accepted by the SMTP server (final);
    * ``release(key, term)``: drop ``term``'s claim (sending failed); a sent mark or another
      term's claim is kept."""

    def claim(self, key: str, term: int) -> bool: ...

    def mark_sent(self, key: str, term: int) -> None: ...

    def release(self, key: str, term: int) -> None: ...


class MemoryNotificationLedger:
    """An in-memory :class:`NotificationLedger` for tests: key -> ("claimed"|"sent", term)."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, int]] = {}

    def claim(self, key: str, term: int) -> bool:
        check_term(term, NotifyError)
        row = self.rows.get(key)
        if row is not None and (row[0] == "sent" or row[1] >= term):
            return False
        self.rows[key] = ("claimed", term)
        return True

    def mark_sent(self, key: str, term: int) -> None:
        check_term(term, NotifyError)
        self.rows[key] = ("sent", term)

    def release(self, key: str, term: int) -> None:
        row = self.rows.get(key)
        if row == ("claimed", term):
            del self.rows[key]

    def state(self, key: str) -> tuple[str, int] | None:
        return self.rows.get(key)


# --------------------------------------------------------------------------- message

def check_address(address: object) -> str:
    """An e-mail address as the configuration database accepts it (raises NotifyError)."""
    try:
        v_email(address)
    except BadValue:
        raise NotifyError(f"{address!r} is not an e-mail address") from None
    return address


def _normal(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def notification_key(message_id: str, address: str) -> str:
    """The ledger key of one notification: the message id, a space (never in a message id),
    the address with its domain in lower case."""
    return f"{message_id} {_normal(check_address(address))}"


def notification_message_id(message_id: str, address: str) -> str:
    """The deterministic Message-ID header of the notification of ``message_id`` to
    ``address``: the same for every send, on every node."""
    digest = hashlib.sha256(notification_key(message_id, address).encode()).hexdigest()[:40]
    return f"<{digest}.notify@vmha>"


def _printable(text: str, limit: int = 64) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:limit]


def _date_header(recorded_at: str) -> str:
    try:
        when = _dt.datetime.fromisoformat(recorded_at)
    except (TypeError, ValueError):
        return email.utils.formatdate(usegmt=True)  # informational only
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return email.utils.format_datetime(when.astimezone(_dt.timezone.utc), usegmt=True)


def build_notification(msg: VoiceMessage, to: str, *, sender: str = DEFAULT_SENDER,
                       attach_audio: bool = False) -> EmailMessage:
    """The notification e-mail of ``msg`` for ``to``.  Plain text; with ``attach_audio`` the
    WAV is attached (``audio/wav``).  Raises NotifyError for a bad address."""
    if not isinstance(msg, VoiceMessage):
        raise NotifyError(f"msg must be a VoiceMessage, not {type(msg).__name__}")
    check_address(to)
    if not isinstance(sender, str) or len(sender) > 254 or not _SENDER.fullmatch(sender):
        raise NotifyError(f"sender {sender!r} is not an e-mail address")
    caller = _printable(msg.caller) or "an unknown caller"
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    mail["Subject"] = f"New voice message from {caller}"
    mail["Date"] = _date_header(msg.recorded_at)
    mail["Message-ID"] = notification_message_id(msg.message_id, to)
    mail["X-VMHA-Message-ID"] = msg.message_id
    mail["X-VMHA-Mailbox"] = msg.mailbox
    lines = [
        f"You have a new voice message in mailbox {_printable(msg.mailbox)} "
        f"(extension {_printable(msg.extension)}).",
        "",
        f"From:      {caller}",
    ]
    if msg.forwarding:
        lines.append(f"Forwarded: {_printable(msg.forwarding)} ({msg.reason.value})")
    lines += [
        f"Length:    {msg.duration_s:.0f} s",
        f"Recorded:  {_printable(msg.recorded_at)}",
        "",
        f"Message id: {msg.message_id}",
    ]
    mail.set_content("\n".join(lines) + "\n")
    if attach_audio:
        name = re.sub(r"[^A-Za-z0-9_.\-]", "_", msg.message_id.split("@", 1)[0])[:100]
        mail.add_attachment(msg.audio, maintype="audio", subtype="wav",
                            filename=f"{name}.wav")
    return mail


# --------------------------------------------------------------------------- sender

@dataclass(frozen=True)
class _Target:
    address: str
    key: str


class SmtpNotifier:
    """Sends notifications through one SMTP server (``smtplib`` in a worker thread).

    ``events``: anything with ``write(level, event, message, fields)`` (a
    :class:`failover.eventlog.EventLog`); records ``notify_sent``, ``notify_failed``,
    ``notify_duplicate`` (claimed or sent already) and ``notify_skipped`` (debug: a device
    that is not e-mail)."""

    def __init__(self, host: str, port: int, *, ledger: NotificationLedger,
                 timeout: float = 5.0, starttls: bool = False, username: str | None = None,
                 password: str | None = None, events: Any = None,
                 sender: str = DEFAULT_SENDER, attach_audio: bool = False) -> None:
        if not isinstance(host, str) or not host:
            raise NotifyError(f"host must be a non-empty string, not {host!r}")
        if type(port) is not int or not 0 < port < 65536:
            raise NotifyError(f"port must be an integer 1..65535, not {port!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise NotifyError(f"timeout must be a number of seconds > 0, not {timeout!r}")
        if (username is None) != (password is None):
            raise NotifyError("username and password go together")
        for name in ("claim", "mark_sent", "release"):
            if not callable(getattr(ledger, name, None)):
                raise NotifyError(f"ledger has no {name}() method")
        if not isinstance(sender, str) or not _SENDER.fullmatch(sender):
            raise NotifyError(f"sender {sender!r} is not an e-mail address")
        self.host = host
        self.port = port
        self.ledger = ledger
        self.timeout = float(timeout)
        self.starttls = bool(starttls)
        self.username = username
        self.password = password
        self.events = events
        self.sender = sender
        self.attach_audio = bool(attach_audio)

    def _log(self, level: str, event: str, message: str, fields: dict | None = None) -> None:
        if self.events is not None:
            self.events.write(level, event, message, fields)

    def _targets(self, msg: VoiceMessage, devices: list[dict]) -> list[_Target]:
        """Validate everything before anything is claimed."""
        if not isinstance(devices, list):
            raise NotifyError(f"devices must be a list of {{'type', 'address'}} objects, "
                              f"not {type(devices).__name__}")
        targets: list[_Target] = []
        keys: set[str] = set()
        for i, d in enumerate(devices):
            if not isinstance(d, dict) or not isinstance(d.get("type"), str):
                raise NotifyError(f"device {i} must be an object with a 'type', not {d!r:.80}")
            if d["type"] != "email":
                self._log("debug", "notify_skipped",
                          f"device {i} of type {d['type']!r:.40} is not notified by e-mail",
                          {"message_id": msg.message_id, "type": d["type"][:40]})
                continue
            address = d.get("address")
            try:
                check_address(address)
            except NotifyError as exc:
                raise NotifyError(f"device {i}: {exc}") from None
            key = notification_key(msg.message_id, address)
            if key not in keys:
                keys.add(key)
                targets.append(_Target(address, key))
        return targets

    async def notify(self, msg: VoiceMessage, devices: list[dict], term: int) -> list[str]:
        """Notify every ``email`` device of ``msg`` not notified yet; returns the addresses
        sent by this call.  Raises NotifyError (nothing claimed) for bad input, and
        NotificationFailed after trying every device when some failed."""
        if not isinstance(msg, VoiceMessage):
            raise NotifyError(f"msg must be a VoiceMessage, not {type(msg).__name__}")
        check_term(term, NotifyError)
        targets = self._targets(msg, devices)
        mails = {t.key: build_notification(msg, t.address, sender=self.sender,
                                           attach_audio=self.attach_audio) for t in targets}
        sent: list[str] = []
        errors: dict[str, str] = {}
        for t in targets:
            if not self.ledger.claim(t.key, term):
                self._log("info", "notify_duplicate", f"{msg.message_id} to {t.address}: "
                          "already sent or being sent", {"message_id": msg.message_id,
                                                         "address": t.address, "term": term})
                continue
            try:
                # not abandoned on cancel: the claim is settled once the thread is done
                await trio.to_thread.run_sync(self._send, mails[t.key], t.address)
            except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
                self.ledger.release(t.key, term)
                why = _describe(exc)
                errors[t.address] = why
                self._log("warning", "notify_failed", f"{msg.message_id} to {t.address}: {why}",
                          {"message_id": msg.message_id, "address": t.address, "term": term,
                           "error": why})
                continue
            except BaseException:
                self.ledger.release(t.key, term)
                raise
            self.ledger.mark_sent(t.key, term)
            sent.append(t.address)
            self._log("info", "notify_sent", f"{msg.message_id} notified to {t.address}",
                      {"message_id": msg.message_id, "address": t.address, "term": term})
        if errors:
            raise NotificationFailed(msg.message_id, sent, errors)
        return sent

    def _send(self, mail: EmailMessage, to: str) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            smtp.ehlo()
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if self.username is not None:
                smtp.login(self.username, self.password or "")
            smtp.send_message(mail, from_addr=self.sender, to_addrs=[to])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        parts = [f"{code} {resp.decode(errors='replace') if isinstance(resp, bytes) else resp}"
                 for code, resp in exc.recipients.values()]
        return "recipient refused: " + "; ".join(parts)
    if isinstance(exc, smtplib.SMTPResponseException):
        resp = exc.smtp_error
        text = resp.decode(errors="replace") if isinstance(resp, bytes) else str(resp)
        return f"{type(exc).__name__}: {exc.smtp_code} {text}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused: {exc}"
    return f"{type(exc).__name__}: {exc}"
