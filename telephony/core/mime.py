"""The MIME form of a voice message in the message store, and the checks and listing record
the stores share.  Pure: no files, sockets, threads or clocks.

Every stored message is a MIME mail built by :func:`build_mime` (headers ``X-VMHA-*`` carry
the call data, the WAV is an ``audio/wav`` attachment); :func:`parse_mime` is its inverse and
:func:`parse_headers` reads the header block alone (a listing).  :class:`StoreError` is the
message store's "bad request" error (bad mailbox id, unknown uid, a message field that cannot
be stored, a message too large): retrying cannot help, and a request refused with it changes
nothing.  The stores themselves are in :mod:`telephony.store`.
"""
from __future__ import annotations

import base64
import email.utils
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy as _policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser

from telephony.core.events import check_text
from telephony.core.ids import MAILBOX_RE
from telephony.core.message import VoiceMessage

__all__ = [
    "MAX_MESSAGE", "MAX_TEXT", "FROM", "HEADER_LIMIT", "StoreError",
    "StoredMessage", "check_mailbox", "safe_name", "parse_time", "check_message", "build_mime",
    "parse_headers", "parse_mime", "stored_message", "age_key",
]

#: Largest MIME message :func:`build_mime` produces and :func:`parse_mime` accepts.
MAX_MESSAGE = 64 * 1024 * 1024
#: Longest text field (caller, forwarding, node, call id, extension, recorded_at).
MAX_TEXT = 200
FROM = "Voice Mail <vmha@localhost>"
HEADER_LIMIT = 256 * 1024  # a header block longer than this is not ours (listing reads only it)
_WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")
# refold_source="none": headers set with set_raw() are written exactly as given (the default
# policy would re-parse a long Message-ID and mangle ids with characters such as '"' or '(').
_POLICY = _policy.default.clone(refold_source="none")


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


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 time (UTC when it names no zone), or None when ``text`` is not one."""
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


def check_message(msg: VoiceMessage) -> tuple[datetime, float]:
    """(recorded_at as a time, duration_s as a float) of a message that can be stored; raises
    StoreError naming the field otherwise.  The stores call it before any I/O."""
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
    when = parse_time(msg.recorded_at)
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
    when, duration = check_message(msg)
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
            _header_block(bytes(data[:HEADER_LIMIT]))))
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


def stored_message(uid: str, h: dict[str, str], heard: bool) -> StoredMessage:
    """The listing record of the message ``uid`` from its headers (:func:`parse_headers`):
    a missing or unparsable field gets its default (a listing never fails on one message)."""
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


def age_key(m: StoredMessage) -> datetime:
    """The sort key of a listing, oldest first: ``recorded_at`` (unparsable: the oldest)."""
    return parse_time(m.recorded_at) or _EPOCH

