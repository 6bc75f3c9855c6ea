"""The event hub: the node's recent event-log records, numbered, for the HTTP API.

The hub listens to the node's :class:`~failover.eventlog.EventLog`.  Every record written
from then on gets a sequence number (1, 2, ...) in a copy ``{"seq": n, **record}`` and goes
into a bounded ring (the oldest fall out).  ``GET /api/v1/events`` reads the ring; the event
stream waits on it with :meth:`EventHub.wait`.

The log may be written from a worker thread (the configuration database's), so the listener
only takes a lock, appends, and asks the Trio loop to wake its waiters through the Trio token
(``run_sync_soon``, the one Trio call that is safe from any thread).  A listener must be quick
and must not raise: nothing here blocks or raises.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from failover.eventlog import EventLog

DEFAULT_SIZE = 2000


class EventHub:
    """Sequence-numbered ring of the records written since the hub was made."""

    def __init__(self, events: "EventLog", size: int = DEFAULT_SIZE, *,
                 token: trio.lowlevel.TrioToken | None = None) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"size must be an integer >= 1, not {size!r}")
        self.events = events
        self.size = size
        #: the Trio run that waits on this hub (made inside it unless given)
        self._token = token if token is not None else trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._ring: deque[dict] = deque(maxlen=size)
        self._seq = 0
        self._wake_pending = False
        self._changed = trio.Event()  # replaced (and the old one set) at every wake-up
        self.closed = False
        events.add_listener(self._on_record)

    # ------------------------------------------------------------------ any thread

    def _on_record(self, record: dict) -> None:
        with self._lock:
            if self.closed:
                return
            self._seq += 1
            self._ring.append({"seq": self._seq, **record})
            if self._wake_pending:
                return  # one wake-up is already on its way; it sees this record too
            self._wake_pending = True
        try:
            self._token.run_sync_soon(self._wake)
        except trio.RunFinishedError:
            pass  # the loop is gone: nobody is waiting any more

    @property
    def last_seq(self) -> int:
        """The newest record's number (0: none yet)."""
        with self._lock:
            return self._seq

    @property
    def first_seq(self) -> int:
        """The oldest record still in the ring (``last_seq + 1`` when it is empty)."""
        with self._lock:
            return self._ring[0]["seq"] if self._ring else self._seq + 1

    def recent(self, after: int = 0, limit: int = 100, *, oldest_first: bool = False) -> list[dict]:
        """The records numbered above ``after``, at most ``limit``, in order.  When more than
        ``limit`` match: the newest ``limit`` of them (the tail, what a page shows), or with
        ``oldest_first`` the oldest (to page forward from ``after`` without a gap)."""
        if limit <= 0:
            return []
        with self._lock:
            if not self._ring or after >= self._seq:
                return []
            first = self._ring[0]["seq"]
            skip = max(0, after + 1 - first)  # seqs in the ring are consecutive
            matching = len(self._ring) - skip
            if oldest_first:
                start, stop = skip, skip + min(limit, matching)
            else:
                start, stop = len(self._ring) - min(limit, matching), len(self._ring)
            return [self._ring[i] for i in range(start, stop)]

    # ------------------------------------------------------------------ the Trio loop

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        old, self._changed = self._changed, trio.Event()
        old.set()

    async def wait(self, after: int) -> None:
        """Return once a record numbered above ``after`` exists (at once if one does), or
        the hub is closed."""
        while True:
            with self._lock:
                if self._seq > after or self.closed:
                    return
            # taken in the same step as the check: a wake-up scheduled after it sets this one
            await self._changed.wait()

    def close(self) -> None:
        """Stop listening; waiters return."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        self.events.remove_listener(self._on_record)
        try:
            self._token.run_sync_soon(self._wake)
        except trio.RunFinishedError:
            pass
