"""The SIP port driver: pjsua2 worker processes of up to four ports each, started and watched by
the messaging service, and the calls and lamps driven over them.

* :class:`SipPorts` (a :class:`telephony.runtime.ports.PortDriver`) registers ports ``sip-1..N`` and
  runs one supervisor task per worker (:mod:`telephony.sip.worker`, a process of its own
  talking JSON lines on a Unix socket, :class:`WorkerChannel`).  The workers are forked by the
  fork server (:mod:`telephony.sip.forkserver`, started before any worker: they share its
  loaded code and modules), or started with exec while it is not running.  A worker that dies
  is restarted with backoff; its ports are ``down`` meanwhile and the calls it held are logged
  and reported as dropped.
* An ``incoming`` INVITE becomes a call-arrival event on one of that worker's ports: the reason
  and forwarding number come from Diversion / History-Info (:mod:`telephony.sip.core.headers`); on
  the inactive node the service holds the call and tells the node manager (immediate
  failover), then it is answered normally.  A rejected call gets 486 (busy) or 480.
* **Numbered lines** (docs/sip.md, *Lines*): a call addressed to ``<user>-N`` (register mode:
  the account ``user-N`` it reached; trunk mode: the Request-URI user) is on line ``sip-N``.
  With :attr:`SipPorts.line_info` set (call information from the SMDI link), such a call is
  put on that very port and its numbers come from ``await line_info(port, call_id, node)``
  instead of the SIP headers, the loopback trunk's contract.
* An answered call is a :class:`telephony.sip.call.SipCall` (a
  :class:`telephony.core.callflow.CallPort`): prompts, recordings, digits and the blind
  transfer, over the worker that holds it.
* :meth:`SipPorts.send_mwi` (the messaging core's lamp sink) sends an unsolicited
  ``message-summary`` NOTIFY through a live worker, only while the service is active in the
  job's term; 403, 408 and 5xx are retried with backoff, then the job fails (the ledger keeps
  the lamp unconfirmed and the next resync sends it again).
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import re
import signal
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from telephony.core.events import CallArrival
from telephony.core.framing import (
    NEED_DATA,
    Closed,
    FramingError,
    LineFramer,
    Unfinished,
    decode_json_object,
    encode_json_line,
)
from telephony.core.mwi import TransmitRefused, require_term
from telephony.runtime.ports import ActiveCall, CallService, PortRegistry, PortState
from telephony.runtime.tasks import Backoff, ListenError, TaskFailures, describe, python_logger, report_event
from telephony.sip.call import SipCall, WorkerGone
from telephony.sip.core.headers import call_reason, message_summary
from telephony.sip.forkserver import ForkedProcess, ForkServer
from telephony.sip.settings import SipProfile

log = logging.getLogger("telephony.sip")

KIND = "sip"
MAX_LINE = 256 * 1024  # the worker's events carry the raw INVITE (at most 16 KiB)
RETRY_CODES = {403, 408, 480, 500, 503, 504}

Flow = Callable[[CallArrival, Any, int], Awaitable[Any]]
#: ``await line_info(port, call_id, node) -> CallArrival``: the information of the call
#: ringing on a numbered line, from the PBX's data link (``SmdiLink.line_arrival``)
LineInfo = Callable[[str, str, str], Awaitable[CallArrival]]


def user_of(uri: str) -> str:
    """The user part of a SIP URI or name-addr (``"A" <sip:1001@pbx>;tag=x`` -> ``1001``)."""
    s = uri
    if "<" in s and ">" in s:
        s = s[s.index("<") + 1:s.index(">")]
    for scheme in ("sips:", "sip:", "tel:"):
        if s.lower().startswith(scheme):
            s = s[len(scheme):]
            break
    s = s.split(";", 1)[0]
    return s.split("@", 1)[0] if "@" in s else (s if uri.lower().lstrip('"< ').startswith("tel:") else "")


_MEDIA_FILE = re.compile(r".+-(?:play|rec)-\d+\.wav")


RAM_DIR = Path("/dev/shm")


def media_dir_for(data_dir: Path, node: str, ram: Path = RAM_DIR) -> Path:
    """Where the SIP workers' play and recording files live: a private directory on the RAM
    file system (``/dev/shm/vmha-<node>-<hash of data_dir>``, mode 0700, owned by us), so a
    full or failing ``data_dir`` disk never cuts a greeting or a caller's recording short
    (the files are short-lived: each is removed when its prompt or recording ends).  Falls
    back to ``<data_dir>/sip-media`` when there is no usable RAM file system, or when the
    name is taken by anything but our own private directory (another user's, a symlink)."""
    fallback = Path(data_dir) / "sip-media"
    if not ram.is_dir():
        return fallback
    tag = hashlib.sha256(str(Path(data_dir).absolute()).encode()).hexdigest()[:12]
    path = ram / f"vmha-{node}-{tag}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        log.warning("SIP media files in %s: cannot use %s (%s)", fallback, path, e.strerror or e)
        return fallback
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        log.warning("SIP media files in %s: %s is not our private directory", fallback, path)
        return fallback
    return path


def sweep_media(media_dir: Path) -> int:
    """Remove the play and recording files a previous service left in ``media_dir`` (it was
    killed: its ``finally`` never ran).  Run before this service starts its workers, so
    every such file is a leftover; a dying old worker still writing one loses nothing (the
    recording died with its service, docs/messaging-service.md).  Returns how many."""
    n = 0
    for path in media_dir.iterdir():
        if _MEDIA_FILE.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            n += 1
    return n


class WorkerChannel:
    """The service's end of one worker's Unix socket: one JSON object per line both ways
    (:mod:`telephony.core.framing`).  A line from the worker that is no JSON object is logged
    and skipped; a line over :data:`MAX_LINE` breaks the connection (the stream cannot be
    resynchronised); sends are serialised."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.framer = LineFramer(MAX_LINE)
        self.lock = trio.Lock()

    async def read(self) -> dict | None:
        """The worker's next event; None once it closed its end.  Raises
        ``trio.BrokenResourceError`` after an over-long line."""
        while True:
            try:
                item = self.framer.next_line()
            except FramingError as e:
                raise trio.BrokenResourceError(f"a SIP worker sent an over-long line ({e})") \
                    from None
            if item is NEED_DATA:
                self.framer.receive_data(await self.stream.receive_some(65536))
                continue
            if isinstance(item, (Closed, Unfinished)):  # a line cut by the end is dropped
                return None
            msg = decode_json_object(item)
            if isinstance(msg, dict):
                return msg
            log.warning("bad line from a SIP worker (%s): %r", msg, item[:80])

    async def send(self, **msg: Any) -> None:
        data = encode_json_line(msg)
        async with self.lock:
            await self.stream.send_all(data)

    async def aclose(self) -> None:
        await self.stream.aclose()


class Worker:
    """One worker process and its connection."""

    def __init__(self, index: int, ports: list[str]) -> None:
        self.index = index
        self.ports = ports
        self.name = f"w{index + 1}"
        self.channel: WorkerChannel | None = None
        self.proc: trio.Process | ForkedProcess | None = None
        self.calls: dict[str, SipCall] = {}
        self.active: dict[str, ActiveCall] = {}
        self.notifies: dict[int, dict] = {}
        self.notify_done = trio.Event()
        self.ready = trio.Event()
        self.restarts = 0

    @property
    def alive(self) -> bool:
        return self.channel is not None and self.ready.is_set()

    async def send(self, **msg: Any) -> None:
        if self.channel is None:
            raise WorkerGone(f"SIP worker {self.name} is not running")
        await self.channel.send(**msg)


class SipPorts:
    """Port driver of the SIP ports (see the module docstring)."""

    kind = KIND
    #: a NOTIFY's message-summary shows the new/old counts: a count change is sent too
    mwi_counts = True
    #: lamp jobs the messaging core hands over at once (the workers run NOTIFYs in parallel)
    mwi_parallel = 16

    def __init__(self, *, profile: SipProfile, node: str, runtime_dir: Path, media_dir: Path,
                 flow: Flow | None = None, password: str = "",
                 restart_min: float = 0.2, restart_max: float = 10.0,
                 python: str = sys.executable, fork_server: bool | None = None) -> None:
        self.profile = profile
        self.node = node
        self.runtime_dir = Path(runtime_dir)
        self.media_dir = Path(media_dir)
        self.flow = flow
        self.password = password
        self.restart_min = restart_min
        self.restart_max = restart_max
        self.python = python
        #: workers are forked by the fork server (:mod:`telephony.sip.forkserver`; default:
        #: unless another program stands in for the worker's Python), else started with exec
        use_fork = fork_server if fork_server is not None else python == sys.executable
        self.forkserver = ForkServer(python) if use_fork else None
        self.workers = [Worker(i, profile.worker_ports(i)) for i in range(profile.workers)]
        #: the term the service may transmit in right now, or None (set by the service)
        self.gate: Callable[[], int | None] = lambda: None
        #: ``report(level, event, message)``: the node's event log
        self.report: Callable[[str, str, str], Awaitable[None]] | None = None
        #: the call information of a numbered line from the PBX's data link (the SMDI link's
        #: ``line_arrival``, set by the service); None: every call's from its SIP headers
        self.line_info: LineInfo | None = None
        self._registry: PortRegistry | None = None
        self._notify_ids = itertools.count(1)
        self.counters: dict[str, int] = {"calls": 0, "rejected": 0, "dropped_by_worker": 0,
                                         "notify_sent": 0, "notify_failed": 0,
                                         "notify_refused": 0, "worker_restarts": 0,
                                         "supervisor_errors": 0, "bad_events": 0,
                                         "call_errors": 0}
        #: failures of the workers' supervision, events and calls (the service puts its own
        #: here, so ``vmha status`` shows them as the ``tasks`` counters)
        self.task_failures = TaskFailures(python_logger(log))

    def register(self, registry: PortRegistry) -> None:
        self._registry = registry
        for w in self.workers:
            for name in w.ports:
                registry.register(name, KIND)

    async def _report(self, level: str, event: str, message: str, *, local: bool = True) -> None:
        """``message`` to the node's event log (and, with ``local``, this service's log)."""
        await report_event(self.report, log, level, event, message, local=local)

    def _set(self, w: Worker, state: PortState) -> None:
        if self._registry is None:
            return
        for name in w.ports:
            port = self._registry.get(name)
            if state is PortState.DOWN or port.state is PortState.DOWN:
                port.state = state

    async def run(self, service: CallService, *,
                  task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        self.media_dir.mkdir(parents=True, exist_ok=True)
        swept = await trio.to_thread.run_sync(sweep_media, self.media_dir)
        if swept:
            log.warning("removed %d media files left by a messaging service that did not stop "
                        "cleanly (the recordings of its calls in progress)", swept)
        if self.workers:  # a socket that can never be bound is a configuration error
            probe = self.runtime_dir / f"sip-{self.workers[-1].name}.sock"
            try:
                probe.unlink(missing_ok=True)
                await (await _unix_listener(probe)).aclose()
            except OSError as e:
                raise ListenError(e.errno, f"cannot listen on {probe} (the SIP workers' "
                                  f"sockets, under setting node.data_dir): "
                                  f"{e.strerror or e}") from e
            finally:
                probe.unlink(missing_ok=True)
        # held open while the ports run: it shows that the directory is in use, also while
        # it is empty between calls, to anything that cleans /dev/shm (the test suite's
        # clean-up looks for such a holder before it removes a directory)
        holder = os.open(self.media_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            await self._run_workers(service, task_status)
        finally:  # an empty media directory on /dev/shm is not left behind (RAM)
            os.close(holder)
            if self.media_dir.parent == RAM_DIR:
                with contextlib.suppress(OSError):
                    self.media_dir.rmdir()

    async def _run_workers(self, service: CallService, task_status: trio.TaskStatus) -> None:
        async with trio.open_nursery() as nursery:
            # Started at once: the service starts its health loop after its drivers, and must
            # report health while the workers start (the ports are down until their worker is
            # ready).  Waiting for workers here got the service killed for missing health
            # reports: with 36 workers on 2 CPUs, and after a kill -9 when the dead service's
            # worker still held its SIP port for a moment (the new one failed to bind and was
            # restarted).  The workers start one after the other: dozens starting at once
            # stalled the node manager.
            task_status.started()
            if self.forkserver is not None and self.workers:  # before any worker starts
                await nursery.start(self.forkserver.run)
            for w in self.workers:
                nursery.start_soon(self._supervise, w, service)
                with trio.move_on_after(10):
                    while not w.ready.is_set():  # a failed start replaces w.ready: re-read it
                        await trio.sleep(0.05)

    # ------------------------------------------------------------------ one worker

    def _argv(self, w: Worker, sock: Path) -> list[str]:
        p = self.profile
        argv = [self.python, "-m", "telephony.sip.worker", "--control", str(sock),
                "--name", f"{self.node}-{w.name}", "--bind", p.bind,
                "--sip-port", str(p.sip_port + w.index), "--rtp-port", str(p.worker_rtp(w.index)),
                "--ports", str(len(w.ports)), "--media-dir", str(self.media_dir), "--mode", p.mode,
                "--tsx-timeout", str(int(p.notify_timeout * 1000))]
        if p.mode == "register":
            users = ",".join(self.account_of(name) for name in w.ports)
            argv += ["--registrar", p.registrar, "--users", users]
            if p.password_file:
                argv += ["--password-file", p.password_file]
        return argv

    async def _supervise(self, w: Worker, service: CallService) -> None:
        """Run worker ``w`` for ever.  Whenever a run of it ends (the process exited or
        crashed, its socket closed or was reset, it did not connect within 30 s) or anything
        here failed (the socket could not be bound, ``accept`` failed, e.g. EMFILE, a bug while
        serving it), the failure is recorded (``task_failures``, task ``sip-wN``; the event
        log gets ``sip_worker_restart``), its ports stay ``down`` and it is started again
        after a growing delay.  Only cancellation ends this."""
        backoff = Backoff(self.restart_min, self.restart_max, healthy_after=60.0)
        while True:
            started_at = trio.current_time()
            try:
                why = await self._run_worker(w, service)
            except Exception as e:  # noqa: BLE001 - nothing escapes a worker's supervision
                why = f"failed: {describe(e)}"
                self.counters["supervisor_errors"] += 1
            self._set(w, PortState.DOWN)  # also when it failed before a worker ever ran
            self.counters["worker_restarts"] += 1
            w.restarts += 1
            delay = backoff.next(trio.current_time() - started_at)
            what = f"SIP worker {w.name} ({', '.join(w.ports)}) {why}"
            self.task_failures.failed(f"sip-{w.name}", what, retry_in=delay, level="warning")
            await self._report("warning", "sip_worker_restart",
                               f"{what}; restarting in {delay:.1f} s", local=False)
            await trio.sleep(delay)

    async def _run_worker(self, w: Worker, service: CallService) -> str:
        """One run of worker ``w``: listen, start it, serve it until it ends; returns why it
        ended.  Raises whatever failed around it (``_supervise`` records it)."""
        sock = self.runtime_dir / f"sip-{w.name}.sock"
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        sock.unlink(missing_ok=True)
        listener = await _unix_listener(sock)
        try:
            try:
                w.proc = await self._start_process(w, sock)
            except OSError as e:
                return f"could not be started: {describe(e)}"
            why = "exited"
            try:
                async with trio.open_nursery() as n:
                    async def watch_exit():
                        await w.proc.wait()
                        if w.channel is None:  # still waiting for its connection
                            n.cancel_scope.cancel()
                        # else the kernel closed its end: _serve reads EOF, ends the calls
                        # (the call flows keep what was recorded) and returns
                    n.start_soon(watch_exit)
                    with trio.move_on_after(30) as accept_timer:
                        try:
                            stream = await listener.accept()
                        finally:  # one connection per run; a late one is refused at once
                            await listener.aclose()
                    if accept_timer.cancelled_caught:
                        why = "did not connect within 30 s"
                        n.cancel_scope.cancel()
                    else:
                        w.channel = WorkerChannel(stream)
                        why = await self._serve(w, service)
                        n.cancel_scope.cancel()
            except Exception as e:
                why = f"failed: {describe(e)}"
                raise
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop(w, why)
            return why
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()
                sock.unlink(missing_ok=True)

    async def _start_process(self, w: Worker, sock: Path) -> Any:
        """Worker ``w``'s process: forked by the fork server while it runs, else exec-ed
        (the same command line, in a session of its own either way)."""
        argv = self._argv(w, sock)
        if self.forkserver is not None:
            proc = await self.forkserver.spawn(argv[3:])  # without "python -m <module>"
            if proc is not None:
                return proc
        return await trio.lowlevel.open_process(argv, stdin=None, start_new_session=True)

    async def _stop(self, w: Worker, why: str) -> None:
        w.ready = trio.Event()
        channel, w.channel = w.channel, None
        self._set(w, PortState.DOWN)
        self._lost(w, why)
        for box in list(w.notifies.values()):
            box.setdefault("result", {"code": 503, "reason": f"worker {why}"})
        w.notify_done.set()
        w.notify_done = trio.Event()
        if channel is not None:
            try:
                with trio.move_on_after(1):
                    await channel.send(op="shutdown")
            except Exception:  # noqa: BLE001
                pass
            await channel.aclose()
        proc = w.proc
        if proc is not None:
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                if isinstance(proc, ForkedProcess):
                    proc.kill()            # through its pidfd
                else:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                await proc.wait()

    def _lost(self, w: Worker, why: str) -> None:
        """The worker's connection ended: every call it held is over (logged as dropped; the
        call flow keeps what was recorded, as after a hang-up)."""
        for active in list(w.active.values()):
            self.counters["dropped_by_worker"] += 1
            log.warning("call %s on %s dropped: SIP worker %s %s", active.call_id,
                        active.arrival.port, w.name, why)
        for call in list(w.calls.values()):
            call.gone()

    async def _serve(self, w: Worker, service: CallService) -> str:
        assert w.channel is not None
        async with trio.open_nursery() as n:  # exits once every call's task is over
            while True:
                try:
                    ev = await w.channel.read()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                    self._lost(w, why := f"connection broke: {e}")
                    return why
                if ev is None:
                    self._lost(w, "closed its connection")
                    return "closed its connection"
                try:
                    await self._event(w, ev, service, n)
                except Exception as e:  # noqa: BLE001 - one odd event never ends the worker
                    self.counters["bad_events"] += 1
                    self.task_failures.failed(f"sip-{w.name}-events", e)

    async def _event(self, w: Worker, ev: dict, service: CallService,
                     calls: trio.Nursery) -> None:
        """One event from worker ``w`` (its fields are the worker's word: checked here)."""
        kind = ev.get("ev")
        if kind == "ready":
            if self.profile.mode == "trunk":  # a registered line is up once registered
                self._set(w, PortState.IDLE)
            w.ready.set()
            log.info("SIP worker %s ready on %s (pid %s): %s", w.name, ev.get("sip"),
                     ev.get("pid"), ", ".join(w.ports))
        elif kind == "incoming":
            calls.start_soon(self._incoming, w, ev, service)
        elif kind == "notify_result":
            nid = ev.get("id")
            box = w.notifies.get(nid) if isinstance(nid, int) else None
            if box is not None:
                box["result"] = ev
                w.notify_done.set()
                w.notify_done = trio.Event()
        elif kind == "registration":
            self._registration(w, ev)
            level = "info" if ev.get("state") == "registered" else "warning"
            await self._report(level, "sip_registration",
                               f"SIP {ev.get('account')}: {ev.get('state')} "
                               f"({ev.get('code')} {ev.get('reason', '')})")
        elif kind == "error":
            message = str(ev.get("message"))
            if message.startswith("start failed"):  # e.g. its SIP address is taken
                p = self.profile
                message = (f"cannot start on {p.bind}:{p.sip_port + w.index} (settings "
                           f"ports.sip.bind, ports.sip.sip_port): {message}")
            log.warning("SIP worker %s: %s", w.name, message)
            if isinstance(ev.get("call"), str) and ev["call"] in w.calls:
                w.calls[ev["call"]].event(ev)   # e.g. a refused transfer op
        elif isinstance(ev.get("call"), str) and ev["call"] in w.calls:
            w.calls[ev["call"]].event(ev)

    def _registration(self, w: Worker, ev: dict) -> None:
        """Register mode: a port is ``idle`` while its line is registered, ``down`` otherwise
        (a call in progress keeps its state)."""
        name = self.port_of_account(str(ev.get("account", "")))
        if name is None or name not in w.ports or self._registry is None:
            return
        port = self._registry.get(name)
        if ev.get("state") == "registered":
            if port.state is PortState.DOWN:
                port.state = PortState.IDLE
        elif port.state is PortState.IDLE:
            port.state = PortState.DOWN

    def account_of(self, port: str) -> str:
        """The user a port registers as (register mode): port ``sip-N`` is ``user-N``."""
        return f"{self.profile.user}-{port.split('-', 1)[1]}"

    def port_of_account(self, account: str) -> str | None:
        prefix = f"{self.profile.user}-"
        if account.startswith(prefix) and account[len(prefix):].isdigit():
            return f"sip-{int(account[len(prefix):])}"
        return None

    # ------------------------------------------------------------------ calls

    async def _incoming(self, w: Worker, ev: dict, service: CallService) -> None:
        """One offered call, contained: whatever fails in it (outside the call flow, which
        has its own backstop) is recorded (task ``sip-call``), the port it claimed is given
        back and the worker is told to reject or hang up; the worker's other calls go on."""
        held: dict[str, Any] = {}
        try:
            await self._take_call(w, ev, service, held)
        except Exception as e:  # noqa: BLE001 - one call never ends its worker's others
            self.counters["call_errors"] += 1
            self.task_failures.failed("sip-call", e)
            port = held.get("port")
            if port is not None and port.state is PortState.RINGING:
                port.state = PortState.IDLE
            wid = ev.get("call")
            if isinstance(wid, str):
                if "answered" in held:
                    await self._reply(w, op="hangup", call=wid)
                else:
                    await self._reply(w, op="reject", call=wid, code=500)

    def line_of(self, ev: dict) -> str | None:
        """The line (port name ``sip-N``) an ``incoming`` call is addressed to, or None: in
        register mode the account ``<user>-N`` the call reached, in trunk mode the
        Request-URI's user ``<user>-N`` (a gateway routes its line N to ``sip:vm-N@<the
        worker's address>``; docs/sip.md, *Lines*)."""
        if self.profile.mode == "register":
            return self.port_of_account(str(ev.get("account") or ""))
        return self.port_of_account(user_of(str(ev.get("request_uri") or "")))

    async def _take_call(self, w: Worker, ev: dict, service: CallService,
                         held: dict[str, Any]) -> None:
        wid = ev.get("call")
        if not isinstance(wid, str):
            return
        assert self._registry is not None
        line = self.line_of(ev) if self.line_info is not None else None
        if line is not None and line not in w.ports:
            where = next((f"worker {o.name}'s" for o in self.workers if line in o.ports),
                         "no such")
            log.warning("SIP call %s for line %s refused (404): %s line, not one of worker %s "
                        "(%s)", wid, line, where, w.name, ", ".join(w.ports))
            await self._reply(w, op="reject", call=wid, code=404)
            return
        if line is not None:  # the call information comes from the data link: that very line
            port = self._registry.claim_port(line)
        else:
            port = self._claim(w, self.port_of_account(str(ev.get("account") or "")))
        held["port"] = port
        if port is None:
            await self._reply(w, op="reject", call=wid, code=486)
            return
        call_id = _call_id(ev.get("sip_call_id"), wid)
        call = SipCall(w, wid, self.media_dir, remote=str(ev.get("remote") or ""),
                       transfer_timeout=self.profile.transfer_timeout, label=call_id)
        w.calls[wid] = call  # from now on its events (a CANCEL's disconnect) reach it
        try:
            await self._answer_call(w, ev, service, held, port, call, line)
        finally:
            w.calls.pop(wid, None)

    async def _arrival(self, ev: dict, service: CallService, port: Any, call_id: str,
                       line: str | None) -> CallArrival:
        """The call-arrival event: on a numbered line with ``line_info`` set, the data
        link's (it waits for the line's SMDI record); else from the SIP headers.  ValueError
        for numbers the profile refuses."""
        if line is not None:
            assert self.line_info is not None
            arrival = await self.line_info(port.name, call_id, service.node)
            log.info("SIP call %s on line %s: call information from the data link", call_id,
                     port.name)
            return arrival
        raw = ev.get("raw") if isinstance(ev.get("raw"), str) else ""
        reason, forwarding = call_reason(raw, select=self.profile.select)
        base = self.profile.base
        return CallArrival(
            node=service.node, port=port.name, call_id=call_id,
            calling=_number(base, "calling", user_of(str(ev.get("from", "")))),
            called=_number(base, "called", user_of(str(ev.get("request_uri") or ev.get("to", "")))),
            forwarding=_number(base, "forwarding", forwarding),
            reason=reason, integration=base.name)

    async def _answer_call(self, w: Worker, ev: dict, service: CallService,
                           held: dict[str, Any], port: Any, call: SipCall,
                           line: str | None) -> None:
        wid = call.id
        try:
            arrival = await self._arrival(ev, service, port, call.label, line)
        except ValueError as e:
            port.state = PortState.IDLE
            log.warning("SIP call %s refused: %s", wid, e)
            await self._reply(w, op="reject", call=wid, code=400)
            return
        if call.hung_up:  # the caller gave up while the line waited for its record
            port.state = PortState.IDLE
            log.info("SIP call %s on %s ended before it was offered", arrival.call_id, port.name)
            return
        decision = await service.offer(arrival)
        if not decision.answered:
            self.counters["rejected"] += 1
            await self._reply(w, op="reject", call=wid, code=486 if decision.reason == "busy" else 480)
            return
        active = decision.call
        assert active is not None
        held["answered"] = True
        w.active[wid] = active
        self.counters["calls"] += 1
        await self._reply(w, op="answer", call=wid)
        gone = "ended"
        try:
            async with trio.open_nursery() as n:
                async def watch_drop():
                    await active.dropped.wait()
                    await call.hangup()
                n.start_soon(watch_drop)
                if self.flow is not None:
                    await self.flow(arrival, call, decision.term)
                    await call.hangup()
                else:
                    await call.ended.wait()
                n.cancel_scope.cancel()
            gone = "dropped" if call.end_info.get("by") == "worker" else "ended"
        except Exception:
            log.exception("SIP call %s: the call flow failed", arrival.call_id)
            await call.hangup()
        finally:
            with trio.CancelScope(shield=True):
                w.active.pop(wid, None)
                if not active.finished:
                    await service.end_call(active, gone if not active.dropped.is_set() else "dropped")

    def _claim(self, w: Worker, first: str | None = None):
        """An idle port of ``w`` (``first`` when it is idle: the line the call came in on)."""
        assert self._registry is not None
        for name in ([first] if first in w.ports else []) + w.ports:
            p = self._registry.claim_port(name)
            if p is not None:
                return p
        return None

    async def _reply(self, w: Worker, **msg: Any) -> None:
        try:
            await w.send(**msg)
        except (WorkerGone, trio.BrokenResourceError, trio.ClosedResourceError,
                trio.BusyResourceError):
            pass

    # ------------------------------------------------------------------ MWI

    async def send_mwi(self, job) -> None:
        """Send the lamp of ``job`` (``telephony.core.mwi.MwiJob``) as an unsolicited NOTIFY.

        Raises :class:`TransmitRefused` unless active in ``job.term`` right before each
        attempt, ``ConnectionError`` when every attempt failed."""
        body = message_summary(job.new if job.on else 0, job.old,
                               account=self.profile.account(job.extension))
        target = self.profile.target(job.extension)
        delay = self.profile.notify_backoff
        last = "no SIP worker running"
        for attempt in range(self.profile.notify_retries + 1):
            try:
                require_term(self.gate(), job, f"NOTIFY for {job.extension}")
            except TransmitRefused:
                self.counters["notify_refused"] += 1
                raise
            w = next((w for w in self.workers if w.alive), None)
            if w is not None:
                code, reason = await self._notify(w, target, self.profile.account(job.extension),
                                                  body)
                if 200 <= code < 300:
                    self.counters["notify_sent"] += 1
                    return
                last = f"{code} {reason}"
                if code not in RETRY_CODES:
                    break
            if attempt < self.profile.notify_retries:
                await trio.sleep(delay)
                delay *= 2
        self.counters["notify_failed"] += 1
        await self._report("warning", "sip_mwi_failed",
                           f"MWI NOTIFY to {target} failed: {last}")
        raise ConnectionError(f"MWI NOTIFY to {target} failed: {last}")

    async def _notify(self, w: Worker, target: str, account: str, body: str) -> tuple[int, str]:
        nid = next(self._notify_ids)
        box: dict = {}
        w.notifies[nid] = box
        try:
            await w.send(op="notify", id=nid, target=target,
                         account=account, body=body, headers={"Event": "message-summary",
                                             "Subscription-State": "active"})
            with trio.move_on_after(self.profile.notify_timeout + 8):  # the worker's --tsx-timeout
                while "result" not in box:
                    await w.notify_done.wait()
            res = box.get("result") or {"code": 408, "reason": "no final status from the worker"}
            return int(res.get("code") or 0), str(res.get("reason", ""))
        except (WorkerGone, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            return 503, f"worker gone ({e})"
        finally:
            w.notifies.pop(nid, None)


def _call_id(sip_call_id: Any, wid: str) -> str:
    text = sip_call_id if isinstance(sip_call_id, str) and sip_call_id else wid
    safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in text)
    return safe[:64] or wid


def _number(profile, field: str, value: str) -> str:
    value = "".join(c for c in value if c.isprintable())[:64]
    return profile.normalise(field, value)


async def _unix_listener(path: Path) -> trio.SocketListener:
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
        sock.listen(4)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)
