"""The configuration database's readers of what the peer sends (telephony.configdb): the log
entries' changesets (``apply_remote``) and snapshots (``install_snapshot``), which are SQLite
session changesets parsed by the SQLite library.

A secondary's database (holding rows of its own, some clashing with the primary's) is kept in
a scratch directory (``scratch_dir``: on tmpfs when there is one); the input is either a batch of log entries
from the primary (real changesets of a primary's log, mutated, or raw bytes; right or wrong
digests, terms and seqs) or a snapshot (the primary's, mutated, or raw, with its positions and
checksum).  After a change the database is put back to its starting copy.

Invariants: only ``Refused`` and ``ConfigDBError`` escape; a refused batch or snapshot changes
nothing (positions, checksum, rows, conflicts); after an accepted one the rolling checksum
equals the checksum recomputed from the rows, and the positions moved to what was applied.
"""
from __future__ import annotations

import hashlib

from telephony.configdb import TABLES, ConfigDB, ConfigDBError, LogEntry, Refused, Snapshot
from telephony.core.terms import Role
from tests.fuzz.common import Input, check, scratch_dir


def sub(ext: str, name: str, mwi: str = "sip") -> dict:
    return {"op": "put", "table": "subscribers", "row": {
        "extension": ext, "name": name, "mailbox": ext, "mwi_method": mwi,
        "notify": [{"type": "email", "address": f"u{ext}@example.com"}], "greeting": None}}


class _State:
    """The primary's log and snapshot, the secondary's starting copy, the open secondary."""

    def __init__(self) -> None:
        self.dir = scratch_dir("configdb")
        p = ConfigDB(self.dir / "p.db", role=Role.PRIMARY)
        p.write(2, [sub("1001", "Ann"), sub("1002", "Bob"),
                    {"op": "put", "table": "holidays", "row": {"date": "2026-12-25",
                                                                "name": "Christmas"}}])
        p.write(2, [sub("1003", "Cy", "smdi"),
                    {"op": "put", "table": "system_rules",
                     "row": {"key": "max_message_seconds", "value": 300}}])
        p.write(4, [{"op": "delete", "table": "subscribers", "key": "1002"}, sub("1001", "Ann B")])
        self.entries = p.entries_after(0)
        s = ConfigDB(self.dir / "s.db", role=Role.SECONDARY)
        s.write(1, [sub("1001", "Ann (secondary)"), sub("1004", "Dee")])
        p.apply_remote(s.entries_after(0), Role.SECONDARY)  # so that its snapshot covers ours
        self.snapshot = p.build_snapshot()
        p.close()
        s.close()
        self.pristine = (self.dir / "s.db").read_bytes()
        self.db: ConfigDB | None = None

    def secondary(self) -> ConfigDB:
        if self.db is None:
            for suffix in ("", "-wal", "-shm"):
                (self.dir / f"s.db{suffix}").unlink(missing_ok=True)
            (self.dir / "s.db").write_bytes(self.pristine)
            self.db = ConfigDB(self.dir / "s.db", role=Role.SECONDARY)
        return self.db

    def changed(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


_STATE: list[_State] = []


def fingerprint(db: ConfigDB) -> tuple:
    return db.state(), {t: db.list(t) for t in TABLES}, db.conflict_count()


def mutate(inp: Input, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(inp.u8() % 8):
        if not out:
            break
        at = inp.uint(2) % len(out)
        kind = inp.u8() % 3
        if kind == 0:
            out[at] ^= inp.u8() or 1
        elif kind == 1:
            del out[at:at + 1 + inp.u8() % 8]
        else:
            out[at:at] = inp.sized(16)
    return bytes(out)


def changeset(inp: Input, st: _State) -> bytes:
    if inp.flag():
        return inp.sized(2000)
    return mutate(inp, st.entries[inp.u8() % len(st.entries)].changeset)


def test_one_input(data: bytes) -> None:
    if not _STATE:
        _STATE.append(_State())
    st = _STATE[0]
    db = st.secondary()
    before = fingerprint(db)
    inp = Input(data)
    try:
        if inp.u8() & 1:
            snap = st.snapshot
            body = mutate(inp, snap.data) if not inp.flag() else inp.sized(2000)
            checksum = snap.checksum if not inp.flag() else inp.uint(8)
            head = (snap.head_seq, snap.head_term) if not inp.flag() else (inp.u8(), inp.u8())
            result = db.install_snapshot(Snapshot(head[0], head[1], snap.applied_seq,
                                                  snap.applied_term, checksum, body))
            applied = head
        else:
            entries = []
            seq = 1 + (inp.u8() % 4 if inp.flag() else 0)
            for _ in range(1 + inp.u8() % 3):
                cs = changeset(inp, st)
                digest = hashlib.sha256(cs).digest() if not inp.flag() else inp.take(32)
                term = 2 if not inp.flag() else inp.u8()
                entries.append(LogEntry(term, seq, digest.ljust(32, b"\0"), cs))
                seq += 1 if not inp.flag() else inp.u8() % 3
            result = db.apply_remote(entries, Role.PRIMARY)
            applied = (entries[-1].seq, entries[-1].term)
    except (Refused, ConfigDBError):
        check(fingerprint(db) == before, "a refused batch or snapshot changed the database")
        return
    after = db.state()
    try:
        check((after.applied_seq, after.applied_term) == applied,
              f"applied position {after.applied_seq}/{after.applied_term}, expected {applied}")
        check(after.checksum == result.checksum, "the result's checksum is not the state's")
        check(after.checksum == db.recompute_checksum(),
              "the rolling checksum differs from the rows' checksum")
    finally:
        st.changed()


def seeds() -> list[bytes]:
    """The primary's log applied as it is (one, two, then all three entries; the third is of
    term 4) and its snapshot installed as it is."""
    out = []
    for count in range(3):
        data = bytes([0, 0, count])
        for k in range(count + 1):
            data += bytes([0, k, 0, 0]) + (bytes([1, 4]) if k == 2 else b"\0") + b"\0"
        out.append(data)
    return out + [b"\1\0\0\0\0", b"\1\0\3\0\1\1\0\0\0\0\0\0\0\0\0\0"]
