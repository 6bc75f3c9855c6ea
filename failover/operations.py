"""The operator's operations, carried out in one place for the admin socket and the HTTP API.

:func:`perform` takes an operation's name and its arguments (the admin socket's request
object, or what the HTTP API read from the path, the query and the body), checks them, carries
the operation out on the node manager and answers the admin socket's reply object:
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.  A request with a bad argument is
answered with an error that names it, and changes nothing.

Every attempt to change something (``failover``, ``failback``, ``mode``, ``db_write``), done
or refused, writes one ``operator_action`` record to the event log with the fields
``operator``, ``via``, ``op``, ``ok`` and ``message``.  A configuration write is described by
the operations it counted per table, never by a row's values: a PIN hash, a caller's number
or a password stays out of the log, even when the database refuses the value and its error
names it.
"""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from telephony.configdb import ConfigDB, ConfigDBError

if TYPE_CHECKING:
    from failover.node import NodeManager

#: reads: any node answers them, nothing is logged
READ_OPS = ("status", "db_get", "db_list", "db_conflicts")
#: changes: each attempt is one ``operator_action`` record
CHANGE_OPS = ("failover", "failback", "mode", "db_write")
OPS = ("status", "failover", "failback", "mode", "db_write", "db_get", "db_list", "db_conflicts")
DB_OPS = ("db_write", "db_get", "db_list", "db_conflicts")
MODES = ("automatic", "manual")
MAX_CONFLICTS = 10000
VIAS = ("unix", "http")


class Reply(dict):
    """The reply object, and what kind of refusal it is (``code``): ``None`` when ``ok``;
    ``bad_request`` (an argument is wrong), ``not_active`` (this node does not take
    configuration writes now), ``conflict`` (the node manager refused the command in its
    present state).  A plain ``dict`` on the wire: the admin socket sends it as it is and the
    HTTP API turns the code into its status."""

    def __init__(self, *args, code: str | None = None, **kw) -> None:
        super().__init__(*args, **kw)
        self.code = code


def refused(code: str, error: str) -> Reply:
    return Reply({"ok": False, "error": error}, code=code)


def write_summary(ops: Any) -> str:
    """What a configuration write touches, for the event log: operations counted per table,
    never a row's values."""
    if not isinstance(ops, list):
        return "no operations"
    seen = Counter((str(op.get("op"))[:20], str(op.get("table"))[:40]) for op in ops if isinstance(op, dict))
    other = sum(1 for op in ops if not isinstance(op, dict))
    parts = [f"{kind} {table} x{n}" for (kind, table), n in sorted(seen.items())]
    return ", ".join(parts + ([f"{other} not an object"] if other else [])) or "no operations"


def _row_values(ops: Any) -> list[str]:
    """The text a database error may quote of the rows' values: the ``repr`` of each value
    and of everything inside it, and each string as it is; longest first."""
    found: set[str] = set()

    def add(v: Any, depth: int) -> None:
        found.add(repr(v))
        if isinstance(v, str):
            found.add(v)
        elif depth < 8 and isinstance(v, dict):
            for k, x in v.items():
                add(k, depth + 1)
                add(x, depth + 1)
        elif depth < 8 and isinstance(v, (list, tuple)):
            for x in v:
                add(x, depth + 1)

    for op in ops if isinstance(ops, list) else ():
        row = op.get("row") if isinstance(op, dict) else None
        for v in (row.values() if isinstance(row, dict) else ()):
            add(v, 0)
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


def redact(text: str, ops: Any) -> str:
    """``text`` (an error about ``ops``) without any of their rows' values in it."""
    for value in _row_values(ops):
        text = text.replace(value, "<value>")
    return text


def _bool(args: dict, name: str, default: bool = False) -> bool | Reply:
    v = args.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        return refused("bad_request", f"{name} must be true or false, not {v!r:.40}")
    return v


def _table(op: str, args: dict) -> str | Reply:
    table = args.get("table")
    if not isinstance(table, str):
        return refused("bad_request", f"{op} needs \"table\"")
    return table


async def perform(nm: "NodeManager", op: str, args: dict, operator: str, via: str) -> Reply:
    """Carry out ``op`` with ``args`` for ``operator`` (who asked: ``unix:root``, an HTTP
    operator's name) arriving ``via`` ``unix`` or ``http``.  Returns the reply object.  An
    unexpected error (a bug) propagates: the caller answers ``internal error, nothing
    changed`` and records it."""
    if not isinstance(args, dict):
        return refused("bad_request", "bad request: the arguments must be an object")
    if op in READ_OPS:
        return await _read(nm, op, args)
    if op not in CHANGE_OPS:
        return refused("bad_request", f"unknown request {op!r}: status, failover, failback, mode, "
                       + ", ".join(DB_OPS))
    try:
        reply = await _change(nm, op, args)
    except BaseException as e:  # a bug or a cancellation: still one record of the attempt
        _audit(nm, operator, via, op, False, f"failed: {type(e).__name__}")
        raise
    if reply["ok"]:
        message = reply.get("message") or ""
    else:
        message = str(reply.get("error") or "")
    if op == "db_write":
        summary = write_summary(args.get("ops"))
        message = (f"{summary} (seq {reply.get('seq')}, {reply.get('changes')} changes)" if reply["ok"]
                   else f"{summary}: {redact(message, args.get('ops'))}")
    _audit(nm, operator, via, op, bool(reply["ok"]), message)
    return reply


def _audit(nm: "NodeManager", operator: str, via: str, op: str, ok: bool, message: str) -> None:
    message = message[:500]
    nm.events.write("info" if ok else "warning", "operator_action",
                    f"{operator} ({via}) {op}: {'done' if ok else 'refused'}: {message}",
                    {"operator": operator, "via": via, "op": op, "ok": ok, "message": message})


async def _change(nm: "NodeManager", op: str, args: dict) -> Reply:
    if op in ("failover", "failback"):
        force = _bool(args, "force")
        if isinstance(force, Reply):
            return force
        r = await nm.request(op, force=force)
        return Reply({"ok": r.ok, "message": r.message}, code=None if r.ok else "conflict")
    if op == "mode":
        mode = args.get("mode", "")
        if not isinstance(mode, str) or mode.lower() not in MODES:
            return refused("bad_request", f"unknown mode {mode!r:.40}: automatic or manual")
        r = await nm.request("mode", arg=mode.lower())
        return Reply({"ok": r.ok, "message": r.message}, code=None if r.ok else "conflict")
    # db_write
    ops = args.get("ops")
    if not isinstance(ops, list) or not ops:
        return refused("bad_request", "db_write needs \"ops\": a non-empty list")
    why = nm.write_refusal()
    if why is not None:
        return refused("not_active", why)
    result = await nm.db_write(ops)
    if result.get("ok"):
        return Reply(result)
    # refused: by the database (a bad operation), or because the node stopped taking writes
    # between the check above and the write
    return Reply(result, code="not_active" if nm.write_refusal() is not None else "bad_request")


async def _read(nm: "NodeManager", op: str, args: dict) -> Reply:
    if op == "status":
        return Reply({"ok": True, "status": nm.status_dict()})
    try:
        if op == "db_conflicts":
            limit = args.get("limit", 100)
            if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_CONFLICTS:
                return refused("bad_request", f"limit must be an integer from 1 to {MAX_CONFLICTS}")
            return Reply({"ok": True, "conflicts": await nm.repl.call(ConfigDB.conflicts, limit),
                          "count": await nm.repl.call(ConfigDB.conflict_count)})
        table = _table(op, args)
        if isinstance(table, Reply):
            return table
        if op == "db_get":
            return Reply({"ok": True, "row": await nm.repl.call(ConfigDB.get, table, args.get("key"))})
        return Reply({"ok": True, "rows": await nm.repl.call(ConfigDB.list, table)})
    except ConfigDBError as e:
        return refused("bad_request", str(e))
