"""The value checks of the configuration database's columns.  Pure.

Every check ``v_<kind>(value)`` returns None for a value the column accepts and raises
:class:`BadValue` (a ``ValueError``) saying why otherwise; the repository names the table,
column and value in its ``ConfigDBError``.  JSON columns are stored as :func:`dump_json`
writes them.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
from typing import Any

from telephony.core.ids import EXTENSION_RE, MAILBOX_RE
from telephony.core.pin import PinError, check_record


class BadValue(ValueError):
    """A value a column does not accept; the message says why (the caller names the column)."""


_RULE_KEY = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")
#: the local part of an e-mail address, and one label of its domain
EMAIL_LOCAL = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]{1,64}"
EMAIL_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(rf"{EMAIL_LOCAL}@{EMAIL_LABEL}(?:\.{EMAIL_LABEL})+")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]|24:00")
MWI_METHODS = ("sip", "smdi", "sccp", "dtmf", "none")
ACTION_KEYS = "0123456789*#"
MAX_JSON = 64 * 1024


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise BadValue(f"must be a string, not {type(v).__name__}")
    return v


def _no_controls(s: str) -> None:
    if any(ord(c) < 32 or ord(c) == 127 for c in s):
        raise BadValue("must not contain control characters")


def v_extension(v: Any) -> None:
    if not EXTENSION_RE.fullmatch(_str(v)):
        raise BadValue("must be 1 to 32 digits")


def v_label(v: Any) -> None:
    """A display name or object name: 1..200 characters, no control characters, trimmed."""
    s = _str(v)
    if not s or len(s) > 200:
        raise BadValue("must be 1 to 200 characters")
    if s != s.strip():
        raise BadValue("must not start or end with white space")
    _no_controls(s)


def v_mailbox(v: Any) -> None:
    if not MAILBOX_RE.fullmatch(_str(v)):
        raise BadValue("must be 1 to 64 of A-Z a-z 0-9 _ . - (not starting with _ . -)")


def v_mwi(v: Any) -> None:
    if _str(v) not in MWI_METHODS:
        raise BadValue(f"must be one of {', '.join(MWI_METHODS)}")


def v_email(v: Any) -> None:
    s = _str(v)
    if len(s) > 254 or not _EMAIL.fullmatch(s):
        raise BadValue("is not an e-mail address")


def v_stream_path(v: Any) -> None:
    """A file under streams/: relative POSIX path, no empty, '.' or '..' component."""
    s = _str(v)
    if not s or len(s.encode("utf-8")) > 1024:
        raise BadValue("must be 1 to 1024 bytes")
    if s.startswith("/") or "\\" in s or "\x00" in s:
        raise BadValue("must be a relative path under streams/ (no leading /, no backslash)")
    _no_controls(s)
    if any(part in ("", ".", "..") for part in s.split("/")):
        raise BadValue("must not contain empty, '.' or '..' components")


def v_notify(v: Any) -> None:
    if not isinstance(v, list):
        raise BadValue("must be a list of {\"type\": \"email\", \"address\": ...}")
    if len(v) > 16:
        raise BadValue("at most 16 notification devices")
    for i, d in enumerate(v):
        if not isinstance(d, dict) or set(d) != {"type", "address"}:
            raise BadValue(f"item {i} must be an object with exactly 'type' and 'address'")
        if d["type"] != "email":
            raise BadValue(f"item {i}: type must be 'email', not {d['type']!r}")
        try:
            v_email(d["address"])
        except BadValue as exc:
            raise BadValue(f"item {i}: address {d['address']!r} {exc}") from None


def v_actions(v: Any) -> None:
    if not isinstance(v, dict):
        raise BadValue("must be an object mapping a digit (0-9, *, #) to a target")
    for k, target in v.items():
        if not isinstance(k, str) or len(k) != 1 or k not in ACTION_KEYS:
            raise BadValue(f"key {k!r} is not one of 0-9, *, #")
        try:
            v_label(target)
        except BadValue as exc:
            raise BadValue(f"target of {k!r}: {exc}") from None


def _minutes(t: str) -> int:
    return int(t[:2]) * 60 + int(t[3:])


def v_rules(v: Any) -> None:
    if not isinstance(v, list):
        raise BadValue("must be a list of {\"days\": [0..6], \"start\": \"HH:MM\", \"end\": \"HH:MM\"}")
    if len(v) > 64:
        raise BadValue("at most 64 rules")
    for i, r in enumerate(v):
        if not isinstance(r, dict) or set(r) != {"days", "start", "end"}:
            raise BadValue(f"rule {i} must be an object with exactly 'days', 'start' and 'end'")
        days = r["days"]
        if (not isinstance(days, list) or not days
                or any(type(d) is not int or not 0 <= d <= 6 for d in days)
                or len(set(days)) != len(days)):
            raise BadValue(f"rule {i}: days must be a non-empty list of distinct integers 0..6")
        for key in ("start", "end"):
            t = r[key]
            if not isinstance(t, str) or not _TIME.fullmatch(t):
                raise BadValue(f"rule {i}: {key} {t!r} is not HH:MM (00:00 to 24:00)")
        if _minutes(r["start"]) >= _minutes(r["end"]):
            raise BadValue(f"rule {i}: start {r['start']} must be before end {r['end']}")


def v_date(v: Any) -> None:
    s = _str(v)
    if not _DATE.fullmatch(s):
        raise BadValue("must be YYYY-MM-DD")
    try:
        _dt.date.fromisoformat(s)
    except ValueError:
        raise BadValue("is not a calendar date") from None


def v_rule_key(v: Any) -> None:
    if not _RULE_KEY.fullmatch(_str(v)):
        raise BadValue("must be 1 to 64 of a-z 0-9 _ . - starting with a letter")


def _json_check(v: Any, depth: int = 0) -> None:
    if depth > 32:
        raise BadValue("nested too deeply")
    if v is None or isinstance(v, (bool, int, str)):
        return
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise BadValue("NaN and infinity are not JSON")
        return
    if isinstance(v, list):
        for x in v:
            _json_check(x, depth + 1)
        return
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise BadValue(f"object key {k!r} is not a string")
            _json_check(x, depth + 1)
        return
    raise BadValue(f"{type(v).__name__} is not a JSON value")


def v_any_json(v: Any) -> None:
    _json_check(v)


def _fields(v: Any, spec: dict[str, type]) -> None:
    if not isinstance(v, dict) or set(v) != set(spec):
        raise BadValue(f"must be an object with exactly the keys {', '.join(sorted(spec))}")
    for k, t in spec.items():
        x = v[k]
        if t is int and (isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < 2**63):
            raise BadValue(f"{k} must be a non-negative integer")
        if t is bool and not isinstance(x, bool):
            raise BadValue(f"{k} must be true or false")


def v_lamp_state(v: Any) -> None:
    _fields(v, {"on": bool, "new": int, "old": int, "confirmed": bool, "term": int})


def v_notify_state(v: Any) -> None:
    _fields(v, {"term": int, "sent": bool})


def v_pin_record(v: Any) -> None:
    """A PIN's hash record (:func:`telephony.core.pin.check_record`) or null (no PIN set)."""
    if v is None:
        return
    try:
        check_record(v)
    except PinError as exc:
        raise BadValue(str(exc)) from None


def v_flag(v: Any) -> None:
    if not isinstance(v, bool):
        raise BadValue("must be true or false")


def v_lock_state(v: Any) -> None:
    _fields(v, {"failures": int, "lockouts": int, "locked_until": int, "term": int})


_LEDGER_KEY = re.compile(r"[\x21-\x7e]{1,400}")


def v_ledger_key(v: Any) -> None:
    if not _LEDGER_KEY.fullmatch(_str(v)):
        raise BadValue("must be 1 to 400 printable ASCII characters without spaces")


def dump_json(v: Any) -> str:
    """The stored form of a JSON column: canonical (sorted keys, no blanks), UTF-8 kept."""
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def is_int(v: Any) -> bool:
    """True for an ``int`` (not a bool or another subclass)."""
    return type(v) is int
