"""What the two nodes compare, sans-IO (docs/replication.md, "Files"): which paths are
replicated (``ReplicatedPaths``), what the index knows of a local file (``IndexEntry``), and
the diff of two manifests (``plan``).  Used by the transfer sessions
(``failover.core.transfer``) and the shells of ``failover.filerepl``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from failover.core.replwire import check_path

RESERVED_PREFIX = ".vmha"

Sig = tuple[int, int, int, int]


def reserved(path: str) -> bool:
    """A component of ``path`` starts with ``.vmha`` (temp files, markers): never replicated."""
    return any(part.startswith(RESERVED_PREFIX) for part in path.split("/"))


class ReplicatedPaths:
    """The replicated directories (relative to the files root) and the rules for the paths
    below them.  Raises ``ValueError`` for a bad, reserved, repeated or overlapping one."""

    def __init__(self, directories: Iterable[str]):
        dirs = []
        for d in directories:
            check_path(d)
            if reserved(d):
                raise ValueError(f"directory {d!r} is reserved")
            dirs.append(d)
        for a in dirs:
            for b in dirs:
                if a != b and b.startswith(a + "/"):
                    raise ValueError(f"directories {a!r} and {b!r} overlap")
        if len(set(dirs)) != len(dirs):
            raise ValueError("a directory is listed twice")
        self.directories = tuple(dirs)

    def top_of(self, path: str) -> str | None:
        """The replicated directory ``path`` is below, None if none."""
        for d in self.directories:
            if path.startswith(d + "/"):
                return d
        return None

    def error(self, path: str) -> str | None:
        """Why ``path`` (from the wire) may not be replicated here, None if it may."""
        try:
            check_path(path)
        except ValueError as e:
            return f"bad path: {e}"
        if reserved(path):
            return f"bad path: {path!r} is reserved"
        if self.top_of(path) is None:
            return f"bad path: {path!r} is outside the replicated directories"
        return None

    def covers(self, rel: str) -> bool:
        """``rel`` (a local path) is a replicated directory or below one, and not reserved."""
        return not reserved(rel) and (rel in self.directories or self.top_of(rel) is not None)


@dataclass(slots=True)
class IndexEntry:
    """One local file.  ``sig`` is a local cache key (None: hash again next time);
    ``synced`` the digest both nodes last agreed on (None: never)."""
    size: int
    digest: bytes
    version_term: int
    version_seq: int
    sig: Sig | None = None
    synced: bytes | None = None

    @property
    def confirmed(self) -> bool:
        return self.synced == self.digest


def plan(local: Mapping[str, Any], peer: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Diff two manifests (``path -> object with size, digest, version_seq``).

    ``sends``: paths whose local content the peer lacks, holds different, or holds identical
    but unconfirmed (``version_seq == 0``: never received from us, see the module doc);
    ``deletes``: paths only the peer has, except those whose content the peer never got from
    us (``version_seq == 0``: written there — during a partition, before a crash, by hand):
    they are left in place, never deleted.  Both sorted."""
    sends = sorted(p for p, e in local.items()
                   if (q := peer.get(p)) is None or q.digest != e.digest or q.size != e.size
                   or q.version_seq == 0)
    deletes = sorted(p for p, q in peer.items() if p not in local and q.version_seq != 0)
    return sends, deletes


__all__ = ["RESERVED_PREFIX", "IndexEntry", "ReplicatedPaths", "Sig", "plan", "reserved"]
