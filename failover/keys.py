"""The link's key ring: the key file, its parser, rotation (docs/configuration.md, "The key file").

The key file authenticates the node link and the replication channels.  Line 1 is the current
key, 64 hex digits (a file of only that line is the format before rotation and still loads);
an optional line 2 names the previous key and until when it is still accepted::

    5f0c...e1                                          (64 hex digits)
    previous 9a41...07 until 2026-12-08T17:00:00Z      (ISO 8601, UTC)

Dialers sign with the current key (and fall back to the previous one when the peer refuses
it); acceptors accept both until ``until``.  ``parse_key_file`` is the pure parser (bounded:
at most ``MAX_KEY_FILE`` bytes); ``load_keys`` also enforces mode 0600 (no group or other
access); ``save_keys`` writes atomically with mode 0600; ``rotate`` makes the next ring.
Nothing here ever logs or formats key bytes except ``format_key_file``; ``describe`` gives ids.
"""
from __future__ import annotations

import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from failover.config import ConfigError
from failover.core.fields import key_id
from telephony.runtime.files import SecretFileError, read_private_file

KEY_BYTES = 32
MAX_KEY_FILE = 512  # a ring is at most 65 + 110 bytes; anything longer is not a key file
_SETTING = "node.key_file"
_FORMAT = (f"line 1: the current key ({2 * KEY_BYTES} hex digits); optional line 2: "
           f"'previous <{2 * KEY_BYTES} hex digits> until <ISO 8601 UTC time, e.g. "
           "2026-12-08T17:00:00Z>'")

__all__ = ["KEY_BYTES", "KeyRing", "MAX_KEY_FILE", "describe", "format_key_file", "load_key",
           "load_keys", "parse_duration", "parse_key_file", "rotate", "save_keys"]


@dataclass(frozen=True)
class KeyRing:
    """The keys of one node: ``current`` and, until ``previous_until`` (Unix time, UTC), the
    ``previous`` one."""

    current: bytes
    previous: bytes | None = None
    previous_until: float | None = None

    def accepted(self, now: float) -> tuple[bytes, ...]:
        """The keys accepted at ``now`` (Unix time), the current one first."""
        if self.previous is not None and now < self.previous_until:
            return (self.current, self.previous)
        return (self.current,)

    def expired(self, now: float) -> bool:
        """True when there is a previous key and its window has ended."""
        return self.previous is not None and now >= self.previous_until


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(ring: KeyRing) -> dict:
    """The ring as status shows it: ids only, never key bytes."""
    return {"current_id": key_id(ring.current).hex(),
            "previous_id": key_id(ring.previous).hex() if ring.previous is not None else None,
            "previous_until": _iso(ring.previous_until) if ring.previous is not None else None}


def _hex_key(word: str, what: str, where: str) -> bytes:
    if len(word) != 2 * KEY_BYTES or not all(c in "0123456789abcdefABCDEF" for c in word):
        raise ConfigError(where, f"the {what} key must be {2 * KEY_BYTES} hex digits "
                          f"({KEY_BYTES} bytes); {_FORMAT}", _SETTING)
    return bytes.fromhex(word)


def parse_key_file(data: bytes, where: str = "<key file>") -> KeyRing:
    """Parse a key file's bytes.  Raises ``ConfigError`` (naming ``where``, never quoting the
    file's contents) for anything but the format in the module docstring."""
    if not isinstance(data, bytes):
        raise ConfigError(where, "the key file must be read as bytes", _SETTING)
    if len(data) > MAX_KEY_FILE:
        raise ConfigError(where, f"the key file is longer than {MAX_KEY_FILE} bytes; {_FORMAT}",
                          _SETTING)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(where, f"the key file is not ASCII text; {_FORMAT}", _SETTING) from None
    lines = text.strip().splitlines() or [""]  # blank space around the lines is ignored
    if len(lines) > 2:
        raise ConfigError(where, f"the key file must have 1 or 2 lines, not {len(lines)}; {_FORMAT}",
                          _SETTING)
    current = _hex_key(lines[0].strip(), "current", where)
    if len(lines) == 1:
        return KeyRing(current)
    words = lines[1].split()
    if len(words) != 4 or words[0] != "previous" or words[2] != "until":
        raise ConfigError(where, f"line 2 of the key file is not understood; {_FORMAT}", _SETTING)
    previous = _hex_key(words[1], "previous", where)
    if previous == current:
        raise ConfigError(where, "the previous key is the current key", _SETTING)
    try:
        until = datetime.fromisoformat(words[3])
    except ValueError:
        raise ConfigError(where, f"line 2 of the key file: {words[3][:40]!r} is not an ISO 8601 "
                          f"time; {_FORMAT}", _SETTING) from None
    if until.tzinfo is None or until.utcoffset() != timedelta(0):
        raise ConfigError(where, "line 2 of the key file: the time must be UTC (end it with Z)",
                          _SETTING)
    return KeyRing(current, previous, until.timestamp())


def format_key_file(ring: KeyRing) -> bytes:
    """The file's bytes for ``ring`` (``parse_key_file`` reads them back to the same ring, the
    time to the second)."""
    text = ring.current.hex() + "\n"
    if ring.previous is not None:
        text += f"previous {ring.previous.hex()} until {_iso(ring.previous_until)}\n"
    return text.encode("ascii")


def load_keys(path: str | os.PathLike) -> KeyRing:
    """Read the key file.  Raises :class:`ConfigError` if it cannot be read, is not a regular
    file, gives group or others any access, or does not parse."""
    p = str(path)
    try:
        data = read_private_file(p, MAX_KEY_FILE + 1)  # the parser says when it is too long
    except SecretFileError as e:
        raise ConfigError(p, f"key file: {str(e).removeprefix(p + ': ')}", _SETTING) from None
    return parse_key_file(data, p)


def load_key(path: str | os.PathLike) -> bytes:
    """The current key of the key file (see :func:`load_keys`)."""
    return load_keys(path).current


def save_keys(path: str | os.PathLike, ring: KeyRing) -> None:
    """Write ``ring`` to ``path`` atomically (a temporary file in the same directory, mode
    0600, fsync, rename).  On an error nothing is changed."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, format_key_file(ring))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, p)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dfd = os.open(p.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def parse_duration(text: str) -> float:
    """``"24h"``, ``"90m"``, ``"3600s"``, ``"7d"`` or plain seconds -> seconds (> 0).
    Raises ``ValueError``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    scale = units.get(t[-1:], None)
    number = t[:-1] if scale is not None else t
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (e.g. 24h, 90m, 3600s, 7d)") from None
    if not 0 < value <= 366 * 86400 or value != value:
        raise ValueError(f"{text!r}: the window must be more than 0 and at most 366 days")
    return value


def rotate(ring: KeyRing, now: float | None = None, window: float = 86400.0,
           new_key: bytes | None = None) -> KeyRing:
    """The next ring: a new random current key; the old current one becomes the previous key,
    accepted until ``now + window``."""
    now = time.time() if now is None else now
    if new_key is None:
        new_key = secrets.token_bytes(KEY_BYTES)
    if len(new_key) != KEY_BYTES or new_key == ring.current:
        raise ValueError(f"the new key must be {KEY_BYTES} bytes and differ from the current one")
    return KeyRing(new_key, ring.current, float(int(now + window)))
