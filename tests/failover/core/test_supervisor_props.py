"""Property tests of the supervisor (h2-style): every (state × event) pair is handled without
error, and no schedule of faults ever yields two active nodes in one term; once the faults
stop, the pair converges to exactly one active node."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failover.core import events as ev
from failover.core.state import Mode, Role, ServiceHealth, State
from tests.failover.sim import Sim

EVENTS = [
    ev.Tick(1.7e9, 3600.0),
    ev.PeerHeartbeat("b", Role.SECONDARY, State.ACTIVE, 99, ServiceHealth.RUNNING),
    ev.PeerHeartbeat("b", Role.SECONDARY, State.INACTIVE, 1, ServiceHealth.RUNNING),
    ev.PeerHeartbeat("b", Role.SECONDARY, State.STARTING, 0, ServiceHealth.STARTING, eligible=False),
    ev.PeerHeartbeat("b", Role.SECONDARY, State.INACTIVE, 5, ServiceHealth.FAILED, eligible=False),
    ev.PeerHeartbeat("x", Role.PRIMARY, State.ACTIVE, 4, ServiceHealth.RUNNING),
    ev.PeerCommand("step_down", 1000, "test"),
    ev.PeerCommand("yield", 1001, "test"),
    ev.PeerCommand("take_over", 1000, "test"),
    ev.PeerCommand("step_down", 0, "stale"),
    ev.PeerCommand("bogus", 5, "?"),
    ev.ServiceStarted(7),
    ev.ServiceHealthReport("active", 2, 1),
    ev.ServiceHealthReport("inactive", None, 0),
    ev.ServiceActivated(2),
    ev.ServiceDeactivated(2, 0),
    ev.ServiceFenced(2, "lease"),
    ev.ServiceExited("killed"),
    ev.CallOffered("c", "p"),
    ev.AdminRequest(1, "failover"),
    ev.AdminRequest(2, "failback", force=True),
    ev.AdminRequest(3, "mode", "manual"),
    ev.AdminRequest(4, "nonsense"),
    ev.ShutdownRequested(),
    ev.ActionFailed(ev.PersistState(2, None), "disk full"),
]


def sim_in_state(target: State) -> Sim:
    """Drive a real two-node simulation until node 'a' is in ``target``."""
    sim = Sim()
    sim.run_until(2.0)  # a active, b inactive
    if target is State.ACTIVE:
        return sim
    if target is State.INACTIVE:
        sim.admin("a", "failover")
        sim.run_until(sim.now + 0.5)
    elif target is State.DRAINING:
        sim.set_calls("a", 2)
        sim.run_until(sim.now + 0.1)
        sim.admin("a", "failover")
        sim.run_until(sim.now + 0.01)
    elif target is State.ACTIVATING:
        sim.admin("a", "failover")
        sim.run_until(sim.now + 0.5)
        sim._feed("a", ev.CallOffered("c0", "p"))
    elif target is State.STARTING:
        sim = Sim(start_b_at=0.0)
        sim.run_until(0.01)
    elif target is State.STOPPED:
        sim._feed("a", ev.ShutdownRequested())
        sim.set_calls("a", 0)
        sim.run_until(sim.now + 1)
    return sim


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=st.sampled_from(list(State)), events=st.lists(st.sampled_from(EVENTS), min_size=1, max_size=4),
       dt=st.floats(0.0, 2.0))
def test_every_state_event_pair_is_handled(state, events, dt):
    sim = sim_in_state(state)
    sup = sim.nodes["a"].sup
    term0 = sup.term
    durable = max(sim.nodes["a"].persisted_terms, default=0)
    now = sim.now
    for e in events:
        now += dt / len(events)
        acts = sup.handle(e, now)
        assert all(isinstance(a, ev.Action.__args__) for a in acts)
        for a in acts:
            if isinstance(a, ev.PersistState):
                durable = max(durable, a.term)
            if isinstance(a, ev.ActivateService):
                assert a.term % 2 == 0, "primary terms are even"
                assert a.term <= durable, "activated beyond the durable reservation"
        assert sup.term >= term0, "terms only move forward"
        term0 = sup.term
        if sup.state is State.ACTIVE:
            assert sup.service is ServiceHealth.RUNNING, "active without a running service"
        d = sup.next_deadline()
        assert (d is None) == (sup.state is State.STOPPED)
        assert d is None or d > now, "a deadline in the past would spin the driver"


FAULTS = st.sampled_from(["cut", "heal", "crash_a", "crash_b", "call_a", "call_b", "failover_a",
                          "failback_b", "freeze_a", "freeze_b", "manual_b", "auto_b"])
# with a replication wait, operator commands on the inactive node ask the active one to hand over
FAULTS_REPL = st.sampled_from(["cut", "heal", "crash_a", "crash_b", "call_a", "call_b", "failover_a",
                               "failback_b", "failover_b", "failback_a", "freeze_a", "freeze_b",
                               "manual_b", "auto_b"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faults=st.lists(st.tuples(FAULTS, st.floats(0.0, 1.5)), min_size=1, max_size=12))
def test_no_two_actives_in_one_term_and_convergence(faults):
    _run_faults(Sim(max_restarts=1000), faults)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faults=st.lists(st.tuples(FAULTS_REPL, st.floats(0.0, 1.5)), min_size=1, max_size=12),
       repl_delay=st.sampled_from([0.0, 0.05, 0.25, 0.6]))
def test_invariants_hold_with_replication_wait(faults, repl_delay):
    """Planned handovers wait for replication (0.4 s at most here); a replication that never
    finishes in time (0.6 s) takes the timeout path.  The same invariants and convergence hold."""
    _run_faults(Sim(max_restarts=1000, handover_wait=0.4, _repl_delay=repl_delay), faults)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faults=st.lists(st.tuples(FAULTS_REPL, st.floats(0.0, 1.5)), min_size=1, max_size=12),
       max_restarts=st.sampled_from([0, 1, 2]))
def test_invariants_hold_while_services_back_off(faults, max_restarts):
    """A small restart budget: crashed services back off (never give up) under the same
    faults; the invariants and the convergence to one active node still hold."""
    _run_faults(Sim(max_restarts=max_restarts, handover_wait=0.4, _repl_delay=0.05), faults)


def _run_faults(sim: Sim, faults) -> None:
    sim.run_until(2.0)
    n = 0
    for fault, gap in faults:
        sim.run_until(sim.now + gap)
        n += 1
        if fault == "cut":
            sim.link_up = False
        elif fault == "heal":
            sim.link_up = True
        elif fault.startswith("crash_"):
            sim.at(sim.now, fault[-1], "crash_service")
        elif fault.startswith("call_"):
            sim.call(fault[-1], f"call{n}")
        elif fault == "failover_a":
            sim.admin("a", "failover")
        elif fault == "failback_b":
            sim.admin("b", "failback")
        elif fault == "failover_b":
            sim.admin("b", "failover")
        elif fault == "failback_a":
            sim.admin("a", "failback")
        elif fault.startswith("freeze_"):
            sim.freeze(fault[-1], 1.0 + gap)
        elif fault == "manual_b":
            sim.admin("b", "mode", "manual")
        elif fault == "auto_b":
            sim.admin("b", "mode", "automatic")
    # every step above ran check_invariants (no two actives in one term, terms monotonic,
    # persisted before activation, silent-peer takeover only after the peer's lease lapsed)
    sim.link_up = True
    sim.run_until(sim.now + 5.0)
    actives = sim.actives()
    assert len(actives) == 1, (actives, [(k, v.sup.state, v.sup.service, v.sup.cause)
                                         for k, v in sim.nodes.items()])
    for node in sim.nodes.values():
        assert node.persisted_terms == sorted(node.persisted_terms)
    if sim.nodes["b"].sup.mode is Mode.AUTOMATIC:
        assert sim.nodes[actives[0]].service.answering(sim.now)
