"""What the configuration database's calls return, and the conflict record.  Pure data."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WriteResult:
    seq: int        # log entry written (the current head when nothing changed)
    term: int       # its term (the head term when nothing changed)
    changes: int    # rows changed (0: nothing changed, no log entry)


@dataclass(frozen=True)
class ReplState:
    head_seq: int       # newest entry of our own log (0: never written)
    head_term: int
    first_seq: int      # oldest entry still in our log (head_seq + 1 when empty)
    applied_seq: int    # how far we have applied the PEER's log
    applied_term: int
    checksum: int       # u64


@dataclass(frozen=True)
class LogEntry:
    term: int
    seq: int
    digest: bytes       # sha256(changeset)
    changeset: bytes


@dataclass(frozen=True)
class ApplyResult:
    applied_seq: int
    applied_term: int
    conflicts: int      # conflicts recorded by this call
    checksum: int


@dataclass(frozen=True)
class Snapshot:
    head_seq: int       # the sender's own log head ...
    head_term: int
    applied_seq: int    # ... and how far it has applied the receiver's log
    applied_term: int
    checksum: int
    data: bytes         # a changeset of one INSERT per row of every replicated table


@dataclass(frozen=True)
class InstallResult:
    conflicts: int
    checksum: int


@dataclass
class Conflict:
    """One conflict to record in ``_vmha_conflicts`` (what the peer's change or a snapshot
    overwrote or dropped)."""

    origin: str
    reason: str
    op: str | None
    table: str
    pk: Any
    local_row: dict | None
    remote_row: dict | None
    peer_term: int
    peer_seq: int
