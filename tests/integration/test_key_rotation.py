"""Key rotation on a real pair, under traffic, without a failover (docs/configuration.md,
"The key file").

Two ``vmha node`` processes on loopback, each with its own key file; the node link and the
replication channels go through the pair's TCP relays.  While calls are placed on the active
node's loopback trunk and configuration-database writes go to it, the test rotates the key
on ``a`` with the real ``vmha configure --rotate-key``, forces every connection to be made
again (``TcpRelay.reset``), gives ``b`` a bad key file and a SIGHUP (nothing changes), copies
the good file to ``b``, forces new connections again, and finally ends the previous key's
window.  It observes: the key ids each connection uses (status), the event logs, the node
states and terms sampled throughout, every call's outcome, every written row on both nodes,
and a dialer of its own that is refused with the old key once the window is over.  Waits are
hang guards, never performance limits.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import trio

from failover.config import load_config
from failover.core.fields import key_id
from failover.core.replwire import Channel, ReplConnection, ReplError
from failover.core.replwire import Hello as ReplHello
from failover.core.state import Role
from failover.core.wire import NEED_DATA, Hello, LinkConnection, LinkError
from failover.keys import KeyRing, load_keys, save_keys
from lab.loopback_client import place_call
from lab.pair import Pair
from tests.integration.conftest import GUARD, events_of, status, until, wait_active, wait_events

pytestmark = pytest.mark.multiprocess

HOST = "127.0.0.1"


def ids(node_status: dict) -> dict:
    """The key ids of every connection of a node (link and replication channels)."""
    link = node_status["peer"]["link"]
    chans = node_status["replication"]["channels"]
    out = {"link_out": link["out_key_id"], "link_in": link["in_key_id"]}
    for ch in ("db", "files"):
        out[f"{ch}_out"] = chans[ch]["out_key_id"]
        out[f"{ch}_in"] = chans[ch]["in_key_id"]
    return out


async def all_connections_use(pair: Pair, kid: str, what: str) -> None:
    def check():
        got = {}
        for n in (pair.a, pair.b):
            st = n.status()
            if st is None:
                return None
            got[n.name] = ids(st)
        return got if all(v == kid for g in got.values() for v in g.values()) else None
    await until(check, what)


def reset_relays(pair: Pair) -> None:
    for r in pair.relays:
        r.reset()


class Traffic:
    """Calls on a's trunk and database writes to a, until stopped; and both nodes' (state,
    term) sampled all along."""

    def __init__(self, pair: Pair):
        self.pair = pair
        self.calls: list = []
        self.writes: list[tuple[str, dict | None]] = []
        self.samples: list[dict] = []
        self.stop = trio.Event()

    async def run(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._calls)
        nursery.start_soon(self._writes)
        nursery.start_soon(self._sample)

    async def _calls(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            self.calls.append(await place_call(HOST, self.pair.loop_a, f"rot-{i}", hold=0.05,
                                               reply_timeout=GUARD))
            await trio.sleep(0.05)

    async def _writes(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            ext = f"{7000 + i}"
            row = {"extension": ext, "name": f"User {ext}", "mailbox": f"mb{ext}",
                   "mwi_method": "sip", "notify": []}
            req = {"op": "db_write", "ops": [{"op": "put", "table": "subscribers", "row": row}]}
            r = await trio.to_thread.run_sync(lambda req=req: self.pair.a.admin(req, timeout=10))
            self.writes.append((ext, r))
            await trio.sleep(0.1)

    async def _sample(self) -> None:
        while not self.stop.is_set():
            for n in (self.pair.a, self.pair.b):
                st = await status(n)
                self.samples.append({"node": n.name, "state": st["node"]["state"] if st else None,
                                     "term": st["node"]["term"] if st else None})
            await trio.sleep(0.05)


async def answered_with(key: bytes, node) -> tuple[bool, bool]:
    """Dial ``node``'s link and replication listeners directly with ``key``, as the peer
    would: (the link answered our HELLO, the replication listener answered it)."""
    cfg = load_config(node.config)
    peer = "b" if node.name == "a" else "a"
    role = Role.SECONDARY if node.name == "a" else Role.PRIMARY
    link = LinkConnection(keys=(key,), node=peer, role=role, dialer=True, nonce=os.urandom(16),
                          expected_peer=node.name)
    repl = ReplConnection(keys=(key,), node=peer, role=role, channel=Channel.FILES, dialer=True,
                          nonce=os.urandom(16), expected_peer=node.name)
    out = []
    for port, conn in ((cfg.link.listen.port, link), (cfg.replication.listen.port, repl)):
        stream = await trio.open_tcp_stream(HOST, port)
        try:
            await stream.send_all(conn.hello())
            with trio.fail_after(GUARD):
                while (e := conn.next_event()) is NEED_DATA:
                    conn.receive_data(await stream.receive_some(4096))
            out.append(isinstance(e, (Hello, ReplHello)))
        except (LinkError, ReplError, trio.BrokenResourceError, OSError):
            out.append(False)  # closed without an answer (or reset)
        finally:
            await stream.aclose()
    return out[0], out[1]


def vmha(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "failover.cli", *args], capture_output=True,
                          text=True, timeout=60)


async def test_rotate_key_under_traffic_without_failover(pair_dir):
    b_key = pair_dir / "b.key"
    with Pair(pair_dir, extra_b={"node": {"key_file": str(b_key)}}) as pair:
        a_key = pair_dir / "link.key"
        save_keys(b_key, load_keys(a_key))  # each node its own copy, as on two machines
        old = load_keys(a_key).current
        old_id = key_id(old).hex()
        pair.start(first="a")
        st = await wait_active(pair, "a")
        term = st["a"]["node"]["term"]
        assert st["a"]["keys"] == {"current_id": old_id, "previous_id": None, "previous_until": None}
        await all_connections_use(pair, old_id, "every connection up with the first key")

        traffic = Traffic(pair)
        async with trio.open_nursery() as nursery:
            await traffic.run(nursery)
            await until(lambda: len(traffic.calls) >= 3 and len(traffic.writes) >= 3, "traffic")

            # 1. rotate on a with the real command; a picks the file up by itself
            done = await trio.to_thread.run_sync(
                lambda: vmha("configure", "--rotate-key", "--config", str(pair.a.config), "--window", "1h"))
            assert done.returncode == 0, done.stderr
            ring = load_keys(a_key)
            new, new_id = ring.current, key_id(ring.current).hex()
            assert ring.previous == old and new_id in done.stdout and new.hex() not in done.stdout
            await wait_events(pair.a, "keys_loaded", "info")
            st_a = await status(pair.a)
            assert st_a["keys"]["current_id"] == new_id and st_a["keys"]["previous_id"] == old_id
            text = await trio.to_thread.run_sync(lambda: vmha("status", "--config", str(pair.a.config)))
            assert f"link key: {new_id}; previous {old_id} accepted until " in text.stdout, text
            assert new.hex() not in text.stdout and old.hex() not in text.stdout
            # connections that were up are untouched by the rotation
            await all_connections_use(pair, old_id, "connections kept across the rotation")

            # 2. every connection made again: a's dialers are refused with the new key by b
            #    (which has not got the file) and fall back to the old one; b's are accepted
            reset_relays(pair)
            await wait_events(pair.b, "link_reject", where=lambda e: "do not accept" in e["message"])
            await wait_events(pair.a, "link_old_key", "warning")
            await all_connections_use(pair, old_id, "reconnected with the old key while b lacks the new")

            # 3. a bad file on b and a SIGHUP: an error, nothing changes, b keeps running
            b_key.write_bytes(b"not a key\n")
            pair.b.signal(signal.SIGHUP)
            await wait_events(pair.b, "key_file_error", "error", where=lambda e: "SIGHUP" in e["message"])
            assert pair.b.proc.poll() is None
            assert (await status(pair.b))["keys"]["current_id"] == old_id

            # 4. the operator copies a's file to b; b picks it up by itself
            save_keys(b_key, load_keys(a_key))
            await wait_events(pair.b, "keys_loaded", "info")
            assert (await status(pair.b))["keys"] == st_a["keys"]

            # 5. new connections now use the new key everywhere
            reset_relays(pair)
            await all_connections_use(pair, new_id, "reconnected with the new key")

            # 6. the window ends early (the operator shortens line 2; both nodes re-read it)
            short = KeyRing(new, old, time.time() + 2)
            save_keys(a_key, short)
            save_keys(b_key, short)
            for n in (pair.a, pair.b):
                await wait_events(n, "key_previous_expired", "info")
            await until(lambda: len(traffic.calls) >= 20 and len(traffic.writes) >= 20, "more traffic")
            traffic.stop.set()

        # after the window the old key is refused by both listeners, the new one answered
        for n in (pair.a, pair.b):
            assert await answered_with(old, n) == (False, False), n.name
            assert await answered_with(new, n) == (True, True), n.name
        await wait_events(pair.a, "repl_reject", where=lambda e: "do not accept" in e["message"])

        # no failover at any moment: a active in its term throughout, b never active
        assert traffic.samples
        for s in traffic.samples:
            if s["node"] == "a":
                assert (s["state"], s["term"]) == ("active", term), s
            else:
                assert s["state"] == "inactive", s
        assert len(events_of(pair.a, "activating")) == 1 and not events_of(pair.b, "activating")
        # b never went without a's heartbeats for the takeover time (it would say peer_up again)
        assert len(events_of(pair.b, "peer_up")) == 1, events_of(pair.b, "peer_up")
        # every call answered by a in its term; every write acknowledged and replicated
        assert traffic.calls and all(c.result == "answered" and c.node == "a" and c.term == term
                                     for c in traffic.calls), traffic.calls
        assert all(r and r.get("ok") for _, r in traffic.writes), traffic.writes
        want = {ext for ext, _ in traffic.writes}

        def replicated():
            r = pair.b.admin({"op": "db_list", "table": "subscribers"})
            return r and r.get("ok") and want <= {x["extension"] for x in r["rows"]}
        await until(replicated, "every write on b")
        # the links are up with the new key, and no key bytes were ever written anywhere
        await all_connections_use(pair, new_id, "connections up at the end")
        for path in [pair_dir / "a.log", pair_dir / "b.log",
                     *(load_config(n.config).node.data_dir / "events.jsonl" for n in (pair.a, pair.b))]:
            text = path.read_text(errors="replace").lower()
            assert old.hex() not in text and new.hex() not in text, path
