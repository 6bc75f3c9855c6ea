"""The test harness's port picker: a port it hands out is free when picked and is not handed
out again by the same process (CI once gave a node's loopback trunk and its replication
listener the same number, and the second to bind failed)."""
from __future__ import annotations

import socket

from lab.pair import _ephemeral_range, free_port, free_udp_block, udp_block_free


def test_free_port_never_hands_out_the_same_port_twice():
    # 3,000 picks from ~36,000 ports: with independent random picks a repeat is all but
    # certain (birthday bound), so this fails if the picker forgets what it gave out.
    lo, hi = _ephemeral_range()
    ports = [free_port() for _ in range(3000)]
    assert len(set(ports)) == len(ports)
    assert all(not (lo <= p <= hi) for p in ports)


def test_a_port_handed_out_is_bindable():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen(1)


def test_udp_blocks_never_overlap_and_are_free():
    blocks = [free_udp_block(16) for _ in range(200)]  # 3,200 ports: under the 4,000 kept
    ports = [p for b in blocks for p in range(b, b + 16)]
    assert len(set(ports)) == len(ports)
    assert udp_block_free(blocks[-1], 16)


def test_udp_block_respects_top():
    base = free_udp_block(8, top=40000)
    assert base + 8 <= 40000
