"""The supervisor core, deterministic: hand-stepped time and the two-node simulator.
Each test names the rule of the failover guide it checks (see docs/failover-rules.md)."""
from __future__ import annotations

import pytest

from failover.core import events as ev
from failover.core.state import FailbackType, Mode, Role, ServiceHealth, State, next_term
from failover.core.supervisor import Persisted, Supervisor, SupervisorConfig
from tests.failover.sim import Sim, make_config

PING = 0.1
TIMEOUT = PING * 6


def booted(**kw) -> Sim:
    sim = Sim(**kw)
    sim.run_until(2.0)
    return sim


# ----------------------------------------------------------------------------- terms


def test_terms_have_role_parity_and_only_grow():
    assert next_term(Role.PRIMARY, 0) == 2
    assert next_term(Role.SECONDARY, 0) == 1
    assert next_term(Role.PRIMARY, 7) == 8
    assert next_term(Role.SECONDARY, 8) == 9
    assert next_term(Role.SECONDARY, 9) == 11


def test_lease_must_be_shorter_than_takeover_timeout():
    with pytest.raises(ValueError):
        SupervisorConfig(node="a", role=Role.PRIMARY, peer_name="b", lease=0.7)


def test_activation_reserves_terms_durably_before_activating():
    sup = Supervisor(make_config(Role.PRIMARY), now=0.0, persisted=Persisted(term=6))
    sup.start(0.0)
    sup.handle(ev.ServiceStarted(1), 0.1)
    acts = []
    while sup.state is State.STARTING:  # nobody heard since start: timers only
        now = sup.next_deadline()
        acts = sup.handle(ev.Tick(0, 0), now)
        if sup.state is State.INACTIVE:
            acts += sup.handle(ev.ServiceHealthReport("inactive", None, 0), now)
    kinds = [type(a) for a in acts]
    i, j = kinds.index(ev.PersistState), kinds.index(ev.ActivateService)
    assert i < j  # the reservation is durable before the service hears of the term
    assert acts[j].term == 8 and acts[i].term >= 8
    assert sup.state is State.ACTIVATING
    # the next activations inside the reservation need no disk write
    reserved = acts[i].term
    sup.handle(ev.ServiceActivated(8), now)
    sup.handle(ev.PeerCommand("step_down", 9, "peer took over"), now + 0.01)
    sup.handle(ev.ServiceDeactivated(9, 0), now + 0.02)
    acts = sup.handle(ev.AdminRequest(1, "failback", force=True), now + 0.03)
    act = [a for a in acts if isinstance(a, ev.ActivateService)]
    assert act and act[0].term == 10 <= reserved
    assert not any(isinstance(a, ev.PersistState) for a in acts)
    # a restart continues above the reservation: no term is ever taken twice
    again = Supervisor(make_config(Role.PRIMARY), now=0.0, persisted=Persisted(term=reserved))
    again.start(0.0)
    again.handle(ev.ServiceStarted(1), 0.1)
    t = 0.1
    while again.state is not State.ACTIVATING:
        t = again.next_deadline()
        acts = again.handle(ev.ServiceHealthReport("inactive", None, 0), t)
    act = [a for a in acts if isinstance(a, ev.ActivateService)][0]
    assert act.term > reserved
    assert [a for a in acts if isinstance(a, ev.PersistState)][0].term >= act.term


# ----------------------------------------------------------------------------- start-up order


def test_primary_started_first_becomes_active():
    sim = Sim(start_b_at=5.0)
    sim.run_until(4.0)
    assert sim.actives() == ["a"]
    assert sim.nodes["a"].sup.cause.startswith("first node started")
    sim.run_until(8.0)
    assert sim.actives() == ["a"] and sim.state("b") is State.INACTIVE


def test_secondary_started_first_becomes_active_and_stays():
    sim = Sim(start_a_at=5.0)
    sim.run_until(4.0)
    assert sim.actives() == ["b"]
    sim.run_until(8.0)
    assert sim.actives() == ["b"] and sim.state("a") is State.INACTIVE


def test_started_together_primary_wins():
    sim = booted()
    assert sim.actives() == ["a"]
    assert sim.state("b") is State.INACTIVE


# ----------------------------------------------------------------------------- failover triggers


def test_peer_silent_only_the_inactive_node_initiates():
    sim = booted()
    sim.link_up = False
    sim.run_until(2.0 + TIMEOUT + 0.2)
    # the secondary (inactive) takes over; the primary (active) does nothing on missed pings
    assert sim.actives() == ["a", "b"]
    assert sim.nodes["b"].sup.cause.startswith("peer silent")
    assert not sim.logs("a", "deactivated")


def test_peer_silent_takeover_time_is_the_configured_timeout():
    sim = booted()
    sim.link_up = False
    t0 = sim.now
    sim.run_until(t0 + 3)
    act = [lg for lg in sim.logs("b", "activating")][0]
    done = [lg for lg in sim.logs("b", "failover")][0]
    assert "peer silent" in act.fields["cause"]
    # the last heartbeat left a at most one ping before the cut: detection within timeout + ping
    assert done.fields["took_ms"] < 5


def test_active_service_crash_fails_over_at_once():
    sim = booted()
    sim.at(2.5, "a", "crash_service")
    sim.run_until(2.5 + 0.01)
    assert sim.state("b") is State.ACTIVE
    assert sim.state("a") is State.INACTIVE
    assert "peer service" in sim.nodes["b"].sup.cause
    # a restarts its service locally as inactive, and stays inactive
    sim.run_until(4.0)
    assert sim.nodes["a"].sup.service is ServiceHealth.RUNNING
    assert sim.actives() == ["b"]


def crash_loop(sup: Supervisor, failures: int, *, peer_state: State | None = State.ACTIVE,
               peer_until: float = float("inf"), up_for: float = 0.02):
    """Drive one supervisor whose service dies ``up_for`` after every start, ``failures`` times.
    The peer (if ``peer_state``) sends a heartbeat every ping until ``peer_until``.  Time only
    moves to the supervisor's own deadlines and to these inputs, so a retry that is not a
    supervisor deadline would be late.  Returns [(failed_at, delay to the next start)], logs."""
    t = 0.0
    queue: list[tuple[float, object]] = []
    acts = sup.start(t)
    next_hb = 0.0 if peer_state is not None else float("inf")
    failed_at: float | None = None
    out, logs = [], []
    n = 0
    while True:
        for a in acts:
            if isinstance(a, ev.StartService):
                if failed_at is not None:
                    out.append((failed_at, t - failed_at))
                    failed_at = None
                if n == failures:
                    return out, logs
                queue.append((t + 0.01, ev.ServiceStarted(1)))
                queue.append((t + 0.01 + up_for, ev.ServiceExited("killed")))
            elif isinstance(a, ev.Log):
                logs.append(a)
        queue.sort(key=lambda x: x[0])
        cands = [sup.next_deadline(), next_hb if next_hb < peer_until else float("inf")]
        if queue:
            cands.append(queue[0][0])
        t = min(cands)
        assert t < 10_000, "no retry scheduled"
        if queue and queue[0][0] == t:
            e = queue.pop(0)[1]
            if isinstance(e, ev.ServiceExited):
                n += 1
                failed_at = t
        elif t == next_hb:
            e = ev.PeerHeartbeat("a", Role.PRIMARY, peer_state, 2, ServiceHealth.RUNNING)
            next_hb += PING
        else:
            e = ev.Tick(0, 0)
        acts = sup.handle(e, t)


def test_service_backoff_doubles_and_caps_while_the_peer_serves():
    cfg = make_config(Role.SECONDARY, max_restarts=2, restart_window=1000.0)
    sup = Supervisor(cfg, now=0.0)
    delays, logs = crash_loop(sup, 11)
    assert [round(d, 6) for _, d in delays] == [0, 0, 0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    backoffs = [lg for lg in logs if lg.event == "service_backoff"]
    assert [lg.fields["failures"] for lg in backoffs] == list(range(3, 12))
    assert [lg.fields["retry_in_s"] for lg in backoffs] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert sup.service is ServiceHealth.STARTING  # the 12th start is under way: never given up


def test_backing_off_node_is_not_eligible_and_reports_count_and_next_attempt():
    cfg = make_config(Role.SECONDARY, max_restarts=1, restart_window=1000.0)
    sup = Supervisor(cfg, now=0.0)
    crash_loop(sup, 3)  # the 3rd start is under way: let it fail
    t = 100.0
    sup.handle(ev.PeerHeartbeat("a", Role.PRIMARY, State.ACTIVE, 2, ServiceHealth.RUNNING), t)
    sup.handle(ev.ServiceStarted(1), t)
    acts = sup.handle(ev.ServiceExited("killed"), t + 0.01)
    st = sup.status(t + 0.01)
    assert st.service is ServiceHealth.FAILED and not st.eligible
    assert st.service_failures == 4 and st.service_retry_in == pytest.approx(2.0)
    assert ev.heartbeat_from(st).eligible is False
    assert not any(isinstance(a, ev.StartService) for a in acts)
    assert sup.next_deadline() <= t + 0.01 + 2.0
    st = sup.status(t + 1.01)
    assert st.service_retry_in == pytest.approx(1.0)


def test_service_failures_expire_after_the_restart_window():
    cfg = make_config(Role.SECONDARY, max_restarts=2, restart_window=10.0)
    sup = Supervisor(cfg, now=0.0)
    delays, _ = crash_loop(sup, 4)
    assert [round(d, 6) for _, d in delays] == [0, 0, 0.5, 1]
    t = delays[-1][0] + 1 + 0.01
    sup.handle(ev.ServiceStarted(1), t)
    assert sup.status(t).service_failures == 4
    while t < delays[-1][0] + 10.5:  # the service runs for longer than the window
        t += 0.05
        sup.handle(ev.ServiceHealthReport("inactive", None, 0), t)
    assert sup.status(t).service_failures == 0
    acts = sup.handle(ev.ServiceExited("killed"), t)
    assert any(isinstance(a, ev.StartService) for a in acts)  # a quick restart again
    assert sup.status(t).service_failures == 1 and sup.status(t).service_retry_in is None


def test_a_node_whose_peer_is_not_serving_never_stops_retrying():
    """100 failures in a row: every one is followed by a start within restart_backoff_alone."""
    cfg = make_config(Role.SECONDARY, max_restarts=5, restart_window=10_000.0)
    for peer_state in (None, State.INACTIVE):
        sup = Supervisor(cfg, now=0.0)
        delays, logs = crash_loop(sup, 100, peer_state=peer_state)
        assert len(delays) == 100
        assert max(d for _, d in delays) == pytest.approx(cfg.restart_backoff_alone)
        assert [round(d, 6) for _, d in delays[:9]] == [0, 0, 0, 0, 0, 0.5, 1, 2, 2]
        assert [lg.fields["failures"] for lg in logs if lg.event == "service_backoff"][-1] == 100


def test_a_long_backoff_shortens_when_the_peer_stops_serving():
    cfg = make_config(Role.SECONDARY, max_restarts=0, restart_window=10_000.0)
    sup = Supervisor(cfg, now=0.0)
    delays, _ = crash_loop(sup, 6)  # delays 0.5 1 2 4 8 16: the 6th start is under way
    t = sum(d for _, d in delays) + 1.0
    sup.handle(ev.PeerHeartbeat("a", Role.PRIMARY, State.ACTIVE, 2, ServiceHealth.RUNNING), t)
    sup.handle(ev.ServiceStarted(1), t)
    sup.handle(ev.ServiceExited("killed"), t)
    assert sup.status(t).service_retry_in == pytest.approx(cfg.restart_backoff_max)
    # the peer goes silent: the node must not wait 30 s with nobody serving
    now, started = t, None
    while started is None:
        now = sup.next_deadline()
        if any(isinstance(a, ev.StartService) for a in sup.handle(ev.Tick(0, 0), now)):
            started = now
    assert started == pytest.approx(t + cfg.restart_backoff_alone)


def test_active_service_killed_every_3s_the_pair_never_gives_up():
    """Kill whichever service is active every 3 s, 15 times, with the default budget: after
    every kill the other node takes over, and at the end exactly one node is active."""
    sim = booted(max_restarts=5, restart_window=60.0)
    for k in range(15):
        (victim,) = sim.actives()
        sim.at(sim.now, victim, "crash_service")
        sim.run_until(sim.now + 3.0)
        assert len(sim.actives()) == 1, (k, [(n, v.sup.state, v.sup.service) for n, v in sim.nodes.items()])
    sim.run_until(sim.now + 5.0)
    assert len(sim.actives()) == 1
    assert all(n.sup.service is ServiceHealth.RUNNING for n in sim.nodes.values())
    assert sim.logs("a", "service_backoff") and sim.logs("b", "service_backoff")


def test_service_hang_is_detected_by_missed_health_reports():
    cfg = make_config(Role.PRIMARY, health_timeout=0.1)
    sup = Supervisor(cfg, now=0.0)
    sup.start(0.0)
    sup.handle(ev.ServiceStarted(1), 0.05)
    acts = sup.handle(ev.Tick(0, 0), 0.16)
    assert any(isinstance(a, ev.KillService) for a in acts)
    assert any(isinstance(a, ev.StartService) for a in acts)


def test_call_offered_at_inactive_node_fails_over_immediately():
    sim = booted()
    t0 = sim.now
    sim.call("b", "call-42")
    sim.run_until(t0 + 0.01)
    assert sim.actives() == ["b"]
    assert sim.state("a") is State.INACTIVE
    a_log = sim.logs("a", "deactivated")[-1]
    assert "peer took over" in a_log.message and "call-42" in a_log.message
    # order: the secondary told the primary to step down before activating
    b_acts = [lg for lg in sim.logs("b", "activating")]
    assert "call call-42" in b_acts[-1].fields["cause"]


def test_call_takeover_order_step_down_then_activate():
    sup = Supervisor(make_config(Role.SECONDARY), now=0.0)
    sup.start(0.0)
    sup.handle(ev.ServiceStarted(1), 0.05)
    sup.handle(ev.PeerHeartbeat("a", Role.PRIMARY, State.ACTIVE, 2, ServiceHealth.RUNNING), 0.06)
    assert sup.state is State.INACTIVE
    acts = sup.handle(ev.CallOffered("c9", "p1"), 0.07)
    kinds = [type(a).__name__ for a in acts if not isinstance(a, ev.Log)]
    assert kinds[:3] == ["PersistState", "SendCommand", "ActivateService"]
    assert acts[1].kind == "step_down" and acts[1].term == 3


def test_call_at_inactive_node_refused_in_manual_mode():
    sim = booted(mode=Mode.MANUAL)
    sim.call("b", "c1")
    sim.run_until(sim.now + 0.1)
    assert sim.actives() == ["a"]
    assert sim.nodes["b"].refused == ["c1"]


def test_stale_step_down_is_refused():
    sim = booted()
    a = sim.nodes["a"].sup
    acts = a.handle(ev.PeerCommand("step_down", a.term - 1, "old"), sim.now)
    assert a.state is State.ACTIVE
    assert any(isinstance(x, ev.Log) and x.event == "stale_command" for x in acts)


# ----------------------------------------------------------------------------- failback


def test_manual_failover_and_failback_with_calls_in_progress():
    sim = booted()
    sim.set_calls("a", 3)
    sim.run_until(sim.now + 0.1)
    reply = sim.admin("a", "failover")
    assert reply.ok, reply.message
    sim.run_until(sim.now + 0.05)
    assert sim.actives() == ["b"]
    assert sim.state("a") is State.DRAINING  # calls in progress keep going
    assert sim.nodes["a"].sup.hold
    sim.set_calls("a", 0)
    sim.run_until(sim.now + 0.2)
    assert sim.state("a") is State.INACTIVE
    # the held primary does not grab a stray call back
    sim.call("a", "stray")
    assert sim.actives() == ["b"] and "stray" in sim.nodes["a"].refused
    reply = sim.admin("a", "failback")  # asked on the inactive target: it takes over
    assert reply.ok
    sim.run_until(sim.now + 0.05)
    assert sim.actives() == ["a"]
    assert sim.nodes["b"].sup.hold


def test_planned_failover_waits_for_replication_then_hands_over():
    """Guide: failover occurs after replication is complete (bounded wait, reported)."""
    sim = booted(handover_wait=1.0, _repl_delay=0.3)
    assert sim.admin("a", "failover").ok
    sim.run_until(sim.now + 0.2)
    assert sim.actives() == ["a"]  # a still answers calls; b waits for the take_over
    assert sim.nodes["a"].sup.handing_over  # ... but configuration writes are refused
    assert sim.nodes["a"].barriers == [1]
    sim.run_until(sim.now + 0.2)
    assert sim.actives() == ["b"]
    logs = sim.logs("a", "handover_replicated")
    assert logs and 0.29 <= logs[0].fields["wait_s"] <= 0.31
    assert not sim.logs("a", "handover_unreplicated")


def test_planned_failover_hands_over_at_the_deadline_when_replication_lags():
    sim = booted(handover_wait=0.5, _repl_delay=5.0)
    assert sim.admin("a", "failover").ok
    sim.run_until(sim.now + 0.45)
    assert sim.actives() == ["a"]
    sim.run_until(sim.now + 0.15)
    assert sim.actives() == ["b"]
    (log,) = sim.logs("a", "handover_unreplicated")
    assert log.fields["pending"] == "unknown" and log.fields["wait_s"] == 0.5


def test_pending_changes_keep_the_handover_waiting():
    sim = booted(handover_wait=1.0, _repl_delay=10.0)
    a = sim.nodes["a"].sup
    assert sim.admin("a", "failover").ok
    sim.run_until(sim.now + 0.1)
    sim.at(sim.now, "a", "event", ev.ReplicationProgress(pending=3, barrier=1))
    sim.run_until(sim.now + 0.1)
    assert sim.actives() == ["a"] and a.repl_pending == 3
    sim.at(sim.now, "a", "event", ev.ReplicationProgress(pending=0, barrier=1))
    sim.run_until(sim.now + 0.05)
    assert sim.actives() == ["b"]


def test_a_dead_peer_is_not_waited_for():
    sim = booted(handover_wait=5.0, _repl_delay=60.0)
    assert sim.admin("a", "failover").ok
    sim.run_until(sim.now + 0.05)
    sim.link_up = False
    sim.run_until(sim.now + TIMEOUT + 0.3)
    assert sim.logs("a", "handover_failed")
    assert sim.nodes["a"].sup.state is State.ACTIVE and not sim.nodes["a"].sup.handing_over


def test_operator_command_on_the_inactive_node_asks_the_active_one_to_hand_over():
    sim = booted(handover_wait=1.0, _repl_delay=0.2)
    assert sim.admin("a", "failover").ok
    sim.run_until(sim.now + 0.5)
    assert sim.actives() == ["b"]
    reply = sim.admin("a", "failback")  # asked on the inactive primary
    assert reply.ok and "asked b to hand over" in reply.message
    sim.run_until(sim.now + 0.1)
    assert sim.actives() == ["b"] and sim.nodes["b"].sup.handing_over  # waiting for replication
    sim.run_until(sim.now + 0.2)
    assert sim.actives() == ["a"]
    assert sim.nodes["b"].sup.hold and not sim.nodes["a"].sup.hold
    assert sim.logs("b", "handover_replicated")


def test_shutdown_of_the_active_node_waits_for_replication_before_exiting():
    sim = booted(handover_wait=1.0, _repl_delay=0.3)
    sim.at(sim.now, "a", "event", ev.ShutdownRequested("SIGTERM"))
    sim.run_until(sim.now + 0.2)
    assert not sim.nodes["a"].exited and sim.actives() == ["a"]
    sim.run_until(sim.now + 0.3)
    assert sim.nodes["a"].exited and sim.actives() == ["b"]


def test_failover_refused_when_peer_unreachable():
    sim = booted()
    sim.link_up = False
    sim.run_until(sim.now + TIMEOUT + 0.05)
    reply = sim.admin("a", "failover")
    assert not reply.ok and "not reachable" in reply.message


def test_scheduled_failback_inside_window_only():
    # local clock: the sim's 'now' is seconds after 01:00; window 02:00-03:00
    sim = Sim(start_a_at=10.0, failback_type=FailbackType.SCHEDULED,
              failback_window=(7200.0, 10800.0), _local_offset=3600.0)
    sim.run_until(20.0)  # b started first: b active, a inactive
    assert sim.actives() == ["b"]
    sim.run_until(3599.0)  # 01:59:59 local
    assert sim.actives() == ["b"]
    sim.run_until(3601.0)  # 02:00:01 local, primary healthy
    assert sim.actives() == ["a"]
    assert any("scheduled failback" in lg.message for lg in sim.logs("b", "deactivated"))


def test_no_scheduled_failback_when_failback_is_manual():
    sim = Sim(start_a_at=10.0, _local_offset=7200.0)
    sim.run_until(100.0)
    assert sim.actives() == ["b"]


# ----------------------------------------------------------------------------- shutdown


def test_sigterm_of_active_hands_over_and_drains():
    sim = booted()
    sim.set_calls("a", 2)
    sim.run_until(sim.now + 0.1)
    sim._feed("a", ev.ShutdownRequested())
    sim.run_until(sim.now + 0.05)
    assert sim.actives() == ["b"]
    assert sim.state("a") is State.DRAINING and not sim.nodes["a"].exited
    sim.set_calls("a", 0)
    sim.run_until(sim.now + 0.2)
    assert sim.nodes["a"].exited


def test_sigterm_of_inactive_stops_at_once():
    sim = booted()
    sim._feed("b", ev.ShutdownRequested())
    assert sim.nodes["b"].exited
    assert sim.actives() == ["a"]


# ----------------------------------------------------------------------------- partitions


def test_partition_both_active_then_heal_primary_stays():
    sim = booted()
    a_term = sim.nodes["a"].sup.term
    sim.link_up = False
    sim.run_until(sim.now + 2)
    assert sim.actives() == ["a", "b"]
    b_term = sim.nodes["b"].sup.term
    assert b_term > a_term
    a_deact = len(sim.logs("a", "deactivated"))
    sim.link_up = True
    sim.run_until(sim.now + 0.5)
    assert sim.actives() == ["a"]
    assert len(sim.logs("a", "deactivated")) == a_deact  # no interruption on the primary
    assert sim.nodes["a"].sup.term > b_term  # the primary moved above the secondary's term
    assert sim.state("b") in (State.INACTIVE, State.DRAINING)


def test_stalled_active_node_manager_fences_and_converges():
    sim = booted()
    sim.freeze("a", 3.0)  # SIGSTOP of the active node manager
    sim.run_until(sim.now + 2.0)
    assert sim.state("b") is State.ACTIVE
    assert not sim.nodes["a"].service.answering(sim.now)  # a's service fenced itself
    sim.run_until(sim.now + 2.0)  # SIGCONT
    assert sim.actives() == ["b"]
    assert sim.logs("a", "stall")


def test_stalled_inactive_node_manager_does_not_false_failover():
    sim = booted()
    sim.freeze("b", 3.0)
    sim.run_until(sim.now + 5.0)
    assert sim.actives() == ["a"]
    assert not sim.logs("b", "activating")[1:] if sim.logs("b", "activating") else True
    assert sim.logs("b", "stall")


# ----------------------------------------------------------------------------- licensing


def test_secondary_alone_stops_answering_after_licence_limit():
    sim = Sim(start_a_at=10_000.0, licence_no_contact=100.0)
    sim.run_until(50.0)
    assert sim.actives() == ["b"]
    sim.run_until(101.0)
    assert sim.actives() == []
    assert any("licence" in lg.message for lg in sim.logs("b", "deactivated"))


def test_secondary_licence_after_contact_uses_wall_clock():
    cfg = make_config(Role.SECONDARY, licence_after_contact=1000.0)
    sup = Supervisor(cfg, now=0.0, persisted=Persisted(term=3, last_contact_wall=1_000_000.0))
    sup.handle(ev.Tick(wall=1_000_500.0, local_seconds=0), 1.0)
    assert sup.licensed(1.0)
    sup.handle(ev.Tick(wall=1_001_001.0, local_seconds=0), 2.0)
    assert not sup.licensed(2.0)
    sup.handle(ev.PeerHeartbeat("a", Role.PRIMARY, State.ACTIVE, 2, ServiceHealth.RUNNING), 2.1)
    assert sup.licensed(2.1)


def test_primary_has_no_licence_limit():
    sim = Sim(start_b_at=1e9, licence_no_contact=10.0)
    sim.run_until(50.0)
    assert sim.actives() == ["a"]


# ----------------------------------------------------------------------------- mode and admin


def test_manual_mode_does_not_fail_over_on_silence():
    sim = booted(mode=Mode.MANUAL)
    sim.link_up = False
    sim.run_until(sim.now + 3)
    assert sim.actives() == ["a"]


def test_mode_can_be_switched_at_run_time():
    sim = booted()
    r = sim.admin("b", "mode", "manual")
    assert r.ok and sim.nodes["b"].sup.mode is Mode.MANUAL
    assert not sim.admin("b", "mode", "sometimes").ok




def test_peer_silence_after_a_step_down_fails_over_at_the_normal_timeout():
    """The quiet period after a handover must not delay failover when the new active dies."""
    sim = booted()
    sim.call("b", "c1")  # b takes over, a steps down and goes quiet for handover_timeout
    sim.run_until(sim.now + 0.05)
    assert sim.actives() == ["b"]
    sim.link_up = False
    t0 = sim.now
    sim.run_until(t0 + 1.5)  # handover_timeout is 2.0 s: well before it ends
    assert sorted(sim.actives()) == ["a", "b"]
    act = sim.logs("a", "activating")[-1]
    assert "peer silent" in act.message


def test_step_down_without_a_heartbeat_does_not_trigger_the_startup_rule():
    """A step_down that arrives before any heartbeat proves the peer is up."""
    sup = Supervisor(make_config(Role.SECONDARY), now=0.0)
    sup.start(0.0)
    sup.handle(ev.ServiceStarted(1), 0.05)
    t = 0.05
    while sup.state is State.STARTING:
        t = sup.next_deadline()
        sup.handle(ev.ServiceHealthReport("inactive", None, 0), t)
    assert sup.state is State.ACTIVATING  # nobody heard: first node started
    sup.handle(ev.ServiceActivated(sup.term), t)
    t_cmd = t + 0.01
    sup.handle(ev.PeerCommand("step_down", 2, "both active"), t_cmd)
    while sup.next_deadline() < t_cmd + TIMEOUT:  # the command counts as hearing the peer
        t = sup.next_deadline()
        sup.handle(ev.Tick(0, 0), t)
        sup.handle(ev.ServiceHealthReport("inactive", None, 0), t)
        assert sup.state in (State.DRAINING, State.INACTIVE), sup.cause


def test_stall_does_not_kill_a_service_whose_health_reports_are_queued():
    """After a freeze longer than the health timeout, the queued health reports are read
    before the service is judged silent."""
    sup = Supervisor(make_config(Role.PRIMARY, health_timeout=1.0), now=0.0)
    sup.start(0.0)
    sup.handle(ev.ServiceStarted(1), 0.05)
    sup.handle(ev.ServiceHealthReport("inactive", None, 0), 0.1)
    acts = sup.handle(ev.Tick(0, 0), 3.1)  # frozen for 3 s: the timer is the first event seen
    assert not any(isinstance(a, ev.KillService) for a in acts)
    acts = sup.handle(ev.ServiceHealthReport("inactive", None, 0), 3.101)  # the queued report
    assert sup.service is ServiceHealth.RUNNING
    acts = sup.handle(ev.Tick(0, 0), 3.5)
    assert not any(isinstance(a, ev.KillService) for a in acts)



def test_a_crashed_peer_is_taken_over_at_once_even_right_after_a_handover():
    """The quiet period after a step-down does not wait for a peer that reports it cannot serve."""
    sim = booted()
    sim.call("b", "c1")  # b takes over; a steps down and is quiet for handover_timeout
    sim.run_until(sim.now + 0.2)
    sim.at(sim.now, "b", "crash_service")
    t0 = sim.now
    sim.run_until(t0 + 0.05)
    assert sim.actives() == ["a"]
    assert not sim.logs("a", "handover_failed")


def test_node_manager_restart_never_reuses_a_term():
    """Crash and restart the active node manager twice: every term it takes afterwards lies
    above its durable reservation, so no term is taken twice (the simulator checks it)."""
    sim = booted()
    for k in range(2):
        before = sim.nodes["a"].persisted_terms[-1]
        sim.nodes["a"].exited = True  # kill -9 of a's node manager (its service goes with it)
        sim.nodes["a"].service = type(sim.nodes["a"].service)()
        sim.run_until(sim.now + 1.0)
        assert sim.actives() == ["b"]
        sim.at(sim.now, "a", "boot", Role.PRIMARY)
        sim.run_until(sim.now + 2.0)
        sim.call("a", f"back-{k}")  # the primary takes activity back by call
        sim.run_until(sim.now + 0.1)
        assert sim.actives() == ["a"]
        assert sim.nodes["a"].sup.term > before


def test_heartbeat_field_list_matches_the_event_and_the_wire_status():
    import dataclasses

    from failover.core.wire import Status

    names = set(ev.HEARTBEAT_FIELDS)
    assert names == {f.name for f in dataclasses.fields(ev.PeerHeartbeat)}
    assert names <= {f.name for f in dataclasses.fields(Status)}


def test_an_idle_pair_wakes_once_per_ping_interval_per_beat():
    """The heartbeats fall into step: one node sends its heartbeat in the very instant it
    reads the peer's, and the active node's lease renewal goes out with its heartbeat, never
    on a timer of its own.  A renewal at most one ping interval after the previous one, a
    heartbeat at most 1.25 (the answering node waits a quarter interval more for the peer's
    next one), and never more often than two per interval."""
    from tests.failover.sim import Sim

    sim = Sim(start_b_at=0.033)  # b boots out of phase with a
    sent: dict[str, list[float]] = {"a": [], "b": []}
    renewed: list[float] = []
    heard: dict[str, set[float]] = {"a": set(), "b": set()}
    run_actions, feed = sim._run_actions, sim._feed

    def record_actions(node, acts):
        for a in acts:
            if isinstance(a, ev.SendStatus):
                sent[node].append(sim.now)
            elif isinstance(a, ev.RenewLease) and node == "a":
                renewed.append(sim.now)
        run_actions(node, acts)

    def record_feed(node, event):
        if isinstance(event, ev.PeerHeartbeat):
            heard[node].add(sim.now)
        feed(node, event)

    sim._run_actions, sim._feed = record_actions, record_feed
    sim.run_until(2.0)
    assert sim.actives() == ["a"]
    for n in sent:
        sent[n].clear()
    renewed.clear()
    sim.run_until(7.0)
    ping = sim.nodes["a"].sup.cfg.ping_interval
    for n, times in sent.items():
        gaps = [t2 - t1 for t1, t2 in zip(times, times[1:], strict=False)]
        assert max(gaps) <= 1.25 * ping + 1e-9, (n, max(gaps))
        assert min(gaps) >= ping / 2 - 1e-9, (n, min(gaps))
    lease = [t2 - t1 for t1, t2 in zip(renewed, renewed[1:], strict=False)]
    assert max(lease) <= ping + 1e-9, max(lease)
    # the renewal rides on a heartbeat: no instant of its own
    assert renewed and set(renewed) <= set(sent["a"]), sorted(set(renewed) - set(sent["a"]))[:5]
    # one node answers the other's heartbeat in the instant it reads it
    answered = {n: sum(t in heard[n] for t in sent[n]) / len(sent[n]) for n in sent}
    assert max(answered.values()) > 0.95, answered
    assert not sim.logs("a", "deactivated") and not sim.logs("b", "activating")
