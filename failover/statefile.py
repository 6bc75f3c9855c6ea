"""Durable node state (term, licence contact): JSON, written to a temp file, fsynced, renamed."""
from __future__ import annotations

import json
import os
from pathlib import Path

from failover.core.supervisor import Persisted


class StateFileError(Exception):
    pass


def load_state(path: Path) -> Persisted:
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Persisted()
    except OSError as e:
        raise StateFileError(f"{path}: cannot read node state: {e}") from e
    try:
        data = json.loads(raw)
        term = data["term"]
        contact = data.get("last_contact_wall")
        if not isinstance(term, int) or term < 0 or (contact is not None and not isinstance(contact, (int, float))):
            raise ValueError("bad field types")
    except (ValueError, KeyError, TypeError) as e:
        raise StateFileError(f"{path}: node state is corrupt ({e}); refusing to start with an "
                             "unknown term. Restore it or move it aside after checking the peer's term.") from e
    return Persisted(term=term, last_contact_wall=contact)


def write_new_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create ``path`` (which must not exist: ``O_EXCL``) with exactly ``mode`` whatever the
    umask, write all of ``data``, fsync and close it.  The caller then links or renames it into
    place (and fsyncs the directory), and removes it if that fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def save_state(path: Path, state: Persisted) -> None:
    """Atomic and durable: a crash leaves either the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    data = json.dumps({"term": state.term, "last_contact_wall": state.last_contact_wall}).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
