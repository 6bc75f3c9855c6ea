"""RTP and RTCP datagrams (telephony.core.rtp, telephony.core.rtcp) and what consumes them
during a call: the RFC 4733 event receiver, the jitter buffer and the reception statistics.

The first byte picks a mode:

* 0 (RTP): the input is a list of datagrams with arrival gaps; each is parsed; the packets go
  to a jitter buffer (of fuzzed depth and size, popped as time passes), the statistics and,
  for the event payload type, the DTMF event receiver.
* 1 (RTCP): the input is one compound datagram.

Invariants: ``parse_rtp`` raises only ``RtpError``, ``parse_rtcp`` only ``RtcpError``; a packet
that parses, encoded again, parses to an equal packet (RTP), and a compound packet encodes
back to packets that parse equal (RTCP); the jitter buffer never holds more than
``max_packets``, its counters never go negative, what it plays is a payload it was given or
silence; the statistics and the event receiver never raise; a digit is one DTMF key.
"""
from __future__ import annotations

from telephony.core.rtp import (
    DtmfEventReceiver,
    JitterBuffer,
    ReceptionStats,
    RtcpError,
    RtpError,
    encode_compound,
    parse_rtcp,
    parse_rtp,
)
from tests.fuzz.common import Input, check

EVENT_PT = 101


def rtp(inp: Input) -> None:
    max_packets = 2 + inp.u8() % 20
    jb = JitterBuffer(packet_ms=20, depth_ms=inp.u8(), max_packets=max_packets,
                      hold_ms=inp.uint(2) % 3000)
    stats, events, now = ReceptionStats(), DtmfEventReceiver(), 100.0
    given = set()
    while inp.left:
        now += inp.u8() / 1000
        data = inp.sized(1600)
        try:
            pkt = parse_rtp(data)
        except RtpError:
            continue
        check(parse_rtp(pkt.encode()) == pkt, f"RTP round trip changed {pkt!r:.120}")
        stats.update(pkt.seq, now, pkt.timestamp)
        if pkt.payload_type == EVENT_PT:
            digit = events.feed(pkt)
            check(digit is None or digit in "0123456789*#ABCD", f"digit {digit!r}")
            jb.mark(pkt, now)
        else:
            outcome = jb.push(pkt, now)
            check(outcome in ("ok", "reordered", "duplicate", "late", "resync"), outcome)
            given.add(pkt.payload)
        check(len(jb) <= max_packets, f"jitter buffer holds {len(jb)} > {max_packets}")
        for _ in range(8):
            out = jb.pop(now)
            if out is None:
                break
            check(out in given or set(out) <= {0xFF}, "played something it was not given")
    for name in ("lost", "late", "duplicate", "reordered", "concealed", "played", "resyncs",
                 "overflow", "underruns"):
        check(getattr(jb, name) >= 0, f"jitter buffer {name} < 0")
    stats.report_block(1)
    check(stats.jitter_ms >= 0, "negative jitter")


def rtcp(inp: Input) -> None:
    data = inp.rest()
    try:
        packets = parse_rtcp(data)
    except RtcpError:
        return
    if not packets:
        return  # e.g. an SDES of no chunks: nothing read, nothing to write again
    try:
        again = encode_compound(*packets)
    except RtcpError as e:
        check("over" in str(e), f"parsed RTCP cannot be encoded: {e}")
        return
    check(parse_rtcp(again) == packets, f"RTCP round trip changed {packets!r:.120}")


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    if inp.u8() & 1:
        rtcp(inp)
    else:
        rtp(inp)


def seeds() -> list[bytes]:
    """An audio stream with a digit, made by ``RtpSender``, and RTCP reports and BYE."""
    from telephony.core.rtp import (
        Bye,
        DtmfEvent,
        ReceiverReport,
        ReportBlock,
        RtpPacket,
        RtpSender,
        Sdes,
        SenderReport,
    )

    sender = RtpSender(0x1234, 0)
    stream = bytes([0, 5, 60, 0, 4])
    for k in range(6):
        pkt = sender.packet(bytes([k]) * 160, 160)
        stream += bytes([20]) + len(pkt).to_bytes(2, "little") + pkt
    for end in (False, False, True, True):
        ev = RtpPacket(EVENT_PT, 100 + end, 8000, 0x1234, payload=DtmfEvent(5, end, 10, 800).encode())
        stream += bytes([5]) + ev.size.to_bytes(2, "little") + ev.encode()
    padded = RtpPacket(0, 200, 9000, 0x1234, payload=b"\xff" * 160, csrc=(1, 2),
                       extension=(0xBEDE, b"\1\2\3\4"), padding=4).encode()
    stream += bytes([20]) + len(padded).to_bytes(2, "little") + padded
    block = ReportBlock(ssrc=0x1234, fraction_lost=3, cumulative_lost=5, highest_seq=70000,
                        jitter=12, lsr=0x11223344, dlsr=65536)
    rtcp_ = encode_compound(SenderReport(0x99, 0x1_0000_0002, 8000, 10, 1600, (block,)),
                            Sdes(0x99, "vmha@ums-a"), Bye((0x99,), "call ended"))
    rr = encode_compound(ReceiverReport(0x98, (block, block)), Sdes(0x98, "x", ((2, b"name"),)))
    return [stream, b"\1" + rtcp_, b"\1" + rr]
