"""The Failover Monitor's routes (failover/web/page.py) on a Starlette app with the real
authentication (failover.web.auth, a real operators file) and a real event log file: the
page needs a session, the static files are served with their types and nothing else is, the
timeline reads the log's tail."""
from __future__ import annotations

import functools
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from failover.eventlog import EventLog
from failover.web import page
from failover.web.auth import Auth
from failover.web.errors import ApiError
from failover.web.operators import add_operator
from failover.web.settings import HttpSettings
from lab.pair import free_port
from telephony.core.terms import Role


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Client:
    """Plain HTTP over a real socket (urllib, in a worker thread); no redirects followed."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(NoRedirect)

    def _get(self, path: str, headers: dict) -> SimpleNamespace:
        req = urllib.request.Request(self.base + path, headers=headers)
        try:
            with self.opener.open(req, timeout=10) as r:
                status, hdrs, body = r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            status, hdrs, body = e.code, e.headers, e.read()
        return SimpleNamespace(status_code=status, headers={k.lower(): v for k, v in hdrs.items()},
                               content=body, text=body.decode("utf-8", "replace"),
                               json=lambda: json.loads(body))

    async def get(self, path: str, headers: dict | None = None) -> SimpleNamespace:
        return await trio.to_thread.run_sync(self._get, path, headers or {})


@pytest.fixture
async def setup(tmp_path, nursery):
    data = tmp_path / "data"
    events = EventLog(data / "events.jsonl", "a", console=None)
    ops = data / "operators.toml"
    tokens = {"admin": add_operator(ops, "admin", "admin"), "read": add_operator(ops, "viewer", "read")}
    cfg = SimpleNamespace(node=SimpleNamespace(name="a", data_dir=data, role=Role.PRIMARY),
                          link=SimpleNamespace(peer_name="b"),
                          http=HttpSettings(operators_file=ops))
    nm = SimpleNamespace(cfg=cfg, events=events)
    app = Starlette(routes=page.routes(nm, None), exception_handlers={ApiError: lambda r, e: e.response()})
    app.state.auth = Auth(nm)
    config = Config()
    config.bind = [f"127.0.0.1:{free_port()}"]
    config.accesslog = config.errorlog = None
    stop = trio.Event()
    await nursery.start(functools.partial(serve, app, config, shutdown_trigger=stop.wait))
    yield SimpleNamespace(client=Client("http://" + config.bind[0]), tokens=tokens, events=events,
                          path=data / "events.jsonl")
    stop.set()
    events.close()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def test_the_page_needs_a_login(setup):
    r = await setup.client.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/login"
    r = await setup.client.get("/", headers=bearer("vmha_" + "x" * 43))
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = await setup.client.get("/", headers=bearer(setup.tokens["read"]))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    for ident in ("node-name", "node-role", "node-state", "peer-name", "peer-state", "active-banner",
                  "active-link", "btn-failover", "btn-failback", "btn-mode", "confirm-yes", "timeline",
                  "failovers", "live"):
        assert f'id="{ident}"' in r.text, ident
    assert "<script>" not in r.text and "<style>" not in r.text and "http" not in r.text.replace(
        "http://www.w3.org/2000/svg", "")  # no inline code, no other site


async def test_static_files_and_no_traversal(setup):
    c = setup.client
    for name, ctype in (("monitor.js", "text/javascript"), ("monitor.css", "text/css"),
                        ("monitor.html", "text/html")):
        r = await c.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype), name
        assert r.content == (page.STATIC / name).read_bytes()
        assert r.headers["x-content-type-options"] == "nosniff"
    for bad in ("../page.py", "..%2Fpage.py", "%2e%2e/%2e%2e/settings.py", "page.py", ".hidden.js",
                "nothere.js", "sub/monitor.js", "monitor.js%00.css", "x" * 300 + ".js", "/etc/passwd"):
        r = await c.get(f"/static/{bad}")
        assert r.status_code == 404, (bad, r.status_code)
        assert r.json()["error"]["code"] == "not_found"


async def test_the_timeline_from_the_event_log(setup):
    c = setup.client
    assert (await c.get("/api/v1/timeline")).status_code == 401
    ev = setup.events
    ev.write("info", "starting", "a (primary) starting in term 0")
    ev.write("warning", "activating", "a activating in term 1: first node started",
             {"cause": "first node started", "term": 1})
    ev.write("warning", "startup", "startup: a active",
             {"cause": "first node started", "took_ms": 12.0, "term": 1})
    ev.write("info", "peer_up", "peer b reachable: inactive, term 0")
    with open(setup.path, "a") as f:
        f.write('{"event":"failover", broken\n')
    r = await c.get("/api/v1/timeline?hours=2", headers=bearer(setup.tokens["read"]))
    assert r.status_code == 200, r.text
    tl = r.json()
    assert tl["ok"] and tl["node"] == "a" and tl["peer"] == "b" and tl["hours"] == 2
    assert tl["end"] - tl["start"] == 7200 and abs(tl["end"] - time.time()) < 60
    rows = {row["name"]: row for row in tl["nodes"]}
    assert rows["a"]["segments"][-1]["state"] == "active" and rows["b"]["source"] == "seen"
    assert rows["b"]["segments"][-1]["state"] == "inactive"
    assert [(m["kind"], m["cause"], m["duration_s"]) for m in tl["markers"]] == \
        [("startup", "first node started", 0.012)]
    assert tl["failovers"][0]["kind"] == "startup"
    assert tl["problem_count"] == 1 and "ts" in tl["problems"][0]["error"]
    for bad in ("0", "169", "abc", "-1", "1e3", "24.5"):
        r = await c.get(f"/api/v1/timeline?hours={bad}", headers=bearer(setup.tokens["read"]))
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", bad


async def test_a_missing_log_is_an_empty_timeline_and_an_unreadable_one_an_error(setup):
    setup.path.unlink()
    r = await setup.client.get("/api/v1/timeline", headers=bearer(setup.tokens["admin"]))
    assert r.status_code == 200 and r.json()["markers"] == [] and r.json()["hours"] == 24
    setup.path.mkdir()  # a directory where the log should be: reading it fails
    r = await setup.client.get("/api/v1/timeline", headers=bearer(setup.tokens["admin"]))
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    assert "cannot read the event log" in r.json()["error"]["message"]


def rec(i: int, event: str = "deactivated") -> bytes:
    return (json.dumps({"ts": 1_700_000_000 + i, "node": "a", "level": "info", "event": event,
                        "message": "m", "fields": {"cause": "c", "term": i}}, separators=(",", ":"))
            + "\n").encode()


def test_read_tail_reads_only_the_tail(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    lines = [rec(i, "deactivated" if i % 2 else "call") for i in range(2000)]
    path.write_bytes(b"".join(lines) + b'{"ts":1,"node":"a","event":"stopped"')  # last one half written
    got, truncated = page.read_tail(path, limit=10_000)
    assert truncated
    assert sum(len(x) for x in lines[-(len(got) * 2):]) <= 10_000 + len(lines[0]) * 2
    assert got and all(r["event"] == "deactivated" for r in got)  # other events not even parsed
    assert got[-1]["fields"]["term"] == 1999
    terms = [r["fields"]["term"] for r in got]
    assert terms == list(range(terms[0], 2000, 2))  # whole lines only, none lost at the cut
    everything, truncated = page.read_tail(path)
    assert not truncated and len(everything) == 1000


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80), st.sampled_from([rec(1), rec(2, "failover"), b"\n",
                                                                   b'"event":"stopped"\n'])), max_size=30),
       st.integers(1, 400))
def test_read_tail_takes_any_bytes(tmp_path_factory, chunks, limit):
    path = tmp_path_factory.mktemp("tail") / "events.jsonl"
    path.write_bytes(b"".join(chunks))
    got, _ = page.read_tail(path, limit=limit)
    assert all(isinstance(r, (dict, list, str, int, float, bool)) or r is None for r in got)
    assert len(got) <= path.read_bytes().count(b"\n")
