"""The event log's files at rest: the log is 0600 and its directory (the node's data_dir) 0700,
created so whatever the umask, and tightened (with a warning record) when they were looser."""
from __future__ import annotations

import json
import os
import stat

from failover.eventlog import EventLog, private_dir


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_new_data_dir_and_log_are_owner_only_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        data = tmp_path / "deep" / "data"
        log = EventLog(data / "events.jsonl", "a", console=None)
        log.write("info", "x", "y")
        log.close()
    finally:
        os.umask(old)
    assert mode(data) == 0o700 and mode(data / "events.jsonl") == 0o600
    assert [r["event"] for r in records(data / "events.jsonl")] == ["x"]


def test_a_looser_data_dir_and_log_are_tightened_with_a_warning(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o755)
    (data / "events.jsonl").write_text("")
    os.chmod(data / "events.jsonl", 0o644)
    log = EventLog(data / "events.jsonl", "a", console=None)
    log.close()
    assert mode(data) == 0o700 and mode(data / "events.jsonl") == 0o600
    (rec,) = records(data / "events.jsonl")
    assert rec["event"] == "data_dir_mode" and rec["level"] == "warning"
    assert "0755" in rec["message"] and "0700" in rec["message"]
    # the second start finds nothing to change
    EventLog(data / "events.jsonl", "a", console=None).close()
    assert len(records(data / "events.jsonl")) == 1


def test_private_dir_keeps_a_tighter_mode(tmp_path):
    d = tmp_path / "d"
    d.mkdir(mode=0o500)
    os.chmod(d, 0o500)
    assert private_dir(d) is None and mode(d) == 0o500
    os.chmod(d, 0o750)
    assert "0750" in private_dir(d) and mode(d) == 0o700
