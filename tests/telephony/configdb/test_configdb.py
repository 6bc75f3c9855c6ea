"""telephony/configdb/ as one ConfigDB: repository, change log, remote apply with the
primary-wins rule, rolling checksum and snapshots, on two real SQLite files (a primary and a
secondary) between which the tests ship log entries by hand (entries_after -> apply_remote ->
mark_acked)."""
from __future__ import annotations

import hashlib
import tempfile
from dataclasses import replace
from pathlib import Path

import apsw
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from telephony.configdb import (
    TABLES,
    ConfigDB,
    ConfigDBError,
    DiskFull,
    LogEntry,
    LogGap,
    Refused,
    ReplState,
    row_hash,
)
from telephony.core.terms import Role

P_TERM = 2  # the primary writes even terms
S_TERM = 1  # the secondary odd ones


# --------------------------------------------------------------------------- helpers

def sub(ext: str, name: str = "Someone", mailbox: str | None = None, mwi: str = "sip",
        notify: list | None = None, greeting: str | None = None) -> dict:
    return {"extension": ext, "name": name, "mailbox": mailbox or ext, "mwi_method": mwi,
            "notify": notify if notify is not None else [
                {"type": "email", "address": f"u{ext}@example.com"}],
            "greeting": greeting}


def put(table: str, row: dict) -> dict:
    return {"op": "put", "table": table, "row": row}


def delete(table: str, key: str) -> dict:
    return {"op": "delete", "table": table, "key": key}


def rows(db: ConfigDB) -> dict[str, list[dict]]:
    return {t: db.list(t) for t in TABLES}


def fingerprint(db: ConfigDB) -> tuple:
    """Everything observable: positions, rows, the whole log, conflicts, counters."""
    st_ = db.state()
    log = db.entries_after(st_.first_seq - 1, max_entries=1 << 30, max_bytes=1 << 40)
    return st_, rows(db), log, db.conflicts(limit=1 << 30), db.stats()


def ship(src: ConfigDB, dst: ConfigDB, *, batch: int = 500) -> int:
    """Ship all of src's log to dst in batches, acking as a real sender would.
    Returns the conflicts dst recorded."""
    conflicts = 0
    while True:
        entries = src.entries_after(dst.state().applied_seq, max_entries=batch)
        if not entries:
            return conflicts
        res = dst.apply_remote(entries, src.role)
        assert res.applied_seq == entries[-1].seq  # progress: never loop forever
        conflicts += res.conflicts
        src.mark_acked(res.applied_seq)


def exchange(p: ConfigDB, s: ConfigDB) -> None:
    ship(p, s)
    ship(s, p)


def assert_converged(p: ConfigDB, s: ConfigDB) -> None:
    assert rows(p) == rows(s)
    assert p.state().checksum == s.state().checksum == p.recompute_checksum() \
        == s.recompute_checksum()
    assert p.diverged(s.state()) is False
    assert s.diverged(p.state()) is False


def forge(term: int, seq: int, changeset: bytes) -> LogEntry:
    return LogEntry(term, seq, hashlib.sha256(changeset).digest(), changeset)


def foreign_changeset(tmp_path: Path, ddl: str, dml: str, table: str) -> bytes:
    """A well-formed changeset made on some other database (not a ConfigDB)."""
    db = apsw.Connection(str(tmp_path / f"foreign-{table}.db"))
    db.execute(ddl)
    session = apsw.Session(db, "main")
    session.attach(table)
    db.execute(dml)
    cs = session.changeset()
    session.close()
    db.close()
    return cs


@pytest.fixture
def pair(tmp_path):
    p = ConfigDB(tmp_path / "primary" / "config.db", role=Role.PRIMARY)
    s = ConfigDB(tmp_path / "secondary" / "config.db", role=Role.SECONDARY)
    yield p, s
    p.close()
    s.close()


@pytest.fixture
def seeded(pair):
    """Both nodes hold the same base configuration (written on the primary, shipped)."""
    p, s = pair
    p.write(P_TERM, [
        put("subscribers", sub("1001", "Ann", mailbox="mb-1001")),
        put("subscribers", sub("1002", "Bob", mailbox="mb-1002")),
        put("schedules", {"name": "office", "rules": [
            {"days": [0, 1, 2, 3, 4], "start": "08:00", "end": "17:30"}]}),
        put("call_handlers", {"name": "Main", "extension": "2000", "schedule": "office",
                              "actions": {"0": "operator", "1": "1001"}}),
        put("holidays", {"date": "2025-01-01", "name": "New Year"}),
        put("system_rules", {"key": "max_message_seconds", "value": 300}),
    ])
    ship(p, s)
    assert_converged(p, s)
    return p, s


# --------------------------------------------------------------------------- schema / open

def test_open_uses_wal_full_sync_strict_tables(pair, tmp_path):
    p, _ = pair
    conn = p._conn
    assert conn.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchall()[0][0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchall()[0][0] > 0
    strict = {name: flag for _, name, _, _, _, flag in conn.execute("PRAGMA table_list")}
    for name in [*TABLES, "_vmha_log", "_vmha_meta", "_vmha_conflicts"]:
        assert strict[name] == 1, name


def test_table_specs_match_the_schema(pair):
    p, _ = pair
    for name, spec in TABLES.items():
        info = p._conn.execute(f"PRAGMA table_info({name})").fetchall()
        assert [r[1] for r in info] == list(spec.names)
        assert [r[1] for r in info if r[5]] == [spec.pk]
        for r, col in zip(info, spec.columns, strict=True):
            assert bool(r[3]) == col.required, (name, col.name)  # NOT NULL


def test_reopen_keeps_rows_log_positions_and_checksum(tmp_path):
    path = tmp_path / "c.db"
    db = ConfigDB(path, role=Role.PRIMARY)
    db.write(P_TERM, [put("subscribers", sub("1001")), put("holidays",
                      {"date": "2025-12-25", "name": "Christmas"})])
    before = fingerprint(db)
    db.close()
    db = ConfigDB(path, role=Role.PRIMARY)
    assert fingerprint(db) == before
    assert db.recompute_checksum() == db.state().checksum != 0
    db.close()


def test_schema_version_mismatch_is_refused(tmp_path):
    path = tmp_path / "c.db"
    ConfigDB(path, role=Role.PRIMARY).close()
    raw = apsw.Connection(str(path))
    raw.execute("UPDATE _vmha_meta SET value = 99 WHERE key = 'schema_version'")
    raw.close()
    with pytest.raises(ConfigDBError, match="schema version 99"):
        ConfigDB(path, role=Role.PRIMARY)


def test_foreign_database_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "other.db"
    raw = apsw.Connection(str(path))
    raw.execute("CREATE TABLE subscribers (x); INSERT INTO subscribers VALUES (1)")
    raw.close()
    with pytest.raises(ConfigDBError, match="not a vmha configuration database"):
        ConfigDB(path, role=Role.PRIMARY)
    raw = apsw.Connection(str(path))
    assert raw.execute("SELECT x FROM subscribers").fetchall() == [(1,)]
    assert raw.execute("SELECT count(*) FROM sqlite_schema WHERE name LIKE '_vmha%'"
                       ).fetchall() == [(0,)]
    raw.close()


@pytest.mark.parametrize("kw, fragment", [
    ({"role": "primary"}, "role must be a Role"),
    ({"role": Role.PRIMARY, "log_keep": -1}, "log_keep"),
    ({"role": Role.PRIMARY, "log_max": 0}, "log_max"),
])
def test_constructor_arguments_are_checked(tmp_path, kw, fragment):
    with pytest.raises(ConfigDBError, match=fragment):
        ConfigDB(tmp_path / "c.db", **kw)
    assert not (tmp_path / "c.db").exists()


# --------------------------------------------------------------------------- validation

BAD_OPS = [
    # (ops, message fragment, table, column)
    ([put("users", {"id": "1"})], "unknown table 'users'", "users", None),
    ([put("subscribers", {**sub("1003"), "pin": "1234"})], "unknown column 'pin'",
     "subscribers", "pin"),
    ([put("subscribers", {"extension": "1003", "name": "New"})],
     "does not exist yet: a new row needs mailbox, mwi_method, notify", "subscribers",
     "mailbox"),
    ([put("subscribers", {"name": "No key"})], "needs its key column 'extension'",
     "subscribers", "extension"),
    ([put("subscribers", {**sub("1003"), "name": 5})], "subscribers.name: .*must be a string",
     "subscribers", "name"),
    ([put("subscribers", {**sub("1003"), "name": None})], "subscribers.name: .*is required",
     "subscribers", "name"),
    ([put("subscribers", {**sub("1003"), "name": " padded"})], "white space",
     "subscribers", "name"),
    ([put("subscribers", sub("12a"))], "1 to 32 digits", "subscribers", "extension"),
    ([put("subscribers", sub(""))], "1 to 32 digits", "subscribers", "extension"),
    ([put("subscribers", sub("1" * 33))], "1 to 32 digits", "subscribers", "extension"),
    ([put("subscribers", {**sub("1003"), "extension": 1003})], "must be a string",
     "subscribers", "extension"),
    ([put("subscribers", sub("1003", mwi="pager"))], "must be one of sip, smdi, sccp, dtmf, none",
     "subscribers", "mwi_method"),
    ([put("subscribers", sub("1003", notify=[{"type": "email", "address": "ann@"}]))],
     "not an e-mail address", "subscribers", "notify"),
    ([put("subscribers", sub("1003", notify=[{"type": "email", "address": "a b@x.org"}]))],
     "not an e-mail address", "subscribers", "notify"),
    ([put("subscribers", sub("1003", notify="ann@example.com"))], "must be a list",
     "subscribers", "notify"),
    ([put("subscribers", sub("1003", notify=[{"type": "sms", "address": "+4412345"}]))],
     "type must be 'email'", "subscribers", "notify"),
    ([put("subscribers", sub("1003", notify=[{"type": "email", "address": "a@b.org",
                                              "cc": "x"}]))],
     "exactly 'type' and 'address'", "subscribers", "notify"),
    ([put("subscribers", sub("1003", greeting="../etc/passwd"))], "'\\.\\.' components",
     "subscribers", "greeting"),
    ([put("subscribers", sub("1003", greeting="/abs/greeting.wav"))], "relative path",
     "subscribers", "greeting"),
    ([put("subscribers", sub("1003", mailbox="mb-1001"))],
     "subscribers.mailbox: value 'mb-1001' is already used by extension '1001'",
     "subscribers", "mailbox"),
    ([put("subscribers", {"extension": "1002", "mailbox": "mb-1001"})],
     "already used by extension '1001'", "subscribers", "mailbox"),
    ([put("call_handlers", {"name": "Other", "extension": "2000", "actions": {}})],
     "call_handlers.extension: value '2000' is already used by name 'Main'",
     "call_handlers", "extension"),
    ([put("call_handlers", {"name": "Other", "actions": {"A": "operator"}})],
     "key 'A' is not one of 0-9", "call_handlers", "actions"),
    ([put("call_handlers", {"name": "Other", "actions": {"1": ""}})], "target of '1'",
     "call_handlers", "actions"),
    ([put("call_handlers", {"name": "Other", "actions": ["operator"]})], "must be an object",
     "call_handlers", "actions"),
    ([put("schedules", {"name": "x", "rules": [{"days": [1], "start": "25:00",
                                                "end": "26:00"}]})],
     "start '25:00' is not HH:MM", "schedules", "rules"),
    ([put("schedules", {"name": "x", "rules": [{"days": [1], "start": "9:00",
                                                "end": "17:00"}]})],
     "start '9:00' is not HH:MM", "schedules", "rules"),
    ([put("schedules", {"name": "x", "rules": [{"days": [1], "start": "17:00",
                                                "end": "09:00"}]})],
     "must be before end", "schedules", "rules"),
    ([put("schedules", {"name": "x", "rules": [{"days": [7], "start": "09:00",
                                                "end": "17:00"}]})],
     "distinct integers 0..6", "schedules", "rules"),
    ([put("schedules", {"name": "x", "rules": [{"days": [True], "start": "09:00",
                                                "end": "17:00"}]})],
     "distinct integers 0..6", "schedules", "rules"),
    ([put("schedules", {"name": "x", "rules": [{"days": [1, 1], "start": "09:00",
                                                "end": "17:00"}]})],
     "distinct integers 0..6", "schedules", "rules"),
    ([put("schedules", {"name": "x", "rules": {"days": [1]}})], "must be a list",
     "schedules", "rules"),
    ([put("holidays", {"date": "2024-02-30", "name": "Nope"})], "not a calendar date",
     "holidays", "date"),
    ([put("holidays", {"date": "2024-2-1", "name": "Nope"})], "must be YYYY-MM-DD",
     "holidays", "date"),
    ([put("system_rules", {"key": "x", "value": {1, 2}})], "set is not a JSON value",
     "system_rules", "value"),
    ([put("system_rules", {"key": "x", "value": float("nan")})], "NaN",
     "system_rules", "value"),
    ([put("system_rules", {"key": "x", "value": {1: "a"}})], "key 1 is not a string",
     "system_rules", "value"),
    ([put("system_rules", {"key": "Bad Key", "value": 1})], "system_rules.key",
     "system_rules", "key"),
    ([delete("holidays", "2030-01-01")], "holidays '2030-01-01' does not exist",
     "holidays", "date"),
    ([delete("holidays", "yesterday")], "must be YYYY-MM-DD", "holidays", "date"),
    # the first op is fine, the second fails: neither is written
    ([put("holidays", {"date": "2025-12-25", "name": "Christmas"}),
      delete("subscribers", "9999")], "ops\\[1\\]: .*'9999' does not exist", "subscribers",
     "extension"),
    ([put("holidays", {"date": "2025-12-25", "name": "Christmas"}),
      put("subscribers", sub("1003", mailbox="mb-1002"))], "ops\\[1\\]: .*already used",
     "subscribers", "mailbox"),
    ([["put"]], "ops\\[0\\]: must be an object", None, None),
    ([{"op": "upsert", "table": "holidays", "row": {}}], "op must be 'put' or 'delete'",
     None, None),
    ([{"op": "put", "table": "holidays", "row": {"date": "2025-12-25", "name": "x"},
       "extra": 1}], "unknown extra", None, None),
    ([{"op": "delete", "table": "holidays"}], "missing key", None, None),
    ([put("holidays", {})], "non-empty object", "holidays", None),
    ([], "ops is empty", None, None),
    ("not a list", "ops must be a list", None, None),
]


@pytest.mark.parametrize("ops, fragment, table, column", BAD_OPS)
def test_bad_writes_raise_and_change_nothing(seeded, ops, fragment, table, column):
    p, _ = seeded
    before = fingerprint(p)
    with pytest.raises(ConfigDBError, match=fragment) as info:
        p.write(P_TERM, ops)
    assert info.value.table == table
    assert info.value.column == column
    assert fingerprint(p) == before


@pytest.mark.parametrize("role, term", [
    (Role.PRIMARY, 0), (Role.PRIMARY, -2), (Role.PRIMARY, 3), (Role.PRIMARY, True),
    (Role.PRIMARY, "2"), (Role.PRIMARY, 2.0), (Role.SECONDARY, 2), (Role.SECONDARY, 0),
    (Role.SECONDARY, -1),
])
def test_bad_terms_raise_and_change_nothing(pair, role, term):
    db = pair[role]
    before = fingerprint(db)
    with pytest.raises(ConfigDBError, match="term"):
        db.write(term, [put("holidays", {"date": "2025-12-25", "name": "Christmas"})])
    assert fingerprint(db) == before


def test_term_below_the_head_term_is_refused(pair):
    p, _ = pair
    p.write(4, [put("holidays", {"date": "2025-12-25", "name": "Christmas"})])
    before = fingerprint(p)
    with pytest.raises(ConfigDBError, match="below the log head's term 4"):
        p.write(2, [put("holidays", {"date": "2025-12-26", "name": "Boxing Day"})])
    assert fingerprint(p) == before
    assert p.write(6, [put("holidays", {"date": "2025-12-26", "name": "Boxing Day"})]).term == 6


# --------------------------------------------------------------------------- reads / writes

def test_reads(seeded):
    p, _ = seeded
    assert p.get("subscribers", "1001") == {
        "extension": "1001", "name": "Ann", "mailbox": "mb-1001", "mwi_method": "sip",
        "notify": [{"type": "email", "address": "u1001@example.com"}], "greeting": None}
    assert p.get("call_handlers", "Main")["actions"] == {"0": "operator", "1": "1001"}
    assert p.get("system_rules", "max_message_seconds")["value"] == 300
    assert p.get("subscribers", "9999") is None
    assert [r["extension"] for r in p.list("subscribers")] == ["1001", "1002"]
    assert [r["extension"] for r in p.list("subscribers", limit=1)] == ["1001"]
    assert p.count("subscribers") == 2 and p.count("holidays") == 1
    with pytest.raises(ConfigDBError, match="unknown table"):
        p.get("nope", "1")
    with pytest.raises(ConfigDBError, match="1 to 32 digits"):
        p.get("subscribers", "abc")
    with pytest.raises(ConfigDBError, match="limit"):
        p.list("subscribers", limit=-1)


def test_partial_put_updates_only_the_given_columns(seeded):
    p, _ = seeded
    res = p.write(P_TERM, [put("subscribers", {"extension": "1001", "mwi_method": "smdi"})])
    assert res.changes == 1
    assert p.get("subscribers", "1001") == {**sub("1001", "Ann", mailbox="mb-1001"),
                                            "mwi_method": "smdi"}
    (entry,) = p.entries_after(res.seq - 1)
    (change,) = [(c.op, c.new) for c in apsw.Changeset.iter(entry.changeset)]
    assert change[0] == "UPDATE"
    # only the changed column travels: the others are "no change"
    assert [v for v in change[1] if v is not apsw.no_change] == ["smdi"]


def test_writes_are_logged_once_per_call(pair):
    p, _ = pair
    r1 = p.write(P_TERM, [put("holidays", {"date": "2025-12-25", "name": "Christmas"}),
                          put("holidays", {"date": "2025-12-26", "name": "Boxing Day"}),
                          put("system_rules", {"key": "language", "value": "en"})])
    assert (r1.seq, r1.term, r1.changes) == (1, P_TERM, 3)
    (e,) = p.entries_after(0)
    assert (e.seq, e.term) == (1, P_TERM)
    assert e.digest == hashlib.sha256(e.changeset).digest()
    # no real change: no log entry, the head is returned
    r2 = p.write(4, [put("holidays", {"date": "2025-12-25", "name": "Christmas"})])
    assert (r2.seq, r2.term, r2.changes) == (1, P_TERM, 0)
    # insert and delete in one call cancel out
    r3 = p.write(4, [put("holidays", {"date": "2026-01-01", "name": "x"}),
                     delete("holidays", "2026-01-01")])
    assert r3.changes == 0 and p.state().head_seq == 1
    r4 = p.write(4, [delete("holidays", "2025-12-26")])
    assert (r4.seq, r4.term, r4.changes) == (2, 4, 1)
    assert p.get("holidays", "2025-12-26") is None
    assert p.state() == ReplState(head_seq=2, head_term=4, first_seq=1, applied_seq=0,
                                  applied_term=0, checksum=p.recompute_checksum())


def test_checksum_is_order_independent_and_content_sensitive(tmp_path):
    a = ConfigDB(tmp_path / "a.db", role=Role.PRIMARY)
    b = ConfigDB(tmp_path / "b.db", role=Role.PRIMARY)
    assert a.state().checksum == 0
    hs = [put("holidays", {"date": f"2025-0{m}-01", "name": f"H{m}"}) for m in range(1, 8)]
    for op in hs:
        a.write(P_TERM, [op])
    b.write(P_TERM, list(reversed(hs)))
    assert a.state().checksum == b.state().checksum == a.recompute_checksum() != 0
    b.write(P_TERM, [put("holidays", {"date": "2025-01-01", "name": "H1x"})])
    assert a.state().checksum != b.state().checksum
    b.write(P_TERM, [put("holidays", {"date": "2025-01-01", "name": "H1"})])
    assert a.state().checksum == b.state().checksum
    # the table name is part of the hash: the same values in two tables differ
    assert row_hash("holidays", ("k", "v")) != row_hash("system_rules", ("k", "v"))
    assert row_hash("t", ("1", None)) != row_hash("t", (1, None))
    a.close()
    b.close()


# --------------------------------------------------------------------------- replication

def test_write_ship_read_on_the_peer_both_directions(pair):
    p, s = pair
    p.write(P_TERM, [put("subscribers", sub("1001", "Ann"))])
    p.write(P_TERM, [put("subscribers", {"extension": "1001", "greeting": "1001/busy.wav"})])
    assert ship(p, s) == 0
    assert s.get("subscribers", "1001") == p.get("subscribers", "1001")
    assert s.get("subscribers", "1001")["greeting"] == "1001/busy.wav"
    # remote changes never enter the receiver's own log
    assert s.state().head_seq == 0 and s.state().applied_seq == 2
    s.write(S_TERM, [put("holidays", {"date": "2025-07-04", "name": "Independence Day"}),
                     put("subscribers", {"extension": "1001", "name": "Ann B."})])
    assert ship(s, p) == 0
    assert p.get("holidays", "2025-07-04")["name"] == "Independence Day"
    assert p.get("subscribers", "1001")["name"] == "Ann B."
    assert p.state().head_seq == 2 and p.state().applied_seq == 1
    assert_converged(p, s)
    # acks pruned nothing yet (log_keep 1000) but were recorded
    assert p.stats()["acked_seq"] == 2 and p.stats()["log_entries"] == 2


def test_disjoint_column_updates_merge_without_conflict(seeded):
    p, s = seeded
    p.write(P_TERM, [put("subscribers", {"extension": "1001", "name": "Ann Primary"})])
    s.write(S_TERM, [put("subscribers", {"extension": "1001", "mwi_method": "dtmf"})])
    exchange(p, s)
    assert p.get("subscribers", "1001")["name"] == "Ann Primary"
    assert p.get("subscribers", "1001")["mwi_method"] == "dtmf"
    assert p.conflict_count() == s.conflict_count() == 0
    assert_converged(p, s)


def test_identical_changes_on_both_sides_are_not_conflicts(seeded):
    p, s = seeded
    same = [put("holidays", {"date": "2025-12-25", "name": "Christmas"}),
            put("subscribers", {"extension": "1002", "name": "Robert"}),
            delete("holidays", "2025-01-01")]
    p.write(P_TERM, same)
    s.write(S_TERM, same)
    exchange(p, s)
    assert p.conflict_count() == s.conflict_count() == 0
    assert_converged(p, s)


def _partition(p: ConfigDB, s: ConfigDB) -> None:
    """Both nodes write while they cannot reach each other."""
    # same row updated on both sides
    p.write(P_TERM, [put("subscribers", {"extension": "1001", "name": "Ann (primary)"})])
    s.write(S_TERM, [put("subscribers", {"extension": "1001", "name": "Ann (secondary)"})])
    # same key inserted on both sides
    p.write(P_TERM, [put("holidays", {"date": "2025-12-25", "name": "Christmas"})])
    s.write(S_TERM, [put("holidays", {"date": "2025-12-25", "name": "Xmas"})])
    # update (primary) vs delete (secondary)
    p.write(P_TERM, [put("subscribers", {"extension": "1002", "name": "Bob (primary)"})])
    s.write(S_TERM, [delete("subscribers", "1002")])
    # delete (primary) vs update (secondary)
    p.write(P_TERM, [delete("schedules", "office")])
    s.write(S_TERM, [put("schedules", {"name": "office", "rules": []})])
    # the same mailbox taken by two new subscribers
    p.write(P_TERM, [put("subscribers", sub("3001", "Carol", mailbox="mb-new"))])
    s.write(S_TERM, [put("subscribers", sub("3002", "Dave", mailbox="mb-new"))])


def _by(db: ConfigDB) -> dict[tuple, dict]:
    return {(c["table"], c["pk"]): c for c in db.conflicts()}


@pytest.mark.parametrize("primary_first", [True, False])
def test_partition_both_write_then_repair(seeded, primary_first):
    p, s = seeded
    _partition(p, s)
    p_rows_before = rows(p)
    if primary_first:
        exchange(p, s)
    else:
        ship(s, p)
        ship(p, s)

    # the primary kept all of its own rows and recorded each change of the peer it dropped
    assert rows(p) == p_rows_before
    pc = _by(p)
    assert set(pc) == {("subscribers", "1001"), ("holidays", "2025-12-25"),
                       ("subscribers", "1002"), ("schedules", "office"),
                       ("subscribers", "3002")}
    assert all(c["origin"] == "peer" and c["peer_term"] == S_TERM for c in pc.values())
    c = pc[("subscribers", "1001")]
    assert (c["reason"], c["op"]) == ("data", "UPDATE")
    assert c["remote_row"] == {"extension": "1001", "name": "Ann (secondary)"}
    assert c["local_row"]["name"] == "Ann (primary)"
    c = pc[("holidays", "2025-12-25")]
    assert (c["reason"], c["op"]) == ("conflict", "INSERT")
    assert c["remote_row"]["name"] == "Xmas" and c["local_row"]["name"] == "Christmas"
    c = pc[("subscribers", "1002")]
    assert (c["reason"], c["op"], c["remote_row"]) == ("data", "DELETE", None)
    assert c["local_row"]["name"] == "Bob (primary)"
    c = pc[("subscribers", "3002")]
    assert (c["reason"], c["op"]) == ("constraint", "INSERT")
    assert c["remote_row"]["mailbox"] == "mb-new"
    assert c["local_row"]["extension"] == "3001"  # the row that holds the mailbox
    c = pc[("schedules", "office")]  # the secondary updated what the primary deleted
    assert (c["reason"], c["op"], c["local_row"]) == ("notfound", "UPDATE", None)
    assert p.conflict_count() == 5

    # the secondary took the primary's version where it could, recording what it overwrote
    sc = _by(s)
    c = sc[("subscribers", "1001")]
    assert (c["origin"], c["reason"]) == ("local", "data")
    assert c["local_row"]["name"] == "Ann (secondary)"
    assert s.get("subscribers", "1001")["name"] == "Ann (primary)"
    c = sc[("holidays", "2025-12-25")]
    assert (c["origin"], c["reason"], c["local_row"]["name"]) == ("local", "conflict", "Xmas")
    assert s.get("holidays", "2025-12-25")["name"] == "Christmas"
    c = sc[("subscribers", "1002")]  # the primary's update of a row we deleted
    assert (c["origin"], c["reason"], c["op"]) == ("peer", "notfound", "UPDATE")
    c = sc[("schedules", "office")]  # the primary deleted what we had updated
    assert (c["origin"], c["reason"], c["op"]) == ("local", "data", "DELETE")
    assert c["local_row"]["rules"] == "[]"
    assert s.get("schedules", "office") is None
    c = sc[("subscribers", "3001")]
    assert (c["origin"], c["reason"]) == ("peer", "constraint")
    assert c["local_row"]["extension"] == "3002"
    assert s.conflict_count() == 5

    # positions line up but the data differs: both sides see it
    assert p.diverged(s.state()) is True
    assert s.diverged(p.state()) is True
    s_conflicts = s.conflict_count()
    res = s.install_snapshot(p.build_snapshot())
    # lost on the secondary: subscriber 3002 (absent from the snapshot)
    assert res.conflicts == 1
    (lost,) = [c for c in s.conflicts() if c["reason"] == "snapshot"]
    assert (lost["origin"], lost["table"], lost["pk"]) == ("local", "subscribers", "3002")
    assert lost["remote_row"] is None and lost["local_row"]["name"] == "Dave"
    assert s.conflict_count() == s_conflicts + 1
    assert rows(s) == p_rows_before
    assert_converged(p, s)
    assert res.checksum == p.state().checksum


def test_partition_schedule_conflict_on_primary(seeded):
    """Primary deletes, secondary updates: the primary's apply finds no row (notfound)."""
    p, s = seeded
    p.write(P_TERM, [delete("schedules", "office")])
    s.write(S_TERM, [put("schedules", {"name": "office", "rules": []})])
    exchange(p, s)
    (c,) = p.conflicts()
    assert (c["origin"], c["reason"], c["op"], c["pk"]) == ("peer", "notfound", "UPDATE",
                                                             "office")
    assert c["remote_row"] == {"name": "office", "rules": "[]"}
    # both ended without the schedule: converged without a snapshot
    assert_converged(p, s)


def test_replace_blocked_by_a_unique_column_loses_nothing_unrecorded(pair):
    """The secondary replaces its row 1003 with the primary's, whose mailbox another local
    row holds: the replace removes the local row (recorded) and the insert is dropped
    (recorded); the snapshot then repairs the secondary."""
    p, s = pair
    p.write(P_TERM, [put("subscribers", sub("1003", "P", mailbox="M"))])
    s.write(S_TERM, [put("subscribers", sub("1003", "S", mailbox="N")),
                     put("subscribers", sub("1004", "Y", mailbox="M"))])
    exchange(p, s)
    sc = sorted((c["origin"], c["reason"], c["pk"], (c["local_row"] or {}).get("name"))
                for c in s.conflicts())
    assert sc == [("local", "conflict", "1003", "S"), ("peer", "constraint", "1003", "Y")]
    assert s.diverged(p.state()) is True
    res = s.install_snapshot(p.build_snapshot())
    assert res.conflicts == 1 and s.conflicts()[0]["local_row"]["name"] == "Y"
    assert_converged(p, s)
    assert [r["name"] for r in s.list("subscribers")] == ["P"]


def test_secondary_after_snapshot_keeps_replicating(seeded):
    p, s = seeded
    _partition(p, s)
    exchange(p, s)
    s.install_snapshot(p.build_snapshot())
    p.write(4, [put("holidays", {"date": "2026-01-01", "name": "New Year"})])
    s.write(3, [put("holidays", {"date": "2026-05-01", "name": "Labour Day"})])
    exchange(p, s)
    assert_converged(p, s)
    assert s.get("holidays", "2026-01-01") and p.get("holidays", "2026-05-01")


# --------------------------------------------------------------------------- refusals

@pytest.fixture
def three(pair):
    """The primary has written three entries (terms 2, 4, 4); nothing shipped yet."""
    p, s = pair
    p.write(2, [put("holidays", {"date": "2025-01-01", "name": "A"})])
    p.write(4, [put("holidays", {"date": "2025-01-02", "name": "B"})])
    p.write(4, [put("holidays", {"date": "2025-01-03", "name": "C"})])
    return p, s, p.entries_after(0)


def _refused(db: ConfigDB, entries, reason: str, seq: int, peer: Role = Role.PRIMARY):
    before = fingerprint(db)
    with pytest.raises(Refused) as info:
        db.apply_remote(entries, peer)
    assert (info.value.reason, info.value.seq) == (reason, seq)
    assert fingerprint(db) == before
    return info.value


def test_refused_gap(three):
    p, s, (e1, e2, e3) = three
    _refused(s, [e2, e3], "gap", 2)
    _refused(s, [e1, e3], "gap", 3)
    s.apply_remote([e1], Role.PRIMARY)
    _refused(s, [e3], "gap", 3)
    assert s.apply_remote([e2, e3], Role.PRIMARY).applied_seq == 3


def test_refused_stale_term(three, tmp_path):
    p, s, (e1, e2, e3) = three
    _refused(s, [e1, replace(e2, term=6), e3], "stale_term", 3)  # decreasing in the batch
    s.apply_remote([e1, e2], Role.PRIMARY)  # applied term 4
    _refused(s, [forge(2, 3, e3.changeset)], "stale_term", 3)
    assert s.apply_remote([e3], Role.PRIMARY).applied_term == 4


def test_refused_parity(three):
    p, s, (e1, e2, e3) = three
    _refused(s, [forge(3, 1, e1.changeset)], "parity", 1)
    _refused(s, [forge(0, 1, e1.changeset)], "parity", 1)
    _refused(s, [e1, forge(5, 2, e2.changeset)], "parity", 2)
    # the primary's own even entries claimed to come from a secondary
    _refused(p, [e1], "parity", 1, peer=Role.SECONDARY)


def test_refused_digest(three):
    p, s, (e1, e2, e3) = three
    bad = replace(e2, digest=bytes(32))
    _refused(s, [e1, bad, e3], "digest", 2)
    flipped = e1.changeset[:-1] + bytes([e1.changeset[-1] ^ 0xFF])
    _refused(s, [replace(e1, changeset=flipped)], "digest", 1)


def test_refused_corrupt(three, tmp_path):
    p, s, (e1, e2, e3) = three
    _refused(s, [forge(2, 1, b"not a changeset at all")], "corrupt", 1)
    _refused(s, [forge(2, 1, e1.changeset[:-4])], "corrupt", 1)
    _refused(s, [e1, forge(4, 2, e2.changeset + b"\x01\x02")], "corrupt", 2)
    other = foreign_changeset(tmp_path, "CREATE TABLE evil (k TEXT PRIMARY KEY, v TEXT)",
                              "INSERT INTO evil VALUES ('a', 'b')", "evil")
    assert "not replicated" in _refused(s, [forge(2, 1, other)], "corrupt", 1).message
    meta = foreign_changeset(tmp_path, "CREATE TABLE _vmha_meta (key TEXT PRIMARY KEY, value)",
                             "INSERT INTO _vmha_meta VALUES ('applied_seq', 999)", "_vmha_meta")
    _refused(s, [forge(2, 1, meta)], "corrupt", 1)
    narrow = foreign_changeset(
        tmp_path, "CREATE TABLE subscribers (extension TEXT PRIMARY KEY, name TEXT)",
        "INSERT INTO subscribers VALUES ('1001', 'x')", "subscribers")
    assert "2 columns" in _refused(s, [forge(2, 1, narrow)], "corrupt", 1).message
    typed = foreign_changeset(
        tmp_path, "CREATE TABLE holidays (date TEXT PRIMARY KEY, name)",
        "INSERT INTO holidays VALUES ('2025-01-01', x'00ff')", "holidays")
    assert "not text" in _refused(s, [forge(2, 1, typed)], "corrupt", 1).message
    assert s.apply_remote([e1, e2, e3], Role.PRIMARY).applied_seq == 3


def test_apply_remote_argument_errors(three):
    p, s, (e1, e2, e3) = three
    before = fingerprint(s)
    with pytest.raises(ConfigDBError, match="peer_role"):
        s.apply_remote([e1], Role.SECONDARY)
    with pytest.raises(ConfigDBError, match="digest must be 32 bytes"):
        s.apply_remote([replace(e1, digest=b"x")], Role.PRIMARY)
    with pytest.raises(ConfigDBError, match="seq"):
        s.apply_remote([replace(e1, seq=0)], Role.PRIMARY)
    with pytest.raises(ConfigDBError, match="list"):
        s.apply_remote(e1, Role.PRIMARY)
    assert fingerprint(s) == before
    res = s.apply_remote([], Role.PRIMARY)
    assert (res.applied_seq, res.conflicts) == (0, 0)


def test_duplicate_batches_are_idempotent(three):
    p, s, (e1, e2, e3) = three
    first = s.apply_remote([e1, e2], Role.PRIMARY)
    assert (first.applied_seq, first.applied_term) == (2, 4)
    after = fingerprint(s)
    again = s.apply_remote([e1, e2], Role.PRIMARY)  # fully duplicate: just the state
    assert again == first
    assert s.apply_remote([e1], Role.PRIMARY) == first
    assert fingerprint(s) == after
    # partial overlap: the applied prefix is skipped, the rest applied once
    res = s.apply_remote([e1, e2, e3], Role.PRIMARY)
    assert (res.applied_seq, res.conflicts) == (3, 0)
    assert [h["name"] for h in s.list("holidays")] == ["A", "B", "C"]
    assert s.conflict_count() == 0
    assert_converged(p, s)


# --------------------------------------------------------------------------- the log

def test_entries_after_limits(pair):
    p, _ = pair
    for i in range(10):
        p.write(P_TERM, [put("holidays", {"date": f"2025-03-{i + 1:02d}", "name": "x" * 50})])
    assert [e.seq for e in p.entries_after(0, max_entries=3)] == [1, 2, 3]
    assert [e.seq for e in p.entries_after(7)] == [8, 9, 10]
    assert p.entries_after(10) == []
    assert [e.seq for e in p.entries_after(4, max_bytes=1)] == [5]  # at least one
    size = len(p.entries_after(0)[0].changeset)
    assert len(p.entries_after(0, max_bytes=3 * size)) == 3
    with pytest.raises(LogGap, match="beyond our log head 10"):
        p.entries_after(11)
    for bad in ({"seq": -1}, {"seq": 0, "max_entries": 0}, {"seq": 0, "max_bytes": 0}):
        with pytest.raises(ConfigDBError):
            p.entries_after(**bad)


def test_pruning_and_log_gap_lead_to_a_snapshot(tmp_path):
    p = ConfigDB(tmp_path / "p.db", role=Role.PRIMARY, log_keep=2)
    s = ConfigDB(tmp_path / "s.db", role=Role.SECONDARY)
    for i in range(10):
        p.write(P_TERM, [put("holidays", {"date": f"2025-04-{i + 1:02d}", "name": f"H{i}"})])
    ship(p, s, batch=4)
    st_ = p.stats()
    assert (st_["acked_seq"], st_["log_entries"], st_["first_seq"]) == (10, 2, 9)
    assert [e.seq for e in p.entries_after(8)] == [9, 10]
    with pytest.raises(LogGap) as info:
        p.entries_after(7)
    assert (info.value.seq, info.value.first_seq, info.value.head_seq) == (7, 9, 10)
    with pytest.raises(ConfigDBError, match="our log head is 10"):
        p.mark_acked(11)
    p.mark_acked(3)  # an old ack changes nothing
    assert p.stats()["acked_seq"] == 10

    # a new, empty secondary cannot be served from the log: it gets a snapshot
    s2 = ConfigDB(tmp_path / "s2.db", role=Role.SECONDARY)
    with pytest.raises(LogGap):
        p.entries_after(s2.state().applied_seq)
    res = s2.install_snapshot(p.build_snapshot())
    assert res.conflicts == 0 and res.checksum == p.state().checksum
    assert (s2.state().applied_seq, s2.state().applied_term) == (10, P_TERM)
    p.write(4, [put("holidays", {"date": "2025-05-01", "name": "May Day"})])
    ship(p, s2)
    assert_converged(p, s2)
    for db in (p, s, s2):
        db.close()


def test_log_max_drops_unacked_entries_and_counts_them(tmp_path):
    p = ConfigDB(tmp_path / "p.db", role=Role.PRIMARY, log_max=5)
    s = ConfigDB(tmp_path / "s.db", role=Role.SECONDARY)
    for i in range(8):
        p.write(P_TERM, [put("holidays", {"date": f"2025-06-{i + 1:02d}", "name": f"H{i}"})])
    st_ = p.stats()
    assert (st_["log_entries"], st_["first_seq"], st_["dropped_unacked"]) == (5, 4, 3)
    with pytest.raises(LogGap):
        p.entries_after(0)
    s.install_snapshot(p.build_snapshot())
    p.mark_acked(s.state().applied_seq)
    p.write(P_TERM, [put("holidays", {"date": "2025-07-01", "name": "next"})])
    ship(p, s)
    assert_converged(p, s)
    assert p.stats()["dropped_unacked"] == 3  # acked entries are never counted as dropped
    p.close()
    s.close()


def test_thousand_single_op_writes_shipped_in_batches(tmp_path):
    p = ConfigDB(tmp_path / "p.db", role=Role.PRIMARY, log_keep=100)
    s = ConfigDB(tmp_path / "s.db", role=Role.SECONDARY)
    for i in range(1000):
        assert p.write(P_TERM, [put("subscribers", sub(str(10000 + i), f"User {i}"))]).seq \
            == i + 1
    batches = 0
    while entries := p.entries_after(s.state().applied_seq, max_entries=64, max_bytes=8192):
        assert len(entries) <= 64
        assert s.apply_remote(entries, Role.PRIMARY).applied_seq == entries[-1].seq
        p.mark_acked(s.state().applied_seq)
        batches += 1
    assert batches >= 1000 // 64
    assert s.count("subscribers") == 1000
    assert p.stats()["log_entries"] == 100
    assert_converged(p, s)
    p.close()
    s.close()


# --------------------------------------------------------------------------- disk full

def _fill(db: ConfigDB) -> None:
    """Let the file grow no further."""
    pages = db._conn.execute("PRAGMA page_count").fetchall()[0][0]
    db._conn.execute(f"PRAGMA max_page_count = {pages}")


def _room(db: ConfigDB) -> None:
    db._conn.execute("PRAGMA max_page_count = 1000000")


def _big_ops(start: int, n: int = 200) -> list[dict]:
    return [put("subscribers", sub(str(start + i), "N" * 190)) for i in range(n)]


def test_disk_full_on_apply_changes_nothing_and_retry_succeeds(pair):
    p, s = pair
    p.write(P_TERM, _big_ops(20000))
    p.write(P_TERM, _big_ops(30000))
    entries = p.entries_after(0)
    _fill(s)
    before = fingerprint(s)
    with pytest.raises(DiskFull):
        s.apply_remote(entries, Role.PRIMARY)
    assert fingerprint(s) == before
    _room(s)
    res = s.apply_remote(entries, Role.PRIMARY)
    assert res.applied_seq == 2
    assert_converged(p, s)


def test_disk_full_on_write_and_snapshot_install(pair):
    p, s = pair
    p.write(P_TERM, [put("holidays", {"date": "2025-01-01", "name": "x"})])
    _fill(p)
    before = fingerprint(p)
    with pytest.raises(ConfigDBError) as info:  # what an admin write reports
        p.write(P_TERM, _big_ops(40000))
    assert isinstance(info.value, DiskFull)
    assert fingerprint(p) == before
    _room(p)
    assert p.write(P_TERM, _big_ops(40000)).changes == 200
    snap = p.build_snapshot()
    _fill(s)
    before = fingerprint(s)
    with pytest.raises(DiskFull):
        s.install_snapshot(snap)
    assert fingerprint(s) == before
    _room(s)
    s.install_snapshot(snap)
    assert_converged(p, s)


# --------------------------------------------------------------------------- snapshots

def test_snapshot_behind_is_refused_until_the_sender_has_our_changes(seeded):
    p, s = seeded
    s.write(S_TERM, [put("holidays", {"date": "2025-08-15", "name": "Assumption"})])
    snap = p.build_snapshot()
    before = fingerprint(s)
    with pytest.raises(Refused) as info:
        s.install_snapshot(snap)
    assert info.value.reason == "snapshot_behind"
    assert fingerprint(s) == before
    ship(s, p)
    res = s.install_snapshot(p.build_snapshot())
    assert res.conflicts == 0
    assert s.get("holidays", "2025-08-15")["name"] == "Assumption"
    assert_converged(p, s)


def test_bad_snapshots_are_refused_and_change_nothing(seeded, tmp_path):
    p, s = seeded
    p.write(P_TERM, [put("holidays", {"date": "2025-12-25", "name": "Christmas"})])
    snap = p.build_snapshot()
    before = fingerprint(s)
    cases = [
        (replace(snap, checksum=(snap.checksum + 1) % (1 << 64)), "checksum"),
        (replace(snap, data=b"garbage"), "corrupt"),
        (replace(snap, data=snap.data[:-5]), "corrupt"),
        (replace(snap, data=p.entries_after(0)[-1].changeset), None),  # valid INSERT-only
        (replace(snap, head_term=3), "parity"),
        (replace(snap, head_term=0), "parity"),
    ]
    update_cs = p.write(P_TERM, [put("holidays", {"date": "2025-12-25", "name": "Xmas"})])
    cases.append((replace(snap, data=p.entries_after(update_cs.seq - 1)[0].changeset),
                  "corrupt"))  # an UPDATE is not a snapshot row
    cases.append((replace(snap, data=snap.data + snap.data), "corrupt"))  # every row twice
    for bad, reason in cases:
        if reason is None:  # a well-formed snapshot whose checksum does not match its rows
            reason = "checksum"
        with pytest.raises(Refused) as info:
            s.install_snapshot(bad)
        assert info.value.reason == reason, bad
        assert fingerprint(s) == before
    with pytest.raises(ConfigDBError, match="checksum"):
        s.install_snapshot(replace(snap, checksum=-1))
    assert fingerprint(s) == before


def test_diverged_is_none_while_positions_do_not_line_up(seeded):
    p, s = seeded
    assert s.diverged(p.state()) is False
    p.write(P_TERM, [put("holidays", {"date": "2025-12-25", "name": "Christmas"})])
    assert s.diverged(p.state()) is None and p.diverged(s.state()) is None
    ship(p, s)
    s.write(S_TERM, [put("holidays", {"date": "2025-12-26", "name": "Boxing Day"})])
    assert s.diverged(p.state()) is None
    ship(s, p)
    assert s.diverged(p.state()) is False
    # a change made behind replication's back (not through write) is found
    s._conn.execute("UPDATE holidays SET name = 'tampered' WHERE date = '2025-12-25'")
    assert s.diverged(p.state()) is True
    assert s.state().checksum == s.recompute_checksum()


# --------------------------------------------------------------------------- property

EXTS = ["1001", "1002", "1003"]
MAILBOXES = ["mb-a", "mb-b", "mb-c"]
DATES = ["2025-01-01", "2025-01-02", "2025-01-03"]

op_strategy = st.one_of(
    st.builds(lambda e, m, n: put("subscribers", sub(e, n, mailbox=m)),
              st.sampled_from(EXTS), st.sampled_from(MAILBOXES), st.sampled_from(["x", "y"])),
    st.builds(lambda e, n: put("subscribers", {"extension": e, "name": n}),
              st.sampled_from(EXTS), st.sampled_from(["x", "y", "z"])),
    st.builds(lambda e: delete("subscribers", e), st.sampled_from(EXTS)),
    st.builds(lambda d, n: put("holidays", {"date": d, "name": n}),
              st.sampled_from(DATES), st.sampled_from(["a", "b"])),
    st.builds(lambda d: delete("holidays", d), st.sampled_from(DATES)),
    st.builds(lambda k, v: put("system_rules", {"key": k, "value": v}),
              st.sampled_from(["r1", "r2"]), st.one_of(st.integers(-3, 3), st.none(),
                                                       st.lists(st.booleans(), max_size=2))),
)
_write = st.tuples(st.just("write"), st.sampled_from([Role.PRIMARY, Role.SECONDARY]),
                   st.lists(op_strategy, min_size=1, max_size=3))
action_strategy = st.one_of(
    _write, _write, _write,
    st.tuples(st.just("ship"), st.sampled_from([Role.PRIMARY, Role.SECONDARY]),
              st.integers(1, 4)),
    st.tuples(st.just("bump"), st.sampled_from([Role.PRIMARY, Role.SECONDARY]), st.none()),
)


def _ship_some(src: ConfigDB, dst: ConfigDB, n: int | None) -> None:
    """One batch (n entries; None: everything); a pruned position gets a snapshot."""
    try:
        entries = src.entries_after(dst.state().applied_seq, max_entries=n or 1 << 30)
    except LogGap:
        try:
            dst.install_snapshot(src.build_snapshot())
        except Refused as exc:
            assert exc.reason == "snapshot_behind"
            event("pruned position, snapshot behind")
            return
        event("pruned position, snapshot installed")
        src.mark_acked(dst.state().applied_seq)
        return
    if entries:
        src.mark_acked(dst.apply_remote(entries, src.role).applied_seq)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(action_strategy, min_size=10, max_size=40))
def test_random_writes_and_exchanges_keep_checksums_and_converge(actions):
    with tempfile.TemporaryDirectory() as d:
        # a tiny log_max on the primary makes some exchanges go through a snapshot
        dbs = {Role.PRIMARY: ConfigDB(Path(d) / "p.db", role=Role.PRIMARY, log_max=2),
               Role.SECONDARY: ConfigDB(Path(d) / "s.db", role=Role.SECONDARY)}
        terms = {Role.PRIMARY: P_TERM, Role.SECONDARY: S_TERM}
        p, s = dbs[Role.PRIMARY], dbs[Role.SECONDARY]
        try:
            # a common starting point, so that updates and deletes find rows on both sides
            p.write(P_TERM, [put("subscribers", sub(e, "x", mailbox=m))
                             for e, m in zip(EXTS, MAILBOXES, strict=True)]
                    + [put("holidays", {"date": d, "name": "a"}) for d in DATES])
            _ship_some(p, s, None)
            for kind, role, arg in actions:
                db, other = dbs[role], dbs[Role(1 - role)]
                if kind == "write":
                    before = fingerprint(db)
                    try:
                        db.write(terms[role], arg)
                    except ConfigDBError:
                        assert fingerprint(db) == before
                elif kind == "ship":
                    _ship_some(db, other, arg)
                else:
                    terms[role] += 2
                for x in (p, s):
                    assert x.state().checksum == x.recompute_checksum()
            # full exchange: everything of the secondary to the primary, then the other way
            _ship_some(s, p, None)
            _ship_some(p, s, None)
            assert p.state().applied_seq == s.state().head_seq
            assert s.state().applied_seq == p.state().head_seq
            d1, d2 = p.diverged(s.state()), s.diverged(p.state())
            assert d1 is not None and d1 == d2
            assert d1 == (rows(p) != rows(s))
            event(f"diverged after the exchange: {d1}")
            n = p.conflict_count() + s.conflict_count()
            event(f"conflicts recorded: {n if n < 3 else '3 or more'}")
            if d1:
                s.install_snapshot(p.build_snapshot())
            assert_converged(p, s)
        finally:
            p.close()
            s.close()


# --------------------------------------------------------------------------- ledgers (schema 2)


def test_mwi_and_notification_ledgers_replicate_and_validate(pair):
    p, s = pair
    lamp = {"on": True, "new": 2, "old": 1, "confirmed": False, "term": P_TERM}
    p.write(P_TERM, [put("mwi_ledger", {"mailbox": "mb-1001", "extension": "1001", "state": lamp}),
                     put("notifications", {"key": "c1.a.2@vmha/ann@example.com",
                                           "state": {"term": P_TERM, "sent": True}})])
    s.apply_remote(p.entries_after(0), Role.PRIMARY)
    assert s.get("mwi_ledger", "mb-1001")["state"] == lamp
    assert s.get("notifications", "c1.a.2@vmha/ann@example.com")["state"]["sent"] is True
    before = p.state()
    for bad in ({**lamp, "on": "yes"}, {**lamp, "new": -1}, {k: v for k, v in lamp.items() if k != "term"},
                {**lamp, "extra": 1}):
        with pytest.raises(ConfigDBError):
            p.write(P_TERM, [put("mwi_ledger", {"mailbox": "mb-1002", "extension": "1002", "state": bad})])
    with pytest.raises(ConfigDBError):
        p.write(P_TERM, [put("notifications", {"key": "has space", "state": {"term": 2, "sent": True}})])
    assert p.state() == before and p.get("mwi_ledger", "mb-1002") is None


def test_a_schema_1_database_is_upgraded_in_place(tmp_path):
    path = tmp_path / "old.db"
    db = ConfigDB(path, role=Role.PRIMARY)
    db.write(P_TERM, [put("subscribers", sub("1001", mailbox="mb-1001"))])
    db.close()
    raw = apsw.Connection(str(path))  # make it look like a version-1 file
    for t in ("mwi_ledger", "notifications", "pins", "pin_lockouts"):  # every table since 1
        raw.execute(f"DROP TABLE {t}")
    raw.execute("UPDATE _vmha_meta SET value = 1 WHERE key = 'schema_version'")
    raw.close()
    db = ConfigDB(path, role=Role.PRIMARY)
    try:
        assert db.get("subscribers", "1001") is not None
        assert db.list("mwi_ledger") == []
        ck = db.checksum()
        db.write(P_TERM, [put("mwi_ledger", {"mailbox": "mb-1001", "extension": "1001", "state": {
            "on": False, "new": 0, "old": 0, "confirmed": True, "term": P_TERM}})])
        assert db.checksum() != ck and db.checksum() == db.recompute_checksum()
    finally:
        db.close()
    raw = apsw.Connection(str(path))
    raw.execute("UPDATE _vmha_meta SET value = 99 WHERE key = 'schema_version'")
    raw.close()
    with pytest.raises(ConfigDBError, match="schema version 99"):
        ConfigDB(path, role=Role.PRIMARY)


def test_data_version_sees_commits_of_another_connection(tmp_path):
    a = ConfigDB(tmp_path / "c.db", role=Role.PRIMARY)
    b = ConfigDB(tmp_path / "c.db", role=Role.PRIMARY)  # e.g. the messaging service's connection
    try:
        v = a.data_version()
        a.write(P_TERM, [put("system_rules", {"key": "own", "value": 1})])
        assert a.data_version() == v  # own commits do not count
        b.write(P_TERM, [put("system_rules", {"key": "other", "value": 2})])
        assert a.data_version() != v
        assert a.state().head_seq == 2  # one log, whichever process wrote
    finally:
        a.close()
        b.close()
