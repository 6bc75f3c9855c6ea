"""The fault campaign's checker (lab only): judges a run's history (:mod:`lab.history`) against
the final message store, the nodes' configuration databases and event logs.  It reads files
and nothing else: no process, socket or clock.

``check(history, *, store_dir, node_dbs, node_events, ...) -> dict`` (:func:`check`).

**Inputs.**  The history's ``call`` records (what the callers saw), ``lamp`` records (what the
PBX end of the SMDI line received; or ``lamp_log``, the JSON lines of
:class:`lab.faultload.Workload`), ``lamp_sent`` records (what each node transmitted on the
shared line, from the splitter's log), ``activation`` records (or, for a node without any, its
``events.jsonl`` read with :func:`lab.history.read_activations`) and ``fault`` records.  The
store is the shared Maildir (``store_dir/<mailbox>/{new,cur}``; a message is heard when it is in
``cur/`` with the ``S`` flag, as the product's Maildir store counts it).  A stored message
belongs to the call whose caller number is its ``X-VMHA-Caller`` (each call has its own).
Mailbox names: the call's ``mailbox`` is the extension it was forwarded from; ``mailbox_of``
maps it to the store's mailbox (default: the same name), and its lamp is the number
``lamp_prefix + extension`` (the SMDI ``mwi_prefix``).

**Definitions** (the numbers of the result):

* ``acknowledged`` - calls whose message the service acknowledged: a node's log says the
  message of this call was stored or spooled (an
  ``events.jsonl`` record of an event in :data:`ACK_EVENTS` naming its message id, or a line
  ``message <id> for <mailbox>: stored|spooled|duplicate`` of the node's console log
  ``node_logs``), the message id being ``<Call-ID made safe>.<node>.<term>@vmha``.
  (Definitions version 1 also took a caller's ``acked`` as an acknowledgement: the voice
  mail hung up at least ``lead_s + tone_s`` after the answer.  A service killed a moment
  after that point ends the call the same way, with nothing stored: version 1 counted such
  calls as lost.  Version 2 lists them as ``acked_unsaved`` in ``details``.)
* ``lost`` - acknowledged calls with no stored message of their caller that carries their
  tone (the dominant frequency of the stored audio within ``tone_tolerance_hz`` of the call's
  ``tone_hz``; see :func:`dominant_hz`).
* ``duplicated`` - calls (acknowledged or not) with more than one stored message.
* ``wrong_tone`` - stored messages of a call whose audio does not carry that call's tone (a
  crossed or empty recording; reported, and it makes an acknowledged call lost when it is
  the call's only message).  ``unknown_messages``: stored messages of no call of the history.
* ``final_active`` - the number of active nodes at the end: ``final_states`` (the nodes'
  states read after the final heal and quiet period) when given, else the activations still
  open at the end.  ``final_active_ok``: exactly one.
* ``db_checksums_equal`` - the configuration databases' rolling checksums (``node_dbs``: a
  database file, read-only, or the checksum string ``vmha status --json`` shows under
  ``replication.db.checksum``) are all equal.
* ``lamp_mismatches`` - mailboxes whose lamp at the PBX (the last command for its number;
  none = off) differs from the store: on iff the mailbox has an unheard message.  The
  mailboxes looked at: every call's, every mailbox in the store, every lamp number.
* ``same_term_actives`` - terms in which more than one node was active (an activation record of
  two nodes with the same term number).
* ``outside_term`` - things done by a node outside a term it held: a call answered by a node
  (``answered_by``) at a time none of its activation spans covers (widened by ``slack_s``
  each side); a stored message whose ``X-VMHA-Node`` never held its ``X-VMHA-Term``; a lamp
  command a node transmitted (``lamp_sent``) at a time none of its spans covers (widened).
* ``offered_no_active`` - calls offered at a time no node was active; ``unanswered_no_active``
  - those of them not answered.
* ``unavailable_s`` - seconds with no node active, per fault kind: from the first activation to
  ``until`` (default: the last call's end, lamp received, fault heal or activation start of the
  history; not a span's end, which may be the nodes' shutdown), each second without an
  activation span is charged to the last fault that started before it (``none`` before the
  first fault).  An activation span runs from its ``activating`` record to its
  ``deactivated`` one (a node manager that was stopped with SIGSTOP, whose service fenced,
  still counts as active: the event log cannot tell).
* ``lamp_garbled`` - frames the PBX end could not parse (passed in as ``lamp_errors``).

The result also has ``calls``, ``answered``, ``by_fault`` (per fault kind: calls offered in its
window and how many were lost or duplicated) and ``details`` (the calls, mailboxes and terms
behind every non-zero number, and the activation spans used).  A bad history, store or database file raises
:class:`CheckError` (a ValueError) naming what is wrong.
"""
from __future__ import annotations

import re
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from lab.history import History, HistoryError, read_activations, read_events
from telephony.core import media
from telephony.core.ids import MAILBOX_RE
from telephony.core.mime import StoreError, parse_mime

__all__ = ["check", "CheckError", "dominant_hz", "stored_messages", "db_checksum", "acked_ids",
           "safe_call_id", "ACK_EVENTS", "INVARIANTS"]

#: event-log events that acknowledge a message (their message or fields name the message id)
ACK_EVENTS = ("message_saved", "message_stored", "message_spooled", "spool_delivered")
#: 1: a call was acknowledged by the caller's BYE timing (``acked``) or by a node's log;
#: 2: by a node's log only (the service said the message is stored), the issue's definition
DEFINITIONS_VERSION = 2
#: the numbers that must be 0 (or True) after a clean run
INVARIANTS = ("lost", "duplicated", "lamp_mismatches", "same_term_actives", "outside_term")
_CONSOLE_ACK = re.compile(r"message (\S+) for (\S+): (stored|spooled|duplicate)\b")
_U64 = (1 << 64) - 1


class CheckError(ValueError):
    """Input the checker cannot judge (says which file or record)."""


def safe_call_id(call_id: str) -> str:
    """A Call-ID as the message id carries it (the product's ``message_id_for`` rule)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in call_id)[:120]


# ---------------------------------------------------------------------------- audio

def dominant_hz(wav: bytes, *, lo: float = 300.0, hi: float = 3400.0, min_ratio: float = 30.0
                ) -> float | None:
    """The frequency of the strongest tone of a WAV recording between ``lo`` and ``hi`` Hz
    (Hann window, zero-padded FFT, parabolic interpolation: about 0.5 Hz on a second of
    audio), or None when the recording is too short (under 0.1 s) or holds no tone: the peak's
    power is under ``min_ratio`` times the band's median.  ValueError for a WAV the product's
    reader refuses."""
    pcm = media.pcm_of(wav)
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    if len(x) < 800 or not np.any(x):
        return None
    n = 1 << int(np.ceil(np.log2(max(len(x), 16000) * 4)))
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n)) ** 2
    freqs = np.fft.rfftfreq(n, 1 / 8000)
    band = (freqs >= lo) & (freqs <= hi)
    idx = np.flatnonzero(band)
    k = idx[int(np.argmax(spec[idx]))]
    if spec[k] < min_ratio * max(float(np.median(spec[idx])), 1e-9):
        return None
    if 0 < k < len(spec) - 1:
        a, b, c = np.log(spec[k - 1:k + 2] + 1e-12)
        d = a - 2 * b + c
        k = k + (0.5 * (a - c) / d if d < 0 else 0.0)
    return float(k * 8000 / n)


# ---------------------------------------------------------------------------- store

def stored_messages(store_dir: str | Path) -> list[dict]:
    """Every message of the Maildir store: ``mailbox``, ``file``, ``heard``, ``caller``,
    ``node``, ``term`` (int or None), ``call_id``, ``message_id``, ``tone_hz`` (None: no tone;
    ``"bad"``: audio the reader refuses)."""
    root = Path(store_dir)
    if not root.is_dir():
        raise CheckError(f"the message store {root} is not a directory")
    out = []
    for mbox in sorted(p for p in root.iterdir() if p.is_dir() and MAILBOX_RE.fullmatch(p.name)):
        for sub in ("new", "cur"):
            d = mbox / sub
            if not d.is_dir():
                continue
            for f in sorted(d.iterdir()):
                if f.name.startswith("."):
                    continue
                _, _, info = f.name.partition(":")
                heard = sub == "cur" and info.startswith("2,") and "S" in info[2:]
                try:
                    h, wav = parse_mime(f.read_bytes())
                except (StoreError, ValueError, OSError) as e:
                    raise CheckError(f"stored message {f}: {e}") from None
                try:
                    hz: float | str | None = dominant_hz(wav)
                except ValueError:
                    hz = "bad"
                term = h.get("x-vmha-term", "")
                mid = h.get("message-id", "").strip("<>")
                out.append({"mailbox": mbox.name, "file": str(f), "heard": heard,
                            "caller": h.get("x-vmha-caller", ""), "node": h.get("x-vmha-node", ""),
                            "term": int(term) if term.isdigit() else None,
                            "call_id": h.get("x-vmha-call-id", ""), "message_id": mid,
                            "tone_hz": hz})
    return out


def db_checksum(source: str | Path) -> str:
    """A configuration database's rolling checksum as 16 hex digits: ``source`` is the
    database file (opened read-only; its ``_vmha_meta`` row) or the checksum already read
    (a str of hex digits, as ``vmha status --json`` shows it)."""
    if isinstance(source, str) and re.fullmatch(r"[0-9a-fA-F]{1,16}", source):
        return f"{int(source, 16):016x}"
    path = Path(source)
    if not path.is_file():
        raise CheckError(f"no configuration database at {path}")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            row = db.execute("SELECT value FROM _vmha_meta WHERE key = 'checksum'").fetchone()
    except sqlite3.Error as e:
        raise CheckError(f"{path}: not a readable configuration database: {e}") from None
    if row is None or isinstance(row[0], bool) or not isinstance(row[0], int):
        raise CheckError(f"{path}: no checksum in _vmha_meta")
    return f"{row[0] & _U64:016x}"


# ---------------------------------------------------------------------------- logs

def acked_ids(node_events: Mapping[str, str | Path], node_logs: Mapping[str, str | Path] | None
              ) -> set[str]:
    """The message ids the nodes' logs say were stored or spooled (see the module docstring)."""
    ids: set[str] = set()
    for path in node_events.values():
        for rec in read_events(path):
            if rec.get("event") not in ACK_EVENTS:
                continue
            fields = rec.get("fields") if isinstance(rec.get("fields"), dict) else {}
            if isinstance(fields.get("message_id"), str):
                ids.add(fields["message_id"])
            ids.update(re.findall(r"\S+@vmha\b", str(rec.get("message", ""))))
    for path in (node_logs or {}).values():
        try:
            text = Path(path).read_text(errors="replace")
        except FileNotFoundError:
            continue
        ids.update(m.group(1) for m in _CONSOLE_ACK.finditer(text))
    return ids


# ---------------------------------------------------------------------------- time spans

def _covered(t: float, spans: Iterable[dict], slack: float) -> bool:
    return any(s["at"] - slack <= t <= (s["end"] if s["end"] is not None else float("inf")) + slack
               for s in spans)


def _union(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _gaps(active: list[tuple[float, float]], t0: float, t1: float) -> list[tuple[float, float]]:
    gaps, cur = [], t0
    for a, b in active:
        if b <= cur:
            continue
        if a > cur:
            gaps.append((cur, min(a, t1)))
        cur = max(cur, b)
        if cur >= t1:
            break
    if cur < t1:
        gaps.append((cur, t1))
    return [(a, b) for a, b in gaps if b > a]


def _fault_at(t: float, starts: list[tuple[float, str]]) -> str:
    kind = "none"
    for s, k in starts:
        if s <= t:
            kind = k
        else:
            break
    return kind


# ---------------------------------------------------------------------------- the check

def check(history: History, *, store_dir: str | Path, node_dbs: Mapping[str, str | Path],
          node_events: Mapping[str, str | Path], lamp_log: str | Path | None = None,
          final_states: Mapping[str, str | None] | None = None,
          node_logs: Mapping[str, str | Path] | None = None,
          mailbox_of: Mapping[str, str] | None = None, lamp_prefix: str = "",
          lamp_errors: Iterable[str] = (), tone_tolerance_hz: float = 4.0,
          slack_s: float = 1.0, until: float | None = None,
          definitions_version: int = DEFINITIONS_VERSION) -> dict:
    """Judge the run (module docstring: the definitions, of ``definitions_version``).
    Returns the result dict."""
    if definitions_version not in (1, 2):
        raise CheckError(f"definitions_version {definitions_version!r}: 1 or 2")
    try:
        calls = history.calls()
        faults = sorted(history.faults(), key=lambda f: f["start"])
        spans = history.activations()
        lamps = history.lamps()
        sent = history.lamps_sent()
    except HistoryError as e:
        raise CheckError(str(e)) from None
    if lamp_log is not None:
        lamps = []
        for rec in read_events(lamp_log):
            if isinstance(rec.get("mailbox"), str) and isinstance(rec.get("on"), bool) \
                    and isinstance(rec.get("at"), (int, float)):
                lamps.append(rec)
    have_spans = {s["node"] for s in spans}
    for node, path in node_events.items():
        if node not in have_spans:
            spans += read_activations(node, read_events(path), faults=faults)
    by_caller: dict[str, dict] = {}
    for c in calls:
        if c["caller"] in by_caller:
            raise CheckError(f"calls {by_caller[c['caller']]['id']} and {c['id']} have the same "
                             f"caller number {c['caller']}")
        by_caller[c["caller"]] = c
    messages = stored_messages(store_dir)
    acks = acked_ids(node_events, node_logs)
    details: dict = defaultdict(list)

    # -- messages: lost, duplicated, wrong tone
    per_call: dict[int, list[dict]] = defaultdict(list)
    for m in messages:
        c = by_caller.get(m["caller"])
        if c is None:
            details["unknown_messages"].append(m["file"])
            continue
        per_call[c["id"]].append(m)
        hz = m["tone_hz"]
        m["tone_ok"] = isinstance(hz, float) and abs(hz - c["tone_hz"]) <= tone_tolerance_hz
        if not m["tone_ok"]:
            details["wrong_tone"].append({"call": c["id"], "want_hz": c["tone_hz"], "got_hz": hz,
                                          "file": m["file"]})
    acknowledged = set()
    for c in calls:
        prefix = safe_call_id(c.get("sip_call_id") or "") + "."
        saved = len(prefix) > 1 and any(i.startswith(prefix) for i in acks)
        if saved or (definitions_version == 1 and c["result"] == "acked"):
            acknowledged.add(c["id"])
        elif c["result"] == "acked":  # a BYE after the tone, no message: a drop, not a goodbye
            details["acked_unsaved"].append(c["id"])
    lost = [c["id"] for c in calls if c["id"] in acknowledged
            and not any(m["tone_ok"] for m in per_call.get(c["id"], []))]
    duplicated = [cid for cid, ms in per_call.items() if len(ms) > 1]
    details["lost"], details["duplicated"] = lost, sorted(duplicated)

    # -- the end: one active node, equal databases, lamps
    if final_states is not None:
        final_active = sorted(n for n, s in final_states.items() if s == "active")
    else:
        final_active = sorted({s["node"] for s in spans if s["end"] is None})
    checksums = {node: db_checksum(src) for node, src in node_dbs.items()}
    lamp_state: dict[str, bool] = {}
    for rec in sorted(lamps, key=lambda r: r["at"]):
        lamp_state[rec["mailbox"]] = rec["on"]
    mailbox_of = dict(mailbox_of or {})
    store_mb = {v: k for k, v in mailbox_of.items()}
    unheard: dict[str, int] = defaultdict(int)
    for m in messages:
        unheard[store_mb.get(m["mailbox"], m["mailbox"])] += 0 if m["heard"] else 1
    exts = {c["mailbox"] for c in calls} | set(unheard)
    exts |= {n[len(lamp_prefix):] for n in lamp_state if n.startswith(lamp_prefix)}
    mismatches = []
    for ext in sorted(exts):
        want, have = unheard.get(ext, 0) > 0, lamp_state.get(lamp_prefix + ext, False)
        if want != have:
            mismatches.append({"mailbox": ext, "unheard": unheard.get(ext, 0), "lamp": have})
    details["lamp_mismatches"] = mismatches

    # -- terms
    term_nodes: dict[int, set[str]] = defaultdict(set)
    for s in spans:
        term_nodes[s["term"]].add(s["node"])
    same_term = sorted(t for t, ns in term_nodes.items() if len(ns) > 1)
    details["same_term_actives"] = same_term
    node_spans: dict[str, list[dict]] = defaultdict(list)
    for s in spans:
        node_spans[s["node"]].append(s)
    known = set(node_events) | set(node_spans)  # the nodes (a Contact host of no node is not judged)
    outside = []
    for c in calls:
        who = c.get("answered_by")
        if c["answered"] and who in known and not _covered(c["answered_at"], node_spans[who], slack_s):
            outside.append({"what": "call", "call": c["id"], "node": who, "at": c["answered_at"]})
    for m in messages:
        if m["term"] not in {s["term"] for s in node_spans[m["node"]]}:
            outside.append({"what": "message", "file": m["file"], "node": m["node"], "term": m["term"]})
    for rec in sent:
        if not _covered(rec["at"], node_spans.get(rec["node"], []), slack_s):
            outside.append({"what": "lamp", "node": rec["node"], "mailbox": rec["mailbox"],
                            "at": rec["at"]})
    details["outside_term"] = outside

    # -- availability
    times = [c["offered_at"] for c in calls] + [c["ended_at"] for c in calls if c.get("ended_at")]
    times += [f["end"] for f in faults] + [r["at"] for r in lamps] + [s["at"] for s in spans]
    if until is not None:
        times = [until]
    unavailable: dict[str, float] = defaultdict(float)
    offered_no_active = unanswered_no_active = 0
    if spans:
        t0 = min(s["at"] for s in spans)
        t1 = max(times)
        active = _union((s["at"], s["end"] if s["end"] is not None else t1) for s in spans)
        starts = [(f["start"], f["kind"]) for f in faults]
        cuts = sorted({t0, t1, *(s for s, _ in starts if t0 < s < t1)})
        for a, b in _gaps(active, t0, t1):
            for lo, hi in zip(cuts, cuts[1:], strict=False):
                piece = min(b, hi) - max(a, lo)
                if piece > 0:
                    unavailable[_fault_at(max(a, lo), starts)] += piece
        for c in calls:
            if not any(a <= c["offered_at"] <= b for a, b in active):
                offered_no_active += 1
                unanswered_no_active += not c["answered"]
    else:
        offered_no_active = unanswered_no_active = len(calls)
    by_fault: dict[str, dict] = defaultdict(lambda: {"calls": 0, "lost": 0, "duplicated": 0})
    starts = [(f["start"], f["kind"]) for f in faults]
    for c in calls:
        row = by_fault[_fault_at(c["offered_at"], starts)]
        row["calls"] += 1
        row["lost"] += c["id"] in lost
        row["duplicated"] += c["id"] in duplicated

    garbled = list(lamp_errors)
    return {
        "calls": len(calls),
        "answered": sum(c["answered"] for c in calls),
        "acknowledged": len(acknowledged),
        "results": dict(sorted(_count(c["result"] for c in calls).items())),
        "messages": len(messages),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "wrong_tone": len(details["wrong_tone"]),
        "unknown_messages": len(details["unknown_messages"]),
        "final_active": final_active,
        "final_active_ok": len(final_active) == 1,
        "db_checksums": checksums,
        "db_checksums_equal": len(set(checksums.values())) <= 1,
        "lamp_mismatches": len(mismatches),
        "lamp_garbled": len(garbled),
        "same_term_actives": len(same_term),
        "outside_term": len(outside),
        "offered_no_active": offered_no_active,
        "unanswered_no_active": unanswered_no_active,
        "unavailable_s": {k: round(v, 3) for k, v in sorted(unavailable.items())},
        "by_fault": {k: v for k, v in sorted(by_fault.items())},
        "details": {**details, "lamp_garbled": garbled[:50],
                    "activations": sorted(spans, key=lambda s: s["at"])},
    }


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for i in items:
        out[i] += 1
    return dict(out)
