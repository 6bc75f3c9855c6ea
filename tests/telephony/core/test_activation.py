"""The activation lease core (telephony/core/activation.py), with hand-stepped time."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.core.activation import (
    Activation,
    ActivationError,
    ActivationState,
    Fenced,
    StaleActivationTerm,
)
from telephony.core.terms import StaleTerm

S = ActivationState


def snapshot(a: Activation) -> tuple:
    return (a.state, a.term, a.highest, a.next_deadline())


def test_new_service_is_inactive_and_has_no_deadline():
    a = Activation()
    assert a.state is S.INACTIVE and a.term is None
    assert not a.may_answer(0.0)
    assert a.next_deadline() is None
    assert a.on_timer(100.0) is None


def test_activate_answers_until_the_lease_runs_out_then_fences():
    a = Activation()
    a.activate(2, 0.5, now=10.0)
    assert a.state is S.ACTIVE and a.term == 2
    assert a.may_answer(10.0) and a.may_answer(10.499)
    assert a.next_deadline() == 10.5
    assert a.on_timer(10.499) is None
    assert not a.may_answer(10.5)  # the gate closes at the deadline, timer or not
    fenced = a.on_timer(10.5)
    assert isinstance(fenced, Fenced) and fenced.term == 2
    assert "ran out" in fenced.reason
    assert a.state is S.FENCED and a.next_deadline() is None
    assert a.on_timer(11.0) is None  # reported once


def test_renew_extends_from_receipt():
    a = Activation()
    a.activate(2, 0.5, now=0.0)
    a.renew(2, 0.5, now=0.4)
    assert a.next_deadline() == pytest.approx(0.9)
    assert a.may_answer(0.85)
    assert a.on_timer(0.85) is None
    assert a.on_timer(0.9) is not None


def test_renew_after_the_deadline_is_refused_even_before_the_timer_ran():
    a = Activation()
    a.activate(2, 0.5, now=0.0)
    before = snapshot(a)
    with pytest.raises(ActivationError, match="ran out"):
        a.renew(2, 0.5, now=0.6)
    assert snapshot(a) == before
    assert not a.may_answer(0.6)
    assert a.on_timer(0.6).term == 2


def test_renew_of_another_term_or_while_inactive_is_refused_without_change():
    a = Activation()
    with pytest.raises(ActivationError, match="inactive"):
        a.renew(2, 1.0, now=0.0)
    a.activate(2, 1.0, now=0.0)
    before = snapshot(a)
    with pytest.raises(ActivationError, match="active in term 2"):
        a.renew(4, 1.0, now=0.1)
    assert snapshot(a) == before and a.may_answer(0.1)


@pytest.mark.parametrize("op", ["activate", "renew", "deactivate"])
def test_stale_terms_are_refused_with_no_change(op):
    a = Activation()
    a.activate(6, 1.0, now=0.0)
    before = snapshot(a)
    with pytest.raises(StaleActivationTerm, match="stale term 4") as exc:
        if op == "deactivate":
            a.deactivate(4, True, now=0.1)
        else:
            getattr(a, op)(4, 1.0, now=0.1)
    assert isinstance(exc.value, StaleTerm) and isinstance(exc.value, ActivationError)
    assert snapshot(a) == before
    assert a.may_answer(0.1)


def test_a_newer_activation_replaces_the_old_term():
    a = Activation()
    a.activate(2, 1.0, now=0.0)
    a.activate(3, 1.0, now=0.5)
    assert a.term == 3 and a.next_deadline() == 1.5
    with pytest.raises(StaleActivationTerm):
        a.renew(2, 1.0, now=0.6)


def test_repeating_the_live_activation_extends_it():
    a = Activation()
    a.activate(2, 1.0, now=0.0)
    a.activate(2, 1.0, now=0.5)
    assert a.state is S.ACTIVE and a.next_deadline() == 1.5


@pytest.mark.parametrize("end", ["deactivate", "fence"])
def test_an_ended_term_is_never_activated_again(end):
    a = Activation()
    a.activate(2, 1.0, now=0.0)
    if end == "deactivate":
        a.deactivate(2, False, now=0.5)
    else:
        a.on_timer(1.0)
    before = snapshot(a)
    with pytest.raises(ActivationError, match="already ended"):
        a.activate(2, 1.0, now=1.5)
    assert snapshot(a) == before
    a.activate(4, 1.0, now=1.5)
    assert a.may_answer(1.5)


def test_deactivate_with_drain_waits_for_the_calls():
    a = Activation()
    a.activate(2, 1.0, now=0.0)
    a.deactivate(2, True, now=0.2)
    assert a.state is S.DRAINING and not a.may_answer(0.2)
    assert a.next_deadline() is None  # no fence while draining: the term already ended
    assert a.on_timer(5.0) is None
    a.drained()
    assert a.state is S.INACTIVE


def test_deactivate_without_drain_is_inactive_at_once():
    a = Activation()
    a.activate(2, 1.0, now=0.0)
    a.deactivate(2, False, now=0.2)
    assert a.state is S.INACTIVE and not a.may_answer(0.2)


def test_deactivate_while_fenced_or_inactive_is_accepted():
    a = Activation()
    a.deactivate(2, True, now=0.0)  # a node manager bringing a fresh service in line
    assert a.state is S.DRAINING and a.highest == 2
    a.drained()
    a.activate(4, 0.1, now=0.0)
    a.on_timer(0.2)
    a.deactivate(4, True, now=0.3)
    assert a.state is S.DRAINING


def test_activation_during_a_drain_takes_the_new_term():
    a = Activation()
    a.activate(2, 1.0, now=0.0)
    a.deactivate(2, True, now=0.1)
    a.activate(4, 1.0, now=0.2)
    assert a.state is S.ACTIVE and a.may_answer(0.3)
    a.drained()  # the old term's calls finishing later changes nothing
    assert a.state is S.ACTIVE


def test_stop_closes_the_gate_whatever_the_term():
    a = Activation()
    a.activate(2, 10.0, now=0.0)
    a.stop()
    assert not a.may_answer(0.1) and a.next_deadline() is None and a.on_timer(20) is None


@pytest.mark.parametrize("lease", [0, -1, float("nan"), float("inf"), True, "1"])
def test_bad_leases_are_refused(lease):
    a = Activation()
    with pytest.raises(ActivationError):
        a.activate(2, lease, now=0.0)
    assert a.state is S.INACTIVE and a.highest is None


@pytest.mark.parametrize("term", [-2, True, 2.0, "2"])
def test_bad_terms_are_refused(term):
    a = Activation()
    with pytest.raises(ActivationError):
        a.activate(term, 1.0, now=0.0)
    assert a.highest is None


# ----------------------------------------------------------------------------- invariants

_op = st.one_of(
    st.tuples(st.just("activate"), st.integers(0, 12), st.floats(0.01, 3.0)),
    st.tuples(st.just("renew"), st.integers(0, 12), st.floats(0.01, 3.0)),
    st.tuples(st.just("deactivate"), st.integers(0, 12), st.booleans()),
    st.tuples(st.just("drained")),
    st.tuples(st.just("timer")),
    st.tuples(st.just("stop")),
)
_step = st.tuples(st.floats(0.0, 1.5), _op)  # (time to advance first, operation)


@settings(max_examples=500, deadline=None)
@given(st.lists(_step, max_size=40))
def test_may_answer_never_outlives_its_lease_or_its_term(steps):
    """Whatever the node manager sends and whenever: the service answers only before the
    deadline of the last accepted activate/renew, only in the highest term accepted, and
    refused commands change nothing."""
    a = Activation()
    now = 0.0
    granted_until = None  # now + lease of the last accepted activate/renew
    highest = None  # highest term of any accepted command
    for advance, op in steps:
        now += advance
        before = snapshot(a)
        try:
            if op[0] == "activate":
                a.activate(op[1], op[2], now)
                granted_until = now + op[2]
            elif op[0] == "renew":
                a.renew(op[1], op[2], now)
                granted_until = now + op[2]
            elif op[0] == "deactivate":
                a.deactivate(op[1], op[2], now)
            elif op[0] == "drained":
                a.drained()
            elif op[0] == "timer":
                fenced = a.on_timer(now)
                if fenced is not None:
                    assert granted_until is not None and now >= granted_until
            else:
                a.stop()
            if op[0] in ("activate", "renew", "deactivate"):
                highest = op[1] if highest is None else max(highest, op[1])
        except ActivationError:
            assert snapshot(a) == before, f"refused {op} changed the state"
        for t in (now, now + 0.001, now + 1.0):
            if a.may_answer(t):
                assert granted_until is not None and t < granted_until
                assert a.term == highest
                assert a.state is S.ACTIVE
        if highest is not None and a.highest is not None:
            assert a.highest == highest  # terms only move forward, never past what was sent


def test_absolute_renewal_read_late_is_accepted_until_the_lapse_is_acted_on():
    """A starved service reads renewals the node manager sent in time (their absolute deadline
    is still ahead): it keeps its term instead of fencing on them."""
    a = Activation()
    a.activate(2, 0.5, now=0.0)
    assert not a.may_answer(0.6)  # the deadline passed: nothing is answered meanwhile
    a.renew(2, 0.2, now=0.6, absolute=True)  # sent at 0.3 with 'until' 0.8: 0.2 s left
    assert a.may_answer(0.7) and not a.may_answer(0.8)
    assert a.on_timer(0.7) is None
    fenced = a.on_timer(0.8)
    assert fenced is not None and fenced.term == 2
    with pytest.raises(ActivationError):  # once fenced, only a new term brings it back
        a.renew(2, 0.5, now=0.81, absolute=True)
