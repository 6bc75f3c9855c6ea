"""The configuration database: SQLite through ``apsw``, replicated both ways between the pair.

Layers, all synchronous and used from one worker thread at a time (the caller serialises):

* **repository** — five replicated tables (``TABLES``) with natural text primary keys, so that
  the "same" object created on both nodes collides; every value is validated in Python before
  any SQL runs (``ConfigDBError`` names the table, column and value) and a failed write changes
  nothing;
* **change log** — every :meth:`ConfigDB.write` is one transaction whose changes are captured
  with the SQLite session extension and appended to ``_vmha_log`` (seq, term, sha256 digest,
  changeset) in the same transaction;
* **remote apply** — :meth:`ConfigDB.apply_remote` applies the peer's log entries with the
  conflict rule *primary wins*, records what each conflict overwrote or dropped in
  ``_vmha_conflicts``, and never captures them in our own log;
* **rolling checksum** — an order-independent u64 over every row of every replicated table,
  kept incrementally by triggers; two nodes whose positions line up compare it to detect
  divergence (:meth:`ConfigDB.diverged`);
* **snapshots** — a full copy of the replicated tables as one changeset of INSERTs, for a
  peer whose position was pruned from the log or whose data diverged.

Internal tables (``_vmha_log``, ``_vmha_meta``, ``_vmha_conflicts``) are never replicated.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import apsw

from failover.core.state import Role, term_parity

SCHEMA_VERSION = 2
_U64 = (1 << 64) - 1
BUSY_TIMEOUT_MS = 5000


# --------------------------------------------------------------------------- errors

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


# --------------------------------------------------------------------------- result types

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


# --------------------------------------------------------------------------- validators

class _Bad(ValueError):
    pass


_EXTENSION = re.compile(r"[0-9]{1,32}")
_MAILBOX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_RULE_KEY = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]{1,64}@"
                    r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)+")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]|24:00")
MWI_METHODS = ("sip", "smdi", "sccp", "dtmf", "none")
ACTION_KEYS = "0123456789*#"
MAX_JSON = 64 * 1024


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad(f"must be a string, not {type(v).__name__}")
    return v


def _no_controls(s: str) -> None:
    if any(ord(c) < 32 or ord(c) == 127 for c in s):
        raise _Bad("must not contain control characters")


def v_extension(v: Any) -> None:
    if not _EXTENSION.fullmatch(_str(v)):
        raise _Bad("must be 1 to 32 digits")


def v_label(v: Any) -> None:
    """A display name or object name: 1..200 characters, no control characters, trimmed."""
    s = _str(v)
    if not s or len(s) > 200:
        raise _Bad("must be 1 to 200 characters")
    if s != s.strip():
        raise _Bad("must not start or end with white space")
    _no_controls(s)


def v_mailbox(v: Any) -> None:
    if not _MAILBOX.fullmatch(_str(v)):
        raise _Bad("must be 1 to 64 of A-Z a-z 0-9 _ . - (not starting with _ . -)")


def v_mwi(v: Any) -> None:
    if _str(v) not in MWI_METHODS:
        raise _Bad(f"must be one of {', '.join(MWI_METHODS)}")


def v_email(v: Any) -> None:
    s = _str(v)
    if len(s) > 254 or not _EMAIL.fullmatch(s):
        raise _Bad("is not an e-mail address")


def v_stream_path(v: Any) -> None:
    """A file under streams/: relative POSIX path, no empty, '.' or '..' component."""
    s = _str(v)
    if not s or len(s.encode("utf-8")) > 1024:
        raise _Bad("must be 1 to 1024 bytes")
    if s.startswith("/") or "\\" in s or "\x00" in s:
        raise _Bad("must be a relative path under streams/ (no leading /, no backslash)")
    _no_controls(s)
    if any(part in ("", ".", "..") for part in s.split("/")):
        raise _Bad("must not contain empty, '.' or '..' components")


def v_notify(v: Any) -> None:
    if not isinstance(v, list):
        raise _Bad("must be a list of {\"type\": \"email\", \"address\": ...}")
    if len(v) > 16:
        raise _Bad("at most 16 notification devices")
    for i, d in enumerate(v):
        if not isinstance(d, dict) or set(d) != {"type", "address"}:
            raise _Bad(f"item {i} must be an object with exactly 'type' and 'address'")
        if d["type"] != "email":
            raise _Bad(f"item {i}: type must be 'email', not {d['type']!r}")
        try:
            v_email(d["address"])
        except _Bad as exc:
            raise _Bad(f"item {i}: address {d['address']!r} {exc}") from None


def v_actions(v: Any) -> None:
    if not isinstance(v, dict):
        raise _Bad("must be an object mapping a digit (0-9, *, #) to a target")
    for k, target in v.items():
        if not isinstance(k, str) or len(k) != 1 or k not in ACTION_KEYS:
            raise _Bad(f"key {k!r} is not one of 0-9, *, #")
        try:
            v_label(target)
        except _Bad as exc:
            raise _Bad(f"target of {k!r}: {exc}") from None


def _minutes(t: str) -> int:
    return int(t[:2]) * 60 + int(t[3:])


def v_rules(v: Any) -> None:
    if not isinstance(v, list):
        raise _Bad("must be a list of {\"days\": [0..6], \"start\": \"HH:MM\", \"end\": \"HH:MM\"}")
    if len(v) > 64:
        raise _Bad("at most 64 rules")
    for i, r in enumerate(v):
        if not isinstance(r, dict) or set(r) != {"days", "start", "end"}:
            raise _Bad(f"rule {i} must be an object with exactly 'days', 'start' and 'end'")
        days = r["days"]
        if (not isinstance(days, list) or not days
                or any(type(d) is not int or not 0 <= d <= 6 for d in days)
                or len(set(days)) != len(days)):
            raise _Bad(f"rule {i}: days must be a non-empty list of distinct integers 0..6")
        for key in ("start", "end"):
            t = r[key]
            if not isinstance(t, str) or not _TIME.fullmatch(t):
                raise _Bad(f"rule {i}: {key} {t!r} is not HH:MM (00:00 to 24:00)")
        if _minutes(r["start"]) >= _minutes(r["end"]):
            raise _Bad(f"rule {i}: start {r['start']} must be before end {r['end']}")


def v_date(v: Any) -> None:
    s = _str(v)
    if not _DATE.fullmatch(s):
        raise _Bad("must be YYYY-MM-DD")
    try:
        _dt.date.fromisoformat(s)
    except ValueError:
        raise _Bad("is not a calendar date") from None


def v_rule_key(v: Any) -> None:
    if not _RULE_KEY.fullmatch(_str(v)):
        raise _Bad("must be 1 to 64 of a-z 0-9 _ . - starting with a letter")


def _json_check(v: Any, depth: int = 0) -> None:
    if depth > 32:
        raise _Bad("nested too deeply")
    if v is None or isinstance(v, (bool, int, str)):
        return
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise _Bad("NaN and infinity are not JSON")
        return
    if isinstance(v, list):
        for x in v:
            _json_check(x, depth + 1)
        return
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise _Bad(f"object key {k!r} is not a string")
            _json_check(x, depth + 1)
        return
    raise _Bad(f"{type(v).__name__} is not a JSON value")


def v_any_json(v: Any) -> None:
    _json_check(v)


def _fields(v: Any, spec: dict[str, type]) -> None:
    if not isinstance(v, dict) or set(v) != set(spec):
        raise _Bad(f"must be an object with exactly the keys {', '.join(sorted(spec))}")
    for k, t in spec.items():
        x = v[k]
        if t is int and (isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < 2**63):
            raise _Bad(f"{k} must be a non-negative integer")
        if t is bool and not isinstance(x, bool):
            raise _Bad(f"{k} must be true or false")


def v_lamp_state(v: Any) -> None:
    _fields(v, {"on": bool, "new": int, "old": int, "confirmed": bool, "term": int})


def v_notify_state(v: Any) -> None:
    _fields(v, {"term": int, "sent": bool})


_LEDGER_KEY = re.compile(r"[\x21-\x7e]{1,400}")


def v_ledger_key(v: Any) -> None:
    if not _LEDGER_KEY.fullmatch(_str(v)):
        raise _Bad("must be 1 to 400 printable ASCII characters without spaces")


def _dump_json(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


# --------------------------------------------------------------------------- table specs

@dataclass(frozen=True)
class Column:
    name: str
    kind: str                       # "text" (stored as given) or "json" (stored as JSON text)
    required: bool                  # must be given when the row is created; never NULL
    check: Callable[[Any], None]    # raises ValueError (_Bad) with a message
    unique: bool = False
    doc: str = ""

    @property
    def nullable(self) -> bool:
        return not self.required


@dataclass(frozen=True)
class Table:
    name: str
    pk: str
    columns: tuple[Column, ...]
    ddl_checks: tuple[str, ...] = ()    # extra CHECK constraints (defence against bad peers)
    doc: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def pk_index(self) -> int:
        return self.names.index(self.pk)

    def column(self, name: str) -> Column | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None


def _c(name: str, kind: str, required: bool, check: Callable[[Any], None], doc: str,
       unique: bool = False) -> Column:
    return Column(name, kind, required, check, unique, doc)


_JSON_VALID = "json_valid({0})"
TABLES: dict[str, Table] = {t.name: t for t in (
    Table("subscribers", "extension", (
        _c("extension", "text", True, v_extension, "1 to 32 digits"),
        _c("name", "text", True, v_label, "display name"),
        _c("mailbox", "text", True, v_mailbox, "mailbox id (unique)", unique=True),
        _c("mwi_method", "text", True, v_mwi, "one of " + ", ".join(MWI_METHODS)),
        _c("notify", "json", True, v_notify,
           'JSON list of {"type": "email", "address": ...}'),
        _c("greeting", "text", False, v_stream_path, "file under streams/ or null"),
    ), ("mwi_method IN ('sip','smdi','sccp','dtmf','none')", "json_valid(notify)",
        "length(extension) BETWEEN 1 AND 32 AND extension NOT GLOB '*[^0-9]*'"),
        "voice-mail subscribers"),
    Table("call_handlers", "name", (
        _c("name", "text", True, v_label, "handler name"),
        _c("extension", "text", False, v_extension, "1 to 32 digits (unique) or null",
           unique=True),
        _c("greeting", "text", False, v_stream_path, "file under streams/ or null"),
        _c("schedule", "text", False, v_label, "schedule name or null"),
        _c("actions", "json", True, v_actions, "JSON object: digit (0-9, *, #) -> target"),
    ), ("json_valid(actions)",), "call handlers (auto attendants)"),
    Table("schedules", "name", (
        _c("name", "text", True, v_label, "schedule name"),
        _c("rules", "json", True, v_rules,
           'JSON list of {"days": [0..6], "start": "HH:MM", "end": "HH:MM"}'),
    ), ("json_valid(rules)",), "open-hours schedules"),
    Table("holidays", "date", (
        _c("date", "text", True, v_date, "YYYY-MM-DD"),
        _c("name", "text", True, v_label, "holiday name"),
    ), (), "holidays"),
    Table("system_rules", "key", (
        _c("key", "text", True, v_rule_key, "rule key"),
        _c("value", "json", True, v_any_json, "any JSON value"),
    ), ("json_valid(value)",), "system-wide rules"),
    Table("mwi_ledger", "mailbox", (
        _c("mailbox", "text", True, v_mailbox, "mailbox id"),
        _c("extension", "text", True, v_extension, "the lamp's extension"),
        _c("state", "json", True, v_lamp_state,
           '{"on": desired lamp, "new": n, "old": n, "confirmed": sent and confirmed, "term": t}'),
    ), ("json_valid(state)",), "MWI ledger: each mailbox's desired lamp (written by the active "
        "messaging service)"),
    Table("notifications", "key", (
        _c("key", "text", True, v_ledger_key, "message id + device"),
        _c("state", "json", True, v_notify_state, '{"term": t, "sent": true|false}'),
    ), ("json_valid(state)",), "notification ledger: each message notification sent once"),
)}
# tables added by each schema version (created when an older database is opened)
_ADDED_IN = {2: ("mwi_ledger", "notifications")}


def _table_ddl(t: Table) -> str:
    cols = []
    for c in t.columns:
        s = f"{c.name} TEXT"
        if c.name == t.pk:
            s += " NOT NULL PRIMARY KEY"
        elif c.required:
            s += " NOT NULL"
        if c.unique:
            s += " UNIQUE"
        cols.append(s)
    cols += [f"CHECK ({chk})" for chk in t.ddl_checks]
    return f"CREATE TABLE {t.name} (\n  " + ",\n  ".join(cols) + "\n) STRICT"


def _trigger_ddl(t: Table) -> list[str]:
    def h(alias: str) -> str:
        return f"vmha_row_hash('{t.name}', " + ", ".join(f"{alias}.{n}" for n in t.names) + ")"
    upd = "UPDATE _vmha_meta SET value = {expr} WHERE key = 'checksum';"
    return [
        f"CREATE TRIGGER _vmha_ck_{t.name}_ins AFTER INSERT ON {t.name} BEGIN "
        + upd.format(expr=f"vmha_ck_add(value, {h('NEW')})") + " END",
        f"CREATE TRIGGER _vmha_ck_{t.name}_del AFTER DELETE ON {t.name} BEGIN "
        + upd.format(expr=f"vmha_ck_sub(value, {h('OLD')})") + " END",
        f"CREATE TRIGGER _vmha_ck_{t.name}_upd AFTER UPDATE ON {t.name} BEGIN "
        + upd.format(expr=f"vmha_ck_add(vmha_ck_sub(value, {h('OLD')}), {h('NEW')})")
        + " END",
    ]


_INTERNAL_DDL = [
    "CREATE TABLE _vmha_meta (key TEXT PRIMARY KEY, value ANY) STRICT",
    "CREATE TABLE _vmha_log (seq INTEGER PRIMARY KEY, term INTEGER NOT NULL,"
    " digest BLOB NOT NULL, changeset BLOB NOT NULL) STRICT",
    "CREATE TABLE _vmha_conflicts (id INTEGER PRIMARY KEY,"
    " origin TEXT NOT NULL CHECK (origin IN ('local', 'peer')),"
    " reason TEXT NOT NULL, op TEXT, table_name TEXT NOT NULL, pk TEXT NOT NULL,"
    " local_row TEXT, remote_row TEXT, peer_term INTEGER NOT NULL, peer_seq INTEGER NOT NULL,"
    " recorded_at TEXT NOT NULL) STRICT",
]
_META_DEFAULTS = {"schema_version": SCHEMA_VERSION, "checksum": 0, "head_seq": 0,
                  "head_term": 0, "applied_seq": 0, "applied_term": 0, "acked_seq": 0,
                  "dropped_unacked": 0}


# --------------------------------------------------------------------------- row hash

def _enc(v: Any) -> bytes:
    if v is None:
        return b"N"
    if isinstance(v, int):
        return b"I" + v.to_bytes(8, "little", signed=True)
    if isinstance(v, float):
        return b"F" + struct.pack("<d", v)
    if isinstance(v, str):
        b = v.encode("utf-8", "surrogatepass")
        return b"T" + len(b).to_bytes(4, "little") + b
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        return b"B" + len(b).to_bytes(4, "little") + b
    raise TypeError(f"cannot hash {type(v).__name__}")


def row_hash(table: str, values: Sequence[Any]) -> int:
    """Unsigned 64-bit hash of one row: blake2b-64 of the table name and the type-tagged
    column values in column order."""
    h = hashlib.blake2b(digest_size=8, person=b"vmha-row-v1")
    h.update(_enc(table))
    h.update(len(values).to_bytes(2, "little"))
    for v in values:
        h.update(_enc(v))
    return int.from_bytes(h.digest(), "little")


def _signed(u: int) -> int:
    u &= _U64
    return u - (1 << 64) if u >> 63 else u


def _sql_row_hash(table: str, *values: Any) -> int:
    return _signed(row_hash(table, values))


def _sql_ck_add(acc: int, h: int) -> int:
    return _signed(acc + h)


def _sql_ck_sub(acc: int, h: int) -> int:
    return _signed(acc - h)


# --------------------------------------------------------------------------- the database

_REASONS = {
    apsw.SQLITE_CHANGESET_DATA: "data",
    apsw.SQLITE_CHANGESET_NOTFOUND: "notfound",
    apsw.SQLITE_CHANGESET_CONFLICT: "conflict",
    apsw.SQLITE_CHANGESET_CONSTRAINT: "constraint",
    apsw.SQLITE_CHANGESET_FOREIGN_KEY: "foreign_key",
}


@dataclass
class _Conflict:
    origin: str
    reason: str
    op: str | None
    table: str
    pk: Any
    local_row: dict | None
    remote_row: dict | None
    peer_term: int
    peer_seq: int


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _is_int(v: Any) -> bool:
    return type(v) is int


class ConfigDB:
    """One node's configuration database.  Not thread-safe: one caller at a time."""

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
        if not _is_int(log_keep) or log_keep < 0:
            raise ConfigDBError(f"log_keep must be an integer >= 0, not {log_keep!r}")
        if not _is_int(log_max) or log_max < 1:
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
            self._db.set_busy_timeout(BUSY_TIMEOUT_MS)
            self._check_foreign()  # before switching a foreign file to WAL
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
            if str(mode).lower() != "wal":
                raise ConfigDBError(f"{self.path}: cannot use WAL journal mode (got {mode})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.create_scalar_function("vmha_row_hash", _sql_row_hash, -1,
                                            deterministic=True)
            self._db.create_scalar_function("vmha_ck_add", _sql_ck_add, 2, deterministic=True)
            self._db.create_scalar_function("vmha_ck_sub", _sql_ck_sub, 2, deterministic=True)
            self._init_schema()
        except BaseException:
            self._db.close()
            self._db = None
            raise

    # ----------------------------------------------------------------- plumbing

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> "ConfigDB":
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
                    for name in _ADDED_IN.get(v, ()):
                        db.execute(_table_ddl(TABLES[name]))
                        for ddl in _trigger_ddl(TABLES[name]):
                            db.execute(ddl)
                db.execute("UPDATE _vmha_meta SET value = ? WHERE key = 'schema_version'",
                           (SCHEMA_VERSION,))
                return
            self._refuse_foreign(have)
            for ddl in _INTERNAL_DDL:
                db.execute(ddl)
            for t in TABLES.values():
                db.execute(_table_ddl(t))
                for ddl in _trigger_ddl(t):
                    db.execute(ddl)
            db.executemany("INSERT INTO _vmha_meta (key, value) VALUES (?, ?)",
                           list(_META_DEFAULTS.items()))

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
                         checksum=m["checksum"] & _U64)

    # ----------------------------------------------------------------- repository: reads

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
                    raise _Bad("is required (not null)")
                return None
            col.check(value)
            if col.kind == "json":
                s = _dump_json(value)
                if len(s.encode("utf-8")) > MAX_JSON:
                    raise _Bad(f"JSON longer than {MAX_JSON} bytes")
                return s
            return value
        except _Bad as exc:
            raise ConfigDBError(f"{where}{t.name}.{col.name}: value {value!r} {exc}",
                                table=t.name, column=col.name, value=value) from None

    def _check_key(self, t: Table, key: Any, where: str = "") -> str:
        return self._check_value(t, t.column(t.pk), key, where)

    @staticmethod
    def _decode(t: Table, values: Sequence[Any]) -> dict:
        row = {}
        for c, v in zip(t.columns, values):
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
        if limit is not None and (not _is_int(limit) or limit < 0):
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

    # ----------------------------------------------------------------- repository: writes

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
        if not _is_int(term) or term < 1 or term % 2 != term_parity(self.role):
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
                cs = session.changeset()
            finally:
                session.close()
            if not cs:
                return WriteResult(head_seq, head_term, 0)
            changes = sum(1 for _ in apsw.Changeset.iter(cs))
            seq = head_seq + 1
            db.execute("INSERT INTO _vmha_log (seq, term, digest, changeset) VALUES (?,?,?,?)",
                       (seq, term, hashlib.sha256(cs).digest(), cs))
            self._set_meta(db, head_seq=seq, head_term=term)
            self._enforce_log_max(db)
        return WriteResult(seq, term, changes)

    # ----------------------------------------------------------------- our log

    def state(self) -> ReplState:
        with self._read_txn() as db:
            return self._state(db)

    def entries_after(self, seq: int, *, max_entries: int = 500,
                      max_bytes: int = 1 << 20) -> list[LogEntry]:
        """Our log entries after ``seq`` (the peer's applied position), oldest first."""
        for name, v, low in (("seq", seq, 0), ("max_entries", max_entries, 1),
                             ("max_bytes", max_bytes, 1)):
            if not _is_int(v) or v < low:
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
        if not _is_int(seq) or seq < 0:
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

    # ----------------------------------------------------------------- checksum

    def checksum(self) -> int:
        return self._conn.execute(
            "SELECT value FROM _vmha_meta WHERE key = 'checksum'").fetchall()[0][0] & _U64

    def recompute_checksum(self) -> int:
        """The checksum computed from scratch (the incremental one is ``state().checksum``)."""
        total = 0
        with self._read_txn() as db:
            for t in TABLES.values():
                for row in db.execute(f"SELECT {', '.join(t.names)} FROM {t.name}"):
                    total += row_hash(t.name, row)
        return total & _U64

    # ----------------------------------------------------------------- applying the peer's log

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
        except apsw.Error as exc:
            raise Refused("corrupt", seq, f"changeset does not parse: {exc}") from None
        return rows

    @staticmethod
    def _check_entry(e: Any) -> None:
        for name, low in (("term", 0), ("seq", 1)):
            v = getattr(e, name, None)
            if not _is_int(v) or v < low:
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

        recorded: list[_Conflict] = []
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
                    remote = {c: v for c, v in zip(t.names, new_v) if v is not apsw.no_change}
                    remote.setdefault(t.pk, key)
                local = dict(zip(t.names, tc.conflict)) if tc.conflict is not None else None
                recorded.append(_Conflict(origin, _REASONS.get(reason, str(reason)), tc.op,
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
                    if errors:
                        raise errors[0]
                    raise
                if errors:
                    raise errors[0]
            self._insert_conflicts(db, recorded)
            self._set_meta(db, applied_seq=new[-1].seq, applied_term=new[-1].term)
        st = self.state()
        return ApplyResult(st.applied_seq, st.applied_term, len(recorded), st.checksum)

    def _insert_conflicts(self, db: apsw.Connection, recorded: list[_Conflict]) -> None:
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
                            c.local_row = dict(zip(t.names, hit[0]))
                            break
            db.execute(
                "INSERT INTO _vmha_conflicts (origin, reason, op, table_name, pk, local_row,"
                " remote_row, peer_term, peer_seq, recorded_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (c.origin, c.reason, c.op, c.table, json.dumps(c.pk),
                 None if c.local_row is None else json.dumps(c.local_row, sort_keys=True),
                 None if c.remote_row is None else json.dumps(c.remote_row, sort_keys=True),
                 c.peer_term, c.peer_seq, when))

    # ----------------------------------------------------------------- snapshots

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
            if not _is_int(v) or not 0 <= v <= _U64:
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
        lost: list[_Conflict] = []
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
                    lost.append(_Conflict("local", "snapshot", None, t.name, key,
                                          dict(zip(t.names, row)),
                                          None if other is None else dict(zip(t.names, other)),
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
            ck = self._meta(db)["checksum"] & _U64
            if ck != snap.checksum:
                raise Refused("checksum", snap.head_seq,
                              f"checksum after install {ck:016x} != snapshot's "
                              f"{snap.checksum:016x}")
        return InstallResult(len(lost), ck)

    # ----------------------------------------------------------------- reporting

    def diverged(self, peer: Any) -> bool | None:
        """None when the positions do not line up (something is still in flight), else
        whether the checksums differ."""
        st = self.state()
        if st.head_seq != peer.applied_seq or st.applied_seq != peer.head_seq:
            return None
        return st.checksum != (peer.checksum & _U64)

    def conflicts(self, limit: int = 100) -> list[dict]:
        """Recorded conflicts, newest first."""
        if not _is_int(limit) or limit < 0:
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
