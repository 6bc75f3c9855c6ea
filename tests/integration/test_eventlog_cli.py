"""The event log and `vmha events`: JSON lines written, read back, shown readable or as JSON,
a corrupt line reported rather than skipped, and --follow picking up new records."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from failover.configure import write_pair
from failover.eventlog import EventLog, format_record, read_events


def pair_config(tmp_path):
    files = write_pair(tmp_path, "a", "b", "127.0.0.1:13001", "127.0.0.1:13002", "data",
                       loopback_ports=(13011, 13012))
    return files.primary


def vmha(*args, timeout=20):
    return subprocess.run([sys.executable, "-m", "failover.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_records_round_trip_and_bad_lines_are_reported(tmp_path):
    log = EventLog(tmp_path / "events.jsonl", "a", console=None)
    log.write("warning", "failover", "failover: a active", {"took_ms": 7.5})
    log.write("debug", "noise", "below the level: not written")
    log.close()
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write("{not json\n")
    recs = list(read_events(tmp_path / "events.jsonl"))
    assert [r["event"] for r in recs] == ["failover", "bad_log_line"]
    assert recs[0]["fields"] == {"took_ms": 7.5} and recs[0]["node"] == "a"
    assert "WARNING" in format_record(recs[0]) and "failover: a active" in format_record(recs[0])


def test_vmha_events_prints_the_log_and_follows_it(tmp_path):
    cfg = pair_config(tmp_path)
    r = vmha("events", "-c", str(cfg))
    assert r.returncode == 1 and "no event log" in r.stderr
    data = tmp_path / "data" / "a"
    log = EventLog(data / "events.jsonl", "a", console=None)
    log.write("warning", "failover", "b inactive: peer took over")
    r = vmha("events", "-c", str(cfg), "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout.splitlines()[0])["message"] == "b inactive: peer took over"
    proc = subprocess.Popen([sys.executable, "-m", "failover.cli", "events", "-f", "-c", str(cfg)],
                            stdout=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        reader.start()
        deadline = time.monotonic() + 20
        while not lines and time.monotonic() < deadline:
            time.sleep(0.05)
        log.write("error", "service_down", "messaging service stopped: killed")
        while len(lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "service_down" in lines[1] and "ERROR" in lines[1]
    finally:
        proc.kill()
        proc.wait(timeout=5)
        log.close()


def test_writing_the_event_log_never_raises_when_the_disk_fails(tmp_path):
    """Every task's failure report goes through the event log: a full disk must not turn a
    report into a new failure.  /dev/full answers every write with ENOSPC."""
    import io

    from failover.eventlog import EventLog

    console = io.StringIO()
    log = EventLog(tmp_path / "events.jsonl", "a", console=console)
    log._f.close()
    log._f = open("/dev/full", "a", encoding="utf-8", buffering=1)
    for i in range(3):
        rec = log.write("error", "task_failed", f"failure {i}")
        assert rec["message"] == f"failure {i}"
    assert log.write_errors == 3
    out = console.getvalue()
    assert out.count("eventlog_failed") == 1 and "No space left on device" in out
    assert "failure 2" in out
    log.close()
