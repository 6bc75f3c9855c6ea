"""The admin HTTP API (failover/web/api.py).

The event stream's body on a virtual clock (exact timing of status events, keep-alives and
gaps), then the whole API against a real pair of node managers on loopback
(``lab.pair.Pair(http=True)``) over real HTTP: status, the event stream across a failover,
the redirect of a write on the inactive node, bad requests, roles, the ``operator_action``
records and the reports' gate."""
from __future__ import annotations

import http.client
import json
import os
import pwd
import socket
import struct
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as hs
from starlette.requests import Request

from failover.eventlog import EventLog
from failover.web.api import KEEPALIVE_EVERY, RETRY_MS, EventStream, int_param, query
from failover.web.errors import ApiError
from failover.web.hub import EventHub
from lab.pair import Pair

GUARD = 30.0  # hang guard only


def parse_sse(chunks: list[bytes]) -> list[dict]:
    """SSE chunks -> [{"event", "id", "data", "comment", "retry"}] one per block."""
    out = []
    for block in b"".join(chunks).decode().split("\n\n"):
        if not block:
            continue
        item: dict = {}
        for line in block.split("\n"):
            field, _, value = line.partition(": ") if not line.startswith(":") else ("comment", "", line[1:])
            item[field] = value.strip()
        if "data" in item:
            item["data"] = json.loads(item["data"])
        out.append(item)
    return out


async def collect(stream: EventStream, until_time: float) -> list[tuple[float, bytes]]:
    got = []
    with trio.move_on_at(until_time):
        async for chunk in stream:
            got.append((trio.current_time(), chunk))
    return got


async def test_the_stream_sends_status_at_once_records_then_status_at_most_5_a_second(
        tmp_path, autojump_clock):
    log = EventLog(tmp_path / "events.jsonl", "a", console=None)
    hub = EventHub(log)
    log.write("info", "before", "written before the client came")
    statuses = []

    def status() -> dict:
        statuses.append(trio.current_time())
        return {"ok": True, "n": len(statuses)}

    t0 = trio.current_time()
    stream = EventStream(hub, status, cursor=hub.last_seq)

    async def writer():
        await trio.sleep(0.5)
        for i in range(10):  # a burst of 10 records, 10 ms apart
            log.write("info", "burst", f"record {i}")
            await trio.sleep(0.01)
        await trio.sleep(3.0)
        log.write("warning", "late", "one more")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        got = await collect(stream, t0 + 20.0)
    items = parse_sse([c for _, c in got])
    assert items[0] == {"retry": str(RETRY_MS)}
    assert items[1]["event"] == "status" and got[1][0] == t0  # at once
    logs = [i for i in items if i.get("event") == "log"]
    assert [i["data"]["message"] for i in logs] == [f"record {i}" for i in range(10)] + ["one more"]
    assert [int(i["id"]) for i in logs] == [i["data"]["seq"] for i in logs] == list(range(2, 13))
    assert "before" not in [i["data"]["event"] for i in logs]  # no history without a cursor
    gaps = [b - a for a, b in zip(statuses, statuses[1:], strict=False)]
    assert min(gaps) >= 0.2 - 1e-9  # never more than 5 a second
    assert max(gaps) <= 1.0 + 1e-9  # and at least one a second
    # a status follows the burst within 0.2 s of the first record, and the late record
    burst_end = t0 + 0.5 + 0.09
    assert any(burst_end <= s <= burst_end + 0.2 + 1e-9 for s in statuses)
    late = t0 + 0.5 + 0.1 + 3.0
    assert any(late <= s <= late + 0.2 + 1e-9 for s in statuses)
    comments = [t for t, c in got if c.startswith(b":")]
    assert comments == [t0 + KEEPALIVE_EVERY]
    assert stream.done  # the client went away (cancelled): marked closed
    hub.close()
    log.close()


async def test_the_stream_resumes_after_a_cursor_and_says_what_was_lost(tmp_path, autojump_clock):
    log = EventLog(tmp_path / "events.jsonl", "a", console=None)
    hub = EventHub(log, size=5)
    for i in range(9):
        log.write("info", "e", f"r{i + 1}")
    stream = EventStream(hub, lambda: {}, cursor=2)  # the client saw up to 2; 3 and 4 are gone
    got = await collect(stream, trio.current_time() + 0.5)
    items = parse_sse([c for _, c in got])
    gap = [i for i in items if i.get("event") == "gap"]
    assert [g["data"] for g in gap] == [{"after": 2, "next": 5, "missed": 2}]
    assert [int(i["id"]) for i in items if i.get("event") == "log"] == [5, 6, 7, 8, 9]
    # resuming from the newest: nothing old
    stream = EventStream(hub, lambda: {}, cursor=9)
    got = await collect(stream, trio.current_time() + 0.5)
    assert not [i for i in parse_sse([c for _, c in got]) if i.get("event") in ("log", "gap")]
    hub.close()
    log.close()


async def test_the_stream_ends_when_the_hub_closes(tmp_path, autojump_clock):
    log = EventLog(tmp_path / "events.jsonl", "a", console=None)
    hub = EventHub(log)
    stream = EventStream(hub, lambda: {}, cursor=0)

    async def closer():
        await trio.sleep(2.5)
        hub.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(closer)
        with trio.fail_after(GUARD):
            chunks = [c async for c in stream]
    assert stream.done and len([i for i in parse_sse(chunks) if i.get("event") == "status"]) == 3
    log.close()


# ============================================================================ against a real pair

SUB = {"extension": "1001", "name": "Ann", "mailbox": "1001", "mwi_method": "none", "notify": []}


@pytest.fixture
def pair(short_dir):
    with Pair(short_dir, http=True) as p:
        p.start()
        wait_roles(p, "a")
        yield p


def wait_roles(pair: Pair, active: str) -> None:
    other = "b" if active == "a" else "a"

    def settled():
        sa, so = pair.node(active).status(), pair.node(other).status()
        return (sa and so and sa["node"]["state"] == "active" and so["node"]["state"] == "inactive"
                and sa["peer"]["reachable"] and so["peer"]["reachable"] and so["peer"]["state"] == "active")
    pair.wait_for(settled, timeout=GUARD, what=f"{active} active, {other} inactive")


def call(url: str, method: str = "GET", path: str = "/", token: str | None = None, body=None,
         raw: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, object]:
    """One HTTP request: (status, headers (lower-case names), JSON body or text)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=GUARD)
    try:
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        text = resp.read().decode()
        got = {k.lower(): v for k, v in resp.getheaders()}
        if got.get("content-type", "").startswith("application/json"):
            return resp.status, got, json.loads(text)
        return resp.status, got, text
    finally:
        conn.close()


class SseClient(threading.Thread):
    """Reads an event stream in a thread, keeping every parsed block."""

    def __init__(self, url: str, token: str, headers: dict | None = None):
        super().__init__(daemon=True)
        u = urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=GUARD)
        self.conn.request("GET", "/api/v1/events/stream",
                          headers={"Authorization": f"Bearer {token}", **(headers or {})})
        self.resp = self.conn.getresponse()
        self.items: list[dict] = []
        self.error: BaseException | None = None
        self.stop = False
        self.lock = threading.Lock()

    def run(self) -> None:
        block: dict = {}
        try:
            while not self.stop:
                line = self.resp.readline()
                if not line:
                    return
                line = line.decode().rstrip("\n")
                if not line:
                    if block:
                        if "data" in block:
                            block["data"] = json.loads(block["data"])
                        with self.lock:
                            self.items.append(block)
                    block = {}
                elif line.startswith(":"):
                    block["comment"] = line[1:].strip()
                else:
                    field, _, value = line.partition(":")
                    block[field] = value.strip()
        except (OSError, ValueError) as e:
            if not self.stop:
                self.error = e

    def wait(self, predicate, what: str) -> dict:
        end = time.monotonic() + GUARD
        while time.monotonic() < end:
            with self.lock:
                for item in self.items:
                    if predicate(item):
                        return item
            assert self.error is None, self.error
            time.sleep(0.02)
        raise AssertionError(f"no {what} on the event stream in {GUARD} s: {self.items[-5:]}")

    def reset(self) -> None:
        """Go away abruptly (RST), as a browser tab that is killed."""
        self.stop = True
        sock = self.conn.sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)  # the reader sees the end
        self.join(GUARD)
        sock.close()
        self.conn.close()


def vmha(pair: Pair, name: str, *args: str) -> str:
    argv = [sys.executable, "-m", "failover.cli", *args, "--config", str(pair.node(name).config)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=GUARD)
    assert out.returncode == 0, out.stderr
    return out.stdout


def cli_status(pair: Pair, name: str) -> dict:
    return json.loads(vmha(pair, name, "status", "--json"))


def stable(st: dict) -> dict:
    """What of a status does not move from one second to the next."""
    n, p = st["node"], st["peer"]
    return {"node": {k: n[k] for k in ("name", "role", "state", "term", "mode", "eligible", "licensed")},
            "peer": {k: p[k] for k in ("name", "address", "state", "term", "reachable")},
            "settings": st["settings"], "ports": [x["name"] for x in st["ports"]]}


def actions_on(pair: Pair, name: str) -> list[dict]:
    return [r["fields"] for r in pair.node(name).events() if r["event"] == "operator_action"]


def test_status_and_reads_on_both_nodes_match_the_cli(pair):
    read = pair.tokens["read"]
    for name in ("a", "b"):
        url = pair.http_url(name)
        code, _, body = call(url, path="/api/v1/status", token=read)
        assert code == 200 and body["ok"], body
        assert stable(body["status"]) == stable(cli_status(pair, name))
        assert body["active_node"] == "a" and body["active_url"] == pair.http_url("a")
    # the load balancer's check: no token needed, only the active node says yes
    code, _, body = call(pair.http_url("a"), path="/healthz")
    assert code == 200 and body == {"ok": True, "active": True, "node": "a", "state": "active"}
    code, _, body = call(pair.http_url("b"), path="/healthz")
    assert code == 503 and body["active"] is False and body["error"]["code"] == "not_active"
    # the other reads
    url = pair.http_url("b")
    code, _, body = call(url, path="/api/v1/ports", token=read)
    assert code == 200
    assert [p["name"] for p in body["ports"]] == [p["name"] for p in cli_status(pair, "b")["ports"]]
    code, _, body = call(url, path="/api/v1/replication", token=read)
    assert code == 200 and body["replication"]["db"]["checksum"]
    code, _, body = call(url, path="/api/v1/events?limit=3", token=read)
    assert code == 200 and len(body["events"]) == 3 and body["events"][-1]["seq"] <= body["last_seq"]
    first = body["events"][0]["seq"]
    code, _, body = call(url, path=f"/api/v1/events?after={first}&limit=2", token=read)
    assert [e["seq"] for e in body["events"]] == [first + 1, first + 2]
    code, _, body = call(url, path="/api/v1/db-conflicts?limit=10", token=read)
    assert code == 200 and body["conflicts"] == [] and body["count"] == 0
    # no token, a bad token
    code, headers, body = call(url, path="/api/v1/status")
    assert code == 401 and body["error"]["code"] == "unauthorized"
    code, _, body = call(url, path="/api/v1/status", token="vmha_not-a-token")
    assert code == 401
    check_bad_queries(pair)


BAD_QUERIES = ["/api/v1/events?limit=0", "/api/v1/events?limit=1001", "/api/v1/events?limit=abc",
               "/api/v1/events?after=-1", "/api/v1/events?limt=5", "/api/v1/events?limit=5&limit=6",
               "/api/v1/db-conflicts?limit=0", "/api/v1/db/nope", "/api/v1/db/subscribers/x1",
               "/api/v1/reports/failovers?format=xml", "/api/v1/status?x=1"]


def check_bad_queries(pair) -> None:
    for path in BAD_QUERIES:
        code, _, body = call(pair.http_url("a"), path=path, token=pair.tokens["admin"])
        assert code == 400 and body["ok"] is False and body["error"]["code"] == "bad_request", (path, body)
        assert body["error"]["message"]


def test_writes_bad_requests_roles_redirects_and_the_operator_record(pair):
    a, b = pair.http_url("a"), pair.http_url("b")
    admin, read = pair.tokens["admin"], pair.tokens["read"]

    def rows(url):
        return call(url, path="/api/v1/db/subscribers", token=read)[2]["rows"]

    # bad requests: 400, nothing changed
    for kwargs, what in [
        ({"body": {"ops": [{"op": "upsert", "table": "subscribers", "row": SUB}]}}, "op must be"),
        ({"body": {"ops": "all of them"}}, "db_write needs"),
        ({"body": {"ops": [], "extra": 1}}, "unknown field"),
        ({"raw": b'{"ops": [}'}, "not valid JSON"),
        ({"raw": b'[1, 2]'}, "must be a JSON object"),
        ({"body": {"ops": [{"op": "put", "table": "nope", "row": SUB}]}}, "unknown table"),
    ]:
        code, _, body = call(a, "POST", "/api/v1/db", admin, **kwargs)
        assert code == 400 and what in body["error"]["message"], (kwargs, body)
    code, _, body = call(a, "PUT", "/api/v1/db/subscribers", admin,
                         body={**SUB, "mwi_method": "carrier-pigeon"})
    assert code == 400 and "mwi_method" in body["error"]["message"]
    code, _, body = call(a, "DELETE", "/api/v1/db/subscribers/1001", admin)
    assert code == 400 and "does not exist" in body["error"]["message"]
    assert rows(a) == []
    # the read-only operator cannot write, nor command
    code, _, body = call(a, "PUT", "/api/v1/db/subscribers", read, body=SUB)
    assert code == 403 and body["error"]["code"] == "forbidden"
    code, _, body = call(a, "POST", "/api/v1/failover", read, body={})
    assert code == 403
    assert rows(a) == []
    # a write on the inactive node: 307 to the active node's same path, nothing written here
    op = {"ops": [{"op": "put", "table": "subscribers", "row": SUB}]}
    code, headers, body = call(b, "POST", "/api/v1/db", admin, body=op)
    assert code == 307, body
    assert headers["location"] == a + "/api/v1/db" == body["location"]
    assert body["error"]["code"] == "not_active" and body["active_node"] == "a"
    # following it (the same body and token) writes on the active node ...
    u = urlsplit(headers["location"])
    code, _, body = call(f"{u.scheme}://{u.netloc}", "POST", u.path, admin, body=op)
    assert code == 200 and body["ok"] and body["changes"] == 1, body
    # ... and the row replicates to the inactive node
    pair.wait_for(lambda: call(b, path="/api/v1/db/subscribers/1001", token=read)[2].get("row"),
                  timeout=GUARD, what="the row on b")
    assert call(b, path="/api/v1/db/subscribers/1001", token=read)[2]["row"]["name"] == "Ann"
    # the PIN table is for admins only
    code, _, body = call(a, path="/api/v1/db/pins", token=read)
    assert code == 403
    assert call(a, path="/api/v1/db/pins", token=admin)[0] == 200
    # a delete on the inactive node redirects too, with the same path
    code, headers, _ = call(b, "DELETE", "/api/v1/db/subscribers/1001", admin)
    assert code == 307 and headers["location"] == a + "/api/v1/db/subscribers/1001"
    # mode through the API and through the admin socket: each is one operator_action record
    code, _, body = call(a, "POST", "/api/v1/mode", admin, body={"mode": "manual"})
    assert code == 200 and body["message"] == "mode manual"
    code, _, body = call(a, "POST", "/api/v1/mode", admin, body={"mode": "sometimes"})
    assert code == 400
    assert pair.a.admin({"op": "mode", "mode": "automatic"})["ok"]
    acts = actions_on(pair, "a")
    user = pwd.getpwuid(os.getuid()).pw_name
    assert [(x["operator"], x["via"], x["op"], x["ok"]) for x in acts] == (
        [("admin", "http", "db_write", False)] * 5
        + [("admin", "http", "db_write", True), ("admin", "http", "mode", True),
           ("admin", "http", "mode", False), (f"unix:{user}", "unix", "mode", True)])
    assert "put subscribers x1" in acts[5]["message"]
    assert not any("Ann" in x["message"] for x in acts)  # no row values
    # requests refused before there is an operation (403, 307, a body that does not parse)
    # are no operator actions
    assert actions_on(pair, "b") == []


def test_reports_only_on_the_active_primary(pair):
    read = pair.tokens["read"]
    a, b = pair.http_url("a"), pair.http_url("b")
    for path in ("/api/v1/reports/failovers", "/api/v1/reports/messages"):
        code, _, body = call(b, path=path, token=read)
        assert code == 409 and body["error"]["code"] == "not_active"
        assert "secondary" in body["error"]["message"]
    code, _, body = call(a, path="/api/v1/reports/failovers", token=read)
    assert code == 200 and [r["node"] for r in body["failovers"]] == ["a"]
    assert body["failovers"][0]["outcome"] == "active"
    assert body["failovers"] == json.loads(vmha(pair, "a", "report", "failovers"))  # the CLI's rows
    code, headers, text = call(a, path="/api/v1/reports/failovers?format=csv", token=read)
    assert code == 200 and headers["content-type"].startswith("text/csv")
    assert text.splitlines()[0].startswith("time,node,term,kind,cause")
    assert text.replace("\r\n", "\n") == vmha(pair, "a", "report", "failovers", "--csv").removesuffix("\n")
    assert call(a, "PUT", "/api/v1/db/subscribers", pair.tokens["admin"], body=SUB)[0] == 200
    code, _, body = call(a, path="/api/v1/reports/messages", token=read)
    assert code == 200 and body["report"]["subscribers"][0]["extension"] == "1001"
    assert body["report"]["totals"]["subscribers"] == 1
    assert body["report"] == json.loads(vmha(pair, "a", "report", "messages"))
    code, _, text = call(a, path="/api/v1/reports/messages?format=csv", token=read)
    assert code == 200 and text.splitlines()[0] == "extension,name,mailbox,new,heard,total"
    assert text.replace("\r\n", "\n") == vmha(pair, "a", "report", "messages", "--csv").removesuffix("\n")


def test_the_event_stream_follows_a_failover_and_survives_a_client_that_vanishes(pair):
    a, b = pair.http_url("a"), pair.http_url("b")
    admin, read = pair.tokens["admin"], pair.tokens["read"]
    stream = SseClient(b, read)
    assert stream.resp.status == 200
    assert stream.resp.getheader("content-type").startswith("text/event-stream")
    stream.start()
    first = stream.wait(lambda i: i.get("event") == "status", "first status")
    assert first["data"]["status"]["node"]["state"] == "inactive" and first["data"]["active_node"] == "a"
    assert any("retry" in i for i in stream.items)
    assert call(b, path="/api/v1/events?limit=1", token=read)[2]["streams"] == 1
    # a client that goes away in the middle of its stream
    gone = SseClient(a, read)
    gone.start()
    gone.wait(lambda i: i.get("event") == "status", "a status on a")
    gone.reset()
    code, _, body = call(b, "POST", "/api/v1/failover", admin, body={"force": False})
    assert code == 200 and body["ok"], body
    log = stream.wait(lambda i: i.get("event") == "log" and i["data"]["event"] == "failover",
                      "the failover record")
    assert int(log["id"]) == log["data"]["seq"] and log["data"]["node"] == "b"
    swapped = stream.wait(lambda i: i.get("event") == "status"
                          and i["data"]["status"]["node"]["state"] == "active"
                          and i["data"]["status"]["peer"]["state"] == "inactive", "roles swapped")
    assert swapped["data"]["active_node"] == "b" and swapped["data"]["active_url"] == b
    # resuming with Last-Event-ID gets the records after it, the failover among them
    again = SseClient(b, read, headers={"Last-Event-ID": str(int(log["id"]) - 1)})
    again.start()
    resumed = again.wait(lambda i: i.get("event") == "log", "a resumed record")
    assert resumed["id"] == log["id"]
    again.reset()
    stream.reset()
    wait_roles(pair, "b")
    # the operator is named on the node that took the command
    assert [(x["operator"], x["op"], x["ok"]) for x in actions_on(pair, "b")] == [("admin", "failover", True)]
    # the vanished clients left no stream and no failure behind, on either node
    for name in ("a", "b"):
        pair.wait_for(lambda n=name: call(pair.http_url(n), path="/api/v1/events?limit=1",
                                          token=read)[2]["streams"] == 0,
                      timeout=GUARD, what=f"no event stream left open on {name}")
        st = pair.node(name).status()
        assert not [t for t in st["tasks"] if t.startswith("http")], st["tasks"]
        errors = [r for r in pair.node(name).events() if r["level"] == "error"]
        assert errors == [], errors
    # and the API still serves streams
    last = SseClient(a, read)
    last.start()
    last.wait(lambda i: i.get("event") == "status", "a status after all that")
    last.reset()


async def test_a_cursor_from_before_a_restart_gets_everything_kept(tmp_path, autojump_clock):
    log = EventLog(tmp_path / "events.jsonl", "a", console=None)
    hub = EventHub(log)
    for i in range(3):
        log.write("info", "e", f"r{i + 1}")
    stream = EventStream(hub, lambda: {}, cursor=500)  # the old process had numbered up to 500
    got = await collect(stream, trio.current_time() + 0.5)
    items = parse_sse([c for _, c in got])
    gaps = [i["data"] for i in items if i.get("event") == "gap"]
    assert gaps == [{"after": 500, "next": 1, "missed": None}]
    assert [int(i["id"]) for i in items if i.get("event") == "log"] == [1, 2, 3]
    hub.close()
    log.close()


@settings(max_examples=500, deadline=None)
@given(raw=hs.binary(max_size=200) | hs.lists(hs.tuples(hs.sampled_from(["limit", "after", "x", "LIMIT"]),
                                                           hs.text(max_size=25)), max_size=3).map(
    lambda items: "&".join(f"{k}={v}" for k, v in items).encode("utf-8", "surrogatepass")))
def test_fuzz_query_parameters_are_a_value_in_range_or_a_400(raw):
    request = Request({"type": "http", "method": "GET", "path": "/", "query_string": raw, "headers": []})
    try:
        params = query(request, ("limit", "after"))
        limit = int_param(params, "limit", 100, 1, 1000)
        after = int_param(params, "after", None, 0, 2**62)
    except ApiError as e:
        assert e.status == 400 and e.code == "bad_request" and e.message
        return
    assert 1 <= limit <= 1000 and (after is None or 0 <= after <= 2**62)


def test_a_refusal_becomes_the_status_its_code_says():
    from failover.operations import Reply, refused
    from failover.web.api import reply_response

    assert json.loads(reply_response(Reply({"ok": True, "rows": []})).body) == {"ok": True, "rows": []}
    for code, status in (("bad_request", 400), ("not_active", 409), ("conflict", 409), (None, 400)):
        with pytest.raises(ApiError) as e:
            reply_response(refused(code, "no"))
        assert (e.value.status, e.value.code, e.value.message) == (status, code or "bad_request", "no")
    with pytest.raises(ApiError) as e:  # a command's refusal says it in "message"
        reply_response(Reply({"ok": False, "message": "peer is not reachable"}, code="conflict"))
    assert e.value.status == 409 and e.value.message == "peer is not reachable"
