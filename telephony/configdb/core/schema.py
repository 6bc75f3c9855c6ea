"""The schema of the configuration database: the replicated tables (columns, checks, the
DDL that creates them, the triggers that keep the rolling checksum) and the internal tables
(``_vmha_meta``, ``_vmha_log``, ``_vmha_conflicts``, never replicated).  Pure data and text.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from telephony.configdb.core.validators import (
    MWI_METHODS,
    v_actions,
    v_any_json,
    v_date,
    v_extension,
    v_flag,
    v_label,
    v_lamp_state,
    v_ledger_key,
    v_lock_state,
    v_mailbox,
    v_mwi,
    v_notify,
    v_notify_state,
    v_pin_record,
    v_rule_key,
    v_rules,
    v_stream_path,
)

SCHEMA_VERSION = 3


@dataclass(frozen=True)
class Column:
    name: str
    kind: str                       # "text" (stored as given) or "json" (stored as JSON text)
    required: bool                  # must be given when the row is created; never NULL
    check: Callable[[Any], None]    # raises ValueError (BadValue) with a message
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
    Table("pins", "extension", (
        _c("extension", "text", True, v_extension, "the subscriber's extension"),
        _c("pin", "json", False, v_pin_record,
           'null (no PIN set) or {"alg": "scrypt", "n", "r", "p", "salt": hex, "hash": hex}'),
        _c("skip_pin_from_own_phone", "json", True, v_flag,
           "true: a call from the subscriber's own extension opens the mailbox without a PIN"),
    ), ("length(extension) BETWEEN 1 AND 32 AND extension NOT GLOB '*[^0-9]*'",
        "skip_pin_from_own_phone IN ('true', 'false')"),
        "mailbox PINs (hash records only) and the skip-PIN opt-in, per subscriber"),
    Table("pin_lockouts", "extension", (
        _c("extension", "text", True, v_extension, "the subscriber's extension"),
        _c("state", "json", True, v_lock_state,
           '{"failures": n, "lockouts": n, "locked_until": epoch seconds (0: not locked), '
           '"term": t}'),
    ), ("json_valid(state)",), "wrong-PIN counts and lockouts (written by the active "
        "messaging service, so the peer enforces them after a failover)"),
)}
# tables added by each schema version (created when an older database is opened)
ADDED_IN = {2: ("mwi_ledger", "notifications"), 3: ("pins", "pin_lockouts")}


def table_ddl(t: Table) -> str:
    """The CREATE TABLE statement of a replicated table (every column TEXT, STRICT)."""
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


def trigger_ddl(t: Table) -> list[str]:
    """The triggers that keep the rolling checksum of ``t`` up to date on every change."""
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


INTERNAL_DDL = [
    "CREATE TABLE _vmha_meta (key TEXT PRIMARY KEY, value ANY) STRICT",
    "CREATE TABLE _vmha_log (seq INTEGER PRIMARY KEY, term INTEGER NOT NULL,"
    " digest BLOB NOT NULL, changeset BLOB NOT NULL) STRICT",
    "CREATE TABLE _vmha_conflicts (id INTEGER PRIMARY KEY,"
    " origin TEXT NOT NULL CHECK (origin IN ('local', 'peer')),"
    " reason TEXT NOT NULL, op TEXT, table_name TEXT NOT NULL, pk TEXT NOT NULL,"
    " local_row TEXT, remote_row TEXT, peer_term INTEGER NOT NULL, peer_seq INTEGER NOT NULL,"
    " recorded_at TEXT NOT NULL) STRICT",
]
META_DEFAULTS = {"schema_version": SCHEMA_VERSION, "checksum": 0, "head_seq": 0,
                  "head_term": 0, "applied_seq": 0, "applied_term": 0, "acked_seq": 0,
                  "dropped_unacked": 0}
