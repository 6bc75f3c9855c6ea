"""Which CallManager of the ordered list a port registers with (docs/sccp.md, "Contract: the
station machine").  Pure: time comes in as ``now``.

The servers are tried in the configured order, the first being the preferred one (the
"primary").  Rules:

* A failed attempt (TCP refused, no RegisterAck in time, RegisterReject, the connection or the
  keepalives lost) moves to the next server, wrapping round after the last.  Each consecutive
  failure doubles the wait before the next attempt: ``backoff_min`` (0.2 s), 0.4, 0.8, ... up to
  ``backoff_max`` (5 s).  A registration resets the wait.
* :meth:`restart` is for CallManager's Reset: the same server again, after the shortest wait.
* Registered on a server other than the first, the port looks at the first one every
  ``probe_interval`` seconds (:meth:`should_probe`; the driver reports what it saw with
  :meth:`probed`).  When it answers, the port goes back to it, but only while the port is
  idle: :meth:`primary_back` with ``idle=False`` keeps the wish (:attr:`rehome_pending`)
  until it is called again with ``idle=True``.  A call is never cut to re-home.
"""
from __future__ import annotations

import math

__all__ = ["Homing"]


def _positive(name: str, value: float) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or value <= 0):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r:.40}")
    return float(value)


class Homing:
    """The choice of CallManager for one port (or for all ports of a node: it holds no
    per-connection state)."""

    def __init__(self, servers: int, *, probe_interval: float, backoff_min: float = 0.2,
                 backoff_max: float = 5.0) -> None:
        if isinstance(servers, bool) or not isinstance(servers, int) or servers < 1:
            raise ValueError(f"servers must be a positive count, got {servers!r:.40}")
        self.servers = servers
        self.probe_interval = _positive("probe_interval", probe_interval)
        self.backoff_min = _positive("backoff_min", backoff_min)
        self.backoff_max = _positive("backoff_max", backoff_max)
        if self.backoff_max < self.backoff_min:
            raise ValueError(f"backoff_max ({backoff_max}) is below backoff_min ({backoff_min})")
        #: index of the server to use now (0 = the first of the list)
        self.current = 0
        #: registered on :attr:`current` (between :meth:`registered` and the next failure)
        self.homed = False
        #: consecutive failures since the last registration
        self.failures = 0
        self._attempt_at = -math.inf
        self._probe_at: float | None = None
        self._rehome = False

    # -- attempts ------------------------------------------------------------------------

    def next_attempt(self, now: float) -> float:
        """When the next connection attempt to :attr:`current` may start (``now`` or later)."""
        return max(now, self._attempt_at)

    def delay(self) -> float:
        """The wait the current run of failures calls for (0 before any failure)."""
        if self.failures == 0:
            return 0.0
        return min(self.backoff_max, self.backoff_min * 2 ** min(self.failures - 1, 64))

    def failed(self, now: float) -> int:
        """The attempt on :attr:`current` failed, or the port lost it: move to the next server
        (wrapping) and wait :meth:`delay`.  Returns the new :attr:`current`."""
        self.failures += 1
        self.homed = False
        self._probe_at = None
        self._rehome = False
        self.current = (self.current + 1) % self.servers
        self._attempt_at = now + self.delay()
        return self.current

    def restart(self, now: float) -> int:
        """CallManager asked the port to reset: the same server again after the shortest wait."""
        self.homed = False
        self._probe_at = None
        self._rehome = False
        self._attempt_at = now + self.backoff_min
        return self.current

    def registered(self, now: float) -> None:
        """Registered on :attr:`current`: no back-off any more; probing starts if this is not the
        first server."""
        self.failures = 0
        self.homed = True
        self._attempt_at = -math.inf
        self._rehome = False
        self._probe_at = now + self.probe_interval if self.current != 0 else None

    # -- going back to the first server ---------------------------------------------------

    def should_probe(self, now: float) -> bool:
        """Time to look whether the first server is back (registered elsewhere, probe due, and
        no re-home already decided)."""
        return (self.homed and self.current != 0 and not self._rehome
                and self._probe_at is not None and now >= self._probe_at)

    def next_probe(self) -> float | None:
        """When :meth:`should_probe` turns true (None: no probing now)."""
        if not self.homed or self.current == 0 or self._rehome:
            return None
        return self._probe_at

    def probed(self, now: float, reachable: bool) -> None:
        """The driver looked at the first server.  Reachable: a re-home is wanted
        (:attr:`rehome_pending`); otherwise look again in ``probe_interval`` seconds."""
        if not self.homed or self.current == 0:
            return
        if reachable:
            self._rehome = True
            self._probe_at = None
        else:
            self._probe_at = now + self.probe_interval

    @property
    def rehome_pending(self) -> bool:
        """The first server answered a probe; the port should move there when idle."""
        return self._rehome

    def primary_back(self, now: float, *, idle: bool = True) -> bool:
        """Go back to the first server.  Only when the port is ``idle``; otherwise remember the
        wish (:attr:`rehome_pending`) and return False.  True: :attr:`current` is 0 now and the
        driver may unregister and connect there at once."""
        if self.current == 0:
            self._rehome = False
            return False
        if not idle:
            self._rehome = True
            return False
        self.current = 0
        self.homed = False
        self.failures = 0
        self._rehome = False
        self._probe_at = None
        self._attempt_at = now
        return True
