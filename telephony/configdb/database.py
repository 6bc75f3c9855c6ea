"""The configuration database's connection: opening the SQLite file (WAL, ``synchronous=FULL``,
the checksum functions), creating or upgrading the schema, the transactions every layer runs
in, and the ``_vmha_meta`` row that holds the log positions.  The layers build on it:
:mod:`~telephony.configdb.changelog`, :mod:`~telephony.configdb.repository`,
:mod:`~telephony.configdb.remote`, :mod:`~telephony.configdb.snapshots`."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import apsw

from telephony.configdb.core.checksum import U64, sql_ck_add, sql_ck_sub, sql_row_hash
from telephony.configdb.core.errors import ConfigDBError, DiskFull
from telephony.configdb.core.results import ReplState
from telephony.configdb.core.schema import (
    ADDED_IN,
    INTERNAL_DDL,
    META_DEFAULTS,
    SCHEMA_VERSION,
    TABLES,
    table_ddl,
    trigger_ddl,
)
from telephony.configdb.core.validators import MWI_METHODS, is_int
from telephony.core.terms import Role

BUSY_TIMEOUT_MS = 5000


def _owner_only(path: Path) -> None:
    """Make the database file (created on open) and any -wal/-shm beside it mode 0600."""
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if p.stat().st_mode & 0o077:
                os.chmod(p, 0o600)
        except FileNotFoundError:
            pass


class Database:
    """One node's configuration database file, open.  Not thread-safe: one caller at a time.
    :class:`~telephony.configdb.ConfigDB` is this plus its layers."""

    def __init__(self, path: Path, *, role: Role, log_keep: int = 1000,
                 log_max: int = 100_000,
                 mwi_methods: dict[str, str] | None = None) -> None:
        """``mwi_methods``: the subscriber MWI methods this pair serves, ``{method: the
        driver that sends its lamps}`` (``integrations.base.mwi_drivers``); a write that gives
        a subscriber a method not in it (other than ``none``) is refused.  None: no such check
        (tools and tests that hold no node configuration).  The peer's changes are not
        checked: its node manager did."""
        if not isinstance(role, Role):
            raise ConfigDBError(f"role must be a Role, not {role!r}")
        if not is_int(log_keep) or log_keep < 0:
            raise ConfigDBError(f"log_keep must be an integer >= 0, not {log_keep!r}")
        if not is_int(log_max) or log_max < 1:
            raise ConfigDBError(f"log_max must be an integer >= 1, not {log_max!r}")
        if mwi_methods is not None and not (
                isinstance(mwi_methods, dict)
                and all(m in MWI_METHODS and m != "none" and isinstance(d, str)
                        for m, d in mwi_methods.items())):
            raise ConfigDBError(f"mwi_methods must map methods of {', '.join(MWI_METHODS[:-1])} "
                                f"to driver names, not {mwi_methods!r}")
        self.mwi_methods = None if mwi_methods is None else dict(mwi_methods)
        self.path = Path(path)
        self.role = role
        self.log_keep = log_keep
        self.log_max = log_max
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db: apsw.Connection | None = apsw.Connection(str(self.path))
        try:
            _owner_only(self.path)  # files at rest: PIN hashes, subscribers (its -wal and
            # -shm files are created by SQLite with the database file's mode)
            self._db.set_busy_timeout(BUSY_TIMEOUT_MS)
            self._check_foreign()  # before switching a foreign file to WAL
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
            if str(mode).lower() != "wal":
                raise ConfigDBError(f"{self.path}: cannot use WAL journal mode (got {mode})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.create_scalar_function("vmha_row_hash", sql_row_hash, -1,
                                            deterministic=True)
            self._db.create_scalar_function("vmha_ck_add", sql_ck_add, 2, deterministic=True)
            self._db.create_scalar_function("vmha_ck_sub", sql_ck_sub, 2, deterministic=True)
            self._init_schema()
        except BaseException:
            self._db.close()
            self._db = None
            raise

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _conn(self) -> apsw.Connection:
        if self._db is None:
            raise ConfigDBError(f"{self.path}: the database is closed")
        return self._db

    def _rollback(self) -> None:
        db = self._conn
        if not db.get_autocommit():
            db.execute("ROLLBACK")

    @contextmanager
    def _write_txn(self) -> Iterator[apsw.Connection]:
        db = self._conn
        try:
            db.execute("BEGIN IMMEDIATE")
        except apsw.FullError as exc:
            raise DiskFull(f"{self.path}: {exc}") from exc
        try:
            yield db
            db.execute("COMMIT")
        except apsw.FullError as exc:
            self._rollback()
            raise DiskFull(f"{self.path}: disk full, nothing changed ({exc})") from exc
        except BaseException:
            self._rollback()
            raise

    @contextmanager
    def _read_txn(self) -> Iterator[apsw.Connection]:
        db = self._conn
        db.execute("BEGIN")
        try:
            yield db
        finally:
            if not db.get_autocommit():
                db.execute("COMMIT")

    def _init_schema(self) -> None:
        with self._write_txn() as db:
            have = {r[0] for r in db.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table'")}
            if "_vmha_meta" in have:
                ver = db.execute(
                    "SELECT value FROM _vmha_meta WHERE key = 'schema_version'").fetchall()
                have_ver = ver[0][0] if ver else None
                if not isinstance(have_ver, int) or not 1 <= have_ver <= SCHEMA_VERSION:
                    raise ConfigDBError(
                        f"{self.path}: schema version {have_ver!r}, "
                        f"this program needs {SCHEMA_VERSION}")
                for v in range(have_ver + 1, SCHEMA_VERSION + 1):  # upgrade in place
                    for name in ADDED_IN.get(v, ()):
                        db.execute(table_ddl(TABLES[name]))
                        for ddl in trigger_ddl(TABLES[name]):
                            db.execute(ddl)
                db.execute("UPDATE _vmha_meta SET value = ? WHERE key = 'schema_version'",
                           (SCHEMA_VERSION,))
                return
            self._refuse_foreign(have)
            for ddl in INTERNAL_DDL:
                db.execute(ddl)
            for t in TABLES.values():
                db.execute(table_ddl(t))
                for ddl in trigger_ddl(t):
                    db.execute(ddl)
            db.executemany("INSERT INTO _vmha_meta (key, value) VALUES (?, ?)",
                           list(META_DEFAULTS.items()))

    def _check_foreign(self) -> None:
        with self._read_txn() as db:
            self._refuse_foreign({r[0] for r in db.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table'")})

    def _refuse_foreign(self, have: set[str]) -> None:
        if "_vmha_meta" in have:
            return
        clash = have & (set(TABLES) | {"_vmha_log", "_vmha_conflicts"})
        if clash:
            raise ConfigDBError(f"{self.path}: not a vmha configuration database "
                                f"(has {', '.join(sorted(clash))} but no _vmha_meta)")

    def _meta(self, db: apsw.Connection) -> dict[str, Any]:
        return {k: v for k, v in db.execute("SELECT key, value FROM _vmha_meta")}

    def _set_meta(self, db: apsw.Connection, **kv: Any) -> None:
        db.executemany("UPDATE _vmha_meta SET value = ? WHERE key = ?",
                       [(v, k) for k, v in kv.items()])

    def _first_seq(self, db: apsw.Connection, head_seq: int) -> int:
        first = db.execute("SELECT min(seq) FROM _vmha_log").fetchall()[0][0]
        return head_seq + 1 if first is None else first

    def _state(self, db: apsw.Connection) -> ReplState:
        m = self._meta(db)
        return ReplState(head_seq=m["head_seq"], head_term=m["head_term"],
                         first_seq=self._first_seq(db, m["head_seq"]),
                         applied_seq=m["applied_seq"], applied_term=m["applied_term"],
                         checksum=m["checksum"] & U64)

    def state(self) -> ReplState:
        with self._read_txn() as db:
            return self._state(db)
