"""Recursive inotify watch of directory trees, for the file watcher (``watcher.py``).

Every directory below the roots gets its own inotify watch; a directory created or moved in
is watched (with everything already in it) as soon as its event is read, and reported so that
what was written into it before its watch existed is scanned.  Symbolic links below a root
are not followed (as the scan does not follow them).  When the kernel's queue overflows or a
root itself goes away, ``TreeWatch.changes`` raises ``WatchGap``: the caller scans everything
again and starts a new watch.
"""
from __future__ import annotations

import os
from functools import partial

import trio

from failover.filerepl import inotify as ino

#: what a directory's watch reports: anything that can change what a scan finds
DIR_MASK = (ino.IN_MODIFY | ino.IN_ATTRIB | ino.IN_CLOSE_WRITE | ino.IN_MOVED_FROM
            | ino.IN_MOVED_TO | ino.IN_CREATE | ino.IN_DELETE | ino.IN_DELETE_SELF
            | ino.IN_MOVE_SELF | ino.IN_ONLYDIR | ino.IN_EXCL_UNLINK)


class WatchGap(Exception):
    """Events may have been lost (queue overflow, a root removed or moved): rescan all."""


class TreeWatch:
    """Watches ``roots`` and everything below them.  ``await changes()`` returns the paths
    (absolute, as text) that changed, grouped like watchfiles groups them: after the first
    event, more are collected until none came for ``step_ms`` or ``debounce_ms`` passed."""

    def __init__(self, roots: list[str], *, debounce_ms: int, step_ms: int):
        self.roots = [os.path.abspath(r) for r in roots]
        self.debounce, self.step = debounce_ms / 1000, max(step_ms, 1) / 1000
        self.ino = ino.Inotify()
        self.paths: dict[int, str] = {}  # watch descriptor -> directory
        self.root_wds: set[int] = set()

    def close(self) -> None:
        self.ino.close()

    # ------------------------------------------------------------------ watches

    def _add_tree(self, top: str, *, root: bool = False) -> list[tuple[int, str]]:
        """Watch ``top`` and the directories below it (blocking: run in a thread).  A
        directory that vanishes meanwhile is skipped (its parent's event says so)."""
        added = []
        mask = DIR_MASK if root else DIR_MASK | ino.IN_DONT_FOLLOW
        try:
            added.append((self.ino.add_watch(top, mask), top))
        except (FileNotFoundError, NotADirectoryError):
            if root:
                raise
            return added
        for dirpath, dirnames, _ in os.walk(top, followlinks=False):
            for d in dirnames:
                path = os.path.join(dirpath, d)
                try:
                    added.append((self.ino.add_watch(path, DIR_MASK | ino.IN_DONT_FOLLOW), path))
                except (FileNotFoundError, NotADirectoryError):
                    pass  # gone again, or a symbolic link (IN_ONLYDIR + IN_DONT_FOLLOW)
        return added

    def _forget(self, top: str) -> None:
        """Drop the watches of ``top`` and everything below it (moved away or deleted)."""
        prefix = top + os.sep
        for wd, path in list(self.paths.items()):
            if path == top or path.startswith(prefix):
                del self.paths[wd]
                self.ino.rm_watch(wd)

    async def start(self) -> None:
        """Watch every root (an error names the directory that failed)."""
        for top in self.roots:
            added = await trio.to_thread.run_sync(partial(self._add_tree, top, root=True))
            self.root_wds.add(added[0][0])
            self.paths.update(added)

    # ------------------------------------------------------------------ events

    async def _take(self, events: list[ino.Event], out: set[str]) -> None:
        for e in events:
            if e.mask & ino.IN_Q_OVERFLOW:
                raise WatchGap("the kernel's inotify queue overflowed")
            base = self.paths.get(e.wd)
            if base is None:
                continue  # a watch already forgotten
            if e.wd in self.root_wds and e.mask & (ino.IN_DELETE_SELF | ino.IN_MOVE_SELF
                                                   | ino.IN_IGNORED | ino.IN_UNMOUNT):
                raise WatchGap(f"{base} was removed or moved")
            if e.mask & ino.IN_IGNORED:
                self.paths.pop(e.wd, None)
                continue
            path = os.path.join(base, e.name) if e.name else base
            out.add(path)
            if e.mask & ino.IN_ISDIR:
                if e.mask & (ino.IN_MOVED_FROM | ino.IN_DELETE):
                    self._forget(path)
                elif e.mask & (ino.IN_CREATE | ino.IN_MOVED_TO):
                    added = await trio.to_thread.run_sync(self._add_tree, path)
                    self.paths.update(added)

    async def changes(self) -> set[str]:
        out: set[str] = set()
        await self._take(await self.ino.wait(), out)
        end = trio.current_time() + self.debounce
        while trio.current_time() < end:
            events = []
            with trio.move_on_after(min(self.step, max(0.0, end - trio.current_time()))):
                events = await self.ino.wait()
            if not events:
                break
            await self._take(events, out)
        return out
