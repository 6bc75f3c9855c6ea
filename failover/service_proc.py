"""Starts and watches the messaging-service child process and speaks the local control channel
(docs/design.md).  A crash is seen at once: the control socket reaches EOF and the process
exit is reported by the kernel; each start is a new *generation*, so the exit of a process the
supervisor already gave up on is never reported twice."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

from failover.config import NodeConfig
from failover.core import events as ev
from failover.core.health import node_health
from failover.eventlog import EventLog
from failover.sdnotify import child_environment
from failover.unixsock import serve_unix
from telephony.core.control import (
    FROM_SERVICE,
    NEED_DATA,
    Closed,
    ControlConnection,
    ControlError,
    FieldError,
    FramingError,
    validate,
)
from telephony.runtime.tasks import TaskFailures


class ServiceRunner:
    def __init__(self, cfg: NodeConfig, inbox: trio.MemorySendChannel, events: EventLog,
                 failures: TaskFailures | None = None):
        self.cfg = cfg
        self.failures = failures or TaskFailures(events.write)
        self.inbox = inbox
        self.events = events
        self.generation = 0
        self.proc: trio.Process | None = None
        self._reported: set[int] = set()
        self._stream: trio.SocketStream | None = None
        self._stream_gen = 0
        self._codec = ControlConnection()
        self._send_lock = trio.Lock()
        self.ports: list[dict] = []
        #: the drivers' and the store's health from the last report (``[{name, score, detail}]``)
        self.drivers: list[dict] = []
        #: the running service's counters by group (driver kind, "messaging"); reset when a
        #: new service starts
        self.counters: dict[str, dict[str, int]] = {}
        self.pid: int | None = None
        #: the node manager's view of the peer, told to the service in the ``link`` op after
        #: its hello and on every change (None: not known yet; a shared SMDI line's rule)
        self.peer_reachable: bool | None = None

    # ------------------------------------------------------------------ process

    def command(self) -> list[str]:
        c = self.cfg
        base = list(c.service.command) if c.service.command else [sys.executable, "-m", "telephony.service"]
        args = ["--control", str(c.control_socket), "--config", str(Path(c.source).absolute()),
                "--node", c.node.name,
                "--health-interval", repr(c.service.health_interval),
                "--offer-hold", repr(c.service.offer_hold), "--log-level", c.log.level]
        lb = c.ports.loopback
        if lb.enabled and lb.listen is not None:
            args += ["--loopback-host", lb.listen.host, "--loopback-port", str(lb.listen.port),
                     "--ports", str(lb.count)]
        return base + args

    async def start(self, reason: str) -> None:
        self.generation += 1
        gen = self.generation
        self.ports, self.drivers = [], []
        self.counters = {}
        cmd = self.command()
        self.events.write("info", "service_start", f"starting messaging service ({reason})")
        try:
            # child_environment: without systemd's NOTIFY_SOCKET/WATCHDOG_*, which are the
            # node manager's alone (docs/systemd.md)
            proc = await trio.lowlevel.open_process(cmd, stdin=subprocess.DEVNULL, env=child_environment(),
                                                    preexec_fn=self._child_scheduling())
        except (OSError, subprocess.SubprocessError) as e:
            # SubprocessError: the child failed between fork and exec (its preexec_fn)
            await self._report_exit(gen, f"could not start: {type(e).__name__}: {e}")
            return
        self.proc, self.pid = proc, proc.pid
        rc = await proc.wait()
        desc = f"exited with code {rc}" if rc >= 0 else f"killed by signal {-rc}"
        await self._report_exit(gen, f"process {proc.pid} {desc}")

    def _child_scheduling(self):
        """With ``realtime_priority`` the node manager runs SCHED_RR; its child would inherit
        the same priority, and its start-up (imports: ~0.1 s of CPU) would then hold a core
        against the node managers in round-robin slices.  The service runs one step below:
        still ahead of ordinary load, never ahead of a node manager."""
        prio = self.cfg.failover.realtime_priority
        if prio <= 0 or os.sched_getscheduler(0) != os.SCHED_RR:
            return None  # the node manager itself could not get SCHED_RR (it logged why)
        child = max(1, prio - 1)

        def lower() -> None:  # runs in the child between fork and exec: one system call
            try:
                os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(child))
            except OSError:
                # Refused (no CAP_SYS_NICE, RLIMIT_RTPRIO): the child keeps the parent's
                # scheduling.  An exception here would fail the start (SubprocessError).
                pass
        return lower

    async def _report_exit(self, gen: int, reason: str) -> None:
        if gen in self._reported or gen != self.generation:
            return
        self._reported.add(gen)
        self.ports, self.drivers = [], []
        await self.inbox.send(ev.ServiceExited(reason))

    def kill(self, reason: str) -> None:
        self._reported.add(self.generation)  # the supervisor already handled this loss
        if self.proc is not None and self.proc.returncode is None:
            self.events.write("error", "service_kill",
                              f"killing messaging service pid {self.proc.pid}: {reason}")
            self.proc.kill()

    async def shutdown(self, reason: str) -> None:
        self._reported.add(self.generation)
        proc = self.proc
        try:
            await self.send({"op": "shutdown"})
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        if proc is not None:
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await proc.wait()

    # ------------------------------------------------------------------ control channel

    async def send(self, msg: dict) -> None:
        stream = self._stream
        if stream is None or self._stream_gen != self.generation:
            raise trio.BrokenResourceError("messaging service is not connected")
        data = self._codec.send(msg)
        async with self._send_lock:
            await stream.send_all(data)

    async def peer_link(self, reachable: bool) -> None:
        """Tell the service the node manager's view of the peer when it changed (and, through
        the hello, every new service).  A service not connected hears it after its hello."""
        if reachable is self.peer_reachable:
            return
        self.peer_reachable = reachable
        try:
            await self.send({"op": "link", "peer_reachable": reachable})
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # no service now: the next one is told after its hello

    async def serve_control(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await serve_unix(self.cfg.control_socket, "control", self._connection, self.failures,
                         backlog=8, task_status=task_status)

    async def _connection(self, stream: trio.SocketStream) -> None:
        codec = ControlConnection()
        gen = None
        try:
            while True:
                data = await stream.receive_some(65536)
                codec.receive_data(data)
                while (msg := codec.next_event()) is not NEED_DATA:
                    if isinstance(msg, Closed):
                        return
                    if isinstance(msg, ControlError):
                        self.events.write("warning", "control_bad", f"bad control line from the "
                                          f"service dropped: {msg.reason}")
                        continue
                    try:
                        validate(msg, FROM_SERVICE)
                    except FieldError as e:
                        self.events.write("warning", "control_bad", f"control message refused: {e}")
                        continue
                    if gen is None:
                        if msg["op"] != "hello" or msg["pid"] != self.pid:
                            self.events.write("warning", "control_stale", "control connection from a "
                                              f"process that is not the current service (pid "
                                              f"{msg.get('pid')}) closed")
                            return
                        gen = self.generation
                        self._stream, self._stream_gen = stream, gen
                        if self.peer_reachable is not None:  # before it can be activated
                            await self.send({"op": "link", "peer_reachable": self.peer_reachable})
                        self.ports = [{"name": p, "kind": "?", "state": "starting"} for p in msg["ports"]]
                        await self.inbox.send(ev.ServiceStarted(msg["pid"]))
                        continue
                    await self._handle(msg)
        except (trio.BrokenResourceError, OSError, FramingError) as e:
            self.events.write("warning", "control_lost", f"control channel error: {e}")
        finally:
            if gen is not None:
                if self._stream is stream:
                    self._stream = None
                await self._report_exit(gen, "control channel closed")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _handle(self, msg: dict) -> None:
        op = msg["op"]
        if op == "health":
            self.ports, self.drivers = msg["ports"], msg.get("drivers") or []
            await self.inbox.send(ev.ServiceHealthReport(msg["state"], msg["term"], msg["calls"],
                                                         node_health(self.drivers)))
        elif op == "activated":
            await self.inbox.send(ev.ServiceActivated(msg["term"]))
        elif op == "deactivated":
            await self.inbox.send(ev.ServiceDeactivated(msg["term"], msg["calls"]))
        elif op == "fenced":
            await self.inbox.send(ev.ServiceFenced(msg["term"], msg["reason"]))
        elif op == "call_offered":
            call = msg["call"]
            await self.inbox.send(ev.CallOffered(call["call_id"], call["port"],
                                                 f"{call.get('calling', '')}->{call.get('called', '')}"))
        elif op == "call":
            call = msg["call"]
            self.events.write("info", f"call_{msg['event']}",
                              f"call {call['call_id']} on {call['port']} {msg['event']}"
                              + (f" in term {msg['term']}" if msg.get("term") is not None else ""),
                              {"call": call})
        elif op == "counters":  # the drivers' and messaging core's counters, when changed
            self.counters = msg["groups"]
        elif op == "event":  # a driver's event (SMDI link down/up, switch refusals)
            self.events.write(msg["level"], msg["event"], msg["message"])
        elif op == "error":
            self.events.write("warning", "service_refused",
                              f"service refused {msg.get('ref')}: {msg['message']}")
