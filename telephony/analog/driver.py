"""The analog lines' port driver (:class:`AnalogPorts`): a voice board's FXO lines as the
ports ``analog-1..N`` (docs/analog.md, "Analog ports", "DTMF integration", "Lamps by
dialling").

* **The board**: ``[ports.analog] backend`` chooses it (``sim``: the board simulator's Unix
  socket, :class:`~telephony.analog.simboard.SimBoard`; ``dahdi``: DAHDI FXO channels,
  ``telephony.analog.dahdi.DahdiBoard``).  A board that cannot be opened, or fails, is closed
  and opened again with a growing delay (0.2 s doubling to 5 s); its ports are ``down``
  meanwhile, the calls on it end, and the node's event log says so (``analog_down``,
  ``analog_up``).  Nothing a board does ends the driver.
* **A call**: each line runs the state machine of :mod:`telephony.analog.core.line`.  At the
  first ring the driver claims the port and offers the call to the service (so a ring at the
  inactive node starts the failover at once); once the service answers, the line goes off hook
  after ``rings`` rings, the call's information is read (``dtmf``: the integration digits,
  :mod:`telephony.analog.core.digits`; ``smdi``: the SMDI record of the line through
  ``line_info``; else none), and the call flow runs on an
  :class:`~telephony.analog.port.AnalogPort` until the caller hangs up (loop drop, a
  disconnect tone, silence) or the flow does.
* **Lamps**: :meth:`AnalogPorts.send_mwi` dials feature codes on an idle line
  (:class:`~telephony.analog.mwi.LampDialler`), only while the service is active in the job's
  term (``gate``).
* **Counters** (group ``analog``): calls offered, answered, rejected, abandoned, the
  disconnect causes, integration digits matched or not, lamps, board opens and losses.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from integrations.analog import ANALOG_DTMF
from integrations.base import IntegrationProfile
from telephony.analog.board import Audio, Board, Event, LineEvent
from telephony.analog.core.digits import DigitCollector, Result
from telephony.analog.core.line import Action, Kind, LineMachine, LineState
from telephony.analog.mwi import LampDialler, SeizeFailed
from telephony.analog.port import AnalogPort
from telephony.analog.settings import KIND, AnalogSettings, dial_string
from telephony.core import dtmf, media, tones
from telephony.core.callerid import CallerIdDecoder
from telephony.core.events import CallArrival, Reason
from telephony.runtime.conversation import converse
from telephony.runtime.ports import ActiveCall, CallService, PortRegistry, PortState
from telephony.runtime.tasks import Backoff, TaskFailures, contained, describe, python_logger, report_event

log = logging.getLogger("telephony.analog")

#: ``flow(call, port, term)``: run while an answered call is in progress
Flow = Callable[[CallArrival, AnalogPort, int], Awaitable[Any]]
#: seconds between looks at the lines' timers
TICK = 0.05
#: the longest a lamp job waits for a line while every line is busy
LINE_WAIT = 120.0
#: the caller-ID standard of each tone profile's region
CALLERID_STANDARD = {"na": "bell202", "etsi": "v23"}


def make_board(s: AnalogSettings) -> Board:
    """The board ``s.backend`` names (not opened)."""
    if s.backend == "dahdi":
        from telephony.analog.dahdi import DahdiBoard

        return DahdiBoard(s.channels or (), s.law)
    from telephony.analog.simboard import SimBoard

    if s.socket is None:
        raise ValueError("ports.analog.socket is not set")
    return SimBoard(s.socket)


class _Line:
    """One line's state besides its machine: detectors, the call's port, waiters."""

    def __init__(self, number: int, machine: LineMachine, profile: str) -> None:
        self.number = number
        self.name = f"{KIND}-{number}"
        self.machine = machine
        self.tones = tones.ToneDetector(profile)
        self.dtmf = dtmf.DtmfDetector()
        self.cid_standard = CALLERID_STANDARD.get(profile, "bell202")
        self.cid: CallerIdDecoder | None = None
        self.caller_id = ""
        self.port: AnalogPort | None = None
        self.owner: str | None = None  # "call" | "mwi" | None
        self.connected = False
        self.dial_tone = False
        self.seize_failed = ""
        self.heard: list[str] = []  # tones heard while seized (lamps by dialling)
        self.changed = trio.Event()

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def reset_detectors(self) -> None:
        self.tones.reset()
        self.dtmf.reset()


class _Seized:
    """A line the lamp dialler holds (:class:`telephony.analog.mwi.SeizedLine`)."""

    def __init__(self, driver: AnalogPorts, line: _Line) -> None:
        self.driver = driver
        self.line = line
        self.name = line.name

    async def dial(self, pcm: bytes) -> None:
        line = self.line
        line.heard.clear()
        start = trio.current_time()
        for i, frame in enumerate(media.frames(pcm, media.FRAME_BYTES)):
            if line.machine.state is not LineState.OUTBOUND:
                raise SeizeFailed(f"{line.name} was lost while dialling")
            await self.driver.send_audio(line, frame.ljust(media.FRAME_BYTES, b"\0"))
            if self.driver.realtime:
                await trio.sleep_until(start + (i + 1) * media.FRAME_MS / 1000)

    async def wait_tone(self, names: tuple[str, ...], deadline: float) -> str | None:
        line = self.line
        seen = 0
        while True:
            changed = line.changed
            for name in line.heard[seen:]:
                if name in names:
                    return name
            seen = len(line.heard)
            if line.machine.state is not LineState.OUTBOUND:
                raise SeizeFailed(f"{line.name} was lost while waiting for the PBX's answer")
            if trio.current_time() >= deadline:
                return None
            with trio.move_on_at(deadline):
                await changed.wait()

    async def release(self) -> None:
        await self.driver.release(self.line)


class AnalogPorts:
    """Port driver of a voice board's analog lines (see the module docstring; implements
    :class:`telephony.runtime.ports.PortDriver` and the messaging core's lamp sink)."""

    kind = KIND
    #: the lamp is on or off, it shows no counts
    mwi_counts = False

    def __init__(self, settings: AnalogSettings, *, node: str,
                 profile: IntegrationProfile = ANALOG_DTMF, call_info: str | None = None,
                 board_factory: Callable[[], Board] | None = None, flow: Flow | None = None,
                 realtime: bool = True, flow_grace: float = 30.0,
                 reconnect_min: float = 0.2, reconnect_max: float = 5.0) -> None:
        self.settings = settings
        self.node = node
        self.profile = profile
        #: where the calls' information comes from: "dtmf", "smdi" (``line_info``) or
        #: "signalling" (none: a direct call, the caller-ID number when one was heard)
        self.call_info = str(call_info or profile.call_info)
        self.count = settings.lines
        self.board_factory = board_factory or partial(make_board, settings)
        self.flow = flow
        self.realtime = realtime
        self.flow_grace = flow_grace
        self.reconnect_min, self.reconnect_max = reconnect_min, reconnect_max
        timing = settings.timing()
        self.lines = {i: _Line(i, LineMachine(timing), settings.tone_profile)
                      for i in range(1, self.count + 1)}
        #: ``await line_info(port, call_id, node) -> CallArrival``: the SMDI record of the
        #: call ringing on a line (set by the service with call_info = "smdi")
        self.line_info: Callable[[str, str, str], Awaitable[CallArrival]] | None = None
        #: the term the service answers in, or None (``MessagingService.answering_term``)
        self.gate: Callable[[], int | None] = lambda: None
        #: ``report(level, event, message)``: the node's event log
        self.report: Callable[[str, str, str], Awaitable[None]] | None = None
        #: ``on_up()``: the board (re)opened: lamps that failed meanwhile are resent
        self.on_up: Callable[[], None] | None = None
        self.counters: dict[str, int] = {
            "board_opens": 0, "board_lost": 0, "offered": 0, "answered": 0, "rejected": 0,
            "abandoned": 0, "glare": 0, "hangup_loop_drop": 0, "hangup_tone": 0,
            "hangup_silence": 0, "digits_matched": 0, "digits_unmatched": 0, "digits_none": 0}
        self.dialler = LampDialler(
            self, on_code=partial(dial_string, settings.mwi_on),
            off_code=partial(dial_string, settings.mwi_off),
            confirm_timeout=settings.confirm_timeout, retries=settings.mwi_retries,
            retry_delay=settings.mwi_retry_delay, parallel=settings.mwi_lines,
            gate=lambda: self.gate(), report=self._forward, counters=self.counters)
        #: how many lamp jobs the messaging core may hand over at once
        self.mwi_parallel = settings.mwi_lines
        self.last_error: str | None = None
        self.task_failures = TaskFailures(python_logger(log))
        self._registry: PortRegistry | None = None
        self._board: Board | None = None
        self._nursery: trio.Nursery | None = None
        self._service: CallService | None = None
        self._tx = trio.Lock()
        self._idle_changed = trio.Event()

    # ------------------------------------------------------------------ PortDriver

    def port_names(self) -> list[str]:
        return [line.name for line in self.lines.values()]

    def register(self, registry: PortRegistry) -> None:
        self._registry = registry
        for name in self.port_names():
            registry.register(name, self.kind)

    async def _report(self, level: str, event: str, message: str) -> None:
        await report_event(self.report, log, level, event, message)

    async def _forward(self, level: str, event: str, message: str) -> None:
        """The lamp dialler's events (it logs them itself) to the node's event log."""
        if self.report is not None:
            await self.report(level, event, message)

    async def run(self, service: CallService, *,
                  task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        if self._registry is None:
            raise RuntimeError("register() the analog ports before running them")
        self._service = service
        started = False
        backoff = Backoff(first=self.reconnect_min, cap=self.reconnect_max, healthy_after=10.0)
        try:
            while True:
                began = trio.current_time()
                board = None
                try:
                    board = self.board_factory()
                    await board.open()
                except Exception as e:  # noqa: BLE001 - BoardError, OSError: try again later
                    why = describe(e)
                    if why != self.last_error:
                        await self._report("warning", "analog_down",
                                           f"analog board cannot be opened: {why}; retrying")
                    self.last_error = why
                    if board is not None:
                        with trio.CancelScope(shield=True):
                            await board.aclose()
                else:
                    if not started:
                        task_status.started()
                        started = True
                    why = await self._serve(board, service)
                    self.counters["board_lost"] += 1
                    self.last_error = why
                    await self._report("warning", "analog_down",
                                       f"analog board lost: {why}; reopening")
                if not started:
                    task_status.started()
                    started = True
                await trio.sleep(backoff.next(trio.current_time() - began))
        finally:
            self._board = None
            now = trio.current_time()
            for line in self.lines.values():
                line.machine.board_down(now)
                if line.port is not None:
                    line.port.end("dropped")
            self._registry.set_state(self.kind, PortState.DOWN)

    async def _serve(self, board: Board, service: CallService) -> str:
        """Serve an open board until it fails; returns why it was lost."""
        assert self._registry is not None
        self._board = board
        self.counters["board_opens"] += 1
        usable = min(board.lines, self.count)
        failure: list[str] = []
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                now = trio.current_time()
                for i in range(1, usable + 1):
                    await self._apply(self.lines[i], self.lines[i].machine.board_up(now))
                await self._report("info", "analog_up", f"analog board open: {usable} of "
                                   f"{self.count} lines (the board has {board.lines}, "
                                   f"{board.law})")
                self.last_error = None
                if usable < self.count:
                    log.warning("the board has %d lines: ports analog-%d..%d stay down",
                                board.lines, usable + 1, self.count)
                if self.on_up is not None and self.gate() is not None:
                    try:
                        self.on_up()
                    except Exception as e:  # noqa: BLE001 - the board is up all the same
                        self.task_failures.failed("analog-board", e)
                nursery.start_soon(self._ticker)
                while True:
                    try:
                        item = await board.receive()
                    except Exception as e:  # noqa: BLE001 - the board failed: close, reopen
                        failure.append(describe(e))
                        break
                    try:
                        await self._input(item)
                    except Exception as e:  # noqa: BLE001 - one input's failure is not the board's
                        self.task_failures.failed("analog-input", e)
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._board = None
            now = trio.current_time()
            with trio.CancelScope(shield=True):
                for line in self.lines.values():
                    for a in line.machine.board_down(now):
                        if a.kind is Kind.DISCONNECTED and line.port is not None:
                            line.port.end("dropped")
                    line.wake()
                self._registry.set_state(self.kind, PortState.DOWN)
                await board.aclose()
        return failure[0] if failure else "closed"

    # ------------------------------------------------------------------ input

    async def _input(self, item: Event | Audio) -> None:
        line = self.lines.get(item.line)
        if line is None or not line.machine.board_ok:
            return  # a line beyond this node's count
        now = trio.current_time()
        m = line.machine
        if isinstance(item, Event):
            ev = item.event
            if ev is LineEvent.RING_ON:
                actions = m.ring_on_event(now)
            elif ev is LineEvent.RING_OFF:
                actions = m.ring_off_event(now)
            elif ev is LineEvent.LOOP_ON:
                actions = m.loop_on_event(now)
            elif ev is LineEvent.LOOP_DROP:
                actions = m.loop_drop_event(now, item.ms)
            elif ev is LineEvent.ALARM:
                actions = m.alarm_event(now)
            else:
                actions = m.alarm_clear_event(now)
            await self._apply(line, actions)
            return
        pcm = item.pcm
        state = m.state
        if state is LineState.RINGING:  # the on-hook caller-ID burst
            if line.cid is None:
                line.cid = CallerIdDecoder(line.cid_standard)
            cid = line.cid.feed(pcm)
            if cid is not None and cid.number:
                line.caller_id = cid.number
            return
        if state not in (LineState.CONNECTED, LineState.SEIZING, LineState.OUTBOUND):
            return
        actions = m.audio(now, pcm)
        found = line.tones.feed(pcm)
        for name in found:
            if state is not LineState.CONNECTED:  # the lamp dialler listens
                line.heard.append(name)
            actions += m.tone(now, name)
        if state is LineState.CONNECTED:
            for digit in line.dtmf.feed(pcm):
                if line.port is not None:
                    line.port.feed_digit(digit)
            if line.port is not None:
                line.port.feed_audio(pcm)
        if actions:
            await self._apply(line, actions)
        elif found:
            line.wake()

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(TICK)
            now = trio.current_time()
            for line in self.lines.values():
                if now >= line.machine.deadline():
                    before = line.machine.state
                    try:
                        await self._apply(line, line.machine.tick(now))
                    except Exception as e:  # noqa: BLE001 - the other lines' timers go on
                        self.task_failures.failed("analog-timers", e)
                    if before is LineState.GUARD and line.machine.state is LineState.IDLE:
                        self._idle()

    def _idle(self) -> None:
        self._idle_changed.set()
        self._idle_changed = trio.Event()

    def _port(self, line: _Line):
        assert self._registry is not None
        return self._registry.get(line.name)

    async def _apply(self, line: _Line, actions: list[Action]) -> None:
        for a in actions:
            k = a.kind
            if k is Kind.OFF_HOOK:
                line.reset_detectors()
                await self._hook(line, True)
            elif k is Kind.ON_HOOK:
                await self._hook(line, False)
            elif k is Kind.OFFER:
                line.connected = False
                line.caller_id = ""
                line.cid = None
                if self._nursery is not None and self._service is not None:
                    self._nursery.start_soon(contained, "analog-call", self.task_failures,
                                             self._call, line, self._service)
            elif k is Kind.CONNECTED:
                line.connected = True
            elif k is Kind.DISCONNECTED:
                cause = a.reason.removesuffix("_tone")
                key = {"loop_drop": "hangup_loop_drop", "silence": "hangup_silence"}.get(
                    cause, "hangup_tone" if a.reason.endswith("_tone") else None)
                if key is not None:
                    self.counters[key] += 1
                log.info("%s: the far end hung up (%s)", line.name, a.reason)
                if line.port is not None:
                    line.port.end("caller")
            elif k is Kind.ABANDONED:
                if a.reason != "refused":
                    self.counters["abandoned"] += 1
                port = self._port(line)
                if line.owner is None and port.state is PortState.RINGING:
                    port.state = PortState.IDLE
                self._idle()
            elif k is Kind.DIAL_TONE:
                line.dial_tone = True
            elif k is Kind.SEIZE_FAILED:
                line.seize_failed = a.reason
                if a.reason == "glare":
                    self.counters["glare"] += 1
                if line.owner == "mwi":
                    line.owner = None
                    port = self._port(line)
                    if port.state is PortState.IN_CALL:
                        port.state = PortState.IDLE
            elif k is Kind.DOWN:
                self._port(line).state = PortState.DOWN
                if line.port is not None:
                    line.port.end("dropped")
            elif k is Kind.UP:
                self._port(line).state = PortState.IDLE
                self._idle()
        line.wake()

    async def _hook(self, line: _Line, offhook: bool) -> None:
        board = self._board
        if board is None:
            return
        async with self._tx:
            try:
                await board.set_hook(line.number, offhook)
            except Exception as e:  # noqa: BLE001 - the board's reader notices and reopens
                log.warning("%s: cannot set the hook %s: %s", line.name,
                            "off" if offhook else "on", describe(e))

    async def send_audio(self, line: _Line, frame: bytes) -> None:
        """One 20 ms frame to ``line`` (a failure of the board is left to its reader)."""
        board = self._board
        if board is None:
            return
        line.machine.played(trio.current_time(), frame)
        async with self._tx:
            try:
                await board.send_audio(line.number, frame)
            except Exception as e:  # noqa: BLE001
                log.debug("%s: audio not sent: %s", line.name, describe(e))

    async def _hang_up(self, line: _Line) -> None:
        await self._apply(line, line.machine.hangup(trio.current_time()))

    # ------------------------------------------------------------------ calls

    async def _call(self, line: _Line, service: CallService) -> None:
        """One call ringing on ``line``: offer, answer, call information, flow."""
        assert self._registry is not None
        port = self._registry.claim_port(line.name)
        if port is None:
            log.warning("%s rings but its port is %s: not offered", line.name,
                        self._registry.get(line.name).state)
            line.machine.refuse(trio.current_time())
            return
        line.owner = "call"
        call_id = f"analog-{self.node}-{uuid.uuid4().hex[:12]}"
        offered = CallArrival(node=service.node, port=line.name, call_id=call_id, calling="",
                              called="", forwarding="", reason=Reason.DIRECT,
                              integration=self.profile.name)
        self.counters["offered"] += 1
        active: ActiveCall | None = None
        ended_by = "dropped"
        try:
            try:
                decision = await service.offer(offered)
            finally:
                line.owner = None
            if not decision.answered:
                self.counters["rejected"] += 1
                line.machine.refuse(trio.current_time())
                if line.machine.state is LineState.RINGING and port.state is PortState.IDLE:
                    port.state = PortState.RINGING  # it rings on until the PBX hunts on
                return
            line.owner = "call"
            active = decision.call
            assert active is not None
            await self._apply(line, line.machine.answer(trio.current_time()))
            if not await self._wait_connected(line, active):
                ended_by = "ended"  # the caller gave up before the answer
                return
            self.counters["answered"] += 1
            ap = line.port = AnalogPort(line.name, send=partial(self.send_audio, line),
                                        on_hook=partial(self._hang_up, line),
                                        realtime=self.realtime)
            if line.machine.state is not LineState.CONNECTED:
                ap.end("caller")
            arrival = await self._information(line, ap, offered)
            active.arrival = arrival
            log.info("%s answered", arrival.summary())
            ended_by = await self._converse(line, ap, active, arrival)
        finally:
            with trio.CancelScope(shield=True):
                line.owner = None
                if line.port is not None:
                    line.port.end("dropped")
                    line.port = None
                if line.machine.state in (LineState.CONNECTED, LineState.RINGING):
                    if line.machine.state is LineState.RINGING:
                        line.machine.refuse(trio.current_time())
                    else:
                        await self._hang_up(line)
                if active is not None and not active.finished:
                    await service.end_call(active, ended_by)
                if line.machine.state in (LineState.DOWN,):
                    port.state = PortState.DOWN

    async def _wait_connected(self, line: _Line, active: ActiveCall) -> bool:
        """Until the line is off hook in the call (True), or the caller gave up, the line
        went down or the service dropped the call (False)."""
        while True:
            changed = line.changed
            if line.connected:
                return True
            if line.machine.state is not LineState.RINGING or active.dropped.is_set():
                return False
            with trio.move_on_after(TICK * 4):
                await changed.wait()

    async def _information(self, line: _Line, ap: AnalogPort, offered: CallArrival) -> CallArrival:
        """The call's information: the integration digits, the SMDI record, or none."""
        if self.call_info == "dtmf":
            s = self.settings
            col = DigitCollector(s.digit_patterns, now=trio.current_time(),
                                 first_timeout=s.digit_timeout, gap=s.digit_gap)
            result = None
            while result is None:
                digit = await ap.next_digit(col.deadline)
                now = trio.current_time()
                result = col.feed(digit, now) if digit is not None else col.tick(now)
                if result is None and ap.hung_up:
                    result = col.tick(math.inf)
            return self._from_digits(line, offered, result)
        if self.line_info is not None:
            return await self.line_info(line.name, offered.call_id, offered.node)
        return self._numbers(offered, calling=line.caller_id)

    def _from_digits(self, line: _Line, offered: CallArrival, r: Result) -> CallArrival:
        if r.matched:
            self.counters["digits_matched"] += 1
        else:
            self.counters["digits_unmatched" if r.digits else "digits_none"] += 1
            if r.digits:
                log.info("%s: integration digits %r match no pattern: a direct call",
                         line.name, r.digits)
            return self._numbers(offered, calling=line.caller_id)
        forwarded = r.reason is not Reason.DIRECT
        return self._numbers(offered, reason=r.reason, calling=r.caller or line.caller_id,
                             forwarding=r.ext if forwarded else "",
                             called="" if forwarded else r.ext)

    def _numbers(self, offered: CallArrival, **fields: Any) -> CallArrival:
        out: dict[str, Any] = {}
        for k, v in fields.items():
            if k in ("calling", "called", "forwarding"):
                try:
                    v = self.profile.normalise(k, v)
                except ValueError:
                    v = ""
            out[k] = v
        return dataclasses.replace(offered, **out)

    async def _converse(self, line: _Line, ap: AnalogPort, active: ActiveCall,
                        arrival: CallArrival) -> str:
        """Run the flow (or hold the call) until it is over; the call's end event."""
        return await converse(ap, active, arrival, self.flow, hang_up=lambda: self._hang_up(line),
                              flow_grace=self.flow_grace)

    # ------------------------------------------------------------------ lamps

    async def send_mwi(self, job) -> None:
        """The messaging core's lamp sink (:class:`telephony.analog.mwi.LampDialler`)."""
        await self.dialler.send_mwi(job)

    async def seize(self) -> _Seized:
        """An idle line off hook with dial tone (:class:`telephony.analog.mwi.LineSource`):
        the highest-numbered idle line (a PBX hunts from the first, so this keeps out of
        its way).  While every usable line is busy the job waits, up to :data:`LINE_WAIT`
        seconds; with no usable line (board down, every line in alarm) it fails at once."""
        assert self._registry is not None
        deadline = trio.current_time() + LINE_WAIT
        while True:
            if self._board is None:
                raise SeizeFailed("the analog board is down")
            lines = sorted(self.lines.values(), key=lambda x: -x.number)
            if not any(line.machine.usable for line in lines):
                raise SeizeFailed("no usable line (every line is in alarm)")
            changed = self._idle_changed
            for line in lines:
                port = self._registry.get(line.name)
                if line.machine.state is LineState.IDLE and line.owner is None \
                        and port.state is PortState.IDLE:
                    return await self._seize(line, port)
            if trio.current_time() >= deadline:
                raise SeizeFailed(f"every line stayed busy for {LINE_WAIT:g} s")
            with trio.move_on_after(min(1.0, max(0.0, deadline - trio.current_time()))):
                await changed.wait()

    async def _seize(self, line: _Line, port) -> _Seized:
        line.owner = "mwi"
        port.state = PortState.IN_CALL
        line.dial_tone = False
        line.seize_failed = ""
        line.heard.clear()
        await self._apply(line, line.machine.seize(trio.current_time()))
        while True:
            changed = line.changed
            if line.dial_tone and line.machine.state is LineState.OUTBOUND:
                return _Seized(self, line)
            if line.seize_failed or line.machine.state not in (LineState.SEIZING,
                                                                LineState.OUTBOUND):
                why = line.seize_failed or f"line {line.name} is {line.machine.state}"
                await self.release(line)
                raise SeizeFailed(f"{line.name}: {why}")
            await changed.wait()

    async def release(self, line: _Line) -> None:
        """Give a seized line back (on hook)."""
        if line.machine.state in (LineState.SEIZING, LineState.OUTBOUND):
            await self._apply(line, line.machine.release(trio.current_time()))
        if line.owner == "mwi":
            line.owner = None
            port = self._port(line)
            if port.state is PortState.IN_CALL:
                port.state = PortState.IDLE if line.machine.usable else PortState.DOWN
