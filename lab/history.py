"""The fault campaign's history (lab only): what the callers, the PBX and the nodes did, in one
append-only JSON-lines file, ``<workdir>/history.jsonl``.  :mod:`lab.faultload` writes the
calls and lamps as they happen; the campaign runner (bench/faults.py) adds each fault's window
and, at the end, every node's activations read from its ``events.jsonl``; :mod:`lab.faultcheck`
judges the whole.

One JSON object a line, field ``type``:

* ``call`` - one call of a caller (:mod:`lab.faultload`): ``id`` (int, unique in the run),
  ``caller`` (digits, unique in the run), ``mailbox`` (the extension the call was forwarded
  from), ``tone_hz``, ``offered_at``, ``answered`` (bool), ``answered_at``, ``answered_by``
  (node name, or the host of the answering Contact when it names no known node, or None),
  ``ended_at``, ``result`` (``acked``, ``dropped``, ``caller_hangup``, ``rejected:<code>``,
  ``no_answer``, ``error``: :mod:`lab.faultload`), ``sip_call_id``, ``stream``.
* ``lamp`` - a lamp command the PBX stand-in received: ``mailbox`` (the station number the
  SMDI command named), ``on`` (bool), ``at``.
* ``lamp_sent`` - a lamp command a node transmitted on the shared SMDI line (from the
  splitter's log, :meth:`History.add_splitter_log`): ``node``, ``mailbox``, ``on``, ``at``.
* ``activation`` - one span of a node being active in one term (:func:`read_activations`):
  ``node``, ``term``, ``at`` (its ``activating`` record), ``active_at`` (its confirmation,
  None when it never came), ``end`` (its ``deactivated``, None: still active at the end),
  ``kind`` (``startup``, ``failover``, ``failback``, ``reterm``, ... or None), ``cause``,
  ``end_by`` (what ended it: ``deactivated``, ``reterm``, ``restart`` or a fault kind).
* ``fault`` - one fault the nemesis applied: ``kind``, ``start``, ``end`` (its heal), ``node``
  (None for a fault of the network), ``offset_s`` (a clock jump's size, else None).

Times are the host's ``time.time()``.  A node's ``events.jsonl`` carries the node's own
``time.time()``, which libfaketime moves during a ``clock_jump``: :func:`read_activations`
maps them back with the history's clock-jump faults (see there).
"""
from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from telephony.smdi.core.codec import CommandReader, MwiCommand

__all__ = ["History", "HistoryError", "check_record", "read_activations", "read_events", "TYPES",
           "CONFIRM_FIELDS", "KILL_KINDS"]

TYPES = ("call", "lamp", "lamp_sent", "activation", "fault")
#: the fields of an activation's confirmation record (``startup``, ``failover``, ... : its kind)
CONFIRM_FIELDS = ("term", "took_ms", "cause")
#: faults after which a node's open activation ends at the fault's start (its node manager was
#: killed: it wrote no ``deactivated``)
KILL_KINDS = ("kill_nm", "restart_node")
_RETERM = re.compile(r"stays active in new term (\d+)")
MAX_LINE = 1 << 20


class HistoryError(ValueError):
    """A history or event-log record that cannot be used (says which and why)."""


def _num(rec: dict, key: str, *, optional: bool = False) -> float | None:
    v = rec.get(key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise HistoryError(f"{rec.get('type', '?')} record: {key} must be a number, not {v!r}")
    return float(v)


def check_record(rec: dict) -> dict:
    """The record if it is a well-formed history record, else HistoryError."""
    if not isinstance(rec, dict):
        raise HistoryError(f"a history record must be an object, not {type(rec).__name__}")
    kind = rec.get("type")
    if kind not in TYPES:
        raise HistoryError(f"unknown history record type {kind!r}")
    if kind == "call":
        if isinstance(rec.get("id"), bool) or not isinstance(rec.get("id"), int):
            raise HistoryError(f"call record: id must be an int, not {rec.get('id')!r}")
        for key in ("caller", "mailbox", "result"):
            if not isinstance(rec.get(key), str):
                raise HistoryError(f"call {rec['id']}: {key} must be a string")
        if not isinstance(rec.get("answered"), bool):
            raise HistoryError(f"call {rec['id']}: answered must be a bool")
        _num(rec, "tone_hz")
        _num(rec, "offered_at")
        _num(rec, "answered_at", optional=True)
        _num(rec, "ended_at", optional=True)
        if rec["answered"] and rec.get("answered_at") is None:
            raise HistoryError(f"call {rec['id']}: answered without answered_at")
    elif kind in ("lamp", "lamp_sent"):
        if not isinstance(rec.get("mailbox"), str) or not isinstance(rec.get("on"), bool):
            raise HistoryError(f"{kind} record: mailbox (string) and on (bool) are needed")
        _num(rec, "at")
        if kind == "lamp_sent" and not isinstance(rec.get("node"), str):
            raise HistoryError("lamp_sent record: node must be a string")
    elif kind == "activation":
        if not isinstance(rec.get("node"), str):
            raise HistoryError("activation record: node must be a string")
        if isinstance(rec.get("term"), bool) or not isinstance(rec.get("term"), int):
            raise HistoryError("activation record: term must be an int")
        at, end = _num(rec, "at"), _num(rec, "end", optional=True)
        if end is not None and end < at:
            raise HistoryError(f"activation of {rec['node']} in term {rec['term']} ends before it starts")
    else:  # fault
        if not isinstance(rec.get("kind"), str) or not rec["kind"]:
            raise HistoryError("fault record: kind must be a non-empty string")
        start, end = _num(rec, "start"), _num(rec, "end")
        if end < start:
            raise HistoryError(f"fault {rec['kind']}: end before start")
        _num(rec, "offset_s", optional=True)
        if rec.get("node") is not None and not isinstance(rec["node"], str):
            raise HistoryError(f"fault {rec['kind']}: node must be a string or None")
    return rec


class History:
    """The history file ``<workdir>/history.jsonl``: records are appended (each one line, written
    and flushed at once; safe from several threads of one process) and read back by type.
    A record that is not well formed is refused with :class:`HistoryError` and not written;
    reading a file with a bad line raises HistoryError naming the line."""

    def __init__(self, workdir: str | Path) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "history.jsonl"
        self.path.touch(exist_ok=True)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"History({str(self.dir)!r})"

    # ------------------------------------------------------------------ writing

    def add(self, rec: dict) -> dict:
        rec = check_record(dict(rec))
        line = json.dumps(rec, separators=(",", ":"), sort_keys=True)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        return rec

    def add_call(self, **fields: Any) -> dict:
        return self.add({"type": "call", **fields})

    def add_lamp(self, mailbox: str, on: bool, at: float) -> dict:
        return self.add({"type": "lamp", "mailbox": mailbox, "on": on, "at": at})

    def add_fault(self, kind: str, start: float, end: float, *, node: str | None = None,
                  offset_s: float | None = None) -> dict:
        """One fault's window (host time): applied at ``start``, healed at ``end``; ``node``
        the node it hit (None for the network), ``offset_s`` a clock jump's size."""
        return self.add({"type": "fault", "kind": kind, "start": start, "end": end,
                         "node": node, "offset_s": offset_s})

    def add_activations(self, node: str, events_path: str | Path) -> list[dict]:
        """Read ``node``'s events.jsonl (:func:`read_activations`, with the faults recorded so
        far) and append its activations; returns them."""
        spans = read_activations(node, read_events(events_path), faults=self.faults())
        return [self.add(s) for s in spans]

    def add_splitter_log(self, path: str | Path, nodes: Iterable[str] | None = None) -> list[dict]:
        """Read the SMDI splitter's log (lab/splitter.py) and append one ``lamp_sent`` per MWI
        command a node transmitted (decoded per node, in the order it was read; ``at`` is the
        log's ``wall`` time of the chunk that completed the command).  ``nodes``: only these
        senders (default: every sender but ``pbx``)."""
        want = None if nodes is None else set(nodes)
        readers: dict[str, CommandReader] = {}
        out = []
        for rec in read_events(path):
            sender = rec.get("from")
            if not isinstance(sender, str) or sender == "pbx" or (want is not None and sender not in want):
                continue
            try:
                data = bytes.fromhex(rec.get("hex", ""))
            except (TypeError, ValueError) as e:
                raise HistoryError(f"splitter log: bad hex from {sender}: {e}") from None
            at = _num(rec, "wall")
            reader = readers.setdefault(sender, CommandReader())
            for ev in reader.feed(data):
                if isinstance(ev, MwiCommand):
                    out.append(self.add({"type": "lamp_sent", "node": sender, "mailbox": ev.number,
                                         "on": ev.on, "at": at}))
        return out

    # ------------------------------------------------------------------ reading

    def records(self, kind: str | None = None) -> list[dict]:
        if kind is not None and kind not in TYPES:
            raise HistoryError(f"unknown history record type {kind!r}")
        out = []
        with self._lock, open(self.path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = check_record(json.loads(line))
                except (ValueError, HistoryError) as e:
                    raise HistoryError(f"{self.path} line {i}: {e}") from None
                if kind is None or rec["type"] == kind:
                    out.append(rec)
        return out

    def calls(self) -> list[dict]:
        return self.records("call")

    def lamps(self) -> list[dict]:
        return self.records("lamp")

    def lamps_sent(self) -> list[dict]:
        return self.records("lamp_sent")

    def activations(self) -> list[dict]:
        return self.records("activation")

    def faults(self) -> list[dict]:
        return self.records("fault")


def read_events(path: str | Path) -> Iterator[dict]:
    """The JSON objects of a JSON-lines file (a node's events.jsonl, the splitter's log); a
    line that is no JSON object (a line cut by a crash, a full disk) is skipped; a missing file
    reads as empty."""
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    with f:
        for line in f:
            if len(line) > MAX_LINE:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield rec


def _host_times(events: list[dict], node: str, faults: list[dict], slack: float) -> list[float]:
    """Each record's ``ts`` mapped back to host time.  A record written during a clock jump of
    this node (a ``clock_jump`` fault with ``node`` and ``offset_s``) carries host time +
    offset; the file is in host-time order, so a record is taken as shifted when ``ts - offset``
    falls inside that jump's window (widened by ``slack``) and is not earlier than the previous
    record's host time (less ``slack``): of the candidates the one nearest the previous one."""
    jumps = [(f["start"] - slack, f["end"] + slack, f["offset_s"]) for f in faults
             if f.get("kind") == "clock_jump" and f.get("node") == node and f.get("offset_s")]
    out: list[float] = []
    last = float("-inf")
    for rec in events:
        ts = float(rec["ts"])
        cands = [ts] + [ts - off for lo, hi, off in jumps if lo <= ts - off <= hi]
        ok = [c for c in cands if c >= last - slack]
        host = min(ok or cands, key=lambda c: abs(c - last) if last > float("-inf") else 0)
        out.append(host)
        last = max(last, host)
    return out


def read_activations(node: str, events: Iterable[dict], *, faults: Iterable[dict] = (),
                     slack: float = 2.0) -> list[dict]:
    """The spans during which ``node`` was active, from its event log records (file order):

    * ``activating`` (fields ``term``, ``cause``) opens a span in ``term``;
    * a confirmation record (``startup``, ``failover``, ``failback`` or any record carrying
      ``term``, ``took_ms`` and ``cause``) in the same term sets ``active_at`` and ``kind``;
    * ``reterm`` (field ``term``; older logs only say "stays active in new term N") ends the span
      and opens one in that term at once;
    * ``deactivated`` (field ``term``) ends the open span;
    * ``starting`` (a new node-manager process) ends a span still open at the time of the last
      record before it (the old process died without saying so: ``end_by`` ``restart``);
    * a fault of :data:`KILL_KINDS` on this node ends a span open at its start (``end_by`` the
      fault's kind).

    Record times go through the clock-jump mapping (:func:`_host_times`).  Records of other
    nodes, and records without a number ``ts``, are ignored."""
    faults = list(faults)
    recs = [r for r in events if r.get("node", node) == node
            and isinstance(r.get("ts"), (int, float)) and not isinstance(r.get("ts"), bool)]
    times = _host_times(recs, node, faults, slack)
    kills = sorted(f["start"] for f in faults if f.get("kind") in KILL_KINDS and f.get("node") == node)
    spans: list[dict] = []
    open_span: dict | None = None
    last_t: float | None = None

    def close(at: float, by: str) -> None:
        nonlocal open_span
        if open_span is not None:
            open_span["end"] = max(at, open_span["at"])
            open_span["end_by"] = by
            open_span = None

    def opened(term: int, at: float, kind: str | None, cause: str | None) -> None:
        nonlocal open_span
        open_span = {"type": "activation", "node": node, "term": term, "at": at,
                     "active_at": at if kind == "reterm" else None, "end": None, "kind": kind,
                     "cause": cause, "end_by": None}
        spans.append(open_span)

    for rec, t in zip(recs, times, strict=True):
        if open_span is not None:
            killed = [k for k in kills if open_span["at"] <= k <= t]
            if killed:
                close(killed[0], next(f["kind"] for f in faults if f.get("kind") in KILL_KINDS
                                      and f.get("node") == node and f["start"] == killed[0]))
        event = rec.get("event")
        fields = rec.get("fields") if isinstance(rec.get("fields"), dict) else {}
        term = fields.get("term")
        term = term if isinstance(term, int) and not isinstance(term, bool) else None
        if event == "starting" and open_span is not None:
            close(last_t if last_t is not None else t, "restart")
        elif event == "activating" and term is not None:
            close(t, "reterm")  # (an open span here means a lost deactivated record)
            opened(term, t, None, fields.get("cause"))
        elif event == "reterm":
            m = _RETERM.search(str(rec.get("message", "")))
            new = term if term is not None else (int(m.group(1)) if m else None)  # older logs: text
            if new is not None and open_span is not None:
                close(t, "reterm")
                opened(new, t, "reterm", fields.get("cause"))
        elif event == "deactivated" and open_span is not None and (term is None or term >= open_span["term"]):
            close(t, "deactivated")
        elif (term is not None and all(k in fields for k in CONFIRM_FIELDS) and open_span is not None
              and open_span["term"] == term and open_span["active_at"] is None):
            open_span["active_at"] = t
            open_span["kind"] = event
        last_t = t
    if open_span is not None:
        later = [k for k in kills if k >= open_span["at"]]
        if later:
            close(later[0], next(f["kind"] for f in faults if f.get("kind") in KILL_KINDS
                                 and f.get("node") == node and f["start"] == later[0]))
    return spans
