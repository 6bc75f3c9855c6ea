"""RTCP (RFC 3550 section 6): sender and receiver reports, SDES, BYE, and compound packets.
Pure.  :mod:`telephony.core.rtp` re-exports every public name here (this module also holds
the size bound and field checks both share).

* :class:`SenderReport`, :class:`ReceiverReport` (with :class:`ReportBlock`), :class:`Sdes`
  (one chunk: the CNAME and other items), :class:`Bye`, :class:`UnknownRtcp` (any other
  type, kept as bytes); each has ``encode()``.
* :func:`parse_rtcp` reads every packet of a compound datagram (bounded by
  :data:`MAX_PACKET`); anything that is not RTCP is an :class:`RtcpError` (a ``ValueError``).
* :func:`ntp_from_unix`, :func:`ntp_middle`: NTP timestamps and the 32 bits that an LSR
  field carries.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "MAX_PACKET", "VERSION", "RtcpError", "ReportBlock", "SenderReport", "ReceiverReport", "Sdes",
    "Bye", "UnknownRtcp", "RtcpPacket", "parse_rtcp", "encode_compound", "ntp_from_unix",
    "ntp_middle", "NTP_UNIX_OFFSET", "RTCP_SR", "RTCP_RR", "RTCP_SDES", "RTCP_BYE",
    "check_uint", "as_bytes",
]

MAX_PACKET: Final = 1500  # bytes: the largest RTP or RTCP datagram accepted or made
VERSION: Final = 2
NTP_UNIX_OFFSET: Final = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
RTCP_SR: Final = 200
RTCP_RR: Final = 201
RTCP_SDES: Final = 202
RTCP_BYE: Final = 203
SDES_CNAME: Final = 1


class RtcpError(ValueError):
    """A datagram that is not a valid (compound) RTCP packet."""


def check_uint(name: str, value: object, bits: int, error: type[ValueError]) -> int:
    """``value`` as an unsigned field of ``bits`` bits, or ``error``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise error(f"{name} must be an integer from 0 to {(1 << bits) - 1}, got {value!r:.40}")
    return value


def as_bytes(data: object, error: type[ValueError]) -> bytes:
    """``data`` as bytes of at most :data:`MAX_PACKET`, or ``error``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise error(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_PACKET:
        raise error(f"datagram of {len(data)} bytes is over {MAX_PACKET}")
    return data


def ntp_from_unix(t: float) -> int:
    """A 64-bit NTP timestamp (32.32 fixed point, seconds since 1900) from Unix time."""
    whole = int(t)
    frac = int((t - whole) * (1 << 32)) & 0xFFFF_FFFF
    return (((whole + NTP_UNIX_OFFSET) & 0xFFFF_FFFF) << 32) | frac


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp (what LSR carries)."""
    return (ntp >> 16) & 0xFFFF_FFFF


def _header(pt: int, count: int, body_len: int) -> bytes:
    return struct.pack("!BBH", (VERSION << 6) | count, pt, body_len // 4)


@dataclass(frozen=True)
class ReportBlock:
    ssrc: int
    fraction_lost: int = 0  # 0-255: lost / expected * 256 since the last report
    cumulative_lost: int = 0  # 24-bit signed
    highest_seq: int = 0  # extended highest sequence number received
    jitter: int = 0  # timestamp units
    lsr: int = 0  # middle 32 bits of the last SR's NTP time from this source
    dlsr: int = 0  # delay since that SR, 1/65536 s

    def __post_init__(self) -> None:
        for name in ("ssrc", "highest_seq", "jitter", "lsr", "dlsr"):
            check_uint(name, getattr(self, name), 32, RtcpError)
        check_uint("fraction_lost", self.fraction_lost, 8, RtcpError)
        c = self.cumulative_lost
        if isinstance(c, bool) or not isinstance(c, int) or not -0x800000 <= c <= 0x7FFFFF:
            raise RtcpError(f"cumulative_lost must fit 24 signed bits, got {c!r}")

    def encode(self) -> bytes:
        return struct.pack("!IB3sIIII", self.ssrc, self.fraction_lost,
                           (self.cumulative_lost & 0xFFFFFF).to_bytes(3, "big"),
                           self.highest_seq, self.jitter, self.lsr, self.dlsr)

    @classmethod
    def decode(cls, b: bytes) -> ReportBlock:
        ssrc, fraction, lost3, highest, jitter, lsr, dlsr = struct.unpack("!IB3sIIII", b)
        lost = int.from_bytes(lost3, "big")
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, fraction, lost, highest, jitter, lsr, dlsr)


def _check_blocks(blocks: object) -> None:
    if not isinstance(blocks, tuple) or len(blocks) > 31 \
            or not all(isinstance(b, ReportBlock) for b in blocks):
        raise RtcpError("reports must be a tuple of at most 31 ReportBlocks")


@dataclass(frozen=True)
class SenderReport:
    ssrc: int
    ntp: int  # 64-bit NTP timestamp
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()

    def __post_init__(self) -> None:
        for name in ("ssrc", "rtp_timestamp", "packet_count", "octet_count"):
            check_uint(name, getattr(self, name), 32, RtcpError)
        check_uint("ntp", self.ntp, 64, RtcpError)
        _check_blocks(self.reports)

    def encode(self) -> bytes:
        body = struct.pack("!IQIII", self.ssrc, self.ntp, self.rtp_timestamp, self.packet_count,
                           self.octet_count) + b"".join(r.encode() for r in self.reports)
        return _header(RTCP_SR, len(self.reports), len(body)) + body


@dataclass(frozen=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()

    def __post_init__(self) -> None:
        check_uint("ssrc", self.ssrc, 32, RtcpError)
        _check_blocks(self.reports)

    def encode(self) -> bytes:
        body = struct.pack("!I", self.ssrc) + b"".join(r.encode() for r in self.reports)
        return _header(RTCP_RR, len(self.reports), len(body)) + body


@dataclass(frozen=True)
class Sdes:
    """One SDES chunk: the source's CNAME and any other items as ``(type, value)``."""

    ssrc: int
    cname: str = ""
    items: tuple[tuple[int, bytes], ...] = ()

    def __post_init__(self) -> None:
        check_uint("ssrc", self.ssrc, 32, RtcpError)
        if not isinstance(self.cname, str) or len(self.cname.encode("utf-8")) > 255:
            raise RtcpError("cname must be a string of at most 255 bytes")
        for item in self.items:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes)
                    and isinstance(item[0], int) and 2 <= item[0] <= 255 and len(item[1]) <= 255):
                raise RtcpError("items must be (type 2-255, value of at most 255 bytes)")

    def chunk(self) -> bytes:
        out = bytearray(struct.pack("!I", self.ssrc))
        cname = self.cname.encode("utf-8")
        out += bytes([SDES_CNAME, len(cname)]) + cname
        for kind, value in self.items:
            out += bytes([kind, len(value)]) + value
        out += b"\0" * (4 - len(out) % 4)  # the end item, then padding to 32 bits
        return bytes(out)

    def encode(self) -> bytes:
        body = self.chunk()
        return _header(RTCP_SDES, 1, len(body)) + body


@dataclass(frozen=True)
class Bye:
    ssrcs: tuple[int, ...]
    reason: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.ssrcs, tuple) or len(self.ssrcs) > 31:
            raise RtcpError("ssrcs must be a tuple of at most 31 identifiers")
        for s in self.ssrcs:
            check_uint("ssrc", s, 32, RtcpError)
        if not isinstance(self.reason, str) or len(self.reason.encode("utf-8")) > 255:
            raise RtcpError("reason must be a string of at most 255 bytes")

    def encode(self) -> bytes:
        body = b"".join(struct.pack("!I", s) for s in self.ssrcs)
        if self.reason:
            r = self.reason.encode("utf-8")
            body += bytes([len(r)]) + r
            body += b"\0" * (-len(body) % 4)
        return _header(RTCP_BYE, len(self.ssrcs), len(body)) + body


@dataclass(frozen=True)
class UnknownRtcp:
    """An RTCP packet of a type this module does not read (APP, feedback, XR, …)."""

    packet_type: int
    count: int
    body: bytes = field(repr=False)

    def encode(self) -> bytes:
        pad = -len(self.body) % 4
        if not pad:
            return _header(self.packet_type, self.count, len(self.body)) + self.body
        # a body that is not whole 32-bit words (read from a packet whose padding was cut
        # off): padded again with the P bit (RFC 3550 6.4.1), so it must end a compound
        body = self.body + bytes(pad - 1) + bytes([pad])
        return struct.pack("!BBH", (VERSION << 6) | 0x20 | self.count, self.packet_type,
                           len(body) // 4) + body


RtcpPacket = SenderReport | ReceiverReport | Sdes | Bye | UnknownRtcp


def encode_compound(*packets: RtcpPacket) -> bytes:
    """Packets one after the other (RFC 3550: a compound packet starts with an SR or RR)."""
    data = b"".join(p.encode() for p in packets)
    if len(data) > MAX_PACKET:
        raise RtcpError(f"compound RTCP packet of {len(data)} bytes is over {MAX_PACKET}")
    return data


def _parse_sdes(count: int, body: bytes) -> list[Sdes]:
    out: list[Sdes] = []
    pos = 0
    for _ in range(count):
        if pos + 4 > len(body):
            raise RtcpError("SDES chunk cut short")
        ssrc = struct.unpack_from("!I", body, pos)[0]
        pos += 4
        cname = ""
        items: list[tuple[int, bytes]] = []
        while True:
            if pos >= len(body):
                raise RtcpError("SDES chunk without its end item")
            kind = body[pos]
            if kind == 0:
                pos = (pos + 4) & ~3  # the end item and padding to the next 32-bit boundary
                break
            if pos + 2 > len(body) or pos + 2 + body[pos + 1] > len(body):
                raise RtcpError("SDES item runs past the packet")
            value = body[pos + 2:pos + 2 + body[pos + 1]]
            pos += 2 + len(value)
            if kind == SDES_CNAME:
                cname = value.decode("utf-8", "replace")
            else:
                items.append((kind, value))
        out.append(Sdes(ssrc, cname, tuple(items)))
    return out


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Every packet of a compound RTCP datagram.  Raises :class:`RtcpError` for a datagram
    that is not RTCP (a bad version, a length that runs past the datagram, a short body,
    padding anywhere but in the last packet)."""
    data = as_bytes(data, RtcpError)
    if len(data) < 4:
        raise RtcpError(f"RTCP datagram of {len(data)} bytes is shorter than a header")
    out: list[RtcpPacket] = []
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise RtcpError("trailing bytes after the last RTCP packet")
        first, pt, words = struct.unpack_from("!BBH", data, pos)
        if first >> 6 != VERSION:
            raise RtcpError(f"RTCP version {first >> 6}, not 2")
        end = pos + 4 + 4 * words
        if end > len(data):
            raise RtcpError(f"RTCP packet of {4 + 4 * words} bytes runs past the datagram")
        body = data[pos + 4:end]
        if first & 0x20:
            if end != len(data):
                raise RtcpError("padding in an RTCP packet that is not the last")
            if not body or body[-1] == 0 or body[-1] > len(body):
                raise RtcpError("bad RTCP padding count")
            body = body[:-body[-1]]
        count = first & 0x1F
        if pt == RTCP_SR:
            if len(body) < 24 + 24 * count:
                raise RtcpError(f"SR with {count} report blocks is too short")
            ssrc, ntp, rtp_ts, packets, octets = struct.unpack_from("!IQIII", body)
            blocks = tuple(ReportBlock.decode(body[24 + 24 * i:48 + 24 * i]) for i in range(count))
            out.append(SenderReport(ssrc, ntp, rtp_ts, packets, octets, blocks))
        elif pt == RTCP_RR:
            if len(body) < 4 + 24 * count:
                raise RtcpError(f"RR with {count} report blocks is too short")
            blocks = tuple(ReportBlock.decode(body[4 + 24 * i:28 + 24 * i]) for i in range(count))
            out.append(ReceiverReport(struct.unpack_from("!I", body)[0], blocks))
        elif pt == RTCP_SDES:
            out.extend(_parse_sdes(count, body))
        elif pt == RTCP_BYE:
            if len(body) < 4 * count:
                raise RtcpError(f"BYE with {count} sources is too short")
            ssrcs = struct.unpack_from(f"!{count}I", body)
            reason = ""
            if len(body) > 4 * count:
                n = body[4 * count]
                if 4 * count + 1 + n > len(body):
                    raise RtcpError("BYE reason runs past the packet")
                reason = body[4 * count + 1:4 * count + 1 + n].decode("utf-8", "replace")
            out.append(Bye(tuple(ssrcs), reason))
        else:
            out.append(UnknownRtcp(pt, count, body))
        pos = end
    return out
