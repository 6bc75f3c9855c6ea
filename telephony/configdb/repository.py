"""The repository: reads and writes of the replicated tables.  Every value is validated in
Python before any SQL runs (``ConfigDBError`` names the table, column and value) and a failed
write changes nothing; a write is one transaction whose changes, captured with the SQLite
session extension, are appended to the change log in that same transaction."""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import apsw

from telephony.configdb.changelog import ChangeLog
from telephony.configdb.core.errors import ConfigDBError
from telephony.configdb.core.results import WriteResult
from telephony.configdb.core.schema import TABLES, Column, Table
from telephony.configdb.core.validators import MAX_JSON, BadValue, dump_json, is_int
from telephony.core.terms import term_parity

#: rows that go with a deleted row of the same key: a subscriber's PIN and lockout (a new
#: subscriber given the same extension later must not inherit the old one's PIN)
DELETED_WITH: dict[str, tuple[str, ...]] = {"subscribers": ("pins", "pin_lockouts")}


class Repository(ChangeLog):
    """Reads and writes of the replicated tables, each write logged."""

    @staticmethod
    def _table(table: Any) -> Table:
        t = TABLES.get(table) if isinstance(table, str) else None
        if t is None:
            raise ConfigDBError(f"unknown table {table!r} (tables: {', '.join(TABLES)})",
                                table=table if isinstance(table, str) else None, value=table)
        return t

    @staticmethod
    def _check_value(t: Table, col: Column, value: Any, where: str = "") -> Any:
        """Validate one value; return what is stored."""
        try:
            if value is None and col.kind == "text":
                if col.required:
                    raise BadValue("is required (not null)")
                return None
            col.check(value)
            if col.kind == "json":
                s = dump_json(value)
                if len(s.encode("utf-8")) > MAX_JSON:
                    raise BadValue(f"JSON longer than {MAX_JSON} bytes")
                return s
            return value
        except BadValue as exc:
            raise ConfigDBError(f"{where}{t.name}.{col.name}: value {value!r} {exc}",
                                table=t.name, column=col.name, value=value) from None

    def _check_key(self, t: Table, key: Any, where: str = "") -> str:
        return self._check_value(t, t.column(t.pk), key, where)

    @staticmethod
    def _decode(t: Table, values: Sequence[Any]) -> dict:
        row = {}
        for c, v in zip(t.columns, values, strict=False):
            row[c.name] = json.loads(v) if c.kind == "json" and v is not None else v
        return row

    def get(self, table: str, key: str) -> dict | None:
        t = self._table(table)
        key = self._check_key(t, key)
        rows = self._conn.execute(
            f"SELECT {', '.join(t.names)} FROM {t.name} WHERE {t.pk} = ?", (key,)).fetchall()
        return self._decode(t, rows[0]) if rows else None

    def list(self, table: str, limit: int | None = None) -> list[dict]:
        t = self._table(table)
        if limit is not None and (not is_int(limit) or limit < 0):
            raise ConfigDBError(f"limit must be None or an integer >= 0, not {limit!r}",
                                table=t.name, value=limit)
        sql = f"SELECT {', '.join(t.names)} FROM {t.name} ORDER BY {t.pk}"
        args: tuple = ()
        if limit is not None:
            sql += " LIMIT ?"
            args = (limit,)
        return [self._decode(t, r) for r in self._conn.execute(sql, args)]

    def count(self, table: str) -> int:
        t = self._table(table)
        return self._conn.execute(f"SELECT count(*) FROM {t.name}").fetchall()[0][0]

    def _validate_ops(self, ops: Any) -> list[tuple]:
        if not isinstance(ops, (list, tuple)):
            raise ConfigDBError(f"ops must be a list of operations, not {type(ops).__name__}")
        if not ops:
            raise ConfigDBError("ops is empty: nothing to write")
        plan: list[tuple] = []
        for i, op in enumerate(ops):
            where = f"ops[{i}]: "
            if not isinstance(op, dict):
                raise ConfigDBError(f"{where}must be an object, not {type(op).__name__}")
            kind = op.get("op")
            if kind == "put":
                keys = {"op", "table", "row"}
            elif kind == "delete":
                keys = {"op", "table", "key"}
            else:
                raise ConfigDBError(f"{where}op must be 'put' or 'delete', not {kind!r}",
                                    value=kind)
            if set(op) != keys:
                extra = sorted(map(str, set(op) - keys))
                missing = sorted(keys - set(op))
                raise ConfigDBError(f"{where}{kind} takes exactly {', '.join(sorted(keys))}"
                                    + (f"; unknown {', '.join(extra)}" if extra else "")
                                    + (f"; missing {', '.join(missing)}" if missing else ""))
            t = self._table(op["table"])
            if kind == "delete":
                plan.append(("delete", t, self._check_key(t, op["key"], where), where))
                continue
            row = op["row"]
            if not isinstance(row, dict) or not row:
                raise ConfigDBError(f"{where}row must be a non-empty object", table=t.name)
            stored: dict[str, Any] = {}
            for name, value in row.items():
                col = t.column(name) if isinstance(name, str) else None
                if col is None:
                    raise ConfigDBError(
                        f"{where}{t.name}: unknown column {name!r} "
                        f"(columns: {', '.join(t.names)})", table=t.name, column=name)
                stored[name] = self._check_value(t, col, value, where)
            if t.name == "subscribers" and "mwi_method" in stored:
                self._check_served(stored["mwi_method"], where)
            if t.pk not in stored:
                raise ConfigDBError(f"{where}{t.name}: the row needs its key column {t.pk!r}",
                                    table=t.name, column=t.pk)
            plan.append(("put", t, stored, where))
        return plan

    def _check_served(self, method: str, where: str) -> None:
        served = self.mwi_methods
        if served is None or method == "none" or method in served:
            return
        enabled = ", ".join([f"{m} ({d})" for m, d in sorted(served.items())] + ["none"])
        raise ConfigDBError(
            f"{where}subscribers.mwi_method: value {method!r} is not served on this pair: no "
            f"enabled driver sends {method} lamps (methods served here: {enabled}); nothing "
            "written", table="subscribers", column="mwi_method", value=method)

    def _exec_put(self, db: apsw.Connection, t: Table, row: dict, where: str) -> None:
        key = row[t.pk]
        exists = db.execute(f"SELECT 1 FROM {t.name} WHERE {t.pk} = ?", (key,)).fetchall()
        cols = list(row)
        try:
            if exists:
                rest = [c for c in cols if c != t.pk]
                if rest:
                    db.execute(f"UPDATE {t.name} SET " + ", ".join(f"{c} = ?" for c in rest)
                               + f" WHERE {t.pk} = ?", [row[c] for c in rest] + [key])
            else:
                missing = [c.name for c in t.columns if c.required and c.name not in row]
                if missing:
                    raise ConfigDBError(
                        f"{where}{t.name} {key!r} does not exist yet: a new row needs "
                        f"{', '.join(missing)}", table=t.name, column=missing[0], value=key)
                db.execute(f"INSERT INTO {t.name} ({', '.join(cols)}) VALUES "
                           f"({', '.join('?' * len(cols))})", [row[c] for c in cols])
        except apsw.ConstraintError as exc:
            raise self._constraint_error(db, t, row, where, exc) from None

    def _constraint_error(self, db: apsw.Connection, t: Table, row: dict, where: str,
                          exc: apsw.ConstraintError) -> ConfigDBError:
        m = re.search(r"UNIQUE constraint failed: (\w+)\.(\w+)", str(exc))
        if m and m.group(1) == t.name and m.group(2) in row:
            col, value = m.group(2), row[m.group(2)]
            other = db.execute(f"SELECT {t.pk} FROM {t.name} WHERE {col} = ?",
                               (value,)).fetchall()
            by = f" by {t.pk} {other[0][0]!r}" if other else ""
            return ConfigDBError(f"{where}{t.name}.{col}: value {value!r} is already used{by}",
                                 table=t.name, column=col, value=value)
        return ConfigDBError(f"{where}{t.name} {row.get(t.pk)!r}: {exc}", table=t.name,
                             value=row.get(t.pk))

    def write(self, term: int, ops: list[dict]) -> WriteResult:
        """Apply ``ops`` in one transaction and append their changeset to the log."""
        if not is_int(term) or term < 1 or term % 2 != term_parity(self.role):
            kind = "even" if term_parity(self.role) == 0 else "odd"
            raise ConfigDBError(f"term {term!r} is not a positive {kind} integer "
                                f"(the {self.role.label} writes {kind} terms)", value=term)
        plan = self._validate_ops(ops)
        with self._write_txn() as db:
            meta = self._meta(db)
            head_seq, head_term = meta["head_seq"], meta["head_term"]
            if term < head_term:
                raise ConfigDBError(f"term {term} is below the log head's term {head_term}",
                                    value=term)
            session = apsw.Session(db, "main")
            try:
                for name in TABLES:
                    session.attach(name)
                for step in plan:
                    if step[0] == "put":
                        self._exec_put(db, step[1], step[2], step[3])
                    else:
                        t, key, where = step[1], step[2], step[3]
                        db.execute(f"DELETE FROM {t.name} WHERE {t.pk} = ?", (key,))
                        if db.changes() == 0:
                            raise ConfigDBError(f"{where}{t.name} {key!r} does not exist",
                                                table=t.name, column=t.pk, value=key)
                        for dep in DELETED_WITH.get(t.name, ()):  # in the same changeset
                            db.execute(f"DELETE FROM {dep} WHERE {TABLES[dep].pk} = ?", (key,))
                cs = session.changeset()
            finally:
                session.close()
            if not cs:
                return WriteResult(head_seq, head_term, 0)
            changes = sum(1 for _ in apsw.Changeset.iter(cs))
            seq = head_seq + 1
            self._append(db, seq, term, cs)
        return WriteResult(seq, term, changes)
