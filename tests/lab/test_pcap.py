"""lab.pcap: the file is a valid classic pcap whose IPv4/TCP checksums and sequence numbers a
third party (scapy's reader and checksum code) accepts."""
from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.utils import rdpcap

from lab.pcap import MSS, PcapWriter, checksum


def test_internet_checksum_known_values():
    # RFC 1071's worked example: the sum of these words is 0xddf2, so the checksum is 0x220d
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert checksum(b"") == 0xFFFF
    assert checksum(b"\x01") == 0xFEFF  # odd length: padded with a zero byte


def test_handshake_data_and_checksums(tmp_path):
    path = tmp_path / "t.pcap"
    big = bytes(range(256)) * 12  # 3072 bytes: three segments
    with PcapWriter(path) as writer:
        stream = writer.stream(client=("10.0.0.2", 40000), server=("10.0.0.1", 2000))
        stream.client_sent(b"hello")
        stream.server_sent(big)
        stream.segments("client", [b"a", b"bc"])
    raw = path.read_bytes()
    assert struct.unpack("<IHHiIII", raw[:24]) == (0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    packets = rdpcap(str(path))
    flags = [str(p[TCP].flags) for p in packets]
    assert flags[:3] == ["S", "SA", "A"]
    for pkt in packets:
        ip_sum, tcp_sum = pkt[IP].chksum, pkt[TCP].chksum
        fresh = IP(bytes(pkt[IP]))
        del fresh.chksum
        del fresh[TCP].chksum
        rebuilt = IP(bytes(fresh))
        assert (rebuilt.chksum, rebuilt[TCP].chksum) == (ip_sum, tcp_sum)
    # reassemble each direction by sequence number and check the bytes and segment sizes
    streams: dict[int, dict[int, bytes]] = {40000: {}, 2000: {}}
    isn = {}
    for pkt in packets:
        tcp = pkt[TCP]
        if "S" in str(tcp.flags):
            isn[tcp.sport] = tcp.seq + 1
        data = bytes(tcp.payload)
        if data:
            assert len(data) <= MSS
            streams[tcp.sport][tcp.seq] = data
    for port, want in ((40000, b"helloabc"), (2000, big)):
        got, seq = b"", isn[port]
        while seq in streams[port]:
            got += streams[port][seq]
            seq += len(streams[port][seq])
        assert got == want
    # every data segment is acknowledged by the other side
    acks = {(p[TCP].sport, p[TCP].ack) for p in packets if not bytes(p[TCP].payload)}
    assert (2000, isn[40000] + 8) in acks and (40000, isn[2000] + len(big)) in acks


def test_bad_input_is_refused(tmp_path):
    writer = PcapWriter(tmp_path / "x.pcap")
    with pytest.raises(ValueError, match="IPv4"):
        writer.stream(client=("10.0.0.300", 1), server=("10.0.0.1", 2000))
    with pytest.raises(ValueError, match="port"):
        writer.stream(client=("10.0.0.2", 0), server=("10.0.0.1", 2000))
    stream = writer.stream(client=("10.0.0.2", 1), server=("10.0.0.1", 2000))
    with pytest.raises(ValueError, match="segment"):
        stream.segments("client", [b"x" * (MSS + 1)])
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        stream.client_sent(b"late")
