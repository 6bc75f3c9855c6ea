"""The Failover Monitor's timeline (failover/core/timeline.py): segments tile the window, the
markers and last failovers come from the failover history, bad records are reported."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from failover.core.timeline import MAX_PROBLEMS, SEG_STATES, TimelineError, build_timeline

NOW = 1_800_000_000.0
H = 3600.0


def rec(ts, node, event, message="", **fields):
    r = {"ts": ts, "node": node, "level": "info", "event": event, "message": message}
    if fields:
        r["fields"] = fields
    return r


def activation(ts, node, kind, term, cause="peer silent for 1.2s", took_ms=12.5):
    """The node manager's two records of one activation (failover/core/supervisor.py)."""
    return [rec(ts, node, "activating", f"{node} activating in term {term}: {cause}", cause=cause, term=term),
            rec(ts + took_ms / 1000, node, kind, "", cause=cause, took_ms=took_ms, term=term)]


def check_tiles(tl: dict) -> None:
    for row in tl["nodes"]:
        segs = row["segments"]
        assert segs, row
        assert segs[0]["start"] == tl["start"] and segs[-1]["end"] == tl["end"], row
        for a, b in zip(segs, segs[1:], strict=False):
            assert a["end"] == b["start"], (a, b)  # no gap, no overlap
            assert a["state"] != b["state"], (a, b)  # neighbours differ (merged)
        for s in segs:
            assert s["start"] < s["end"] and s["state"] in SEG_STATES, s


def state_at(row: dict, t: float) -> str:
    return next(s["state"] for s in row["segments"] if s["start"] <= t < s["end"])


def row(tl: dict, name: str) -> dict:
    return next(r for r in tl["nodes"] if r["name"] == name)


def test_a_failover_and_a_failback_from_both_logs():
    t0 = NOW - 3 * H
    records = ([rec(t0, "a", "starting"), rec(t0 + 1, "b", "starting")]
               + activation(t0 + 2, "a", "startup", 1, cause="first node started")
               + [rec(t0 + 600, "a", "deactivated", cause="service fenced itself", term=1)]
               + activation(t0 + 601, "b", "failover", 2, took_ms=40.0)
               + activation(t0 + 3600, "a", "failback", 3, cause="operator failback")
               + [rec(t0 + 3600, "b", "deactivated", cause="handing over to a: operator", term=2)])
    tl = build_timeline(records, now=NOW, node="a", peer="b")
    check_tiles(tl)
    a, b = row(tl, "a"), row(tl, "b")
    assert a["source"] == b["source"] == "log"
    assert state_at(a, NOW - 3.5 * H) == "unknown"
    assert state_at(a, t0 + 300) == "active" and state_at(b, t0 + 300) == "inactive"
    assert state_at(a, t0 + 700) == "inactive" and state_at(b, t0 + 700) == "active"
    assert state_at(a, NOW - 1) == "active" and state_at(b, NOW - 1) == "inactive"
    kinds = [(m["node"], m["kind"]) for m in tl["markers"]]
    assert kinds == [("a", "startup"), ("b", "failover"), ("a", "failback")]
    fo = next(m for m in tl["markers"] if m["kind"] == "failover")
    assert fo["cause"] == "peer silent for 1.2s" and fo["duration_s"] == 0.04
    assert [f["kind"] for f in tl["failovers"]] == ["failback", "failover", "startup"]  # newest first
    assert tl["failovers"][0]["ended_at"] is None and tl["failovers"][1]["ended_at"] == t0 + 3600
    assert tl["failovers"][2]["ended_cause"] == "service fenced itself"
    assert tl["problems"] == [] and tl["problem_count"] == 0


def test_the_reason_of_a_handover_comes_from_the_peers_command():
    t0 = NOW - H
    records = (activation(t0, "b", "failover", 3, cause="no node active: a is draining")
               + [rec(t0 + 0.2, "b", "peer_command", "peer sent take_over (term 2): operator failover")]
               + activation(t0 + 60, "b", "failover", 5, cause="no node active: a is draining")
               + [rec(t0 + 65, "b", "peer_command", "peer sent take_over (term 4): operator failover")]
               + activation(t0 + 90, "b", "failover", 7, cause="peer silent for 0.612s (6 missed pings)"))
    tl = build_timeline(records, now=NOW, node="b", peer="a")
    got = [(m["label"], m["peer_reason"]) for m in tl["markers"]]
    # the second command came too late (after HANDOVER_WAIT): its activation keeps its own label
    assert got == [("operator", "operator failover"), ("no_node_active", None), ("peer_silent", None)]
    assert [f["label"] for f in tl["failovers"]] == ["peer_silent", "no_node_active", "operator"]


def test_the_window_keeps_the_state_before_it_and_drops_old_markers():
    old = activation(NOW - 30 * H, "a", "startup", 1)
    tl = build_timeline(old, now=NOW, hours=24, node="a")
    check_tiles(tl)
    assert row(tl, "a")["segments"] == [{"start": NOW - 24 * H, "end": NOW, "state": "active"}]
    assert tl["markers"] == []
    assert [f["kind"] for f in tl["failovers"]] == ["startup"]  # still among the last failovers
    assert build_timeline(old, now=NOW, hours=40, node="a")["markers"][0]["kind"] == "startup"


def test_the_peer_as_this_node_saw_it():
    t0 = NOW - 2 * H
    records = ([rec(t0, "a", "starting"),
                rec(t0 + 1, "a", "peer_up", "peer b reachable: starting, term 0")]
               + activation(t0 + 2, "a", "startup", 1, cause="no node active: b is starting")
               + [rec(t0 + 100, "a", "peer_command", "peer sent step_down (term 2): operator failover"),
                  rec(t0 + 100.5, "a", "deactivated", cause="handing over to b: operator", term=1),
                  rec(t0 + 200, "a", "peer_up", "peer b reachable: active, term 2")]
               + activation(t0 + 300, "a", "failback", 5, cause="peer silent for 1.000s (3 missed pings)"))
    tl = build_timeline(records, now=NOW, node="a", peer="b")
    check_tiles(tl)
    b = row(tl, "b")
    assert b["source"] == "seen"
    assert state_at(b, t0 + 1.5) == "inactive"
    assert state_at(b, t0 + 150) in ("activating", "active") and state_at(b, t0 + 250) == "active"
    assert state_at(b, t0 + 300.5) == "unknown"  # a took over from a silent peer
    assert [(m["node"], m["kind"], m["seen"]) for m in tl["markers"]] == [
        ("a", "startup", False), ("b", "failover", True), ("a", "failback", False)]
    seen = tl["markers"][1]
    assert seen["time"] == t0 + 100 and seen["duration_s"] is None
    assert seen["label"] == "operator" and seen["peer_reason"] == "operator failover"
    assert seen["cause"] == "seen by a: peer sent step_down (term 2): operator failover"
    assert build_timeline(records, now=NOW, node="a", peer="b", peer_role="primary")["markers"][1]["kind"] \
        == "failback"


def test_bad_records_are_reported_and_change_nothing():
    good = activation(NOW - H, "a", "failover", 4)
    bad = [None, "text", {"event": "bad_log_line", "level": "error", "message": "{oops"},
           rec(float("nan"), "a", "deactivated", cause="x", term=4),
           rec(NOW - 10, "a", "deactivated", cause="x"),  # no term
           rec(NOW - 10, "a", "failover", took_ms=3, term=9),  # no cause
           rec(NOW + 60, "a", "deactivated", cause="the future", term=4),
           rec(NOW - 5, "", "stopped"), rec(True, "a", "stopped")]
    clean = build_timeline(good, now=NOW, node="a")
    tl = build_timeline(bad[:4] + good + bad[4:], now=NOW, node="a")
    assert tl["problem_count"] == len(bad) and len(tl["problems"]) == len(bad)
    assert {p["index"] for p in tl["problems"]} == {0, 1, 2, 3, 6, 7, 8, 9, 10}
    assert "fields.term" in tl["problems"][4]["error"] and "fields.cause" in tl["problems"][5]["error"]
    assert "after now" in tl["problems"][6]["error"]
    for key in ("nodes", "markers", "failovers"):
        assert tl[key] == clean[key]


def test_problems_are_bounded():
    tl = build_timeline([None] * 500, now=NOW)
    assert tl["problem_count"] == 500 and len(tl["problems"]) == MAX_PROBLEMS
    assert tl["nodes"] == []


@pytest.mark.parametrize("kw", [{"hours": 0}, {"hours": 169}, {"hours": float("nan")}, {"hours": True},
                                {"now": float("inf")}, {"now": "now"}])
def test_bad_arguments(kw):
    with pytest.raises(TimelineError):
        build_timeline([], **{"now": NOW, **kw})


# --------------------------------------------------------------------------- properties

EVENTS = ("starting", "activating", "failover", "failback", "startup", "deactivated", "reterm",
          "stopped", "peer_up", "peer_command", "link_down", "handover_replicated", "call_refused")


@st.composite
def records(draw):
    event = draw(st.sampled_from(EVENTS))
    ts = draw(st.one_of(st.floats(NOW - 50 * H, NOW + H, allow_nan=False),
                        st.sampled_from([NOW, NOW - 24 * H, NOW - 48 * H])))
    node = draw(st.sampled_from(["a", "b", "c"]))
    fields = draw(st.fixed_dictionaries({}, optional={
        "term": st.integers(0, 9),
        "cause": st.sampled_from(["peer silent for 1s", "operator", "handing over to b: x"]),
        "took_ms": st.floats(0, 5000), "wait_s": st.floats(0, 10)}))
    message = draw(st.sampled_from(["", "peer b reachable: active, term 3",
                                    "peer a reachable: draining, term 2",
                                    "peer sent step_down (term 4): x", "peer sent take_over (term 4): y"]))
    r = rec(ts, node, event, message, **fields)
    return draw(st.sampled_from([r, r, r, r, None, {**r, "ts": "soon"}, {**r, "node": 7}, [r]]))


@settings(max_examples=300, deadline=None)
@given(st.lists(records(), max_size=60), st.floats(0.01, 168), st.sampled_from([None, "a"]),
       st.sampled_from([None, "b"]))
def test_segments_tile_the_window_whatever_the_records(recs, hours, node, peer):
    tl = build_timeline(recs, now=NOW, hours=hours, node=node, peer=peer)
    check_tiles(tl)
    assert math.isclose(tl["end"] - tl["start"], hours * 3600)
    names = [r["name"] for r in tl["nodes"]]
    assert len(names) == len(set(names)) and all(n in names for n in (node, peer) if n)
    for m in tl["markers"]:
        assert tl["start"] <= m["time"] <= NOW and m["kind"] in ("failover", "failback", "startup")
        assert m["node"] in names and (m["duration_s"] >= 0 if not m["seen"] else m["duration_s"] is None)
    assert len(tl["failovers"]) <= 10
    assert tl["problem_count"] >= len(tl["problems"])
    # a bad record is reported, and only the good ones count
    good = [recs[i] for i in range(len(recs)) if i not in {p["index"] for p in tl["problems"]}]
    if tl["problem_count"] <= MAX_PROBLEMS:
        again = build_timeline(good, now=NOW, hours=hours, node=node, peer=peer)
        assert again["problem_count"] == 0
        assert {k: again[k] for k in ("nodes", "markers", "failovers")} == \
            {k: tl[k] for k in ("nodes", "markers", "failovers")}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(NOW - 20 * H, NOW, allow_nan=False, exclude_max=True),
                          st.sampled_from(["failover", "failback", "deactivated", "stopped"])), max_size=30))
def test_the_last_record_decides_the_state_at_now(changes):
    recs, term = [], 0
    for ts, what in sorted(changes):
        term += 1
        if what == "deactivated":
            recs.append(rec(ts, "a", what, cause="x", term=term))
        elif what == "stopped":
            recs.append(rec(ts, "a", what))
        else:
            recs += activation(ts, "a", what, term, took_ms=0.0)
    tl = build_timeline(recs, now=NOW, node="a")
    check_tiles(tl)
    last = row(tl, "a")["segments"][-1]["state"]
    expect = "unknown" if not recs else {"deactivated": "inactive", "stopped": "stopped"}.get(
        sorted(changes)[-1][1], "active")
    assert last == expect
