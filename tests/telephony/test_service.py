"""The messaging service's Trio driver on an in-memory control channel, in virtual time
(``autojump_clock``): hello/health, the offer/hold/activate path, lease lapse, drain, shutdown.
Every test runs under ``fail_after`` on the virtual clock, except the last: a stalled process
needs real time and a real socket (its queued renewals are read straight from the socket)."""
from __future__ import annotations

import socket
import time

import pytest
import trio
import trio.testing

from telephony.core.control import NEED_DATA, ControlConnection
from telephony.runtime.ports import PortState
from telephony.service import EXIT_FAILED, EXIT_OK, MessagingService
from tests.telephony.helpers import DirectTrunk, running_service

HOLD = 2.0


async def test_hello_then_health_reports(autojump_clock):
    trunk = DirectTrunk(count=2)
    with trio.fail_after(5):
        async with running_service(drivers=[trunk], health_interval=0.05) as (svc, mgr, _):
            hello = mgr.received[0]
            assert hello == {"op": "hello", "pid": 4242, "node": "a",
                             "ports": ["direct-1", "direct-2"]}
            h1 = await mgr.expect("health")
            t1 = trio.current_time()
            h2 = await mgr.expect("health")
            assert trio.current_time() - t1 == pytest.approx(0.05)
            assert h2["seq"] == h1["seq"] + 1
            assert h2["state"] == "inactive" and h2["term"] is None and h2["calls"] == 0
            assert h2["ports"] == [{"name": "direct-1", "kind": "direct", "state": "idle"},
                                   {"name": "direct-2", "kind": "direct", "state": "idle"}]


async def test_health_is_reported_on_change_at_once_and_else_as_a_keepalive(autojump_clock):
    """Idle, the service sends one health report per keep-alive interval and nothing else; an
    activation, a port going down and a call each reach the node manager at once (within the
    burst gap), not at the next keep-alive."""
    keepalive = 10.0
    trunk = DirectTrunk(count=2)
    with trio.fail_after(200):
        async with running_service(drivers=[trunk], health_interval=keepalive) as (svc, mgr, _):
            await mgr.expect("health")
            t0 = trio.current_time()
            sent = len(mgr.received)
            while trio.current_time() < t0 + 10 * keepalive:
                await mgr.next()
            idle = mgr.received[sent:]
            assert [m["op"] for m in idle] == ["health"] * 10, idle
            assert {m["state"] for m in idle} == {"inactive"}
            gap = svc.reporter.min_gap

            async def reported(what, check) -> dict:
                t = trio.current_time()
                while True:
                    m = await mgr.next()
                    if m["op"] == "health" and check(m):
                        assert trio.current_time() - t <= gap, (what, trio.current_time() - t)
                        return m

            await mgr.send("activate", term=3, lease=1000.0)
            await reported("activation", lambda m: m["state"] == "active" and m["term"] == 3)
            trunk.registry.get("direct-2").state = PortState.DOWN
            h = await reported("port down", lambda m: m["ports"][1]["state"] == "down")
            assert h["drivers"] == [{"name": "direct", "score": 50,
                                     "detail": "1/2 ports usable; down: direct-2"}]
            d = await trunk.offer("c1")
            assert d.answered
            await reported("call", lambda m: m["calls"] == 1 and m["ports"][0]["state"] == "in_call")
            await svc.end_call(d.call)
            await reported("call end", lambda m: m["calls"] == 0 and m["ports"][0]["state"] == "idle")
            await mgr.send("deactivate", term=3, drain=True)
            await reported("deactivation", lambda m: m["state"] == "inactive")


async def test_an_active_service_sends_its_keepalives_when_a_renewal_wakes_it(autojump_clock):
    """Renewals every 0.1 s wake an active service anyway: a keep-alive at least half due goes
    then, so the keep-alives never wake the process on their own (none between renewals)."""
    with trio.fail_after(60):
        async with running_service(drivers=[DirectTrunk()], health_interval=0.25) as (svc, mgr, _):
            await mgr.send("activate", term=2, lease=1.0)
            await mgr.expect("activated")
            renewed: set[float] = set()
            seen: list[float] = []  # when each health report arrived

            async def renew() -> None:
                while True:
                    await trio.sleep(0.1)
                    renewed.add(trio.current_time())
                    await mgr.send("renew", term=2, lease=1.0)

            async def read() -> None:
                while True:
                    if (await mgr.next())["op"] == "health":
                        seen.append(trio.current_time())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                nursery.start_soon(renew)
                await trio.sleep(1.0)  # settle
                del seen[:]
                await trio.sleep(5.0)
                nursery.cancel_scope.cancel()
            assert seen and set(seen) <= renewed, sorted(set(seen) - renewed)[:5]
            gaps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
            assert max(gaps) <= svc.reporter.interval, gaps
            assert len(seen) <= 5.0 / (svc.reporter.interval / 2) + 1


async def test_a_burst_of_changes_is_reported_at_most_once_per_gap(autojump_clock):
    trunk = DirectTrunk(count=4)
    with trio.fail_after(60):
        async with running_service(drivers=[trunk], health_interval=10.0) as (svc, mgr, _):
            await mgr.expect("health")
            t0 = trio.current_time()
            for i in range(100):  # 100 changes within 0.1 s
                trunk.registry.get(f"direct-{i % 4 + 1}").state = (
                    PortState.DOWN if i % 2 == 0 else PortState.IDLE)
                await trio.sleep(0.001)
            while trio.current_time() < t0 + 5:
                await mgr.next()
            healths = [m for m in mgr.received if m["op"] == "health"]
            assert 2 <= len(healths) <= 1 + 0.1 / svc.reporter.min_gap + 2, len(healths)
            last = healths[-1]  # the last state was reported
            assert [p["state"] for p in last["ports"]] == [
                str(trunk.registry.get(f"direct-{i}").state) for i in range(1, 5)]


async def test_active_service_answers_at_once(autojump_clock):
    trunk = DirectTrunk()
    with trio.fail_after(5):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await mgr.send("activate", term=2, lease=10.0)
            await mgr.expect("activated", term=2)
            t0 = trio.current_time()
            d = await trunk.offer("c1")
            assert trio.current_time() == t0
            assert d.answered and d.term == 2 and d.call.arrival.port == "direct-1"
            ev = await mgr.expect("call", event="answered")
            assert ev["term"] == 2 and ev["call"]["call_id"] == "c1"
            h = await mgr.expect("health")
            assert h["state"] == "active" and h["term"] == 2 and h["calls"] == 1
            assert h["ports"][0]["state"] == "in_call"
            await svc.end_call(d.call)
            ev = await mgr.expect("call", event="ended")
            assert ev["term"] == 2
            assert trunk.registry.get("direct-1").state is PortState.IDLE


async def test_call_on_inactive_port_is_held_until_activation(autojump_clock):
    trunk = DirectTrunk()
    with trio.fail_after(5):
        async with running_service(drivers=[trunk], offer_hold=HOLD) as (svc, mgr, _):
            async with trio.open_nursery() as n:
                result = {}

                async def call():
                    result["d"] = await trunk.offer("c1", calling="4021", reason="busy")

                n.start_soon(call)
                offered = await mgr.expect("call_offered")
                assert offered["call"] == {"node": "a", "port": "direct-1", "call_id": "c1",
                                           "calling": "4021", "called": "5000",
                                           "forwarding": "", "reason": "busy",
                                           "integration": "direct"}
                h = await mgr.expect("health")
                assert h["ports"][0]["state"] == "ringing"
                await trio.sleep(0.5)  # the node manager takes its time, within the hold
                assert "d" not in result
                await mgr.send("activate", term=3, lease=10.0)
                await mgr.expect("activated", term=3)
                ev = await mgr.expect("call", event="answered")
                assert ev["term"] == 3
            assert result["d"].answered and result["d"].term == 3


async def test_refused_call_is_rejected_and_the_port_freed(autojump_clock):
    trunk = DirectTrunk()
    with trio.fail_after(5):
        async with running_service(drivers=[trunk], offer_hold=HOLD) as (svc, mgr, _):
            async with trio.open_nursery() as n:
                result = {}

                async def call():
                    result["d"] = await trunk.offer("c1")
                    result["at"] = trio.current_time()

                n.start_soon(call)
                await mgr.expect("call_offered")
                t0 = trio.current_time()
                await mgr.send("refuse_call", call_id="c1", reason="manual mode")
                ev = await mgr.expect("call", event="rejected")
                assert ev["term"] is None and ev["reason"] == "refused"
            assert not result["d"].answered and result["d"].reason == "refused"
            assert result["at"] == t0
            assert trunk.registry.get("direct-1").state is PortState.IDLE


async def test_unanswered_offer_times_out_after_offer_hold(autojump_clock):
    trunk = DirectTrunk()
    with trio.fail_after(10):
        async with running_service(drivers=[trunk], offer_hold=HOLD) as (svc, mgr, _):
            t0 = trio.current_time()
            d = await trunk.offer("c1")
            assert trio.current_time() - t0 == pytest.approx(HOLD)
            assert not d.answered and d.reason == "timeout"
            assert trunk.registry.get("direct-1").state is PortState.IDLE
            await mgr.expect("call", event="rejected")


async def test_refuse_for_an_unknown_call_changes_nothing(autojump_clock):
    trunk = DirectTrunk()
    with trio.fail_after(5):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await mgr.send("refuse_call", call_id="nope", reason="x")
            await mgr.send("activate", term=2, lease=5.0)
            assert (await mgr.expect_not_health())["op"] == "activated"


async def test_lease_lapse_fences_at_the_deadline_and_later_calls_are_held(autojump_clock):
    trunk = DirectTrunk()
    with trio.fail_after(10):
        async with running_service(drivers=[trunk], offer_hold=HOLD) as (svc, mgr, _):
            await mgr.send("activate", term=2, lease=0.5)
            await mgr.expect("activated")
            t0 = trio.current_time()
            await trio.sleep(0.3)
            await mgr.send("renew", term=2, lease=0.5)
            fenced = await mgr.expect("fenced")
            assert trio.current_time() - t0 == pytest.approx(0.8)
            assert fenced["term"] == 2 and "ran out" in fenced["reason"]
            h = await mgr.expect("health")
            assert h["state"] == "fenced"
            # a late renewal does not revive the term
            await mgr.send("renew", term=2, lease=0.5)
            err = await mgr.expect("error")
            assert err["ref"] == "renew"
            assert not svc.activation.may_answer(trio.current_time())
            d = await trunk.offer("c2")
            assert not d.answered and d.reason == "timeout"
            offered = await mgr.expect("call_offered")
            assert offered["call"]["call_id"] == "c2"


async def test_calls_in_progress_survive_a_fence(autojump_clock):
    trunk = DirectTrunk()
    with trio.fail_after(10):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await mgr.send("activate", term=2, lease=0.5)
            await mgr.expect("activated")
            d = await trunk.offer("c1")
            await mgr.expect("fenced")
            assert not d.call.dropped.is_set()
            h = await mgr.expect("health")
            assert h["calls"] == 1


async def test_stale_and_bad_commands_get_an_error_and_change_nothing(autojump_clock):
    trunk = DirectTrunk()
    with trio.fail_after(5):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await mgr.send("activate", term=6, lease=5.0)
            await mgr.expect("activated", term=6)
            for op, fields, fragment in [
                ("activate", {"term": 4, "lease": 5.0}, "stale term 4"),
                ("deactivate", {"term": 4, "drain": False}, "stale term 4"),
                ("renew", {"term": 8, "lease": 5.0}, "active in term 6"),
                ("activate", {"term": "8", "lease": 5.0}, "term must be an integer"),
                ("deactivate", {"term": 6}, "drain is missing"),
                ("teleport", {}, "unknown op"),
            ]:
                await mgr.send(op, **fields)
                err = await mgr.expect_not_health()
                assert err["op"] == "error" and err["ref"] == op
                assert fragment in err["message"]
            assert svc.activation.may_answer(trio.current_time())
            assert svc.activation.term == 6


async def test_unparseable_lines_are_dropped_and_the_next_line_works(autojump_clock):
    with trio.fail_after(5):
        async with running_service() as (svc, mgr, _):
            await mgr.send_raw(b"garbage\n[1]\n{\"no\": \"op\"}\n")
            await mgr.send("activate", term=2, lease=5.0)
            assert (await mgr.expect_not_health()) == {"op": "activated", "term": 2}


async def test_over_long_control_line_closes_the_channel(autojump_clock):
    with trio.fail_after(5):
        async with running_service() as (svc, mgr, result):
            await mgr.send_raw(b"x" * 70000)
            await mgr.drain_until_closed()
            await result["done"].wait()
            assert result["code"] == EXIT_FAILED
            assert not svc.activation.may_answer(trio.current_time())


async def test_deactivate_with_drain_lets_calls_finish(autojump_clock):
    trunk = DirectTrunk()
    with trio.fail_after(5):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await mgr.send("activate", term=2, lease=5.0)
            await mgr.expect("activated")
            d = await trunk.offer("c1")
            await mgr.send("deactivate", term=2, drain=True)
            assert await mgr.expect("deactivated") == {"op": "deactivated", "term": 2, "calls": 1}
            assert (await mgr.expect("health"))["state"] == "draining"
            assert not d.call.dropped.is_set()
            t0 = trio.current_time()
            d2 = await trunk.offer("c2")  # no new calls: it is held, then times out
            assert not d2.answered and trio.current_time() - t0 == pytest.approx(2.0)
            await svc.end_call(d.call)
            await mgr.expect("call", event="ended")
            h = await mgr.expect("health")
            assert h["state"] == "inactive" and h["calls"] == 0


async def test_deactivate_without_drain_drops_calls(autojump_clock):
    trunk = DirectTrunk()
    with trio.fail_after(5):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await mgr.send("activate", term=2, lease=5.0)
            await mgr.expect("activated")
            d = await trunk.offer("c1")
            await mgr.send("deactivate", term=2, drain=False)
            ev = await mgr.expect("call", event="dropped")
            assert ev["term"] == 2 and ev["call"]["call_id"] == "c1"
            assert await mgr.expect("deactivated") == {"op": "deactivated", "term": 2, "calls": 0}
            assert d.call.dropped.is_set()
            assert trunk.registry.get("direct-1").state is PortState.IDLE
            assert (await mgr.expect("health"))["state"] == "inactive"


async def test_duplicate_call_id_is_rejected(autojump_clock):
    trunk = DirectTrunk()
    with trio.fail_after(5):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await mgr.send("activate", term=2, lease=5.0)
            await mgr.expect("activated")
            d1 = await trunk.offer("c1")
            d2 = await trunk.offer("c1")
            assert d1.answered and not d2.answered and d2.reason == "duplicate"
            assert trunk.registry.get("direct-2").state is PortState.IDLE
            assert svc.desk.calls_in_progress == 1


async def test_shutdown_rejects_held_calls_drops_calls_and_exits_0(autojump_clock):
    trunk = DirectTrunk()
    with trio.fail_after(5):
        async with running_service(drivers=[trunk], offer_hold=HOLD) as (svc, mgr, result):
            await mgr.send("activate", term=2, lease=5.0)
            await mgr.expect("activated")
            d1 = await trunk.offer("c1")
            await mgr.send("deactivate", term=2, drain=True)
            await mgr.expect("deactivated")
            held = {}

            async def call():
                held["d"] = await trunk.offer("c2")

            async with trio.open_nursery() as n:
                n.start_soon(call)
                await mgr.expect("call_offered")
                await mgr.send("shutdown")
            assert held["d"].reason == "shutdown"
            await mgr.drain_until_closed()
            await result["done"].wait()
            assert d1.call.dropped.is_set()
            assert result["code"] == EXIT_OK
            events = {(m["event"], m["call"]["call_id"]) for m in mgr.received if m["op"] == "call"}
            assert {("rejected", "c2"), ("dropped", "c1")} <= events


async def test_control_eof_stops_answering_at_once_and_exits(autojump_clock):
    trunk = DirectTrunk()
    with trio.fail_after(5):
        async with running_service(drivers=[trunk]) as (svc, mgr, result):
            await mgr.send("activate", term=2, lease=60.0)
            await mgr.expect("activated")
            d = await trunk.offer("c1")
            await mgr.stream.send_eof()
            t0 = trio.current_time()
            await result["done"].wait()
            assert result["done_at"] == t0  # no virtual time passes: it stops at once
            assert result["code"] == EXIT_OK
            assert not svc.activation.may_answer(trio.current_time())
            assert d.call.dropped.is_set()
            assert svc.desk.closing


async def test_request_stop_is_a_clean_exit(autojump_clock):
    with trio.fail_after(5):
        async with running_service() as (svc, mgr, result):
            svc.request_stop("SIGTERM received")
            await result["done"].wait()
            assert result["code"] == EXIT_OK and svc.stop_reason == "SIGTERM received"


async def test_blocked_control_channel_stops_the_service(autojump_clock):
    """A node manager that stops reading (frozen) is treated as gone after send_timeout."""
    ours, theirs = trio.testing.lockstep_stream_pair()
    svc = MessagingService(node="a", control=ours, send_timeout=1.0, pid=1)
    with trio.fail_after(5):
        code = await svc.run()  # nobody ever reads: hello blocks
    assert code == EXIT_OK and "blocked" in svc.stop_reason
    assert trio.current_time() == pytest.approx(1.0)


async def test_manager_receives_every_message_well_formed(autojump_clock):
    """FakeManager validates everything against FROM_SERVICE; run a busy scenario through it."""
    trunk = DirectTrunk(count=3)
    with trio.fail_after(10):
        async with running_service(drivers=[trunk], offer_hold=0.5) as (svc, mgr, _):
            d = await trunk.offer("c0")  # times out
            await mgr.send("activate", term=2, lease=1.0)
            await mgr.expect("activated")
            calls = [await trunk.offer(f"c{i}") for i in range(1, 4)]
            assert [c.answered for c in calls] == [True] * 3
            assert await trunk.offer("c4") is None  # every port in use
            await mgr.expect("fenced")
            await mgr.send("deactivate", term=2, drain=False)
            await mgr.expect("deactivated", calls=0)
            seen = {m["op"] for m in mgr.received}
            assert {"hello", "health", "call_offered", "call", "activated", "fenced",
                    "deactivated"} <= seen
            assert not d.answered


async def test_driver_counters_go_to_the_node_manager_only_when_they_change(autojump_clock):
    from telephony.service import COUNTERS_INTERVAL

    trunk = DirectTrunk()
    trunk.counters = {"records": 0}
    async with running_service(drivers=[trunk]) as (svc, mgr, _):
        first = await mgr.expect("counters")
        assert first["groups"] == {trunk.kind: {"records": 0}}
        seen = len([m for m in mgr.received if m["op"] == "counters"])
        # unchanged for ten intervals: nothing more is sent (health reports go on)
        with trio.move_on_after(10 * COUNTERS_INTERVAL):
            await mgr.expect("counters")
        assert len([m for m in mgr.received if m["op"] == "counters"]) == seen
        trunk.counters["records"] = 3
        assert (await mgr.expect("counters"))["groups"] == {trunk.kind: {"records": 3}}


async def test_counters_out_of_bounds_are_logged_and_the_service_goes_on(autojump_clock, caplog):
    trunk = DirectTrunk()
    trunk.counters = {"records": -1}  # below the bound of the control message
    async with running_service(drivers=[trunk]) as (svc, mgr, result):
        await trio.sleep(3)
        assert not result["done"].is_set()
        assert not [m for m in mgr.received if m["op"] == "counters"]
        trunk.counters = {"records": 2}
        assert (await mgr.expect("counters"))["groups"] == {trunk.kind: {"records": 2}}
    assert "counters not reported: " in caplog.text


class _StallAfterActivated(trio.abc.HalfCloseableStream):
    """The service's end of a real socket pair; right after it sends "activated" the whole
    process blocks for ``stall`` seconds (the event loop included), as if SIGSTOPped or
    starved of CPU between that send and its next read."""

    def __init__(self, stream: trio.SocketStream, stall: float) -> None:
        self.stream, self.socket, self.stall = stream, stream.socket, stall

    async def send_all(self, data) -> None:
        await self.stream.send_all(data)
        if b'"activated"' in bytes(data):
            time.sleep(self.stall)  # noqa: ASYNC251 -- the stall is the point

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        return await self.stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def test_a_service_stalled_right_after_activating_handles_queued_renewals_before_its_lease():
    """Real time and a real socket pair.  The service stalls just after it sends "activated",
    before its next read, for longer than the lease; meanwhile the node manager (a thread on
    the other end) renews in time with absolute deadlines.  On waking the service must handle
    the queued renewals before it judges the lease: it stays active, never fences.  (Seen
    under load with SIGSTOP: the service fenced first, then read renewals that were in time.)
    When the renewals stop, the lease does run out."""
    lease, stall = 0.5, 1.2
    ours, theirs = socket.socketpair()
    stream = _StallAfterActivated(trio.SocketStream(trio.socket.from_stdlib_socket(ours)), stall)
    service = MessagingService(node="a", control=stream, drivers=[DirectTrunk()],
                               health_interval=0.1, send_timeout=5.0, pid=4242)
    received: list[dict] = []
    marks: dict[str, int] = {}

    def manager() -> None:
        """The node manager: activate, then renew every 50 ms through the stall and a second
        after it, reading everything the service says; then stop and wait for the fence."""
        conn = ControlConnection()

        def read(until_op: str | None, timeout: float) -> None:
            theirs.settimeout(timeout)
            while True:
                ev = conn.next_event()
                if ev is NEED_DATA:
                    try:
                        conn.receive_data(theirs.recv(65536))
                    except (BlockingIOError, TimeoutError):
                        return
                    continue
                assert isinstance(ev, dict), ev
                received.append(ev)
                if ev["op"] == until_op:
                    return

        theirs.sendall(conn.send({"op": "activate", "term": 2, "lease": lease,
                                  "until": time.monotonic() + lease}))
        read("activated", 10)
        end = time.monotonic() + stall + 1.0
        while time.monotonic() < end:
            time.sleep(0.05)
            theirs.sendall(conn.send({"op": "renew", "term": 2, "lease": lease,
                                      "until": time.monotonic() + lease}))
            read(None, 0)
        marks["stopped"] = len(received)
        if not [m for m in received if m["op"] == "fenced"]:
            read("fenced", 10)  # the renewals stopped: the lease runs out

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            await trio.to_thread.run_sync(manager)
            nursery.cancel_scope.cancel()
    theirs.close()
    fenced = [i for i, m in enumerate(received) if m["op"] == "fenced"]
    assert len(fenced) == 1, [received[i] for i in fenced]
    assert fenced[0] >= marks["stopped"], f"fenced while renewals were coming: {received[fenced[0]]}"
    assert received[fenced[0]]["term"] == 2
    # and it was serving in between: health said "active" after the stall
    before = received[:fenced[0]]
    assert [m for m in before if m["op"] == "health" and m["state"] == "active"], before


# ============================================================================ the integration's wiring


class _Driver:
    """A voice-port driver stand-in: the wiring only sets its ``line_info``."""


class _Link:
    async def line_arrival(self, port, call_id, node):  # pragma: no cover - never called
        raise AssertionError


def test_smdi_call_information_reaches_every_voice_port_in_line_order():
    from telephony.service import connect_call_info, line_names, voice_ports
    from telephony.settings import Integration
    from telephony.smdi.settings import SmdiProfile

    trunk, sip, link = _Driver(), _Driver(), _Link()
    built = {"loopback": (trunk, ["loopback-1", "loopback-2"]), "sip": (sip, ["sip-1"])}
    smdi = Integration(profile=None, voice_ports=("loopback", "sip"), call_info="smdi", mwi="smdi")
    voice = voice_ports(smdi, built)
    assert line_names(voice) == ("loopback-1", "loopback-2", "sip-1")
    connect_call_info(smdi, voice, link)
    assert trunk.line_info == link.line_arrival and sip.line_info == link.line_arrival
    prof = SmdiProfile(terminals=(7, 8, 9), lines=line_names(voice))  # terminal i is line i
    assert [prof.port_of(t) for t in (7, 8, 9)] == ["loopback-1", "loopback-2", "sip-1"]
    # the order is the integration's; a driver not built has no lines
    gateway = Integration(profile="gateway-smdi", voice_ports=("sip",), call_info="smdi",
                          mwi="smdi")
    assert line_names(voice_ports(gateway, {**built, "loopback": (None, [])})) == ("sip-1",)
    # call information in the ports' own signalling: nothing is connected
    lamps_only = Integration(profile=None, voice_ports=("sip",), call_info="signalling",
                             mwi="smdi")
    other = _Driver()
    connect_call_info(lamps_only, voice_ports(lamps_only, {"sip": (other, ["sip-1"])}), link)
    assert not hasattr(other, "line_info")


async def test_smdi_records_give_the_loopback_lines_their_calls(tmp_path):
    """The serial-SMDI integration wired by the service's own functions, with a real SMDI link
    on a pty pair: a record for this node's terminal, then a ring on that line, and the call
    carries the record's numbers."""
    import os
    import shutil
    import termios
    import tty

    if shutil.which("socat") is None:
        pytest.skip("socat is not installed: it makes the SMDI pty pair")
    from lab.loopback_client import call_on_stream
    from lab.smdi import SocatPair
    from telephony.service import connect_call_info, line_names, voice_ports
    from telephony.settings import resolve_integration
    from telephony.smdi.core.codec import encode_call_record
    from telephony.smdi.driver import SmdiLink
    from telephony.smdi.settings import SerialSettings, SmdiProfile
    from tests.telephony.helpers import make_trunk
    from tests.util import until

    pair = SocatPair(tmp_path / "node", tmp_path / "pbx")
    pair.start()
    pbx = os.open(tmp_path / "pbx", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(pbx, termios.TCSANOW)
        trunk, listener = make_trunk(count=2)
        ports = _Ports(loopback=True, smdi=True)
        integration = resolve_integration({}, ports)  # no [integration]: today's wiring
        assert (integration.voice_ports, integration.call_info) == (("loopback",), "smdi")
        voice = voice_ports(integration, {"loopback": (trunk, trunk.port_names())})
        link = SmdiLink(serial=SerialSettings(str(tmp_path / "node")),
                        profile=SmdiProfile(terminals=(5, 6), keep_last=4,
                                            lines=line_names(voice)),
                        node="a", reopen_min=0.05, reopen_max=0.2)
        connect_call_info(integration, voice, link)
        async with running_service(drivers=[trunk, link]) as (svc, mgr, _):
            link.gate = svc.answering_term
            await until(lambda: link.is_open, "the SMDI link open")
            await mgr.send("activate", term=2, lease=60.0)
            await mgr.expect("activated")
            os.write(pbx, encode_call_record(6, "B", "5551002", "5551001"))  # line 2
            await until(lambda: link.counters["records"] == 1, "the record parsed")
            async with call_on_stream(await listener.connect(), "r1", line=2,
                                      forwarding="9999") as call:
                assert call.answer["port"] == "loopback-2"
                ev = await mgr.expect("call", event="answered")
                assert (ev["call"]["forwarding"], ev["call"]["calling"], ev["call"]["reason"],
                        ev["call"]["integration"]) == ("1002", "1001", "busy", "serial-smdi")
    finally:
        os.close(pbx)
        pair.stop()


class _Ports:
    """The enabled-flags view of ``[ports.*]`` that the integration is derived from."""

    def __init__(self, *, loopback=False, smdi=False, sip=False):
        from types import SimpleNamespace

        self.loopback = SimpleNamespace(enabled=loopback)
        self.smdi = SimpleNamespace(enabled=smdi)
        self.sip = SimpleNamespace(enabled=sip)
