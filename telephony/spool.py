"""The local message spool (the guide's UMR): voice messages wait here while the message store
is unavailable and are delivered, oldest first, once it is back.

The spool directory is ``<files_root>/spool``, which file replication copies from the active
node to the inactive one, so after a failover the other node may deliver the same spool file
again: the store's ``message_id`` idempotency turns that second delivery into a no-op, so every
message is stored exactly once.

File format (``NNNNNNNNNNNN-<message_id-safe>.vmmsg``)::

    b"VMHA-SPOOL/1 " + JSON header (one line, UTF-8, at most 64 KiB) + b"\\n" + WAV bytes

The header holds every :class:`~telephony.core.message.VoiceMessage` field except ``audio``, plus
``audio_bytes`` and ``audio_sha256``, so a partial or corrupt file is always detected.  The
name starts with a counter that increases with every spooled message (also across nodes: it
continues after the highest counter in the directory), and :meth:`Spool.pending` orders by it,
never by time stamps.  A file is written under a temp name (``.vmha-spool-<pid>-<hex>.tmp``,
which file replication ignores), fsynced and then linked to its final name, so a reader (and
the replicator) never sees a partial spool file.  A file that cannot be read as a message is
moved to ``<directory>/.bad/``.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import secrets
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import trio

from telephony.core.events import Reason
from telephony.core.message import VoiceMessage
from telephony.runtime.files import fsync_dir, write_new_file
from telephony.store import MAX_MESSAGE, MessageStore, StoreError, StoreUnavailable, safe_name

__all__ = ["Spool", "SpoolError", "SpoolWorker", "encode", "decode"]

MAGIC = b"VMHA-SPOOL/1 "
SUFFIX = ".vmmsg"
MAX_HEADER = 64 * 1024
MAX_FILE = len(MAGIC) + MAX_HEADER + MAX_MESSAGE
BAD_DIR = ".bad"
TEMP_PREFIX = ".vmha-spool-"
NAME_RE = re.compile(r"(\d{1,20})-(.{1,200})\.vmmsg")
_TEMP_RE = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-[0-9a-f]+\.tmp")
_TEXT_FIELDS = ("message_id", "mailbox", "extension", "caller", "forwarding", "node", "call_id",
                "recorded_at")


class SpoolError(Exception):
    """A spool file that is not a complete, valid message, or a message that cannot be
    spooled (the directory cannot be written)."""


# ============================================================================ format


def encode(msg: VoiceMessage) -> bytes:
    """The spool file content of ``msg``.  Raises SpoolError if a field cannot be spooled."""
    if not isinstance(msg, VoiceMessage):
        raise SpoolError(f"expected a VoiceMessage, got {type(msg).__name__}")
    header: dict[str, Any] = {name: getattr(msg, name) for name in _TEXT_FIELDS}
    header.update(reason=str(msg.reason), duration_s=msg.duration_s, term=msg.term,
                  audio_bytes=len(msg.audio),
                  audio_sha256=hashlib.sha256(msg.audio).hexdigest())
    try:
        line = json.dumps(header, ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode("ascii")
    except (TypeError, ValueError) as e:
        raise SpoolError(f"message {msg.message_id}: cannot be spooled: {e}") from None
    data = MAGIC + line + b"\n" + msg.audio
    decode(data, name=msg.message_id)  # refuse now what could not be read back later
    return data


def _fail(name: str, why: str) -> SpoolError:
    return SpoolError(f"{name}: {why}" if name else why)


def decode(data: bytes, *, name: str = "") -> VoiceMessage:
    """The message in a spool file's content; SpoolError (naming ``name``) if it is not a
    complete, valid spool file."""
    if len(data) > MAX_FILE:
        raise _fail(name, f"{len(data)} bytes: larger than any spool file ({MAX_FILE})")
    if not data.startswith(MAGIC):
        raise _fail(name, "not a vmha spool file (bad magic)")
    nl = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER + 1)
    if nl < 0:
        raise _fail(name, "header line missing or longer than 64 KiB (partial file?)")
    try:
        h = json.loads(data[len(MAGIC):nl].decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise _fail(name, f"header is not JSON: {e}") from None
    if not isinstance(h, dict):
        raise _fail(name, "header is not a JSON object")
    for key in (*_TEXT_FIELDS, "reason", "audio_sha256"):
        if not isinstance(h.get(key), str):
            raise _fail(name, f"header field {key!r} missing or not a string")
    for key in ("term", "audio_bytes"):
        v = h.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _fail(name, f"header field {key!r} missing or not an integer >= 0")
    d = h.get("duration_s")
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d < 0:
        raise _fail(name, "header field 'duration_s' missing or not a number >= 0")
    audio = data[nl + 1:]
    if len(audio) != h["audio_bytes"]:
        raise _fail(name, f"audio is {len(audio)} bytes, the header says {h['audio_bytes']} "
                          "(partial file?)")
    if hashlib.sha256(audio).hexdigest() != h["audio_sha256"]:
        raise _fail(name, "audio does not match its sha256 (corrupt file)")
    try:
        reason = Reason(h["reason"])
    except ValueError:
        raise _fail(name, f"unknown reason {h['reason']!r}") from None
    try:
        return VoiceMessage(**{k: h[k] for k in _TEXT_FIELDS}, reason=reason,
                            duration_s=float(d), term=h["term"], audio=audio)
    except (TypeError, ValueError) as e:
        raise _fail(name, f"not a valid message: {e}") from None


# ============================================================================ directory


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _order(path_name: str) -> tuple[int, str]:
    m = NAME_RE.fullmatch(path_name)
    return (int(m.group(1)) if m else 10**21, path_name)


class Spool:
    """A directory of spooled messages.  All methods do blocking file I/O (call them in a
    worker thread from async code); the directory is created on the first :meth:`put`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.bad_dir = self.directory / BAD_DIR
        self._lock = threading.Lock()
        self._counter = 0

    def __repr__(self) -> str:
        return f"Spool({str(self.directory)!r})"

    def _names(self) -> list[str]:
        try:
            with os.scandir(self.directory) as it:
                return [e.name for e in it
                        if not e.name.startswith(".") and e.name.endswith(SUFFIX)
                        and e.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            return []

    def _same_message(self, name: str, message_id: str) -> bool:
        try:
            with open(self.directory / name, "rb") as f:
                head = f.read(len(MAGIC) + MAX_HEADER + 1)
            nl = head.find(b"\n")
            h = json.loads(head[len(MAGIC):nl].decode("utf-8")) if nl > 0 else None
            return isinstance(h, dict) and h.get("message_id") == message_id
        except (OSError, ValueError, RecursionError):
            return False

    def put(self, msg: VoiceMessage) -> Path:
        """Spool ``msg`` atomically; return its file.  A pending file of the same
        ``message_id`` is returned as is (nothing written).  Raises SpoolError (a field that
        cannot be spooled, or the directory cannot be written: nothing is left behind)."""
        data = encode(msg)
        safe = safe_name(msg.message_id)
        with self._lock:
            tmp: Path | None = None
            try:
                os.makedirs(self.directory, exist_ok=True)
                top = 0
                for name in self._names():
                    m = NAME_RE.fullmatch(name)
                    if not m:
                        continue
                    top = max(top, int(m.group(1)))
                    if m.group(2) == safe and self._same_message(name, msg.message_id):
                        return self.directory / name
                counter = max(self._counter, top) + 1
                tmp = self.directory / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}.tmp"
                write_new_file(tmp, data, 0o600)  # files at rest: the owner only
                while True:
                    target = self.directory / f"{counter:012d}-{safe}{SUFFIX}"
                    try:
                        os.link(tmp, target)  # never replaces a file of the same name
                        break
                    except FileExistsError:
                        counter += 1
                    except OSError as e:
                        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                            raise
                        if target.exists():
                            counter += 1
                            continue
                        os.rename(tmp, target)
                        tmp = None
                        break
                self._counter = counter
                fsync_dir(self.directory)
                return target
            except OSError as e:
                raise SpoolError(f"cannot spool message {msg.message_id} in {self.directory}: "
                                 f"{e.strerror or e}") from e
            finally:
                if tmp is not None:
                    try:
                        os.unlink(tmp)
                    except OSError:
                        pass

    def pending(self) -> list[Path]:
        """Spool files, oldest first (by the counter in the name)."""
        return [self.directory / n for n in sorted(self._names(), key=_order)]

    def load(self, path: Path) -> VoiceMessage:
        """The message of a spool file.  SpoolError if it is not a complete valid spool file;
        OSError (FileNotFoundError: delivered and removed meanwhile) passes through."""
        path = Path(path)
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
        return decode(data, name=path.name)

    def remove(self, path: Path) -> None:
        """Remove a delivered spool file (already gone is fine)."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def quarantine(self, path: Path) -> Path:
        """Move a bad file to ``.bad/`` (never overwriting an earlier one); return where."""
        path = Path(path)
        os.makedirs(self.bad_dir, exist_ok=True)
        dest = self.bad_dir / path.name
        n = 1
        while dest.exists():
            dest = self.bad_dir / f"{path.name}.{n}"
            n += 1
        os.rename(path, dest)
        return dest

    def stale_temps(self) -> list[Path]:
        """Temp files left by a process that is gone (a crash in the middle of :meth:`put`)."""
        out = []
        try:
            with os.scandir(self.directory) as it:
                for e in it:
                    m = _TEMP_RE.fullmatch(e.name)
                    if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
                        out.append(Path(e.path))
        except FileNotFoundError:
            pass
        return sorted(out)


# ============================================================================ worker


class EventSink(Protocol):
    def write(self, level: str, event: str, message: str, fields: dict | None = None) -> Any: ...


class SpoolWorker:
    """Delivers messages to the store, spooling them while it is unavailable, and delivers
    the spool (oldest first) while enabled.

    ``enabled`` starts False: only the active node delivers from the spool (the messaging
    service calls :meth:`set_enabled` on activation and deactivation).  :meth:`deliver` works
    either way.  While the store is unavailable the worker retries after ``retry_min``
    seconds, doubling up to ``retry_max``; :meth:`wake` retries at once.  An idle worker
    also looks at the spool every ``retry_max`` seconds (files put there by someone else).
    ``on_stored(msg)`` is awaited after a spooled message reached the store (the messaging
    core updates its lamp there); its errors are logged, never retried."""

    def __init__(self, spool: Spool, store: MessageStore, *, retry_min: float = 0.5,
                 retry_max: float = 30.0, events: EventSink | None = None,
                 enabled: bool = False,
                 on_stored: Callable[[VoiceMessage], Awaitable[None]] | None = None) -> None:
        if not (isinstance(retry_min, (int, float)) and retry_min > 0):
            raise ValueError(f"retry_min must be > 0, got {retry_min!r}")
        if not (isinstance(retry_max, (int, float)) and retry_max >= retry_min):
            raise ValueError(f"retry_max must be >= retry_min, got {retry_max!r}")
        self.spool = spool
        self.store = store
        self.retry_min = float(retry_min)
        self.retry_max = float(retry_max)
        self.events = events
        self.on_stored = on_stored  # after a spooled message reached the store (its lamp)
        self._enabled = bool(enabled)
        self._poke = trio.Event()  # something to do: new spool file, enabled, wake()
        self._kick = trio.Event()  # retry now even while backing off: enabled change, wake()
        self._running = False
        self._spooled = 0
        self._delivered = 0
        self._duplicates = 0
        self._bad = 0
        self._pending = 0
        self._available: bool | None = None
        self._last_error: str | None = None

    # ---------------------------------------------------------------- control

    def set_enabled(self, enabled: bool) -> None:
        """Deliver from the spool (True) or stay idle (False, takes effect after the file in
        progress)."""
        self._enabled = bool(enabled)
        self._poke.set()
        self._kick.set()

    def wake(self) -> None:
        """Look at the spool and try the store now (ends a back-off wait)."""
        self._poke.set()
        self._kick.set()

    def stats(self) -> dict:
        """Counters: ``spooled`` (put in the spool by :meth:`deliver`), ``delivered_from_spool``,
        ``duplicates`` (the store already had it: from the spool or direct), ``pending``
        (spool files at the last look), ``store_available`` (None until known),
        ``last_error``, ``bad`` (files moved to .bad), ``enabled``."""
        return {"spooled": self._spooled, "delivered_from_spool": self._delivered,
                "duplicates": self._duplicates, "pending": self._pending,
                "store_available": self._available, "last_error": self._last_error,
                "bad": self._bad, "enabled": self._enabled}

    def _event(self, level: str, event: str, message: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.write(level, event, message, fields or None)

    def _unavailable(self, error: BaseException, *, level: str = "warning") -> None:
        text = str(error) or type(error).__name__
        self._last_error = text
        if self._available is not False:
            self._event(level, "store_unavailable",
                        f"message store unavailable, spooling: {text}", error=text)
        self._available = False

    def _available_now(self) -> None:
        if self._available is False:
            self._event("info", "store_available", "message store available again")
            self._kick.set()  # deliver the spool now
            self._poke.set()
        self._available = True

    # ---------------------------------------------------------------- delivery

    async def deliver(self, msg: VoiceMessage) -> str:
        """Store ``msg``, or spool it if the store is unavailable: "stored", "duplicate" or
        "spooled".  StoreError (a message that can never be stored) and SpoolError (the store
        is unavailable and the spool cannot be written) pass through: the message was kept
        nowhere."""
        try:
            stored = await self.store.deliver(msg)
        except StoreUnavailable as e:
            self._unavailable(e)
            try:
                path = await trio.to_thread.run_sync(self.spool.put, msg)
            except SpoolError as se:
                self._event("error", "spool_failed", f"message {msg.message_id} for mailbox "
                            f"{msg.mailbox} could not be stored or spooled: {se}",
                            message_id=msg.message_id, mailbox=msg.mailbox, error=str(se))
                raise
            self._spooled += 1
            self._pending += 1
            self._event("warning", "message_spooled",
                        f"message {msg.message_id} for mailbox {msg.mailbox} spooled",
                        message_id=msg.message_id, mailbox=msg.mailbox, file=path.name,
                        error=str(e))
            self._poke.set()
            return "spooled"
        self._available_now()
        if stored:
            return "stored"
        self._duplicates += 1
        return "duplicate"

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Deliver the spool while enabled, until cancelled."""
        if self._running:
            raise RuntimeError("SpoolWorker.run is already running")
        self._running = True
        try:
            task_status.started()
            delay = self.retry_min
            while True:
                self._poke = trio.Event()
                self._kick = trio.Event()
                if not self._enabled:
                    await self._poke.wait()
                    continue
                try:
                    pending, moved = await trio.to_thread.run_sync(self._scan)
                except OSError as e:
                    self._last_error = f"spool {self.spool.directory}: {e.strerror or e}"
                    self._event("error", "spool_error", self._last_error)
                    await self._backoff(delay)
                    delay = min(delay * 2, self.retry_max)
                    continue
                self._pending = len(pending)
                for tmp, dest in moved:
                    self._bad += 1
                    self._event("error", "spool_bad", f"partial spool file {tmp.name} (left by "
                                f"a crash) moved to {dest}", file=tmp.name, moved_to=str(dest),
                                error="partial temp file")
                if not pending:
                    with trio.move_on_after(self.retry_max):
                        await self._poke.wait()
                    continue
                if await self._drain(pending):
                    delay = self.retry_min
                else:
                    await self._backoff(delay)
                    delay = min(delay * 2, self.retry_max)
        finally:
            self._running = False

    async def _backoff(self, delay: float) -> None:
        with trio.move_on_after(delay):
            await self._kick.wait()

    def _scan(self) -> tuple[list[Path], list[tuple[Path, Path]]]:
        moved = []
        for tmp in self.spool.stale_temps():
            try:
                moved.append((tmp, self.spool.quarantine(tmp)))
            except FileNotFoundError:
                continue
        return self.spool.pending(), moved

    async def _drain(self, pending: list[Path]) -> bool:
        """Deliver ``pending`` in order; False if the store (or the spool) failed and the
        worker should back off."""
        for path in pending:
            if not self._enabled:
                return True
            try:
                msg = await trio.to_thread.run_sync(self.spool.load, path)
            except FileNotFoundError:
                continue  # gone meanwhile (delivered, or removed by replication)
            except SpoolError as e:
                if not await self._quarantine(path, str(e)):
                    return False
                continue
            except OSError as e:
                self._last_error = f"cannot read spool file {path.name}: {e.strerror or e}"
                self._event("error", "spool_error", self._last_error, file=path.name)
                return False
            try:
                stored = await self.store.deliver(msg)
            except StoreUnavailable as e:
                self._unavailable(e)
                return False
            except StoreError as e:
                if not await self._quarantine(path, f"the store refuses it: {e}"):
                    return False
                continue
            except Exception as e:  # a store bug must not kill the worker: keep the file
                self._unavailable(e, level="error")
                self._event("error", "store_failed", f"message store raised "
                            f"{type(e).__name__}: {e}", file=path.name)
                return False
            self._available_now()
            try:
                await trio.to_thread.run_sync(self.spool.remove, path)
            except OSError as e:
                self._last_error = f"cannot remove spool file {path.name}: {e.strerror or e}"
                self._event("error", "spool_error", self._last_error, file=path.name)
                return False  # delivered again later: the store reports a duplicate
            self._pending = max(0, self._pending - 1)
            fields = dict(message_id=msg.message_id, mailbox=msg.mailbox, file=path.name)
            if stored:
                self._delivered += 1
                self._event("info", "spool_delivered", f"spooled message {msg.message_id} "
                            f"delivered to mailbox {msg.mailbox}", **fields)
                if self.on_stored is not None:
                    try:
                        await self.on_stored(msg)
                    except Exception as e:  # the message is stored; its follow-up is not ours
                        self._event("error", "spool_followup_failed", f"after delivering "
                                    f"{msg.message_id}: {type(e).__name__}: {e}", **fields)
            else:
                self._duplicates += 1
                self._event("info", "spool_duplicate", f"spooled message {msg.message_id} "
                            "was already in the store (delivered by the other node?)", **fields)
        return True

    async def _quarantine(self, path: Path, why: str) -> bool:
        try:
            dest = await trio.to_thread.run_sync(self.spool.quarantine, path)
        except FileNotFoundError:
            return True
        except OSError as e:
            self._last_error = f"cannot move bad spool file {path.name}: {e.strerror or e}"
            self._event("error", "spool_error", self._last_error, file=path.name)
            return False
        self._bad += 1
        self._pending = max(0, self._pending - 1)
        self._last_error = why
        self._event("error", "spool_bad", f"bad spool file {path.name} moved to {dest}: {why}",
                    file=path.name, moved_to=str(dest), error=why)
        return True
