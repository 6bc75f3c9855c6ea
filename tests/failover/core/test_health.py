"""Driver health as a failover trigger (failover/core/health.py), deterministic: the pure rule
alone and the two-node simulator (docs/failover-rules.md, "Driver health")."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from failover.core import events as ev
from failover.core.health import FULL, HealthRule, HealthSettings, driver_score, node_health
from failover.core.state import FailbackType, Mode, Role, ServiceHealth, State
from tests.failover.sim import Sim

RULE = HealthSettings(grace=1.0, min_active=3.0)


def sim_with(**kw) -> Sim:
    sim = Sim(health=kw.pop("health", RULE), **kw)
    sim.run_until(2.0)
    assert sim.actives() == ["a"]
    return sim


def health_logs(sim: Sim, node: str, event: str) -> list[ev.Log]:
    return sim.logs(node, event)


# ----------------------------------------------------------------------------- scores


def test_scores_and_node_health():
    assert driver_score(4, 4) == 100 and driver_score(3, 4) == 75 and driver_score(0, 4) == 0
    assert driver_score(1, 3) == 33  # rounded down
    assert driver_score(0, 0) == FULL
    assert node_health([]) == FULL
    assert node_health([{"name": "sip", "score": 75}, {"name": "store", "score": 100}]) == 75
    assert node_health([{"name": "sip", "score": 100}, {"name": "store", "score": 0}]) == 0


def test_low_spell_is_logged_once_and_its_end_too():
    rule = HealthRule(RULE, "a", "b")
    assert [lg.event for lg in rule.update(1.0, 40)] == ["health_low"]
    assert rule.update(1.5, 10) == [] and rule.low_since == 1.0  # still the same spell
    assert [lg.event for lg in rule.update(2.0, 90)] == ["health_ok"]
    assert rule.low_since is None
    assert [lg.event for lg in rule.update(3.0, 0)] == ["health_low"] and rule.low_since == 3.0


# ----------------------------------------------------------------------------- the rule on a pair


def test_unhealthy_active_node_hands_over_to_the_healthy_peer_without_hold():
    sim = sim_with()
    sim.set_health("a", 0)
    sim.run_until(2.5)
    assert sim.actives() == ["a"]  # within the grace
    sim.run_until(8.0)
    assert sim.actives() == ["b"]
    a = sim.nodes["a"].sup
    assert not a.hold  # back by the normal rules once healthy
    (low,) = health_logs(sim, "a", "health_low")
    (move,) = health_logs(sim, "a", "health_failover")
    assert move.fields["health"] == 0 and move.fields["peer_health"] == 100
    # it waited for the grace and for min_active since it became active
    assert sim.nodes["b"].sup.cause.startswith("handover from peer: health 0 below 50")
    # while a is unhealthy, a call reaching its ports does not pull activity back ...
    sim.call("a", "c-unhealthy")
    assert "c-unhealthy" in sim.nodes["a"].refused
    assert sim.actives() == ["b"]
    # ... once healthy it does (no hold): the guide's call takeover
    sim.set_health("a", 100)
    sim.run_until(8.5)
    sim.call("a", "c-healthy")
    sim.run_until(9.0)
    assert "c-healthy" not in sim.nodes["a"].refused
    assert sim.actives() == ["a"]


def test_no_move_before_min_active():
    sim = sim_with(health=HealthSettings(grace=0.5, min_active=20.0))
    sim.set_health("a", 0)
    sim.run_until(15.0)
    assert sim.actives() == ["a"]
    (blocked,) = health_logs(sim, "a", "health_blocked")
    assert blocked.fields["why"] == "min_active"
    sim.run_until(25.0)
    assert sim.actives() == ["b"]


def test_a_dip_shorter_than_the_grace_moves_nothing():
    sim = sim_with(health=HealthSettings(grace=2.0, min_active=0.0))
    for t in range(2, 20, 3):  # low for 1.5 s of every 3
        sim.set_health("a", 10)
        sim.run_until(t + 1.5)
        sim.set_health("a", 100)
        sim.run_until(t + 3.0)
    assert sim.actives() == ["a"]
    assert len(health_logs(sim, "a", "health_low")) == 6 and not health_logs(sim, "a", "health_failover")


@pytest.mark.parametrize("own, peer", [(0, 0), (0, 40), (49, 98)])  # 98 is not 50 above 49
def test_both_unhealthy_no_move(own, peer):
    sim = sim_with()
    sim.set_health("b", peer)
    sim.set_health("a", own)
    sim.run_until(12.0)
    assert sim.actives() == ["a"]
    # first too soon after its activation, then the peer is no healthier
    assert [lg.fields["why"] for lg in health_logs(sim, "a", "health_blocked")] == [
        "min_active", "peer_not_healthier"]
    assert not health_logs(sim, "a", "health_failover")
    sim.set_health("b", min(100, own + 50))  # now it is
    sim.run_until(13.0)
    assert sim.actives() == ["b"]


@pytest.mark.parametrize("manual", ["a", "b"])
def test_manual_mode_on_either_node_blocks_it(manual):
    sim = sim_with()
    assert sim.admin(manual, "mode", "manual").ok
    sim.run_until(2.5)
    sim.set_health("a", 0)
    sim.run_until(12.0)
    assert sim.actives() == ["a"]
    (blocked,) = health_logs(sim, "a", "health_blocked")
    assert blocked.fields["why"] == ("manual" if manual == "a" else "peer_manual")
    # back to automatic: the move goes ahead
    assert sim.admin(manual, "mode", "automatic").ok
    sim.run_until(14.0)
    assert sim.actives() == ["b"]


def test_unreachable_or_ineligible_peer_blocks_it():
    # b's service fails and backs off for 100 s: b is not eligible meanwhile
    sim = sim_with(max_restarts=0, restart_backoff=100.0, restart_backoff_max=100.0)
    sim.at(2.0, "b", "crash_service")
    sim.set_health("a", 0)
    sim.run_until(8.0)
    assert sim.nodes["b"].sup.service is ServiceHealth.FAILED
    assert sim.actives() == ["a"]
    assert [lg.fields["why"] for lg in health_logs(sim, "a", "health_blocked")] == [
        "min_active", "peer_not_eligible"]
    sim.link_up = False  # (b, its service back and alone, activates too: a partition)
    sim.run_until(12.0)
    assert "a" in sim.actives()
    assert [lg.fields["why"] for lg in health_logs(sim, "a", "health_blocked")] == [
        "min_active", "peer_not_eligible", "peer_unreachable"]
    assert not health_logs(sim, "a", "health_failover")


def test_health_handover_waits_for_replication_and_is_cancelled_when_health_is_back():
    sim = sim_with(handover_wait=5.0, _repl_delay=3.0)
    sim.set_health("a", 0)
    sim.run_until(6.0)
    a = sim.nodes["a"].sup
    assert a.handing_over and sim.actives() == ["a"]  # waiting for the barrier
    assert sim.nodes["a"].barriers
    sim.set_health("a", 100)
    sim.run_until(6.5)
    assert not a.handing_over and sim.actives() == ["a"]
    (cancel,) = sim.logs("a", "handover_cancelled")
    assert "health 100 is back" in cancel.message
    sim.set_health("a", 0)
    sim.run_until(16.0)
    assert sim.actives() == ["b"]
    assert sim.logs("a", "handover_replicated")


def test_disabled_rule_never_moves():
    sim = sim_with(health=HealthSettings(enabled=False, grace=0.5, min_active=0.0))
    sim.set_health("a", 0)
    sim.run_until(10.0)
    assert sim.actives() == ["a"] and not health_logs(sim, "a", "health_failover")
    sim.call("b", "x")  # the disabled rule blocks no call takeover either
    sim.run_until(10.5)
    assert sim.actives() == ["b"]


def scheduled(sim: Sim) -> list[ev.Log]:
    return [lg for lg in sim.nodes["b"].logs if lg.event == "deactivated"
            and "scheduled failback window" in lg.message]


def test_scheduled_failback_does_not_go_to_an_unhealthy_primary():
    # b is active (a's service crashed at start-up), the window opens at 20 s
    sim = Sim(failback_type=FailbackType.SCHEDULED, failback_window=(20.0, 86000.0), health=RULE,
              max_restarts=0, restart_backoff=5.0, restart_backoff_max=5.0, restart_backoff_alone=5.0)
    sim.run_until(2.0)
    sim.at(2.0, "a", "crash_service")
    sim.run_until(5.0)
    assert sim.actives() == ["b"]
    sim.run_until(12.0)  # a's service back, a unhealthy
    sim.set_health("a", 0)
    sim.run_until(30.0)
    assert sim.actives() == ["b"] and not scheduled(sim)
    sim.set_health("a", 100)  # healthy again: the schedule fails back
    sim.run_until(35.0)
    assert sim.actives() == ["a"] and scheduled(sim)


def test_the_schedule_does_not_undo_a_health_move_inside_its_window():
    """A health handover from the secondary to the primary inside the window counts like an
    operator's move: the schedule does not act on it again before the window ends."""
    sim = sim_with(failback_type=FailbackType.SCHEDULED, failback_window=(0.0, 86000.0))
    sim.set_health("a", 0)
    sim.run_until(12.0)
    assert sim.actives() == ["b"]
    sim.set_health("a", 100)
    sim.run_until(20.0)
    assert sim.actives() == ["b"] and not scheduled(sim)


# ----------------------------------------------------------------------------- primary alone


def test_primary_alone_logs_no_secondary_at_every_start():
    sim = Sim(start_b_at=1000.0)
    sim.run_until(3.0)
    assert sim.actives() == ["a"]
    (err,) = sim.logs("a", "no_secondary")
    assert err.level == "error" and "b" in err.message
    sim.at(3.0, "a", "boot", Role.PRIMARY)  # a restart of the node manager, still alone
    sim.run_until(6.0)
    assert len(sim.logs("a", "no_secondary")) == 1  # the new incarnation's log
    assert sim.nodes["a"].sup.state is State.ACTIVE


def test_no_secondary_is_not_logged_when_the_secondary_answers_or_on_the_secondary():
    sim = Sim()
    sim.run_until(3.0)
    assert not sim.logs("a", "no_secondary") and not sim.logs("b", "no_secondary")
    alone = Sim(start_a_at=1000.0)
    alone.run_until(3.0)
    assert alone.actives() == ["b"] and not alone.logs("b", "no_secondary")


# ----------------------------------------------------------------------------- properties

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SCORES = st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 100), st.floats(0.05, 4.0)),
                  min_size=1, max_size=40)


@FUZZ
@given(steps=SCORES)
def test_no_flapping_under_random_scores(steps):
    """Random scores for both nodes, each held a random while: the invariants hold, no node
    makes a health move sooner than min_active after it became active, and two health moves
    are never closer than min_active apart on the pair."""
    min_active = 3.0
    sim = Sim(health=HealthSettings(grace=0.5, min_active=min_active))
    sim.run_until(2.0)
    moves: list[tuple[float, str]] = []
    t = 2.0
    for node, score, hold in steps:
        sim.set_health(node, score)
        before = {n: len(sim.logs(n, "health_failover")) for n in "ab"}
        active_since = {n: sim.nodes[n].sup.active_since for n in "ab"}
        end = t + hold
        while t < end:
            t = min(end, t + 0.05)
            sim.run_until(t)
            for n in "ab":
                if len(sim.logs(n, "health_failover")) > before[n]:
                    before[n] += 1
                    moves.append((t, n))
                    since = active_since[n]
                    assert since is None or t - since >= min_active - 0.06, (n, t, since)
            active_since = {n: sim.nodes[n].sup.active_since for n in "ab"}
    event(f"health moves: {min(len(moves), 3)}")  # shown by --hypothesis-show-statistics
    times = [m for m, _ in moves]
    assert all(b - a >= min_active - 0.06 for a, b in zip(times, times[1:], strict=False)), moves
    sim.set_health("a", 100)
    sim.set_health("b", 100)
    sim.run_until(t + 5.0)
    assert len(sim.actives()) == 1


@FUZZ
@given(steps=SCORES, manual=st.sampled_from(["a", "b", "ab"]))
def test_manual_mode_always_blocks(steps, manual):
    sim = Sim(health=HealthSettings(grace=0.1, min_active=0.0))
    sim.run_until(2.0)
    for n in manual:
        assert sim.admin(n, "mode", "manual").ok
    t = 2.0
    for node, score, hold in steps:
        sim.set_health(node, score)
        t += hold
        sim.run_until(t)
    assert not sim.logs("a", "health_failover") and not sim.logs("b", "health_failover")
    assert sim.actives() == ["a"]


def test_rule_alone_checks_every_condition():
    rule = HealthRule(HealthSettings(grace=1.0, min_active=10.0, margin=30), "a", "b")
    peer = ev.PeerHeartbeat("b", Role.SECONDARY, State.INACTIVE, 3, ServiceHealth.RUNNING, health=90)
    rule.update(0.0, 40)
    acts: list = []
    assert rule.handover(0.5, active_since=-20.0, mode=Mode.AUTOMATIC, peer=peer, acts=acts) is None
    assert acts == []  # within the grace: nothing to say yet
    cases = [
        (dict(active_since=-5.0, mode=Mode.AUTOMATIC, peer=peer), "min_active"),
        (dict(active_since=-20.0, mode=Mode.MANUAL, peer=peer), "manual"),
        (dict(active_since=-20.0, mode=Mode.AUTOMATIC, peer=None), "peer_unreachable"),
        (dict(active_since=-20.0, mode=Mode.AUTOMATIC, peer=ev.PeerHeartbeat(
            "b", Role.SECONDARY, State.ACTIVE, 3, ServiceHealth.RUNNING, health=90)), "peer_busy"),
        (dict(active_since=-20.0, mode=Mode.AUTOMATIC, peer=ev.PeerHeartbeat(
            "b", Role.SECONDARY, State.INACTIVE, 3, ServiceHealth.RUNNING, eligible=False,
            health=90)), "peer_not_eligible"),
        (dict(active_since=-20.0, mode=Mode.AUTOMATIC, peer=ev.PeerHeartbeat(
            "b", Role.SECONDARY, State.INACTIVE, 3, ServiceHealth.RUNNING, mode=Mode.MANUAL,
            health=90)), "peer_manual"),
        (dict(active_since=-20.0, mode=Mode.AUTOMATIC, peer=ev.PeerHeartbeat(
            "b", Role.SECONDARY, State.INACTIVE, 3, ServiceHealth.RUNNING, health=69)),
         "peer_not_healthier"),
    ]
    for kw, why in cases:
        acts = []
        assert rule.handover(2.0, acts=acts, **kw) is None
        assert [lg.fields["why"] for lg in acts] == [why]
        acts = []
        assert rule.handover(2.5, acts=acts, **kw) is None and acts == []  # once per spell
    acts = []
    cause = rule.handover(3.0, active_since=-20.0, mode=Mode.AUTOMATIC, peer=peer, acts=acts)
    assert cause and "health 40 below 50" in cause and [lg.event for lg in acts] == ["health_failover"]
    assert rule.call_blocked(ev.PeerHeartbeat("b", Role.SECONDARY, State.ACTIVE, 5,
                                              ServiceHealth.RUNNING, health=70))
    assert not rule.call_blocked(ev.PeerHeartbeat("b", Role.SECONDARY, State.ACTIVE, 5,
                                                  ServiceHealth.RUNNING, health=69))
    assert not rule.call_blocked(None)
