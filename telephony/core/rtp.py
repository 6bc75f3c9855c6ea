"""RTP and RTCP (RFC 3550), DTMF telephone events (RFC 4733), a jitter buffer and reception
statistics.  Pure: no I/O, time comes in as ``now`` (seconds, any monotonic origin).

* :class:`RtpPacket` / :func:`parse_rtp`: the fixed header, CSRC list, header extension and
  padding.  A datagram over :data:`MAX_PACKET` bytes, not version 2, or whose lengths do not
  add up is an :class:`RtpError` (a ``ValueError``).
* :class:`DtmfEvent` / :func:`parse_dtmf_event`: the 4-byte telephone-event payload;
  :class:`DtmfEventReceiver` turns a stream of them into digits, one per event however many
  times its packets are repeated (the event's packets share one RTP timestamp; a new event
  has a new one).
* :class:`JitterBuffer`: fixed depth, reorders, drops duplicates and late packets, conceals a
  gap with one packet of silence at a time; bounded.
* :class:`ReceptionStats`: RFC 3550 appendix A.1 (sequence extension and source validation),
  A.3 (expected, lost, fraction lost) and A.8 (interarrival jitter).
* RTCP: :class:`SenderReport`, :class:`ReceiverReport` (with :class:`ReportBlock`),
  :class:`Sdes`, :class:`Bye`, :class:`UnknownRtcp`; :func:`parse_rtcp` reads a compound
  packet (:class:`RtcpError` on bad input), :func:`encode_compound` writes one.  They live in
  :mod:`telephony.core.rtcp` (this module's size) and are re-exported here.
* :class:`RtpSender`: sequence numbers, timestamps and the marker bit of an outgoing stream.
"""
from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

from telephony.core.rtcp import (
    MAX_PACKET,
    NTP_UNIX_OFFSET,
    VERSION,
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpError,
    RtcpPacket,
    Sdes,
    SenderReport,
    UnknownRtcp,
    as_bytes,
    check_uint,
    encode_compound,
    ntp_from_unix,
    ntp_middle,
    parse_rtcp,
)

__all__ = [
    "MAX_PACKET", "RtpError", "RtcpError", "RtpPacket", "parse_rtp", "DtmfEvent",
    "parse_dtmf_event", "DIGIT_OF_EVENT", "EVENT_OF_DIGIT", "DtmfEventReceiver", "JitterBuffer",
    "ReceptionStats", "ReportBlock", "SenderReport", "ReceiverReport", "Sdes", "Bye",
    "UnknownRtcp", "RtcpPacket", "parse_rtcp", "encode_compound", "RtpSender", "ntp_from_unix",
    "ntp_middle", "seq_delta", "ts_delta", "PT_PCMU", "PT_PCMA", "NTP_UNIX_OFFSET",
]

PT_PCMU: Final = 0  # RFC 3551 static payload types
PT_PCMA: Final = 8


class RtpError(ValueError):
    """A datagram that is not a valid RTP packet (or a bad telephone-event payload)."""


def seq_delta(a: int, b: int) -> int:
    """``a - b`` for 16-bit sequence numbers, in -32768..32767."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def ts_delta(a: int, b: int) -> int:
    """``a - b`` for 32-bit RTP timestamps, signed."""
    return ((a - b + 0x8000_0000) & 0xFFFF_FFFF) - 0x8000_0000


# ---------------------------------------------------------------------------------------- RTP

@dataclass(frozen=True)
class RtpPacket:
    """One RTP packet.  ``extension`` is ``(profile, data)`` (data a multiple of 4 bytes) or
    None; ``padding`` is the number of padding bytes (0: none; else 1..255, the count byte
    included).  Out-of-range fields raise :class:`RtpError`."""

    payload_type: int
    seq: int
    timestamp: int
    ssrc: int
    marker: bool = False
    payload: bytes = b""
    csrc: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None
    padding: int = 0

    def __post_init__(self) -> None:
        check_uint("payload_type", self.payload_type, 7, RtpError)
        check_uint("seq", self.seq, 16, RtpError)
        check_uint("timestamp", self.timestamp, 32, RtpError)
        check_uint("ssrc", self.ssrc, 32, RtpError)
        if not isinstance(self.marker, bool):
            raise RtpError("marker must be a bool")
        if not isinstance(self.payload, bytes):
            raise RtpError("payload must be bytes")
        if not isinstance(self.csrc, tuple) or len(self.csrc) > 15:
            raise RtpError("csrc must be a tuple of at most 15 identifiers")
        for c in self.csrc:
            check_uint("csrc", c, 32, RtpError)
        if self.extension is not None:
            ok = (isinstance(self.extension, tuple) and len(self.extension) == 2
                  and isinstance(self.extension[1], bytes) and len(self.extension[1]) % 4 == 0
                  and len(self.extension[1]) <= 4 * 0xFFFF)
            if not ok:
                raise RtpError("extension must be (profile, data) with data a multiple of 4 bytes")
            check_uint("extension profile", self.extension[0], 16, RtpError)
        check_uint("padding", self.padding, 8, RtpError)
        if self.size > MAX_PACKET:
            raise RtpError(f"packet would be {self.size} bytes, over {MAX_PACKET}")

    @property
    def size(self) -> int:
        """The encoded size in bytes."""
        ext = 0 if self.extension is None else 4 + len(self.extension[1])
        return 12 + 4 * len(self.csrc) + ext + len(self.payload) + self.padding

    def encode(self) -> bytes:
        first = (VERSION << 6) | (0x20 if self.padding else 0) \
            | (0x10 if self.extension is not None else 0) | len(self.csrc)
        second = (0x80 if self.marker else 0) | self.payload_type
        out = [struct.pack("!BBHII", first, second, self.seq, self.timestamp, self.ssrc)]
        out.extend(struct.pack("!I", c) for c in self.csrc)
        if self.extension is not None:
            profile, data = self.extension
            out.append(struct.pack("!HH", profile, len(data) // 4) + data)
        out.append(self.payload)
        if self.padding:
            out.append(bytes(self.padding - 1) + bytes([self.padding]))
        return b"".join(out)


_HEADER: Final = struct.Struct("!BBHII")


def parse_rtp(data: bytes) -> RtpPacket:
    """Decode one RTP datagram.  Raises :class:`RtpError` for anything that is not one."""
    data = as_bytes(data, RtpError)
    if len(data) < 12:
        raise RtpError(f"RTP packet of {len(data)} bytes is shorter than its 12-byte header")
    first, second, seq, timestamp, ssrc = struct.unpack_from("!BBHII", data)
    if first >> 6 != VERSION:
        raise RtpError(f"RTP version {first >> 6}, not 2")
    end = len(data)
    padding = 0
    if first & 0x20:
        padding = data[-1]
        if padding == 0:
            raise RtpError("padding bit set with a padding count of 0")
        end -= padding
        if end < 12:
            raise RtpError(f"padding count larger than the payload ({padding} bytes)")
    pos = 12
    cc = first & 0x0F
    if pos + 4 * cc > end:
        raise RtpError(f"{cc} CSRC identifiers do not fit in the packet")
    csrc = struct.unpack_from(f"!{cc}I", data, pos)
    pos += 4 * cc
    extension = None
    if first & 0x10:
        if pos + 4 > end:
            raise RtpError("header extension does not fit in the packet")
        profile, words = struct.unpack_from("!HH", data, pos)
        pos += 4
        if pos + 4 * words > end:
            raise RtpError(f"header extension of {words} words does not fit in the packet")
        extension = (profile, data[pos:pos + 4 * words])
        pos += 4 * words
    if pos > end:
        raise RtpError("padding count larger than the payload")
    # every field is in range by construction (read from its bits): the packet is built
    # without __post_init__'s checks, which cost more than the parse (one per 20 ms a call)
    pkt = object.__new__(RtpPacket)
    pkt.__dict__.update(payload_type=second & 0x7F, seq=seq, timestamp=timestamp, ssrc=ssrc,
                        marker=bool(second & 0x80), payload=data[pos:end], csrc=tuple(csrc),
                        extension=extension, padding=padding)
    return pkt


# --------------------------------------------------------------------- RFC 4733 DTMF events

#: RFC 4733 event codes 0-15 are the DTMF keys
DIGIT_OF_EVENT: Final = {**{i: str(i) for i in range(10)}, 10: "*", 11: "#",
                         12: "A", 13: "B", 14: "C", 15: "D"}
EVENT_OF_DIGIT: Final = {d: e for e, d in DIGIT_OF_EVENT.items()}


@dataclass(frozen=True)
class DtmfEvent:
    """A telephone-event payload: ``event`` (0-255; 0-15 the DTMF keys), ``end`` (the E bit),
    ``volume`` (0-63, -dBm0) and ``duration`` (timestamp units since the event began)."""

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    def __post_init__(self) -> None:
        check_uint("event", self.event, 8, RtpError)
        if not isinstance(self.end, bool):
            raise RtpError("end must be a bool")
        check_uint("volume", self.volume, 6, RtpError)
        check_uint("duration", self.duration, 16, RtpError)

    @property
    def digit(self) -> str | None:
        """The DTMF key of this event, None for other events (flash, tones)."""
        return DIGIT_OF_EVENT.get(self.event)

    def encode(self) -> bytes:
        return struct.pack("!BBH", self.event, (0x80 if self.end else 0) | self.volume,
                           self.duration)


def parse_dtmf_event(payload: bytes) -> DtmfEvent:
    """The first event of a telephone-event payload (at least 4 bytes; the reserved bit is
    ignored, as RFC 4733 asks).  Raises :class:`RtpError`."""
    payload = as_bytes(payload, RtpError)
    if len(payload) < 4:
        raise RtpError(f"telephone-event payload of {len(payload)} bytes, need 4")
    event, flags, duration = struct.unpack_from("!BBH", payload)
    return DtmfEvent(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)


class DtmfEventReceiver:
    """Digits from RFC 4733 telephone events: :meth:`feed` each packet of the event payload
    type; it returns the digit once, on the first packet of a new event that arrives.

    An event is identified by its source and RTP timestamp: all its packets (the updates with
    a growing duration, the three end packets, duplicates, packets arriving out of order)
    carry the same timestamp, and a new event a new one.  The last :data:`REMEMBERED` events
    are remembered, so a late packet of an earlier event is not a new digit.  An event longer
    than the 16-bit duration field continues under a new timestamp (RFC 4733 2.5.1.3): a
    packet of the same key that follows an unfinished event whose duration came within one
    second of 0xFFFF, at most that duration plus a second later, is that continuation, not a
    new digit.

    Counters: ``events`` (digits reported), ``packets``, ``ignored`` (events that are not DTMF
    keys), ``bad`` (payloads that do not parse)."""

    REMEMBERED: Final = 32

    def __init__(self) -> None:
        self._seen: deque[tuple[int, int]] = deque(maxlen=self.REMEMBERED)
        self._last: tuple[int, int, DtmfEvent] | None = None  # ssrc, timestamp, event
        self.events = 0
        self.packets = 0
        self.ignored = 0
        self.bad = 0

    def feed(self, pkt: RtpPacket) -> str | None:
        self.packets += 1
        try:
            ev = parse_dtmf_event(pkt.payload)
        except RtpError:
            self.bad += 1
            return None
        key = (pkt.ssrc, pkt.timestamp)
        if key in self._seen:
            last = self._last
            if last is not None and last[:2] == key and last[2].duration <= ev.duration:
                self._last = (pkt.ssrc, pkt.timestamp, ev)
            return None
        last = self._last
        self._seen.append(key)
        self._last = (pkt.ssrc, pkt.timestamp, ev)
        if last is not None and last[0] == pkt.ssrc and not last[2].end \
                and last[2].event == ev.event and last[2].duration >= 0xFFFF - 8000 \
                and 0 < ts_delta(pkt.timestamp, last[1]) <= last[2].duration + 8000:
            return None  # a long event continued under a new timestamp
        digit = ev.digit
        if digit is None:
            self.ignored += 1
            return None
        self.events += 1
        return digit


# ------------------------------------------------------------------------------ jitter buffer

class JitterBuffer:
    """A fixed-depth play-out buffer for one G.711 stream (one byte per sample).

    * **Schedule.** The first packet (or the first after a long gap or a resync) is played
      ``depth_ms`` after it arrived; from there every packet is due at its RTP timestamp's
      offset on the same clock, so up to ``depth_ms`` of delay variation is absorbed.
    * **Order.** Packets are held by sequence number and played in that order; one that
      arrives after a later one but in time is ``reordered``; one already held or played is
      a ``duplicate`` (dropped); one whose time has passed is ``late`` (dropped: its slot
      was filled with silence).
    * **Gaps.** :meth:`pop` gives the next packet's payload when it is due.  A stretch of
      time with no packet for it (a lost packet, the digits of an RFC 4733 event, a pause in
      sending) is filled with concealment silence, one packet (``packet_ms``, or the gap if
      shorter) per call.  Sequence numbers passed over without a packet, and not marked by
      :meth:`mark` (telephone events share the audio's numbering), count as ``lost`` (one
      that turns up afterwards counts as ``late`` too).
    * **Pauses.** Once ``hold_ms`` of silence has been made up with nothing held, the
      stream is taken as paused: :meth:`pop` returns None and the next packet starts
      play-out afresh ``depth_ms`` after it arrives.  So does a packet newer than any played
      that comes after its time while nothing is held (the buffer ran dry: a delay spike
      longer than the depth, or a sender slower than our clock); ``underruns`` counts both.
    * **Bounded.** At most ``max_packets`` held; a full buffer drops its oldest packet
      (``overflow``).  A sequence number more than ``4 * max_packets`` away from the
      play-out, a timestamp jump beyond the buffer, or a new SSRC restarts the buffer
      (``resyncs``).
    """

    def __init__(self, packet_ms: int = 20, depth_ms: int = 60, max_packets: int = 50, *,
                 hold_ms: int = 1000, clock_rate: int = 8000, silence_byte: int = 0xFF) -> None:
        check_uint("packet_ms", packet_ms, 8, ValueError)
        if not 5 <= packet_ms <= 120:
            raise ValueError(f"packet_ms must be 5 to 120, got {packet_ms}")
        for name, v, hi in (("depth_ms", depth_ms, 2000), ("hold_ms", hold_ms, 60000)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= hi:
                raise ValueError(f"{name} must be 0 to {hi}, got {v!r}")
        if isinstance(max_packets, bool) or not isinstance(max_packets, int) \
                or not 2 <= max_packets <= 1000:
            raise ValueError(f"max_packets must be 2 to 1000, got {max_packets!r}")
        if isinstance(clock_rate, bool) or not isinstance(clock_rate, int) or clock_rate <= 0:
            raise ValueError(f"bad clock rate {clock_rate!r}")
        check_uint("silence_byte", silence_byte, 8, ValueError)
        self.packet_ms = packet_ms
        self.depth = depth_ms / 1000
        self.max_packets = max_packets
        self.clock_rate = clock_rate
        self.packet_samples = clock_rate * packet_ms // 1000
        self.hold_samples = int(clock_rate * hold_ms / 1000)
        self._silence = bytes([silence_byte]) * self.packet_samples
        self._ssrc: int | None = None
        self._buf: dict[int, tuple[int, bytes]] = {}  # extended seq -> (timestamp, payload)
        self._top: int | None = None  # highest extended seq received
        self._seen: set[int] = set()  # extended seqs received or marked (recent)
        self._seen_order: deque[int] = deque()
        self._played: int | None = None  # extended seq of the last packet played or passed
        self._next_ts: int | None = None  # timestamp due next
        self._due: float | None = None  # when the sample at _next_ts is due
        self._begun = False  # play-out began since the last (re)start
        self._idle = False  # paused: the next packet restarts play-out
        self._silent = 0  # samples made up since the last packet played
        self.lost = 0
        self.late = 0
        self.duplicate = 0
        self.reordered = 0
        self.concealed = 0  # packets of silence made up
        self.played = 0
        self.resyncs = 0
        self.overflow = 0  # packets dropped for room (a full buffer, a restart)
        self.underruns = 0

    # -------------------------------------------------------------- helpers

    def __len__(self) -> int:
        return len(self._buf)

    def _extend(self, seq: int) -> int:
        if self._top is None:
            return seq
        return self._top + seq_delta(seq, self._top & 0xFFFF)

    def _remember(self, ext: int) -> None:
        self._seen.add(ext)
        self._seen_order.append(ext)
        while len(self._seen_order) > 4 * self.max_packets:
            self._seen.discard(self._seen_order.popleft())

    def _restart(self, pkt: RtpPacket, now: float) -> None:
        self._buf.clear()
        self._seen.clear()
        self._seen_order.clear()
        self._ssrc = pkt.ssrc
        self._top = pkt.seq
        self._played = pkt.seq - 1
        self._anchor(pkt, now)

    def _anchor(self, pkt: RtpPacket, now: float) -> None:
        self._next_ts = pkt.timestamp
        self._due = now + self.depth
        self._begun = False
        self._idle = False
        self._silent = 0

    def next_due(self) -> float | None:
        """When :meth:`pop` will next have something to say (None: nothing until a packet
        arrives)."""
        return None if self._idle else self._due

    @property
    def position(self) -> float | None:
        """Where the play-out clock stands: when the next sample is (or was) due; None before
        the first packet."""
        return self._due

    # -------------------------------------------------------------- input

    def mark(self, pkt: RtpPacket, now: float) -> None:
        """A packet of the stream that carries no audio (an RFC 4733 event, comfort noise):
        its sequence number is not lost when play-out passes it."""
        if self._ssrc is None or pkt.ssrc != self._ssrc:
            return
        ext = self._extend(pkt.seq)
        if ext not in self._seen:
            self._remember(ext)
            if self._top is not None and ext > self._top:
                self._top = ext

    def push(self, pkt: RtpPacket, now: float) -> str:
        """Take an audio packet.  Returns what became of it: ``"ok"``, ``"reordered"``,
        ``"duplicate"``, ``"late"``, ``"resync"`` (the buffer started afresh with it)."""
        if self._ssrc is None or pkt.ssrc != self._ssrc:
            first = self._ssrc is None
            if not first:
                self.resyncs += 1  # a new source
            self._restart(pkt, now)
            self._store(pkt.seq, pkt)
            return "ok" if first else "resync"
        assert self._played is not None and self._top is not None and self._next_ts is not None
        ext = self._extend(pkt.seq)
        if ext in self._seen:
            self.duplicate += 1
            return "duplicate"
        if abs(ext - self._played) > 4 * self.max_packets:
            return self._resync(pkt, now)  # the sender restarted its numbering
        early = ts_delta(pkt.timestamp, self._next_ts)
        if self._begun and not self._idle and early < 0 and not self._buf and ext > self._played:
            # the buffer ran dry and the next packet came after its time (a delay spike, a
            # sender slower than our clock): play-out starts afresh with it, depth later
            self.underruns += 1
            self._anchor(pkt, now)
        elif ext <= self._played or (self._begun and not self._idle and early < 0):
            if self._begun or self._played - ext >= self.max_packets:
                self.late += 1
                self._remember(ext)
                return "late"
            # play-out has not begun: the stream opens with this earlier packet
            self._played = min(self._played, ext - 1)
            if early < 0:
                self._next_ts = pkt.timestamp
        elif self._idle:
            self._anchor(pkt, now)  # after a pause: play-out starts afresh with this packet
        elif early > self.max_packets * self.packet_samples + self.hold_samples:
            return self._resync(pkt, now)  # a timestamp jump beyond what the buffer holds
        outcome = "reordered" if ext < self._top else "ok"
        if outcome == "reordered":
            self.reordered += 1
        self._store(ext, pkt)
        return outcome

    def _resync(self, pkt: RtpPacket, now: float) -> str:
        self.resyncs += 1
        self.overflow += len(self._buf)
        self._restart(pkt, now)
        self._store(pkt.seq, pkt)
        return "resync"

    def _store(self, ext: int, pkt: RtpPacket) -> None:
        if self._top is None or ext > self._top:
            self._top = ext
        self._remember(ext)
        self._buf[ext] = (pkt.timestamp, pkt.payload)
        while len(self._buf) > self.max_packets:
            oldest = min(self._buf)
            del self._buf[oldest]
            self.overflow += 1
            self._pass_to(oldest)
            self._next_ts = self._buf[min(self._buf)][0]

    def _pass_to(self, ext: int) -> None:
        assert self._played is not None
        for k in range(self._played + 1, min(ext, self._played + 4 * self.max_packets + 1)):
            if k not in self._seen:
                self.lost += 1
        self._played = max(self._played, ext)

    # -------------------------------------------------------------- output

    def pop(self, now: float) -> bytes | None:
        """The next packet's payload (or a packet of concealment silence) if it is due at
        ``now``; None when nothing is due yet, or the stream is paused."""
        if self._idle or self._due is None or now < self._due:
            return None
        assert self._next_ts is not None
        if self._buf:
            ext = min(self._buf)
            ts, payload = self._buf[ext]
            gap = ts_delta(ts, self._next_ts)
        else:
            gap = self.packet_samples
            if self._silent + gap > self.hold_samples:
                self._idle = True  # a pause, not a loss: the next packet restarts play-out
                self.underruns += 1
                return None
        self._begun = True
        if gap > 0:
            n = min(gap, self.packet_samples)
            self._next_ts = (self._next_ts + n) & 0xFFFF_FFFF
            self._due += n / self.clock_rate
            self._silent += n
            self.concealed += 1
            return self._silence[:n]
        del self._buf[ext]
        self._pass_to(ext)
        n = len(payload)
        self._next_ts = (ts + n) & 0xFFFF_FFFF
        self._due += n / self.clock_rate
        self._silent = 0
        self.played += 1
        return payload


# ---------------------------------------------------------------------- reception statistics

MAX_DROPOUT: Final = 3000  # RFC 3550 A.1
MAX_MISORDER: Final = 100
MIN_SEQUENTIAL: Final = 2


class ReceptionStats:
    """Reception statistics of one source, as RFC 3550 appendix A computes them.

    :meth:`update` takes each packet's sequence number, arrival time (seconds) and, for
    packets whose timestamps advance with the audio, its RTP timestamp: the interarrival
    jitter (A.8) is smoothed over every such packet, the arrival converted to timestamp units
    (``arrival * clock_rate``).
    A new source is *valid* after ``MIN_SEQUENTIAL`` packets in sequence (A.1; packets before
    that are not counted); a jump of more than ``MAX_DROPOUT`` ahead or ``MAX_MISORDER``
    behind is taken as a restart only when the next packet follows it."""

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self.max_seq = 0
        self.cycles = 0  # count of sequence number wraps, << 16
        self.base_seq = 0
        self.bad_seq = 0x10001  # a seq that is not (max_seq + 1)
        self.probation = MIN_SEQUENTIAL
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0
        self.jitter = 0.0  # timestamp units (A.8's J, kept as a float)
        self._transit: float | None = None
        self.started = False
        self.bad = 0  # packets refused by the sequence rules

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = 0x10001
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self.base_seq + 1 if self.probation == 0 else 0

    @property
    def lost(self) -> int:
        """Cumulative packets lost (A.3), clamped to the 24-bit signed field."""
        return max(-0x800000, min(0x7FFFFF, self.expected - self.received))

    @property
    def jitter_ms(self) -> float:
        return self.jitter / self.clock_rate * 1000

    def update(self, seq: int, arrival: float, timestamp: int | None = None) -> bool:
        """One packet: returns False when A.1's rules refuse it (not counted)."""
        if not self.started:
            self.started = True
            self._init_seq(seq)
            self.max_seq = (seq - 1) & 0xFFFF
            self.probation = MIN_SEQUENTIAL
        udelta = (seq - self.max_seq) & 0xFFFF
        self._jitter(arrival, timestamp)
        if self.probation:
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    return True
            else:
                self.probation = MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return False
        if udelta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += 0x10000
            self.max_seq = seq
        elif udelta <= 0x10000 - MAX_MISORDER:
            if seq == self.bad_seq:
                self._init_seq(seq)  # two in sequence after a jump: the source restarted
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                self.bad += 1
                return False
        # else: a duplicate or a reordered packet, counted
        self.received += 1
        return True

    def _jitter(self, arrival: float, timestamp: int | None) -> None:
        if timestamp is None:
            return
        transit = arrival * self.clock_rate - timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            if d > 0x7FFF_FFFF:  # a timestamp wrap between the two
                d = abs(d - 0x1_0000_0000)
            self.jitter += (d - self.jitter) / 16
        self._transit = transit

    def report_block(self, ssrc: int, lsr: int = 0, dlsr: int = 0) -> ReportBlock:
        """The report block for this source now (A.3): fraction lost since the last block."""
        expected = self.expected
        interval_expected = expected - self.expected_prior
        self.expected_prior = expected
        interval_received = self.received - self.received_prior
        self.received_prior = self.received
        lost_interval = interval_expected - interval_received
        fraction = 0
        if interval_expected > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // interval_expected)
        return ReportBlock(ssrc=ssrc, fraction_lost=fraction, cumulative_lost=self.lost,
                           highest_seq=self.extended_max & 0xFFFF_FFFF,
                           jitter=min(0xFFFF_FFFF, int(self.jitter)), lsr=lsr, dlsr=dlsr)


# ------------------------------------------------------------------------------------ sender

class RtpSender:
    """The numbering of one outgoing stream: :meth:`packet` wraps a payload of ``samples``
    samples in the next header (the marker bit on the first packet, and on the first after
    :meth:`talkspurt`).  ``seq`` and ``timestamp`` are the first values (RFC 3550 wants
    them random: the caller chooses).  Counters for the SR: ``packets``, ``octets``
    (payload bytes), ``last_timestamp``."""

    def __init__(self, ssrc: int, payload_type: int, clock_rate: int = 8000, *, seq: int = 0,
                 timestamp: int = 0) -> None:
        check_uint("ssrc", ssrc, 32, ValueError)
        check_uint("payload_type", payload_type, 7, ValueError)
        check_uint("seq", seq, 16, ValueError)
        check_uint("timestamp", timestamp, 32, ValueError)
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.seq = seq
        self.timestamp = timestamp
        self.last_timestamp = timestamp
        self.packets = 0
        self.octets = 0
        self._marker = True

    def talkspurt(self) -> None:
        """The next packet starts a talk spurt (marker bit)."""
        self._marker = True

    def skip(self, samples: int) -> None:
        """Advance the timestamp over ``samples`` not sent (a pause in sending)."""
        self.timestamp = (self.timestamp + samples) & 0xFFFF_FFFF

    def packet(self, payload: bytes, samples: int, *, payload_type: int | None = None) -> bytes:
        if isinstance(samples, bool) or not isinstance(samples, int) or not 0 <= samples < 1 << 16:
            raise ValueError(f"bad sample count {samples!r}")
        pt = self.payload_type if payload_type is None else payload_type
        if isinstance(pt, bool) or not isinstance(pt, int) or not 0 <= pt < 128:
            raise RtpError(f"payload_type out of range: {pt!r}")
        payload = bytes(payload)
        if 12 + len(payload) > MAX_PACKET:
            raise RtpError(f"packet would be {12 + len(payload)} bytes, over {MAX_PACKET}")
        # the header packed directly (RtpPacket.encode's layout, no CSRC/extension/padding):
        # seq, timestamp and ssrc are kept in range by this class
        data = _HEADER.pack(VERSION << 6, (0x80 if self._marker else 0) | pt, self.seq,
                            self.timestamp, self.ssrc) + payload
        self._marker = False
        self.seq = (self.seq + 1) & 0xFFFF
        self.last_timestamp = self.timestamp
        self.timestamp = (self.timestamp + samples) & 0xFFFF_FFFF
        self.packets = (self.packets + 1) & 0xFFFF_FFFF
        self.octets = (self.octets + len(payload)) & 0xFFFF_FFFF
        return data
