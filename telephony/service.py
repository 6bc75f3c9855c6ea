"""The messaging service: the node manager's child process that owns the telephony ports.

::

    python -m telephony.service --control PATH --node NAME --loopback-port N [--ports 4]
                                [--health-interval 0.25] [--offer-hold 2.0]
    python -m telephony.service --control PATH --config NODE.toml   (flags override the file)

It connects to the node manager's control socket, says ``hello``, reports ``health`` on each
change and at least every health interval (the keep-alive), and answers calls only while
activated with a live lease (docs/design.md, "Local control channel").  When the lease runs
out it stops answering and reports ``fenced``.  When the control socket closes, the node
manager is gone: the service stops answering at once, hangs up its calls and exits 0.
``shutdown`` and SIGTERM exit 0 the same way.

It exits only then, on a configuration error at start (a listening address that cannot be
bound, a driver that cannot start: one log line naming the setting, exit 1) and when its
control channel breaks.  Every long-lived task contains its own failures
(:mod:`telephony.runtime.tasks`): a driver whose run fails after its start is recorded, its ports are
``down`` and it is run again after a growing delay; so are the health loop, the
voice-messaging core and a command whose handling fails.  The failure counts per task go to
the node manager as the ``tasks`` counters group.

This module is the thin Trio driver; the decisions live in the pure cores
:mod:`telephony.core.activation` (the lease) and :mod:`telephony.core.control` (the framing), and in
:class:`telephony.runtime.ports.CallDesk` (the offer/hold path).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from integrations.base import node_mwi_drivers
from integrations.profiles import analog_integration, sccp_integration, smdi_integration
from telephony.core.activation import Activation, ActivationError
from telephony.core.control import (
    NEED_DATA,
    TO_SERVICE,
    Closed,
    ControlConnection,
    ControlError,
    FieldError,
    FramingError,
    make,
    validate,
)
from telephony.core.events import CallArrival
from telephony.core.settings import ConfigError
from telephony.health import DEFAULT_HEALTH_INTERVAL, DriverHealth, HealthReporter
from telephony.runtime.ports import ActiveCall, CallDesk, Decision, PortDriver, PortRegistry, PortState
from telephony.runtime.tasks import (
    Backoff,
    ListenError,
    TaskFailures,
    contained,
    describe,
    keep_running,
    python_logger,
    task_counters,
)
from telephony.settings import ServiceSettings, health_interval, load_service_settings, read_keys
from telephony.wiring import connect_call_info, line_names, voice_ports  # also re-exported

log = logging.getLogger("telephony.service")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: least seconds between looks at the drivers' counters (sent to the node manager when changed)
COUNTERS_INTERVAL = 1.0


class MessagingService:
    """The control-channel side of the service, driving the activation core.

    ``control`` is a connected stream to the node manager (a Unix socket in production, a
    memory stream in tests).  ``drivers`` are the port drivers; they are registered at once
    and started by :meth:`run`.  Drivers reach the service through :meth:`offer` and
    :meth:`end_call`.
    """

    def __init__(self, *, node: str, control: trio.abc.Stream, drivers: Sequence[PortDriver] = (),
                 health_interval: float = DEFAULT_HEALTH_INTERVAL, offer_hold: float = 2.0,
                 send_timeout: float = 5.0, hello_extra: dict[str, Any] | None = None,
                 pid: int | None = None, messaging: Any = None) -> None:
        self.node = node
        #: the voice-messaging core (telephony.messaging.Messaging) or None (calls only held)
        self.messaging = messaging
        self.health_interval = health_interval
        #: health reports: on change (``reporter.changed()``) and a keep-alive
        self.reporter = HealthReporter(health_interval)
        self.send_timeout = send_timeout
        self.registry = PortRegistry(on_change=self.reporter.changed)
        self.drivers = list(drivers)
        for d in self.drivers:
            d.register(self.registry)
        self.activation = Activation()
        self.desk = CallDesk(registry=self.registry, answering=self._answering,
                             notify=self._notify, offer_hold=offer_hold,
                             on_idle=self.activation.drained, on_change=self.reporter.changed)
        self._control = control
        self._conn = ControlConnection()
        self._send_lock = trio.StrictFIFOLock()
        self._control_ok = True
        self._control_scope = trio.CancelScope()
        self._hello_extra = dict(hello_extra or {})
        self._pid = os.getpid() if pid is None else pid
        self._seq = 0
        self._counters_due, self._counters_sent = -math.inf, {}
        self._health: tuple[dict | None, dict] = None, {}  # the last health body, its message
        self.health = DriverHealth(node)  # the drivers' and the store's scores (health reports)
        self.health.on_change = self.reporter.changed
        self.stop_reason: str | None = None
        self.exit_code = EXIT_OK
        #: failures of the service's long-lived tasks (drivers and the messaging core that
        #: have a ``task_failures`` record share this one): the ``tasks`` counters group
        self.task_failures = TaskFailures(python_logger(log))
        for part in [*self.drivers, messaging]:
            if part is not None and isinstance(getattr(part, "task_failures", None), TaskFailures):
                part.task_failures = self.task_failures

    # ------------------------------------------------------------------ driver API

    async def offer(self, call: CallArrival) -> Decision:
        return await self.desk.offer(call)

    async def end_call(self, call: ActiveCall, event: str = "ended") -> None:
        await self.desk.end_call(call, event)

    async def announce(self, call: CallArrival) -> bool:
        """A call is coming to ``call.port`` (see :meth:`CallDesk.announce`)."""
        return await self.desk.announce(call)

    def answering_term(self) -> int | None:
        """The term the service may answer and transmit in right now, or None."""
        return self._answering()

    async def report(self, level: str, event: str, message: str) -> None:
        """A driver's event for the node's event log (link down/up, switch refusals)."""
        await self._notify(make("event", level=level, event=event, message=message[:1000]))

    def _answering(self) -> int | None:
        if self._control_ok and self.activation.may_answer(trio.current_time()):
            return self.activation.term
        return None

    # ------------------------------------------------------------------ life cycle

    def request_stop(self, reason: str, code: int = EXIT_OK) -> None:
        """Stop the service (signal, broken channel).  Safe to call from any task, any time."""
        if self.stop_reason is None:
            self.stop_reason, self.exit_code = reason, code
        self._control_scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> int:
        """Serve until shutdown, the channel closes or :meth:`request_stop`; returns the exit code."""
        try:
            async with trio.open_nursery() as nursery:
                await self._notify(make("hello", pid=self._pid, node=self.node,
                                        ports=self.registry.names(), **self._hello_extra))
                outcome: tuple[str, int] | None = None
                try:
                    for d in self.drivers:
                        await nursery.start(self._keep_running, f"driver-{d.kind}", d.run,
                                            d.kind)
                    if self.messaging is not None:
                        await nursery.start(self._keep_running, "messaging",
                                            self._run_messaging, None)
                except Exception as exc:  # noqa: BLE001 - a start failure: a configuration error
                    why = exc.strerror if isinstance(exc, ListenError) else describe(exc)
                    outcome = f"cannot start: {why}", EXIT_FAILED
                else:
                    nursery.start_soon(keep_running, "health", self._health_loop, self.task_failures)
                    nursery.start_soon(keep_running, "store-probe", self.health.run, self.task_failures)
                    log.info("running with %d ports: %s", len(self.registry),
                             ", ".join(self.registry.names()) or "none")
                task_status.started()
                if outcome is None:
                    with self._control_scope:
                        outcome = await self._control_loop()
                if outcome is not None and self.stop_reason is None:
                    self.stop_reason, self.exit_code = outcome
                # from here on the service never answers again
                self.activation.stop()
                log.log(logging.INFO if self.exit_code == EXIT_OK else logging.ERROR,
                        "stopping: %s", self.stop_reason)
                await self.desk.close()
                nursery.cancel_scope.cancel()
        finally:
            self._control_ok = False
            self.activation.stop()
            with trio.CancelScope(shield=True):
                await self._control.aclose()
        return self.exit_code

    async def _run_messaging(self, service: "MessagingService", *,
                             task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        await self.messaging.run(task_status=task_status)

    async def _keep_running(self, task: str, run: Any, kind: str | None, *,
                            task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """``await run(self, task_status=...)`` (a driver's run) for ever.  Its first start must
        succeed: an error before it reports started is raised (the service cannot start as
        configured).  After that, whatever ends a run (an error, an exception group from its
        nursery, a return) is recorded as a failure of ``task``, the ports of ``kind`` are
        ``down`` and it is run again after a growing delay.  Only cancellation ends this."""
        status = _Started(task_status)
        backoff = Backoff()
        while True:
            began = trio.current_time()
            try:
                await run(self, task_status=status)
            except Exception as exc:  # noqa: BLE001 - nothing escapes a long-lived task
                if not status.done:
                    raise
                what: BaseException | str = exc
            else:
                if not status.done:
                    raise RuntimeError(f"{task} returned before it started")
                what = "returned unexpectedly"
            if kind is not None:
                self.registry.set_state(kind, PortState.DOWN)
            delay = backoff.next(trio.current_time() - began)
            self.task_failures.failed(task, what, retry_in=delay)
            await trio.sleep(delay)
            status = _Started(trio.TASK_STATUS_IGNORED)

    # ------------------------------------------------------------------ control channel

    async def _control_loop(self) -> tuple[str, int]:
        while True:
            try:
                ev = self._conn.next_event()
            except FramingError as exc:
                self.activation.stop()
                return f"control channel protocol error: {exc}", EXIT_FAILED
            if ev is NEED_DATA:
                deadline = self.activation.next_deadline()
                if deadline is not None and trio.current_time() >= deadline:
                    # The lease deadline has passed.  If this process was starved (stopped, or
                    # no CPU) a renewal sent in time may be waiting unread: handle what is
                    # queued before judging the lease.  This is checked here, not only when
                    # the wait below times out: the process may have been stopped anywhere,
                    # e.g. between sending "activated" and its next read.
                    pending = _read_queued(self._control)
                    if pending is not None:
                        self._conn.receive_data(pending)
                        continue
                # judge the lease only once every queued command has been handled
                await self._check_timer()
                deadline = self.activation.next_deadline()
                with trio.move_on_at(math.inf if deadline is None else deadline):
                    try:
                        data = await self._control.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    self._conn.receive_data(data)
                continue
            if isinstance(ev, Closed):
                self.activation.stop()  # the node manager is gone: stop answering at once
                return "control channel closed: the node manager is gone", EXIT_OK
            if isinstance(ev, ControlError):
                log.warning("control line dropped: %s: %r", ev.reason, ev.raw[:200])
                continue
            try:
                stop = await self._handle(ev)
                if ev.get("op") == "renew":
                    self.reporter.awake()  # a keep-alive due soon rides on this wake-up
                else:  # activate, deactivate...: the state may have changed
                    self.reporter.changed()
            except Exception as exc:  # noqa: BLE001 - one command's failure is not the end
                self.task_failures.failed("control", exc)
                await self._error(f"{ev.get('op')} failed: {describe(exc)}", ev.get("op"))
                continue
            if stop:
                return "shutdown requested by the node manager", EXIT_OK

    async def _handle(self, msg: dict) -> bool:
        """Carry out one command; True for shutdown."""
        op = msg["op"]
        try:
            validate(msg, TO_SERVICE)
        except FieldError as exc:
            log.warning("control %s refused: %s", _ref(op), exc)
            await self._error(str(exc), op)
            return False
        now = trio.current_time()
        try:
            if op == "activate":
                lease = _lease_left(msg)
                self.activation.activate(msg["term"], lease, now)
                log.info("activated in term %d (lease %.3fs)", msg["term"], msg["lease"])
                await self._notify(make("activated", term=msg["term"]))
                self.desk.wake()
                if self.messaging is not None:
                    self.messaging.activated(msg["term"])
            elif op == "renew":
                lease = _lease_left(msg)
                self.activation.renew(msg["term"], lease, now, absolute="until" in msg)
                log.debug("lease of term %d renewed for %.3fs", msg["term"], msg["lease"])
            elif op == "deactivate":
                self.activation.deactivate(msg["term"], msg["drain"], now)
                if self.messaging is not None:
                    self.messaging.deactivated()
                if not msg["drain"]:
                    await self.desk.drop_all()
                if self.desk.calls_in_progress == 0:
                    self.activation.drained()
                log.info("deactivated in term %d (%s, %d calls in progress)", msg["term"],
                         "drain" if msg["drain"] else "no drain", self.desk.calls_in_progress)
                await self._notify(make("deactivated", term=msg["term"],
                                        calls=self.desk.calls_in_progress))
            elif op == "link":  # the node manager's view of the peer: a shared line's rule
                for d in self.drivers:
                    if callable(getattr(d, "peer_link", None)):
                        await d.peer_link(msg["peer_reachable"])
            elif op == "refuse_call":
                if not self.desk.refuse(msg["call_id"], msg["reason"]):
                    log.info("refuse_call for %s: no such call is waiting", msg["call_id"])
            elif op == "shutdown":
                return True
        except ActivationError as exc:
            log.warning("control %s refused: %s", op, exc)
            await self._error(str(exc), op)
        return False

    async def _check_timer(self) -> None:
        fenced = self.activation.on_timer(trio.current_time())
        if fenced is not None:
            self.reporter.changed()
            if self.messaging is not None:
                self.messaging.deactivated()
            log.error("fenced: %s; no new calls until activated again", fenced.reason)
            await self._notify(make("fenced", term=fenced.term, reason=fenced.reason[:200]))

    async def _health_loop(self) -> None:  # on change, and a keep-alive (HealthReporter)
        await self.reporter.run(self._health_body, self._send_health)

    def _health_body(self) -> dict:
        a, ports = self.activation, self.registry.status()
        return {"state": str(a.state), "term": a.term, "calls": self.desk.calls_in_progress,
                "ports": ports, "drivers": self.health.drivers(ports)}

    async def _send_health(self, body: dict) -> None:
        self._seq += 1
        if body is not self._health[0]:  # a keep-alive (the same body) is not checked again
            self._health = body, make("health", seq=0, **body)
        await self._notify({**self._health[1], "seq": self._seq})
        if trio.current_time() >= self._counters_due:  # counters ride on the health wake-ups
            self._counters_due = trio.current_time() + COUNTERS_INTERVAL
            await contained("counters", self.task_failures, self._send_counters)

    def counters(self) -> dict[str, dict[str, int]]:
        """The counters of every driver that keeps some (``counters``: a dict of name -> int),
        by driver kind, the voice-messaging core's as ``messaging``, and the failures of the
        long-lived tasks by task name as ``tasks`` (once there is one)."""
        groups: dict[str, dict[str, int]] = {}
        for source in [*self.drivers, self.messaging]:
            counters = getattr(source, "counters", None)
            if isinstance(counters, dict) and counters:
                kind = "messaging" if source is self.messaging else source.kind
                groups[kind] = dict(counters)
        tasks = task_counters(self.task_failures.counts)
        if tasks:
            groups["tasks"] = tasks
        return groups

    async def _send_counters(self) -> None:
        """Counters go to the node manager (``vmha status`` shows them) when they changed, at
        most once per :data:`COUNTERS_INTERVAL`, after a health report (no timer of their own:
        at the latest with the next keep-alive)."""
        current, last = self.counters(), self._counters_sent
        self._counters_sent = current
        if current != last:
            try:
                msg = make("counters", groups=current)
            except FieldError as exc:  # a driver's counters out of bounds: say so, go on
                log.warning("counters not reported: %s", exc)
            else:
                await self._notify(msg)

    async def _error(self, message: str, ref: Any) -> None:
        await self._notify(make("error", message=_printable(message)[:1000], ref=_ref(ref)))

    async def _notify(self, msg: dict) -> None:
        """Send one message to the node manager.  Never raises: a channel that fails or blocks
        longer than ``send_timeout`` stops the service (and it stops answering at once)."""
        if not self._control_ok:
            return
        data = self._conn.send(msg)
        failure = None
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.send_timeout
            try:
                async with self._send_lock:
                    if self._control_ok:
                        await self._control.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                failure = f"control channel broken: {exc or type(exc).__name__}"
        if scope.cancelled_caught:
            failure = f"control channel blocked for {self.send_timeout:g}s"
        if failure is not None and self._control_ok:
            self._control_ok = False
            self.activation.stop()
            self.request_stop(failure, EXIT_OK)


class _Started:
    """A task status that reports the first ``started()`` only and remembers it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.done = False

    def started(self, value: Any = None) -> None:
        if not self.done:
            self.done = True
            self.inner.started(value)


def _lease_left(msg: dict) -> float:
    """The lease of an activate/renew: with ``until`` (the node manager's deadline on the host's
    CLOCK_MONOTONIC, shared by every process) it is the time left until then, so a command
    read late never extends the lease past what the node manager intended."""
    until = msg.get("until")
    if until is None:
        return msg["lease"]
    left = min(msg["lease"], until - time.monotonic())
    if left <= 0:
        raise ActivationError(f"{msg['op']} for term {msg['term']} arrived {-left:.3f}s after "
                              "its deadline")
    return left


def _read_queued(stream: trio.abc.Stream) -> bytes | None:
    """Bytes already queued on a socket stream, without waiting (None: nothing, or not a
    socket).  The socket is non-blocking under Trio, so a plain read never blocks."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return None
    try:
        return os.read(sock.fileno(), 65536)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def _printable(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", "?", text)


def _ref(op: Any) -> str:
    return _printable(op if isinstance(op, str) else repr(op))[:64]


# ============================================================================ process


@dataclass(frozen=True)
class ServiceOptions:
    control: str
    node: str
    loopback: tuple[str, int] | None  # None: no loopback trunk
    ports: int = 4
    health_interval: float = DEFAULT_HEALTH_INTERVAL
    offer_hold: float = 2.0
    log_level: str = "info"
    config: Path | None = None  # the node's TOML: enables the voice-messaging core


_NODE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")


def _number(lo: float, hi: float, *, integer: bool = False, what: str = "seconds"):
    def parse(text: str):
        try:
            v = int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else f"a number of {what}"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not (lo <= v <= hi) or (not integer and not math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"must be from {lo:g} to {hi:g}, got {text}")
        return v
    return parse


def _node_name(text: str) -> str:
    if not _NODE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"expected a node name: 1 to 32 characters from A-Z a-z 0-9 _ . -, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m telephony.service",
        description="vmha messaging service: owns the telephony ports, answers calls only "
                    "while its node manager keeps it activated.")
    p.add_argument("--control", required=True, metavar="PATH",
                   help="the node manager's control socket (Unix stream socket)")
    p.add_argument("--config", metavar="FILE", type=Path,
                   help="the node's TOML file: node.name, service.health_interval, "
                        "service.offer_hold, ports.loopback.{enabled,listen,count}, log.level "
                        "(flags given on the command line win)")
    p.add_argument("--node", type=_node_name, help="this node's name")
    p.add_argument("--loopback-host", default=None, metavar="HOST",
                   help="address of the loopback test trunk (default 127.0.0.1)")
    p.add_argument("--loopback-port", type=_number(0, 65535, integer=True), metavar="N",
                   help="TCP port of the loopback test trunk (0: any free port, reported in "
                        "hello and the log)")
    p.add_argument("--ports", type=_number(1, 256, integer=True), metavar="N",
                   help="number of loopback ports (default 4)")
    p.add_argument("--health-interval", type=_number(0.001, 10), metavar="SECONDS",
                   help="the health keep-alive: the longest gap between health messages (a "
                        "change is sent at once; default service.health_timeout / 4 = 0.25)")
    p.add_argument("--offer-hold", type=_number(0, 60), metavar="SECONDS",
                   help="how long a call offered while inactive waits for activation "
                        "(default 2.0)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="default info")
    return p


#: the keys ``--config`` gives the command line's defaults (a file may hold only these)
CONFIG_KEYS = ("node.name", "service.health_interval", "service.health_timeout", "service.offer_hold",
               "ports.loopback.enabled", "ports.loopback.listen", "ports.loopback.count",
               "log.level")


def _read_config(path: Path) -> dict[str, Any]:
    """The few keys of the node's TOML file the command line needs (:data:`CONFIG_KEYS`,
    checked by their definitions in :mod:`telephony.settings`).  Raises ValueError naming the
    key and the file."""
    try:
        got = read_keys(path, CONFIG_KEYS)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    listen = got.get("ports.loopback.listen")
    return {
        "node": got.get("node.name"),
        "health_interval": health_interval(got.get("service.health_interval"),
                                           got.get("service.health_timeout", 1.0)),
        "offer_hold": got.get("service.offer_hold"),
        "loopback_enabled": got.get("ports.loopback.enabled", True),
        "loopback": (listen.host, listen.port) if listen is not None else None,
        "ports": got.get("ports.loopback.count"),
        "log_level": got.get("log.level"),
    }


def parse_args(argv: Sequence[str] | None = None) -> ServiceOptions:
    """Parse the command line (and --config); exits 2 with a message on bad arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    conf: dict[str, Any] = {}
    if args.config is not None:
        try:
            conf = _read_config(args.config)
        except ValueError as exc:
            parser.error(str(exc))
    node = args.node or conf.get("node")
    if node is None:
        parser.error("--node is required (or node.name in --config)")
    loopback: tuple[str, int] | None
    if args.loopback_port is not None:
        loopback = (args.loopback_host or "127.0.0.1", args.loopback_port)
    elif conf.get("loopback") is not None and conf.get("loopback_enabled", True):
        host, port = conf["loopback"]
        loopback = (args.loopback_host or host, port)
    elif args.config is not None and not conf.get("loopback_enabled", True):
        loopback = None
    else:
        parser.error("--loopback-port is required (or ports.loopback.listen in --config)")
    if len(args.control.encode()) > 107:
        parser.error(f"--control path is {len(args.control.encode())} bytes long; Unix socket "
                     "paths are limited to 107 bytes")

    def pick(name: str, default: Any) -> Any:
        v = getattr(args, name)
        if v is None:
            v = conf.get(name)
        return default if v is None else v

    level = pick("log_level", "info")
    if level not in ("debug", "info", "warning", "error"):
        parser.error(f"{args.config}: log.level: expected debug, info, warning or error")
    return ServiceOptions(control=args.control, node=node, loopback=loopback,
                          ports=pick("ports", 4), offer_hold=pick("offer_hold", 2.0), log_level=level,
                          health_interval=pick("health_interval", DEFAULT_HEALTH_INTERVAL),
                          config=args.config)


class _Formatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        ts = self.formatTime(record, "%Y-%m-%d %H:%M:%S")
        msg = record.getMessage().replace("\n", " | ")
        line = (f"{ts}.{int(record.msecs):03d} {record.levelname:<7} "
                f"service[{self.node} {record.process}] {record.name}: {msg}")
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return line


def setup_logging(node: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(node))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


async def serve(opts: ServiceOptions) -> int:
    """The whole process: signals, loopback listener, control connection, service."""
    box: dict[str, Any] = {"service": None, "signal": None, "code": EXIT_OK}

    async with trio.open_nursery() as nursery:

        async def signals(task_status=trio.TASK_STATUS_IGNORED) -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                task_status.started()
                async for signum in received:
                    name = signal.Signals(signum).name
                    if box["service"] is None:  # still starting: nothing to hang up
                        box["signal"] = name
                        nursery.cancel_scope.cancel()
                    else:
                        box["service"].request_stop(f"{name} received")

        await nursery.start(signals)
        box["code"] = await _start_and_run(opts, box)
        nursery.cancel_scope.cancel()
    if box["signal"] is not None:
        log.info("%s received during start-up: exiting", box["signal"])
        return EXIT_OK
    log.info("exit %d", box["code"])
    return box["code"]


async def _start_and_run(opts: ServiceOptions, box: dict[str, Any]) -> int:
    # the drivers and the voice-messaging core are imported when the file asks for them:
    # start-up stays quick without them
    from telephony.loopback import LoopbackTrunk

    drivers: list[PortDriver] = []
    extra: dict[str, Any] = {}
    settings: ServiceSettings | None = None
    if opts.config is not None:
        try:  # the node manager has validated the whole file: this is the service's view
            settings = load_service_settings(opts.config)
        except ConfigError as exc:
            log.error("configuration: %s", exc)
            return EXIT_FAILED
    trunk = None
    if opts.loopback is not None:
        trunk = LoopbackTrunk(host=opts.loopback[0], port=opts.loopback[1], count=opts.ports,
                              realtime=settings.messaging.realtime_audio if settings else True)
        try:
            host, port = await trunk.open()
        except OSError as exc:  # ListenError: one line naming the setting and the address
            log.error("loopback trunk: %s", exc.strerror if isinstance(exc, ListenError)
                      else f"cannot listen on {opts.loopback[0]}:{opts.loopback[1]} "
                           f"(setting ports.loopback.listen): {exc.strerror or exc}")
            return EXIT_FAILED
        extra["loopback"] = f"{host}:{port}"
    sip = None
    sp = settings.ports.sip if settings is not None else None
    if sp is not None and sp.enabled:
        from telephony.sip.driver import SipPorts, media_dir_for
        sip = SipPorts(profile=sp.profile(), node=opts.node, runtime_dir=settings.node.data_dir / "run",
                       media_dir=media_dir_for(settings.node.data_dir, opts.node))
    analog = None
    ap = settings.ports.analog if settings is not None else None
    if ap is not None and ap.enabled:
        from telephony.analog.driver import AnalogPorts
        i = settings.integration
        analog = AnalogPorts(ap, node=opts.node, profile=analog_integration(i.profile, i.call_info),
                             call_info=i.call_info, realtime=settings.messaging.realtime_audio)
    sccp = None
    cp = settings.ports.sccp if settings is not None else None
    if cp is not None and cp.enabled:
        from telephony.sccp.driver import SccpPorts
        sccp = SccpPorts(cp, node=opts.node, profile=sccp_integration(settings.integration.profile),
                         realtime=settings.messaging.realtime_audio)
    link = None
    sm = settings.ports.smdi if settings is not None else None
    if sm is not None and sm.enabled:
        from telephony.smdi.driver import SmdiLink
        voice = voice_ports(settings.integration,
                            {"loopback": (trunk, trunk.port_names() if trunk else []),
                             "sip": (sip, sp.port_names() if sip else []),
                             "analog": (analog, analog.port_names() if analog else []),
                             "sccp": (sccp, sccp.port_names() if sccp else [])})
        base = smdi_integration(settings.integration.profile, settings.integration.voice_ports)
        link = SmdiLink(serial=sm.serial_settings(), profile=sm.profile(line_names(voice), base),
                        node=opts.node, role=settings.node.role, shared_line=sm.shared_line)
        connect_call_info(settings.integration, voice, link)
    drivers = [d for d in (trunk, link, sip, analog, sccp) if d is not None]
    try:
        control = await trio.open_unix_socket(opts.control)
    except OSError as exc:
        log.error("cannot connect to the control socket %s: %s", opts.control,
                  exc.strerror or exc)
        return EXIT_FAILED
    messaging = None
    db = None
    if settings is not None:
        from telephony.configdb import ConfigDB, ConfigDBError
        from telephony.messaging import build_messaging

        s = settings
        try:
            db = await trio.to_thread.run_sync(
                lambda: ConfigDB(s.database.path, role=s.node.role,
                                 log_keep=s.replication.log_keep, log_max=s.replication.log_max))
            # each subscriber's lamps go to the driver its mwi_method names on this node's
            # MWI method (the same table the node manager checks subscribers against): SIP
            # NOTIFY, the SMDI link, the loopback trunk's monitor, feature codes dialled on the
            # analog lines or calls to CallManager's MWI numbers on the SCCP ports
            by_kind = {"sip": sip, "smdi": link, "loopback": trunk, "analog": analog, "sccp": sccp}
            sinks = {method: by_kind[kind] for method, kind in node_mwi_drivers(s).items()
                     if by_kind.get(kind) is not None}
            messaging = build_messaging(s, db, sinks=sinks)
        except (ConfigDBError, OSError, ValueError) as exc:
            log.error("voice messaging cannot start: %s", exc)
            return EXIT_FAILED
        if trunk is not None:
            trunk.flow = messaging.handle_call
            trunk.media_only = True  # offers with "media": true get the call flow
        if sip is not None:
            sip.flow = messaging.handle_call
        for d in (analog, sccp):
            if d is not None:
                d.flow = messaging.handle_call
    service = MessagingService(node=opts.node, control=control, drivers=drivers,
                               health_interval=opts.health_interval,
                               offer_hold=opts.offer_hold, hello_extra=extra,
                               messaging=messaging)
    box["service"] = service
    if messaging is not None:
        messaging.report = service.report  # lamps without a sink go to the event log
        service.health.watch(messaging.store, opts.config, settings.node.data_dir)  # every store_probe
    if trunk is not None:
        trunk.gate = service.answering_term  # lamp jobs only while active, in that term
    if sip is not None:
        sip.gate = service.answering_term  # NOTIFY only while active, in that term
        sip.report = service.report
    for d in (analog, sccp):  # lamps are dialled only while active, in that term
        if d is not None:
            d.gate = service.answering_term
            d.report = service.report
            if messaging is not None:
                d.on_up = messaging.request_resync
    if link is not None:
        link.gate = service.answering_term  # transmit only while active, in that term
        link.announce = service.announce
        link.report = service.report
        if messaging is not None:
            link.on_mwi_failure = messaging.lamp_failed
            link.on_up = messaging.request_resync
            link.on_heal = messaging.request_resync  # after a partition (full on the primary)
    try:
        return await service.run()
    finally:
        if db is not None:
            db.close()


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o077)  # files at rest: what the service creates is the node user's only
    opts = parse_args(argv)
    setup_logging(opts.node, opts.log_level)
    try:
        return trio.run(serve, opts)
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - a start that failed in a way not foreseen
        log.debug("messaging service failed", exc_info=True)
        log.error("messaging service failed: %s", describe(exc))
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
