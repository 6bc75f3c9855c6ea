"""The SCCP voice-mail ports' driver (:class:`SccpPorts`): ports ``sccp-1..N`` registered with
Cisco CallManager as SCCP stations, device prefix + N each (docs/sccp.md, "The driver").

* **Connections**: one TCP connection and one station machine per port
  (:class:`telephony.sccp.connection.StationLink`), over the configured servers in order, with
  back-off, and back to the first server when it answers again and the port is idle.  A port
  is ``idle`` in the port registry only while it is registered, ``down`` otherwise.  Each
  port's registration outcome is in :meth:`SccpPorts.status`, and its changes in the node's
  event log (``sccp_registered``, ``sccp_rejected``, ``sccp_lost``, ``sccp_rehomed``).
* **A call**: CallManager rings a port and says who called and why (``CallInfo``).  The
  driver claims the port and offers the call to the service at once (so a ring at the
  inactive node starts the failover at once); answered, the station goes off hook, opens an
  RTP receiver when CallManager asks (:class:`telephony.runtime.rtp.RtpEndpoint`), starts
  sending when told where, and the call flow runs on a
  :class:`telephony.runtime.mediaport.MediaCallPort` until CallManager clears the call or
  the flow hangs up.  A call the service rejects is declined (OnHook while ringing: CallManager
  hunts on).
* **Lamps**: :meth:`SccpPorts.send_mwi` calls CallManager's MWI on/off number from an idle
  registered port (the highest-numbered: CallManager hunts from the first), only while the
  service is active in the job's term; the outcome is judged by the station machine; a
  failure that may pass is retried, a refusal is not; the last failure is reported
  (``sccp_mwi_failed``) and raised, so the lamp stays unconfirmed.
* **Counters** (group ``sccp``): registrations and their losses, calls, media, lamps.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from integrations.base import IntegrationProfile
from integrations.cucm_sccp import CUCM_SCCP
from telephony.core.events import CallArrival
from telephony.core.mwi import TransmitRefused, require_term
from telephony.runtime.conversation import converse
from telephony.runtime.mediaport import MediaCallPort
from telephony.runtime.ports import ActiveCall, CallService, PortRegistry, PortState
from telephony.runtime.rtp import MediaClock, RtpEndpoint, RtpPortPool
from telephony.runtime.tasks import TaskFailures, contained, describe, python_logger, report_event
from telephony.sccp.connection import StationLink
from telephony.sccp.core import station as st
from telephony.sccp.core.callinfo import CallDetails, arrival_fields
from telephony.sccp.core.messages import Compression
from telephony.sccp.settings import KIND, SccpSettings

__all__ = ["SccpPorts", "Flow", "CODEC_NAMES"]

log = logging.getLogger("telephony.sccp")

#: ``flow(call, port, term)``: run while an answered call is in progress
Flow = Callable[[CallArrival, MediaCallPort, int], Awaitable[Any]]
#: the codec names of the settings and the endpoint -> SCCP compression types
CODEC_NAMES = {"pcmu": Compression.G711_ULAW, "pcma": Compression.G711_ALAW}
_CODEC_OF = {int(v): k for k, v in CODEC_NAMES.items()}
#: after CallState Connected, how long the flow waits for StartMediaTransmission
MEDIA_WAIT = 3.0
#: the longest a lamp job waits for a port while every registered port is busy
PORT_WAIT = 30.0
#: after a lamp call, how long the port waits for CallManager to clear it before it is free
SETTLE_WAIT = 5.0
#: the first retry delay of a lamp (doubled each time)
MWI_RETRY_DELAY = 1.0
#: dial outcomes that may pass (retried); any other failure is CallManager's refusal
RETRYABLE = ("timeout", "lost", "no dial tone", "no registered", "not registered", "port busy",
             "hung up", "unregistered", "cleared before dialling")


class _Call:
    """One call on one port: its actions, its media, its flow's port."""

    def __init__(self, link: StationLink, details: CallDetails) -> None:
        self.link = link
        self.generation = link.generation
        self.details = details
        self.send, self.receive = trio.open_memory_channel[Any](256)
        self.endpoint: RtpEndpoint | None = None
        self.port: MediaCallPort | None = None
        self.connected = False
        self.media_started = False
        self.ended: str | None = None  # "caller", "station", "lost"
        self.changed = trio.Event()

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class _Port:
    """A port's state besides its link: its call, a dial waiting for its result."""

    def __init__(self, link: StationLink) -> None:
        self.link = link
        self.call: _Call | None = None
        self.owner: str | None = None  # "call" | "mwi" | None
        self.dial_result: st.DialResult | None = None
        self.dial_done = trio.Event()


class SccpPorts:
    """Port driver of SCCP voice-mail ports (see the module docstring; implements
    :class:`telephony.runtime.ports.PortDriver` and the messaging core's lamp sink)."""

    kind = KIND
    #: the lamp is on or off, it shows no counts
    mwi_counts = False
    #: lamp jobs the messaging core may hand over at once (one port dials at a time)
    mwi_parallel = 1

    def __init__(self, settings: SccpSettings, *, node: str,
                 profile: IntegrationProfile = CUCM_SCCP, flow: Flow | None = None,
                 realtime: bool = True, flow_grace: float = 30.0,
                 connect_timeout: float | None = None) -> None:
        if not settings.servers:
            raise ValueError("ports.sccp.servers is not set")
        self.settings = settings
        self.node = node
        self.profile = profile
        self.flow = flow
        self.realtime = realtime
        self.flow_grace = flow_grace
        self.reasons = settings.reasons
        #: the term the service answers in, or None (``MessagingService.answering_term``)
        self.gate: Callable[[], int | None] = lambda: None
        #: ``report(level, event, message)``: the node's event log
        self.report: Callable[[str, str, str], Awaitable[None]] | None = None
        #: ``on_up()``: the first port registered: lamps that failed meanwhile are resent
        self.on_up: Callable[[], None] | None = None
        #: ``await line_info(port, call_id, node) -> CallArrival``: the SMDI record of the
        #: call on a port (set by the service with call_info = "smdi")
        self.line_info: Callable[[str, str, str], Awaitable[CallArrival]] | None = None
        self.counters: dict[str, int] = {
            "registered": 0, "rejected_registrations": 0, "lost": 0, "unreachable": 0,
            "rehomed": 0, "offered": 0, "answered": 0, "rejected": 0, "abandoned": 0,
            "media_failed": 0, "protocol_errors": 0, "mwi_sent": 0, "mwi_failed": 0,
            "mwi_refused": 0, "mwi_attempts": 0, "mwi_rejected_codes": 0}
        self.task_failures = TaskFailures(python_logger(log))
        codecs = tuple(CODEC_NAMES[c] for c in settings.codecs)
        self.ports: dict[str, _Port] = {}
        for i in range(1, settings.count + 1):
            name = f"{KIND}-{i}"
            config = st.StationConfig(
                device_name=settings.device_name(i), station_ip=settings.station_ip or "0.0.0.0",
                device_type=settings.device_type, protocol_ver=settings.protocol_version,
                codecs=codecs, keepalive_max=settings.keepalive_max,
                outbound_timeout=settings.mwi_timeout, packet_ms=settings.packet_ms)
            kw = {} if connect_timeout is None else {"connect_timeout": connect_timeout}
            link = StationLink(self, index=i, name=name, config=config,
                               servers=tuple(settings.servers), rehome_probe=settings.rehome_probe,
                               station_ip=settings.station_ip,
                               idle=lambda name=name: self._idle(name),
                               counters=self.counters, **kw)
            self.ports[name] = _Port(link)
        self._registry: PortRegistry | None = None
        self._service: CallService | None = None
        self._nursery: trio.Nursery | None = None
        self._pool: RtpPortPool | None = None
        #: one play-out/send ticker for the RTP endpoints of every call (docs/sccp.md)
        self.media_clock = MediaClock()
        self._idle_changed = trio.Event()
        self._reported: dict[str, set[str]] = {}
        self._any_registered = False

    # ------------------------------------------------------------------ PortDriver

    def port_names(self) -> list[str]:
        return list(self.ports)

    def register(self, registry: PortRegistry) -> None:
        self._registry = registry
        for name in self.port_names():
            registry.register(name, self.kind)

    def status(self) -> list[dict[str, Any]]:
        """Per port: name, device, server, registration outcome (and since when)."""
        return [p.link.status() for p in self.ports.values()]

    async def run(self, service: CallService, *,
                  task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        if self._registry is None:
            raise RuntimeError("register() the SCCP ports before running them")
        self._service = service
        self._pool = RtpPortPool(*self.settings.rtp_ports)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._keep_clock)
                for port in self.ports.values():
                    nursery.start_soon(self._keep_link, port.link)
                task_status.started()
        finally:
            self._nursery = None
            for port in self.ports.values():
                self._registry.get(port.link.name).state = PortState.DOWN
                if port.call is not None and port.call.port is not None:
                    port.call.port.end("dropped")

    async def _keep_clock(self) -> None:
        """The media clock runs for ever (each endpoint contains its own errors in its tick);
        a failure escaping it is recorded and it starts again."""
        while True:
            try:
                await self.media_clock.run()
            except Exception as e:  # noqa: BLE001 - contained: the calls' media go on
                self.task_failures.failed("sccp-media-clock", e, retry_in=0.05)
            await trio.sleep(0.05)

    async def _keep_link(self, link: StationLink) -> None:
        """A link runs for ever; a failure escaping it is recorded and it starts again."""
        while True:
            try:
                await link.run()
            except Exception as e:  # noqa: BLE001 - one port's failure is not the driver's
                self.task_failures.failed(f"sccp-link {link.name}", e)
                self._set_down(link)
                await trio.sleep(1.0)

    # ------------------------------------------------------------------ link events

    def _idle(self, name: str) -> bool:
        port = self.ports[name]
        if self._registry is None:
            return False
        return port.owner is None and port.call is None \
            and self._registry.get(name).state is PortState.IDLE

    def _set_down(self, link: StationLink) -> None:
        if self._registry is not None:
            self._registry.get(link.name).state = PortState.DOWN

    def link_changed(self, link: StationLink, event: str, detail: str) -> None:
        """The registration of ``link`` changed (see :class:`StationLink`)."""
        assert self._registry is not None
        port = self._registry.get(link.name)
        # the registration outcome in the health report, so `vmha status` shows it per port
        port.detail = f"{link.device} {link.outcome}" + (
            f" with {link.server}" if link.outcome == "registered" and link.server else "")
        if event == "registered":
            self.counters["registered"] += 1
            if port.state is PortState.DOWN:
                port.state = PortState.IDLE
            self._idle_signal()
            self._event(link, "info", "sccp_registered",
                        f"{link.name} ({link.device}) registered with CallManager {link.server} "
                        f"({detail})", key=f"registered {link.server}", fresh=True)
            if not self._any_registered:
                self._any_registered = True
                if self.on_up is not None and self.gate() is not None:
                    try:
                        self.on_up()
                    except Exception as e:  # noqa: BLE001 - the port is up all the same
                        self.task_failures.failed("sccp-on-up", e)
            return
        if event == "rehomed":
            self.counters["rehomed"] += 1
            self._event(link, "info", "sccp_rehomed",
                        f"{link.name} ({link.device}) re-homes {detail}", key=None)
            return
        if port.state is not PortState.DOWN and event in ("down", "lost", "rejected", "failed",
                                                         "unreachable"):
            port.state = PortState.DOWN
        if not any(p.link.registered for p in self.ports.values()):
            self._any_registered = False
        if event == "rejected":
            self.counters["rejected_registrations"] += 1
            self._event(link, "warning", "sccp_rejected",
                        f"CallManager {link.server} rejected {link.name} ({link.device}): "
                        f"{detail}", key=f"rejected {link.server} {detail}")
        elif event == "lost":
            self.counters["lost"] += 1
            self._event(link, "warning", "sccp_lost",
                        f"{link.name} ({link.device}) lost CallManager {link.server}: {detail}; "
                        "registering again", key=f"lost {link.server}", fresh=True)
        elif event in ("unreachable", "failed"):
            self.counters["unreachable"] += 1
            self._event(link, "warning", "sccp_lost",
                        f"{link.name} ({link.device}) cannot register with CallManager "
                        f"{link.server}: {detail}; trying the next server",
                        key=f"unreachable {link.server}")

    def _event(self, link: StationLink, level: str, event: str, message: str, *,
               key: str | None, fresh: bool = False) -> None:
        """An event for the node's event log.  A port's failures to register are reported
        once each per streak (``key``: what failed where), not at every attempt; a
        registration or the loss of one (``fresh``) starts a new streak."""
        if key is not None:
            seen = self._reported.setdefault(link.name, set())
            if fresh:
                seen.clear()
            elif key in seen:
                return
            seen.add(key)
        if self._nursery is not None:
            self._nursery.start_soon(report_event, self.report, log, level, event, message)
        else:
            getattr(log, level)("%s: %s", event, message)

    def _idle_signal(self) -> None:
        self._idle_changed.set()
        self._idle_changed = trio.Event()

    def link_action(self, link: StationLink, action: Any) -> None:
        """A call's or a dial's action from ``link``'s station (does not block)."""
        port = self.ports[link.name]
        if isinstance(action, st.Offer):
            if self._nursery is None or self._service is None:
                return
            call = _Call(link, action.info)
            port.call = call
            self._nursery.start_soon(contained, "sccp-call", self.task_failures, self._call,
                                     port, call, self._service)
        elif isinstance(action, st.DialResult):
            port.dial_result = action
            port.dial_done.set()
        else:
            call = port.call
            if call is None or call.generation != link.generation:
                log.debug("%s: %s without a call", link.name, type(action).__name__)
                return
            if isinstance(action, st.CallEnded):
                call.ended = call.ended or action.by
                if call.port is not None:
                    call.port.end("caller" if action.by == "caller" else "dropped")
            try:
                call.send.send_nowait(action)
            except trio.WouldBlock:
                self.task_failures.failed("sccp-call", f"{link.name}: call actions overflow")
            call.wake()

    # ------------------------------------------------------------------ calls

    def _arrival(self, name: str, call: _Call, service: CallService) -> CallArrival:
        fields = arrival_fields(call.details, self.reasons)
        for k in ("calling", "called", "forwarding"):
            try:
                fields[k] = self.profile.normalise(k, fields[k])
            except ValueError:
                fields[k] = ""
        return CallArrival(node=service.node, port=name, call_id=f"sccp-{self.node}-"
                           f"{uuid.uuid4().hex[:12]}", integration=self.profile.name, **fields)

    async def _call(self, port: _Port, call: _Call, service: CallService) -> None:
        """One call ringing on ``port``: offer, answer, media, flow."""
        assert self._registry is not None
        link = call.link
        name = link.name
        if self._registry.claim_port(name) is None:
            log.warning("%s rings but its port is %s: declined", name,
                        self._registry.get(name).state)
            await link.do(call.generation, lambda s, now: s.decline(now))
            self._forget(port, call)
            return
        port.owner = "call"
        offered = self._arrival(name, call, service)
        self.counters["offered"] += 1
        active: ActiveCall | None = None
        ended_by = "dropped"
        try:
            decision = await service.offer(offered)
            if not decision.answered:
                self.counters["rejected"] += 1
                await link.do(call.generation, lambda s, now: s.decline(now))
                return
            active = decision.call
            assert active is not None
            if call.ended is not None:
                self.counters["abandoned"] += 1
                ended_by = "ended"  # the caller gave up before the answer
                return
            await link.do(call.generation, lambda s, now: s.answer(now))
            arrival = offered
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._call_actions, call, nursery)
                if not await self._wait_connected(call, active):
                    ended_by = "ended" if call.ended == "caller" else "dropped"
                    nursery.cancel_scope.cancel()
                    return
                self.counters["answered"] += 1
                if self.line_info is not None:
                    arrival = await self.line_info(name, offered.call_id, offered.node)
                    active.arrival = arrival
                log.info("%s answered", arrival.summary())
                ended_by = await self._converse(call, active, arrival)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if call.port is not None:
                    call.port.end("dropped")
                if call.ended is None and link.generation == call.generation:
                    await link.do(call.generation, lambda s, now: s.hang_up(now))
                if call.endpoint is not None:
                    try:
                        await call.endpoint.aclose()
                    except Exception as e:  # noqa: BLE001 - the socket is gone either way
                        log.debug("%s: closing the RTP endpoint: %s", name, describe(e))
                if active is not None and not active.finished:
                    await service.end_call(active, ended_by)
                self._forget(port, call)

    def _forget(self, port: _Port, call: _Call) -> None:
        """The call is over: the port is free again (idle while registered), unless a newer
        call rings on it already."""
        if port.call is not None and port.call is not call:
            return
        port.call = None
        if port.owner == "call":
            port.owner = None
        assert self._registry is not None
        p = self._registry.get(port.link.name)
        if p.state is not PortState.DOWN:
            p.state = PortState.IDLE if port.link.registered else PortState.DOWN
        if not port.link.registered:
            p.state = PortState.DOWN
        port.link.poke()
        self._idle_signal()

    async def _wait_connected(self, call: _Call, active: ActiveCall) -> bool:
        """Until the call is connected and its media started (or :data:`MEDIA_WAIT` after
        the connection without media): True; the call ended or was dropped: False."""
        connected_at: float | None = None
        while True:
            changed = call.changed
            if call.ended is not None or active.dropped.is_set():
                return False
            if call.connected:
                if connected_at is None:
                    connected_at = trio.current_time()
                if call.media_started or trio.current_time() >= connected_at + MEDIA_WAIT:
                    return True
            with trio.move_on_after(0.2):
                await changed.wait()

    async def _call_actions(self, call: _Call, nursery: trio.Nursery) -> None:
        """The call's actions in order: media open/start/stop, connected, ended."""
        s = self.settings
        async for a in call.receive:
            if isinstance(a, st.OpenMedia):
                await self._open_media(call, a, nursery)
            elif isinstance(a, st.StartMedia):
                ep = call.endpoint
                codec = _CODEC_OF.get(int(a.codec))
                if ep is None or codec is None:
                    log.warning("%s: cannot send media (%s)", call.link.name,
                                "no receiver" if ep is None else f"codec {a.codec}")
                    continue
                try:
                    try:
                        ep.start(a.remote_ip, a.remote_port, codec=codec,
                                 packet_ms=a.packet_ms or s.packet_ms,
                                 rfc2833_pt=a.rfc2833_payload_type or None)
                    except ValueError as e:  # a packet size or event type we do not take:
                        log.warning("%s: %s; sending %d ms packets without RFC 2833 events",
                                    call.link.name, e, s.packet_ms)
                        ep.start(a.remote_ip, a.remote_port, codec=codec, packet_ms=s.packet_ms,
                                 rfc2833_pt=None)
                except ValueError as e:
                    log.warning("%s: cannot send media: %s", call.link.name, e)
                    continue
                call.media_started = True
            elif isinstance(a, st.StopMedia):
                call.media_started = False
                if call.endpoint is not None:
                    call.endpoint.stop()
            elif isinstance(a, st.Connected):
                call.connected = True
            call.wake()

    async def _open_media(self, call: _Call, a: Any, nursery: trio.Nursery) -> None:
        link = call.link
        host = self.settings.rtp_host or link.local_ip or "127.0.0.1"
        if call.endpoint is None:
            if _CODEC_OF.get(int(a.codec)) is None:
                ok = False
                why = f"codec {a.codec} is not offered"
            else:
                try:
                    assert self._pool is not None
                    call.endpoint = await RtpEndpoint.open(
                        host, self._pool, jitter_ms=self.settings.jitter_ms,
                        dtmf_mode=self.settings.dtmf, failures=self.task_failures,
                        clock=self.media_clock)
                    ok, why = True, ""
                except Exception as e:  # noqa: BLE001 - no port free, cannot bind
                    ok, why = False, describe(e)
            if not ok:
                self.counters["media_failed"] += 1
                log.warning("%s: no RTP receiver: %s", link.name, why)
                await link.do(call.generation, lambda s, now: s.media_failed(now))
                return
            ep = call.endpoint
            assert ep is not None
            ep.on_audio = self._feed_audio(call)
            ep.on_digit = self._feed_digit(call)
            await nursery.start(self._run_endpoint, call, ep)
        ep = call.endpoint
        await link.do(call.generation, lambda s, now: s.media_open(host, ep.local_port, now))

    async def _run_endpoint(self, call: _Call, ep: RtpEndpoint, *,
                            task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await ep.run(task_status=task_status)
        except Exception as e:  # noqa: BLE001 - the media fails: the call goes on silent
            self.task_failures.failed("sccp-rtp", e)

    @staticmethod
    def _feed_audio(call: _Call) -> Callable[[bytes], None]:
        def feed(pcm: bytes) -> None:
            if call.port is not None:
                call.port.feed_audio(pcm)
        return feed

    def _feed_digit(self, call: _Call) -> Callable[[str], None]:
        def feed(digit: str) -> None:
            if call.port is not None:
                call.port.feed_digit(digit)
        return feed

    async def _send_frame(self, call: _Call, pcm: bytes) -> None:
        ep = call.endpoint
        if ep is None or not call.media_started:
            return
        try:
            await ep.send_pcm(pcm)
        except Exception as e:  # noqa: BLE001 - a send error: the caller misses a frame
            log.debug("%s: RTP not sent: %s", call.link.name, describe(e))

    async def _hang_up(self, call: _Call) -> None:
        if call.ended is None:
            call.ended = "station"
            await call.link.do(call.generation, lambda s, now: s.hang_up(now))

    async def _converse(self, call: _Call, active: ActiveCall, arrival: CallArrival) -> str:
        """Run the flow (or hold the call) until it is over; the call's end event."""
        mp = call.port = MediaCallPort(call.link.name, send=lambda pcm: self._send_frame(call, pcm),
                                       on_hook=lambda: self._hang_up(call), realtime=self.realtime)
        if call.ended is not None:
            mp.end("caller")
        return await converse(mp, active, arrival, self.flow, hang_up=lambda: self._hang_up(call),
                              flow_grace=self.flow_grace)

    # ------------------------------------------------------------------ lamps

    def _dial_of(self, job) -> tuple[str, str | None]:
        """What a lamp job dials: ``(digits, calling_party)``."""
        s = self.settings
        number = s.mwi_on if job.on else s.mwi_off
        if s.mwi_style == "cme":
            return number + job.extension, None
        return number, job.extension

    async def send_mwi(self, job) -> None:
        """The messaging core's lamp sink.  Raises
        :class:`~telephony.core.mwi.TransmitRefused` unless active in ``job.term`` (nothing
        dialled), ``ConnectionError`` when every attempt failed."""
        digits, calling = self._dial_of(job)
        what = f"lamp call {digits}" + (f" from {calling}" if calling else "")
        delay = MWI_RETRY_DELAY
        last = "not tried"
        for attempt in range(self.settings.mwi_retries + 1):
            try:
                require_term(self.gate(), job, what)
                ok, last, retry = await self._mwi_attempt(job, digits, calling, what)
            except TransmitRefused:
                self.counters["mwi_refused"] += 1
                raise
            if ok:
                self.counters["mwi_sent"] += 1
                log.info("lamp %s for %s: %s confirmed", "on" if job.on else "off",
                         job.extension, what)
                return
            if not retry:
                self.counters["mwi_rejected_codes"] += 1
                break
            if attempt < self.settings.mwi_retries:
                await trio.sleep(delay)
                delay *= 2
        self.counters["mwi_failed"] += 1
        message = (f"lamp {'on' if job.on else 'off'} for {job.extension} (mailbox "
                   f"{job.mailbox}): {what} failed: {last}")
        await report_event(self.report, log, "warning", "sccp_mwi_failed", message)
        raise ConnectionError(message)

    async def _mwi_attempt(self, job, digits: str, calling: str | None,
                           what: str) -> tuple[bool, str, bool]:
        """One try: ``(ok, detail, may retry)``."""
        self.counters["mwi_attempts"] += 1
        port = await self._take_port()
        if port is None:
            return False, "no registered idle SCCP port", True
        link = port.link
        try:
            # the last check before anything goes to CallManager: a node deactivated while
            # the job waited for a port dials nothing
            require_term(self.gate(), job, what)
            port.dial_result = None
            port.dial_done = trio.Event()
            fed = await link.do(None, lambda s, now: s.dial(digits, now, calling_party=calling))
            if not fed:
                return False, "not registered", True
            with trio.move_on_after(self.settings.mwi_timeout + 5.0):
                await port.dial_done.wait()
            result = port.dial_result
            if result is None:
                return False, "timeout", True
            if result.ok:
                return True, result.detail, False
            return False, result.detail, any(result.detail.startswith(r) for r in RETRYABLE)
        finally:
            with trio.CancelScope(shield=True):
                # the port is free once CallManager has cleared the lamp call
                await link.settle(SETTLE_WAIT)
                self._release(port)

    async def _take_port(self) -> _Port | None:
        """The highest-numbered idle registered port, taken for a lamp call; waits up to
        :data:`PORT_WAIT` while every registered port is busy; None when none is
        registered (or none came free)."""
        assert self._registry is not None
        deadline = trio.current_time() + PORT_WAIT
        while True:
            ports = sorted(self.ports.values(), key=lambda p: -p.link.index)
            if not any(p.link.registered for p in ports):
                return None
            changed = self._idle_changed
            for p in ports:
                reg = self._registry.get(p.link.name)
                if p.link.station_idle and p.owner is None and p.call is None \
                        and reg.state is PortState.IDLE:
                    p.owner = "mwi"
                    reg.state = PortState.IN_CALL
                    return p
            if trio.current_time() >= deadline:
                return None
            with trio.move_on_at(min(deadline, trio.current_time() + 1.0)):
                await changed.wait()

    def _release(self, port: _Port) -> None:
        assert self._registry is not None
        if port.owner == "mwi":
            port.owner = None
            reg = self._registry.get(port.link.name)
            if reg.state is PortState.IN_CALL:
                reg.state = PortState.IDLE if port.link.registered else PortState.DOWN
        port.link.poke()
        self._idle_signal()

