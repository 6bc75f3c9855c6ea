"""A serial line both nodes share through a data splitter, while the pair is split.  Pure:
time comes in as ``now``; nothing here reads a clock, a port or a file.

A data splitter merges what the nodes send back onto the switch's one receive line.  Two
active nodes writing at once interleave their bytes and the switch reads garbage (or a wrong
lamp).  While the node link works the pair never has two active nodes for long, and the
driver's own check (transmit only while active in the job's term) is enough.  In a partition
both nodes may be active for as long as it lasts, so on a **shared line** the rule is:

* the **primary** always transmits (when active);
* the **secondary** transmits only while its node manager reports the peer reachable; while
  it does not, every lamp command is **held**: not written, its sender told so (the ledger
  keeps the lamp unconfirmed), the newest state per mailbox kept in a bounded queue and
  counted;
* when the peer is reachable again the secondary drops the held lamps (the heal rule makes it
  step down; if it stays active, a resync sends what its ledger left unconfirmed) and the
  primary, if active, runs a **full** lamp resync: every lamp is set again from the store.

:class:`SharedLine` holds this state; :meth:`SharedLine.may_transmit` is asked right before
a command is written, :meth:`SharedLine.peer` gets the node manager's view and says what to
do (:class:`Heal`).  A line only one node drives (``shared_line = false``) or a link built
without a role (tests, benches, the lab's single link) transmits as before.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from telephony.core.terms import Role

T = TypeVar("T")

#: held lamps kept at most (one per mailbox); beyond it the oldest is dropped and counted
MAX_HELD = 4096


@dataclass(frozen=True)
class Heal:
    """What the driver does when the node manager's view of the peer changes.

    ``resync``: ask the messaging core for a lamp resync now; ``full``: every lamp, not only
    the differences (the primary after a partition); ``dropped``: held lamps thrown away (the
    secondary's); ``held_for``: seconds the line was held (None: it was never held)."""

    resync: bool
    full: bool
    dropped: int
    held_for: float | None


class SharedLine(Generic[T]):
    """Whether this node may put a lamp command on a shared line now, and the lamps it held.

    ``role`` None (a link built without one) or ``shared`` False: the rule is off and
    :meth:`may_transmit` is always True.  ``peer_reachable`` starts as None (not told yet),
    which the secondary treats as unreachable: the node manager tells the service right
    after its hello, before it can be activated.  ``limit`` bounds the held queue."""

    def __init__(self, *, role: Role | None, shared: bool = True, limit: int = MAX_HELD) -> None:
        if role is not None and not isinstance(role, Role):
            raise ValueError(f"role must be a Role or None, not {role!r}")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"limit must be an integer >= 1, not {limit!r}")
        self.role = role
        self.shared = bool(shared)
        self.limit = limit
        self.peer_reachable: bool | None = None
        self._held: dict[str, T] = {}  # mailbox -> newest held item, oldest first
        self._since: float | None = None  # when the first lamp of this hold was held
        #: lamps held (every command not written because of the rule), held lamps replaced
        #: by a newer one for the same mailbox, dropped because the queue was full, and
        #: dropped when the peer came back
        self.counters: dict[str, int] = {"held": 0, "replaced": 0, "overflow": 0, "discarded": 0}

    @property
    def applies(self) -> bool:
        """The rule holds this node's lamps while the peer is unreachable (a secondary on a
        shared line)."""
        return self.shared and self.role is Role.SECONDARY

    def may_transmit(self) -> bool:
        """May a lamp command be written now?  (The driver also checks the term.)"""
        return not self.applies or self.peer_reachable is True

    def hold(self, mailbox: str, item: T, now: float) -> bool:
        """Keep ``item`` as the newest lamp of ``mailbox`` (a held one for the same mailbox is
        replaced).  Returns True when this is the first lamp of a new hold (the driver says
        so in the event log once)."""
        first = self._since is None
        if first:
            self._since = now
        self.counters["held"] += 1
        if mailbox in self._held:
            del self._held[mailbox]  # re-inserted last: the newest goes to the back
            self.counters["replaced"] += 1
        elif len(self._held) >= self.limit:
            del self._held[next(iter(self._held))]
            self.counters["overflow"] += 1
        self._held[mailbox] = item
        return first

    def __len__(self) -> int:
        """Lamps held now (one per mailbox)."""
        return len(self._held)

    def held(self) -> dict[str, T]:
        """The held lamps, mailbox -> newest item, oldest first (a copy)."""
        return dict(self._held)

    def peer(self, reachable: bool, *, active: bool, now: float) -> Heal | None:
        """The node manager's view of the peer.  Returns what to do, or None (no change, or
        nothing to do).  ``active``: the service may transmit in some term right now."""
        if not isinstance(reachable, bool):
            raise ValueError(f"reachable must be true or false, not {reachable!r}")
        before, self.peer_reachable = self.peer_reachable, reachable
        if not (before is False and reachable):  # only "unreachable -> reachable" is a heal
            return None
        held_for = None if self._since is None else max(0.0, now - self._since)
        dropped = len(self._held)
        self.counters["discarded"] += dropped
        self._held.clear()
        self._since = None
        if not self.shared or self.role is None or not active:
            return Heal(False, False, dropped, held_for) if dropped or held_for is not None else None
        if self.role is Role.PRIMARY:
            return Heal(True, True, dropped, held_for)
        # a secondary still active after the heal (the primary is not serving): what it held
        # is unconfirmed in its ledger, and an ordinary resync sends it
        return Heal(True, False, dropped, held_for)
