"""``FileReplicator``: file replication of one node (see the package doc).

It owns what outlives a connection: the index (in memory, written to ``files.db`` by
``flush``), the role given by the glue, the set of paths the peer has not acknowledged, the
counters, the scans, the watcher and sweep while sending.  Each connection runs a ``Sender``
or a ``Receiver`` (Trio shells around the pure sessions of ``failover.core.transfer``), which
report back through ``apply`` and the index methods below.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import apsw
import trio

from failover.core.manifest import IndexEntry, ReplicatedPaths, Sig
from failover.core.replwire import FileDelete, max_data, max_manifest_bytes
from failover.core.transfer import (
    DISK_FULL,
    Agreed,
    Count,
    Error,
    Incoming,
    Log,
    Pending,
    ReceiverSession,
    RxOk,
    RxPaused,
    SenderSession,
    Settled,
)
from failover.filerepl.index import IndexDb, open_index, row
from failover.filerepl.install import Installer
from failover.filerepl.receiver import Receiver
from failover.filerepl.scan import Scanner
from failover.filerepl.sender import Sender
from failover.filerepl.watcher import Failures, Watcher
from telephony.runtime.tasks import Backoff, keep_running

TMP_DIR = ".vmha-tmp"


class FileReplicator:
    """File replication of one node; see the package doc.  ``run()`` must be running (started
    with ``nursery.start``) before the sessions do anything.  ``failures`` records the
    watcher, sweep, scan and index writer (a ``failover.replchan.ReplTasks``, shared with the
    glue's status)."""

    def __init__(self, *, root: Path, directories: list[str], data_dir: Path, events,
                 failures: Failures, chunk_size: int = 256 * 1024,
                 max_frame: int = 4 * 1024 * 1024, batch_delay: float = 0.0,
                 sweep_interval: float = 60.0, resume_threshold: int = 4 * 1024 * 1024,
                 retry_min: float = 0.2, retry_max: float = 10.0, watch_debounce_ms: int = 20,
                 watch_step_ms: int = 5, watch_force_polling: bool | None = None,
                 watch_poll_delay_ms: int = 50, max_inflight_files: int = 64,
                 max_inflight_bytes: int = 16 * 1024 * 1024,
                 on_conflict: Callable[[dict], None] | None = None):
        self.root = Path(root)
        self.paths = ReplicatedPaths(directories)
        self.directories = self.paths.directories
        self.data_dir = Path(data_dir)
        self.events = events
        self.chunk_size = max(1, min(chunk_size, max_data(max_frame)))
        self.max_frame = max_frame
        self.sweep_interval = sweep_interval
        self.resume_threshold = resume_threshold
        self.retry_min = retry_min
        self.retry_max = max(retry_max, retry_min)
        self.max_inflight_files = max(1, max_inflight_files)
        self.max_inflight_bytes = max(1, max_inflight_bytes)
        self.on_conflict = on_conflict
        self.failures = failures
        self.tmp_dir = self.root / TMP_DIR
        self.conflicts_dir = self.data_dir / "conflicts" / "files"
        self.scanner = Scanner(self.root, self.paths)
        self.installer = Installer(self.root, self.paths, self.tmp_dir, self.conflicts_dir,
                                   lambda: self._db)
        self.watcher = Watcher(
            self.root, self.paths, scan=self.scan, failures=failures,
            on_error=self._count_error, batch_delay=batch_delay, retry_min=self.retry_min,
            retry_max=self.retry_max, debounce_ms=watch_debounce_ms, step_ms=watch_step_ms,
            force_polling=watch_force_polling, poll_delay_ms=watch_poll_delay_ms)

        self._index: dict[str, IndexEntry] = {}
        self._seq = 0
        self._seq_saved = 0
        self._db: IndexDb | None = None
        self._loaded = trio.Event()
        self.sending = False
        self.receiving = False
        self.term = 0
        self.role_epoch = 0  # +1 each time sending turns on
        self._role_ev = trio.Event()
        self._diff: set[str] = set()  # paths whose local state the peer has not acknowledged
        self._sender: Sender | None = None
        self._sender_scope: trio.CancelScope | None = None
        self._receiver_scope: trio.CancelScope | None = None
        self._dirty: set[str] = set()  # index rows to write
        self._flush_lock = trio.Lock()
        self._flush_ev = trio.Event()
        self._scan_lock = trio.Lock()
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
        if sending and not self.sending:
            self.role_epoch += 1
        changed = (sending, receiving, term) != (self.sending, self.receiving, self.term)
        self.sending, self.receiving, self.term = bool(sending), bool(receiving), term
        if changed:
            self._role_ev.set()
            self._role_ev = trio.Event()
            if self._sender is not None:
                self._sender.poke()

    def pending(self) -> int:
        """Local changes (sends and deletes) the peer has not acknowledged; 0 also needs the
        peer's manifest received on the current connection.  0 while not sending."""
        if not self.sending:
            return 0
        n = len(self._diff)
        if self._sender is None or not self._sender.session.manifest_ok:
            return max(1, n)
        return n

    async def barrier(self) -> None:
        """Rescan now, so that ``pending()`` reflects every file on disk."""
        await self._loaded.wait()
        await self.scan()

    def stats(self) -> dict:
        s = self._sender.session if self._sender is not None else None
        paused = (s.paused_reason if s is not None else None) or self._rx_paused
        return {
            "files": len(self._index),
            "bytes": sum(e.size for e in self._index.values()),
            "pending": self.pending(),
            "sending": self.sending,
            "receiving": self.receiving,
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
                    while not self.sending:
                        await self._role_ev.wait()
                    async with trio.open_nursery() as active:
                        active.start_soon(partial(keep_running, "files.watch", self.watcher.run,
                                                  self.failures, backoff=backoff()))
                        active.start_soon(partial(keep_running, "files.sweep", self._sweep_loop,
                                                  self.failures, backoff=backoff()))
                        while self.sending:
                            await self._role_ev.wait()
                        active.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self.flush()
                finally:
                    await trio.to_thread.run_sync(db.close)
                    self._db = None

    def _frame_limit(self, chan) -> int:
        """The smaller of our and the connection's frame limit."""
        mf = getattr(chan, "max_frame", None)
        return min(self.max_frame, mf) if isinstance(mf, int) and mf > 0 else self.max_frame

    async def sender_session(self, chan) -> None:
        """Our outbound FILES connection: send while this node is the sender, idle otherwise.
        Returns when replaced by a newer session; raises ``ChannelClosed`` when the
        connection ends."""
        await self._loaded.wait()
        if self._sender_scope is not None:
            self._sender_scope.cancel()
        session = SenderSession(
            self._index, self.paths,
            chunk_size=max(1, min(self.chunk_size, max_data(self._frame_limit(chan)))),
            resume_threshold=self.resume_threshold, retry_min=self.retry_min,
            retry_max=self.retry_max, max_inflight_files=self.max_inflight_files,
            max_inflight_bytes=self.max_inflight_bytes)
        sender = Sender(self, chan, session)
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
        session = ReceiverSession(self.paths, resume_threshold=self.resume_threshold,
                                  manifest_budget=max_manifest_bytes(self._frame_limit(chan)))
        rx = Receiver(self, chan, session, self._index)
        with trio.CancelScope() as scope:
            self._receiver_scope = scope
            try:
                await rx.run()
            finally:
                rx.abort()
                if self._receiver_scope is scope:
                    self._receiver_scope = None

    # ------------------------------------------------------------------ for the shells

    def apply(self, action) -> None:
        """Carry out what a session noted (``Log``, ``Error``, ``Count``, ``Agreed``,
        ``Settled``, ``Pending``, ``RxPaused``, ``RxOk``)."""
        if isinstance(action, Log):
            self._log(action.level, action.event, action.message, action.fields)
        elif isinstance(action, Error):
            self._error(action.message, action.fields)
        elif isinstance(action, Count):
            self.counters[action.name] += action.n
        elif isinstance(action, Agreed):
            e = self._index.get(action.path)
            if e is not None and (action.digest is None or e.digest == action.digest) \
                    and e.synced != action.digest:
                e.synced = action.digest
                self.mark_dirty(action.path)
        elif isinstance(action, Settled):
            self._diff.discard(action.path)
        elif isinstance(action, Pending):
            self._diff = set(action.paths)
        elif isinstance(action, RxPaused):
            if self._rx_paused is None:
                self._rx_paused = DISK_FULL
                self._log("error", "file_paused", f"disk full receiving {action.path}: the peer "
                          "will retry", {"path": action.path})
        elif isinstance(action, RxOk):
            if self._rx_paused is not None:
                self._rx_paused = None
                self._log("info", "file_unpaused", "space available again: receiving files")
        else:
            raise TypeError(f"not a note of a session: {action!r}")

    def next_version(self) -> tuple[int, int]:
        """A new version (term, seq) of this node (for a deletion)."""
        self._seq += 1
        self._flush_ev.set()
        return self.term, self._seq

    def note_content(self, path: str, size: int, digest: bytes, sig: Sig | None) -> IndexEntry:
        """Record the content just read from ``path``; a new version if it changed."""
        cur = self._index.get(path)
        if cur is not None and cur.digest == digest and cur.size == size:
            if cur.sig != sig:
                cur.sig = sig
                self.mark_dirty(path)
            return cur
        self._seq += 1
        new = IndexEntry(size, digest, self.term, self._seq, sig,
                         cur.synced if cur is not None else None)
        self._index[path] = new
        self.mark_dirty(path)
        self._changed(path)
        return new

    def received(self, inc: Incoming, sig: Sig | None, conflicts: list, displaced: list) -> None:
        """The receiver installed ``inc`` (moving ``displaced`` away first)."""
        self._installed(inc.path, conflicts, displaced, inc.version_term, inc.version_seq)
        self._index[inc.path] = IndexEntry(inc.size, inc.digest, inc.version_term,
                                           inc.version_seq, sig, inc.digest)
        self.mark_dirty(inc.path)
        self._diff.discard(inc.path)
        self.counters["received"] += 1
        if inc.mode != "have":
            self.counters["bytes_received"] += inc.size - inc.resumed_from

    def removed(self, msg: FileDelete, conflicts: list, displaced: list) -> None:
        """The receiver carried out the deletion ``msg``."""
        self._installed(msg.path, conflicts, displaced, msg.version_term, msg.version_seq)
        self._diff.discard(msg.path)
        self.counters["deleted_received"] += 1

    # ------------------------------------------------------------------ logging

    def _log(self, level: str, event: str, message: str, fields: dict | None = None) -> None:
        if self.events is not None:
            self.events.write(level, event, message, fields)

    def _count_error(self, message: str) -> None:
        self.counters["errors"] += 1
        self._last_error = message

    def _error(self, message: str, fields: dict | None = None) -> None:
        self._count_error(message)
        self._log("warning", "file_error", message, fields)

    # ------------------------------------------------------------------ index

    def _startup_sync(self) -> tuple[IndexDb, dict[str, IndexEntry], int]:
        for d in self.directories:
            os.makedirs(self.root / d, exist_ok=True)
        return open_index(self.data_dir / "repl" / "files.db", self.tmp_dir)

    def mark_dirty(self, path: str) -> None:
        self._dirty.add(path)
        self._flush_ev.set()

    async def flush(self) -> None:
        """Write the changed index rows (a failure is counted; they are written next time)."""
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
                    rows.append(row(p, e))
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
            await self.flush()

    def _changed(self, path: str) -> None:
        """The local state of ``path`` changed: the peer has to hear about it."""
        self._diff.add(path)
        if self._sender is not None:
            self._sender.changed(path)

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
                self.mark_dirty(p)
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

    # ------------------------------------------------------------------ scanning

    async def scan(self, only: Iterable[str] | None = None) -> None:
        """Bring the index up to date with the disk: everything, or ``only`` these paths
        (files or directories).  A path that cannot be looked at is counted
        (``scan_errors``), kept as it was in the index, reported (``unreadable``, task
        ``files.scan``) and looked at again by the next sweep or event."""
        rels = None if only is None else sorted(set(only))
        async with self._scan_lock:
            t0 = time.monotonic()
            snap = dict(self._index)
            changed, removed, unstable, skipped, errors, looked = await trio.to_thread.run_sync(
                self.scanner.scan_sync, snap, rels)
            for rel, size, digest, sig in changed:
                if self._index.get(rel) is not snap.get(rel):
                    continue  # written meanwhile (by the receiver): that write wins
                self.note_content(rel, size, digest, sig)
            for rel in removed:
                cur = self._index.get(rel)
                if cur is None or cur is not snap.get(rel):
                    continue
                del self._index[rel]
                self.mark_dirty(rel)
                self._changed(rel)
            for rel, why in skipped:
                self._skip_once(rel, why)
            self.watcher.recheck.update(unstable)
            self._note_errors(looked, errors)
            if rels is None:
                self._last_sweep_s = time.monotonic() - t0
                self.counters["sweeps"] += 1
        await self.flush()

    def _skip_once(self, rel: str, why: str) -> None:
        if rel not in self._logged_skips:
            self._logged_skips.add(rel)
            self._log("info", "file_skipped", f"not replicated: {rel} ({why})", {"path": rel})

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
            await self.scan()
            await trio.sleep(self.sweep_interval)
