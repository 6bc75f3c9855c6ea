"""lab/nfqueue.py: the nfnetlink_queue codec (golden layouts, fuzzed parser) and the delayer;
the consumer itself against the kernel (a real queue in a scratch namespace) is in
tests/lab/test_nemesis.py (link_delay, link_reorder)."""
from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.nfqueue import (
    NFQNL_MSG_CONFIG,
    NFQNL_MSG_PACKET,
    NFQNL_MSG_VERDICT,
    Delayer,
    NfqError,
    config_msg,
    parse_messages,
    verdict_msg,
)


def attr(kind: int, value: bytes) -> bytes:
    a = struct.pack("=HH", 4 + len(value), kind) + value
    return a + b"\0" * (-len(a) % 4)


def packet_msg(packet_id: int, payload: bytes = b"", hook: int = 2) -> bytes:
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(7))
    body += attr(1, struct.pack(">IHB", packet_id, 0x0800, hook))
    if payload:
        body += attr(10, payload)
    return struct.pack("=IHHII", 16 + len(body), NFQNL_MSG_PACKET, 0, 0, 0) + body


def test_packets_of_one_datagram_are_parsed_in_order():
    data = packet_msg(5, b"x" * 21) + packet_msg(6, hook=3)
    packets, errors = parse_messages(data)
    assert [(p.packet_id, p.hook, p.payload_len) for p in packets] == [(5, 2, 21), (6, 3, 0)]
    assert errors == []


def test_an_ack_and_an_error_are_reported_as_codes():
    ack = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", 0) + bytes(16)
    err = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -1) + bytes(16)
    assert parse_messages(ack + err) == ([], [0, -1])


def test_config_and_verdict_messages_have_the_kernels_layout():
    m = config_msg(7, maxlen=100, seq=3)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", m)
    assert (length, kind, flags & 5, seq) == (len(m), NFQNL_MSG_CONFIG, 5, 3)
    assert struct.unpack_from(">H", m, 18)[0] == 7  # res_id: the queue, big-endian
    # first attribute: NFQA_CFG_CMD = bind (1), pf AF_INET
    assert struct.unpack_from("=HH", m, 20) == (8, 1) and m[24] == 1
    assert struct.unpack_from(">H", m, 26)[0] == socket.AF_INET
    v = verdict_msg(7, 0x01020304)
    assert struct.unpack_from("=IH", v) == (len(v), NFQNL_MSG_VERDICT)
    assert struct.unpack_from("=HH", v, 20) == (12, 2)
    assert struct.unpack_from(">II", v, 24) == (1, 0x01020304)  # ACCEPT, packet id
    with pytest.raises(ValueError):
        verdict_msg(70000, 1)


@pytest.mark.parametrize("data", [
    struct.pack("=IHHII", 8, NFQNL_MSG_PACKET, 0, 0, 0),            # length below the header
    struct.pack("=IHHII", 64, NFQNL_MSG_PACKET, 0, 0, 0),           # length past the datagram
    struct.pack("=IHHII", 20, NFQNL_MSG_PACKET, 0, 0, 0) + bytes(4),  # no packet header
    struct.pack("=IHHII", 28, NFQNL_MSG_PACKET, 0, 0, 0) + bytes(4) + struct.pack("=HH", 99, 1) + bytes(4),
    struct.pack("=IHHII", 18, 2, 0, 0, 0) + bytes(2),                # short error message
])
def test_malformed_datagrams_are_refused(data):
    with pytest.raises(NfqError):
        parse_messages(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_parse_or_raise_only_nfqerror(data):
    try:
        packets, errors = parse_messages(data)
    except NfqError:
        return
    assert all(0 <= p.packet_id < 2**32 and p.payload_len <= len(data) for p in packets)
    assert len(packets) + len(errors) <= len(data) // 16


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=40)), max_size=8))
def test_built_packet_messages_round_trip(items):
    data = b"".join(packet_msg(i, p) for i, p in items)
    packets, _ = parse_messages(data)
    assert [(p.packet_id, p.payload_len) for p in packets] == [(i, len(p)) for i, p in items]


def test_the_delayer_releases_each_packet_after_its_hold_and_none_twice():
    d = Delayer(delay_ms=100, jitter_ms=0, seed=1)
    for i in range(5):
        assert d.add(i, now=10.0 + i * 0.01)
    assert d.due(10.09) == []
    assert d.due(10.125) == [0, 1, 2]
    assert d.due(11.0) == [3, 4]
    assert d.due(12.0) == [] and d.counters["released"] == 5


def test_reordering_lets_later_packets_overtake_and_the_hold_is_bounded():
    d = Delayer(delay_ms=1, reorder=0.5, reorder_ms=50, max_held=1000, seed=3)
    for i in range(200):
        d.add(i, now=i * 0.001)
    out = d.due(100.0)
    assert sorted(out) == list(range(200)) and out != sorted(out)
    assert 0 < d.counters["reordered"] < 200
    full = Delayer(delay_ms=10, max_held=2)
    assert full.add(1, 0.0) and full.add(2, 0.0) and not full.add(3, 0.0)
    assert full.counters["overflow"] == 1 and sorted(full.drain()) == [1, 2]
