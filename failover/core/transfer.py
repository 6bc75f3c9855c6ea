"""The FILES channel's transfer sessions, sans-IO (docs/replication.md, "Files").

``SenderSession`` and ``ReceiverSession`` hold the protocol state of one connection: the
sender's view of the peer's manifest, its queue, the window of un-acknowledged transfers,
retries with back-off, the disk-full pause and the offsets of a streamed file; the receiver's
open transfer and its offset.  They take the peer's messages (the sender also the time ``now``)
and queue *actions*, taken one at a time with ``next_action()`` (aioquic style).  They never
read a file, a clock or a socket: the Trio shells in ``failover.filerepl`` do that and report
the outcome back (``ReceiverSession.opened``, ``committed``, ``fail``...).  The messages are
those of ``failover.core.replwire``.

Actions of both sessions:

* ``Log`` (write an event), ``Error`` (count an error, remember it, write ``file_error``),
  ``Count`` (add to a counter of ``stats()``);
* ``Agreed(path, digest)``: the peer holds ``digest`` at ``path`` (None: nothing), which is our
  content there: record it as the synced digest; ``Settled(path)``: the peer agrees with our
  state of ``path``; ``Pending(paths)``: the paths the peer does not agree with (all of them);
* receiver only: ``Send`` a message; ``Open`` a temp file, ``Write`` data to it, ``Commit`` the
  file, ``Remove`` a file, ``Discard`` a temp file, ``ListManifest`` (scan, then call
  ``manifest``); ``RxPaused`` (this node's disk is full) and ``RxOk`` (it took a file again).

The conventions on top of the message table (version (0, 0) for content the receiver did not get
from the sender, a refused manifest request, the errors of a ``FileAck``) are in
docs/replication.md, "Files".
"""
from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping

from failover.core.manifest import IndexEntry, ReplicatedPaths, plan
from failover.core.replwire import (
    FILE_ENTRY_OVERHEAD,
    MAX_ERROR,
    FileAck,
    FileBegin,
    FileChunk,
    FileDelete,
    FileEnd,
    FileEntry,
    FileManifest,
    FileManifestRequest,
    FileOffer,
    check_path,
)

DISK_FULL = "disk full"
RECEIVER_ACTIVE = "receiver is active"
MANIFEST_PATH = ".vmha-manifest"  # FileAck.path of a refused FileManifestRequest
INVALID_PATH = ".vmha-invalid"  # FileAck.path standing for a path that cannot be sent
ID_MAX = 0xFFFFFFFF  # transfer and request ids wrap after this


def clip(text: str, limit: int = MAX_ERROR) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (a ``FileAck.error``)."""
    raw = text.encode("utf-8")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


# ============================================================================ actions


@dataclass(frozen=True)
class Log:
    level: str
    event: str
    message: str
    fields: dict | None = None


@dataclass(frozen=True)
class Error:
    message: str
    fields: dict | None = None


@dataclass(frozen=True)
class Count:
    name: str
    n: int = 1


@dataclass(frozen=True)
class Agreed:
    path: str
    digest: bytes | None


@dataclass(frozen=True)
class Settled:
    path: str


@dataclass(frozen=True)
class Pending:
    paths: frozenset[str]


@dataclass(frozen=True)
class Send:
    msg: Any


@dataclass(frozen=True)
class Open:
    inc: Incoming


@dataclass(frozen=True)
class Write:
    inc: Incoming
    data: bytes


@dataclass(frozen=True)
class Commit:
    inc: Incoming


@dataclass(frozen=True)
class Remove:
    msg: FileDelete


@dataclass(frozen=True)
class Discard:
    """Close the temp file of ``inc``; remove it unless ``keep`` (a resumable partial)."""
    inc: Incoming
    keep: bool


@dataclass(frozen=True)
class ListManifest:
    request_id: int


@dataclass(frozen=True)
class RxPaused:
    path: str


@dataclass(frozen=True)
class RxOk:
    pass


class _Actions:
    def __init__(self) -> None:
        self._actions: deque = deque()

    def next_action(self):
        """The next thing to do, None when there is nothing."""
        return self._actions.popleft() if self._actions else None

    def _do(self, action) -> None:
        self._actions.append(action)


# ============================================================================ sender


@dataclass(eq=False)
class Outgoing:
    """One un-acknowledged transfer (a file or a deletion)."""
    tid: int
    path: str
    kind: str  # send | delete
    size: int
    digest: bytes | None
    version_term: int
    version_seq: int
    nbytes: int  # what it counts against the window of un-acknowledged bytes
    pause_gen: int
    wait_offer: bool = False
    answered: bool = False  # (wait_offer) the offer, or an ack instead of it, arrived
    offset: int | None = None  # the receiver's offer, then the next byte to send


class SenderSession(_Actions):
    """The sender's side of one connection.  ``local`` is this node's index (read, never
    written: the shell applies ``Agreed``).  Per sync: ``reset()``, send
    ``request_manifest()``, wait for ``manifest_received``, ``adopt_manifest()``, then take
    paths from ``next_path(now)`` (waiting until ``next_deadline(now)`` or a change when it
    says None) and send them (``how(path)``, then ``delete``, ``send_small`` or
    ``begin_large`` and the stream)."""

    def __init__(self, local: Mapping[str, IndexEntry], paths: ReplicatedPaths, *,
                 chunk_size: int, resume_threshold: int, retry_min: float, retry_max: float,
                 max_inflight_files: int, max_inflight_bytes: int):
        super().__init__()
        self.local = local
        self.paths = paths
        self.chunk_size = chunk_size
        self.resume_threshold = resume_threshold
        self.retry_min, self.retry_max = retry_min, retry_max
        self.max_inflight_files, self.max_inflight_bytes = max_inflight_files, max_inflight_bytes
        self.peer: dict[str, Any] = {}  # path -> FileEntry-like (size, digest, version_seq)
        self.manifest_ok = False
        self.refused = False
        self.queue: deque[str] = deque()
        self.queued: set[str] = set()
        self.inflight: dict[int, Outgoing] = {}
        self.inflight_paths: dict[str, int] = {}
        self.inflight_bytes = 0
        self.backoff: list[tuple[float, str]] = []
        self.backoff_set: set[str] = set()
        self.backoff_n: dict[str, int] = {}
        self.paused_reason: str | None = None
        self.paused_until = 0.0
        self.pause_delay = retry_min
        self.pause_gen = 0
        self._refused_delay = retry_min
        self._tid = 0
        self._rid = 0
        self._m_rid: int | None = None
        self._m_acc: dict[str, Any] = {}
        self._m_done = False

    # ---- the sync

    def reset(self) -> None:
        """Forget the transfers, queue, retries and pause of the last sync."""
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

    def request_manifest(self) -> FileManifestRequest:
        self._rid = (self._rid % ID_MAX) + 1
        self._m_rid, self._m_acc, self._m_done = self._rid, {}, False
        return FileManifestRequest(request_id=self._rid)

    @property
    def manifest_received(self) -> bool:
        """The last frame of the manifest asked for by ``request_manifest`` arrived."""
        return self._m_done

    def adopt_manifest(self) -> None:
        """Take the received manifest as the peer's state: confirm what it holds of ours
        (``Agreed``), say what differs (``Pending``) and queue it."""
        self.peer, self._m_acc = self._m_acc, {}
        sends, deletes = plan(self.local, self.peer)
        for p, e in self.local.items():
            q = self.peer.get(p)
            if q is not None and q.version_seq != 0 and q.digest == e.digest \
                    and q.size == e.size and e.synced != e.digest:
                self._do(Agreed(p, e.digest))
        self._do(Pending(frozenset(sends) | frozenset(deletes)))
        for p in deletes + sends:
            self.enqueue(p)
        self.manifest_ok = True
        self._refused_delay = self.retry_min
        self._do(Log("debug", "file_manifest", f"peer manifest: {len(self.peer)} files; to send "
                     f"{len(sends)}, to delete {len(deletes)}"))

    def refused_wait(self) -> float:
        """How long to wait before the next sync after a refusal (doubles each time, starts
        over once a manifest is adopted)."""
        delay = self._refused_delay
        self._refused_delay = min(self.retry_max, delay * 2)
        return delay

    # ---- the queue

    def enqueue(self, path: str) -> None:
        if path not in self.queued:
            self.queued.add(path)
            self.queue.append(path)

    def differs(self, path: str) -> bool:
        """The peer's view of ``path`` is not our local state."""
        e = self.local.get(path)
        q = self.peer.get(path)
        if e is None:  # deleted here: delete there, unless it is the peer's own (see plan())
            return q is not None and q.version_seq != 0
        return q is None or q.digest != e.digest or q.size != e.size or q.version_seq == 0

    def retry_later(self, path: str, delay: float, now: float) -> None:
        if path not in self.backoff_set:
            self.backoff_set.add(path)
            heapq.heappush(self.backoff, (now + delay, path))

    def next_path(self, now: float) -> str | None:
        """The next path to send, None while paused, while the window is full, or when
        nothing is due."""
        while self.backoff and self.backoff[0][0] <= now:
            _, p = heapq.heappop(self.backoff)
            self.backoff_set.discard(p)
            self.enqueue(p)
        if self.paused_until > now:
            return None
        if self.inflight and (len(self.inflight) >= self.max_inflight_files
                              or self.inflight_bytes >= self.max_inflight_bytes):
            return None
        while self.queue:
            p = self.queue.popleft()
            self.queued.discard(p)
            if p in self.inflight_paths or p in self.backoff_set:
                continue
            if not self.differs(p):
                self._do(Settled(p))
                continue
            return p
        return None

    def next_deadline(self, now: float) -> float:
        """When ``next_path`` may have something again without any message or change."""
        t = math.inf
        if self.backoff:
            t = self.backoff[0][0]
        if self.paused_until > now:
            t = min(t, self.paused_until)
        return t

    # ---- transfers

    def how(self, path: str) -> str:
        """``delete`` (gone here), ``large`` (resumable, or the peer's identical unconfirmed
        copy to confirm without data) or ``small`` (pipelined, read at once)."""
        e = self.local.get(path)
        if e is None:
            return "delete"
        q = self.peer.get(path)
        confirm = q is not None and q.digest == e.digest and q.size == e.size
        return "large" if e.size >= self.resume_threshold or confirm else "small"

    def _register(self, path: str, kind: str, e: IndexEntry | None, nbytes: int,
                  wait_offer: bool, version: tuple[int, int] | None = None) -> Outgoing:
        self._tid = (self._tid % ID_MAX) + 1
        vt, vs = version if version is not None else (e.version_term, e.version_seq)
        tr = Outgoing(self._tid, path, kind, e.size if e else 0, e.digest if e else None, vt, vs,
                      nbytes, self.pause_gen, wait_offer)
        self.inflight[tr.tid] = tr
        self.inflight_paths[path] = tr.tid
        self.inflight_bytes += nbytes
        return tr

    def delete(self, path: str, version: tuple[int, int]) -> FileDelete:
        tr = self._register(path, "delete", None, 0, False, version)
        return FileDelete(transfer_id=tr.tid, path=path, version_term=tr.version_term,
                          version_seq=tr.version_seq)

    def _begin(self, tr: Outgoing) -> FileBegin:
        return FileBegin(transfer_id=tr.tid, path=tr.path, size=tr.size, digest=tr.digest,
                         version_term=tr.version_term, version_seq=tr.version_seq,
                         wait_offer=tr.wait_offer)

    def send_small(self, path: str, e: IndexEntry, data: bytes) -> list:
        """The messages carrying ``data`` (the content ``e`` just read), none if the peer
        already has it."""
        if not self.differs(path):
            self._do(Settled(path))
            return []
        tr = self._register(path, "send", e, len(data), False)
        out: list = [self._begin(tr)]
        view = memoryview(data)
        for off in range(0, len(data), self.chunk_size):
            out.append(FileChunk(transfer_id=tr.tid, offset=off,
                                 data=bytes(view[off:off + self.chunk_size])))
        out.append(FileEnd(transfer_id=tr.tid))
        return out

    def begin_large(self, path: str, e: IndexEntry) -> tuple[Outgoing, FileBegin] | None:
        """Start a transfer that waits for the receiver's offer (``answered``, then
        ``start_stream``); None if the peer already has the content."""
        if not self.differs(path):
            self._do(Settled(path))
            return None
        tr = self._register(path, "send", e, e.size, True)
        return tr, self._begin(tr)

    def start_stream(self, tr: Outgoing) -> int | None:
        """The offset to stream ``tr`` from, None if it was answered by an ack instead."""
        if tr.offset is None:
            return None
        if tr.tid in self.inflight:  # only what is left counts against the window
            left = max(0, tr.size - tr.offset)
            self.inflight_bytes -= tr.nbytes - left
            tr.nbytes = left
        return tr.offset

    def in_flight(self, tr: Outgoing) -> bool:
        return tr.tid in self.inflight

    def next_read(self, tr: Outgoing) -> tuple[int, int] | None:
        """(offset, length) of the next chunk of ``tr`` to read, None when all was sent."""
        if tr.offset is None or tr.offset >= tr.size:
            return None
        return tr.offset, min(self.chunk_size, tr.size - tr.offset)

    def chunk(self, tr: Outgoing, data: bytes) -> FileChunk:
        msg = FileChunk(transfer_id=tr.tid, offset=tr.offset, data=data)
        tr.offset += len(data)
        return msg

    def end(self, tr: Outgoing) -> FileEnd:
        return FileEnd(transfer_id=tr.tid)

    # ---- the peer's messages

    def receive(self, msg, now: float) -> None:
        if isinstance(msg, FileAck):
            self._on_ack(msg, now)
        elif isinstance(msg, FileOffer):
            tr = self.inflight.get(msg.transfer_id)
            if tr is not None and tr.wait_offer and not tr.answered:
                tr.offset, tr.answered = msg.offset, True
        elif isinstance(msg, FileManifest):
            if msg.request_id != self._m_rid or self._m_done:
                return
            for ent in msg.entries:
                if self.paths.error(ent.path) is None:
                    self._m_acc[ent.path] = ent
            if msg.last:
                self._m_done = True

    def _on_ack(self, msg: FileAck, now: float) -> None:
        if not msg.ok and (msg.error == RECEIVER_ACTIVE or msg.path == MANIFEST_PATH):
            if not self.refused:
                self._do(Log("info", "file_refused", "the peer refuses files: it is active"))
            self.refused = True
            if msg.path == MANIFEST_PATH:  # answers a FileManifestRequest, not a transfer
                return
        tr = self.inflight.pop(msg.transfer_id, None)
        if tr is None:
            return
        if self.inflight_paths.get(tr.path) == tr.tid:
            del self.inflight_paths[tr.path]
        self.inflight_bytes -= tr.nbytes
        tr.answered = True  # an offer still awaited will not come: offset stays None
        path = tr.path
        if msg.ok:
            if tr.kind == "send":
                self.peer[path] = FileEntry(path=path, size=tr.size, digest=tr.digest,
                                            version_term=tr.version_term,
                                            version_seq=tr.version_seq)
                self._do(Count("sent"))
                self._do(Agreed(path, tr.digest))
            else:
                self.peer.pop(path, None)
                self._do(Count("deleted_sent"))
                self._do(Agreed(path, None))
            self.backoff_n.pop(path, None)
            if self.paused_reason is not None:
                self.paused_reason = None
                self.pause_delay = self.retry_min
                self._do(Log("info", "file_unpaused", "the peer has space again: sending files"))
            if self.differs(path):
                self.enqueue(path)
            else:
                self._do(Settled(path))
        elif msg.error == RECEIVER_ACTIVE:
            pass  # the shell syncs again
        elif msg.error == DISK_FULL:
            if tr.pause_gen == self.pause_gen:  # the first answer since the last pause
                self.pause_gen += 1
                if self.paused_reason is None:
                    self.paused_reason = DISK_FULL
                    self.pause_delay = self.retry_min
                    self._do(Log("error", "file_paused", f"the peer's disk is full (at {path}): "
                                 "file replication paused, retrying", {"path": path}))
                else:
                    self.pause_delay = min(self.retry_max, self.pause_delay * 2)
                self.paused_until = now + self.pause_delay
            self.enqueue(path)
        else:
            n = self.backoff_n.get(path, 0) + 1
            self.backoff_n[path] = n
            delay = min(self.retry_max, self.retry_min * 2 ** (n - 1))
            self._do(Error(f"the peer could not take {path}: {msg.error} (retry in {delay:.1f} s)",
                           {"path": path, "error": msg.error}))
            self.retry_later(path, delay, now)


# ============================================================================ receiver


@dataclass(eq=False)
class Incoming:
    """The transfer the receiver has open.  ``mode``: ``mem`` (gathered in ``buf``), ``file``
    (written to the shell's temp file ``handle``) or ``have`` (the target already holds the
    content: nothing to write)."""
    tid: int
    path: str
    size: int
    digest: bytes
    version_term: int
    version_seq: int
    wait_offer: bool
    mode: str = "mem"
    buf: bytearray | None = None
    offset: int = 0
    resumable: bool = False
    resumed_from: int = 0
    handle: Any = None  # the shell's temp file, if any


class ReceiverSession(_Actions):
    """The receiver's side of one connection.  ``receive(msg, receiving=...)`` with whether
    this node takes files now; then the shell carries out the actions, reporting ``Open`` with
    ``opened``/``already_have``, ``Commit`` with ``committed``, ``Remove`` with ``removed``,
    ``ListManifest`` with ``manifest`` and any failure with ``fail``."""

    def __init__(self, paths: ReplicatedPaths, *, resume_threshold: int, manifest_budget: int):
        super().__init__()
        self.paths = paths
        self.resume_threshold = resume_threshold
        self.manifest_budget = manifest_budget
        self.cur: Incoming | None = None

    def receive(self, msg, *, receiving: bool) -> None:
        if isinstance(msg, FileChunk):
            self._chunk(msg, receiving)
        elif isinstance(msg, FileEnd):
            self._end(msg, receiving)
        else:
            self.abort()  # any other message ends an open transfer
            if isinstance(msg, FileManifestRequest):
                if receiving:
                    self._do(ListManifest(msg.request_id))
                else:
                    self._ack(msg.request_id, MANIFEST_PATH, False, RECEIVER_ACTIVE)
            elif isinstance(msg, FileBegin):
                self._begin(msg, receiving)
            elif isinstance(msg, FileDelete):
                if not self._refused(msg, "a deletion", receiving):
                    self._do(Remove(msg))
            elif receiving:
                self._do(Log("debug", "file_unexpected", f"ignored {type(msg).__name__}"))

    def abort(self) -> None:
        """Drop the open transfer (lost connection, next message): a resumable temp file is
        kept for the next attempt."""
        inc, self.cur = self.cur, None
        if inc is not None:
            self._discard(inc, keep=True)

    def _discard(self, inc: Incoming, keep: bool) -> None:
        if inc.handle is not None:
            self._do(Discard(inc, keep and inc.resumable))

    def _ack(self, tid: int, path: str, ok: bool, error: str = "") -> None:
        try:
            check_path(path)
        except ValueError:
            path = INVALID_PATH  # cannot come from the real wire; keeps the ack sendable
        self._do(Send(FileAck(transfer_id=tid, path=path, ok=ok, error=clip(error))))

    def fail(self, inc: Incoming, error: str, keep: bool | None = None) -> None:
        """Abort the transfer with an error ack.  Its partial temp file (if resumable) is
        kept when the disk is full (or ``keep``), removed otherwise."""
        if self.cur is inc:
            self.cur = None
        self._discard(inc, keep=error == DISK_FULL if keep is None else keep)
        if error == DISK_FULL:
            self._do(RxPaused(inc.path))
        elif error != RECEIVER_ACTIVE:
            self._do(Error(f"receiving {inc.path} failed: {error}", {"path": inc.path}))
        self._ack(inc.tid, inc.path, False, error)

    def _refused(self, msg: FileBegin | FileDelete, what: str, receiving: bool) -> bool:
        """Refuse (and acknowledge as failed) a transfer this node may not take now."""
        if not receiving:
            self._ack(msg.transfer_id, msg.path, False, RECEIVER_ACTIVE)
            return True
        err = self.paths.error(msg.path)
        if err:
            self._do(Error(f"refused {what} from the peer: {err}", {"path": msg.path}))
            self._ack(msg.transfer_id, msg.path, False, err)
            return True
        return False

    def _begin(self, msg: FileBegin, receiving: bool) -> None:
        if self._refused(msg, "a file", receiving):
            return
        inc = Incoming(msg.transfer_id, msg.path, msg.size, msg.digest, msg.version_term,
                       msg.version_seq, msg.wait_offer)
        if not msg.wait_offer and msg.size <= self.resume_threshold:
            inc.buf = bytearray()
            self.cur = inc
        else:
            self._do(Open(inc))

    def opened(self, inc: Incoming, *, handle: Any, offset: int, resumable: bool) -> None:
        """The shell opened ``inc``'s temp file ``handle``, holding ``offset`` bytes already
        (a resumable partial)."""
        inc.mode, inc.handle, inc.offset, inc.resumable = "file", handle, offset, resumable
        if resumable:
            inc.resumed_from = offset
        self._opened(inc)

    def already_have(self, inc: Incoming) -> None:
        """The target already holds ``inc``'s content: no data is needed."""
        inc.mode, inc.offset = "have", inc.size
        self._opened(inc)

    def _opened(self, inc: Incoming) -> None:
        self.cur = inc
        if inc.wait_offer:
            if inc.mode == "file" and inc.offset > 0:
                self._do(Count("resumed"))
                self._do(Log("info", "file_resumed", f"{inc.path}: resuming at byte {inc.offset} "
                             f"of {inc.size}", {"path": inc.path, "offset": inc.offset,
                                                "size": inc.size}))
            self._do(Send(FileOffer(transfer_id=inc.tid, offset=inc.offset)))

    def _chunk(self, msg: FileChunk, receiving: bool) -> None:
        inc = self.cur
        if inc is None or msg.transfer_id != inc.tid:
            return  # refused, failed or stale transfer: its ack is already sent
        if not receiving:
            self.fail(inc, RECEIVER_ACTIVE)
            return
        data = msg.data
        if msg.offset != inc.offset or inc.offset + len(data) > inc.size or inc.mode == "have":
            self.fail(inc, f"unexpected chunk at offset {msg.offset} (expected {inc.offset} of "
                           f"{inc.size})")
            return
        if inc.mode == "mem":
            inc.buf += data
        else:
            self._do(Write(inc, data))  # a failed write is reported with fail()
        inc.offset += len(data)

    def _end(self, msg: FileEnd, receiving: bool) -> None:
        inc = self.cur
        if inc is None or msg.transfer_id != inc.tid:
            return
        if not receiving:
            self.fail(inc, RECEIVER_ACTIVE)
            return
        if inc.offset != inc.size:
            self.fail(inc, f"size mismatch: got {inc.offset} of {inc.size} bytes")
            return
        self._do(Commit(inc))

    def committed(self, inc: Incoming) -> None:
        """``inc`` is installed (and recorded): acknowledge it."""
        if self.cur is inc:
            self.cur = None
        self._do(RxOk())
        self._ack(inc.tid, inc.path, True)

    def removed(self, msg: FileDelete, error: str | None) -> None:
        """The deletion ``msg`` was carried out (``error``: it failed)."""
        if error is not None:
            self._do(Error(f"deleting {msg.path} failed: {error}", {"path": msg.path}))
            self._ack(msg.transfer_id, msg.path, False, error)
        else:
            self._ack(msg.transfer_id, msg.path, True)

    def manifest(self, request_id: int, local: Mapping[str, IndexEntry]) -> None:
        """Answer a manifest request with ``local`` (just scanned), in as many frames as the
        frame size needs.  An entry whose content the peer did not give us carries (0, 0)."""
        batch: list = []
        used = 0
        for p in sorted(local):
            e = local[p]
            vt, vs = (e.version_term, e.version_seq) if e.confirmed else (0, 0)
            ent = FileEntry(path=p, size=e.size, digest=e.digest, version_term=vt, version_seq=vs)
            cost = FILE_ENTRY_OVERHEAD + len(p.encode("utf-8"))
            if batch and used + cost > self.manifest_budget:
                self._do(Send(FileManifest(request_id=request_id, last=False,
                                           entries=tuple(batch))))
                batch, used = [], 0
            batch.append(ent)
            used += cost
        self._do(Send(FileManifest(request_id=request_id, last=True, entries=tuple(batch))))


__all__ = [
    "DISK_FULL", "MANIFEST_PATH", "RECEIVER_ACTIVE", "Agreed", "Commit", "Count", "Discard",
    "Error", "Incoming", "ListManifest", "Log", "Open", "Outgoing", "Pending", "ReceiverSession",
    "Remove", "RxOk", "RxPaused", "Send", "SenderSession", "Settled", "Write", "clip",
]
