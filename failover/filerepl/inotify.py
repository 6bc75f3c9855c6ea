"""Linux inotify through ``ctypes`` on the C library, awaited in Trio.

The node manager sleeps in the kernel until a file it cares about changes: the file watcher
(``failover/filerepl/watcher.py``) and replication's check for other writers of the
configuration database (``failover/replication.py``) each await an inotify descriptor with
``trio.lowlevel.wait_readable`` instead of polling.  ``available()`` says whether this system
has inotify (Linux); callers without it fall back to polling.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import sys
from dataclasses import dataclass

import trio

IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = getattr(os, "O_CLOEXEC", 0o2000000)

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)
_libc = None


def _lib():
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c") or "libc.so.6"
        lib = ctypes.CDLL(name, use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc = lib
    return _libc


def available() -> bool:
    """True if inotify can be used here (Linux with a C library that has it)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return hasattr(_lib(), "inotify_init1")
    except OSError:
        return False


@dataclass(frozen=True)
class Event:
    wd: int
    mask: int
    cookie: int
    name: str  # "" for an event on the watched path itself


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


class Inotify:
    """One inotify instance (a file descriptor, non-blocking, closed on exec)."""

    def __init__(self) -> None:
        self.fd = _check(_lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")

    def add_watch(self, path: str | os.PathLike, mask: int) -> int:
        """Watch ``path`` for ``mask``; the watch descriptor (the same one again for a path
        already watched)."""
        raw = os.fsencode(path)
        return _check(_lib().inotify_add_watch(self.fd, raw, mask), f"inotify_add_watch {path!s}")

    def rm_watch(self, wd: int) -> None:
        """Stop a watch; one the kernel has already removed (its path is gone) is no error."""
        if _lib().inotify_rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_rm_watch: {os.strerror(err)}")

    def read(self) -> list[Event]:
        """The events queued now (none: an empty list), without blocking."""
        out: list[Event] = []
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return out
            if not data:
                return out
            pos = 0
            while pos + _HEADER.size <= len(data):
                wd, mask, cookie, size = _HEADER.unpack_from(data, pos)
                pos += _HEADER.size
                name = data[pos:pos + size].split(b"\0", 1)[0]
                pos += size
                out.append(Event(wd, mask, cookie, os.fsdecode(name)))

    async def wait(self) -> list[Event]:
        """Sleep until events arrive; return them."""
        while True:
            events = self.read()
            if events:
                return events
            await trio.lowlevel.wait_readable(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            try:
                trio.lowlevel.notify_closing(fd)
            except RuntimeError:  # not inside Trio (tests, a thread)
                pass
            os.close(fd)

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NameWatch:
    """Wakes when a file named one of ``names`` in ``directory`` is written, created,
    replaced or removed (e.g. an SQLite database and its ``-wal`` and ``-journal`` files)."""

    MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_ONLYDIR

    def __init__(self, directory: str | os.PathLike, names: set[str]):
        self.directory, self.names = directory, set(names)
        self.ino = Inotify()
        try:
            self.ino.add_watch(directory, self.MASK)
        except OSError:
            self.ino.close()
            raise

    async def wait(self) -> None:
        """Return once one of the files changed (or the kernel lost events: look anyway).
        Raises ``OSError`` when the directory's watch ended (it was removed or replaced):
        the caller makes a new one."""
        while True:
            events = await self.ino.wait()
            if any(e.mask & IN_IGNORED for e in events):
                raise OSError(errno.ENOENT, f"{self.directory}: the inotify watch ended (the "
                              "directory was removed or replaced)")
            if any(e.name in self.names or e.mask & IN_Q_OVERFLOW for e in events):
                return

    def close(self) -> None:
        self.ino.close()

    def __enter__(self) -> NameWatch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
