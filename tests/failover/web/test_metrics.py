"""``GET /metrics`` (failover/web/metrics.py) against a real pair of node managers on loopback
(``lab.pair.Pair(http=True)``), read with prometheus-client's own parser: the values agree
with ``/api/v1/status``, a real call and an operator failover show up in the counters, and
the route needs a token.  Then the collector alone on a real node's status, changed the ways
a status can be (no peer heard yet, no replication) and fuzzed."""
from __future__ import annotations

import http.client
import json
import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from failover.core.causes import LABELS
from failover.core.wire import DROP_REASONS
from failover.web.metrics import METRICS, EventCounters, VmhaCollector, build_registry
from lab.loopback_client import place_call
from lab.pair import Pair

pytestmark = pytest.mark.multiprocess

GUARD = 30.0  # hang guard only


def request(url: str, path: str, *, token: str | None = None, method: str = "GET",
            body: dict | None = None) -> tuple[int, dict, bytes]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=GUARD)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def families(text: str) -> dict[str, list]:
    """name (as exposed) -> samples [(name, labels, value)]; every sample must parse."""
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.name, dict(s.labels), s.value))
    return out


def value(fams: dict, name: str, **labels) -> float | None:
    hits = [v for _, lab, v in fams.get(name, []) if all(lab.get(k) == w for k, w in labels.items())]
    assert len(hits) <= 1, (name, labels, hits)
    return hits[0] if hits else None


def scrape(pair: Pair, node: str, token: str | None = None) -> dict:
    code, headers, body = request(pair.http_url(node), "/metrics", token=token or pair.tokens["read"])
    assert code == 200, body
    assert headers["content-type"] == CONTENT_TYPE_LATEST
    return families(body.decode())


def api_status(pair: Pair, node: str) -> dict:
    code, _, body = request(pair.http_url(node), "/api/v1/status", token=pair.tokens["read"])
    assert code == 200, body
    return json.loads(body)["status"]


def settled(pair: Pair, active: str) -> None:
    other = "b" if active == "a" else "a"

    def ok():
        sa, so = pair.node(active).status(), pair.node(other).status()
        return (sa and so and sa["node"]["state"] == "active" and so["node"]["state"] == "inactive"
                and sa["peer"]["reachable"] and so["peer"]["reachable"] and so["peer"]["state"] == "active")
    pair.wait_for(ok, timeout=GUARD, what=f"{active} active, {other} inactive")


@pytest.fixture
def pair(short_dir):
    with Pair(short_dir, http=True) as p:
        p.start()
        settled(p, "a")
        yield p


def check_against_status(fams: dict, status: dict) -> None:
    """The scrape agrees with the status the API gives right after it."""
    n, p = status["node"], status["peer"]
    assert value(fams, "vmha_node_active", node=n["name"]) == (1.0 if n["state"] == "active" else 0.0)
    assert value(fams, "vmha_node_active", node=p["name"]) == (1.0 if p["state"] == "active" else 0.0)
    assert value(fams, "vmha_term", node=n["name"]) == n["term"]
    assert value(fams, "vmha_term", node=p["name"]) == p["term"]
    assert value(fams, "vmha_node_info", node=n["name"], role=n["role"], state=n["state"],
                 mode=n["mode"], service=n["service"]) == 1.0
    assert value(fams, "vmha_peer_reachable") == 1.0
    assert 0 <= value(fams, "vmha_heartbeat_age_seconds") <= status["settings"]["takeover_after_s"]
    assert value(fams, "vmha_health_score", node=n["name"]) == n["health"]
    ports = {}
    for port in status["ports"]:
        ports[port["kind"], port["state"]] = ports.get((port["kind"], port["state"]), 0) + 1
    assert ports and {(lab["kind"], lab["state"]): v for _, lab, v in fams["vmha_ports"]} == ports
    db = status["replication"]["db"]
    assert value(fams, "vmha_replication_lag_changes") == db["lag_changes"]
    assert value(fams, "vmha_replication_lag_seconds") is not None
    assert {lab["reason"] for _, lab, _ in fams["vmha_link_frames_rejected_total"]} >= set(DROP_REASONS)
    assert value(fams, "vmha_uptime_seconds") > 0
    assert value(fams, "vmha_service_failures") == n["service_failures"]
    assert value(fams, "vmha_event_log_write_errors_total") == 0
    assert value(fams, "process_resident_memory_bytes") > 0  # the node manager's process
    assert {lab["cause"] for _, lab, _ in fams["vmha_failovers_total"]} == set(LABELS)


def failovers(fams: dict) -> dict[str, float]:
    return {lab["cause"]: v for _, lab, v in fams["vmha_failovers_total"] if v}


def test_metrics_agree_with_the_status_and_follow_a_call_and_a_failover(pair):
    for node in "ab":
        check_against_status(scrape(pair, node), api_status(pair, node))
    # the pair's start: a activated once, b never
    assert failovers(scrape(pair, "a")) == {"startup": 1.0}
    assert failovers(scrape(pair, "b")) == {}
    # a real call on a's loopback trunk: answered, then ended by the caller
    outcome = trio.run(lambda: place_call("127.0.0.1", pair.loop_a, "m-1", hold=0.05, reply_timeout=GUARD))
    assert outcome.answered

    def call_counted():
        f = scrape(pair, "a")
        return (value(f, "vmha_calls_total", result="answered") == 1.0
                and value(f, "vmha_calls_ended_total", result="ended") == 1.0
                and value(f, "vmha_calls_in_progress", node="a") == 0.0 and f)  # the next health report
    f = pair.wait_for(call_counted, timeout=GUARD, what="the call counted")
    assert value(f, "vmha_calls_total", result="rejected") == 0.0
    # the operator's failover through the API, on the active node
    code, _, body = request(pair.http_url("a"), "/api/v1/failover", token=pair.tokens["admin"],
                            method="POST", body={})
    assert code == 200, body
    settled(pair, "b")

    def counted():
        f = scrape(pair, "b")
        return failovers(f) == {"operator": 1.0} and f
    fb = pair.wait_for(counted, timeout=GUARD, what="b's operator failover counted")
    fa = scrape(pair, "a")
    assert value(fa, "vmha_node_active", node="a") == 0.0 and value(fa, "vmha_node_active", node="b") == 1.0
    assert value(fb, "vmha_node_active", node="b") == 1.0 and value(fb, "vmha_node_active", node="a") == 0.0
    assert failovers(fa) == {"startup": 1.0}  # a handed over: not an activation of a
    for node, fams in (("a", fa), ("b", fb)):
        status = api_status(pair, node)
        b_term = status["node"]["term"] if node == "b" else status["peer"]["term"]
        assert value(fams, "vmha_term", node="b") == b_term


def test_metrics_need_a_read_token(pair):
    url = pair.http_url("a")
    code, headers, body = request(url, "/metrics")
    assert code == 401 and headers["www-authenticate"].startswith("Bearer")
    assert json.loads(body)["error"]["code"] == "unauthorized" and b"vmha_" not in body
    code, _, body = request(url, "/metrics", token="vmha_" + "x" * 43)
    assert code == 401 and b"vmha_node" not in body
    assert value(scrape(pair, "a", pair.tokens["admin"]), "vmha_node_active", node="a") == 1.0
    code, _, _ = request(url, "/metrics", token=pair.tokens["read"], method="POST")
    assert code == 405


# ----------------------------------------------------------------------------- the collector alone


@pytest.fixture(scope="module")
def real_status():
    """A real node's status (the dict ``vmha status --json`` prints), from a pair started once."""
    d = Path(tempfile.mkdtemp(prefix="vmha-met-", dir="/tmp"))
    try:
        with Pair(d) as p:
            p.start()
            settled(p, "a")
            yield p.a.status()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def expose(status, counters: EventCounters | None = None) -> dict:
    registry = build_registry(VmhaCollector(lambda: status, counters or EventCounters()), process=False)
    return families(generate_latest(registry).decode())


def test_every_family_the_collector_makes_is_documented_and_exposed(real_status):
    fams = expose(real_status)
    exposed = {name.removesuffix("_total") for name in fams}
    assert exposed <= set(METRICS)
    # each documented family has samples on a running node (the peer's may need traffic)
    assert set(METRICS) - exposed <= {"vmha_task_failures", "vmha_driver_health_score"}
    doc = (Path(__file__).parents[3] / "docs" / "metrics.md").read_text()
    for name, (kind, _) in METRICS.items():
        shown = name + ("_total" if kind == "counter" else "")
        assert f"`{shown}`" in doc, f"{shown} is not in docs/metrics.md"


def test_a_peer_never_heard_and_no_replication(real_status):
    status = json.loads(json.dumps(real_status))
    status["peer"].update(reachable=False, state=None, term=None, service=None, mode=None, calls=None,
                      health=None, last_heartbeat_age_s=None)
    status["replication"] = None
    fams = expose(status)
    me, peer = status["node"]["name"], status["peer"]["name"]
    assert value(fams, "vmha_node_active", node=me) == 1.0
    assert value(fams, "vmha_node_active", node=peer) is None  # unknown, not "inactive"
    assert value(fams, "vmha_term", node=peer) is None
    assert value(fams, "vmha_peer_reachable") == 0.0
    assert "vmha_heartbeat_age_seconds" not in fams
    assert "vmha_replication_lag_seconds" not in fams


def test_counters_from_records_and_task_failures(real_status):
    status = json.loads(json.dumps(real_status))
    status["tasks"] = {"link.dial": {"failures": 3, "last_error": "boom"}}
    status["counters"] = {"tasks": {"counters": 2}, "smdi": {"lamps_held_waiting": 4},
                      "messaging": {"lamps_waiting_for_a_sink": 5}}
    counters = EventCounters()
    for event in ("call_answered", "call_answered", "call_rejected", "call_dropped", "call_refused"):
        counters.on_record({"event": event, "message": "x"})
    counters.on_record("not a record")
    fams = expose(status, counters)
    assert value(fams, "vmha_task_failures_total", task="link.dial", part="node") == 3
    assert value(fams, "vmha_task_failures_total", task="counters", part="service") == 2
    assert value(fams, "vmha_lamps_pending", reason="held") == 4
    assert value(fams, "vmha_lamps_pending", reason="no_sink") == 5
    assert value(fams, "vmha_calls_total", result="answered") == 2
    assert value(fams, "vmha_calls_total", result="rejected") == 1
    assert value(fams, "vmha_calls_ended_total", result="dropped") == 1
    # a peer named like this node (a broken status): one series each, this node's
    status["peer"]["name"] = status["node"]["name"]
    fams = expose(status)
    assert len(fams["vmha_node_active"]) == 1 and len(fams["vmha_term"]) == 1


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=12), kids, max_size=4), max_leaves=20)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_status_exposes_parseable_text(real_status, data):
    """Each part of a real status replaced by arbitrary JSON: the scrape still parses."""
    st_ = json.loads(json.dumps(real_status))
    for part in ("node", "peer"):
        for key in data.draw(st.lists(st.sampled_from(sorted(st_[part])), max_size=3)):
            st_[part][key] = data.draw(json_values)
    for key in data.draw(st.lists(st.sampled_from(sorted(st_)), max_size=4)):
        st_[key] = data.draw(json_values)
    fams = expose(st_)
    for name, samples in fams.items():
        assert name.removesuffix("_total") in METRICS
        keys = [tuple(sorted(labels.items())) for _, labels, _ in samples]
        assert len(keys) == len(set(keys)), name  # Prometheus refuses a repeated series


# ----------------------------------------------------------------------------- the alerting rules

#: labels Prometheus puts on every scraped series (the job's and the target's)
TARGET_LABELS = {"job", "instance", "pair"}
SELECTOR = re.compile(r"\b([a-z_][a-z0-9_]*)\s*(\{[^}]*\})?\s*(\[[0-9a-z]+\])?")
PROMQL_WORDS = {"max", "min", "sum", "count", "by", "on", "or", "and", "unless", "increase", "rate",
                "without", "group_left", "group_right", "avg", "humanizeDuration"}


def test_the_alerting_rules_parse_and_use_only_what_a_node_exposes(real_status):
    rules_file = Path(__file__).parents[3] / "docs" / "alerting-rules.yml"
    doc = yaml.safe_load(rules_file.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)) >= 10
    registry = build_registry(VmhaCollector(lambda: real_status, EventCounters()), process=True)
    exposed: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        # a family without samples yet (no task has failed) is exposed all the same
        exposed.setdefault(fam.name + ("_total" if fam.type == "counter" else ""), set())
        for s in fam.samples:
            exposed.setdefault(s.name, set()).update(s.labels)
    exposed["up"] = set()  # Prometheus's own
    used = set()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        expr = rule["expr"]
        # the label names in by (...) clauses are on the series they group
        for clause in re.findall(r"by \(([^)]*)\)", expr):
            for label in (x.strip() for x in clause.split(",")):
                known = label in TARGET_LABELS or any(label in ls for ls in exposed.values())
                assert known, (rule["alert"], label)
        for name, selector, _ in SELECTOR.findall(re.sub(r"by \([^)]*\)", "", expr)):
            if name in PROMQL_WORDS or not (name.startswith("vmha_") or name == "up"):
                continue
            assert name in exposed, f"{rule['alert']}: {name} is not exposed by a node"
            used.add(name)
            for matcher in re.findall(r"([a-z_]+)\s*!?=~?", selector or ""):
                assert matcher in TARGET_LABELS or matcher in exposed[name], (rule["alert"], name, matcher)
    # the rules look at the pair, replication, health, ports, tasks and the scrape itself
    assert {"vmha_node_active", "vmha_failovers_total", "vmha_peer_reachable", "vmha_replication_lag_seconds",
            "vmha_health_score", "vmha_ports", "vmha_task_failures_total", "up"} <= used
