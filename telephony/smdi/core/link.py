"""The SMDI link's decisions, without I/O: which records are ours, which record belongs to a
ringing line, when the next MWI command may go on the wire, which command an MWI failure
record is about.  Pure: time comes in as ``now`` (seconds on any monotonic clock); nothing
here reads a clock, a port or a file.

* :class:`RecordMatcher` keeps this node's call records per terminal until the call rings on
  that line (or ``record_wait`` runs out); records for other terminals are the peer's.
* :class:`LinePacer` is the line-rate clock: a command may start when the previous one has
  left the wire (``bytes × bits_per_char / baud``) plus an optional gap.  A pty ignores the
  baud rate, so without this a resync would flood the switch's receive buffer.
* :class:`LampQueue` decides which lamp command goes next: two lanes, **fresh** (a message
  just left or heard, a retry) before **bulk** (a resync), first in first out within a lane;
  a newer command for the same key (station and term) takes over the queued one, and a fresh
  one lifts a queued bulk one into the fresh lane (no stale lamp after a fresh one).
* :class:`FailureMatcher` remembers the commands sent per station so that an ``MWI… INV`` /
  ``BLK`` record names the job that failed.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from telephony.smdi.core.codec import CallRecord, MwiFailure

T = TypeVar("T")

#: Records kept per terminal: a line cannot have more than a few calls queued for it.
MAX_PER_TERMINAL = 8


@dataclass(frozen=True)
class Queued:
    record: CallRecord
    port: str
    expires: float


class RecordMatcher:
    """Call records of this node's lines, waiting for their calls.

    ``ports`` maps a terminal number to this node's port name.  :meth:`add` files a record
    under its terminal (oldest first; at most :data:`MAX_PER_TERMINAL` per terminal, the
    oldest is dropped first); :meth:`take` hands the oldest live record of a port to the call
    ringing there.  Expired records are dropped on every call and returned by :meth:`expire`.
    """

    def __init__(self, ports: dict[int, str], record_wait: float) -> None:
        if not record_wait > 0:
            raise ValueError(f"record_wait must be > 0, not {record_wait!r}")
        self.ports = dict(ports)
        self._by_port = {p: t for t, p in self.ports.items()}
        self.record_wait = float(record_wait)
        self._queues: dict[int, deque[Queued]] = {}
        self.expired = 0
        self.dropped = 0

    def add(self, record: CallRecord, now: float) -> Queued | None:
        """File ``record``; None if its terminal is not one of ours (the peer's call)."""
        port = self.ports.get(record.terminal)
        if port is None:
            return None
        self.expire(now)
        q = self._queues.setdefault(record.terminal, deque())
        if len(q) >= MAX_PER_TERMINAL:
            q.popleft()
            self.dropped += 1
        item = Queued(record, port, now + self.record_wait)
        q.append(item)
        return item

    def take(self, port: str, now: float) -> CallRecord | None:
        """The oldest unexpired record for ``port``'s terminal, removed; None if there is none."""
        self.expire(now)
        terminal = self._by_port.get(port)
        q = self._queues.get(terminal) if terminal is not None else None
        if not q:
            return None
        return q.popleft().record

    def expire(self, now: float) -> list[CallRecord]:
        gone: list[CallRecord] = []
        for terminal, q in list(self._queues.items()):
            while q and q[0].expires <= now:
                gone.append(q.popleft().record)
            if not q:
                del self._queues[terminal]
        self.expired += len(gone)
        return gone

    def pending(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def next_deadline(self) -> float | None:
        return min((q[0].expires for q in self._queues.values() if q), default=None)


class LinePacer:
    """When the next command may start: never faster than ``baud`` (with ``bits_per_char``
    bits per character on the wire), plus ``gap`` seconds between commands."""

    def __init__(self, baud: int, bits_per_char: float, gap: float = 0.0) -> None:
        if not (baud > 0 and bits_per_char > 0 and gap >= 0):
            raise ValueError("baud and bits_per_char must be > 0 and gap >= 0")
        self.char_time = bits_per_char / baud
        self.gap = float(gap)
        self.busy_until = float("-inf")

    def wire_time(self, nbytes: int) -> float:
        return nbytes * self.char_time

    def start_at(self, now: float) -> float:
        """The earliest time the next command may start."""
        return max(now, self.busy_until)

    def sent(self, nbytes: int, at: float) -> float:
        """A command of ``nbytes`` started at ``at`` (the start :meth:`start_at` gave, even if
        the writer woke a little later: the clock must not drift); returns when it has left
        the wire."""
        done = max(at, self.busy_until) + self.wire_time(nbytes)
        self.busy_until = done + self.gap
        return done


class LampEntry(Generic[T]):
    """One queued lamp command.  ``item`` is the newest job for ``key`` (the one whose command
    goes out); ``items`` are every job it stands for, oldest first (their senders all get its
    outcome); ``queued_at`` is when the first of them was queued."""

    __slots__ = ("key", "item", "items", "bulk", "queued_at")

    def __init__(self, key: object, item: T, bulk: bool, queued_at: float) -> None:
        self.key = key
        self.item = item
        self.items: list[T] = [item]
        self.bulk = bulk
        self.queued_at = queued_at

    def __repr__(self) -> str:
        return (f"LampEntry({self.key!r}, {'bulk' if self.bulk else 'fresh'}, "
                f"{len(self.items)} job(s))")


class LampQueue(Generic[T]):
    """The lamp commands waiting for the line, in two lanes (the priority lane).

    The line carries one command at a time, and a command on the wire finishes; the sender
    asks :meth:`take` for the next one only when the line is free (after the
    :class:`LinePacer`'s wait), so a fresh job queued during that wait still goes first.

    * :meth:`add` queues ``item`` under ``key`` (the driver uses ``(station, term)``) in the
      **bulk** lane (a resync) or the **fresh** lane (everything else).  A queued entry with
      the same key takes the new item instead (the newest lamp state wins; the older item's
      sender gets the outcome of the command that is sent): in place when both are in the
      same lane or the new item is bulk, else (a fresh item for a queued bulk entry) the entry
      moves to the end of the fresh lane.
    * :meth:`take` removes and returns the next entry: the oldest fresh one, else the oldest
      bulk one, else None.
    * :meth:`discard` withdraws one item (its sender gave up); an entry left with no item is
      dropped, one left with others sends the newest of those.
    """

    def __init__(self) -> None:
        self._fresh: dict[object, LampEntry[T]] = {}
        self._bulk: dict[object, LampEntry[T]] = {}
        self.superseded = 0  # items that rode on a newer item's command

    def __len__(self) -> int:
        return len(self._fresh) + len(self._bulk)

    def pending(self) -> tuple[int, int]:
        """(fresh, bulk) entries queued."""
        return len(self._fresh), len(self._bulk)

    def add(self, key: object, item: T, *, bulk: bool, now: float) -> LampEntry[T]:
        entry = self._fresh.get(key)
        if entry is None:
            entry = self._bulk.get(key)
            if entry is not None and not bulk:  # fresh over queued bulk: into the fresh lane
                del self._bulk[key]
                entry.bulk = False
                self._fresh[key] = entry
        if entry is None:
            entry = LampEntry(key, item, bulk, now)
            (self._bulk if bulk else self._fresh)[key] = entry
            return entry
        entry.item = item
        entry.items.append(item)
        self.superseded += 1
        return entry

    def take(self) -> LampEntry[T] | None:
        for lane in (self._fresh, self._bulk):
            if lane:
                key = next(iter(lane))
                return lane.pop(key)
        return None

    def discard(self, key: object, item: T) -> bool:
        """Withdraw ``item`` (queued under ``key``); False if it is not queued (sent, or
        being sent)."""
        for lane in (self._fresh, self._bulk):
            entry = lane.get(key)
            if entry is not None and any(i is item for i in entry.items):
                entry.items = [i for i in entry.items if i is not item]
                if not entry.items:
                    del lane[key]
                elif entry.item is item:
                    entry.item = entry.items[-1]
                return True
        return False


class FailureMatcher(Generic[T]):
    """The last command sent per station within ``window`` seconds, for failure records."""

    def __init__(self, window: float, limit: int = 100_000) -> None:
        self.window = float(window)
        self.limit = limit
        self._sent: dict[str, tuple[T, float]] = {}

    def sent(self, station: str, job: T, now: float) -> None:
        self._sent.pop(station, None)
        self._sent[station] = (job, now)
        while len(self._sent) > self.limit:  # oldest first (insertion order)
            self._sent.pop(next(iter(self._sent)))

    def failed(self, failure: MwiFailure, now: float) -> T | None:
        """The job ``failure`` is about, or None (no command for that station lately)."""
        item = self._sent.get(failure.number)
        if item is None or now - item[1] > self.window:
            return None
        del self._sent[failure.number]
        return item[0]

    def expire(self, now: float) -> None:
        for station, (_, at) in list(self._sent.items()):
            if now - at > self.window:
                del self._sent[station]
