"""Reading and hashing local files (in worker threads), and the one-line text of an error.

The stat signature ``(st_ino, st_size, st_mtime_ns, st_ctime_ns)`` is only a local cache key:
a file whose signature did not change is not hashed again.  A file modified less than 2 s
before it was hashed gets no signature (``cache_sig``), because a write in the same clock tick
keeps the same mtime; only this node's clock is compared with the file's mtime.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from pathlib import Path

from failover.core.manifest import IndexEntry, Sig
from failover.core.transfer import DISK_FULL

RACY_NS = 2_000_000_000  # a file modified this recently is hashed again next time
HASH_BLOCK = 1 << 20
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class Unstable(Exception):
    """The file changed while it was read."""


def sig(st: os.stat_result) -> Sig:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def cache_sig(st: os.stat_result) -> Sig | None:
    """The signature to store, None if the file is too fresh to trust it (racy mtime)."""
    return None if time.time_ns() - st.st_mtime_ns < RACY_NS else sig(st)


def error_text(e: BaseException) -> str:
    """``disk full`` for ENOSPC/EDQUOT (the sender pauses on it), else one line."""
    if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
        return DISK_FULL
    if isinstance(e, OSError):
        return f"{errno.errorcode.get(e.errno or 0, 'OSError')}: {e.strerror or e}"
    return f"{type(e).__name__}: {e}"


def hash_fd(fd: int, end: int | None = None) -> bytes:
    """sha256 of the first ``end`` bytes (all if None) of an open file, by pread."""
    h, off = hashlib.sha256(), 0
    while end is None or off < end:
        n = HASH_BLOCK if end is None else min(HASH_BLOCK, end - off)
        data = os.pread(fd, n, off)
        if not data:
            break
        h.update(data)
        off += len(data)
    return h.digest()


def hash_file(path: Path) -> tuple[int, bytes, Sig | None] | None:
    """(size, digest, cache sig) of a regular file; None if it is gone or not regular (a
    symbolic link is not followed).  Raises ``Unstable`` if it changed while read."""
    try:
        fd = os.open(path, OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        digest = hash_fd(fd)
        if sig(os.fstat(fd)) != sig(st):
            raise Unstable(str(path))
        return st.st_size, digest, cache_sig(st)
    finally:
        os.close(fd)


def _open_regular(path: Path) -> tuple[int, os.stat_result] | None:
    """An fd and its stat for a regular file; None if it is gone or not regular."""
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


def read_small(path: Path, limit: int) -> tuple[bytes, bytes, Sig | None] | None:
    """(data, digest, cache sig) of a regular file below ``limit`` bytes; None if it is gone,
    not regular or not below ``limit``.  Raises ``Unstable`` if it changed while read."""
    opened = _open_regular(path)
    if opened is None:
        return None
    fd, st = opened
    try:
        if st.st_size >= limit:
            return None
        parts, total = [], 0
        while True:
            b = os.read(fd, limit + 1 - total)
            if not b:
                break
            parts.append(b)
            total += len(b)
            if total > limit:
                return None
        if sig(os.fstat(fd)) != sig(st) or total != st.st_size:
            raise Unstable(str(path))
        data = b"".join(parts)
        return data, hashlib.sha256(data).digest(), cache_sig(st)
    finally:
        os.close(fd)


def open_large(path: Path, e: IndexEntry) -> tuple[int, int, bytes, Sig | None] | None:
    """(fd, size, digest, cache sig) of a file to stream, hashing it again unless its
    signature is the indexed one (``e``); None if it is gone or not regular.  Raises
    ``Unstable`` if it changed while hashed.  The caller closes the fd."""
    opened = _open_regular(path)
    if opened is None:
        return None
    fd, st = opened
    try:
        if e.sig is not None and e.sig == sig(st):
            return fd, e.size, e.digest, e.sig
        digest = hash_fd(fd)
        if sig(os.fstat(fd)) != sig(st):
            raise Unstable(str(path))
        return fd, st.st_size, digest, cache_sig(st)
    except BaseException:
        os.close(fd)
        raise
