"""The fault campaign's history (lab/history.py): records are checked before they are written
and read back by type; a node's activations are read from event-log lines as the node manager
writes them (activating, the confirmation, reterm, deactivated, a restart, a kill, a clock
jump); the lamps each node sent are decoded from a real splitter's log."""
from __future__ import annotations

import json
import shutil
import time

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.history import History, HistoryError, check_record, read_activations, read_events
from lab.smdi import SerialSplitterLab

T0 = 1_800_000_000.0


def ev(ts: float, event: str, message: str = "", node: str = "a", **fields) -> dict:
    rec = {"ts": ts, "node": node, "level": "info", "event": event, "message": message}
    if fields:
        rec["fields"] = fields
    return rec


def call(**more) -> dict:
    return {"id": 1, "caller": "55000001", "mailbox": "1001", "tone_hz": 510.0, "offered_at": T0,
            "answered": True, "answered_at": T0 + 1, "answered_by": "a", "ended_at": T0 + 9,
            "result": "acked", **more}


def test_records_are_appended_and_read_back_by_type(tmp_path):
    h = History(tmp_path)
    h.add_call(**call())
    h.add_lamp("5551001", True, T0 + 2)
    h.add_fault("kill_nm", T0 + 3, T0 + 4, node="a")
    assert [r["type"] for r in h.records()] == ["call", "lamp", "fault"]
    assert h.calls()[0]["caller"] == "55000001" and h.lamps()[0]["on"] is True
    assert h.faults() == [{"type": "fault", "kind": "kill_nm", "start": T0 + 3, "end": T0 + 4,
                           "node": "a", "offset_s": None}]
    assert History(tmp_path).calls() == h.calls()  # the file is the history


@pytest.mark.parametrize("bad", [
    {"type": "nonsense"},
    {"type": "call", **call(id="1")},
    {"type": "call", **call(answered="yes")},
    {"type": "call", **call(answered_at=None)},
    {"type": "call", **call(tone_hz=True)},
    {"type": "lamp", "mailbox": 5551001, "on": True, "at": T0},
    {"type": "lamp_sent", "mailbox": "1", "on": True, "at": T0},
    {"type": "activation", "node": "a", "term": 2, "at": T0, "end": T0 - 1},
    {"type": "fault", "kind": "x", "start": T0, "end": T0 - 1},
    {"type": "fault", "kind": "", "start": T0, "end": T0},
])
def test_a_bad_record_is_refused_and_not_written(tmp_path, bad):
    h = History(tmp_path)
    with pytest.raises(HistoryError):
        h.add(bad)
    assert h.path.read_text() == ""


def test_a_damaged_history_file_is_an_error_naming_the_line(tmp_path):
    h = History(tmp_path)
    h.add_call(**call())
    with open(h.path, "a") as f:
        f.write('{"type": "lamp", "mailbox": "1"}\n')
    with pytest.raises(HistoryError, match="line 2"):
        h.records()


def test_activations_open_confirm_and_end_in_the_terms_the_log_names():
    spans = read_activations("a", [
        ev(T0, "starting", "a (primary) starting in term 0"),
        ev(T0 + 1, "activating", "a activating in term 2: startup", term=2, cause="startup"),
        ev(T0 + 1.2, "startup", "a active", term=2, took_ms=200, cause="startup"),
        ev(T0 + 5, "reterm", "a stays active in new term 4: peer came back"),
        ev(T0 + 9, "deactivated", "a inactive: handover", term=4, cause="handover"),
        ev(T0 + 9.5, "deactivated", "b's record", node="b", term=3, cause="x"),  # not a's
        ev(T0 + 20, "activating", "a activating in term 6", term=6, cause="takeover"),
        ev(T0 + 20.1, "failover", "a active", term=6, took_ms=100, cause="takeover"),
    ])
    assert [(s["term"], s["at"], s["active_at"], s["end"], s["kind"], s["end_by"]) for s in spans] == [
        (2, T0 + 1, T0 + 1.2, T0 + 5, "startup", "reterm"),
        (4, T0 + 5, T0 + 5, T0 + 9, "reterm", "deactivated"),
        (6, T0 + 20, T0 + 20.1, None, "failover", None),
    ]


def test_a_node_manager_that_died_ends_its_span_at_the_kill_or_at_its_restart():
    log = [ev(T0 + 1, "activating", "", term=2, cause="startup"),
           ev(T0 + 1.1, "startup", "", term=2, took_ms=100, cause="startup"),
           ev(T0 + 3, "peer_up", "peer b reachable"),
           ev(T0 + 30, "starting", "a (primary) starting in term 2")]
    spans = read_activations("a", log)
    assert [(s["end"], s["end_by"]) for s in spans] == [(T0 + 3, "restart")]  # last sign of life
    kill = {"type": "fault", "kind": "kill_nm", "start": T0 + 10, "end": T0 + 10, "node": "a"}
    spans = read_activations("a", log, faults=[kill])
    assert [(s["end"], s["end_by"]) for s in spans] == [(T0 + 10, "kill_nm")]
    spans = read_activations("a", log[:3], faults=[kill])  # the log ends before the restart
    assert [(s["end"], s["end_by"]) for s in spans] == [(T0 + 10, "kill_nm")]
    other = {**kill, "node": "b"}
    assert read_activations("a", log[:3], faults=[other])[0]["end"] is None


@pytest.mark.parametrize("offset", [3600.0, -3600.0])
def test_records_written_during_a_clock_jump_are_mapped_back_to_host_time(offset):
    jump = {"type": "fault", "kind": "clock_jump", "start": T0 + 10, "end": T0 + 20, "node": "a",
            "offset_s": offset}
    log = [ev(T0 + 1, "activating", "", term=2, cause="startup"),
           ev(T0 + 12 + offset, "deactivated", "", term=2, cause="x"),  # during the jump
           ev(T0 + 14 + offset, "activating", "", term=4, cause="y"),
           ev(T0 + 25, "deactivated", "", term=4, cause="z")]  # after the heal
    spans = read_activations("a", log, faults=[jump])
    assert [(s["at"], s["end"]) for s in spans] == [(T0 + 1, T0 + 12), (T0 + 14, T0 + 25)]
    unmapped = read_activations("a", log)  # without the fault record the times stay shifted
    assert [(s["at"], s["end"]) for s in unmapped] != [(T0 + 1, T0 + 12), (T0 + 14, T0 + 25)]
    assert unmapped[1]["at"] == T0 + 14 + offset


def test_event_files_with_cut_or_foreign_lines_are_read_around_them(tmp_path):
    p = tmp_path / "events.jsonl"
    p.write_text(json.dumps(ev(T0, "activating", term=2, cause="s")) + "\n[1, 2]\n{cut\n")
    assert [r["event"] for r in read_events(p)] == ["activating"]
    assert list(read_events(tmp_path / "missing.jsonl")) == []
    h = History(tmp_path / "h")
    assert [s["term"] for s in h.add_activations("a", p)] == [2]
    assert h.activations()[0]["node"] == "a"


@pytest.mark.skipif(shutil.which("socat") is None,
                    reason="socat is not installed: it makes the lab's ptys (apt-get install socat)")
def test_the_lamps_each_node_sent_are_decoded_from_a_real_splitters_log(tmp_path):
    with SerialSplitterLab(tmp_path / "lab", names=("a", "b")) as lab:
        ports = {n: serial.Serial(str(lab.tty(n)), 9600, timeout=0.2) for n in ("a", "b", "pbx")}
        try:
            ports["a"].write(b"OP:MWI 5551001!\x04")
            ports["b"].write(b"RMV:MWI 5551002!\x04OP:MW")  # a command cut in two chunks
            time.sleep(0.2)
            ports["b"].write(b"I 5551003!\x04")
            end = time.monotonic() + 10  # a hang guard
            while len(lab.written_by("b")) < 31 and time.monotonic() < end:
                time.sleep(0.05)
        finally:
            for p in ports.values():
                p.close()
        h = History(tmp_path / "h")
        t0 = time.time()
        sent = h.add_splitter_log(lab.log_path)
    assert [(r["node"], r["mailbox"], r["on"]) for r in sent] == [
        ("a", "5551001", True), ("b", "5551002", False), ("b", "5551003", True)]
    assert all(abs(r["at"] - t0) < 60 for r in sent)  # host wall-clock times
    assert h.lamps_sent() == sent
    only_b = History(tmp_path / "h2").add_splitter_log(lab.log_path, nodes=["b"])
    assert [r["node"] for r in only_b] == ["b", "b"]


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                     | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=4), max_leaves=8)
_events = st.sampled_from(["activating", "deactivated", "reterm", "starting", "startup", "failover", "x"])
_record = st.fixed_dictionaries({"ts": st.floats(T0, T0 + 100) | _json, "event": _events | _json,
                                 "message": st.sampled_from(["a stays active in new term 7", ""]) | _json,
                                 "fields": st.fixed_dictionaries({}, optional={
                                     "term": st.integers(0, 9) | _json, "took_ms": st.integers(0, 5),
                                     "cause": st.text(max_size=3)}) | _json},
                                optional={"node": st.sampled_from(["a", "b"]) | _json})


@settings(max_examples=300, deadline=None)
@given(st.lists(_record, max_size=12))
def test_any_event_records_give_well_formed_spans(records):
    spans = read_activations("a", records, faults=[
        {"type": "fault", "kind": "kill_nm", "start": T0 + 50, "end": T0 + 50, "node": "a"}])
    for s in spans:
        assert s["node"] == "a" and (s["end"] is None or s["end"] >= s["at"])
        assert check_record(s) is s  # a span is a valid history record


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "id", "caller", "mailbox", "result", "answered",
                                        "tone_hz", "offered_at", "answered_at", "on", "at", "node",
                                        "term", "end", "kind", "start", "offset_s"]),
                       _json | st.sampled_from(["call", "lamp", "fault", "activation", "lamp_sent"]),
                       max_size=12))
def test_any_record_is_written_or_refused_with_a_history_error(tmp_path_factory, rec):
    h = History(tmp_path_factory.mktemp("h"))
    try:
        h.add(rec)
    except HistoryError:
        assert h.path.read_text() == ""
    else:
        assert h.records() == [rec]
