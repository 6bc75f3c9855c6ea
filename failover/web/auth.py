"""Who is asking: bearer tokens, the page's session cookie, roles and CSRF.

* **Bearer**: ``Authorization: Bearer <token>``; the token's SHA-256 is looked up in the
  operators file (``failover.web.operators``), which is read again whenever its inode, size,
  mtime or mode changes.  A file that does not load keeps the last good operators and is
  logged (``operators_file_error``) once per change; a missing file means no operators.
* **Session**: ``POST /login`` with the form field ``token`` (the login page, ``GET /login``)
  or a JSON body ``{"token": ...}`` sets the cookie ``vmha_session`` (HttpOnly,
  SameSite=Strict, Path=/, Secure with TLS).  Sessions live in this process's memory (a
  restart means logging in again), end after ``http.session_timeout`` seconds, at
  ``POST /logout``, and as soon as their operator is removed from the file or given another
  token; a changed role applies at once.
* **CSRF**: a request authenticated by the cookie whose method is not GET/HEAD/OPTIONS must
  carry ``X-CSRF-Token`` (or the form field ``csrf_token``) equal to its session's token, and
  its ``Origin`` header, if it has one, must name the host the request was sent to.  Bearer
  requests need neither (a browser never adds the header on its own).
* **Failures** answer 401 and are logged as ``http_auth_failed`` (never the token), at most
  one line per remote address every 10 s (the next line counts the ones not written).

Secrets are compared in constant time: token hashes with ``hmac.compare_digest`` over every
operator; sessions are found by the SHA-256 of the cookie, and CSRF tokens compared with
``hmac.compare_digest``.
"""
from __future__ import annotations

import hashlib
import hmac
import html
import os
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from failover.web.errors import ApiError, json_body
from failover.web.operators import OperatorEntry, load_operators, lookup
from telephony.core.settings import ConfigError

if TYPE_CHECKING:
    from failover.node import NodeManager

__all__ = ["COOKIE", "CSRF_HEADER", "Auth", "Operator", "parse_authorization", "require"]

COOKIE = "vmha_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
MAX_SESSIONS = 10000
MAX_AUTH_HEADER = 1024
MAX_LOGIN_FORM = 4096
MAX_FORM = 1 << 16  # a form posted with a session (its csrf_token field)
FAIL_LOG_EVERY = 10.0  # seconds between http_auth_failed lines per remote address
ROLE_RANK = {"read": 1, "admin": 2}


@dataclass(frozen=True)
class Operator:
    name: str
    role: str  # "read" | "admin"
    via: str  # "bearer" | "session"


@dataclass
class Session:
    operator: str
    token_sha256: str  # the operator's token when the session began: a new token ends it
    csrf: str
    expires: float  # time.monotonic()


def parse_authorization(value: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header value.  Raises ``ValueError``
    (a message that never quotes the value) for any other form: another scheme, no token, a
    blank inside the token, a header longer than ``MAX_AUTH_HEADER``."""
    if not isinstance(value, str) or len(value) > MAX_AUTH_HEADER:
        raise ValueError("the Authorization header is too long")
    scheme, _, rest = value.strip(" \t").partition(" ")
    if scheme.lower() != "bearer":
        raise ValueError("the Authorization header must be 'Bearer <token>'")
    token = rest.strip(" \t")
    if not token or any(c in token for c in " \t\r\n") or not token.isascii() or not token.isprintable():
        raise ValueError("the Authorization header must be 'Bearer <token>' (one token, printable ASCII)")
    return token


def _sid_key(sid: str) -> str:
    return hashlib.sha256(sid.encode("utf-8", "surrogatepass")).hexdigest()


class Auth:
    """The operators (reloaded on change), the sessions and the failure log of one node."""

    def __init__(self, nm: "NodeManager", *, clock=time.monotonic):
        self.nm = nm
        self.path = nm.cfg.http.operators_file
        self.timeout = nm.cfg.http.session_timeout
        self.secure = nm.cfg.http.tls
        self.clock = clock
        self.entries: dict[str, OperatorEntry] = {}
        self._stamp: object = "never read"
        self.sessions: dict[str, Session] = {}  # SHA-256 of the cookie -> session
        self._fail_at: dict[str, float] = {}
        self._fail_count: dict[str, int] = {}
        self.failures = 0  # authentication failures since start (counted, all of them)
        self.reload()

    # ------------------------------------------------------------------ operators file

    def _file_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)

    def reload(self) -> dict[str, OperatorEntry]:
        """The operators, read again if the file changed since the last look."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return self.entries
        first = self._stamp == "never read"
        self._stamp = stamp
        try:
            entries = load_operators(self.path)
        except ConfigError as e:
            self.nm.events.write("error", "operators_file_error",
                                 f"operators file not loaded: {e}; "
                                 + ("no operator can log in until it is fixed" if first
                                    else "the operators loaded before stay"))
            return self.entries
        if entries != self.entries or first:
            roles = sorted(f"{e.name} ({e.role})" for e in entries.values())
            if entries:
                self.nm.events.write("info", "operators_loaded", f"operators file {self.path}: "
                                     f"{len(entries)} operator(s): " + ", ".join(roles)[:400],
                                     {"count": len(entries)})
            else:
                self.nm.events.write("warning", "operators_loaded", f"operators file {self.path}: no "
                                     "operators, so nobody can use the HTTP API; add one with "
                                     "`vmha configure --add-operator NAME --role admin --config FILE`")
        self.entries = entries
        self._end_orphan_sessions()
        return entries

    def _end_orphan_sessions(self) -> None:
        for key, s in list(self.sessions.items()):
            e = self.entries.get(s.operator)
            if e is None or not hmac.compare_digest(e.token_sha256, s.token_sha256):
                del self.sessions[key]

    # ------------------------------------------------------------------ who is it

    def fail(self, request: Request, reason: str) -> None:
        """Count an authentication failure; log it unless this address had a line in the
        last ``FAIL_LOG_EVERY`` seconds."""
        self.failures += 1
        addr = request.client.host if request.client else "unknown"
        now = self.clock()
        if len(self._fail_at) > 4096:  # forget addresses that have been quiet
            for a in [a for a, t in self._fail_at.items() if now - t >= FAIL_LOG_EVERY]:
                self._fail_at.pop(a, None)
                self._fail_count.pop(a, None)
        last = self._fail_at.get(addr)
        if last is not None and now - last < FAIL_LOG_EVERY:
            self._fail_count[addr] = self._fail_count.get(addr, 0) + 1
            return
        self._fail_at[addr] = now
        more = self._fail_count.pop(addr, 0)
        self.nm.events.write("warning", "http_auth_failed",
                             f"HTTP authentication failed from {addr}: {reason} "
                             f"({request.method} {request.url.path[:100]})"
                             + (f"; {more} more failure(s) from there not logged" if more else ""),
                             {"remote": addr, "reason": reason, "not_logged": more})

    def session_of(self, request: Request) -> tuple[str, Session] | None:
        sid = request.cookies.get(COOKIE)
        if not sid or len(sid) > 128:
            return None
        key = _sid_key(sid)
        s = self.sessions.get(key)
        if s is None:
            return None
        if self.clock() >= s.expires:
            del self.sessions[key]
            return None
        return key, s

    def authenticate(self, request: Request) -> Operator | None:
        """The operator making ``request`` (bearer first, then the session cookie), or None
        when it carries neither.  ``ApiError`` 401 for a bearer token or header that is
        wrong (logged)."""
        entries = self.reload()
        header = request.headers.get("authorization")
        if header is not None:
            try:
                token = parse_authorization(header)
            except ValueError as e:
                self.fail(request, "malformed Authorization header")
                raise ApiError(401, "unauthorized", str(e)) from None
            entry = lookup(entries, token)
            if entry is None:
                self.fail(request, "unknown bearer token")
                raise ApiError(401, "unauthorized", "the bearer token is not known to this node")
            return Operator(entry.name, entry.role, "bearer")
        found = self.session_of(request)
        if found is None:
            return None
        _, s = found
        entry = entries.get(s.operator)
        if entry is None:
            return None
        return Operator(entry.name, entry.role, "session")

    def check_csrf(self, request: Request, session: Session, form_token: str | None) -> None:
        given = request.headers.get(CSRF_HEADER) or form_token or ""
        if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), session.csrf.encode()):
            raise ApiError(403, "csrf", "missing or wrong CSRF token: send the X-CSRF-Token header "
                           "from GET /api/v1/session")
        origin = request.headers.get("origin")
        if origin is not None and not same_origin(origin, request, self.nm.cfg.http.public_url):
            raise ApiError(403, "csrf", "the request's Origin is not this node's address")

    async def require(self, request: Request, role: str) -> Operator:
        op = self.authenticate(request)
        if op is None:
            raise ApiError(401, "unauthorized", "log in first: send 'Authorization: Bearer <token>' "
                           "or log in at /login")
        if ROLE_RANK.get(op.role, 0) < ROLE_RANK[role]:
            raise ApiError(403, "forbidden", f"operator {op.name} has role {op.role}; this needs "
                           f"role {role}")
        if op.via == "session" and request.method not in SAFE_METHODS:
            found = self.session_of(request)
            if found is None:  # it ended in between (expired this very moment)
                raise ApiError(401, "unauthorized", "the session has ended: log in again at /login")
            form_token = None
            if is_form(request):
                form_token = (await form_fields(request, MAX_FORM)).get("csrf_token")
            self.check_csrf(request, found[1], form_token)
        return op

    # ------------------------------------------------------------------ sessions

    def start_session(self, entry: OperatorEntry) -> tuple[str, Session]:
        now = self.clock()
        if len(self.sessions) >= MAX_SESSIONS:
            for key, s in list(self.sessions.items()):
                if now >= s.expires:
                    del self.sessions[key]
            while len(self.sessions) >= MAX_SESSIONS:  # the oldest go first
                del self.sessions[next(iter(self.sessions))]
        sid = secrets.token_urlsafe(32)
        s = Session(entry.name, entry.token_sha256, secrets.token_urlsafe(32), now + self.timeout)
        self.sessions[_sid_key(sid)] = s
        return sid, s

    def set_cookie(self, response: Response, sid: str) -> None:
        response.set_cookie(COOKIE, sid, max_age=int(self.timeout), path="/", httponly=True,
                            samesite="strict", secure=self.secure)

    def clear_cookie(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=self.secure)

    # ------------------------------------------------------------------ routes

    def routes(self) -> list[Route]:
        return [Route("/login", self.login_page, methods=["GET"]),
                Route("/login", self.login, methods=["POST"]),
                Route("/logout", self.logout, methods=["POST"]),
                Route("/api/v1/session", self.session_info, methods=["GET"])]

    async def login_page(self, request: Request) -> Response:
        return login_html(self.nm.cfg.node.name)

    async def login(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and not same_origin(origin, request, self.nm.cfg.http.public_url):
            raise ApiError(403, "csrf", "the request's Origin is not this node's address")
        as_json = not is_form(request)
        if as_json:
            body = await json_body(request)
            token = body.get("token")
        else:
            token = (await form_fields(request, MAX_LOGIN_FORM)).get("token")
        entry = lookup(self.reload(), token.strip()) if isinstance(token, str) else None
        if entry is None:
            self.fail(request, "login with an unknown token")
            if as_json:
                raise ApiError(401, "unauthorized", "the token is not known to this node")
            return login_html(self.nm.cfg.node.name, "That token is not known to this node.", 401)
        sid, s = self.start_session(entry)
        addr = request.client.host if request.client else "unknown"
        self.nm.events.write("info", "http_login", f"operator {entry.name} ({entry.role}) logged in "
                             f"from {addr}", {"operator": entry.name, "remote": addr})
        if as_json:
            response: Response = JSONResponse({"ok": True, "operator": entry.name, "role": entry.role,
                                               "csrf_token": s.csrf, "node": self.nm.cfg.node.name})
        else:
            response = RedirectResponse("/", status_code=303)
        self.set_cookie(response, sid)
        return response

    async def logout(self, request: Request) -> Response:
        found = self.session_of(request)
        ctype = request.headers.get("content-type", "")
        form_token = None
        if is_form(request):
            form_token = (await form_fields(request, MAX_LOGIN_FORM)).get("csrf_token")
        if found is not None:
            key, s = found
            self.check_csrf(request, s, form_token)
            del self.sessions[key]
            self.nm.events.write("info", "http_logout", f"operator {s.operator} logged out",
                                 {"operator": s.operator})
        wants_json = "application/json" in request.headers.get("accept", "") or ctype.startswith(
            "application/json")
        response: Response = (JSONResponse({"ok": True}) if wants_json
                              else RedirectResponse("/login", status_code=303))
        self.clear_cookie(response)
        return response

    async def session_info(self, request: Request) -> Response:
        op = await self.require(request, "read")
        csrf = None
        if op.via == "session":
            found = self.session_of(request)
            csrf = found[1].csrf if found else None
        return JSONResponse({"ok": True, "operator": op.name, "role": op.role, "via": op.via,
                             "csrf_token": csrf, "node": self.nm.cfg.node.name},
                            headers={"Cache-Control": "no-store"})


def is_form(request: Request) -> bool:
    ctype = request.headers.get("content-type", "")
    return ctype.split(";")[0].strip().lower() == "application/x-www-form-urlencoded"


async def form_fields(request: Request, limit: int) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (at most ``limit`` bytes, else 413) as
    ``{field: first value}``; 400 for a body that is not such a form."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"the form is over {limit} bytes")
    raw = await request.body()  # kept by the request: the route may read the body again
    if len(raw) > limit:  # (the application refuses any body over 1 MiB as it arrives)
        raise ApiError(413, "too_large", f"the form is over {limit} bytes")
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True,
                          strict_parsing=False, max_num_fields=100, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "bad_request", "the form is not a valid URL-encoded form") from None
    out: dict[str, str] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def same_origin(origin: str, request: Request, public_url: str | None = None) -> bool:
    """Whether an ``Origin`` header is the origin the request was sent to (scheme, host and
    port: the ``Host`` header and how the request came, plain or TLS), or the origin of
    ``http.public_url`` (a proxy in front of the node)."""
    return _origin(origin) in {_origin(f"{request.url.scheme}://{request.headers.get('host', '')}"),
                               _origin(public_url or "")} - {None}


def _origin(url: str) -> tuple[str, str] | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = port or {"http": 80, "https": 443}[parts.scheme]
    host = parts.hostname.lower()
    return parts.scheme, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def require(request: Request, role: str) -> Operator:
    """The operator making ``request`` if it has at least ``role`` ("read" or "admin");
    raises ``ApiError`` 401 (no or unknown credentials), 403 ``forbidden`` (role too low) or
    403 ``csrf`` (a session's write without its CSRF token or from another origin)."""
    auth: Auth = request.app.state.auth
    return await auth.require(request, role)


_STYLE = """
body.login { font-family: system-ui, sans-serif; background: #f3f4f6; margin: 0; }
.login-box { max-width: 22rem; margin: 12vh auto; background: #fff; padding: 1.5rem 2rem;
  border-radius: 6px; box-shadow: 0 1px 4px rgba(0,0,0,.15); }
.login-box h1 { font-size: 1.2rem; margin: 0 0 1rem; }
.login-box label { display: block; margin-bottom: .3rem; }
.login-box input[type=password] { width: 100%; box-sizing: border-box; padding: .4rem; }
.login-box button { margin-top: 1rem; padding: .4rem 1.2rem; }
.login-error { color: #b00020; }
.login-note { color: #555; font-size: .85rem; }
"""


def login_html(node: str, error: str = "", status: int = 200) -> HTMLResponse:
    """The login page: one password field for the token, posted to ``/login``."""
    name = html.escape(node)
    err = f'<p class="login-error" id="login-error">{html.escape(error)}</p>' if error else ""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vmha {name}: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_STYLE}</style></head>
<body class="login"><main class="login-box">
<h1>vmha Failover Monitor: {name}</h1>
{err}<form class="login-form" method="post" action="/login">
<label for="token">Operator token</label>
<input type="password" id="token" name="token" autocomplete="current-password" required autofocus>
<button type="submit" id="login-submit">Log in</button>
</form>
<p class="login-note">Tokens are made with <code>vmha configure --add-operator</code>.</p>
</main></body></html>
"""
    return HTMLResponse(body, status_code=status, headers={
        "Cache-Control": "no-store",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                   "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"})
