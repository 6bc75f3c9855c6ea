"""The Trio RTP endpoint (telephony/runtime/rtp.py) on real UDP sockets on the loopback:
two endpoints exchanging tones, a relay that drops, duplicates and reorders, RFC 4733 and
in-band digits, RTCP both ways, strangers and garbage; and tshark reading what we send."""
from __future__ import annotations

import json
import os
import random
import shutil
import socket
import struct
import subprocess

import numpy as np
import pytest
import trio

from telephony.core import dsp, dtmf
from telephony.core.rtp import (
    EVENT_OF_DIGIT,
    Bye,
    DtmfEvent,
    ReceiverReport,
    ReportBlock,
    RtpPacket,
    RtpSender,
    Sdes,
    SenderReport,
    encode_compound,
    parse_rtcp,
    parse_rtp,
)
from telephony.runtime.rtp import MediaClock, RtpEndpoint, RtpPortPool

HOST = "127.0.0.1"
FRAME = 320
LO, HI = 41000, 41999
# a deep buffer: these tests count exactly, and a loaded machine can stall a task for tens of
# milliseconds (the buffer's own timing is checked with a fake clock in tests/telephony/core)
JITTER = 200


def _pool() -> RtpPortPool:
    # each test its own slice of the range, so parallel runs of other tests do not collide
    lo = LO + 2 * random.randrange(0, 400)
    return RtpPortPool(lo, lo + 99)


async def _play(ep: RtpEndpoint, pcm: bytes) -> None:
    """Send ``pcm`` paced in real time, 20 ms at a time (as the media port does)."""
    t0 = trio.current_time()
    for i, off in enumerate(range(0, len(pcm), FRAME)):
        await ep.send_pcm(pcm[off:off + FRAME])
        await trio.sleep_until(t0 + (i + 1) * 0.02)


def _peak_freq(pcm: bytes) -> float:
    x = dsp.samples(pcm).astype(float)
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spec) * 8000 / x.size)


def _sound(frames: list[bytes]) -> list[bytes]:
    """The frames up to the last one with sound in it (after the far end stops, the endpoint
    goes on handing out quiet frames: concealment, then the quiet line)."""
    end = len(frames)
    while end and dsp.rms(frames[end - 1]) < 16:
        end -= 1
    return frames[:end]


async def _udp(host: str = HOST, port: int = 0) -> trio.socket.SocketType:
    s = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await s.bind((host, port))
    return s


# ------------------------------------------------------------------------------ audio

@pytest.mark.parametrize("codec", ["pcmu", "pcma"])
async def test_two_endpoints_exchange_tones(codec):
    pool = _pool()
    a = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER, fill_silence=False)
    b = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER, fill_silence=False)
    assert a.local_port % 2 == 0 and b.local_port != a.local_port
    heard_a: list[bytes] = []
    heard_b: list[bytes] = []
    a.on_audio, b.on_audio = heard_a.append, heard_b.append
    a.start(HOST, b.local_port, codec=codec)
    b.start(HOST, a.local_port, codec=codec)
    tone_a = dsp.tone(1000, 1000, -10)
    tone_b = dsp.tone(600, 1000, -20)
    async with trio.open_nursery() as n:
        await n.start(a.run)
        await n.start(b.run)
        n.start_soon(_play, a, tone_a)
        await _play(b, tone_b)
        await trio.sleep(0.6)
        n.cancel_scope.cancel()
    await a.aclose()
    await b.aclose()
    assert all(len(f) == FRAME for f in heard_a + heard_b)
    assert len(heard_b) > 50  # the quiet line after the tone
    # the audio heard (a loaded machine may add a gap of silence: the level is taken on the
    # frames with sound; that every packet was played once is in the counters below)
    got_b = b"".join(f for f in heard_b if dsp.rms(f) >= 16)
    got_a = b"".join(f for f in heard_a if dsp.rms(f) >= 16)
    assert len(got_b) >= len(tone_a) and len(got_a) >= len(tone_b)
    assert dsp.level_dbm0(got_b) == pytest.approx(-10, abs=0.3)
    assert dsp.level_dbm0(got_a) == pytest.approx(-20, abs=0.3)
    assert _peak_freq(got_b) == pytest.approx(1000, abs=5)
    assert _peak_freq(got_a) == pytest.approx(600, abs=5)
    sa, sb = a.stats(), b.stats()
    assert sa["sent"] == sb["received"] == 50 and sb["played"] == 50
    assert sb["lost"] == sb["late"] == sb["duplicate"] == sb["cumulative_lost"] == 0
    assert sb["bad"] == sb["strangers"] == sb["errors"] == 0
    assert 0 <= sb["jitter_ms"] < 20  # loopback: small, whatever the machine's load
    assert pool.in_use == 0


@pytest.mark.parametrize("packet_ms", [10, 30])
async def test_other_packet_sizes_still_give_20_ms_frames(packet_ms):
    pool = _pool()
    a = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER)
    b = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER)
    heard: list[bytes] = []
    b.on_audio = heard.append
    a.start(HOST, b.local_port, codec="pcmu", packet_ms=packet_ms)
    b.start(HOST, a.local_port, codec="pcmu", packet_ms=packet_ms)
    pcm = dsp.tone(1000, 1200, -10)
    async with trio.open_nursery() as n:
        await n.start(b.run)
        await _play(a, pcm)
        await trio.sleep(0.6)
        n.cancel_scope.cancel()
    await a.aclose()
    await b.aclose()
    s = b.stats()
    assert a.stats()["sent"] == 1200 // packet_ms == s["played"]
    assert all(len(f) == FRAME for f in heard)
    assert s["lost"] == s["late"] == 0
    sound = b"".join(f for f in heard if dsp.rms(f) >= 16)
    assert len(sound) == len(pcm) and dsp.level_dbm0(sound) == pytest.approx(-10, abs=0.3)


class Relay:
    """A UDP relay between two endpoints that applies a script to the first direction's
    packets: drop, duplicate, or hold one back until the next has passed (reorder)."""

    def __init__(self, sock, dest, *, drop=(), duplicate=(), swap=()):
        self.sock, self.dest = sock, dest
        self.drop, self.duplicate, self.swap = set(drop), set(duplicate), set(swap)
        self.count = 0
        self.datagrams: list[bytes] = []

    async def run(self):
        held = None
        while True:
            data, _ = await self.sock.recvfrom(4096)
            self.datagrams.append(data)
            i = self.count
            self.count += 1
            if i in self.drop:
                continue
            if i in self.swap:
                held = data
                continue
            await self.sock.sendto(data, self.dest)
            if i in self.duplicate:
                await self.sock.sendto(data, self.dest)
            if held is not None:
                await self.sock.sendto(held, self.dest)
                held = None


async def test_relay_drops_duplicates_reorders():
    pool = _pool()
    a = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER)
    b = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER)
    relay_sock = await _udp()
    relay = Relay(relay_sock, (HOST, b.local_port), drop={5, 17, 30}, duplicate={8, 20, 21},
                  swap={10, 25})
    heard: list[bytes] = []
    b.on_audio = heard.append
    a.start(HOST, relay_sock.getsockname()[1], codec="pcmu")
    b.start(HOST, a.local_port, codec="pcmu")
    pcm = dsp.tone(1000, 1000, -10)  # 50 packets
    async with trio.open_nursery() as n:
        n.start_soon(relay.run)
        await n.start(b.run)
        await _play(a, pcm)
        await trio.sleep(0.6)
        n.cancel_scope.cancel()
    await a.aclose()
    await b.aclose()
    s = b.stats()
    assert relay.count == 50
    assert (s["lost"], s["duplicate"], s["reordered"], s["late"]) == (3, 3, 2, 0)
    assert s["concealed"] >= 3 and s["played"] == 47
    assert s["received"] == 50  # 47 + 3 duplicates
    # RFC 3550 A.3: duplicates count as received, so they offset the losses
    assert s["cumulative_lost"] == 0
    out = b"".join(_sound(heard))
    assert len(out) == len(pcm)  # every lost packet concealed by one packet of silence
    frames = [out[i:i + FRAME] for i in range(0, len(out), FRAME)]
    silent = [i for i, f in enumerate(frames) if dsp.rms(f) < 50]
    assert silent == [5, 17, 30]
    assert dsp.level_dbm0(b"".join(f for i, f in enumerate(frames) if i not in silent)) \
        == pytest.approx(-10, abs=0.3)


# ------------------------------------------------------------------------------ digits

class Far:
    """A far end built from the pure sender: audio and RFC 4733 events in one numbering."""

    def __init__(self, sock, dest, pt=0):
        self.sock, self.dest = sock, dest
        self.tx = RtpSender(0x5EED, pt, seq=65500, timestamp=123456)
        self.t0 = None
        self.n = 0

    async def _tick(self):
        if self.t0 is None:
            self.t0 = trio.current_time()
        self.n += 1
        await trio.sleep_until(self.t0 + self.n * 0.02)

    async def audio(self, pcm):
        from telephony.core import g711
        for off in range(0, len(pcm), FRAME):
            chunk = pcm[off:off + FRAME].ljust(FRAME, b"\0")
            await self.sock.sendto(self.tx.packet(g711.encode("ulaw", chunk), 160), self.dest)
            await self._tick()

    async def event(self, digit, ms=100, *, inband=False):
        """One RFC 4733 event (updates every 20 ms, three end packets), with the tone itself
        in the audio at the same time when ``inband`` (a gateway that sends both)."""
        from telephony.core import g711
        ts = self.tx.timestamp
        steps = ms // 20
        tone = dtmf.generate(digit, on_ms=ms, off_ms=0, level_dbm0=-10)
        for k in range(1, steps + 1):
            end = k == steps
            ev = DtmfEvent(EVENT_OF_DIGIT[digit], end, 10, k * 160).encode()
            for _ in range(3 if end else 1):
                pkt = RtpPacket(101, self.tx.seq, ts, self.tx.ssrc, k == 1, ev).encode()
                self.tx.seq = (self.tx.seq + 1) & 0xFFFF
                await self.sock.sendto(pkt, self.dest)
            if inband:
                chunk = tone[(k - 1) * FRAME:k * FRAME]
                self.tx.timestamp = (ts + (k - 1) * 160) & 0xFFFFFFFF
                await self.sock.sendto(self.tx.packet(g711.encode("ulaw", chunk), 160), self.dest)
            await self._tick()
        self.tx.timestamp = (ts + steps * 160) & 0xFFFFFFFF


async def _digits_run(mode, script):
    pool = _pool()
    ep = await RtpEndpoint.open(HOST, pool, dtmf_mode=mode, jitter_ms=JITTER)
    far_sock = await _udp()
    digits: list[str] = []
    ep.on_digit = digits.append
    ep.start(HOST, far_sock.getsockname()[1], codec="pcmu", rfc2833_pt=101)
    far = Far(far_sock, (HOST, ep.local_port))
    async with trio.open_nursery() as n:
        await n.start(ep.run)
        await script(far)
        await far.audio(dsp.silence_ms(400))
        n.cancel_scope.cancel()
    await ep.aclose()
    far_sock.close()
    return "".join(digits), ep.stats()


async def test_inband_then_rfc2833_digits_each_once():
    async def script(far):
        await far.audio(dsp.silence_ms(100))
        await far.audio(dtmf.generate("159", on_ms=80, off_ms=80))
        for d in "2*":
            await far.event(d)
            await far.audio(dsp.silence_ms(100))
    digits, s = await _digits_run("both", script)
    assert digits == "1592*"
    assert (s["digits_inband"], s["digits_rfc2833"]) == (3, 2)
    assert s["lost"] == 0  # the events' sequence numbers are not losses


async def test_gateway_sending_both_gives_each_digit_once():
    async def script(far):
        await far.audio(dsp.silence_ms(100))
        for d in "47#":
            await far.event(d, 120, inband=True)
            await far.audio(dsp.silence_ms(100))
    digits, s = await _digits_run("both", script)
    assert digits == "47#"
    assert s["digits_rfc2833"] == 3  # the tones in the audio were not reported again


async def test_modes_choose_the_path():
    async def script(far):
        await far.audio(dtmf.generate("8", on_ms=80, off_ms=80))
        await far.event("9")
    assert (await _digits_run("rfc2833", script))[0] == "9"
    assert (await _digits_run("inband", script))[0] == "8"


# ------------------------------------------------------------------------------ RTCP

async def test_rtcp_sender_and_receiver_reports_are_exchanged():
    pool = _pool()
    a = await RtpEndpoint.open(HOST, pool, rtcp_interval=0.2, jitter_ms=JITTER)
    # b only listens: no silence fill (the fill is an RTP sender, whose reports are SRs)
    b = await RtpEndpoint.open(HOST, pool, rtcp_interval=0.2, jitter_ms=JITTER, fill_silence=False)
    a.start(HOST, b.local_port, codec="pcma")
    b.start(HOST, a.local_port, codec="pcma")
    async with trio.open_nursery() as n:
        await n.start(a.run)
        await n.start(b.run)
        await _play(a, dsp.tone(440, 1600, -15))  # only a sends RTP
        sa, sb = a.stats(), b.stats()
        await a.aclose()  # closing sends a BYE
        with trio.move_on_after(2):
            while b.stats()["bye_received"] == 0:
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
    assert b.stats()["bye_received"] == 1
    assert sa["rtcp_sent"] >= 3 and sb["rtcp_sent"] >= 3
    assert sb["sr_received"] >= 3 and sb["rr_received"] == 0  # a sent: SRs
    assert sa["rr_received"] >= 3 and sa["sr_received"] == 0  # b only listened: RRs
    assert sa["rtcp_bad"] == sb["rtcp_bad"] == 0
    # b's receiver report describes a's stream: nothing lost, up to the last seq a sent (or
    # one before, if it left between two packets), and the last SR's NTP middle bits echoed
    # (LSR) with the delay since that SR (DLSR)
    rep = sa["remote_report"]
    assert rep["cumulative_lost"] == 0 and rep["fraction_lost"] == 0
    assert (sa["last_seq_sent"] - rep["highest_seq"]) & 0xFFFF <= 12
    assert rep["lsr"] != 0 and 0 <= rep["dlsr"] / 65536 < 1.0
    await b.aclose()


async def test_rtcp_compound_parses_and_has_cname():
    pool = _pool()
    a = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER)
    a.start(HOST, 40000, codec="pcmu")
    first, sdes = parse_rtcp(a.rtcp_compound())
    assert isinstance(first, ReceiverReport) and first.ssrc == a.ssrc
    assert isinstance(sdes, Sdes) and sdes.cname == a.cname
    await a.aclose()


# ------------------------------------------------------------------------------ robustness

async def test_strangers_and_garbage_are_counted_and_the_endpoint_goes_on():
    pool = _pool()
    ep = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER)
    far = await _udp()
    stranger = await _udp("127.0.0.2")
    heard: list[bytes] = []
    ep.on_audio = heard.append
    ep.start(HOST, far.getsockname()[1], codec="pcmu")
    dest, rtcp_dest = (HOST, ep.local_port), (HOST, ep.local_port + 1)
    tx = RtpSender(1, 0)
    rogue = RtpSender(2, 0)
    rng = random.Random(5)
    async with trio.open_nursery() as n:
        await n.start(ep.run)
        for i in range(30):
            await far.sendto(tx.packet(b"\x10" * 160, 160), dest)
            await stranger.sendto(rogue.packet(b"\x90" * 160, 160), dest)
            await stranger.sendto(b"\x81\xc9\x00\x01\x00\x00\x00\x02", rtcp_dest)
            junk = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
            await far.sendto(b"\x00" + junk, dest)  # version 0
            await far.sendto(junk[:3], rtcp_dest)
            if i == 10:
                await far.sendto(bytes(3000), dest)  # bigger than any RTP packet
            await trio.sleep(0.02)
        await trio.sleep(0.6)
        n.cancel_scope.cancel()
    s = ep.stats()
    assert s["strangers"] == 30 and s["rtcp_strangers"] == 30
    assert s["bad"] == 31 and s["rtcp_bad"] == 30
    sound = [f for f in heard if dsp.rms(f) >= 16]
    assert s["played"] == 30 and len(sound) == 30
    assert all(f == sound[0] for f in sound)  # only the far end's audio was played
    assert s["errors"] == 0
    await ep.aclose()


async def test_before_start_any_sender_is_heard_then_only_the_remote():
    pool = _pool()
    ep = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER)
    early = await _udp("127.0.0.3")
    heard: list[bytes] = []
    ep.on_audio = heard.append
    async with trio.open_nursery() as n:
        await n.start(ep.run)
        tx = RtpSender(9, 0)
        for _ in range(5):
            await early.sendto(tx.packet(b"\x20" * 160, 160), (HOST, ep.local_port))
            await trio.sleep(0.02)
        await trio.sleep(0.5)
        assert len(_sound(heard)) == 5  # OpenReceiveChannel comes before StartMediaTransmission
        ep.start(HOST, 40000, codec="pcmu")
        await early.sendto(tx.packet(b"\x20" * 160, 160), (HOST, ep.local_port))
        await trio.sleep(0.5)
        n.cancel_scope.cancel()
    assert len(_sound(heard)) == 5 and ep.stats()["strangers"] == 1
    await ep.aclose()


async def test_send_errors_are_counted_not_raised_and_callbacks_are_contained():
    pool = _pool()
    ep = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER)
    ep.start("255.255.255.255", 9, codec="pcmu")  # broadcast without SO_BROADCAST: EACCES
    await ep.send_pcm(bytes(FRAME * 3))
    s = ep.stats()
    assert s["send_errors"] == 3 and s["sent"] == 0
    with pytest.raises(ValueError):
        await ep.send_pcm(b"\x00")  # not PCM
    ep.stop()
    await ep.send_pcm(bytes(FRAME))
    assert ep.stats()["unsent_frames"] == 1

    def boom(_):
        raise RuntimeError("the owner's bug")
    ep.on_audio = boom
    ep.on_digit = boom
    far = await _udp()
    ep.start(HOST, far.getsockname()[1], codec="pcmu")
    tx = RtpSender(3, 0)
    async with trio.open_nursery() as n:
        await n.start(ep.run)
        for chunk in range(0, 8 * FRAME, FRAME):
            pcm = dtmf.generate("5", on_ms=160, off_ms=0)[chunk:chunk + FRAME]
            from telephony.core import g711
            await far.sendto(tx.packet(g711.encode("ulaw", pcm), 160), (HOST, ep.local_port))
            await trio.sleep(0.02)
        await trio.sleep(0.6)
        n.cancel_scope.cancel()
    s = ep.stats()
    assert s["played"] == 8
    assert ep.failures.counts["rtp:on_digit"] == 1
    assert ep.failures.counts["rtp:on_audio"] == s["frames_out"] >= 8
    assert s["callback_errors"] == s["frames_out"] + 1
    await ep.aclose()


async def test_bad_arguments_change_nothing():
    pool = _pool()
    ep = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER)
    for kwargs in ({"codec": "g729"}, {"codec": "pcmu", "packet_ms": 25},
                   {"codec": "pcmu", "rfc2833_pt": 8}):
        with pytest.raises(ValueError):
            ep.start(HOST, 40000, **kwargs)
    with pytest.raises(ValueError):
        ep.start("not-an-ip", 40000, codec="pcmu")
    with pytest.raises(ValueError):
        ep.start(HOST, 0, codec="pcmu")
    assert ep.remote is None and not ep.sending
    with pytest.raises(ValueError):
        await RtpEndpoint.open(HOST, pool, dtmf_mode="loud")
    with pytest.raises(ValueError):
        await RtpEndpoint.open("localhost", pool)
    await ep.aclose()
    await ep.aclose()  # idempotent
    with pytest.raises(ValueError):
        ep.start(HOST, 40000, codec="pcmu")


async def test_port_pool_skips_ports_in_use_and_releases():
    lo = LO + 2 * random.randrange(0, 400)
    pool = RtpPortPool(lo, lo + 5)  # pairs at lo, lo+2, lo+4 (lo+5 is RTCP)
    assert pool.ports == (lo, lo + 2, lo + 4)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind((HOST, lo + 3))  # another program holds lo+2's RTCP port
    try:
        a = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER)
        b = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER)
        assert (a.local_port, b.local_port) == (lo, lo + 4)
        with pytest.raises(OSError, match="no free RTP port"):
            await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER)
        await a.aclose()
        c = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER)
        assert c.local_port == lo and pool.in_use == 2
        await b.aclose()
        await c.aclose()
        assert pool.in_use == 0
    finally:
        blocker.close()
    for lo_hi in ((5, 5), (0, 10), (10, 70000), (True, 10)):
        with pytest.raises(ValueError):
            RtpPortPool(*lo_hi)


async def test_aclose_ends_run():
    pool = _pool()
    ep = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER)
    async with trio.open_nursery() as n:
        await n.start(ep.run)
        await ep.aclose()
    assert pool.in_use == 0


# ------------------------------------------------------------------------------ tshark

def _pcap(records: list[tuple[tuple[str, int], tuple[str, int], bytes]]) -> bytes:
    """A classic pcap of Ethernet/IPv4/UDP frames (header checksums computed, UDP's left 0)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, ((sip, sport), (dip, dport), payload) in enumerate(records):
        udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                         socket.inet_aton(sip), socket.inet_aton(dip))
        words = struct.unpack("!10H", ip)
        c = sum(words)
        c = (c & 0xFFFF) + (c >> 16)
        c = (c & 0xFFFF) + (c >> 16)
        ip = ip[:10] + struct.pack("!H", ~c & 0xFFFF) + ip[12:]
        frame = b"\x02\0\0\0\0\x01" + b"\x02\0\0\0\0\x02" + b"\x08\x00" + ip + udp
        t = 1_700_000_000 + i * 0.02
        out.append(struct.pack("<IIII", int(t), int(t % 1 * 1e6), len(frame), len(frame)) + frame)
    return b"".join(out)


async def test_tshark_decodes_our_rtp_rtcp_and_events(tmp_path):
    tshark = shutil.which("tshark")
    assert tshark, "tshark is needed for this check (Debian package tshark)"
    pool = _pool()
    ep = await RtpEndpoint.open(HOST, pool, rtcp_interval=0.1, fill_silence=False)
    peer_port, peer_rtp, peer_rtcp = await _pool().bind(HOST)  # the far end's socket pair
    ep.start(HOST, peer_port, codec="pcmu")
    got: list[tuple[tuple[str, int], tuple[str, int], bytes]] = []

    async def sniff(sock, port):
        while True:
            data, addr = await sock.recvfrom(4096)
            got.append((addr, (HOST, port), data))

    async with trio.open_nursery() as n:
        await n.start(ep.run)
        n.start_soon(sniff, peer_rtp, peer_port)
        n.start_soon(sniff, peer_rtcp, peer_port + 1)
        await _play(ep, dsp.tone(1000, 600, -10))
        await trio.sleep(0.25)
        await ep.aclose()
        with trio.move_on_after(5):  # a bound for a loaded machine; the BYE is checked below
            while not any(isinstance(p, Bye) for g in got if g[1][1] == peer_port + 1
                          for p in parse_rtcp(g[2])):
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
    peer_rtp.close()
    peer_rtcp.close()
    rtp = [g for g in got if g[1][1] == peer_port]
    rtcp = [g for g in got if g[1][1] == peer_port + 1]
    assert len(rtp) == 30 and len(rtcp) >= 2
    # and an RFC 4733 event and a hand-made SR/SDES from the pure codec; last, a control: an
    # RR whose length runs past its datagram, which tshark must call malformed
    ev = RtpPacket(101, 1, 8000, 0xABCD, True, DtmfEvent(11, True, 10, 800).encode()).encode()
    sr = encode_compound(SenderReport(0xABCD, 1 << 63, 8000, 10, 1600, (ReportBlock(5, 3, 2, 7, 9),)),
                         Sdes(0xABCD, "vm@example"))
    control = bytes.fromhex("81c90020 00000001")
    extra = [((HOST, 43000), (HOST, 43002), ev), ((HOST, 43001), (HOST, 43003), sr),
             ((HOST, 43001), (HOST, 43003), control)]
    pcap = tmp_path / "rtp.pcap"
    pcap.write_bytes(_pcap(rtp + rtcp + extra))
    cmd = [tshark, "-r", str(pcap), "-o", "rtpevent.event_payload_type_value:101",
           "-d", f"udp.port=={peer_port},rtp", "-d", f"udp.port=={peer_port + 1},rtcp",
           "-d", "udp.port==43002,rtp", "-d", "udp.port==43003,rtcp",
           "-T", "ek", "-e", "frame.number", "-e", "rtp.seq", "-e", "rtp.p_type", "-e", "rtp.marker",
           "-e", "rtcp.pt", "-e", "rtcp.sdes.text", "-e", "rtpevent.event_id", "-e", "_ws.malformed",
           "-e", "_ws.expert.severity"]
    env = dict(os.environ, HOME=str(tmp_path))
    proc = await trio.to_thread.run_sync(lambda: subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env=env, check=False))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line)["layers"] for line in proc.stdout.splitlines() if '"layers"' in line]
    assert len(rows) == len(rtp) + len(rtcp) + 3
    flagged = [int(r["frame_number"][0]) for r in rows
               if "_ws_malformed" in r or any(int(v) >= 0x600000 for v in r.get("_ws_expert_severity", []))]
    assert flagged == [len(rows)], proc.stdout[:3000]  # only the control
    ours = rows[:len(rtp)]
    assert [r["rtp_p_type"] for r in ours] == [["0"]] * 30
    seqs = [int(r["rtp_seq"][0]) for r in ours]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
    assert [r["rtp_marker"] for r in ours[:2]] == [["1"], ["0"]]
    reports = rows[len(rtp):len(rtp) + len(rtcp)]
    assert all(r["rtcp_pt"][0] in ("200", "201") and "202" in r["rtcp_pt"] for r in reports)
    assert any(r["rtcp_pt"][0] == "200" for r in reports)  # we sent: sender reports
    assert reports[-1]["rtcp_pt"][-1] == "203"  # the BYE on close
    assert all(r["rtcp_sdes_text"] == [ep.cname] for r in reports)
    assert rows[-3]["rtpevent_event_id"] == ["11"]
    assert rows[-2]["rtcp_pt"] == ["200", "202"] and rows[-2]["rtcp_sdes_text"] == ["vm@example"]
    assert parse_rtp(rtp[0][2]).marker


async def test_closing_while_sending_is_not_an_error():
    pool = _pool()
    ep = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER)
    far = await _udp()
    ep.start(HOST, far.getsockname()[1], codec="pcmu")
    async with trio.open_nursery() as n:
        n.start_soon(ep.send_pcm, bytes(16000))  # 25 packets, each send a checkpoint
        while ep.stats()["sent"] == 0:
            await trio.lowlevel.checkpoint()
        await ep.aclose()
    s = ep.stats()
    assert 0 < s["sent"] < 25 and s["unsent_frames"] == 1
    await ep.send_pcm(bytes(FRAME))  # after the close: dropped, counted
    assert ep.stats()["unsent_frames"] == 2 and pool.in_use == 0
    far.close()


async def _collect(sock: trio.socket.SocketType, out: list[tuple[float, RtpPacket]]) -> None:
    while True:
        data, _ = await sock.recvfrom(2048)
        out.append((trio.current_time(), parse_rtp(data)))


@pytest.mark.parametrize("shared", [False, True])
async def test_a_listening_port_sends_silence_for_the_whole_call(shared):
    """StartMediaTransmission says no silence suppression: while the flow plays nothing (it
    records the caller) the port sends G.711 silence every packet time, on one timeline with
    what the flow plays; StopMediaTransmission ends it.  ``shared``: one MediaClock ticks
    every endpoint of the process (the driver's way); otherwise the endpoint runs its own."""
    pool = _pool()
    clock = MediaClock()
    ep = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER, clock=clock if shared else None)
    far = await _udp()
    got: list[tuple[float, RtpPacket]] = []
    async with trio.open_nursery() as n:
        if shared:
            await n.start(clock.run)
        n.start_soon(_collect, far, got)
        await n.start(ep.run)
        ep.start(HOST, far.getsockname()[1], codec="pcma")
        t0 = trio.current_time()
        await trio.sleep(1.0)  # "recording": the flow sends nothing
        quiet = [p for _, p in got]
        elapsed = trio.current_time() - t0
        await _play(ep, dsp.tone(1000, 200, -10))  # a prompt: 10 packets of sound
        await trio.sleep(0.3)
        ep.stop()
        await trio.sleep(0.1)
        stopped_at = len(got)
        await trio.sleep(0.3)
        assert len(got) == stopped_at  # nothing after StopMediaTransmission
        n.cancel_scope.cancel()
    await ep.aclose()
    far.close()
    # about one packet per 20 ms from the start (a loaded machine may delay a tick; what is
    # late is caught up, so the count is short by the fill's one-packet grace at most)
    assert len(quiet) >= elapsed / 0.02 * 0.8 - 2
    assert all(p.payload == b"\xd5" * 160 and p.payload_type == 8 for p in quiet)  # A-law silence
    pkts = [p for _, p in got]
    assert all((b.seq - a.seq) & 0xFFFF == 1 for a, b in zip(pkts, pkts[1:], strict=False))
    steps = {(b.timestamp - a.timestamp) & 0xFFFF_FFFF for a, b in zip(pkts, pkts[1:], strict=False)}
    assert steps == {160}  # one timeline: silence and sound without a gap
    sound = [i for i, p in enumerate(pkts) if p.payload != b"\xd5" * 160]
    assert len(sound) == 10 and sound == list(range(sound[0], sound[0] + 10))
    assert pkts[sound[-1] + 1:] and all(p.payload == b"\xd5" * 160 for p in pkts[sound[-1] + 1:])
    s = ep.stats()
    assert s["silence_sent"] == len(pkts) - 10 and s["sent"] == len(pkts)
    assert len(clock) == 0  # the endpoint left the shared clock
    assert pool.in_use == 0


async def test_fill_off_sends_only_what_is_played():
    pool = _pool()
    ep = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER, fill_silence=False)
    far = await _udp()
    got: list[tuple[float, RtpPacket]] = []
    async with trio.open_nursery() as n:
        n.start_soon(_collect, far, got)
        await n.start(ep.run)
        ep.start(HOST, far.getsockname()[1], codec="pcmu")
        await trio.sleep(0.3)
        assert got == []
        await _play(ep, dsp.tone(1000, 100, -10))
        await trio.sleep(0.3)
        n.cancel_scope.cancel()
    await ep.aclose()
    far.close()
    assert len(got) == 5 and ep.stats()["silence_sent"] == 0


async def test_the_end_of_a_prompt_shorter_than_a_packet_goes_out_before_the_silence():
    """30 ms packets, a prompt of one 20 ms frame: the flow's remainder waits for more audio;
    when none comes it is sent padded with silence, and the fill goes on after it."""
    pool = _pool()
    ep = await RtpEndpoint.open(HOST, pool, jitter_ms=JITTER)
    far = await _udp()
    got: list[tuple[float, RtpPacket]] = []
    async with trio.open_nursery() as n:
        n.start_soon(_collect, far, got)
        await n.start(ep.run)
        ep.start(HOST, far.getsockname()[1], codec="pcmu", packet_ms=30)
        await ep.send_pcm(dsp.tone(1000, 20, -10))
        await trio.sleep(0.5)
        n.cancel_scope.cancel()
    await ep.aclose()
    far.close()
    pkts = [p for _, p in got]
    assert pkts and all(len(p.payload) == 240 for p in pkts)
    sound = [p for p in pkts if p.payload != b"\xff" * 240]
    assert len(sound) == 1 and sound[0].payload[160:] == b"\xff" * 80  # the frame, then padding
    assert ep.stats()["silence_sent"] == len(pkts) - 1 >= 5
    assert {(b.timestamp - a.timestamp) & 0xFFFF_FFFF for a, b in zip(pkts, pkts[1:], strict=False)} == {240}
