"""Long-lived tasks that contain their own failures (docs/design.md, "A process exits only on
purpose").

A node manager or messaging service exits only when told to, on a configuration error at
start, or on a deliberate fence.  Every long-lived task (a listener, a dial loop, a watcher, a
replication channel, a driver's link) therefore catches whatever escapes one turn of its work,
records it here, waits a growing delay and goes on.  With Trio's strict exception groups an
error from a nursery's child arrives as an ``ExceptionGroup``; ``except Exception`` catches
that too (``ExceptionGroup`` is an ``Exception``), while cancellation (``trio.Cancelled``, a
``BaseException``) and ``KeyboardInterrupt`` pass through untouched.

``TaskFailures`` is the record: a count and the last error per task name (shown in status),
and a log line per failure, rate-limited per task so a tight failure loop cannot flood the log.
``keep_running`` repeats a task's body forever with backoff; ``contained`` is the backstop for
one connection handler (one bad connection never ends its listener).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from telephony.core.control import MAX_COUNTERS

#: (level, event, message) -> None: where failures are written (an event log, a logger)
LogFn = Callable[[str, str, str], None]


def describe(exc: BaseException, limit: int = 300) -> str:
    """One line for an exception; an exception group is flattened to its leaves (each with
    the error it was raised from, e.g. ``BrokenResourceError <- ConnectionResetError``)."""
    parts: list[str] = []

    def leaf(e: BaseException) -> str:
        text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        cause = e.__cause__ or e.__context__
        if cause is not None and not isinstance(cause, BaseExceptionGroup):
            text += f" (from {type(cause).__name__}: {cause})"
        return text

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            parts.append(leaf(e))

    walk(exc)
    out = "; ".join(parts) or type(exc).__name__
    return out if len(out) <= limit else out[: limit - 3] + "..."


def python_logger(logger: logging.Logger) -> LogFn:
    """A ``LogFn`` that writes to a ``logging`` logger (the messaging service's log)."""
    levels = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR}

    def write(level: str, event: str, message: str) -> None:
        logger.log(levels.get(level, logging.ERROR), "%s: %s", event, message)
    return write


class TaskFailures:
    """Failure counts and last errors of a process's long-lived tasks, with rate-limited logs."""

    def __init__(self, log: LogFn, every: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self._log = log
        self.every = every
        self._clock = clock
        self.counts: Counter[str] = Counter()
        self.last: dict[str, str] = {}
        self._logged_at: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def failed(self, task: str, exc: BaseException | str, *, retry_in: float | None = None,
               level: str = "error") -> None:
        """Record one failure of ``task``; write it unless this task wrote one in the last
        ``every`` seconds (the next line then says how many were not written)."""
        what = exc if isinstance(exc, str) else describe(exc)
        self.counts[task] += 1
        self.last[task] = what
        now = self._clock()
        if now - self._logged_at.get(task, -1e18) < self.every:
            self._suppressed[task] += 1
            return
        self._logged_at[task] = now
        more = self._suppressed.pop(task, 0)
        msg = f"{task} failed: {what}"
        if retry_in is not None:
            msg += f"; retrying in {retry_in:.3g}s"
        msg += f" (failure {self.counts[task]}"
        msg += f", {more} more not logged)" if more else ")"
        self._log(level, "task_failed", msg)

    def limited(self, level: str, event: str, message: str, every: float | None = None) -> None:
        """Write a line at most once per ``every`` seconds (default: this object's) per
        ``event``; no count is kept (the caller counts what matters to it)."""
        now = self._clock()
        key = "log:" + event
        if now - self._logged_at.get(key, -1e18) >= (self.every if every is None else every):
            self._logged_at[key] = now
            self._log(level, event, message)

    def stats(self) -> dict[str, dict[str, Any]]:
        return {t: {"failures": n, "last_error": self.last.get(t, "")}
                for t, n in sorted(self.counts.items())}


class Backoff:
    """Growing delays between retries: ``first``, doubling, at most ``cap``; a run that lasted
    ``healthy_after`` seconds before it failed starts over from ``first``."""

    def __init__(self, first: float = 0.25, cap: float = 30.0, healthy_after: float = 60.0):
        self.first, self.cap, self.healthy_after = first, cap, healthy_after
        self.delay = first

    def next(self, ran_for: float) -> float:
        if ran_for >= self.healthy_after:
            self.delay = self.first
        d = self.delay
        self.delay = min(self.delay * 2, self.cap)
        return d

    def reset(self) -> None:
        self.delay = self.first


async def keep_running(task: str, body: Callable[[], Awaitable[Any]], failures: TaskFailures,
                       backoff: Backoff | None = None) -> None:
    """Run ``body()`` again and again, forever.  Whatever escapes it (an ``Exception`` or an
    exception group of them; a plain return too, which a long-lived body should not do) is
    recorded and followed by a growing delay.  Only cancellation ends this."""
    backoff = backoff or Backoff()
    while True:
        started = trio.current_time()
        try:
            await body()
        except Exception as e:  # noqa: BLE001 - the point: nothing escapes a long-lived task
            delay = backoff.next(trio.current_time() - started)
            failures.failed(task, e, retry_in=delay)
        else:
            delay = backoff.next(trio.current_time() - started)
            failures.failed(task, "returned unexpectedly", retry_in=delay, level="warning")
        await trio.sleep(delay)


async def contained(task: str, failures: TaskFailures, fn: Callable[..., Awaitable[Any]],
                    *args: Any) -> None:
    """Run one unit of work (a connection's handler): any ``Exception`` (or group) it raises is
    recorded, never raised, so the listener that started it goes on."""
    try:
        await fn(*args)
    except Exception as e:  # noqa: BLE001 - a backstop: one connection never ends its listener
        failures.failed(task, e)


def guard_handler(task: str, failures: TaskFailures,
                  handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[None]]:
    """``handler`` wrapped by ``contained``, for ``trio.serve_listeners``."""
    async def guarded(*args: Any) -> None:
        await contained(task, failures, handler, *args)
    return guarded




class ListenError(OSError):
    """A listening socket could not be opened: the message names the setting and the address
    (one line for the operator, never a traceback)."""


async def listen_tcp(setting: str, host: str | None, port: int) -> list[trio.SocketListener]:
    """``trio.open_tcp_listeners`` whose failure (address in use, not ours, permission) is one
    ``ListenError`` naming the setting it came from."""
    try:
        return await trio.open_tcp_listeners(port, host=host or None)
    except OSError as e:
        why = e.strerror or str(e)
        raise ListenError(e.errno, f"cannot listen on {host or '*'}:{port} (setting {setting}): "
                          f"{why}") from e


__all__ = ["Backoff", "ListenError", "TaskFailures", "contained", "describe", "guard_handler",
           "keep_running", "listen_tcp", "python_logger"]


async def report_event(report: Callable[[str, str, str], Awaitable[None]] | None,
                       logger: logging.Logger, level: str, event: str, message: str, *,
                       local: bool = True) -> None:
    """A driver's event for the node's event log (``report``, the service's
    ``MessagingService.report``) and, with ``local``, for this process's log.  A failing
    ``report`` is logged and swallowed: the event log never stops a driver."""
    if local:
        getattr(logger, level)("%s: %s", event, message)
    if report is not None:
        try:
            await report(level, event, message)
        except Exception:  # noqa: BLE001 - the event log must never stop the ports
            logger.exception("cannot report %s", event)


def task_counters(counts: dict[str, int]) -> dict[str, int]:
    """Failure counts by task name within one counters group's bounds (64 counters): beyond
    63 tasks the least frequent are summed as ``other``."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(items) <= MAX_COUNTERS:
        return {name[:64]: n for name, n in items}
    out = {name[:64]: n for name, n in items[:MAX_COUNTERS - 1]}
    out["other"] = out.get("other", 0) + sum(n for _, n in items[MAX_COUNTERS - 1:])
    return out
