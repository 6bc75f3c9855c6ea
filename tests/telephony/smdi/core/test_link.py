"""The SMDI link's pure decisions (telephony.smdi.core.link) and the integration profile
(integrations.smdi), with hand-stepped ``now``."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.smdi.core.codec import CallRecord, MwiFailure, MwiFormat
from telephony.smdi.core.link import MAX_PER_TERMINAL, FailureMatcher, LampQueue, LinePacer, RecordMatcher
from telephony.smdi.settings import SerialSettings, SmdiProfile


def rec(terminal: int, fwd: str = "5551002") -> CallRecord:
    return CallRecord(desk=1, terminal=terminal, call_type="B", forwarding=fwd, calling="5551001",
                      raw=b"")


def test_matcher_files_ours_drops_the_peers_and_hands_out_oldest_first():
    m = RecordMatcher({1: "loopback-1", 2: "loopback-2"}, record_wait=30)
    assert m.add(rec(7), now=0) is None  # the peer's terminal
    first, second = rec(1, "1"), rec(1, "2")
    assert m.add(first, now=0).port == "loopback-1"
    m.add(second, now=1)
    assert m.pending() == 2 and m.next_deadline() == 30
    assert m.take("loopback-2", now=2) is None
    assert m.take("loopback-1", now=2) is first
    assert m.take("loopback-1", now=2) is second
    assert m.take("loopback-1", now=2) is None and m.pending() == 0
    assert m.take("no-such-port", now=2) is None


def test_matcher_expires_records_and_bounds_each_terminal():
    m = RecordMatcher({3: "loopback-3"}, record_wait=30)
    m.add(rec(3), now=0)
    assert m.expire(now=29.9) == [] and m.pending() == 1
    assert m.take("loopback-3", now=30.0) is None  # expired exactly at record_wait
    assert m.expired == 1
    for i in range(MAX_PER_TERMINAL + 3):
        m.add(rec(3, str(i)), now=100)
    assert m.pending() == MAX_PER_TERMINAL and m.dropped == 3
    assert m.take("loopback-3", now=100).forwarding == "3"  # the three oldest were dropped
    with pytest.raises(ValueError):
        RecordMatcher({}, record_wait=0)


def test_pacer_never_exceeds_the_line_rate():
    p = LinePacer(9600, 10)  # 7E1: 10 bits a character -> 960 characters/s
    assert p.start_at(5.0) == 5.0
    done = p.sent(16, at=5.0)
    assert done == pytest.approx(5.0 + 16 / 960)
    assert p.start_at(5.001) == pytest.approx(done)  # the line is busy until then
    assert p.start_at(9.0) == 9.0  # an idle line starts at once
    g = LinePacer(9600, 10, gap=0.05)
    g.sent(16, at=0)
    assert g.start_at(0) == pytest.approx(16 / 960 + 0.05)
    with pytest.raises(ValueError):
        LinePacer(0, 10)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.floats(0, 0.1)), min_size=1, max_size=50),
       st.sampled_from([300, 1200, 9600, 19200]))
def test_pacer_property_total_time_is_at_least_the_wire_time(cmds, baud):
    """Whatever the caller's delays, commands started where the pacer says never overlap on
    the wire, and the last one ends no earlier than all bytes / rate after the first start."""
    p = LinePacer(baud, 10)
    now, first, end = 0.0, None, 0.0
    for nbytes, delay in cmds:
        now += delay
        start = p.start_at(now)
        assert start >= end - 1e-12  # never before the previous command left the wire
        first = start if first is None else first
        end = p.sent(nbytes, start)
        now = start
    total = sum(n for n, _ in cmds) * 10 / baud
    assert end - first >= total - 1e-9


def test_lamp_queue_takes_fresh_before_bulk_and_keeps_each_lanes_order():
    q: LampQueue[str] = LampQueue()
    for i in range(3):
        q.add(("100%d" % i, 2), f"bulk{i}", bulk=True, now=i)
    q.add(("2000", 2), "fresh0", bulk=False, now=10)
    assert q.pending() == (1, 3) and len(q) == 4
    assert q.take().item == "fresh0"
    assert q.take().item == "bulk0"
    q.add(("2001", 2), "fresh1", bulk=False, now=11)  # arrives while bulk0 is on the wire
    q.add(("2002", 2), "fresh2", bulk=False, now=12)
    assert [q.take().item for _ in range(4)] == ["fresh1", "fresh2", "bulk1", "bulk2"]
    assert q.take() is None and q.pending() == (0, 0)


def test_lamp_queue_a_fresh_job_supersedes_a_queued_bulk_job_for_the_same_key():
    q: LampQueue[str] = LampQueue()
    q.add(("1001", 2), "bulk-1001-off", bulk=True, now=0)
    q.add(("1002", 2), "bulk-1002-off", bulk=True, now=0)
    e = q.add(("1002", 2), "fresh-1002-on", bulk=False, now=1)
    # one command for 1002, the fresh one's, in the fresh lane; both senders ride on it
    assert q.pending() == (1, 1) and q.superseded == 1
    assert (e.item, e.items, e.bulk, e.queued_at) == (
        "fresh-1002-on", ["bulk-1002-off", "fresh-1002-on"], False, 0)
    assert q.take() is e
    assert q.take().item == "bulk-1001-off" and q.take() is None
    # a later bulk job for a queued fresh one: the newest state, still in the fresh lane
    q.add(("1003", 2), "bulk-x", bulk=True, now=2)
    q.add(("1004", 2), "fresh-1004-on", bulk=False, now=2)
    e = q.add(("1004", 2), "bulk-1004-on", bulk=True, now=3)
    assert (e.item, e.bulk, q.pending()) == ("bulk-1004-on", False, (1, 1))
    assert q.take() is e
    # bulk over bulk: in place (its turn in the resync is kept)
    q.add(("1005", 2), "b5", bulk=True, now=4)
    q.add(("1003", 2), "bulk-y", bulk=True, now=5)
    assert [q.take().item for _ in range(2)] == ["bulk-y", "b5"]
    # another term is another key: an older term's job is not merged into a newer one
    q.add(("1006", 2), "t2", bulk=True, now=6)
    q.add(("1006", 4), "t4", bulk=False, now=6)
    assert [q.take().item for _ in range(2)] == ["t4", "t2"]


def test_lamp_queue_discard_withdraws_one_job():
    q: LampQueue[str] = LampQueue()
    q.add(("1", 2), "a", bulk=True, now=0)
    q.add(("2", 2), "b", bulk=True, now=0)
    q.add(("2", 2), "c", bulk=False, now=0)  # c takes b's place
    assert q.discard(("1", 2), "a") and q.pending() == (1, 0)
    assert not q.discard(("1", 2), "a")  # no longer queued
    assert q.discard(("2", 2), "c")  # b is still waiting: its command goes out instead
    e = q.take()
    assert (e.item, e.items) == ("b", ["b"]) and q.take() is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "take"]), st.integers(0, 5), st.booleans()),
                max_size=60))
def test_lamp_queue_property_no_bulk_job_goes_while_a_fresh_one_waits(steps):
    """Whatever the order of adds and takes: a take never returns a bulk entry while a fresh
    one is queued, every added job is taken exactly once (alone or riding on a newer one for
    its key), and at most one entry per key is ever queued."""
    q: LampQueue[int] = LampQueue()
    added, taken = [], []
    for n, (op, key, bulk) in enumerate(steps):
        if op == "add":
            q.add(key, n, bulk=bulk, now=n)
            added.append(n)
        else:
            fresh_waiting = q.pending()[0] > 0
            e = q.take()
            if e is None:
                assert len(q) == 0
                continue
            assert not (e.bulk and fresh_waiting)
            assert e.item == e.items[-1] == max(e.items)  # the newest job's command goes out
            taken += e.items
        assert len(q) <= len({k for o, k, _ in steps[:n + 1] if o == "add"})  # one per key
    while (e := q.take()) is not None:
        taken += e.items
    assert sorted(taken) == added


def test_a_transmitter_stepped_by_hand_sends_a_fresh_lamp_right_after_the_command_on_the_wire():
    """The driver's loop, with ``now`` passed in: wait for the pacer, then take.  A fresh job
    queued during a bulk command waits only for that command to leave the wire."""
    pacer, q = LinePacer(9600, 10), LampQueue()
    for i in range(100):
        q.add((f"{1000 + i}", 2), f"bulk{i}", bulk=True, now=0.0)
    now, sent, fresh_at = 0.0, [], 0.5
    while len(q) or fresh_at is not None:
        start = pacer.start_at(now)
        if fresh_at is not None and fresh_at <= start:  # queued during the wait for the line
            q.add(("2000", 2), "fresh", bulk=False, now=fresh_at)
            fresh_at = None
        e = q.take()
        done = pacer.sent(16, start)
        sent.append((e.item, start, done))
        now = start
    (item, start, done), = [s for s in sent if s[0] == "fresh"]
    assert 0.5 <= start <= 0.5 + 16 / 960 + 1e-9  # at most one command ahead of it
    assert done - 0.5 <= 2 * 16 / 960 + 1e-9
    assert len(sent) == 101 and sent[-1][2] == pytest.approx(101 * 16 / 960)


def test_failure_matcher_names_the_last_command_within_the_window():
    f: FailureMatcher[str] = FailureMatcher(window=10)
    f.sent("5551002", "job-on", now=0)
    f.sent("5551002", "job-off", now=1)  # the newer command for the station wins
    f.sent("5551003", "job-3", now=1)
    assert f.failed(MwiFailure("5551002", "INV", b""), now=5) == "job-off"
    assert f.failed(MwiFailure("5551002", "INV", b""), now=5) is None  # matched once
    assert f.failed(MwiFailure("5551003", "BLK", b""), now=11.5) is None  # too late
    small: FailureMatcher[int] = FailureMatcher(window=10, limit=2)
    for i in range(3):
        small.sent(str(i), i, now=0)
    assert small.failed(MwiFailure("0", "INV", b""), now=0) is None  # oldest evicted


def test_profile_numbers_and_ports():
    p = SmdiProfile(terminals=(5, 6), strip=1, keep_last=4, mwi_prefix="555",
                    mwi=MwiFormat(pad_to=10))
    assert p.port_of(6) == "loopback-2" and p.port_of(1) is None
    assert p.inbound("95551002") == "1002" and p.inbound("") == "" and p.inbound("9") == ""
    assert p.station("1002") == "5551002"
    assert p.mwi.encode(False, p.station("1002")) == b"RMV:MWI 0005551002!\x04"
    for bad in (dict(terminals=()), dict(terminals=(1, 1)), dict(terminals=(10000,)),
                dict(terminals=(1,), desk=1000), dict(terminals=(1,), record_wait=0),
                dict(terminals=(1,), strip=33), dict(terminals=(1,), mwi_prefix="5a"),
                dict(terminals=[1])):
        with pytest.raises(ValueError):
            SmdiProfile(**bad)


def test_serial_settings():
    s = SerialSettings("/dev/ttyS0")
    assert (s.baudrate, s.bytesize, s.parity, s.stopbits, s.bits_per_char) == (9600, 7, "even", 1, 10)
    assert SerialSettings("/dev/ttyS0", bytesize=8, parity="none", stopbits=2).bits_per_char == 11
    for bad in (dict(device=""), dict(device="/x", baudrate=0), dict(device="/x", bytesize=9),
                dict(device="/x", parity="sometimes"), dict(device="/x", stopbits=3)):
        with pytest.raises(ValueError):
            SerialSettings(**bad)
