"""A two-node simulator for the pure supervisor: fake link with latency and partitions,
fake messaging services, a stepped clock.  No Trio, no sockets: every run is deterministic."""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from failover.core import events as ev
from failover.core.state import Role, ServiceHealth, State
from failover.core.supervisor import Persisted, Supervisor, SupervisorConfig


class InvariantError(AssertionError):
    pass


@dataclass
class FakeService:
    alive: bool = False
    active_term: int | None = None
    calls: int = 0
    generation: int = 0
    lease_expiry: float = 0.0
    health: int = 100  # what its drivers score (failover.core.health)

    def answering(self, now: float) -> bool:
        return self.alive and self.active_term is not None and now < self.lease_expiry


@dataclass
class SimNode:
    sup: Supervisor
    service: FakeService = field(default_factory=FakeService)
    persisted_terms: list[int] = field(default_factory=list)
    used_terms: set[int] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)
    barriers: list[int] = field(default_factory=list)
    replies: list[ev.AdminReply] = field(default_factory=list)
    logs: list[ev.Log] = field(default_factory=list)
    exited: bool = False
    frozen_until: float = 0.0


def make_config(role: Role, **kw) -> SupervisorConfig:
    names = {Role.PRIMARY: "a", Role.SECONDARY: "b"}
    peer = Role.SECONDARY if role is Role.PRIMARY else Role.PRIMARY
    return SupervisorConfig(node=names[role], role=role, peer_name=names[peer], **kw)


class Sim:
    LATENCY = 0.001
    SERVICE_START = 0.05
    HEALTH = 0.05

    def __init__(self, *, start_b_at: float = 0.0, start_a_at: float = 0.0, **cfg):
        self.now = 0.0
        self.q: list = []
        self._seq = itertools.count()
        self._link_up = True
        self.link_up_since = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.history: list[tuple[float, str, State, int]] = []
        self.cfg = cfg
        self.at(start_a_at, "a", "boot", Role.PRIMARY)
        self.at(start_b_at, "b", "boot", Role.SECONDARY)

    @property
    def link_up(self) -> bool:
        return self._link_up

    @link_up.setter
    def link_up(self, up: bool) -> None:
        if up and not self._link_up:
            self.link_up_since = self.now
        self._link_up = up

    # -------------------------------------------------------------- scheduling
    def at(self, t: float, node: str, kind: str, payload=None) -> None:
        heapq.heappush(self.q, (t, next(self._seq), node, kind, payload))

    def run_until(self, t_end: float) -> None:
        while True:
            # timers of every node
            best = None
            for name, n in self.nodes.items():
                if n.exited:
                    continue
                d = n.sup.next_deadline()
                if d is not None:
                    d = max(d, n.frozen_until)
                    if best is None or d < best[0]:
                        best = (d, name)
            qt = self.q[0][0] if self.q else None
            if best and (qt is None or best[0] < qt) and best[0] <= t_end:
                self.now = max(self.now, best[0])
                self._feed(best[1], ev.Tick(wall=1_700_000_000 + self.now, local_seconds=self._local()))
                continue
            if qt is not None and qt <= t_end:
                t, _, node, kind, payload = heapq.heappop(self.q)
                self.now = max(self.now, t)
                n = self.nodes.get(node)
                if n is not None and n.frozen_until > self.now and kind != "boot":
                    self.at(n.frozen_until, node, kind, payload)  # a frozen process reads later
                    continue
                self._dispatch(node, kind, payload)
                continue
            self.now = t_end
            return

    def _local(self) -> float:
        return (self.cfg.get("_local_offset", 0.0) + self.now) % 86400

    # -------------------------------------------------------------- inputs
    def _dispatch(self, node: str, kind: str, payload) -> None:
        if kind == "boot":
            role = payload
            cfg = make_config(role, **{k: v for k, v in self.cfg.items() if not k.startswith("_")})
            prev = self.nodes.get(node)
            persisted = Persisted(term=prev.persisted_terms[-1] if prev and prev.persisted_terms else 0)
            sup = Supervisor(cfg, now=self.now, persisted=persisted)
            n = SimNode(sup, persisted_terms=list(prev.persisted_terms) if prev else [],
                        used_terms=set(prev.used_terms) if prev else set())
            self.nodes[node] = n
            self._run_actions(node, sup.start(self.now))
            return
        n = self.nodes.get(node)
        if n is None or n.exited:
            return  # not booted yet: a real node would not be listening either
        if kind == "event":
            self._feed(node, payload)
        elif kind == "service_up":
            gen = payload
            if gen == n.service.generation and not n.service.alive:
                n.service.alive = True
                self._feed(node, ev.ServiceStarted(pid=gen))
                self.at(self.now + self.HEALTH, node, "health", gen)
        elif kind == "health":
            if payload == n.service.generation and n.service.alive:
                st = "active" if n.service.active_term is not None else "inactive"
                self._feed(node, ev.ServiceHealthReport(st, n.service.active_term, n.service.calls,
                                                        n.service.health))
                self.at(self.now + self.HEALTH, node, "health", payload)
        elif kind == "crash_service":
            if n.service.alive:
                n.service = FakeService(generation=n.service.generation)
                self._feed(node, ev.ServiceExited("killed"))
        elif kind == "peer":
            self._feed(node, payload)

    def _feed(self, node: str, event) -> None:
        n = self.nodes[node]
        if n.exited:
            return
        if n.frozen_until > self.now:  # a stopped process handles its input when it resumes
            self.at(n.frozen_until, node, "event", event)
            return
        acts = n.sup.handle(event, self.now)
        self._run_actions(node, acts)

    def _run_actions(self, node: str, acts: list) -> None:
        n = self.nodes[node]
        other = "b" if node == "a" else "a"
        for a in acts:
            if isinstance(a, ev.PersistState):
                if n.persisted_terms and a.term < n.persisted_terms[-1]:
                    raise InvariantError(f"{node}: term went backwards {n.persisted_terms[-1]} -> {a.term}")
                n.persisted_terms.append(a.term)
            elif isinstance(a, ev.ActivateService):
                if not n.persisted_terms or a.term > n.persisted_terms[-1]:
                    raise InvariantError(f"{node}: activated term {a.term} beyond its durable "
                                         f"reservation {n.persisted_terms[-1:]}")
                if a.term in n.used_terms:
                    raise InvariantError(f"{node}: term {a.term} taken twice")
                n.used_terms.add(a.term)
                if a.term % 2 != (0 if n.sup.cfg.role is Role.PRIMARY else 1):
                    raise InvariantError(f"{node}: term {a.term} has the wrong parity")
                if ("peer silent" in n.sup.cause and self.link_up
                        and self.link_up_since <= self.now - n.sup.peer_timeout):
                    # the link worked all along: the silence was a frozen or dead node manager
                    o = self.nodes.get(other)
                    if o and not o.exited and o.service.answering(self.now):
                        raise InvariantError(f"{node} took over from a silent peer whose service "
                                             f"still answers (lease until {o.service.lease_expiry})")
                if n.service.alive:
                    n.service.active_term = a.term
                    n.service.lease_expiry = self.now + a.lease
                    self.at(self.now + 0.001, node, "event", ev.ServiceActivated(a.term))
            elif isinstance(a, ev.RenewLease):
                if n.service.alive and n.service.active_term == a.term:
                    n.service.lease_expiry = self.now + a.lease
            elif isinstance(a, ev.DeactivateService):
                if n.service.alive:
                    n.service.active_term = None
                    self.at(self.now + 0.001, node, "event", ev.ServiceDeactivated(a.term, n.service.calls))
            elif isinstance(a, ev.StartService):
                n.service.generation += 1
                n.service.alive = False
                self.at(self.now + self.SERVICE_START, node, "service_up", n.service.generation)
            elif isinstance(a, (ev.KillService, ev.ShutdownService)):
                n.service = FakeService(generation=n.service.generation + 1)
            elif isinstance(a, ev.SendStatus):
                if self.link_up:
                    self.at(self.now + self.LATENCY, other, "peer", self._heartbeat(node))
            elif isinstance(a, ev.SendCommand):
                if self.link_up:
                    self.at(self.now + self.LATENCY, other, "peer", ev.PeerCommand(a.kind, a.term, a.reason))
            elif isinstance(a, ev.RefuseCall):
                n.refused.append(a.call_id)
            elif isinstance(a, ev.ReplicationBarrier):  # replication finishes after _repl_delay
                n.barriers.append(a.number)
                self.at(self.now + self.cfg.get("_repl_delay", 0.05), node, "event",
                        ev.ReplicationProgress(pending=0, barrier=a.number))
            elif isinstance(a, ev.AdminReply):
                n.replies.append(a)
            elif isinstance(a, ev.Log):
                n.logs.append(a)
            elif isinstance(a, ev.Exit):
                n.exited = True
                n.service = FakeService()
        self.history.append((self.now, node, n.sup.state, n.sup.term))
        self.check_invariants()

    def _heartbeat(self, node: str) -> ev.PeerHeartbeat:
        return ev.heartbeat_from(self.nodes[node].sup.status(self.now))

    # -------------------------------------------------------------- invariants and helpers
    def check_invariants(self) -> None:
        serving = [(name, n.service.active_term) for name, n in self.nodes.items()
                   if not n.exited and n.service.active_term is not None]
        terms = [t for _, t in serving]
        if len(terms) != len(set(terms)):
            raise InvariantError(f"two services active in one term: {serving}")
        actives = [(name, n.sup.term) for name, n in self.nodes.items()
                   if not n.exited and n.sup.state in (State.ACTIVE, State.ACTIVATING)]
        if len({t for _, t in actives}) != len(actives):
            raise InvariantError(f"two active nodes in one term: {actives}")

    def state(self, node: str) -> State:
        return self.nodes[node].sup.state

    def actives(self) -> list[str]:
        return sorted(name for name, n in self.nodes.items()
                      if not n.exited and n.sup.state is State.ACTIVE)

    def admin(self, node: str, kind: str, arg: str = "", force: bool = False) -> ev.AdminReply | None:
        before = len(self.nodes[node].replies)
        self._feed(node, ev.AdminRequest(request_id=before + 1, kind=kind, arg=arg, force=force))
        replies = self.nodes[node].replies
        return replies[before] if len(replies) > before else None

    def call(self, node: str, call_id: str = "c1") -> None:
        self._feed(node, ev.CallOffered(call_id=call_id, port=f"{node}-port-1"))

    def freeze(self, node: str, duration: float) -> None:
        self.nodes[node].frozen_until = self.now + duration

    def set_calls(self, node: str, calls: int) -> None:
        self.nodes[node].service.calls = calls

    def set_health(self, node: str, health: int) -> None:
        """What the node's service reports as its drivers' health from its next report on
        (a restarted service reports 100 again)."""
        self.nodes[node].service.health = health

    def logs(self, node: str, event: str) -> list[ev.Log]:
        return [lg for lg in self.nodes[node].logs if lg.event == event]


def service_health(n: SimNode) -> ServiceHealth:
    return n.sup.service
