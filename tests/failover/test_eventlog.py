"""The event log's files at rest: the log is 0600 and its directory (the node's data_dir) 0700,
created so whatever the umask, and tightened (with a warning record) when they were looser."""
from __future__ import annotations

import json
import os
import stat
import sys

from failover.eventlog import EventLog, is_journal, private_dir


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


# ---------------------------------------------------------------------- the journal's console


def journal_env(sock) -> dict:
    st = os.fstat(sock.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_console_lines_to_the_journal_carry_priorities_and_no_time_stamp(tmp_path, monkeypatch):
    """stderr as systemd connects it: a stream socket whose device and inode JOURNAL_STREAM
    names.  Each line carries its priority prefix; journald stamps them, so no time of ours."""
    import socket

    ours, journald = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, journald:
        monkeypatch.setenv("JOURNAL_STREAM", journal_env(ours)["JOURNAL_STREAM"])
        console = ours.makefile("w", encoding="utf-8")
        log = EventLog(tmp_path / "d" / "events.jsonl", "a", console=console)
        assert log.journal
        for level in ("error", "warning", "info", "debug"):
            log.write(level, f"ev_{level}", f"a {level} line")
        log.write("warning", "two_lines", "first\nsecond")
        log.close()
        console.close()
        ours.shutdown(socket.SHUT_WR)
        text = b""
        while chunk := journald.recv(65536):
            text += chunk
    lines = text.decode().splitlines()
    # the log's level is info: the debug record is neither in the file nor on the console
    assert [line[:3] for line in lines] == ["<3>", "<4>", "<6>", "<4>", "<4>"]
    assert lines[0].startswith("<3>ERROR") and "ev_error" in lines[0] and lines[0].endswith("a error line")
    assert lines[3].endswith("first") and lines[4] == "<4>second"  # every line of a message
    assert not any(ch.isdigit() for ch in lines[1][3:].split("ev_warning")[0])  # no time stamp


def test_a_console_that_is_not_the_journal_keeps_its_time_stamps(tmp_path, monkeypatch):
    """JOURNAL_STREAM naming another file (stderr redirected after systemd started us, or a
    child's inherited variable) changes nothing: readable lines with their time."""
    import socket

    ours, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, other:
        monkeypatch.setenv("JOURNAL_STREAM", journal_env(other)["JOURNAL_STREAM"])
        r, w = os.pipe()
        console = os.fdopen(w, "w", encoding="utf-8")
        log = EventLog(tmp_path / "d" / "events.jsonl", "a", console=console)
        assert not log.journal
        log.write("error", "boom", "not the journal")
        log.close()
        console.close()
        with os.fdopen(r, encoding="utf-8") as f:
            line = f.read().splitlines()[0]
    assert not line.startswith("<") and line[:4].isdigit() and "ERROR" in line and "boom" in line
    for bad in ("", "12", "x:y", "1:2:3"):
        monkeypatch.setenv("JOURNAL_STREAM", bad)
        assert not is_journal(sys.stderr)
