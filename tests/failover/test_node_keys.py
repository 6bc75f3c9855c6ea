"""The node manager's key lines (failover/node.py): the key file read again when it changes or
on request (SIGHUP calls ``reload_keys``), a bad file changing nothing, the previous key's end
said once.  The real link is constructed (not run); the watcher runs on a virtual clock."""
from __future__ import annotations

import json
import os
import time

import trio

from failover.config import parse_config
from failover.core.fields import key_id
from failover.eventlog import EventLog
from failover.keys import KeyRing, save_keys
from failover.node import NodeManager

K1 = bytes(range(32))
K2 = bytes(range(50, 82))
K3 = bytes(range(150, 182))


def make(tmp_path) -> tuple[NodeManager, EventLog]:
    cfg = parse_config({
        "node": {"name": "a", "role": "primary", "data_dir": str(tmp_path / "d"),
                 "key_file": str(tmp_path / "k")},
        "link": {"listen": "127.0.0.1:1", "peer": "127.0.0.1:2", "peer_name": "b"},
        "ports": {"loopback": {"enabled": False}},
        "replication": {"enabled": False},
    }, str(tmp_path / "node.toml"))
    events = EventLog(cfg.node.data_dir / "events.jsonl", "a", console=None)
    return NodeManager(cfg, events), events


def records(events: EventLog, name: str) -> list[dict]:
    return [r for r in map(json.loads, events.path.read_text().splitlines()) if r["event"] == name]


async def test_reload_takes_a_good_file_and_refuses_a_bad_one(tmp_path):
    save_keys(tmp_path / "k", KeyRing(K1))
    nm, events = make(tmp_path)
    assert nm.accepted_keys() == (K1,) and nm.link.keys() == (K1,)  # the link reads the ring
    assert nm.reload_keys("test") is False  # unchanged: nothing said
    assert records(events, "keys_loaded") == []

    (tmp_path / "k").write_bytes(b"0123 not a key\n")
    assert nm.reload_keys("SIGHUP") is False
    err = records(events, "key_file_error")
    assert len(err) == 1 and err[0]["level"] == "error" and "SIGHUP" in err[0]["message"]
    assert "0123" not in err[0]["message"]  # the file's contents are never quoted
    assert nm.accepted_keys() == (K1,)  # the running keys stay

    os.chmod(tmp_path / "k", 0o644)
    save_keys(tmp_path / "k", KeyRing(K2, K1, time.time() + 3600))
    assert nm.reload_keys("SIGHUP") is True
    assert nm.accepted_keys() == (K2, K1) and nm.link.keys() == (K2, K1)
    (loaded,) = records(events, "keys_loaded")
    assert loaded["fields"]["current_id"] == key_id(K2).hex()
    assert loaded["fields"]["previous_id"] == key_id(K1).hex()
    text = events.path.read_text()
    assert K1.hex() not in text and K2.hex() not in text
    events.close()


async def test_watcher_reloads_a_changed_file_and_says_once_when_the_window_ends(
        tmp_path, autojump_clock):
    save_keys(tmp_path / "k", KeyRing(K2, K1, time.time() - 1))  # window already over
    nm, events = make(tmp_path)
    assert nm.accepted_keys() == (K2,)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(nm._watch_keys)
        await trio.sleep(5)
        assert len(records(events, "key_previous_expired")) == 1  # once, not every second
        assert records(events, "keys_loaded") == []  # the file did not change
        save_keys(tmp_path / "k", KeyRing(K3, K2, time.time() + 3600))
        await trio.sleep(1.5)
        (loaded,) = records(events, "keys_loaded")
        assert "the file changed" in loaded["message"]
        assert nm.accepted_keys() == (K3, K2)
        (tmp_path / "k").unlink()  # a missing file: one error, the keys stay
        await trio.sleep(5)
        assert len(records(events, "key_file_error")) == 1
        assert nm.accepted_keys() == (K3, K2)
        nursery.cancel_scope.cancel()
    events.close()
