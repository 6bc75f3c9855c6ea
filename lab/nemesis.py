"""The fault campaign's nemesis (lab only): each fault kind applied to a running
:class:`lab.faultnet.Cluster` and healed again.

Network faults are iptables rules in the router namespace (chains ``VF-FAULT`` in filter
FORWARD, ``VF-DUP`` in mangle FORWARD), on the traffic between the nodes (node link and
replication: everything between 10.77.1.0/24 and 10.77.2.0/24) or between one node and the
PBX; process faults are signals by PID; the rest are files.  One fault at a time.

Kinds (apply -> heal):

* ``partition_link``: DROP a<->b, both directions -> rules deleted.
* ``partition_link_oneway``: DROP target -> peer only (the peer's packets still reach the
  target) -> rules deleted.
* ``partition_pbx``: DROP target <-> PBX (SIP, RTP), both directions -> rules deleted.
* ``link_loss``: DROP a<->b with ``-m statistic`` probability ``p`` (0.1-0.5) -> rules deleted.
* ``link_delay``: a<->b through NFQUEUE, each packet held ``delay_ms`` (50-400) plus up to
  10 ms jitter by :mod:`lab.nfqueue` -> rules deleted, the consumer releases what it holds.
* ``link_duplicate``: mangle ``TEE --gateway <destination>`` with probability ``p`` (0.2-0.5):
  a copy of the packet goes straight to its destination as well -> rules deleted.
* ``link_reorder``: NFQUEUE, with probability ``p`` (0.2-0.5) a packet is held an extra
  ``reorder_ms`` (20-80) so later ones overtake it -> as ``link_delay``.
* ``kill_nm``: SIGKILL the target's node manager (its service stops on its own) -> the node
  is started again (as systemd would).
* ``kill_service``: SIGKILL the target's messaging service -> nothing (its node manager
  restarts it).
* ``kill_sip_worker``: SIGKILL one SIP worker of the target's service -> nothing (the service
  restarts it).
* ``stop_nm`` / ``stop_service``: SIGSTOP the target's node manager / service -> SIGCONT.
* ``disk_full``: fill the target's data_dir tmpfs to the last byte -> the filler removed.
* ``clock_jump``: the target's wall-clock offset (its clock file, lab/clockshift.c) to +3600 or
  -3600 s -> offset 0 again.
* ``restart_node``: SIGTERM the target's node manager (a graceful stop) -> the node is
  started again.

Every applied fault gives evidence that it was real (``evidence``: packets the rules matched,
the consumer's counters, the PID signalled, bytes written).  A kind that cannot be built here
raises :class:`NemesisError` with the reason at :meth:`Nemesis.apply` (the runner records the kind
as ``unavailable``); it is never faked.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.faultnet import ADDR, SUBNET, Cluster
from lab.pair import kill_quietly, pid_alive
from telephony.sip import forkserver

__all__ = ["KINDS", "NETWORK_KINDS", "Fault", "Nemesis", "NemesisError"]

NETWORK_KINDS = ("partition_link", "partition_link_oneway", "partition_pbx", "link_loss", "link_delay",
                 "link_duplicate", "link_reorder")
PROCESS_KINDS = ("kill_nm", "kill_service", "kill_sip_worker", "stop_nm", "stop_service", "restart_node")
KINDS = NETWORK_KINDS + PROCESS_KINDS + ("disk_full", "clock_jump")
FILLER = ".vf-disk-full"
QUEUE_NUM = 7
DRAIN_WAIT = 60.0  # s: the longest a gracefully stopped node may drain before its restart


class NemesisError(RuntimeError):
    """A fault that could not be applied (the cluster is left as it was)."""


@dataclass
class Fault:
    kind: str
    target: str
    params: dict = field(default_factory=dict)
    start: float = 0.0  # host time.time()
    end: float | None = None
    evidence: dict = field(default_factory=dict)
    undo: list = field(default_factory=list, repr=False)  # callables, run in reverse at heal

    def record(self) -> dict:
        return {"kind": self.kind, "target": self.target, "params": self.params, "start": self.start,
                "end": self.end, "evidence": self.evidence}


def _rule_packets(cl: Cluster, table: str, chain: str) -> int:
    out = cl.net.iptables("-t", table, "-L", chain, "-v", "-x", "-n").stdout
    total = 0
    for line in out.splitlines()[2:]:
        parts = line.split()
        if parts and parts[0].isdigit():
            total += int(parts[0])
    return total


class Nemesis:
    """Applies and heals the faults of :data:`KINDS` on ``cluster`` (choices of targets and
    parameters from ``random.Random(seed)`` unless given)."""

    def __init__(self, cluster: Cluster, *, seed: int = 0) -> None:
        self.cl = cluster
        self.rng = random.Random(seed)
        self.current: Fault | None = None

    # -- choices -------------------------------------------------------------------------------

    def choose_target(self, kind: str) -> str:
        """Half of the time the active node (the faults that matter most), else either node."""
        active = self.cl.active()
        if active and self.rng.random() < 0.5:
            return active[0]
        return self.rng.choice(["a", "b"])

    def choose_params(self, kind: str) -> dict:
        r = self.rng
        if kind == "link_loss":
            return {"p": round(r.uniform(0.1, 0.5), 2)}
        if kind == "link_delay":
            return {"delay_ms": r.choice([50, 100, 200, 400]), "jitter_ms": 10}
        if kind == "link_duplicate":
            return {"p": round(r.uniform(0.2, 0.5), 2)}
        if kind == "link_reorder":
            return {"p": round(r.uniform(0.2, 0.5), 2), "reorder_ms": r.choice([20, 40, 80]), "delay_ms": 1}
        if kind == "clock_jump":
            return {"offset_s": r.choice([3600, -3600])}
        return {}

    # -- apply / heal --------------------------------------------------------------------------

    def apply(self, kind: str, target: str | None = None, params: dict | None = None) -> Fault:
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(KINDS)})")
        if self.current is not None:
            raise NemesisError(f"{self.current.kind} is still applied; heal it first")
        target = target or self.choose_target(kind)
        if target not in ("a", "b"):
            raise ValueError(f"target must be a node name (a, b), not {target!r}")
        f = Fault(kind, target, self.choose_params(kind) if params is None else dict(params))
        f.start = time.time()
        try:
            getattr(self, f"_apply_{kind}")(f)
        except BaseException:
            self._undo(f)
            raise
        self.current = f
        return f

    def heal(self, fault: Fault | None = None) -> Fault | None:
        f = fault or self.current
        if f is None:
            return None
        self._collect(f)
        self._undo(f)
        f.end = time.time()
        if f is self.current:
            self.current = None
        return f

    def _undo(self, f: Fault) -> None:
        errors = []
        while f.undo:
            step = f.undo.pop()
            try:
                step()
            except Exception as e:  # noqa: BLE001 - every other undo step must still run
                errors.append(f"{step}: {e}")
        if errors:
            f.evidence["heal_errors"] = errors

    def _collect(self, f: Fault) -> None:
        if f.kind in NETWORK_KINDS:
            table, chain = ("mangle", "VF-DUP") if f.kind == "link_duplicate" else ("filter", "VF-FAULT")
            f.evidence["packets_matched"] = _rule_packets(self.cl, table, chain)

    # -- network -------------------------------------------------------------------------------

    def _rules(self, f: Fault, rules: list[list[str]], table: str = "filter",
               chain: str = "VF-FAULT") -> None:
        for spec in rules:
            self.cl.net.iptables("-t", table, "-A", chain, *spec)
            f.undo.append(lambda spec=spec: self.cl.net.iptables("-t", table, "-D", chain, *spec))

    @staticmethod
    def _peer(target: str) -> str:
        return "b" if target == "a" else "a"

    def _between(self, x: str, y: str, *action: str, both: bool = True) -> list[list[str]]:
        rules = [["-s", SUBNET[x], "-d", SUBNET[y], *action]]
        if both:
            rules.append(["-s", SUBNET[y], "-d", SUBNET[x], *action])
        return rules

    def _apply_partition_link(self, f: Fault) -> None:
        self._rules(f, self._between("a", "b", "-j", "DROP"))

    def _apply_partition_link_oneway(self, f: Fault) -> None:
        self._rules(f, self._between(f.target, self._peer(f.target), "-j", "DROP", both=False))

    def _apply_partition_pbx(self, f: Fault) -> None:
        self._rules(f, self._between(f.target, "pbx", "-j", "DROP"))

    def _apply_link_loss(self, f: Fault) -> None:
        self._rules(f, self._between("a", "b", "-m", "statistic", "--mode", "random",
                                     "--probability", str(f.params["p"]), "-j", "DROP"))

    def _apply_link_duplicate(self, f: Fault) -> None:
        rules = []
        for src, dst in (("a", "b"), ("b", "a")):
            rules.append(["-s", SUBNET[src], "-d", SUBNET[dst], "-m", "statistic", "--mode", "random",
                          "--probability", str(f.params["p"]), "-j", "TEE", "--gateway", ADDR[dst]])
        self._rules(f, rules, table="mangle", chain="VF-DUP")

    def _queue(self, f: Fault, **opts: float) -> None:
        stats = self.cl.dir / f"nfqueue-{int(f.start * 1000)}.json"
        argv = [sys.executable, "-m", "lab.nfqueue", "--queue", str(QUEUE_NUM), "--stats", str(stats),
                "--seed", str(self.rng.randrange(1 << 30))]
        for key, value in opts.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        proc = self.cl.net.popen("r", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL, text=True)

        def stop() -> None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            proc.stdout.close()
            proc.stderr.close()
            if stats.exists():
                f.evidence["queue"] = json.loads(stats.read_text())
                stats.unlink()

        f.undo.append(stop)
        line = proc.stdout.readline()  # "ready" once the queue is bound
        if line.strip() != "ready":
            raise NemesisError(f"the nfqueue consumer did not start: {proc.stderr.read()[-500:]}")
        self._rules(f, self._between("a", "b", "-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM),
                                     "--queue-bypass"))

    def _apply_link_delay(self, f: Fault) -> None:
        self._queue(f, delay_ms=f.params["delay_ms"], jitter_ms=f.params.get("jitter_ms", 0))

    def _apply_link_reorder(self, f: Fault) -> None:
        self._queue(f, delay_ms=f.params.get("delay_ms", 1), reorder=f.params["p"],
                    reorder_ms=f.params["reorder_ms"])

    # -- processes -----------------------------------------------------------------------------

    def _nm_pid(self, f: Fault) -> int:
        node = self.cl.nodes[f.target]
        if node.proc is None or node.proc.poll() is not None:
            raise NemesisError(f"node {f.target}'s node manager is not running")
        return node.proc.pid

    def _service_pid(self, f: Fault) -> int:
        pid = self.cl.nodes[f.target].service_pid()
        if pid is None:
            raise NemesisError(f"node {f.target} has no messaging service running")
        return pid

    def _restart_later(self, f: Fault) -> None:
        node = self.cl.nodes[f.target]

        def restart() -> None:
            if node.proc is not None and node.proc.poll() is None:  # still draining its calls
                try:
                    node.proc.wait(timeout=DRAIN_WAIT)
                except subprocess.TimeoutExpired:
                    f.evidence["drain_timeout"] = DRAIN_WAIT
            node.stop()  # SIGKILL of what is left of its process group; reaps; closes the log
            node.start()
        f.undo.append(restart)

    def _apply_kill_nm(self, f: Fault) -> None:
        pid = self._nm_pid(f)
        self._restart_later(f)
        os.kill(pid, signal.SIGKILL)
        f.evidence["pid"] = pid

    def _apply_restart_node(self, f: Fault) -> None:
        pid = self._nm_pid(f)
        self._restart_later(f)
        os.kill(pid, signal.SIGTERM)
        f.evidence["pid"] = pid

    def _apply_kill_service(self, f: Fault) -> None:
        pid = self._service_pid(f)
        os.kill(pid, signal.SIGKILL)
        f.evidence["pid"] = pid

    def _apply_kill_sip_worker(self, f: Fault) -> None:
        service = self._service_pid(f)
        workers = worker_pids(service)
        if not workers:
            raise NemesisError(f"node {f.target}'s service has no SIP worker running")
        pid = self.rng.choice(sorted(workers))
        os.kill(pid, signal.SIGKILL)
        f.evidence["pid"] = pid

    def _stop(self, f: Fault, pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        f.undo.append(lambda: kill_quietly(pid, signal.SIGCONT))
        f.evidence["pid"] = pid
        end = time.monotonic() + 5  # the signal is delivered when the kernel next runs it
        while _proc_state(pid) not in ("T", "t", None) and time.monotonic() < end:
            time.sleep(0.01)
        f.evidence["stopped"] = _proc_state(pid) in ("T", "t")

    def _apply_stop_nm(self, f: Fault) -> None:
        self._stop(f, self._nm_pid(f))

    def _apply_stop_service(self, f: Fault) -> None:
        self._stop(f, self._service_pid(f))

    # -- files ---------------------------------------------------------------------------------

    def _apply_disk_full(self, f: Fault) -> None:
        path = self.cl.data_dir(f.target) / FILLER
        f.undo.append(lambda: path.unlink(missing_ok=True))
        written = 0
        chunk = b"\0" * (1 << 20)
        with open(path, "wb", buffering=0) as fh:
            for size in (1 << 20, 4096, 1):
                while True:
                    try:
                        written += fh.write(chunk[:size])
                    except OSError:
                        break
        st = os.statvfs(path)
        f.evidence.update(bytes=written, free_bytes=st.f_bavail * st.f_frsize)

    def _apply_clock_jump(self, f: Fault) -> None:
        node = self.cl.nodes[f.target]
        node.set_clock(int(f.params["offset_s"]))
        f.undo.append(lambda: node.set_clock(0))


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def worker_pids(service_pid: int) -> list[int]:
    """The SIP worker processes of a messaging service that are alive (forked by its SIP
    driver's fork server, or started with exec while that was down)."""
    return [p for p in forkserver.worker_pids(service_pid) if pid_alive(p)]
