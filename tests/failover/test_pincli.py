"""``vmha db pin`` (failover/pincli.py): its parser and what it writes, against a real
configuration database behind an admin stand-in that answers ``db_get``/``db_write`` the way
the node manager does (the real admin socket: tests/integration/test_mailbox_pin.py)."""
from __future__ import annotations

import io
import json

import pytest

from failover.cli import build_parser
from failover.pincli import PinCommandError, run
from telephony.configdb import ConfigDB, ConfigDBError
from telephony.core.pin import verify_pin
from telephony.core.terms import Role


class Admin:
    def __init__(self, db: ConfigDB) -> None:
        self.db = db
        self.requests: list[dict] = []

    def __call__(self, request: dict) -> dict:
        self.requests.append(request)
        try:
            if request["op"] == "db_get":
                return {"ok": True, "row": self.db.get(request["table"], request["key"])}
            r = self.db.write(2, request["ops"])
            return {"ok": True, "seq": r.seq, "term": r.term}
        except ConfigDBError as e:
            return {"ok": False, "error": str(e)}


@pytest.fixture
def admin(tmp_path):
    db = ConfigDB(tmp_path / "config.db", role=Role.PRIMARY)
    db.write(2, [{"op": "put", "table": "subscribers", "row": {
        "extension": "1001", "name": "S", "mailbox": "mb1001", "mwi_method": "none",
        "notify": []}}])
    yield Admin(db)
    db.close()


def pin(argv: list[str], admin: Admin, stdin: str = "", monkeypatch=None) -> str:
    args = build_parser(plugins=False).parse_args(["db", "pin", *argv])
    if monkeypatch is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return run(args, admin)


def test_set_sends_only_a_hash_and_clears_the_lockout(admin, monkeypatch):
    admin.db.write(2, [{"op": "put", "table": "pin_lockouts", "row": {"extension": "1001", "state": {
        "failures": 0, "lockouts": 1, "locked_until": 2 ** 40, "term": 2}}}])
    out = pin(["set", "1001", "--stdin"], admin, "246810\n", monkeypatch)
    assert "scrypt n=16384 r=8 p=1" in out and "lockout is cleared" in out
    assert verify_pin("246810", admin.db.get("pins", "1001")["pin"])
    assert admin.db.get("pin_lockouts", "1001") is None
    assert "246810" not in json.dumps(admin.requests) and "246810" not in out


def test_set_asks_twice_without_echo(admin, monkeypatch):
    answers = iter(["1357", "1358"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    with pytest.raises(PinCommandError, match="differ"):
        pin(["set", "1001"], admin)
    assert admin.db.get("pins", "1001") is None
    answers = iter(["1357", "1357"])
    pin(["set", "1001"], admin)
    assert verify_pin("1357", admin.db.get("pins", "1001")["pin"])


@pytest.mark.parametrize("bad", ["123", "12ab", "", "1234567890123"])
def test_a_bad_pin_changes_nothing(admin, monkeypatch, bad):
    with pytest.raises(PinCommandError, match="4 to 12 digits.*nothing changed"):
        pin(["set", "1001", "--stdin"], admin, bad + "\n", monkeypatch)
    assert admin.db.get("pins", "1001") is None


def test_unknown_subscriber(admin):
    with pytest.raises(PinCommandError, match="no subscriber has extension '1009'"):
        pin(["show", "1009"], admin)


def test_skip_clear_unlock_and_show(admin, monkeypatch):
    pin(["set", "1001", "--stdin"], admin, "2468\n", monkeypatch)
    assert "on" in pin(["skip", "1001", "on"], admin)
    row = admin.db.get("pins", "1001")
    assert row["skip_pin_from_own_phone"] is True and verify_pin("2468", row["pin"])
    shown = json.loads(pin(["show", "1001"], admin))
    assert shown["pin_set"] and shown["hash"] == {"alg": "scrypt", "n": 16384, "r": 8, "p": 1}
    assert shown["skip_pin_from_own_phone"] and shown["locked_for_s"] == 0
    assert row["pin"]["hash"] not in json.dumps(shown) and row["pin"]["salt"] not in json.dumps(shown)
    assert "nothing to unlock" in pin(["unlock", "1001"], admin)
    admin.db.write(2, [{"op": "put", "table": "pin_lockouts", "row": {"extension": "1001", "state": {
        "failures": 2, "lockouts": 1, "locked_until": 2 ** 40, "term": 2}}}])
    shown = json.loads(pin(["show", "1001"], admin))
    assert shown["failures"] == 2 and shown["locked_for_s"] > 0 and shown["locked_until"]
    assert "unlocked" in pin(["unlock", "1001"], admin)
    assert admin.db.get("pin_lockouts", "1001") is None
    assert "calls from the extension itself" in pin(["clear", "1001"], admin)
    assert admin.db.get("pins", "1001")["pin"] is None


def test_a_refused_write_is_reported(admin, monkeypatch):
    def refusing(request):
        if request["op"] == "db_write":
            return {"ok": False, "error": "node a is not active: write on b"}
        return admin(request)
    with pytest.raises(PinCommandError, match="not active"):
        pin(["skip", "1001", "on"], refusing)
    assert admin.db.get("pins", "1001") is None
    with pytest.raises(PinCommandError, match="not running"):
        pin(["show", "1001"], lambda request: None)
