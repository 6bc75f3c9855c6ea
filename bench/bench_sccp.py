#!/usr/bin/env python3
"""SCCP ports benchmark (docs/benchmarks.md, "SCCP ports").

::

    python bench/bench_sccp.py --json bench/results/sccp-run1.json        # full run (~4 min)
    python bench/bench_sccp.py --quick --json /tmp/sccp-quick.json        # smoke run (~1.5 min)
    python bench/bench_sccp.py --only register --runs 10 --json /tmp/r.json

A real pair (``lab.pair.Pair``: node managers, messaging services) on 127.0.0.1 whose voice
ports are SCCP stations (``[ports.sccp]``, integration profile ``cucm-sccp``), registered with
the CallManager simulator ``lab.callmanager`` run as its own process (``python -m
lab.callmanager``, stopped by its PID).  Node ``a`` has the ports measured (device names
``CiscoUM1-VI1`` ...); node ``b`` stands in for the second machine with ``--b-ports`` ports
(``CiscoUM2-VI1`` ...) on the same simulator, so that it does not take ``a``'s CPU.  Every call
is a forwarded call (``CallInfo`` with call type FORWARD, original called party and last
redirecting party = a subscriber's extension, redirect reason 2 = no answer): the port answers,
plays the greeting and the beep, records the caller until the caller hangs up and stores one
message in the Maildir store.  The caller's audio is a continuous 1250 Hz tone (bench_sip's),
8 kHz 16-bit WAV, longer than the longest call, so it never falls silent and the recording ends
on the caller's hang-up.  The subscribers (extensions 4000 ...) have ``mwi_method = "none"``:
lamps are not part of this benchmark.

Load generation (decision): ONE simulator process carries every call of a step, signalling
and RTP in both directions (the caller's tone to the port, the port's audio back to the
simulator's receiver).  ``[ports.sccp] servers`` is one list for all ports of a node, so the
ports of one node cannot be spread over several simulator processes without the simulator
refusing devices and the stations hunting past it, which would measure the refusals.  The
simulator shares the 2 CPUs with the pair; its CPU during the hold is recorded
(``sim_cpu_ms_per_s`` per step) and a step whose simulator used more than 900 ms of CPU per
second is flagged (``sim_saturated``): a figure of that step may be the simulator's.  The
calls are placed by one thread per call of this process, each with its own control
connection (``CallManagerClient``), each ringing one chosen device (``call(...,
device=NAME)``: call *k* of a step rings ``a``'s port *k* + 1, so no two calls meet at one
port and hunting does not enter the figure).

Key definitions, version 1 (``definitions_version``: 1; fixed here and in docs/benchmarks.md
before the first run; a changed definition gets a new key):

``concurrent_calls``
          a capacity search.  Node ``a`` has ``--max`` SCCP ports (``[ports.sccp] count``).
          Steps of n concurrent calls (``--steps``, default 48, 96, 144, 192, each at most
          ``--max``) are tried in increasing order.  A step places its n calls at ``--ramp``
          calls/s; call *k* (0-based) is held ``n / ramp + --hold`` seconds from its answer
          (``hang_up_after``), so all n are up together for about ``--hold`` s, and then the
          simulator (the caller) hangs up.  A call FAILS when any of these holds: the
          simulator's ``call`` raised or returned an error; it was not answered; it was
          ended by the port (OnHook from the station) before the caller hung up; the
          simulator received no RTP packet from the port; no new message for it reached the
          store within 60 s of the step's end; or its message's ``X-VMHA-Duration`` is
          shorter than the call's hold − 1.15 s (greeting and beep) − 1 s (margin).  The
          messages are counted per step (n new messages needed, each long enough).  A step
          PASSES with 0 failed calls.  ``concurrent_calls`` = the largest step that passed
          before the first failing one (0 if the first failed); ``concurrent_limited_by`` =
          ``failure`` (a step failed) or ``max`` (every step passed: the capacity is at least
          that); ``first_failing_step``; ``failed_calls`` sums every step.  The step size is
          the figure's resolution.  Goal: >= 144.
``rtp_jitter_p99_ms``
          what OUR ports send, seen at the simulator's RTP receiver, at the largest load
          held (the step of ``concurrent_calls``; null when no step passed).  For every call
          of that step and every two consecutive RTP packets i, j the simulator received from
          the port (consecutive in arrival order, one call's stream), D(i, j) = | (a_j − a_i)
          − (ts_j − ts_i) / 8000 | in ms, with a = the simulator's arrival time of the packet
          and ts = its RTP timestamp (8000 Hz clock, G.711).  ``rtp_jitter_p99_ms`` = the
          nearest-rank 99th percentile of D over all pairs of all calls of the step;
          ``rtp_jitter_p50_ms``, ``_p95_ms``, ``_max_ms`` and ``rtp_jitter_pairs`` (how many
          D) beside it; per step the same as ``jitter_*`` in ``concurrent_steps``.  It
          includes the simulator's own delay in reading the packet (it shares the CPUs).
          ``rtp_jitter_rfc3550_ms_p50``/``_max``: the RFC 3550 interarrival jitter (the
          running estimate J) at each call's end, as the simulator reports it, for reference.
          D is kept for G.711 audio packets only (RFC 4733 event packets are not audio); a
          change of SSRC starts a new stream (no D across it).  When the simulator returns
          only per-call summaries of D, ``rtp_jitter_p99_ms`` is null (not measured as
          defined) and ``rtp_jitter_p99_bound_ms`` = the largest per-call p99 of D is given
          instead: an upper bound of the p99 over all packets (at most 1 % of each call's D lie
          above its own p99, so at most 1 % of all lie above the largest).
``register_all_s``
          a fresh simulator, then a fresh pair whose node ``a`` has ``--ports`` (144) SCCP
          ports, all pointing at the simulator.  t0 = ``time.time()`` just before node ``a``'s
          node manager process is spawned (``Pair.start``, ``a`` first).  The bench polls the
          simulator's ``registrations()`` every 50 ms; at the first poll where every one of
          ``a``'s ``--ports`` devices is registered, t1 = the latest of those devices'
          ``since`` stamps (the simulator's ``time.time()`` when that device's registration
          completed).  Sample = t1 − t0: node manager and service start-up, activation, and
          the TCP connections and registrations of all ports.  A run where not all are
          registered within ``--register-timeout`` s is an error (counted in
          ``register_errors``, not a sample).  ``register_all_s_p50``, ``_p95``, ``_max``
          over ``--runs`` runs (each a fresh simulator and a fresh pair), every sample in
          ``register_all_s_runs``.
``cm_failover_s``
          a pair whose node ``a`` has ``--ports`` (144) ports with ``servers`` = [primary,
          backup], two simulator processes.  With every one of ``a``'s ports registered on the
          primary (and none on the backup), t0 = ``time.time()`` just before ``os.kill(pid,
          SIGKILL)`` of the primary simulator's process.  The bench polls the backup's
          ``registrations()`` every 50 ms; at the first poll where every one of ``a``'s
          devices is registered there, t1 = the latest of their ``since`` stamps on the
          backup.  Sample = t1 − t0.  Not within ``--failover-timeout`` s: an error
          (``cm_failover_errors``).  Then a new primary is started on the same address; the
          ports re-home to it when idle (``rehome_probe`` = ``--rehome-probe`` s):
          ``cm_rehome_s`` = new primary started → every port registered on it, the same way
          (informational, p50/p95/max).  If they do not re-home within
          ``--failover-timeout`` s the next run starts from a fresh pair and fresh simulators
          (``cm_rehome_errors``).  ``cm_failover_s_p50``, ``_p95``, ``_max`` over ``--runs``.
``cpu_per_call_ms_per_s``
          the messaging service's CPU (utime + stime of ``a``'s service process,
          ``/proc/PID/stat``) in ms of CPU per second of wall time, over a ``--sample`` s window
          in the middle of a step's hold (all calls up), minus the same over a ``--sample`` s
          window idle before the first step, divided by the calls up (n); reported for the
          largest step that passed (``resources_step``), every step's own in
          ``concurrent_steps``.  The node manager's CPU and the simulator's are recorded
          beside it (``nm_cpu_ms_per_s``, ``sim_cpu_ms_per_s``), not in it.

Also recorded: ``cpus`` (``os.cpu_count()``), ``loadavg_start``, ``loadavg_end`` (1-minute
load average), the load average in each step's hold, the settings, and per step the setup
time (the simulator's ring → CallState Connected, when it reports one).

Percentiles are nearest rank (no interpolation).  Clocks: ``time.time()`` in this process and
in the simulator (the same wall clock, same machine); RTP arrival times are the simulator's.
Every process started (the pair's node managers and services, the simulators) is stopped by
its PID at the end, also after an error or Ctrl-C.  Result files hold repository-relative
paths only.
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
import threading
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from failover.config import load_config  # noqa: E402
from lab.pair import (  # noqa: E402
    SCCP_PREFIXES,
    Pair,
    free_port,
    free_udp_block,
    kill_quietly,
    pid_alive,
    sccp_devices,
    sccp_sections,
)

DEFINITIONS_VERSION = 1
TICK = os.sysconf("SC_CLK_TCK")
EXT0 = 4000            # subscribers 4000, 4001, ...
PILOT = "5000"
TONE_HZ = 1250.0
PREFIX_A, PREFIX_B = SCCP_PREFIXES["a"], SCCP_PREFIXES["b"]  # CiscoUM1-VI, CiscoUM2-VI
GREETING_S = 1.15      # greeting and beep, as in bench_sip
REASON_NO_ANSWER = 2
CALL_TYPE_FORWARD = 3
POLL = 0.05

# ============================================================================ processes

_PROCS: dict[int, subprocess.Popen] = {}   # simulators: pid -> process
_PAIRS: list[Pair] = []


def cleanup() -> None:
    for pair in list(_PAIRS):
        stop_pair(pair)
    for pid in list(_PROCS):
        kill_quietly(pid, signal.SIGTERM)
    end = time.monotonic() + 3
    while time.monotonic() < end and any(pid_alive(p) for p in _PROCS):
        time.sleep(0.05)
    for pid, proc in list(_PROCS.items()):
        kill_quietly(pid)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    _PROCS.clear()


def stop_pair(pair: Pair) -> None:
    try:
        pair.stop()
    except Exception as e:  # noqa: BLE001 - go on stopping the rest
        print(f"stopping a pair: {e}", file=sys.stderr)
    if pair in _PAIRS:
        _PAIRS.remove(pair)


def _sigterm(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


# ============================================================================ statistics

def pct(samples, p: float) -> float | None:
    """Nearest-rank percentile."""
    if len(samples) == 0:
        return None
    s = np.sort(np.asarray(samples, dtype=float))
    return float(s[max(0, math.ceil(p / 100 * len(s)) - 1)])


def rnd(v, digits: int):
    return None if v is None else round(float(v), digits)


def dist(prefix: str, samples, digits: int = 3, *, p99: bool = False) -> dict:
    out = {f"{prefix}_p50": rnd(pct(samples, 50), digits), f"{prefix}_p95": rnd(pct(samples, 95), digits)}
    if p99:
        out[f"{prefix}_p99"] = rnd(pct(samples, 99), digits)
    out[f"{prefix}_max"] = rnd(max(samples) if len(samples) else None, digits)
    return out


def deviations_ms(arrivals, timestamps, clock: int = 8000) -> np.ndarray:
    """D = |(a_j − a_i) − (ts_j − ts_i) / clock| in ms for consecutive packets (arrival order);
    ``arrivals`` in seconds, ``timestamps`` RTP timestamps (32-bit, wrapping)."""
    a = np.asarray(arrivals, dtype=float)
    ts = np.asarray(timestamps, dtype=np.int64)
    if len(a) < 2:
        return np.zeros(0)
    dts = (np.diff(ts) + 2**31) % 2**32 - 2**31  # modular difference
    return np.abs(np.diff(a) - dts / clock) * 1000.0


# ============================================================================ /proc

def cpu_s(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(f[11]) + int(f[12])) / TICK


def rss_mb(pid: int | None) -> float | None:
    try:
        for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_window(pids: dict[str, int | None], seconds: float) -> dict:
    """ms of CPU per wall second of each process over ``seconds``; RSS at the end."""
    c0 = {k: cpu_s(p) for k, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    c1 = {k: cpu_s(p) for k, p in pids.items()}
    out = {f"{k}_cpu_ms_per_s": (rnd((c1[k] - c0[k]) * 1000 / dt, 1)
                                 if c0[k] is not None and c1[k] is not None else None) for k in pids}
    out.update({f"{k}_rss_mb": rnd(rss_mb(p), 1) for k, p in pids.items()})
    out["loadavg"] = os.getloadavg()[0]
    return out


# ============================================================================ files

def write_tone(path: Path, seconds: float, hz: float = TONE_HZ) -> None:
    """A continuous tone, 8 kHz 16-bit mono WAV, about −10 dBm0."""
    t = np.arange(int(seconds * 8000)) / 8000.0
    pcm = (np.sin(2 * np.pi * hz * t) * 0.3 * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm.tobytes())


def rel(path) -> str:
    """A path for the result file: relative to the repository, else just its name."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return p.name


# ============================================================================ the simulator

class Sim:
    """One ``python -m lab.callmanager`` process and its control socket."""

    def __init__(self, workdir: Path, name: str, devices: list[str], *, port: int | None = None,
                 keepalive: float | None = None) -> None:
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = port or free_port()
        self.control = workdir / f"{name}.ctl"
        self.devices_file = workdir / f"{name}-devices.txt"
        self.devices_file.write_text("\n".join(devices) + "\n")
        self.keepalive = keepalive
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> "Sim":
        if self.control.exists():
            self.control.unlink()
        cmd = [sys.executable, "-m", "lab.callmanager", "--listen", self.address,
               "--control", str(self.control), "--devices", str(self.devices_file),
               "--pilot", PILOT, "--rtp-host", "127.0.0.1",
               "--record-dir", str(self.dir / f"{self.name}-recordings")]
        if self.keepalive:
            cmd += ["--keepalive", f"{self.keepalive:g}"]
        log = open(self.dir / f"{self.name}.log", "ab")  # noqa: SIM115 - kept for the process
        self.started_at = time.time()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        _PROCS[self.proc.pid] = self.proc
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"simulator {self.name} exited {self.proc.returncode}: "
                                   + (self.dir / f"{self.name}.log").read_text()[-800:])
            if self.control.exists():
                try:
                    self.client().registrations()
                    return self
                except (OSError, ValueError):
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"simulator {self.name} not ready in {timeout:.0f} s")

    def client(self):
        from lab.callmanager import CallManagerClient

        return CallManagerClient(str(self.control))

    def kill(self) -> None:
        """SIGKILL by PID (the fault injected); the process is reaped."""
        assert self.proc is not None
        kill_quietly(self.proc.pid)
        self.proc.wait(timeout=10)
        _PROCS.pop(self.proc.pid, None)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            kill_quietly(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                kill_quietly(self.proc.pid)
                self.proc.wait(timeout=5)
        _PROCS.pop(self.proc.pid, None)


def registered_since(regs: dict, devices: list[str]) -> float | None:
    """The latest ``since`` of ``devices`` when every one of them is registered, else None."""
    stamps = []
    for d in devices:
        r = regs.get(d)
        if not r or r.get("state") != "registered":
            return None
        stamps.append(float(r["since"]))
    return max(stamps) if stamps else None


def wait_all_registered(sim: Sim, devices: list[str], timeout: float) -> tuple[float | None, int]:
    """Poll every ``POLL`` s until all ``devices`` are registered at ``sim``: (latest since,
    polls), or (None, polls) after ``timeout``."""
    client = sim.client()
    end = time.monotonic() + timeout
    polls = 0
    while time.monotonic() < end:
        polls += 1
        try:
            t = registered_since(client.registrations(), devices)
        except (OSError, ValueError):
            t = None
        if t is not None:
            return t, polls
        time.sleep(POLL)
    return None, polls


def count_registered(sim: Sim, devices: list[str]) -> int:
    try:
        regs = sim.client().registrations()
    except (OSError, ValueError):
        return -1
    return sum(1 for d in devices if (regs.get(d) or {}).get("state") == "registered")


# ============================================================================ the pair

#: [ports.sccp] keys the options set beyond the defaults (``--dtmf``)
SCCP_EXTRA: dict = {}


def sccp_node_sections(servers: list[str], count: int, prefix: str, rtp_lo: int, rtp_hi: int,
                       rehome_probe: float) -> dict:
    """One node's sections (``lab.pair.sccp_sections``: the ports on ``servers``, the loopback
    trunk off, profile ``cucm-sccp``) with the benchmark's RTP block and re-home probe."""
    return sccp_sections(servers, prefix=prefix, count=count, rtp_ports=f"{rtp_lo}-{rtp_hi}",
                         rehome_probe=rehome_probe, **SCCP_EXTRA)


def rtp_range(ports: int) -> tuple[int, int]:
    n = 2 * ports + 20
    base = free_udp_block(n + 1)
    base += base % 2
    return base, base + n - 1


def start_pair(workdir: Path, servers: list[str], count_a: int, count_b: int, max_message: float,
               rehome_probe: float, *, wait_active: bool = True) -> tuple[Pair, float]:
    """A pair with SCCP ports; returns it and t0 (``time.time()`` just before a's node manager
    is spawned)."""
    la, ha = rtp_range(count_a)
    extra_b = None
    if count_b:
        lb, hb = rtp_range(count_b)
        extra_b = sccp_node_sections(servers, count_b, PREFIX_B, lb, hb, rehome_probe)
    else:
        extra_b = {"ports": {"loopback": {"enabled": False}, "sccp": {"enabled": False}},
                   "integration": {"profile": "cucm-sccp"}}
    pair = Pair(workdir, relay=False,
                extra={"messaging": {"max_message": max_message, "silence": 3.0, "min_message": 0.5}},
                extra_a=sccp_node_sections(servers, count_a, PREFIX_A, la, ha, rehome_probe),
                extra_b=extra_b)
    _PAIRS.append(pair)
    t0 = time.time()
    pair.start()
    if wait_active:
        pair.wait_state("a", "active", timeout=60)
        pair.wait_state("b", "inactive", timeout=60)
    return pair, t0


def add_subscribers(pair: Pair, n: int) -> None:
    ops = [{"op": "put", "table": "subscribers", "row": {
        "extension": str(EXT0 + i), "name": f"Bench {EXT0 + i}", "mailbox": f"mb{EXT0 + i}",
        "mwi_method": "none", "notify": []}} for i in range(n)]
    for k in range(0, n, 200):
        r = pair.a.admin({"op": "db_write", "ops": ops[k:k + 200]}, timeout=30)
        assert r and r.get("ok"), r


def store_files(pair: Pair) -> set[Path]:
    root = load_config(pair.a.config).store.maildir
    return set(root.glob("mb*/new/*")) | set(root.glob("mb*/cur/*"))


def message_info(path: Path) -> dict:
    with open(path, "rb") as f:
        head = f.read(8192).split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0].decode("latin-1")
    dur = re.search(r"^X-VMHA-Duration:\s*([\d.]+)", head, re.MULTILINE | re.IGNORECASE)
    return {"mailbox": path.parent.parent.name, "duration_s": float(dur.group(1)) if dur else 0.0}


def wait_messages(pair: Pair, before: set[Path], n: int, timeout: float) -> list[dict]:
    end = time.monotonic() + timeout
    while True:
        new = store_files(pair) - before
        if len(new) >= n or time.monotonic() > end:
            break
        time.sleep(0.5)
    time.sleep(1.0)  # a late straggler would show
    return [message_info(p) for p in store_files(pair) - before]


# ============================================================================ one call's result

def _get(res: dict, *names, default=None):
    """The first of ``names`` present in ``res`` or its ``rtp`` dict."""
    for src in (res, res.get("rtp") or {}):
        for n in names:
            if isinstance(src, dict) and n in src and src[n] is not None:
                return src[n]
    return default


def call_deviations(res: dict) -> np.ndarray | None:
    """Per-packet D (ms) of the port's stream as the simulator received it (None: the
    simulator gave no per-packet list)."""
    dev = _get(res, "deviations_ms", "deviation_list_ms")
    if isinstance(dev, (list, tuple)):
        return np.abs(np.asarray(dev, dtype=float))
    arr, ts = _get(res, "arrivals"), _get(res, "timestamps")
    if arr is not None and ts is not None:
        return deviations_ms(arr, ts)
    return None


def call_deviation_summary(res: dict) -> dict | None:
    """The simulator's per-call summary of D (``{"n", "p50", "p99", "max"}``), if any."""
    d = _get(res, "deviation_ms")
    return d if isinstance(d, dict) else None


def judge_call(res: dict | None, err: str | None) -> tuple[str | None, dict]:
    """(failure reason or None, facts) of one call's result."""
    facts: dict = {}
    if err is not None or res is None:
        return f"error: {err}", facts
    if res.get("error"):
        return f"error: {res['error']}", facts
    facts["received"] = _get(res, "audio_packets", "received", default=None)
    facts["lost"] = _get(res, "lost", default=None)
    facts["ended_by"] = _get(res, "ended_by", "hung_up_by", "cleared_by", default=None)
    facts["setup_s"] = _get(res, "setup_s", "answer_s", default=None)
    if not res.get("answered"):
        return "not answered", facts
    if facts["ended_by"] != "caller":
        return f"ended by {facts['ended_by']}", facts
    if facts["received"] is not None and int(facts["received"]) == 0:
        return "no RTP from the port", facts
    return None, facts


# ============================================================================ concurrent

def place_call(client_factory, kwargs: dict, out: list, k: int) -> None:
    try:
        client = client_factory()
        res = client.call(**kwargs)
        out[k] = (res, None)
    except Exception as e:  # noqa: BLE001 - the call failed; counted
        out[k] = (None, f"{type(e).__name__}: {e}"[:300])


def concurrent_step(pair: Pair, sim: Sim, n: int, args, tone: Path, idle: dict) -> dict:
    ramp_s = n / args.ramp
    hold_call = ramp_s + args.hold
    before = store_files(pair)
    results: list = [None] * n
    threads = []
    print(f"concurrent {n}: ramp {ramp_s:.1f} s at {args.ramp:g}/s, each call {hold_call:.1f} s",
          file=sys.stderr, flush=True)
    t_start = time.monotonic()
    for k in range(n):
        ext = str(EXT0 + k)
        kwargs = {"calling": f"555{k:04d}", "called": PILOT, "call_type": CALL_TYPE_FORWARD,
                  "original_called": ext, "last_redirecting": ext, "reason": REASON_NO_ANSWER,
                  "wav": str(tone), "hang_up_after": hold_call, "record_s": hold_call + 10,
                  "device": f"{PREFIX_A}{k + 1}"}
        delay = t_start + k / args.ramp - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        th = threading.Thread(target=place_call, args=(sim.client, kwargs, results, k), daemon=True)
        th.start()
        threads.append(th)
    # the service's, node manager's and simulator's CPU in the middle of the hold
    time.sleep(max(0.0, t_start + ramp_s + args.hold / 2 - args.sample / 2 - time.monotonic()))
    active = sum(1 for k in range(n) if results[k] is None)  # calls not over yet
    load = cpu_window({"service": pair.a.service_pid(), "nm": pair.a.pid, "sim": sim.pid}, args.sample)
    for th in threads:
        th.join(timeout=hold_call + ramp_s + 120)
    hung = sum(1 for th in threads if th.is_alive())
    msgs = wait_messages(pair, before, n, 60)
    expect = hold_call - GREETING_S - 1.0
    by_box: dict[str, list[float]] = {}
    for m in msgs:
        by_box.setdefault(m["mailbox"], []).append(m["duration_s"])
    reasons: dict[str, int] = {}
    failed_calls = []
    detail: list[dict] = []
    devs, rfc_j, setup, summaries = [], [], [], []
    received = lost = 0
    per_packet = True
    for k in range(n):
        res, err = results[k] if results[k] is not None else (None, "no result (thread still running)")
        why, facts = judge_call(res, err)
        if why is None:  # the call itself went well: its message (call k -> mailbox of 4000 + k)
            durs = by_box.get(f"mb{EXT0 + k}", [])
            if not durs:
                why = "no message"
            elif max(durs) < expect:
                why = "message short"
        if why is not None:
            reasons[why[:60]] = reasons.get(why[:60], 0) + 1
            failed_calls.append(k)
        rtp = (res or {}).get("rtp") or {}
        dsum = rtp.get("deviation_ms") or {}
        detail.append({"k": k, "fail": why, "ended_by": facts.get("ended_by"),
                       "sim_sent": rtp.get("sent"), "port_audio_packets": rtp.get("audio_packets"),
                       "port_lost": rtp.get("lost"), "port_recorded_s": rtp.get("recorded_s"),
                       "dev_p99_ms": dsum.get("p99"), "dev_max_ms": dsum.get("max"),
                       "message_s": max(by_box.get(f"mb{EXT0 + k}", [0.0]))})
        if res:
            d = call_deviations(res)
            if d is None:
                per_packet = False
            else:
                devs.append(d)
            sm = call_deviation_summary(res)
            if sm and sm.get("p99") is not None:
                summaries.append(float(sm["p99"]))
            received += int(facts.get("received") or 0)
            lost += int(facts.get("lost") or 0)
            j = _get(res, "jitter_ms", "rfc3550_jitter_ms")
            if j is not None:
                rfc_j.append(float(j))
            if facts.get("setup_s") is not None:
                setup.append(float(facts["setup_s"]) * 1000)
    all_dev = np.concatenate(devs) if devs and per_packet else np.zeros(0)
    svc_idle = idle.get("service_cpu_ms_per_s") or 0.0
    svc_load = load.get("service_cpu_ms_per_s")
    out = {"calls": n, "ok": not failed_calls and hung == 0, "failed": len(failed_calls),
           "failure_reasons": reasons, "failed_call_indexes": failed_calls[:20],
           "threads_not_done": hung, "messages": len(msgs),
           "messages_short": sum(1 for m in msgs if m["duration_s"] < expect),
           "mailboxes_with_two": sum(1 for v in by_box.values() if len(v) > 1),
           "message_s_min": rnd(min((m["duration_s"] for m in msgs), default=None), 2),
           "message_s_expected_min": round(expect, 2), "call_s": round(hold_call, 2),
           "calls_up_at_sample": active, "rtp_packets_received": received, "rtp_packets_lost": lost,
           "jitter_per_packet": per_packet, "jitter_pairs": int(len(all_dev)),
           **{f"{k}_ms": v for k, v in dist("jitter", all_dev, 3, p99=True).items()},
           "jitter_p99_bound_ms": rnd(max(summaries), 3) if summaries else None,
           "rfc3550_jitter_ms_p50": rnd(pct(rfc_j, 50), 3),
           "rfc3550_jitter_ms_max": rnd(max(rfc_j), 3) if rfc_j else None,
           **{f"{k}_ms": v for k, v in dist("setup", setup, 1).items()},
           "service_cpu_ms_per_s": svc_load, "nm_cpu_ms_per_s": load.get("nm_cpu_ms_per_s"),
           "sim_cpu_ms_per_s": load.get("sim_cpu_ms_per_s"),
           "sim_saturated": (load.get("sim_cpu_ms_per_s") or 0) > 900,
           "service_rss_mb": load.get("service_rss_mb"),
           "cpu_per_call_ms_per_s": rnd((svc_load - svc_idle) / n, 3) if svc_load is not None else None,
           "loadavg_hold": load["loadavg"], "per_call": detail}
    shown = {k: v for k, v in out.items() if k != "per_call"}
    print(f"  -> {json.dumps(shown)}", file=sys.stderr, flush=True)
    return out


def concurrent_part(tmp: Path, args, out: dict) -> None:
    tone = tmp / "tone.wav"
    longest = max(args.steps) / args.ramp + args.hold + 10
    write_tone(tone, longest)
    devs_a, devs_b = sccp_devices(PREFIX_A, args.max), sccp_devices(PREFIX_B, args.b_ports)
    sim = Sim(tmp / "sim-concurrent", "cm", devs_a + devs_b).start()
    max_msg = longest + 60
    pair, t0 = start_pair(tmp / "pair-concurrent", [sim.address], args.max, args.b_ports, max_msg,
                          args.rehome_probe)
    try:
        t_reg, _ = wait_all_registered(sim, devs_a, args.register_timeout)
        if t_reg is None:
            n_reg = count_registered(sim, devs_a)
            out["concurrent_error"] = (f"only {n_reg} of {args.max} ports registered in "
                                       f"{args.register_timeout} s")
            out["concurrent_calls"] = None
            print(out["concurrent_error"], file=sys.stderr, flush=True)
            return
        out["concurrent_pair_registered_s"] = round(t_reg - t0, 3)
        add_subscribers(pair, max(args.steps))
        time.sleep(2.5)
        idle = cpu_window({"service": pair.a.service_pid(), "nm": pair.a.pid, "sim": sim.pid}, args.sample)
        out["idle"] = idle
        print(f"idle: {json.dumps(idle)}", file=sys.stderr, flush=True)
        results = []
        for n in args.steps:
            res = concurrent_step(pair, sim, n, args, tone, idle)
            results.append(res)
            if not res["ok"]:
                break
            time.sleep(5)
        passed = []
        for r in results:
            if not r["ok"]:
                break
            passed.append(r)
        best = passed[-1] if passed else None
        out["concurrent_steps"] = results
        out["concurrent_calls"] = best["calls"] if best else 0
        out["concurrent_limited_by"] = "failure" if len(passed) < len(results) else "max"
        out["first_failing_step"] = results[len(passed)]["calls"] if len(passed) < len(results) else None
        out["failed_calls"] = sum(r["failed"] for r in results)
        if best:
            out["rtp_jitter_pairs"] = best["jitter_pairs"]
            for p in ("p50", "p95", "p99", "max"):
                out[f"rtp_jitter_{p}_ms"] = best[f"jitter_{p}_ms"] if best["jitter_per_packet"] else None
            out["rtp_jitter_p99_bound_ms"] = best["jitter_p99_bound_ms"]
            out["rtp_jitter_rfc3550_ms_p50"] = best["rfc3550_jitter_ms_p50"]
            out["rtp_jitter_rfc3550_ms_max"] = best["rfc3550_jitter_ms_max"]
            out["resources_step"] = best["calls"]
            out["cpu_per_call_ms_per_s"] = best["cpu_per_call_ms_per_s"]
            out["service_cpu_load_ms_per_s"] = best["service_cpu_ms_per_s"]
            out["sim_cpu_load_ms_per_s"] = best["sim_cpu_ms_per_s"]
            out["concurrent_messages"] = best["messages"]
            out["message_s_min"] = best["message_s_min"]
        else:
            out["rtp_jitter_p99_ms"] = None
        out["service_cpu_idle_ms_per_s"] = idle.get("service_cpu_ms_per_s")
        out["station_status_sample"] = _status_sample(pair)
    finally:
        stop_pair(pair)
        sim.stop()


def _status_sample(pair: Pair) -> dict | None:
    """How the node reports its SCCP ports (counts of each registration outcome)."""
    st = pair.a.status()
    if not st:
        return None
    ports = st.get("ports") or st.get("service", {}).get("ports") or []
    counts: dict[str, int] = {}
    if isinstance(ports, list):
        for p in ports:
            if isinstance(p, dict) and str(p.get("name", "")).startswith("sccp"):
                k = str(p.get("state") or p.get("registration") or "?")
                counts[k] = counts.get(k, 0) + 1
    return counts or None


# ============================================================================ register

def register_part(tmp: Path, args, out: dict) -> None:
    devs_a, devs_b = sccp_devices(PREFIX_A, args.ports), sccp_devices(PREFIX_B, args.b_ports)
    samples, runs, errors = [], [], []
    for i in range(args.runs):
        sim = Sim(tmp / f"sim-register-{i}", "cm", devs_a + devs_b).start()
        pair = None
        try:
            time.sleep(0.5)
            pair, t0 = start_pair(tmp / f"pair-register-{i}", [sim.address], args.ports, args.b_ports,
                                  120, args.rehome_probe, wait_active=False)
            t1, polls = wait_all_registered(sim, devs_a, args.register_timeout)
            if t1 is None:
                n = count_registered(sim, devs_a)
                errors.append(f"run {i + 1}: {n} of {args.ports} registered after {args.register_timeout} s")
                print(errors[-1], file=sys.stderr, flush=True)
                continue
            s = t1 - t0
            samples.append(s)
            runs.append({"run": i + 1, "register_all_s": round(s, 3), "polls": polls,
                         "loadavg": os.getloadavg()[0]})
            print(f"register run {i + 1}: {s:.3f} s", file=sys.stderr, flush=True)
        finally:
            if pair is not None:
                stop_pair(pair)
            sim.stop()
    out["register_all_s_runs"] = runs
    out["register_errors"] = len(errors)
    out["register_error_list"] = errors
    out.update(dist("register_all_s", samples))
    out["register_samples"] = len(samples)


# ============================================================================ CM failover

def failover_part(tmp: Path, args, out: dict) -> None:
    devs_a, devs_b = sccp_devices(PREFIX_A, args.ports), sccp_devices(PREFIX_B, args.b_ports)
    every = devs_a + devs_b
    samples, rehome, runs, errors, rehome_errors = [], [], [], [], []
    pair = primary = backup = None
    fresh = 0

    def setup() -> tuple:
        nonlocal fresh
        fresh += 1
        p = Sim(tmp / f"sim-failover-{fresh}", "primary", every).start()
        b = Sim(tmp / f"sim-failover-{fresh}", "backup", every).start()
        pr, _ = start_pair(tmp / f"pair-failover-{fresh}", [p.address, b.address], args.ports,
                           args.b_ports, 120, args.rehome_probe)
        return pr, p, b

    def teardown() -> None:
        if pair is not None:
            stop_pair(pair)
        for s in (primary, backup):
            if s is not None:
                s.stop()

    try:
        for i in range(args.runs):
            if pair is None:
                pair, primary, backup = setup()
            t_home, _ = wait_all_registered(primary, devs_a, args.failover_timeout)
            if t_home is None:
                errors.append(f"run {i + 1}: only {count_registered(primary, devs_a)} of {args.ports} "
                              "registered on the primary before the kill")
                print(errors[-1], file=sys.stderr, flush=True)
                teardown()
                pair = primary = backup = None
                continue
            on_backup = count_registered(backup, devs_a)
            time.sleep(1.0)
            t0 = time.time()
            primary.kill()
            t1, polls = wait_all_registered(backup, devs_a, args.failover_timeout)
            run = {"run": i + 1, "pair": fresh, "on_backup_before": on_backup, "polls": polls}
            if t1 is None:
                errors.append(f"run {i + 1}: {count_registered(backup, devs_a)} of {args.ports} "
                              f"on the backup after {args.failover_timeout} s")
                print(errors[-1], file=sys.stderr, flush=True)
                runs.append(run)
                teardown()
                pair = primary = backup = None
                continue
            samples.append(t1 - t0)
            run["cm_failover_s"] = round(t1 - t0, 3)
            print(f"cm failover run {i + 1}: {t1 - t0:.3f} s", file=sys.stderr, flush=True)
            # a new primary on the same address: the idle ports come back to it
            time.sleep(1.0)
            primary = Sim(primary.dir, "primary", every, port=primary.port).start()
            r0 = primary.started_at
            r1, _ = wait_all_registered(primary, devs_a, args.failover_timeout)
            if r1 is None:
                n = count_registered(primary, devs_a)
                rehome_errors.append(f"run {i + 1}: {n} of {args.ports} back on the primary after "
                                     f"{args.failover_timeout} s")
                print(rehome_errors[-1], file=sys.stderr, flush=True)
                run["rehome_registered"] = n
                teardown()
                pair = primary = backup = None
            else:
                rehome.append(r1 - r0)
                run["cm_rehome_s"] = round(r1 - r0, 3)
            run["loadavg"] = os.getloadavg()[0]
            runs.append(run)
    finally:
        teardown()
    out["cm_failover_s_runs"] = runs
    out["cm_failover_errors"] = len(errors)
    out["cm_failover_error_list"] = errors
    out["cm_rehome_errors"] = len(rehome_errors)
    out["cm_rehome_error_list"] = rehome_errors
    out.update(dist("cm_failover_s", samples))
    out.update(dist("cm_rehome_s", rehome))
    out["cm_failover_samples"] = len(samples)
    out["cm_failover_pairs_started"] = fresh


# ============================================================================ main

def run(args, tmp: Path) -> dict:
    out: dict = {"benchmark": "sccp", "definitions_version": DEFINITIONS_VERSION,
                 "host": platform.node(), "cpus": os.cpu_count(),
                 "python": platform.python_version(), "platform": platform.platform(),
                 "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_start": os.getloadavg()[0],
                 "commit": _commit(), "code": _changed(), "quick": args.quick, "only": args.only,
                 "settings": {"max": args.max, "steps": args.steps, "hold_s": args.hold,
                              "ramp_per_s": args.ramp, "sample_s": args.sample, "ports": args.ports,
                              "b_ports": args.b_ports, "runs": args.runs,
                              "rehome_probe_s": args.rehome_probe, "sccp_extra": dict(SCCP_EXTRA),
                              "register_timeout_s": args.register_timeout,
                              "failover_timeout_s": args.failover_timeout,
                              "caller_audio": f"continuous {TONE_HZ:g} Hz tone, 8 kHz 16-bit WAV",
                              "simulators": "one lab.callmanager process per server address",
                              "subscribers_mwi_method": "none", "greeting_s": GREETING_S}}
    only = set(args.only)
    if "concurrent" in only:
        concurrent_part(tmp, args, out)
    if "register" in only:
        register_part(tmp, args, out)
    if "failover" in only:
        failover_part(tmp, args, out)
    out["loadavg_end"] = os.getloadavg()[0]
    return out


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _changed() -> list[str]:
    """Product files that differ from the commit (modified or new), repository-relative."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "telephony", "lab", "failover",
                              "integrations"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [ln[3:] for ln in out.splitlines() if ln.strip()]


KEYS = ("concurrent", "register", "failover")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="write the results here")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 16 ports, steps 8,16, hold 10 s, 2 runs of each timing")
    ap.add_argument("--only", default=",".join(KEYS),
                    help="parts to run: concurrent (concurrent_calls, rtp_jitter_p99_ms, CPU per "
                         "call), register (register_all_s), failover (cm_failover_s); key names "
                         "are accepted too")
    ap.add_argument("--runs", type=int, default=5, help="runs of register_all_s and cm_failover_s")
    ap.add_argument("--max", type=int, default=192, help="SCCP ports on a in the capacity search")
    ap.add_argument("--steps", default="48,96,144,192",
                    help="capacity search: steps tried in increasing order until one fails")
    ap.add_argument("--hold", type=float, default=30.0, help="seconds all calls of a step are up together")
    ap.add_argument("--ramp", type=float, default=10.0, help="calls/s while ramping up")
    ap.add_argument("--sample", type=float, default=10.0, help="CPU sampling window, seconds")
    ap.add_argument("--ports", type=int, default=144, help="SCCP ports on a for register and failover")
    ap.add_argument("--b-ports", type=int, default=4, help="SCCP ports on b (0: none)")
    ap.add_argument("--rehome-probe", type=float, default=2.0,
                    help="[ports.sccp] rehome_probe: seconds between looks at the first server")
    ap.add_argument("--dtmf", choices=("both", "inband", "rfc2833"), default=None,
                    help="[ports.sccp] dtmf on both nodes (default: the setting's default, both)")
    ap.add_argument("--register-timeout", type=float, default=90.0)
    ap.add_argument("--failover-timeout", type=float, default=60.0)
    ap.add_argument("--workdir", help="keep the files here (default: a temporary directory)")
    args = ap.parse_args(argv)
    if args.quick:
        args.max, args.steps, args.hold, args.sample = 16, "8,16", 10.0, 4.0
        args.ports, args.runs = 16, 2
    alias = {"concurrent_calls": "concurrent", "rtp_jitter_p99_ms": "concurrent",
             "register_all_s": "register", "cm_failover_s": "failover"}
    only = []
    for k in str(args.only).split(","):
        k = alias.get(k.strip(), k.strip())
        if k and k not in KEYS:
            ap.error(f"--only: unknown part {k!r} (parts: {', '.join(KEYS)})")
        if k and k not in only:
            only.append(k)
    args.only = only
    steps = {int(s) for s in str(args.steps).split(",") if s and int(s) <= args.max}
    args.steps = sorted(steps) or [args.max]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dtmf:
        SCCP_EXTRA["dtmf"] = args.dtmf
    signal.signal(signal.SIGTERM, _sigterm)
    t0 = time.monotonic()
    if args.workdir:
        tmp = Path(args.workdir)
        tmp.mkdir(parents=True, exist_ok=True)
        keep = True
    else:
        tmp = Path(tempfile.mkdtemp(prefix="vmha-bench-sccp-"))
        keep = False
    out: dict = {}
    try:
        out = run(args, tmp)
    finally:
        cleanup()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    out["bench_wall_s"] = round(time.monotonic() - t0, 1)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    summary = {k: out.get(k) for k in ("concurrent_calls", "concurrent_limited_by", "failed_calls",
                                       "rtp_jitter_p99_ms", "cpu_per_call_ms_per_s",
                                       "register_all_s_p50", "register_all_s_p95", "register_all_s_max",
                                       "cm_failover_s_p50", "cm_failover_s_p95", "cm_failover_s_max",
                                       "loadavg_start", "loadavg_end", "bench_wall_s")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
