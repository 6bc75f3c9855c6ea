"""Mailbox PINs on a real pair with real SIPp callers keying the PIN as SIP INFO
(lab/sipp/uac_mailbox_pin.xml, uac_mailbox_pin_twice.xml) into the SIP ports (pjsua2
workers): the right PIN opens the mailbox and plays the message, a wrong one does not; wrong
PINs lock the mailbox and the lock, replicated in the configuration database, is enforced by
the peer after a failover; the operator's `vmha db pin` sets and unlocks; neither node's event
log nor its log holds a PIN; and after the calls no file under either node's data_dir, nor in
the message store, is readable by group or others.

Hang guards only; no timing is judged here.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from failover.config import load_config
from lab.pair import Pair, free_udp_block
from lab.sip import free_udp_port, sipp
from tests.integration.conftest import until, wait_active
from tests.integration.test_messaging import FAST, _stored_directly, admin
from tests.integration.test_sip import call as leave_by_sip
from tests.integration.test_sip import port_states, sip, sip_port, subscriber
from tests.telephony.sip.test_worker import PJSUA2_MISSING

pytestmark = [pytest.mark.multiprocess,
              pytest.mark.skipif(PJSUA2_MISSING is not None, reason=PJSUA2_MISSING or ""),
              pytest.mark.skipif(shutil.which("sipp") is None,
                                 reason="SIPp is not installed: the calling peer "
                                        "(apt-get install sip-tester)")]

PIN, WRONG, OTHER = "2468", "1357", "9173"
#: two wrong PINs lock for ten minutes (the test never waits for the lock to run out)
LOCKING = {"messaging": {**FAST["messaging"], "pin_max_failures": 2, "pin_lockout": 600}}


def vmha(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "failover.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


async def set_pin(node, ext: str, pin: str) -> None:
    r = await trio.to_thread.run_sync(lambda: vmha("db", "pin", "set", ext, "--stdin", "-c",
                                                   str(node.config), stdin=pin + "\n"))
    assert r.returncode == 0 and "scrypt n=16384 r=8 p=1" in r.stdout, r
    assert pin not in r.stdout + r.stderr


def keys(prefix: str, pin: str) -> list[str]:
    out = []
    for i, d in enumerate(pin, 1):
        out += ["-key", f"{prefix}{i}", d]
    return out


async def pin_call(cwd: Path, port: int, caller: str, *entries: str) -> int:
    """A SIPp call from ``caller`` keying each of ``entries`` (4 digits, then #) by SIP INFO;
    returns SIPp's exit code (0: every INFO got its 200 and the node hung up with a BYE)."""
    cwd.mkdir(parents=True, exist_ok=True)
    scenario = "uac_mailbox_pin.xml" if len(entries) == 1 else "uac_mailbox_pin_twice.xml"
    args = [f"127.0.0.1:{port}", "-s", "5000", "-m", "1", "-mp", str(free_udp_block(4)),
            "-key", "caller", caller, *keys("d", entries[0])]
    if len(entries) == 2:
        args += keys("e", entries[1])
    async with sipp(cwd, scenario, *args) as uac:
        return await uac.exit_code(90)


def events(node) -> list[dict]:
    path = load_config(node.config).node.data_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pin_events(node) -> list[tuple[str, str]]:
    return [(e["event"], e["message"]) for e in events(node)
            if e["event"] in ("mailbox_access", "pin_failed", "mailbox_locked", "access_refused",
                              "pin_changed")]


def store_dir(pair: Pair, mailbox: str) -> Path:
    return load_config(pair.a.config).store.maildir / mailbox


def heard(pair: Pair, mailbox: str) -> int:
    d = store_dir(pair, mailbox) / "cur"
    return sum(1 for _ in d.iterdir()) if d.exists() else 0


def assert_no_pin_anywhere(pair: Pair, pair_dir: Path, *pins: str) -> None:
    """No PIN in either event log or either node's log (standalone digit strings: ports and
    times may contain the digits inside longer numbers)."""
    for node in (pair.a, pair.b):
        texts = [(load_config(node.config).node.data_dir / "events.jsonl").read_text(),
                 node.log_path.read_text(errors="replace")]
        for text in texts:
            for pin in pins:
                hit = re.search(rf"(?<![0-9]){pin}(?![0-9])", text)
                assert hit is None, text[max(0, hit.start() - 200):hit.end() + 50]


def make_pair(pair_dir: Path, extra: dict) -> Pair:
    return Pair(pair_dir, extra=extra, extra_a=sip("a", mwi_port=free_udp_port()),
                extra_b=sip("b", mwi_port=free_udp_port()))


async def start(pair: Pair) -> None:
    pair.start()
    await wait_active(pair, "a")
    r = await admin(pair.a, {"op": "db_write", "ops": [subscriber("1001"), subscriber("1002")]})
    assert r["ok"], r
    for name in ("a", "b"):
        node = pair.node(name)
        await until(lambda node=node: set(port_states(node).values()) == {"idle"},
                    f"{name}'s SIP ports up")


async def test_right_pin_opens_wrong_pin_does_not_and_no_pin_is_logged(pair_dir):
    with make_pair(pair_dir, FAST) as pair:
        await start(pair)
        port = sip_port(pair, "a")
        root = store_dir(pair, "mb1001").parent
        await trio.to_thread.run_sync(_stored_directly, root, "mb1001", "1001", "m1")
        # no PIN set yet: access is refused (the recommended default)
        assert await pin_call(pair_dir / "nopin", port, "1001", PIN) == 0
        await until(lambda: any(e == "access_refused" and "no PIN is set" in m
                                for e, m in pin_events(pair.a)), "refused: no PIN")
        assert heard(pair, "mb1001") == 0
        await set_pin(pair.a, "1001", PIN)
        # the operator's write is in the event log: which table, never the row (the hash)
        writes = [e for e in events(pair.a) if e["event"] == "config_write"]
        assert any("put pins x1" in e["message"] for e in writes), writes
        assert not any("scrypt" in json.dumps(e) for e in writes), writes
        # a wrong PIN: not opened, the message stays new, one failure counted
        assert await pin_call(pair_dir / "wrong", port, "1001", WRONG) == 0
        await until(lambda: any(e == "pin_failed" for e, _ in pin_events(pair.a)), "pin_failed")
        assert heard(pair, "mb1001") == 0
        (_, failed), = [x for x in pin_events(pair.a) if x[0] == "pin_failed"]
        assert "mailbox mb1001 (extension 1001)" in failed and "1 of 5" in failed, failed
        # the right PIN: the mailbox opens and the message is played to the end (heard)
        assert await pin_call(pair_dir / "right", port, "1001", PIN) == 0
        await until(lambda: heard(pair, "mb1001") == 1, "the message heard after the right PIN")
        assert any(e == "mailbox_access" and "PIN accepted" in m and "from 1001" in m
                   for e, m in pin_events(pair.a)), pin_events(pair.a)
        # the success reset the count: the lockout row is gone, on both nodes
        await until(lambda: (pair.b.admin({"op": "db_get", "table": "pins", "key": "1001"})
                             or {}).get("row"), "the PIN row replicated to b")
        assert (await admin(pair.a, {"op": "db_get", "table": "pin_lockouts",
                                     "key": "1001"}))["row"] is None
        # the hash is stored, never the PIN
        row = (await admin(pair.b, {"op": "db_get", "table": "pins", "key": "1001"}))["row"]
        assert row["pin"]["alg"] == "scrypt" and row["skip_pin_from_own_phone"] is False
        assert_no_pin_anywhere(pair, pair_dir, PIN, WRONG)


async def test_a_lockout_is_enforced_by_the_peer_after_a_failover(pair_dir):
    with make_pair(pair_dir, LOCKING) as pair:
        await start(pair)
        root = store_dir(pair, "mb1001").parent
        await trio.to_thread.run_sync(_stored_directly, root, "mb1001", "1001", "m1")
        await set_pin(pair.a, "1001", PIN)
        # two wrong PINs in one call lock the mailbox (pin_max_failures = 2)
        assert await pin_call(pair_dir / "lock", sip_port(pair, "a"), "1001", WRONG, OTHER) == 0
        await until(lambda: any(e == "mailbox_locked" for e, _ in pin_events(pair.a)),
                    "a locks the mailbox")
        (_, locked), = [x for x in pin_events(pair.a) if x[0] == "mailbox_locked"]
        assert "locked for 600 s" in locked and "after 2 wrong PINs" in locked, locked
        await until(lambda: ((pair.b.admin({"op": "db_get", "table": "pin_lockouts",
                                            "key": "1001"}) or {}).get("row") or {})
                    .get("state", {}).get("lockouts") == 1, "the lockout replicated to b")
        # a planned failover: b is active now
        r = await admin(pair.a, {"op": "failover"})
        assert r["ok"], r
        await until(lambda: pair.b.state() == "active", "b active after the failover",
                    timeout=60)
        # the right PIN at b: refused, the mailbox stays locked there
        assert await pin_call(pair_dir / "peer", sip_port(pair, "b"), "1001", PIN) == 0
        await until(lambda: any(e == "access_refused" and "locked for another" in m
                                for e, m in pin_events(pair.b)), "b refuses: locked")
        assert not any(e == "mailbox_access" for e, _ in pin_events(pair.b))
        assert heard(pair, "mb1001") == 0
        # the operator unlocks on the active node; then the right PIN opens at b
        r = await trio.to_thread.run_sync(lambda: vmha("db", "pin", "unlock", "1001", "-c",
                                                       str(pair.b.config)))
        assert r.returncode == 0 and "unlocked" in r.stdout, r
        assert await pin_call(pair_dir / "after", sip_port(pair, "b"), "1001", PIN) == 0
        await until(lambda: heard(pair, "mb1001") == 1, "heard at b after the unlock")
        assert_no_pin_anywhere(pair, pair_dir, PIN, WRONG, OTHER)


def loose(root: Path) -> list[str]:
    """Every file or directory below ``root`` (and root) that group or others may use."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [None, *dirnames, *filenames]:
            p = Path(dirpath) if name is None else Path(dirpath) / name
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue  # gone meanwhile (a temp file)
            if stat.S_ISLNK(st.st_mode):
                continue
            if st.st_mode & 0o077:
                out.append(f"{p} {stat.S_IMODE(st.st_mode):04o}")
    return out


async def test_no_file_under_a_nodes_data_dir_or_in_the_store_is_group_or_other_readable(pair_dir):
    data_a = pair_dir / "data" / "a"
    data_a.mkdir(parents=True)
    os.chmod(data_a, 0o755)  # an operator's loose directory: tightened at start, with a warning
    with make_pair(pair_dir, FAST) as pair:
        await start(pair)
        assert load_config(pair.a.config).node.data_dir.resolve() == data_a.resolve()
        root = store_dir(pair, "mb1001").parent
        await set_pin(pair.a, "1001", PIN)
        await set_pin(pair.a, "1002", OTHER)
        # calls: messages left through the SIP port (recorded, delivered, lamp, ledger), a
        # mailbox access, a wrong PIN
        for ext in ("1001", "1002"):
            assert await leave_by_sip(pair_dir / f"msg{ext}", sip_port(pair, "a"),
                                      f"Diversion: <sip:{ext}@pbx>;reason=no-answer") == 0
            await until(lambda ext=ext: any((store_dir(pair, f"mb{ext}") / "new").glob("*")),
                        f"a message for {ext}")
        assert await pin_call(pair_dir / "right", sip_port(pair, "a"), "1002", OTHER) == 0
        assert await pin_call(pair_dir / "wrong", sip_port(pair, "a"), "1001", WRONG) == 0
        await until(lambda: heard(pair, "mb1002") == 1, "1002 heard its message")
        await until(lambda: any(e == "pin_failed" for e, _ in pin_events(pair.a)), "failure")
        # everything replicated to b (database and files)
        await until(lambda: (pair.b.admin({"op": "db_get", "table": "pin_lockouts",
                                           "key": "1001"}) or {}).get("row"), "b has the lock row")
        assert any(e["event"] == "data_dir_mode" and "0755" in e["message"]
                   for e in events(pair.a)), "no warning about the loose data_dir"
        for name in ("a", "b"):
            data_dir = load_config(pair.node(name).config).node.data_dir
            found = await trio.to_thread.run_sync(loose, data_dir)
            assert found == [], found
            assert (data_dir / "config.db").exists() and (data_dir / "events.jsonl").exists()
        # the shared store's messages and mailbox directories (its root was made by the test)
        found = [x for x in await trio.to_thread.run_sync(loose, root) if not x.startswith(f"{root} ")]
        assert found == [], found
