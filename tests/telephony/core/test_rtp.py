"""RTP/RTCP packets, RFC 4733 events, the jitter buffer and RFC 3550 statistics
(telephony/core/rtp.py, telephony/core/rtcp.py): golden bytes written out by hand from the
RFCs' layouts, hand-computed statistics, and Hypothesis fuzzing of both parsers."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.core.rtp import (
    MAX_PACKET,
    Bye,
    DtmfEvent,
    DtmfEventReceiver,
    JitterBuffer,
    ReceiverReport,
    ReceptionStats,
    ReportBlock,
    RtcpError,
    RtpError,
    RtpPacket,
    RtpSender,
    Sdes,
    SenderReport,
    UnknownRtcp,
    encode_compound,
    ntp_from_unix,
    ntp_middle,
    parse_dtmf_event,
    parse_rtcp,
    parse_rtp,
)

# ------------------------------------------------------------------------------- golden bytes

# V=2 P=0 X=0 CC=0 | M=1 PT=0 | seq 0x1234 | ts 0x11223344 | ssrc 0xDEADBEEF | 4 µ-law bytes
GOLDEN_RTP = bytes.fromhex("80 80 1234 11223344 deadbeef 7f00ff80")

# V=2 P=1 X=1 CC=2 | M=0 PT=8 | seq 1 | ts 160 | ssrc 0x01020304 | csrc 0x0a0b0c0d 0x0e0f1011 |
# extension profile 0xBEDE, 1 word: 01020304 | payload d5d5 | padding: 00 00 03 (three bytes)
GOLDEN_RTP_FULL = bytes.fromhex(
    "b2 08 0001 000000a0 01020304 0a0b0c0d 0e0f1011 bede 0001 01020304 d5d5 000003")

# RFC 4733 event: PT 101 with the marker, seq 7, ts 8000, ssrc 0x0000abcd;
# event 5 (digit "5"), E=1, R=0, volume 10, duration 800 (100 ms)
GOLDEN_EVENT = bytes.fromhex("80 e5 0007 00001f40 0000abcd 05 8a 0320")

# Compound: SR (RC=1) + SDES (SC=1, CNAME "abcd")
GOLDEN_SR_SDES = bytes.fromhex(
    # SR: V=2 RC=1, PT 200, length 12 words (52 bytes in all)
    "81 c8 000c"
    "11111111"                    # sender SSRC
    "83aa7e80 80000000"           # NTP: 1970-01-01 00:00:00.5 (2208988800 s + 0.5)
    "00000640"                    # RTP timestamp 1600
    "00000064"                    # 100 packets
    "00003e80"                    # 16000 octets
    # report block about 0x22222222: fraction 64/256, cumulative lost -3, highest seq 0x00010005,
    # jitter 40, LSR 0x7e808000, DLSR 0x00018000 (1.5 s)
    "22222222 40 fffffd 00010005 00000028 7e808000 00018000"
    # SDES: V=2 SC=1, PT 202, length 3 words: SSRC, CNAME (type 1, length 4) "abcd", end + pad
    "81 ca 0003 11111111 01 04 61626364 0000")


def test_golden_rtp_packet_both_ways():
    pkt = parse_rtp(GOLDEN_RTP)
    assert pkt == RtpPacket(payload_type=0, seq=0x1234, timestamp=0x11223344, ssrc=0xDEADBEEF,
                            marker=True, payload=bytes.fromhex("7f00ff80"))
    assert pkt.encode() == GOLDEN_RTP


def test_golden_rtp_with_csrc_extension_and_padding():
    pkt = parse_rtp(GOLDEN_RTP_FULL)
    assert (pkt.payload_type, pkt.seq, pkt.timestamp, pkt.ssrc, pkt.marker) == (8, 1, 160, 0x01020304, False)
    assert pkt.csrc == (0x0A0B0C0D, 0x0E0F1011)
    assert pkt.extension == (0xBEDE, bytes.fromhex("01020304"))
    assert pkt.payload == b"\xd5\xd5"
    assert pkt.padding == 3
    assert pkt.encode() == GOLDEN_RTP_FULL


def test_golden_telephone_event():
    pkt = parse_rtp(GOLDEN_EVENT)
    assert (pkt.payload_type, pkt.marker, pkt.seq, pkt.timestamp) == (101, True, 7, 8000)
    ev = parse_dtmf_event(pkt.payload)
    assert ev == DtmfEvent(event=5, end=True, volume=10, duration=800)
    assert ev.digit == "5"
    assert RtpPacket(101, 7, 8000, 0xABCD, True, ev.encode()).encode() == GOLDEN_EVENT


def test_golden_sr_sdes_compound():
    sr, sdes = parse_rtcp(GOLDEN_SR_SDES)
    assert sr == SenderReport(
        ssrc=0x11111111, ntp=ntp_from_unix(0.5), rtp_timestamp=1600, packet_count=100,
        octet_count=16000, reports=(ReportBlock(ssrc=0x22222222, fraction_lost=64,
                                                cumulative_lost=-3, highest_seq=0x10005,
                                                jitter=40, lsr=0x7E808000, dlsr=0x18000),))
    assert ntp_middle(sr.ntp) == 0x7E808000
    assert sdes == Sdes(0x11111111, "abcd")
    assert encode_compound(sr, sdes) == GOLDEN_SR_SDES


def test_rr_and_bye_layouts():
    rr = ReceiverReport(5, (ReportBlock(6, 0, 1, 2, 3, 4, 5),)).encode()
    assert rr[:4] == bytes.fromhex("81 c9 0007") and len(rr) == 32
    bye = Bye((5,), "done").encode()
    # V=2 SC=1 PT 203, 3 words: SSRC, length 4 "done", 3 bytes of padding
    assert bye == bytes.fromhex("81cb0003 00000005 04646f6e 65000000")
    assert parse_rtcp(bye) == [Bye((5,), "done")]
    app = bytes.fromhex("80 cc 0002 00000005 6e616d65")  # APP: kept as an unknown packet
    assert parse_rtcp(rr + app) == [ReceiverReport(5, (ReportBlock(6, 0, 1, 2, 3, 4, 5),)),
                                    UnknownRtcp(204, 0, bytes.fromhex("00000005 6e616d65"))]


# ------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("data, why", [
    (b"", "shorter"), (GOLDEN_RTP[:11], "shorter"),
    (b"\x40" + GOLDEN_RTP[1:], "version 1"),
    (bytes([0x8F]) + GOLDEN_RTP[1:], "CSRC"),  # 15 CSRCs announced, none there
    (bytes([0x90]) + GOLDEN_RTP[1:12], "extension"),
    (bytes([0x90]) + GOLDEN_RTP[1:12] + bytes.fromhex("bede0009"), "extension of 9"),
    (bytes([0xA0]) + GOLDEN_RTP[1:] + b"\x00", "padding count of 0"),
    (bytes([0xA0]) + GOLDEN_RTP[1:12] + b"\x20", "padding count larger"),
    (GOLDEN_RTP + bytes(MAX_PACKET), "over 1500"),
])
def test_bad_rtp_is_an_rtp_error(data, why):
    with pytest.raises(RtpError, match=why):
        parse_rtp(data)


@pytest.mark.parametrize("data", [
    b"\x80\xc8", bytes.fromhex("40c80000"), bytes.fromhex("80c90002 00000001"),  # past the end
    bytes.fromhex("81c90001 00000001"),  # RR announcing a block it has not got
    bytes.fromhex("81ca0001 00000001"),  # SDES chunk without an end item
    bytes.fromhex("81ca0002 00000001 01090000"),  # item runs past the packet
    bytes.fromhex("a0c90001 00000000") + bytes.fromhex("80c90001 00000001"),  # inner padding
    bytes.fromhex("a0c90001 00000005"),  # padding count 5 > body
    bytes.fromhex("81cb0001 00000001 09"),  # trailing byte after the packet
    bytes.fromhex("81cb0002 00000001 09616263"),  # BYE reason runs past
    GOLDEN_SR_SDES + bytes(MAX_PACKET),
])
def test_bad_rtcp_is_an_rtcp_error(data):
    with pytest.raises(RtcpError):
        parse_rtcp(data)


def test_fields_out_of_range_are_refused():
    with pytest.raises(RtpError):
        RtpPacket(128, 0, 0, 0)
    with pytest.raises(RtpError):
        RtpPacket(0, 65536, 0, 0)
    with pytest.raises(RtpError):
        RtpPacket(0, 0, 0, 0, payload=bytes(1500))  # 1512 bytes in all
    with pytest.raises(RtpError):
        DtmfEvent(event=1, volume=64)
    with pytest.raises(RtpError):
        parse_dtmf_event(b"\x01\x02\x03")
    with pytest.raises(RtcpError):
        ReportBlock(1, cumulative_lost=0x800000)
    with pytest.raises(RtcpError):
        ReceiverReport(1, tuple(ReportBlock(i) for i in range(32)))
    with pytest.raises(RtcpError):
        encode_compound(*[ReceiverReport(1, tuple(ReportBlock(i) for i in range(31)))] * 2)


# -------------------------------------------------------------------------------------- fuzz

@settings(max_examples=800, deadline=None)
@given(st.binary(max_size=1600))
def test_fuzz_parse_rtp_only_raises_rtp_error(data):
    try:
        pkt = parse_rtp(data)
    except RtpError:
        return
    again = pkt.encode()
    if pkt.padding:  # the padding's content is not kept, only its length
        assert len(again) == len(data) and again[-1] == data[-1]
        assert again[:len(data) - pkt.padding] == data[:len(data) - pkt.padding]
    else:
        assert again == data


@settings(max_examples=800, deadline=None)
@given(st.binary(max_size=1600))
def test_fuzz_parse_rtcp_only_raises_rtcp_error(data):
    try:
        parse_rtcp(data)
    except RtcpError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([200, 201, 202, 203, 204, 205]), st.integers(0, 31),
                          st.binary(max_size=120)), min_size=1, max_size=5),
       st.booleans())
def test_fuzz_rtcp_with_valid_headers(parts, pad):
    """Headers that hold together, bodies of any content: only RtcpError escapes, and what
    parses encodes back to the same packet types."""
    data = b""
    for pt, count, body in parts:
        body = body + bytes(-len(body) % 4)
        data += struct.pack("!BBH", 0x80 | count, pt, len(body) // 4) + body
    if pad and len(data) >= 4:
        data = bytes([data[0] | 0x20]) + data[1:]
    try:
        packets = parse_rtcp(data)
    except RtcpError:
        return
    for p in packets:
        assert p.encode()[1] in (200, 201, 202, 203, 204, 205)


packets = st.builds(
    RtpPacket, payload_type=st.integers(0, 127), seq=st.integers(0, 65535),
    timestamp=st.integers(0, 2**32 - 1), ssrc=st.integers(0, 2**32 - 1), marker=st.booleans(),
    payload=st.binary(max_size=400), csrc=st.lists(st.integers(0, 2**32 - 1), max_size=15).map(tuple),
    extension=st.none() | st.tuples(st.integers(0, 65535), st.binary(max_size=64).map(
        lambda b: b + bytes(-len(b) % 4))),
    padding=st.sampled_from([0, 1, 4, 255]))


@settings(max_examples=300, deadline=None)
@given(packets)
def test_rtp_round_trip(pkt):
    assert parse_rtp(pkt.encode()) == pkt


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.booleans(), st.integers(0, 63), st.integers(0, 65535))
def test_event_round_trip(event, end, volume, duration):
    ev = DtmfEvent(event, end, volume, duration)
    assert parse_dtmf_event(ev.encode()) == ev


# -------------------------------------------------------------------------- RFC 4733 receiver

def _ev(seq, ts, event, duration, end=False, ssrc=1, marker=False):
    return RtpPacket(101, seq, ts, ssrc, marker, DtmfEvent(event, end, 10, duration).encode())


def test_one_digit_per_event_with_repeats_and_three_end_packets():
    rx = DtmfEventReceiver()
    out = []
    stream = [_ev(1, 8000, 1, 160, marker=True), _ev(2, 8000, 1, 320), _ev(2, 8000, 1, 320),
              _ev(3, 8000, 1, 480), _ev(4, 8000, 1, 640, True), _ev(5, 8000, 1, 640, True),
              _ev(6, 8000, 1, 640, True),
              # the same key again: a new event has a new timestamp
              _ev(7, 9600, 1, 160, marker=True), _ev(8, 9600, 1, 320, True),
              _ev(9, 9600, 1, 320, True), _ev(10, 9600, 1, 320, True),
              _ev(3, 8000, 1, 480),  # a late packet of the first event
              _ev(11, 11200, 11, 160, marker=True), _ev(12, 11200, 11, 320, True),
              _ev(13, 12800, 16, 160, True),  # flash: not a DTMF key
              ]
    for p in stream:
        d = rx.feed(p)
        if d:
            out.append(d)
    assert out == ["1", "1", "#"]
    assert (rx.events, rx.ignored, rx.bad) == (3, 1, 0)
    assert rx.feed(RtpPacket(101, 14, 14400, 1, payload=b"\x01")) is None
    assert rx.bad == 1


def test_event_whose_first_packets_were_lost_counts_once():
    rx = DtmfEventReceiver()
    got = [rx.feed(p) for p in (_ev(4, 800, 9, 640, True), _ev(5, 800, 9, 640, True),
                                _ev(2, 800, 9, 320))]
    assert got == ["9", None, None]


def test_long_event_continued_under_a_new_timestamp_is_one_digit():
    rx = DtmfEventReceiver()
    assert rx.feed(_ev(1, 0, 5, 0xFFFF)) == "5"
    assert rx.feed(_ev(2, 0xFFFF, 5, 800)) is None  # RFC 4733 2.5.1.3 continuation
    assert rx.feed(_ev(3, 0xFFFF, 5, 960, True)) is None
    assert rx.feed(_ev(4, 0xFFFF + 8000, 5, 160)) == "5"  # a new press


# -------------------------------------------------------------------------- RFC 3550 statistics

def test_interarrival_jitter_by_hand():
    """RFC 3550 A.8: J += (|D| - J) / 16 with D the change in transit time, in timestamp units.

    timestamps 0, 160, 320, 480, 640; arrivals 0, 20, 45, 58, 80 ms, i.e. 0, 160, 360, 464,
    640 in 8 kHz units; transit 0, 0, 40, -16, 0; |D| 0, 40, 56, 16:
    J = 0 -> 0 -> 2.5 -> 2.5 + (56 - 2.5) / 16 = 5.84375 -> 5.84375 + (16 - 5.84375) / 16
    = 6.478515625."""
    s = ReceptionStats()
    for seq, (ts, t) in enumerate(zip((0, 160, 320, 480, 640), (0, 0.020, 0.045, 0.058, 0.080), strict=True)):
        s.update(100 + seq, 1000.0 + t, ts)
    assert s.jitter == pytest.approx(6.478515625, abs=1e-6)
    assert s.jitter_ms == pytest.approx(6.478515625 / 8, abs=1e-6)
    assert s.report_block(1).jitter == 6


def test_sequence_wrap_expected_lost_and_fraction():
    s = ReceptionStats()
    for seq in (65533, 65534, 65535, 0, 1, 2):
        s.update(seq, 0.0)
    # the first packet is the probation one (A.1): counting starts at 65534
    assert (s.base_seq, s.cycles, s.extended_max) == (65534, 65536, 65538)
    assert (s.expected, s.received, s.lost) == (5, 5, 0)
    assert s.report_block(9).fraction_lost == 0
    s.update(5, 0.0)
    s.update(6, 0.0)  # 3 and 4 lost
    assert (s.expected, s.received, s.lost) == (9, 7, 2)
    rb = s.report_block(9)
    assert (rb.fraction_lost, rb.cumulative_lost, rb.highest_seq) == (128, 2, 65542)  # 2 of 4
    s.update(6, 0.0)  # a duplicate counts as received (A.3): lost may go down
    assert s.lost == 1


def test_sequence_jump_restarts_only_when_confirmed():
    s = ReceptionStats()
    for seq in (10, 11, 12):
        s.update(seq, 0.0)
    assert not s.update(20000, 0.0)  # a jump beyond MAX_DROPOUT: not counted yet
    assert s.bad == 1 and s.received == 2
    assert s.update(20001, 0.0)  # the next in sequence: the source restarted
    assert (s.base_seq, s.received, s.expected) == (20001, 1, 1)


# ------------------------------------------------------------------------------ jitter buffer

def _a(seq, ts=None, ssrc=7, n=160):
    ts = seq * 160 if ts is None else ts
    return RtpPacket(0, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, payload=bytes([seq & 0x7F]) * n)


SILENCE = b"\xff" * 160


def _drain(jb, t0, until, step=0.005, strip=True):
    """Pop every 5 ms from t0 to until; the silence made up after the last packet (the
    buffer holds its clock through a gap of up to hold_ms) is left out."""
    out = []
    t = t0
    while t <= until:
        while (p := jb.pop(t)) is not None:
            out.append(p)
        t += step
    while strip and out and out[-1] == SILENCE:
        out.pop()
    return out


def test_in_order_plays_after_the_depth():
    jb = JitterBuffer(20, 60)
    for i in range(5):
        assert jb.push(_a(i), i * 0.02) == "ok"
    assert jb.pop(0.059) is None
    assert jb.pop(0.060) == _a(0).payload
    assert jb.pop(0.060) is None  # the next one is due 20 ms later
    out = _drain(jb, 0.08, 1.0)
    assert out == [_a(i).payload for i in range(1, 5)]
    assert (jb.lost, jb.late, jb.duplicate, jb.reordered) == (0, 0, 0, 0)


def test_reorder_loss_duplicate_late():
    jb = JitterBuffer(20, 60)
    arrivals = [(0, 0.0), (2, 0.04), (1, 0.045), (2, 0.05), (4, 0.08), (5, 0.10), (7, 0.14)]
    for seq, t in arrivals:
        jb.push(_a(seq), t)
    out = _drain(jb, 0.0, 0.19, strip=False)
    # 0,1,2 then 3 lost (concealed), 4, 5, ... 6 missing at its turn (7 is held)
    assert out[:6] == [_a(0).payload, _a(1).payload, _a(2).payload, SILENCE, _a(4).payload,
                       _a(5).payload]
    assert jb.push(_a(3), 0.2) == "late"
    assert jb.push(_a(5), 0.2) == "duplicate"
    out += _drain(jb, 0.2, 0.5)
    assert out[6:] == [SILENCE, _a(7).payload]
    # 3 and 6 were missing when play-out passed them (lost); 3 then came late
    assert (jb.lost, jb.late, jb.duplicate, jb.reordered) == (2, 1, 2, 1)
    assert jb.concealed >= 2


def test_reordered_first_packets_open_the_stream_in_order():
    jb = JitterBuffer(20, 60)
    jb.push(_a(11), 0.0)
    assert jb.push(_a(10), 0.01) == "reordered"
    out = _drain(jb, 0.0, 0.3)
    assert out == [_a(10).payload, _a(11).payload]
    assert jb.lost == 0 and jb.late == 0


def test_marked_event_packets_are_not_lost_and_their_time_is_silence():
    jb = JitterBuffer(20, 40)
    jb.push(_a(0), 0.0)
    for seq in (1, 2, 3):  # telephone-event packets share the numbering
        jb.mark(RtpPacket(101, seq, 160, 7, payload=bytes(4)), 0.02 * seq)
    jb.push(_a(4), 0.08)
    out = _drain(jb, 0.0, 0.3)
    assert out == [_a(0).payload] + [b"\xff" * 160] * 3 + [_a(4).payload]
    assert jb.lost == 0


def test_a_pause_stops_play_out_and_the_next_packet_restarts_it():
    jb = JitterBuffer(20, 40, hold_ms=100)
    jb.push(_a(0), 0.0)
    out = _drain(jb, 0.0, 0.3, strip=False)
    assert out == [_a(0).payload] + [SILENCE] * 5  # the clock held through 100 ms
    assert jb.underruns == 1 and jb.next_due() is None
    jb.push(_a(50), 5.0)  # the sender paused (and its timestamps jumped)
    assert jb.pop(5.01) is None
    assert jb.pop(5.04) == _a(50).payload
    assert jb.lost == 49  # passed over unseen


def test_bounded_and_resync():
    jb = JitterBuffer(20, 60, max_packets=10)
    jb.push(_a(0), 0.0)
    for seq in range(1, 10):
        jb.push(_a(seq), 0.0)
    assert len(jb) == 10
    assert jb.push(_a(10), 0.0) == "ok"  # one over: the oldest goes
    assert len(jb) == 10 and jb.overflow == 1
    assert jb.push(_a(500), 0.0) == "resync"  # far ahead: the sender restarted
    assert len(jb) == 1 and jb.resyncs == 1
    assert jb.push(_a(501, ssrc=8), 0.0) == "resync"  # a new source
    assert jb.resyncs == 2


def test_seq_wrap_in_the_buffer():
    jb = JitterBuffer(20, 40)
    seqs = [65534, 65535, 0, 1]
    for i, seq in enumerate(seqs):
        jb.push(_a(seq, ts=i * 160), i * 0.02)
    out = _drain(jb, 0.0, 0.5)
    assert out == [_a(s).payload for s in seqs]
    assert jb.lost == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 30), st.booleans(), st.floats(0, 0.1)), max_size=80),
       st.integers(2, 12))
def test_fuzz_jitter_buffer_stays_bounded(ops, max_packets):
    jb = JitterBuffer(20, 40, max_packets=max_packets)
    t = 0.0
    base = 0
    for delta, pop, dt in ops:
        t += dt
        if pop:
            p = jb.pop(t)
            assert p is None or 0 < len(p) <= 160
        else:
            base += 1
            seq = (base + delta) & 0xFFFF
            jb.push(_a(seq, ts=(base + delta) * 160), t)
        assert len(jb) <= max_packets
    assert min(jb.lost, jb.late, jb.duplicate, jb.reordered) >= 0


def test_bad_jitter_buffer_settings():
    for args in ((0, 60), (20, -1), (20, 60, 1), (20, 60, 5000)):
        with pytest.raises(ValueError):
            JitterBuffer(*args)


# ------------------------------------------------------------------------------------ sender

def test_sender_marker_seq_wrap_timestamps():
    s = RtpSender(0x1234, 0, seq=65535, timestamp=2**32 - 160)
    first = parse_rtp(s.packet(b"\xff" * 160, 160))
    second = parse_rtp(s.packet(b"\xff" * 160, 160))
    assert (first.marker, first.seq, first.timestamp) == (True, 65535, 2**32 - 160)
    assert (second.marker, second.seq, second.timestamp) == (False, 0, 0)
    s.skip(800)
    s.talkspurt()
    third = parse_rtp(s.packet(b"\xff" * 160, 160))
    assert (third.marker, third.seq, third.timestamp) == (True, 1, 960)
    assert (s.packets, s.octets) == (3, 480)


@settings(max_examples=200, deadline=None)
@given(st.integers(5, 60).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(0, 65535),
    st.sets(st.integers(1, n - 2), max_size=n // 4),
    st.sets(st.integers(0, n - 1), max_size=n // 4),
    st.lists(st.floats(0, 0.035), min_size=n, max_size=n))))
def test_jitter_buffer_property_reorder_drop_duplicate(case):
    """Any network within the depth (delays up to 35 ms under a 60 ms buffer, so packets
    overtake each other), with drops and duplicates: the output is every packet in order
    with one packet of silence per drop, and the counters say exactly what happened."""
    n, seq0, drops, dups, delays = case
    pkts = [_a(seq0 + i, ts=1000 + 160 * i) for i in range(n)]
    arrivals = []
    for i in range(n):
        if i in drops:
            continue
        t = i * 0.02 + delays[i]
        arrivals.append((t, i))
        if i in dups:
            arrivals.append((t + 1e-4, i))
    arrivals.sort()
    expect_reordered, top, seen = 0, -1, set()
    for _, i in arrivals:
        if i in seen:
            continue
        seen.add(i)
        expect_reordered += i < top
        top = max(top, i)
    jb = JitterBuffer(20, 60)
    out = []
    k = 0
    for step in range(int((n * 0.02 + 0.2) / 0.005)):
        t = step * 0.005
        while k < len(arrivals) and arrivals[k][0] <= t:
            jb.push(pkts[arrivals[k][1]], arrivals[k][0])
            k += 1
        while (p := jb.pop(t)) is not None:
            out.append(p)
    while out[-1] == SILENCE:  # the clock held after the last packet
        out.pop()
    assert out == [SILENCE if i in drops else pkts[i].payload for i in range(n)]
    assert (jb.lost, jb.late) == (len(drops), 0)
    assert jb.duplicate == len(dups - drops)
    assert jb.reordered == expect_reordered


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40), st.binary(max_size=8)),
                max_size=200))
def test_fuzz_event_receiver_never_raises_and_stays_bounded(items):
    rx = DtmfEventReceiver()
    for ssrc, ts, payload in items:
        d = rx.feed(RtpPacket(101, 0, ts * 160, ssrc, payload=payload))
        assert d is None or d in "0123456789*#ABCD"
    assert len(rx._seen) <= DtmfEventReceiver.REMEMBERED
    assert rx.events + rx.ignored + rx.bad <= rx.packets


def test_sdes_with_two_chunks_and_other_items():
    # SC=2, 7 words. Chunk 1: SSRC 1, CNAME (1) "a", NAME (2) "bob": 12 bytes, then the end
    # item and padding to 16. Chunk 2: SSRC 2, CNAME "cd": 8 bytes, then end + padding to 12.
    data = bytes.fromhex("82ca0007"
                         "00000001 01 01 61 02 03 626f62 00000000"
                         "00000002 01 02 6364 00000000")
    got = parse_rtcp(data)
    assert got == [Sdes(1, "a", ((2, b"bob"),)), Sdes(2, "cd")]
    assert Sdes(1, "a", ((2, b"bob"),)).chunk() == data[4:20]
    assert Sdes(2, "cd").chunk() == data[20:]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 65535), st.floats(0, 1e6), st.integers(0, 2**32 - 1)),
                max_size=100))
def test_fuzz_reception_stats_never_raise(packets):
    s = ReceptionStats()
    for seq, arrival, ts in packets:
        s.update(seq, arrival, ts)
        rb = s.report_block(7)
        assert 0 <= rb.fraction_lost <= 255 and -0x800000 <= rb.cumulative_lost <= 0x7FFFFF
        assert s.jitter >= 0
