"""The SMDI link's decisions, without I/O: which records are ours, which record belongs to a
ringing line, when the next MWI command may go on the wire, which command an MWI failure
record is about.  Pure: time comes in as ``now`` (seconds on any monotonic clock); nothing
here reads a clock, a port or a file.

* :class:`RecordMatcher` keeps this node's call records per terminal until the call rings on
  that line (or ``record_wait`` runs out); records for other terminals are the peer's.
* :class:`LinePacer` is the line-rate clock: a command may start when the previous one has
  left the wire (``bytes × bits_per_char / baud``) plus an optional gap.  A pty ignores the
  baud rate, so without this a resync would flood the switch's receive buffer.
* :class:`FailureMatcher` remembers the commands sent per station so that an ``MWI… INV`` /
  ``BLK`` record names the job that failed.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from .codec import CallRecord, MwiFailure

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
