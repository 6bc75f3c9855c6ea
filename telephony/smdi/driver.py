"""The SMDI link driver: the serial port (pyserial) on Trio, feeding the sans-IO codec and core.

One :class:`SmdiLink` per node, on the node's side of the data splitter.  It

* opens the port with pyserial (a device path or a pyserial URL) and reads it through
  ``trio.lowlevel.FdStream`` on a duplicate of the port's fd, or through a worker thread for a
  pyserial URL (``socket://``, ``rfc2217://``, ``loop://``: the handler speaks its protocol);
* reopens it after it disappears (USB adapter unplugged, pty closed) with backoff from
  ``reopen_min`` to ``reopen_max`` seconds, and says so in the port status (the link is the
  port ``smdi-link`` of kind ``smdi``: ``down``/``idle``) and the node's event log;
* files every ``MD`` record for one of this node's terminals in the :class:`RecordMatcher`
  (a record for the peer's terminals is counted and dropped), and on the inactive node
  *announces* the call to the node manager at once, which fails over;
* hands the ringing line its record (:meth:`SmdiLink.call_info`, used by the voice lines);
* sends MWI commands (:meth:`SmdiLink.send_mwi`, the messaging core's lamp sink) paced at the
  line rate, a fresh lamp (a message just left or heard) before any queued resync lamp (the
  priority lane, :class:`~telephony.smdi.core.link.LampQueue`), **only while the service is active
  in the job's term**: the check runs right before the bytes are written, after any wait for
  the line, so an inactive node never puts a byte on the shared line;
* on a line shared through a data splitter, **holds** the secondary's lamp commands while its
  node manager reports the peer unreachable (a partition: both nodes may be active), and on
  the heal asks for the resync the rule calls for (:mod:`telephony.smdi.core.shared`);
* matches MWI failure records to the job and reports them.

Nothing here decides anything the core does not; every protocol oddity becomes a counted
protocol error, never an exception out of the driver.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from telephony.core.events import CallArrival
from telephony.core.mwi import TransmitRefused, require_term
from telephony.core.terms import Role
from telephony.runtime.ports import CallService, PortRegistry, PortState
from telephony.runtime.tasks import TaskFailures, describe, python_logger, report_event
from telephony.smdi.core.codec import CallRecord, MwiFailure, ProtocolError, SmdiReader
from telephony.smdi.core.link import FailureMatcher, LampQueue, LinePacer, RecordMatcher
from telephony.smdi.core.shared import SharedLine
from telephony.smdi.settings import PARITIES, SerialSettings, SmdiProfile

log = logging.getLogger("telephony.smdi")

LINK_PORT = "smdi-link"
KIND = "smdi"

Report = Callable[[str, str, str], Awaitable[None]]  # (level, event, message)


class LinkDown(ConnectionError):
    """The serial port is not open: nothing was written."""


class LampHeld(TransmitRefused):
    """The secondary on a shared line while its peer is unreachable: the lamp command was held,
    not written (docs/smdi.md, "A shared line in a partition")."""


def open_serial(settings: SerialSettings):
    """Open the port with pyserial (blocking; run it in a thread)."""
    import serial

    kwargs: dict[str, Any] = dict(baudrate=settings.baudrate, bytesize=settings.bytesize,
                                  parity=PARITIES[settings.parity], stopbits=settings.stopbits,
                                  write_timeout=5)
    if "://" in settings.device:  # read in a worker thread: a timeout keeps it cancellable
        ser = serial.serial_for_url(settings.device, timeout=0.2, **kwargs)
    else:
        if is_pty(settings.device):
            # a pty has no line: the kernel forces 8 bits without parity and ignores the rate,
            # and a second 7E1 configuration fails with EINVAL; pacing still uses the
            # configured rate (labs and tests only: a real port gets the settings as given)
            kwargs.update(bytesize=8, parity="N", stopbits=1)
        ser = serial.Serial(settings.device, timeout=None, **kwargs)
        # pyserial leaves VMIN 0, with which a tty returns 0 bytes whenever it has nothing
        # (read through Trio, that looks like an end of file); VMIN 1: 0 bytes is a hang-up
        import termios

        attrs = termios.tcgetattr(ser.fileno())
        attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
        termios.tcsetattr(ser.fileno(), termios.TCSANOW, attrs)
    try:
        ser.reset_input_buffer()  # what a pty buffered while nobody read it is stale
    except Exception:  # noqa: BLE001 - URL handlers without a buffer
        pass
    return ser


def is_pty(device: str) -> bool:
    """True when ``device`` (a path, possibly a symlink such as socat's) is a pseudo-terminal."""
    real = os.path.realpath(device)
    return real.startswith("/dev/pts/") or real == "/dev/ptmx"


class _Port:
    """An open port: FdStream on a dup of a real port's fd, or pyserial in a worker thread
    (pyserial URL handlers: ``socket://``, ``rfc2217://``, ``loop://``)."""

    def __init__(self, ser) -> None:
        import serial.serialposix

        self.ser = ser
        self.stream: trio.lowlevel.FdStream | None = None
        # only a real (POSIX) port's fd carries the line's bytes as they are; a URL handler's
        # socket may carry a protocol (rfc2217 is telnet) that pyserial itself must speak
        if isinstance(ser, serial.serialposix.Serial):
            self.stream = trio.lowlevel.FdStream(os.dup(ser.fileno()))
        self.limiter = trio.CapacityLimiter(1)

    async def read(self) -> bytes:
        """Some bytes; b"" never means "no data yet" — raises LinkDown when the port is gone."""
        if self.stream is not None:
            try:
                data = await self.stream.receive_some(4096)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
                raise LinkDown(_why(e)) from None
            if not data:
                raise LinkDown("end of file")
            return data
        while True:
            try:
                data = await trio.to_thread.run_sync(self.ser.read, 4096, limiter=self.limiter,
                                                     abandon_on_cancel=True)
            except Exception as e:  # noqa: BLE001 - pyserial raises SerialException and OSError
                raise LinkDown(_why(e)) from None
            if data:
                return data

    async def write(self, data: bytes) -> None:
        try:
            if self.stream is not None:
                await self.stream.send_all(data)
            else:
                await trio.to_thread.run_sync(self.ser.write, data)
        except Exception as e:  # noqa: BLE001
            raise LinkDown(_why(e)) from None

    async def aclose(self) -> None:
        if self.stream is not None:
            with trio.CancelScope(shield=True):
                await self.stream.aclose()
        try:
            self.ser.close()
        except Exception:  # noqa: BLE001
            pass


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None:
        return f"{errno.errorcode.get(e.errno, e.errno)}: {e.strerror or e}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class SmdiLink:
    """The SMDI data link of one node (see the module docstring)."""

    kind = KIND

    def __init__(self, *, serial: SerialSettings, profile: SmdiProfile, node: str,
                 reopen_min: float = 0.1, reopen_max: float = 5.0,
                 opener: Callable[[SerialSettings], Any] = open_serial,
                 role: Role | None = None, shared_line: bool = True) -> None:
        self.serial = serial
        self.profile = profile
        self.node = node
        self.reopen_min = reopen_min
        self.reopen_max = reopen_max
        self.opener = opener
        self.matcher = RecordMatcher({t: p for t in profile.terminals
                                      if (p := profile.port_of(t)) is not None},
                                     profile.record_wait)
        self.pacer = LinePacer(serial.baudrate, serial.bits_per_char, profile.mwi_gap)
        self.failures: FailureMatcher[Any] = FailureMatcher(profile.failure_window)
        #: who may transmit on a line shared with the peer while the pair is split (``role``
        #: None: the rule is off, as for a link that runs alone)
        self.shared: SharedLine[_Lamp] = SharedLine(role=role, shared=shared_line)
        #: ``on_heal(full)``: the peer is reachable again; resync the lamps (``full``: all)
        self.on_heal: Callable[[bool], None] | None = None
        #: the term the service may transmit in right now, or None (set by the service)
        self.gate: Callable[[], int | None] = lambda: None
        #: ``announce(call)``: tell the node manager a call is coming to an inactive node
        self.announce: Callable[[CallArrival], Awaitable[None]] | None = None
        #: ``on_mwi_failure(job, why)``: the switch refused a lamp command
        self.on_mwi_failure: Callable[[Any, str], Awaitable[None]] | None = None
        #: ``report(level, event, message)``: the node's event log
        self.report: Report | None = None
        #: ``on_up()``: the port (re)opened: lamps that failed while it was down are resent
        self.on_up: Callable[[], None] | None = None
        self._port: _Port | None = None
        self._registry: PortRegistry | None = None
        self._tx_lock = trio.Lock()
        #: lamp commands waiting for the line: fresh lane before bulk (resync) lane
        self.lamps: LampQueue[_Lamp] = LampQueue()
        self._arrived = trio.Event()
        self._call_ids = itertools.count(1)
        self.counters: dict[str, int] = {
            "opens": 0, "records": 0, "peer_records": 0, "announced": 0, "matched": 0,
            "unmatched_rings": 0, "protocol_errors": 0, "mwi_sent": 0, "mwi_refused": 0,
            "mwi_superseded": 0, "mwi_failures": 0, "mwi_failures_unmatched": 0,
            "lamps_held": 0, "lamps_held_waiting": 0, "lamps_held_overflow": 0,
            "lamps_held_discarded": 0}
        self.last_error: str | None = None
        #: failures of the link's reader (the service puts its own here: ``tasks`` counters)
        self.task_failures = TaskFailures(python_logger(log))

    # ------------------------------------------------------------------ PortDriver

    def register(self, registry: PortRegistry) -> None:
        self._registry = registry
        registry.register(LINK_PORT, KIND)

    @property
    def is_open(self) -> bool:
        return self._port is not None

    async def run(self, service: CallService, *,
                  task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        delay = self.reopen_min
        reader = SmdiReader()
        try:
            while True:
                try:
                    ser = await trio.to_thread.run_sync(self.opener, self.serial)
                except Exception as e:  # noqa: BLE001 - SerialException, OSError, ValueError
                    why = _why(e)
                    if why != self.last_error:
                        await self._report("warning", "smdi_down",
                                           f"SMDI link {self.serial.device} cannot be opened: "
                                           f"{why}; retrying")
                    self.last_error = why
                    if not started:
                        task_status.started()
                        started = True
                    await trio.sleep(delay)
                    delay = min(delay * 2, self.reopen_max)
                    continue
                self._port = _Port(ser)
                self.counters["opens"] += 1
                self._set_state(PortState.IDLE)
                await self._report("info", "smdi_up", f"SMDI link {self.serial.device} open "
                                   f"({self.serial.baudrate} baud)")
                self.last_error = None
                delay = self.reopen_min
                if self.on_up is not None and self.gate() is not None:
                    try:
                        self.on_up()
                    except Exception as e:  # noqa: BLE001 - the link is up all the same
                        self.task_failures.failed("smdi-link", e)
                if not started:
                    task_status.started()
                    started = True
                reader = SmdiReader()  # a new line: nothing half-read survives
                try:
                    while True:
                        data = await self._port.read()
                        for event in reader.feed(data):
                            await self._handle(event, service)
                except LinkDown as e:
                    self.last_error = str(e)
                    await self._report("warning", "smdi_down",
                                       f"SMDI link {self.serial.device} lost: {e}; reopening")
                except Exception as e:  # noqa: BLE001 - a failure reading the link: reopen it
                    self.last_error = describe(e)
                    self.task_failures.failed("smdi-link", e, retry_in=delay)
                    await self._report("warning", "smdi_down",
                                       f"SMDI link {self.serial.device} failed: "
                                       f"{self.last_error}; reopening")
                    reader = SmdiReader()  # what was half read is not trusted
                finally:
                    port, self._port = self._port, None
                    self._set_state(PortState.DOWN)
                    if port is not None:
                        await port.aclose()
                try:
                    for event in reader.close():
                        await self._handle(event, service)
                except Exception as e:  # noqa: BLE001
                    self.task_failures.failed("smdi-link", e)
                await trio.sleep(delay)
                delay = min(delay * 2, self.reopen_max)
        finally:
            self._set_state(PortState.DOWN)

    def _set_state(self, state: PortState) -> None:
        if self._registry is not None:
            self._registry.set_state(KIND, state)

    async def _report(self, level: str, event: str, message: str) -> None:
        await report_event(self.report, log, level, event, message)

    # ------------------------------------------------------------------ inbound

    async def _handle(self, event, service: CallService) -> None:
        now = trio.current_time()
        if isinstance(event, CallRecord):
            self.counters["records"] += 1
            queued = None
            if self.profile.desk is None or event.desk == self.profile.desk:
                queued = self.matcher.add(event, now)
            log.info("SMDI record for terminal %04d (%s): type %s from %s for %s",
                     event.terminal, queued.port if queued else "the peer's line",
                     event.call_type, event.calling or "-", event.forwarding or "-")
            if queued is None:
                self.counters["peer_records"] += 1
                return
            self._arrived.set()
            self._arrived = trio.Event()
            if self.gate() is None and self.announce is not None:
                self.counters["announced"] += 1
                try:
                    await self.announce(self.arrival(event, queued.port, service.node))
                except Exception:  # noqa: BLE001
                    log.exception("announcing the call on %s failed", queued.port)
        elif isinstance(event, MwiFailure):
            job = self.failures.failed(event, now)
            if job is None:
                self.counters["mwi_failures_unmatched"] += 1
                await self._report("warning", "smdi_mwi_failure",
                                   f"switch reports MWI {event.cause} for {event.number}, "
                                   "matching no recent command")
                return
            self.counters["mwi_failures"] += 1
            why = {"INV": "invalid station", "BLK": "blocked"}.get(event.cause, event.cause)
            await self._report("warning", "smdi_mwi_failure",
                               f"switch refused the lamp {'on' if job.on else 'off'} command for "
                               f"{event.number} (mailbox {job.mailbox}): {event.cause} ({why})")
            if self.on_mwi_failure is not None:
                try:
                    await self.on_mwi_failure(job, f"switch answered {event.cause} ({why})")
                except Exception:  # noqa: BLE001
                    log.exception("reporting the MWI failure of %s failed", job.mailbox)
        elif isinstance(event, ProtocolError):
            n = self.counters["protocol_errors"] = self.counters["protocol_errors"] + 1
            if n <= 10 or n & (n - 1) == 0:  # the first ten, then at powers of two
                log.warning("SMDI protocol error #%d: %s (%d bytes: %s)", n, event.reason,
                            len(event.raw), event.raw[:48].hex(" "))

    def arrival(self, record: CallRecord, port: str, node: str, call_id: str | None = None) -> CallArrival:
        """The call-arrival event for ``record`` on ``port`` (numbers rewritten by the profile)."""
        p = self.profile
        return CallArrival(
            node=node, port=port, call_id=call_id or f"smdi-{node}-{next(self._call_ids)}",
            calling=p.base.normalise("calling", p.inbound(record.calling)),
            called="",
            forwarding=p.base.normalise("forwarding", p.inbound(record.forwarding)),
            reason=record.reason, integration=p.base.name)

    async def line_arrival(self, port: str, call_id: str, node: str) -> CallArrival:
        """The call ringing on ``port``: its record's information, or (no record within
        ``ring_wait``) a direct call with no numbers, which the call flow treats as an unknown
        caller (opening greeting, default mailbox)."""
        rec = await self.call_info(port)
        if rec is not None:
            return self.arrival(rec, port, node, call_id)
        log.info("call %s on %s rang without an SMDI record", call_id, port)
        return CallArrival(node=node, port=port, call_id=call_id, calling="", called="",
                           forwarding="", reason="direct", integration=self.profile.base.name)

    async def call_info(self, port: str) -> CallRecord | None:
        """The record for the call ringing on ``port``: waits up to ``ring_wait`` for it."""
        deadline = trio.current_time() + self.profile.ring_wait
        while True:
            rec = self.matcher.take(port, trio.current_time())
            if rec is not None:
                self.counters["matched"] += 1
                return rec
            if trio.current_time() >= deadline:
                self.counters["unmatched_rings"] += 1
                return None
            with trio.move_on_at(deadline):
                await self._arrived.wait()

    # ------------------------------------------------------------------ outbound (MWI)

    async def send_mwi(self, job) -> None:
        """Put the lamp command of ``job`` (``telephony.core.mwi.MwiJob``) on the line.

        Raises :class:`TransmitRefused` unless the service is active in ``job.term`` at the
        moment of writing (:class:`LampHeld`, a TransmitRefused, when the shared-line rule
        holds it: the lamp is kept in :attr:`shared`), :class:`LinkDown` when the port is
        closed; nothing is written then.
        Returns once the command is written; the next command waits for the line.

        **Priority lane**: a job of a resync (``job.reason == "resync"``) is *bulk*, any other
        (a message just left or heard, a retry) is *fresh*; when the line is free the next
        command is the oldest fresh one, else the oldest bulk one (:class:`LampQueue`).  A job
        for a station that has a command of the same term queued takes that command's place
        (the newest lamp state is sent once; both callers get its outcome)."""
        station = self.profile.station(job.extension)
        data = self.profile.mwi.encode(job.on, station)
        wire_number = station.zfill(self.profile.mwi.pad_to) if self.profile.mwi.pad_to else station
        mine = _Lamp(job, data, station, wire_number)
        key = (wire_number, job.term)
        self.lamps.add(key, mine, bulk=getattr(job, "reason", None) == "resync",
                       now=trio.current_time())
        try:
            while not mine.done:
                # whoever holds the line sends the best queued command, not necessarily its
                # own; it is back here (or done) when its own has gone out
                async with self._tx_lock:
                    if not mine.done:
                        await self._send_next()
        finally:
            if not mine.done:  # cancelled while queued: withdrawn, nothing written for it
                self.lamps.discard(key, mine)
        if mine.error is not None:  # each caller its own exception (one may be shared)
            raise type(mine.error)(*mine.error.args)

    async def _send_next(self) -> None:
        """Wait for the line, then send the command :class:`LampQueue` puts first (called
        with the transmit lock held)."""
        # the line clock runs from the scheduled start, not from when the sleep ended: a
        # late wake-up (about a millisecond) must not add up over a 5,000-lamp resync; the
        # bytes written by any time never exceed the line rate's by more than one command
        start = self.pacer.start_at(trio.current_time())
        await trio.sleep_until(start)
        entry = self.lamps.take()  # chosen now, when the line is free: fresh before bulk
        if entry is None:
            return
        lamp: _Lamp = entry.item
        try:
            require_term(self.gate(), lamp.job, f"lamp command for {lamp.station}")
            if not self.shared.may_transmit():
                raise LampHeld(f"lamp command for {lamp.station} held: the peer is unreachable "
                               "and only the primary transmits on the shared line")
            port = self._port
            if port is None:
                raise LinkDown(f"SMDI link {self.serial.device} is down")
            await port.write(lamp.data)
        except LampHeld as e:
            _finish(entry.items, e)
            await self._hold(lamp)
            return
        except TransmitRefused as e:
            self.counters["mwi_refused"] += 1
            _finish(entry.items, e)
            return
        except LinkDown as e:
            _finish(entry.items, e)
            return
        except BaseException:  # cancelled (or a bug) mid-write: its senders must not hang
            _finish(entry.items, LinkDown("the lamp command's write was interrupted"))
            raise
        self.pacer.sent(len(lamp.data), start)
        self.failures.sent(lamp.wire_number, lamp.job, trio.current_time())
        self.counters["mwi_sent"] += 1
        self.counters["mwi_superseded"] += len(entry.items) - 1
        _finish(entry.items, None)

    async def _hold(self, lamp: "_Lamp") -> None:
        first = self.shared.hold(lamp.job.mailbox, lamp, trio.current_time())
        self._count_held()
        if first:
            await self._report("warning", "smdi_lamps_held",
                               f"peer unreachable: this secondary holds its lamp commands on the "
                               f"shared line {self.serial.device} (only the primary transmits "
                               "until the pair is joined again)")

    def _count_held(self) -> None:
        c, s = self.counters, self.shared.counters
        c["lamps_held"], c["lamps_held_overflow"] = s["held"], s["overflow"]
        c["lamps_held_discarded"], c["lamps_held_waiting"] = s["discarded"], len(self.shared)

    # ------------------------------------------------------------------ the peer (shared line)

    async def peer_link(self, reachable: bool) -> None:
        """The node manager's view of the peer (the control op ``link``).  On the way back
        from unreachable the held lamps are dropped and the resync the rule calls for is
        asked for (:meth:`SharedLine.peer`)."""
        heal = self.shared.peer(reachable, active=self.gate() is not None,
                                now=trio.current_time())
        log.info("peer %s", "reachable" if reachable else "unreachable")
        self._count_held()
        if heal is None:
            return
        if heal.held_for is not None:
            await self._report("info", "smdi_lamps_released",
                               f"peer reachable again: {heal.dropped} held lamp command(s) "
                               f"dropped after {heal.held_for:.1f}s on hold"
                               + ("; resyncing the lamps" if heal.resync else ""))
        if heal.resync and self.on_heal is not None:
            try:
                self.on_heal(heal.full)
            except Exception as e:  # noqa: BLE001 - the line is usable all the same
                self.task_failures.failed("smdi-link", e)


class _Lamp:
    """One caller's lamp command in the :class:`LampQueue`; ``done`` once it went out (or
    the command that took its place did), ``error`` if that failed."""

    __slots__ = ("job", "data", "station", "wire_number", "done", "error")

    def __init__(self, job, data: bytes, station: str, wire_number: str) -> None:
        self.job = job
        self.data = data
        self.station = station
        self.wire_number = wire_number
        self.done = False
        self.error: BaseException | None = None


def _finish(lamps: list[_Lamp], error: BaseException | None) -> None:
    for lamp in lamps:
        lamp.done = True
        lamp.error = error
