"""Reports: message counts, failover history from a real events.jsonl, the primary-only gate.

The failover history is read from event logs written by ``failover.eventlog.EventLog`` with
the records of real ``failover.core.supervisor.Supervisor`` instances driven through a start-up,
a crash, a failover and an activation the service never confirms (a stepped clock: no wall
clock is asserted on), plus a planned handover written through ``EventLog`` directly.
"""
from __future__ import annotations

import csv
import io
import pathlib

import pytest

from failover.core import events as ev
from failover.core.state import Role, ServiceHealth, State
from failover.core.supervisor import Supervisor, SupervisorConfig
from failover.eventlog import EventLog, read_events
from telephony.core.reports import (
    COUNT_COLUMNS,
    HISTORY_COLUMNS,
    ReportError,
    ReportGate,
    failover_history_csv,
    failover_history_report,
    message_counts_csv,
    message_counts_report,
    render_csv,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]

SUBSCRIBERS = [
    {"extension": "1010", "name": "Carol", "mailbox": "carol", "mwi_method": "sip",
     "notify": []},
    {"extension": "1001", "name": "Ada", "mailbox": "ada", "mwi_method": "sip", "notify": []},
    {"extension": "999", "name": "=HYPERLINK(\"x\")", "mailbox": "lobby", "mwi_method": "none",
     "notify": []},
]




# --------------------------------------------------------------------------- gate

@pytest.mark.parametrize("role, state, ok, words", [
    ("primary", "active", True, "active"),
    ("primary", "activating", False, "primary is activating"),
    ("primary", "inactive", False, "primary is inactive"),
    ("primary", "draining", False, "primary is draining"),
    ("secondary", "active", False, "secondary"),
    ("secondary", "inactive", False, "secondary"),
    (Role.PRIMARY, State.ACTIVE, True, "active"),
    (Role.SECONDARY, State.ACTIVE, False, "secondary"),
])
def test_gate_only_the_active_primary(role, state, ok, words):
    allowed, reason = ReportGate().may_generate(role, state)
    assert allowed is ok and words in reason


@pytest.mark.parametrize("role, state", [("Primary", "active"), ("primary", "up"), (None, "active")])
def test_gate_bad_input(role, state):
    with pytest.raises(ReportError):
        ReportGate().may_generate(role, state)


# --------------------------------------------------------------------------- message counts

def test_message_counts_report_and_csv():
    counts = {"ada": (2, 3), "carol": (0, 1), "gone": (4, 0)}
    report = message_counts_report(counts, SUBSCRIBERS)
    assert report["subscribers"] == [
        {"extension": "999", "name": "=HYPERLINK(\"x\")", "mailbox": "lobby", "new": 0,
         "heard": 0, "total": 0},
        {"extension": "1001", "name": "Ada", "mailbox": "ada", "new": 2, "heard": 3, "total": 5},
        {"extension": "1010", "name": "Carol", "mailbox": "carol", "new": 0, "heard": 1,
         "total": 1},
    ]
    assert report["totals"] == {"subscribers": 3, "with_new": 1, "new": 6, "heard": 4,
                                "total": 10}
    assert report["unknown_mailboxes"] == ["gone"]
    text = message_counts_csv(report)
    assert text.endswith("\r\n")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(COUNT_COLUMNS)
    assert rows[1] == ["999", "'=HYPERLINK(\"x\")", "lobby", "0", "0", "0"]  # not a formula
    assert rows[2] == ["1001", "Ada", "ada", "2", "3", "5"]
    assert rows[-1] == ["", "Total", "", "6", "4", "10"]
    assert len(list(csv.reader(io.StringIO(message_counts_csv(report, totals=False))))) == 4


@pytest.mark.parametrize("counts, subscribers, match", [
    ({"ada": (1, -1)}, SUBSCRIBERS, "old count"),
    ({"ada": (1,)}, SUBSCRIBERS, "new, old"),
    ({"ada": (True, 0)}, SUBSCRIBERS, "new count"),
    ([("ada", (1, 0))], SUBSCRIBERS, "mapping"),
    ({}, [{"extension": "1", "name": "x"}], "mailbox"),
    ({}, SUBSCRIBERS + [dict(SUBSCRIBERS[0], extension="2000")], "twice"),
    ({}, "ada", "list"),
    ({}, [None], "object"),
])
def test_message_counts_bad_input(counts, subscribers, match):
    with pytest.raises(ReportError, match=match):
        message_counts_report(counts, subscribers)


# --------------------------------------------------------------------------- failover history

class Node:
    """A real Supervisor on a stepped clock, its Log actions written to a real EventLog the
    way the node manager does (``events.write(level, event, message, fields or None)``)."""

    def __init__(self, role: Role, log_path: pathlib.Path) -> None:
        name, peer = ("a", "b") if role is Role.PRIMARY else ("b", "a")
        self.sup = Supervisor(SupervisorConfig(node=name, role=role, peer_name=peer), now=0.0)
        self.log = EventLog(log_path, name, console=None, level="debug")
        self.now = 0.0
        self.confirm = True  # the messaging service confirms activations
        self.feed(None)
        self.feed(ev.ServiceStarted(pid=1))

    def feed(self, event) -> None:
        acts = self.sup.start(self.now) if event is None else self.sup.handle(event, self.now)
        for a in acts:
            if isinstance(a, ev.Log):
                self.log.write(a.level, a.event, a.message, a.fields or None)

    def run(self, seconds: float, peer: ev.PeerHeartbeat | None = None) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = round(self.now + 0.05, 6)
            if peer is not None:
                self.feed(peer)
            active = self.sup.state is State.ACTIVE
            self.feed(ev.ServiceHealthReport("active" if active else "inactive",
                                             self.sup.term if active else None, 0))
            if self.sup.state is State.ACTIVATING and self.confirm:
                self.now = round(self.now + 0.02, 6)  # the service takes 20 ms
                self.feed(ev.ServiceActivated(self.sup.term))


def heartbeat(node: str, role: Role, state: State, term: int) -> ev.PeerHeartbeat:
    return ev.PeerHeartbeat(node, role, state, term, ServiceHealth.RUNNING)


@pytest.fixture
def history_logs(tmp_path):
    """a starts alone (startup, term 2) and its service crashes; b, which saw a active,
    fails over (term 3), but its service does not confirm in time (aborted), then does
    (term 5).  Later b hands back to a after replication (written directly)."""
    a = Node(Role.PRIMARY, tmp_path / "a" / "events.jsonl")
    a.run(1.5)
    assert a.sup.state is State.ACTIVE and a.sup.term == 2
    a.feed(ev.ServiceExited("killed by signal 9"))
    assert a.sup.state is not State.ACTIVE

    b = Node(Role.SECONDARY, tmp_path / "b" / "events.jsonl")
    b.run(1.5, peer=heartbeat("a", Role.PRIMARY, State.ACTIVE, 2))
    assert b.sup.state is State.INACTIVE
    b.confirm = False
    b.run(2.0)  # a silent: b activates, its service never confirms (health_timeout 1 s)
    assert b.sup.state is State.ACTIVATING and b.sup.term == 5  # term 3 aborted, retried
    b.confirm = True
    b.run(0.5)
    assert b.sup.state is State.ACTIVE and b.sup.term == 5
    # a planned failback: b waits for replication, then goes inactive (as _supervisor writes)
    b.log.write("info", "handover_waiting", "handing over to a once replication is complete")
    b.log.write("info", "handover_replicated", "replication complete after 12 ms: handing over",
                {"wait_s": 0.012})
    b.log.write("warning", "deactivated", "b inactive: handing over to a: operator failback",
                {"cause": "handing over to a: operator failback", "term": 5})
    a.log.write("warning", "activating", "a activating in term 6: handover from peer: ...",
                {"cause": "handover from peer: operator failback", "term": 6})
    a.log.write("warning", "failback", "failback: a active in term 6 after 31.0 ms",
                {"cause": "handover from peer: operator failback", "took_ms": 31.0, "term": 6})
    a.log.close()
    b.log.close()
    return tmp_path / "a" / "events.jsonl", tmp_path / "b" / "events.jsonl"


def test_failover_history_from_real_event_logs(history_logs):
    a_path, b_path = history_logs
    # both nodes' logs, one after the other, with a garbled line in between
    with open(a_path, "a", encoding="utf-8") as f:
        f.write("{not json\n")
    records = list(read_events(a_path)) + list(read_events(b_path))
    assert any(r["event"] == "bad_log_line" for r in records)
    rows = failover_history_report(records)
    summary = [(r["node"], r["term"], r["kind"], r["outcome"]) for r in rows]
    assert sorted(summary, key=lambda s: s[1]) == [
        ("a", 2, "startup", "active"),
        ("b", 3, None, "aborted"),
        ("b", 5, "failover", "active"),
        ("a", 6, "failback", "active"),
    ]
    by_term = {r["term"]: r for r in rows}
    startup = by_term[2]
    assert startup["cause"].startswith("first node started")
    assert startup["duration_s"] == pytest.approx(0.02)  # the stepped clock's 20 ms
    assert startup["ended_cause"] == "messaging service stopped: killed by signal 9"
    # (wall-clock ts differences: present, their values are not asserted)
    assert startup["active_for_s"] is not None and startup["ended_at"] is not None
    assert "did not confirm" in by_term[3]["ended_cause"]
    assert by_term[3]["duration_s"] is None
    assert by_term[5]["cause"].startswith("peer silent")
    assert by_term[5]["handover_wait_s"] == 0.012 and by_term[5]["handover_replicated"] is True
    assert by_term[6]["duration_s"] == pytest.approx(0.031)
    assert by_term[6]["ended_at"] is None
    text = failover_history_csv(rows)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0]) == list(HISTORY_COLUMNS) and len(parsed) == 4


def test_failover_history_log_starting_mid_activation():
    rows = failover_history_report([
        {"ts": 10.0, "node": "b", "event": "failover", "level": "warning", "message": "",
         "fields": {"cause": "peer silent", "took_ms": 40.0, "term": 7}},
        {"ts": 20.0, "node": "b", "event": "reterm", "level": "warning", "message": ""},
        {"ts": 30.0, "node": "b", "event": "deactivated", "level": "warning", "message": "",
         "fields": {"cause": "shutdown", "term": 9}},
        {"ts": 31.0, "node": "a", "event": "deactivated", "level": "warning", "message": "",
         "fields": {"cause": "never active here", "term": 2}},
    ])
    assert len(rows) == 1
    row = rows[0]
    assert (row["time"], row["active_at"], row["kind"], row["duration_s"]) == (None, 10.0,
                                                                               "failover", 0.04)
    assert (row["ended_at"], row["active_for_s"], row["ended_cause"]) == (30.0, 20.0, "shutdown")


@pytest.mark.parametrize("records, match", [
    ([{"ts": 1.0, "node": "a", "event": "activating", "fields": {"term": 2}}], "cause"),
    ([{"ts": 1.0, "node": "a", "event": "activating", "fields": {"cause": "x", "term": "2"}}],
     "term"),
    ([{"node": "a", "event": "activating", "fields": {"cause": "x", "term": 2}}], "ts"),
    (["not a record"], "object"),
])
def test_failover_history_bad_records(records, match):
    with pytest.raises(ReportError, match=match):
        failover_history_report(records)


def test_render_csv_cells():
    text = render_csv([{"a": None, "b": True, "c": "-1+1", "d": -1}], ["a", "b", "c", "d"])
    assert text == "a,b,c,d\r\n,true,'-1+1,-1\r\n"
