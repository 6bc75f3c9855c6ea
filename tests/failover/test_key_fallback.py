"""The drivers' side of key rotation, over real TCP on 127.0.0.1: the node link's dialer
(failover/link.py) and the replication dialers (failover/replchan.py) fall back to their other
accepted key when the peer refuses the current one, report the key id each connection uses,
and take the keys anew for each connection (a change never touches a connection that is up).
``trio.fail_after`` is only a hang guard."""
from __future__ import annotations

import os

import trio

from failover.config import Address, parse_config
from failover.core.fields import key_id
from failover.core.replwire import Channel, DbState
from failover.core.state import Role
from failover.core.wire import NEED_DATA, Hello, LinkConnection, LinkError
from failover.eventlog import EventLog
from failover.link import PeerLink
from failover.replchan import ReplEndpoint
from lab.pair import free_port
from tests.util import EventLogRecorder, until

HOST = "127.0.0.1"
K_OLD = bytes(range(32))
K_NEW = bytes(range(100, 132))
GUARD = 10.0


class Ring:
    """A stand-in for the node manager's key ring: the accepted keys, changeable."""

    def __init__(self, *keys: bytes):
        self.keys = keys

    def __call__(self) -> tuple[bytes, ...]:
        return self.keys


# ---- node link ------------------------------------------------------------------------------

async def test_link_dialer_falls_back_to_the_old_key_and_says_so(tmp_path):
    """a has rotated (new, old); its peer only knows the old key: the first HELLO is refused,
    the next attempt uses the old key and the link is up; status shows the id."""
    peer_port = free_port()
    cfg = parse_config({
        "node": {"name": "a", "role": "primary", "data_dir": str(tmp_path / "d"),
                 "key_file": str(tmp_path / "k")},
        "link": {"listen": f"127.0.0.1:{free_port()}", "peer": f"127.0.0.1:{peer_port}",
                 "peer_name": "b", "reconnect_min": 0.01, "reconnect_max": 0.05},
        "ports": {"loopback": {"enabled": False}},
        "replication": {"enabled": False},
    }, str(tmp_path / "a.toml"))
    events = EventLog(cfg.node.data_dir / "events.jsonl", "a", console=None)
    inbox_send, _inbox = trio.open_memory_channel(100)
    ring = Ring(K_NEW, K_OLD)
    link = PeerLink(cfg, ring, inbox_send, events)
    hellos: list[str] = []  # outcome of each HELLO the old peer got

    async def old_peer(stream: trio.SocketStream) -> None:
        conn = LinkConnection(keys=(K_OLD,), node="b", role=Role.SECONDARY, dialer=False,
                              nonce=os.urandom(16), expected_peer="a")
        try:
            while (e := conn.next_event()) is NEED_DATA:
                conn.receive_data(await stream.receive_some(4096))
        except LinkError as err:
            hellos.append(f"refused: {err}")
            await stream.aclose()
            return
        assert isinstance(e, Hello)
        hellos.append("accepted")
        await stream.send_all(conn.hello())
        while await stream.receive_some(4096):
            pass

    listeners = await trio.open_tcp_listeners(peer_port, host=HOST)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, old_peer, listeners)
            await nursery.start(link.run)
            await until(lambda: link.out_connected)
            assert hellos[0].startswith("refused") and "do not accept" in hellos[0]
            assert hellos[-1] == "accepted"
            assert link.stats()["out_key_id"] == key_id(K_OLD).hex()
            log = [e for e in _read(events) if e["event"] == "link_old_key"]
            assert len(log) == 1 and key_id(K_OLD).hex() in log[0]["message"]
            assert K_OLD.hex() not in str(_read(events)) and K_NEW.hex() not in str(_read(events))

            # the peer dials us with the old key: accepted (it is still in our ring)
            stream = await trio.open_tcp_stream(HOST, cfg.link.listen.port)
            conn = LinkConnection(keys=(K_OLD,), node="b", role=Role.SECONDARY, dialer=True,
                                  nonce=os.urandom(16), expected_peer="a")
            await stream.send_all(conn.hello())
            while (e := conn.next_event()) is NEED_DATA:
                conn.receive_data(await stream.receive_some(4096))
            assert isinstance(e, Hello) and conn.key_id == key_id(K_OLD)
            await stream.aclose()

            # the window ends: the ring holds only the new key; the connection that is up
            # stays, a new inbound HELLO with the old key is refused
            ring.keys = (K_NEW,)
            stream = await trio.open_tcp_stream(HOST, cfg.link.listen.port)
            conn = LinkConnection(keys=(K_OLD,), node="b", role=Role.SECONDARY, dialer=True,
                                  nonce=os.urandom(16), expected_peer="a")
            await stream.send_all(conn.hello())
            data = b""
            try:
                while chunk := await stream.receive_some(4096):
                    data += chunk
            except trio.BrokenResourceError:
                pass
            assert data == b""  # closed without an answer
            assert link.out_connected and link.stats()["out_key_id"] == key_id(K_OLD).hex()
            nursery.cancel_scope.cancel()
    events.close()


def _read(events: EventLog) -> list[dict]:
    import json
    return [json.loads(line) for line in events.path.read_text().splitlines() if line.strip()]


# ---- replication ----------------------------------------------------------------------------

def _state() -> DbState:
    return DbState(head_seq=1, head_term=2, first_seq=1, applied_seq=0, applied_term=0,
                   checksum=11, active=True)


async def _talk(chan) -> None:
    """A session that speaks first (proving the connection) and then listens."""
    await chan.send(_state())
    while True:
        await chan.receive()


def _endpoint(node: str, keys, events, peer_port: int = 0) -> ReplEndpoint:
    return ReplEndpoint(node=node, role=Role.PRIMARY if node == "alpha" else Role.SECONDARY,
                        peer_name="beta" if node == "alpha" else "alpha", keys=keys,
                        listen=Address(HOST, 0), peer=Address(HOST, peer_port), events=events,
                        sessions_out={Channel.DB: _talk}, sessions_in={Channel.DB: _talk},
                        reconnect_min=0.01, reconnect_max=0.1, handshake_timeout=2.0)


async def test_replication_dialer_falls_back_and_reports_key_ids():
    """alpha rotated (new, old), beta has only the old key: alpha's dialer is refused once,
    then connects with the old key; beta's dialer uses the old key, which alpha accepts."""
    ra, rb = EventLogRecorder(), EventLogRecorder()
    a = _endpoint("alpha", Ring(K_NEW, K_OLD), ra)
    b_ring = Ring(K_OLD)
    b = _endpoint("beta", b_ring, rb)
    old_id = key_id(K_OLD).hex()
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            a.peer = Address(HOST, b.listen_port)
            b.peer = Address(HOST, a.listen_port)
            await until(lambda: a.stats()["db"]["out_connected"] and b.stats()["db"]["out_connected"]
                        and a.stats()["db"]["in_connected"] and b.stats()["db"]["in_connected"])
            assert any("do not accept" in r["message"] for r in rb.named("repl_reject"))
            for ep in (a, b):
                db = ep.stats()["db"]
                assert (db["out_key_id"], db["in_key_id"]) == (old_id, old_id), db
            # beta gets the new file: its connections that are up keep the old key
            b_ring.keys = (K_NEW, K_OLD)
            assert b.stats()["db"]["out_key_id"] == old_id
            assert K_OLD.hex() not in str(a.stats()) + str(b.stats()) + str(ra.records + rb.records)
            nursery.cancel_scope.cancel()
