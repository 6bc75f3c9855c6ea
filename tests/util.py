"""Helpers every test package shares: one way to wait for a condition.

Ports come from :mod:`lab.pair` (``free_port``, ``free_udp_block``): one picker for tests,
benchmarks and the lab.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import trio


async def until(predicate: Callable[[], Any], what: str = "the condition", *,
                timeout: float = 20.0, poll: float = 0.01, in_thread: bool = False) -> Any:
    """Call ``predicate`` every ``poll`` seconds until it returns something true; return that.

    ``predicate`` may be a plain function, an ``async`` one, or (``in_thread=True``) a blocking
    one run in a worker thread.  ``timeout`` is a hang guard, not a figure: running out fails
    the test naming ``what`` and the last value seen.  Under a ``MockClock`` with
    ``autojump_threshold`` the polls cost no real time."""
    last = None
    with trio.move_on_after(timeout):
        while True:
            if in_thread:
                last = await trio.to_thread.run_sync(predicate)
            else:
                last = predicate()
                if inspect.isawaitable(last):
                    last = await last
            if last:
                return last
            await trio.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last value {last!r})")


class EventLogRecorder:
    """Stands in for the node's event log (``write(level, event, message, fields)``) and keeps
    every record; a test reads them by name or waits for them."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self._changed = trio.Event()

    def write(self, level, event, message, fields=None) -> dict:
        rec = {"level": level, "event": event, "message": message, "fields": fields}
        self.records.append(rec)
        self._changed.set()
        self._changed = trio.Event()
        return rec

    def named(self, event: str) -> list[dict]:
        return [r for r in self.records if r["event"] == event]

    async def wait_for(self, event: str, count: int = 1) -> list[dict]:
        while len(self.named(event)) < count:
            await self._changed.wait()
        return self.named(event)
