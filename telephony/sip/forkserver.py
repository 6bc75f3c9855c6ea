"""The SIP workers' fork server: one process that has imported everything a worker runs (Python,
Trio, the pjsua2 bindings, :mod:`telephony.sip.worker`) but never initialised pjsua2, and forks
each worker from there.  The workers then share those pages (code, the bindings' library, the
imported modules' objects: ``gc.freeze()`` keeps the collector from writing to them) instead of
loading them each.

* The messaging service's SIP driver starts it (:class:`ForkServer`, ``python -m
  telephony.sip.forkserver --fd N``) before any worker, with one end of a ``SOCK_SEQPACKET``
  socket pair: one JSON object per message.
* ``{"op": "spawn", "id": N, "argv": [...]}`` (the worker's command line, :func:`
  telephony.sip.worker.main`) forks a worker: it starts a session of its own (``setsid``: the
  driver stops it by its process group), gets the default signal handlers back and runs the
  worker; its exit status is its ``os._exit`` code.  The answer is ``{"ev": "spawned", "id":
  N, "pid": P}`` with a pidfd of the worker attached (``SCM_RIGHTS``), or ``{"ev":
  "spawn_failed", "id": N, "error": "..."}``.
* When a worker ends, the fork server reaps it and sends ``{"ev": "exited", "pid": P, "code":
  C}`` (``C`` as ``Popen.returncode``: negative for a signal).
* The fork server is single-threaded and waits in ``select`` (its socket and a SIGCHLD wake-up
  pipe): it costs nothing while idle.  It ends when the driver's end of the socket closes.

A worker is still its own process, with the same command line options, control socket,
crash containment and restart as one the driver starts with ``exec``; the driver falls back to
that while the fork server is not running (:mod:`telephony.sip.driver`).
"""
from __future__ import annotations

import argparse
import array
import gc
import json
import logging
import os
import selectors
import signal
import socket
import sys
import traceback
from typing import Any

import trio

__all__ = ["ForkServer", "ForkedProcess", "parse_event", "serve", "worker_pids"]

log = logging.getLogger("telephony.sip")

MAX_MESSAGE = 64 * 1024
EXIT_REPORT_WAIT = 2.0   # s a worker's exit code may take to arrive after its pidfd said so


# ============================================================================ the fork server

def serve(fd: int) -> int:
    """The fork server's loop on the socket ``fd`` (see the module docstring)."""
    from telephony.sip import worker  # everything a worker imports, loaded once here
    from telephony.sip.pjclasses import pj
    if pj is not None:
        _ = pj.Endpoint                # the bindings load lazily: load them (no pj init)
    sock = socket.socket(fileno=fd)
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)   # only to write the wake-up byte
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # a terminal's ^C is the service's
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(rfd, selectors.EVENT_READ)
    gc.collect()
    gc.freeze()                  # forked workers share these objects' pages untouched
    try:
        while True:
            for key, _ in sel.select():
                if key.fileobj is sock:
                    try:
                        data = sock.recv(MAX_MESSAGE)
                    except OSError:
                        data = b""
                    if not data:
                        return 0
                    _spawn(sock, data, lambda: (sel.close(), sock.close(), os.close(rfd),
                                                os.close(wfd)), worker.main)
                else:
                    try:
                        os.read(rfd, 4096)
                    except BlockingIOError:
                        pass
                    _reap(sock)
    finally:
        signal.set_wakeup_fd(-1)


def _send(sock: socket.socket, msg: dict, fds: list[int] | None = None) -> None:
    try:
        socket.send_fds(sock, [json.dumps(msg).encode()], fds or [])
    except OSError:
        pass   # the driver went away: the next recv ends the loop


def _spawn(sock: socket.socket, data: bytes, close: Any, main: Any) -> None:
    try:
        msg = json.loads(data)
        sid = msg["id"]
        argv = msg["argv"]
        if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
            raise ValueError("argv must be a list of strings")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        _send(sock, {"ev": "spawn_failed", "id": None, "error": f"bad request: {exc}"[:500]})
        return
    try:
        pid = os.fork()
    except OSError as exc:
        _send(sock, {"ev": "spawn_failed", "id": sid, "error": f"fork: {exc}"})
        return
    if pid == 0:
        _child(argv, close, main)          # never returns
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as exc:                 # it cannot have been reaped yet: we reap
        _send(sock, {"ev": "spawn_failed", "id": sid, "error": f"pidfd_open: {exc}"})
        os.kill(pid, signal.SIGKILL)
        return
    try:
        _send(sock, {"ev": "spawned", "id": sid, "pid": pid}, [pidfd])
    finally:
        os.close(pidfd)


def _child(argv: list[str], close: Any, main: Any) -> None:
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        close()
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        code = main(argv)
    except SystemExit as exc:              # argparse's errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"ev": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)})


# ============================================================================ the driver's end

def parse_event(data: bytes) -> dict | None:
    """One message of the fork server (``spawned``, ``spawn_failed`` or ``exited``) with its
    fields checked, or None for anything else (it is then ignored: the fork server is ours,
    but what crosses a socket is checked)."""
    try:
        msg = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(msg, dict):
        return None
    ev = msg.get("ev")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if ev == "exited" and is_int(msg.get("pid")) and is_int(msg.get("code")):
        return {"ev": ev, "pid": msg["pid"], "code": msg["code"]}
    if ev == "spawned" and is_int(msg.get("id")) and is_int(msg.get("pid")):
        return {"ev": ev, "id": msg["id"], "pid": msg["pid"]}
    if ev == "spawn_failed" and (msg.get("id") is None or is_int(msg.get("id"))):
        return {"ev": ev, "id": msg.get("id"), "error": str(msg.get("error", ""))[:500]}
    return None


def worker_pids(service_pid: int) -> list[int]:
    """The SIP worker processes of the messaging service ``service_pid`` (from /proc): the
    children of its fork server (``python -m telephony.sip.forkserver``), and the children it
    started with exec (``python -m telephony.sip.worker``) while the fork server was down."""
    def procs() -> dict[int, tuple[int, bytes]]:
        out = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat", "rb") as f:
                        ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
                    with open(f"/proc/{name}/cmdline", "rb") as f:
                        out[int(name)] = (ppid, f.read())
                except (OSError, ValueError, IndexError):
                    continue
        return out

    table = procs()
    servers = {pid for pid, (ppid, cmd) in table.items()
               if ppid == service_pid and b"telephony.sip.forkserver" in cmd}
    return sorted(pid for pid, (ppid, cmd) in table.items()
                  if ppid in servers or (ppid == service_pid and b"telephony.sip.worker" in cmd))


class ForkedProcess:
    """A worker forked by the fork server, as the driver uses a ``trio.Process``: ``pid``,
    ``returncode`` and ``await wait()``; :meth:`kill` signals it through its pidfd (never
    another process that got its PID)."""

    def __init__(self, pid: int, pidfd: int, server: "ForkServer") -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.returncode: int | None = None
        self._server = server
        self._lock = trio.Lock()       # one task at a time waits on the pidfd

    async def wait(self) -> int:
        async with self._lock:
            await self._wait()
        assert self.returncode is not None
        return self.returncode

    async def _wait(self) -> None:
        if self.returncode is None:
            await trio.lowlevel.wait_readable(self.pidfd)   # readable once it has ended
            with trio.move_on_after(EXIT_REPORT_WAIT):
                await self._server.exit_code(self.pid)
            self.returncode = self._server.codes.pop(self.pid, -signal.SIGKILL)
            self.close()

    def kill(self) -> None:
        if self.returncode is None and self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self.pidfd >= 0:
            fd, self.pidfd = self.pidfd, -1
            trio.lowlevel.notify_closing(fd)
            os.close(fd)


class ForkServer:
    """The driver's end: :meth:`run` keeps the fork server running (restarted when it dies),
    :meth:`spawn` forks a worker, or returns None while the fork server is not running (the
    driver then starts the worker with ``exec``)."""

    def __init__(self, python: str = sys.executable, *, cwd: str | None = None) -> None:
        self.python = python
        self.cwd = cwd
        self.sock: trio.socket.SocketType | None = None
        self.proc: trio.Process | None = None
        self.codes: dict[int, int] = {}
        self._changed = trio.Event()
        self._waiting: dict[int, list[Any]] = {}
        self._ids = 0
        self._lock = trio.Lock()
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.sock is not None

    async def exit_code(self, pid: int) -> None:
        while pid not in self.codes and self.sock is not None:
            await self._changed.wait()

    async def run(self, *, restart_delay: float = 1.0,
                  task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Run the fork server for ever; each run is contained (logged, then restarted after
        ``restart_delay``, doubling up to 60 s while it keeps failing).  Started once the
        first run's process is up (or failed: workers use exec then)."""
        reported = False

        def started() -> None:
            nonlocal reported
            if not reported:
                reported = True
                task_status.started()

        delay = restart_delay
        while True:
            began = trio.current_time()
            try:
                await self._run_once(started)
                why = "exited"
            except Exception as exc:  # noqa: BLE001 - the workers fall back to exec meanwhile
                why = f"failed: {exc!r}"
            started()
            if trio.current_time() - began > 60:   # it had been running well: retry soon
                delay = restart_delay
            log.warning("SIP fork server %s; the workers are started with exec until it is "
                        "back (in %.1f s)", why, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def _run_once(self, started: Any) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = await trio.lowlevel.open_process(
                [self.python, "-m", "telephony.sip.forkserver", "--fd", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=None, start_new_session=True, cwd=self.cwd)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self.starts += 1
        sock = trio.socket.from_stdlib_socket(mine)
        self.sock = sock
        started()
        try:
            await self._read(sock)
        finally:
            self.sock = None
            self._changed.set()
            self._changed = trio.Event()
            for box in self._waiting.values():
                box.append({"ev": "spawn_failed", "error": "the fork server ended"})
            sock.close()
            with trio.CancelScope(shield=True):
                proc, self.proc = self.proc, None
                if proc is not None:
                    with trio.move_on_after(2):
                        await proc.wait()
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()

    async def _read(self, sock: trio.socket.SocketType) -> None:
        while True:
            data, ancdata, _flags, _addr = await sock.recvmsg(
                MAX_MESSAGE, socket.CMSG_SPACE(4 * array.array("i").itemsize))
            fds: list[int] = []
            for level, kind, raw in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(raw[:len(raw) - len(raw) % got.itemsize])
                    fds.extend(got)
            if not data:
                for fd in fds:
                    os.close(fd)
                return
            msg = parse_event(data) or {}
            if msg.get("ev") == "exited":
                self.codes[msg["pid"]] = msg["code"]
            self._changed.set()          # wakes spawn() and exit_code() to look again
            self._changed = trio.Event()
            box = self._waiting.get(msg.get("id")) if msg.get("ev") != "exited" else None
            if box is not None:
                box.append(msg)
                box.extend(fds)
            else:
                for fd in fds:
                    os.close(fd)

    async def spawn(self, argv: list[str]) -> ForkedProcess | None:
        """Fork a worker with ``argv`` (its options); None if the fork server is not
        running.  Raises ``OSError`` when the fork failed."""
        sock = self.sock
        if sock is None:
            return None
        async with self._lock:
            self._ids += 1
            sid = self._ids
            box: list[Any] = []
            self._waiting[sid] = box
            try:
                await sock.send(json.dumps({"op": "spawn", "id": sid, "argv": argv}).encode())
                while not box:
                    await self._changed.wait()      # set on every message and at the end
            except OSError:
                return None
            finally:
                self._waiting.pop(sid, None)
        msg, fds = box[0], box[1:]
        if msg.get("ev") != "spawned" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            if self.sock is None:
                return None
            raise OSError(f"the fork server could not start a worker: {msg.get('error')}")
        return ForkedProcess(int(msg["pid"]), fds[0], self)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m telephony.sip.forkserver",
                                description="fork server of the SIP workers (started by the "
                                            "SIP driver)")
    p.add_argument("--fd", type=int, required=True, help="the driver's SOCK_SEQPACKET socket")
    a = p.parse_args(argv)
    return serve(a.fd)


if __name__ == "__main__":
    sys.exit(main())
