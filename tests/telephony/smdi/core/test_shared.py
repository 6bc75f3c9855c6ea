"""The shared-line rule (telephony/smdi/core/shared.py): who may transmit while the pair is
split, the bounded queue of held lamps, and what the heal asks for."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telephony.core.terms import Role
from telephony.smdi.core.shared import Heal, SharedLine


def test_the_secondary_transmits_only_while_told_the_peer_is_reachable():
    line = SharedLine(role=Role.SECONDARY)
    assert line.applies
    assert not line.may_transmit()  # not told yet: held (it is told before any activation)
    line.peer(True, active=False, now=0.0)
    assert line.may_transmit()
    line.peer(False, active=True, now=1.0)
    assert not line.may_transmit()


@pytest.mark.parametrize("role,shared", [(Role.PRIMARY, True), (Role.SECONDARY, False),
                                         (None, True), (Role.PRIMARY, False)])
def test_the_primary_a_line_of_its_own_and_a_link_without_a_role_always_transmit(role, shared):
    line = SharedLine(role=role, shared=shared)
    assert not line.applies
    for reachable in (None, False, True):
        if reachable is not None:
            line.peer(reachable, active=True, now=0.0)
        assert line.may_transmit()


def test_held_lamps_keep_the_newest_per_mailbox_in_order_and_are_counted():
    line: SharedLine[str] = SharedLine(role=Role.SECONDARY, limit=3)
    line.peer(False, active=True, now=0.0)
    assert line.hold("mb1", "on", 5.0) is True  # the first of this hold: reported once
    assert line.hold("mb2", "on", 6.0) is False
    assert line.hold("mb1", "off", 7.0) is False  # newer state for mb1, moved to the back
    assert line.held() == {"mb2": "on", "mb1": "off"}
    assert list(line.held()) == ["mb2", "mb1"]
    line.hold("mb3", "on", 8.0)
    line.hold("mb4", "on", 9.0)  # full: the oldest (mb2) goes
    assert list(line.held()) == ["mb1", "mb3", "mb4"] and len(line) == 3
    assert line.counters == {"held": 5, "replaced": 1, "overflow": 1, "discarded": 0}


def test_the_heal_drops_what_the_secondary_held_and_a_secondary_still_active_resyncs():
    line: SharedLine[str] = SharedLine(role=Role.SECONDARY)
    line.peer(True, active=False, now=0.0)
    line.peer(False, active=True, now=1.0)
    line.hold("mb1", "on", 2.0)
    line.hold("mb2", "on", 3.0)
    # stepped down by the heal rule: nothing to send, the queue is dropped
    assert line.peer(True, active=False, now=12.0) == Heal(False, False, 2, 10.0)
    assert len(line) == 0 and line.counters["discarded"] == 2
    # a second partition, and the secondary stays active (its primary does not serve)
    line.peer(False, active=True, now=20.0)
    line.hold("mb3", "on", 21.0)
    assert line.peer(True, active=True, now=22.0) == Heal(True, False, 1, 1.0)
    # a partition during which nothing was held, the secondary not active: nothing at all
    line.peer(False, active=False, now=30.0)
    assert line.peer(True, active=False, now=31.0) is None


def test_the_primary_active_at_the_heal_asks_for_a_full_resync():
    line: SharedLine[str] = SharedLine(role=Role.PRIMARY)
    assert line.peer(False, active=True, now=0.0) is None  # the partition starts
    assert line.peer(False, active=True, now=1.0) is None  # the same view again
    assert line.peer(True, active=True, now=5.0) == Heal(True, True, 0, None)
    assert line.peer(True, active=True, now=6.0) is None  # no change: no second resync
    # inactive at the heal: whoever activates next resyncs on its takeover
    line.peer(False, active=False, now=7.0)
    assert line.peer(True, active=False, now=8.0) is None
    # not shared: nothing to repair after a partition
    own = SharedLine(role=Role.PRIMARY, shared=False)
    own.peer(False, active=True, now=0.0)
    assert own.peer(True, active=True, now=1.0) is None


def test_the_first_view_is_not_a_heal():
    for role in (Role.PRIMARY, Role.SECONDARY):
        line = SharedLine(role=role)
        assert line.peer(True, active=True, now=0.0) is None


def test_bad_input_is_refused_and_changes_nothing():
    with pytest.raises(ValueError, match="role"):
        SharedLine(role="secondary")  # type: ignore[arg-type]
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="limit"):
            SharedLine(role=Role.SECONDARY, limit=bad)  # type: ignore[arg-type]
    line = SharedLine(role=Role.SECONDARY)
    line.peer(True, active=False, now=0.0)
    with pytest.raises(ValueError, match="reachable"):
        line.peer(1, active=False, now=1.0)  # type: ignore[arg-type]
    assert line.peer_reachable is True and line.may_transmit()


@given(st.lists(st.one_of(st.tuples(st.just("hold"), st.integers(0, 20)),
                          st.tuples(st.just("peer"), st.booleans())), max_size=200),
       st.integers(1, 8), st.sampled_from([Role.PRIMARY, Role.SECONDARY]))
def test_the_queue_stays_bounded_and_the_counts_add_up(steps, limit, role):
    line: SharedLine[int] = SharedLine(role=role, limit=limit)
    now = 0.0
    for i, (what, arg) in enumerate(steps):
        now += 1.0
        if what == "hold":
            line.hold(f"mb{arg}", i, now)
        else:
            was = line.peer_reachable
            heal = line.peer(arg, active=True, now=now)
            if heal is not None:
                assert was is False and arg is True
                assert heal.full == (role is Role.PRIMARY)
            if was is False and arg:
                assert len(line) == 0
        assert len(line) <= limit
        c = line.counters
        assert c["held"] == c["replaced"] + c["overflow"] + c["discarded"] + len(line)
        assert line.may_transmit() == (role is Role.PRIMARY or line.peer_reachable is True)
