#!/usr/bin/env python3
"""SIP ports benchmark (docs/benchmarks.md, "SIP ports").

::

    python bench/bench_sip.py --json bench/results/sip-run1.json          # full run (~15 min)
    python bench/bench_sip.py --quick --json /tmp/sip-quick.json          # smoke run (~3 min)

A real pair (``lab.pair.Pair``: node managers, messaging services, pjsua2 worker
processes) on 127.0.0.1; the callers are SIPp processes (scenarios in ``bench/sipp/``), every
call is a forwarded call (Diversion) that gets the greeting, the beep and a recording, and
leaves a message in the Maildir store.

concurrent  a capacity search: steps of ``--steps`` concurrent calls (default 64, 128, 144,
            192, 256, each at most ``--max``, default 256), tried in increasing order.  A step sets up
            its calls at ``--ramp`` calls/s, spread round-robin over the node's worker ports
            (SIPp ``setdest``, one line of the injection file per call), each held
            ``ramp time + --hold`` seconds while streaming a looping tone, so all of them are
            up together for ``--hold`` s; then the caller sends BYE.  A step passes with 0
            failed calls in SIPp, 0 calls hung up early by the node, and one message per call
            in the store whose recording covers the whole hold.  The search stops at the first
            step that fails (or after the last step).  **``max_concurrent_calls``** = the
            largest step that passed before the first failing one (0 if the first failed);
            ``max_concurrent_limited_by`` says why the search stopped (``failure`` or
            ``max``).  Node a has ``--max`` SIP ports (rounded up to whole workers), their
            RTP ports contiguous (``telephony.sip.settings.rtp_span``: 4 a port).  Result
            files before this definition searched ``--max`` 216 with steps 48, 96, 144,
            192, 216 (the layout of 1000 RTP ports a worker allowed 55 workers).
            Each step (and each cps rate) also lists ``node_events``: node a's events from
            the step's start to its end that end calls without the caller (``service_kill``,
            ``service_down``, ``service_start``, ``sip_worker_restart``, ``stall``,
            ``deactivated``), as "+S.SSS s event: message" from the step's start, so a
            failing step says whether the node killed its own messaging service (a service
            that sent no health report for ``service.health_timeout``: its workers then hang
            up every call they hold) or the calls ended otherwise.
            Result files before this definition have ``concurrent_calls`` instead: the
            largest of steps tried in *decreasing* order from 144 until one passed (a
            pass/fail at the target, not a search); they keep that key and meaning.
cps         short calls (``--cps-call`` s, default 2) at ``--cps-rates`` calls/s (default
            10, 20, ... 70) for ``--cps-period`` s each, spread round-robin over the
            workers; ``cps`` = the highest rate with 0 failed calls (stops at the first
            rate that fails).
resources   VmRSS and utime+stime (/proc) of the worker processes (the SIP workers of the
            active node's messaging service) and of the service: idle, and in the middle of each
            step's hold (the CPU over a ``--sample`` s window); reported for the step with
            ``--calls`` calls (default 144), or the largest step that passed if the search
            did not reach it (``resources_step``; ``resources_calls_up`` says how many calls
            SIPp had up during the sample).
memory      of the idle workers (right after the pair is up, before any call), from
            /proc/PID/smaps_rollup: **``pss_per_worker_mb``** = the median over the workers
            of Pss (the proportional set size: each page shared by k processes counts 1/k
            in each, so the workers' sum is what they take together),
            **``uss_per_worker_mb``** = the median of Private_Clean + Private_Dirty (the
            unique set size: what stopping that one worker would free),
            ``pss_workers_idle_total_mb`` = the sum of the workers' Pss,
            ``pss_forkserver_mb`` = the Pss of the service's other children (the SIP
            fork server the workers are forked from, which shares its pages with them;
            null without one); workers are found with
            ``telephony.sip.forkserver.worker_pids``; next to
            ``rss_per_worker_mb`` (the median VmRSS, every shared page counted in full in
            each worker: its meaning unchanged).  MB = 2**20 bytes.  Defined before any run
            that reports them; a file without them was made before.
failover    a fresh pair with ``--failover-ports`` ports on each node behind kamailio
            (``lab.sip.KamailioPbx``: a's workers first, b's when a does not answer);
            calls of ``--failover-hold`` s at ``--failover-rate`` calls/s; once the calls are
            up, ``kill -9`` of a's messaging service.  ``failover_failed_calls`` = calls SIPp
            counts failed + calls the node hung up before the hold was over;
            ``failover_answer_s`` = kill -> the first 200 from one of b's workers seen by SIPp
            (wall clock of both).  Without ``lab.sip`` the load goes straight to a's
            workers and, after the kill, a SIPp caller dials b's workers (said in the JSON).

Clocks: ``time.time()`` in this process and SIPp's ``gettimeofday`` (the same wall clock);
durations of the bench itself with ``time.monotonic()``.  No timing is judged: this is a
measurement.  Every process started (the pair, SIPp, kamailio) is stopped by its PID at the
end, also after an error or Ctrl-C; worker processes left over by a killed service too.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from failover.config import load_config  # noqa: E402
from lab.pair import Pair, free_udp_block, kill_quietly, pid_alive, udp_block_free  # noqa: E402
from lab.sip import write_tone_ulaw  # noqa: E402
from telephony.sip.forkserver import worker_pids  # noqa: E402
from telephony.sip.settings import rtp_span  # noqa: E402

SCENARIOS = Path(__file__).resolve().parent / "sipp"
TICK = os.sysconf("SC_CLK_TCK")
PER_WORKER = 4  # the pjsua2 wheel holds 4 calls per process
EXT0 = 4000     # subscribers 4000, 4001, ...
TONE_HZ = 1250.0
TONE_WAV: list[Path] = []  # the caller's audio, written once per run

# ============================================================================ processes

_PROCS: dict[int, str] = {}   # pid -> what, for the cleanup
_PAIRS: list[Pair] = []
_EXTRA_PIDS: set[int] = set()  # worker processes seen, stopped by PID at the end


def cleanup() -> None:
    for pid in list(_PROCS):
        kill_quietly(pid, signal.SIGTERM)
    t = time.monotonic() + 3
    while time.monotonic() < t and any(pid_alive(p) for p in _PROCS):
        time.sleep(0.05)
    for pid in list(_PROCS):
        kill_quietly(pid)
    _PROCS.clear()
    for pair in _PAIRS:
        try:
            pair.stop()
        except Exception as e:  # noqa: BLE001 - go on stopping the rest
            print(f"stopping a pair: {e}", file=sys.stderr)
    _PAIRS.clear()
    for pid in list(_EXTRA_PIDS):  # workers of a killed service that did not exit by themselves
        if pid_alive(pid):
            kill_quietly(pid)
    _EXTRA_PIDS.clear()


def _sigterm(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


# ============================================================================ ports and files

def rtp_bases(count_a: int, count_b: int) -> tuple[int, int]:
    """RTP bases for a and b: each node's RTP ports are one contiguous block
    (``telephony.sip.settings.rtp_span``, 4 a SIP port), b's right above a's, both even and
    below the kernel's ephemeral range; the whole block is checked free now."""
    import random

    span_a = rtp_span(0, PER_WORKER, count_a)[1] + 1
    span_b = rtp_span(0, PER_WORKER, count_b)[1] + 1
    need = span_a + span_b
    lo = min(int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]), 65536)
    top = lo - need if lo - need > 10000 else 65536 - need
    for _ in range(200):
        base = random.randrange(10000, top, 2)
        if udp_block_free(base, need):
            return base, base + span_a
    raise RuntimeError(f"no free block of {need} UDP ports for RTP")


def scenario(cwd: Path, name: str, hold_s: float) -> Path:
    """A copy of bench/sipp/``name`` in ``cwd`` with the hold (BYE timeout) set."""
    text = (SCENARIOS / name).read_text()
    assert 'timeout="30000"' in text
    out = cwd / f"{Path(name).stem}-{int(hold_s * 1000)}.xml"
    out.write_text(text.replace('timeout="30000"', f'timeout="{int(hold_s * 1000)}"'))
    return out


# ============================================================================ statistics

def pct(samples: list[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not samples:
        return None
    s = sorted(samples)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def dist(prefix: str, samples: list[float], unit: str = "ms", digits: int = 1) -> dict:
    return {f"{prefix}_p50_{unit}": _r(pct(samples, 50), digits),
            f"{prefix}_p95_{unit}": _r(pct(samples, 95), digits),
            f"{prefix}_max_{unit}": _r(max(samples) if samples else None, digits),
            f"{prefix}_samples": len(samples)}


def _r(v, digits):
    return None if v is None else round(v, digits)


# ============================================================================ SIPp

class SippRun:
    """One SIPp UAC run in its own folder; stats from -trace_stat, setup times from
    -trace_rtt, who answered when from -trace_logs."""

    def __init__(self, cwd: Path, xml: Path, target: str, *, calls: int, rate: float,
                 limit: int, csv_lines: list[str], timeout: float) -> None:
        self.cwd = cwd
        cwd.mkdir(parents=True, exist_ok=True)
        shutil.copy(TONE_WAV[0], cwd / "tone.wav")
        (cwd / "calls.csv").write_text("SEQUENTIAL\n" + "\n".join(csv_lines) + "\n")
        self.port = free_udp_block(1)
        self.cmd = ["sipp", "-sf", str(xml), "-inf", str(cwd / "calls.csv"), target,
                    "-i", "127.0.0.1", "-p", str(self.port), "-mp", str(free_udp_block(4)),
                    "-s", "5000", "-r", f"{rate:g}", "-rp", "1000", "-l", str(limit),
                    "-m", str(calls), "-nostdin", "-trace_stat", "-stf", "stat.csv", "-fd", "1",
                    "-trace_rtt", "-rtt_freq", "1", "-trace_logs", "-trace_err",
                    "-max_socket", "4096"]
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> "SippRun":
        self.started_at = time.time()
        with open(self.cwd / "sipp.out", "wb") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        _PROCS[self.proc.pid] = "sipp"
        return self

    def wait(self) -> int:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            kill_quietly(self.proc.pid)
            rc = self.proc.wait()
            print(f"  SIPp killed after {self.timeout:.0f} s (guard)", file=sys.stderr)
        _PROCS.pop(self.proc.pid, None)
        return rc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_quietly(self.proc.pid)
            self.proc.wait()
        if self.proc is not None:
            _PROCS.pop(self.proc.pid, None)

    def current_calls(self) -> int | None:
        row = self._last_stat()
        return int(row["CurrentCall"]) if row else None

    def _last_stat(self) -> dict | None:
        path = self.cwd / "stat.csv"
        if not path.exists():
            return None
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        if len(lines) < 2:
            return None
        head = lines[0].rstrip(";").split(";")
        return dict(zip(head, lines[-1].rstrip(";").split(";"), strict=False))

    def stats(self) -> dict:
        row = self._last_stat() or {}
        get = lambda k: int(row.get(k, "0") or 0)  # noqa: E731
        rtt = []
        for f in self.cwd.glob("*_rtt.csv"):
            for ln in f.read_text().splitlines()[1:]:
                parts = ln.split(";")
                if len(parts) >= 2:
                    try:
                        rtt.append(float(parts[1]))
                    except ValueError:
                        pass
        answered = []  # (wall clock, worker name)
        for f in self.cwd.glob("*_logs.log"):
            for m in re.finditer(r"answered (\d+) by=(\S*) at=([\d.]+) ([\d.]+)", f.read_text()):
                answered.append((float(m.group(3)) + float(m.group(4)) / 1e6, m.group(2)))
        errors = ""
        for f in self.cwd.glob("*_errors.log"):
            errors += f.read_text(errors="replace")
        codes: dict[str, int] = {}
        for m in re.finditer(r"received 'SIP/2.0 (\d{3})", errors):
            codes[m.group(1)] = codes.get(m.group(1), 0) + 1
        for what in ("receive timeout", "Max retrans", "max retrans", "Unexpected"):
            n = errors.count(what)
            if n and what != "receive timeout":
                codes[what.lower()] = codes.get(what.lower(), 0) + n
        return {"created": get("TotalCallCreated"), "failure_replies": codes,
                "successful": get("SuccessfulCall(C)"), "failed": get("FailedCall(C)"),
                "callee_bye": get("callee_bye(C)"),
                "retransmissions": get("Retransmissions(C)"),
                "failed_max_udp_retrans": get("FailedMaxUDPRetrans(C)"),
                "failed_rejected": get("FailedCallRejected(C)"),
                "failed_unexpected": get("FailedUnexpectedMessage(C)"),
                "failed_timeout_recv": get("FailedTimeoutOnRecv(C)"),
                "peak_calls": None, "setup_ms": rtt, "answered": sorted(answered),
                "error_lines": [ln[:300] for ln in errors.splitlines()
                                if ln.strip() and "Maximum number of open sockets" not in ln][:6]}

    def peak_calls(self) -> int:
        path = self.cwd / "stat.csv"
        if not path.exists():
            return 0
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        if len(lines) < 2:
            return 0
        i = lines[0].split(";").index("CurrentCall")
        return max(int(ln.split(";")[i] or 0) for ln in lines[1:])


def sipp_version() -> str:
    out = subprocess.run(["sipp", "-v"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"SIPp v\S+", out)
    return m.group(0) if m else out.strip()[:80]


# ============================================================================ /proc

def workers_of(service: int | None) -> list[int]:
    """The SIP worker processes of messaging service ``service`` (forked by its fork server,
    or started by it directly): ``telephony.sip.forkserver.worker_pids``."""
    return worker_pids(service) if service else []


def service_procs(service: int | None) -> list[int]:
    """Every process under ``service`` to stop at the end: its children (the fork server,
    workers it started itself) and the workers."""
    return sorted(set(children(service)) | set(workers_of(service))) if service else []


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return sorted(out)


def smaps_mb(pid: int) -> tuple[float, float] | None:
    """(Pss, Uss) of ``pid`` in MB from /proc/PID/smaps_rollup (Uss = Private_Clean +
    Private_Dirty); None when the process is gone or the file unreadable."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    kb = {}
    for ln in text.splitlines()[1:]:
        parts = ln.split()
        if len(parts) >= 2 and parts[1].isdigit():
            kb[parts[0].rstrip(":")] = int(parts[1])
    if "Pss" not in kb:
        return None
    return kb["Pss"] / 1024, (kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)) / 1024


def rss_mb(pid: int) -> float | None:
    try:
        for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float | None:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(f[11]) + int(f[12])) / TICK  # utime, stime (fields 14, 15)


def sample(service: int, workers: list[int], seconds: float) -> dict:
    """RSS now; CPU (ms of CPU per wall second) over ``seconds``."""
    pids = [service, *workers]
    c0 = {p: cpu_s(p) for p in pids}
    t0 = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    c1 = {p: cpu_s(p) for p in pids}
    cpu = {p: (c1[p] - c0[p]) * 1000 / dt for p in pids if c0[p] is not None and c1[p] is not None}
    rss = {p: rss_mb(p) for p in pids}
    wr = [rss[p] for p in workers if rss[p] is not None]
    wc = [cpu[p] for p in workers if p in cpu]
    sm = [m for m in (smaps_mb(p) for p in workers) if m is not None]
    return {"workers": len(workers), "worker_rss_mb": wr, "worker_cpu_ms_per_s": wc,
            "worker_pss_mb": [m[0] for m in sm], "worker_uss_mb": [m[1] for m in sm],
            "service_rss_mb": rss[service], "service_cpu_ms_per_s": cpu.get(service),
            "loadavg": os.getloadavg()[0]}


# ============================================================================ the pair

def sip_section(count: int, sip_port: int, rtp_port: int) -> dict:
    return {"ports": {"sip": {"enabled": True, "bind": "127.0.0.1", "sip_port": sip_port,
                              "rtp_port": rtp_port, "count": count, "per_worker": PER_WORKER,
                              "mwi_target": "sip:{extension}@127.0.0.1:9",
                              "mwi_account": "sip:{extension}@vm.example"}}}


def messaging_section(max_message: float) -> dict:
    # a continuous tone never falls silent: the recording ends on the caller's BYE
    return {"messaging": {"max_message": max_message, "silence": 3.0, "min_message": 0.5}}


def start_pair(workdir: Path, count_a: int, count_b: int, max_message: float) -> Pair:
    wa, wb = -(-count_a // PER_WORKER), -(-count_b // PER_WORKER)
    ra, rb = rtp_bases(count_a, count_b)
    rtp = range(ra, rb + rtp_span(0, PER_WORKER, count_b)[1] + 1)

    def sip_block(n: int) -> int:  # the SIP ports of n workers, clear of both RTP blocks
        while True:
            base = free_udp_block(n)
            if base + n <= rtp.start or base >= rtp.stop:
                return base

    sa = sip_block(wa)
    sb = sip_block(wb)
    while sa <= sb < sa + wa or sb <= sa < sb + wb:
        sb = sip_block(wb)
    pair = Pair(workdir, extra=messaging_section(max_message),
                extra_a=sip_section(count_a, sa, ra), extra_b=sip_section(count_b, sb, rb))
    _PAIRS.append(pair)
    t0 = time.monotonic()
    pair.start()
    pair.wait_state("a", "active", timeout=60)
    pair.wait_state("b", "inactive", timeout=60)
    for name, workers in (("a", wa), ("b", wb)):  # every worker up (status: SIP ports idle)
        node = pair.node(name)
        pair.wait_for(lambda node=node, workers=workers, name=name:
                      len(workers_of(node.service_pid())) >= workers
                      and _workers_ready(pair, name), timeout=120, poll=0.2)
    pair.startup_s = time.monotonic() - t0  # type: ignore[attr-defined]
    return pair


def udp_bound() -> set[int]:
    """Local UDP ports bound on 127.0.0.1 (from /proc/net/udp)."""
    out = set()
    for ln in Path("/proc/net/udp").read_text().splitlines()[1:]:
        local = ln.split()[1]
        addr, port = local.split(":")
        if addr == "0100007F":
            out.add(int(port, 16))
    return out


def _workers_ready(pair: Pair, name: str) -> bool:
    """Every worker of the node listens on its SIP port."""
    return set(worker_ports(pair, name)) <= udp_bound()


def worker_ports(pair: Pair, name: str) -> list[int]:
    sp = load_config(pair.node(name).config).ports.sip
    return [sp.sip_port + i for i in range(-(-sp.count // sp.per_worker))]


def add_subscribers(pair: Pair, n: int) -> None:
    ops = [{"op": "put", "table": "subscribers", "row": {
        "extension": str(EXT0 + i), "name": f"Bench {EXT0 + i}", "mailbox": f"mb{EXT0 + i}",
        "mwi_method": "none", "notify": []}} for i in range(n)]
    for k in range(0, n, 200):
        r = pair.a.admin({"op": "db_write", "ops": ops[k:k + 200]}, timeout=30)
        assert r and r.get("ok"), r


def store_files(pair: Pair) -> set[Path]:
    root = load_config(pair.a.config).store.maildir
    return {p for p in root.glob("mb*/new/*")} | {p for p in root.glob("mb*/cur/*")}


def message_info(path: Path) -> dict:
    with open(path, "rb") as f:
        head = f.read(8192).split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0].decode("latin-1")
    dur = re.search(r"^X-VMHA-Duration:\s*([\d.]+)", head, re.MULTILINE | re.IGNORECASE)
    node = re.search(r"^X-VMHA-Node:\s*(\S+)", head, re.MULTILINE | re.IGNORECASE)
    return {"duration_s": float(dur.group(1)) if dur else 0.0,
            "node": node.group(1) if node else "?"}


def wait_messages(pair: Pair, before: set[Path], n: int, timeout: float) -> list[dict]:
    end = time.monotonic() + timeout
    while True:
        new = store_files(pair) - before
        if len(new) >= n or time.monotonic() > end:
            break
        time.sleep(0.5)
    time.sleep(1.0)  # a late straggler would show
    return [message_info(p) for p in store_files(pair) - before]


def rr_lines(ports: list[int], n: int, exts: int) -> list[str]:
    """Injection lines: call k -> worker k mod W, extension k mod exts."""
    return [f"{ports[k % len(ports)]};{EXT0 + k % exts}" for k in range(n)]


# ============================================================================ parts

NODE_EVENTS = ("service_kill", "service_down", "service_start", "sip_worker_restart", "stall",
               "deactivated")


def node_events(pair: Pair, since: float) -> list[str]:
    """Node a's events since ``since`` (wall clock) that end calls without the caller."""
    return [f"{e['ts'] - since:+.3f} s {e.get('event')}: {str(e.get('message', ''))[:160]}"
            for e in pair.a.events() if e.get("ts", 0) >= since and e.get("event") in NODE_EVENTS]


def concurrent_step(pair: Pair, tmp: Path, n: int, args, res_out: dict | None) -> dict:
    ramp_s = n / args.ramp
    hold_call = ramp_s + args.hold
    xml = scenario(tmp, "uac_hold.xml", hold_call)
    ports = worker_ports(pair, "a")
    before = store_files(pair)
    run = SippRun(tmp / f"concurrent-{n}", xml, f"127.0.0.1:{ports[0]}", calls=n,
                  rate=args.ramp, limit=n, csv_lines=rr_lines(ports, n, n),
                  timeout=hold_call + ramp_s + 120)
    print(f"concurrent {n}: ramp {ramp_s:.1f} s at {args.ramp:g}/s, each call {hold_call:.1f} s",
          file=sys.stderr, flush=True)
    since = time.time()
    run.start()
    mid = None
    if res_out is not None:  # resources in the middle of the hold, all calls up
        time.sleep(max(0.0, ramp_s + args.hold / 2 - args.sample / 2))
        svc = pair.a.service_pid()
        mid = sample(svc, workers_of(svc), args.sample)
        mid["sipp_current_calls"] = run.current_calls()
        res_out.update(mid)
    rc = run.wait()
    st = run.stats()
    peak = run.peak_calls()
    msgs = wait_messages(pair, before, n, 60)
    expect = hold_call - 1.15 - 1.0  # greeting + beep, 1 s margin for setup and the last frames
    short = [m["duration_s"] for m in msgs if m["duration_s"] < expect]
    ok = (rc == 0 and st["failed"] == 0 and st["successful"] == n and st["callee_bye"] == 0
          and len(msgs) == n and not short)
    out = {"calls": n, "ok": ok, "sipp_rc": rc, "successful": st["successful"],
           "failed": st["failed"], "callee_hung_up_early": st["callee_bye"], "peak_calls": peak,
           "messages": len(msgs), "messages_short": len(short),
           "message_s_min": _r(min((m["duration_s"] for m in msgs), default=None), 2),
           "message_s_expected_min": round(expect, 2), "call_s": round(hold_call, 2),
           "retransmissions": st["retransmissions"], **dist("setup", st["setup_ms"]),
           "failure_replies": st["failure_replies"], "errors": st["error_lines"],
           "node_events": node_events(pair, since)}
    print(f"  -> {json.dumps({k: v for k, v in out.items() if k != 'errors'})}", file=sys.stderr,
          flush=True)
    return out


def resources_under_load(idle: dict, load: dict, n: int) -> dict:
    """Memory and CPU of the workers and the service with ``n`` calls up, and per call (the
    difference to idle divided by the calls SIPp had up during the sample)."""
    out: dict = {}
    calls_up = load.get("sipp_current_calls") or n
    out["resources_calls_up"] = calls_up
    w_load_rss = sum(load["worker_rss_mb"])
    out["rss_workers_load_total_mb"] = round(w_load_rss, 1)
    out["rss_per_call_mb"] = round((w_load_rss - sum(idle["worker_rss_mb"])) / calls_up, 3)
    out["rss_service_load_mb"] = _r(load["service_rss_mb"], 1)
    out["rss_service_per_call_mb"] = _r((load["service_rss_mb"] - idle["service_rss_mb"]) / calls_up, 3)
    wl = sum(load["worker_cpu_ms_per_s"])
    sl = load["service_cpu_ms_per_s"] or 0.0
    out["cpu_workers_load_total_ms_per_s"] = round(wl, 1)
    out["cpu_service_load_ms_per_s"] = round(sl, 1)
    out["cpu_per_call_workers_ms_per_s"] = round((wl - sum(idle["worker_cpu_ms_per_s"])) / calls_up, 2)
    out["cpu_per_call_service_ms_per_s"] = round(
        (sl - (idle["service_cpu_ms_per_s"] or 0.0)) / calls_up, 2)
    out["cpu_per_call_ms_per_s"] = round(out["cpu_per_call_workers_ms_per_s"]
                                         + out["cpu_per_call_service_ms_per_s"], 2)
    out["rss_worker_load_p50_mb"] = _r(pct(load["worker_rss_mb"], 50), 1)
    out["rss_worker_load_max_mb"] = _r(max(load["worker_rss_mb"]), 1)
    out["loadavg_under_load"] = load["loadavg"]
    return out


def cps_rate(pair: Pair, tmp: Path, rate: float, args) -> dict:
    n = int(rate * args.cps_period)
    xml = scenario(tmp, "uac_hold.xml", args.cps_call)
    ports = worker_ports(pair, "a")
    before = store_files(pair)
    run = SippRun(tmp / f"cps-{rate:g}", xml, f"127.0.0.1:{ports[0]}", calls=n, rate=rate,
                  limit=100000, csv_lines=rr_lines(ports, n, len(ports) * PER_WORKER),
                  timeout=args.cps_period * 3 + args.cps_call + 120)
    t0, since = time.monotonic(), time.time()
    run.start()
    rc = run.wait()
    took = time.monotonic() - t0
    st = run.stats()
    msgs = wait_messages(pair, before, n, 30)
    ok = rc == 0 and st["failed"] == 0 and st["successful"] == n and st["callee_bye"] == 0
    out = {"rate": rate, "calls": n, "ok": ok, "sipp_rc": rc, "successful": st["successful"],
           "failed": st["failed"], "failed_rejected": st["failed_rejected"],
           "failed_max_udp_retrans": st["failed_max_udp_retrans"],
           "callee_hung_up_early": st["callee_bye"], "peak_calls": run.peak_calls(),
           "messages": len(msgs), "sipp_s": round(took, 1),
           "retransmissions": st["retransmissions"], **dist("setup", st["setup_ms"]),
           "loadavg": os.getloadavg()[0], "failure_replies": st["failure_replies"],
           "errors": st["error_lines"], "node_events": node_events(pair, since)}
    print(f"cps {rate:g}: {json.dumps({k: v for k, v in out.items() if k != 'errors'})}",
          file=sys.stderr, flush=True)
    return out


def failover_part(tmp: Path, args) -> dict:
    n_ports = args.failover_ports
    per_call = args.failover_hold
    total_calls = int(args.failover_rate * args.failover_run)
    pair = start_pair(tmp / "pair", n_ports, n_ports, per_call + 30)
    out: dict = {"failover_pair_startup_s": round(pair.startup_s, 1)}  # type: ignore[attr-defined]
    add_subscribers(pair, n_ports)
    time.sleep(2.5)  # past the handover timeout: no start-up transient
    a_ports, b_ports = worker_ports(pair, "a"), worker_ports(pair, "b")
    pbx = None
    try:
        from lab.sip import KamailioPbx
    except ImportError as e:
        KamailioPbx = None  # noqa: N806
        out["failover_pbx"] = (f"none (lab.sip not importable: {e}); load sent to a's workers, "
                               "then b dialled directly")
    before = store_files(pair)
    lines = rr_lines(a_ports, total_calls, n_ports)
    if KamailioPbx is not None:
        kdir = tmp / "kamailio"
        kdir.mkdir()
        kport = free_udp_block(1)
        pbx = KamailioPbx(kdir, port=kport, primary=[("127.0.0.1", p) for p in a_ports],
                          secondary=[("127.0.0.1", p) for p in b_ports],
                          fr_timer_ms=args.fr_timer_ms)
        pbx.start()
        kpid = getattr(pbx, "pid", None) or getattr(getattr(pbx, "proc", None), "pid", None)
        if kpid:
            _PROCS.setdefault(kpid, "kamailio")
        out["failover_pbx"] = f"kamailio {pbx.address} (lab.sip.KamailioPbx, fr_timer {args.fr_timer_ms} ms)"
        xml = scenario(tmp, "uac_proxy_hold.xml", per_call)
        lines = [f"{EXT0 + k % n_ports}" for k in range(total_calls)]
        target = pbx.address
    else:
        xml = scenario(tmp, "uac_hold.xml", per_call)
        target = f"127.0.0.1:{a_ports[0]}"
    try:
        run = SippRun(tmp / "failover", xml, target, calls=total_calls, rate=args.failover_rate,
                      limit=100000, csv_lines=lines, timeout=args.failover_run + per_call + 180)
        svc_a = pair.a.service_pid()
        workers_a = workers_of(svc_a)
        _EXTRA_PIDS.update(service_procs(svc_a))
        _EXTRA_PIDS.update(service_procs(pair.b.service_pid()))
        run.start()
        time.sleep(args.failover_kill_at)
        states = pair.states()  # must be a active, b inactive: else a's ports were full
        kill_ts = time.time()
        os.kill(svc_a, signal.SIGKILL)
        print(f"failover: kill -9 of a's service (pid {svc_a}); states before: {states}",
              file=sys.stderr, flush=True)
        direct = None
        if KamailioPbx is None:  # nobody routes to b: dial b's workers from now on
            blines = rr_lines(b_ports, total_calls, n_ports)
            left = max(1, int(args.failover_rate * (args.failover_run - args.failover_kill_at)))
            direct = SippRun(tmp / "failover-b", scenario(tmp, "uac_hold.xml", per_call),
                             f"127.0.0.1:{b_ports[0]}", calls=left, rate=args.failover_rate,
                             limit=100000, csv_lines=blines[:left],
                             timeout=args.failover_run + per_call + 180).start()
            run.stop()  # the load at a stops; its calls in progress are lost with a
        t_gone = time.monotonic() + 10
        while time.monotonic() < t_gone and any(pid_alive(p) for p in workers_a):
            time.sleep(0.05)
        out["failover_a_workers_alive_after_10s"] = sum(1 for p in workers_a if pid_alive(p))
        rc = run.wait()
        st = run.stats()
        if direct is not None:
            direct.wait()
            sd = direct.stats()
            for k in ("created", "successful", "failed", "callee_bye"):
                st[k] += sd[k]
            st["answered"] = sorted(st["answered"] + sd["answered"])
            st["setup_ms"] += sd["setup_ms"]
        b_answers = [t for t, who in st["answered"] if who.startswith("b-") and t > kill_ts]
        a_after = [t for t, who in st["answered"] if who.startswith("a-") and t > kill_ts]
        a_up = sum(1 for t, who in st["answered"]
                   if who.startswith("a-") and kill_ts - per_call < t < kill_ts)
        msgs = wait_messages(pair, before, st["successful"], 60)
        ev_b = pair.b.events()
        act = [e for e in ev_b if e.get("event") in ("failover", "failback", "startup")
               and e.get("ts", 0) > kill_ts]
        out.update({
            "failover_sipp_rc": rc, "failover_calls_offered": total_calls,
            "failover_calls_created": st["created"],
            "failover_states_before_kill": states,
            "failover_calls_up_on_a_at_kill": a_up,
            "failover_successful": st["successful"], "failover_sipp_failed": st["failed"],
            "failover_callee_hung_up_early": st["callee_bye"],
            "failover_failed_calls": st["failed"] + st["callee_bye"],
            "failover_answer_s": _r(min(b_answers) - kill_ts if b_answers else None, 3),
            "failover_b_active_s": _r(act[0]["ts"] - kill_ts if act else None, 4),
            "failover_answered_by_b_after_kill": len(b_answers),
            "failover_answered_by_a_after_kill": len(a_after),
            "failover_messages": len(msgs),
            "failover_messages_by_node": {k: sum(1 for m in msgs if m["node"] == k)
                                          for k in sorted({m["node"] for m in msgs})},
            **{f"failover_{k}": v for k, v in dist("setup", st["setup_ms"]).items()},
            "failover_failure_replies": st["failure_replies"],
            "failover_messages_lost": st["successful"] - len(msgs),
            "failover_errors": st["error_lines"],
            "failover_pbx_stats": _pbx_stats(pbx, kill_ts),
            "failover_b_events": [f"{e['ts'] - kill_ts:+.3f} s {e.get('event')}: {e.get('message', '')[:120]}"
                                  for e in ev_b if kill_ts - 1 < e.get("ts", 0) < kill_ts + 30
                                  and e.get("event") in ("activating", "failover", "failback",
                                                         "deactivated", "startup")],
            "failover_a_events": [f"{e['ts'] - kill_ts:+.3f} s {e.get('event')}: {e.get('message', '')[:120]}"
                                  for e in pair.a.events() if kill_ts - 1 < e.get("ts", 0) < kill_ts + 30
                                  and e.get("event") in ("activating", "failover", "failback",
                                                         "deactivated", "startup", "service_up",
                                                         "service_down")],
            "failover_ports": n_ports, "failover_rate": args.failover_rate,
            "failover_call_s": per_call, "failover_kill_at_s": args.failover_kill_at,
        })
        print(f"failover: {json.dumps({k: v for k, v in out.items() if k != 'failover_errors'})}",
              file=sys.stderr, flush=True)
    finally:
        if pbx is not None:
            kpid = pbx.pid
            pbx.stop()
            _PROCS.pop(kpid, None)
        for p in service_procs(pair.a.service_pid()) + service_procs(pair.b.service_pid()):
            _EXTRA_PIDS.add(p)
    return out


# ============================================================================ main

def run(args, tmp: Path) -> dict:
    out: dict = {"benchmark": "sip", "host": platform.node(), "cpus": os.cpu_count(),
                 "python": platform.python_version(), "platform": platform.platform(),
                 "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_start": os.getloadavg()[0],
                 "sipp": sipp_version(), "quick": args.quick,
                 "settings": {"ports": args.max, "per_worker": PER_WORKER,
                              "workers_a": -(-args.max // PER_WORKER), "max": args.max,
                              "resources_step": args.calls, "hold_s": args.hold,
                              "ramp_per_s": args.ramp, "steps": args.steps,
                              "cps_rates": args.cps_rates, "cps_period_s": args.cps_period,
                              "cps_call_s": args.cps_call, "sample_s": args.sample,
                              "silence_s": 3.0, "min_message_s": 0.5,
                              "caller_audio": f"continuous {TONE_HZ:g} Hz tone, G.711 mu-law, looped",
                              "subscribers_mwi_method": "none", "node_b_ports": args.b_ports}}
    write_tone_ulaw(tmp / "tone.wav", 1.0, TONE_HZ)
    TONE_WAV[:] = [tmp / "tone.wav"]
    only = set(args.only.split(","))
    if only & {"concurrent", "cps", "resources"}:
        max_msg = args.max / args.ramp + args.hold + 60
        out["settings"]["max_message_s"] = max_msg
        pair = start_pair(tmp / "pair1", args.max, args.b_ports, max_msg)
        out["pair_startup_s"] = round(pair.startup_s, 1)  # type: ignore[attr-defined]
        print(f"pair up in {pair.startup_s:.1f} s ({args.max} SIP ports on a)",
              file=sys.stderr, flush=True)
        add_subscribers(pair, args.max)
        time.sleep(2.5)
        svc = pair.a.service_pid()
        workers = workers_of(svc)
        _EXTRA_PIDS.update(service_procs(svc))
        _EXTRA_PIDS.update(service_procs(pair.b.service_pid()))
        idle = sample(svc, workers, args.sample)
        out["workers_started"] = len(workers)
        out["rss_per_worker_mb"] = _r(pct(idle["worker_rss_mb"], 50), 1)
        out["rss_workers_idle_total_mb"] = _r(sum(idle["worker_rss_mb"]), 1)
        out["pss_per_worker_mb"] = _r(pct(idle["worker_pss_mb"], 50), 1)
        out["uss_per_worker_mb"] = _r(pct(idle["worker_uss_mb"], 50), 1)
        out["pss_workers_idle_total_mb"] = _r(sum(idle["worker_pss_mb"]), 1)
        others = [m for m in (smaps_mb(p) for p in set(children(svc)) - set(workers)) if m]
        out["pss_forkserver_mb"] = _r(sum(m[0] for m in others), 1) if others else None
        out["rss_service_idle_mb"] = _r(idle["service_rss_mb"], 1)
        out["cpu_idle_per_worker_ms_per_s"] = _r(pct(idle["worker_cpu_ms_per_s"], 50), 2)
        out["cpu_idle_workers_total_ms_per_s"] = _r(sum(idle["worker_cpu_ms_per_s"]), 1)
        out["cpu_idle_service_ms_per_s"] = _r(idle["service_cpu_ms_per_s"], 1)
        print(f"idle: {out['rss_per_worker_mb']} MB RSS, {out['pss_per_worker_mb']} MB PSS, "
              f"{out['uss_per_worker_mb']} MB USS per worker, "
              f"{out['cpu_idle_workers_total_ms_per_s']} ms/s CPU for {len(workers)} workers",
              file=sys.stderr, flush=True)
        if only & {"concurrent", "resources"}:
            steps = sorted({s for s in args.steps if s <= args.max}) or [args.max]
            results = []
            loads: dict[int, dict] = {}
            for n in steps:
                loads[n] = {}
                res = concurrent_step(pair, tmp, n, args, loads[n])
                results.append(res)
                if not res["ok"]:
                    break
                time.sleep(5)  # let the step's calls and recordings finish before the next
            # resources: of the --calls step if it ran, else of the largest step that passed
            ran_ok = [r["calls"] for r in results if r["ok"]]
            at = args.calls if args.calls in loads else (max(ran_ok) if ran_ok else results[0]["calls"])
            if loads.get(at):
                out["resources_step"] = at
                out.update(resources_under_load(idle, loads[at], at))
            out["concurrent_steps"] = results
            passed = []
            for r in results:  # the steps that passed before the first failing one
                if not r["ok"]:
                    break
                passed.append(r)
            best = passed[-1] if passed else None
            out["max_concurrent_calls"] = best["calls"] if best else 0
            out["max_concurrent_limited_by"] = "failure" if len(passed) < len(results) else "max"
            out["first_failing_step"] = results[len(passed)]["calls"] if len(passed) < len(results) else None
            out["failed_calls"] = sum(r["failed"] + r["callee_hung_up_early"] for r in results)
            if best:
                out["concurrent_messages"] = best["messages"]
                out.update({k: best[k] for k in ("setup_p50_ms", "setup_p95_ms", "setup_max_ms",
                                                 "peak_calls", "message_s_min")})
        if "cps" in only:
            rates = []
            for r in args.cps_rates:
                res = cps_rate(pair, tmp, r, args)
                rates.append(res)
                if not res["ok"]:
                    break
                time.sleep(args.cps_call + 3)
            out["cps_runs"] = rates
            ok = [r["rate"] for r in rates if r["ok"]]
            out["cps"] = max(ok) if ok else 0
            out["cps_first_failing_rate"] = next((r["rate"] for r in rates if not r["ok"]), None)
            best = next((r for r in rates if r["ok"] and r["rate"] == out["cps"]), None)
            if best:
                out.update({f"cps_{k}": best[k] for k in ("setup_p50_ms", "setup_p95_ms",
                                                          "setup_max_ms", "peak_calls")})
        svc2 = pair.a.service_pid()
        out["worker_restarts_a"] = _restarts(pair)
        _EXTRA_PIDS.update(service_procs(svc2))
        pair.stop()
        _PAIRS.remove(pair)
    if "failover" in only:
        out.update(failover_part(tmp / "failover", args))
    out["loadavg_end"] = os.getloadavg()[0]
    return out


def _pbx_stats(pbx, kill_ts: float) -> dict | None:
    """kamailio's counters, its times made relative to the kill."""
    if pbx is None:
        return None
    st = pbx.stats()
    if not st:
        return None
    st["first_answer_after_kill_s"] = {d: round(t - kill_ts, 3) for d, t in
                                       st.pop("first_answer", {}).items() if t > kill_ts}
    st["down"] = [(d, round(t - kill_ts, 3)) for d, t in st.get("down", [])]
    st["up"] = [(d, round(t - kill_ts, 3)) for d, t in st.get("up", [])]
    return st


def _restarts(pair: Pair) -> int:
    return sum(1 for e in pair.a.events() if e.get("event") == "sip_worker_restart")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: --calls 16 --hold 10, two cps rates, a small failover")
    ap.add_argument("--max", type=int, default=256,
                    help="SIP ports on a, and the largest step of the capacity search")
    ap.add_argument("--steps", default="64,128,144,192,256",
                    help="capacity search: steps tried in increasing order until one fails")
    ap.add_argument("--calls", type=int, default=144,
                    help="the step whose hold is sampled for the resources figures")
    ap.add_argument("--hold", type=float, default=30.0, help="seconds all calls are up together")
    ap.add_argument("--ramp", type=float, default=10.0, help="calls/s while ramping up")
    ap.add_argument("--sample", type=float, default=10.0, help="CPU sampling window, seconds")
    ap.add_argument("--cps-rates", default="10,20,30,40,50,60,70")
    ap.add_argument("--cps-period", type=float, default=20.0)
    ap.add_argument("--cps-call", type=float, default=2.0, help="seconds a cps call lasts")
    ap.add_argument("--b-ports", type=int, default=4,
                    help="SIP ports on b during the concurrent/cps parts (b stands in for "
                         "another machine: few workers, so it does not eat a's CPU)")
    ap.add_argument("--failover-ports", type=int, default=48)
    ap.add_argument("--failover-rate", type=float, default=4.0)
    ap.add_argument("--failover-hold", type=float, default=10.0)
    ap.add_argument("--failover-run", type=float, default=30.0,
                    help="seconds of call starts in the failover part")
    ap.add_argument("--failover-kill-at", type=float, default=15.0)
    ap.add_argument("--fr-timer-ms", type=int, default=1000,
                    help="kamailio's wait for a reply before trying b")
    ap.add_argument("--only", default="concurrent,resources,cps,failover")
    ap.add_argument("--workdir", help="keep the files here (default: a temporary directory)")
    args = ap.parse_args()
    if args.quick:
        args.max, args.calls, args.hold, args.steps = 16, 8, 10.0, "8,16"
        args.cps_rates, args.cps_period, args.sample = "2,4", 10.0, 4.0  # 16 ports: ~6/s at most
        args.failover_ports, args.failover_run, args.failover_kill_at = 16, 12.0, 7.0
        args.failover_hold, args.failover_rate = 6.0, 2.0
    args.steps = [int(s) for s in str(args.steps).split(",") if s]
    args.cps_rates = [float(s) for s in str(args.cps_rates).split(",") if s]
    if shutil.which("sipp") is None:
        print("SIPp is not installed (apt-get install sip-tester)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _sigterm)
    t0 = time.monotonic()
    if args.workdir:
        tmp = Path(args.workdir)
        tmp.mkdir(parents=True, exist_ok=True)
        keep = True
    else:
        tmp = Path(tempfile.mkdtemp(prefix="vmha-bench-sip-", dir="/tmp"))
        keep = False
    try:
        out = run(args, tmp)
    finally:
        cleanup()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    out["bench_wall_s"] = round(time.monotonic() - t0, 1)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    summary = {k: out.get(k) for k in ("max_concurrent_calls", "max_concurrent_limited_by",
                                       "failed_calls", "cps",
                                       "rss_per_worker_mb", "pss_per_worker_mb",
                                       "uss_per_worker_mb", "rss_per_call_mb",
                                       "cpu_per_call_ms_per_s", "failover_failed_calls",
                                       "failover_answer_s", "loadavg_start", "loadavg_end",
                                       "bench_wall_s")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
