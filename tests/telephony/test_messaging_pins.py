"""The messaging service's PIN gate (``telephony.messaging.DbPinGate``) on a real configuration
database, real scrypt and a real Maildir store: what it answers, what it writes (with the
active term), and the event-log lines it reports, which never hold the PIN."""
from __future__ import annotations

import re

import trio

from telephony.configdb import ConfigDB
from telephony.configdb.pins import new_record, set_pin_ops
from telephony.core.pin import PinPolicy
from telephony.core.terms import Role
from telephony.messaging import Messaging
from telephony.store import MaildirStore

SUB = {"extension": "1001", "name": "S 1001", "mailbox": "mb1001", "mwi_method": "none",
       "notify": [], "greeting": None}


def make(tmp_path, **kw) -> tuple[Messaging, list[tuple[str, str, str]]]:
    db = ConfigDB(tmp_path / "config.db", role=Role.PRIMARY)
    db.write(2, [{"op": "put", "table": "subscribers", "row": {
        k: v for k, v in SUB.items() if k != "greeting"}}])
    (tmp_path / "store").mkdir()
    m = Messaging(node="a", db=db, store=MaildirStore(tmp_path / "store"),
                  spool_dir=tmp_path / "spool", streams=tmp_path / "streams", **kw)
    reported: list[tuple[str, str, str]] = []

    async def report(level: str, event: str, message: str) -> None:
        reported.append((level, event, message))

    m.report = report
    return m, reported


def no_pin_in(reported, *pins: str) -> None:
    for _, _, message in reported:
        for pin in pins:
            assert not re.search(rf"(?<![0-9]){pin}(?![0-9])", message), message


async def test_ask_verify_lock_and_report(tmp_path):
    m, reported = make(tmp_path, pin_policy=PinPolicy(max_failures=2, lockout_s=60))
    gate = m.flow.pins
    m.db.write(2, set_pin_ops("1001", new_record("2468"), skip=False, locked=False))
    m.activated(2)
    assert (await gate.check(SUB, "1001")).mode == "ask"
    assert (await gate.verify(SUB, "2468", "1001")).ok
    await gate.opened(SUB, "1001", "pin")
    v = await gate.verify(SUB, "1111", "5550100")
    assert not v.ok and v.locked_for == 0
    v = await gate.verify(SUB, "2222", "5550100")
    assert not v.ok and 59 <= v.locked_for <= 61
    c = await gate.check(SUB, "1001")
    assert c.mode == "locked" and c.locked_for > 0
    # the right PIN while locked does not open it (and is no new failure)
    v = await gate.verify(SUB, "2468", "1001")
    assert not v.ok and v.locked_for > 0
    assert m.db.get("pin_lockouts", "1001")["state"]["lockouts"] == 1
    events = [e for _, e, _ in reported]
    assert events == ["mailbox_access", "pin_failed", "mailbox_locked", "access_refused"]
    assert "mb1001" in reported[0][2] and "PIN accepted" in reported[0][2]
    assert "1 of 2" in reported[1][2] and "5550100" in reported[1][2]
    assert "locked for 60 s" in reported[2][2]
    no_pin_in(reported, "2468", "1111", "2222")


async def test_skip_from_own_phone_only_and_no_pin_means_refused(tmp_path):
    m, reported = make(tmp_path)
    gate = m.flow.pins
    m.activated(2)
    assert (await gate.check(SUB, "1001")).mode == "no_pin"
    assert "vmha db pin set 1001" in reported[-1][2]
    m.db.write(2, set_pin_ops("1001", None, skip=True, locked=False))
    assert (await gate.check(SUB, "1001")).mode == "skip"
    assert (await gate.check(SUB, "5550100")).mode == "no_pin"  # not the own phone


async def test_a_change_from_the_phone_is_hashed_and_written_in_the_active_term(tmp_path):
    m, reported = make(tmp_path)
    gate = m.flow.pins
    m.db.write(2, set_pin_ops("1001", new_record("2468"), skip=False, locked=False))
    m.activated(4)
    assert await gate.change(SUB, "97531", "1001")
    row = m.db.get("pins", "1001")
    assert set(row["pin"]) == {"alg", "n", "r", "p", "salt", "hash"}
    assert m.db.state().head_term == 4
    assert (await gate.verify(SUB, "97531", "1001")).ok
    assert not (await gate.verify(SUB, "2468", "1001")).ok
    no_pin_in(reported, "97531", "2468")
    assert [e for _, e, _ in reported] == ["pin_changed", "pin_failed"]


async def test_not_active_writes_nothing(tmp_path):
    m, reported = make(tmp_path)
    gate = m.flow.pins
    m.db.write(2, set_pin_ops("1001", new_record("2468"), skip=False, locked=False))
    before = m.db.state()
    v = await gate.verify(SUB, "1111", "1001")  # a drained call: term gone
    assert not v.ok and m.db.state() == before
    assert not await gate.change(SUB, "1357", "1001")


async def test_empty_or_overlong_entries_never_open(tmp_path):
    m, _ = make(tmp_path)
    gate = m.flow.pins
    rec = new_record("1234")
    m.db.write(2, set_pin_ops("1001", rec, skip=False, locked=False))
    m.activated(2)
    with trio.fail_after(30):
        assert not (await gate.verify(SUB, "", "1001")).ok
        assert not (await gate.verify(SUB, "12345678901234", "1001")).ok
