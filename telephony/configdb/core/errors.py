"""The errors of the configuration database.  Pure."""
from __future__ import annotations

from typing import Any


class ConfigDBError(Exception):
    """Bad input (or a request that cannot be satisfied); nothing was changed."""

    def __init__(self, message: str, *, table: str | None = None, column: str | None = None,
                 value: Any = None) -> None:
        super().__init__(message)
        self.table = table
        self.column = column
        self.value = value


class Refused(Exception):
    """The peer's entries or snapshot were refused; nothing was changed.

    ``reason`` is one of ``gap``, ``stale_term``, ``parity``, ``digest``, ``corrupt``
    (entries and snapshots), ``snapshot_behind`` and ``checksum`` (snapshots)."""

    REASONS = ("gap", "stale_term", "parity", "digest", "corrupt", "snapshot_behind",
               "checksum")

    def __init__(self, reason: str, seq: int, message: str) -> None:
        super().__init__(f"{reason} (seq {seq}): {message}")
        self.reason = reason
        self.seq = seq
        self.message = message


class LogGap(Exception):
    """The entries after ``seq`` are no longer (or were never) in our log: send a snapshot."""

    def __init__(self, seq: int, first_seq: int, head_seq: int) -> None:
        if seq > head_seq:
            what = f"peer position {seq} is beyond our log head {head_seq}"
        else:
            what = f"entries after {seq} were pruned (oldest kept is {first_seq})"
        super().__init__(what)
        self.seq = seq
        self.first_seq = first_seq
        self.head_seq = head_seq


class DiskFull(ConfigDBError):
    """SQLite reported SQLITE_FULL; the transaction was rolled back, nothing changed.
    The same call can succeed later when there is room.  (A ConfigDBError, so that a caller
    of ``write`` that reports ConfigDBError to the user reports this one too.)"""
