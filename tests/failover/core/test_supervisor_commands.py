"""Operator commands that meet a planned handover waiting for replication.

A command either takes effect (cancelling the pending handover, logged) or is refused with
ok=False; it never answers ok and is then followed by the opposite.  The table of command ×
pending handover × node is in docs/failover-rules.md ("Commands during a planned handover")."""
from __future__ import annotations

import pytest

from failover.core import events as ev
from failover.core.state import FailbackType, Mode, State
from tests.failover.sim import Sim

WAIT = 1.0  # handover_wait: replication never completes in time here (_repl_delay 5 s)
OPPOSITE = {"failover": "failback", "failback": "failover"}


def waiting(direction: str, asked_on: str, **kw) -> tuple[Sim, str, str]:
    """A pair whose active node W waits (for replication) to hand over to the inactive T.
    ``direction``: the pending move ("failover": a -> b, "failback": b -> a); ``asked_on``:
    where the operator gave it ("active": on W; "inactive": on T, which sent hand_over)."""
    cfg = {"handover_wait": WAIT, "_repl_delay": 5.0, **kw}
    if direction == "failover":
        sim = Sim(**cfg)
        sim.run_until(2.0)
        w, t = "a", "b"
    else:
        sim = Sim(start_a_at=3.0, **cfg)  # the secondary started first: b active
        sim.run_until(6.0)
        w, t = "b", "a"
    assert sim.actives() == [w]
    reply = sim.admin(w if asked_on == "active" else t, direction)
    assert reply.ok, reply.message
    sim.run_until(sim.now + 0.1)
    assert sim.nodes[w].sup.handing_over and sim.actives() == [w]
    return sim, w, t


def activations(sim: Sim, node: str) -> int:
    return len(sim.logs(node, "activating"))


@pytest.mark.parametrize("direction", ["failover", "failback"])
@pytest.mark.parametrize("asked_on", ["active", "inactive"])
@pytest.mark.parametrize("given_on", ["active", "inactive"])
def test_the_opposite_command_cancels_the_pending_handover(direction, asked_on, given_on):
    sim, w, t = waiting(direction, asked_on)
    t_before = activations(sim, t)
    reply = sim.admin(w if given_on == "active" else t, OPPOSITE[direction])
    assert reply.ok, reply.message
    assert "already active" not in reply.message
    assert ("cancel" in reply.message) if given_on == "active" or asked_on == "inactive" \
        else ("stay active" in reply.message)
    sim.run_until(sim.now + 2 * WAIT + 1.0)  # well past the end of the replication wait
    assert sim.actives() == [w]
    assert not sim.nodes[w].sup.handing_over
    assert activations(sim, t) == t_before  # t never took activity
    (log,) = sim.logs(w, "handover_cancelled")
    assert log.fields["cause"] == f"operator {direction}"
    assert not sim.logs(w, "handover_unreplicated")


@pytest.mark.parametrize("direction", ["failover", "failback"])
@pytest.mark.parametrize("asked_on", ["active", "inactive"])
@pytest.mark.parametrize("given_on", ["active", "inactive"])
def test_the_same_command_again_lets_the_handover_go_ahead(direction, asked_on, given_on):
    sim, w, t = waiting(direction, asked_on)
    reply = sim.admin(w if given_on == "active" else t, direction)
    assert reply.ok, reply.message
    sim.run_until(sim.now + WAIT)
    assert sim.actives() == [t]
    assert not sim.logs(w, "handover_cancelled")
    assert len(sim.logs(w, "handover_unreplicated")) == 1  # one handover, at the deadline


@pytest.mark.parametrize("given_on", ["active", "inactive"])
def test_a_shutdown_handover_cannot_be_cancelled(given_on):
    sim = Sim(handover_wait=WAIT, _repl_delay=5.0)
    sim.run_until(2.0)
    sim.at(sim.now, "a", "event", ev.ShutdownRequested("SIGTERM"))
    sim.run_until(sim.now + 0.15)  # b has heard a's heartbeat saying it is shutting down
    assert sim.nodes["a"].sup.handing_over
    reply = sim.admin("a" if given_on == "active" else "b", "failback")
    assert not reply.ok and "shutting down" in reply.message
    sim.run_until(sim.now + WAIT + 0.5)
    assert sim.actives() == ["b"] and sim.nodes["a"].exited


@pytest.mark.parametrize("direction", ["failover", "failback"])
def test_a_take_over_crossing_the_request_to_stay_active(direction):
    """The active node's handover and the inactive node's "stay active" cross in flight:
    the inactive node refuses the take_over, the other re-activates; the command wins."""
    sim, w, t = waiting(direction, "active", _repl_delay=0.3)
    # replication completes 0.3 s after the command (given 0.1 s ago): give the opposite
    # command on t half a link latency before w hands over
    sim.run_until(sim.now + 0.2 - Sim.LATENCY / 2)
    assert sim.nodes[w].sup.handing_over
    reply = sim.admin(t, OPPOSITE[direction])
    assert reply.ok, reply.message
    sim.run_until(sim.now + 0.01)
    assert sim.logs(w, "handover_replicated")  # w did hand over: the messages crossed
    assert [lg for lg in sim.logs(t, "handover_refused") if "crossed" in lg.message]
    sim.run_until(sim.now + 3.0)
    assert sim.actives() == [w]


def test_stay_active_with_nothing_pending_changes_nothing():
    sim = Sim(handover_wait=WAIT)
    sim.run_until(2.0)
    term = sim.nodes["a"].sup.term
    reply = sim.admin("b", "failback")
    assert reply.ok and "stay active" in reply.message
    sim.run_until(sim.now + 3.0)
    assert sim.actives() == ["a"] and sim.nodes["a"].sup.term == term
    assert not sim.logs("a", "handover_cancelled")
    # a later planned failover is obeyed as usual
    assert sim.admin("b", "failover").ok
    sim.run_until(sim.now + WAIT + 0.5)
    assert sim.actives() == ["b"]


# ----------------------------------------------------------------------------- mode changes


@pytest.mark.parametrize("given_on", ["active", "inactive"])
def test_manual_mode_does_not_cancel_an_operator_handover(given_on):
    sim, w, t = waiting("failover", "inactive")
    reply = sim.admin(w if given_on == "active" else t, "mode", "manual")
    assert reply.ok and "goes ahead" in reply.message, reply.message
    sim.run_until(sim.now + WAIT)
    assert sim.actives() == [t]


def scheduled_failback_waiting() -> Sim:
    """b active (started first); the failback window (02:00-02:01 local, 20 s after the start)
    opens and b waits to hand over to a."""
    sim = Sim(start_a_at=10.0, failback_type=FailbackType.SCHEDULED, handover_wait=WAIT,
              _repl_delay=5.0, failback_window=(7200.0, 7260.0), _local_offset=7180.0)
    sim.run_until(20.2)  # 02:00:00.2 local: inside the window
    assert sim.actives() == ["b"] and sim.nodes["b"].sup.handing_over
    return sim


@pytest.mark.parametrize("given_on", ["a", "b"])
def test_manual_mode_cancels_a_scheduled_failback(given_on):
    sim = scheduled_failback_waiting()
    reply = sim.admin(given_on, "mode", "manual")
    assert reply.ok
    if given_on == "b":
        assert "scheduled failback to a is cancelled" in reply.message
    sim.run_until(79.0)  # the rest of the window
    assert sim.actives() == ["b"]
    (log,) = sim.logs("b", "handover_cancelled")
    assert log.fields["kind"] == "scheduled"


@pytest.mark.parametrize("given_on", ["a", "b"])
def test_failover_during_a_scheduled_failback_holds_for_the_rest_of_the_window(given_on):
    sim = scheduled_failback_waiting()
    reply = sim.admin(given_on, "failover")
    assert reply.ok, reply.message
    sim.run_until(79.0)  # 02:00:59 local: still inside the window
    assert sim.actives() == ["b"]
    assert len(sim.logs("b", "handover_cancelled")) == 1
    assert len(sim.logs("b", "handover_waiting")) == 1  # not started again in this window
    assert sim.nodes["b"].sup._failback_skip
    sim.run_until(81.0)  # the window is over: the next one fails back again
    assert not sim.nodes["b"].sup._failback_skip


def test_operator_failover_inside_the_window_is_not_undone_by_the_schedule():
    sim = scheduled_failback_waiting()
    sim.run_until(sim.now + WAIT + 0.5)  # the scheduled failback went ahead
    assert sim.actives() == ["a"]
    assert sim.admin("a", "failover").ok
    sim.run_until(79.0)  # the rest of the window
    assert sim.actives() == ["b"]


def test_mode_automatic_mid_handover_changes_nothing():
    sim, w, t = waiting("failover", "active")
    reply = sim.admin(w, "mode", "automatic")
    assert reply.ok and sim.nodes[w].sup.mode is Mode.AUTOMATIC
    sim.run_until(sim.now + WAIT)
    assert sim.actives() == [t]
    assert sim.state(w) in (State.DRAINING, State.INACTIVE)
