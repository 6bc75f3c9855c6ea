"""The analog line's state machine (telephony/analog/core/line.py): every transition, with
time passed in."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.analog.core.line import Action, Kind, LineMachine, LineState, LineTiming
from telephony.core import media

T = LineTiming(rings=2, ring_timeout=6.0, cpc_min_ms=100, silence_limit=30.0,
               dial_tone_timeout=3.0, guard=0.5)
LOUD = media.tone(440, 0.02, 0.3)
QUIET = media.silence(0.02)


def kinds(actions: list[Action]) -> list[Kind]:
    return [a.kind for a in actions]


def up(now: float = 0.0, timing: LineTiming = T) -> LineMachine:
    m = LineMachine(timing)
    assert m.state is LineState.DOWN
    assert kinds(m.board_up(now)) == [Kind.UP]
    assert m.state is LineState.IDLE
    return m


def ringing(now: float = 0.0) -> LineMachine:
    m = up(now)
    assert kinds(m.ring_on_event(now)) == [Kind.OFFER]
    assert m.state is LineState.RINGING and m.rings == 1
    return m


def connected(now: float = 0.0) -> LineMachine:
    m = ringing(now)
    m.answer(now)
    m.ring_off_event(now + 2)
    m.ring_on_event(now + 6)
    assert kinds(m.ring_off_event(now + 8)) == [Kind.OFF_HOOK, Kind.CONNECTED]
    assert m.state is LineState.CONNECTED
    return m


def test_down_until_the_board_is_up_and_no_alarm():
    m = LineMachine(T)
    assert m.ring_on_event(0) == [] and m.seize(0) == [] and m.state is LineState.DOWN
    assert kinds(m.alarm_event(0)) == []  # already down: nothing to say
    assert m.board_up(1) == []  # still in alarm
    assert m.state is LineState.DOWN
    assert kinds(m.alarm_clear_event(2)) == [Kind.UP]
    assert m.state is LineState.IDLE
    assert kinds(m.board_down(3)) == [Kind.DOWN]
    assert m.state is LineState.DOWN and not m.usable


def test_the_first_ring_is_offered_and_the_answer_waits_for_the_rings():
    m = ringing(0)
    assert m.answer(0.5) == []  # the service answers during the first ring: wait
    assert m.ring_off_event(2) == []  # one ring done of two
    assert m.ring_on_event(6) == []  # no second offer
    assert m.rings == 2
    assert kinds(m.ring_off_event(8)) == [Kind.OFF_HOOK, Kind.CONNECTED]
    assert m.state is LineState.CONNECTED


def test_an_answer_after_the_rings_goes_off_hook_at_once_even_mid_ring():
    m = ringing(0)
    m.ring_off_event(2)
    m.ring_on_event(6)
    m.ring_off_event(8)
    m.ring_on_event(12)  # the third ring: the service decided late (a held offer)
    assert kinds(m.answer(12.5)) == [Kind.OFF_HOOK, Kind.CONNECTED]


def test_one_ring_setting():
    m = up(0, LineTiming(rings=1))
    m.ring_on_event(0)
    m.answer(0.1)
    assert kinds(m.ring_off_event(2)) == [Kind.OFF_HOOK, Kind.CONNECTED]


def test_a_ring_that_stops_for_the_ring_timeout_means_the_caller_gave_up():
    m = ringing(0)
    m.ring_off_event(2)
    assert m.deadline() == 8.0
    assert m.tick(7.9) == []
    acts = m.tick(8.0)
    assert kinds(acts) == [Kind.ABANDONED] and acts[0].reason == "caller gave up"
    assert m.state is LineState.IDLE
    assert m.answer(8.1) == []  # a late answer finds no call
    assert kinds(m.ring_on_event(20)) == [Kind.OFFER]  # the next call is offered again


def test_a_refused_call_rings_on_unoffered_until_it_stops():
    m = ringing(0)
    assert m.refuse(0.3) == []
    m.ring_off_event(2)
    assert m.ring_on_event(6) == [] and m.ring_off_event(8) == []
    assert m.answer(8.5) == []  # refused stays refused
    acts = m.tick(14.0)
    assert kinds(acts) == [Kind.ABANDONED] and acts[0].reason == "refused"
    assert m.state is LineState.IDLE


@pytest.mark.parametrize("ms, hangs_up", [(100, True), (600, True), (99, False), (20, False)])
def test_a_loop_drop_of_at_least_cpc_min_ms_is_the_far_end_hanging_up(ms, hangs_up):
    m = connected(0)
    acts = m.loop_drop_event(10, ms)
    if hangs_up:
        assert kinds(acts) == [Kind.DISCONNECTED, Kind.ON_HOOK] and acts[0].reason == "loop_drop"
        assert m.state is LineState.GUARD
    else:
        assert acts == [] and m.state is LineState.CONNECTED


def test_a_loop_drop_of_unknown_length_is_timed_until_loop_current_returns():
    m = connected(0)
    assert m.loop_drop_event(10, 0) == []
    assert m.deadline() == pytest.approx(10.1)
    assert m.loop_on_event(10.05) == []  # a glitch
    assert m.tick(10.2) == [] and m.state is LineState.CONNECTED
    assert m.loop_drop_event(11, 0) == []
    acts = m.tick(11.1)
    assert kinds(acts) == [Kind.DISCONNECTED, Kind.ON_HOOK] and acts[0].reason == "loop_drop"


@pytest.mark.parametrize("tone", ["busy", "reorder", "dial"])
def test_a_disconnect_tone_is_the_far_end_hanging_up(tone):
    m = connected(0)
    acts = m.tone(10, tone)
    assert kinds(acts) == [Kind.DISCONNECTED, Kind.ON_HOOK] and acts[0].reason == f"{tone}_tone"


@pytest.mark.parametrize("tone", ["ringback", "confirm"])
def test_other_tones_leave_the_call_up(tone):
    m = connected(0)
    assert m.tone(10, tone) == [] and m.state is LineState.CONNECTED


def test_silence_both_ways_past_the_limit_ends_the_call():
    m = connected(0)  # connected at 8
    assert m.deadline() == 38.0
    m.audio(20, QUIET)  # silence does not count
    assert m.deadline() == 38.0
    m.audio(20, LOUD)  # the caller speaks
    assert m.deadline() == 50.0
    m.played(40, LOUD)  # we play a prompt
    assert m.deadline() == 70.0
    assert m.tick(69.9) == []
    acts = m.tick(70.0)
    assert kinds(acts) == [Kind.DISCONNECTED, Kind.ON_HOOK] and acts[0].reason == "silence"


def test_the_service_hangs_up_then_the_guard_then_idle():
    m = connected(0)
    assert kinds(m.hangup(20)) == [Kind.ON_HOOK]
    assert m.state is LineState.GUARD
    assert m.hangup(20.1) == []  # idempotent
    assert m.seize(20.2) == []  # not during the guard
    assert m.tick(20.4) == [] and m.state is LineState.GUARD
    assert m.tick(20.5) == [] and m.state is LineState.IDLE
    assert kinds(m.seize(20.6)) == [Kind.OFF_HOOK]


def test_a_ring_during_the_guard_is_a_new_call():
    m = connected(0)
    m.hangup(20)
    assert kinds(m.ring_on_event(20.2)) == [Kind.OFFER]
    assert m.state is LineState.RINGING


def test_a_seizure_gets_dial_tone_then_is_released():
    m = up(0)
    assert kinds(m.seize(1)) == [Kind.OFF_HOOK] and m.state is LineState.SEIZING
    assert m.tone(1.2, "busy") == []  # only dial tone matters while seizing
    assert kinds(m.tone(1.6, "dial")) == [Kind.DIAL_TONE] and m.state is LineState.OUTBOUND
    assert m.tone(3, "confirm") == [] and m.tone(3, "reorder") == []  # the dialler judges
    assert m.ring_on_event(3) == []  # off hook: no ring reaches us
    assert kinds(m.release(4)) == [Kind.ON_HOOK] and m.state is LineState.GUARD


def test_no_dial_tone_within_the_timeout_fails_the_seizure():
    m = up(0)
    m.seize(1)
    assert m.deadline() == 4.0
    acts = m.tick(4.0)
    assert kinds(acts) == [Kind.SEIZE_FAILED, Kind.ON_HOOK] and acts[0].reason == "no dial tone"
    assert m.state is LineState.GUARD


def test_glare_a_ring_before_dial_tone_abandons_the_seizure_and_is_offered():
    m = up(0)
    m.seize(1)
    acts = m.ring_on_event(1.3)
    assert kinds(acts) == [Kind.ON_HOOK, Kind.SEIZE_FAILED, Kind.OFFER]
    assert acts[1].reason == "glare"
    assert m.state is LineState.RINGING and m.rings == 1


def test_releasing_a_line_still_seizing():
    m = up(0)
    m.seize(1)
    acts = m.release(1.5)
    assert kinds(acts) == [Kind.SEIZE_FAILED, Kind.ON_HOOK] and acts[0].reason == "released"


@pytest.mark.parametrize("setup, ended", [
    (connected, [Kind.DISCONNECTED, Kind.ON_HOOK, Kind.DOWN]),
    (ringing, [Kind.ABANDONED, Kind.DOWN]),
    (up, [Kind.DOWN]),
])
def test_an_alarm_ends_whatever_the_line_did_until_it_clears(setup, ended):
    m = setup(0)
    acts = m.alarm_event(30)
    assert kinds(acts) == ended and all(a.reason == "alarm" for a in acts if a.reason)
    assert m.state is LineState.DOWN
    assert m.ring_on_event(31) == [] and m.seize(31) == [] and m.tick(1000) == []
    assert kinds(m.alarm_clear_event(40)) == [Kind.UP] and m.state is LineState.IDLE


def test_an_alarm_while_seized_fails_the_seizure():
    m = up(0)
    m.seize(1)
    m.tone(1.6, "dial")
    acts = m.alarm_event(2)
    assert kinds(acts) == [Kind.SEIZE_FAILED, Kind.ON_HOOK, Kind.DOWN]


def test_the_board_lost_and_back():
    m = connected(0)
    acts = m.board_down(20, "board")
    assert kinds(acts) == [Kind.DISCONNECTED, Kind.ON_HOOK, Kind.DOWN]
    assert kinds(m.board_up(25)) == [Kind.UP]


def test_deadlines():
    m = up(0)
    assert m.deadline() == math.inf
    m.ring_on_event(0)
    assert m.deadline() == math.inf  # a ring in progress has no timeout


@pytest.mark.parametrize("bad", [dict(rings=0), dict(rings=True), dict(cpc_min_ms=0),
                                 dict(ring_timeout=0), dict(silence_limit=-1),
                                 dict(guard=math.nan), dict(dial_tone_timeout="3")])
def test_bad_timing_is_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LineTiming(**bad)


EVENTS = st.sampled_from(["ring_on", "ring_off", "loop_on", "loop_drop", "alarm", "alarm_clear",
                          "tone", "audio", "answer", "refuse", "hangup", "seize", "tick",
                          "board_up", "board_down"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(EVENTS, st.floats(0, 5), st.integers(0, 1000),
                          st.sampled_from(["dial", "busy", "reorder", "confirm", "ringback"])),
                max_size=60))
def test_any_event_sequence_keeps_the_hook_consistent(steps):
    """Whatever happens, the hook actions alternate and match the state (off hook exactly
    in CONNECTED, SEIZING and OUTBOUND), and the line is down exactly while it is unusable."""
    m = LineMachine(T)
    now = 0.0
    offhook = False
    for name, dt, ms, tone in steps:
        now += dt
        if name == "loop_drop":
            acts = m.loop_drop_event(now, ms)
        elif name == "tone":
            acts = m.tone(now, tone)
        elif name == "audio":
            acts = m.audio(now, LOUD if ms % 2 else QUIET)
        elif name in ("answer", "refuse", "hangup", "seize", "tick", "board_up", "board_down"):
            acts = getattr(m, name)(now)
        else:
            acts = getattr(m, f"{name}_event")(now)
        for a in acts:
            if a.kind is Kind.OFF_HOOK:
                assert not offhook
                offhook = True
            elif a.kind is Kind.ON_HOOK:
                assert offhook
                offhook = False
        assert offhook == (m.state in (LineState.CONNECTED, LineState.SEIZING,
                                       LineState.OUTBOUND))
        assert (m.state is LineState.DOWN) == (not m.usable)
