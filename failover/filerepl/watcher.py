"""The file watcher: kernel events on the replicated directories, batched by
``batch_delay``, turned into partial scans.  A directory that cannot be watched (a symlink
loop, a share that went away) is retried with back-off while the others stay watched; after
any gap (a watch restarted, the kernel's event queue overflowed) the whole tree is scanned
again, so nothing missed is lost.

On Linux the watcher sleeps on an inotify descriptor (``failover/filerepl/inotify.py``):
an idle node does no work for it at all.  With ``force_polling`` (network shares, where
inotify sees no changes made by other hosts; also when ``WATCHFILES_FORCE_POLLING`` is set)
or without inotify it uses ``watchfiles``, which polls.
"""
from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Awaitable, Callable, Protocol

import trio

from failover.core.manifest import ReplicatedPaths
from failover.filerepl import inotify
from failover.filerepl.hashing import error_text
from failover.filerepl.treewatch import TreeWatch, WatchGap


class Failures(Protocol):
    """What the watcher reports to (a ``failover.replchan.ReplTasks``)."""

    def failed(self, task: str, exc: BaseException | str, *, retry_in: float | None = None,
               level: str = "error") -> None: ...

    def ok(self, task: str) -> None: ...


class Turn:
    """Stop event of one run of ``watchfiles``: set by ``set()`` (its own turn is over) or by
    the watcher's overall ``stop``."""

    def __init__(self, stop: threading.Event):
        self._stop, self._own = stop, threading.Event()
        self.scope = trio.CancelScope()  # around an inotify watch (``Watcher._watch_tree``)

    def is_set(self) -> bool:
        return self._own.is_set() or self._stop.is_set()

    def set(self) -> None:
        self._own.set()


class Watcher:
    """Watches ``root``'s replicated directories and calls ``scan(paths)`` with what changed.
    ``recheck`` holds paths to look at again soon (they changed while they were hashed).
    ``on_error(text)`` counts a failure of the watcher itself."""

    def __init__(self, root: Path, paths: ReplicatedPaths, *,
                 scan: Callable[[set[str]], Awaitable[None]], failures: Failures,
                 on_error: Callable[[str], None], batch_delay: float, retry_min: float,
                 retry_max: float, debounce_ms: int, step_ms: int,
                 force_polling: bool | None, poll_delay_ms: int):
        self.root = root
        self.paths = paths
        self.scan = scan
        self.failures = failures
        self.on_error = on_error
        self.batch_delay = batch_delay
        self.retry_min, self.retry_max = retry_min, retry_max
        self.debounce_ms, self.step_ms = debounce_ms, step_ms
        self.force_polling, self.poll_delay_ms = force_polling, poll_delay_ms
        self.recheck: set[str] = set()
        self._gap = False  # an inotify watch ended with events lost: rescan once watching again

    def rel_of(self, abspath: str) -> str | None:
        """The replicated path of a watch event, None if it is not one."""
        try:
            rel = Path(abspath).relative_to(self.root).as_posix()
        except ValueError:
            return None
        return rel if self.paths.covers(rel) else None

    def kernel_events(self) -> bool:
        """True: watch with inotify (sleeping until something changes); False: watchfiles."""
        if self.force_polling or (self.force_polling is None
                                  and os.environ.get("WATCHFILES_FORCE_POLLING")):
            return False
        return inotify.available()

    async def _watch_tree(self, good: list[str], send: trio.MemorySendChannel,
                          bad: list[str], turn: Turn) -> bool:
        """Watch ``good`` with inotify until ``turn`` ends (the bad directories' retry) or
        events may have been lost (then everything is scanned again and this returns, for a
        new watch).  True if events arrived while every directory was watched."""
        reset = False
        watch = TreeWatch(good, debounce_ms=self.debounce_ms, step_ms=self.step_ms)
        try:
            with turn.scope:
                await watch.start()
                if self._gap:  # scan what the last watch may have missed, now that this one runs
                    self._gap = False
                    send.send_nowait({(None, str(self.root / d)) for d in self.paths.directories})
                while True:
                    changed = await watch.changes()
                    send.send_nowait({(None, p) for p in changed})
                    reset = reset or not bad
        except WatchGap as e:
            self.on_error(f"file watcher restarts: {e}; everything is scanned again")
            self._gap = True
        finally:
            watch.close()
        return reset

    async def run(self) -> None:
        """Feed watch events (batched by ``batch_delay``) into partial scans."""
        dirs = [str(self.root / d) for d in self.paths.directories]
        send, recv = trio.open_memory_channel(math.inf)
        stop = threading.Event()

        def watchable() -> tuple[list[str], list[str]]:
            """(directories that can be watched, why the others cannot)."""
            good, bad = [], []
            for d in dirs:
                try:
                    os.makedirs(d, exist_ok=True)
                    good.append(d)
                except OSError as e:  # a symlink loop, a share that went away...
                    bad.append(f"{d}: {error_text(e)}")
            return good, bad

        async def end_after(delay: float, turn: Turn) -> None:
            await trio.sleep(delay)
            turn.set()
            turn.scope.cancel()  # an inotify watch waits in Trio: end it too

        async def pump() -> None:
            """Watch the directories that can be watched; one that cannot (or a watcher
            that fails) is recorded, and the watch starts again after a growing delay, so
            one bad directory never stops the others being watched."""
            delay = self.retry_min
            while not stop.is_set():
                turn = Turn(stop)
                try:
                    good, bad = await trio.to_thread.run_sync(watchable)
                    if bad:
                        self.failures.failed("files.watcher", "cannot watch " + "; ".join(bad),
                                             retry_in=delay, level="warning")
                    else:
                        self.failures.ok("files.watcher")
                    async with trio.open_nursery() as retry:
                        if bad:  # look at the bad ones again later
                            retry.start_soon(end_after, delay, turn)
                        if good and self.kernel_events():
                            if await self._watch_tree(good, send, bad, turn):
                                delay = self.retry_min
                        elif good:
                            import watchfiles  # only when polling: ~2 MB and anyio otherwise unused

                            async for changes in watchfiles.awatch(
                                    *good, watch_filter=None, debounce=self.debounce_ms,
                                    step=self.step_ms, stop_event=turn, rust_timeout=1000,
                                    force_polling=self.force_polling,
                                    poll_delay_ms=self.poll_delay_ms, recursive=True):
                                send.send_nowait(changes)
                                if not bad:
                                    delay = self.retry_min
                        retry.cancel_scope.cancel()
                    if bad:
                        send.send_nowait({(None, d) for d in dirs})  # rescan what was missed
                        delay = min(self.retry_max, delay * 2)
                except Exception as e:  # e.g. a watched directory vanished
                    self.on_error(f"file watcher failed: {type(e).__name__}: {e}")
                    self.failures.failed("files.watcher", e, retry_in=delay)
                    send.send_nowait({(None, d) for d in dirs})  # rescan what it may have missed
                    await trio.sleep(delay)
                    delay = min(self.retry_max, delay * 2)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump)
                while True:
                    timeout = 0.2 if self.recheck else math.inf
                    changes: set = set()
                    with trio.move_on_after(timeout):
                        changes = await recv.receive()
                    if changes and self.batch_delay > 0:
                        await trio.sleep(self.batch_delay)
                    while True:
                        try:
                            changes |= recv.receive_nowait()
                        except trio.WouldBlock:
                            break
                    rels = {r for _, p in changes if (r := self.rel_of(p)) is not None}
                    rels |= self.recheck
                    self.recheck = set()
                    if rels:
                        await self.scan(rels)
        finally:
            stop.set()  # lets the watcher thread return within a step
