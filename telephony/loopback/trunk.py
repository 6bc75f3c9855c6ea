"""The loopback trunk's port driver (:class:`LoopbackTrunk`): the listener, one call per
connection, the line rings and the MWI monitors (the protocol: :mod:`telephony.loopback`)."""
from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from integrations.base import IntegrationProfile
from integrations.loopback import LOOPBACK
from telephony.core import media
from telephony.core.events import CallArrival
from telephony.core.mwi import require_term
from telephony.loopback.port import LoopbackPort
from telephony.loopback.wire import (
    MAX_AUDIO_CHUNK,
    MAX_LINE,
    OFFER_FIELDS,
    JsonLines,
    line_bytes,
    parse_call_op,
)
from telephony.runtime.ports import ActiveCall, CallService, PortRegistry, PortState
from telephony.runtime.tasks import Backoff, TaskFailures, contained, listen_tcp, python_logger

log = logging.getLogger("telephony.loopback")

#: ``flow(call, port, term)``: run while an answered call is in progress.
Flow = Callable[[CallArrival, LoopbackPort, int], Awaitable[Any]]

_MONITOR: Any = object()  # _read_offer's answer for a {"op": "monitor"} connection


class LoopbackTrunk:
    """Port driver of the loopback trunk (implements :class:`telephony.runtime.ports.PortDriver`)."""

    #: its monitor shows the lamp's new/old counts (a count change is a lamp job too)
    mwi_counts = True

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, count: int | None = None,
                 profile: IntegrationProfile = LOOPBACK, max_line: int = MAX_LINE,
                 cleanup_timeout: float = 1.0,
                 listeners: list[trio.abc.Listener] | None = None, flow: Flow | None = None,
                 realtime: bool = True, play_chunk: int | None = None,
                 silence_threshold: float = media.SILENCE_THRESHOLD,
                 flow_grace: float = 30.0, transfer_timeout: float = 10.0) -> None:
        self.kind = profile.port_kind
        self.host = host
        self.port = port
        self.count = profile.ports if count is None else count
        if not 1 <= self.count <= 1024:
            raise ValueError(f"a loopback trunk has 1..1024 ports, not {self.count}")
        self.profile = profile
        self.max_line = max_line
        self.cleanup_timeout = cleanup_timeout
        #: the call flow (``telephony.core.callflow.CallFlow.handle``); None: calls are only held
        self.flow = flow
        self.realtime = realtime
        chunk = (media.FRAME_BYTES if realtime else MAX_AUDIO_CHUNK) if play_chunk is None \
            else play_chunk
        if isinstance(chunk, bool) or not isinstance(chunk, int) \
                or not media.SAMPLE_WIDTH <= chunk <= MAX_AUDIO_CHUNK or chunk % 2:
            raise ValueError(f"play_chunk must be an even number of bytes from 2 to "
                             f"{MAX_AUDIO_CHUNK}, not {chunk!r}")
        self.play_chunk = chunk
        media.SilenceDetector(silence_threshold)  # checks it
        self.silence_threshold = silence_threshold
        if isinstance(flow_grace, bool) or not isinstance(flow_grace, (int, float)) \
                or not (math.isfinite(flow_grace) and flow_grace >= 0):
            raise ValueError(f"flow_grace must be a number of seconds >= 0, not {flow_grace!r}")
        self.flow_grace = flow_grace
        if isinstance(transfer_timeout, bool) or not isinstance(transfer_timeout, (int, float)) \
                or not (math.isfinite(transfer_timeout) and 0 < transfer_timeout <= 3600):
            raise ValueError(f"transfer_timeout must be a number of seconds above 0, "
                             f"not {transfer_timeout!r}")
        self.transfer_timeout = float(transfer_timeout)
        self.address: tuple[str, int] | None = None
        # tests may hand in listeners of their own (in-memory streams); else open() binds TCP
        self._given = listeners is not None
        self._listeners: list[trio.abc.Listener] = list(listeners or [])
        self._registry: PortRegistry | None = None
        self._monitors: set[JsonLines] = set()  # connections that asked for MWI ("monitor")
        #: ``await line_info(port, call_id, node) -> CallArrival``: the information of a call
        #: ringing on a given line (``"line": N``), from the PBX's data link (SMDI); None: the
        #: offer's own fields are used
        self.line_info: Callable[[str, str, str], Awaitable[CallArrival]] | None = None
        #: True: run the flow only for offers with "media": true (the messaging service sets
        #: it, so a signalling-only client keeps the old behaviour: the call is held)
        self.media_only = False
        #: the term the service answers in, or None (``MessagingService.answering_term``): a
        #: lamp job of any other term is refused; None here: no gate (a trunk without service)
        self.gate: Callable[[], int | None] | None = None
        #: failures of the accept loop and of connections (the service puts its own here)
        self.task_failures = TaskFailures(python_logger(log))

    async def _monitor(self, line: JsonLines) -> None:
        """The simulated PBX's MWI side: ``{"op": "monitor"}`` gets ``{"ev": "monitoring"}``,
        then one ``{"ev": "mwi", ...}`` line per lamp job, until the client closes.  It is a
        monitor before ``monitoring`` goes out: every job sent after the client read that line
        reaches it."""
        try:
            async with line.lock:  # "monitoring" goes out before any job
                self._monitors.add(line)
                await line.stream.send_all(line_bytes(ev="monitoring"))
            while await line.read() is not None:
                pass  # nothing is expected from a monitor; its lines are ignored
        finally:
            self._monitors.discard(line)

    async def send_mwi(self, job) -> None:
        """Send a lamp job (``telephony.core.mwi.MwiJob``) to every monitor; raises
        :class:`~telephony.core.mwi.TransmitRefused` (nothing sent) unless the service is active in
        the job's term, ConnectionError when no monitor got it (the MWI ledger then keeps the
        lamp unconfirmed)."""
        if self.gate is not None:
            require_term(self.gate(), job, f"lamp job for {job.extension}")
        sent = 0
        for line in list(self._monitors):
            try:
                await line.reply(ev="mwi", extension=job.extension, mailbox=job.mailbox,
                                 on=job.on, new=job.new, old=job.old, term=job.term,
                                 reason=job.reason)
                sent += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._monitors.discard(line)
        if not sent:
            raise ConnectionError("no MWI monitor connected to the loopback trunk")

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
            listeners = await listen_tcp("ports.loopback.listen", self.host, self.port)
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
        """Accept for ever.  A failed accept (EMFILE and friends, anything else) is recorded
        (task ``loopback-accept``) and followed by a growing delay, never the end of the
        listener; the ports stay usable for the connections already open."""
        backoff = Backoff(first=0.1, cap=5.0, healthy_after=0.0)
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                raise  # the trunk is stopping
            except Exception as exc:  # noqa: BLE001 - back off rather than spin or die
                delay = backoff.next(0.0)
                self.task_failures.failed("loopback-accept", exc, retry_in=delay)
                await trio.sleep(delay)
                continue
            backoff.reset()
            nursery.start_soon(self._guarded, stream, service)

    async def _guarded(self, stream: trio.abc.Stream, service: CallService) -> None:
        """One bad connection must not take the service (and its other calls) down: what
        escapes its handler is recorded (task ``loopback-connection``)."""
        await contained("loopback-connection", self.task_failures, self.handle_connection,
                        stream, service)

    # ------------------------------------------------------------------ one connection

    async def handle_connection(self, stream: trio.abc.Stream, service: CallService) -> None:
        """Serve one client connection: one call (see the module docstring)."""
        line = JsonLines(stream, self.max_line)
        active: ActiveCall | None = None
        decided = False  # a final reply to the offer (answered/rejected) went out
        client_gone = False
        try:
            fields = await self._read_offer(line, service)
            if fields is None:
                return
            if fields is _MONITOR:
                await self._monitor(line)
                return
            media = self.media_only is False or bool(line.media)
            assert self._registry is not None
            wanted = fields.pop("line", None)
            if wanted is not None:  # a ring on that very line (a voice board's port)
                port = self._registry.claim_port(f"loopback-{wanted}")
            else:
                port = self._registry.claim(self.kind)
            if port is None:
                log.info("call %s rejected: %s busy", fields["call_id"],
                         f"line {wanted}" if wanted is not None else f"all {self.count} loopback ports")
                decided = True
                await line.reply(ev="rejected", reason="busy")
                return
            try:
                if wanted is not None and self.line_info is not None:
                    # the line carries no numbers: the call's information comes from the
                    # PBX's data link (an SMDI record for this line's terminal)
                    arrival = await self.line_info(port.name, fields["call_id"], service.node)
                else:
                    arrival = CallArrival(node=service.node, port=port.name,
                                          integration=self.profile.name, **fields)
            except BaseException:  # checked in _read_offer; the node name is the service's own
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
            if self.flow is None or not media:
                client_gone = await self._in_call(line, active, service)
            else:
                client_gone = await self._in_call_flow(line, active, service)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            # the client's connection broke or was reset (alone, or from a nursery's child)
            client_gone = True
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.cleanup_timeout
                if active is not None and not active.finished:
                    # the client vanished (ended) or the service is stopping (dropped)
                    await service.end_call(active, "ended" if client_gone else "dropped")
                if not client_gone:
                    if active is not None and active.dropped.is_set() and not line.dropped_sent \
                            and not line.final_sent:
                        await line.try_reply(ev="dropped")
                    elif line.offered and not decided:  # stopped while the offer was held
                        await line.try_reply(ev="rejected", reason="shutdown")
                await line.aclose()

    async def _read_offer(self, line: JsonLines, service: CallService) -> dict[str, Any] | None:
        while True:
            msg = await line.read()
            if msg is None:
                return None
            op = msg["op"]
            if op == "monitor" and not line.offered:
                return _MONITOR
            if op != "offer":
                hint = "no call in progress" if op in ("hangup", "audio", "dtmf") \
                    else f"unknown op {op!r:.40}"
                await line.reply(ev="error", message=f"{hint}; send an offer first")
                continue
            try:
                fields = self._offer_fields(msg)
                CallArrival(node=service.node, port="check", integration=self.profile.name,
                            **{k: v for k, v in fields.items() if k != "line"})
            except ValueError as exc:
                await line.reply(ev="error", message=f"bad offer: {exc}")
                continue
            line.offered = True
            line.media = msg.get("media", False)
            return fields

    def _offer_fields(self, msg: dict[str, Any]) -> dict[str, Any]:
        unknown = set(msg) - OFFER_FIELDS - {"op"}
        if unknown:
            raise ValueError(f"unknown fields {', '.join(sorted(unknown))}")
        if "call_id" not in msg:
            raise ValueError("call_id is missing")
        if not isinstance(msg.get("media", False), bool):
            raise ValueError("media must be true or false")
        fields: dict[str, Any] = {"call_id": msg["call_id"], "reason": msg.get("reason", "direct")}
        if "line" in msg:
            n = msg["line"]
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.count:
                raise ValueError(f"line must be a port number 1..{self.count}")
            fields["line"] = n
        for name in ("calling", "called", "forwarding"):
            value = msg.get(name, "")
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
            fields[name] = self.profile.normalise(name, value)
        return fields

    async def _in_call(self, line: JsonLines, active: ActiveCall, service: CallService) -> bool:
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

    async def _in_call_flow(self, line: JsonLines, active: ActiveCall, service: CallService) -> bool:
        """Serve a call with a flow until the caller's side is over and the flow is done (or
        ``flow_grace`` has passed since the caller's side ended); True if the client
        connection broke."""
        assert self.flow is not None
        flow = self.flow
        port = LoopbackPort(line, realtime=self.realtime, play_chunk=self.play_chunk,
                            silence_threshold=self.silence_threshold,
                            send_timeout=self.cleanup_timeout,
                            transfer_timeout=self.transfer_timeout)
        arrival = active.arrival
        gone = False
        flow_done = trio.Event()
        reader = trio.CancelScope()

        def linger() -> None:
            # the service ended the call: read (and ignore) what the client sent meanwhile,
            # for a while, so that closing does not reset the connection under its feet
            reader.deadline = min(reader.deadline, trio.current_time() + self.cleanup_timeout)

        port._on_service_end = linger
        async with trio.open_nursery() as nursery:

            async def watch_drop() -> None:
                await active.dropped.wait()
                if port._ended_by is None:  # the caller's side was still up
                    port._end("dropped")
                    with trio.CancelScope(shield=True) as scope:
                        scope.deadline = trio.current_time() + self.cleanup_timeout
                        await line.try_reply(ev="dropped")
                        line.dropped_sent = True
                    linger()

            async def run_flow() -> None:
                try:
                    try:
                        await flow(arrival, port, active.term)
                    except Exception:
                        log.exception("call flow of %s failed", arrival.summary())
                    if not active.dropped.is_set():  # else watch_drop has the last word
                        await port.hangup()  # shielded, bounded by cleanup_timeout
                except BaseException:
                    port._end("dropped")  # cancelled: the trunk is stopping (no-op if over)
                    raise
                finally:
                    flow_done.set()

            nursery.start_soon(watch_drop)
            nursery.start_soon(run_flow)
            with reader:
                try:
                    while True:
                        msg = await line.read()
                        if msg is None:  # the client closed the connection
                            port._end("caller")
                            break
                        try:
                            kind, value = parse_call_op(msg)
                        except ValueError as exc:
                            if port._ended_by is None:
                                await line.reply(ev="error", message=str(exc))
                            continue
                        if kind == "hangup":
                            if port._ended_by is None:
                                port._end("caller")
                                await line.reply(ev="ended")
                                line.final_sent = True
                            break
                        if port._ended_by is not None:
                            continue  # the call is over: drained and ignored
                        try:
                            if kind == "audio":
                                port._feed_audio(value)
                            elif kind == "transfer":
                                port._feed_transfer(value)
                            else:
                                port._feed_digit(value)
                        except ValueError as exc:
                            await line.reply(ev="error", message=str(exc))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    gone = True
                    port._end("caller")
            # the caller's side is over; the flow may still be storing the message
            with trio.move_on_after(self.flow_grace) as grace:
                await flow_done.wait()
            if grace.cancelled_caught:
                log.warning("call flow of %s still running %gs after the call ended: "
                            "cancelled", arrival.summary(), self.flow_grace)
            nursery.cancel_scope.cancel()
        if not active.finished:
            await service.end_call(active, "ended")
        return gone
