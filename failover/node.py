"""The node manager: the Trio driver around the pure supervisor.

One main task owns the supervisor: it waits for the next event or the supervisor's next
deadline (aioquic's timer pattern), calls ``handle(event, now)`` and runs the returned actions
in order.  Everything else — the node link (``link.py``), the messaging-service child
(``service_proc.py``) and the admin socket (``admin.py``) — only turns I/O into events on the
inbox channel or carries out actions.  Only this module and those drivers read the clock.
"""
from __future__ import annotations

import functools
import math
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import trio

from failover.admin import serve_admin
from failover.config import ConfigError, NodeConfig
from failover.core import events as ev
from failover.core.state import ACTIVE_STATES, Role, State
from failover.core.supervisor import Persisted, Supervisor
from failover.core.wire import Command, Status
from failover.eventlog import EventLog, is_journal
from failover.keys import describe as describe_keys
from failover.keys import load_keys
from failover.link import COMMAND_NAMES, PeerLink
from failover.replication import Replication
from failover.sdnotify import Notifier, WatchdogGate, keep_pinging, status_text
from failover.service_proc import ServiceRunner
from failover.statefile import load_state, save_state
from failover.web.server import serve_http
from telephony.configdb import ConfigDBError
from telephony.runtime.tasks import TaskFailures, contained, keep_running

COMMAND_KINDS = {name: kind for kind, name in COMMAND_NAMES.items()}  # supervisor name -> wire


def local_clock() -> ev.Tick:
    wall = time.time()
    lt = time.localtime(wall)
    return ev.Tick(wall=wall, local_seconds=lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + wall % 1)


@dataclass
class NodeManager:
    cfg: NodeConfig
    events: EventLog
    sup: Supervisor = field(init=False)
    inbox_send: trio.MemorySendChannel = field(init=False)
    inbox: trio.MemoryReceiveChannel = field(init=False)
    exit_code: int | None = None
    link: object = None  # PeerLink; tests may pass a stand-in with send()/stats()/run()
    service: object = None  # ServiceRunner; likewise
    repl: object = None  # Replication (the configuration database and replication); likewise
    #: systemd's notification socket (failover/sdnotify.py): None when not run by systemd
    notifier: Notifier | None = None

    def __post_init__(self) -> None:
        self.state_path = self.cfg.node.data_dir / "state.json"
        persisted = load_state(self.state_path)
        self.sup = Supervisor(self.cfg.supervisor_config(), now=trio.current_time(), persisted=persisted)
        self.inbox_send, self.inbox = trio.open_memory_channel(1024)
        #: failures of the node manager's long-lived tasks (link, admin and control listeners,
        #: service supervision): counted, logged and shown in status; none ends the process
        self.failures = TaskFailures(self.events.write)
        need_key = self.link is None or (self.repl is None and self.cfg.replication.enabled)
        #: the link's keys (failover/keys.py), re-read when the key file changes or on SIGHUP
        self.key_ring = load_keys(self.cfg.node.key_file) if need_key else None
        self._key_stamp = self._key_file_stamp()
        self._key_expiry_logged = False
        if self.link is None:
            self.link = PeerLink(self.cfg, self.accepted_keys, self.inbox_send, self.events, self.failures)
        if self.repl is None:
            self.repl = Replication(self.cfg, self.accepted_keys, self.events, self.inbox_send)
        if self.service is None:
            self.service = ServiceRunner(self.cfg, self.inbox_send, self.events, self.failures)
        self._admin_waiters: dict[int, trio.MemorySendChannel] = {}
        self._next_request = 0
        self.started_wall = time.time()
        #: the supervisor loop's turns, for systemd's watchdog (None: no watchdog)
        self.watchdog_gate = WatchdogGate() if self.notifier and self.notifier.watchdog_interval else None
        self._told_status: str | None = None
        self._told_stopping = False

    # ------------------------------------------------------------------ keys

    def accepted_keys(self) -> tuple[bytes, ...]:
        """The keys new link and replication connections accept now, the current one first."""
        return self.key_ring.accepted(time.time())

    def _key_file_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.cfg.node.key_file)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)

    def reload_keys(self, why: str) -> bool:
        """Read the key file again.  A file that does not load is logged as an error and
        changes nothing (the running keys stay); connections that are up are never touched.
        True if the keys changed."""
        if self.key_ring is None:
            return False
        try:
            ring = load_keys(self.cfg.node.key_file)
        except ConfigError as e:  # names the file and what is wrong, never the key bytes
            self.events.write("error", "key_file_error", f"key file not reloaded ({why}): {e}; "
                              "the running keys stay")
            return False
        if ring == self.key_ring:
            return False
        self.key_ring, self._key_expiry_logged = ring, False
        ids = describe_keys(ring)
        self.events.write("info", "keys_loaded", f"key file reloaded ({why}): current key id "
                          f"{ids['current_id']}" + (f", previous key id {ids['previous_id']} accepted "
                                                    f"until {ids['previous_until']}"
                                                    if ring.previous is not None else ""), ids)
        return True

    async def _watch_keys(self) -> None:
        """About once a second: reload the key file if it changed; say once when the previous
        key's window has ended."""
        while True:
            stamp = self._key_file_stamp()
            if stamp != self._key_stamp:
                self._key_stamp = stamp
                self.reload_keys("the file changed")
            ring = self.key_ring
            if ring is not None and ring.expired(time.time()) and not self._key_expiry_logged:
                self._key_expiry_logged = True
                ids = describe_keys(ring)
                self.events.write("info", "key_previous_expired", f"the previous key (id "
                                  f"{ids['previous_id']}) is no longer accepted since "
                                  f"{ids['previous_until']}; only key id {ids['current_id']} is", ids)
            await trio.sleep(1.0)

    # ------------------------------------------------------------------ public API (admin)

    async def request(self, kind: str, arg: str = "", force: bool = False) -> ev.AdminReply:
        self._next_request += 1
        rid = self._next_request
        send, recv = trio.open_memory_channel(1)
        self._admin_waiters[rid] = send
        await self.inbox_send.send(ev.AdminRequest(rid, kind, arg, force))
        with trio.move_on_after(5) as scope:
            reply = await recv.receive()
        self._admin_waiters.pop(rid, None)
        if scope.cancelled_caught:
            return ev.AdminReply(rid, False, "node manager did not answer in 5 s")
        return reply

    def write_refusal(self) -> str | None:
        """Why a configuration write is refused here now (None: accepted)."""
        sup = self.sup
        if sup.state is State.ACTIVE and not sup.handing_over:
            return None
        peer = sup.peer
        if sup.handing_over:
            return (f"{self.cfg.node.name} is handing over to {self.cfg.link.peer_name}: "
                    "configuration writes are refused until the handover is done; write on "
                    f"{self.cfg.link.peer_name}")
        if peer is not None and sup.peer_fresh(trio.current_time()) and peer.state in ACTIVE_STATES:
            return (f"{self.cfg.node.name} is {sup.state.label}; the active node is "
                    f"{peer.node}: write there")
        return f"{self.cfg.node.name} is {sup.state.label} and no active node is known: nothing written"

    async def db_write(self, ops: list) -> dict:
        why = self.write_refusal()
        if why is not None:
            return {"ok": False, "error": why}
        try:
            res = await self.repl.write(self.sup.term, ops)
        except ConfigDBError as e:
            return {"ok": False, "error": str(e)}
        self.events.write("info", "config_write", f"operator wrote the configuration database: "
                          f"{_write_summary(ops)} (term {res.term}, seq {res.seq})",
                          {"term": res.term, "seq": res.seq, "changes": res.changes})
        return {"ok": True, "seq": res.seq, "term": res.term, "changes": res.changes}

    def status_dict(self) -> dict:
        now = trio.current_time()
        s = self.sup.status(now)
        peer = self.sup.peer
        return {
            "node": {"name": s.node, "role": s.role.label, "state": s.state.label, "term": s.term,
                     "service": s.service.label, "mode": s.mode.label, "eligible": s.eligible,
                     "licensed": s.licensed, "hold": s.hold, "shutting_down": s.shutting_down,
                     "cause": s.cause, "uptime_s": round(s.uptime, 3), "pid": os.getpid(),
                     "service_failures": s.service_failures,
                     "service_retry_in_s": None if s.service_retry_in is None
                     else round(s.service_retry_in, 3),
                     "health": s.health, "drivers": getattr(self.service, "drivers", []),
                     "last_contact_wall": self.sup.last_contact_wall},
            "peer": {"name": self.cfg.link.peer_name, "address": str(self.cfg.link.peer),
                     "reachable": s.peer_reachable,
                     "state": s.peer_state.label if s.peer_state is not None else None,
                     "term": s.peer_term,
                     "service": peer.service.label if peer else None,
                     "mode": peer.mode.label if peer else None,
                     "calls": peer.calls if peer else None,
                     "health": peer.health if peer else None,
                     "last_heartbeat_age_s": None if s.peer_heartbeat_age is None
                     else round(s.peer_heartbeat_age, 3),
                     "link": self.link.stats()},
            "replication": self.repl.stats(),
            "keys": describe_keys(self.key_ring) if self.key_ring is not None else None,
            "ports": self.service.ports,
            "counters": self.service.counters,
            "calls_in_progress": s.calls,
            "tasks": self.failures.stats(),
            "settings": {"ping_interval_s": self.cfg.failover.ping_interval,
                         "missed_pings": self.cfg.failover.missed_pings,
                         "takeover_after_s": round(self.cfg.peer_timeout, 3),
                         "lease_s": round(self.cfg.lease_s, 3),
                         "failback": self.cfg.failback.type.name.lower()},
        }

    # ------------------------------------------------------------------ main loop

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> int:
        self._set_priority()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await nursery.start(self.repl.run)
            await nursery.start(self.link.run)
            await nursery.start(self.service.serve_control)
            await nursery.start(serve_admin, self)
            if self.cfg.http.enabled:  # the admin HTTP API and the Failover Monitor page
                await nursery.start(serve_http, self)
            nursery.start_soon(keep_running, "keys.watch", self._watch_keys, self.failures)
            await self._run_actions(self.sup.start(trio.current_time()))
            task_status.started(self)
            if self.notifier is not None:  # systemd: started; the watchdog pings from now on
                self._told_status = self._status_text()
                self.notifier.ready(self._told_status)
                if self.watchdog_gate is not None:
                    nursery.start_soon(keep_running, "systemd.watchdog", functools.partial(
                        keep_pinging, self.notifier, self.watchdog_gate, self.events.write), self.failures)
            await self._loop()
            if self.notifier is not None and not self._told_stopping:
                self._told_stopping = self.notifier.stopping(f"stopped: exit code {self.exit_code or 0}")
            nursery.cancel_scope.cancel()
        return self.exit_code or 0

    async def _loop(self) -> None:
        await self._dispatch(local_clock())
        while self.exit_code is None:
            deadline = self.sup.next_deadline()
            deadline = math.inf if deadline is None else deadline
            event = None
            with trio.move_on_at(deadline):
                event = await self.inbox.receive()
            if event is None:
                # aioquic's clamp: the core never sees a timer fire early
                await self._dispatch(local_clock(), now=max(deadline, trio.current_time()))
            else:
                await self._dispatch(event)

    async def _dispatch(self, event: ev.Event, now: float | None = None) -> None:
        now = trio.current_time() if now is None else now
        if isinstance(event, ev.PeerCommand):
            self.events.write("info", "peer_command", f"peer sent {event.kind} (term {event.term}): "
                              f"{event.reason}")
        actions = self.sup.handle(event, now)
        await self._run_actions(actions)
        self.repl.update(self.sup.state, self.sup.term, self.sup.mode)
        await self._tell_peer_link(now)
        if self.notifier is not None:
            self._tell_systemd(now)

    def _status_text(self) -> str:
        sup = self.sup
        return status_text(self.cfg.node.role.label, sup.state.label, sup.term, self.cfg.link.peer_name,
                           sup.peer_fresh(trio.current_time()))

    def _tell_systemd(self, now: float) -> None:
        """The loop turned (the watchdog's proof of life); STATUS= when the state changed;
        STOPPING=1 once a shutdown has begun (it may drain calls for a while)."""
        if self.watchdog_gate is not None:
            self.watchdog_gate.turned(now)
        text = self._status_text()
        if self.sup.shutting_down and not self._told_stopping:
            self._told_stopping = self.notifier.stopping(f"stopping: {text}")
            self._told_status = text
        elif text != self._told_status:
            self._told_status = text
            self.notifier.status(text)

    async def _tell_peer_link(self, now: float) -> None:
        """The service's ``link`` op, after the actions (a step-down goes first): the peer is
        reachable while it is heard within the takeover timeout.  A secondary (it holds its
        lamps on a shared line while the peer is not reachable: docs/smdi.md, "A shared line
        in a partition") gives up two ping intervals earlier, before its primary can take
        over, and calls it unreachable while both are active (a heal or handover not done)."""
        sup = self.sup
        if self.cfg.node.role is Role.SECONDARY:
            reachable = (sup.peer_fresh(now + 2 * self.cfg.failover.ping_interval)
                         and not (sup.state in ACTIVE_STATES and sup.peer_serving(now)))
        else:
            reachable = sup.peer_fresh(now)
        tell = getattr(self.service, "peer_link", None)
        if tell is not None:
            try:
                await tell(reachable)
            except Exception as e:  # noqa: BLE001 - told again after the next hello
                self.failures.failed("service.link", e)

    async def _run_actions(self, actions: list[ev.Action]) -> None:
        for i, a in enumerate(actions):
            try:
                await self._run(a)
            except Exception as e:  # noqa: BLE001 - an action that fails is the supervisor's event
                # the rest of this batch depended on it (e.g. activate after persisting a term)
                if not isinstance(e, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
                    self.failures.failed(f"action.{type(a).__name__}", e)
                rest = [x for x in actions[i + 1:] if isinstance(x, ev.Log)]
                await self._run_actions(rest)
                followup = self.sup.handle(ev.ActionFailed(a, str(e)), trio.current_time())
                await self._run_actions(followup)
                return

    async def _run(self, a: ev.Action) -> None:
        if isinstance(a, ev.SendStatus):
            self.link.send(self._status_frame())
        elif isinstance(a, ev.SendCommand):
            self.link.send(Command(COMMAND_KINDS[a.kind], a.term, a.reason[:120]), important=True)
        elif isinstance(a, ev.PersistState):
            save_state(self.state_path, Persisted(term=a.term, last_contact_wall=a.last_contact_wall))
        elif isinstance(a, ev.ActivateService):
            # the lease's end on the host's monotonic clock: a service that reads this late
            # (starved of CPU) can never answer past it
            await self.service.send({"op": "activate", "term": a.term, "lease": a.lease,
                                     "until": time.monotonic() + a.lease})
        elif isinstance(a, ev.RenewLease):
            await self.service.send({"op": "renew", "term": a.term, "lease": a.lease,
                                     "until": time.monotonic() + a.lease})
        elif isinstance(a, ev.DeactivateService):
            await self.service.send({"op": "deactivate", "term": a.term, "drain": a.drain})
        elif isinstance(a, ev.RefuseCall):
            await self.service.send({"op": "refuse_call", "call_id": a.call_id, "reason": a.reason})
        elif isinstance(a, ev.StartService):
            self.nursery.start_soon(self._start_service, a.reason)
        elif isinstance(a, ev.KillService):
            self.service.kill(a.reason)
        elif isinstance(a, ev.ShutdownService):
            await self.service.shutdown(a.reason)
        elif isinstance(a, ev.AdminReply):
            waiter = self._admin_waiters.pop(a.request_id, None)
            if waiter is not None:
                waiter.send_nowait(a)
        elif isinstance(a, ev.ReplicationBarrier):
            if self.cfg.replication.enabled:
                self.nursery.start_soon(contained, "replication.barrier", self.failures,
                                        self.repl.barrier, a.number)
            else:
                self.inbox_send.send_nowait(ev.ReplicationProgress(pending=0, barrier=a.number))
        elif isinstance(a, ev.Log):
            self.events.write(a.level, a.event, a.message, a.fields or None)
        elif isinstance(a, ev.Exit):
            self.exit_code = a.code
        else:  # pragma: no cover - a new action without a driver is a bug
            raise TypeError(f"no driver for action {a!r}")

    async def _start_service(self, reason: str) -> None:
        """Start the service child and watch it until it exits.  Whatever goes wrong in doing
        so is the service's failure (the supervisor restarts it with backoff), never the node
        manager's end."""
        try:
            await self.service.start(reason)
        except Exception as e:  # noqa: BLE001 - reported as the service's exit, see above
            self.failures.failed("service.start", e)
            await self.inbox_send.send(ev.ServiceExited(f"could not start or watch the service: "
                                                        f"{type(e).__name__}: {e}"))

    def _status_frame(self) -> Status:
        s = self.sup.status(trio.current_time())
        fields = {name: getattr(s, name) for name in ev.HEARTBEAT_FIELDS}
        return Status(**{**fields, "calls": min(s.calls, 65535)},
                      ports=min(len(self.service.ports), 65535), repl_pos=self.repl.head,
                      ping_interval_ms=int(self.cfg.failover.ping_interval * 1000),
                      uptime_ms=int(s.uptime * 1000), settings=self.link.settings)

    def _set_priority(self) -> None:
        prio = self.cfg.failover.realtime_priority
        if prio <= 0:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(prio))
            self.events.write("info", "priority", f"node manager runs SCHED_RR priority {prio}")
        except (PermissionError, OSError) as e:
            self.events.write("warning", "priority", f"cannot set SCHED_RR priority {prio}: {e}; "
                              "running with normal scheduling")


async def run_node(cfg: NodeConfig) -> int:
    """Run the node manager until it exits; returns the exit code.

    A configuration that stops the node from starting is one line per problem on standard
    error (``vmha node: ...``) and an ``error`` record in the event log, and the exit code
    ``config.EXIT_CONFIG``, never a traceback: ports that collide (``config.port_collisions``:
    this node's own sockets against each other and against the peer's listeners on this
    host), a listener that cannot bind (``telephony.runtime.tasks.ListenError``, at any time) and, at
    start, any other bind error (address in use, not ours, no permission)."""
    import errno
    import socket

    from failover.config import EXIT_CONFIG, listen_binds, port_collisions
    from telephony.runtime.tasks import ListenError

    events = EventLog(cfg.node.data_dir / "events.jsonl", cfg.node.name, level=cfg.log.level,
                      console=sys.stderr if cfg.log.console else None)
    refused: list[tuple[str, str]] = []  # (event, message)

    def leaves(group: BaseExceptionGroup) -> list[BaseException]:
        return [x for e in group.exceptions
                for x in (leaves(e) if isinstance(e, BaseExceptionGroup) else [e])]

    def unnamed(e: OSError) -> str:
        """A bind error that does not say where: bind the node manager's own TCP listen
        addresses here (its listeners are closed by now) and name those that fail alike."""
        if e.filename:  # a Unix socket's directory or path: the error says where
            return f"cannot listen on {e.filename}: {e.strerror or e}"
        binds = [b for b in listen_binds(cfg) if b.proto == "tcp" and b.setting != "ports.loopback.listen"]
        culprits = []

        def named(b) -> str:  # as telephony.runtime.tasks.listen_tcp says it
            return f"{b.address} (setting {b.setting})"

        for b in binds:
            try:
                for family, kind, proto, _, addr in socket.getaddrinfo(
                        b.host, b.lo, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
                    with socket.socket(family, kind, proto) as s:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        if family == socket.AF_INET6:
                            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                        s.bind(addr)
            except OSError as probe:
                if probe.errno == e.errno:
                    culprits.append(named(b))
        where = " and ".join(culprits) or "one of " + ", ".join(named(b) for b in binds)
        return f"cannot listen on {where}: {e.strerror or e}"

    try:
        refused += [("port_collision", line) for line in port_collisions(cfg)]
        code = EXIT_CONFIG
        if not refused:
            nm = NodeManager(cfg, events, notifier=Notifier.from_env(log=events.write))
            started = False
            try:
                async with trio.open_nursery() as nursery:
                    async def signals() -> None:
                        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                            async for sig in sigs:
                                await nm.inbox_send.send(ev.ShutdownRequested(signal.Signals(sig).name))

                    async def manager(task_status=trio.TASK_STATUS_IGNORED) -> None:
                        nonlocal code
                        code = await nm.run(task_status=task_status)
                        nursery.cancel_scope.cancel()

                    async def hangups() -> None:  # SIGHUP: read the key file again now
                        with trio.open_signal_receiver(signal.SIGHUP) as sigs:
                            async for _ in sigs:
                                try:
                                    nm.reload_keys("SIGHUP")
                                except Exception as e:  # noqa: BLE001 - a bug here must not end the node
                                    nm.failures.failed("keys.sighup", e)

                    nursery.start_soon(signals)
                    nursery.start_soon(hangups)
                    await nursery.start(manager)
                    started = True
            except* ListenError as group:
                refused += [("listen_failed", e.strerror or str(e)) for e in leaves(group)]
            except* OSError as group:
                bind_errors = (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL)
                if started or not all(getattr(e, "errno", None) in bind_errors for e in leaves(group)):
                    raise
                refused += [("listen_failed", unnamed(e)) for e in leaves(group)]
        if refused:
            # the console gets the one line below; the event log's record goes to the file only
            record = EventLog(events.path, cfg.node.name, console=None)
            err = "<3>" if is_journal(sys.stderr) else ""  # the journal: priority "error"
            try:
                for event, line in dict.fromkeys(refused):
                    print(f"{err}vmha node: {line}", file=sys.stderr, flush=True)
                    record.write("error", event, f"cannot start: {line}")
            finally:
                record.close()
            return EXIT_CONFIG
        return code
    finally:
        events.close()


def main_node(cfg: NodeConfig) -> int:
    """``vmha node``: :func:`run_node` in a Trio run.  Returns the exit code (0 after a
    shutdown, ``config.EXIT_CONFIG`` when the configuration stops the node from starting)."""
    os.umask(0o077)  # files at rest: the node's files are its user's only (docs/configuration.md)
    return trio.run(run_node, cfg)


__all__ = ["NodeManager", "run_node", "main_node"]


def _write_summary(ops: list) -> str:
    """What a configuration write touched, for the event log: operations counted per table,
    never a row's values (a PIN hash or a caller number stays out of the log)."""
    seen = Counter((str(op.get("op")), str(op.get("table"))) for op in ops if isinstance(op, dict))
    return ", ".join(f"{kind} {table} x{n}" for (kind, table), n in sorted(seen.items()))

