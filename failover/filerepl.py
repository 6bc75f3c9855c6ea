"""File replication from the active node to the inactive one (docs/replication.md).

The active node is the *sender* of the ``FILES`` channel, the inactive one the *receiver*;
whichever node is active sends, so after a failover the new active node's changes flow back to
the old one when it returns.

Index
    ``<data_dir>/repl/files.db`` (SQLite through ``apsw``, not replicated) holds one row per
    local file of the replicated directories: path, size, sha256 digest, version (term, seq),
    local stat signature and *synced digest*.  The version is the term of the node that
    recorded the content change and a per-node counter (informational, carried on the wire).
    The stat signature ``(st_ino, st_size, st_mtime_ns, st_ctime_ns)`` is **only a local cache
    key**: a file whose signature did not change is not hashed again.  It is never sent, and
    no time is ever compared between the nodes; what the nodes compare is the content digest.
    A file modified less than 2 s before it was hashed gets no signature (it is hashed again
    at the next look), because a write in the same clock tick keeps the same mtime.

Synced digest
    The content both nodes last agreed on: set on the receiver when it installs a file from
    the peer, on the sender when the peer acknowledges a file (or its manifest shows the same
    content).  A receiver that must overwrite or delete a local file whose content differs
    from both the synced digest and the incoming content (it was written locally: during a
    partition while this node was active, or by hand on the inactive node) first *moves* it to
    ``<data_dir>/conflicts/files/<term>-<seq>/<path>`` (version of the incoming change),
    counts it and reports it (event ``file_conflict``, optional ``on_conflict`` callback).
    A file that only the receiver has, with content it never received from the peer, is left
    in place (not deleted, not moved): it is that node's own work (a message spooled during a
    partition, a greeting recorded just before a crash) and replicates from it when it is
    active again.  The sender counts such files (``peer_only_kept`` in ``stats()``).

Wire conventions on top of docs/replication.md
    * In a ``FileManifest`` an entry whose content is not the synced content (never received
      from the peer, or changed locally since) carries version (0, 0); real versions have
      seq >= 1.  The sender "confirms" such an entry whose content equals its own with a
      ``FileBegin(wait_offer=True)``: the receiver offers the full size, no data is sent, and
      the receiver records the content as synced.
    * A refused ``FileManifestRequest`` is answered by ``FileAck(request_id, ".vmha-manifest",
      ok=False, "receiver is active")``.
    * Errors in ``FileAck``: ``"disk full"`` (the sender pauses, backs off and retries),
      ``"receiver is active"`` (the sender backs off and asks for the manifest again), any
      other text (the sender retries that path with exponential backoff).

Receiver
    Atomic: the data goes to a temp file under ``<root>/.vmha-tmp/`` (small files are
    gathered in memory and written at ``FileEnd``), the whole-file sha256 is checked, then
    fsync, rename over the target, fsync of the directory; only then the ack.  Files of at
    least ``resume_threshold`` bytes are announced with ``wait_offer``: their temp file is
    named by sha256(path + digest), survives a lost connection or a crash, and its length is
    offered so the transfer resumes (event ``file_resumed``).  On start, other temp files are
    removed.  Paths with a component starting with ``.vmha``, outside the configured
    directories, or invalid are refused.

Sender
    On connect (and each time it becomes the sender) it asks for the receiver's manifest,
    diffs it with the local index (``plan``), then streams; afterwards ``watchfiles`` events
    and a sweep every ``sweep_interval`` feed it.  Transfers are pipelined (at most
    ``max_inflight_files`` / ``max_inflight_bytes`` un-acknowledged); the view of the peer's
    manifest is kept up to date from the acks.

Hashing, scanning, fsync and file writes run in worker threads; the Trio thread only moves
small objects around.
"""
from __future__ import annotations

import errno
import hashlib
import heapq
import math
import os
import secrets
import shutil
import stat
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import apsw
import trio
import watchfiles

from failover.core.replwire import FILE_ENTRY_OVERHEAD, MAX_ERROR, FileAck, FileBegin, FileChunk, FileDelete, FileEnd, FileEntry, FileManifest, FileManifestRequest, FileOffer, check_path, max_data, max_manifest_bytes
from telephony.runtime.tasks import Backoff, keep_running

from failover.replchan import ChannelClosed, ReplTasks, events_log

__all__ = ["FileReplicator", "IndexEntry", "plan", "DEFAULT_DIRECTORIES", "TMP_DIR",
           "DISK_FULL", "RECEIVER_ACTIVE", "MANIFEST_PATH"]

DEFAULT_DIRECTORIES = ("prompts", "streams", "support", "spool")
TMP_DIR = ".vmha-tmp"
RESERVED_PREFIX = ".vmha"
DISK_FULL = "disk full"
RECEIVER_ACTIVE = "receiver is active"
MANIFEST_PATH = ".vmha-manifest"  # FileAck.path of a refused FileManifestRequest
RACY_NS = 2_000_000_000  # a file modified this recently is hashed again next time
HASH_BLOCK = 1 << 20
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

Sig = tuple[int, int, int, int]


# ============================================================================ pure parts


@dataclass(slots=True)
class IndexEntry:
    """One local file.  ``sig`` is a local cache key (None: hash again next time);
    ``synced`` the digest both nodes last agreed on (None: never)."""
    size: int
    digest: bytes
    version_term: int
    version_seq: int
    sig: Sig | None = None
    synced: bytes | None = None

    @property
    def confirmed(self) -> bool:
        return self.synced == self.digest


def plan(local: Mapping[str, Any], peer: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Diff two manifests (``path -> object with size, digest, version_seq``).

    ``sends``: paths whose local content the peer lacks, holds different, or holds identical
    but unconfirmed (``version_seq == 0``: never received from us, see the module doc);
    ``deletes``: paths only the peer has, except those whose content the peer never got from
    us (``version_seq == 0``: written there — during a partition, before a crash, by hand):
    they are left in place, never deleted.  Both sorted."""
    sends = sorted(p for p, e in local.items()
                   if (q := peer.get(p)) is None or q.digest != e.digest or q.size != e.size
                   or q.version_seq == 0)
    deletes = sorted(p for p, q in peer.items() if p not in local and q.version_seq != 0)
    return sends, deletes


def _sig(st: os.stat_result) -> Sig:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _cache_sig(st: os.stat_result) -> Sig | None:
    """The signature to store, None if the file is too fresh to trust it (racy mtime).
    Compares the file's mtime with this node's clock only."""
    return None if time.time_ns() - st.st_mtime_ns < RACY_NS else _sig(st)


def _is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS


def _error_text(e: BaseException) -> str:
    if _is_disk_full(e):
        return DISK_FULL
    if isinstance(e, OSError):
        return f"{errno.errorcode.get(e.errno or 0, 'OSError')}: {e.strerror or e}"
    return f"{type(e).__name__}: {e}"


def _clip(text: str, limit: int = MAX_ERROR) -> str:
    raw = text.encode("utf-8")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_fd(fd: int, end: int | None = None) -> bytes:
    """sha256 of the first ``end`` bytes (all if None) of an open file, by pread."""
    h, off = hashlib.sha256(), 0
    while end is None or off < end:
        n = HASH_BLOCK if end is None else min(HASH_BLOCK, end - off)
        data = os.pread(fd, n, off)
        if not data:
            break
        h.update(data)
        off += len(data)
    return h.digest()


class _Turn:
    """Stop event of one run of the watcher: set by ``set()`` (its own turn is over) or by
    the watcher's overall ``stop``."""

    def __init__(self, stop: threading.Event):
        self._stop, self._own = stop, threading.Event()

    def is_set(self) -> bool:
        return self._own.is_set() or self._stop.is_set()

    def set(self) -> None:
        self._own.set()


class _Unstable(Exception):
    """The file changed while it was read."""


# ============================================================================ index storage


class _Db:
    """The index file.  Used from worker threads only, serialised by ``lock``."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.conn = apsw.Connection(str(path))
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        with self.conn:
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS files(path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                "digest BLOB NOT NULL, version_term INTEGER NOT NULL, "
                "version_seq INTEGER NOT NULL, st_ino INTEGER, st_size INTEGER, "
                "st_mtime_ns INTEGER, st_ctime_ns INTEGER, synced_digest BLOB) WITHOUT ROWID;"
                "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
                "CREATE TABLE IF NOT EXISTS partials(path TEXT PRIMARY KEY, name TEXT NOT NULL);")

    def load(self) -> tuple[dict[str, IndexEntry], int, dict[str, str]]:
        with self.lock:
            index = {}
            for row in self.conn.execute("SELECT path, size, digest, version_term, version_seq, "
                                         "st_ino, st_size, st_mtime_ns, st_ctime_ns, "
                                         "synced_digest FROM files"):
                p, size, digest, vt, vs, ino, ssz, mt, ct, synced = row
                sig = None if ino is None else (ino, ssz, mt, ct)
                index[p] = IndexEntry(size, bytes(digest), vt, vs, sig,
                                      None if synced is None else bytes(synced))
            seq = 0
            for (v,) in self.conn.execute("SELECT value FROM meta WHERE key = 'seq'"):
                seq = v
            partials = dict(self.conn.execute("SELECT path, name FROM partials"))
            return index, seq, partials

    def write(self, rows: list[tuple], deletes: list[str], seq: int) -> None:
        with self.lock, self.conn:
            if rows:
                self.conn.executemany(
                    "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            if deletes:
                self.conn.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in deletes])
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (seq,))

    def set_partial(self, path: str, name: str) -> str | None:
        """Record ``name`` as the partial temp of ``path``; returns the previous one."""
        with self.lock, self.conn:
            old = None
            for (n,) in self.conn.execute("SELECT name FROM partials WHERE path = ?", (path,)):
                old = n
            self.conn.execute("INSERT OR REPLACE INTO partials VALUES (?, ?)", (path, name))
            return old

    def drop_partial(self, path: str) -> None:
        with self.lock, self.conn:
            self.conn.execute("DELETE FROM partials WHERE path = ?", (path,))

    def drop_partials(self, paths: Iterable[str]) -> None:
        with self.lock, self.conn:
            self.conn.executemany("DELETE FROM partials WHERE path = ?", [(p,) for p in paths])

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def _row(path: str, e: IndexEntry) -> tuple:
    sig = e.sig or (None, None, None, None)
    return (path, e.size, e.digest, e.version_term, e.version_seq, *sig, e.synced)


# ============================================================================ the replicator


class FileReplicator:
    """File replication of one node; see the module doc.  ``run()`` must be running (started
    with ``nursery.start``) before the sessions do anything."""

    def __init__(self, *, root: Path, directories: list[str], data_dir: Path, events,
                 chunk_size: int = 256 * 1024, max_frame: int = 4 * 1024 * 1024,
                 batch_delay: float = 0.0, sweep_interval: float = 60.0,
                 resume_threshold: int = 4 * 1024 * 1024, retry_min: float = 0.2,
                 retry_max: float = 10.0, watch_debounce_ms: int = 20, watch_step_ms: int = 5,
                 watch_force_polling: bool | None = None, watch_poll_delay_ms: int = 50,
                 max_inflight_files: int = 64, max_inflight_bytes: int = 16 * 1024 * 1024,
                 on_conflict: Callable[[dict], None] | None = None,
                 failures: ReplTasks | None = None):
        self.root = Path(root)
        dirs = []
        for d in directories:
            check_path(d)
            if any(part.startswith(RESERVED_PREFIX) for part in d.split("/")):
                raise ValueError(f"directory {d!r} is reserved")
            dirs.append(d)
        for a in dirs:
            for b in dirs:
                if a != b and b.startswith(a + "/"):
                    raise ValueError(f"directories {a!r} and {b!r} overlap")
        if len(set(dirs)) != len(dirs):
            raise ValueError("a directory is listed twice")
        self.directories = tuple(dirs)
        self.data_dir = Path(data_dir)
        self.events = events
        self.chunk_size = max(1, min(chunk_size, max_data(max_frame)))
        self.max_frame = max_frame
        self.manifest_budget = max_manifest_bytes(max_frame)
        self.batch_delay = batch_delay
        self.sweep_interval = sweep_interval
        self.resume_threshold = resume_threshold
        self.retry_min = retry_min
        self.retry_max = max(retry_max, retry_min)
        self.watch_debounce_ms = watch_debounce_ms
        self.watch_step_ms = watch_step_ms
        self.watch_force_polling = watch_force_polling
        self.watch_poll_delay_ms = watch_poll_delay_ms
        self.max_inflight_files = max(1, max_inflight_files)
        self.max_inflight_bytes = max(1, max_inflight_bytes)
        self.on_conflict = on_conflict
        #: failures of the watcher, sweep and index writer (shared with the glue's status)
        self.failures = failures if failures is not None else ReplTasks(events_log(events))
        self.tmp_dir = self.root / TMP_DIR
        self.conflicts_dir = self.data_dir / "conflicts" / "files"

        self._index: dict[str, IndexEntry] = {}
        self._seq = 0
        self._seq_saved = 0
        self._db: _Db | None = None
        self._loaded = trio.Event()
        self._sending = False
        self._receiving = False
        self._term = 0
        self._role_epoch = 0  # +1 each time sending turns on
        self._role_ev = trio.Event()
        self._diff: set[str] = set()  # paths whose local state the peer has not acknowledged
        self._sender: _Sender | None = None
        self._sender_scope: trio.CancelScope | None = None
        self._receiver_scope: trio.CancelScope | None = None
        self._dirty: set[str] = set()  # index rows to write
        self._flush_lock = trio.Lock()
        self._flush_ev = trio.Event()
        self._scan_lock = trio.Lock()
        self._recheck: set[str] = set()
        self._logged_skips: set[str] = set()
        self._unreadable: dict[str, str] = {}  # path -> why it could not be looked at
        self._rx_paused: str | None = None
        self._last_sweep_s: float | None = None
        self._last_error: str | None = None
        self.counters: Counter[str] = Counter(
            sent=0, received=0, deleted_sent=0, deleted_received=0, conflicts=0, errors=0,
            bytes_sent=0, bytes_received=0, resumed=0, sweeps=0, scan_errors=0)

    # ------------------------------------------------------------------ API for the glue

    def set_role(self, *, sending: bool, receiving: bool, term: int) -> None:
        """Called (from the Trio thread) on every state or mode change."""
        if sending and not self._sending:
            self._role_epoch += 1
        changed = (sending, receiving, term) != (self._sending, self._receiving, self._term)
        self._sending, self._receiving, self._term = bool(sending), bool(receiving), term
        if changed:
            self._role_ev.set()
            self._role_ev = trio.Event()
            if self._sender is not None:
                self._sender.poke()

    def pending(self) -> int:
        """Local changes (sends and deletes) the peer has not acknowledged; 0 also needs the
        peer's manifest received on the current connection.  0 while not sending."""
        if not self._sending:
            return 0
        s = self._sender
        n = len(self._diff)
        if s is None or not s.manifest_ok:
            return max(1, n)
        return n

    async def barrier(self) -> None:
        """Rescan now, so that ``pending()`` reflects every file on disk."""
        await self._loaded.wait()
        await self._scan()

    def stats(self) -> dict:
        s = self._sender
        paused = (s.paused_reason if s is not None else None) or self._rx_paused
        return {
            "files": len(self._index),
            "bytes": sum(e.size for e in self._index.values()),
            "pending": self.pending(),
            "sending": self._sending,
            "receiving": self._receiving,
            "connected": s is not None,
            "receiver_connected": self._receiver_scope is not None,
            "peer_manifest": bool(s and s.manifest_ok),
            "peer_only_kept": (sum(1 for p, q in s.peer.items()
                                   if q.version_seq == 0 and p not in self._index)
                               if s is not None and s.manifest_ok else None),
            "in_flight": len(s.inflight) if s is not None else 0,
            "last_sweep_s": self._last_sweep_s,
            "paused": paused,
            "last_error": self._last_error,
            "unreadable": len(self._unreadable),
            **dict(sorted(self.counters.items())),
        }

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Load the index, clean the temp directory, then watch and sweep while sending."""
        db, index, seq = await trio.to_thread.run_sync(self._startup_sync)
        self._db, self._index, self._seq, self._seq_saved = db, index, seq, seq
        self._loaded.set()
        task_status.started()
        backoff = lambda: Backoff(self.retry_min, self.retry_max)  # noqa: E731
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(keep_running, "files.index", self._flusher,
                                           self.failures, backoff=backoff()))
                while True:
                    while not self._sending:
                        await self._role_ev.wait()
                    async with trio.open_nursery() as active:
                        active.start_soon(partial(keep_running, "files.watch", self._watch_loop,
                                                  self.failures, backoff=backoff()))
                        active.start_soon(partial(keep_running, "files.sweep", self._sweep_loop,
                                                  self.failures, backoff=backoff()))
                        while self._sending:
                            await self._role_ev.wait()
                        active.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self._flush()
                finally:
                    await trio.to_thread.run_sync(db.close)
                    self._db = None

    async def sender_session(self, chan) -> None:
        """Our outbound FILES connection: send while this node is the sender, idle otherwise.
        Returns when replaced by a newer session; raises ``ChannelClosed`` when the
        connection ends."""
        await self._loaded.wait()
        if self._sender_scope is not None:
            self._sender_scope.cancel()
        sender = _Sender(self, chan)
        with trio.CancelScope() as scope:
            self._sender, self._sender_scope = sender, scope
            try:
                await sender.run()
            finally:
                if self._sender is sender:
                    self._sender, self._sender_scope = None, None

    async def receiver_session(self, chan) -> None:
        """The peer's inbound FILES connection: install its files while receiving, refuse
        otherwise.  Returns when replaced; raises ``ChannelClosed`` when the connection ends."""
        await self._loaded.wait()
        if self._receiver_scope is not None:
            self._receiver_scope.cancel()
        rx = _Receiver(self, chan)
        with trio.CancelScope() as scope:
            self._receiver_scope = scope
            try:
                await rx.run()
            finally:
                rx.abort()
                if self._receiver_scope is scope:
                    self._receiver_scope = None

    # ------------------------------------------------------------------ logging

    def _log(self, level: str, event: str, message: str, fields: dict | None = None) -> None:
        if self.events is not None:
            self.events.write(level, event, message, fields)

    def _error(self, message: str, fields: dict | None = None) -> None:
        self.counters["errors"] += 1
        self._last_error = message
        self._log("warning", "file_error", message, fields)

    # ------------------------------------------------------------------ paths

    def _top_of(self, path: str) -> str | None:
        for d in self.directories:
            if path.startswith(d + "/"):
                return d
        return None

    def _path_error(self, path: str) -> str | None:
        """Why ``path`` (from the wire) may not be replicated here, None if it may."""
        try:
            check_path(path)
        except ValueError as e:
            return f"bad path: {e}"
        if any(part.startswith(RESERVED_PREFIX) for part in path.split("/")):
            return f"bad path: {path!r} is reserved"
        if self._top_of(path) is None:
            return f"bad path: {path!r} is outside the replicated directories"
        return None

    def _abs(self, rel: str) -> Path:
        return self.root / rel

    # ------------------------------------------------------------------ start-up

    def _startup_sync(self) -> tuple[_Db, dict[str, IndexEntry], int]:
        for d in self.directories:
            os.makedirs(self._abs(d), exist_ok=True)
        os.makedirs(self.tmp_dir, exist_ok=True)
        db = _Db(self.data_dir / "repl" / "files.db")
        index, seq, partials = db.load()
        keep = set(partials.values())
        for name in os.listdir(self.tmp_dir):
            if name in keep:
                continue
            try:
                p = self.tmp_dir / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            except OSError:
                pass
        gone = [p for p, n in partials.items() if not (self.tmp_dir / n).exists()]
        if gone:
            db.drop_partials(gone)
        return db, index, seq

    # ------------------------------------------------------------------ index persistence

    def _mark_dirty(self, path: str) -> None:
        self._dirty.add(path)
        self._flush_ev.set()

    async def _flush(self) -> None:
        async with self._flush_lock:
            if self._db is None or (not self._dirty and self._seq == self._seq_saved):
                return
            rows, deletes = [], []
            dirty, self._dirty = self._dirty, set()
            for p in dirty:
                e = self._index.get(p)
                if e is None:
                    deletes.append(p)
                else:
                    rows.append(_row(p, e))
            seq = self._seq
            try:
                await trio.to_thread.run_sync(self._db.write, rows, deletes, seq)
            except apsw.Error as e:
                self._dirty |= dirty
                self._error(f"index write failed: {type(e).__name__}: {e}")
                return
            self._seq_saved = seq

    async def _flusher(self) -> None:
        while True:
            await self._flush_ev.wait()
            self._flush_ev = trio.Event()
            await trio.sleep(0.05)
            await self._flush()

    def _changed(self, path: str) -> None:
        """The local state of ``path`` changed: the peer has to hear about it."""
        self._diff.add(path)
        if self._sender is not None:
            self._sender.enqueue(path)
            self._sender.poke()

    def _note_content(self, path: str, size: int, digest: bytes, sig: Sig | None) -> IndexEntry:
        """Record the content just read from ``path``; a new version if it changed."""
        cur = self._index.get(path)
        if cur is not None and cur.digest == digest and cur.size == size:
            if cur.sig != sig:
                cur.sig = sig
                self._mark_dirty(path)
            return cur
        self._seq += 1
        new = IndexEntry(size, digest, self._term, self._seq, sig,
                         cur.synced if cur is not None else None)
        self._index[path] = new
        self._mark_dirty(path)
        self._changed(path)
        return new

    # ------------------------------------------------------------------ scanning

    def _skip_once(self, rel: str, why: str) -> None:
        if rel not in self._logged_skips:
            self._logged_skips.add(rel)
            self._log("info", "file_skipped", f"not replicated: {rel} ({why})", {"path": rel})

    def _walk(self, top: str, skipped: list,
              errors: list) -> Iterator[tuple[str, os.stat_result]]:
        """Regular files under ``top`` (relative), not following symlinks below it.  A
        directory or entry that cannot be read goes to ``errors`` (path, why)."""
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                it = os.scandir(self._abs(d))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as e:
                errors.append((d, _error_text(e)))
                continue
            with it:
                while True:
                    try:  # reading the directory itself can fail half-way (EIO, ESTALE)
                        entry = next(it, None)
                    except OSError as e:
                        errors.append((d, _error_text(e)))
                        break
                    if entry is None:
                        break
                    name = entry.name
                    if name.startswith(RESERVED_PREFIX):
                        continue
                    rel = f"{d}/{name}"
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    except OSError as e:
                        errors.append((rel, _error_text(e)))
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(rel)
                    elif stat.S_ISREG(st.st_mode):
                        why = self._local_name_error(rel)
                        if why:
                            skipped.append((rel, why))
                        else:
                            yield rel, st
                    else:
                        skipped.append((rel, "symbolic link" if stat.S_ISLNK(st.st_mode)
                                        else "special file"))

    @staticmethod
    def _local_name_error(rel: str) -> str | None:
        try:
            rel.encode("utf-8")
        except UnicodeError:
            return "name is not UTF-8"
        try:
            check_path(rel)
        except ValueError as e:
            return str(e)
        return None

    def _hash_file(self, rel: str) -> tuple[int, bytes, Sig | None] | None:
        """(size, digest, cache sig) of a regular file; None if it is gone or not regular."""
        try:
            fd = os.open(self._abs(rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                return None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            digest = _hash_fd(fd)
            st2 = os.fstat(fd)
            if _sig(st2) != _sig(st):
                raise _Unstable(rel)
            return st.st_size, digest, _cache_sig(st)
        finally:
            os.close(fd)

    def _scan_sync(self, snap: dict[str, IndexEntry], only: list[str] | None):
        """Compare the disk with ``snap`` (everything, or ``only`` these paths).  Returns
        (changed, removed, unstable, skipped, errors, looked): ``errors`` are the paths that
        could not be looked at (a stat or directory read failed other than "not found"),
        ``looked`` the paths (and directories) looked at without error.  Nothing at or below
        a path in ``errors`` counts as removed: an unreadable directory never turns into
        deletions on the peer."""
        changed: list[tuple[str, int, bytes, Sig | None]] = []
        removed: list[str] = []
        unstable: list[str] = []
        skipped: list[tuple[str, str]] = []
        errors: list[tuple[str, str]] = []
        seen: set[str] = set()

        def visit(rel: str, st: os.stat_result) -> None:
            seen.add(rel)
            old = snap.get(rel)
            if old is not None and old.sig is not None and old.sig == _sig(st):
                return
            try:
                got = self._hash_file(rel)
            except _Unstable:
                unstable.append(rel)
                return
            except OSError as e:
                errors.append((rel, _error_text(e)))
                return
            if got is None:
                seen.discard(rel)
                return
            changed.append((rel, *got))

        def unknown(p: str) -> bool:
            """``p`` is at or below a path that could not be looked at."""
            return any(p == bad or p.startswith(bad + "/") for bad, _ in errors)

        if only is None:
            for top in self.directories:
                for rel, st in self._walk(top, skipped, errors):
                    visit(rel, st)
            removed = [p for p in snap if p not in seen and not unknown(p)]
            return changed, removed, unstable, skipped, errors, list(self.directories)

        # a configured directory that cannot be looked at (a symlink loop, a share that went
        # away): nothing below it is looked at, nothing below it is removed
        for top in sorted({self._top_of(rel) or rel for rel in only} & set(self.directories)):
            try:
                os.stat(self._abs(top))
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as e:
                errors.append((top, _error_text(e)))
        prefixes = []
        for rel in only:
            if unknown(rel):
                continue
            try:  # a configured directory may be a symlink; nothing below it is followed
                st = (os.stat if rel in self.directories else os.lstat)(self._abs(rel))
            except (FileNotFoundError, NotADirectoryError):
                st = None
            except OSError as e:
                if e.errno == errno.ELOOP and rel not in self.directories:
                    st = None  # below a symbolic link (a loop): not in the tree
                else:  # EACCES, EIO, ESTALE...: look again later, remove nothing
                    errors.append((rel, _error_text(e)))
                    continue
            if st is not None and stat.S_ISREG(st.st_mode):
                why = self._local_name_error(rel)
                if why:
                    skipped.append((rel, why))
                else:
                    visit(rel, st)
            elif st is not None and stat.S_ISDIR(st.st_mode):
                for sub, sst in self._walk(rel, skipped, errors):
                    visit(sub, sst)
                prefixes.append(rel + "/")
            else:
                if st is not None:
                    skipped.append((rel, "symbolic link" if stat.S_ISLNK(st.st_mode)
                                    else "special file"))
                if rel in snap and rel not in seen:
                    removed.append(rel)
                prefixes.append(rel + "/")
        if prefixes:
            pre = tuple(prefixes)
            for p in snap:
                if p.startswith(pre) and p not in seen and not unknown(p):
                    try:
                        st = os.lstat(self._abs(p))
                        gone = not stat.S_ISREG(st.st_mode)
                    except (FileNotFoundError, NotADirectoryError):
                        gone = True
                    except OSError as e:
                        if e.errno == errno.ELOOP:
                            gone = True  # below a symbolic link (a loop): not in the tree
                        else:
                            errors.append((p, _error_text(e)))
                            continue
                    if gone:
                        removed.append(p)
        looked = [rel for rel in only if not unknown(rel)]
        return changed, removed, unstable, skipped, errors, looked

    async def _scan(self, only: Iterable[str] | None = None) -> None:
        """Bring the index up to date with the disk: everything, or ``only`` these paths
        (files or directories).  A path that cannot be looked at is counted
        (``scan_errors``), kept as it was in the index, reported (``unreadable``, task
        ``files.scan``) and looked at again by the next sweep or event."""
        rels = None if only is None else sorted(set(only))
        async with self._scan_lock:
            t0 = time.monotonic()
            snap = dict(self._index)
            changed, removed, unstable, skipped, errors, looked = await trio.to_thread.run_sync(
                self._scan_sync, snap, rels)
            for rel, size, digest, sig in changed:
                if self._index.get(rel) is not snap.get(rel):
                    continue  # written meanwhile (by the receiver): that write wins
                self._note_content(rel, size, digest, sig)
            for rel in removed:
                cur = self._index.get(rel)
                if cur is None or cur is not snap.get(rel):
                    continue
                del self._index[rel]
                self._mark_dirty(rel)
                self._changed(rel)
            for rel, why in skipped:
                self._skip_once(rel, why)
            self._recheck.update(unstable)
            self._note_errors(looked, errors)
            if rels is None:
                self._last_sweep_s = time.monotonic() - t0
                self.counters["sweeps"] += 1
        await self._flush()

    def _note_errors(self, looked: list[str], errors: list[tuple[str, str]]) -> None:
        """What a scan could not read replaces what the last scan of the same paths could
        not; the task ``files.scan`` is failing while any path stays unreadable."""
        for rel in looked:
            pre = rel + "/"
            for p in [p for p in self._unreadable if p == rel or p.startswith(pre)]:
                del self._unreadable[p]
        for rel, why in errors:
            self.counters["scan_errors"] += 1
            self._unreadable[rel] = why
            self.failures.failed("files.scan", f"cannot read {rel}: {why}", level="warning")
        if not self._unreadable:
            self.failures.ok("files.scan")

    async def _sweep_loop(self) -> None:
        while True:
            await self._scan()
            await trio.sleep(self.sweep_interval)

    def _rel_of(self, abspath: str) -> str | None:
        try:
            rel = Path(abspath).relative_to(self.root).as_posix()
        except ValueError:
            return None
        if any(part.startswith(RESERVED_PREFIX) for part in rel.split("/")):
            return None
        if rel not in self.directories and self._top_of(rel) is None:
            return None
        return rel

    async def _watch_loop(self) -> None:
        """Feed watchfiles events (batched by ``batch_delay``) into partial scans."""
        dirs = [str(self._abs(d)) for d in self.directories]
        send, recv = trio.open_memory_channel(math.inf)
        stop = threading.Event()

        def watchable() -> tuple[list[str], list[str]]:
            """(directories that can be watched, why the others cannot)."""
            good, bad = [], []
            for d in dirs:
                try:
                    os.makedirs(d, exist_ok=True)
                    good.append(d)
                except OSError as e:  # a symlink loop, a share that went away...
                    bad.append(f"{d}: {_error_text(e)}")
            return good, bad

        async def pump() -> None:
            """Watch the directories that can be watched; one that cannot (or a watcher
            that fails) is recorded, and the watch starts again after a growing delay, so
            one bad directory never stops the others being watched."""
            delay = self.retry_min
            while not stop.is_set():
                turn = _Turn(stop)
                try:
                    good, bad = await trio.to_thread.run_sync(watchable)
                    if bad:
                        self.failures.failed("files.watcher", "cannot watch " + "; ".join(bad),
                                             retry_in=delay, level="warning")
                    else:
                        self.failures.ok("files.watcher")
                    async with trio.open_nursery() as retry:
                        if bad:  # look at the bad ones again later
                            async def later() -> None:
                                await trio.sleep(delay)
                                turn.set()
                            retry.start_soon(later)
                        if good:
                            async for changes in watchfiles.awatch(
                                    *good, watch_filter=None, debounce=self.watch_debounce_ms,
                                    step=self.watch_step_ms, stop_event=turn, rust_timeout=1000,
                                    force_polling=self.watch_force_polling,
                                    poll_delay_ms=self.watch_poll_delay_ms, recursive=True):
                                send.send_nowait(changes)
                                if not bad:
                                    delay = self.retry_min
                        retry.cancel_scope.cancel()
                    if bad:
                        send.send_nowait({(None, d) for d in dirs})  # rescan what was missed
                        delay = min(self.retry_max, delay * 2)
                except Exception as e:  # e.g. a watched directory vanished
                    self.counters["errors"] += 1
                    self._last_error = f"file watcher failed: {type(e).__name__}: {e}"
                    self.failures.failed("files.watcher", e, retry_in=delay)
                    send.send_nowait({(None, d) for d in dirs})  # rescan what it may have missed
                    await trio.sleep(delay)
                    delay = min(self.retry_max, delay * 2)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump)
                while True:
                    timeout = 0.2 if self._recheck else math.inf
                    changes: set = set()
                    with trio.move_on_after(timeout):
                        changes = await recv.receive()
                    if changes and self.batch_delay > 0:
                        await trio.sleep(self.batch_delay)
                    while True:
                        try:
                            changes |= recv.receive_nowait()
                        except trio.WouldBlock:
                            break
                    rels = {r for _, p in changes if (r := self._rel_of(p)) is not None}
                    rels |= self._recheck
                    self._recheck = set()
                    if rels:
                        await self._scan(rels)
        finally:
            stop.set()  # lets the watcher thread return within a step

    # ------------------------------------------------------------------ receiver file work

    def _need_db(self) -> _Db:
        db = self._db
        if db is None:
            raise OSError(errno.ESHUTDOWN, "file replication is stopped")
        return db

    def _write_all(self, fd: int, data) -> None:
        """Seam for tests (disk-full injection): write all of ``data`` to ``fd``."""
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    def _local_digest(self, rel: str, st: os.stat_result, info: IndexEntry | None) -> bytes:
        if info is not None and info.sig is not None and info.sig == _sig(st):
            return info.digest
        got = None
        for _ in range(3):
            try:
                got = self._hash_file(rel)
                break
            except _Unstable:
                continue
        if got is None:
            return b""  # unreadable or changing: never equal to a digest
        return got[1]

    def _to_conflicts(self, rel: str, term: int, seq: int) -> Path:
        """Move whatever is at ``rel`` to the conflicts directory; returns where."""
        src = self._abs(rel)
        dest = self.conflicts_dir / f"{term}-{seq}" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        base = dest
        while os.path.lexists(dest):
            n += 1
            dest = base.with_name(f"{base.name}.{n}")
        try:
            os.rename(src, dest)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            shutil.move(str(src), str(dest))
        _fsync_dir(dest.parent)
        _fsync_dir(src.parent)
        return dest

    def _displace(self, rel: str, st: os.stat_result, info: IndexEntry | None,
                  incoming: bytes | None, term: int, seq: int, conflicts: list,
                  displaced: list, remove: bool) -> None:
        """Something is at ``rel`` and must go (or be overwritten, when ``remove`` is False):
        move it to the conflicts directory unless it is the synced or the incoming content."""
        if stat.S_ISREG(st.st_mode):
            d = self._local_digest(rel, st, info)
            synced = info.synced if info is not None else None
            if d == incoming or (synced is not None and d == synced):
                if remove:
                    os.unlink(self._abs(rel))
                    displaced.append((rel, False))
                return
        elif stat.S_ISDIR(st.st_mode):
            try:
                os.rmdir(self._abs(rel))
                displaced.append((rel, True))
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        dest = self._to_conflicts(rel, term, seq)
        conflicts.append((rel, str(dest)))
        displaced.append((rel, stat.S_ISDIR(st.st_mode)))

    def _ensure_parents(self, rel: str, infos: dict, term: int, seq: int, conflicts: list,
                        displaced: list) -> None:
        top = self._top_of(rel)
        assert top is not None
        os.makedirs(self._abs(top), exist_ok=True)
        cur = top
        for comp in rel[len(top) + 1:].split("/")[:-1]:
            cur = f"{cur}/{comp}"
            p = self._abs(cur)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                os.mkdir(p)
                _fsync_dir(p.parent)
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            self._displace(cur, st, infos.get(cur), None, term, seq, conflicts, displaced, True)
            os.mkdir(p)
            _fsync_dir(p.parent)

    def _open_incoming(self, path: str, digest: bytes, size: int, wait_offer: bool,
                       info: IndexEntry | None) -> _Incoming:
        os.makedirs(self.tmp_dir, exist_ok=True)
        inc = _Incoming(path=path, size=size, digest=digest)
        if wait_offer:
            try:
                st = os.lstat(self._abs(path))
                if stat.S_ISREG(st.st_mode) and st.st_size == size \
                        and self._local_digest(path, st, info) == digest:
                    inc.mode, inc.offset = "have", size
                    return inc
            except (FileNotFoundError, NotADirectoryError):
                pass
            name = "r-" + hashlib.sha256(path.encode("utf-8") + digest).hexdigest()
            old = self._need_db().set_partial(path, name)
            if old is not None and old != name:
                try:
                    os.unlink(self.tmp_dir / old)
                except FileNotFoundError:
                    pass
            tmp = self.tmp_dir / name
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                have = os.fstat(fd).st_size
                if have > size:
                    os.ftruncate(fd, 0)
                    have = 0
                h = hashlib.sha256()
                off = 0
                while off < have:
                    data = os.pread(fd, min(HASH_BLOCK, have - off), off)
                    if not data:
                        break
                    h.update(data)
                    off += len(data)
                if off != have:
                    os.ftruncate(fd, off)
                os.lseek(fd, off, os.SEEK_SET)
            except BaseException:
                os.close(fd)
                raise
            inc.mode, inc.fd, inc.tmp, inc.offset, inc.hasher = "file", fd, tmp, off, h
            inc.resumable, inc.resumed_from = True, off
            return inc
        tmp = self.tmp_dir / f"t-{secrets.token_hex(8)}"
        inc.fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        inc.mode, inc.tmp, inc.hasher = "file", tmp, hashlib.sha256()
        return inc

    def _write_chunk(self, inc: _Incoming, data: bytes) -> None:
        self._write_all(inc.fd, data)
        inc.hasher.update(data)

    def _commit_sync(self, inc: _Incoming, term: int, seq: int,
                     infos: dict[str, IndexEntry | None]) -> tuple[str | None, Sig | None, list, list]:
        """Verify and install; returns (error, sig of the installed file, conflicts,
        displaced paths).  A digest mismatch removes the temp file."""
        conflicts: list = []
        displaced: list = []
        target = self._abs(inc.path)
        if inc.mode == "have":
            try:
                st = os.lstat(target)
            except (FileNotFoundError, NotADirectoryError):
                return "target changed", None, conflicts, displaced
            if not (stat.S_ISREG(st.st_mode)
                    and self._local_digest(inc.path, st, infos.get(inc.path)) == inc.digest):
                return "target changed", None, conflicts, displaced
            return None, _sig(st), conflicts, displaced
        if inc.mode == "mem":
            if hashlib.sha256(inc.buf).digest() != inc.digest:
                return "digest mismatch", None, conflicts, displaced
            tmp = self.tmp_dir / f"t-{secrets.token_hex(8)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            inc.tmp = tmp
            try:
                self._write_all(fd, inc.buf)
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            if inc.hasher.digest() != inc.digest:
                inc.close_fd()
                inc.remove_tmp()
                if inc.resumable:
                    self._need_db().drop_partial(inc.path)
                return "digest mismatch", None, conflicts, displaced
            os.fsync(inc.fd)
            inc.close_fd()
        self._ensure_parents(inc.path, infos, term, seq, conflicts, displaced)
        try:
            st = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is not None:
            self._displace(inc.path, st, infos.get(inc.path), inc.digest, term, seq, conflicts,
                           displaced, False)
        os.rename(inc.tmp, target)
        inc.tmp = None
        _fsync_dir(target.parent)
        if inc.resumable:
            self._need_db().drop_partial(inc.path)
        return None, _sig(os.lstat(target)), conflicts, displaced

    def _delete_sync(self, rel: str, term: int, seq: int,
                     info: IndexEntry | None) -> tuple[list, list]:
        conflicts: list = []
        displaced: list = []
        try:
            st = os.lstat(self._abs(rel))
        except (FileNotFoundError, NotADirectoryError):
            return conflicts, [(rel, False)]
        if stat.S_ISREG(st.st_mode):
            self._displace(rel, st, info, None, term, seq, conflicts, displaced, True)
            if not conflicts:
                _fsync_dir(self._abs(rel).parent)
        # a directory, symlink or special file there is not ours to delete
        return conflicts, displaced

    def _installed(self, path: str, conflicts: list, displaced: list, term: int,
                   seq: int) -> None:
        """Index bookkeeping after the receiver moved files away."""
        for rel, was_dir in displaced:
            gone = [rel] if rel in self._index else []
            if was_dir:
                pre = rel + "/"
                gone += [p for p in self._index if p.startswith(pre)]
            for p in gone:
                del self._index[p]
                self._mark_dirty(p)
        for rel, dest in conflicts:
            self.counters["conflicts"] += 1
            fields = {"path": rel, "moved_to": dest, "term": term, "seq": seq}
            self._log("warning", "file_conflict", f"{rel} was changed on this node: kept as "
                      f"{dest} before applying the peer's version {term}-{seq}", fields)
            if self.on_conflict is not None:
                try:
                    self.on_conflict(fields)
                except Exception as e:  # a callback must not stop replication
                    self._error(f"on_conflict callback failed: {type(e).__name__}: {e}")


# ============================================================================ sessions


@dataclass(eq=False)
class _Incoming:
    path: str
    size: int
    digest: bytes
    tid: int = 0
    version_term: int = 0
    version_seq: int = 0
    mode: str = "mem"  # mem | file | have
    buf: bytearray | None = None
    fd: int | None = None
    tmp: Path | None = None
    hasher: Any = None
    offset: int = 0
    resumable: bool = False
    resumed_from: int = 0

    def close_fd(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def remove_tmp(self) -> None:
        if self.tmp is not None:
            tmp, self.tmp = self.tmp, None
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _chan_max_frame(rep: FileReplicator, chan) -> int:
    """The smaller of our and the connection's frame limit."""
    mf = getattr(chan, "max_frame", None)
    return min(rep.max_frame, mf) if isinstance(mf, int) and mf > 0 else rep.max_frame


class _Receiver:
    def __init__(self, rep: FileReplicator, chan):
        self.r = rep
        self.chan = chan
        self.cur: _Incoming | None = None
        self.manifest_budget = max_manifest_bytes(_chan_max_frame(rep, chan))

    async def run(self) -> None:
        r = self.r
        while True:
            msg = await self.chan.receive()
            if isinstance(msg, FileChunk):
                await self._chunk(msg)
            elif isinstance(msg, FileEnd):
                await self._end(msg)
            else:
                self.abort()  # any other message ends an open transfer
                if isinstance(msg, FileManifestRequest):
                    await self._manifest(msg)
                elif isinstance(msg, FileBegin):
                    await self._begin(msg)
                elif isinstance(msg, FileDelete):
                    await self._delete(msg)
                elif r._receiving:
                    r._log("debug", "file_unexpected", f"ignored {type(msg).__name__}")

    def abort(self) -> None:
        """Drop the open transfer (lost connection, next message): a resumable temp file is
        kept for the next attempt."""
        inc, self.cur = self.cur, None
        if inc is not None:
            self._discard(inc, keep=True)

    def _discard(self, inc: _Incoming, keep: bool) -> None:
        inc.close_fd()
        if not (keep and inc.resumable):
            inc.remove_tmp()
            if inc.resumable and self.r._db is not None:
                try:
                    self.r._db.drop_partial(inc.path)
                except apsw.Error:
                    pass

    async def _ack(self, tid: int, path: str, ok: bool, error: str = "") -> None:
        try:
            check_path(path)
        except ValueError:
            path = ".vmha-invalid"  # cannot come from the real wire; keeps the ack sendable
        await self.chan.send(FileAck(transfer_id=tid, path=path, ok=ok, error=_clip(error)))

    async def _fail(self, inc: _Incoming, error: str, keep: bool | None = None) -> None:
        """Abort the transfer with an error ack.  Its partial temp file (if resumable) is
        kept when the disk is full, removed otherwise."""
        r = self.r
        if self.cur is inc:
            self.cur = None
        self._discard(inc, keep=error == DISK_FULL if keep is None else keep)
        if error == DISK_FULL:
            if r._rx_paused is None:
                r._rx_paused = DISK_FULL
                r._log("error", "file_paused", f"disk full receiving {inc.path}: the peer "
                       "will retry", {"path": inc.path})
        elif error != RECEIVER_ACTIVE:
            r._error(f"receiving {inc.path} failed: {error}", {"path": inc.path})
        await self._ack(inc.tid, inc.path, False, error)

    def _ok_again(self) -> None:
        r = self.r
        if r._rx_paused is not None:
            r._rx_paused = None
            r._log("info", "file_unpaused", "space available again: receiving files")

    async def _manifest(self, msg: FileManifestRequest) -> None:
        r = self.r
        if not r._receiving:
            await self._ack(msg.request_id, MANIFEST_PATH, False, RECEIVER_ACTIVE)
            return
        await r._scan()
        entries = []
        for p in sorted(r._index):
            e = r._index[p]
            vt, vs = (e.version_term, e.version_seq) if e.confirmed else (0, 0)
            entries.append(FileEntry(path=p, size=e.size, digest=e.digest, version_term=vt,
                                     version_seq=vs))
        batch: list = []
        used = 0
        for ent in entries:
            cost = FILE_ENTRY_OVERHEAD + len(ent.path.encode("utf-8"))
            if batch and used + cost > self.manifest_budget:
                await self.chan.send(FileManifest(request_id=msg.request_id, last=False,
                                                  entries=tuple(batch)))
                batch, used = [], 0
            batch.append(ent)
            used += cost
        await self.chan.send(FileManifest(request_id=msg.request_id, last=True,
                                          entries=tuple(batch)))

    async def _refused(self, msg: FileBegin | FileDelete, what: str) -> bool:
        """Refuse (and acknowledge as failed) a transfer this node may not take now."""
        r = self.r
        if not r._receiving:
            await self._ack(msg.transfer_id, msg.path, False, RECEIVER_ACTIVE)
            return True
        err = r._path_error(msg.path)
        if err:
            r._error(f"refused {what} from the peer: {err}", {"path": msg.path})
            await self._ack(msg.transfer_id, msg.path, False, err)
            return True
        return False

    async def _begin(self, msg: FileBegin) -> None:
        r = self.r
        if await self._refused(msg, "a file"):
            return
        if not msg.wait_offer and msg.size <= r.resume_threshold:
            inc = _Incoming(path=msg.path, size=msg.size, digest=msg.digest, buf=bytearray())
        else:
            try:
                inc = await trio.to_thread.run_sync(
                    r._open_incoming, msg.path, msg.digest, msg.size, msg.wait_offer,
                    r._index.get(msg.path))
            except (OSError, apsw.Error) as e:
                bad = _Incoming(path=msg.path, size=msg.size, digest=msg.digest,
                                tid=msg.transfer_id)
                await self._fail(bad, _error_text(e))
                return
        inc.tid, inc.version_term, inc.version_seq = (msg.transfer_id, msg.version_term,
                                                      msg.version_seq)
        self.cur = inc
        if msg.wait_offer:
            if inc.mode == "file" and inc.offset > 0:
                r.counters["resumed"] += 1
                r._log("info", "file_resumed", f"{msg.path}: resuming at byte {inc.offset} of "
                       f"{msg.size}", {"path": msg.path, "offset": inc.offset, "size": msg.size})
            await self.chan.send(FileOffer(transfer_id=msg.transfer_id, offset=inc.offset))

    async def _chunk(self, msg: FileChunk) -> None:
        r = self.r
        inc = self.cur
        if inc is None or msg.transfer_id != inc.tid:
            return  # refused, failed or stale transfer: its ack is already sent
        if not r._receiving:
            await self._fail(inc, RECEIVER_ACTIVE)
            return
        data = msg.data
        if msg.offset != inc.offset or inc.offset + len(data) > inc.size or inc.mode == "have":
            await self._fail(inc, f"unexpected chunk at offset {msg.offset} (expected "
                                  f"{inc.offset} of {inc.size})")
            return
        if inc.mode == "mem":
            inc.buf += data
        else:
            try:
                await trio.to_thread.run_sync(r._write_chunk, inc, data)
            except OSError as e:
                await self._fail(inc, _error_text(e))
                return
        inc.offset += len(data)

    async def _end(self, msg: FileEnd) -> None:
        r = self.r
        inc = self.cur
        if inc is None or msg.transfer_id != inc.tid:
            return
        if not r._receiving:
            await self._fail(inc, RECEIVER_ACTIVE)
            return
        if inc.offset != inc.size:
            await self._fail(inc, f"size mismatch: got {inc.offset} of {inc.size} bytes")
            return
        infos = {inc.path: r._index.get(inc.path)}
        parts = inc.path.split("/")
        for i in range(1, len(parts)):
            p = "/".join(parts[:i])
            infos[p] = r._index.get(p)
        # installing and recording it go together, even if the connection drops meanwhile
        with trio.CancelScope(shield=True):
            try:
                error, sig, conflicts, displaced = await trio.to_thread.run_sync(
                    r._commit_sync, inc, inc.version_term, inc.version_seq, infos)
            except (OSError, apsw.Error) as e:
                error, keep = _error_text(e), None
            else:
                keep = error != "digest mismatch"
            if error is None:
                self.cur = None
                r._installed(inc.path, conflicts, displaced, inc.version_term,
                             inc.version_seq)
                r._index[inc.path] = IndexEntry(inc.size, inc.digest, inc.version_term,
                                                inc.version_seq, sig, inc.digest)
                r._mark_dirty(inc.path)
                r._diff.discard(inc.path)
                r.counters["received"] += 1
                if inc.mode != "have":
                    r.counters["bytes_received"] += inc.size - inc.resumed_from
                await r._flush()
        if error is not None:
            await self._fail(inc, error, keep=keep)
            return
        self._ok_again()
        await self._ack(inc.tid, inc.path, True)

    async def _delete(self, msg: FileDelete) -> None:
        r = self.r
        if await self._refused(msg, "a deletion"):
            return
        with trio.CancelScope(shield=True):
            try:
                conflicts, displaced = await trio.to_thread.run_sync(
                    r._delete_sync, msg.path, msg.version_term, msg.version_seq,
                    r._index.get(msg.path))
            except (OSError, apsw.Error) as e:
                text = _error_text(e)
            else:
                text = None
                r._installed(msg.path, conflicts, displaced, msg.version_term,
                             msg.version_seq)
                r._diff.discard(msg.path)
                r.counters["deleted_received"] += 1
                await r._flush()
        if text is not None:
            r._error(f"deleting {msg.path} failed: {text}", {"path": msg.path})
            await self._ack(msg.transfer_id, msg.path, False, text)
            return
        await self._ack(msg.transfer_id, msg.path, True)


@dataclass(eq=False)
class _Out:
    tid: int
    path: str
    kind: str  # send | delete
    size: int
    digest: bytes | None
    version_term: int
    version_seq: int
    nbytes: int
    pause_gen: int
    offer: trio.Event | None = None
    offset: int | None = None


class _Sender:
    def __init__(self, rep: FileReplicator, chan):
        self.r = rep
        self.chan = chan
        self.chunk_size = max(1, min(rep.chunk_size, max_data(_chan_max_frame(rep, chan))))
        self.peer: dict[str, Any] = {}  # path -> FileEntry-like (size, digest, version_seq)
        self.manifest_ok = False
        self.refused = False
        self.queue: deque[str] = deque()
        self.queued: set[str] = set()
        self.inflight: dict[int, _Out] = {}
        self.inflight_paths: dict[str, int] = {}
        self.inflight_bytes = 0
        self.backoff: list[tuple[float, str]] = []
        self.backoff_set: set[str] = set()
        self.backoff_n: dict[str, int] = {}
        self.paused_reason: str | None = None
        self.paused_until = 0.0
        self.pause_delay = rep.retry_min
        self.pause_gen = 0
        self._tid = 0
        self._rid = 0
        self._m_rid: int | None = None
        self._m_acc: dict[str, Any] = {}
        self._m_done = False
        self._wake = trio.Event()

    # ---- plumbing

    def poke(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    async def _until(self, cond: Callable[[], bool], timeout: float = math.inf) -> bool:
        deadline = trio.current_time() + timeout
        while not cond():
            ev = self._wake
            with trio.move_on_at(deadline):
                await ev.wait()
            if trio.current_time() >= deadline:
                return cond()
        return True

    def enqueue(self, path: str) -> None:
        if path not in self.queued:
            self.queued.add(path)
            self.queue.append(path)

    def _differs(self, path: str) -> bool:
        e = self.r._index.get(path)
        q = self.peer.get(path)
        if e is None:  # deleted here: delete there, unless it is the peer's own (see plan())
            return q is not None and q.version_seq != 0
        return q is None or q.digest != e.digest or q.size != e.size or q.version_seq == 0

    async def run(self) -> None:
        closed: ChannelClosed | None = None

        async def reader() -> None:
            nonlocal closed
            try:
                while True:
                    self._dispatch(await self.chan.receive())
            except ChannelClosed as e:
                closed = e
                nursery.cancel_scope.cancel()

        async def writer() -> None:
            nonlocal closed
            try:
                await self._writer()
            except ChannelClosed as e:
                closed = e
                nursery.cancel_scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                nursery.start_soon(writer)
        finally:
            self.manifest_ok = False
            self.poke()
        if closed is not None:
            raise closed

    # ---- incoming

    def _dispatch(self, msg) -> None:
        if isinstance(msg, FileAck):
            self._on_ack(msg)
        elif isinstance(msg, FileOffer):
            tr = self.inflight.get(msg.transfer_id)
            if tr is not None and tr.offer is not None and not tr.offer.is_set():
                tr.offset = msg.offset
                tr.offer.set()
        elif isinstance(msg, FileManifest):
            if msg.request_id != self._m_rid or self._m_done:
                return
            for ent in msg.entries:
                if self.r._path_error(ent.path) is None:
                    self._m_acc[ent.path] = ent
            if msg.last:
                self._m_done = True
                self.poke()

    def _on_ack(self, msg: FileAck) -> None:
        r = self.r
        if not msg.ok and (msg.error == RECEIVER_ACTIVE or msg.path == MANIFEST_PATH):
            if not self.refused:
                r._log("info", "file_refused", "the peer refuses files: it is active")
            self.refused = True
            if msg.path == MANIFEST_PATH:  # answers a FileManifestRequest, not a transfer
                self.poke()
                return
        tr = self.inflight.pop(msg.transfer_id, None)
        if tr is None:
            self.poke()
            return
        if self.inflight_paths.get(tr.path) == tr.tid:
            del self.inflight_paths[tr.path]
        self.inflight_bytes -= tr.nbytes
        if tr.offer is not None and not tr.offer.is_set():
            tr.offer.set()  # answered without an offer: offset stays None
        path = tr.path
        if msg.ok:
            if tr.kind == "send":
                self.peer[path] = FileEntry(path=path, size=tr.size, digest=tr.digest,
                                            version_term=tr.version_term,
                                            version_seq=tr.version_seq)
                r.counters["sent"] += 1
                e = r._index.get(path)
                if e is not None and e.digest == tr.digest and e.synced != tr.digest:
                    e.synced = tr.digest
                    r._mark_dirty(path)
            else:
                self.peer.pop(path, None)
                r.counters["deleted_sent"] += 1
                e = r._index.get(path)
                if e is not None and e.synced is not None:
                    e.synced = None
                    r._mark_dirty(path)
            self.backoff_n.pop(path, None)
            if self.paused_reason is not None:
                self.paused_reason = None
                self.pause_delay = r.retry_min
                r._log("info", "file_unpaused", "the peer has space again: sending files")
            if self._differs(path):
                self.enqueue(path)
            else:
                r._diff.discard(path)
        elif msg.error == RECEIVER_ACTIVE:
            pass  # the writer re-synchronises
        elif msg.error == DISK_FULL:
            now = trio.current_time()
            if tr.pause_gen == self.pause_gen:  # the first answer since the last pause
                self.pause_gen += 1
                if self.paused_reason is None:
                    self.paused_reason = DISK_FULL
                    self.pause_delay = r.retry_min
                    r._log("error", "file_paused", f"the peer's disk is full (at {path}): "
                           "file replication paused, retrying", {"path": path})
                else:
                    self.pause_delay = min(r.retry_max, self.pause_delay * 2)
                self.paused_until = now + self.pause_delay
            self.enqueue(path)
        else:
            n = self.backoff_n.get(path, 0) + 1
            self.backoff_n[path] = n
            delay = min(r.retry_max, r.retry_min * 2 ** (n - 1))
            r._error(f"the peer could not take {path}: {msg.error} (retry in {delay:.1f} s)",
                     {"path": path, "error": msg.error})
            self._retry_later(path, delay)
        self.poke()

    def _retry_later(self, path: str, delay: float) -> None:
        if path not in self.backoff_set:
            self.backoff_set.add(path)
            heapq.heappush(self.backoff, (trio.current_time() + delay, path))

    # ---- outgoing

    async def _writer(self) -> None:
        r = self.r
        delay = r.retry_min
        while True:
            await self._until(lambda: r._sending)
            epoch = r._role_epoch
            self._reset()
            if not await self._sync_manifest(epoch):
                if self.refused:
                    await self._until(lambda: r._role_epoch != epoch, delay)
                    delay = min(r.retry_max, delay * 2)
                continue
            delay = r.retry_min
            await self._stream(epoch)
            if self.refused:
                await self._until(lambda: r._role_epoch != epoch, delay)
                delay = min(r.retry_max, delay * 2)

    def _reset(self) -> None:
        self.manifest_ok = False
        self.refused = False
        self.inflight.clear()
        self.inflight_paths.clear()
        self.inflight_bytes = 0
        self.queue.clear()
        self.queued.clear()
        self.backoff.clear()
        self.backoff_set.clear()
        self.backoff_n.clear()
        self.paused_reason = None
        self.paused_until = 0.0

    async def _sync_manifest(self, epoch: int) -> bool:
        r = self.r
        self._rid = (self._rid % 0xFFFFFFFF) + 1
        self._m_rid, self._m_acc, self._m_done = self._rid, {}, False
        await self.chan.send(FileManifestRequest(request_id=self._rid))
        await self._until(lambda: self._m_done or self.refused or r._role_epoch != epoch
                          or not r._sending)
        if not self._m_done or r._role_epoch != epoch or not r._sending:
            return False
        self.peer, self._m_acc = self._m_acc, {}
        sends, deletes = plan(r._index, self.peer)
        for p, e in r._index.items():
            q = self.peer.get(p)
            if q is not None and q.version_seq != 0 and q.digest == e.digest \
                    and q.size == e.size and e.synced != e.digest:
                e.synced = e.digest
                r._mark_dirty(p)
        r._diff = set(sends) | set(deletes)
        for p in deletes + sends:
            self.enqueue(p)
        self.manifest_ok = True
        r._log("debug", "file_manifest", f"peer manifest: {len(self.peer)} files; to send "
               f"{len(sends)}, to delete {len(deletes)}")
        return True

    def _next_path(self) -> str | None:
        now = trio.current_time()
        while self.backoff and self.backoff[0][0] <= now:
            _, p = heapq.heappop(self.backoff)
            self.backoff_set.discard(p)
            self.enqueue(p)
        if self.paused_until > now:
            return None
        if self.inflight and (len(self.inflight) >= self.r.max_inflight_files
                              or self.inflight_bytes >= self.r.max_inflight_bytes):
            return None
        while self.queue:
            p = self.queue.popleft()
            self.queued.discard(p)
            if p in self.inflight_paths or p in self.backoff_set:
                continue
            if not self._differs(p):
                self.r._diff.discard(p)
                continue
            return p
        return None

    def _next_deadline(self) -> float:
        t = math.inf
        if self.backoff:
            t = self.backoff[0][0]
        if self.paused_until > trio.current_time():
            t = min(t, self.paused_until)
        return t

    async def _stream(self, epoch: int) -> None:
        r = self.r
        while r._sending and r._role_epoch == epoch and not self.refused:
            path = self._next_path()
            if path is None:
                ev = self._wake
                with trio.move_on_at(self._next_deadline()):
                    await ev.wait()
                continue
            await self._transfer(path, epoch)

    def _register(self, path: str, kind: str, e: IndexEntry | None, nbytes: int,
                  offer: bool, version: tuple[int, int] | None = None) -> _Out:
        self._tid = (self._tid % 0xFFFFFFFF) + 1
        vt, vs = version if version is not None else (e.version_term, e.version_seq)
        tr = _Out(self._tid, path, kind, e.size if e else 0, e.digest if e else None, vt, vs,
                  nbytes, self.pause_gen, trio.Event() if offer else None)
        self.inflight[tr.tid] = tr
        self.inflight_paths[path] = tr.tid
        self.inflight_bytes += nbytes
        return tr

    async def _transfer(self, path: str, epoch: int) -> None:
        r = self.r
        e = r._index.get(path)
        if e is None:
            r._seq += 1
            r._flush_ev.set()
            tr = self._register(path, "delete", None, 0, False, (r._term, r._seq))
            await self.chan.send(FileDelete(transfer_id=tr.tid, path=path,
                                            version_term=tr.version_term,
                                            version_seq=tr.version_seq))
            return
        q = self.peer.get(path)
        confirm = q is not None and q.digest == e.digest and q.size == e.size
        if e.size >= r.resume_threshold or confirm:
            await self._send_large(path, e, epoch)
        else:
            await self._send_small(path, e)

    async def _recheck(self, path: str) -> None:
        await self.r._scan([path])
        self.enqueue(path)

    def _read_small(self, path: str):
        r = self.r
        try:
            fd = os.open(r._abs(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size >= r.resume_threshold:
                return None
            parts, total = [], 0
            while True:
                b = os.read(fd, r.resume_threshold + 1 - total)
                if not b:
                    break
                parts.append(b)
                total += len(b)
                if total > r.resume_threshold:
                    return None
            if _sig(os.fstat(fd)) != _sig(st) or total != st.st_size:
                return "unstable"
            data = b"".join(parts)
            return data, hashlib.sha256(data).digest(), _cache_sig(st)
        finally:
            os.close(fd)

    async def _send_small(self, path: str, e: IndexEntry) -> None:
        r = self.r
        res = await trio.to_thread.run_sync(self._read_small, path)
        if res is None:  # gone, not a regular file, or grown large: look again
            await self._recheck(path)
            return
        if res == "unstable":
            self._retry_later(path, r.retry_min)
            return
        data, digest, sig = res
        e = r._note_content(path, len(data), digest, sig)
        if not self._differs(path):
            r._diff.discard(path)
            return
        tr = self._register(path, "send", e, len(data), False)
        await self.chan.send(FileBegin(transfer_id=tr.tid, path=path, size=e.size,
                                       digest=e.digest, version_term=e.version_term,
                                       version_seq=e.version_seq, wait_offer=False))
        step = self.chunk_size
        view = memoryview(data)
        for off in range(0, len(data), step):
            await self.chan.send(FileChunk(transfer_id=tr.tid, offset=off,
                                           data=bytes(view[off:off + step])))
        await self.chan.send(FileEnd(transfer_id=tr.tid))
        r.counters["bytes_sent"] += len(data)

    def _open_large(self, path: str, e: IndexEntry):
        """(fd, size, digest, sig) of a file to stream, hashing it again unless its
        signature is the indexed one."""
        try:
            fd = os.open(self.r._abs(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                         | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return None
            if e.sig is not None and e.sig == _sig(st):
                return fd, e.size, e.digest, e.sig
            digest = _hash_fd(fd)
            if _sig(os.fstat(fd)) != _sig(st):
                os.close(fd)
                return "unstable"
            return fd, st.st_size, digest, _cache_sig(st)
        except BaseException:
            os.close(fd)
            raise

    async def _send_large(self, path: str, e: IndexEntry, epoch: int) -> None:
        r = self.r
        res = await trio.to_thread.run_sync(self._open_large, path, e)
        if res is None:
            await self._recheck(path)
            return
        if res == "unstable":
            self._retry_later(path, r.retry_min)
            return
        fd, size, digest, sig = res
        try:
            e = r._note_content(path, size, digest, sig)
            if not self._differs(path):
                r._diff.discard(path)
                return
            tr = self._register(path, "send", e, size, True)
            await self.chan.send(FileBegin(transfer_id=tr.tid, path=path, size=e.size,
                                           digest=e.digest, version_term=e.version_term,
                                           version_seq=e.version_seq, wait_offer=True))
            await tr.offer.wait()
            if tr.offset is None:
                return  # answered by an ack (refused or failed)
            off = tr.offset
            if tr.tid in self.inflight:
                left = max(0, size - off)
                self.inflight_bytes -= tr.nbytes - left
                tr.nbytes = left
            step = self.chunk_size
            while off < size:
                if not r._sending or r._role_epoch != epoch or tr.tid not in self.inflight:
                    return  # stopped sending (or the transfer failed): leave it unfinished
                data = await trio.to_thread.run_sync(os.pread, fd, min(step, size - off), off)
                if not data:
                    break  # shrank: the receiver reports the size mismatch
                await self.chan.send(FileChunk(transfer_id=tr.tid, offset=off, data=data))
                off += len(data)
                r.counters["bytes_sent"] += len(data)
            await self.chan.send(FileEnd(transfer_id=tr.tid))
        finally:
            os.close(fd)
