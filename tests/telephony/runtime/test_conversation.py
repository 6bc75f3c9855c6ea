"""converse(): the call flow on a media port until the call is over (analog and SCCP ports)."""
from __future__ import annotations

import logging

import trio

from telephony.core.events import CallArrival, Reason
from telephony.runtime.conversation import converse
from telephony.runtime.mediaport import MediaCallPort
from telephony.runtime.ports import ActiveCall

ARRIVAL = CallArrival(node="a", port="p-1", call_id="c1", calling="1001", called="5000",
                      forwarding="", reason=Reason.DIRECT, integration="t")


class Rig:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.hung_up = 0
        self.port = MediaCallPort("p-1", send=self.send, on_hook=self.on_hook, realtime=False)
        self.active = ActiveCall(ARRIVAL, term=3)

    async def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    async def on_hook(self) -> None:
        self.hung_up += 1

    async def hang_up(self) -> None:  # the driver's hang-up when the service drops the call
        self.hung_up += 1


async def test_the_flow_runs_with_the_term_and_the_port_hangs_up_after_it(autojump_clock):
    r = Rig()
    seen = []

    async def flow(call, port, term):
        seen.append((call.call_id, port is r.port, term))

    assert await converse(r.port, r.active, ARRIVAL, flow, hang_up=r.hang_up, flow_grace=5) == "ended"
    assert seen == [("c1", True, 3)]
    assert r.port.ended_by == "service" and r.hung_up == 1


async def test_the_caller_hanging_up_ends_a_call_without_a_flow(autojump_clock):
    r = Rig()
    async with trio.open_nursery() as n:
        async def caller_hangs_up():
            await trio.sleep(2)
            r.port.end("caller")

        n.start_soon(caller_hangs_up)
        t0 = trio.current_time()
        assert await converse(r.port, r.active, ARRIVAL, None, hang_up=r.hang_up, flow_grace=5) == "ended"
        assert trio.current_time() - t0 == 2
    assert r.hung_up == 0  # the caller's side ended it: nothing to hang up


async def test_the_service_dropping_the_call_hangs_up_and_says_dropped(autojump_clock):
    r = Rig()

    async def flow(call, port, term):
        await trio.sleep(100)  # a flow that does not notice the drop

    async with trio.open_nursery() as n:
        async def drop():
            await trio.sleep(1)
            r.active.dropped.set()

        n.start_soon(drop)
        out = await converse(r.port, r.active, ARRIVAL, flow, hang_up=r.hang_up, flow_grace=3)
    assert out == "dropped" and r.hung_up == 1 and r.port.ended_by == "dropped"
    assert trio.current_time() == 4  # dropped at 1 s, the flow cancelled after the 3 s grace


async def test_a_failing_flow_is_logged_and_the_call_hung_up(autojump_clock, caplog):
    r = Rig()

    async def flow(call, port, term):
        raise RuntimeError("prompt missing")

    with caplog.at_level(logging.ERROR, logger="telephony.runtime.conversation"):
        assert await converse(r.port, r.active, ARRIVAL, flow, hang_up=r.hang_up, flow_grace=5) == "ended"
    assert "call flow of call c1" in caplog.text and "prompt missing" in caplog.text
    assert r.port.ended_by == "service" and r.hung_up == 1


async def test_a_flow_still_running_after_the_end_is_cancelled_after_the_grace(autojump_clock, caplog):
    r = Rig()
    cancelled = []

    async def flow(call, port, term):
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(trio.current_time())
            raise

    async with trio.open_nursery() as n:
        async def caller_hangs_up():
            await trio.sleep(1)
            r.port.end("caller")

        n.start_soon(caller_hangs_up)
        with caplog.at_level(logging.WARNING, logger="telephony.runtime.conversation"):
            assert await converse(r.port, r.active, ARRIVAL, flow, hang_up=r.hang_up, flow_grace=4) == "ended"
    assert cancelled == [5]
    assert "still running 4s after the call ended" in caplog.text
