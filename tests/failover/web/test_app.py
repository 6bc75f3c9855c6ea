"""The application's error layer (failover/web/app.py), in process with planted routes: a bug
in a route answers 500 ``internal`` and is recorded as ``http.request``; bodies over 1 MiB are
refused whether or not they say their length; Starlette's own errors come out as JSON."""
from __future__ import annotations

from types import SimpleNamespace

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route

from failover.web.app import Guard, error_handlers
from failover.web.errors import MAX_BODY, ApiError, json_body
from telephony.runtime.tasks import TaskFailures
from tests.failover.web.http_util import asgi
from tests.util import EventLogRecorder


def planted_app():
    log = EventLogRecorder()
    failures = TaskFailures(lambda level, event, message: log.write(level, event, message))
    nm = SimpleNamespace(failures=failures, events=log)

    async def boom(request):
        raise KeyError("planted bug")

    async def conflict(request):
        raise ApiError(409, "conflict", "already so", extra={"detail": 1})

    async def echo(request):
        return JSONResponse({"ok": True, "got": await json_body(request)})

    app = Starlette(routes=[Route("/boom", boom), Route("/conflict", conflict),
                            Route("/echo", echo, methods=["POST"])],
                    middleware=[Middleware(Guard, nm=nm)],
                    exception_handlers=error_handlers())
    return app, failures, log


async def test_a_bug_in_a_route_is_500_internal_and_recorded():
    app, failures, log = planted_app()
    r = await asgi(app, "GET", "/boom")
    assert r.status == 500 and r.code == "internal"
    assert r.json["error"]["message"].startswith("internal error, nothing changed: KeyError")
    assert failures.counts["http.request"] == 1
    assert "planted bug" in log.named("task_failed")[0]["message"]
    r = await asgi(app, "GET", "/boom")  # and again: the app goes on
    assert r.status == 500 and failures.counts["http.request"] == 2


async def test_api_errors_keep_their_fields_and_starlette_errors_are_json():
    app, failures, _ = planted_app()
    r = await asgi(app, "GET", "/conflict")
    assert r.status == 409 and r.json == {"ok": False, "error": {"code": "conflict", "message": "already so"},
                                          "detail": 1}
    r = await asgi(app, "GET", "/nowhere")
    assert r.status == 404 and r.code == "not_found"
    r = await asgi(app, "PUT", "/conflict")
    assert r.status == 405 and r.code == "method_not_allowed" and r.header("allow")
    assert not failures.counts  # none of these is a failure of ours


async def test_bodies_over_the_limit_are_refused_with_or_without_a_length():
    app, failures, _ = planted_app()
    ok = await asgi(app, "POST", "/echo", headers={"content-type": "application/json"}, body=b'{"a": 1}')
    assert ok.status == 200 and ok.json["got"] == {"a": 1}
    big = b'{"a": "' + b"x" * MAX_BODY + b'"}'
    r = await asgi(app, "POST", "/echo", headers={"content-type": "application/json"}, body=big)
    assert r.status == 413 and r.code == "too_large"
    # no Content-Length (a chunked body): counted as it arrives
    r = await asgi(app, "POST", "/echo", headers={"content-type": "application/json"}, body=big, length=False)
    assert r.status == 413 and r.code == "too_large"
    r = await asgi(app, "POST", "/echo", headers={"content-type": "application/json",
                                                   "content-length": "abc"}, body=b"{}")
    assert r.status == 400 and r.code == "bad_request"
    assert not failures.counts
