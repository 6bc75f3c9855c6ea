"""The Failover Monitor page: ``GET /`` (the page), ``GET /static/<file>`` (its script and
style) and ``GET /api/v1/timeline`` (who was active when, for the page's timeline).

The page is static HTML; everything it shows comes from the JSON API (``/api/v1/session``,
``/api/v1/status``, the event stream, the timeline) through ``static/monitor.js``.  Its
Content-Security-Policy allows scripts, styles and connections from this origin only (no
inline script, no other site), and no framing.

The timeline reads the tail of this node's event log (``<data_dir>/events.jsonl``: at most
:data:`TAIL_BYTES`, in a worker thread, never the whole of a large file) and hands the records
to the pure :func:`failover.core.timeline.build_timeline`.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from failover.core.timeline import HISTORY_EVENTS, MAX_HOURS, OWN_STATE, build_timeline
from failover.web.auth import require
from failover.web.errors import ApiError

if TYPE_CHECKING:
    from failover.node import NodeManager

STATIC = Path(__file__).resolve().parent / "static"
#: the static files' content types, by suffix (any other file is not served)
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
                 ".ico": "image/x-icon"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.[a-z]{2,4}")
#: scripts, styles, images and connections from this origin only; no inline script, no framing
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY",
                    "Cache-Control": "no-cache"}
#: the most of the event log the timeline reads (its tail)
TAIL_BYTES = 8 << 20
DEFAULT_HOURS = 24
#: the records the timeline uses; other lines are not even parsed
TIMELINE_EVENTS = frozenset(OWN_STATE) | frozenset(HISTORY_EVENTS) | {"peer_up", "peer_command"}
_WANTED = re.compile(rb'"event":\s*"(' + b"|".join(re.escape(e.encode()) for e in sorted(TIMELINE_EVENTS))
                     + rb')"')


def read_tail(path: Path, limit: int = TAIL_BYTES) -> tuple[list, bool]:
    """The timeline's records from the last ``limit`` bytes of the event log at ``path``
    (blocking: run it in a worker thread).  Returns (records, truncated): ``truncated`` when
    the file is longer than ``limit``.  A partial first line (cut by the limit) and a last
    line still being written are left out; a wanted line that is not JSON is handed on as a
    ``bad_log_line`` record (the timeline reports it).  A missing file is an empty log."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            start = max(0, size - limit)
            f.seek(start)
            data = f.read(size - start)
    except FileNotFoundError:
        return [], False
    if start > 0:
        data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
    end = data.rfind(b"\n")
    data = data[:end + 1] if end >= 0 else b""
    out: list = []
    for line in data.splitlines():
        if not _WANTED.search(line):
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"level": "error", "event": "bad_log_line",
                        "message": line[:200].decode("utf-8", "replace")})
    return out, start > 0


def parse_hours(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_HOURS
    if not re.fullmatch(r"\d{1,3}", raw) or not 1 <= int(raw) <= MAX_HOURS:
        raise ApiError(400, "bad_request", f"hours must be a whole number from 1 to {MAX_HOURS}, "
                                           f"not {raw[:20]!r}")
    return int(raw)


class StaticFiles:
    """The page's files, read once (in a worker thread) and kept; only plain names of files
    directly in :data:`STATIC` with a known suffix (no path, no dot file, no traversal)."""

    def __init__(self, root: Path = STATIC) -> None:
        self.root = root
        self._cache: dict[str, bytes] = {}

    def _read(self, name: str) -> bytes | None:
        path = self.root / name
        try:
            if path.resolve().parent != self.root.resolve() or not path.is_file():
                return None
            return path.read_bytes()
        except OSError:
            return None

    async def get(self, name: str) -> tuple[bytes, str]:
        suffix = Path(name).suffix
        if not _NAME.fullmatch(name) or suffix not in CONTENT_TYPES:
            raise ApiError(404, "not_found", f"no static file {name[:80]!r}")
        if name not in self._cache:
            data = await trio.to_thread.run_sync(self._read, name)
            if data is None:
                raise ApiError(404, "not_found", f"no static file {name[:80]!r}")
            self._cache[name] = data
        return self._cache[name], CONTENT_TYPES[suffix]


def routes(nm: "NodeManager", hub) -> list:
    """``GET /``, ``GET /static/{name}`` and ``GET /api/v1/timeline`` (``hub`` unused: the
    page follows the event stream of ``failover.web.api``)."""
    files = StaticFiles()
    log_path = nm.cfg.node.data_dir / "events.jsonl"
    peer_role = "secondary" if nm.cfg.node.role.label == "primary" else "primary"

    async def page(request: Request) -> Response:
        try:
            await require(request, "read")
        except ApiError as e:
            if e.status == 401 and "authorization" not in request.headers:  # no session: log in
                return RedirectResponse("/login", status_code=303, headers={"Cache-Control": "no-store"})
            raise
        body, ctype = await files.get("monitor.html")
        return Response(body, media_type=ctype, headers=SECURITY_HEADERS)

    async def static(request: Request) -> Response:
        body, ctype = await files.get(request.path_params["name"])
        return Response(body, media_type=ctype, headers=SECURITY_HEADERS)

    async def timeline(request: Request) -> Response:
        await require(request, "read")
        hours = parse_hours(request.query_params.get("hours"))
        try:
            records, truncated = await trio.to_thread.run_sync(read_tail, log_path)
        except OSError as e:
            raise ApiError(503, "unavailable", f"cannot read the event log {log_path}: "
                           f"{e.strerror or e}") from None
        tl = build_timeline(records, now=time.time(), hours=hours, node=nm.cfg.node.name,
                            peer=nm.cfg.link.peer_name, peer_role=peer_role)
        return JSONResponse({"ok": True, "node": nm.cfg.node.name, "peer": nm.cfg.link.peer_name,
                             "truncated": truncated, **tl}, headers={"Cache-Control": "no-store"})

    return [Route("/", page, methods=["GET"]),
            Route("/static/{name:path}", static, methods=["GET"]),
            Route("/api/v1/timeline", timeline, methods=["GET"])]
