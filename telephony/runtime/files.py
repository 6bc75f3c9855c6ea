"""Durable-file helpers: the one home of ``fsync_dir``, ``write_new_file`` and
``replace_file`` (temp file, fsync, rename, fsync of the directory)."""
from __future__ import annotations

import os
import stat
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, so that a rename or link inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all_and_sync(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def write_new_file(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Create ``path`` (which must not exist: ``O_EXCL``) with exactly ``mode`` whatever the
    umask, write all of ``data``, fsync and close it.  The caller then links or renames it into
    place (and fsyncs the directory), and removes it if that fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        _write_all_and_sync(fd, data)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomic and durable replacement of ``path``: a crash leaves either the old or the new
    file, never a mix (temp file beside it, fsync, rename, fsync of the directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        _write_all_and_sync(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


MAX_SECRET_FILE = 64 * 1024


class SecretFileError(ValueError):
    """A secret file (a password file) that cannot be used; the message names the file and
    what to do.  ``missing``: the file does not exist."""

    missing = False


def read_private_file(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of a file only its owner may read (a password, key or operators file):
    :class:`SecretFileError` when it is not a regular file, when group or others have any
    access (``chmod 600``), or when it holds more than ``limit`` bytes.  The file opened is the
    one checked (no follow of a symlink, ``fstat`` of the descriptor)."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        err = SecretFileError(f"{p}: cannot read: {e.strerror or e}")
        err.missing = isinstance(e, FileNotFoundError)
        raise err from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(f"{p}: not a regular file")
        if st.st_mode & 0o077:
            raise SecretFileError(f"{p}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others "
                                  f"read a secret: chmod 600 {p}")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise SecretFileError(f"{p}: cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise SecretFileError(f"{p}: over {limit} bytes")
    return b"".join(chunks)


def read_secret(path: str | os.PathLike) -> str:
    """The text of a secret file (a password file), at most 64 KiB (:func:`read_private_file`)."""
    data = read_private_file(path, MAX_SECRET_FILE)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretFileError(f"{path}: not UTF-8 text") from None

