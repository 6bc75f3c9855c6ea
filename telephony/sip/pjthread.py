"""The one OS thread that owns pjsua2, bridged to Trio.

pjsua2 is not Trio-aware and its objects are not safe to touch from any thread: every pj object
is created, used and destroyed on ONE dedicated OS thread, and Trio talks to that thread through
a job queue (peers README 1.4).  The endpoint runs with ``threadCnt=0`` and
``mainThreadOnly=True``, so SIP callbacks arrive on this thread while it waits for events.

An *engine* (duck-typed) holds the pj state and is driven only on the pj thread:

``engine.start()``
    create the endpoint, transports and accounts (``libCreate`` ... ``libStart``).  An
    exception here fails :meth:`PjThread.__aenter__` with it.
``engine.poll()``
    one loop step: wait in ``ep.libHandleEvents(T)`` for SIP/RTP traffic, pj's own timers or
    a wake-up, at most ``T`` ms (the engine picks ``T``: long while idle, short while it has
    something to check), plus the engine's own housekeeping.  Runs until a stop is asked.
``engine.wake()``
    make a ``poll`` that is waiting return at once.  Called from any thread (Trio's, pjmedia's)
    after a job was queued or a stop was asked; must not block and must not touch pj objects.
``engine.close()``
    graceful teardown (hang up, wait for transactions, ``libDestroy``).  Runs once, also
    after ``start`` or ``poll`` raised.

Usage::

    async with PjThread(engine) as pjt:       # thread started, engine.start() done
        await pjt.call(engine.answer, "w1-3")  # runs on the pj thread, result or exception back
        pjt.submit(fn)                         # the same without waiting (any thread)
        async for event in pjt.events: ...     # what the engine emit()-ed
    # on exit: engine.close() ran on the pj thread and the thread ended

The engine reports to Trio with :meth:`PjThread.emit`, callable from any thread (the pj thread,
pjmedia's clock or event threads): ``token.run_sync_soon`` does not block and keeps order.
Callbacks that pjsua2 makes on some other thread must not touch pj objects: they
:meth:`submit` a job instead, and the job runs on the pj thread at its next loop step.

The loop is ``engine.poll()`` then every queued job, so a job never runs inside a pj callback.
A job queued from another thread wakes the waiting poll (one ``engine.wake()`` per batch: a
flag says a wake-up is already on its way; the pj thread clears it before it takes the jobs,
so a job queued after that sends a new one), so it runs at once, not after the wait.  The SWIG
wheel releases the GIL inside ``libHandleEvents`` (measured: another Python thread kept running
during a 1 s call), so the Trio thread is not held up by the wait.
"""
from __future__ import annotations

import ipaddress
import logging
import math
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger("telephony.sip.pjthread")


class PjThreadStopped(RuntimeError):
    """A job was given to a pj thread that is not running (any more)."""


class PjThread:
    """Runs ``engine`` on a dedicated OS thread; see the module docstring."""

    def __init__(self, engine: Any, *, name: str = "pj") -> None:
        self.engine = engine
        self.name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._send, self.events = trio.open_memory_channel[Any](math.inf)
        self._started = trio.Event()
        self._start_error: BaseException | None = None
        #: set (in Trio) once the thread has ended, for whatever reason
        self.finished = trio.Event()
        #: the exception that ended the loop early, if any
        self.crash: BaseException | None = None
        self.ident: int | None = None
        self._waiting: set[_Job] = set()
        self._wake_sent = False      # a wake-up is on its way to the waiting poll

    # ------------------------------------------------------------------ Trio side

    async def __aenter__(self) -> "PjThread":
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()
        with trio.CancelScope(shield=True):
            await self._started.wait()
        if self._start_error is not None:
            with trio.CancelScope(shield=True):
                await self.finished.wait()
            raise self._start_error
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Ask the loop to end, wait until ``engine.close()`` has run and the thread is gone.
        Shielded: a teardown half done would leave pj in a state that aborts the process.
        Idempotent."""
        self._stop.set()
        self._wake()
        if self._thread is None:      # never started
            self._send.close()
            return
        with trio.CancelScope(shield=True):
            await self.finished.wait()
        self._send.close()

    def request_stop(self) -> None:
        """Like :meth:`stop` without waiting; callable from any thread."""
        self._stop.set()
        self._wake()

    @property
    def running(self) -> bool:
        return self._thread is not None and not self.finished.is_set() \
            and not self._stop.is_set()

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the pj thread and return its result (or raise its exception).
        If the caller is cancelled the job still runs; its result is dropped.  Raises
        :class:`PjThreadStopped` if the thread ends before the job ran."""
        if not self.running:
            raise PjThreadStopped("the pj thread is not running")
        job = _Job(fn, args, trio.Event())
        self._waiting.add(job)
        self._jobs.put(job)
        self._wake()
        try:
            await job.done.wait()  # type: ignore[union-attr]
        finally:
            self._waiting.discard(job)
        if job.error is not None:
            raise job.error
        return job.value

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` for the pj thread without waiting (any thread may call it).
        Exceptions are logged.  Dropped once the thread has ended."""
        self._jobs.put(_Job(fn, args, None))
        if not self.on_pj_thread():    # the pj thread runs its jobs right after its poll
            self._wake()

    def run_pending_jobs(self) -> None:
        """Run queued jobs now (pj thread only): for an engine whose close() polls itself."""
        assert self.on_pj_thread(), "run_pending_jobs outside the pj thread"
        self._run_jobs()

    def on_pj_thread(self) -> bool:
        return threading.get_ident() == self.ident

    # ------------------------------------------------------------------ any thread

    def _wake(self) -> None:
        """Make the pj thread's waiting poll return (once per batch of jobs)."""
        if self._wake_sent or self._thread is None:
            return
        self._wake_sent = True
        wake = getattr(self.engine, "wake", None)
        if wake is None:
            return
        try:
            wake()
        except Exception:  # the loop's own wait bounds the delay; never fail a caller here
            log.exception("waking the pj thread failed")

    def emit(self, event: Any) -> None:
        """Hand ``event`` to Trio (``self.events``).  Thread-safe, never blocks, keeps order."""
        token = self._token
        if token is None:
            return
        try:
            token.run_sync_soon(self._deliver, event)
        except trio.RunFinishedError:
            log.warning("event after Trio ended, dropped: %.200r", event)

    def _deliver(self, event: Any) -> None:
        try:
            self._send.send_nowait(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.warning("event after the channel closed, dropped: %.200r", event)

    def _to_trio(self, fn: Callable[[], None]) -> None:
        token = self._token
        assert token is not None
        try:
            token.run_sync_soon(fn)
        except trio.RunFinishedError:
            pass

    # ------------------------------------------------------------------ the pj thread

    def _main(self) -> None:
        self.ident = threading.get_ident()
        engine = self.engine
        try:
            try:
                engine.start()
            except BaseException as exc:
                self._start_error = exc
                self._stop.set()
                return
            finally:
                self._to_trio(self._started.set)
            while not self._stop.is_set():
                engine.poll()
                self._wake_sent = False    # before taking the jobs: a later job wakes again
                self._run_jobs()
                if not self._jobs.empty():  # more than one batch: do not wait before the rest
                    self._wake()
        except BaseException as exc:  # the loop is broken: tear down and tell Trio
            log.exception("pj loop failed")
            self.crash = exc
        finally:
            self._stop.set()
            try:
                engine.close()
            except BaseException:
                log.exception("pj teardown failed")
            self._drop_jobs()
            self._to_trio(self._finish)

    def _run_jobs(self, limit: int = 1000) -> None:
        for _ in range(limit):
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            try:
                job.value = job.fn(*job.args)
            except BaseException as exc:
                if job.done is None:
                    log.exception("pj job %r failed", job.fn)
                else:
                    job.error = exc
            if job.done is not None:
                self._to_trio(job.done.set)

    def _drop_jobs(self) -> None:
        """After close(): nothing may touch pj any more; wake the callers with an error."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job.done is not None:
                job.error = PjThreadStopped("the pj thread ended before the job ran")
                self._to_trio(job.done.set)

    def _finish(self) -> None:  # in Trio
        self._drop_waiting()
        self.finished.set()

    def _drop_waiting(self) -> None:
        for job in list(self._waiting):
            if not job.done.is_set():  # type: ignore[union-attr]
                job.error = PjThreadStopped("the pj thread ended before the job ran")
                job.done.set()  # type: ignore[union-attr]


class Waker:
    """Wakes a pj thread waiting in ``libHandleEvents``: a 4-byte SIP keep-alive (CRLF CRLF)
    sent to its own SIP UDP transport at ``host:port``.  pjsip's UDP transport drops any
    datagram of 32 bytes or less before parsing or logging it and answers nothing
    (``udp_on_read_complete``, pjsip 2.15.1), but the ioqueue's wait returns.  An unspecified
    ``host`` (0.0.0.0, ::) is reached on the loopback.  :meth:`wake` may be called from any
    thread and never blocks."""

    DATAGRAM = b"\r\n\r\n"

    def __init__(self, host: str, port: int) -> None:
        family, _t, _p, _c, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        if ipaddress.ip_address(str(addr[0]).split("%", 1)[0]).is_unspecified:
            addr = ("127.0.0.1" if family == socket.AF_INET else "::1", *addr[1:])
        self.address = addr
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def wake(self) -> None:
        try:
            self.sock.sendto(self.DATAGRAM, self.address)
        except OSError as exc:   # a full buffer: wake-ups are on their way already
            log.debug("wake-up datagram: %s", exc)

    def close(self) -> None:
        self.sock.close()


class _Job:
    __slots__ = ("fn", "args", "done", "value", "error")

    def __init__(self, fn: Callable[..., Any], args: tuple, done: trio.Event | None) -> None:
        self.fn = fn
        self.args = args
        self.done = done
        self.value: Any = None
        self.error: BaseException | None = None


def endpoint_config(pj: Any, *, max_calls: int, user_agent: str, log_level: int) -> Any:
    """The ``EpConfig`` every vmha pjsua2 process uses: no pj worker threads (one thread
    waits in ``libHandleEvents`` for SIP and RTP), the 8 kHz mono bridge, and the fixes of the known traps
    (``sndAutoCloseTime = -1``: pjsua's own auto-close of the sound device leaked a
    conference slot per call, so the engine switches the null sound device on and off itself;
    no echo canceller)."""
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.uaConfig.maxCalls = max_calls
    cfg.uaConfig.userAgent = user_agent
    cfg.uaConfig.mwiUnsolicitedEnabled = False
    cfg.logConfig.level = log_level
    cfg.logConfig.consoleLevel = log_level
    cfg.logConfig.msgLogging = log_level >= 4
    cfg.medConfig.clockRate = 8000
    cfg.medConfig.sndClockRate = 8000
    cfg.medConfig.channelCount = 1
    cfg.medConfig.sndAutoCloseTime = -1
    cfg.medConfig.ecTailLen = 0
    # RTP on the SIP endpoint's ioqueue, i.e. on the one pj thread while it waits: pjmedia's
    # own ioqueue would add a "media" thread that wakes 100 times a second even with no call
    cfg.medConfig.hasIoqueue = False
    cfg.medConfig.threadCnt = 0
    return cfg
