"""A small classic-libpcap writer for TCP conversations, so that tshark and scapy can read what
our code puts on the wire.

Pure Python (``struct``): Ethernet II + IPv4 + TCP, correct IPv4 and TCP checksums, link type 1
(Ethernet), microsecond timestamps.  Each :class:`TcpStream` starts with a three-way handshake
(SYN, SYN-ACK, ACK); after that every ``client_sent``/``server_sent`` call becomes one or more
data segments (at most :data:`MSS` bytes each, so a large write spans several segments) with
sequence and acknowledgement numbers consistent in both directions, which is what a dissector
needs to reassemble PDUs that cross segment boundaries.  Each data segment is followed by a pure
ACK from the other side.

    with PcapWriter(path) as writer:
        stream = writer.stream(client=("10.0.0.2", 51000), server=("10.0.0.1", 2000))
        stream.client_sent(frame_bytes)
        stream.server_sent(other_bytes)

Timestamps are synthetic (a fixed origin plus 1 ms per packet): the file is reproducible.
"""
from __future__ import annotations

import ipaddress
import struct
from pathlib import Path
from typing import BinaryIO

#: largest TCP payload per segment (Ethernet MTU 1500 - 20 IPv4 - 20 TCP)
MSS = 1460
LINKTYPE_ETHERNET = 1
PCAP_MAGIC = 0xA1B2C3D4
_ORIGIN = 1_700_000_000  # synthetic capture start (seconds since the epoch)

TCP_FIN, TCP_SYN, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x08, 0x10


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ip(addr: str) -> bytes:
    try:
        return ipaddress.IPv4Address(addr).packed
    except ValueError as exc:
        raise ValueError(f"not an IPv4 address: {addr!r}") from exc


def _mac(ip: bytes) -> bytes:
    return b"\x02\x00" + ip  # locally administered, derived from the IP: stable per host


class PcapWriter:
    """Writes a classic pcap file; call :meth:`close` (or use it as a context manager)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._file.write(struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
        self._count = 0
        self._ip_id = 1

    def stream(self, *, client: tuple[str, int], server: tuple[str, int]) -> TcpStream:
        """A new TCP connection from ``client`` to ``server``; the handshake is written now."""
        return TcpStream(self, client, server)

    def packet(self, src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int, flags: int,
               payload: bytes = b"") -> None:
        """Write one Ethernet/IPv4/TCP packet."""
        if self._file is None:
            raise ValueError("pcap writer is closed")
        sip, dip = _ip(src[0]), _ip(dst[0])
        for port in (src[1], dst[1]):
            if not 0 < port < 65536:
                raise ValueError(f"bad TCP port {port}")
        tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                          5 << 4, flags, 65535, 0, 0) + payload
        pseudo = sip + dip + struct.pack("!BBH", 0, 6, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), self._ip_id, 0x4000, 64, 6, 0, sip, dip)
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        frame = _mac(dip) + _mac(sip) + b"\x08\x00" + ip + tcp
        stamp = _ORIGIN * 1_000_000 + self._count * 1000
        self._count += 1
        self._file.write(struct.pack("<IIII", stamp // 1_000_000, stamp % 1_000_000, len(frame), len(frame)))
        self._file.write(frame)
        self._file.flush()  # a simulator killed by a test keeps every packet written so far

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TcpStream:
    """One TCP connection inside a :class:`PcapWriter`; created by :meth:`PcapWriter.stream`."""

    def __init__(self, writer: PcapWriter, client: tuple[str, int], server: tuple[str, int]) -> None:
        self.writer = writer
        self.client = client
        self.server = server
        self._seq = {"c": 1000, "s": 500_000}  # next sequence number each side sends
        writer.packet(client, server, self._seq["c"], 0, TCP_SYN)
        self._seq["c"] += 1
        writer.packet(server, client, self._seq["s"], self._seq["c"], TCP_SYN | TCP_ACK)
        self._seq["s"] += 1
        writer.packet(client, server, self._seq["c"], self._seq["s"], TCP_ACK)

    def client_sent(self, data: bytes) -> None:
        """Bytes the client wrote (split into segments of at most :data:`MSS`)."""
        self._send("c", bytes(data))

    def server_sent(self, data: bytes) -> None:
        """Bytes the server wrote."""
        self._send("s", bytes(data))

    def segments(self, side: str, chunks: list[bytes]) -> None:
        """Write ``chunks`` as separate segments from ``side`` ("client" or "server"), exactly as
        given (each at most :data:`MSS`): for tests that need a PDU split at a chosen byte."""
        key = {"client": "c", "server": "s"}[side]
        for chunk in chunks:
            if not 0 < len(chunk) <= MSS:
                raise ValueError(f"segment of {len(chunk)} bytes (1..{MSS})")
            self._segment(key, bytes(chunk))

    def _send(self, key: str, data: bytes) -> None:
        for start in range(0, len(data), MSS):
            self._segment(key, data[start:start + MSS])

    def _segment(self, key: str, chunk: bytes) -> None:
        other = "s" if key == "c" else "c"
        src, dst = (self.client, self.server) if key == "c" else (self.server, self.client)
        self.writer.packet(src, dst, self._seq[key], self._seq[other], TCP_PSH | TCP_ACK, chunk)
        self._seq[key] += len(chunk)
        self.writer.packet(dst, src, self._seq[other], self._seq[key], TCP_ACK)
