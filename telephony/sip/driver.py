"""The SIP port driver: pjsua2 worker processes of up to four ports each, started and watched by
the messaging service, and the call flow driven over them.

* :class:`SipPorts` (a :class:`telephony.runtime.ports.PortDriver`) registers ports ``sip-1..N`` and
  runs one supervisor task per worker (:mod:`telephony.sip.worker`, a child process talking
  JSON lines on a Unix socket).  A worker that dies is restarted with backoff; its ports are
  ``down`` meanwhile and the calls it held are logged and reported as dropped.
* An ``incoming`` INVITE becomes a call-arrival event on one of that worker's ports: the reason
  and forwarding number come from Diversion / History-Info (:mod:`telephony.sip.core.headers`); on
  the inactive node the service holds the call and tells the node manager (immediate
  failover), then it is answered normally.  A rejected call gets 486 (busy) or 480.
* An answered call is a :class:`SipCall` (a :class:`telephony.core.callflow.CallPort`): prompts are
  WAV files the worker plays; a recording is a WAV file the worker writes while this side
  reads it as it grows and ends it on silence, the maximum, a digit or hang-up
  (:class:`telephony.core.media.Recorder`, the same rules as every port).
* :meth:`SipCall.transfer` is a blind transfer (REFER) of the answered call to
  ``sip:<digits>@<the PBX's signalling address>`` (where the INVITE came from); success is a
  2xx final status from the PBX within the profile's ``transfer_timeout``, after which the
  worker sends BYE and the call is over (docs/sip.md, *Transfer*).
* :meth:`SipPorts.send_mwi` (the messaging core's lamp sink) sends an unsolicited
  ``message-summary`` NOTIFY through a live worker, only while the service is active in the
  job's term; 403, 408 and 5xx are retried with backoff, then the job fails (the ledger keeps
  the lamp unconfirmed and the next resync sends it again).
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from telephony.sip.settings import SipProfile

from telephony.core import media
from telephony.core.callflow import check_destination
from telephony.core.events import CallArrival
from telephony.core.mwi import TransmitRefused, require_term
from telephony.runtime.ports import ActiveCall, CallService, PortRegistry, PortState
from telephony.runtime.tasks import Backoff, ListenError, TaskFailures, describe, python_logger
from telephony.sip.core.headers import call_reason, message_summary

log = logging.getLogger("telephony.sip")

KIND = "sip"
MAX_LINE = 256 * 1024  # the worker's events carry the raw INVITE (at most 16 KiB)
WAV_HEADER = 44  # pjmedia's PCM WAV writer: a 44-byte header, then the samples
RETRY_CODES = {403, 408, 480, 500, 503, 504}
#: the PBX's signalling address as the worker reports it (pjsip: "1.2.3.4:5060", "[::1]:5060")
_REMOTE = re.compile(r"(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]{2,45}\]):\d{1,5}")
BYE_WAIT = 5.0  # s a transferred call waits for the worker's "disconnected"
#: s between looks at a growing recording: pjmedia writes it in 4096-byte steps (256 ms of
#: audio), so looking more often finds nothing new (bench: 3.7 ms/s of the service's CPU per
#: call with 0.05 s)
RECORD_POLL = 0.25

Flow = Callable[[CallArrival, Any, int], Awaitable[Any]]


class WorkerGone(ConnectionError):
    """The worker process is not running (or went away): the request was not sent."""


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


def transfer_target(destination: str, remote: Any) -> str:
    """The Refer-To URI of a blind transfer: ``sip:<destination>@<remote>``, ``remote`` being
    the address the call's INVITE came from (the PBX, or the proxy in front of it).  ``#`` is
    escaped as ``%23`` (RFC 3261 allows it in no user part).  ValueError for a bad
    destination or a ``remote`` that is no ``host:port``."""
    user = check_destination(destination).replace("#", "%23")
    if not isinstance(remote, str) or not _REMOTE.fullmatch(remote):
        raise ValueError(f"the call has no usable signalling address ({remote!r:.60})")
    return f"sip:{user}@{remote}"


_MEDIA_FILE = re.compile(r".+-(?:play|rec)-\d+\.wav")


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


class _Lines:
    """JSON lines from a stream, bounded."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.lock = trio.Lock()

    async def read(self) -> dict | None:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 1]
                try:
                    msg = json.loads(line)
                except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deeply
                    log.warning("bad line from a SIP worker: %r", line[:80])
                    continue
                if isinstance(msg, dict):
                    return msg
                continue
            if len(self.buf) > MAX_LINE:
                raise trio.BrokenResourceError("a SIP worker sent an over-long line")
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buf += data

    async def send(self, **msg: Any) -> None:
        data = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        async with self.lock:
            await self.stream.send_all(data)


class SipCall:
    """One answered SIP call, as the call flow sees it (:class:`telephony.core.callflow.CallPort`)."""

    def __init__(self, worker: "Worker", call_id: str, media_dir: Path, *,
                 record_poll: float = RECORD_POLL, remote: str = "",
                 transfer_timeout: float = 10.0,
                 label: str | None = None) -> None:
        self.worker = worker
        self.id = call_id
        self.media_dir = media_dir
        self.record_poll = record_poll
        self.remote = remote                   # where the INVITE came from ("host:port")
        self.transfer_timeout = transfer_timeout
        self.label = label or call_id          # the call id in log lines
        self._abandoned: set[int] = set()      # transfers given up on (timeout)
        self.digits: deque[str] = deque(maxlen=32)
        self.changed = trio.Event()
        self.done: dict[tuple[str, int], dict] = {}  # ("played"|"recorded", id) -> event
        self.ended = trio.Event()
        self.end_info: dict = {}
        self._ids = itertools.count(1)

    # ---------------------------------------------------------------- worker events

    def event(self, ev: dict) -> None:
        kind = ev.get("ev")
        if kind == "dtmf" and isinstance(ev.get("digit"), str) and ev["digit"] in "0123456789*#":
            self.digits.append(ev["digit"])
        elif kind in ("played", "recorded") and isinstance(ev.get("id"), int):
            self.done[(kind, ev["id"])] = ev
        elif kind == "transfer_result" and isinstance(ev.get("id"), int):
            if ev["id"] in self._abandoned:
                self._abandoned.discard(ev["id"])
                log.info("call %s: late transfer result after the timeout: %s %s", self.label,
                         ev.get("code"), ev.get("reason", ""))
            else:
                self.done[(kind, ev["id"])] = ev
        elif kind == "error" and ev.get("op") == "transfer" and isinstance(ev.get("ref"), int):
            self.done[("transfer_result", ev["ref"])] = {
                "code": 0, "reason": f"refused by the worker: {ev.get('message', '')}"}
        elif kind == "disconnected":
            self.end_info = ev
            self.ended.set()
        self.changed.set()
        self.changed = trio.Event()

    def gone(self) -> None:
        """The worker died: the call is over."""
        self._mark_ended({"by": "worker", "reason": "worker process ended"})

    def _mark_ended(self, info: dict) -> None:
        if not self.ended.is_set():
            self.end_info = info
        self.ended.set()
        self.changed.set()

    async def _wait(self, pred: Callable[[], bool], timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while not pred():
                await self.changed.wait()
            return True
        return False

    async def _op(self, **msg: Any) -> bool:
        if self.ended.is_set():
            return False
        try:
            await self.worker.send(call=self.id, **msg)
            return True
        except (WorkerGone, trio.BrokenResourceError, trio.ClosedResourceError):
            self.gone()
            return False

    # ---------------------------------------------------------------- CallPort

    @property
    def hung_up(self) -> bool:
        return self.ended.is_set()

    async def play(self, wav: bytes, *, interruptible: bool = True) -> str | None:
        media.pcm_of(wav)  # ValueError for anything but 8 kHz 16-bit mono
        if self.hung_up:
            return None
        if interruptible and self.digits:
            return self.digits.popleft()
        n = next(self._ids)
        path = self.media_dir / f"{self.id}-play-{n}.wav"
        await trio.to_thread.run_sync(path.write_bytes, wav)
        try:
            if not await self._op(op="play", id=n, path=str(path)):
                return None
            seconds = media.wav_duration(wav)
            await self._wait(lambda: ("played", n) in self.done or self.hung_up
                             or (interruptible and bool(self.digits)), seconds + 10)
            if ("played", n) not in self.done and not self.hung_up:
                await self._op(op="stop_play", id=n)
                await self._wait(lambda: ("played", n) in self.done or self.hung_up, 5)
            self.done.pop(("played", n), None)
            if interruptible and self.digits and not self.hung_up:
                return self.digits.popleft()
            return None
        finally:
            path.unlink(missing_ok=True)

    async def record(self, *, max_seconds: float, silence_seconds: float) -> tuple[bytes, str]:
        rec = media.Recorder(max_seconds=max_seconds, silence_seconds=silence_seconds)
        self.digits.clear()
        if self.hung_up:
            return media.wav_bytes(rec.finish()), "hangup"
        n = next(self._ids)
        path = self.media_dir / f"{self.id}-rec-{n}.wav"
        if not await self._op(op="record", id=n, path=str(path)):
            return media.wav_bytes(rec.finish()), "hangup"
        offset = WAV_HEADER
        reason: str | None = None
        deadline = trio.current_time() + max_seconds + 5  # the worker's file may lag
        try:
            while reason is None:
                with trio.move_on_after(self.record_poll):
                    await self.changed.wait()
                data = await trio.to_thread.run_sync(_read_from, path, offset)
                data = data[:len(data) & ~1]
                if data:
                    offset += len(data)
                    reason = rec.feed(data)
                if reason is None:
                    if self.digits:
                        reason = "dtmf"
                    elif self.hung_up:
                        reason = "hangup"
                    elif trio.current_time() > deadline:
                        reason = "max"
            if reason != "hangup":
                await self._op(op="stop_record", id=n)
                await self._wait(lambda: ("recorded", n) in self.done or self.hung_up, 5)
            if reason in ("dtmf", "hangup"):  # what reached the file before the end counts
                tail = await trio.to_thread.run_sync(_read_from, path, offset)
                rec.feed(tail[:len(tail) & ~1])
            self.done.pop(("recorded", n), None)
            self.digits.clear()
            return media.wav_bytes(rec.finish()), reason
        finally:
            path.unlink(missing_ok=True)

    async def collect_digits(self, *, max_digits: int, timeout: float, terminator: str = "#") -> str:
        got = ""
        while len(got) < max_digits and not self.hung_up:
            if not self.digits:
                if not await self._wait(lambda: bool(self.digits) or self.hung_up, timeout):
                    break
                continue
            d = self.digits.popleft()
            if d == terminator:
                break
            got += d
        return got

    async def hangup(self) -> None:
        if self.hung_up:
            return
        if await self._op(op="hangup"):
            await self._wait(lambda: self.hung_up, 5)
        if not self.hung_up:
            self.gone()

    async def transfer(self, destination: str) -> bool:
        """Blind transfer (REFER) to ``destination`` (1 to 31 of ``0-9 * #``; ValueError
        otherwise).  True when the PBX reports a 2xx final status within
        ``transfer_timeout``: the worker sends BYE and ``hung_up`` is True on return.  False
        when it refuses, reports a failure, says nothing in time, or the call ends first;
        the call goes on as before unless it ended.  False at once after a hang-up."""
        dest = check_destination(destination)
        if self.hung_up:
            return False
        try:
            target = transfer_target(dest, self.remote)
        except ValueError as e:
            log.warning("call %s: transfer to %s not attempted: %s", self.label, dest, e)
            return False
        n = next(self._ids)
        key = ("transfer_result", n)
        if not await self._op(op="transfer", id=n, target=target):
            log.warning("call %s: transfer to %s not sent: the call or its worker is gone",
                        self.label, dest)
            return False
        await self._wait(lambda: key in self.done or self.hung_up, self.transfer_timeout)
        res = self.done.pop(key, None)
        if res is None:
            if self.hung_up:
                log.info("call %s: transfer to %s (%s): the call ended first (%s)",
                         self.label, dest, target, self.end_info.get("reason", ""))
            else:
                self._abandoned.add(n)
                log.warning("call %s: transfer to %s (%s): no final status within %g s; "
                            "the call goes on", self.label, dest, target, self.transfer_timeout)
            return False
        code = res.get("code") if isinstance(res.get("code"), int) else 0
        ok = 200 <= code < 300
        then = "transferred" if ok else "the call ended" if self.hung_up else "the call goes on"
        log.info("call %s: transfer to %s (%s): %s %s -> %s", self.label, dest, target, code,
                 res.get("reason", ""), then)
        if not ok:
            return False
        if not await self._wait(lambda: self.hung_up, BYE_WAIT):  # the worker's BYE
            log.warning("call %s: no disconnect %g s after the transfer; counted as ended",
                        self.label, BYE_WAIT)
            self._mark_ended({"by": "local", "reason": "transferred"})
        return True


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(1 << 20)
    except FileNotFoundError:
        return b""


class Worker:
    """One worker process and its connection."""

    def __init__(self, index: int, ports: list[str]) -> None:
        self.index = index
        self.ports = ports
        self.name = f"w{index + 1}"
        self.lines: _Lines | None = None
        self.proc: trio.Process | None = None
        self.calls: dict[str, SipCall] = {}
        self.active: dict[str, ActiveCall] = {}
        self.port_of: dict[str, str] = {}  # worker call id -> port name
        self.notifies: dict[int, dict] = {}
        self.notify_done = trio.Event()
        self.ready = trio.Event()
        self.restarts = 0

    @property
    def alive(self) -> bool:
        return self.lines is not None and self.ready.is_set()

    async def send(self, **msg: Any) -> None:
        if self.lines is None:
            raise WorkerGone(f"SIP worker {self.name} is not running")
        await self.lines.send(**msg)


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
                 python: str = sys.executable) -> None:
        self.profile = profile
        self.node = node
        self.runtime_dir = Path(runtime_dir)
        self.media_dir = Path(media_dir)
        self.flow = flow
        self.password = password
        self.restart_min = restart_min
        self.restart_max = restart_max
        self.python = python
        self.workers = [Worker(i, profile.worker_ports(i)) for i in range(profile.workers)]
        #: the term the service may transmit in right now, or None (set by the service)
        self.gate: Callable[[], int | None] = lambda: None
        #: ``report(level, event, message)``: the node's event log
        self.report: Callable[[str, str, str], Awaitable[None]] | None = None
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
        if local:
            getattr(log, level)("%s: %s", event, message)
        if self.report is not None:
            try:
                await self.report(level, event, message)
            except Exception:  # noqa: BLE001 - the event log must never stop the ports
                log.exception("cannot report %s", event)

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
        async with trio.open_nursery() as nursery:
            # Started at once: the service starts its health loop after its drivers, and must
            # report health while the workers start (the ports are down until their worker is
            # ready).  Waiting for workers here got the service killed for missing health
            # reports: with 36 workers on 2 CPUs, and after a kill -9 when the dead service's
            # worker still held its SIP port for a moment (the new one failed to bind and was
            # restarted).  The workers start one after the other: dozens starting at once
            # stalled the node manager.
            task_status.started()
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
                "--sip-port", str(p.sip_port + w.index), "--rtp-port", str(p.rtp_port + 1000 * w.index),
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
                w.proc = await trio.lowlevel.open_process(self._argv(w, sock), stdin=None,
                                                          start_new_session=True)
            except OSError as e:
                return f"could not be started: {describe(e)}"
            why = "exited"
            try:
                async with trio.open_nursery() as n:
                    async def watch_exit():
                        await w.proc.wait()
                        if w.lines is None:  # still waiting for its connection
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
                        w.lines = _Lines(stream)
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

    async def _stop(self, w: Worker, why: str) -> None:
        w.ready = trio.Event()
        lines, w.lines = w.lines, None
        self._set(w, PortState.DOWN)
        self._lost(w, why)
        for nid, box in list(w.notifies.items()):
            box.setdefault("result", {"code": 503, "reason": f"worker {why}"})
        w.notify_done.set()
        w.notify_done = trio.Event()
        if lines is not None:
            try:
                with trio.move_on_after(1):
                    await lines.send(op="shutdown")
            except Exception:  # noqa: BLE001
                pass
            await lines.stream.aclose()
        proc = w.proc
        if proc is not None:
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await proc.wait()

    def _lost(self, w: Worker, why: str) -> None:
        """The worker's connection ended: every call it held is over (logged as dropped; the
        call flow keeps what was recorded, as after a hang-up)."""
        for cid, active in list(w.active.items()):
            self.counters["dropped_by_worker"] += 1
            log.warning("call %s on %s dropped: SIP worker %s %s", active.call_id,
                        active.arrival.port, w.name, why)
        for call in list(w.calls.values()):
            call.gone()

    async def _serve(self, w: Worker, service: CallService) -> str:
        assert w.lines is not None
        async with trio.open_nursery() as n:  # exits once every call's task is over
            while True:
                try:
                    ev = await w.lines.read()
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

    async def _take_call(self, w: Worker, ev: dict, service: CallService,
                         held: dict[str, Any]) -> None:
        wid = ev.get("call")
        if not isinstance(wid, str):
            return
        assert self._registry is not None
        port = self._claim(w, self.port_of_account(str(ev.get("account") or "")))
        held["port"] = port
        if port is None:
            await self._reply(w, op="reject", call=wid, code=486)
            return
        raw = ev.get("raw") if isinstance(ev.get("raw"), str) else ""
        reason, forwarding = call_reason(raw, select=self.profile.select)
        base = self.profile.base
        try:
            arrival = CallArrival(
                node=service.node, port=port.name,
                call_id=_call_id(ev.get("sip_call_id"), wid),
                calling=_number(base, "calling", user_of(str(ev.get("from", "")))),
                called=_number(base, "called", user_of(str(ev.get("request_uri") or ev.get("to", "")))),
                forwarding=_number(base, "forwarding", forwarding),
                reason=reason, integration=base.name)
        except ValueError as e:
            port.state = PortState.IDLE
            log.warning("SIP call %s refused: %s", wid, e)
            await self._reply(w, op="reject", call=wid, code=400)
            return
        call = SipCall(w, wid, self.media_dir, remote=str(ev.get("remote") or ""),
                       transfer_timeout=self.profile.transfer_timeout, label=arrival.call_id)
        w.calls[wid] = call
        try:
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
        finally:
            w.calls.pop(wid, None)

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
