"""Reports: message counts per subscriber and the failover history.

As in the guide, reports are generated only on the **primary while it is active**
(:class:`ReportGate`); the functions themselves are pure (data in, rows out) and never read a
clock or a file, so they run the same on test data and on a real event log
(``failover.eventlog.read_events``).
"""
from __future__ import annotations

import csv
import io
from typing import Any, Iterable, Mapping, Sequence

from telephony.core.ids import check_count

COUNT_COLUMNS = ("extension", "name", "mailbox", "new", "heard", "total")
HISTORY_COLUMNS = ("time", "node", "term", "kind", "cause", "duration_s", "outcome",
                   "active_at", "ended_at", "ended_cause", "active_for_s",
                   "handover_wait_s", "handover_replicated")

#: completion records of an activation, named after its kind (failover/core/supervisor.py)
ACTIVATION_KINDS = ("failover", "failback", "startup")
ROLES = ("primary", "secondary")
STATES = ("starting", "inactive", "activating", "active", "draining", "stopped")


class ReportError(ValueError):
    """Bad input; no report was produced."""


# --------------------------------------------------------------------------- gate

class ReportGate:
    """Reports run only where the guide runs them: on the primary while it is active."""

    def may_generate(self, role: str, state: str) -> tuple[bool, str]:
        role = getattr(role, "label", role)  # failover.core.state.Role / State work too
        state = getattr(state, "label", state)
        if role not in ROLES:
            raise ReportError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if state not in STATES:
            raise ReportError(f"state {state!r} is not one of {', '.join(STATES)}")
        if role != "primary":
            return False, ("this node is the secondary: reports are generated only on the "
                           "primary while it is active")
        if state != "active":
            return False, f"the primary is {state}: reports are generated only while it is active"
        return True, "the primary is active"


# --------------------------------------------------------------------------- message counts

def _ext_key(ext: str) -> tuple:
    return (len(ext), ext) if ext.isdigit() else (1 << 30, ext)


def message_counts_report(counts: Mapping[str, tuple[int, int]],
                          subscribers: Sequence[Mapping[str, Any]]) -> dict:
    """Per subscriber (in extension order): extension, name, mailbox, new, heard, total,
    from ``counts`` (mailbox -> (new, old); a mailbox not in it has no messages) and the
    subscribers' rows (``extension``, ``name``, ``mailbox``, as in the configuration
    database).  Returns ``{"subscribers": rows, "totals": {...}, "unknown_mailboxes":
    [mailboxes in counts with no subscriber]}``; the totals count every message, the unknown
    mailboxes' too."""
    if not isinstance(counts, Mapping):
        raise ReportError(f"counts must be a mapping mailbox -> (new, old), "
                          f"not {type(counts).__name__}")
    if isinstance(subscribers, (str, bytes)) or not isinstance(subscribers, Sequence):
        raise ReportError("subscribers must be a list of subscriber objects")
    checked: dict[str, tuple[int, int]] = {}
    for mailbox, value in counts.items():
        if not isinstance(mailbox, str) or not mailbox:
            raise ReportError(f"mailbox {mailbox!r} must be a non-empty string")
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ReportError(f"counts[{mailbox!r}] must be (new, old), not {value!r}")
        checked[mailbox] = (check_count("new", mailbox, value[0], ReportError),
                            check_count("old", mailbox, value[1], ReportError))
    rows = []
    seen_mailbox: set[str] = set()
    seen_ext: set[str] = set()
    for i, sub in enumerate(subscribers):
        if not isinstance(sub, Mapping):
            raise ReportError(f"subscriber {i} must be an object, not {type(sub).__name__}")
        for key in ("extension", "name", "mailbox"):
            if not isinstance(sub.get(key), str) or not sub[key]:
                raise ReportError(f"subscriber {i} has no {key} (a non-empty string)")
        ext, mailbox = sub["extension"], sub["mailbox"]
        if mailbox in seen_mailbox:
            raise ReportError(f"mailbox {mailbox!r} appears twice in subscribers")
        if ext in seen_ext:
            raise ReportError(f"extension {ext!r} appears twice in subscribers")
        seen_mailbox.add(mailbox)
        seen_ext.add(ext)
        new, old = checked.get(mailbox, (0, 0))
        rows.append({"extension": ext, "name": sub["name"], "mailbox": mailbox, "new": new,
                     "heard": old, "total": new + old})
    rows.sort(key=lambda r: _ext_key(r["extension"]))
    unknown = sorted(m for m in checked if m not in seen_mailbox)
    new_all = sum(n for n, _ in checked.values())
    old_all = sum(o for _, o in checked.values())
    totals = {"subscribers": len(rows),
              "with_new": sum(1 for r in rows if r["new"] > 0),
              "new": new_all, "heard": old_all, "total": new_all + old_all}
    return {"subscribers": rows, "totals": totals, "unknown_mailboxes": unknown}


# --------------------------------------------------------------------------- CSV

def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    s = str(v)
    # a spreadsheet runs a cell starting with one of these as a formula
    if isinstance(v, str) and s[:1] in ("=", "+", "-", "@", "\t", "\r"):
        s = "'" + s
    return s


def render_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV text (RFC 4180, CRLF line ends) with a header line of ``columns``.  Text cells
    that a spreadsheet would run as a formula get a leading apostrophe."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return out.getvalue()


def message_counts_csv(report: Mapping[str, Any], *, totals: bool = True) -> str:
    """The message-counts report as CSV; with ``totals`` a last row named ``Total``."""
    rows = list(report["subscribers"])
    if totals:
        t = report["totals"]
        rows.append({"extension": "", "name": "Total", "mailbox": "", "new": t["new"],
                     "heard": t["heard"], "total": t["total"]})
    return render_csv(rows, COUNT_COLUMNS)


def failover_history_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    return render_csv(rows, HISTORY_COLUMNS)


# --------------------------------------------------------------------------- failover history

def _field(rec: Mapping, index: int, name: str, kind: type | tuple) -> Any:
    fields = rec.get("fields")
    v = fields.get(name) if isinstance(fields, Mapping) else None
    if not isinstance(v, kind) or isinstance(v, bool):
        raise ReportError(f"event record {index} ({rec.get('event')!r}) has no valid "
                          f"fields.{name}: {v!r:.80}")
    return v


def _pending_row(ts, node: str, term: int, cause: str) -> dict:
    """A failover-history row for an activation not yet known to have finished."""
    return {"time": ts, "node": node, "term": term, "kind": None, "cause": cause,
            "duration_s": None, "outcome": "pending", "active_at": None, "ended_at": None,
            "ended_cause": None, "active_for_s": None, "handover_wait_s": None,
            "handover_replicated": None}


def failover_history_report(events: Iterable[Mapping[str, Any]]) -> list[dict]:
    """One row per activation, oldest first, from event-log records (both nodes' logs may
    be concatenated; records are matched per node, in the order given).

    The node manager writes ``activating`` (fields ``cause``, ``term``) when it takes a term,
    then, once its service confirms, a record named after the kind — ``failover``,
    ``failback`` or ``startup`` (fields ``cause``, ``took_ms``, ``term``) — and
    ``deactivated`` (``cause``, ``term``) when it stops being active; ``handover_replicated``
    / ``handover_unreplicated`` (``wait_s``) precede a planned handover's deactivation.

    Row: ``time`` (ts of ``activating``), ``node``, ``term``, ``kind`` (None until active),
    ``cause``, ``duration_s`` (activating -> active, the node manager's own monotonic
    measure), ``outcome`` (``active``: confirmed; ``aborted``: deactivated before the
    service confirmed; ``pending``: the log ends first), ``active_at``, ``ended_at``,
    ``ended_cause``, ``active_for_s`` (ts difference on the same node), ``handover_wait_s``
    and ``handover_replicated`` (a planned handover away from this activation).
    Other records (``bad_log_line`` included) are ignored; a record of these events without
    its fields raises ReportError."""
    rows: list[dict] = []
    current: dict[str, dict] = {}  # node -> its latest activation row still open
    handover: dict[str, tuple[float, bool]] = {}
    for i, rec in enumerate(events):
        if not isinstance(rec, Mapping):
            raise ReportError(f"event record {i} must be an object, not {type(rec).__name__}")
        event = rec.get("event")
        if event not in ("activating", "deactivated", "handover_replicated",
                         "handover_unreplicated") + ACTIVATION_KINDS:
            continue
        node = rec.get("node")
        ts = rec.get("ts")
        if not isinstance(node, str) or isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise ReportError(f"event record {i} ({event!r}) has no node or ts")
        if event == "activating":
            row = _pending_row(ts, node, _field(rec, i, "term", int), _field(rec, i, "cause", str))
            rows.append(row)
            current[node] = row
            handover.pop(node, None)
        elif event in ACTIVATION_KINDS:
            term = _field(rec, i, "term", int)
            took = _field(rec, i, "took_ms", (int, float))
            row = current.get(node)
            if row is None or row["term"] != term or row["outcome"] != "pending":
                # the log starts after its 'activating' record (rotated, or cut)
                row = _pending_row(None, node, term, _field(rec, i, "cause", str))
                rows.append(row)
                current[node] = row
            row.update(kind=event, duration_s=round(took / 1000, 6), outcome="active",
                       active_at=ts)
        elif event in ("handover_replicated", "handover_unreplicated"):
            wait = _field(rec, i, "wait_s", (int, float))
            handover[node] = (wait, event == "handover_replicated")
        else:  # deactivated
            term = _field(rec, i, "term", int)
            cause = _field(rec, i, "cause", str)
            row = current.get(node)
            if row is None or row["term"] > term:
                continue  # deactivated without an activation in this log
            # (a higher term: the node stayed active in a new term, event 'reterm')
            del current[node]
            if row["outcome"] == "pending":
                row["outcome"] = "aborted"
            elif row["active_at"] is not None:
                row["active_for_s"] = round(ts - row["active_at"], 6)
            row.update(ended_at=ts, ended_cause=cause)
            if node in handover:
                row["handover_wait_s"], row["handover_replicated"] = handover.pop(node)
    rows.sort(key=lambda r: (r["time"] if r["time"] is not None else r["active_at"]))
    return rows
