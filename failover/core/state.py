"""Shared vocabulary of the supervisor: roles, states, modes.  Pure: no I/O."""
from __future__ import annotations

from enum import IntEnum

from telephony.core.terms import Role, term_parity  # the pair's roles live with the terms


class State(IntEnum):
    STARTING = 0
    INACTIVE = 1
    ACTIVATING = 2
    ACTIVE = 3
    DRAINING = 4
    STOPPED = 5

    @property
    def label(self) -> str:
        return self.name.lower()




#: the states in which a node is (or is becoming) the one that answers
ACTIVE_STATES = (State.ACTIVATING, State.ACTIVE)

class ServiceHealth(IntEnum):
    STOPPED = 0
    STARTING = 1
    RUNNING = 2
    FAILED = 3  # failed repeatedly: backing off, the next start is scheduled (never given up)

    @property
    def label(self) -> str:
        return self.name.lower()


class Mode(IntEnum):
    AUTOMATIC = 0
    MANUAL = 1

    @property
    def label(self) -> str:
        return self.name.lower()


class FailbackType(IntEnum):
    MANUAL = 0
    SCHEDULED = 1


MIN_STARTUP_WAIT = 1.0  # seconds: the default start-up wait is never shorter


class Timing:
    """Derived failover timing, shared by the configuration and the supervisor's settings.
    Needs ``ping_interval``, ``missed_pings``, ``lease`` and ``startup_wait`` (None = derived)."""

    ping_interval: float
    missed_pings: int
    lease: float | None
    startup_wait: float | None

    @property
    def peer_timeout(self) -> float:
        """Silence after which the peer counts as gone."""
        return self.ping_interval * self.missed_pings

    @property
    def lease_s(self) -> float:
        return self.lease if self.lease is not None else self.peer_timeout - self.ping_interval

    @property
    def startup_wait_s(self) -> float:
        if self.startup_wait is not None:
            return self.startup_wait
        # long enough for the link to connect and the service to start, however short the pings
        return max(self.peer_timeout, MIN_STARTUP_WAIT)


def next_term(role: Role, highest_seen: int) -> int:
    """Smallest term of ``role``'s parity strictly above ``highest_seen``."""
    t = highest_seen + 1
    if t % 2 != term_parity(role):
        t += 1
    return t
