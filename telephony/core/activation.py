"""The messaging service's activation lease.  Pure: time is a parameter (``now``, seconds on
any monotonic clock), nothing here reads a clock or does I/O.

The node manager activates the service in a **term** (a fencing token) for a **lease**; it
keeps renewing the lease while it stays active.  If the renewals stop (the node manager died,
froze or lost the socket) the lease runs out and the service stops answering on its own, before
the peer's takeover deadline.

States (the ``state`` field of the ``health`` message)::

    inactive --activate(T)--> active --deactivate(T, drain)--> draining --drained()--> inactive
                                 |                   \\--(drain=false)--------------> inactive
                                 +--lease ran out (on_timer)--> fenced --activate(T')--> active

Rules:

* Terms only move forward.  A command whose term is lower than the highest term seen is
  refused (:class:`StaleActivationTerm`, a :class:`~telephony.core.terms.StaleTerm`) and
  changes nothing.
* ``activate`` needs a term above every term seen, except that repeating the activation of the
  current, still-valid term just extends its lease (idempotent).  A term that has ended here
  (deactivated or fenced) is never answered in again.
* ``renew`` only extends the lease of the active term while that lease is still running; a
  renewal that arrives after the deadline is refused: the lease has lapsed and only a new
  activation (new term) brings the service back.  Exception: a renewal whose deadline is
  *absolute* (``absolute=True``: the node manager stated when its lease ends on the host's
  monotonic clock, and that moment is still ahead) is accepted as long as the term is still
  active here, i.e. the lapse has not been acted on by :meth:`on_timer`.  A service that was
  starved of CPU then reads the renewals sent in time instead of fencing on them, and it can
  never answer past the node manager's own deadline.
* :meth:`may_answer` is the one gate every new call and MWI job goes through.  It checks the
  deadline itself, so the service never answers after the lease lapsed even if the timer that
  reports the fence (:meth:`on_timer`) runs late.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from telephony.core.terms import StaleTerm


class ActivationState(StrEnum):
    INACTIVE = "inactive"
    ACTIVE = "active"
    DRAINING = "draining"
    FENCED = "fenced"


class ActivationError(Exception):
    """A command was refused; the activation is unchanged."""


class StaleActivationTerm(ActivationError, StaleTerm):
    """A command carried a term lower than the highest term seen (an ActivationError and a
    :class:`~telephony.core.terms.StaleTerm`)."""


@dataclass(frozen=True)
class Fenced:
    """The lease of ``term`` ran out without a renewal; the service stopped answering."""

    term: int
    reason: str


class Activation:
    """Activation state of one messaging-service process (a new process starts inactive and
    has seen no term)."""

    def __init__(self) -> None:
        self.state = ActivationState.INACTIVE
        self.term: int | None = None  # the term of the current or last activation/deactivation
        self.highest: int | None = None  # highest term accepted so far
        self._expiry: float | None = None  # lease deadline while ACTIVE
        self._lease: float | None = None

    def __repr__(self) -> str:
        return (f"<Activation {self.state} term={self.term} highest={self.highest} "
                f"expiry={self._expiry}>")

    # ------------------------------------------------------------------ commands

    def activate(self, term: int, lease: float, now: float) -> None:
        """Answer calls in ``term`` until ``now + lease``.  Raises ActivationError (no change)."""
        self._check_lease(lease)
        self._check_not_stale("activate", term)
        if self.highest is not None and term == self.highest:
            if self.state is ActivationState.ACTIVE and self.term == term and self._running(now):
                self._extend(lease, now)  # a repeated activation of the live term
                return
            raise ActivationError(f"term {term} has already ended on this service "
                                  f"(state {self.state}); activation needs a newer term")
        self.state = ActivationState.ACTIVE
        self.term = self.highest = term
        self._extend(lease, now)

    def renew(self, term: int, lease: float, now: float, *, absolute: bool = False) -> None:
        """Extend the lease of the active term to ``now + lease``.  Raises ActivationError."""
        self._check_lease(lease)
        self._check_not_stale("renew", term)
        if self.state is not ActivationState.ACTIVE or self.term != term:
            where = f"active in term {self.term}" if self.state is ActivationState.ACTIVE \
                else f"{self.state}"
            raise ActivationError(f"renew for term {term} refused: the service is {where}")
        if not self._running(now) and not absolute:
            assert self._expiry is not None
            raise ActivationError(f"renew for term {term} refused: its lease ran out "
                                  f"{now - self._expiry:.3f}s ago; a new activation is needed")
        self._extend(lease, now)

    def deactivate(self, term: int, drain: bool, now: float) -> None:
        """Stop taking new calls now.  With ``drain`` the state is DRAINING until the driver
        reports :meth:`drained` (calls in progress finish); without it, INACTIVE at once (the
        driver hangs the calls up).  Raises StaleActivationTerm (no change)."""
        self._check_not_stale("deactivate", term)
        self.term = self.highest = term
        self._expiry = self._lease = None
        self.state = ActivationState.DRAINING if drain else ActivationState.INACTIVE

    def drained(self) -> None:
        """The last call in progress ended (or there was none): DRAINING -> INACTIVE."""
        if self.state is ActivationState.DRAINING:
            self.state = ActivationState.INACTIVE

    def stop(self) -> None:
        """Stop answering at once, whatever the term (the node manager is gone)."""
        if self.state is ActivationState.ACTIVE:
            self.state = ActivationState.INACTIVE
        self._expiry = self._lease = None

    # ------------------------------------------------------------------ time

    def may_answer(self, now: float) -> bool:
        """True only while active in the highest term seen and before the lease deadline."""
        return (self.state is ActivationState.ACTIVE and self.term == self.highest
                and self._running(now))

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` has something to do (the lease deadline), or None."""
        return self._expiry if self.state is ActivationState.ACTIVE else None

    def on_timer(self, now: float) -> Fenced | None:
        """Fence if the lease has run out.  Returns what to report, once."""
        if self.state is not ActivationState.ACTIVE or self._running(now):
            return None
        assert self.term is not None and self._expiry is not None and self._lease is not None
        late = now - self._expiry
        reason = (f"lease of {self._lease:.3f}s for term {self.term} ran out without a renewal"
                  + (f" ({late:.3f}s ago)" if late >= 0.0005 else ""))
        self.state = ActivationState.FENCED
        self._expiry = self._lease = None
        return Fenced(self.term, reason)

    # ------------------------------------------------------------------ helpers

    def _running(self, now: float) -> bool:
        return self._expiry is not None and now < self._expiry

    def _extend(self, lease: float, now: float) -> None:
        self._expiry = now + lease
        self._lease = lease

    def _check_not_stale(self, op: str, term: int) -> None:
        if isinstance(term, bool) or not isinstance(term, int) or term < 0:
            raise ActivationError(f"{op}: term must be a non-negative integer, got {term!r}")
        if self.highest is not None and term < self.highest:
            raise StaleActivationTerm(f"{op} for stale term {term} refused: term {self.highest} "
                            "has been seen; terms only move forward")

    @staticmethod
    def _check_lease(lease: float) -> None:
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not lease > 0 \
                or lease == float("inf"):
            raise ActivationError(f"lease must be a positive number of seconds, got {lease!r}")
