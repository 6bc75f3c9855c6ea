"""The PIN tables of the configuration database (``pins``, ``pin_lockouts``): their value checks,
the writes :class:`PinBook` makes, replication of a lockout to the peer's database, the upgrade
of a version-2 file, and the database file's mode."""
from __future__ import annotations

import os
import stat

import apsw
import pytest

from telephony.configdb import ConfigDB, ConfigDBError
from telephony.configdb.pins import PinBook, new_record, set_pin_ops, unlock_ops
from telephony.core.pin import LockState, PinPolicy, hash_pin, remaining, verify_pin
from telephony.core.terms import Role

P_TERM, S_TERM = 2, 3
CHEAP = hash_pin("2468", bytes(16), n=2 ** 10, r=1, p=1)


def subscriber(ext: str) -> dict:
    return {"op": "put", "table": "subscribers", "row": {
        "extension": ext, "name": f"S {ext}", "mailbox": f"mb{ext}", "mwi_method": "none",
        "notify": []}}


@pytest.fixture
def db(tmp_path):
    d = ConfigDB(tmp_path / "config.db", role=Role.PRIMARY)
    d.write(P_TERM, [subscriber("1001")])
    yield d
    d.close()


def test_a_pin_row_holds_only_the_hash_record(db):
    record = new_record("2468")
    db.write(P_TERM, set_pin_ops("1001", record, skip=False, locked=False))
    row = db.get("pins", "1001")
    assert row == {"extension": "1001", "pin": record, "skip_pin_from_own_phone": False}
    assert verify_pin("2468", row["pin"]) and len(bytes.fromhex(row["pin"]["salt"])) == 16
    raw = db.path.read_bytes() + (db.path.with_name("config.db-wal").read_bytes()
                                  if db.path.with_name("config.db-wal").exists() else b"")
    assert b"2468" not in raw.replace(record["hash"].encode(), b"").replace(
        record["salt"].encode(), b"")  # the PIN itself is nowhere in the file


@pytest.mark.parametrize("row, fragment", [
    ({"extension": "1001", "pin": {"alg": "scrypt"}, "skip_pin_from_own_phone": False},
     "pins.pin"),
    ({"extension": "1001", "pin": {**CHEAP, "n": 2 ** 24}, "skip_pin_from_own_phone": False},
     "pins.pin"),
    ({"extension": "1001", "pin": "2468", "skip_pin_from_own_phone": False}, "pins.pin"),
    ({"extension": "1001", "pin": None, "skip_pin_from_own_phone": "yes"},
     "pins.skip_pin_from_own_phone"),
    ({"extension": "10a1", "pin": None, "skip_pin_from_own_phone": True}, "pins.extension"),
    ({"extension": "1001", "pin": None}, "needs skip_pin_from_own_phone"),
])
def test_bad_pin_rows_are_refused_and_change_nothing(db, row, fragment):
    before = db.state()
    with pytest.raises(ConfigDBError, match=fragment):
        db.write(P_TERM, [{"op": "put", "table": "pins", "row": row}])
    assert db.state() == before and db.get("pins", "1001") is None


@pytest.mark.parametrize("state", [
    {"failures": 1, "lockouts": 0, "locked_until": 0},
    {"failures": -1, "lockouts": 0, "locked_until": 0, "term": 2},
    {"failures": 1, "lockouts": 0, "locked_until": 1.5, "term": 2},
    [],
])
def test_bad_lockout_rows_are_refused(db, state):
    with pytest.raises(ConfigDBError, match="pin_lockouts.state"):
        db.write(P_TERM, [{"op": "put", "table": "pin_lockouts",
                           "row": {"extension": "1001", "state": state}}])


def test_failures_lock_and_a_success_or_a_new_pin_unlocks(db):
    book = PinBook(db, PinPolicy(max_failures=2, lockout_s=60))
    db.write(P_TERM, set_pin_ops("1001", CHEAP, skip=True, locked=False))
    s = book.record_failure("1001", 1000.0, P_TERM)
    assert s == LockState(1, 0, 0) and book.lock_state("1001") == s
    s = book.record_failure("1001", 1000.0, P_TERM)
    assert remaining(s, 1000.0) == 60 and book.lock_state("1001").lockouts == 1
    assert db.get("pin_lockouts", "1001")["state"]["term"] == P_TERM
    book.record_success("1001", P_TERM)
    assert db.get("pin_lockouts", "1001") is None
    book.record_success("1001", P_TERM)  # nothing to forget: no write
    book.record_failure("1001", 1000.0, P_TERM)
    book.set_record("1001", new_record("1357"), P_TERM)  # from the phone: skip is kept
    assert db.get("pin_lockouts", "1001") is None
    entry = book.entry("1001")
    assert entry.skip_pin_from_own_phone and verify_pin("1357", entry.record)
    assert unlock_ops("1001", False) == []


def test_a_stale_term_cannot_write_a_failure(db):
    book = PinBook(db)
    db.write(P_TERM + 2, [subscriber("1002")])  # a newer term wrote meanwhile
    with pytest.raises(ConfigDBError, match="below"):
        book.record_failure("1001", 1000.0, P_TERM)


def test_a_lockout_replicates_to_the_peer_database(tmp_path, db):
    """The secondary's database applies the primary's log: its PinBook sees the same lock
    (so the peer's service enforces it after a failover)."""
    book = PinBook(db, PinPolicy(max_failures=1, lockout_s=120))
    db.write(P_TERM, set_pin_ops("1001", CHEAP, skip=False, locked=False))
    book.record_failure("1001", 5000.0, P_TERM)
    peer = ConfigDB(tmp_path / "peer.db", role=Role.SECONDARY)
    try:
        result = peer.apply_remote(db.entries_after(0), Role.PRIMARY)
        assert result is not None
        assert remaining(PinBook(peer).lock_state("1001"), 5000.0) == 120
        assert peer.checksum() == db.checksum()
    finally:
        peer.close()


def test_deleting_a_subscriber_deletes_its_pin_and_lockout_everywhere(tmp_path, db):
    """A new subscriber later given the same extension must not inherit the old PIN: the rows
    go in the same write (one changeset), so the peer's database loses them too."""
    book = PinBook(db, PinPolicy(max_failures=1, lockout_s=120))
    db.write(P_TERM, [subscriber("1002")] + set_pin_ops("1001", CHEAP, skip=True, locked=False)
             + set_pin_ops("1002", CHEAP, skip=False, locked=False))
    book.record_failure("1001", 5000.0, P_TERM)
    res = db.write(P_TERM, [{"op": "delete", "table": "subscribers", "key": "1001"}])
    assert res.changes == 3  # the subscriber, its PIN and its lockout
    assert db.get("pins", "1001") is None and db.get("pin_lockouts", "1001") is None
    assert db.get("pins", "1002") is not None  # another subscriber's PIN stays
    peer = ConfigDB(tmp_path / "peer.db", role=Role.SECONDARY)
    try:
        assert peer.apply_remote(db.entries_after(0), Role.PRIMARY) is not None
        assert peer.get("pins", "1001") is None and peer.get("pins", "1002") is not None
        assert peer.checksum() == db.checksum()
    finally:
        peer.close()
    # a subscriber with a PIN and no lockout: two rows; one with neither: one row
    assert db.write(P_TERM, [{"op": "delete", "table": "subscribers", "key": "1002"}]).changes == 2
    db.write(P_TERM, [subscriber("1003")])
    assert db.write(P_TERM, [{"op": "delete", "table": "subscribers", "key": "1003"}]).changes == 1


def test_a_version_2_file_gets_the_pin_tables(tmp_path):
    path = tmp_path / "v2.db"
    d = ConfigDB(path, role=Role.PRIMARY)
    d.write(P_TERM, [subscriber("1001")])
    d.close()
    raw = apsw.Connection(str(path))
    for t in ("pins", "pin_lockouts"):
        raw.execute(f"DROP TABLE {t}")
    raw.execute("UPDATE _vmha_meta SET value = 2 WHERE key = 'schema_version'")
    raw.close()
    d = ConfigDB(path, role=Role.PRIMARY)
    try:
        assert d.list("pins") == [] and d.get("subscribers", "1001") is not None
        d.write(P_TERM, set_pin_ops("1001", CHEAP, skip=False, locked=False))
        assert d.checksum() == d.recompute_checksum()
    finally:
        d.close()


def test_the_database_file_is_owner_only_even_if_it_was_looser(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "c.db"
        d = ConfigDB(path, role=Role.PRIMARY)
        d.write(P_TERM, [subscriber("1001")])
        d.close()
        os.chmod(path, 0o644)
        d = ConfigDB(path, role=Role.PRIMARY)
        d.write(P_TERM, [subscriber("1002")])
        try:
            for p in tmp_path.iterdir():
                assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, (p, oct(p.stat().st_mode))
        finally:
            d.close()
    finally:
        os.umask(old)
