"""An RTP endpoint on Trio (docs/sccp.md, "Contract: RTP"): one UDP socket pair (RTP on an
even port, RTCP on the next) carrying one G.711 call leg.

* :class:`RtpPortPool` hands out even ports of a range; a port some other program holds is
  skipped, and a closed endpoint gives its port back.
* :class:`RtpEndpoint` sends what the port plays (:meth:`RtpEndpoint.send_pcm`: 8 kHz PCM cut
  into ``packet_ms`` packets and sent at once; the caller paces), and G.711 silence while it
  plays nothing (no silence suppression: the stream never stops while the call is up).
* :class:`MediaClock` ticks every 20 ms for all endpoints of a process: each tick an endpoint
  reads the RTP queued on its socket into a :class:`telephony.core.rtp.JitterBuffer` (with
  the kernel's arrival stamps), sends the silence due, and hands the audio due to
  ``on_audio`` in 20 ms PCM frames.  One timer wake-up per tick for every call, not one per
  packet and call.
  Digits reach ``on_digit`` from RFC 4733 telephone events and from a
  :class:`telephony.core.dtmf.DtmfDetector` run on the played-out audio (``dtmf`` mode
  ``both``, ``inband`` or ``rfc2833``; with ``both`` the in-band detector is switched off for
  the stream once the audio that came with its first telephone event plays out, and a digit
  the other path reported within :data:`DEDUPE_S` seconds is not reported again).  A
  telephone event's digit is reported when the audio that arrived with it plays out (one
  buffer depth after it arrived), so digits keep their order whichever path they took.
* RTCP: a compound SR (when we sent RTP since the last report) or RR, with an SDES CNAME,
  every ``rtcp_interval`` seconds randomised over 0.5-1.5 of it (RFC 3550 6.3.1), to the
  remote's RTP port + 1; received RTCP is parsed and counted, and a sender report's NTP time
  kept for the LSR/DLSR of our next report; a BYE when the endpoint closes.

Before :meth:`RtpEndpoint.start` packets from any address are taken (SCCP asks the port to
listen before it says where the far end is); once started, only packets from the remote's
IP address are.  Nothing a datagram contains and no socket error ends :meth:`run`: bad
packets, strangers and send errors are counted (:meth:`RtpEndpoint.stats`), and any other
error inside a loop or a tick is logged, counted and the endpoint goes on.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import random
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import trio

from telephony.core import dtmf, g711
from telephony.core.rtp import (
    PT_PCMA,
    PT_PCMU,
    Bye,
    DtmfEventReceiver,
    JitterBuffer,
    ReceiverReport,
    ReceptionStats,
    RtcpError,
    RtpError,
    RtpPacket,
    RtpSender,
    Sdes,
    SenderReport,
    encode_compound,
    ntp_from_unix,
    ntp_middle,
    parse_rtcp,
    parse_rtp,
)
from telephony.runtime.tasks import TaskFailures, python_logger

__all__ = ["RtpPortPool", "RtpEndpoint", "MediaClock", "CODECS", "DTMF_MODES", "FRAME_BYTES",
           "DEDUPE_S", "PACKET_MS", "TICK_S"]

log = logging.getLogger("telephony.runtime.rtp")

#: codec name -> (G.711 law, static payload type, the law's code for silence)
CODECS: Final = {"pcmu": ("ulaw", PT_PCMU, 0xFF), "pcma": ("alaw", PT_PCMA, 0xD5)}
_CODEC_OF_PT: Final = {PT_PCMU: "pcmu", PT_PCMA: "pcma"}
PT_CN: Final = 13  # comfort noise (RFC 3389): no audio, not lost
DTMF_MODES: Final = ("both", "inband", "rfc2833")
PACKET_MS: Final = (10, 20, 30, 40, 50, 60)  # G.711 packet sizes accepted
FRAME_BYTES: Final = 320  # one 20 ms frame of PCM handed to on_audio
DEDUPE_S: Final = 1.0  # the same digit from the other path this soon: the same key press
MAX_PCM_PENDING: Final = 16000  # bytes of PCM held for an unfinished packet (0.5 s)
QUIET_FRAME: Final = bytes(FRAME_BYTES)
RECV_BYTES: Final = 2048  # a datagram larger than MAX_PACKET is read whole, then refused
RECV_BATCH: Final = 64  # datagrams read per endpoint and tick at most
# SO_TIMESTAMP (Linux: 29, the stamp a struct timeval); the socket module does not name it
_SO_TIMESTAMP: Final = getattr(socket, "SO_TIMESTAMP", 29 if sys.platform == "linux" else None)
_TIMEVAL: Final = struct.Struct("@ll")
_ANC_BYTES: Final = socket.CMSG_SPACE(_TIMEVAL.size)
TICK_S: Final = FRAME_BYTES / 16000  # the media clock's period: one 20 ms frame
MAX_FILL: Final = 10  # silence packets sent in one tick at most; a longer stall re-anchors


def _noop(_: Any) -> None:
    return None


class RtpPortPool:
    """Even RTP ports ``p`` with ``lo <= p`` and ``p + 1 <= hi`` (RTCP is ``p + 1``), handed
    out round-robin.  A port in use by an endpoint of this pool, or that cannot be bound
    (another program has it), is skipped."""

    def __init__(self, lo: int, hi: int) -> None:
        for name, v in (("lo", lo), ("hi", hi)):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
                raise ValueError(f"RTP port range {name} must be 1 to 65535, got {v!r}")
        first = lo + (lo & 1)
        if first + 1 > hi:
            raise ValueError(f"RTP port range {lo}-{hi} holds no even port with its RTCP port")
        self.lo, self.hi = lo, hi
        self.ports = tuple(range(first, hi, 2))
        self._in_use: set[int] = set()
        self._next = 0

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    async def bind(self, host: str) -> tuple[int, trio.socket.SocketType, trio.socket.SocketType]:
        """The next free port with both sockets bound on ``host``.  Raises OSError when none
        of the range can be bound."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        last: OSError | None = None
        for i in range(len(self.ports)):
            port = self.ports[(self._next + i) % len(self.ports)]
            if port in self._in_use:
                continue
            socks: list[trio.socket.SocketType] = []
            try:
                for p in (port, port + 1):
                    s = trio.socket.socket(family, socket.SOCK_DGRAM)
                    socks.append(s)
                    await s.bind((host, p))
            except OSError as e:
                for s in socks:
                    s.close()
                if e.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise
                last = e
                continue
            self._in_use.add(port)
            self._next = (self._next + i + 1) % len(self.ports)
            return port, socks[0], socks[1]
        raise OSError(errno.EADDRINUSE, f"no free RTP port pair in {self.lo}-{self.hi} on {host}"
                      + (f" (last: {last.strerror})" if last else ""))

    def release(self, port: int) -> None:
        self._in_use.discard(port)


class MediaClock:
    """One 20 ms ticker for many endpoints (docs/sccp.md, "The endpoint"): every
    :data:`TICK_S` it calls :meth:`RtpEndpoint.tick` of each attached endpoint, which plays
    out what is due, reports telephone-event digits whose audio is playing, and sends silence
    where the flow sends nothing.  A process with many calls runs one clock (one timer wake-up
    per tick for all of them) instead of a sleeping task per call; an endpoint given none
    runs its own in :meth:`RtpEndpoint.run`.  With nothing attached the clock sleeps."""

    def __init__(self) -> None:
        self._members: dict[RtpEndpoint, None] = {}
        self._wake = trio.Event()
        self.ticks = 0

    def attach(self, endpoint: RtpEndpoint) -> None:
        self._members[endpoint] = None
        self._wake.set()

    def detach(self, endpoint: RtpEndpoint) -> None:
        self._members.pop(endpoint, None)

    def __len__(self) -> int:
        return len(self._members)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick until cancelled.  Each endpoint contains its own errors (:meth:`RtpEndpoint.tick`)."""
        task_status.started()
        at = trio.current_time()
        while True:
            if not self._members:
                self._wake = trio.Event()
                await self._wake.wait()
                at = trio.current_time()
            now = trio.current_time()
            self.ticks += 1
            for ep in list(self._members):
                ep.tick(now)
            at += TICK_S
            if at <= now:  # the process stalled: the next tick is one period away, no burst
                at = now + TICK_S
            await trio.sleep_until(at)


class RtpEndpoint:
    """One RTP/RTCP socket pair and the media of one call leg at a time (see the module doc).

    ``on_audio(frame)`` gets 20 ms PCM frames (320 bytes) of what the far end sends, at
    real-time pace; ``on_digit(digit)`` gets each DTMF digit once.  Both are plain callables
    set by the owner; an exception from one is counted and logged, never raised into
    :meth:`run`."""

    def __init__(self, host: str, pool: RtpPortPool, port: int, rtp: trio.socket.SocketType,
                 rtcp: trio.socket.SocketType, *, jitter_ms: int = 60, dtmf_mode: str = "both",
                 rtcp_interval: float = 5.0, max_jitter_packets: int = 50,
                 failures: TaskFailures | None = None, clock: MediaClock | None = None,
                 fill_silence: bool = True) -> None:
        self.host = host
        self.local_port = port
        self._pool = pool
        self._rtp = rtp
        self._rtcp = rtcp
        # plain-socket views of the same sockets: the clock sends and the receive loop drains
        # without a Trio round trip per datagram (they never block: non-blocking UDP)
        self._rtp_sock = socket.fromfd(rtp.fileno(), rtp.family, socket.SOCK_DGRAM)
        self._rtp_sock.setblocking(False)
        self._stamped = False
        if _SO_TIMESTAMP is not None:
            try:
                self._rtp_sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMP, 1)
                self._stamped = True
            except OSError:
                pass  # no kernel stamps: a datagram arrived when the tick read it
        self._clock = clock
        self.fill_silence = fill_silence
        self.jitter_ms = jitter_ms
        self.dtmf_mode = dtmf_mode
        self.rtcp_interval = rtcp_interval
        self.max_jitter_packets = max_jitter_packets
        self.failures = failures or TaskFailures(python_logger(log))
        self.on_audio: Callable[[bytes], None] = _noop
        self.on_digit: Callable[[str], None] = _noop
        rng = random.SystemRandom()
        self._rng = rng
        self.ssrc = rng.getrandbits(32)
        self.cname = f"vmha-{self.ssrc:08x}@{host}"
        self.remote: tuple[str, int] | None = None
        self.codec: str | None = None
        self.packet_ms = 20
        self.rfc2833_pt: int | None = None
        self._sender: RtpSender | None = None
        self._closed = False
        self._sending = False
        self._scope: trio.CancelScope | None = None
        self._quiet_at: float | None = None
        self._c: dict[str, int] = dict.fromkeys((
            "sent", "sent_bytes", "send_errors", "unsent_frames", "received", "bad", "strangers",
            "other_pt", "comfort_noise", "ssrc_changes", "frames_out", "digits_rfc2833",
            "digits_inband", "dtmf_duplicates", "rtcp_sent", "rtcp_received", "rtcp_bad",
            "rtcp_strangers", "rtcp_send_errors", "sr_received", "rr_received", "bye_received",
            "errors", "callback_errors", "recv_errors", "quiet_frames", "digits_dropped",
            "silence_sent"), 0)
        self._reset_receive()
        self._reset_send()
        self._remote_report: dict[str, Any] = {}

    @classmethod
    async def open(cls, host: str, pool: RtpPortPool, *, jitter_ms: int = 60,
                   dtmf_mode: str = "both", rtcp_interval: float = 5.0,
                   max_jitter_packets: int = 50, failures: TaskFailures | None = None,
                   clock: MediaClock | None = None, fill_silence: bool = True) -> RtpEndpoint:
        """Bind the RTP and RTCP sockets on ``host`` at the pool's next free pair.  Bad
        arguments are ValueError; no free port is OSError."""
        ipaddress.ip_address(host)  # a literal address: ValueError otherwise
        if dtmf_mode not in DTMF_MODES:
            raise ValueError(f"dtmf mode must be one of {', '.join(DTMF_MODES)}, got {dtmf_mode!r}")
        JitterBuffer(20, jitter_ms, max_jitter_packets)  # checks them
        if isinstance(rtcp_interval, bool) or not isinstance(rtcp_interval, (int, float)) \
                or not 0.05 <= rtcp_interval <= 3600:
            raise ValueError(f"rtcp_interval must be 0.05 to 3600 s, got {rtcp_interval!r}")
        port, rtp, rtcp = await pool.bind(host)
        return cls(host, pool, port, rtp, rtcp, jitter_ms=jitter_ms, dtmf_mode=dtmf_mode,
                   rtcp_interval=rtcp_interval, max_jitter_packets=max_jitter_packets,
                   failures=failures, clock=clock, fill_silence=fill_silence)

    # ------------------------------------------------------------------ state

    def _reset_receive(self, codec: str | None = None, packet_ms: int = 20) -> None:
        silence = CODECS[codec][2] if codec else 0xFF
        self._jb = JitterBuffer(packet_ms, self.jitter_ms, self.max_jitter_packets,
                                silence_byte=silence)
        self._rx_codec = codec  # what the jitter buffer holds (None: the first packet says)
        self._rx_ssrc: int | None = None
        self._rx_stats = ReceptionStats()
        self._events = DtmfEventReceiver()
        self._detector = dtmf.DtmfDetector()
        self._inband_until: float | None = None  # "both": the in-band detector stops then
        self._digits_recent: deque[tuple[float, str, str]] = deque(maxlen=8)
        self._event_digits: deque[tuple[float, str]] = deque(maxlen=32)  # (report at, digit)
        self._pcm_out = b""
        self._lsr = 0
        self._lsr_at: float | None = None

    def _reset_send(self) -> None:
        self._pcm_in = b""
        self._sent_at: float | None = None  # trio time of the last packet sent
        self._sent_ts = 0
        self._send_jitter = 0.0  # RFC 3550 A.8 smoothing of our own send times, seconds
        self._send_dev_max = 0.0
        self._we_sent = False
        self._send_next: float | None = None  # when the next packet is due (silence fill)

    def start(self, remote_ip: str, remote_port: int, *, codec: str, packet_ms: int = 20,
              rfc2833_pt: int | None = 101) -> None:
        """Send to (and take packets only from) ``remote_ip``; RTCP goes to
        ``remote_port + 1``.  Starting again (a new StartMediaTransmission) points the stream
        elsewhere; a new codec or packet size also starts reception afresh.  Bad arguments
        raise ValueError and change nothing."""
        ip = str(ipaddress.ip_address(remote_ip))
        if isinstance(remote_port, bool) or not isinstance(remote_port, int) \
                or not 1 <= remote_port <= 65534:
            raise ValueError(f"remote RTP port must be 1 to 65534, got {remote_port!r}")
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
        if packet_ms not in PACKET_MS:
            raise ValueError(f"packet_ms must be one of {PACKET_MS}, got {packet_ms!r}")
        if rfc2833_pt is not None and (isinstance(rfc2833_pt, bool) or not isinstance(rfc2833_pt, int)
                                       or not 96 <= rfc2833_pt <= 127):
            raise ValueError(f"rfc2833_pt must be a dynamic payload type 96-127 or None, "
                             f"got {rfc2833_pt!r}")
        if self._closed:
            raise ValueError("the RTP endpoint is closed")
        if codec != self._rx_codec or packet_ms != self.packet_ms \
                or (self.remote is not None and self.remote[0] != ip):
            self._reset_receive(codec, packet_ms)  # a new stream (what came early is kept)
        pt = CODECS[codec][1]
        if self._sender is None:
            self._sender = RtpSender(self.ssrc, pt, seq=self._rng.getrandbits(16),
                                     timestamp=self._rng.getrandbits(32))
        else:
            self._sender.payload_type = pt
            self._sender.talkspurt()
        if codec != self.codec:
            self._pcm_in = b""
        self.remote = (ip, remote_port)
        self.codec, self.packet_ms, self.rfc2833_pt = codec, packet_ms, rfc2833_pt
        self._sending = True
        self._silence = bytes((CODECS[codec][2],)) * (8 * packet_ms)
        if self._send_next is None:
            self._send_next = trio.current_time()

    def stop(self) -> None:
        """Stop sending (StopMediaTransmission): :meth:`send_pcm` drops what it is given
        until the next :meth:`start`.  Reception goes on until :meth:`aclose`."""
        self._sending = False
        self._pcm_in = b""
        self._sent_at = None
        self._send_next = None

    @property
    def sending(self) -> bool:
        return self._sending and not self._closed

    # ------------------------------------------------------------------ sending

    async def send_pcm(self, pcm: bytes) -> None:
        """Packetise 16-bit LE 8 kHz PCM at ``packet_ms`` and send the whole packets at once
        (a remainder waits for the next call).  Before :meth:`start` or after :meth:`stop`
        the audio is dropped (``unsent_frames``).  A socket error is counted
        (``send_errors``), never raised.  Not PCM (odd length, not bytes) or more than
        :data:`MAX_PCM_PENDING` bytes (a burst the far end's jitter buffer could not hold):
        ValueError, nothing sent."""
        if not isinstance(pcm, (bytes, bytearray, memoryview)) or len(pcm) % 2:
            raise ValueError("send_pcm takes 16-bit PCM bytes (an even number of them)")
        if len(pcm) > MAX_PCM_PENDING:
            raise ValueError(f"send_pcm takes at most {MAX_PCM_PENDING} bytes (0.5 s) at a time, "
                             f"got {len(pcm)}")
        if not self.sending or self._sender is None or self.remote is None or self.codec is None:
            self._c["unsent_frames"] += 1
            return
        now = trio.current_time()
        per_packet = 16 * self.packet_ms
        if self._sent_at is not None and now - self._sent_at > 0.1 + self.packet_ms / 1000 \
                and not self._pcm_in:
            # a pause in what the port plays: the timestamp moves on by the time that passed
            # (RFC 3550 5.1) and the next packet starts a talk spurt (marker bit)
            gap = now - self._sent_at - self.packet_ms / 1000
            self._sender.skip(int(gap * 8000) // 8 * 8)
            self._sender.talkspurt()
            self._sent_at = None
        data = self._pcm_in + bytes(pcm)
        law = CODECS[self.codec][0]
        whole = len(data) - len(data) % per_packet
        self._pcm_in = data[whole:]
        for i in range(0, whole, per_packet):
            if self._closed:  # closed while this call was sending
                self._c["unsent_frames"] += 1
                return
            payload = g711.encode(law, data[i:i + per_packet])
            self._send_packet(payload, now)
            self._send_next = now + self.packet_ms / 1000
            await trio.lowlevel.checkpoint()  # a burst lets the others run between packets

    def _send_packet(self, payload: bytes, now: float) -> None:
        """Number and send one packet now (a non-blocking UDP send: it never waits)."""
        assert self._sender is not None and self.remote is not None
        packet = self._sender.packet(payload, len(payload))
        self._timing(now, self._sender.last_timestamp)
        try:
            self._rtp_sock.sendto(packet, self.remote)
        except OSError as e:  # BlockingIOError too: the socket's buffer is full
            self._c["send_errors"] += 1
            self.failures.limited("warning", "rtp_send_failed",
                                  f"RTP to {self.remote[0]}:{self.remote[1]}: {e}")
            return
        self._c["sent"] += 1
        self._c["sent_bytes"] += len(packet)
        self._we_sent = True

    def _fill(self, now: float) -> None:
        """Silence for the time the flow sent nothing (StartMediaTransmission asks for no
        silence suppression): once the flow is more than a packet late, one silence packet per
        packet time, on the stream's timeline.  A stall longer than :data:`MAX_FILL` packets
        is not made up: the timestamp moves on and the next packet starts a talk spurt."""
        due = self._send_next
        if due is None or not self.sending:
            return
        step = self.packet_ms / 1000
        if now < due + step:
            return
        if self._pcm_in:  # the end of a prompt shorter than a packet: sent, padded
            assert self.codec is not None
            pcm, self._pcm_in = self._pcm_in.ljust(16 * self.packet_ms, b"\0"), b""
            self._send_packet(g711.encode(CODECS[self.codec][0], pcm), now)
            due += step
            if now < due + step:
                self._send_next = due
                return
        n = int((now - due) / step)
        if n > MAX_FILL:
            assert self._sender is not None
            self._sender.skip((n - 1) * self.packet_ms * 8)
            self._sender.talkspurt()
            due += (n - 1) * step
            n = 1
        for _ in range(n):
            self._send_packet(self._silence, now)
            self._c["silence_sent"] += 1
            due += step
        self._send_next = due

    def _timing(self, now: float, ts: int) -> None:
        """Our own send timing, as the far end's jitter (A.8) would see it if the network
        added nothing: how regularly the caller paced the audio."""
        if self._sent_at is not None:
            elapsed_ts = ((ts - self._sent_ts) & 0xFFFF_FFFF) / 8000
            d = abs((now - self._sent_at) - elapsed_ts)
            self._send_jitter += (d - self._send_jitter) / 16
            self._send_dev_max = max(self._send_dev_max, d)
        self._sent_at, self._sent_ts = now, ts

    # ------------------------------------------------------------------ the tasks

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive RTP and RTCP, play the audio out, send RTP silence and RTCP; until
        :meth:`aclose` or cancellation.  The RTP work is done by the media clock's ticks
        (the one given to :meth:`open`, else one of this endpoint's own); the RTCP loops are
        tasks here.  Every loop and tick contains its own errors."""
        if self._closed:
            raise ValueError("the RTP endpoint is closed")
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._loop, "rtcp-receive", self._receive_rtcp)
                nursery.start_soon(self._loop, "rtcp-send", self._rtcp_sender)
                clock = self._clock
                if clock is None:  # an endpoint on its own: its own ticker
                    clock = MediaClock()
                    nursery.start_soon(clock.run)
                clock.attach(self)
                try:
                    task_status.started()
                    await trio.sleep_forever()
                finally:
                    clock.detach(self)

    async def _loop(self, name: str, body: Callable[[], Any]) -> None:
        """Run ``body`` until the sockets close; whatever else escapes it is counted, logged,
        and the body runs again (after a short pause, so a persistent error cannot spin)."""
        while not self._closed:
            try:
                await body()
            except (trio.ClosedResourceError, OSError) as e:
                if self._closed:
                    return
                self._c["errors"] += 1
                self.failures.failed(f"rtp:{name}", e, retry_in=0.05, level="warning")
            except Exception as e:  # noqa: BLE001 - contained: one bad turn never ends the endpoint
                self._c["errors"] += 1
                self.failures.failed(f"rtp:{name}", e, retry_in=0.05)
            await trio.sleep(0.05)

    async def _recv(self, sock: trio.socket.SocketType) -> tuple[bytes, Any] | None:
        """One datagram, or None after a receive error (an ICMP error queued on the socket by
        an earlier send: counted, the loop goes on)."""
        try:
            return await sock.recvfrom(RECV_BYTES)
        except OSError as e:
            if self._closed:
                raise trio.ClosedResourceError from e
            self._c["recv_errors"] += 1
            await trio.lowlevel.checkpoint()
            return None

    def _from_remote(self, addr: Any) -> bool:
        return self.remote is None or addr[0] == self.remote[0]

    def _drain(self, now: float) -> None:
        """Read the RTP datagrams queued since the last tick (at most :data:`RECV_BATCH`; a
        flood beyond that waits, or the kernel drops it).  Each one's arrival time is the
        kernel's receive stamp where the system gives one (so the jitter buffer and the A.8
        jitter see when it came, not when the tick read it), else the tick's time."""
        sock = self._rtp_sock
        offset = time.time() - now if self._stamped else 0.0
        for _ in range(RECV_BATCH):
            try:
                data, anc, _, addr = sock.recvmsg(RECV_BYTES, _ANC_BYTES)
            except BlockingIOError:
                return
            except OSError:
                if self._closed:
                    return
                self._c["recv_errors"] += 1  # an ICMP error queued by an earlier send
                continue
            at = now
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMP and len(raw) >= _TIMEVAL.size:
                    sec, usec = _TIMEVAL.unpack_from(raw)
                    at = min(now, max(now - 1.0, sec + usec / 1e6 - offset))
            if not self._from_remote(addr):
                self._c["strangers"] += 1
                continue
            try:
                pkt = parse_rtp(data)
            except RtpError:
                self._c["bad"] += 1
                continue
            self._received(pkt, at)

    def _received(self, pkt: RtpPacket, now: float) -> None:
        pt = pkt.payload_type
        if self._rx_codec is None and pt in _CODEC_OF_PT:
            self._reset_receive(_CODEC_OF_PT[pt], self.packet_ms)  # before start: its own PT
        audio = self._rx_codec is not None and pt == CODECS[self._rx_codec][1]
        event = self.rfc2833_pt is not None and pt == self.rfc2833_pt
        if not (audio or event or pt == PT_CN):
            self._c["other_pt"] += 1
            return
        if pkt.ssrc != self._rx_ssrc:
            if self._rx_ssrc is not None:
                self._c["ssrc_changes"] += 1
            self._rx_ssrc = pkt.ssrc
            self._rx_stats = ReceptionStats()
            self._lsr, self._lsr_at = 0, None
        self._c["received"] += 1
        self._rx_stats.update(pkt.seq, now, pkt.timestamp if audio else None)
        if audio:
            self._jb.push(pkt, now)
            return
        self._jb.mark(pkt, now)
        if pt == PT_CN:
            self._c["comfort_noise"] += 1
            return
        digit = self._events.feed(pkt)
        if self.dtmf_mode == "inband":
            return
        if self._inband_until is None:
            # the audio that arrived with this first event plays out about one buffer depth
            # from now: the in-band detector stops there, so what came before is still heard
            self._inband_until = now + self._jb.depth
        if digit is not None:
            # reported when the audio that came with it plays out, so that digits from the
            # two paths keep their order (an in-band digit is found at play-out)
            if len(self._event_digits) == self._event_digits.maxlen:
                self._c["digits_dropped"] += 1
            self._event_digits.append((now + self._jb.depth, digit))

    def _report(self, digit: str, source: str, now: float) -> None:
        """One digit from ``source``, unless the other source reported the same digit within
        the dedupe window (the same key seen both ways)."""
        if self.dtmf_mode == "both" and any(
                d == digit and src != source and now - t <= DEDUPE_S
                for t, d, src in self._digits_recent):
            self._c["dtmf_duplicates"] += 1
            return
        self._digits_recent.append((now, digit, source))
        self._c["digits_" + source] += 1
        self._digit(digit)

    def _digit(self, digit: str) -> None:
        try:
            self.on_digit(digit)
        except Exception as e:  # noqa: BLE001 - the owner's callback must not end the endpoint
            self._c["callback_errors"] += 1
            self.failures.failed("rtp:on_digit", e)

    def tick(self, now: float) -> None:
        """One turn of the media clock: silence where the flow sent nothing, telephone-event
        digits whose audio plays now, the audio due (or quiet frames while the stream is
        paused).  Contains its own errors."""
        if self._closed:
            return
        try:
            self._drain(now)
            if self.fill_silence:
                self._fill(now)
            while self._event_digits and self._event_digits[0][0] <= now:
                at, digit = self._event_digits.popleft()
                self._report(digit, "rfc2833", at)
            self._play_due(now)
        except Exception as e:  # noqa: BLE001 - one bad turn never ends the endpoint
            self._c["errors"] += 1
            self.failures.failed("rtp:tick", e)

    def _play_due(self, now: float) -> None:
        jb = self._jb
        while (payload := jb.pop(now)) is not None:
            assert self._rx_codec is not None
            self._quiet_at = None
            self._play(g711.decode(CODECS[self._rx_codec][0], payload), now)
        if jb.next_due() is not None:
            self._quiet_at = None
            return
        position = jb.position
        if position is None:  # nothing received yet: nothing is played
            return
        # the stream paused (the jitter buffer stopped holding its clock): the line is quiet,
        # and says so every 20 ms until a packet comes, so that a recording can end on silence
        # even when the far end suppresses it
        if self._quiet_at is None:
            self._quiet_at = position
        for _ in range(MAX_FILL):
            if now < self._quiet_at:
                break
            self._c["quiet_frames"] += 1
            self._play(QUIET_FRAME, now)
            self._quiet_at += TICK_S
        else:
            self._quiet_at = max(self._quiet_at, now)  # a stall is not made up

    def _play(self, pcm: bytes, now: float) -> None:
        data = self._pcm_out + pcm
        whole = len(data) - len(data) % FRAME_BYTES
        self._pcm_out = data[whole:]
        for i in range(0, whole, FRAME_BYTES):
            frame = data[i:i + FRAME_BYTES]
            if self.dtmf_mode == "inband" or (self.dtmf_mode == "both" and (
                    self._inband_until is None or now < self._inband_until)):
                for digit in self._detector.feed(frame):
                    self._report(digit, "inband", now)
            self._c["frames_out"] += 1
            try:
                self.on_audio(frame)
            except Exception as e:  # noqa: BLE001 - the owner's callback must not end the endpoint
                self._c["callback_errors"] += 1
                self.failures.failed("rtp:on_audio", e)

    # ------------------------------------------------------------------ RTCP

    async def _receive_rtcp(self) -> None:
        while True:
            got = await self._recv(self._rtcp)
            if got is None:
                continue
            data, addr = got
            now = trio.current_time()
            if not self._from_remote(addr):
                self._c["rtcp_strangers"] += 1
                continue
            try:
                packets = parse_rtcp(data)
            except RtcpError:
                self._c["rtcp_bad"] += 1
                continue
            self._c["rtcp_received"] += 1
            for p in packets:
                if isinstance(p, SenderReport):
                    self._c["sr_received"] += 1
                    if self._rx_ssrc is None or p.ssrc == self._rx_ssrc:
                        self._lsr, self._lsr_at = ntp_middle(p.ntp), now
                    self._about_us(p.reports, now)
                elif isinstance(p, ReceiverReport):
                    self._c["rr_received"] += 1
                    self._about_us(p.reports, now)
                elif isinstance(p, Bye):
                    self._c["bye_received"] += 1

    def _about_us(self, reports: tuple, now: float) -> None:
        for r in reports:
            if r.ssrc == self.ssrc:
                self._remote_report = {"fraction_lost": r.fraction_lost,
                                       "cumulative_lost": r.cumulative_lost,
                                       "jitter_ms": round(r.jitter / 8, 3),
                                       "highest_seq": r.highest_seq, "lsr": r.lsr,
                                       "dlsr": r.dlsr, "at": now}

    def rtcp_compound(self, *, bye: bool = False) -> bytes:
        """The next RTCP report (SR if we sent since the last one, else RR), our CNAME, and a
        BYE if asked."""
        now = trio.current_time()
        blocks = ()
        if self._rx_ssrc is not None and self._rx_stats.probation == 0:
            dlsr = 0 if self._lsr_at is None else min(0xFFFF_FFFF, int((now - self._lsr_at) * 65536))
            blocks = (self._rx_stats.report_block(self._rx_ssrc, self._lsr if self._lsr_at else 0,
                                                  dlsr),)
        sender = self._sender
        if self._we_sent and sender is not None:
            ts = sender.last_timestamp
            if self._sent_at is not None:
                ts = (ts + int((now - self._sent_at) * 8000)) & 0xFFFF_FFFF
            first: SenderReport | ReceiverReport = SenderReport(
                self.ssrc, ntp_from_unix(time.time()), ts, sender.packets, sender.octets, blocks)
        else:
            first = ReceiverReport(self.ssrc, blocks)
        self._we_sent = False
        parts: list[Any] = [first, Sdes(self.ssrc, self.cname[:255])]
        if bye:
            parts.append(Bye((self.ssrc,)))
        return encode_compound(*parts)

    async def _send_rtcp(self, *, bye: bool = False) -> None:
        if self.remote is None:
            return
        data = self.rtcp_compound(bye=bye)
        try:
            await self._rtcp.sendto(data, (self.remote[0], self.remote[1] + 1))
        except trio.ClosedResourceError:
            return
        except OSError as e:
            self._c["rtcp_send_errors"] += 1
            self.failures.limited("warning", "rtcp_send_failed", f"RTCP to {self.remote[0]}: {e}")
            return
        self._c["rtcp_sent"] += 1

    async def _rtcp_sender(self) -> None:
        first = True
        while True:
            # RFC 3550 6.2/6.3: randomised over 0.5-1.5 of the interval; the first report
            # after half of it
            factor = 0.5 if first else 1.0
            first = False
            await trio.sleep(factor * self.rtcp_interval * self._rng.uniform(0.5, 1.5))
            await self._send_rtcp()

    # ------------------------------------------------------------------ results, end

    def stats(self) -> dict[str, Any]:
        """Counters and figures of this endpoint (the current stream's for reception)."""
        out: dict[str, Any] = dict(self._c)
        jb = self._jb
        rx = self._rx_stats
        out.update({
            "local_port": self.local_port, "remote": None if self.remote is None
            else f"{self.remote[0]}:{self.remote[1]}", "codec": self.codec,
            "lost": jb.lost, "late": jb.late, "duplicate": jb.duplicate,
            "reordered": jb.reordered, "concealed": jb.concealed, "played": jb.played,
            "resyncs": jb.resyncs, "overflow": jb.overflow, "underruns": jb.underruns,
            "buffered": len(jb), "cumulative_lost": rx.lost, "expected": rx.expected,
            "jitter_ms": round(rx.jitter_ms, 3),
            "send_jitter_ms": round(self._send_jitter * 1000, 3),
            "send_deviation_max_ms": round(self._send_dev_max * 1000, 3),
            "dtmf_events": self._events.events, "remote_report": dict(self._remote_report),
            "last_seq_sent": None if self._sender is None or not self._sender.packets
            else (self._sender.seq - 1) & 0xFFFF,
        })
        return out

    async def aclose(self) -> None:
        """Send a BYE (if started), close both sockets, give the port back, end :meth:`run`.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()  # the loops stop first, so the BYE is the last thing sent
        if self.remote is not None:
            with trio.move_on_after(0.5, shield=True):
                try:
                    await self._send_rtcp(bye=True)
                except Exception as e:  # noqa: BLE001 - closing goes on whatever happened
                    self.failures.failed("rtp:bye", e, level="warning")
        if self._clock is not None:
            self._clock.detach(self)
        self._rtp_sock.close()
        self._rtp.close()
        self._rtcp.close()
        self._pool.release(self.local_port)
