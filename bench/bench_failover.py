#!/usr/bin/env python3
"""Failover benchmark of a real vmha pair on loopback (docs/benchmarks.md, "Failover").

::

    python bench/bench_failover.py --runs 100 --json results.json                     # default profile
    python bench/bench_failover.py --runs 100 --soak 600 --stress --json default.json
    python bench/bench_failover.py --runs 100 --soak 600 --stress --profile fast --json fast.json
    python bench/bench_failover.py --runs 20 --profile both --json both.json          # default, then fast
    python bench/bench_failover.py --runs 100 --soak 600 --stress --profile both --json both.json

Scenarios (each in its own fresh pair, started with lab.pair.Pair):

crash  kill -9 of the active node's messaging service.  Timed from ``time.time()`` taken just
       before ``os.kill`` to the ``ts`` of the peer's event-log record that completes the
       activation (``failover``/``failback``/``startup``).  Directions alternate by themselves:
       after each run the killed node's service is restarted and the node stays inactive.
link   ``pair.cut()`` (the node link relay stops forwarding, both directions) with the primary
       active.  Timed from ``time.time()`` just before the cut to the ``ts`` of the secondary's
       completed activation.  Then ``pair.heal()``; the pair must converge (primary active,
       secondary inactive, both see each other) within 10 s or the run counts as an error.
call   a call offered on the loopback trunk of the inactive node.  Timed on the client with
       ``time.perf_counter()`` from just before the offer line is sent to the ``answered`` reply
       (the TCP connect is outside the timing).  The nodes alternate by themselves: the called
       node becomes active and the other steps down.
sip    (keys ``sip_call_at_inactive_*``; ``--only`` name ``sip``) a pair whose nodes each have
       4 SIP ports (one pjsua2 worker) on 127.0.0.1.  A SIPp process (scenario SIPP_UAC below)
       sends an INVITE, without Diversion, to the inactive node's SIP port.  Timed by SIPp's
       own ``gettimeofday`` from just before the INVITE is sent to the handling of the 200 OK
       (SIPp's start-up is outside the timing); then ACK and BYE at once.  The 200 must name
       a worker of the called node in its Contact.  The called node becomes active, so calls
       alternate; before each call the pair must be settled and every SIP port of both nodes
       idle.  Needs ``sipp`` and ``pjsua2``; without them the scenario is skipped and
       ``sip_call_at_inactive_failed`` says why.
soak   (``--soak SECONDS``) the pair idles, primary active, with a call placed every second on
       the active node's loopback trunk; optionally both CPUs are loaded with ``stress-ng --cpu
       2`` (``--stress``).  The node link is direct TCP here (no cut is needed), unless
       ``--soak-relay``.  No fault is injected: no kill, no cut, no call at the inactive node.
       Counting starts at the convergence (``ts`` >= the soak's start), before the load starts,
       and ends before the pair is stopped.

Key definitions, version 2 (every result file has ``definitions_version``: 2).  They are fixed
before a run; a result file is never edited afterwards; a new definition is a new version.

``false_failovers``
    Soak only.  How many times the active role moved from one node to the other with no fault
    injected.  Counted from both event logs in ``ts`` order, starting with the primary holding
    the role: a record that completes an activation (``failover``, ``failback``, ``startup``)
    on the node that does not hold the role is one move, and that node then holds it.  A node
    that fences itself and becomes active again is no move (see ``self_fences``).  The list is
    in ``soak_role_move_list``; ``soak_role_moves_polled`` is the same count from the state
    changes the 50 ms status polling saw (a cross-check, not the figure).
``self_fences``
    Soak only.  How many times an active node fenced itself with no fault injected: the node
    manager's ``deactivated`` records whose cause is ``lease lapsed: ...`` (its own lease check)
    or ``service fenced itself: ...`` (the service's ``fenced`` report).  Each is a service
    interruption even when the same node becomes active again.  List: ``soak_self_fence_list``.
``stalls``, ``max_stall_s``
    Soak only.  The number of ``stall`` records (the node manager was not scheduled for
    longer than max(3 ping intervals, half the peer timeout)) in either event log, and the
    largest of their ``fields.stall_s`` (0.0 with none).  A stall alone changes nothing.
``soak_passed``
    ``false_failovers == 0 and self_fences == 0``.  A soak passes only then.
Without ``--soak`` these five keys are ``null`` (nothing was measured without a fault; the runs
inject one each).  ``runs_unexpected_activations`` (``activating`` records during the runs
beyond the one each successful run causes) keeps its earlier meaning.

Version 1 (result files without ``definitions_version``): ``false_failovers`` was, with a soak,
the number of ``activating`` and ``deactivated`` records in either log plus the state changes
seen by polling (records, not incidents: one self-fence counted 4), and without a soak the
runs' unexpected activations (``false_failovers_source`` said which).  Those files keep that
meaning; docs/benchmarks.md says which file has which version.

Event-log timestamps are ``time.time()`` of the node manager on the same machine, so they are
directly comparable with the benchmark's and SIPp's wall clock.

Keys: results of the ``default`` profile are unprefixed (``crash_p50_s``, ``false_failovers``
...); results of the ``fast`` profile carry the prefix ``fast_`` (``fast_link_p95_s``,
``fast_false_failovers``, ``fast_self_fences`` ...).  ``--profile both`` runs default and then
fast into one file.  Percentiles are nearest rank; with fewer than 100 samples p99 is the max.

Every result file also records ``code``: the commit it ran from and the product files that
differed from it (a run on uncommitted changes says so).

Every process the benchmark starts is stopped by its PID: the nodes by the Pair context
manager, stress-ng by the Popen object (its own process group, SIGTERM then SIGKILL), each SIPp
caller by its Popen object, also on errors and on SIGINT/SIGTERM.  Everything listens on
127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

import trio  # noqa: E402

from failover.config import load_config  # noqa: E402
from lab.loopback_client import LoopbackCall, LoopbackClientError  # noqa: E402
from lab.pair import Node, Pair, free_udp_block  # noqa: E402

HOST = "127.0.0.1"
COMPLETED = ("failover", "failback", "startup")  # records that end an activation
ANOMALIES = ("activating", "deactivated", "stall")  # records listed in the soak's breakdown
RUN_TIMEOUT = 10.0  # a trigger without a completed activation within this is an error
HEAL_TIMEOUT = 10.0  # the brief: a heal that does not converge in 10 s is an error
STARTUP_SETTLE = 2.5  # > failover.handover_timeout (2 s default): see start_converged
STRESS_CMD = "stress-ng"
DEFINITIONS_VERSION = 2  # the version of the key definitions in the module docstring
SIP_PORTS = 4  # SIP ports per node in the sip scenario: one pjsua2 worker (4 calls a process)
SIPP_CMD = "sipp"

# The SIPp caller of the sip scenario, written into the scenario's directory.  The wall clock
# (gettimeofday, microseconds) is read just before the INVITE is sent and when the 200 is
# handled; with -trace_logs the call logs both.  Then ACK and at once BYE (the call is not
# held).  No Diversion header: a direct call.
SIPP_UAC = """\
<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="vmha failover bench: call at the inactive node, INVITE -> 200">
  <nop>
    <action>
      <gettimeofday assign_to="s0,us0" />
      <log message="invite_sent=[$s0] [$us0]" />
    </action>
  </nop>
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:0301234567@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200">
    <action>
      <gettimeofday assign_to="s1,us1" />
      <ereg regexp="[a-z0-9]+-w[0-9]+" search_in="hdr" header="Contact:" assign_to="who" />
      <log message="answered at=[$s1] [$us1] by=[$who]" />
    </action>
  </recv>
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:0301234567@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <send retrans="500">
    <![CDATA[
      BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:0301234567@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200" crlf="true"/>
</scenario>
"""


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentile(samples: list[float], p: float) -> float | None:
    """Nearest-rank percentile (no interpolation): the smallest sample with at least p % of
    the samples at or below it.  With fewer than 100 samples p99 is the maximum."""
    if not samples:
        return None
    s = sorted(samples)
    k = max(1, math.ceil(p / 100.0 * len(s)))
    return s[k - 1]


def summary(prefix: str, samples: list[float], out: dict, *, digits: int = 6) -> None:
    out[f"{prefix}_n"] = len(samples)
    for p in (50, 95, 99):
        v = percentile(samples, p)
        out[f"{prefix}_p{p}_s"] = None if v is None else round(v, digits)
    out[f"{prefix}_max_s"] = round(max(samples), digits) if samples else None
    out[f"{prefix}_min_s"] = round(min(samples), digits) if samples else None
    out[f"{prefix}_mean_s"] = round(sum(samples) / len(samples), digits) if samples else None


class EventTail:
    """Reads a node's JSON-lines event log incrementally (complete lines only)."""

    def __init__(self, node: Node):
        self.path = load_config(node.config).node.data_dir / "events.jsonl"
        self.offset = 0
        self.records: list[dict] = []

    def poll(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        new = []
        for line in data[: end + 1].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                new.append(rec)
        self.records.extend(new)
        return new

    def since(self, ts: float) -> list[dict]:
        self.poll()
        return [r for r in self.records if r.get("ts", 0) >= ts]


def wait_activation(tail: EventTail, since: float, timeout: float = RUN_TIMEOUT) -> tuple[dict, dict]:
    """The first ``activating`` record at or after ``since`` and the record that completes it.
    Raises RuntimeError if the activation is aborted or does not complete in time."""
    end = time.monotonic() + timeout
    while True:
        act = done = None
        for r in tail.since(since):
            e = r.get("event")
            if act is None and e == "activating":
                act = r
            elif act is not None and e in COMPLETED:
                done = r
                break
            elif act is not None and e == "deactivated":
                raise RuntimeError(f"activation aborted: {r.get('message')}")
        if done is not None:
            return act, done
        if time.monotonic() > end:
            raise RuntimeError("no completed activation within "
                               f"{timeout:.0f}s (activating seen: {act is not None})")
        time.sleep(0.005)


def breakdown(t_trigger: float, act: dict, done: dict) -> dict:
    """Split trigger -> active using the completion record's ``took_ms`` (the node manager's
    own decision -> confirmed time, monotonic clock):

    detect   trigger -> the supervisor's decision (done.ts - took_ms)
    persist  decision -> the ``activating`` record, which is written *after* the new term was
             fsynced (state.json + directory) and ``activate`` was sent to the service
    confirm  ``activating`` record -> the completion record (service said ``activated``)
    """
    took = (done.get("fields") or {}).get("took_ms")
    decided = done["ts"] - took / 1000.0 if isinstance(took, (int, float)) else act["ts"]
    return {"detect": decided - t_trigger, "persist": act["ts"] - decided,
            "confirm": done["ts"] - act["ts"]}


def add_parts(res: dict, parts: dict) -> None:
    for k, v in parts.items():
        res.setdefault("parts", {}).setdefault(k, []).append(v)


def fmt_parts(parts: dict) -> str:
    return ", ".join(f"{k} {v * 1000:.1f}" for k, v in parts.items()) + " ms"


def wait_for(pred, timeout: float, poll: float = 0.01):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    return None


def view(node: Node) -> dict | None:
    st = node.status()
    if st is None:
        return None
    return {"state": st["node"]["state"], "service": st["node"]["service"],
            "eligible": st["node"]["eligible"], "hold": st["node"]["hold"],
            "term": st["node"]["term"], "peer_reachable": st["peer"]["reachable"],
            "peer_state": st["peer"]["state"], "age": st["peer"]["last_heartbeat_age_s"]}


def settled(pair: Pair, active: str | None = None, no_hold: bool = False) -> str | None:
    """Name of the active node if the pair is quiet: one node active, the other inactive with
    its service running and eligible, each seeing the other in that state.  With ``active``
    the active node must be that one; with ``no_hold`` the inactive node must not be on hold
    (a node handed over by an operator refuses call takeover until it is active again)."""
    va, vb = view(pair.a), view(pair.b)
    if va is None or vb is None:
        return None
    for name, me, other in (("a", va, vb), ("b", vb, va)):
        if (me["state"] == "active" and other["state"] == "inactive"
                and other["service"] == "running" and other["eligible"]
                and not (no_hold and other["hold"])
                and me["peer_reachable"] and other["peer_reachable"]
                and me["peer_state"] == "inactive" and other["peer_state"] == "active"):
            if active is None or active == name:
                return name
    return None


def other(name: str) -> str:
    return "b" if name == "a" else "a"


def all_events(pair: Pair, since: float) -> list[dict]:
    out = [r for n in (pair.a, pair.b) for r in n.events() if r.get("ts", 0) >= since]
    return sorted(out, key=lambda r: r.get("ts", 0))


def unexpected_activations(pair: Pair, since: float, caused: int) -> int:
    """``activating`` records in either log since ``since`` beyond the ``caused`` ones (each
    successful run causes exactly one).  Called before the pair is stopped: the shutdown
    hand-over at the end is not counted."""
    n = sum(1 for r in all_events(pair, since) if r.get("event") == "activating")
    return max(0, n - caused)


def role_moves(recs: list[dict], t0: float, holder: str) -> tuple[int, list[str]]:
    """Moves of the active role from one node to the other (definitions version 2): the
    records ``recs`` (both event logs, in ``ts`` order) are walked with ``holder`` the node
    holding the role at the start; a record that completes an activation (``failover``,
    ``failback``, ``startup``) on the other node is one move and makes that node the holder.
    An activation of the holder itself (e.g. after it fenced itself) is no move."""
    n, out = 0, []
    for r in recs:
        node = r.get("node")
        if r.get("event") in COMPLETED and node in ("a", "b") and node != holder:
            n += 1
            out.append(f"{r.get('ts', 0) - t0:.3f}s {holder}->{node} {r.get('event')}: {r.get('message')}")
            holder = node
    return n, out


def is_self_fence(r: dict) -> bool:
    """A node manager's ``deactivated`` record whose cause is its own lease running out
    (``lease lapsed ...``) or its service's report that it fenced itself (``service fenced
    itself ...``): written by failover/core/supervisor.py only for a node that was active."""
    if r.get("event") != "deactivated":
        return False
    cause = str((r.get("fields") or {}).get("cause") or r.get("message") or "")
    return "lease lapsed" in cause or "service fenced itself" in cause


def priority_report(pair: Pair) -> dict:
    """What the node managers said about SCHED_RR (fast profile)."""
    out = {}
    for n in (pair.a, pair.b):
        recs = [r for r in n.events() if r.get("event") == "priority"]
        out[n.name] = recs[-1]["message"] if recs else "normal scheduling (realtime_priority 0)"
    return out


class Stress:
    """stress-ng --cpu N, started by PID in its own process group and stopped by that PID."""

    def __init__(self, cpus: int, seconds: float, workdir: Path):
        self.cpus, self.seconds, self.workdir = cpus, seconds, workdir
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Stress":
        exe = shutil.which(STRESS_CMD)
        if exe is None:
            raise SystemExit("stress-ng not found (needed for --stress)")
        self._log = open(self.workdir / "stress-ng.log", "ab")
        self.proc = subprocess.Popen(
            [exe, "--cpu", str(self.cpus), "--timeout", f"{max(1, math.ceil(self.seconds))}s"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log(f"stress-ng --cpu {self.cpus} started, pid {self.proc.pid}")
        time.sleep(0.5)  # let the workers spin up
        if self.proc.poll() is not None:
            raise RuntimeError(f"stress-ng exited at once with {self.proc.returncode}")
        return self

    def __exit__(self, *exc) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)  # stress-ng stops its own workers on SIGTERM
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the group we created: workers left behind, if any
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        log(f"stress-ng pid {p.pid} stopped (rc {p.returncode})")


class NoStress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


# --------------------------------------------------------------------------- one call


async def _offer(port: int, call_id: str, hold: float) -> dict:
    """Connect, then time offer -> reply with perf_counter; hang up after ``hold``."""
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        call = LoopbackCall(stream, reply_timeout=10.0)
        wall = time.time()
        t0 = time.perf_counter()
        reply = await call.offer(call_id, calling="4021", called="5000")
        t1 = time.perf_counter()
        if call.in_progress:
            if hold:
                with trio.move_on_after(hold):
                    await call.wait_dropped()
            if call.in_progress:
                try:
                    await call.hangup()
                except (LoopbackClientError, trio.TooSlowError):
                    pass
    return {"latency": t1 - t0, "wall": wall, "reply": reply}


def place(port: int, call_id: str, hold: float = 0.0) -> dict:
    try:
        return trio.run(_offer, port, call_id, hold)
    except (OSError, LoopbackClientError, trio.TooSlowError) as e:
        return {"latency": None, "wall": time.time(), "reply": {"ev": "error", "message": repr(e)}}


# --------------------------------------------------------------------------- scenarios


def start_pair(workdir: Path, profile: str, extra: dict | None = None, relay: bool = True) -> Pair:
    pair = Pair(workdir, relay=relay, profile=profile, extra=extra)
    pair.start()
    return pair


def converge(pair: Pair, active: str | None = "a", timeout: float = 20.0) -> str:
    got = wait_for(lambda: settled(pair, active), timeout, poll=0.02)
    if not got:
        raise RuntimeError(f"pair did not converge in {timeout:.0f}s: {pair.states()}")
    return got


def start_converged(pair: Pair, primary: bool = False) -> str:
    """Wait until the freshly started pair settles.  With ``primary`` and the secondary active
    (with the fast profile the secondary often activates as "first node started" before the
    link is up, startup_wait being 0.1 s, and the primary then finds it active and stays
    inactive), move the active role to the primary with an operator failback: the link
    scenario and the soak start from "a active".  Not part of any timing."""
    active = converge(pair, None)
    if primary and active == "b":
        log("start-up left the secondary active: failback to a (operator request, not timed)")
        reply = pair.a.admin({"op": "failback"})
        if not reply or not reply.get("ok"):
            raise RuntimeError(f"failback to a refused: {reply}")
        active = converge(pair, "a")
    # A node told to step down during the start-up race (or by the failback above) stays
    # "quiet" for handover_timeout (2 s) and, in that time, does not take over from a peer
    # whose service fails.  Let that pass so start-up does not leak into run 1.
    time.sleep(STARTUP_SETTLE)
    return converge(pair, active)


def jitter(profile_interval: float) -> None:
    """A random pause before each trigger, so it falls at a random phase of the heartbeat."""
    time.sleep(0.2 + random.uniform(0, max(0.1, 2 * profile_interval)))


def bench_crash(workdir: Path, profile: str, runs: int, ping: float) -> dict:
    # max_restarts: each node's service is killed every other run; past the default (5 in
    # 60 s) each restart would wait a growing backoff.  No effect on the timing measured.
    pair = start_pair(workdir, profile, {"service": {"max_restarts": 1000}})
    res: dict = {"samples": [], "errors": [], "directions": []}
    with pair:
        active = start_converged(pair)
        t_conv = time.time()
        tails = {"a": EventTail(pair.a), "b": EventTail(pair.b)}
        for i in range(runs):
            jitter(ping)
            try:
                active = converge(pair, None, timeout=15.0)
                peer = other(active)
                pid = pair.node(active).service_pid()
                if pid is None:
                    raise RuntimeError(f"no messaging service found under node {active}")
                t_kill = time.time()
                os.kill(pid, signal.SIGKILL)
                act, done = wait_activation(tails[peer], t_kill)
                took, parts = done["ts"] - t_kill, breakdown(t_kill, act, done)
                res["samples"].append(took)
                add_parts(res, parts)
                res["directions"].append(f"{active}->{peer}")
                log(f"crash {i + 1}/{runs}: {active}->{peer} {took * 1000:.1f} ms ({fmt_parts(parts)})")
                converge(pair, peer, timeout=15.0)  # the killed node's service restarted, inactive
            except RuntimeError as e:
                res["errors"].append(f"run {i + 1} ({active}->{other(active)}): {e}")
                log(f"crash {i + 1}/{runs}: ERROR {active}->{other(active)}: {e}")
        res["unexpected"] = unexpected_activations(pair, t_conv, len(res["samples"]))
        res["priority"] = priority_report(pair)
    return res


def bench_link(workdir: Path, profile: str, runs: int, ping: float) -> dict:
    pair = start_pair(workdir, profile)
    res: dict = {"samples": [], "errors": [], "heal": [], "heal_errors": 0}
    with pair:
        start_converged(pair, primary=True)
        t_conv = time.time()
        tail_b = EventTail(pair.b)
        for i in range(runs):
            jitter(ping)
            if not wait_for(lambda: settled(pair, "a"), 15.0, poll=0.02):
                res["errors"].append(f"run {i + 1}: pair not converged before the cut: {pair.states()}")
                log(f"link {i + 1}/{runs}: ERROR not converged; skipped")
                continue
            t_cut = time.time()
            pair.cut()
            try:
                act, done = wait_activation(tail_b, t_cut)
                took, parts = done["ts"] - t_cut, breakdown(t_cut, act, done)
                res["samples"].append(took)
                add_parts(res, parts)
                msg = f"{took * 1000:.1f} ms ({fmt_parts(parts)})"
            except RuntimeError as e:
                res["errors"].append(f"run {i + 1}: {e}")
                msg = f"ERROR {e}"
            t_heal = time.monotonic()
            pair.heal()
            ok = wait_for(lambda: settled(pair, "a"), HEAL_TIMEOUT, poll=0.01)
            if ok:
                res["heal"].append(time.monotonic() - t_heal)
                log(f"link {i + 1}/{runs}: {msg}; healed in {res['heal'][-1] * 1000:.0f} ms")
            else:
                res["heal_errors"] += 1
                res["errors"].append(f"run {i + 1}: heal did not converge in {HEAL_TIMEOUT:.0f}s: "
                                     f"{pair.states()}")
                log(f"link {i + 1}/{runs}: {msg}; ERROR heal did not converge: {pair.states()}")
                wait_for(lambda: settled(pair, "a"), 30.0, poll=0.05)
        res["unexpected"] = unexpected_activations(pair, t_conv, len(res["samples"]))
        res["priority"] = priority_report(pair)
    return res


def bench_call(workdir: Path, profile: str, runs: int, ping: float) -> dict:
    pair = start_pair(workdir, profile)
    res: dict = {"samples": [], "errors": [], "directions": []}
    with pair:
        start_converged(pair)
        t_conv = time.time()
        tails = {"a": EventTail(pair.a), "b": EventTail(pair.b)}
        for i in range(runs):
            jitter(ping)
            active = wait_for(lambda: settled(pair, no_hold=True), 15.0, poll=0.02)
            if not active:
                res["errors"].append(f"run {i + 1}: pair not settled: {pair.states()}")
                log(f"call {i + 1}/{runs}: ERROR pair not settled; skipped")
                continue
            target = other(active)
            r = place(pair.loop_port(target), f"bench-{i + 1}")
            reply = r["reply"]
            if reply.get("ev") != "answered" or reply.get("node") != target:
                res["errors"].append(f"run {i + 1}: call on {target}: {reply}")
                log(f"call {i + 1}/{runs}: ERROR {reply}")
                continue
            extra = record_call(res, tails, target, r["wall"], r["latency"])
            log(f"call {i + 1}/{runs}: on {target} answered in {r['latency'] * 1000:.1f} ms{extra}")
        res["unexpected"] = unexpected_activations(pair, t_conv, len(res["samples"]))
        res["priority"] = priority_report(pair)
    return res


def record_call(res: dict, tails: dict, target: str, sent_wall: float, took: float) -> str:
    """One call at the inactive node: its latency and direction, and the node side's
    breakdown when the target's activation records are found; returns the breakdown text."""
    res["samples"].append(took)
    res["directions"].append(target)
    try:
        act, done = wait_activation(tails[target], sent_wall, timeout=2.0)
        parts = breakdown(sent_wall, act, done)
    except RuntimeError:
        return ""
    add_parts(res, parts)
    return f" (node side: {fmt_parts(parts)})"


def sip_extra(node: str) -> dict:
    """``[ports.sip]`` for one node of the sip scenario: SIP_PORTS ports (one worker) on
    127.0.0.1, its own SIP port and RTP block (as tests/integration/test_sip.py does)."""
    workers = -(-SIP_PORTS // 4)
    return {"ports": {"sip": {"enabled": True, "bind": HOST, "count": SIP_PORTS,
                              "sip_port": free_udp_block(workers),
                              "rtp_port": free_udp_block(16, top=65536 - 1000 * workers),
                              "mwi_target": f"sip:{{extension}}@{HOST}:9",
                              "mwi_account": "sip:{extension}@vm.example"}}}


def sip_ports_idle(node: Node) -> bool:
    st = node.status() or {}
    ports = [p for p in st.get("ports", []) if p.get("kind") == "sip"]
    return len(ports) == SIP_PORTS and all(p.get("state") == "idle" for p in ports)


def sip_missing() -> str | None:
    """Why the sip scenario cannot run here, or None."""
    if shutil.which(SIPP_CMD) is None:
        return "sipp not found (apt-get install sip-tester)"
    try:
        import pjsua2  # noqa: F401
    except ImportError as e:
        return f"pjsua2 not importable: {e}"
    return None


def sipp_call(cwd: Path, port: int, timeout: float = 20.0) -> dict:
    """One SIPp call (SIPP_UAC) to 127.0.0.1:``port``.  Returns ``invite_wall`` and
    ``answer_wall`` (SIPp's gettimeofday before the INVITE and at the 200), ``by`` (the
    worker named in the 200's Contact) and ``rc``; ``error`` when it did not work."""
    cwd.mkdir(parents=True, exist_ok=True)
    xml = cwd / "uac_answer_time.xml"
    if not xml.exists():
        xml.write_text(SIPP_UAC)
    logf, errf = cwd / "calls.log", cwd / "errors.log"
    for f in (logf, errf):
        f.unlink(missing_ok=True)
    cmd = [shutil.which(SIPP_CMD) or SIPP_CMD, "-sf", str(xml), f"{HOST}:{port}", "-i", HOST,
           "-p", str(free_udp_block(1)), "-mp", str(free_udp_block(4)), "-s", "5000", "-m", "1",
           "-nostdin", "-trace_logs", "-log_file", str(logf), "-trace_err", "-error_file", str(errf),
           "-timeout", f"{int(timeout)}s", "-timeout_error"]
    out: dict = {"rc": None, "invite_wall": None, "answer_wall": None, "by": None}
    proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=timeout + 10)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child, by its Popen object
        _, err = proc.communicate()
        out["error"] = "sipp did not exit"
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C, SIGTERM): stop it by its PID
            proc.kill()
            proc.wait()
    out["rc"] = proc.returncode
    text = logf.read_text(errors="replace") if logf.exists() else ""
    for line in text.splitlines():
        if line.startswith("invite_sent="):
            sec, usec = line.split("=", 1)[1].split()
            out["invite_wall"] = float(sec) + float(usec) / 1e6
        elif line.startswith("answered at="):
            parts = line.split("=", 1)[1].split()
            out["answer_wall"] = float(parts[0]) + float(parts[1]) / 1e6
            out["by"] = line.rsplit("by=", 1)[-1].strip() if "by=" in line else None
    if "error" not in out and (proc.returncode != 0 or out["answer_wall"] is None
                               or out["invite_wall"] is None):
        tail = (errf.read_text(errors="replace")[-300:] if errf.exists() else "") or \
            err.decode(errors="replace")[-300:]
        out["error"] = f"sipp rc {proc.returncode}, answered {out['answer_wall'] is not None}: {tail.strip()}"
    return out


def bench_sipcall(workdir: Path, profile: str, runs: int, ping: float) -> dict:
    """sip scenario: an INVITE to the inactive node's SIP port, timed INVITE sent -> 200 OK
    by SIPp's own clock (gettimeofday); the called node becomes active, so calls alternate."""
    why = sip_missing()
    if why:
        raise RuntimeError(why)
    pair = Pair(workdir, profile=profile, extra_a=sip_extra("a"), extra_b=sip_extra("b"))
    pair.start()
    res: dict = {"samples": [], "errors": [], "directions": []}
    with pair:
        start_converged(pair)
        if not wait_for(lambda: sip_ports_idle(pair.a) and sip_ports_idle(pair.b), 60.0, poll=0.1):
            raise RuntimeError(f"SIP ports not idle on both nodes within 60s: {pair.states()}")
        t_conv = time.time()
        tails = {"a": EventTail(pair.a), "b": EventTail(pair.b)}
        for i in range(runs):
            jitter(ping)
            active = wait_for(lambda: (lambda n: n if n and sip_ports_idle(pair.a)
                                       and sip_ports_idle(pair.b) else None)(settled(pair, no_hold=True)),
                              15.0, poll=0.02)
            if not active:
                res["errors"].append(f"run {i + 1}: pair not settled or SIP ports busy: {pair.states()}")
                log(f"sip {i + 1}/{runs}: ERROR pair not settled; skipped")
                continue
            target = other(active)
            port = load_config(pair.node(target).config).ports.sip.sip_port
            r = sipp_call(workdir / "sipp", port)
            if r.get("error") or not (r["by"] or "").startswith(f"{target}-"):
                res["errors"].append(f"run {i + 1}: call on {target}: {r.get('error') or r}")
                log(f"sip {i + 1}/{runs}: ERROR on {target}: {r.get('error') or r}")
                continue
            took = r["answer_wall"] - r["invite_wall"]
            extra = record_call(res, tails, target, r["invite_wall"], took)
            log(f"sip {i + 1}/{runs}: on {target} 200 OK after {took * 1000:.1f} ms{extra}")
        res["unexpected"] = unexpected_activations(pair, t_conv, len(res["samples"]))
        res["priority"] = priority_report(pair)
    return res


def bench_soak(workdir: Path, profile: str, seconds: float, stress: bool, cpus: int,
               relay: bool = False) -> dict:
    # No cut is needed, so by default the nodes talk directly (relay=False): heartbeats then do
    # not pass through a Python thread of this process, which runs with normal scheduling.
    pair = start_pair(workdir, profile, relay=relay)
    res: dict = {"seconds": seconds, "stress": stress, "relay": relay}
    calls: list[dict] = []
    ages: dict[str, list[float]] = {"a": [], "b": []}
    max_age = {"a": 0.0, "b": 0.0}
    states_seen: list[tuple[float, dict]] = []
    status_failures = 0
    stop = threading.Event()
    current_active = {"name": "a"}

    with pair:
        start_converged(pair, primary=True)
        t0 = time.time()
        baseline = {"a": "active", "b": "inactive"}
        log(f"soak: converged (a active); {seconds:.0f}s{' under stress-ng' if stress else ''}")

        def poller() -> None:
            nonlocal status_failures
            last = dict(baseline)
            while not stop.is_set():
                for n in (pair.a, pair.b):
                    st = n.status()
                    if st is None:
                        status_failures += 1
                        continue
                    age = st["peer"]["last_heartbeat_age_s"]
                    if age is not None:
                        ages[n.name].append(age)
                        max_age[n.name] = max(max_age[n.name], age)
                    s = st["node"]["state"]
                    if s != last[n.name]:
                        states_seen.append((time.time(), {"node": n.name, "from": last[n.name], "to": s}))
                        last[n.name] = s
                    if s == "active":
                        current_active["name"] = n.name
                stop.wait(0.05)

        th = threading.Thread(target=poller, name="status-poller", daemon=True)
        with (Stress(cpus, seconds + 30, workdir) if stress else NoStress()):
            th.start()
            try:
                end = t0 + seconds
                k = 0
                while time.time() < end:
                    k += 1
                    name = current_active["name"]
                    r = place(pair.loop_port(name), f"soak-{k}")
                    calls.append({"node": name, "latency": r["latency"], "ev": r["reply"].get("ev"),
                                  "reason": r["reply"].get("reason") or r["reply"].get("message")})
                    nxt = t0 + k  # one call per second, on the second
                    time.sleep(max(0.0, min(nxt, end) - time.time()))
            finally:
                stop.set()
                th.join(timeout=10)
        t_end = time.time()
        recs = all_events(pair, t0)
        res["scheduling"] = priority_report(pair)

    counts: dict[str, int] = {}
    notable: dict[str, int] = {}
    first: list[str] = []
    for r in recs:
        e = r.get("event", "?")
        if e in ANOMALIES:
            counts[e] = counts.get(e, 0) + 1
            if len(first) < 10:
                first.append(f"{r.get('ts', 0) - t0:.3f}s {r.get('node')} {e}: {r.get('message')}")
        if r.get("level") in ("warning", "error"):
            notable[e] = notable.get(e, 0) + 1
    moves, move_list = role_moves(recs, t0, "a")
    fences: list[str] = []
    for r in recs:
        if is_self_fence(r):
            fences.append(f"{r.get('ts', 0) - t0:.3f}s {r.get('node')}: {r.get('message')}")
    holder, polled_moves = "a", 0
    for _, d in states_seen:
        if d["to"] == "active" and d["node"] != holder:
            polled_moves, holder = polled_moves + 1, d["node"]
    answered = [c for c in calls if c["ev"] == "answered"]
    lat = [c["latency"] for c in answered if c["latency"] is not None]
    res.update({
        "elapsed_s": round(t_end - t0, 3),
        "anomaly_records": counts,
        "state_changes": len(states_seen),
        "state_change_list": [{"t_s": round(t - t0, 3), **d} for t, d in states_seen[:20]],
        "first_anomalies": first,
        "warning_events": notable,
        # definitions version 2 (module docstring): role moves and self-fences from the event
        # logs, stalls apart; the polled state changes above are a cross-check only
        "role_moves": moves,
        "role_move_list": move_list[:20],
        "self_fences": len(fences),
        "self_fence_list": fences[:20],
        "stalls": counts.get("stall", 0),
        "max_stall_s": max(((r.get("fields") or {}).get("stall_s", 0) for r in recs
                            if r.get("event") == "stall"), default=0.0),
        "role_moves_polled": polled_moves,
        "calls_placed": len(calls),
        "calls_answered": len(answered),
        "calls_failed": [c for c in calls if c["ev"] != "answered"][:20],
        "call_latencies": lat,
        "max_heartbeat_age_s": round(max(max_age.values()), 4),
        "max_heartbeat_age_by_node_s": {k: round(v, 4) for k, v in max_age.items()},
        "heartbeat_age_p99_s": round(percentile(ages["a"] + ages["b"], 99) or 0.0, 4),
        "status_polls": len(ages["a"]) + len(ages["b"]),
        "status_failures": status_failures,
    })
    return res


# --------------------------------------------------------------------------- one profile


PING = {"default": 0.1, "fast": 0.02}
# (--only name, key prefix, function)
SCENARIOS = (("crash", "crash", bench_crash), ("link", "link", bench_link),
             ("call", "call", bench_call), ("sip", "sip_call_at_inactive", bench_sipcall))


def run_profile(profile: str, args, workdir: Path) -> dict:
    prefix = "" if profile == "default" else f"{profile}_"
    ping = PING[profile]
    out: dict = {}
    wd = workdir / profile
    wd.mkdir(parents=True, exist_ok=True)
    runs_stress = Stress(args.stress_cpus, 24 * 3600, wd) if args.stress_runs else NoStress()
    unexpected = 0
    if args.runs > 0:
        with runs_stress:
            for only, name, fn in SCENARIOS:
                if only not in args.only:
                    continue
                log(f"--- {profile}: {name} x {args.runs}")
                try:
                    r = fn(wd / name, profile, args.runs, ping)
                except RuntimeError as e:  # the pair never converged: no runs at all
                    log(f"{name}: FAILED {e}")
                    out[f"{prefix}{name}_failed"] = str(e)
                    continue
                summary(f"{prefix}{name}", r["samples"], out)
                out[f"{prefix}{name}_samples_s"] = [round(x, 6) for x in r["samples"]]
                out[f"{prefix}{name}_errors"] = len(r["errors"])
                out[f"{prefix}{name}_error_list"] = r["errors"][:20]
                for part, xs in r.get("parts", {}).items():
                    summary(f"{prefix}{name}_{part}", xs, out)
                if "heal" in r:
                    summary(f"{prefix}{name}_heal", r["heal"], out, digits=3)
                    out[f"{prefix}link_heal_errors"] = r["heal_errors"]
                if "directions" in r:
                    out[f"{prefix}{name}_directions"] = r["directions"]
                out[f"{prefix}scheduling"] = r["priority"]
                out[f"{prefix}{name}_unexpected_activations"] = r["unexpected"]
                unexpected += r["unexpected"]
        out[f"{prefix}runs_unexpected_activations"] = unexpected
    if args.soak:
        log(f"--- {profile}: soak {args.soak:.0f}s, stress={args.stress}")
        s = bench_soak(wd / "soak", profile, args.soak, args.stress, args.stress_cpus,
                       relay=args.soak_relay)
        lat = s.pop("call_latencies")
        summary(f"{prefix}soak_call", lat, out)
        for k, v in s.items():
            out[f"{prefix}soak_{k}"] = v
        # the headline keys (definitions version 2, module docstring)
        out[f"{prefix}false_failovers"] = s["role_moves"]
        out[f"{prefix}self_fences"] = s["self_fences"]
        out[f"{prefix}stalls"] = s["stalls"]
        out[f"{prefix}max_stall_s"] = s["max_stall_s"]
        out[f"{prefix}soak_passed"] = s["role_moves"] == 0 and s["self_fences"] == 0
        out[f"{prefix}soak_source"] = f"soak {args.soak:.0f}s" + (" stressed" if args.stress else "")
    else:  # nothing was measured without a fault: no figure, not a zero
        for k in ("false_failovers", "self_fences", "stalls", "max_stall_s", "soak_passed"):
            out[f"{prefix}{k}"] = None
        out[f"{prefix}soak_source"] = "no soak"
    return out


def code_version() -> dict:
    """The commit the code was run from, and the product files that differed from it (a run
    on uncommitted changes says so)."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True,
                                  timeout=10).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""
    dirty = git("status", "--porcelain", "--", "failover", "telephony", "integrations",
                "bench/bench_failover.py")
    return {"commit": git("rev-parse", "HEAD") or None,
            "uncommitted": [ln[3:] for ln in dirty.splitlines()]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="runs of each scenario (0: none)")
    ap.add_argument("--json", required=True, type=Path, help="write the results here")
    ap.add_argument("--profile", choices=("default", "fast", "both"), default="default",
                    help="timing profile; fast results carry the prefix fast_; both = default then fast")
    ap.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                    help="after the runs, idle the pair this long with a call every second")
    ap.add_argument("--stress", action="store_true", help="load the CPUs with stress-ng during the soak")
    ap.add_argument("--stress-runs", action="store_true", help="also load the CPUs during the runs")
    ap.add_argument("--soak-relay", action="store_true",
                    help="soak with the node link through the harness relay (default: direct TCP)")
    ap.add_argument("--stress-cpus", type=int, default=2, help="stress-ng --cpu N (default 2)")
    ap.add_argument("--only", default="crash,link,call,sip",
                    help="comma-separated subset of crash,link,call,sip (default all)")
    ap.add_argument("--workdir", type=Path, help="keep the pairs' files here (default: a temp dir, removed)")
    ap.add_argument("--seed", type=int, help="seed of the random pause before each trigger")
    args = ap.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if bad := set(args.only) - {only for only, _, _ in SCENARIOS}:
        ap.error(f"--only: unknown scenario(s) {sorted(bad)}")
    if args.stress and not args.soak:
        ap.error("--stress loads the CPUs during the soak: give --soak SECONDS (or use --stress-runs)")
    if args.runs < 0 or args.soak < 0:
        ap.error("--runs and --soak must not be negative")
    if args.seed is not None:
        random.seed(args.seed)

    def on_term(signum, frame):  # run the finally blocks: every process is stopped by PID
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)

    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vmha-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    profiles = ["default", "fast"] if args.profile == "both" else [args.profile]
    out: dict = {
        "benchmark": "failover",
        "definitions_version": DEFINITIONS_VERSION,
        "profile": args.profile,
        "runs": args.runs,
        "soak_s": args.soak,
        "stress": args.stress,
        "stress_runs": args.stress_runs,
        "soak_relay": args.soak_relay,
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "python": platform.python_version(),
        "code": code_version(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_start": list(os.getloadavg())},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "percentile_method": "nearest rank",
    }
    try:
        for prof in profiles:
            out.update(run_profile(prof, args, workdir))
    except BaseException as e:
        out["error"] = f"{type(e).__name__}: {e}"  # results of this profile are lost
        raise
    finally:
        out["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        out["machine"]["loadavg_end"] = list(os.getloadavg())
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        log(f"results written to {args.json}")
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    soak_keys = {f"{p}{k}" for p in ("", "fast_")
                 for k in ("false_failovers", "self_fences", "stalls", "max_stall_s", "soak_passed")}
    headline = {k: out.get(k) for k in out
                if k in soak_keys
                or (k.endswith(("_p50_s", "_p95_s", "_p99_s", "_max_s", "_errors"))
                    and not any(x in k for x in ("_detect", "_persist", "_confirm", "heal_", "soak_")))}
    print(json.dumps(headline, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
