"""A small blocking client of the admin HTTP API, for ``vmha status --remote URL``.

Plain ``urllib``: the bearer token in the ``Authorization`` header, TLS verified against the
given CA file or the system's trust store, redirects never followed (a redirect would carry
the token to another address; the API answers reads where it is asked anyway), the answer
read up to :data:`MAX_RESPONSE` bytes.  Every failure is one :class:`ApiClientError` with a
sentence for the operator and the exit code the command uses:

* :data:`EXIT_UNREACHABLE` (3, as ``vmha status`` when the node manager is not running): no
  answer (connection refused, no route, name not resolved, timeout);
* :data:`EXIT_REFUSED` (1): an answer that is not the status (401/403 token refused, any
  other HTTP error, a redirect, a body that is not the API's JSON) or a TLS failure (the
  certificate does not verify, the handshake fails);
* :data:`EXIT_USAGE` (2): the command line or the token file is wrong; nothing was sent.
"""
from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

__all__ = ["ApiClientError", "ApiClient", "read_token", "EXIT_UNREACHABLE", "EXIT_REFUSED",
           "EXIT_USAGE", "MAX_RESPONSE", "TOKEN_ENV"]

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
#: the largest answer read (a status is a few kilobytes)
MAX_RESPONSE = 4 * 1024 * 1024
#: the environment variable holding the token when no --token-file is given
TOKEN_ENV = "VMHA_TOKEN"
#: a token file is read up to this size (a token is ~50 characters)
MAX_TOKEN_FILE = 4096


class ApiClientError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def read_token(token_file: str | None, env: dict | None = None) -> str:
    """The bearer token: the first line of ``token_file`` if given, else ``$VMHA_TOKEN``."""
    env = os.environ if env is None else env
    if token_file:
        try:
            with open(token_file, "rb") as f:
                raw = f.read(MAX_TOKEN_FILE + 1)
        except OSError as e:
            raise ApiClientError(f"cannot read the token file {token_file}: {e.strerror or e}",
                                 EXIT_USAGE) from None
        if len(raw) > MAX_TOKEN_FILE:
            raise ApiClientError(f"the token file {token_file} is over {MAX_TOKEN_FILE} bytes: "
                                 "it should hold the token only", EXIT_USAGE)
        try:
            lines = raw.decode("ascii").strip().splitlines()
        except UnicodeDecodeError:
            raise ApiClientError(f"the token file {token_file} is not ASCII text", EXIT_USAGE) from None
        token, where = (lines[0].strip() if lines else ""), f"the token file {token_file}"
    else:
        token, where = env.get(TOKEN_ENV, "").strip(), f"${TOKEN_ENV}"
        if not token:
            raise ApiClientError(f"no token: pass --token-file FILE or set {TOKEN_ENV}", EXIT_USAGE)
    if not token:
        raise ApiClientError(f"{where} is empty", EXIT_USAGE)
    if any(c.isspace() or not c.isprintable() for c in token) or not token.isascii():
        raise ApiClientError(f"{where} does not hold a token (one word of printable ASCII)", EXIT_USAGE)
    return token


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401 - urllib's hook
        return None  # the 3xx reaches the caller as an HTTPError


class ApiClient:
    """``ApiClient(url, token, cacert=None)``; ``get(path)`` -> the answer's JSON object."""

    def __init__(self, url: str, token: str, *, cacert: str | None = None, timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiClientError(f"not an http:// or https:// URL: {url!r}", EXIT_USAGE)
        if parts.query or parts.fragment:
            raise ApiClientError(f"the URL must be the node's base URL, without a query: {url!r}",
                                 EXIT_USAGE)
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ApiClientError(f"refusing to send the token over plain HTTP to {parts.hostname}: "
                                 "use https:// (the API serves plain HTTP on loopback only)", EXIT_USAGE)
        try:
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as e:
            raise ApiClientError(f"bad URL {url!r}: {e}", EXIT_USAGE) from None
        self.base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.host = parts.hostname
        self.token = token
        self.timeout = timeout
        handlers: list = [_NoRedirect()]
        if parts.scheme == "https":
            if cacert is not None and not Path(cacert).is_file():
                raise ApiClientError(f"the CA file {cacert} does not exist", EXIT_USAGE)
            try:
                context = ssl.create_default_context(cafile=cacert)
            except (OSError, ssl.SSLError) as e:
                raise ApiClientError(f"cannot load the CA file {cacert}: {e}", EXIT_USAGE) from None
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    def get(self, path: str) -> dict:
        url = self.base + path
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}",
                                                   "Accept": "application/json"})
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                body = resp.read(MAX_RESPONSE + 1)
        except urllib.error.HTTPError as e:
            raise self._http_error(e) from None
        except urllib.error.URLError as e:
            raise self._url_error(e.reason) from None
        except (ssl.SSLError, ssl.CertificateError) as e:
            raise self._url_error(e) from None
        except (TimeoutError, socket.timeout):
            raise ApiClientError(f"{self.base}: no answer within {self.timeout:g} s",
                                 EXIT_UNREACHABLE) from None
        except http.client.HTTPException as e:  # a bad status line, an answer cut short
            raise ApiClientError(f"{self.base}: not an HTTP answer ({type(e).__name__}: "
                                 f"{str(e)[:100]!r})", EXIT_REFUSED) from None
        except (OSError, ValueError) as e:  # a connection reset mid-answer
            raise ApiClientError(f"{self.base}: the connection failed: {e}", EXIT_UNREACHABLE) from None
        if len(body) > MAX_RESPONSE:
            raise ApiClientError(f"{url}: the answer is over {MAX_RESPONSE} bytes", EXIT_REFUSED)
        data = _json(body)
        if data is None:
            raise ApiClientError(f"{url}: the answer is not the vmha API's JSON", EXIT_REFUSED)
        if data.get("ok") is not True:
            raise ApiClientError(f"{url}: {_error_text(data)}", EXIT_REFUSED)
        return data

    def status(self) -> dict:
        """``GET /api/v1/status``: the node's status dict (as ``vmha status --json``)."""
        data = self.get("/api/v1/status")
        status = data.get("status")
        if not isinstance(status, dict) or not isinstance(status.get("node"), dict) \
                or not isinstance(status.get("peer"), dict):
            raise ApiClientError(f"{self.base}/api/v1/status: the answer has no status", EXIT_REFUSED)
        return status

    # ------------------------------------------------------------------ errors

    def _http_error(self, e: urllib.error.HTTPError) -> ApiClientError:
        try:
            body = e.read(MAX_RESPONSE)
        except OSError:
            body = b""
        data = _json(body)
        said = _error_text(data) if data is not None else (e.reason or "")
        if e.code == 401:
            return ApiClientError(f"{self.base}: the token was refused (401 unauthorized: {said}); "
                                  "check --token-file or $VMHA_TOKEN", EXIT_REFUSED)
        if e.code == 403:
            return ApiClientError(f"{self.base}: the token's operator may not read the status "
                                  f"(403 forbidden: {said})", EXIT_REFUSED)
        if 300 <= e.code < 400:
            where = e.headers.get("Location", "?") if e.headers else "?"
            return ApiClientError(f"{self.base}: redirected ({e.code}) to {where[:200]}; not "
                                  "followed (the token would go with it): use that URL", EXIT_REFUSED)
        return ApiClientError(f"{self.base}: HTTP {e.code}: {said}", EXIT_REFUSED)

    def _url_error(self, reason: object) -> ApiClientError:
        if isinstance(reason, ssl.SSLCertVerificationError):
            why = reason.verify_message or str(reason)
            return ApiClientError(f"{self.base}: the server's TLS certificate does not verify ({why}); "
                                  "pass --cacert FILE with the CA that signed it", EXIT_REFUSED)
        if isinstance(reason, (ssl.SSLError, ssl.CertificateError)):
            return ApiClientError(f"{self.base}: TLS failed: {reason}", EXIT_REFUSED)
        if isinstance(reason, ConnectionRefusedError):
            return ApiClientError(f"{self.base}: connection refused (is the node manager running "
                                  "with [http] listen set?)", EXIT_UNREACHABLE)
        if isinstance(reason, socket.gaierror):
            return ApiClientError(f"{self.base}: cannot resolve {self.host}: {reason.strerror or reason}",
                                  EXIT_UNREACHABLE)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return ApiClientError(f"{self.base}: no answer within {self.timeout:g} s", EXIT_UNREACHABLE)
        if isinstance(reason, OSError):
            return ApiClientError(f"{self.base}: cannot connect: {reason.strerror or reason}",
                                  EXIT_UNREACHABLE)
        return ApiClientError(f"{self.base}: cannot connect: {reason}", EXIT_UNREACHABLE)


def _json(body: bytes) -> dict | None:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _error_text(data: dict | None) -> str:
    err = (data or {}).get("error")
    if isinstance(err, dict):
        return str(err.get("message") or err.get("code") or "error")[:300]
    return str(err or "error")[:300]
