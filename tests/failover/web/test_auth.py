"""Authentication of the admin HTTP API (failover/web/auth.py) against real node managers
over real HTTP (``lab.pair.Pair(http=True)``): bearer tokens, roles, the session cookie,
CSRF, operators removed or files broken while the node runs, the rate-limited failure log;
then, in process with a fake clock, session expiry; and the Authorization header parser under
fuzzing."""
from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route

from failover.config import load_config
from failover.configure import configure_main
from failover.web.app import Guard
from failover.web.auth import MAX_AUTH_HEADER, Auth, parse_authorization, require
from failover.web.errors import ApiError, json_body
from failover.web.operators import add_operator
from failover.web.settings import HttpSettings
from lab.pair import Pair
from tests.failover.web.http_util import asgi, call
from tests.util import EventLogRecorder

SUB = {"extension": "1001", "name": "Ann", "mailbox": "1001", "mwi_method": "none", "notify": []}


@pytest.fixture
def pair(short_dir):
    with Pair(short_dir, http=True) as p:
        p.start()
        p.wait_state("a", "active", 30)
        p.wait_state("b", "inactive", 30)
        yield p


def events_named(pair: Pair, name: str, event: str) -> list[dict]:
    return [e for e in pair.node(name).events() if e["event"] == event]


def db_rows(pair: Pair, table: str) -> list:
    r = pair.a.admin({"op": "db_list", "table": table})
    assert r and r["ok"], r
    return r["rows"]


# ============================================================================ bearer and roles


def test_no_or_wrong_credentials_get_401_and_are_logged_without_the_token(pair):
    url = pair.http_url("a")
    r = call(url, "GET", "/api/v1/status")
    assert r.status == 401 and r.code == "unauthorized"
    assert r.header("WWW-Authenticate").startswith("Bearer")
    assert r.json["ok"] is False and r.json["error"]["message"]
    wrong = "vmha_" + "x" * 43
    for header in (f"Bearer {wrong}", "Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer a b",
                   f"bearer {pair.tokens['admin']}x"):
        r = call(url, "GET", "/api/v1/status", headers={"Authorization": header})
        assert r.status == 401 and r.code == "unauthorized", header
    # the right token, in any case of the scheme, with blanks around it
    r = call(url, "GET", "/api/v1/status", headers={"Authorization": f"  bEaReR   {pair.tokens['read']} "})
    assert r.status == 200 and r.json["ok"] is True
    pair.wait_for(lambda: events_named(pair, "a", "http_auth_failed"), 5, what="the failure line")
    time.sleep(0.3)
    lines = events_named(pair, "a", "http_auth_failed")
    assert len(lines) == 1, lines  # five failures from one address within 10 s: one line
    text = (pair.a.config.parent / "data" / "a" / "events.jsonl").read_text()
    assert wrong not in text and pair.tokens["admin"] not in text and "YWRtaW46YWRtaW4" not in text
    assert lines[0]["fields"]["remote"] == "127.0.0.1"


def test_read_role_cannot_change_anything(pair):
    url, read = pair.http_url("a"), pair.tokens["read"]
    before = pair.a.status()
    writes = [("POST", "/api/v1/failover", {"force": True}), ("POST", "/api/v1/failback", {}),
              ("POST", "/api/v1/mode", {"mode": "manual"}),
              ("POST", "/api/v1/db", {"ops": [{"op": "put", "table": "subscribers", "row": SUB}]}),
              ("PUT", "/api/v1/db/subscribers", SUB), ("DELETE", "/api/v1/db/subscribers/1001", None)]
    for method, path, body in writes:
        r = call(url, method, path, token=read, body=body)
        assert r.status == 403 and r.code == "forbidden", (path, r.status, r.body)
        assert "role read" in r.json["error"]["message"]
    after = pair.a.status()
    for key in ("state", "term", "mode"):
        assert after["node"][key] == before["node"][key], key
    assert pair.b.state() == "inactive"
    assert db_rows(pair, "subscribers") == []
    assert not [e for e in pair.a.events() if e["event"] == "operator_action"]
    # the admin token does what the read token may not (so the checks above can fail)
    r = call(url, "POST", "/api/v1/mode", token=pair.tokens["admin"], body={"mode": "manual"})
    assert r.status == 200 and r.json["ok"], r.body
    pair.wait_for(lambda: pair.a.status()["node"]["mode"] == "manual", 5, what="mode manual")
    r = call(url, "PUT", "/api/v1/db/subscribers", token=pair.tokens["admin"], body=SUB)
    assert r.status == 200 and r.json["ok"], r.body
    assert [row["extension"] for row in db_rows(pair, "subscribers")] == ["1001"]


# ============================================================================ sessions and CSRF


def login(url: str, token: str) -> tuple[str, str]:
    r = call(url, "POST", "/login", body=f"token={token}",
             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 303 and r.header("Location") == "/", (r.status, r.body)
    cookie = r.all("Set-Cookie")[0]
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite"} <= attrs and "secure" not in attrs  # plain HTTP here
    assert "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
    sid = r.cookies["vmha_session"]
    s = call(url, "GET", "/api/v1/session", cookie=sid)
    assert s.status == 200, s.body
    return sid, s.json["csrf_token"]


def test_login_page_and_wrong_token(pair):
    url = pair.http_url("a")
    page = call(url, "GET", "/login")
    assert page.status == 200 and b'name="token"' in page.body and b'action="/login"' in page.body
    assert "default-src 'none'" in page.header("Content-Security-Policy")
    assert b"http://" not in page.body and b"https://" not in page.body  # no external resources
    r = call(url, "POST", "/login", body="token=vmha_nope_nope_nope_nope",
             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 401 and b"not known" in r.body and "vmha_session" not in r.cookies
    r = call(url, "POST", "/login", body={"token": "vmha_nope_nope_nope_nope"})
    assert r.status == 401 and r.code == "unauthorized"
    r = call(url, "POST", "/login", body={"token": pair.tokens["read"]})  # the JSON form
    assert r.status == 200 and r.json["operator"] == "viewer" and r.json["csrf_token"]
    assert r.cookies["vmha_session"]


def test_session_writes_need_the_csrf_token_and_same_origin(pair):
    url = pair.http_url("a")
    sid, csrf = login(url, pair.tokens["admin"])
    info = call(url, "GET", "/api/v1/session", cookie=sid).json
    assert info == {"ok": True, "operator": "admin", "role": "admin", "via": "session",
                    "csrf_token": csrf, "node": "a"}
    assert call(url, "GET", "/api/v1/status", cookie=sid).status == 200  # reads need no CSRF
    host = url.removeprefix("http://")
    refused = [{}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": csrf[:-1]},
               {"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
               {"X-CSRF-Token": csrf, "Origin": "null"},
               {"X-CSRF-Token": csrf, "Origin": f"https://{host}"}]
    for headers in refused:
        r = call(url, "POST", "/api/v1/mode", cookie=sid, body={"mode": "manual"}, headers=headers)
        assert r.status == 403 and r.code == "csrf", (headers, r.status, r.body)
    assert pair.a.status()["node"]["mode"] == "automatic"
    # a session of another operator has another CSRF token
    sid2, csrf2 = login(url, pair.tokens["admin"])
    assert csrf2 != csrf and sid2 != sid
    r = call(url, "POST", "/api/v1/mode", cookie=sid, body={"mode": "manual"},
             headers={"X-CSRF-Token": csrf2})
    assert r.status == 403 and r.code == "csrf"
    assert pair.a.status()["node"]["mode"] == "automatic"
    r = call(url, "POST", "/api/v1/mode", cookie=sid, body={"mode": "manual"},
             headers={"X-CSRF-Token": csrf, "Origin": url})
    assert r.status == 200 and r.json["ok"], r.body
    pair.wait_for(lambda: pair.a.status()["node"]["mode"] == "manual", 5, what="mode manual")
    actions = [e for e in pair.a.events() if e["event"] == "operator_action"]
    assert actions and actions[-1]["fields"]["operator"] == "admin"
    # the read role through a session: 403 forbidden, before CSRF is even looked at
    rsid, rcsrf = login(url, pair.tokens["read"])
    r = call(url, "POST", "/api/v1/mode", cookie=rsid, body={"mode": "automatic"},
             headers={"X-CSRF-Token": rcsrf})
    assert r.status == 403 and r.code == "forbidden"
    # logout needs the CSRF token too, then the cookie is worthless
    r = call(url, "POST", "/logout", cookie=sid, headers={"Accept": "application/json"})
    assert r.status == 403 and r.code == "csrf"
    r = call(url, "POST", "/logout", cookie=sid, headers={"X-CSRF-Token": csrf, "Accept": "application/json"})
    assert r.status == 200 and r.cookies.get("vmha_session") in ("", '""')
    assert call(url, "GET", "/api/v1/status", cookie=sid).status == 401
    assert call(url, "GET", "/api/v1/status", cookie=sid2).status == 200  # the other session lives


def test_removed_operator_loses_bearer_and_sessions_at_once(pair):
    url, token = pair.http_url("a"), pair.tokens["admin"]
    sid, _ = login(url, token)
    assert call(url, "GET", "/api/v1/status", token=token).status == 200
    assert configure_main(["--remove-operator", "admin", "--config", str(pair.a.config)]) == 0
    assert call(url, "GET", "/api/v1/status", token=token).status == 401
    assert call(url, "GET", "/api/v1/status", cookie=sid).status == 401
    assert call(url, "GET", "/api/v1/status", token=pair.tokens["read"]).status == 200
    # adding it back (same token) does not bring the old session back
    path = load_config(pair.a.config).http.operators_file
    add_operator(path, "admin", "admin", token)
    assert call(url, "GET", "/api/v1/status", token=token).status == 200
    assert call(url, "GET", "/api/v1/status", cookie=sid).status == 401
    # a new token for the operator ends the sessions made with the old one
    sid, _ = login(url, token)
    add_operator(path, "admin", "admin", replace=True)
    assert call(url, "GET", "/api/v1/status", cookie=sid).status == 401
    assert call(url, "GET", "/api/v1/status", token=token).status == 401
    # b was never told: its file still has the old token (each node's file is its own)
    assert call(pair.http_url("b"), "GET", "/api/v1/status", token=token).status == 200


def test_a_broken_operators_file_keeps_the_last_good_one(pair):
    url = pair.http_url("a")
    path = load_config(pair.a.config).http.operators_file
    good = path.read_bytes()
    os.chmod(path, 0o644)  # others may read it: refused, and said once
    for _ in range(3):
        assert call(url, "GET", "/api/v1/status", token=pair.tokens["read"]).status == 200
    errors = events_named(pair, "a", "operators_file_error")
    assert len(errors) == 1 and "chmod 600" in errors[0]["message"] and "stay" in errors[0]["message"]
    path.write_bytes(b"[operators.x\n")  # a new change, still broken: a second line
    assert call(url, "GET", "/api/v1/status", token=pair.tokens["admin"]).status == 200
    assert len(events_named(pair, "a", "operators_file_error")) == 2
    os.chmod(path, 0o600)
    path.write_bytes(good.replace(b"[operators.viewer]", b"[operators.viewer2]"))
    r = call(url, "GET", "/api/v1/session", token=pair.tokens["read"])
    assert r.status == 200 and r.json["operator"] == "viewer2"
    path.unlink()  # a missing file: no operators at all
    assert call(url, "GET", "/api/v1/status", token=pair.tokens["admin"]).status == 401


# ============================================================================ in process


def fake_nm(tmp_path: Path, timeout: float = 60.0):
    http = HttpSettings(operators_file=tmp_path / "operators.toml", session_timeout=timeout)
    return SimpleNamespace(cfg=SimpleNamespace(http=http, node=SimpleNamespace(name="t")),
                           events=EventLogRecorder(),
                           failures=SimpleNamespace(failed=lambda *a, **k: None))


def app_with(nm, auth: Auth) -> Starlette:
    async def admin_only(request):
        op = await require(request, "admin")
        return JSONResponse({"ok": True, "operator": op.name, "via": op.via})

    async def api_error(request, exc):
        return exc.response()

    async def admin_json(request):
        await require(request, "admin")
        return JSONResponse({"ok": True, "body": await json_body(request)})

    app = Starlette(routes=[*auth.routes(), Route("/w", admin_only, methods=["POST"]),
                            Route("/j", admin_json, methods=["POST"])],
                    middleware=[Middleware(Guard, nm=nm)], exception_handlers={ApiError: api_error})
    app.state.auth = auth
    return app


async def test_sessions_expire_after_session_timeout(tmp_path):
    nm = fake_nm(tmp_path, timeout=60.0)
    token = add_operator(nm.cfg.http.operators_file, "alice", "admin")
    now = [1000.0]
    auth = Auth(nm, clock=lambda: now[0])
    app = app_with(nm, auth)
    r = await asgi(app, "POST", "/login", headers={"content-type": "application/json"},
                   body=f'{{"token": "{token}"}}'.encode())
    assert r.status == 200
    sid, csrf = r.cookies["vmha_session"], r.json["csrf_token"]
    assert "Max-Age=60" in r.header("set-cookie")
    hdrs = {"cookie": f"vmha_session={sid}", "x-csrf-token": csrf}
    now[0] += 59.0
    r = await asgi(app, "POST", "/w", headers=hdrs)
    assert r.status == 200 and r.json == {"ok": True, "operator": "alice", "via": "session"}
    now[0] += 1.0  # 60 s after login: over
    r = await asgi(app, "POST", "/w", headers=hdrs)
    assert r.status == 401 and r.code == "unauthorized"
    assert auth.sessions == {}
    r = await asgi(app, "GET", "/api/v1/session", headers=hdrs)
    assert r.status == 401


async def test_the_failure_log_is_one_line_per_address_per_10_s(tmp_path):
    nm = fake_nm(tmp_path)
    add_operator(nm.cfg.http.operators_file, "alice", "admin")
    now = [0.0]
    app = app_with(nm, Auth(nm, clock=lambda: now[0]))
    bad = {"authorization": "Bearer vmha_wrong_wrong_wrong_wrong"}
    for i in range(5):
        now[0] = i * 1.0
        assert (await asgi(app, "POST", "/w", headers=bad)).status == 401
    await asgi(app, "POST", "/w", headers=bad, client=("10.1.1.1", 1))  # another address: its own line
    assert len(nm.events.named("http_auth_failed")) == 2
    now[0] = 10.0
    await asgi(app, "POST", "/w", headers=bad)
    lines = nm.events.named("http_auth_failed")
    assert len(lines) == 3 and lines[-1]["fields"]["not_logged"] == 4
    assert "4 more failure(s)" in lines[-1]["message"]
    assert all("wrong_wrong" not in rec["message"] for rec in nm.events.records)


async def test_a_form_post_can_carry_the_csrf_token(tmp_path):
    nm = fake_nm(tmp_path)
    token = add_operator(nm.cfg.http.operators_file, "alice", "admin")
    app = app_with(nm, Auth(nm))
    r = await asgi(app, "POST", "/login", headers={"content-type": "application/x-www-form-urlencoded"},
                   body=f"token={token}".encode())
    assert r.status == 303
    sid = r.cookies["vmha_session"]
    r = await asgi(app, "GET", "/api/v1/session", headers={"cookie": f"vmha_session={sid}"})
    csrf = r.json["csrf_token"]
    form = {"cookie": f"vmha_session={sid}", "content-type": "application/x-www-form-urlencoded"}
    assert (await asgi(app, "POST", "/w", headers=form, body=b"csrf_token=nope")).code == "csrf"
    r = await asgi(app, "POST", "/w", headers=form, body=f"a=1&csrf_token={csrf}".encode())
    assert r.status == 200 and r.json["via"] == "session"
    r = await asgi(app, "POST", "/w", headers=form, body=b"%zz=" + b"x" * 70000)
    assert r.status == 413
    # the form was read for its CSRF token; a route that wants JSON still reads the body: 400
    r = await asgi(app, "POST", "/j", headers=form, body=f"csrf_token={csrf}".encode())
    assert r.status == 400 and r.code == "bad_request" and "JSON" in r.json["error"]["message"]


# ============================================================================ header parser


@settings(max_examples=600, deadline=None)
@given(st.text(max_size=1200))
def test_fuzz_authorization_header(value):
    try:
        token = parse_authorization(value)
    except ValueError as e:  # a fixed sentence: the value is never quoted back
        assert str(e).startswith("the Authorization header") and value.strip() not in str(e)[25:] or \
            len(value.strip()) < 4
        return
    assert token and token in value and token.isascii() and token.isprintable() and " " not in token
    assert value.strip(" \t")[:6].lower() == "bearer" and len(value) <= MAX_AUTH_HEADER


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=300),
       st.sampled_from(["Bearer", "bearer", "BEARER"]), st.text(" \t", max_size=3))
def test_fuzz_authorization_round_trip(token, scheme, pad):
    assert parse_authorization(f"{pad}{scheme} {pad}{token}{pad}") == token
