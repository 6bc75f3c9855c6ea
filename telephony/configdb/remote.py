"""Remote apply: the peer's log entries applied with the conflict rule *primary wins*.
What each conflict overwrote or dropped is recorded in ``_vmha_conflicts``; the peer's changes
are never captured in our own log."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import apsw

from telephony.configdb.core.errors import ConfigDBError, Refused
from telephony.configdb.core.results import ApplyResult, Conflict, LogEntry
from telephony.configdb.core.schema import TABLES
from telephony.configdb.core.validators import is_int
from telephony.configdb.database import Database
from telephony.core.terms import Role, term_parity

_REASONS = {
    apsw.SQLITE_CHANGESET_DATA: "data",
    apsw.SQLITE_CHANGESET_NOTFOUND: "notfound",
    apsw.SQLITE_CHANGESET_CONFLICT: "conflict",
    apsw.SQLITE_CHANGESET_CONSTRAINT: "constraint",
    apsw.SQLITE_CHANGESET_FOREIGN_KEY: "foreign_key",
}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RemoteApply(Database):
    """Applying the peer's log entries (and checking them first)."""

    def _parse_changeset(self, data: bytes, seq: int, *, inserts_only: bool = False
                         ) -> dict[str, dict[Any, tuple]]:
        """Check that ``data`` parses and only touches replicated tables with our column
        layout; with ``inserts_only`` return the rows per table (snapshots)."""
        rows: dict[str, dict[Any, tuple]] = {name: {} for name in TABLES}
        try:
            for tc in apsw.Changeset.iter(data):
                t = TABLES.get(tc.name)
                if t is None:
                    raise Refused("corrupt", seq, f"change to table {tc.name!r}, "
                                  "which is not replicated")
                if tc.column_count != len(t.columns) or tc.pk_columns != {t.pk_index}:
                    raise Refused("corrupt", seq, f"change to {t.name} with "
                                  f"{tc.column_count} columns / key {sorted(tc.pk_columns)}, "
                                  f"expected {len(t.columns)} / [{t.pk_index}]")
                for values in (tc.old, tc.new):
                    if values is not None and any(
                            v is not apsw.no_change and v is not None and not isinstance(v, str)
                            for v in values):
                        raise Refused("corrupt", seq, f"change to {t.name} holds a value that "
                                      "is not text (every replicated column is TEXT)")
                if inserts_only:
                    if tc.opcode != apsw.SQLITE_INSERT:
                        raise Refused("corrupt", seq, f"snapshot holds a {tc.op} on {t.name}")
                    new = tuple(tc.new)
                    key = new[t.pk_index]
                    if key in rows[t.name]:
                        raise Refused("corrupt", seq, f"snapshot holds {t.name} {key!r} twice")
                    rows[t.name][key] = new
        except (apsw.Error, UnicodeDecodeError) as exc:  # a table name that is not UTF-8 too
            raise Refused("corrupt", seq, f"changeset does not parse: {exc}") from None
        return rows

    @staticmethod
    def _check_entry(e: Any) -> None:
        for name, low in (("term", 0), ("seq", 1)):
            v = getattr(e, name, None)
            if not is_int(v) or v < low:
                raise ConfigDBError(f"log entry {name} must be an integer >= {low}, not {v!r}",
                                    value=v)
        if not isinstance(getattr(e, "digest", None), (bytes, bytearray)) or len(e.digest) != 32:
            raise ConfigDBError(f"log entry {e.seq}: digest must be 32 bytes")
        if not isinstance(getattr(e, "changeset", None), (bytes, bytearray)):
            raise ConfigDBError(f"log entry {e.seq}: changeset must be bytes")

    def apply_remote(self, entries: Sequence[LogEntry], peer_role: Role) -> ApplyResult:
        """Apply the peer's log entries (consecutive, oldest first) in one transaction."""
        if not isinstance(peer_role, Role) or peer_role is self.role:
            raise ConfigDBError(f"peer_role must be the other Role than ours "
                                f"({self.role.label}), not {peer_role!r}", value=peer_role)
        if not isinstance(entries, (list, tuple)):
            raise ConfigDBError("entries must be a list of LogEntry")
        for e in entries:
            self._check_entry(e)
        st = self.state()
        if not entries:
            return ApplyResult(st.applied_seq, st.applied_term, 0, st.checksum)
        parity = term_parity(peer_role)
        prev = None
        for e in entries:
            if e.term == 0 or e.term % 2 != parity:
                raise Refused("parity", e.seq, f"term {e.term} is not a term of the "
                              f"{peer_role.label} ({'even' if parity == 0 else 'odd'}, > 0)")
            if prev is not None:
                if e.seq != prev.seq + 1:
                    raise Refused("gap", e.seq, f"entry {e.seq} follows {prev.seq} in the batch")
                if e.term < prev.term:
                    raise Refused("stale_term", e.seq, f"term {e.term} after term {prev.term} "
                                  "in the batch")
            prev = e
        new = [e for e in entries if e.seq > st.applied_seq]
        if not new:  # fully duplicate: the caller treats this as an ack
            return ApplyResult(st.applied_seq, st.applied_term, 0, st.checksum)
        if new[0].seq != st.applied_seq + 1:
            raise Refused("gap", new[0].seq, f"expected seq {st.applied_seq + 1}")
        if new[0].term < st.applied_term:
            raise Refused("stale_term", new[0].seq, f"term {new[0].term} is below the applied "
                          f"term {st.applied_term}")
        for e in new:
            if hashlib.sha256(e.changeset).digest() != bytes(e.digest):
                raise Refused("digest", e.seq, "sha256 of the changeset does not match")
            self._parse_changeset(bytes(e.changeset), e.seq)

        recorded: list[Conflict] = []
        errors: list[BaseException] = []
        current: list[LogEntry] = []
        role = self.role

        def on_conflict(reason: int, tc: apsw.TableChange) -> int:
            try:
                if reason == apsw.SQLITE_CHANGESET_FOREIGN_KEY:
                    return apsw.SQLITE_CHANGESET_OMIT  # no foreign keys in this schema
                t = TABLES[tc.name]
                e = current[0]
                if role is Role.PRIMARY:
                    action, origin = apsw.SQLITE_CHANGESET_OMIT, "peer"
                elif reason in (apsw.SQLITE_CHANGESET_DATA, apsw.SQLITE_CHANGESET_CONFLICT):
                    action, origin = apsw.SQLITE_CHANGESET_REPLACE, "local"
                else:
                    action, origin = apsw.SQLITE_CHANGESET_OMIT, "peer"
                old = tuple(tc.old) if tc.old is not None else None
                new_v = tuple(tc.new) if tc.new is not None else None
                key = (old if old is not None else new_v)[t.pk_index]
                if tc.op == "DELETE":
                    remote = None
                else:
                    remote = {c: v for c, v in zip(t.names, new_v, strict=False)
                              if v is not apsw.no_change}
                    remote.setdefault(t.pk, key)
                local = (dict(zip(t.names, tc.conflict, strict=False)) if tc.conflict is not None
                         else None)
                recorded.append(Conflict(origin, _REASONS.get(reason, str(reason)), tc.op,
                                         t.name, key, local, remote, e.term, e.seq))
                return action
            except BaseException as exc:  # surfaced after apply returns
                errors.append(exc)
                return apsw.SQLITE_CHANGESET_ABORT

        with self._write_txn() as db:
            for e in new:
                current[:] = [e]
                try:
                    apsw.Changeset.apply(bytes(e.changeset), db, conflict=on_conflict,
                                         flags=apsw.SQLITE_CHANGESETAPPLY_IGNORENOOP)
                except apsw.CorruptError as exc:
                    raise Refused("corrupt", e.seq, f"changeset does not apply: {exc}"
                                  ) from None
                except apsw.Error:
                    if errors:  # the handler's own error is the cause (the abort its context)
                        raise errors[0]  # noqa: B904
                    raise
                if errors:
                    raise errors[0]
            self._insert_conflicts(db, recorded)
            self._set_meta(db, applied_seq=new[-1].seq, applied_term=new[-1].term)
        st = self.state()
        return ApplyResult(st.applied_seq, st.applied_term, len(recorded), st.checksum)

    def _insert_conflicts(self, db: apsw.Connection, recorded: list[Conflict]) -> None:
        when = _now()
        for c in recorded:
            t = TABLES[c.table]
            if c.reason == "constraint" and c.local_row is None and c.remote_row:
                # show which local row blocked the peer's change (a UNIQUE column)
                for col in t.columns:
                    if col.unique and c.remote_row.get(col.name) is not None:
                        hit = db.execute(f"SELECT {', '.join(t.names)} FROM {t.name} "
                                         f"WHERE {col.name} = ?",
                                         (c.remote_row[col.name],)).fetchall()
                        if hit:
                            c.local_row = dict(zip(t.names, hit[0], strict=False))
                            break
            db.execute(
                "INSERT INTO _vmha_conflicts (origin, reason, op, table_name, pk, local_row,"
                " remote_row, peer_term, peer_seq, recorded_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (c.origin, c.reason, c.op, c.table, json.dumps(c.pk),
                 None if c.local_row is None else json.dumps(c.local_row, sort_keys=True),
                 None if c.remote_row is None else json.dumps(c.remote_row, sort_keys=True),
                 c.peer_term, c.peer_seq, when))
