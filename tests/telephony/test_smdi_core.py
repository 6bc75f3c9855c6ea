"""The SMDI link's pure decisions (telephony.smdi.core) and the integration profile
(integrations.smdi), with hand-stepped ``now``."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from integrations.smdi import SerialSettings, SmdiProfile
from telephony.smdi.codec import CallRecord, MwiFailure, MwiFormat
from telephony.smdi.core import MAX_PER_TERMINAL, FailureMatcher, LinePacer, RecordMatcher


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
