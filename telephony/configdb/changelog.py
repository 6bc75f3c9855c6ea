"""The change log: our own writes as log entries (``_vmha_log``: seq, term, sha256 digest,
changeset), what the peer has not applied yet (:meth:`ChangeLog.entries_after`), pruning once
the peer acknowledged (:meth:`ChangeLog.mark_acked`, keeping ``log_keep`` entries and at most
``log_max``), and the rolling checksum."""
from __future__ import annotations

import hashlib

import apsw

from telephony.configdb.core.checksum import U64, row_hash
from telephony.configdb.core.errors import ConfigDBError, LogGap
from telephony.configdb.core.results import LogEntry
from telephony.configdb.core.schema import TABLES
from telephony.configdb.core.validators import is_int
from telephony.configdb.database import Database


class ChangeLog(Database):
    """The change log and the checksum of a :class:`~telephony.configdb.database.Database`."""

    def _append(self, db: apsw.Connection, seq: int, term: int, changeset: bytes) -> None:
        """Append one entry (inside the caller's write transaction) and move the head."""
        db.execute("INSERT INTO _vmha_log (seq, term, digest, changeset) VALUES (?,?,?,?)",
                   (seq, term, hashlib.sha256(changeset).digest(), changeset))
        self._set_meta(db, head_seq=seq, head_term=term)
        self._enforce_log_max(db)

    def entries_after(self, seq: int, *, max_entries: int = 500,
                      max_bytes: int = 1 << 20) -> list[LogEntry]:
        """Our log entries after ``seq`` (the peer's applied position), oldest first."""
        for name, v, low in (("seq", seq, 0), ("max_entries", max_entries, 1),
                             ("max_bytes", max_bytes, 1)):
            if not is_int(v) or v < low:
                raise ConfigDBError(f"{name} must be an integer >= {low}, not {v!r}", value=v)
        with self._read_txn() as db:
            head = self._meta(db)["head_seq"]
            first = self._first_seq(db, head)
            if seq > head or seq + 1 < first:
                raise LogGap(seq, first, head)
            out: list[LogEntry] = []
            size = 0
            for term, s, digest, cs in db.execute(
                    "SELECT term, seq, digest, changeset FROM _vmha_log WHERE seq > ? "
                    "ORDER BY seq LIMIT ?", (seq, max_entries)):
                size += len(cs)
                if out and size > max_bytes:
                    break
                out.append(LogEntry(term, s, bytes(digest), bytes(cs)))
            return out

    def mark_acked(self, seq: int) -> None:
        """The peer has applied our log up to ``seq``: prune what it no longer needs."""
        if not is_int(seq) or seq < 0:
            raise ConfigDBError(f"seq must be an integer >= 0, not {seq!r}", value=seq)
        with self._write_txn() as db:
            meta = self._meta(db)
            if seq > meta["head_seq"]:
                raise ConfigDBError(f"cannot ack seq {seq}: our log head is {meta['head_seq']}",
                                    value=seq)
            acked = max(meta["acked_seq"], seq)
            if acked != meta["acked_seq"]:
                self._set_meta(db, acked_seq=acked)
            db.execute("DELETE FROM _vmha_log WHERE seq <= ?", (acked - self.log_keep,))
            self._enforce_log_max(db)

    def _enforce_log_max(self, db: apsw.Connection) -> None:
        meta = self._meta(db)
        head, acked = meta["head_seq"], meta["acked_seq"]
        first = self._first_seq(db, head)
        oldest_unacked = max(acked + 1, first)
        if head - oldest_unacked + 1 <= self.log_max:
            return
        cutoff = head - self.log_max  # drop every entry up to and including cutoff
        dropped = cutoff - oldest_unacked + 1
        db.execute("DELETE FROM _vmha_log WHERE seq <= ?", (cutoff,))
        self._set_meta(db, dropped_unacked=meta["dropped_unacked"] + dropped)

    def checksum(self) -> int:
        return self._conn.execute(
            "SELECT value FROM _vmha_meta WHERE key = 'checksum'").fetchall()[0][0] & U64

    def recompute_checksum(self) -> int:
        """The checksum computed from scratch (the incremental one is ``state().checksum``)."""
        total = 0
        with self._read_txn() as db:
            for t in TABLES.values():
                for row in db.execute(f"SELECT {', '.join(t.names)} FROM {t.name}"):
                    total += row_hash(t.name, row)
        return total & U64
