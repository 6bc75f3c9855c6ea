"""Snapshots: a full copy of the replicated tables as one changeset of INSERTs, for a peer
whose position was pruned from our log or whose data diverged.  Installing one replaces every
replicated table in one transaction and records what it overwrote as conflicts."""
from __future__ import annotations

import apsw

from telephony.configdb.core.checksum import U64
from telephony.configdb.core.errors import ConfigDBError, Refused
from telephony.configdb.core.results import Conflict, InstallResult, Snapshot
from telephony.configdb.core.schema import TABLES, Table
from telephony.configdb.core.validators import is_int
from telephony.configdb.remote import RemoteApply
from telephony.core.terms import term_parity


class Snapshots(RemoteApply):
    """Building and installing snapshots."""

    def build_snapshot(self) -> Snapshot:
        with self._read_txn() as db:
            st = self._state(db)
            builder = apsw.ChangesetBuilder()
            try:
                builder.schema(db, "main")
                for t in TABLES.values():
                    for row in db.execute(f"SELECT {', '.join(t.names)} FROM {t.name} "
                                          f"ORDER BY {t.pk}"):
                        builder.add_insert(t.name, False, row)
                data = builder.output()
            finally:
                builder.close()
        return Snapshot(st.head_seq, st.head_term, st.applied_seq, st.applied_term,
                        st.checksum, data)

    def install_snapshot(self, snap: Snapshot) -> InstallResult:
        """Replace every replicated table with the peer's snapshot (one transaction)."""
        for name in ("head_seq", "head_term", "applied_seq", "applied_term", "checksum"):
            v = getattr(snap, name, None)
            if not is_int(v) or not 0 <= v <= U64:
                raise ConfigDBError(f"snapshot {name} must be an integer 0..2**64-1, not {v!r}",
                                    value=v)
        if not isinstance(snap.data, (bytes, bytearray)):
            raise ConfigDBError("snapshot data must be bytes")
        peer_parity = 1 - term_parity(self.role)
        if (snap.head_seq == 0) != (snap.head_term == 0) or (
                snap.head_term and snap.head_term % 2 != peer_parity):
            raise Refused("parity", snap.head_seq, f"snapshot head term {snap.head_term} is "
                          f"not a term of the peer at seq {snap.head_seq}")
        remote = self._parse_changeset(bytes(snap.data), snap.head_seq, inserts_only=True)
        lost: list[Conflict] = []
        with self._write_txn() as db:
            head = self._meta(db)["head_seq"]
            if snap.applied_seq < head:
                raise Refused("snapshot_behind", snap.applied_seq,
                              f"the snapshot holds our log up to {snap.applied_seq}, our head "
                              f"is {head}: retry when the peer has applied it")
            inserts: list[tuple[Table, tuple]] = []
            for t in TABLES.values():
                theirs = remote[t.name]
                doomed = []
                for row in db.execute(f"SELECT {', '.join(t.names)} FROM {t.name}"):
                    key = row[t.pk_index]
                    other = theirs.get(key)
                    if other == row:
                        continue
                    doomed.append(key)
                    lost.append(Conflict("local", "snapshot", None, t.name, key,
                                         dict(zip(t.names, row, strict=False)),
                                         None if other is None
                                         else dict(zip(t.names, other, strict=False)),
                                         snap.head_term, snap.head_seq))
                db.executemany(f"DELETE FROM {t.name} WHERE {t.pk} = ?",
                               [(k,) for k in doomed])
                present = {r[0] for r in db.execute(f"SELECT {t.pk} FROM {t.name}")}
                inserts += [(t, row) for key, row in theirs.items() if key not in present]
            try:
                for t, row in inserts:
                    db.execute(f"INSERT INTO {t.name} ({', '.join(t.names)}) VALUES "
                               f"({', '.join('?' * len(t.names))})", row)
            except (apsw.ConstraintError, apsw.MismatchError) as exc:
                raise Refused("corrupt", snap.head_seq,
                              f"snapshot row rejected by the schema: {exc}") from None
            self._insert_conflicts(db, lost)
            self._set_meta(db, applied_seq=snap.head_seq, applied_term=snap.head_term)
            ck = self._meta(db)["checksum"] & U64
            if ck != snap.checksum:
                raise Refused("checksum", snap.head_seq,
                              f"checksum after install {ck:016x} != snapshot's "
                              f"{snap.checksum:016x}")
        return InstallResult(len(lost), ck)
