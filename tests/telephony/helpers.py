"""Test doubles for the messaging service: the node manager end of the control channel, an
in-memory listener for the loopback trunk, and a driver that offers calls directly."""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from telephony.core.control import FROM_SERVICE, NEED_DATA, Closed, ControlConnection, validate
from telephony.core.events import CallArrival, Reason
from telephony.loopback import LoopbackTrunk
from telephony.runtime.ports import PortRegistry, PortState
from telephony.service import MessagingService


class FakeManager:
    """The node manager's end of the control channel.  Every message it receives is checked
    against the contract (``FROM_SERVICE``)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = ControlConnection()
        self.received: list[dict] = []  # everything, health included
        self.closed = False

    async def send(self, op: str, **fields: Any) -> None:
        await self.stream.send_all(self.conn.send({"op": op, **fields}))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next(self) -> dict | None:
        """The next message (health included), or None once the service closed the channel."""
        while True:
            ev = self.conn.next_event()
            if ev is NEED_DATA:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                self.conn.receive_data(data)
                continue
            if isinstance(ev, Closed):
                self.closed = True
                return None
            assert isinstance(ev, dict), f"service sent a bad line: {ev}"
            validate(ev, FROM_SERVICE)
            self.received.append(ev)
            return ev

    async def expect(self, op: str, **match: Any) -> dict:
        """Skip messages until one with ``op`` (and the given field values) arrives."""
        while True:
            msg = await self.next()
            assert msg is not None, f"channel closed while waiting for {op} {match}"
            if msg["op"] == op and all(msg.get(k) == v for k, v in match.items()):
                return msg

    async def expect_not_health(self) -> dict | None:
        """The next message that is not a health report."""
        while True:
            msg = await self.next()
            if msg is None or msg["op"] != "health":
                return msg

    async def drain_until_closed(self) -> None:
        while await self.next() is not None:
            pass


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections come from :meth:`connect` (an in-memory socketpair)."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](16)

    async def connect(self) -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        await self._send.send(server)
        return client

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError from None

    async def aclose(self) -> None:
        await self._receive.aclose()
        await trio.lowlevel.checkpoint()


class DirectTrunk:
    """A port driver that lets a test offer calls itself (no wire protocol)."""

    kind = "direct"

    def __init__(self, count: int = 2) -> None:
        self.count = count
        self.registry: PortRegistry | None = None
        self.service: MessagingService | None = None

    def register(self, registry: PortRegistry) -> None:
        self.registry = registry
        for i in range(1, self.count + 1):
            registry.register(f"direct-{i}", self.kind)

    async def run(self, service, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.service = service
        assert self.registry is not None
        self.registry.set_state(self.kind, PortState.IDLE)
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.registry.set_state(self.kind, PortState.DOWN)

    async def offer(self, call_id: str, **fields: Any):
        """Claim a port and offer a call like a real driver does; returns the Decision
        (or None when every port is busy)."""
        assert self.registry is not None and self.service is not None
        port = self.registry.claim(self.kind)
        if port is None:
            return None
        call = CallArrival(node=self.service.node, port=port.name, call_id=call_id,
                           calling=fields.get("calling", "4021"),
                           called=fields.get("called", "5000"),
                           forwarding=fields.get("forwarding", ""),
                           reason=fields.get("reason", Reason.DIRECT), integration="direct")
        return await self.service.offer(call)


@asynccontextmanager
async def running_service(*, drivers=(), offer_hold: float = 2.0, health_interval: float = 0.02,
                          node: str = "a", send_timeout: float = 5.0):
    """A MessagingService on an in-memory control channel; yields (service, manager, result)
    where ``result["code"]`` is the exit code once ``result["done"]`` is set."""
    ours, theirs = trio.testing.memory_stream_pair()
    service = MessagingService(node=node, control=ours, drivers=drivers, offer_hold=offer_hold,
                               health_interval=health_interval, send_timeout=send_timeout,
                               pid=4242)
    manager = FakeManager(theirs)
    result: dict[str, Any] = {"done": trio.Event()}

    async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
        result["code"] = await service.run(task_status=task_status)
        result["done_at"] = trio.current_time()
        result["done"].set()

    async with trio.open_nursery() as nursery:
        await nursery.start(run)  # hello sent, drivers running
        hello = await manager.expect("hello")
        assert hello["pid"] == 4242 and hello["node"] == node
        yield service, manager, result
        nursery.cancel_scope.cancel()


def make_trunk(count: int = 2, **kw: Any) -> tuple[LoopbackTrunk, MemoryListener]:
    listener = MemoryListener()
    return LoopbackTrunk(count=count, listeners=[listener], **kw), listener
