"""The loopback test trunk: a simulated PBX trunk of N ports (``loopback-1..N``) on TCP.

A client (the simulated PBX, see :mod:`telephony.loopback_client`) connects to the listener
(127.0.0.1 by default) and places **one call per connection** with JSON lines::

    -> {"op": "offer", "call_id": "c1", "calling": "4021", "called": "5000",
        "forwarding": "4000", "reason": "busy"}
    <- {"ev": "answered", "node": "a", "port": "loopback-1", "term": 8}
       or {"ev": "rejected", "reason": "busy" | "refused" | "timeout" | "duplicate" | "shutdown"}
    -> {"op": "hangup"}
    <- {"ev": "ended"}

After ``answered`` the call is in progress until the client sends ``hangup`` or closes the
connection.  When the service hangs the call up itself (deactivate without drain, shutdown,
node manager gone) the client gets ``{"ev": "dropped"}`` and the connection closes.
``calling``, ``called`` and ``forwarding`` default to "" and ``reason`` to "direct".

Lines are bounded (``max_line``, 4 KiB).  A bad line gets ``{"ev": "error", "message": ...}``
and changes nothing; an over-long line gets the error and the connection is closed (the
stream cannot be resynchronised).  Offers are not read while a call is held waiting for the
node manager: a ``hangup`` sent then is handled once the offer is decided.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import trio

from integrations.base import IntegrationProfile
from integrations.loopback import LOOPBACK

from ._control import NEED_DATA, Closed, ControlConnection, ControlError, ControlProtocolError
from .events import CallArrival
from .ports import ActiveCall, CallService, PortRegistry, PortState

log = logging.getLogger("telephony.loopback")

MAX_LINE = 4096
_OFFER_FIELDS = {"call_id", "calling", "called", "forwarding", "reason"}


class LoopbackTrunk:
    """Port driver of the loopback trunk (implements :class:`telephony.ports.PortDriver`)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, count: int | None = None,
                 profile: IntegrationProfile = LOOPBACK, max_line: int = MAX_LINE,
                 cleanup_timeout: float = 1.0,
                 listeners: list[trio.abc.Listener] | None = None) -> None:
        self.kind = profile.port_kind
        self.host = host
        self.port = port
        self.count = profile.ports if count is None else count
        if not 1 <= self.count <= 1024:
            raise ValueError(f"a loopback trunk has 1..1024 ports, not {self.count}")
        self.profile = profile
        self.max_line = max_line
        self.cleanup_timeout = cleanup_timeout
        self.address: tuple[str, int] | None = None
        # tests may hand in listeners of their own (in-memory streams); else open() binds TCP
        self._given = listeners is not None
        self._listeners: list[trio.abc.Listener] = list(listeners or [])
        self._registry: PortRegistry | None = None

    def port_names(self) -> list[str]:
        return [f"loopback-{i}" for i in range(1, self.count + 1)]

    def register(self, registry: PortRegistry) -> None:
        self._registry = registry
        for name in self.port_names():
            registry.register(name, self.kind)

    async def open(self) -> tuple[str, int]:
        """Bind the listener (idempotent); returns the (host, port) actually bound."""
        if self._given:
            self.address = self.address or ("memory", 0)
        elif not self._listeners:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
            sockname = listeners[0].socket.getsockname()
            self._listeners = list(listeners)
            self.address = (sockname[0], sockname[1])
        assert self.address is not None
        return self.address

    async def run(self, service: CallService, *,
                  task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        if self._registry is None:
            raise RuntimeError("register() the trunk before running it")
        await self.open()
        registry = self._registry
        try:
            async with trio.open_nursery() as nursery:
                for listener in self._listeners:
                    nursery.start_soon(self._accept_loop, listener, service, nursery)
                registry.set_state(self.kind, PortState.IDLE)
                log.info("loopback trunk listening on %s:%d with %d ports",
                         *(self.address or ("?", 0)), self.count)
                task_status.started(self.address)
        finally:
            registry.set_state(self.kind, PortState.DOWN)
            with trio.CancelScope(shield=True):
                for listener in self._listeners:
                    await listener.aclose()
            if not self._given:
                self._listeners = []

    async def _accept_loop(self, listener: trio.abc.Listener, service: CallService,
                           nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: back off rather than spin
                log.warning("loopback accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(self._guarded, stream, service)

    async def _guarded(self, stream: trio.abc.Stream, service: CallService) -> None:
        """One bad connection must not take the service (and its other calls) down."""
        try:
            await self.handle_connection(stream, service)
        except Exception:
            log.exception("loopback connection failed")

    # ------------------------------------------------------------------ one connection

    async def handle_connection(self, stream: trio.abc.Stream, service: CallService) -> None:
        """Serve one client connection: one call (see the module docstring)."""
        line = _Line(stream, self.max_line)
        active: ActiveCall | None = None
        decided = False  # a final reply to the offer (answered/rejected) went out
        client_gone = False
        try:
            fields = await self._read_offer(line, service)
            if fields is None:
                return
            assert self._registry is not None
            port = self._registry.claim(self.kind)
            if port is None:
                log.info("call %s rejected: all %d loopback ports busy", fields["call_id"],
                         self.count)
                decided = True
                await line.reply(ev="rejected", reason="busy")
                return
            try:
                arrival = CallArrival(node=service.node, port=port.name,
                                      integration=self.profile.name, **fields)
            except ValueError:  # checked in _read_offer; the node name is the service's own
                port.state = PortState.IDLE
                raise
            decision = await service.offer(arrival)
            decided = True
            if not decision.answered:
                await line.reply(ev="rejected", reason=decision.reason)
                return
            active = decision.call
            assert active is not None
            await line.reply(ev="answered", node=arrival.node, port=arrival.port,
                             term=decision.term)
            client_gone = await self._in_call(line, active, service)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            client_gone = True
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.cleanup_timeout
                if active is not None and not active.finished:
                    # the client vanished (ended) or the service is stopping (dropped)
                    await service.end_call(active, "ended" if client_gone else "dropped")
                if not client_gone:
                    if active is not None and active.dropped.is_set() and not line.dropped_sent:
                        await line.try_reply(ev="dropped")
                    elif line.offered and not decided:  # stopped while the offer was held
                        await line.try_reply(ev="rejected", reason="shutdown")
                await line.aclose()

    async def _read_offer(self, line: _Line, service: CallService) -> dict[str, Any] | None:
        while True:
            msg = await line.read()
            if msg is None:
                return None
            op = msg["op"]
            if op != "offer":
                hint = "no call in progress" if op == "hangup" else f"unknown op {op!r:.40}"
                await line.reply(ev="error", message=f"{hint}; send an offer first")
                continue
            try:
                fields = self._offer_fields(msg)
                CallArrival(node=service.node, port="check", integration=self.profile.name,
                            **fields)
            except ValueError as exc:
                await line.reply(ev="error", message=f"bad offer: {exc}")
                continue
            line.offered = True
            return fields

    def _offer_fields(self, msg: dict[str, Any]) -> dict[str, Any]:
        unknown = set(msg) - _OFFER_FIELDS - {"op"}
        if unknown:
            raise ValueError(f"unknown fields {', '.join(sorted(unknown))}")
        if "call_id" not in msg:
            raise ValueError("call_id is missing")
        fields: dict[str, Any] = {"call_id": msg["call_id"], "reason": msg.get("reason", "direct")}
        for name in ("calling", "called", "forwarding"):
            value = msg.get(name, "")
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
            fields[name] = self.profile.normalise(name, value)
        return fields

    async def _in_call(self, line: _Line, active: ActiveCall, service: CallService) -> bool:
        """Serve the call until it ends; True if the client connection broke."""
        gone = False
        async with trio.open_nursery() as nursery:

            async def watch_drop() -> None:
                await active.dropped.wait()
                # shielded: a shutdown that cancels us right after the drop must not cut the
                # line in half; the client gets the whole {"ev": "dropped"}
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self.cleanup_timeout
                    await line.try_reply(ev="dropped")
                    line.dropped_sent = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_drop)
            # errors are caught here, inside the nursery, so they do not become groups
            try:
                while True:
                    msg = await line.read()
                    if active.finished:  # the service hung up first: watch_drop replies
                        break
                    if msg is None:  # the client closed the connection: the call is over
                        await service.end_call(active, "ended")
                        break
                    if msg["op"] == "hangup":
                        await service.end_call(active, "ended")
                        await line.reply(ev="ended")
                        break
                    await line.reply(ev="error", message=f"unknown op {msg['op']!r:.40} "
                                     'during a call; send {"op": "hangup"}')
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                gone = True
            if not active.dropped.is_set():
                nursery.cancel_scope.cancel()
        return gone


class _Line:
    """JSON lines on one client connection; reads are bounded, replies are serialised."""

    def __init__(self, stream: trio.abc.Stream, max_line: int) -> None:
        self.stream = stream
        self.conn = ControlConnection(max_line)
        self.lock = trio.Lock()
        self.offered = False
        self.dropped_sent = False
        self._eof = False

    async def read(self) -> dict[str, Any] | None:
        """The next message with an "op", or None at end of stream (or after an over-long
        line, which is answered with an error)."""
        while True:
            try:
                ev = self.conn.next_event()
            except ControlProtocolError as exc:
                await self.reply(ev="error", message=f"{exc}; closing the connection")
                return None
            if ev is NEED_DATA:
                data = await self.stream.receive_some(65536)
                self.conn.receive_data(data)
                continue
            if isinstance(ev, Closed):
                return None
            if isinstance(ev, ControlError):
                await self.reply(ev="error", message=f"bad line: {ev.reason}")
                continue
            return ev

    async def reply(self, **msg: Any) -> None:
        data = json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        async with self.lock:
            await self.stream.send_all(data)

    async def try_reply(self, **msg: Any) -> None:
        try:
            await self.reply(**msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass

    async def aclose(self) -> None:
        await self.stream.aclose()
