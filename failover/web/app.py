"""The Starlette application of the node manager's HTTP API.

``build_app(nm, hub)`` mounts the JSON API (``failover.web.api``), the Failover Monitor page
(``failover.web.page``), the Prometheus metrics (``failover.web.metrics``) and the login and
session routes (``failover.web.auth``).  Every error leaves in one JSON form
(``failover.web.errors``): ``ApiError`` as raised, Starlette's 404/405 as ``not_found`` /
``method_not_allowed``, a request body over 1 MiB as 413 ``too_large``, and any other
exception as 500 ``internal`` ("internal error, nothing changed: ..."), recorded in the node's
task failures as ``http.request`` (counted, logged at most every 30 s, shown in status).  A
bug in one request never reaches the server, let alone the node manager.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from failover.web import api, metrics, page
from failover.web.auth import Auth
from failover.web.errors import MAX_BODY, ApiError, code_for_status, error_response
from telephony.runtime.tasks import describe

if TYPE_CHECKING:
    from failover.node import NodeManager
    from failover.web.hub import EventHub

__all__ = ["Guard", "build_app", "error_handlers"]

#: headers every response gets unless the route set its own
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                    (b"x-frame-options", b"DENY")]


class _BodyTooLarge(Exception):
    pass


class Guard:
    """The outermost layer of our own (inside Starlette's error middleware): refuses bodies
    over ``MAX_BODY`` (by ``Content-Length`` at once, by counting otherwise), adds the security
    headers, and turns any exception that escaped the routes into a 500 JSON answer."""

    def __init__(self, app, nm: "NodeManager"):
        self.app = app
        self.nm = nm

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                if not value.isdigit() or int(value) > MAX_BODY:
                    status, code = ((413, "too_large") if value.isdigit()
                                    else (400, "bad_request"))
                    await _send_json(send, status, code, f"the request body is over {MAX_BODY} bytes"
                                     if status == 413 else "bad Content-Length header")
                    return
        seen = 0

        async def counted_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY:
                    raise ApiError(413, "too_large", f"the request body is over {MAX_BODY} bytes")
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                have = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": list(message.get("headers", []))
                           + [(k, v) for k, v in SECURITY_HEADERS if k not in have]}
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception as e:  # noqa: BLE001 - the backstop: a bug answers 500, never more
            if isinstance(e, ApiError):  # raised outside a route (e.g. by receive): as given
                if not started:
                    await _send_json(guarded_send, e.status, e.code, e.message, e.headers, e.extra)
                return
            self.nm.failures.failed("http.request", e)
            if not started:
                await _send_json(guarded_send, 500, "internal",
                                 f"internal error, nothing changed: {describe(e, 200)}")


async def _send_json(send, status: int, code: str, message: str, headers: dict | None = None,
                     extra: dict | None = None) -> None:
    body = {"ok": False, "error": {"code": code, "message": message}, **(extra or {})}
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
            (b"cache-control", b"no-store")]
    hdrs += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = code_for_status(exc.status_code)
    message = {404: f"no such resource: {request.url.path[:200]}",
               405: f"method {request.method} is not allowed on {request.url.path[:200]}"}.get(
        exc.status_code, str(exc.detail)[:300])
    if exc.status_code >= 500:
        message = f"internal error, nothing changed: {message}"
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


def error_handlers() -> dict:
    """Starlette's ``exception_handlers`` for our JSON error form."""
    return {ApiError: _api_error, HTTPException: _http_error}


def build_app(nm: "NodeManager", hub: "EventHub") -> Starlette:
    """The application for ``nm``; ``hub`` is the event hub every part shares."""
    auth = Auth(nm)
    routes = [*api.routes(nm, hub), *page.routes(nm, hub), *metrics.routes(nm, hub), *auth.routes()]
    app = Starlette(routes=routes, middleware=[Middleware(Guard, nm=nm)],
                    exception_handlers=error_handlers())
    app.state.auth = auth
    app.state.nm = nm
    app.state.hub = hub
    return app
