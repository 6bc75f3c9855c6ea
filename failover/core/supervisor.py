"""The failover supervisor: a pure state machine.

``Supervisor.handle(event, now) -> list[Action]`` and ``next_deadline()``.  No I/O and no clock
reads: ``now`` is a monotonic time passed in by the driver, wall time arrives in ``Tick``.
Actions are returned in the order the driver must run them (``PersistState`` before
``ActivateService``: a term is durable before the node acts on it).

Terms are made durable by reservation (a high-water mark, as in hi/lo sequence generators):
the state file holds a term at or above every term this node has taken, and a node that
restarts continues above it.  Taking a term inside the reservation needs no disk write;
taking one beyond it first writes a new reservation ``TERM_RESERVE`` higher.  So the fsync
is off the takeover path almost always, and a term is never reused after a crash.

Decisions are level-triggered (Patroni's lesson): after every event the rules in
``_reconcile`` look at the whole view (own state, service, peer, mode, clocks) and decide.
The rules come from the failover guide; docs/failover-rules.md maps each rule to its test.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from failover.core import events as ev
from failover.core.commands import Commands
from failover.core.health import HealthRule, HealthSettings
from failover.core.state import (
    ACTIVE_STATES,
    FailbackType,
    Mode,
    Role,
    ServiceHealth,
    State,
    Timing,
    next_term,
)

TERM_RESERVE = 64  # terms reserved by one durable write


@dataclass(frozen=True)
class SupervisorConfig(Timing):
    node: str
    role: Role
    peer_name: str
    ping_interval: float = 0.1
    missed_pings: int = 6
    lease: float | None = None  # default: peer_timeout - ping_interval
    startup_wait: float | None = None  # default: max(peer_timeout, 1 s)
    mode: Mode = Mode.AUTOMATIC
    call_takeover: bool = True
    handover_timeout: float = 2.0
    handover_wait: float = 0.0  # planned handover: wait up to this long for replication (0: do not wait)
    drain_timeout: float = 300.0
    failback_type: FailbackType = FailbackType.MANUAL
    failback_window: tuple[float, float] | None = None  # (start, end) seconds after local midnight
    licence_no_contact: float = 4 * 3600.0
    licence_after_contact: float = 60 * 86400.0
    health_timeout: float = 1.0
    start_timeout: float = 10.0
    max_restarts: int = 5  # quick restarts within restart_window before the node backs off
    restart_window: float = 60.0  # a service failure counts for this long
    restart_backoff: float = 0.5  # the first delay once the quick restarts are used up; doubles
    restart_backoff_max: float = 30.0  # the longest delay while the peer is serving
    restart_backoff_alone: float = 2.0  # the longest delay while the peer is not serving
    health: HealthSettings = HealthSettings()  # driver health as a failover trigger

    def __post_init__(self) -> None:
        if not 0 < self.lease_s < self.peer_timeout:
            raise ValueError("lease must be positive and shorter than ping_interval * missed_pings")


@dataclass(frozen=True)
class Persisted:
    term: int = 0  # reservation: no term at or below this is taken again
    last_contact_wall: float | None = None  # secondary only: last time the primary was heard


@dataclass(frozen=True)
class Handover:
    """A planned handover waiting for replication on the active node."""

    cause: str
    started: float
    deadline: float
    barrier: int
    kind: str  # "operator" (asked here), "peer" (the peer's operator asked: hand_over),
    # "scheduled" (failback window) or "shutdown"


@dataclass(frozen=True, kw_only=True)
class StatusView(ev.PeerHeartbeat):
    """The heartbeat's fields and what the node's own status adds."""

    uptime: float
    peer_reachable: bool
    peer_state: State | None
    peer_term: int | None
    peer_heartbeat_age: float | None
    cause: str
    service_failures: int = 0  # service failures within restart_window
    service_retry_in: float | None = None  # seconds to the next start attempt while backing off


class Supervisor(Commands):
    def __init__(self, cfg: SupervisorConfig, *, now: float, persisted: Persisted = Persisted()):
        self.cfg = cfg
        self.state = State.STARTING
        self.term = persisted.term  # the highest term this node has taken (or reserved)
        self.highest_seen = persisted.term  # the highest term seen anywhere
        self.reserved = persisted.term  # durable: terms up to here may be taken without a write
        self.mode = cfg.mode
        self.cause = "starting"
        self._start = now
        self._startup_deadline = now + cfg.startup_wait_s
        self._last_now = now
        # peer view
        self.peer: ev.PeerHeartbeat | None = None
        self._peer_heard: float | None = None
        self._peer_ever_heard = False
        # local service
        self.service = ServiceHealth.STOPPED
        self._service_deadline: float | None = None  # start or health timeout
        self._failures: deque[float] = deque()  # times of service failures within restart_window
        self._retry_at: float | None = None  # backing off: the next start attempt
        self._backoff_since: float | None = None  # the failure the current backoff follows
        self.calls = 0
        self.health_rule = HealthRule(cfg.health, cfg.node, cfg.peer_name)
        # activity
        self._active_since: float | None = None  # when the service confirmed this activity
        self._lease_expiry: float | None = None
        self._next_renew: float | None = None
        self._activation: tuple[str, float, str] | None = None  # (cause, started at, kind)
        self._activation_deadline: float | None = None
        self._quiet_until: float | None = None  # after a handover: let the peer take over
        self._drain_deadline: float | None = None
        self._drain_confirmed = False
        self._next_stepdown: float = 0.0
        self._settle_until: float | None = None
        self.hold = False
        self.shutting_down = False
        # planned handover waiting for replication (active node)
        self._handover: Handover | None = None
        # inactive node: when it asked the active peer to hand over (hand_over) ...
        self._asked_handover: float | None = None
        # ... or to stay active (take_over from an inactive node): until then a take_over
        # from the peer crossed the request in flight and is refused (docs/failover-rules.md)
        self._stay_asked_until: float | None = None
        self._failback_skip = False  # the operator overrode the schedule for this window
        self._barrier = 0  # last ReplicationBarrier asked for
        self._barrier_done = 0  # last barrier the replication driver reported on
        self.repl_pending: int | None = None  # changes the peer has not acknowledged
        # clocks from Tick
        self._wall: float | None = None
        self._wall_at: float = now
        self._local_seconds: float | None = None
        self._last_contact_wall = persisted.last_contact_wall
        self._contact_persisted_wall = persisted.last_contact_wall
        self._next_heartbeat = now

    # ------------------------------------------------------------------ queries

    @property
    def peer_timeout(self) -> float:
        return self.cfg.peer_timeout

    def peer_fresh(self, now: float) -> bool:
        return self._peer_heard is not None and now < self._peer_heard + self.peer_timeout

    def licensed(self, now: float) -> bool:
        if self.cfg.role is Role.PRIMARY:
            return True
        if not self._peer_ever_heard and self._last_contact_wall is None:
            return now < self._start + self.cfg.licence_no_contact
        if self._last_contact_wall is not None and self._wall is not None:
            wall_now = self._wall + (now - self._wall_at)
            return wall_now - self._last_contact_wall < self.cfg.licence_after_contact
        return True

    def eligible(self, now: float) -> bool:
        return (
            self.service is ServiceHealth.RUNNING
            and self.licensed(now)
            and not self.shutting_down
            and self.state is not State.STOPPED
        )

    def status(self, now: float) -> StatusView:
        p = self.peer
        return StatusView(
            node=self.cfg.node, role=self.cfg.role, state=self.state, term=self.term,
            service=self.service, mode=self.mode, eligible=self.eligible(now),
            licensed=self.licensed(now), hold=self.hold, shutting_down=self.shutting_down,
            calls=self.calls, health=self.health_rule.health, uptime=now - self._start,
            peer_reachable=self.peer_fresh(now),
            peer_state=p.state if p else None, peer_term=p.term if p else None,
            peer_heartbeat_age=None if self._peer_heard is None else now - self._peer_heard,
            cause=self.cause, service_failures=self.service_failures(now),
            service_retry_in=None if self._retry_at is None else max(0.0, self._retry_at - now),
        )

    @property
    def active_since(self) -> float | None:
        """When the service confirmed the current activity (None while not active)."""
        return self._active_since

    @property
    def last_contact_wall(self) -> float | None:
        """Secondary: when its primary was last heard (epoch seconds; durable, see Persisted)."""
        return self._last_contact_wall

    def service_failures(self, now: float) -> int:
        """Service failures that still count: those within the last ``restart_window``."""
        return sum(1 for t in self._failures if now - t <= self.cfg.restart_window)

    def peer_serving(self, now: float) -> bool:
        return self.peer_fresh(now) and self.peer is not None and self.peer.state in ACTIVE_STATES

    def next_deadline(self) -> float | None:
        if self.state is State.STOPPED:
            return None
        cands = [self._service_deadline, self._retry_at, self._next_renew, self._activation_deadline,
                 self._settle_until, self._quiet_until, self._drain_deadline, self._lease_expiry,
                 self._handover.deadline if self._handover else None]
        if self.state in (State.STARTING, State.INACTIVE, State.DRAINING):
            cands.append(self._peer_deadline())
        if self.cfg.role is Role.SECONDARY and self._last_contact_wall is None:
            cands.append(self._start + self.cfg.licence_no_contact)
        # a deadline at or before the last handled instant has been acted on already
        return min([self._next_heartbeat] + [d for d in cands if d is not None and d > self._last_now])

    def _peer_deadline(self) -> float:
        if self._peer_heard is None:
            return self._startup_deadline
        return self._peer_heard + self.peer_timeout

    # ------------------------------------------------------------------ entry point

    def handle(self, event: ev.Event, now: float) -> list[ev.Action]:
        if self.state is State.STOPPED:
            return []
        acts: list[ev.Action] = []
        self._check_stall(now, acts)
        self._check_lease(now, acts)
        handler = getattr(self, "_on_" + type(event).__name__, None)
        if handler is None:
            raise TypeError(f"unknown event {event!r}")
        handler(event, now, acts)
        if self.state is not State.STOPPED:
            self._check_service_deadline(now, acts)
            self._check_service_retry(now, acts)
            self._check_handover(now, acts)
            self._reconcile(now, acts)
            self._timers(now, acts)
        self._last_now = now
        return acts

    # ------------------------------------------------------------------ guards run first

    def _check_stall(self, now: float, acts: list) -> None:
        """A node manager that was frozen (SIGSTOP, swap, starved CPU) must not read its own
        silence as the peer's: give the link two ping intervals to deliver what is queued."""
        gap = now - self._last_now
        if gap > max(3 * self.cfg.ping_interval, self.peer_timeout / 2):
            acts.append(ev.Log("warning", "stall", f"node manager was stalled for {gap:.3f}s",
                               {"stall_s": round(gap, 3)}))
            # What the link queued while we were frozen is old news: read it all before
            # deciding anything from it (only self-fencing acts at once).
            self._settle_until = now + 2 * self.cfg.ping_interval
            grace = now - self.peer_timeout + 2 * self.cfg.ping_interval
            if self._peer_heard is not None:
                self._peer_heard = max(self._peer_heard, grace)
            self._startup_deadline = max(self._startup_deadline, now + 2 * self.cfg.ping_interval)
            if self._service_deadline is not None:  # its health reports are queued too
                self._service_deadline = max(self._service_deadline, self._settle_until)

    def _check_lease(self, now: float, acts: list) -> None:
        if self.state in ACTIVE_STATES and self._lease_expiry is not None and now >= self._lease_expiry:
            late = now - self._lease_expiry
            self._go_inactive(
                now, acts, f"lease lapsed: the node manager renewed {late:.3f}s too late, "
                "the service fenced itself", drain=True, level="error")

    # ------------------------------------------------------------------ event handlers

    def _on_Tick(self, e: ev.Tick, now: float, acts: list) -> None:
        self._wall, self._wall_at, self._local_seconds = e.wall, now, e.local_seconds

    def _on_PeerHeartbeat(self, e: ev.PeerHeartbeat, now: float, acts: list) -> None:
        if e.node != self.cfg.peer_name or e.role is self.cfg.role:
            acts.append(ev.Log("error", "peer_mismatch",
                               f"heartbeat from {e.node!r} ({e.role.label}) ignored: expected "
                               f"{self.cfg.peer_name!r} with the other role"))
            return
        first = self._peer_heard is None or not self.peer_fresh(now)
        self.peer, self._peer_heard, self._peer_ever_heard = e, now, True
        self.highest_seen = max(self.highest_seen, e.term)
        if first:
            acts.append(ev.Log("info", "peer_up", f"peer {e.node} reachable: {e.state.label}, term {e.term}"))
        if self.cfg.role is Role.SECONDARY and self._wall is not None:
            wall_now = self._wall + (now - self._wall_at)
            self._last_contact_wall = wall_now
            if self._contact_persisted_wall is None or wall_now - self._contact_persisted_wall > 3600:
                self._contact_persisted_wall = wall_now
                acts.append(ev.PersistState(self.reserved, wall_now))

    def _peer_said(self, now: float, state: State, term: int) -> None:
        """An authenticated command is news from the peer as good as a heartbeat: it is alive,
        and a step_down says it is activating (a take_over: handing over) in ``term``."""
        other = Role.SECONDARY if self.cfg.role is Role.PRIMARY else Role.PRIMARY
        base = self.peer or ev.PeerHeartbeat(self.cfg.peer_name, other, state, term, ServiceHealth.RUNNING)
        self.peer = replace(base, state=state, term=max(base.term, term))
        self._peer_heard = now
        self._peer_ever_heard = True

    def _on_ServiceStarted(self, e: ev.ServiceStarted, now: float, acts: list) -> None:
        self.service = ServiceHealth.RUNNING
        self._service_deadline = now + self.cfg.health_timeout
        acts.append(ev.Log("info", "service_up", f"messaging service running (pid {e.pid})"))

    def _on_ServiceHealthReport(self, e: ev.ServiceHealthReport, now: float, acts: list) -> None:
        if self.service is not ServiceHealth.RUNNING:
            return
        self._service_deadline = now + self.cfg.health_timeout
        self.calls = e.calls
        acts += self.health_rule.update(now, e.health)
        if e.state != "active":
            self._drain_confirmed = True
        if e.state == "active" and self.state is State.INACTIVE and e.term is not None:
            # the service thinks it is active in a term we left: bring it back in line
            acts.append(ev.DeactivateService(e.term, drain=True))

    def _on_ServiceActivated(self, e: ev.ServiceActivated, now: float, acts: list) -> None:
        if self.state is not State.ACTIVATING or e.term != self.term:
            return
        self.state = State.ACTIVE
        self.hold = False
        self._activation_deadline = None
        self._active_since = now
        cause, started, what = self._activation or ("?", now, "activation")
        took = now - started
        self._activation = None
        acts.append(ev.Log("warning", what, f"{what}: {self.cfg.node} active in term {self.term} "
                           f"after {took * 1000:.1f} ms; cause: {cause}",
                           {"cause": cause, "took_ms": round(took * 1000, 3), "term": self.term}))
        acts.append(ev.SendStatus())

    def _on_ServiceDeactivated(self, e: ev.ServiceDeactivated, now: float, acts: list) -> None:
        self.calls = e.calls
        self._drain_confirmed = True

    def _on_ServiceFenced(self, e: ev.ServiceFenced, now: float, acts: list) -> None:
        if self.state in ACTIVE_STATES and e.term == self.term:
            self._go_inactive(now, acts, f"service fenced itself: {e.reason}", drain=True, level="error")

    def _on_ServiceExited(self, e: ev.ServiceExited, now: float, acts: list) -> None:
        if self.service is ServiceHealth.STOPPED and self._service_deadline is None:
            return
        if self.service is ServiceHealth.FAILED:
            return  # backing off: no service is running, the next start is already scheduled
        self.service = ServiceHealth.STOPPED
        self._service_deadline = None
        lost = self.calls
        self.calls = 0
        if self.shutting_down:
            self._stop(acts, f"messaging service stopped ({e.reason})")
            return
        acts.append(ev.Log("error", "service_down", f"messaging service stopped: {e.reason}"
                           + (f"; {lost} calls in progress dropped" if lost else "")))
        if self.state in ACTIVE_STATES or self.state is State.DRAINING:
            self._go_inactive(now, acts, f"messaging service stopped: {e.reason}", drain=False,
                              tell_service=False)
        acts.append(ev.SendStatus())  # the peer learns at once that this node cannot serve
        self._service_failed(now, acts, e.reason)

    def _on_CallOffered(self, e: ev.CallOffered, now: float, acts: list) -> None:
        if self.state in ACTIVE_STATES:
            return  # the service answers it once it is (or was already) active
        why = self._call_takeover_blocked(now)
        if why:
            acts.append(ev.RefuseCall(e.call_id, why))
            acts.append(ev.Log("info", "call_refused", f"call {e.call_id} on {e.port} refused: {why}"))
            return
        self._activate(now, acts, f"call {e.call_id} offered on inactive port {e.port}",
                       tell_peer="step_down")

    def _call_takeover_blocked(self, now: float) -> str:
        if self.state is State.STARTING:
            return "node is starting"
        if self.state is State.DRAINING:
            return "node is handing over"
        if not self.eligible(now):
            return "node is not eligible to be active"
        if self.mode is Mode.MANUAL:
            return "node manager is in manual mode"
        if not self.cfg.call_takeover:
            return "call takeover is disabled"
        if self.hold:
            return "node was handed over by the operator or schedule (hold)"
        return self.health_rule.call_blocked(self.peer if self.peer_serving(now) else None)

    def _on_ReplicationProgress(self, e: ev.ReplicationProgress, now: float, acts: list) -> None:
        self.repl_pending = e.pending
        self._barrier_done = max(self._barrier_done, e.barrier)

    def _on_ActionFailed(self, e: ev.ActionFailed, now: float, acts: list) -> None:
        acts.append(ev.Log("error", "action_failed", f"{type(e.action).__name__} failed: {e.error}"))
        if isinstance(e.action, (ev.PersistState, ev.ActivateService)) and self.state in ACTIVE_STATES:
            self._go_inactive(now, acts, f"activation aborted: {e.error}", drain=True)

    # ------------------------------------------------------------------ transitions

    def _activate(self, now: float, acts: list, cause: str, tell_peer: str | None = None,
                  kind: str | None = None) -> None:
        """Take a new term (durable first), tell the peer if asked, then activate the service."""
        self._handover = None
        self._asked_handover = self._stay_asked_until = None
        new = next_term(self.cfg.role, max(self.term, self.highest_seen))
        self.term = self.highest_seen = new
        if new > self.reserved:
            self.reserved = new + TERM_RESERVE
            acts.append(ev.PersistState(self.reserved, self._last_contact_wall))
        if tell_peer:
            acts.append(ev.SendCommand(tell_peer, new, cause))
        was_active = self.state in ACTIVE_STATES
        self.state = State.ACTIVE if was_active else State.ACTIVATING
        self.cause = cause
        self._quiet_until = None
        self._drain_deadline = None
        self._lease_expiry = now + self.cfg.lease_s
        self._next_renew = now + self.cfg.ping_interval
        acts.append(ev.ActivateService(new, self.cfg.lease_s))
        if was_active:
            acts.append(ev.Log("warning", "reterm",
                               f"{self.cfg.node} stays active in new term {new}: {cause}",
                               {"cause": cause, "term": new}))
        else:
            kind = kind or ("failback" if self.cfg.role is Role.PRIMARY else "failover")
            self._activation = (cause, now, kind)
            self._activation_deadline = now + self.cfg.health_timeout
            acts.append(ev.Log("warning", "activating", f"{self.cfg.node} activating in term {new}: {cause}",
                               {"cause": cause, "term": new}))
        acts.append(ev.SendStatus())

    def _go_inactive(self, now: float, acts: list, cause: str, *, drain: bool,
                     tell_service: bool = True, level: str = "warning") -> None:
        if tell_service and self.service is ServiceHealth.RUNNING:
            acts.append(ev.DeactivateService(self.term, drain=drain))
        draining = drain and tell_service and self.service is ServiceHealth.RUNNING
        self.state = State.DRAINING if draining else State.INACTIVE
        self._drain_confirmed = False
        self.cause = cause
        self._lease_expiry = self._next_renew = self._activation_deadline = None
        self._activation = self._active_since = None
        if self.state is State.DRAINING:
            self._drain_deadline = now + self.cfg.drain_timeout
        acts.append(ev.Log(level, "deactivated", f"{self.cfg.node} inactive: {cause}",
                           {"cause": cause, "term": self.term}))
        acts.append(ev.SendStatus())

    def _hand_over(self, now: float, acts: list, cause: str, *, kind: str) -> None:
        """Planned move to the peer.  With ``handover_wait``: stay active (calls are still
        answered; configuration writes are refused while ``handing_over``) until the peer has
        acknowledged every change made before the barrier, or the wait ends; then stop new
        work here and ask the peer to take over."""
        if self.cfg.handover_wait <= 0:
            self._finish_handover(now, acts, cause, hold=kind != "health")
            return
        self._barrier += 1
        self._handover = Handover(cause, now, now + self.cfg.handover_wait, self._barrier, kind)
        acts.append(ev.Log("info", "handover_waiting", f"handing over to {self.cfg.peer_name} once "
                           f"replication is complete (at most {self.cfg.handover_wait:g}s): {cause}",
                           {"cause": cause, "kind": kind}))
        acts.append(ev.ReplicationBarrier(self._barrier))

    @property
    def handing_over(self) -> bool:
        return self._handover is not None

    def _cancel_handover(self, now: float, acts: list, why: str) -> None:
        h = self._handover
        if h is None:
            return
        self._handover = None
        if h.kind == "scheduled":
            self._failback_skip = True  # not again in this window
        acts.append(ev.Log("warning", "handover_cancelled", f"handover to {self.cfg.peer_name} "
                           f"({h.cause}) cancelled after {now - h.started:.3f}s: {why}; "
                           f"{self.cfg.node} stays active",
                           {"cause": h.cause, "kind": h.kind, "why": why,
                            "wait_s": round(now - h.started, 3)}))
        acts.append(ev.SendStatus())

    def _skip_failback_window(self) -> None:
        """An operator moved activity to the secondary: the schedule does not undo it before
        the current failback window ends."""
        if self.cfg.role is Role.SECONDARY and self._failback_due():
            self._failback_skip = True

    def _finish_handover(self, now: float, acts: list, cause: str, hold: bool = True) -> None:
        self._handover = None
        self._go_inactive(now, acts, f"handing over to {self.cfg.peer_name}: {cause}", drain=True)
        acts.append(ev.SendCommand("take_over", self.term, cause))
        self.hold = hold  # not after a health handover: back by the normal rules once healthy
        self._quiet_until = now + self.cfg.handover_timeout

    def _check_handover(self, now: float, acts: list) -> None:
        """A planned handover waiting for replication: go when the peer has acknowledged
        everything, or at the deadline; give up if the peer disappears (it is not waited for)."""
        if self._handover is None:
            return
        h = self._handover
        cause, started, deadline, barrier = h.cause, h.started, h.deadline, h.barrier
        waited = now - started
        if self.state is not State.ACTIVE:  # fenced, stepped down or reactivating meanwhile
            self._handover = None
            return
        if h.kind in ("scheduled", "health") and (
                self.mode is Mode.MANUAL or (self.peer is not None and self.peer.mode is Mode.MANUAL)):
            who = self.cfg.node if self.mode is Mode.MANUAL else self.cfg.peer_name
            self._cancel_handover(now, acts, f"{who} is in manual mode: no "
                                  + ("scheduled failback" if h.kind == "scheduled" else "health handover"))
            return
        if h.kind == "health" and self.health_rule.low_since is None:
            self._cancel_handover(now, acts, f"health {self.health_rule.health} is back")
            return
        if not (self.peer_fresh(now) and self.peer is not None and self.peer.eligible):
            self._handover = None
            acts.append(ev.Log("error", "handover_failed", f"peer lost while waiting {waited:.3f}s "
                               f"for replication; {self.cfg.node} stays active"))
            if self.shutting_down:
                self._go_inactive(now, acts, "shutting down, no peer to hand over to", drain=True)
            return
        if self._barrier_done >= barrier and self.repl_pending == 0:
            acts.append(ev.Log("info", "handover_replicated", f"replication complete after "
                               f"{waited * 1000:.0f} ms: handing over", {"wait_s": round(waited, 3)}))
            self._finish_handover(now, acts, cause, hold=h.kind != "health")
        elif now >= deadline:
            pending = "unknown" if self._barrier_done < barrier else self.repl_pending
            acts.append(ev.Log("warning", "handover_unreplicated", f"replication not complete after "
                               f"{waited:.3f}s ({pending} changes not acknowledged by the peer): "
                               "handing over anyway", {"wait_s": round(waited, 3), "pending": pending}))
            self._finish_handover(now, acts, cause, hold=h.kind != "health")

    def _stop(self, acts: list, cause: str) -> None:
        if self.service is not ServiceHealth.STOPPED:
            acts.append(ev.ShutdownService(cause))
        self._retry_at = self._backoff_since = None
        self.state = State.STOPPED
        self.cause = cause
        acts.append(ev.SendStatus())
        acts.append(ev.Log("warning", "stopped", f"{self.cfg.node} stopped: {cause}"))
        acts.append(ev.Exit(0))

    def _service_failed(self, now: float, acts: list, reason: str) -> None:
        """Restart a failed service: at once for the first ``max_restarts`` failures within
        ``restart_window``, then after a delay that doubles from ``restart_backoff`` up to
        ``restart_backoff_max`` (``restart_backoff_alone`` while the peer is not serving).
        The node never gives up: a failure older than the window no longer counts, and while
        it backs off the node is not eligible (service ``failed``), so a healthy peer is preferred."""
        while self._failures and now - self._failures[0] > self.cfg.restart_window:
            self._failures.popleft()
        self._failures.append(now)
        n = len(self._failures)
        if n <= self.cfg.max_restarts:
            self._start_service(now, acts, f"restart after: {reason}")
            return
        delay = min(self.cfg.restart_backoff * 2 ** min(n - self.cfg.max_restarts - 1, 40),
                    self.cfg.restart_backoff_max)
        if not self.peer_serving(now):
            delay = min(delay, self.cfg.restart_backoff_alone)
        self.service = ServiceHealth.FAILED
        self._backoff_since, self._retry_at = now, now + delay
        acts.append(ev.Log("error", "service_backoff",
                           f"messaging service failed {n} times in {self.cfg.restart_window:g}s "
                           f"({reason}): next start in {delay:g}s",
                           {"failures": n, "retry_in_s": round(delay, 3), "reason": reason}))

    def _check_service_retry(self, now: float, acts: list) -> None:
        """Backing off: start the service again at the end of the delay, sooner once the peer
        is not serving either (the pair must not stay without a service for long)."""
        if self._retry_at is None or self.shutting_down:
            return
        if not self.peer_serving(now) and self._backoff_since is not None:
            self._retry_at = min(self._retry_at, self._backoff_since + self.cfg.restart_backoff_alone)
        if now < self._retry_at:
            return
        n = self.service_failures(now)
        self._start_service(now, acts, f"retry after {n} failures in {self.cfg.restart_window:g}s")

    def _start_service(self, now: float, acts: list, reason: str) -> None:
        self._retry_at = self._backoff_since = None
        self.service = ServiceHealth.STARTING
        self._service_deadline = now + self.cfg.start_timeout
        acts.append(ev.StartService(reason))

    def start(self, now: float) -> list[ev.Action]:
        """Actions to run once at start-up."""
        self.service = ServiceHealth.STARTING
        self._service_deadline = now + self.cfg.start_timeout
        return [ev.Log("info", "starting", f"{self.cfg.node} ({self.cfg.role.label}) starting in term "
                       f"{self.term}"), ev.StartService("node start")]

    # ------------------------------------------------------------------ level-triggered rules

    def _check_service_deadline(self, now: float, acts: list) -> None:
        if self._service_deadline is None or now < self._service_deadline:
            return
        if self.service is ServiceHealth.STARTING:
            reason = f"service did not start within {self.cfg.start_timeout:.1f}s"
        elif self.service is ServiceHealth.RUNNING:
            reason = f"no health report for {self.cfg.health_timeout:.3f}s"
        else:
            return
        self._service_deadline = None
        acts.append(ev.KillService(reason))
        self._on_ServiceExited(ev.ServiceExited(reason), now, acts)

    def _reconcile(self, now: float, acts: list) -> None:
        st = self.state
        if self._settle_until is not None:
            if now < self._settle_until:
                return
            self._settle_until = None
        peer_ok = self.peer_fresh(now)
        peer = self.peer if peer_ok else None
        if self._failback_skip and not self._failback_due():
            self._failback_skip = False  # the window is over

        if (st is State.ACTIVATING and self._activation_deadline is not None
                and now >= self._activation_deadline):
            self._go_inactive(now, acts, "service did not confirm activation", drain=False)
            return

        if st in ACTIVE_STATES:
            if self.cfg.role is Role.SECONDARY and not self.licensed(now):
                self._go_inactive(now, acts, "licence: secondary has not reached its primary in time",
                                  drain=True, level="error")
                return
            if peer and peer.state in ACTIVE_STATES:
                self._both_active(now, acts, peer)
                return
            if (st is State.ACTIVE and self.cfg.role is Role.SECONDARY and peer
                    and self._handover is None and self._failback_due() and self.mode is Mode.AUTOMATIC
                    and not self._failback_skip and peer.mode is Mode.AUTOMATIC
                    and peer.eligible and peer.state is State.INACTIVE
                    and self.health_rule.healthy(peer.health)):
                self._hand_over(now, acts, "scheduled failback window", kind="scheduled")
            elif st is State.ACTIVE and self._handover is None and not self.shutting_down:
                cause = self.health_rule.handover(now, active_since=self._active_since,
                                                  mode=self.mode, peer=peer, acts=acts)
                if cause is not None:
                    self._hand_over(now, acts, cause, kind="health")
            return

        if st is State.DRAINING:
            drained = self._drain_confirmed and self.calls == 0
            if drained or (self._drain_deadline is not None and now >= self._drain_deadline):
                if self.calls and self.service is ServiceHealth.RUNNING:
                    acts.append(ev.DeactivateService(self.term, drain=False))
                    acts.append(ev.Log("warning", "drain_timeout", f"{self.calls} calls still in progress "
                                       "after the drain timeout: hung up"))
                self.calls = 0
                self._drain_deadline = None
                if self.shutting_down:
                    self._stop(acts, "shutdown after draining")
                    return
                self.state = State.INACTIVE
                acts.append(ev.SendStatus())
                st = State.INACTIVE
            elif self.shutting_down:
                return

        if st is State.STARTING:
            if self.service is not ServiceHealth.RUNNING:
                return
            if peer is None and now < self._peer_deadline():
                return  # wait to hear the peer (or for startup_wait) before deciding
            if self.cfg.role is Role.PRIMARY and not self._peer_ever_heard:
                acts.append(ev.Log("error", "no_secondary", f"primary {self.cfg.node} ends its "
                                   f"start-up wait without hearing its secondary "
                                   f"{self.cfg.peer_name}: it runs alone"))
            self.state = st = State.INACTIVE
            self.cause = "started"
            acts.append(ev.SendStatus())

        if st in (State.INACTIVE, State.DRAINING) and self.eligible(now):
            quiet = self._quiet_until is not None and now < self._quiet_until
            if self._quiet_until is not None and not quiet:
                self._quiet_until = None
                if peer is None or peer.state not in ACTIVE_STATES:
                    acts.append(ev.Log("error", "handover_failed",
                                       "peer did not take over within the handover timeout"))
            if peer is None:
                if not self._peer_ever_heard:
                    if not quiet and now >= self._peer_deadline():
                        self._activate(now, acts, f"first node started: peer not heard for "
                                       f"{self.cfg.startup_wait_s:.2f}s", kind="startup")
                elif self.mode is Mode.AUTOMATIC:
                    self._activate(now, acts, f"peer silent for {now - self._peer_heard:.3f}s "
                                   f"({self.cfg.missed_pings} missed pings)")
                return
            if peer.state in ACTIVE_STATES or (quiet and peer.eligible):
                return  # quiet: the peer is taking over from us, give it handover_timeout
            # the peer is reachable and nobody is active
            if self._preferred(peer):
                why = ("peer service " + peer.service.label) if not peer.eligible else "no node active"
                kind = "startup" if peer.state is State.STARTING else None
                self._activate(now, acts, f"{why}: {peer.node} is {peer.state.label}", kind=kind)

    def _preferred(self, peer: ev.PeerHeartbeat) -> bool:
        """With nobody active, the primary takes over unless it cannot or was handed over."""
        if (peer.state is State.STARTING and self.cfg.role is Role.SECONDARY
                and peer.service in (ServiceHealth.STARTING, ServiceHealth.RUNNING)):
            return False  # let a starting primary finish starting: it is preferred
        if not peer.eligible or peer.shutting_down:
            return True
        if self.cfg.role is Role.PRIMARY:
            return not self.hold or peer.hold
        return peer.hold and not self.hold

    def _both_active(self, now: float, acts: list, peer: ev.PeerHeartbeat) -> None:
        """Heal rule: the primary stays active, the secondary steps down."""
        if self.cfg.role is Role.SECONDARY:
            # A primary heartbeat older than our own takeover (lower term) is still in flight;
            # the primary answers a real conflict by taking a higher term and a step_down.
            if peer.term > self.term:
                self._go_inactive(now, acts, f"primary {peer.node} is active (term {peer.term}): "
                                  "the secondary steps down", drain=True)
            return
        if now < self._next_stepdown:
            return
        self._next_stepdown = now + 2 * self.cfg.ping_interval
        if peer.term > self.term:
            self._activate(now, acts, f"both nodes active (peer term {peer.term}): primary stays active")
        acts.append(ev.SendCommand("step_down", self.term, "both nodes active: primary stays active"))

    def _failback_due(self) -> bool:
        if self.cfg.failback_type is not FailbackType.SCHEDULED or self.cfg.failback_window is None:
            return False
        if self._local_seconds is None:
            return False
        start, end = self.cfg.failback_window
        t = self._local_seconds
        return start <= t < end if start <= end else (t >= start or t < end)

    # ------------------------------------------------------------------ timers

    def _timers(self, now: float, acts: list) -> None:
        # One wake-up per ping interval, not three: the heartbeat goes out early (up to half
        # an interval) when the peer's has just arrived, so the two nodes fall into step and
        # one of them sends in the turn that reads the peer's; the lease renewal rides on the
        # heartbeat whenever it would fall due before the next one (early, never late: an
        # early renewal only ends the lease sooner).
        ping = self.cfg.ping_interval
        beat = now >= self._next_heartbeat or (
            self._peer_heard == now and now >= self._next_heartbeat - ping / 2)
        if self.state in ACTIVE_STATES and self._next_renew is not None and (
                now >= self._next_renew or (beat and self._next_renew < now + ping)):
            self._lease_expiry = now + self.cfg.lease_s
            self._next_renew = now + ping
            acts.append(ev.RenewLease(self.term, self.cfg.lease_s))
        if beat:
            # Sent in the turn that read the peer's: the next one waits for the peer's next
            # (due one interval on), with a quarter interval to spare so that this node's own
            # timer does not fire just before it arrives (two wake-ups again).  Only a missing
            # peer heartbeat lets that timer fire: 1.25 intervals, far inside the peer timeout.
            self._next_heartbeat = now + (ping * 1.25 if self._peer_heard == now else ping)
            if not any(isinstance(a, ev.SendStatus) for a in acts):
                acts.append(ev.SendStatus())
        if self._quiet_until is not None and now >= self._quiet_until and self.state in ACTIVE_STATES:
            self._quiet_until = None
