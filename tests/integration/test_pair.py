"""A real pair on loopback: two ``vmha node`` processes (each with its messaging-service child),
a TCP relay on the node link that the test can cut and heal, and simulated calls on the
loopback trunks (``lab.loopback_client``).

Each test asserts outcomes it observes: node states and terms from the admin status, call
outcomes from the trunk, process lifetimes, the event logs.  Waits are bounded by ``GUARD``
(a hang guard, never a performance limit); nothing here judges how fast a takeover is, the
benchmarks measure that.  Every test runs its pair in a ``with Pair(...)`` block, so every
process is stopped by PID even when the test fails.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys

import pytest
import trio

from failover.configure import load_key
from failover.core.state import Mode, Role, ServiceHealth, State
from failover.core.wire import Command, CommandKind, Dropped, Hello, LinkConnection, Status
from lab.loopback_client import open_call, place_call
from lab.pair import Pair
from tests.integration.conftest import (
    GUARD,
    events_of,
    link_listen,
    pid_alive,
    status,
    until,
    wait_active,
    wait_events,
    watch_states,
)

pytestmark = pytest.mark.multiprocess

HOST = "127.0.0.1"
PEER = {"a": "b", "b": "a"}


async def wait_roles(pair: Pair, active: str, other_state: str | tuple[str, ...], what: str) -> dict:
    """Wait until ``active`` is active and its peer is in ``other_state`` (one or several)."""
    other = PEER[active]
    wanted = (other_state,) if isinstance(other_state, str) else other_state

    def check():
        sa, so = pair.node(active).status(), pair.node(other).status()
        if sa and so and sa["node"]["state"] == "active" and so["node"]["state"] in wanted:
            return {active: sa, other: so}
        return None

    return await until(check, what)


async def still_in_progress(call, settle: float = 0.3) -> bool:
    """True if the trunk has neither dropped the call nor closed it (reads for ``settle``
    seconds: anything the trunk sent before now is seen)."""
    with trio.move_on_after(settle):
        await call.wait_dropped()
    return call.in_progress


# ============================================================================ 1. start order


async def test_start_primary_first(pair_dir):
    with Pair(pair_dir) as pair:
        pair.start(first="a")
        st = await wait_active(pair, "a")
        term = st["a"]["node"]["term"]
        assert term > 0 and term % 2 == 0, "the primary takes even terms"
        assert st["b"]["node"]["service"] == "running"
        for s in await watch_states(pair, 1.0):
            assert s == {"a": ("active", term), "b": ("inactive", 0)}, s


async def test_start_secondary_first_stays_active(pair_dir):
    with Pair(pair_dir) as pair:
        t0 = trio.current_time()
        pair.b.start()
        # the secondary alone: it becomes active once startup_wait passes without the peer
        st_b = await until(lambda: (s := pair.b.status()) and s["node"]["state"] == "active" and s,
                           "the secondary, started alone, to become active")
        term_b = st_b["node"]["term"]
        assert term_b % 2 == 1, "the secondary takes odd terms"
        assert not st_b["peer"]["reachable"]
        startup = await wait_events(pair.b, "startup", "warning")
        assert startup and "first node started" in startup[-1]["fields"]["cause"], startup
        await trio.sleep_until(t0 + 1.5)  # the primary starts ~1.5 s after the secondary
        pair.a.start()
        st = await wait_active(pair, "b", "the primary to join as inactive")
        assert st["b"]["node"]["term"] == term_b
        assert st["a"]["node"]["service"] == "running"
        # the secondary stays active: the primary does not take over on joining
        for s in await watch_states(pair, 1.5):
            assert s["b"] == ("active", term_b) and s["a"][0] == "inactive", s
        assert not any(e["event"] in ("activating", "failback") for e in pair.a.events())


# ============================================================================ 2. service crash


async def test_kill9_active_service_fails_over(pair_dir):
    with Pair(pair_dir) as pair:
        pair.start(first="a")
        st = await wait_active(pair, "a")
        term_a = st["a"]["node"]["term"]
        old_pid = await trio.to_thread.run_sync(pair.a.service_pid)
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)

        st = await wait_active(pair, "b", "b active after a's service was killed")
        term_b = st["b"]["node"]["term"]
        assert term_b > term_a and term_b % 2 == 1

        # a restarts its service and stays inactive with it running
        def restarted():
            s = pair.a.status()
            pid = pair.a.service_pid()
            return s if (s and s["node"]["service"] == "running" and pid not in (None, old_pid)) else None
        st_a = await until(restarted, "a's messaging service to be restarted")
        assert st_a["node"]["state"] == "inactive" and st_a["node"]["term"] == term_a
        assert not pid_alive(old_pid)
        st = await wait_active(pair, "b")
        assert st["b"]["node"]["term"] == term_b
        for s in await watch_states(pair, 0.5):
            assert s == {"a": ("inactive", term_a), "b": ("active", term_b)}, s

        down = await wait_events(pair.a, "service_down", "error")
        # whichever a's node manager saw first: the control socket's EOF or the exit status
        assert down and ("signal 9" in down[0]["message"]
                         or "control channel closed" in down[0]["message"]), down
        failover = await wait_events(pair.b, "failover", "warning")
        assert failover, pair.b.events()
        cause = failover[-1]["fields"]["cause"]
        assert cause.startswith("peer service") and "a is" in cause, cause  # names a's service
        assert failover[-1]["fields"]["term"] == term_b

        out = await place_call(HOST, pair.loop_b, "after-crash-1", hold=0.05)
        assert (out.result, out.node, out.term) == ("answered", "b", term_b), out


# ============================================================================ 3. node manager crash


async def test_kill9_active_node_manager(pair_dir):
    with Pair(pair_dir) as pair:
        pair.start(first="a")
        st = await wait_active(pair, "a")
        term_a = st["a"]["node"]["term"]
        service_pid = await trio.to_thread.run_sync(pair.a.service_pid)
        assert service_pid is not None
        await trio.to_thread.run_sync(pair.a.kill)

        # the orphaned service notices that its node manager is gone and exits on its own
        await until(lambda: not pid_alive(service_pid), "a's service to exit after its manager died")
        st_b = await until(lambda: (s := pair.b.status()) and s["node"]["state"] == "active" and s,
                           "b to take over from the dead node manager")
        term_b = st_b["node"]["term"]
        assert term_b > term_a and term_b % 2 == 1
        assert not st_b["peer"]["reachable"]
        failover = await wait_events(pair.b, "failover", "warning")
        assert failover and "peer silent" in failover[-1]["fields"]["cause"], failover

        # nobody answers on a's trunk any more
        try:
            out = await place_call(HOST, pair.loop_a, "to-dead-a", reply_timeout=GUARD)
        except OSError:
            pass  # connection refused: the trunk is gone with the service
        else:
            assert not out.answered and out.result == "rejected", out
        out = await place_call(HOST, pair.loop_b, "to-b", hold=0.05)
        assert (out.result, out.node, out.term) == ("answered", "b", term_b), out


# ============================================================================ 4. frozen node manager


async def test_sigstop_active_then_inactive_node_manager(pair_dir):
    # offer_hold 1 s: a call offered to the frozen node is decided (timeout) before SIGCONT
    with Pair(pair_dir, extra={"service": {"offer_hold": 1.0}}) as pair:
        pair.start(first="a")
        st = await wait_active(pair, "a")
        old_term = st["a"]["node"]["term"]
        seen: dict[str, list[tuple[str, int]]] = {"a": [], "b": []}  # (state, term) over time
        done = trio.Event()

        async def sampler(name: str) -> None:
            # one sampler per node: a frozen node's status blocks only its own sampler
            while not done.is_set():
                s = await status(pair.node(name), timeout=1.0)
                if s:
                    seen[name].append((s["node"]["state"], s["node"]["term"]))
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler, "a")
            nursery.start_soon(sampler, "b")

            # -- phase 1: the ACTIVE node manager is frozen for ~3 s, with a call in progress
            outcomes = []
            problems = []  # product failures that do not stop the rest of the scenario

            async def call(i: int) -> None:
                outcomes.append(await place_call(HOST, pair.loop_a, f"frozen-{i}", hold=0.05,
                                                 reply_timeout=GUARD))

            async with open_call(HOST, pair.loop_a, "held-over-freeze", reply_timeout=GUARD) as held:
                assert held.answered and held.outcome.term == old_term
                t_stop = trio.current_time()
                pair.a.signal(signal.SIGSTOP)
                try:
                    st_b = await until(lambda: (s := pair.b.status()) and s["node"]["state"] == "active"
                                       and s, "b to take over from the frozen node manager")
                    assert st_b["node"]["term"] > old_term
                    async with trio.open_nursery() as calls:  # placed while a is still frozen
                        calls.start_soon(call, 1)
                        await trio.sleep(0.3)
                        calls.start_soon(call, 2)
                    await trio.sleep_until(t_stop + 3.0)
                    assert pair.a.proc.poll() is None
                finally:
                    pair.a.signal(signal.SIGCONT)
                assert len(outcomes) == 2
                for out in outcomes:
                    # a's service fenced itself when its lease ran out: never answered in old_term
                    assert not (out.answered and out.term == old_term), out
                    assert out.result == "rejected", out

                st = await wait_roles(pair, "b", ("inactive", "draining"),
                                      "a to step down after SIGCONT")
                term_b = st["b"]["node"]["term"]
                assert term_b > old_term and st["a"]["node"]["term"] == old_term
                # A fenced service keeps its calls in progress; the node manager, back from the
                # stall, deactivates it with drain (docs/messaging-service.md, "The lease").
                if await still_in_progress(held):
                    await held.hangup()
                    assert held.outcome.result == "answered", held.outcome
                else:
                    problems.append(f"the call held on a across the freeze was dropped ({held.final}) "
                                    "after SIGCONT")

            st = await wait_active(pair, "b", "a to settle as inactive")
            assert st["b"]["node"]["term"] == term_b
            for s in await watch_states(pair, 1.0):
                assert s == {"a": ("inactive", old_term), "b": ("active", term_b)}, s
            await wait_events(pair.a, "stall", "warning")
            await wait_events(pair.a, "deactivated",
                              where=lambda e: "lease" in e["message"] or "fenced" in e["message"])
            log_a = (pair.dir / "a.log").read_text(errors="replace")
            fenced = rf"service\[a \d+\] telephony.service: fenced: lease of [0-9.]+s for term {old_term} "
            assert re.search(fenced, log_a), "a's service did not report fencing itself"

            # -- phase 2: the INACTIVE node manager (now a) is frozen for ~3 s
            stalls = len(events_of(pair.a, "stall"))
            activations = len(events_of(pair.a, "activating"))
            kills = len(events_of(pair.a, "service_kill"))
            service_pid = await trio.to_thread.run_sync(pair.a.service_pid)
            pair.a.signal(signal.SIGSTOP)
            try:
                s_b = await until(lambda: (s := pair.b.status()) and not s["peer"]["reachable"] and s,
                                  "b to notice that a went silent")
                assert s_b["node"]["state"] == "active" and s_b["node"]["term"] == term_b
                await trio.sleep(3.0 - 0.6)
                out = await place_call(HOST, pair.loop_b, "while-a-frozen", hold=0.05)
                assert (out.result, out.node, out.term) == ("answered", "b", term_b), out
            finally:
                pair.a.signal(signal.SIGCONT)
            await wait_active(pair, "b", "a to come back inactive after SIGCONT")
            for s in await watch_states(pair, 1.5):
                assert s == {"a": ("inactive", old_term), "b": ("active", term_b)}, s
            await wait_events(pair.a, "stall", count=stalls + 1)
            assert len(events_of(pair.a, "activating")) == activations
            new_kills = events_of(pair.a, "service_kill")[kills:]
            if new_kills or await trio.to_thread.run_sync(pair.a.service_pid) != service_pid:
                problems.append("a's node manager killed its own healthy, inactive messaging service "
                                f"after its freeze: {[e['message'] for e in new_kills]}")
            done.set()

        for name in ("a", "b"):
            terms = [t for _, t in seen[name]]
            assert terms and terms == sorted(terms), f"{name}'s term went backwards: {terms}"
        actives_a = {t for st_, t in seen["a"] if st_ == "active"}
        actives_b = {t for st_, t in seen["b"] if st_ == "active"}
        assert actives_a <= {old_term} and actives_b <= {term_b}, (actives_a, actives_b)
        assert not problems, problems


# ============================================================================ 5. partition


async def test_link_cut_and_heal(pair_dir):
    with Pair(pair_dir) as pair:
        pair.start(first="a")
        st = await wait_active(pair, "a")
        term_a = st["a"]["node"]["term"]
        pair.cut()
        both = await until(lambda: (x := (pair.a.status(), pair.b.status()))
                           and all(s and s["node"]["state"] == "active" for s in x) and x,
                           "both nodes active during the partition")
        assert both[0]["node"]["term"] == term_a
        term_b = both[1]["node"]["term"]
        assert term_b > term_a and term_b % 2 == 1

        async with open_call(HOST, pair.loop_a, "across-heal", reply_timeout=GUARD) as call:
            assert call.answered and (call.outcome.node, call.outcome.term) == ("a", term_a)
            pair.heal()
            st = await wait_active(pair, "a", "the primary alone active after the heal")
            term_after = st["a"]["node"]["term"]
            assert term_after > term_b, (term_after, term_b)
            assert term_after % 2 == 0
            assert await still_in_progress(call), call.final
            await until(lambda: (s := pair.a.status()) and s["calls_in_progress"] == 1,
                        "a to report the call in progress")
            await call.hangup()
        assert call.outcome.result == "answered", call.outcome
        await wait_events(pair.b, "deactivated", where=lambda e: "steps down" in e["message"])
        for s in await watch_states(pair, 0.5):
            assert s == {"a": ("active", term_after), "b": ("inactive", term_b)}, s


# ============================================================================ 6. call takeover


async def test_call_offered_at_inactive_node(pair_dir):
    with Pair(pair_dir) as pair:
        pair.start(first="a")
        st = await wait_active(pair, "a")
        term_a = st["a"]["node"]["term"]
        out = await place_call(HOST, pair.loop_b, "to-inactive-b", hold=0.05, reply_timeout=GUARD)
        assert out.result == "answered" and out.node == "b", out
        assert out.term > term_a and out.term % 2 == 1, out
        st = await wait_active(pair, "b", "a to step down after b took the call")
        assert st["b"]["node"]["term"] == out.term
        assert st["a"]["node"]["term"] == term_a
        failover = await wait_events(pair.b, "failover", "warning")
        assert failover and "to-inactive-b" in failover[-1]["fields"]["cause"], failover
        out2 = await place_call(HOST, pair.loop_b, "to-b-2", hold=0.05)
        assert (out2.result, out2.node, out2.term) == ("answered", "b", out.term), out2


# ============================================================================ 7. manual failover


async def test_manual_failover_keeps_calls_then_failback(pair_dir):
    with Pair(pair_dir) as pair:
        pair.start(first="a")
        st = await wait_active(pair, "a")
        term_a = st["a"]["node"]["term"]
        async with open_call(HOST, pair.loop_a, "keep-1") as c1, \
                open_call(HOST, pair.loop_a, "keep-2") as c2:
            for c in (c1, c2):
                assert c.answered and (c.outcome.node, c.outcome.term) == ("a", term_a)
            r = await trio.to_thread.run_sync(pair.a.admin, {"op": "failover"})
            assert r and r["ok"], r
            st = await wait_roles(pair, "b", "draining", "b active while a drains its calls")
            term_b = st["b"]["node"]["term"]
            assert term_b > term_a and term_b % 2 == 1
            assert st["a"]["node"]["hold"]
            for c in (c1, c2):
                assert await still_in_progress(c), c.final
            st_a = await until(lambda: (s := pair.a.status()) and s["calls_in_progress"] == 2 and s,
                               "a to report both calls in progress")
            assert st_a["node"]["state"] == "draining"

            out = await place_call(HOST, pair.loop_b, "new-on-b", hold=0.05)
            assert (out.result, out.node, out.term) == ("answered", "b", term_b), out
            stray = await place_call(HOST, pair.loop_a, "stray-draining", reply_timeout=GUARD)
            assert stray.result == "rejected", stray

            for c in (c1, c2):
                assert await still_in_progress(c, settle=0.05)
                await c.hangup()
        assert c1.outcome.result == "answered" and c2.outcome.result == "answered"
        assert (c1.outcome.term, c2.outcome.term) == (term_a, term_a)

        st = await wait_active(pair, "b", "a inactive once its calls ended")
        assert st["a"]["node"]["hold"] and st["b"]["node"]["term"] == term_b
        stray = await place_call(HOST, pair.loop_a, "stray-hold", reply_timeout=GUARD)
        assert stray.result == "rejected", stray
        refused = await wait_events(pair.a, "call_refused", where=lambda e: "stray-hold" in e["message"])
        assert "(hold)" in refused[-1]["message"], refused
        st = await wait_active(pair, "b")  # the stray call moved nothing
        assert st["b"]["node"]["term"] == term_b

        r = await trio.to_thread.run_sync(pair.a.admin, {"op": "failback"})
        assert r and r["ok"], r
        st = await wait_active(pair, "a", "a active again after failback")
        term_back = st["a"]["node"]["term"]
        assert term_back > term_b and term_back % 2 == 0
        assert not st["a"]["node"]["hold"]
        out = await place_call(HOST, pair.loop_a, "after-failback", hold=0.05)
        assert (out.result, out.node, out.term) == ("answered", "a", term_back), out


# ============================================================================ 8. SIGTERM


async def test_sigterm_active_node_drains_then_exits(pair_dir):
    with Pair(pair_dir) as pair:
        pair.start(first="a")
        st = await wait_active(pair, "a")
        term_a = st["a"]["node"]["term"]
        service_pid = await trio.to_thread.run_sync(pair.a.service_pid)
        async with open_call(HOST, pair.loop_a, "during-shutdown") as call:
            assert call.answered and call.outcome.term == term_a
            pair.a.signal(signal.SIGTERM)
            st = await wait_roles(pair, "b", "draining", "b active while a drains before exiting")
            assert st["a"]["node"]["shutting_down"]
            term_b = st["b"]["node"]["term"]
            assert term_b > term_a
            # well past the handover timeout (2 s): a is still there, still draining the call
            await trio.sleep(2.5)
            assert pair.a.proc.poll() is None
            s = await status(pair.a)
            assert s and s["node"]["state"] == "draining" and s["calls_in_progress"] == 1, s
            assert await still_in_progress(call)
            await call.hangup()
        assert call.outcome.result == "answered", call.outcome
        rc = await trio.to_thread.run_sync(lambda: pair.a.proc.wait(timeout=GUARD))
        assert rc == 0
        await until(lambda: not pid_alive(service_pid), "a's service to exit")
        await wait_events(pair.a, "stopped", where=lambda e: "after draining" in e["message"])
        s = await until(lambda: (x := pair.b.status()) and not x["peer"]["reachable"] and x,
                        "b to see a gone")
        assert s["node"]["state"] == "active" and s["node"]["term"] == term_b


# ============================================================================ 9. forged frames


def _exchange(addr: tuple[str, int], payload: bytes, *, half_close: bool, read_hello: bool = False,
              then: bytes = b"") -> bytes:
    """Send ``payload`` on a fresh connection to a link listener; return what the node sent
    back before it closed the connection (or until the guard)."""
    with socket.create_connection(addr, timeout=GUARD) as s:
        s.sendall(payload)
        got = b""
        if read_hello:
            while len(got) < 6 or len(got) < 6 + struct.unpack("<H", got[4:6])[0]:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            s.sendall(then)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        try:
            while chunk := s.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
        return got


def _recorded_session(psk: bytes, sender: str, sender_role: Role, receiver: str,
                      receiver_role: Role, frames: list) -> list[bytes]:
    """A node-link session made with the pair's real key by the real codec (what ``sender``
    would put on the wire), checked against a receiver of that session: [hello, frame...]."""
    dialer = LinkConnection(keys=(psk,), node=sender, role=sender_role, dialer=True,
                            nonce=os.urandom(16), expected_peer=receiver)
    acceptor = LinkConnection(keys=(psk,), node=receiver, role=receiver_role, dialer=False,
                              nonce=os.urandom(16), expected_peer=sender)
    hello = dialer.hello()
    acceptor.receive_data(hello)
    assert isinstance(acceptor.next_event(), Hello)
    dialer.receive_data(acceptor.hello())
    assert isinstance(dialer.next_event(), Hello)
    wire = [dialer.send(f) for f in frames]
    for w in wire:  # the session they were made for accepts them
        acceptor.receive_data(w)
        assert not isinstance(acceptor.next_event(), Dropped)
    return [hello] + wire


def _status_frame(node: str, role: Role, term: int) -> Status:
    return Status(node=node, role=role, state=State.ACTIVE, term=term, service=ServiceHealth.RUNNING,
                  mode=Mode.AUTOMATIC, eligible=True, licensed=True, hold=False,
                  shutting_down=False, calls=0, ports=4, repl_pos=0, ping_interval_ms=100,
                  uptime_ms=1000)


async def test_forged_and_garbage_link_frames(pair_dir):
    with Pair(pair_dir) as pair:
        pair.start(first="a")
        st = await wait_active(pair, "a")
        term_a = st["a"]["node"]["term"]
        psk = load_key(pair.dir / "link.key")
        wrong = LinkConnection(keys=(os.urandom(32),), node="b", role=Role.SECONDARY, dialer=True,
                               nonce=os.urandom(16)).hello()
        header = struct.pack("<2sBBH", b"VM", 1, 2, 60)  # a STATUS header, 60 bytes to follow
        bad_inputs = {
            "garbage": (b"GET / HTTP/1.0\r\n\r\n" + os.urandom(64), False),
            "truncated frame": (header + os.urandom(10), True),  # then EOF inside the frame
            "oversized length": (struct.pack("<2sBBH", b"VM", 1, 2, 0xFFFF) + os.urandom(200), False),
            "bad version": (struct.pack("<2sBBH", b"VM", 9, 1, 10) + bytes(10), False),
            "frame before hello": (header + os.urandom(60), False),
            "hello with a wrong key": (wrong, True),
        }
        # (target, claimed sender, frames that would change the target's state if accepted)
        replays = {
            "a": ("b", Role.SECONDARY, Role.PRIMARY,
                  [_status_frame("b", Role.SECONDARY, 1001),
                   Command(CommandKind.STEP_DOWN, 1001, "replayed")]),
            "b": ("a", Role.PRIMARY, Role.SECONDARY,
                  [_status_frame("a", Role.PRIMARY, 1000),
                   Command(CommandKind.TAKE_OVER, 1000, "replayed")]),
        }
        for target in ("a", "b"):
            node = pair.node(target)
            addr = link_listen(node)
            before = (await status(node))["peer"]["link"]
            for what, (payload, half_close) in bad_inputs.items():
                back = await trio.to_thread.run_sync(
                    lambda addr=addr, payload=payload, half_close=half_close:
                    _exchange(addr, payload, half_close=half_close))
                assert back == b"", f"{target} answered {what}: {back!r}"
            # a replayed capture: a valid HELLO (answered) but frames of another session
            sender, s_role, r_role, frames = replays[target]
            hello, *wire = _recorded_session(psk, sender, s_role, target, r_role, frames)
            back = await trio.to_thread.run_sync(
                lambda addr=addr, hello=hello, wire=wire:
                _exchange(addr, hello, half_close=True, read_hello=True, then=b"".join(wire)))
            assert back[:2] == b"VM" and back[3] == 1, back  # its HELLO, nothing more

            after = await until(lambda node=node, before=before, wire=wire: (s := node.status())
                                and s["peer"]["link"].get("dropped_mac", 0)
                                >= before.get("dropped_mac", 0) + len(wire)
                                and s["peer"]["link"].get("in_rejected", 0)
                                >= before.get("in_rejected", 0) + len(bad_inputs) and s,
                                f"{target} to count the rejected connections and frames")
            assert after["peer"]["link"].get("dropped_seq", 0) == before.get("dropped_seq", 0)
            await wait_events(node, "link_reject", "warning")
            await wait_events(node, "link_drop_mac", "warning")
            assert node.proc.poll() is None

            # nothing changed: the same node active in the same term, the link still works
            st = await wait_active(pair, "a", f"the pair unchanged after forged frames to {target}")
            assert st["a"]["node"]["term"] == term_a and st["b"]["node"]["term"] == 0
            for s in await watch_states(pair, 0.5):
                assert s == {"a": ("active", term_a), "b": ("inactive", 0)}, s
        assert not events_of(pair.a, "peer_command") and not events_of(pair.b, "peer_command")


# ============================================================================ 10. CLI


def _vmha(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "failover.cli", *args], capture_output=True,
                          text=True, timeout=GUARD)


async def test_cli_status(pair_dir):
    with Pair(pair_dir) as pair:
        pair.start(first="a")
        st = await wait_active(pair, "a")
        term_a = st["a"]["node"]["term"]
        async with open_call(HOST, pair.loop_a, "cli-1") as call:
            assert call.answered
            await until(lambda: (s := pair.a.status()) and s["calls_in_progress"] == 1,
                        "a to report the call")
            r = await trio.to_thread.run_sync(_vmha, "status", "--json", "-c", str(pair.a.config))
            assert r.returncode == 0, r.stderr
            js = json.loads(r.stdout)
        n, p = js["node"], js["peer"]
        assert (n["name"], n["role"], n["state"], n["term"], n["service"]) == \
            ("a", "primary", "active", term_a, "running")
        assert (p["name"], p["reachable"], p["state"]) == ("b", True, "inactive")
        assert [x["name"] for x in js["ports"]] == [f"loopback-{i}" for i in range(1, 5)]
        assert sorted(x["state"] for x in js["ports"]) == ["idle", "idle", "idle", "in_call"]
        assert js["calls_in_progress"] == 1

        r = await trio.to_thread.run_sync(_vmha, "status", "--json", "-c", str(pair.b.config))
        assert r.returncode == 0, r.stderr
        js = json.loads(r.stdout)
        assert (js["node"]["name"], js["node"]["role"], js["node"]["state"]) == \
            ("b", "secondary", "inactive")
        assert (js["peer"]["reachable"], js["peer"]["state"]) == (True, "active")
        assert js["calls_in_progress"] == 0

        r = await trio.to_thread.run_sync(_vmha, "status", "-c", str(pair.a.config))
        assert r.returncode == 0 and "a (this)" in r.stdout and "active" in r.stdout, r
        assert "SHARED SETTINGS DIFFER" not in r.stdout
        assert js["peer"]["link"]["settings_match"] is True

        rc_b = await trio.to_thread.run_sync(pair.b.stop)
        assert rc_b == 0
        r = await trio.to_thread.run_sync(_vmha, "status", "--json", "-c", str(pair.b.config))
        assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
        assert json.loads(r.stdout)["node"]["state"] == "stopped"
        r = await trio.to_thread.run_sync(_vmha, "status", "-c", str(pair.b.config))
        assert r.returncode == 3 and "not running" in r.stdout, r
        s = await until(lambda: (x := pair.a.status()) and not x["peer"]["reachable"] and x,
                        "a to see b gone")
        assert s["node"]["state"] == "active"


async def test_shared_settings_that_differ_at_run_time_are_reported(pair_dir):
    """b runs with an operator extension a does not have: both nodes say so in their status
    and event log (the heartbeat carries a digest of the settings that must match)."""
    with Pair(pair_dir, extra_b={"messaging": {"operator": "0"}}) as pair:
        pair.start(first="a")
        await wait_active(pair, "a")
        for node in (pair.a, pair.b):
            await until(lambda node=node: (s := node.status()) and s["peer"]["link"]["settings_match"]
                        is False, f"{node.name} to see the difference")
            await until(lambda node=node: any(e["event"] == "settings_differ" for e in node.events()),
                        f"{node.name}'s event log")
        r = await trio.to_thread.run_sync(_vmha, "status", "-c", str(pair.a.config))
        assert r.returncode == 0 and "SHARED SETTINGS DIFFER" in r.stdout, r
        assert pair.states() == {"a": "active", "b": "inactive"}  # reported, nothing else
