"""Replication glue in the node manager: the configuration-database sessions, the node's view
(role, term, mode) for the file replicator, and progress for the supervisor's planned
handover.  docs/replication.md describes the protocol; the codec is ``_replwire``, the
connections ``replchan``, the database ``configdb``, the files ``filerepl``.

Every ``ConfigDB`` call runs in a worker thread behind one ``CapacityLimiter(1)``, so calls are
serialised (one SQLite connection, one writer) and the Trio loop that carries the heartbeats is
never blocked by a commit.

Database sessions, one pair per direction:

* **sender** (our outbound DB connection): the receiver first tells us what it has applied
  (``DbState``); we stream our log after it in ``DbChanges`` batches, at most ``WINDOW``
  entries ahead of its acknowledgements; a receiver behind the start of our log (pruned) gets a
  snapshot; a ``DbSnapshotRequest`` (the receiver found the two databases diverged) is answered
  with a snapshot once we have applied every change of the requester's own log.
* **receiver** (the peer's inbound DB connection): applies each batch in one transaction and
  acknowledges with a ``DbState``.  A refused batch (forged order, stale term, bad digest,
  corrupt changeset) is logged and nothing of it is applied; the sender is told where we stand
  after a back-off.  A full disk pauses: the batch is retried until it fits, and because we stop
  reading meanwhile, TCP stops the sender.
* **divergence**: when both sides have applied each other's whole log their checksums must be
  equal; if not, it is reported, and the secondary asks the primary for a snapshot (the primary
  wins; the secondary's differing rows are kept in its conflict table).

Nothing here ends the node manager once ``run`` has started: each long-lived task (the write
loop, the watch for other writers, the file watcher and sweep, the listener and dialers)
records what escapes it in ``failures`` (``ReplTasks``: count, last error, rate-limited
``task_failed`` line) and starts again after a growing delay; a DB session that fails (an
``apsw`` error, say) ends its connection only, and the dialer reconnects.  ``stats()`` shows
the counts under ``tasks`` and ``healthy: false`` with ``unhealthy_reason`` while a task is
failing (until it next works) or files cannot be read.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import trio

from failover.config import NodeConfig
from failover.core import events as ev
from failover.core.replwire import (
    Channel,
    DbChanges,
    DbEntry,
    DbSchema,
    DbSnapshotBegin,
    DbSnapshotChunk,
    DbSnapshotRequest,
    DbState,
    max_data,
)
from failover.core.state import Mode, Role, State
from failover.eventlog import EventLog
from failover.filerepl import FileReplicator, inotify
from failover.replchan import ChannelClosed, ReplEndpoint, ReplTasks, events_log
from integrations.base import node_mwi_drivers
from telephony.configdb import (
    SCHEMA_VERSION,
    ConfigDB,
    ConfigDBError,
    DiskFull,
    LogEntry,
    LogGap,
    Refused,
    Snapshot,
)
from telephony.runtime.tasks import Backoff, describe, keep_running

WINDOW = 5000  # log entries sent ahead of the receiver's acknowledgements
BATCH_ENTRIES = 500
SNAPSHOT_MAX = 512 * 1024 * 1024  # bytes a receiver accepts for one snapshot
RETRY_MIN, RETRY_MAX = 0.2, 10.0
#: the other-writers watch (``Replication._watch_writers``): a look at least this often even
#: with no file event, and how long after an event it keeps looking for the commit to show
WRITERS_FALLBACK, WRITERS_SETTLE = 2.0, 1.0
SENDING_STATES = (State.ACTIVATING, State.ACTIVE, State.DRAINING)


@dataclass
class _Peer:
    """What the peer last told us about its database (either connection)."""
    state: DbState | None = None
    acked_seq: int = 0  # the peer has applied our log up to here


class Replication:
    def __init__(self, cfg: NodeConfig, keys: bytes | Callable[[], tuple[bytes, ...]], events: EventLog,
                 inbox: trio.MemorySendChannel | None = None):
        self.cfg = cfg
        self.events = events
        self.inbox = inbox
        r = cfg.replication
        self.role = cfg.node.role
        self.peer_role = Role.SECONDARY if self.role is Role.PRIMARY else Role.PRIMARY
        self.limiter = trio.CapacityLimiter(1)
        #: failures of the long-lived tasks (this module's, the files', the channels')
        self.failures = ReplTasks(events_log(events))
        self.db: ConfigDB | None = None
        self.peer = _Peer()
        self.counters: Counter[str] = Counter()
        self.paused: str | None = None
        #: why the database does not replicate because of the peer's schema version, or None
        self.schema_mismatch: str | None = None
        self.diverged = False
        self.last_error: str | None = None
        self._head = 0  # our log head, cached after every write/state read
        self._applied = 0  # the peer's log applied here
        self._checksum = 0
        self._conflicts = 0
        self._changed = trio.Event()  # our log grew or the peer acknowledged
        #: (log head, when it was first seen) for our changes the peer has not acknowledged,
        #: oldest first: the replication lag in seconds (``lag_s`` in stats)
        self._unacked: deque[tuple[int, float]] = deque()
        self._writes_in, self._writes_out = trio.open_memory_channel(1024)
        self._last_log: dict[str, float] = {}
        self._barrier: tuple[int, int] | None = None  # (number, our head at the barrier)
        self._snapshot_requested = False
        #: the DB receivers' waits for the peer's next message (``_db_receiver``)
        self._receiver_waits: set[trio.CancelScope] = set()
        self._state = State.STARTING
        self._term = 0
        self._mode = cfg.failover.mode
        self.files: FileReplicator | None = None
        self.endpoint: ReplEndpoint | None = None
        if not r.enabled:
            return
        self.files = FileReplicator(
            root=r.files_root, directories=list(r.directories), data_dir=cfg.node.data_dir,
            events=events, max_frame=r.max_frame, batch_delay=r.batch_delay,
            sweep_interval=r.sweep_interval, failures=self.failures)
        self.endpoint = ReplEndpoint(
            node=cfg.node.name, role=self.role, peer_name=cfg.link.peer_name, keys=keys,
            listen=r.listen, peer=r.peer, events=events,
            sessions_out={Channel.DB: self._contained("db.sender", self._db_sender),
                          Channel.FILES: self.files.sender_session},
            sessions_in={Channel.DB: self._contained("db.receiver", self._db_receiver),
                         Channel.FILES: self.files.receiver_session},
            max_frame=r.max_frame, connect_timeout=cfg.link.connect_timeout,
            reconnect_min=cfg.link.reconnect_min, reconnect_max=cfg.link.reconnect_max,
            failures=self.failures)

    # ------------------------------------------------------------------ database calls

    async def call(self, fn, *args, **kw):
        """Run ``fn(db, *args, **kw)`` in the database thread (serialised)."""
        return await trio.to_thread.run_sync(lambda: fn(self.db, *args, **kw), limiter=self.limiter)

    async def write(self, term: int, ops: list[dict]):
        """One configuration write = one transaction = one change-log entry.  Writes that
        arrive together run in one trip to the database thread (each still its own
        transaction and fsync), which keeps the Trio loop's overhead per write small."""
        done = trio.Event()
        slot: list = [term, ops, None, done]
        await self._writes_in.send(slot)
        await done.wait()
        if isinstance(slot[2], BaseException):
            raise slot[2]
        return slot[2]

    def _contained(self, task: str, session):
        """A DB session whose failure (anything but the connection ending: an ``apsw``
        error, a bug) is recorded under ``task`` and ends only its connection, as a
        ``ChannelClosed`` naming it (the dialer reconnects with backoff)."""
        async def run(chan) -> None:
            try:
                await session(chan)
            except Exception as e:
                if isinstance(e, ChannelClosed) or (
                        isinstance(e, ExceptionGroup) and e.split(ChannelClosed)[1] is None):
                    raise  # the connection ended: not a failure of ours
                self.failures.failed(task, e, retry_in=None)
                raise ChannelClosed(f"{task} failed: {describe(e)}") from e
        return run

    async def _watch_other_writers(self, every: float = 0.01) -> None:
        """Changes committed by another process (the messaging service writes the MWI and
        notification ledgers with the term it is active in) go into the same change log; notice
        them so the sender ships them.  An error (``apsw.IOError``, a locked or replaced
        file) is recorded and the watch starts again after a growing delay."""
        await keep_running("db.watch_writers", partial(self._watch_writers, every),
                           self.failures, backoff=Backoff(RETRY_MIN, RETRY_MAX))

    async def _watch_writers(self, every: float) -> None:
        """Event-driven: sleep until the database file or its ``-wal``/``-journal`` changes
        (inotify), then read ``data_version`` at once and again after ``every``, doubling,
        while a commit may still be landing (its WAL frames are written, and so the event
        comes, before it is visible); and once every ``WRITERS_FALLBACK`` seconds whatever
        happens, in case an event is lost.  Without inotify: a read every ``every``."""
        last = await self.call(ConfigDB.data_version)
        await self._refresh()  # what was written while this watch was failing
        self.failures.ok("db.watch_writers")

        async def look() -> None:
            nonlocal last
            dv = await self.call(ConfigDB.data_version)
            if dv != last:
                last = dv
                await self._refresh()  # wakes the sender if the log grew

        path = self.cfg.database.path
        try:
            watch = inotify.NameWatch(path.parent, {path.name + x for x in ("", "-wal", "-journal")}) \
                if inotify.available() else None
        except OSError as e:  # no inotify watch left (fs.inotify limits): poll as before
            self._log_limited("warning", "db_watch_polling", f"polling the configuration "
                              f"database for other writers every {every:g} s: {describe(e)}")
            watch = None
        if watch is None:
            while True:
                await trio.sleep(every)
                await look()
        with watch:
            while True:
                woke = False
                with trio.move_on_after(WRITERS_FALLBACK):
                    await watch.wait()
                    woke = True
                seen, wait, left = last, every, WRITERS_SETTLE if woke else 0.0
                await look()
                while last == seen and left > 0:
                    await trio.sleep(wait)
                    left -= wait
                    wait *= 2
                    await look()

    async def _write_loop(self) -> None:
        await keep_running("db.write_loop", self._write_batches, self.failures,
                           backoff=Backoff(RETRY_MIN, RETRY_MAX))

    async def _write_batches(self) -> None:
        def run(batch: list[list]) -> None:
            for slot in batch:
                try:
                    slot[2] = self.db.write(slot[0], slot[1])
                except ConfigDBError as e:  # refused, DiskFull...: handed to the caller
                    slot[2] = e
                except Exception as e:  # the database failed (apsw.IOError...): reported too
                    slot[2] = ConfigDBError(f"the configuration database failed: {describe(e)}")
                    slot[2].__cause__ = e

        async for first in self._writes_out:
            batch = [first]
            while len(batch) < 256:
                try:
                    batch.append(self._writes_out.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await trio.to_thread.run_sync(run, batch, limiter=self.limiter)
                for slot in batch:
                    res = slot[2]
                    if isinstance(res, ConfigDBError) and isinstance(res.__cause__, Exception) \
                            and not isinstance(res.__cause__, ConfigDBError):
                        self.failures.failed("db.write", res.__cause__)
                    elif not isinstance(res, BaseException):
                        self.failures.ok("db.write")
                        if res.seq > self._head:
                            self._head = res.seq
            finally:  # whatever happened, no writer is left waiting
                for slot in batch:
                    if slot[2] is None:
                        slot[2] = ConfigDBError("the configuration write was not carried out")
                    slot[3].set()
                self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        self._track_lag()

    def _track_lag(self) -> None:
        """Note when the log head grew and forget what the peer has acknowledged.  At most
        1,024 steps are kept (more merge into the newest), so the oldest stays exact."""
        now = trio.current_time()
        if self._head > (self._unacked[-1][0] if self._unacked else self.peer.acked_seq):
            if len(self._unacked) < 1024:
                self._unacked.append((self._head, now))
            else:
                self._unacked[-1] = (self._head, self._unacked[-1][1])
        while self._unacked and self._unacked[0][0] <= self.peer.acked_seq:
            self._unacked.popleft()

    def lag_seconds(self) -> float | None:
        """Age of the oldest change in our log the peer has not acknowledged (0 when it has
        them all; None: never heard from it)."""
        if self.peer.state is None:
            return None
        self._track_lag()
        return round(trio.current_time() - self._unacked[0][1], 3) if self._unacked else 0.0

    # ------------------------------------------------------------------ node manager view

    def update(self, state: State, term: int, mode: Mode) -> None:
        """Called after every supervisor step: who sends files, who may receive them."""
        if (state, term, mode) == (self._state, self._term, self._mode):
            return
        self._state, self._term, self._mode = state, term, mode
        if self.files is None:
            return
        sending = state in SENDING_STATES and mode is Mode.AUTOMATIC
        receiving = state not in SENDING_STATES and mode is Mode.AUTOMATIC
        self.files.set_role(sending=sending, receiving=receiving, term=term)
        self._wake()

    @property
    def head(self) -> int:
        return self._head

    def db_pending(self) -> int | None:
        """Our changes the peer has not acknowledged (None: never heard from it)."""
        if self.peer.state is None:
            return None
        return max(0, self._head - self.peer.acked_seq)

    async def barrier(self, number: int) -> None:
        """``ReplicationBarrier``: count every change committed before now, then report
        progress to the supervisor until the peer has acknowledged them all."""
        await self.call(lambda db: None)  # writes accepted before the barrier have committed
        if self.files is None:
            if self.inbox is not None:
                await self.inbox.send(ev.ReplicationProgress(pending=0, barrier=number))
            return
        await self.files.barrier()
        self._barrier = (number, self._head)
        last = None
        while self._barrier is not None and self._barrier[0] == number:
            _, head = self._barrier
            db = None if self.peer.state is None else max(0, head - self.peer.acked_seq)
            pending = None if db is None else db + self.files.pending()
            report = -1 if pending is None else pending
            if report != last and self.inbox is not None and pending is not None:
                await self.inbox.send(ev.ReplicationProgress(pending=pending, barrier=number))
                last = report
            if pending == 0:
                self._barrier = None
                return
            await trio.sleep(0.005)

    def health(self) -> tuple[bool, str | None]:
        """(healthy, why not): unhealthy while a task is failing, from a failure until it
        works again (``files.scan``: while a path of the replicated directories cannot be
        read)."""
        why = [f"{task}: {error}" for task, error in self.failures.failing().items()]
        return not why, ("; ".join(why) or None)

    def stats(self) -> dict:
        st = self.peer.state
        ep = self.endpoint.stats() if self.endpoint is not None else None
        healthy, why = self.health()
        failing = self.failures.failing()
        return {
            "enabled": self.cfg.replication.enabled,
            "healthy": healthy,
            "unhealthy_reason": why,
            "tasks": {t: {**v, "failing": t in failing} for t, v in self.failures.stats().items()},
            "db": {"head_seq": self._head, "peer_acked_seq": self.peer.acked_seq if st else None,
                   "lag_changes": self.db_pending(), "lag_s": self.lag_seconds(),
                   "peer_head_seq": st.head_seq if st else None,
                   "applied_seq": self._applied,
                   "behind_changes": None if st is None else max(0, st.head_seq - self._applied),
                   "checksum": f"{self._checksum:016x}", "diverged": self.diverged,
                   "conflicts": self._conflicts, "paused": self.schema_mismatch or self.paused,
                   "schema_version": SCHEMA_VERSION,
                   "last_error": self.last_error, **dict(sorted(self.counters.items()))},
            "files": self.files.stats() if self.files is not None else None,
            "channels": ep,
        }

    # ------------------------------------------------------------------ run

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        r = self.cfg.replication
        path = self.cfg.database.path

        def open_db() -> ConfigDB:
            path.parent.mkdir(parents=True, exist_ok=True)
            # subscribers get only the MWI methods a driver of this node serves (both nodes
            # of a pair enable the same drivers: docs/messaging-service.md)
            return ConfigDB(path, role=self.role, log_keep=r.log_keep, log_max=r.log_max,
                            mwi_methods=node_mwi_drivers(self.cfg))

        self.db = await trio.to_thread.run_sync(open_db, limiter=self.limiter)
        try:
            await self._refresh()
            self._conflicts = await self.call(ConfigDB.conflict_count)
            if self.endpoint is not None:
                await self.endpoint.open()  # a port in use: one ListenError, before started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._watch_other_writers)
                if self.files is not None:
                    await nursery.start(self.files.run)
                    await nursery.start(self.endpoint.run)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.db.close, limiter=self.limiter)

    async def _refresh(self):
        return self._cache(await self.call(ConfigDB.state))

    def _cache(self, s):
        grew = s.head_seq > self._head  # another process (the messaging service) wrote
        self._head, self._applied, self._checksum = s.head_seq, s.applied_seq, s.checksum
        if grew:
            self._wake()  # whoever noticed first: the sender must ship it
        return s

    async def _our_state(self, s=None) -> DbState:
        s = await self._refresh() if s is None else self._cache(s)
        return DbState(head_seq=s.head_seq, head_term=s.head_term, first_seq=s.first_seq,
                       applied_seq=s.applied_seq, applied_term=s.applied_term,
                       checksum=s.checksum, active=self._state in (State.ACTIVE, State.ACTIVATING))

    def _log_limited(self, level: str, event: str, message: str, every: float = 10.0, **fields) -> None:
        now = time.monotonic()
        if now - self._last_log.get(event, -math.inf) >= every:
            self._last_log[event] = now
            self.events.write(level, event, message, fields or None)

    def _peer_schema(self, version: int | None) -> bool:
        """The peer's schema version (None: it sent a ``DbState`` without saying, so it runs
        an older program).  Changes and snapshots flow only between equal versions: a
        snapshot of another schema would leave a database this program (or the peer's) cannot
        open.  Logged once per change of verdict; True if they match."""
        if version == SCHEMA_VERSION:
            if self.schema_mismatch is not None:
                self.schema_mismatch = None
                self.events.write("info", "db_schema_ok", f"the peer's configuration database "
                                  f"schema is {version}, as here: database replication resumes")
                self._wake()
            return True
        why = (f"schema {version if version is not None else 'unknown (an older program)'} on "
               f"the peer, {SCHEMA_VERSION} here: upgrade the node with the older program")
        if self.schema_mismatch != why:
            self.schema_mismatch = why
            self.counters["schema_mismatches"] += 1
            self.events.write("error", "db_schema_mismatch", f"database replication paused: {why}; "
                              "changes wait in each node's log until both run the same version")
        return False

    async def _peer_state(self, st: DbState) -> None:
        """A DbState from the peer (either connection): divergence check."""
        self.peer.state = st
        if not (st.applied_seq == self._head and st.head_seq == self._applied):
            return  # positions do not line up (cached values; they only grow): nothing to compare
        ours = await self._refresh()
        if st.applied_seq == ours.head_seq and st.head_seq == ours.applied_seq:
            if st.checksum != ours.checksum:
                if self.role is Role.SECONDARY and not self._snapshot_requested:
                    for wait in list(self._receiver_waits):  # the receiver asks for a snapshot
                        wait.cancel()
                if not self.diverged:
                    self.diverged = True
                    self.counters["divergences"] += 1
                    self.events.write("error", "db_diverged", f"configuration databases diverged at "
                                      f"positions {ours.head_seq}/{ours.applied_seq}: checksum "
                                      f"{ours.checksum:016x} here, {st.checksum:016x} on the peer; "
                                      + ("asking the primary for a snapshot" if self.role is Role.SECONDARY
                                         else "the secondary will take a snapshot of this node's"))
            elif self.diverged:
                self.diverged = False
                self.events.write("info", "db_converged", "configuration databases are equal again")

    # ------------------------------------------------------------------ sender (our log out)

    async def _db_sender(self, chan) -> None:
        sent = None  # last seq sent on this connection (None until the peer said where it is)
        inflight: deque[int] = deque()  # last seq of each batch not answered yet
        snapshot_wanted = trio.Event()
        next_snapshot = 0.0  # back-off between snapshots the peer did not take
        schema_ok = False  # the peer said its schema on this connection, and it is ours
        await chan.send(DbSchema(SCHEMA_VERSION))
        await chan.send(await self._our_state())
        async with trio.open_nursery() as nursery:
            pruned = 0

            async def reader() -> None:
                nonlocal sent, pruned, schema_ok
                while True:
                    msg = await chan.receive()
                    if isinstance(msg, DbSchema):
                        schema_ok = self._peer_schema(msg.version)
                    elif not schema_ok:
                        if isinstance(msg, DbState):
                            self._peer_schema(None)
                        self.counters["refused_schema"] += 1  # nothing flows: see _peer_schema
                    elif isinstance(msg, DbState):
                        self.failures.ok("db.sender")  # the peer hears us again
                        self.peer.acked_seq = msg.applied_seq
                        if inflight:
                            expected = inflight.popleft()
                            if msg.applied_seq < expected:  # refused or a gap: start again
                                inflight.clear()
                                sent = msg.applied_seq
                        elif sent is None or msg.applied_seq > sent:
                            sent = msg.applied_seq  # (re)start right after what it has
                        await self._peer_state(msg)
                        if msg.applied_seq > self._head:
                            self._log_limited("error", "db_peer_ahead", f"peer says it applied "
                                              f"our change {msg.applied_seq}, beyond our log head "
                                              f"{self._head} (was this database restored?)")
                        acked = min(msg.applied_seq, self._head)
                        if acked - pruned >= 256 or (acked == self._head and acked > pruned):
                            pruned = acked  # prune the log now and then, not per batch
                            await self.call(ConfigDB.mark_acked, acked)
                        self._wake()
                    elif isinstance(msg, DbSnapshotRequest):
                        self.events.write("warning", "db_snapshot_requested",
                                          f"peer asked for a snapshot: {msg.reason}")
                        snapshot_wanted.set()
                        self._wake()
                    else:
                        self.counters["unexpected_messages"] += 1

            nursery.start_soon(reader)
            idle_state_sent = -1
            while True:
                changed = self._changed
                if snapshot_wanted.is_set():
                    snapshot_wanted = trio.Event()
                    await self._send_snapshot(chan)
                    sent = None  # wait for its new DbState
                    inflight.clear()
                    continue
                if sent is not None and self._head > sent and sent - self.peer.acked_seq < WINDOW:
                    try:
                        entries = await self.call(ConfigDB.entries_after, sent,
                                                  max_entries=BATCH_ENTRIES,
                                                  max_bytes=self._batch_bytes())
                    except LogGap:
                        wait = next_snapshot - trio.current_time()
                        if wait > 0:
                            await trio.sleep(wait)
                        self._log_limited("warning", "db_snapshot", "peer is behind the start "
                                          "of the change log: sending a snapshot")
                        await self._send_snapshot(chan)
                        next_snapshot = trio.current_time() + RETRY_MAX
                        sent = None
                        inflight.clear()
                        continue
                    await chan.send(DbChanges(tuple(
                        DbEntry(term=e.term, seq=e.seq, digest=e.digest, changeset=e.changeset)
                        for e in entries)))
                    sent = entries[-1].seq
                    # the log may hold more than the cached head (the messaging service writes
                    # too, and the watch for other writers has not looked yet): what we send is
                    # in our log, so the head is at least that (else the peer's ack of it would
                    # read as "ahead of our log")
                    self._head = max(self._head, sent)
                    inflight.append(sent)
                    self.counters["changes_sent"] += len(entries)
                    continue
                if sent is not None and sent == self._head == self.peer.acked_seq \
                        and idle_state_sent != self._head:
                    idle_state_sent = self._head  # quiescent: let the peer compare checksums
                    await chan.send(await self._our_state())
                await changed.wait()

    def _batch_bytes(self) -> int:
        from failover.core.replwire import max_changes_bytes
        return max_changes_bytes(self.cfg.replication.max_frame)

    async def _send_snapshot(self, chan) -> None:
        # the snapshot must contain every change of the requester's own log: wait until we
        # have applied it all (our receiver session gets it on the other connection)
        peer = self.peer.state
        for _ in range(200):
            ours = await self._refresh()
            if peer is None or ours.applied_seq >= peer.head_seq:
                break
            await trio.sleep(0.05)
            peer = self.peer.state
        snap: Snapshot = await self.call(ConfigDB.build_snapshot)
        self.counters["snapshots_sent"] += 1
        digest = hashlib.sha256(snap.data).digest()
        sid = self.counters["snapshots_sent"]
        await chan.send(DbSnapshotBegin(snapshot_id=sid, head_seq=snap.head_seq, head_term=snap.head_term,
                                        applied_seq=snap.applied_seq, applied_term=snap.applied_term,
                                        checksum=snap.checksum, size=len(snap.data), digest=digest))
        step = max_data(self.cfg.replication.max_frame)
        for off in range(0, len(snap.data), step):
            await chan.send(DbSnapshotChunk(snapshot_id=sid, offset=off, data=snap.data[off:off + step]))
        self.events.write("info", "db_snapshot_sent", f"snapshot sent: {len(snap.data)} bytes, "
                          f"log position {snap.head_seq}")

    # ------------------------------------------------------------------ receiver (peer's log in)

    async def _db_receiver(self, chan) -> None:
        retry = RETRY_MIN
        snap: DbSnapshotBegin | None = None
        buf = bytearray()
        gap_answered = False
        schema_ok = False  # the peer said its schema on this connection, and it is ours
        await chan.send(DbSchema(SCHEMA_VERSION))
        await chan.send(await self._our_state())
        while True:
            if self.diverged and self.role is Role.SECONDARY and not self._snapshot_requested:
                self._snapshot_requested = True  # the primary wins: take its snapshot
                await chan.send(DbSnapshotRequest(head_seq=self._head, reason="checksums differ "
                                                  "at equal positions (diverged)"))
            msg = None
            with trio.CancelScope() as wait:  # cancelled by a divergence found (_peer_state)
                self._receiver_waits.add(wait)
                try:
                    msg = await chan.receive()
                finally:
                    self._receiver_waits.discard(wait)
            if msg is None:
                continue
            if not isinstance(msg, (DbChanges, DbSnapshotChunk)):
                self.failures.ok("db.receiver")  # a message taken without failing
            if isinstance(msg, DbSchema):
                schema_ok = self._peer_schema(msg.version)
            elif not schema_ok:  # nothing is applied across schema versions (_peer_schema)
                if isinstance(msg, DbState):
                    self._peer_schema(None)
                self.counters["refused_schema"] += 1
                snap = None
            elif isinstance(msg, DbState):
                await self._peer_state(msg)
            elif isinstance(msg, DbChanges):
                entries = [LogEntry(term=e.term, seq=e.seq, digest=e.digest, changeset=e.changeset)
                           for e in msg.entries]
                outcome, after = await self._apply(entries)
                if outcome == "gap":  # batches sent before the sender heard of a refusal
                    if gap_answered:
                        continue
                    gap_answered = True
                elif outcome == "ok":
                    retry, gap_answered = RETRY_MIN, False
                    self.failures.ok("db.receiver")
                else:
                    await trio.sleep(retry)  # do not let a bad batch spin
                    retry = min(retry * 2, RETRY_MAX)
                await chan.send(await self._our_state(after))
            elif isinstance(msg, DbSnapshotBegin):
                snap, buf = msg, bytearray()
                if msg.size > SNAPSHOT_MAX:
                    self._refuse("snapshot_too_large", f"snapshot of {msg.size} bytes refused "
                                 f"(limit {SNAPSHOT_MAX})")
                    snap = None
                    await chan.send(await self._our_state())
            elif isinstance(msg, DbSnapshotChunk):
                if snap is None:
                    continue  # the rest of a refused snapshot
                if msg.snapshot_id != snap.snapshot_id or msg.offset != len(buf) \
                        or len(buf) + len(msg.data) > snap.size:
                    self._refuse("snapshot_chunk", "snapshot chunk out of order: snapshot ignored")
                    snap = None
                    await chan.send(await self._our_state())
                    continue
                buf += msg.data
                if len(buf) == snap.size:
                    done, snap = snap, None
                    await self._install(done, bytes(buf))
                    buf = bytearray()
                    gap_answered = False
                    await chan.send(await self._our_state())
            else:
                self.counters["unexpected_messages"] += 1

    def _refuse(self, reason: str, message: str) -> None:
        self.counters[f"refused_{reason}"] += 1
        self.last_error = message
        self._log_limited("error", "db_refused", message, reason=reason)

    async def _apply(self, entries: list[LogEntry]):
        """Apply one batch: (``"ok"``, state after) or ``"gap"`` (not the next one; nothing
        applied) or ``"refused"`` (logged; nothing applied), with None.  A full disk is waited
        out here."""
        delay = RETRY_MIN

        def apply(db: ConfigDB):
            return db.apply_remote(entries, self.peer_role), db.state()

        while True:
            try:
                res, after = await self.call(apply)
            except Refused as e:
                if e.reason == "gap":
                    self.counters["gaps"] += 1
                    return "gap", None
                self._refuse(e.reason, f"changes {entries[0].seq}..{entries[-1].seq} from the peer "
                             f"refused ({e.reason}): {e}; nothing of them was applied")
                return "refused", None
            except DiskFull as e:
                if self.paused is None:
                    self.events.write("error", "db_paused", f"disk full applying the peer's changes: "
                                      f"replication paused, retrying ({e})")
                self.paused = "disk full"
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if self.paused:
                self.events.write("info", "db_resumed", "space available again: replication resumed")
                self.paused = None
            self.counters["changes_applied"] += len(entries)
            if res.conflicts:
                self._conflicts += res.conflicts
                self.counters["conflicts"] += res.conflicts
                self.events.write("warning", "db_conflict", f"{res.conflicts} conflicting changes "
                                  f"in peer changes up to {res.applied_seq}: "
                                  + ("this primary's rows were kept" if self.role is Role.PRIMARY
                                     else "the primary's rows won")
                                  + "; the losing rows are in the conflict table (vmha db conflicts)",
                                  {"conflicts": res.conflicts, "peer_seq": res.applied_seq})
            return "ok", after

    async def _install(self, begin: DbSnapshotBegin, data: bytes) -> None:
        if hashlib.sha256(data).digest() != begin.digest:
            self._refuse("snapshot_digest", "snapshot digest mismatch: ignored")
            return
        snap = Snapshot(head_seq=begin.head_seq, head_term=begin.head_term,
                        applied_seq=begin.applied_seq, applied_term=begin.applied_term,
                        checksum=begin.checksum, data=data)
        try:
            res = await self.call(ConfigDB.install_snapshot, snap)
        except Refused as e:
            self._refuse(e.reason, f"snapshot refused ({e.reason}): {e}")
            self._snapshot_requested = False  # ask again on the next comparison
            return
        except DiskFull as e:
            self.paused = "disk full"
            self.events.write("error", "db_paused", f"disk full installing a snapshot: {e}")
            self._snapshot_requested = False
            return
        self._snapshot_requested = False
        self.diverged = False
        self._conflicts += res.conflicts
        self.counters["snapshots_installed"] += 1
        self.events.write("warning", "db_snapshot_installed",
                          f"installed the peer's snapshot at its log position {begin.head_seq}; "
                          f"{res.conflicts} local rows that differed are kept in the conflict table",
                          {"conflicts": res.conflicts})
        await self._refresh()


__all__ = ["Replication", "ChannelClosed"]
