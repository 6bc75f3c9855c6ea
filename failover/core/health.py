"""Driver health as a failover trigger: the ``[health]`` settings and the rule (pure).

The messaging service scores each port driver (100 × usable ports / configured ports) and the
message store (100 when its last probe answered, else 0); the node's health is the lowest score
(100 with none).  It travels in every heartbeat.  The rule, asked by the supervisor's reconcile
on the active node (docs/failover-rules.md, "Driver health"):

* hand over (a planned handover of kind ``health``, with the replication barrier, **without**
  hold) when this node's health has been below ``failover_below`` continuously for ``grace``,
  it has been active at least ``min_active``, it is not in manual mode and the peer is
  reachable, eligible, inactive, in automatic mode and at least ``margin`` healthier;
* after a health handover, no second one for ``min_active``;
* an unhealthy inactive node does not pull activity back by a call reaching its ports while the
  active peer is that much healthier (the PBX hunts on), and a scheduled failback does not go
  to an unhealthy primary.

Every decision is a log line: ``health_low`` once when the health first drops below the
threshold, ``health_ok`` when it is back, ``health_failover`` for a handover, and
``health_blocked`` once per reason and low spell when the rule would move but may not.
"""
from __future__ import annotations

from dataclasses import dataclass

from failover.core import events as ev
from failover.core.state import Mode, State
from telephony.core.settings import Key, Num, boolean

#: the ``[health]`` section's keys (failover.config takes them as they are)
HEALTH_KEYS: dict[str, Key] = {
    "enabled": Key(boolean, True),
    "failover_below": Key(Num(1, 100, integer=True), 50),
    "grace": Key(Num(0, 3600), 5.0),
    "min_active": Key(Num(0, 86400), 30.0),
    "margin": Key(Num(1, 100, integer=True), 50),
    "store_probe": Key(Num(0.1, 3600), 2.0),
}

FULL = 100  # the health of a node with nothing wrong (and of a heartbeat that does not say)


@dataclass(frozen=True)
class HealthSettings:
    enabled: bool = True
    failover_below: int = 50  # node health under this counts as low
    grace: float = 5.0  # low for this long, without a break, before a move
    min_active: float = 30.0  # never moves a node active for less than this
    margin: int = 50  # the peer must be at least this much healthier (>= 1: no ping-pong)
    store_probe: float = 2.0  # seconds between message-store probes (the service's)


def node_health(scores) -> int:
    """The node's health from its drivers' scores (``[{"score": int, ...}]``): the lowest,
    :data:`FULL` when there is none."""
    return min((int(d["score"]) for d in scores), default=FULL)


def driver_score(usable: int, configured: int) -> int:
    """100 × usable / configured, rounded down; a driver with no ports is whole."""
    if configured <= 0:
        return FULL
    return max(0, min(FULL, FULL * usable // configured))


class HealthRule:
    """The rule's memory on one node: when the health went low, the last health handover."""

    def __init__(self, settings: HealthSettings, node: str, peer_name: str):
        self.s = settings
        self.node, self.peer_name = node, peer_name
        self.health = FULL
        self.low_since: float | None = None
        self.handed_over_at: float | None = None
        self._blocked: set[str] = set()  # reasons logged in this low spell

    def update(self, now: float, health: int) -> list[ev.Log]:
        """A new health value from the service: track the low spell."""
        health = max(0, min(FULL, int(health)))
        self.health = health
        if health < self.s.failover_below:
            if self.low_since is None:
                self.low_since = now
                self._blocked.clear()
                return [ev.Log("warning", "health_low", f"{self.node} health {health} is below "
                               f"{self.s.failover_below}", {"health": health})]
        elif self.low_since is not None:
            low = now - self.low_since
            self.low_since = None
            return [ev.Log("info", "health_ok", f"{self.node} health {health} again after "
                           f"{low:.3f}s below {self.s.failover_below}",
                           {"health": health, "low_s": round(low, 3)})]
        return []

    def healthy(self, health: int) -> bool:
        return not self.s.enabled or health >= self.s.failover_below

    def handover(self, now: float, *, active_since: float | None, mode: Mode,
                 peer: ev.PeerHeartbeat | None, acts: list) -> str | None:
        """Asked on an active node with no handover pending: the cause of a health handover
        to the peer now, or None.  ``peer``: its last heartbeat if it is reachable, else None.
        A move that is due but not allowed is logged once per reason and low spell."""
        s = self.s
        if not s.enabled or self.low_since is None or now - self.low_since < s.grace:
            return None
        why = self._blocker(now, active_since, mode, peer)
        if why is not None:
            key, text = why
            if key not in self._blocked:
                self._blocked.add(key)
                acts.append(ev.Log("warning", "health_blocked", f"{self.node} health {self.health} "
                                   f"below {s.failover_below} for {now - self.low_since:.3f}s, "
                                   f"no handover: {text}", {"health": self.health, "why": key}))
            return None
        self.handed_over_at = now
        assert peer is not None
        cause = (f"health {self.health} below {s.failover_below} for {now - self.low_since:.1f}s; "
                 f"{peer.node} health {peer.health}")
        acts.append(ev.Log("warning", "health_failover", f"{self.node} hands over to {peer.node}: "
                           f"{cause}", {"health": self.health, "peer_health": peer.health,
                                        "low_s": round(now - self.low_since, 3)}))
        return cause

    def _blocker(self, now: float, active_since: float | None, mode: Mode,
                 peer: ev.PeerHeartbeat | None) -> tuple[str, str] | None:
        s = self.s
        if mode is Mode.MANUAL:
            return "manual", f"{self.node} is in manual mode"
        if active_since is None or now - active_since < s.min_active:
            return "min_active", f"active for less than min_active ({s.min_active:g}s)"
        if self.handed_over_at is not None and now - self.handed_over_at < s.min_active:
            return "recent", f"a health handover less than min_active ({s.min_active:g}s) ago"
        if peer is None:
            return "peer_unreachable", f"{self.peer_name} is not reachable"
        if peer.mode is Mode.MANUAL:
            return "peer_manual", f"{peer.node} is in manual mode"
        if not peer.eligible or peer.shutting_down:
            return "peer_not_eligible", f"{peer.node} is not eligible"
        if peer.state is not State.INACTIVE:
            return "peer_busy", f"{peer.node} is {peer.state.label}"
        if peer.health < self.health + s.margin:
            return "peer_not_healthier", (f"{peer.node} health {peer.health} is not {s.margin} "
                                          f"above {self.health}")
        return None

    def call_blocked(self, peer_serving: ev.PeerHeartbeat | None) -> str:
        """Why a call at this (inactive) node's ports must not pull activity back: its health
        is low and the active peer (``peer_serving``, reachable and active, or None) is at least
        ``margin`` healthier.  "" when nothing stops it."""
        s = self.s
        if (s.enabled and peer_serving is not None and self.health < s.failover_below
                and peer_serving.health >= self.health + s.margin):
            return (f"node health {self.health} is below {s.failover_below}; the active "
                    f"{peer_serving.node} has {peer_serving.health}")
        return ""
