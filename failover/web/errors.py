"""Errors of the admin HTTP API, always in one JSON form::

    {"ok": false, "error": {"code": "<snake_case>", "message": "<one sentence>"}, ...extra}

Route code raises :class:`ApiError`; ``failover.web.app`` turns it, Starlette's own HTTP
errors (404, 405) and any unexpected exception (500 ``internal``) into that form.
``json_body`` reads a request's body as one JSON object (bounded: ``MAX_BODY``).
"""
from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

__all__ = ["CODES", "MAX_BODY", "ApiError", "error_response", "json_body"]

#: the largest request body accepted (bytes); larger is 413 ``too_large``
MAX_BODY = 1 << 20

#: the error codes and their usual status
CODES = {
    "bad_request": 400, "unauthorized": 401, "forbidden": 403, "csrf": 403, "not_found": 404,
    "method_not_allowed": 405, "not_active": 409, "conflict": 409, "too_large": 413,
    "internal": 500, "unavailable": 503,
}
#: Starlette's HTTPException status -> our code
_BY_STATUS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 409: "conflict", 413: "too_large", 500: "internal",
              503: "unavailable"}


class ApiError(Exception):
    """An error answer: ``status`` (HTTP), ``code`` (snake_case, see ``CODES``), ``message``
    (one sentence for the operator), extra ``headers`` and ``extra`` top-level body fields."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        if status == 401 and not any(k.lower() == "www-authenticate" for k in self.headers):
            self.headers["WWW-Authenticate"] = 'Bearer realm="vmha"'

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message, self.headers, self.extra)


def error_response(status: int, code: str, message: str, headers: dict | None = None,
                   extra: dict | None = None) -> JSONResponse:
    body: dict[str, Any] = {"ok": False, "error": {"code": code, "message": message}}
    for k, v in (extra or {}).items():
        if k not in body:
            body[k] = v
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})


def code_for_status(status: int) -> str:
    return _BY_STATUS.get(status, "bad_request" if 400 <= status < 500 else "internal")


async def json_body(request: Request) -> dict:
    """The request's body as a JSON object.  An empty body is ``{}``.  Raises ``ApiError``:
    413 ``too_large`` over ``MAX_BODY`` bytes, 400 ``bad_request`` for a body that is not
    UTF-8 JSON or not an object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, "too_large", f"the request body is over {MAX_BODY} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, "too_large", f"the request body is over {MAX_BODY} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in ("application/json", "text/json", "") and not ctype.endswith("+json"):
        raise ApiError(400, "bad_request", f"the body must be JSON (Content-Type: application/json), "
                       f"not {ctype[:60]}")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, "bad_request", f"the body is not valid JSON: {str(e)[:120]}") from None
    except RecursionError:
        raise ApiError(400, "bad_request", "the body is not valid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    return value
