"""The far end of a simulated call's media: the caller's RTP endpoint of the CallManager
**simulator** (:mod:`lab.callmanager`).  Nobody has a CallManager and a gateway here, so this
plays what the gateway behind a real CallManager would: it streams the caller's audio to the
voice-mail port as G.711 RTP and records what the port sends back.

::

    peer = await RtpPeer.open("127.0.0.1")
    peer.start(port_ip, port_rtp_port, codec="ulaw")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.receive)
        await peer.play(pcm, digits="12#", digits_at=1.0, rfc2833=False)
        nursery.cancel_scope.cancel()
    peer.recorded()   # PCM the port sent, placed by RTP timestamp (gaps are silence)
    peer.stats()      # packets, loss, RFC 3550 jitter, per-packet arrival deviation
    peer.close()

Sending: one packet every ``packet_ms`` on an absolute schedule (trio's clock, no drift from
late wake-ups); the audio is G.711 by :mod:`telephony.core.g711`.  Digits go either in-band
(:func:`telephony.core.dtmf.generate`, replacing the audio where they fall) or as RFC 4733
telephone events (payload type ``rfc2833_pt``, one event per digit: a marker on its first
packet, the duration growing every packet, three end packets), in which case no audio is sent
while the event lasts.

Receiving: G.711 payloads (PT 0 µ-law, PT 8 A-law) are decoded and placed by their timestamp
(at most ``max_record_s`` seconds); RFC 4733 events of the port become digits
(:class:`telephony.core.rtp.DtmfEventReceiver`).  For every audio packet after the first the
arrival deviation ``|Δarrival − Δtimestamp / 8000|`` is kept (in ms, for percentiles); loss and
the RFC 3550 interarrival jitter (A.8) come from :class:`telephony.core.rtp.ReceptionStats`.
"""
from __future__ import annotations

import errno
import math
import random
import socket

import numpy as np
import trio

from telephony.core import dtmf, g711
from telephony.core.rtp import (
    DtmfEvent,
    DtmfEventReceiver,
    ReceptionStats,
    RtpError,
    RtpPacket,
    parse_rtp,
    ts_delta,
)

__all__ = ["RtpPeer", "EVENT_CODES", "CODECS"]

RATE = 8000
#: codec name -> RTP static payload type
CODECS = {"ulaw": 0, "alaw": 8}
_LAW_OF_PT = {0: "ulaw", 8: "alaw"}
#: RFC 4733 event codes of the DTMF digits
EVENT_CODES = {**{str(i): i for i in range(10)}, "*": 10, "#": 11, "A": 12, "B": 13, "C": 14, "D": 15}
_DIGIT_OF_EVENT = {v: k for k, v in EVENT_CODES.items()}
MAX_DATAGRAM = 2048
DIGIT_MS = 100  # length of one caller digit (tones or event)
DIGIT_GAP_S = 0.25  # between digits given with a single start time
_MAX_DEVIATIONS = 200_000  # arrival deviations kept (over an hour of 20 ms packets)


class RtpPeer:
    """One UDP socket: sends the caller's RTP to the port, receives and records the port's."""

    def __init__(self, sock: trio.socket.SocketType, *, max_record_s: float = 600.0) -> None:
        self._sock = sock
        self.host, self.port = sock.getsockname()[:2]
        self.max_samples = int(max_record_s * RATE)
        self.remote: tuple[str, int] | None = None
        self._rtcp: trio.socket.SocketType | None = None  # the RTCP sink (open() makes one)
        self.rtcp_received = 0
        self.codec = "ulaw"
        self.packet_ms = 20
        self.rfc2833_pt: int | None = 101
        self.ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._ts0 = random.getrandbits(32)
        # sending
        self.sent = 0
        self.sent_events = 0
        self.send_errors = 0
        # receiving
        self._buf = bytearray()
        self._anchor: tuple[int, int] | None = None  # (ssrc, first timestamp) of the stream
        self._base = 0  # sample position of the anchor in the recording
        self._prev: tuple[float, int] | None = None  # (arrival, timestamp) of the last audio packet
        self._deviations: list[float] = []
        self._reception = ReceptionStats()  # RFC 3550 A.1/A.3/A.8 of the current source
        self._events = DtmfEventReceiver()
        self.sources = 0
        self.received = 0
        self.audio = 0
        self.bad = 0
        self.other = 0
        self.dropped = 0  # audio outside the recording window
        self.payload_types: set[int] = set()
        self.first_arrival: float | None = None
        self.digits = ""

    @classmethod
    async def open(cls, host: str = "127.0.0.1", *, max_record_s: float = 600.0) -> RtpPeer:
        """A peer on new UDP sockets bound to ``host``: RTP on an even port the kernel picks
        and, on the odd port above it, a sink that counts the port's RTCP (RFC 3550: RTCP goes
        to the RTP port + 1)."""
        if not (isinstance(max_record_s, (int, float)) and 0 < max_record_s <= 3600):
            raise ValueError(f"max_record_s must be from 0 to 3600 seconds, not {max_record_s!r}")
        for _ in range(100):
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rtcp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                await sock.bind((host, 0))
                port = sock.getsockname()[1]
                if port % 2 == 0 and port < 65535:
                    await rtcp.bind((host, port + 1))
                    peer = cls(sock, max_record_s=max_record_s)
                    peer._rtcp = rtcp
                    return peer
            except OSError as e:
                sock.close()
                rtcp.close()
                if e.errno != errno.EADDRINUSE:
                    raise
                continue
            sock.close()
            rtcp.close()
        raise OSError(errno.EADDRINUSE, f"no free even/odd UDP port pair on {host}")

    def start(self, remote_ip: str, remote_port: int, *, codec: str = "ulaw", packet_ms: int = 20,
              rfc2833_pt: int | None = 101) -> None:
        """Where to send and how (from the port's OpenReceiveChannelAck)."""
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, not {codec!r}")
        if packet_ms not in (10, 20, 30):
            raise ValueError(f"packet_ms must be 10, 20 or 30, not {packet_ms!r}")
        if not (isinstance(remote_port, int) and 0 < remote_port < 65536):
            raise ValueError(f"bad RTP port {remote_port!r}")
        self.remote = (remote_ip, remote_port)
        self.codec, self.packet_ms, self.rfc2833_pt = codec, packet_ms, rfc2833_pt

    def close(self) -> None:
        self._sock.close()
        if self._rtcp is not None:
            self._rtcp.close()

    # ------------------------------------------------------------------ sending

    def _packet(self, pt: int, ts: int, payload: bytes, marker: bool = False) -> bytes:
        data = RtpPacket(payload_type=pt, seq=self._seq & 0xFFFF, timestamp=ts & 0xFFFFFFFF,
                         ssrc=self.ssrc, marker=marker, payload=payload).encode()
        self._seq += 1
        return data

    async def _send(self, data: bytes) -> None:
        assert self.remote is not None
        try:
            await self._sock.sendto(data, self.remote)
        except OSError:  # the port's socket is gone (ICMP unreachable): counted, the call goes on
            self.send_errors += 1

    @staticmethod
    def digit_schedule(digits: str, digits_at: float | list[float]) -> list[tuple[float, str]]:
        """``(start second, digit)`` for each digit: a list of times, one per digit, or a single
        start time with :data:`DIGIT_GAP_S` between digits."""
        ds = [d.upper() for d in digits]
        for d in ds:
            if d not in EVENT_CODES:
                raise ValueError(f"{d!r} is not a DTMF digit")
        if isinstance(digits_at, (int, float)) and not isinstance(digits_at, bool):
            times = [float(digits_at) + i * DIGIT_GAP_S for i in range(len(ds))]
        else:
            times = [float(t) for t in digits_at]
            if len(times) != len(ds):
                raise ValueError(f"{len(ds)} digits but {len(times)} times")
        if any(not math.isfinite(t) or t < 0 for t in times):
            raise ValueError("digit times must be finite and >= 0")
        return sorted(zip(times, ds, strict=True))

    async def play(self, pcm: bytes, *, seconds: float | None = None, digits: str = "",
                   digits_at: float | list[float] = 1.0, rfc2833: bool = False) -> None:
        """Send ``pcm`` (16-bit 8 kHz), then silence, for ``seconds`` in all (default: the
        length of ``pcm``), paced in real time.  Returns when done; cancel to stop early."""
        if self.remote is None:
            raise RuntimeError("start() first: no remote RTP address")
        spp = RATE * self.packet_ms // 1000
        total = len(pcm) // 2 if seconds is None else int(seconds * RATE)
        nframes = math.ceil(total / spp)
        audio = np.zeros(nframes * spp, dtype="<i2")
        src = np.frombuffer(pcm[: 2 * min(len(pcm) // 2, nframes * spp)], dtype="<i2")
        audio[: len(src)] = src
        events: dict[int, tuple[str, int]] = {}  # first frame index -> (digit, frames long)
        for t, d in self.digit_schedule(digits, digits_at):
            start = int(round(t * RATE))
            if start >= len(audio):
                continue
            if rfc2833:
                events[start // spp] = (d, max(1, DIGIT_MS // self.packet_ms))
            else:
                tone = np.frombuffer(dtmf.generate(d, on_ms=DIGIT_MS, off_ms=0), dtype="<i2")
                n = min(len(tone), len(audio) - start)
                audio[start:start + n] = tone[:n]
        pt = CODECS[self.codec]
        t0 = trio.current_time()
        event: tuple[str, int, int, int] | None = None  # digit, first frame, frames long, ts
        for i in range(nframes):
            await trio.sleep_until(t0 + i * self.packet_ms / 1000)
            ts = self._ts0 + i * spp
            if i in events and self.rfc2833_pt is not None and event is None:
                d, n = events[i]
                event = (d, i, n, ts)
            if event is not None:
                d, first, n, ets = event
                k = i - first + 1
                end = k >= n
                payload = DtmfEvent(event=EVENT_CODES[d], end=end, volume=10,
                                    duration=k * spp).encode()
                for _ in range(3 if end else 1):
                    await self._send(self._packet(self.rfc2833_pt, ets, payload, marker=(k == 1)))
                    self.sent_events += 1
                if end:
                    event = None
                continue
            frame = audio[i * spp:(i + 1) * spp].tobytes()
            await self._send(self._packet(pt, ts, g711.encode(self.codec, frame), marker=(i == 0)))
            self.sent += 1

    # ------------------------------------------------------------------ receiving

    async def receive(self) -> None:
        """Receive for ever (cancel to stop); nothing a sender sends makes it fail."""
        async with trio.open_nursery() as nursery:
            if self._rtcp is not None:
                nursery.start_soon(self._receive_rtcp)
            await self._receive_rtp()

    async def _receive_rtcp(self) -> None:
        assert self._rtcp is not None
        while True:
            try:
                await self._rtcp.recv(MAX_DATAGRAM)
            except OSError:
                await trio.sleep(0)
                continue
            self.rtcp_received += 1

    async def _receive_rtp(self) -> None:
        while True:
            try:
                data, _ = await self._sock.recvfrom(MAX_DATAGRAM)
            except OSError:  # ICMP errors of our own sends surface here on Linux
                await trio.sleep(0)
                continue
            self.received_packet(data, trio.current_time())

    def received_packet(self, data: bytes, now: float) -> None:
        """One datagram from the port, arrived at ``now`` (seconds)."""
        self.received += 1
        try:
            pkt = parse_rtp(data)
        except RtpError:
            self.bad += 1
            return
        self.payload_types.add(pkt.payload_type)
        if self.rfc2833_pt is not None and pkt.payload_type == self.rfc2833_pt:
            self.digits += self._events.feed(pkt) or ""
            return
        law = _LAW_OF_PT.get(pkt.payload_type)
        if law is None:
            self.other += 1
            return
        self.audio += 1
        if self.first_arrival is None:
            self.first_arrival = now
        if self._anchor is None or self._anchor[0] != pkt.ssrc:  # a new source: placed after the last
            self._base = len(self._buf) // 2
            self._anchor = (pkt.ssrc, pkt.timestamp)
            self._prev = None
            self._reception = ReceptionStats()
            self.sources += 1
        self._reception.update(pkt.seq, now, pkt.timestamp)
        if self._prev is not None and len(self._deviations) < _MAX_DEVIATIONS:
            prev_arrival, prev_ts = self._prev
            d = (now - prev_arrival) - ts_delta(pkt.timestamp, prev_ts) / RATE
            self._deviations.append(abs(d) * 1000)
        self._prev = (now, pkt.timestamp)
        pos = self._base + ts_delta(pkt.timestamp, self._anchor[1])
        pcm = g711.decode(law, pkt.payload)
        if pos < 0 or pos + len(pcm) // 2 > self.max_samples:
            self.dropped += 1
            return
        end = 2 * pos + len(pcm)
        if len(self._buf) < end:
            self._buf += bytes(end - len(self._buf))
        self._buf[2 * pos:end] = pcm

    # ------------------------------------------------------------------ results

    def recorded(self) -> bytes:
        """The PCM the port sent so far."""
        return bytes(self._buf)

    def stats(self) -> dict:
        devs = np.array(self._deviations) if self._deviations else None
        return {
            "sent": self.sent, "sent_events": self.sent_events, "send_errors": self.send_errors,
            "received": self.received, "audio_packets": self.audio, "bad": self.bad,
            "other_payload": self.other, "outside_window": self.dropped,
            "lost": max(0, self._reception.lost), "sources": self.sources,
            "payload_types": sorted(self.payload_types),
            "jitter_ms": round(self._reception.jitter_ms, 3),
            "deviation_ms": None if devs is None else {
                "n": int(devs.size), "p50": round(float(np.percentile(devs, 50)), 3),
                "p99": round(float(np.percentile(devs, 99)), 3), "max": round(float(devs.max()), 3)},
            # every D, in arrival order (µs resolution), so that a benchmark can take
            # percentiles over the packets of many calls together
            "deviations_ms": [round(d, 3) for d in self._deviations],
            "recorded_s": round(len(self._buf) / 2 / RATE, 3), "digits": self.digits,
            "rtcp_received": self.rtcp_received,
        }
