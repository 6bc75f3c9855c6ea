"""The choice of CallManager: the ordered list, the back-off between failed attempts, probing the
first server while registered on another, and going back to it only when the port is idle."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telephony.sccp.core.homing import Homing


def test_starts_on_the_first_server_at_once():
    h = Homing(3, probe_interval=60)
    assert h.current == 0 and not h.homed
    assert h.next_attempt(100.0) == 100.0
    assert h.delay() == 0.0


def test_failures_move_along_the_list_wrapping_with_doubling_backoff():
    h = Homing(3, probe_interval=60)
    seen = []
    for i in range(8):
        now = 10.0 * i
        seen.append((h.failed(now), round(h.next_attempt(now) - now, 9)))
    assert seen == [(1, 0.2), (2, 0.4), (0, 0.8), (1, 1.6), (2, 3.2), (0, 5.0), (1, 5.0), (2, 5.0)]


def test_next_attempt_is_never_in_the_past():
    h = Homing(2, probe_interval=60)
    h.failed(10.0)
    assert h.next_attempt(10.1) == pytest.approx(10.2)
    assert h.next_attempt(11.0) == 11.0


def test_registration_resets_the_backoff():
    h = Homing(2, probe_interval=60)
    for t in range(4):
        h.failed(float(t))
    assert h.delay() == pytest.approx(1.6)
    h.registered(10.0)
    assert h.failures == 0 and h.homed and h.delay() == 0.0
    assert h.failed(20.0) == 1 and h.next_attempt(20.0) == pytest.approx(20.2)


def test_a_single_server_is_retried_with_backoff():
    h = Homing(1, probe_interval=60, backoff_min=1, backoff_max=3)
    assert [h.failed(0.0) for _ in range(3)] == [0, 0, 0]
    assert h.next_attempt(0.0) == 3.0  # 1, 2, then capped at 3
    assert not h.should_probe(1000.0)  # nothing to go back to


def test_restart_retries_the_same_server_after_the_shortest_wait():
    h = Homing(3, probe_interval=60)
    h.failed(0.0)
    h.registered(1.0)
    assert h.restart(5.0) == 1
    assert h.next_attempt(5.0) == pytest.approx(5.2)
    assert not h.homed


def test_no_probing_while_on_the_first_server():
    h = Homing(2, probe_interval=30)
    h.registered(0.0)
    assert not h.should_probe(1e6) and h.next_probe() is None


def test_probing_the_first_server_every_interval_while_on_another():
    h = Homing(3, probe_interval=30)
    h.failed(0.0)  # primary down: on server 1
    assert not h.should_probe(100.0)  # not registered yet
    h.registered(1.0)
    assert h.next_probe() == 31.0
    assert not h.should_probe(30.9)
    assert h.should_probe(31.0)
    h.probed(31.0, reachable=False)
    assert not h.should_probe(60.9) and h.should_probe(61.0)
    h.probed(61.5, reachable=True)
    assert h.rehome_pending and not h.should_probe(1e6) and h.next_probe() is None


def test_going_back_waits_for_an_idle_port():
    h = Homing(2, probe_interval=30)
    h.failed(0.0)
    h.registered(1.0)
    h.probed(31.0, reachable=True)
    assert h.primary_back(32.0, idle=False) is False
    assert h.current == 1 and h.rehome_pending and h.homed
    assert h.primary_back(40.0, idle=True) is True
    assert h.current == 0 and not h.rehome_pending and not h.homed
    assert h.next_attempt(40.0) == 40.0 and h.delay() == 0.0


def test_a_wish_kept_while_busy_is_dropped_if_the_server_is_lost_meanwhile():
    h = Homing(3, probe_interval=30)
    h.failed(0.0)
    h.registered(1.0)
    h.primary_back(5.0, idle=False)
    assert h.rehome_pending
    assert h.failed(6.0) == 2  # server 1 lost during the call: on to the next
    assert not h.rehome_pending


def test_primary_back_on_the_first_server_does_nothing():
    h = Homing(2, probe_interval=30)
    h.registered(0.0)
    assert h.primary_back(1.0) is False and h.current == 0 and h.homed


def test_failing_back_on_the_primary_moves_on_again():
    h = Homing(2, probe_interval=30)
    h.failed(0.0)
    h.registered(1.0)
    assert h.primary_back(40.0)
    assert h.failed(41.0) == 1  # the primary answered the probe but refused the registration
    assert h.next_attempt(41.0) == pytest.approx(41.2)


@pytest.mark.parametrize("kwargs, words", [
    ({"servers": 0, "probe_interval": 1}, "servers"),
    ({"servers": True, "probe_interval": 1}, "servers"),
    ({"servers": 2, "probe_interval": 0}, "probe_interval"),
    ({"servers": 2, "probe_interval": math.nan}, "probe_interval"),
    ({"servers": 2, "probe_interval": 1, "backoff_min": -1}, "backoff_min"),
    ({"servers": 2, "probe_interval": 1, "backoff_min": 2, "backoff_max": 1}, "below"),
])
def test_bad_settings_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Homing(**kwargs)


@given(n=st.integers(1, 5), steps=st.lists(st.sampled_from(
    ["failed", "registered", "restart", "probe_ok", "probe_bad", "back_idle", "back_busy"]), max_size=60))
def test_any_sequence_keeps_the_index_in_range_and_the_wait_bounded(n, steps):
    h = Homing(n, probe_interval=10, backoff_min=0.2, backoff_max=5)
    now = 0.0
    for step in steps:
        now += 1.0
        if step == "failed":
            h.failed(now)
        elif step == "registered":
            h.registered(now)
        elif step == "restart":
            h.restart(now)
        elif step.startswith("probe"):
            if h.should_probe(now):
                h.probed(now, step == "probe_ok")
        else:
            h.primary_back(now, idle=step == "back_idle")
        assert 0 <= h.current < n
        assert now <= h.next_attempt(now) <= now + 5.0
        assert not (h.should_probe(now) and h.current == 0)
        if h.rehome_pending:
            assert h.current != 0
