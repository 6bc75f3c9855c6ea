"""The operator's operations (failover/operations.py) on a real node manager in this process:
a stand-in link and service (tests/failover/test_node_driver.py), the real supervisor, the
real configuration database and the real admin socket.  Each bad request gets a clear error
and changes nothing; each change attempt is one ``operator_action`` record naming who asked,
and no row value reaches the log."""
from __future__ import annotations

import json
import os
import pwd
import socket
from contextlib import asynccontextmanager

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as hs

from failover.admin import admin_request, peer_operator
from failover.config import parse_config
from failover.core import events as ev
from failover.core.state import Mode, Role, ServiceHealth, State
from failover.eventlog import EventLog
from failover.node import NodeManager
from failover.operations import perform, redact, write_summary
from telephony.core.pin import hash_pin
from tests.failover.test_node_driver import FakeLink, FakeService
from tests.util import until

GUARD = 20.0  # hang guard only
SUB = {"extension": "1001", "name": "Ann", "mailbox": "1001", "mwi_method": "none", "notify": []}


def node_cfg(tmp_path, role: str, **failover):
    data = {
        "node": {"name": "a" if role == "primary" else "b", "role": role,
                 "data_dir": str(tmp_path / "d"), "key_file": str(tmp_path / "k")},
        "link": {"listen": "127.0.0.1:1", "peer": "127.0.0.1:2",
                 "peer_name": "b" if role == "primary" else "a"},
        "ports": {"loopback": {"enabled": False}},
        "replication": {"enabled": False},
        "failover": failover,
    }
    return parse_config(data, str(tmp_path / "node.toml"))


@asynccontextmanager
async def running(tmp_path, role: str = "primary", *, peer_active: bool = False):
    """A node manager that runs in this test.  The primary with a silent peer activates at
    once; with ``peer_active`` the peer is heard active all along (this node stays
    inactive)."""
    cfg = node_cfg(tmp_path, role, startup_wait=0.0 if not peer_active else 1.0)
    events = EventLog(cfg.node.data_dir / "events.jsonl", cfg.node.name, console=None)
    svc = FakeService(cfg.node.data_dir / "state.json")
    nm = NodeManager(cfg, events, link=FakeLink(), service=svc)
    svc.inbox = nm.inbox_send
    peer_role = Role.SECONDARY if role == "primary" else Role.PRIMARY
    try:
        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                if peer_active:
                    async def heartbeats():
                        while True:
                            await nm.inbox_send.send(ev.PeerHeartbeat(
                                cfg.link.peer_name, peer_role, State.ACTIVE, 2 if role != "primary" else 3,
                                ServiceHealth.RUNNING))
                            await trio.sleep(0.02)
                    nursery.start_soon(heartbeats)
                await nursery.start(nm.run)
                if peer_active:
                    await until(lambda: nm.sup.peer is not None and nm.write_refusal() is not None
                                and "the active node is" in nm.write_refusal(), "the peer heard active")
                else:
                    await until(lambda: nm.write_refusal() is None, "the node active")
                yield nm
                nursery.cancel_scope.cancel()
    finally:
        events.close()


def log_records(nm) -> list[dict]:
    return [json.loads(x) for x in nm.events.path.read_text().splitlines()]


def actions(nm) -> list[dict]:
    return [r for r in log_records(nm) if r["event"] == "operator_action"]


async def table(nm, name: str) -> list[dict]:
    return (await perform(nm, "db_list", {"table": name}, "t", "unix"))["rows"]


# ============================================================================ reads


async def test_reads_answer_like_the_admin_socket_and_log_nothing(tmp_path):
    async with running(tmp_path) as nm:
        r = await perform(nm, "status", {}, "alice", "http")
        assert r["ok"] and r.code is None and r["status"]["node"]["name"] == "a"
        assert r["status"]["node"]["state"] == "active"
        assert await perform(nm, "db_list", {"table": "subscribers"}, "alice", "http") == \
            {"ok": True, "rows": []}
        assert await perform(nm, "db_get", {"table": "subscribers", "key": "1001"}, "alice", "http") == \
            {"ok": True, "row": None}
        assert await perform(nm, "db_conflicts", {"limit": 5}, "alice", "http") == \
            {"ok": True, "conflicts": [], "count": 0}
        for op, args, error in [
            ("db_list", {}, 'db_list needs "table"'),
            ("db_get", {"table": 7, "key": "1"}, 'db_get needs "table"'),
            ("db_list", {"table": "nope"}, "unknown table 'nope'"),
            ("db_get", {"table": "subscribers", "key": "x1"}, "subscribers.extension"),
            ("db_conflicts", {"limit": 0}, "limit must be an integer from 1 to 10000"),
            ("db_conflicts", {"limit": True}, "limit must be an integer from 1 to 10000"),
            ("db_conflicts", {"limit": "5"}, "limit must be an integer from 1 to 10000"),
            ("reboot", {}, "unknown request 'reboot': status, failover, failback, mode, db_write"),
            (None, {}, "unknown request None"),
        ]:
            r = await perform(nm, op, args, "alice", "http")
            assert not r["ok"] and error in r["error"], (op, args, r)
            assert r.code == "bad_request"
        assert actions(nm) == []


# ============================================================================ changes


async def test_a_configuration_write_is_done_and_logged_without_its_values(tmp_path):
    async with running(tmp_path) as nm:
        secret = "Ann-Secret-Name-7"
        r = await perform(nm, "db_write", {"ops": [{"op": "put", "table": "subscribers",
                                                    "row": {**SUB, "name": secret}}]}, "alice", "http")
        assert r["ok"] and r["changes"] == 1 and r.code is None, r
        assert (await table(nm, "subscribers"))[0]["name"] == secret
        [act] = actions(nm)
        assert act["fields"] == {"operator": "alice", "via": "http", "op": "db_write", "ok": True,
                                 "message": f"put subscribers x1 (seq {r['seq']}, 1 changes)"}
        assert act["level"] == "info" and "alice (http) db_write: done" in act["message"]
        assert secret not in nm.events.path.read_text()


@pytest.mark.parametrize("ops, error", [
    (None, 'db_write needs "ops": a non-empty list'),
    ([], 'db_write needs "ops": a non-empty list'),
    ({"op": "put"}, 'db_write needs "ops": a non-empty list'),
    ([{"op": "upsert", "table": "subscribers", "row": SUB}], "op must be 'put' or 'delete'"),
    ([{"op": "put", "table": "nope", "row": SUB}], "unknown table 'nope'"),
    ([{"op": "put", "table": "subscribers", "row": {**SUB, "mailbox": "x y"}}], "subscribers.mailbox"),
    ([{"op": "put", "table": "subscribers", "row": SUB}, {"op": "delete", "table": "subscribers",
                                                          "key": "2002"}], "does not exist"),
    (["put"], "must be an object"),
])
async def test_a_bad_write_is_refused_changes_nothing_and_is_logged(tmp_path, ops, error):
    async with running(tmp_path) as nm:
        r = await perform(nm, "db_write", {"ops": ops}, "unix:root", "unix")
        assert not r["ok"] and error in r["error"], r
        assert r.code == "bad_request"
        assert await table(nm, "subscribers") == []
        [act] = actions(nm)
        assert act["fields"]["ok"] is False and act["fields"]["operator"] == "unix:root"
        assert act["fields"]["via"] == "unix" and act["level"] == "warning"


async def test_a_pin_hash_never_reaches_the_log_even_when_refused(tmp_path):
    async with running(tmp_path) as nm:
        good = hash_pin("482913", os.urandom(16))
        assert (await perform(nm, "db_write", {"ops": [
            {"op": "put", "table": "subscribers", "row": SUB},
            {"op": "put", "table": "pins", "row": {"extension": "1001", "pin": good,
                                                   "skip_pin_from_own_phone": False}}]},
            "alice", "http"))["ok"]
        bad = {**good, "hash": "zz" + good["hash"][2:]}  # not hex: the database names the value
        r = await perform(nm, "db_write", {"ops": [{"op": "put", "table": "pins", "row": {
            "extension": "1001", "pin": bad, "skip_pin_from_own_phone": False}}]}, "alice", "http")
        assert not r["ok"] and r.code == "bad_request"
        text = nm.events.path.read_text()
        for value in (good["hash"], good["salt"], bad["hash"][2:]):
            assert value not in text
        assert [a["fields"]["ok"] for a in actions(nm)] == [True, False]
        assert "put pins x1" in actions(nm)[1]["fields"]["message"]


def test_redact_takes_out_every_row_value():
    ops = [{"op": "put", "table": "pins", "row": {"extension": "1001", "pin": {"hash": "abcdef"}}}]
    text = "ops[0]: pins.pin: value {'hash': 'abcdef'} is bad; also 'abcdef' and 1001"
    out = redact(text, ops)
    assert "abcdef" not in out and "<value>" in out
    assert write_summary(ops + ops + ["x"]) == "put pins x2, 1 not an object"
    assert write_summary("nope") == "no operations"


async def test_writes_on_an_inactive_node_are_refused_as_not_active(tmp_path):
    async with running(tmp_path, "secondary", peer_active=True) as nm:
        r = await perform(nm, "db_write", {"ops": [{"op": "put", "table": "subscribers", "row": SUB}]},
                          "alice", "http")
        assert not r["ok"] and r.code == "not_active"
        assert r["error"].endswith("; the active node is a: write there"), r
        assert await table(nm, "subscribers") == []
        [act] = actions(nm)
        assert act["fields"]["ok"] is False and "the active node is a" in act["fields"]["message"]


async def test_commands_validate_their_arguments_and_are_logged(tmp_path):
    async with running(tmp_path) as nm:
        for op, args, error in [("failover", {"force": "yes"}, "force must be true or false"),
                                ("failback", {"force": 1}, "force must be true or false"),
                                ("mode", {"mode": "sometimes"}, "unknown mode 'sometimes'"),
                                ("mode", {"mode": 3}, "unknown mode 3"),
                                ("mode", {}, "unknown mode ''")]:
            r = await perform(nm, op, args, "bob", "http")
            assert not r["ok"] and error in r["error"] and r.code == "bad_request", (op, r)
        assert nm.sup.mode is Mode.AUTOMATIC and nm.write_refusal() is None  # nothing changed
        r = await perform(nm, "mode", {"mode": "Manual"}, "bob", "http")
        assert r == {"ok": True, "message": "mode manual"} and nm.sup.mode is Mode.MANUAL
        r = await perform(nm, "failback", {"force": False}, "bob", "http")
        assert r == {"ok": True, "message": "a is already active"}
        r = await perform(nm, "failover", {}, "bob", "http")  # the peer is silent
        assert not r["ok"] and r.code == "conflict" and "not reachable" in r["message"]
        got = [(a["fields"]["op"], a["fields"]["ok"], a["fields"]["operator"]) for a in actions(nm)]
        assert got == [("failover", False, "bob"), ("failback", False, "bob"), ("mode", False, "bob"),
                       ("mode", False, "bob"), ("mode", False, "bob"), ("mode", True, "bob"),
                       ("failback", True, "bob"), ("failover", False, "bob")]


async def test_a_failing_change_is_still_recorded_and_the_error_propagates(tmp_path):
    async with running(tmp_path) as nm:
        async def broken(*a, **kw):
            raise KeyError("injected")
        nm.request = broken
        with pytest.raises(KeyError):
            await perform(nm, "failover", {}, "bob", "http")
        [act] = actions(nm)
        assert act["fields"]["ok"] is False and act["fields"]["message"] == "failed: KeyError"


# ============================================================================ the admin socket


async def test_the_admin_socket_names_the_user_of_the_connecting_process(tmp_path):
    me = pwd.getpwuid(os.getuid()).pw_name
    async with running(tmp_path) as nm:
        path = nm.cfg.admin.socket
        reply = await trio.to_thread.run_sync(admin_request, path, {"op": "mode", "mode": "manual"})
        assert reply == {"ok": True, "message": "mode manual"}
        reply = await trio.to_thread.run_sync(admin_request, path, {"op": "db_write", "ops": []})
        assert reply == {"ok": False, "error": 'db_write needs "ops": a non-empty list'}
        reply = await trio.to_thread.run_sync(admin_request, path, {"op": "nope"})
        assert reply["error"].startswith("unknown request 'nope'")
        got = [(a["fields"]["operator"], a["fields"]["via"], a["fields"]["op"], a["fields"]["ok"])
               for a in actions(nm)]
        assert got == [(f"unix:{me}", "unix", "mode", True), (f"unix:{me}", "unix", "db_write", False)]


def test_peer_operator_reads_the_peer_credentials():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert peer_operator(a) == f"unix:{pwd.getpwuid(os.getuid()).pw_name}"
    finally:
        a.close()
        b.close()
    tcp = socket.socket()
    try:
        assert peer_operator(tcp) == "unix"  # not a Unix socket: the kernel does not say
    finally:
        tcp.close()


# ============================================================================ fuzz: summaries and redaction

_TEXT = hs.text(alphabet="0123456789ABCDEFGHIJKMNOPQRSTUWXYZ#@ ", max_size=12)  # no letter of <value>
_VALUES = hs.recursive(hs.none() | hs.booleans() | hs.integers() | _TEXT,
                       lambda inner: hs.lists(inner, max_size=3) | hs.dictionaries(_TEXT, inner, max_size=3),
                       max_leaves=8)
_OPS = hs.lists(hs.one_of(hs.fixed_dictionaries({"op": hs.sampled_from(["put", "delete", 3]),
                                                 "table": _TEXT,
                                                 "row": hs.dictionaries(_TEXT, _VALUES, max_size=4)}),
                          _VALUES), max_size=5)


@settings(max_examples=300, deadline=None)
@given(ops=_OPS, filler=_TEXT)
def test_fuzz_no_row_string_survives_redaction(ops, filler):
    rows = [op["row"] for op in ops if isinstance(op, dict) and isinstance(op.get("row"), dict)]
    strings: list[str] = []

    def walk(v):
        if isinstance(v, str):
            strings.append(v)
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(k)
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    for row in rows:
        for v in row.values():
            walk(v)
    # an error text quoting every value both ways, as the database's messages do
    text = filler.join([repr(v) for row in rows for v in row.values()] + strings + [filler])
    out = redact(text, ops)
    for s in strings:
        if len(s) >= 3:
            assert s not in out, (s, out)
    summary = write_summary(ops)
    assert isinstance(summary, str) and len(summary) < 2000
