"""A small blocking HTTP client for the web tests (real sockets, ``http.client``), and an
in-process ASGI caller for the few tests that need a fake clock or a planted bug."""
from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    cookies: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        try:
            return self.json["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None


def call(url: str, method: str = "GET", path: str = "/", *, token: str | None = None,
         body=None, headers: dict | None = None, cookie: str | None = None,
         context: ssl.SSLContext | None = None, timeout: float = 10.0) -> Reply:
    """One request on a fresh connection.  ``body``: a dict (sent as JSON), bytes or str."""
    u = urlsplit(url)
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    if cookie is not None:
        hdrs["Cookie"] = f"vmha_session={cookie}"
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        body = body.encode()
    try:
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        cookies = {}
        for k, v in r.getheaders():
            if k.lower() == "set-cookie":
                name, _, rest = v.partition("=")
                cookies[name] = rest.split(";")[0]
        return Reply(r.status, r.getheaders(), data, cookies)
    finally:
        conn.close()


async def asgi(app, method: str, path: str, *, headers: dict | None = None, body: bytes = b"",
               client: tuple[str, int] = ("127.0.0.1", 5555), length: bool = True) -> Reply:
    """One request through an ASGI app in this process (no server); ``length=False`` sends
    the body without a Content-Length header (as a chunked body arrives)."""
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if length and body and not any(k == b"content-length" for k, _ in raw):
        raw.append((b"content-length", str(len(body)).encode()))
    path_only, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path_only, "raw_path": path_only.encode(),
             "query_string": query.encode(), "headers": [(b"host", b"127.0.0.1:8000"), *raw],
             "client": client, "server": ("127.0.0.1", 8000), "root_path": ""}
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    out: dict = {"status": None, "headers": [], "body": b""}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = [(k.decode(), v.decode()) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    await app(scope, receive, send)
    cookies = {}
    for k, v in out["headers"]:
        if k == "set-cookie":
            name, _, rest = v.partition("=")
            cookies[name] = rest.split(";")[0]
    return Reply(out["status"], out["headers"], out["body"], cookies)
