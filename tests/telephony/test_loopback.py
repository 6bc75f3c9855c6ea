"""The loopback test trunk and its client.  In-memory connections in virtual time for the
protocol; one real-TCP test on 127.0.0.1 for the listener and place_call()."""
from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from telephony.loopback_client import LoopbackCall, call_on_stream, place_call
from telephony.ports import PortState

from .helpers import make_trunk, running_service


class RawClient:
    """A loopback client that sends whatever it is told (for bad-input tests)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.call = LoopbackCall(stream, reply_timeout=30)
        self.stream = stream

    async def send(self, data: bytes | dict) -> None:
        if isinstance(data, dict):
            data = json.dumps(data).encode() + b"\n"
        await self.stream.send_all(data)

    async def reply(self) -> dict:
        return await self.call._receive(timeout=30)


async def activate(mgr, term: int = 2, lease: float = 60.0) -> None:
    await mgr.send("activate", term=term, lease=lease)
    await mgr.expect("activated", term=term)


async def test_answered_call_then_hangup(autojump_clock):
    trunk, listener = make_trunk(count=2)
    with trio.fail_after(10):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            stream = await listener.connect()
            async with call_on_stream(stream, "c1", calling="+1 (555) 010-0199", called="5000",
                                      forwarding="4000", reason="no_answer") as call:
                assert call.answer == {"ev": "answered", "node": "a", "port": "loopback-1",
                                       "term": 2}
                ev = await mgr.expect("call", event="answered")
                assert ev["call"] == {"node": "a", "port": "loopback-1", "call_id": "c1",
                                      "calling": "+15550100199", "called": "5000",
                                      "forwarding": "4000", "reason": "no_answer",
                                      "integration": "loopback"}
                assert trunk._registry.get("loopback-1").state is PortState.IN_CALL
                assert await call.hangup() == {"ev": "ended"}
            ev = await mgr.expect("call", event="ended")
            assert ev["term"] == 2
            assert trunk._registry.get("loopback-1").state is PortState.IDLE
            assert call.outcome.result == "answered" and call.outcome.term == 2


async def test_call_while_inactive_is_offered_then_answered_on_activate(autojump_clock):
    trunk, listener = make_trunk()
    with trio.fail_after(10):
        async with running_service(drivers=[trunk], offer_hold=2.0) as (svc, mgr, _):
            async with trio.open_nursery() as n:
                out = {}

                async def caller():
                    stream = await listener.connect()
                    async with call_on_stream(stream, "c1") as call:
                        out["answer"] = call.answer

                n.start_soon(caller)
                offered = await mgr.expect("call_offered")
                assert offered["call"]["port"] == "loopback-1"
                await activate(mgr, term=5)
            assert out["answer"] == {"ev": "answered", "node": "a", "port": "loopback-1",
                                     "term": 5}


@pytest.mark.parametrize("manager_says,reason", [("refuse", "refused"), ("nothing", "timeout")])
async def test_call_while_inactive_is_rejected(autojump_clock, manager_says, reason):
    trunk, listener = make_trunk()
    with trio.fail_after(10):
        async with running_service(drivers=[trunk], offer_hold=2.0) as (svc, mgr, _):
            async with trio.open_nursery() as n:
                out = {}

                async def caller():
                    stream = await listener.connect()
                    async with call_on_stream(stream, "c1") as call:
                        out["outcome"] = call.outcome

                n.start_soon(caller)
                await mgr.expect("call_offered")
                if manager_says == "refuse":
                    await mgr.send("refuse_call", call_id="c1", reason="manual mode")
            assert out["outcome"].result == "rejected" and out["outcome"].reason == reason
            assert trunk._registry.get("loopback-1").state is PortState.IDLE


async def test_busy_when_every_port_is_in_use(autojump_clock):
    trunk, listener = make_trunk(count=1)
    with trio.fail_after(10):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            async with call_on_stream(await listener.connect(), "c1") as first:
                assert first.answered
                async with call_on_stream(await listener.connect(), "c2") as second:
                    assert second.answer == {"ev": "rejected", "reason": "busy"}
            async with call_on_stream(await listener.connect(), "c3") as third:
                assert third.answered and third.answer["port"] == "loopback-1"


async def test_deactivate_without_drain_sends_dropped(autojump_clock):
    trunk, listener = make_trunk()
    with trio.fail_after(10):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            async with call_on_stream(await listener.connect(), "c1") as call:
                assert call.answered
                await mgr.send("deactivate", term=2, drain=False)
                assert await call.wait_dropped() == {"ev": "dropped"}
            assert call.outcome.result == "dropped" and call.outcome.term == 2
            await mgr.expect("call", event="dropped")


async def test_shutdown_drops_calls_and_rejects_held_offers(autojump_clock):
    trunk, listener = make_trunk(count=2)
    with trio.fail_after(10):
        async with running_service(drivers=[trunk], offer_hold=5.0) as (svc, mgr, result):
            await activate(mgr, lease=60.0)
            async with call_on_stream(await listener.connect(), "c1") as call:
                await mgr.send("deactivate", term=2, drain=True)
                await mgr.expect("deactivated", calls=1)
                held = RawClient(await listener.connect())
                await held.send({"op": "offer", "call_id": "c2"})
                await mgr.expect("call_offered")
                await mgr.send("shutdown")
                assert await call.wait_dropped() == {"ev": "dropped"}
                assert await held.reply() == {"ev": "rejected", "reason": "shutdown"}
            await result["done"].wait()
            assert result["code"] == 0


async def test_control_channel_loss_drops_calls(autojump_clock):
    trunk, listener = make_trunk()
    with trio.fail_after(10):
        async with running_service(drivers=[trunk]) as (svc, mgr, result):
            await activate(mgr)
            async with call_on_stream(await listener.connect(), "c1") as call:
                await mgr.stream.aclose()
                assert await call.wait_dropped() == {"ev": "dropped"}
            await result["done"].wait()


async def test_client_closing_the_connection_ends_the_call(autojump_clock):
    trunk, listener = make_trunk()
    with trio.fail_after(10):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            client = RawClient(await listener.connect())
            await client.send({"op": "offer", "call_id": "c1"})
            assert (await client.reply())["ev"] == "answered"
            await client.stream.aclose()
            ev = await mgr.expect("call", event="ended")
            assert ev["call"]["call_id"] == "c1"
            assert svc.desk.calls_in_progress == 0


@pytest.mark.parametrize("bad,fragment", [
    (b"hello\n", "bad line"),
    (b'{"op": "dance"}\n', "unknown op"),
    (b'{"op": "hangup"}\n', "no call in progress"),
    (b'{"op": "offer"}\n', "call_id is missing"),
    (b'{"op": "offer", "call_id": "c1", "reason": "bored"}\n', "reason must be one of"),
    (b'{"op": "offer", "call_id": "c1", "calling": 5}\n', "calling must be a string"),
    (b'{"op": "offer", "call_id": "c1", "colour": "red"}\n', "unknown fields colour"),
    (b'{"op": "offer", "call_id": "c1", "called": "' + b"1" * 40 + b'"}\n', "longer than 32"),
])
async def test_bad_input_gets_an_error_and_changes_nothing(autojump_clock, bad, fragment):
    trunk, listener = make_trunk()
    with trio.fail_after(10):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            client = RawClient(await listener.connect())
            await client.send(bad)
            err = await client.reply()
            assert err["ev"] == "error" and fragment in err["message"]
            assert all(p.state is PortState.IDLE for p in trunk._registry)
            await client.send({"op": "offer", "call_id": "c9"})
            assert (await client.reply())["ev"] == "answered"
            await client.send({"op": "dance"})
            assert (await client.reply())["ev"] == "error"
            await client.send({"op": "hangup"})
            assert await client.reply() == {"ev": "ended"}


async def test_over_long_line_gets_an_error_and_the_connection_closes(autojump_clock):
    trunk, listener = make_trunk()
    with trio.fail_after(10):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            client = RawClient(await listener.connect())
            await client.send(b"x" * 5000)
            err = await client.reply()
            assert err["ev"] == "error" and "longer than" in err["message"]
            assert await client.stream.receive_some(100) == b""


async def test_real_tcp_listener_and_place_call():
    """Real sockets on 127.0.0.1 (real clock: the fail_after is only a hang guard)."""
    from telephony.loopback import LoopbackTrunk

    trunk = LoopbackTrunk(host="127.0.0.1", port=0, count=2)
    with trio.fail_after(30):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            host, port = trunk.address
            assert host == "127.0.0.1" and port > 0
            await activate(mgr, term=4)
            out = await place_call(host, port, "c1", calling="4021", hold=0.01)
            assert (out.result, out.node, out.port, out.term) == ("answered", "a", "loopback-1", 4)
            await mgr.send("deactivate", term=4, drain=False)
            await mgr.expect("deactivated")
            await mgr.send("refuse_call", call_id="none", reason="x")
            async with trio.open_nursery() as n:
                res = {}

                async def caller():
                    res["out"] = await place_call(host, port, "c2")

                n.start_soon(caller)
                offered = await mgr.expect("call_offered")
                await mgr.send("refuse_call", call_id=offered["call"]["call_id"], reason="test")
            assert res["out"].result == "rejected" and res["out"].reason == "refused"


class ExplodingStream(trio.abc.Stream):
    """A client connection whose reads fail in a way no driver expects."""

    async def receive_some(self, max_bytes=None):
        await trio.lowlevel.checkpoint()
        raise RuntimeError("driver bug stand-in")

    async def send_all(self, data):
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self):
        await trio.lowlevel.checkpoint()

    async def aclose(self):
        await trio.lowlevel.checkpoint()


async def test_one_failing_connection_does_not_take_the_service_down(autojump_clock):
    trunk, listener = make_trunk()
    with trio.fail_after(10):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            async with call_on_stream(await listener.connect(), "c1") as call:
                await listener._send.send(ExplodingStream())
                await trio.sleep(1)
                assert call.in_progress
                assert (await call.hangup()) == {"ev": "ended"}
            async with call_on_stream(await listener.connect(), "c2") as call2:
                assert call2.answered
