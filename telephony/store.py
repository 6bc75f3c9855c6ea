"""The message store: where voice messages live once recorded (the guide's separate message
server).

Two implementations of :class:`MessageStore`:

* :class:`MaildirStore` — one Maildir per mailbox under a root directory both nodes can reach
  (the default).  The file name (the Maildir key, the message's ``uid``) is derived from the
  ``message_id``, so a second delivery of the same message finds the first one.
* :class:`ImapStore` — one account per mailbox on a real IMAP server (Dovecot), through the
  standard library's :mod:`imaplib` in worker threads, one connection per call.

Every message is a MIME mail built by :func:`build_mime` (headers ``X-VMHA-*`` carry the call
data, the WAV is an ``audio/wav`` attachment); :func:`parse_mime` is its inverse.

Errors: :class:`StoreUnavailable` means "not now" (connection refused, timeout, login refused,
disk full, the store directory missing): the caller spools the message and retries later.
:class:`StoreError` means the request itself is wrong (bad mailbox id, unknown uid, a message
field that cannot be stored, a message too large); retrying cannot help.  A request refused
with :class:`StoreError` changes nothing in the store.
"""
from __future__ import annotations

import base64
import builtins
import email.utils
import errno
import hashlib
import imaplib
import math
import os
import re
import secrets
import ssl as _ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy as _policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from pathlib import Path
from typing import Protocol

import trio

from telephony.runtime.files import write_new_file

from telephony.core.events import check_text
from telephony.core.message import VoiceMessage

__all__ = [
    "StoreUnavailable", "StoreError", "StoredMessage", "MessageStore", "MaildirStore",
    "ImapStore", "build_mime", "parse_mime", "check_mailbox", "safe_name", "MAX_MESSAGE",
]

#: Largest MIME message :func:`build_mime` produces and :func:`parse_mime` accepts.
MAX_MESSAGE = 64 * 1024 * 1024
#: Longest text field (caller, forwarding, node, call id, extension, recorded_at).
MAX_TEXT = 200
FROM = "Voice Mail <vmha@localhost>"
MAILBOX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEADER_LIMIT = 256 * 1024  # a header block longer than this is not ours (listing reads only it)
_WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")
# refold_source="none": headers set with set_raw() are written exactly as given (the default
# policy would re-parse a long Message-ID and mangle ids with characters such as '"' or '(').
_POLICY = _policy.default.clone(refold_source="none")


class StoreUnavailable(Exception):
    """The store cannot be reached or used now; spool the message and retry later."""


class StoreError(Exception):
    """A bad request (bad mailbox id, unknown uid, a message that cannot be stored)."""


@dataclass(frozen=True)
class StoredMessage:
    """One message as the store lists it.  ``uid`` is the store's own id (the Maildir key or
    the IMAP UID, as a string); ``reason`` is the :class:`~telephony.core.events.Reason` value."""

    uid: str
    message_id: str
    caller: str
    forwarding: str
    reason: str
    duration_s: float
    heard: bool
    recorded_at: str


class MessageStore(Protocol):
    async def deliver(self, msg: VoiceMessage) -> bool:
        """Store ``msg``: True if stored now, False if a message with its ``message_id`` was
        already there.  Raises StoreUnavailable (retry later) or StoreError (never storable)."""

    async def counts(self, mailbox: str) -> tuple[int, int]:
        """(new = unheard, heard) messages of ``mailbox``."""

    async def list(self, mailbox: str, *, new_only: bool = False) -> builtins.list[StoredMessage]:
        """The messages of ``mailbox``, oldest (by ``recorded_at``) first."""

    async def fetch_audio(self, mailbox: str, uid: str) -> bytes:
        """The WAV bytes of one message (does not mark it heard)."""

    async def mark_heard(self, mailbox: str, uid: str) -> None:
        """Mark one message heard (idempotent)."""

    async def all_counts(self) -> dict[str, tuple[int, int]]:
        """(new, heard) of every mailbox that has at least one message."""

    async def aclose(self) -> None:
        """Release resources; later calls raise StoreUnavailable."""


# ============================================================================ MIME


def check_mailbox(mailbox: object) -> str:
    """Return ``mailbox`` if it is a valid mailbox id, else raise StoreError."""
    if not isinstance(mailbox, str) or not MAILBOX_RE.fullmatch(mailbox):
        raise StoreError(f"bad mailbox id {mailbox!r}: 1..64 characters A-Z a-z 0-9 _ . -, "
                         "starting with a letter or digit")
    return mailbox


def safe_name(message_id: str) -> str:
    """``message_id`` with every character other than A-Z a-z 0-9 . _ - @ replaced by '_'
    (for file names; not unique on its own)."""
    return re.sub(r"[^A-Za-z0-9._@-]", "_", message_id)


def _parse_time(text: str) -> datetime | None:
    try:
        dt = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt


_WORD_RE = re.compile(r"=\?utf-8\?b\?([A-Za-z0-9+/]*={0,2})\?=")
_WORDS_RE = re.compile(rf"{_WORD_RE.pattern}(?: {_WORD_RE.pattern})*")


def _text_header(value: str) -> str:
    """A header value written exactly: raw if plain ASCII, else RFC 2047 base64 encoded words
    of at most 45 bytes each (whole characters), folded.  (email.header.Header would split the
    text at characters such as U+0085 and lose them.)"""
    if value.isascii() and "=?" not in value and value == value.strip(" "):
        return value  # (leading or trailing blanks would not survive a header: encode those)
    words, chunk = [], b""
    for ch in value:
        b = ch.encode("utf-8")
        if len(chunk) + len(b) > 45:
            words.append(chunk)
            chunk = b""
        chunk += b
    words.append(chunk)
    return "\n ".join(f"=?utf-8?b?{base64.b64encode(w).decode('ascii')}?=" for w in words)


def _decode_words(value: str) -> str:
    if _WORDS_RE.fullmatch(value):  # written by _text_header: decode exactly
        try:
            return b"".join(base64.b64decode(m.group(1), validate=True)
                            for m in _WORD_RE.finditer(value)).decode("utf-8")
        except (ValueError, UnicodeError):
            pass
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value  # keep the raw text


def _checked(msg: VoiceMessage) -> tuple[datetime, float]:
    if not isinstance(msg, VoiceMessage):
        raise StoreError(f"expected a VoiceMessage, got {type(msg).__name__}")
    check_mailbox(msg.mailbox)
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in msg.message_id):
        raise StoreError(f"message_id {msg.message_id!r} contains control characters")
    for name in ("caller", "forwarding", "node", "call_id", "extension", "recorded_at"):
        try:
            check_text(name, getattr(msg, name), limit=MAX_TEXT)
        except ValueError as e:
            raise StoreError(f"message {msg.message_id}: {e}") from None
    for name in ("node", "call_id", "recorded_at"):
        if not getattr(msg, name):
            raise StoreError(f"message {msg.message_id}: {name} must not be empty")
    d = msg.duration_s
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d < 0:
        raise StoreError(f"message {msg.message_id}: duration_s must be a finite number >= 0, "
                         f"got {d!r}")
    if isinstance(msg.term, bool) or not isinstance(msg.term, int) or msg.term < 0:
        raise StoreError(f"message {msg.message_id}: term must be an integer >= 0, "
                         f"got {msg.term!r}")
    when = _parse_time(msg.recorded_at)
    if when is None:
        raise StoreError(f"message {msg.message_id}: recorded_at {msg.recorded_at!r} is not an "
                         "ISO 8601 time")
    # base64 grows the audio by 4/3 plus line ends; refuse early what cannot fit
    if len(msg.audio) * 4 // 3 > MAX_MESSAGE:
        raise StoreError(f"message {msg.message_id}: audio of {len(msg.audio)} bytes is too "
                         f"large (a stored message is at most {MAX_MESSAGE} bytes)")
    return when, float(d)


def build_mime(msg: VoiceMessage) -> bytes:
    """The message as a MIME mail (LF line ends).  Raises StoreError for a field that cannot be
    stored (bad mailbox id, control characters, an unparsable ``recorded_at``, too large)."""
    when, duration = _checked(msg)
    caller = msg.caller or "unknown caller"
    m = EmailMessage(policy=_POLICY)
    m.set_raw("From", FROM)
    m.set_raw("To", f"{msg.mailbox}@vmha")
    m.set_raw("Subject", _text_header(f"Voice message from {caller}"))
    m.set_raw("Date", email.utils.format_datetime(when))
    m.set_raw("Message-ID", f"<{msg.message_id}>")
    m.set_raw("X-VMHA-Caller", _text_header(msg.caller))
    m.set_raw("X-VMHA-Forwarding", _text_header(msg.forwarding))
    m.set_raw("X-VMHA-Reason", str(msg.reason))
    m.set_raw("X-VMHA-Duration", f"{duration:.3f}")
    m.set_raw("X-VMHA-Node", _text_header(msg.node))
    m.set_raw("X-VMHA-Call-ID", _text_header(msg.call_id))
    m.set_raw("X-VMHA-Term", str(msg.term))
    m.set_raw("X-VMHA-Extension", _text_header(msg.extension))
    m.set_raw("X-VMHA-Recorded-At", _text_header(msg.recorded_at))
    fwd = f", forwarded from {msg.forwarding}" if msg.forwarding else ""
    m.set_content(f"Voice message from {caller} for mailbox {msg.mailbox}: {duration:.1f} s, "
                  f"reason {msg.reason}{fwd}.\nRecorded at {msg.recorded_at}.\n")
    m.add_attachment(msg.audio, maintype="audio", subtype="wav",
                     filename=f"{safe_name(msg.message_id)}.wav")
    data = m.as_bytes()
    if len(data) > MAX_MESSAGE:
        raise StoreError(f"message {msg.message_id}: {len(data)} bytes as MIME, at most "
                         f"{MAX_MESSAGE} can be stored")
    return data


def _header_dict(msg) -> dict[str, str]:
    """Lower-case header name -> value (first occurrence); RFC 2047 words decoded except in
    Message-ID, which is kept exactly."""
    out: dict[str, str] = {}
    for name, raw in msg.raw_items():
        key = name.lower()
        if key in out:
            continue
        value = re.sub(r"\r?\n[ \t]", " ", str(raw)).strip("\r\n").lstrip(" \t")
        if key == "message-id":
            value = value.strip()
        elif "=?" in value:
            value = _decode_words(value)
        out[key] = value
    return out


def _header_block(data: bytes) -> bytes:
    for sep in (b"\n\n", b"\r\n\r\n"):
        i = data.find(sep)
        if i >= 0:
            return data[:i + len(sep)]
    return data


def parse_headers(data: bytes) -> dict[str, str]:
    """The header dict of a message (or of its header block alone); see :func:`parse_mime`."""
    try:
        return _header_dict(BytesHeaderParser(policy=_policy.compat32).parsebytes(
            _header_block(bytes(data[:_HEADER_LIMIT]))))
    except Exception as e:  # the email package raises many kinds on garbage
        raise StoreError(f"cannot parse message headers: {type(e).__name__}: {e}") from None


def parse_mime(data: bytes) -> tuple[dict[str, str], bytes]:
    """The inverse of :func:`build_mime`: (headers, WAV bytes).  Header names are lower-case
    (``headers["x-vmha-caller"]``), values decoded (Message-ID exactly as stored, with its
    ``<>``).  Raises StoreError for anything else than bytes, more than 64 MiB, or a message
    without an ``audio/wav`` part."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise StoreError(f"a message must be bytes, got {type(data).__name__}")
    if len(data) > MAX_MESSAGE:
        raise StoreError(f"message of {len(data)} bytes refused: at most {MAX_MESSAGE} "
                         "(64 MiB) are accepted")
    try:
        m = BytesParser(policy=_policy.compat32).parsebytes(bytes(data))
        headers = _header_dict(m)
        for part in m.walk():
            if part.get_content_type() in _WAV_TYPES:
                wav = part.get_payload(decode=True)
                if isinstance(wav, bytes):
                    return headers, wav
    except Exception as e:  # the email package raises many kinds on garbage
        raise StoreError(f"cannot parse message: {type(e).__name__}: {e}") from None
    raise StoreError("message has no audio/wav part")


def _stored(uid: str, h: dict[str, str], heard: bool) -> StoredMessage:
    mid = h.get("message-id", "")
    if mid.startswith("<") and mid.endswith(">"):
        mid = mid[1:-1]
    try:
        duration = float(h.get("x-vmha-duration", "0"))
        if not math.isfinite(duration):
            duration = 0.0
    except ValueError:
        duration = 0.0
    return StoredMessage(uid=uid, message_id=mid, caller=h.get("x-vmha-caller", ""),
                         forwarding=h.get("x-vmha-forwarding", ""),
                         reason=h.get("x-vmha-reason", "unknown"), duration_s=duration,
                         heard=heard, recorded_at=h.get("x-vmha-recorded-at", ""))


_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def _age_key(m: StoredMessage) -> datetime:
    return _parse_time(m.recorded_at) or _EPOCH


def _error_text(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e.args[0]) if isinstance(e, imaplib.IMAP4.error) and e.args else str(e)
    if text.startswith(("b'", 'b"')):
        text = text[2:-1]
    return text or type(e).__name__


# ============================================================================ Maildir


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_uid_maildir(uid: object) -> str:
    if (not isinstance(uid, str) or not 0 < len(uid) <= 200 or uid.startswith(".")
            or any(c in uid for c in "/:") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in uid)):
        raise StoreError(f"bad message uid {uid!r}")
    return uid


class MaildirStore:
    """One Maildir per mailbox: ``root/<mailbox>/{tmp,new,cur}``.

    ``root`` must exist (it is the shared store; a missing root means it is not mounted:
    StoreUnavailable); mailbox directories are created on first delivery.  The key (``uid``)
    of a message is ``sha256(message_id)`` (first 32 hex digits): the file is written to
    ``tmp/``, fsynced and hard-linked to ``new/<key>`` (an existing file of that name means a
    duplicate).  Heard = the Maildir ``S`` flag (``cur/<key>:2,S``).  The files are ordinary
    Maildir messages (:class:`mailbox.Maildir` reads them)."""

    KEY_HEX = 32

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._closed = False

    def __repr__(self) -> str:
        return f"MaildirStore({str(self.root)!r})"

    @classmethod
    def key_for(cls, message_id: str) -> str:
        return hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:cls.KEY_HEX]

    # ---------------------------------------------------------------- async API

    async def _run(self, fn, *args):
        if self._closed:
            raise StoreUnavailable("the message store is closed")
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except OSError as e:
            what = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else _error_text(e)
            raise StoreUnavailable(f"message store {self.root}: {what}") from e

    async def deliver(self, msg: VoiceMessage) -> bool:
        _checked(msg)  # a bad message is refused before any I/O
        return await self._run(self._deliver, msg)

    async def counts(self, mailbox: str) -> tuple[int, int]:
        check_mailbox(mailbox)
        return await self._run(self._counts, mailbox)

    async def list(self, mailbox: str, *, new_only: bool = False) -> builtins.list[StoredMessage]:
        check_mailbox(mailbox)
        return await self._run(self._list, mailbox, new_only)

    async def fetch_audio(self, mailbox: str, uid: str) -> bytes:
        check_mailbox(mailbox)
        _check_uid_maildir(uid)
        return await self._run(self._fetch, mailbox, uid)

    async def mark_heard(self, mailbox: str, uid: str) -> None:
        check_mailbox(mailbox)
        _check_uid_maildir(uid)
        await self._run(self._mark, mailbox, uid)

    async def all_counts(self) -> dict[str, tuple[int, int]]:
        return await self._run(self._all_counts)

    async def aclose(self) -> None:
        self._closed = True

    # ---------------------------------------------------------------- worker-thread side

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise StoreUnavailable(f"message store {self.root} is not there (not mounted?)")

    def _mailbox_dir(self, mailbox: str) -> Path:
        self._check_root()
        return self.root / mailbox

    @staticmethod
    def _find(d: Path, key: str) -> Path | None:
        p = d / "new" / key
        if p.exists():
            return p
        try:
            with os.scandir(d / "cur") as it:
                for e in it:
                    if e.name == key or e.name.startswith(key + ":"):
                        return Path(e.path)
        except FileNotFoundError:
            pass
        return None

    def _deliver(self, msg: VoiceMessage) -> bool:
        data = build_mime(msg)
        d = self._mailbox_dir(msg.mailbox)
        for sub in ("tmp", "new", "cur"):
            os.makedirs(d / sub, mode=0o700, exist_ok=True)
        key = self.key_for(msg.message_id)
        if self._find(d, key) is not None:
            return False
        tmp = d / "tmp" / f"{key}.{os.getpid()}.{secrets.token_hex(4)}"
        target = d / "new" / key
        try:
            write_new_file(tmp, data, 0o600)
            try:
                os.link(tmp, target)  # atomic, never replaces: an existing name is a duplicate
            except FileExistsError:
                return False
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise
                if target.exists():  # no hard links here (some network file systems)
                    return False
                os.rename(tmp, target)
            _fsync_dir(target.parent)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        # A copy moved to cur/ (heard) between our look and our link: keep that one.
        try:
            with os.scandir(d / "cur") as it:
                heard_copy = any(e.name.startswith(key + ":") or e.name == key for e in it)
        except FileNotFoundError:
            heard_copy = False
        if heard_copy and target.exists():
            try:
                os.unlink(target)
                return False
            except FileNotFoundError:
                pass  # ours was just marked heard: it is the copy in cur/
        return True

    @staticmethod
    def _entries(d: Path):
        """(key, path, heard) of every message file of the Maildir ``d``."""
        for sub in ("new", "cur"):
            try:
                it = os.scandir(d / sub)
            except FileNotFoundError:
                continue
            with it:
                for e in it:
                    if e.name.startswith("."):
                        continue
                    key, _, info = e.name.partition(":")
                    heard = sub == "cur" and info.startswith("2,") and "S" in info[2:]
                    yield key, Path(e.path), heard

    def _counts(self, mailbox: str) -> tuple[int, int]:
        d = self._mailbox_dir(mailbox)
        new = heard = 0
        for _key, _path, h in self._entries(d):
            if h:
                heard += 1
            else:
                new += 1
        return new, heard

    @staticmethod
    def _read_head(path: Path) -> tuple[bytes, int]:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            buf = b""
            while len(buf) < _HEADER_LIMIT:
                chunk = f.read(16384)
                if not chunk:
                    break
                buf += chunk
                if b"\n\n" in buf or b"\r\n\r\n" in buf:
                    break
        return buf, st.st_mtime_ns

    def _list(self, mailbox: str, new_only: bool) -> builtins.list[StoredMessage]:
        d = self._mailbox_dir(mailbox)
        found = []
        for key, path, heard in self._entries(d):
            if new_only and heard:
                continue
            try:
                head, mtime = self._read_head(path)
            except FileNotFoundError:  # renamed (marked heard) while we looked
                again = self._find(d, key)
                if again is None:
                    continue
                head, mtime = self._read_head(again)
                heard = ":2," in again.name and "S" in again.name.split(":2,", 1)[1]
                if new_only and heard:
                    continue
            try:
                h = parse_headers(head)
            except StoreError:
                h = {}
            m = _stored(key, h, heard)
            found.append((_age_key(m), mtime, key, m))
        found.sort(key=lambda t: t[:3])
        return [t[3] for t in found]

    def _fetch(self, mailbox: str, uid: str) -> bytes:
        d = self._mailbox_dir(mailbox)
        for _ in range(3):
            p = self._find(d, uid)
            if p is None:
                break
            try:
                with open(p, "rb") as f:
                    data = f.read(MAX_MESSAGE + 1)
            except FileNotFoundError:
                continue  # moved to cur/ meanwhile
            return parse_mime(data)[1]
        raise StoreError(f"no message {uid} in mailbox {mailbox}")

    def _mark(self, mailbox: str, uid: str) -> None:
        d = self._mailbox_dir(mailbox)
        for _ in range(3):
            p = self._find(d, uid)
            if p is None:
                break
            flags = p.name.split(":2,", 1)[1] if ":2," in p.name else ""
            if "S" in flags:
                return
            dest = d / "cur" / f"{uid}:2,{''.join(sorted(set(flags) | {'S'}))}"
            try:
                os.rename(p, dest)
            except FileNotFoundError:
                continue
            _fsync_dir(dest.parent)
            if p.parent != dest.parent:
                _fsync_dir(p.parent)
            return
        raise StoreError(f"no message {uid} in mailbox {mailbox}")

    def _all_counts(self) -> dict[str, tuple[int, int]]:
        self._check_root()
        out: dict[str, tuple[int, int]] = {}
        with os.scandir(self.root) as it:
            names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        for name in names:
            if not MAILBOX_RE.fullmatch(name):
                continue
            new, heard = self._counts(name)
            if new or heard:
                out[name] = (new, heard)
        return out


# ============================================================================ IMAP


def _quote(text: str) -> str:
    """An IMAP quoted string (the text is printable ASCII)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


#: STATUS commands :meth:`ImapStore.all_counts` keeps unanswered on one connection
STATUS_WINDOW = 256
#: mailboxes counted per login of the status account: Dovecot keeps every user it opened
#: through the shared namespace in the session's memory (about 60 KB each; its default
#: ``vsz_limit`` of 256 MB ends a session after some 4,000), so 10,000 mailboxes are counted
#: on 10 connections, run side by side (at most ``max_connections``)
STATUS_PER_LOGIN = 1000
#: a STATUS refused because the status account does not see the INBOX: never created (Dovecot
#: creates it at the owner's first login or delivery), or no rights (the same answer)
_NONEXISTENT = re.compile(rb"\[NONEXISTENT\]|doesn't exist", re.I)
_STATUS_LINE = re.compile(rb'\* STATUS (?:"((?:[^"\\]|\\.)*)"|([^\s"(]+)) \(([^)]*)\)\s*\Z')


def _check_uid_imap(uid: object) -> str:
    if not isinstance(uid, str) or not re.fullmatch(r"[1-9][0-9]{0,9}", uid) or int(uid) >= 2**32:
        raise StoreError(f"bad IMAP uid {uid!r}: a number 1..4294967295")
    return uid


def _ok(typ: str, data, what: str) -> None:
    if typ != "OK":
        text = b" ".join(x for x in (data or []) if isinstance(x, bytes)).decode("ascii", "replace")
        raise StoreUnavailable(f"IMAP {what} failed: {typ} {text}".rstrip())


def _fetch_items(data) -> builtins.list[tuple[bytes, bytes | None]]:
    """(metadata, literal) pairs of a FETCH response as imaplib returns it."""
    out = []
    items = builtins.list(data or [])
    for i, item in enumerate(items):
        if isinstance(item, tuple):
            meta = item[0]
            if i + 1 < len(items) and isinstance(items[i + 1], bytes):
                meta += b" " + items[i + 1]
            out.append((meta, item[1]))
        elif isinstance(item, bytes) and (i == 0 or not isinstance(items[i - 1], tuple)):
            out.append((item, None))
    return out


def _uid_of(meta: bytes) -> int | None:
    m = re.search(rb"\bUID (\d+)", meta)
    return int(m.group(1)) if m else None


def _close(conn: imaplib.IMAP4, clean: bool) -> None:
    """End an IMAP connection: LOGOUT when it is in a known state, then close the socket."""
    try:
        if clean:
            conn.logout()
    except (OSError, imaplib.IMAP4.error):
        pass
    finally:
        try:
            conn.shutdown()
        except OSError:
            pass


class ImapStore:
    """A real IMAP server, one account per mailbox (its INBOX), via :mod:`imaplib` in worker
    threads with one connection per call (at most ``max_connections`` at once; Dovecot allows
    10 per user and address by default).

    ``credentials(mailbox) -> (user, password)``; a LookupError from it means "no account"
    (StoreError).  ``mailboxes() -> [mailbox, ...]`` lists the mailboxes :meth:`all_counts`
    reports on.  Every network error, timeout, refused login or NO/BAD answer raises
    StoreUnavailable; ``timeout`` bounds each network operation.

    ``status_account = (user, password)``: an account that may read every mailbox's INBOX,
    which it sees as ``status_name.format(mailbox=...)`` (Dovecot: a shared namespace
    ``shared/%%u/`` and an ACL giving that user ``lr``).  With it :meth:`all_counts` logs in
    once per :data:`STATUS_PER_LOGIN` mailboxes and sends their ``STATUS`` commands
    pipelined on that connection (:data:`STATUS_WINDOW` outstanding); a mailbox the account
    does not see is counted with its own login.  Without it, one login per mailbox."""

    def __init__(self, host: str, port: int, *, credentials: Callable[[str], tuple[str, str]],
                 timeout: float = 5.0, ssl: bool = False,
                 mailboxes: Callable[[], builtins.list[str]] | None = None,
                 ssl_context: _ssl.SSLContext | None = None, max_connections: int = 8,
                 status_account: tuple[str, str] | None = None,
                 status_name: str = "shared/{mailbox}/INBOX") -> None:
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"bad IMAP port {port!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        self.host = host
        self.port = port
        self.timeout = float(timeout)
        self.ssl = ssl
        self._ssl_context = ssl_context
        self._credentials = credentials
        self._mailboxes = mailboxes
        if status_account is not None and not (
                isinstance(status_account, tuple) and len(status_account) == 2
                and all(isinstance(x, str) and x for x in status_account)):
            raise ValueError("status_account must be a (user, password) pair of strings")
        if "{mailbox}" not in status_name or any(c in status_name for c in '"\\\r\n'):
            raise ValueError(f"status_name must contain {{mailbox}} and no quote, backslash or "
                             f"line end, not {status_name!r}")
        self.status_account = status_account
        self.status_name = status_name
        #: mailboxes the last all_counts() counted with their own login (not visible to the
        #: status account)
        self.status_fallbacks = 0
        self._limiter = trio.CapacityLimiter(max_connections)
        self._closed = False

    def __repr__(self) -> str:
        return f"ImapStore({self.host!r}, {self.port})"

    # ---------------------------------------------------------------- async API

    async def _run(self, mailbox: str, fn, *args, select: bool = True, readonly: bool = False):
        if self._closed:
            raise StoreUnavailable("the message store is closed")
        return await trio.to_thread.run_sync(
            lambda: self._session(mailbox, fn, *args, select=select, readonly=readonly),
            limiter=self._limiter)

    async def deliver(self, msg: VoiceMessage) -> bool:
        _checked(msg)  # a bad message is refused before any I/O
        return await self._run(msg.mailbox, self._deliver, msg)

    async def counts(self, mailbox: str) -> tuple[int, int]:
        check_mailbox(mailbox)
        return await self._run(mailbox, self._counts, select=False)

    async def list(self, mailbox: str, *, new_only: bool = False) -> builtins.list[StoredMessage]:
        check_mailbox(mailbox)
        return await self._run(mailbox, self._list, new_only, readonly=True)

    async def fetch_audio(self, mailbox: str, uid: str) -> bytes:
        check_mailbox(mailbox)
        _check_uid_imap(uid)
        return await self._run(mailbox, self._fetch, mailbox, uid, readonly=True)

    async def mark_heard(self, mailbox: str, uid: str) -> None:
        check_mailbox(mailbox)
        _check_uid_imap(uid)
        await self._run(mailbox, self._mark, mailbox, uid)

    async def all_counts(self) -> dict[str, tuple[int, int]]:
        if self._mailboxes is None:
            raise StoreError("this ImapStore was made without mailboxes=...: it cannot list "
                             "its mailboxes")
        names = sorted(set(self._mailboxes()))
        for name in names:
            check_mailbox(name)
        if self.status_account is not None:
            if self._closed:
                raise StoreUnavailable("the message store is closed")
            counted: dict[str, tuple[int, int]] = {}
            unseen: builtins.list[str] = []

            failed: builtins.list[Exception] = []

            async def chunk(part: builtins.list[str]) -> None:
                try:
                    got, hidden = await trio.to_thread.run_sync(self._status_all, part,
                                                                limiter=self._limiter)
                except (StoreUnavailable, StoreError) as e:
                    failed.append(e)
                    return
                counted.update(got)
                unseen.extend(hidden)

            async with trio.open_nursery() as nursery:
                for k in range(0, len(names), STATUS_PER_LOGIN):
                    nursery.start_soon(chunk, names[k:k + STATUS_PER_LOGIN])
            if failed:
                raise failed[0]
            unseen.sort()
            self.status_fallbacks = len(unseen)
            if not unseen:
                return {k: v for k, v in sorted(counted.items()) if v[0] or v[1]}
            # not visible to the status account: never created (no mail yet), or the account
            # lacks the rights (Dovecot answers both the same): each with its own login, which
            # also creates its INBOX, so the next count sees it
            names = unseen
        else:
            counted, unseen = {}, []
        out: dict[str, tuple[int, int]] = dict(counted)
        errors: builtins.list[Exception] = []

        async def one(name: str) -> None:
            try:
                out[name] = await self.counts(name)
            except (StoreUnavailable, StoreError) as e:
                errors.append(e)

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)
        if errors:
            raise errors[0]
        return {k: v for k, v in sorted(out.items()) if v[0] or v[1]}

    async def aclose(self) -> None:
        self._closed = True

    # ---------------------------------------------------------------- worker-thread side

    def _status_all(self, names: builtins.list[str]
                    ) -> tuple[dict[str, tuple[int, int]], builtins.list[str]]:
        """(new, heard) of every mailbox in ``names`` the status account sees, and the names
        it does not see (``NO [NONEXISTENT]``), over one connection of the status account:
        ``STATUS <name> (MESSAGES UNSEEN)`` pipelined, at most STATUS_WINDOW unanswered.
        Any other NO/BAD, a lost connection or an answer not understood raises
        StoreUnavailable naming the mailbox."""
        where = f"{self.host}:{self.port}"
        conn = self._connect("", account=self.status_account)
        by_name = {self.status_name.format(mailbox=n): n for n in names}
        out: dict[str, tuple[int, int]] = {}
        hidden: builtins.list[str] = []
        pending: dict[bytes, str] = {}
        todo = iter(names)
        seq = 0
        clean = False

        def send_more() -> None:
            nonlocal seq
            lines = []
            while len(pending) < STATUS_WINDOW:
                name = next(todo, None)
                if name is None:
                    break
                seq += 1
                tag = f"S{seq}".encode()
                pending[tag] = name
                lines.append(tag + b" STATUS " + _quote(self.status_name.format(mailbox=name))
                             .encode("ascii") + b" (MESSAGES UNSEEN)\r\n")
            if lines:
                conn.send(b"".join(lines))

        try:
            send_more()
            while pending:
                line = conn.readline()
                if not line:
                    raise StoreUnavailable(f"IMAP server {where} closed the connection during "
                                           f"STATUS ({len(out)} of {len(names)} mailboxes counted)")
                m = _STATUS_LINE.match(line)
                if m is not None:
                    quoted, atom, items = m.groups()
                    raw = (quoted.decode("ascii", "replace").replace('\\"', '"')
                           .replace("\\\\", "\\") if quoted is not None
                           else atom.decode("ascii", "replace"))
                    name = by_name.get(raw)
                    msgs = re.search(rb"MESSAGES (\d+)", items)
                    unseen = re.search(rb"UNSEEN (\d+)", items)
                    if name is None or not (msgs and unseen):
                        raise StoreUnavailable(f"IMAP STATUS answer not understood: {line!r:.200}")
                    total, new = int(msgs.group(1)), int(unseen.group(1))
                    out[name] = (new, max(0, total - new))
                    continue
                tag, _, rest = line.partition(b" ")
                if tag in pending:
                    name = pending.pop(tag)
                    if rest.startswith(b"NO") and _NONEXISTENT.search(rest):
                        hidden.append(name)
                    elif not rest.startswith(b"OK"):
                        raise StoreUnavailable(
                            f"IMAP STATUS of mailbox {name} ({self.status_name.format(mailbox=name)}) "
                            f"as {self.status_account[0]!r} refused by {where}: "
                            f"{rest.decode('ascii', 'replace').strip()}")
                    elif name not in out:
                        raise StoreUnavailable(f"IMAP server {where} answered STATUS of mailbox "
                                               f"{name} without its counts")
                    if len(pending) <= STATUS_WINDOW // 2:
                        send_more()
                # other untagged lines (e.g. an alert) are ignored
            clean = True
            return out, sorted(hidden)
        except imaplib.IMAP4.abort as e:
            raise StoreUnavailable(f"IMAP connection to {where} lost: {_error_text(e)}") from e
        except OSError as e:
            raise StoreUnavailable(f"IMAP server {where}: {_error_text(e)}") from e
        finally:
            _close(conn, clean)

    def _connect(self, mailbox: str, account: tuple[str, str] | None = None) -> imaplib.IMAP4:
        if account is not None:
            user, password = account
            mailbox = f"(status account for all {mailbox or 'mailboxes'})"
        else:
            try:
                user, password = self._credentials(mailbox)
            except LookupError:
                raise StoreError(f"no IMAP account for mailbox {mailbox}") from None
        where = f"{self.host}:{self.port}"
        try:
            if self.ssl:
                ctx = self._ssl_context or _ssl.create_default_context()
                conn = imaplib.IMAP4_SSL(self.host, self.port, ssl_context=ctx,
                                         timeout=self.timeout)
            else:
                conn = imaplib.IMAP4(self.host, self.port, timeout=self.timeout)
        except (OSError, imaplib.IMAP4.error) as e:
            raise StoreUnavailable(f"cannot connect to IMAP server {where}: "
                                   f"{_error_text(e)}") from e
        try:
            conn.login(user, password)
        except imaplib.IMAP4.abort as e:
            conn.shutdown()
            raise StoreUnavailable(f"IMAP server {where} dropped the connection during login: "
                                   f"{_error_text(e)}") from e
        except imaplib.IMAP4.error as e:
            conn.shutdown()
            raise StoreUnavailable(f"IMAP login as {user!r} (mailbox {mailbox}) refused by "
                                   f"{where}: {_error_text(e)}") from None
        except OSError as e:
            conn.shutdown()
            raise StoreUnavailable(f"IMAP server {where}: {_error_text(e)}") from e
        return conn

    def _session(self, mailbox: str, fn, *args, select: bool, readonly: bool):
        conn = self._connect(mailbox)
        where = f"{self.host}:{self.port}"
        clean = False
        try:
            if select:
                typ, data = conn.select("INBOX", readonly=readonly)
                _ok(typ, data, f"SELECT INBOX of mailbox {mailbox}")
            try:
                result = fn(conn, *args)
            except StoreError:
                clean = True  # the connection is fine, the request was not
                raise
            clean = True
            return result
        except imaplib.IMAP4.abort as e:
            raise StoreUnavailable(f"IMAP connection to {where} lost: {_error_text(e)}") from e
        except imaplib.IMAP4.error as e:
            raise StoreUnavailable(f"IMAP server {where}: {_error_text(e)}") from e
        except OSError as e:
            raise StoreUnavailable(f"IMAP server {where}: {_error_text(e)}") from e
        finally:
            _close(conn, clean)

    @staticmethod
    def _find_uids(conn: imaplib.IMAP4, message_id: str) -> builtins.list[int]:
        """UIDs of the messages whose Message-ID is exactly ``<message_id>`` (IMAP SEARCH is
        a case-insensitive substring match, so the hits are checked)."""
        want = f"<{message_id}>"
        typ, data = conn.uid("SEARCH", "HEADER", "Message-ID", _quote(want))
        _ok(typ, data, "UID SEARCH")
        hits = [x for x in (data[0] or b"").split()] if data and data[0] else []
        if not hits:
            return []
        typ, data = conn.uid("FETCH", b",".join(hits).decode(),
                             "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        _ok(typ, data, "UID FETCH")
        found = set()
        for meta, literal in _fetch_items(data):
            uid = _uid_of(meta)
            if uid is not None and literal is not None:
                if parse_headers(literal).get("message-id") == want:
                    found.add(uid)
        return sorted(found)

    def _deliver(self, conn: imaplib.IMAP4, msg: VoiceMessage) -> bool:
        if self._find_uids(conn, msg.message_id):
            return False
        data = build_mime(msg)
        when = _parse_time(msg.recorded_at)
        typ, resp = conn.append("INBOX", "", imaplib.Time2Internaldate(when), data)
        _ok(typ, resp, "APPEND")
        m = re.search(rb"APPENDUID \d+ (\d+)", b" ".join(x for x in resp if isinstance(x, bytes)))
        mine = int(m.group(1)) if m else None
        # Another node may have appended the same message meanwhile: keep the oldest copy.
        # (Our copy may also be gone already: the other node's re-check expunged it.)
        conn.noop()
        uids = self._find_uids(conn, msg.message_id)
        if len(uids) > 1:
            uidset = ",".join(map(str, uids[1:]))
            typ, resp = conn.uid("STORE", uidset, "+FLAGS.SILENT", r"(\Deleted)")
            _ok(typ, resp, "UID STORE \\Deleted")
            typ, resp = conn.uid("EXPUNGE", uidset)
            _ok(typ, resp, "UID EXPUNGE")
        if mine is None:  # no UIDPLUS: we cannot tell whose copy stayed
            return len(uids) <= 1
        return bool(uids) and uids[0] == mine

    @staticmethod
    def _counts(conn: imaplib.IMAP4) -> tuple[int, int]:
        typ, data = conn.status("INBOX", "(MESSAGES UNSEEN)")
        _ok(typ, data, "STATUS")
        text = b" ".join(x for x in data if isinstance(x, bytes))
        msgs = re.search(rb"MESSAGES (\d+)", text)
        unseen = re.search(rb"UNSEEN (\d+)", text)
        if not (msgs and unseen):
            raise StoreUnavailable(f"IMAP STATUS answer not understood: {text!r}")
        total, new = int(msgs.group(1)), int(unseen.group(1))
        return new, max(0, total - new)

    @staticmethod
    def _list(conn: imaplib.IMAP4, new_only: bool) -> builtins.list[StoredMessage]:
        typ, data = conn.uid("SEARCH", "UNSEEN" if new_only else "ALL")
        _ok(typ, data, "UID SEARCH")
        hits = data[0].split() if data and data[0] else []
        if not hits:
            return []
        typ, data = conn.uid("FETCH", b",".join(hits).decode(), "(UID FLAGS BODY.PEEK[HEADER])")
        _ok(typ, data, "UID FETCH")
        found = []
        for meta, literal in _fetch_items(data):
            uid = _uid_of(meta)
            if uid is None or literal is None:
                continue
            flags = re.search(rb"FLAGS \(([^)]*)\)", meta)
            heard = bool(flags) and b"\\seen" in flags.group(1).lower()
            if new_only and heard:
                continue
            try:
                h = parse_headers(literal)
            except StoreError:
                h = {}
            m = _stored(str(uid), h, heard)
            found.append((_age_key(m), uid, m))
        found.sort(key=lambda t: t[:2])
        return [t[2] for t in found]

    @staticmethod
    def _exists(conn: imaplib.IMAP4, mailbox: str, uid: str) -> int:
        typ, data = conn.uid("FETCH", uid, "(UID RFC822.SIZE)")
        _ok(typ, data, "UID FETCH")
        for meta, _lit in _fetch_items(data):
            if _uid_of(meta) == int(uid):
                size = re.search(rb"RFC822\.SIZE (\d+)", meta)
                return int(size.group(1)) if size else 0
        raise StoreError(f"no message {uid} in mailbox {mailbox}")

    def _fetch(self, conn: imaplib.IMAP4, mailbox: str, uid: str) -> bytes:
        size = self._exists(conn, mailbox, uid)
        if size > MAX_MESSAGE:
            raise StoreError(f"message {uid} in mailbox {mailbox} is {size} bytes: at most "
                             f"{MAX_MESSAGE} are accepted")
        typ, data = conn.uid("FETCH", uid, "(UID BODY.PEEK[])")
        _ok(typ, data, "UID FETCH")
        for meta, literal in _fetch_items(data):
            if _uid_of(meta) == int(uid) and literal is not None:
                return parse_mime(literal)[1]
        raise StoreError(f"no message {uid} in mailbox {mailbox}")

    def _mark(self, conn: imaplib.IMAP4, mailbox: str, uid: str) -> None:
        self._exists(conn, mailbox, uid)
        typ, data = conn.uid("STORE", uid, "+FLAGS.SILENT", r"(\Seen)")
        _ok(typ, data, "UID STORE \\Seen")
