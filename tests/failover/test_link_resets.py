"""The node link's driver (failover/link.py) against peers that reset the connection.

A peer that closes with RST (``SO_LINGER`` 0) instead of FIN makes the next read or write fail
with ``ConnectionResetError``; inside a Trio nursery that error leaves as an exception group.
Each test runs a real ``PeerLink`` on loopback inside the test's own nursery, so an error that
escapes the link fails the test; the peer is a plain socket that speaks the link's real
handshake (``LinkConnection``) and then misbehaves.  The link must survive, count what
happened, and work again with the next good connection: the dialer reconnects, the listener
goes on accepting.
"""
from __future__ import annotations

import os
import socket
import struct

import pytest
import trio

from failover.config import parse_config
from failover.core import events as ev
from failover.core.state import Mode, Role, ServiceHealth, State
from failover.core.wire import NEED_DATA, Command, CommandKind, Hello, LinkConnection, Status
from failover.eventlog import EventLog
from failover.link import PeerLink
from lab.pair import free_port

PSK = b"k" * 32
GUARD = 10.0  # hang guard only


def rst_close(sock: trio.socket.SocketType | socket.socket) -> None:
    """Close with RST: linger on, timeout 0."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def make_link(tmp_path, peer_port: int):
    listen = free_port()
    cfg = parse_config({
        "node": {"name": "a", "role": "primary", "data_dir": str(tmp_path / "d"),
                 "key_file": str(tmp_path / "k")},
        "link": {"listen": f"127.0.0.1:{listen}", "peer": f"127.0.0.1:{peer_port}", "peer_name": "b",
                 "reconnect_min": 0.01, "reconnect_max": 0.05, "connect_timeout": 1.0},
        "ports": {"loopback": {"enabled": False}},
        "replication": {"enabled": False},
    }, str(tmp_path / "a.toml"))
    events = EventLog(cfg.node.data_dir / "events.jsonl", "a", console=None)
    inbox_send, inbox_recv = trio.open_memory_channel(100)
    return PeerLink(cfg, PSK, inbox_send, events), inbox_recv, listen


def status_frame(term: int = 1) -> Status:
    return Status(node="b", role=Role.SECONDARY, state=State.INACTIVE, term=term,
                  service=ServiceHealth.RUNNING, mode=Mode.AUTOMATIC, eligible=True, licensed=True,
                  hold=False, shutting_down=False, calls=0, ports=0, repl_pos=0,
                  ping_interval_ms=100, uptime_ms=1)


# ============================================================================ the link dials a bad peer

async def accept_and_greet(listener: trio.SocketListener, greet: bool = True):
    """Accept the link's dial; read its HELLO; answer with ours when ``greet``."""
    stream = await listener.accept()
    conn = LinkConnection(keys=(PSK,), node="b", role=Role.SECONDARY, dialer=False, nonce=os.urandom(16),
                          expected_peer="a")
    while True:
        e = conn.next_event()
        if isinstance(e, Hello):
            break
        assert e is NEED_DATA, e
        conn.receive_data(await stream.receive_some(4096))
    if greet:
        await stream.send_all(conn.hello())
    return stream, conn


def rst_stream(stream: trio.SocketStream) -> None:
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


@pytest.mark.parametrize("moment", ["handshake", "established", "garbage", "half_frame"])
async def test_dialer_survives_a_peer_that_resets_and_reconnects(tmp_path, moment):
    peer_port = free_port()
    listeners = await trio.open_tcp_listeners(peer_port, host="127.0.0.1")
    link, _inbox, _ = make_link(tmp_path, peer_port)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run)
            for round_ in range(3):  # several resets in a row, the link dials again each time
                stream, conn = await accept_and_greet(listeners[0], greet=moment != "handshake")
                if moment != "handshake":
                    # established: the link sends its heartbeats on this connection
                    while not link.out_connected:
                        await trio.sleep(0.005)
                    link.send(Command(CommandKind.STEP_DOWN, round_ + 1, "test"))
                    got = b""
                    while len(got) < 8:
                        got += await stream.receive_some(4096)
                if moment == "garbage":
                    await stream.send_all(os.urandom(300))
                elif moment == "half_frame":
                    await stream.send_all(b"VM\x01\x02\x40")  # a header cut short
                rst_stream(stream)
            # the fourth connection is a good one: the link is up and sends frames on it
            stream, conn = await accept_and_greet(listeners[0])
            while not link.out_connected:
                await trio.sleep(0.005)
            link.send(Command(CommandKind.STEP_DOWN, 9, "test"))
            got = b""
            while len(got) < 8:
                got += await stream.receive_some(4096)
            assert got.startswith(b"VM")
            nursery.cancel_scope.cancel()
    assert link.counters["connects"] >= (4 if moment != "handshake" else 1)
    link.events.close()


# ============================================================================ a bad peer dials the link

async def dial_and_greet(port: int):
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = LinkConnection(keys=(PSK,), node="b", role=Role.SECONDARY, dialer=True, nonce=os.urandom(16),
                          expected_peer="a")
    await stream.send_all(conn.hello())
    while True:
        e = conn.next_event()
        if isinstance(e, Hello):
            return stream, conn
        assert e is NEED_DATA, e
        conn.receive_data(await stream.receive_some(4096))


@pytest.mark.parametrize("moment", ["before_hello", "mid_hello", "after_hello", "mid_frame",
                                    "garbage", "after_status"])
async def test_listener_survives_peers_that_reset_and_hears_the_next_good_one(tmp_path, moment):
    link, inbox, port = make_link(tmp_path, free_port())  # nobody at the peer address: dial fails
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run)
            for _ in range(3):
                if moment in ("before_hello", "mid_hello"):
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    if moment == "mid_hello":
                        hello = LinkConnection(keys=(PSK,), node="b", role=Role.SECONDARY, dialer=True,
                                               nonce=os.urandom(16), expected_peer="a").hello()
                        await stream.send_all(hello[: len(hello) // 2])
                else:
                    stream, conn = await dial_and_greet(port)
                    if moment == "mid_frame":
                        frame = conn.send(status_frame())
                        await stream.send_all(frame[: len(frame) - 5])
                    elif moment == "garbage":
                        await stream.send_all(os.urandom(500))
                    elif moment == "after_status":
                        await stream.send_all(conn.send(status_frame()))
                        assert isinstance(await inbox.receive(), ev.PeerHeartbeat)
                rst_stream(stream)
            # a good peer is heard after all that
            stream, conn = await dial_and_greet(port)
            await stream.send_all(conn.send(status_frame(7)))
            hb = await inbox.receive()
            assert isinstance(hb, ev.PeerHeartbeat) and hb.term == 7
            await stream.aclose()
            nursery.cancel_scope.cancel()
    link.events.close()


async def test_an_unexpected_error_in_one_inbound_connection_is_counted_not_raised(tmp_path):
    """A handler failure that is not a connection error (a bug: here an injected ValueError
    while delivering a frame) is the per-connection backstop's job: counted and logged, and the
    listener goes on serving the next connection."""
    link, inbox, port = make_link(tmp_path, free_port())
    real_deliver = link._deliver

    async def broken_once(e) -> None:
        link._deliver = real_deliver
        raise ValueError("injected fault")
    link._deliver = broken_once
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run)
            stream, conn = await dial_and_greet(port)
            await stream.send_all(conn.send(status_frame()))
            while not link.failures.counts["link.inbound"]:
                await trio.sleep(0.005)
            stream2, conn2 = await dial_and_greet(port)
            await stream2.send_all(conn2.send(status_frame(5)))
            hb = await inbox.receive()
            assert hb.term == 5
            nursery.cancel_scope.cancel()
    assert "ValueError: injected fault" in link.failures.last["link.inbound"]
    lines = (tmp_path / "d" / "events.jsonl").read_text()
    assert "link.inbound failed: ValueError: injected fault" in lines
    link.events.close()
