"""The admin HTTP API under ``/api/v1`` (docs/admin-api.md): JSON, ``{"ok": true, ...}`` on
success, the error form of ``failover.web.errors`` otherwise.

The operator's operations go through ``failover.operations.perform``, as the admin socket's
do, so both answer the same and both write the same ``operator_action`` records.  A
configuration write on a node that does not take writes is redirected (307) to the active
peer's API when the peer is known active and ``http.peer_url`` is set, else refused (409
``not_active``); nothing is changed either way.  The event stream is Server-Sent Events from
the :class:`~failover.web.hub.EventHub`.
"""
from __future__ import annotations

import json
import re
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from failover.core.state import ACTIVE_STATES
from failover.eventlog import read_events
from failover.operations import perform
from failover.web.auth import require
from failover.web.errors import ApiError, json_body
from telephony.configdb import ConfigDB
from telephony.core.reports import (
    ReportError,
    ReportGate,
    failover_history_csv,
    failover_history_report,
    message_counts_csv,
    message_counts_report,
)

if TYPE_CHECKING:
    from failover.node import NodeManager
    from failover.web.hub import EventHub

PREFIX = "/api/v1"
ACTIVE_LABELS = tuple(s.label for s in ACTIVE_STATES)
#: tables whose rows hold secrets (PIN hashes): read with the admin role only
SECRET_TABLES = ("pins",)
MAX_EVENTS = 1000
MAX_CONFLICTS = 10000
MAX_STREAMS = 64  # event streams open at once; more are refused (503)
STATUS_EVERY = 1.0  # s: a status event at least this often
STATUS_MIN_GAP = 0.2  # s: and at most 5 a second
KEEPALIVE_EVERY = 15.0  # s: a comment line, so proxies keep an idle stream open
RETRY_MS = 2000  # the client's reconnection delay (the stream's "retry:" field)
STATUS_CODES = {"bad_request": 400, "not_active": 409, "conflict": 409}
_UINT = re.compile(r"[0-9]{1,18}")
_TABLE = re.compile(r"[a-z_]{1,64}")
NO_STORE = {"Cache-Control": "no-store"}


def ok(body: dict[str, Any] | None = None, status: int = 200) -> JSONResponse:
    return JSONResponse({"ok": True, **(body or {})}, status_code=status, headers=NO_STORE)


def query(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each at most once and each one of ``allowed`` (400 otherwise)."""
    out: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            raise ApiError(400, "bad_request", f"unknown query parameter {name[:40]!r}"
                           + (f" (this endpoint takes {', '.join(allowed)})" if allowed else
                              " (this endpoint takes none)"))
        if name in out:
            raise ApiError(400, "bad_request", f"query parameter {name!r} given twice")
        out[name] = value
    return out


def int_param(params: dict[str, str], name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = params.get(name)
    if raw is None:
        return default
    if not _UINT.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise ApiError(400, "bad_request", f"{name} must be an integer from {lo} to {hi}, not {raw[:40]!r}")
    return int(raw)


def table_param(request: Request) -> str:
    table = request.path_params["table"]
    if not _TABLE.fullmatch(table):
        raise ApiError(400, "bad_request", f"unknown table {table[:40]!r}")
    return table


def format_param(params: dict[str, str]) -> str:
    fmt = params.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError(400, "bad_request", f"format must be json or csv, not {fmt[:40]!r}")
    return fmt


def reply_response(reply: dict) -> JSONResponse:
    """``operations.perform``'s reply as the HTTP answer: 200, or the error its code says."""
    if reply.get("ok"):
        return ok({k: v for k, v in reply.items() if k != "ok"})
    code = getattr(reply, "code", None) or "bad_request"
    raise ApiError(STATUS_CODES.get(code, 400), code,
                   str(reply.get("error") or reply.get("message") or "refused; nothing changed"))


def sse(event: str, data: Any, ident: int | None = None) -> bytes:
    """One Server-Sent Event (the data is one line of JSON)."""
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class EventStream:
    """The body of ``GET /api/v1/events/stream``: an async iterator of SSE chunks.

    First ``retry:`` and a ``status`` event; then each record after ``cursor`` as an ``event:
    log`` with ``id: <seq>``, a ``status`` event after new records (at most every
    ``STATUS_MIN_GAP`` s) and every ``STATUS_EVERY`` s, and a comment every
    ``KEEPALIVE_EVERY`` s.  When records were lost from the hub's ring before they were sent,
    an ``event: gap`` says from where (``missed`` null: the cursor is from before the node
    manager restarted, and the stream starts with the oldest record kept).

    A class rather than an async generator: when the client goes away, Starlette cancels the
    iteration and there is nothing left to finalise."""

    def __init__(self, hub: "EventHub", status, cursor: int) -> None:
        self.hub = hub
        self.status = status  # () -> the /status body
        self.pending: deque[bytes] = deque([f"retry: {RETRY_MS}\n\n".encode()])
        if cursor > hub.last_seq:
            # numbers from before a restart of the node manager: everything kept is new
            self.pending.append(sse("gap", {"after": cursor, "next": hub.first_seq, "missed": None}))
            cursor = hub.first_seq - 1
        self.cursor = cursor
        now = trio.current_time()
        self.next_status = now  # at once
        self.last_status = -1e18
        self.dirty = False  # records sent since the last status
        self.next_keepalive = now + KEEPALIVE_EVERY
        self.done = False

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._next()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.done = True

    async def _next(self) -> bytes:
        while True:
            if self.pending:
                return self.pending.popleft()
            if self.hub.closed:
                self.close()
                raise StopAsyncIteration
            now = trio.current_time()
            records = self.hub.recent(self.cursor, 100, oldest_first=True)
            if records:
                out = []
                if records[0]["seq"] > self.cursor + 1:
                    out.append(sse("gap", {"after": self.cursor, "next": records[0]["seq"],
                                           "missed": records[0]["seq"] - self.cursor - 1}))
                out += [sse("log", r, r["seq"]) for r in records]
                self.cursor = records[-1]["seq"]
                self.dirty = True
                return b"".join(out)
            if now >= self.next_status or (self.dirty and now >= self.last_status + STATUS_MIN_GAP):
                self.last_status, self.next_status, self.dirty = now, now + STATUS_EVERY, False
                return sse("status", self.status())
            if now >= self.next_keepalive:
                self.next_keepalive = now + KEEPALIVE_EVERY
                return b": keep-alive\n\n"
            wake = min(self.next_status, self.next_keepalive)
            if self.dirty:
                wake = min(wake, self.last_status + STATUS_MIN_GAP)
            with trio.move_on_at(wake):
                await self.hub.wait(self.cursor)


class Api:
    def __init__(self, nm: "NodeManager", hub: "EventHub") -> None:
        self.nm = nm
        self.hub = hub
        self.streams: weakref.WeakSet[EventStream] = weakref.WeakSet()  # open event streams
        self.report_lock = trio.Lock()  # one message-count report at a time (store logins)

    # ------------------------------------------------------------------ helpers

    def open_streams(self) -> int:
        """Event streams being served now (one never iterated is gone with its response)."""
        return sum(1 for s in tuple(self.streams) if not s.done)

    def active(self, st: dict) -> tuple[str | None, str | None]:
        """The node that takes the pair's writes now, and its API's URL: this node if it
        takes them, else the peer if it is heard and active, else this node while it is
        active (a handover not finished), else none known."""
        cfg = self.nm.cfg
        peer = st["peer"]
        if self.nm.write_refusal() is None:
            return cfg.node.name, cfg.http.url
        if peer.get("reachable") and peer.get("state") in ACTIVE_LABELS:
            return peer["name"], cfg.http.peer
        if st["node"]["state"] in ACTIVE_LABELS:
            return cfg.node.name, cfg.http.url
        return None, None

    def status_body(self) -> dict:
        st = self.nm.status_dict()
        name, url = self.active(st)
        return {"ok": True, "status": st, "active_node": name, "active_url": url}

    def check_writable(self, request: Request) -> None:
        """307 to the active peer's same path and query when this node does not take
        configuration writes now and the peer is heard active (and ``http.peer_url`` is set).
        Otherwise nothing: ``perform`` refuses the write (409 ``not_active``) and records
        the attempt."""
        why = self.nm.write_refusal()
        if why is None:
            return
        peer = self.nm.status_dict()["peer"]
        base = self.nm.cfg.http.peer
        if base and peer.get("reachable") and peer.get("state") in ACTIVE_LABELS:
            location = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise ApiError(307, "not_active", f"{why} (redirected to {location})",
                           headers={"Location": location},
                           extra={"active_node": peer["name"], "location": location})

    async def change(self, who, op: str, args: dict) -> JSONResponse:
        return reply_response(await perform(self.nm, op, args, who.name, "http"))

    # ------------------------------------------------------------------ endpoints

    async def status(self, request: Request) -> Response:
        await require(request, "read")
        query(request, ())
        return JSONResponse(self.status_body(), headers=NO_STORE)

    async def ports(self, request: Request) -> Response:
        await require(request, "read")
        query(request, ())
        svc = self.nm.service
        return ok({"ports": svc.ports, "drivers": getattr(svc, "drivers", []) or [],
                   "counters": getattr(svc, "counters", {}) or {}})

    async def replication(self, request: Request) -> Response:
        await require(request, "read")
        query(request, ())
        return ok({"replication": self.nm.repl.stats()})

    async def events(self, request: Request) -> Response:
        await require(request, "read")
        q = query(request, ("after", "limit"))
        after = int_param(q, "after", None, 0, 2**62)
        limit = int_param(q, "limit", 100, 1, MAX_EVENTS)
        rows = self.hub.recent(after or 0, limit, oldest_first=after is not None)
        return ok({"events": rows, "last_seq": self.hub.last_seq, "first_seq": self.hub.first_seq,
                   "streams": self.open_streams()})

    async def stream(self, request: Request) -> Response:
        await require(request, "read")
        q = query(request, ("after",))
        resume = request.headers.get("last-event-id")
        if resume is not None:
            if not _UINT.fullmatch(resume.strip()):
                raise ApiError(400, "bad_request",
                               f"Last-Event-ID must be an event number, not {resume[:40]!r}")
            cursor = int(resume.strip())
        else:
            cursor = int_param(q, "after", self.hub.last_seq, 0, 2**62)
        if request.method == "HEAD":
            return Response(b"", media_type="text/event-stream", headers=NO_STORE)
        if self.open_streams() >= MAX_STREAMS:
            raise ApiError(503, "unavailable", f"{MAX_STREAMS} event streams are open already: "
                           "close one or try again later")
        body = EventStream(self.hub, self.status_body, cursor)
        self.streams.add(body)
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def db_write(self, request: Request) -> Response:
        who = await require(request, "admin")
        query(request, ())
        self.check_writable(request)
        body = await json_body(request)
        extra = sorted(set(body) - {"ops"})
        if extra:
            raise ApiError(400, "bad_request",
                           f"unknown field {extra[0][:40]!r}: the body is {{\"ops\": [...]}}")
        return await self.change(who, "db_write", {"ops": body.get("ops")})

    async def db_table(self, request: Request) -> Response:
        table = table_param(request)
        if request.method in ("GET", "HEAD"):
            return await self.db_read(request, "db_list", {"table": table})
        who = await require(request, "admin")
        query(request, ())
        self.check_writable(request)
        row = await json_body(request)
        return await self.change(who, "db_write", {"ops": [{"op": "put", "table": table, "row": row}]})

    async def db_row(self, request: Request) -> Response:
        table, key = table_param(request), request.path_params["key"]
        if request.method in ("GET", "HEAD"):
            return await self.db_read(request, "db_get", {"table": table, "key": key})
        who = await require(request, "admin")
        query(request, ())
        self.check_writable(request)
        return await self.change(who, "db_write", {"ops": [{"op": "delete", "table": table, "key": key}]})

    async def db_read(self, request: Request, op: str, args: dict) -> Response:
        who = await require(request, "read")
        query(request, ())
        if args["table"] in SECRET_TABLES and who.role != "admin":
            raise ApiError(403, "forbidden", f"the {args['table']} table holds secrets: reading it "
                           "needs the admin role")
        return reply_response(await perform(self.nm, op, args, who.name, "http"))

    async def db_conflicts(self, request: Request) -> Response:
        who = await require(request, "read")
        q = query(request, ("limit",))
        limit = int_param(q, "limit", 100, 1, MAX_CONFLICTS)
        reply = await perform(self.nm, "db_conflicts", {"limit": limit}, who.name, "http")
        if reply.get("ok") and who.role != "admin":
            reply["conflicts"] = [
                {**c, "local_row": None, "remote_row": None, "rows_hidden": True}
                if c.get("table") in SECRET_TABLES else c for c in reply["conflicts"]]
        return reply_response(reply)

    async def move(self, request: Request) -> Response:
        op = request.url.path.rsplit("/", 1)[-1]  # failover | failback
        who = await require(request, "admin")
        query(request, ())
        body = await json_body(request)
        extra = sorted(set(body) - {"force"})
        if extra:
            raise ApiError(400, "bad_request",
                           f"unknown field {extra[0][:40]!r}: the body is {{\"force\": false}}")
        return await self.change(who, op, {"force": body.get("force", False)})

    async def mode(self, request: Request) -> Response:
        who = await require(request, "admin")
        query(request, ())
        body = await json_body(request)
        extra = sorted(set(body) - {"mode"})
        if extra or "mode" not in body:
            raise ApiError(400, "bad_request", 'the body is {"mode": "manual"} or {"mode": "automatic"}')
        return await self.change(who, "mode", {"mode": body["mode"]})

    def gate(self) -> None:
        """Reports only on the primary while it is active (409 ``not_active`` elsewhere)."""
        n = self.nm.status_dict()["node"]
        allowed, why = ReportGate().may_generate(n["role"], n["state"])
        if not allowed:
            raise ApiError(409, "not_active", why)

    async def report_failovers(self, request: Request) -> Response:
        await require(request, "read")
        fmt = format_param(query(request, ("format",)))
        self.gate()
        path = self.nm.events.path

        def rows() -> list[dict]:
            return failover_history_report(read_events(path)) if path.exists() else []

        try:
            history = await trio.to_thread.run_sync(rows)
        except (ReportError, OSError) as e:
            raise ApiError(500, "internal", f"internal error, nothing changed: the failover history "
                           f"cannot be read: {e}") from None
        if fmt == "csv":
            return csv_response(failover_history_csv(history), "failovers")
        return ok({"failovers": history})

    async def report_messages(self, request: Request) -> Response:
        from telephony.messaging import build_store
        from telephony.store import StoreError, StoreUnavailable

        await require(request, "read")
        fmt = format_param(query(request, ("format",)))
        self.gate()
        subscribers = await self.nm.repl.call(ConfigDB.list, "subscribers")
        async with self.report_lock:
            try:
                # reading the store's password file is file I/O: off the Trio loop
                store = await trio.to_thread.run_sync(build_store, self.nm.cfg)
            except (OSError, ValueError) as e:
                raise ApiError(503, "unavailable", f"the message store cannot be opened: {e}") from None
            try:
                counts = await store.all_counts()
            except (StoreUnavailable, StoreError) as e:
                raise ApiError(503, "unavailable", f"the message store is unavailable: {e}") from None
            finally:
                await store.aclose()
        try:
            report = message_counts_report(counts, subscribers)
        except ReportError as e:
            raise ApiError(500, "internal", f"internal error, nothing changed: {e}") from None
        if fmt == "csv":
            return csv_response(message_counts_csv(report), "messages")
        return ok({"report": report})

    async def healthz(self, request: Request) -> Response:
        """For load balancers: 200 on the node that takes the pair's work, 503 elsewhere."""
        name = self.nm.cfg.node.name
        state = self.nm.sup.state.label
        why = self.nm.write_refusal()
        if why is None:
            return JSONResponse({"ok": True, "active": True, "node": name, "state": state}, headers=NO_STORE)
        return JSONResponse({"ok": False, "active": False, "node": name, "state": state,
                             "error": {"code": "not_active", "message": why}},
                            status_code=503, headers=NO_STORE)


def csv_response(text: str, name: str) -> Response:
    return Response(text, media_type="text/csv; charset=utf-8",
                    headers={**NO_STORE, "Content-Disposition": f'attachment; filename="vmha-{name}.csv"'})


def routes(nm: "NodeManager", hub: "EventHub") -> list:
    """The API's routes (``failover.web.app`` mounts them with the page's and the metrics')."""
    a = Api(nm, hub)
    p = PREFIX
    return [
        Route(f"{p}/status", a.status, methods=["GET"]),
        Route(f"{p}/ports", a.ports, methods=["GET"]),
        Route(f"{p}/replication", a.replication, methods=["GET"]),
        Route(f"{p}/events", a.events, methods=["GET"]),
        Route(f"{p}/events/stream", a.stream, methods=["GET"]),
        Route(f"{p}/db", a.db_write, methods=["POST"]),
        Route(f"{p}/db/{{table}}", a.db_table, methods=["GET", "PUT"]),
        Route(f"{p}/db/{{table}}/{{key}}", a.db_row, methods=["GET", "DELETE"]),
        Route(f"{p}/db-conflicts", a.db_conflicts, methods=["GET"]),
        Route(f"{p}/failover", a.move, methods=["POST"]),
        Route(f"{p}/failback", a.move, methods=["POST"]),
        Route(f"{p}/mode", a.mode, methods=["POST"]),
        Route(f"{p}/reports/failovers", a.report_failovers, methods=["GET"]),
        Route(f"{p}/reports/messages", a.report_messages, methods=["GET"]),
        Route("/healthz", a.healthz, methods=["GET"]),
    ]
