"""The loopback test trunk and its client.  In-memory connections in virtual time for the
protocol; real TCP on 127.0.0.1 for the listener, place_call() and calls carrying media
through a call flow (greeting, recording, DTMF, hang-up, mailbox access, a fuzz)."""
from __future__ import annotations

import base64
import json
import logging
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.loopback_client import (
    LoopbackCall,
    LoopbackClientError,
    call_on_stream,
    open_call,
    place_call,
)
from telephony.core import media
from telephony.loopback import MAX_AUDIO_CHUNK, LoopbackTrunk, parse_call_op
from telephony.runtime.ports import PortState
from tests.telephony.core.test_callflow import GREETING_4000, FakeDirectory, box, make_flow
from tests.telephony.helpers import make_trunk, running_service


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


# ============================================================================ call flow and media

PROMPTS = media.default_prompts()
SPEECH = media.tone(440, 1.0)


def prompt(name: str) -> bytes:
    return media.pcm_of(PROMPTS[name])


def b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode("ascii")


@asynccontextmanager
async def tcp_flow_service(flow, *, term: int = 4, **trunk_kw):
    """A running service with a real TCP loopback trunk (127.0.0.1) running ``flow``,
    activated in ``term``; yields (service, manager, (host, port))."""
    trunk = LoopbackTrunk(host="127.0.0.1", port=0, count=2, flow=flow,
                          **{"realtime": False, **trunk_kw})
    async with running_service(drivers=[trunk]) as (svc, mgr, _):
        await activate(mgr, term=term)
        yield svc, mgr, trunk.address


class RecordOnce:
    """A flow that only records (long limits) and keeps what it got."""

    def __init__(self, max_seconds: float = 3600, silence_seconds: float = 3600) -> None:
        self.results: list[tuple[bytes, str]] = []
        self.limits = dict(max_seconds=max_seconds, silence_seconds=silence_seconds)

    async def __call__(self, call, port, term) -> None:
        wav, why = await port.record(**self.limits)
        self.results.append((media.pcm_of(wav), why))


async def test_tcp_forwarded_call_leaves_a_message_with_the_callers_audio():
    flow, sink = make_flow()
    with trio.fail_after(30):
        async with tcp_flow_service(flow.handle) as (svc, mgr, (host, port)):
            async with open_call(host, port, "m1", calling="5551234", called="7000",
                                 forwarding="4000", reason="busy") as call:
                assert call.answered
                assert await call.wait_event("beep") == {"ev": "beep"}
                await call.wait_event("record_start")
                before = await call.heard()
                assert before == media.pcm_of(GREETING_4000) + prompt("beep")
                await call.say(SPEECH)
                await call.say(media.silence(3.0))  # exactly the 3 s that end it
                assert await call.wait_event("record_end") == {"ev": "record_end",
                                                               "reason": "silence"}
                await call.wait_event("hangup")
                assert await call.wait_event("ended") == {"ev": "ended"}
                assert not call.in_progress
                assert (await call.heard())[len(before):] == prompt("goodbye")
            assert call.outcome.result == "answered" and call.outcome.term == 4
            # the call ends for the node manager once the flow is done: the message is in
            ended = await mgr.expect("call", event="ended")
            assert ended["call"]["call_id"] == "m1"
            [msg] = sink.delivered
            assert media.pcm_of(msg.audio) == SPEECH
            assert (msg.message_id, msg.mailbox, msg.extension, msg.caller, msg.forwarding,
                    msg.reason, msg.duration_s, msg.node, msg.term) == \
                ("m1.a.4@vmha", "mb-4000", "4000", "5551234", "4000", "busy", 1.0, "a", 4)
            assert sink.lamps == [("mb-4000", "4000")]
            assert svc.desk.calls_in_progress == 0


async def test_tcp_dtmf_interrupts_the_greeting_and_ends_the_recording():
    """Real-time pacing: a 30 s greeting is cut short by a digit; # ends the recording."""
    long_greeting = media.tone(300, 1.0) * 30
    directory = FakeDirectory(greetings={"g4000.wav": media.wav_bytes(long_greeting)})
    flow, sink = make_flow(directory=directory)
    with trio.fail_after(30):
        async with tcp_flow_service(flow.handle, realtime=True) as (svc, mgr, (host, port)):
            async with open_call(host, port, "d1", forwarding="4000", reason="no_answer") as call:
                await call.dtmf("5")
                end = await call.wait_event("play_end")
                assert end == {"ev": "play_end", "digit": "5"}
                assert len(await call.heard()) < len(long_greeting)
                await call.wait_event("record_start")
                await call.say(SPEECH)
                await call.dtmf("#")
                assert (await call.wait_event("record_end"))["reason"] == "dtmf"
                assert await call.wait_event("ended") == {"ev": "ended"}
            await mgr.expect("call", event="ended")
            [msg] = sink.delivered
            assert media.pcm_of(msg.audio) == SPEECH and msg.reason == "no_answer"


async def test_tcp_hang_up_mid_recording_still_delivers_the_message():
    flow, sink = make_flow()
    with trio.fail_after(30):
        async with tcp_flow_service(flow.handle) as (svc, mgr, (host, port)):
            async with open_call(host, port, "h1", forwarding="4001", reason="busy") as call:
                await call.wait_event("record_start")
                await call.say(SPEECH)
                assert await call.hangup() == {"ev": "ended"}
            await mgr.expect("call", event="ended")
            [msg] = sink.delivered
            assert media.pcm_of(msg.audio) == SPEECH and msg.mailbox == "mb-4001"
            assert sink.lamps == [("mb-4001", "4001")]


async def test_tcp_hang_up_before_the_beep_leaves_nothing():
    flow, sink = make_flow()
    with trio.fail_after(30):
        async with tcp_flow_service(flow.handle, realtime=True) as (svc, mgr, (host, port)):
            async with open_call(host, port, "h2", forwarding="4000", reason="busy") as call:
                assert await call.hangup() == {"ev": "ended"}
            await mgr.expect("call", event="ended")
            assert sink.delivered == [] and sink.lamps == []


async def test_tcp_mailbox_access_plays_new_messages_and_reports_the_count():
    store = box(2)
    flow, sink = make_flow(mailboxes=store)
    with trio.fail_after(30):
        async with tcp_flow_service(flow.handle) as (svc, mgr, (host, port)):
            async with open_call(host, port, "a1", calling="4000", reason="direct") as call:
                assert await call.wait_event("messages") == {"ev": "messages", "new": 2,
                                                             "saved": 2}
                heard = await call.heard(until="ended")
            await mgr.expect("call", event="ended")
            assert heard == b"".join([media.pcm_of(media.messages_prompt(2)),
                                      *(media.pcm_of(w) for _, w in store.boxes["mb-4000"]),
                                      prompt("end_of_messages"), prompt("goodbye")])
            assert store.heard == [("mb-4000", "u0"), ("mb-4000", "u1")]
            assert sink.lamps == [("mb-4000", "4000")]


@pytest.mark.parametrize("taken", [True, False])
async def test_tcp_zero_during_the_greeting_asks_the_pbx_for_a_transfer(taken):
    """Taken: the call ends as transferred and no message is left.  Refused: the caller gets
    the beep and leaves a message as before."""
    flow, sink = make_flow(operator="0")
    with trio.fail_after(30):
        async with tcp_flow_service(flow.handle, realtime=True) as (svc, mgr, (host, port)):
            async with open_call(host, port, "x1", forwarding="4000", reason="busy") as call:
                await call.dtmf("0")
                assert await call.wait_event("transfer") == {"ev": "transfer", "to": "0"}
                assert (await call.heard()).endswith(prompt("transfer"))
                await call.answer_transfer(taken)
                if taken:
                    assert await call.wait_event("ended") == {"ev": "ended", "transferred": "0"}
                    assert not call.in_progress
                else:
                    await call.wait_event("record_start")
                    await call.say(SPEECH)
                    await call.dtmf("#")
                    assert await call.wait_event("ended") == {"ev": "ended"}
            ended = await mgr.expect("call", event="ended")
            assert ended["call"]["call_id"] == "x1"
            if taken:
                assert sink.delivered == [] and sink.lamps == []
            else:
                [msg] = sink.delivered
                assert media.pcm_of(msg.audio) == SPEECH and msg.mailbox == "mb-4000"
            assert svc.desk.calls_in_progress == 0


async def zero_for_the_operator(listener, call_id: str) -> RawClient:
    """A call forwarded to 4000 whose caller presses 0 in the greeting; returns once the
    trunk asked for the transfer."""
    client = RawClient(await listener.connect())
    await client.send({"op": "offer", "call_id": call_id, "forwarding": "4000",
                       "reason": "busy"})
    assert (await client.reply())["ev"] == "answered"
    await client.send({"op": "dtmf", "digit": "0"})
    while (await client.reply())["ev"] != "transfer":
        pass
    return client


async def test_a_transfer_nobody_answers_fails_after_the_timeout(autojump_clock):
    flow, sink = make_flow(operator="0")
    trunk, listener = make_trunk(flow=flow.handle, realtime=False, transfer_timeout=4.0)
    with trio.fail_after(60):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            client = await zero_for_the_operator(listener, "t1")
            asked = trio.current_time()
            while (ev := await client.reply())["ev"] != "record_start":
                assert ev["ev"] in ("play", "play_end", "beep"), ev
            assert trio.current_time() - asked >= 4.0  # not before the timeout
            await client.send({"op": "transfer", "ok": True})  # too late: nothing pending
            err = await client.reply()
            assert err["ev"] == "error" and "no transfer was asked for" in err["message"]
            for i in range(0, len(SPEECH), 2560):
                await client.send({"op": "audio", "audio": b64(SPEECH[i:i + 2560])})
            await client.send({"op": "hangup"})
            assert await client.reply() == {"ev": "ended"}
            await mgr.expect("call", event="ended")
            assert [m.mailbox for m in sink.delivered] == ["mb-4000"]


async def test_a_caller_who_hangs_up_while_the_transfer_waits_leaves_nothing(autojump_clock):
    flow, sink = make_flow(operator="0")
    trunk, listener = make_trunk(flow=flow.handle, realtime=False)
    with trio.fail_after(60):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            client = await zero_for_the_operator(listener, "t2")
            await client.send({"op": "hangup"})
            assert (await client.reply())["ev"] == "ended"
            await mgr.expect("call", event="ended")
            assert sink.delivered == [] and sink.lamps == []


async def test_place_call_still_works_with_a_flow():
    flow, sink = make_flow()
    with trio.fail_after(30):
        async with tcp_flow_service(flow.handle, realtime=True) as (svc, mgr, (host, port)):
            out = await place_call(host, port, "p1", forwarding="4000", reason="busy", hold=0.01)
            assert (out.result, out.term) == ("answered", 4)
            await mgr.expect("call", event="ended")


async def test_tcp_hang_up_while_a_greeting_streams_faster_than_the_client_reads():
    """realtime=False and a 10-minute greeting: the trunk blocks on the socket; a hang-up
    sent meanwhile still ends the call (no deadlock between play and the reply)."""
    huge = media.wav_bytes(media.tone(300, 1.0) * 600)
    flow, sink = make_flow(directory=FakeDirectory(greetings={"g4000.wav": huge}))
    with trio.fail_after(30):
        async with tcp_flow_service(flow.handle) as (svc, mgr, (host, port)):
            async with open_call(host, port, "bp1", forwarding="4000", reason="busy") as call:
                await trio.sleep(0.05)  # let the trunk fill the socket buffers
                assert await call.hangup() == {"ev": "ended"}
                assert 0 < len(await call.heard()) < len(huge)
            await mgr.expect("call", event="ended")
            assert sink.delivered == []


# ------------------------------------------------------------------ in memory, virtual time


async def test_realtime_play_is_paced_on_the_trio_clock(autojump_clock):
    flow, sink = make_flow()
    trunk, listener = make_trunk(flow=flow.handle)  # realtime=True is the default
    with trio.fail_after(60):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            async with call_on_stream(await listener.connect(), "r1", forwarding="4001",
                                      reason="busy") as call:
                t0 = trio.current_time()
                await call.wait_event("record_start")
                played = media.duration(await call.heard())
                assert played == 0.9 + 0.25  # standard greeting and beep
                assert trio.current_time() - t0 >= played - 0.02  # the last chunk's 20 ms
                await call.hangup()


async def test_missing_audio_counts_as_silence(autojump_clock):
    flow, sink = make_flow()
    trunk, listener = make_trunk(flow=flow.handle, realtime=False)
    with trio.fail_after(60):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            async with call_on_stream(await listener.connect(), "s1", forwarding="4000",
                                      reason="busy") as call:
                await call.wait_event("record_start")
                await call.say(SPEECH)  # then nothing at all
                assert (await call.wait_event("record_end"))["reason"] == "silence"
                await call.wait_event("ended")
            await mgr.expect("call", event="ended")
            assert media.pcm_of(sink.delivered[0].audio) == SPEECH


async def test_a_silent_caller_is_recorded_until_the_maximum_and_nothing_is_kept(autojump_clock):
    flow, sink = make_flow(max_message_s=10)
    trunk, listener = make_trunk(flow=flow.handle, realtime=False)
    with trio.fail_after(60):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            async with call_on_stream(await listener.connect(), "s2", forwarding="4000",
                                      reason="busy") as call:
                await call.wait_event("record_start")
                t0 = trio.current_time()
                assert (await call.wait_event("record_end"))["reason"] == "max"
                assert trio.current_time() - t0 >= 10
                await call.wait_event("ended")
            assert sink.delivered == []


async def test_recording_stops_at_the_maximum_of_audio_received(autojump_clock):
    rec = RecordOnce(max_seconds=0.5)
    trunk, listener = make_trunk(flow=rec, realtime=False)
    with trio.fail_after(60):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            async with call_on_stream(await listener.connect(), "x1") as call:
                await call.wait_event("record_start")
                await call.say(SPEECH)
                assert (await call.wait_event("record_end"))["reason"] == "max"
                await call.wait_event("ended")
            await mgr.expect("call", event="ended")
            assert rec.results == [(SPEECH[:8000], "max")]


@pytest.mark.parametrize("line,fragment", [
    ({"op": "audio", "audio": 5}, "audio must be a base64 string"),
    ({"op": "audio", "audio": "not base64!"}, "not valid base64"),
    ({"op": "audio", "audio": b64(b"\x01\x02\x03")}, "odd"),
    ({"op": "audio", "audio": ""}, "audio is empty"),
    ({"op": "audio", "audio": b64(b"\x00" * (MAX_AUDIO_CHUNK + 2))}, "at most 2560"),
    ({"op": "audio", "audio": b64(b"\x00\x01"), "rate": 16000}, "unknown fields rate"),
    ({"op": "dtmf", "digit": "x"}, "digit must be one of"),
    ({"op": "dtmf", "digit": "12"}, "digit must be one of"),
    ({"op": "dtmf", "digit": 1}, "digit must be one of"),
    ({"op": "dtmf"}, "digit must be one of"),
    ({"op": "transfer", "ok": True}, "no transfer was asked for"),
    ({"op": "transfer", "ok": 1}, "ok must be true"),
    ({"op": "transfer"}, "ok must be true"),
    ({"op": "transfer", "ok": False, "to": "0"}, "unknown fields to"),
    ({"op": "offer", "call_id": "again"}, "unknown op 'offer' during a call"),
    ({"op": "dance"}, "unknown op 'dance' during a call"),
])
async def test_bad_media_lines_get_an_error_and_change_nothing(autojump_clock, line, fragment):
    rec = RecordOnce()
    trunk, listener = make_trunk(flow=rec, realtime=False)
    with trio.fail_after(60):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            client = RawClient(await listener.connect())
            await client.send({"op": "offer", "call_id": "b1"})
            assert (await client.reply())["ev"] == "answered"
            assert await client.reply() == {"ev": "record_start"}
            await client.send({"op": "audio", "audio": b64(SPEECH[:640])})
            await client.send(line)
            err = await client.reply()
            assert err["ev"] == "error" and fragment in err["message"], err
            await client.send({"op": "audio", "audio": b64(SPEECH[640:1280])})
            await client.send({"op": "hangup"})
            assert await client.reply() == {"ev": "ended"}
            await mgr.expect("call", event="ended")
            assert rec.results == [(SPEECH[:1280], "hangup")]


async def test_over_long_line_during_a_flow_call_ends_it(autojump_clock):
    rec = RecordOnce()
    trunk, listener = make_trunk(flow=rec, realtime=False)
    with trio.fail_after(60):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            client = RawClient(await listener.connect())
            await client.send({"op": "offer", "call_id": "l1"})
            assert (await client.reply())["ev"] == "answered"
            assert await client.reply() == {"ev": "record_start"}
            await client.send({"op": "audio", "audio": b64(SPEECH[:640])})
            await client.send(b"x" * 5000)
            err = await client.reply()
            assert err["ev"] == "error" and "longer than" in err["message"]
            await mgr.expect("call", event="ended")
            assert rec.results == [(SPEECH[:640], "hangup")]
            while await client.stream.receive_some(100):
                pass  # the connection closes


async def test_too_many_waiting_digits_are_refused(autojump_clock):
    async def deaf(call, port, term):  # never reads a digit
        while not port.hung_up:
            await trio.sleep(1)

    trunk, listener = make_trunk(flow=deaf)
    with trio.fail_after(60):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            client = RawClient(await listener.connect())
            await client.send({"op": "offer", "call_id": "t1"})
            assert (await client.reply())["ev"] == "answered"
            for _ in range(33):
                await client.send({"op": "dtmf", "digit": "1"})
            err = await client.reply()
            assert err["ev"] == "error" and "32 digits are already waiting" in err["message"]
            await client.send({"op": "hangup"})
            assert await client.reply() == {"ev": "ended"}


async def test_without_a_flow_media_lines_are_unknown_ops(autojump_clock):
    trunk, listener = make_trunk()
    with trio.fail_after(10):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            client = RawClient(await listener.connect())
            await client.send({"op": "dtmf", "digit": "1"})
            err = await client.reply()
            assert err["ev"] == "error" and "no call in progress" in err["message"]
            await client.send({"op": "offer", "call_id": "n1"})
            assert (await client.reply())["ev"] == "answered"
            await client.send({"op": "audio", "audio": b64(b"\x00\x00")})
            err = await client.reply()
            assert err["ev"] == "error" and "unknown op 'audio'" in err["message"]
            await client.send({"op": "hangup"})
            assert await client.reply() == {"ev": "ended"}


async def test_deactivate_without_drain_drops_a_call_in_its_flow(autojump_clock):
    flow, sink = make_flow()
    trunk, listener = make_trunk(flow=flow.handle, realtime=False)
    with trio.fail_after(60):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            async with call_on_stream(await listener.connect(), "dr1", forwarding="4000",
                                      reason="busy") as call:
                await call.wait_event("record_start")
                await call.say(SPEECH)
                await mgr.send("deactivate", term=2, drain=False)
                assert await call.wait_dropped() == {"ev": "dropped"}
                assert [e["ev"] for e in call.events[-2:]] == ["record_start", "dropped"]
            assert call.outcome.result == "dropped"
            await mgr.expect("call", event="dropped")
            await mgr.expect("deactivated")
            # the recording was cut by the service's hang-up: long enough, so it is kept
            with trio.fail_after(5):
                while not sink.delivered:
                    await trio.sleep(0.01)
            assert media.pcm_of(sink.delivered[0].audio) == SPEECH


@pytest.mark.parametrize("how", ["shutdown", "channel lost"])
async def test_service_stopping_drops_a_call_in_its_flow(autojump_clock, how):
    flow, sink = make_flow()
    trunk, listener = make_trunk(flow=flow.handle, realtime=True)
    with trio.fail_after(60):
        async with running_service(drivers=[trunk]) as (svc, mgr, result):
            await activate(mgr)
            async with call_on_stream(await listener.connect(), "sd1", forwarding="4000",
                                      reason="busy") as call:
                await call.wait_event("beep")  # mid-way through the flow
                if how == "shutdown":
                    await mgr.send("shutdown")
                else:
                    await mgr.stream.aclose()
                assert await call.wait_dropped() == {"ev": "dropped"}
                assert "ended" not in [e["ev"] for e in call.events]
            await result["done"].wait()
            assert sink.delivered == []


async def test_a_failing_flow_hangs_up_and_the_trunk_carries_on(autojump_clock, caplog):
    async def broken(call, port, term):
        await port.play(PROMPTS["beep"])
        raise RuntimeError("flow bug stand-in")

    trunk, listener = make_trunk(flow=broken, realtime=False)
    with trio.fail_after(60):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            for i in range(2):
                async with call_on_stream(await listener.connect(), f"f{i}") as call:
                    assert await call.heard(until="hangup") == prompt("beep")
                    await call.wait_event("ended")
                await mgr.expect("call", event="ended")
    assert "call flow of call f0" in caplog.text and "flow bug stand-in" in caplog.text


async def test_a_flow_stuck_after_the_hang_up_is_cancelled_after_the_grace(autojump_clock):
    state = {}

    async def stuck(call, port, term):
        await port.record(max_seconds=60, silence_seconds=5)
        state["recorded"] = trio.current_time()
        await trio.sleep_forever()  # a delivery that never finishes

    trunk, listener = make_trunk(flow=stuck, realtime=False, flow_grace=7.0)
    with trio.fail_after(60):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            async with call_on_stream(await listener.connect(), "g1") as call:
                await call.wait_event("record_start")
                await call.hangup()
            await mgr.expect("call", event="ended")
            assert trio.current_time() - state["recorded"] >= 7.0
            assert svc.desk.calls_in_progress == 0


async def test_client_side_media_errors():
    stream_a, stream_b = trio.testing.memory_stream_pair()
    call = LoopbackCall(stream_a, reply_timeout=1)
    with pytest.raises(LoopbackClientError, match="no call in progress"):
        await call.say(SPEECH)
    with pytest.raises(LoopbackClientError, match="no call in progress"):
        await call.dtmf("1")
    with pytest.raises(LoopbackClientError, match="whole 16-bit samples"):
        await call.say(b"\x00")
    with pytest.raises(LoopbackClientError, match="DTMF digits"):
        await call.dtmf("1a")
    with pytest.raises(LoopbackClientError, match="chunk"):
        await call.say(b"\x00\x00", chunk=4000)
    with pytest.raises(LoopbackClientError, match="not a WAV|bad WAV"):
        await call.say(b"RIFF....WAVEjunk")


# ------------------------------------------------------------------ fuzz


_OTHER_OPS = st.text(max_size=12).filter(lambda op: op not in ("audio", "dtmf", "hangup"))
_NOT_A_DIGIT = st.one_of(st.none(), st.integers(), st.booleans(),
                         st.text(max_size=3).filter(lambda d: not (len(d) == 1 and d in
                                                                   "0123456789*#")))
_PCM = st.binary(min_size=2, max_size=1600).map(lambda b: b[: len(b) // 2 * 2])
_BAD_LINES = st.one_of(
    st.binary(max_size=120).filter(lambda b: b"\n" not in b and not b.startswith(b"{")),
    st.builds(lambda v: {"op": "audio", "audio": v},
              st.one_of(st.none(), st.integers(), st.text(max_size=40).map(lambda t: t + "!"),
                        _PCM.map(lambda p: b64(p + b"\x00")),
                        st.just(b64(b"\x00" * (MAX_AUDIO_CHUNK + 2))), st.just(""))),
    st.builds(lambda p, extra: {"op": "audio", "audio": b64(p), **extra}, _PCM,
              st.dictionaries(st.text(max_size=5).filter(lambda k: k not in ("op", "audio")),
                              st.integers(), min_size=1, max_size=2)),
    st.builds(lambda d: {"op": "dtmf", "digit": d}, _NOT_A_DIGIT),
    st.builds(lambda d: {"op": "dtmf", "digit": "1", "x": d}, st.integers()),
    st.builds(lambda op, v: {"op": op, "value": v}, _OTHER_OPS, st.integers()),
    st.builds(lambda v: v, st.one_of(st.lists(st.integers(), max_size=3), st.integers(),
                                     st.text(max_size=10), st.just({"no": "op"}))),
)
_LINES = st.lists(st.one_of(_PCM.map(lambda p: ("good", p)), _BAD_LINES.map(lambda b: ("bad", b))),
                  max_size=25)


def _wire(item) -> bytes:
    if isinstance(item, bytes):
        return item + b"\n"
    if isinstance(item, (dict, list, int, str)) and not isinstance(item, bool):
        return json.dumps(item).encode() + b"\n"
    raise AssertionError(item)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(_LINES)
async def test_fuzz_client_lines_during_a_call_get_only_errors(lines):
    """Real TCP: whatever the client sends during a recording, each bad line gets one error,
    the recording holds exactly the good audio, and the trunk raises nothing."""
    failures: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                failures.append(record)

    handler = Catch()
    logging.getLogger("telephony").addHandler(handler)
    try:
        rec = RecordOnce()
        with trio.fail_after(30):
            async with tcp_flow_service(rec) as (svc, mgr, (host, port)):
                async with open_call(host, port, "z1") as call:
                    await call.wait_event("record_start")
                    for kind, item in lines:
                        wire = _wire({"op": "audio", "audio": b64(item)} if kind == "good"
                                     else item)
                        await call._stream.send_all(wire)
                    assert await call.hangup() == {"ev": "ended"}
                await mgr.expect("call", event="ended")
        errors = [e for e in call.events if e["ev"] == "error"]
        assert len(errors) == sum(kind == "bad" for kind, _ in lines), call.events
        assert {e["ev"] for e in call.events} <= {"record_start", "error", "ended"}
        good = b"".join(item for kind, item in lines if kind == "good")
        assert rec.results == [(good, "hangup")]
        assert failures == []
    finally:
        logging.getLogger("telephony").removeHandler(handler)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(["op", "audio", "digit", "x"]),
                       st.one_of(st.sampled_from(["audio", "dtmf", "hangup", "1", "#", ""]),
                                 st.text(max_size=30), st.integers(), st.none(),
                                 _PCM.map(b64))))
def test_fuzz_parse_call_op(msg):
    """The pure check: a result that is right, or a ValueError; nothing else."""
    try:
        kind, value = parse_call_op(msg)
    except ValueError as exc:
        assert str(exc)
        return
    assert kind == msg["op"]
    if kind == "audio":
        assert 0 < len(value) <= MAX_AUDIO_CHUNK and len(value) % 2 == 0
        assert base64.b64decode(msg["audio"]) == value and set(msg) == {"op", "audio"}
    elif kind == "dtmf":
        assert value in "0123456789*#" and len(value) == 1 and set(msg) == {"op", "digit"}
    else:
        assert kind == "hangup" and value is None


# ============================================================================ lines (SMDI)


async def test_a_ring_on_a_given_line_takes_that_port_and_its_information_from_line_info(autojump_clock):
    """``"line": N`` rings loopback-N itself; with ``line_info`` (the SMDI link) the call's
    numbers come from there, not from the offer; a line in use is busy."""
    from telephony.core.events import CallArrival

    trunk, listener = make_trunk(count=3)
    asked = []

    async def line_info(port, call_id, node):
        asked.append((port, call_id, node))
        return CallArrival(node=node, port=port, call_id=call_id, calling="5551001", called="",
                           forwarding="1002", reason="busy", integration="serial-smdi")

    with trio.fail_after(10):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await activate(mgr)
            async with call_on_stream(await listener.connect(), "r1", line=3,
                                      forwarding="9999") as call:
                assert call.answer["port"] == "loopback-3"
                assert (await mgr.expect("call", event="answered"))["call"]["forwarding"] == "9999"
                async with call_on_stream(await listener.connect(), "r2", line=3) as again:
                    assert again.outcome.result == "rejected" and again.outcome.reason == "busy"
            trunk.line_info = line_info
            async with call_on_stream(await listener.connect(), "r3", line=2,
                                      forwarding="9999") as call:
                assert call.answer["port"] == "loopback-2"
                ev = await mgr.expect("call", event="answered")
                assert (ev["call"]["forwarding"], ev["call"]["reason"], ev["call"]["integration"]) \
                    == ("1002", "busy", "serial-smdi")
            assert asked == [("loopback-2", "r3", "a")]
            for bad in (0, 4, "1", True):
                client = RawClient(await listener.connect())
                await client.send({"op": "offer", "call_id": "x", "line": bad})
                reply = await client.reply()
                assert reply["ev"] == "error" and "line" in reply["message"], (bad, reply)
            assert [p.state for p in trunk._registry] == [PortState.IDLE] * 3


async def test_announce_reports_a_coming_call_only_while_inactive(autojump_clock):
    from telephony.core.events import CallArrival

    trunk, _ = make_trunk(count=1)
    call = CallArrival(node="a", port="loopback-1", call_id="smdi-a-1", calling="5551001",
                       called="", forwarding="1002", reason="busy", integration="serial-smdi")
    with trio.fail_after(10):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            assert await svc.announce(call) is True
            offered = await mgr.expect("call_offered")
            assert offered["call"]["call_id"] == "smdi-a-1"
            assert trunk._registry.get("loopback-1").state is PortState.IDLE  # nothing claimed
            await activate(mgr)
            assert await svc.announce(call) is False
            assert svc.answering_term() == 2


async def test_lamp_jobs_go_to_monitors_only_in_the_active_term(autojump_clock):
    """The trunk is a lamp driver too: a job of a term the service does not answer in is
    refused and no monitor sees it (every lamp driver refuses jobs from an older term:
    docs/messaging-service.md)."""
    from telephony.core.mwi import MwiJob, TransmitRefused

    trunk, listener = make_trunk()
    answering: list[int | None] = [None]
    trunk.gate = lambda: answering[0]
    with trio.fail_after(60):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            monitor = RawClient(await listener.connect())
            await monitor.send({"op": "monitor"})
            assert await monitor.reply() == {"ev": "monitoring"}

            def job(term: int, ext: str = "4000") -> MwiJob:
                return MwiJob(extension=ext, mailbox=f"mb-{ext}", on=True, new=1, old=0,
                              term=term, reason="message")

            with pytest.raises(TransmitRefused, match="not active in term 5"):
                await trunk.send_mwi(job(5))  # inactive
            answering[0] = 6
            with pytest.raises(TransmitRefused, match=r"term 5 \(active term: 6\)"):
                await trunk.send_mwi(job(5))  # an older term's job
            await trunk.send_mwi(job(6, "4001"))
            got = await monitor.reply()
            assert (got["ev"], got["extension"], got["term"]) == ("mwi", "4001", 6)
