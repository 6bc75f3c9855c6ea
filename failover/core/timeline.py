"""The Failover Monitor's timeline: who was active when, over the last hours (pure).

Input: event-log records (``failover.eventlog``: ``ts``, ``node``, ``level``, ``event``,
``message``[, ``fields``]) of this node, and of the peer if they are at hand; ``now`` (wall
seconds, the same clock as ``ts``) and a window of ``hours``.  Output (JSON-ready):

* per node, **segments** ``{start, end, state}`` that tile the window exactly (no gap, no
  overlap, in time order), ``state`` one of :data:`SEG_STATES`;
* **markers**: one per activation that completed (``failover``, ``failback``, ``startup``)
  inside the window, with its cause and duration (from
  :func:`telephony.core.reports.failover_history_report`, the failover-history report's rows);
* **failovers**: the last activations (newest first), whether in the window or not;
* **problems**: records that could not be used (not an object, no valid ``ts``, an
  activation record without its fields ...), each with its index and why; they are left out
  and change nothing else.

A node whose own records are given gets its row from them (``source: "log"``): ``starting``
and ``deactivated`` make it inactive, ``activating`` activating, the activation records and
``reterm`` active, ``stopped`` stopped.  The peer, when only this node's log is given, gets
the row *as this node saw it* (``source: "seen"``): the peer's state in this node's
``peer_up`` records, the commands it sent (``peer_command``: a ``step_down`` means it is
taking over, a ``take_over`` that it hands over), this node stepping down for it, this node
taking over from a silent peer (then the peer's state is unknown) and this node becoming
active (the peer is then not).  Before the first record that says anything, a node's state is
``unknown``.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping

from failover.core.causes import HANDOVER_PREFIX, HANDOVER_WAIT, awaits_reason, classify
from telephony.core.reports import ACTIVATION_KINDS, ReportError, failover_history_report

#: the states a segment can have
SEG_STATES = ("active", "activating", "inactive", "stopped", "unknown")
MAX_HOURS = 168
MAX_PROBLEMS = 20  # problems listed (the rest are counted)
MAX_FAILOVERS = 10

#: a node's own records -> its state from then on
OWN_STATE = {"starting": "inactive", "activating": "activating", "deactivated": "inactive",
             "reterm": "active", "stopped": "stopped", **{k: "active" for k in ACTIVATION_KINDS}}
#: a supervisor state label (as in a peer_up record) -> a segment state
LABEL_STATE = {"starting": "inactive", "inactive": "inactive", "activating": "activating",
               "active": "active", "draining": "inactive", "stopped": "stopped"}
#: the records the failover history reads (and checks)
HISTORY_EVENTS = ("activating", "deactivated", "handover_replicated", "handover_unreplicated",
                  *ACTIVATION_KINDS)
_PEER_UP = re.compile(r"reachable: ([a-z]+), term -?\d+")
_PEER_CMD = re.compile(r"peer sent ([a-z_]+) \(term")
_TAKE_OVER = re.compile(r"peer sent take_over \(term -?\d+\): (.*)", re.DOTALL)
_STEP_DOWN = re.compile(r"peer sent step_down \(term -?\d+\): (.*)", re.DOTALL)
#: causes of this node's own activation that mean it did not hear the peer
_PEER_UNHEARD = ("silent", "not heard", "unreachable")


class TimelineError(ValueError):
    """Bad arguments (not bad records: those are reported in ``problems``)."""


def _check_record(rec: Any) -> str | None:
    """Why ``rec`` cannot be used, or None."""
    if not isinstance(rec, Mapping):
        return f"not an object ({type(rec).__name__})"
    ts, node, event = rec.get("ts"), rec.get("node"), rec.get("event")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return f"no valid ts ({event!r})" if isinstance(event, str) else "no valid ts"
    if not isinstance(node, str) or not node:
        return f"no node ({event!r})"
    if not isinstance(event, str):
        return "no event name"
    if event in HISTORY_EVENTS:
        try:  # the failover history's own checks of its records' fields
            failover_history_report([rec])
        except ReportError as e:
            return str(e).replace("event record 0 ", "", 1)
    return None


def _seen_peer_state(rec: Mapping, state: str) -> str:
    """The peer's state after this node's record ``rec``, given its state before."""
    event = rec["event"]
    message = rec.get("message") if isinstance(rec.get("message"), str) else ""
    fields = rec.get("fields") if isinstance(rec.get("fields"), Mapping) else {}
    cause = fields.get("cause") if isinstance(fields.get("cause"), str) else ""
    if event == "peer_up":
        m = _PEER_UP.search(message)
        return LABEL_STATE.get(m.group(1), state) if m else state
    if event == "peer_command":
        kind = fields.get("kind")
        if not isinstance(kind, str):
            m = _PEER_CMD.search(message)
            kind = m.group(1) if m else ""
        return {"step_down": "activating", "take_over": "inactive"}.get(kind, state)
    if event == "activating":
        return "unknown" if any(w in cause for w in _PEER_UNHEARD) else state
    if event in ACTIVATION_KINDS or event == "reterm":
        return "inactive" if state in ("active", "activating") else state
    if event == "deactivated" and (cause.startswith("handing over to") or cause.startswith("primary ")):
        return "active"  # this node stepped down for the peer (a failed handover: see its next records)
    if event in ("stopped", "starting"):
        return "unknown"  # this node did not see the peer meanwhile
    return state


def _seen_marker(rec: Mapping, peer: str, peer_role: str | None) -> dict:
    """A marker for the peer's activation, from this node's record ``rec`` that showed it:
    this node handing over to the peer (the reason is the handover's), the peer's
    ``step_down`` command (its reason is the peer's activation cause) or its heartbeat."""
    fields = rec.get("fields") if isinstance(rec.get("fields"), Mapping) else {}
    cause = fields.get("cause") if isinstance(fields.get("cause"), str) else rec.get("message")
    cause = cause if isinstance(cause, str) else rec["event"]
    label, reason = "other", None
    if rec["event"] == "deactivated" and cause.startswith("handing over to ") and ": " in cause:
        reason = cause.split(": ", 1)[1]
        label = classify(HANDOVER_PREFIX + reason)
    elif rec["event"] == "peer_command":
        m = _STEP_DOWN.match(cause)
        if m:
            reason = m.group(1)
            label = classify(reason)
    kind = "failback" if peer_role == "primary" else "failover"
    return {"time": float(rec["ts"]), "node": peer, "kind": kind, "label": label, "peer_reason": reason,
            "cause": f"seen by {rec['node']}: {cause}"[:300], "duration_s": None, "term": None,
            "seen": True}


def _take_over_reason(rec: Mapping) -> str | None:
    """The reason in a ``peer_command`` record of the peer's ``take_over``, or None."""
    fields = rec.get("fields") if isinstance(rec.get("fields"), Mapping) else {}
    if "kind" in fields:
        reason = fields.get("reason")
        return reason if fields.get("kind") == "take_over" and isinstance(reason, str) else None
    message = rec.get("message")
    m = _TAKE_OVER.match(message) if isinstance(message, str) else None
    return m.group(1) if m else None


def _why(row: Mapping, ordered: list[Mapping]) -> tuple[str, str | None]:
    """An activation's cause label (``failover.core.causes``) and, for an activation on a
    draining peer, the reason the peer gave when it handed over (its ``take_over`` command,
    logged by this node right after), or None."""
    cause = row["cause"]
    if row["time"] is None or not awaits_reason(cause):
        return classify(cause), None
    for rec in ordered:
        if rec["node"] == row["node"] and rec["event"] == "peer_command" \
                and row["time"] <= rec["ts"] <= row["time"] + HANDOVER_WAIT:
            reason = _take_over_reason(rec)
            if reason is not None:
                return classify(HANDOVER_PREFIX + reason), reason
    return classify(cause), None


def _tile(changes: list[tuple[float, str]], start: float, end: float) -> list[dict]:
    """Segments covering [start, end] from (time, state) changes in time order: the state
    before the window is the last change at or before ``start``."""
    state = "unknown"
    cuts: list[tuple[float, str]] = []
    for t, s in changes:
        if t <= start:
            state = s
        elif t < end:
            cuts.append((t, s))
    segs: list[dict] = []
    at = start
    for t, s in cuts:
        if s == state:
            continue
        if t > at:
            segs.append({"start": at, "end": t, "state": state})
            at = t
        state = s
    segs.append({"start": at, "end": end, "state": state})
    merged = segs[:1]
    for seg in segs[1:]:  # two changes at one instant can leave neighbours alike
        if seg["state"] == merged[-1]["state"]:
            merged[-1]["end"] = seg["end"]
        else:
            merged.append(seg)
    return merged


def build_timeline(records: Iterable[Any], *, now: float, hours: float = 24, node: str | None = None,
                   peer: str | None = None, peer_role: str | None = None,
                   max_failovers: int = MAX_FAILOVERS) -> dict:
    """The timeline of the ``hours`` before ``now`` (see the module docstring).  ``node`` is
    this node, ``peer`` the other one: both always get a row (the peer's from ``node``'s
    records when it has none of its own).  Other nodes found in the records get rows too.
    The peer's activations seen in ``node``'s records become markers with ``"seen": true``
    (no duration: only the peer's own log has it), named ``failback`` when ``peer_role`` is
    ``"primary"``, else ``failover``."""
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise TimelineError(f"now must be a finite number, not {now!r}")
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not 0 < hours <= MAX_HOURS:
        raise TimelineError(f"hours must be a number in (0, {MAX_HOURS}], not {hours!r}")
    start = now - hours * 3600.0
    problems: list[dict] = []
    problem_count = 0
    good: list[tuple[float, int, Mapping]] = []
    for i, rec in enumerate(records):
        why = _check_record(rec)
        if why is None and rec["ts"] > now:
            why = "ts is after now"
        if why is not None:
            problem_count += 1
            if len(problems) < MAX_PROBLEMS:
                problems.append({"index": i, "error": why})
            continue
        good.append((float(rec["ts"]), i, rec))
    good.sort(key=lambda x: (x[0], x[1]))
    ordered = [r for _, _, r in good]
    names = list(dict.fromkeys([n for n in (node, peer) if n] + [r["node"] for r in ordered]))
    own: dict[str, list[tuple[float, str]]] = {n: [] for n in names}
    for rec in ordered:
        if rec["event"] in OWN_STATE:
            own[rec["node"]].append((float(rec["ts"]), OWN_STATE[rec["event"]]))
    has_own = {r["node"] for r in ordered}
    rows = []
    seen_markers: list[dict] = []
    for name in names:
        if name in has_own or node is None or name != peer:
            rows.append({"name": name, "source": "log", "segments": _tile(own[name], start, now)})
            continue
        seen: list[tuple[float, str]] = []
        state = "unknown"
        for rec in ordered:
            if rec["node"] == node:
                new = _seen_peer_state(rec, state)
                if new != state:
                    seen.append((float(rec["ts"]), new))
                    if state == "inactive" and new in ("activating", "active") and start <= rec["ts"]:
                        seen_markers.append(_seen_marker(rec, name, peer_role))
                    state = new
        rows.append({"name": name, "source": "seen", "segments": _tile(seen, start, now)})
    history = failover_history_report(ordered)
    for r in history:
        r["label"], r["peer_reason"] = _why(r, ordered)
    done = [r for r in history if r["kind"] is not None]
    markers = [{"time": r["active_at"], "node": r["node"], "kind": r["kind"], "cause": r["cause"],
                "label": r["label"], "peer_reason": r["peer_reason"],
                "duration_s": r["duration_s"], "term": r["term"], "seen": False}
               for r in done if start <= r["active_at"] <= now]
    markers = sorted(markers + seen_markers, key=lambda m: m["time"])
    last = sorted(history, key=lambda r: r["time"] if r["time"] is not None else r["active_at"],
                  reverse=True)[:max(0, max_failovers)]
    failovers = [{k: r[k] for k in ("time", "node", "term", "kind", "cause", "label", "peer_reason",
                                    "duration_s", "outcome", "active_at", "ended_at", "ended_cause")}
                 for r in last]
    return {"start": start, "end": now, "hours": hours, "nodes": rows, "markers": markers,
            "failovers": failovers, "problems": problems, "problem_count": problem_count}
