"""The configuration database of one node, :class:`ConfigDB`: every layer in one object, and
its reports (divergence, recorded conflicts, statistics)."""
from __future__ import annotations

import json
from typing import Any

from telephony.configdb.core.checksum import U64
from telephony.configdb.core.errors import ConfigDBError
from telephony.configdb.core.schema import TABLES
from telephony.configdb.core.validators import is_int
from telephony.configdb.repository import Repository
from telephony.configdb.snapshots import Snapshots


class ConfigDB(Repository, Snapshots):
    """One node's configuration database.  Not thread-safe: one caller at a time.

    ``ConfigDB(path, role=..., log_keep=1000, log_max=100_000, mwi_methods=None)``: see
    :class:`~telephony.configdb.database.Database`.  Reads and writes:
    :class:`~telephony.configdb.repository.Repository`; our log and the checksum:
    :class:`~telephony.configdb.changelog.ChangeLog`; the peer's entries:
    :class:`~telephony.configdb.remote.RemoteApply`; snapshots:
    :class:`~telephony.configdb.snapshots.Snapshots`."""

    def diverged(self, peer: Any) -> bool | None:
        """None when the positions do not line up (something is still in flight), else
        whether the checksums differ."""
        st = self.state()
        if st.head_seq != peer.applied_seq or st.applied_seq != peer.head_seq:
            return None
        return st.checksum != (peer.checksum & U64)

    def conflicts(self, limit: int = 100) -> list[dict]:
        """Recorded conflicts, newest first."""
        if not is_int(limit) or limit < 0:
            raise ConfigDBError(f"limit must be an integer >= 0, not {limit!r}", value=limit)
        out = []
        for (id_, origin, reason, op, table, pk, local, remote, pterm, pseq,
             at) in self._conn.execute(
                "SELECT id, origin, reason, op, table_name, pk, local_row, remote_row,"
                " peer_term, peer_seq, recorded_at FROM _vmha_conflicts ORDER BY id DESC"
                " LIMIT ?", (limit,)):
            out.append({"id": id_, "origin": origin, "reason": reason, "op": op,
                        "table": table, "pk": json.loads(pk),
                        "local_row": None if local is None else json.loads(local),
                        "remote_row": None if remote is None else json.loads(remote),
                        "peer_term": pterm, "peer_seq": pseq, "recorded_at": at})
        return out

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes when another connection (another
        process, e.g. the messaging service writing the MWI ledger) commits."""
        return self._conn.execute("PRAGMA data_version").fetchone()[0]

    def conflict_count(self) -> int:
        return self._conn.execute("SELECT count(*) FROM _vmha_conflicts").fetchall()[0][0]

    def stats(self) -> dict:
        with self._read_txn() as db:
            st = self._state(db)
            meta = self._meta(db)
            entries = db.execute("SELECT count(*) FROM _vmha_log").fetchall()[0][0]
            conflicts = db.execute("SELECT count(*) FROM _vmha_conflicts").fetchall()[0][0]
            rows = {name: db.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
                    for name in TABLES}
        return {"role": self.role.label, "head_seq": st.head_seq, "head_term": st.head_term,
                "first_seq": st.first_seq, "applied_seq": st.applied_seq,
                "applied_term": st.applied_term, "acked_seq": meta["acked_seq"],
                "log_entries": entries, "checksum": f"{st.checksum:016x}",
                "conflicts": conflicts, "dropped_unacked": meta["dropped_unacked"],
                "rows": rows}
