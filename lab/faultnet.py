"""The fault campaign's network (lab only): a real pair in Linux network namespaces.

Topology of one run (``run`` is a short hex id; every name carries it)::

    vf<run>-a  (node a, 10.77.1.2) --veth-- +
    vf<run>-b  (node b, 10.77.2.2) --veth-- +-- vf<run>-r  (router: forwards, the faults' iptables)
    vf<run>-pbx (kamailio + callers, 10.77.3.2) --veth-- +

Each namespace has one veth to the router (``eth0`` inside, ``a0``/``b0``/``pbx0`` in the
router, whose side is ``10.77.N.1``); everything between the nodes (node link, replication)
and between the PBX and the nodes (SIP, RTP) crosses the router, so a fault is an iptables rule
in the router's ``VF-FAULT`` (filter FORWARD) or ``VF-DUP`` (mangle FORWARD) chain.  Nothing
leaves the machine: the root namespace has no interface into the topology.

* Nodes (:class:`NsNode`, a :class:`lab.pair.Node`) run ``vmha node`` with ``ip netns exec``
  (which execs: the PID is the node manager's) with their wall clock shifted by a file:
  ``LD_PRELOAD`` of ``lab/clockshift.c`` (built with gcc into the run directory) and
  ``CLOCKSHIFT_FILE`` (``+0`` at start; a clock jump is a write of ``+3600``; re-read at most
  once a second).  Only CLOCK_REALTIME moves; the monotonic clock, sleeps and timed waits are
  the C library's.  (libfaketime 0.9.10, as Debian 12 ships it, with
  ``FAKETIME_DONT_FAKE_MONOTONIC=1`` makes Python 3.11's ``time.sleep`` fail with EINVAL and
  stalled the node managers; see docs/reliability.md.)  Each node's ``data_dir`` is a small
  tmpfs of its own (so a full disk is real); the message store is the pair's shared Maildir
  (``data/store``, on the run directory's disk).
* :class:`NsKamailio` is :class:`lab.sip.KamailioPbx` in the PBX namespace, listening on the
  PBX address and hunting over a's SIP ports, then b's.
* The SMDI line: :class:`lab.smdi.SerialSplitterLab` (socat ptys + the splitter) joins both
  nodes' serial devices and the PBX end (ptys need no network; they are files).
* :class:`Cluster` puts it together (node files, subscribers, start, stop).

Clean-up: every namespace, mount and process of a run is written to a state file
(``/run/vmha-faultnet/<run>.json``, before it is made) and removed at :meth:`FaultNet.close`
by PID (SIGCONT, SIGTERM, then SIGKILL; the processes left inside a namespace are found with
``ip netns pids``), then mounts, then namespaces.  :func:`sweep` (called by every new
:class:`FaultNet`) does the same for the runs whose owner process is gone (a crashed run) and
for ``vf<hex>-*`` namespaces that no state file names; a live run is never touched.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import tomli_w

from failover.configure import write_pair
from lab.pair import Node, kill_quietly, pid_alive
from lab.sip import KamailioPbx
from lab.smdi import SerialSplitterLab

__all__ = ["STATE_DIR", "ADDR", "CLOCKSHIFT_SRC", "build_clockshift", "FaultNet", "NsNode", "NsKamailio",
           "Cluster", "sweep", "netns_call", "netns_socket", "sip_options", "tcp_connects"]

STATE_DIR = Path("/run/vmha-faultnet")
CLOCKSHIFT_SRC = Path(__file__).resolve().parent / "clockshift.c"
NS_RE = re.compile(r"^vf([0-9a-f]{4,8})-(a|b|pbx|r)$")
#: each host's address (the router's side of its link is .1 of the same /24)
ADDR = {"a": "10.77.1.2", "b": "10.77.2.2", "pbx": "10.77.3.2"}
SUBNET = {"a": "10.77.1.0/24", "b": "10.77.2.0/24", "pbx": "10.77.3.0/24"}
LINK_PORT = 7001  # node link; replication is LINK_PORT + 1 (write_pair's default)
SIP_PORT = 5060  # each node's first SIP worker port (on its own address)
RTP_PORT = 20000
PBX_PORT = 5060  # kamailio on the PBX address
CLONE_NEWNET = 0x40000000


def _run(*cmd: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def _starttime(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat): with the PID it
    names one process, never a later one that reused the number."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _same_process(pid: int, start: int | None) -> bool:
    return pid_alive(pid) and start is not None and _starttime(pid) == start


def _stop_pids(pids: list[tuple[int, int | None]], grace: float = 3.0) -> None:
    """SIGCONT + SIGTERM each live process (the same one that was recorded), then SIGKILL
    what is left after ``grace``."""
    live = [(p, s) for p, s in pids if _same_process(p, s)]
    for p, _ in live:
        kill_quietly(p, signal.SIGCONT)
        kill_quietly(p, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end and any(_same_process(p, s) for p, s in live):
        time.sleep(0.05)
    for p, s in live:
        if _same_process(p, s):
            kill_quietly(p, signal.SIGKILL)


def _ns_pids(ns: str) -> list[int]:
    p = _run("ip", "netns", "pids", ns, check=False)
    return [int(x) for x in p.stdout.split() if x.isdigit()]


def _netns_list() -> list[str]:
    p = _run("ip", "netns", "list", check=False)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def _mounted(path: str) -> bool:
    try:
        return any(line.split()[1] == path for line in Path("/proc/mounts").read_text().splitlines())
    except OSError:
        return False


def _teardown(state: dict) -> None:
    """Remove what ``state`` names: processes in its namespaces and its own, mounts, namespaces."""
    for ns in state.get("namespaces", []):
        for pid in _ns_pids(ns):
            kill_quietly(pid, signal.SIGCONT)
            kill_quietly(pid, signal.SIGKILL)
    _stop_pids([(p, s) for p, s in state.get("pids", [])], grace=2.0)
    for mnt in state.get("mounts", []):
        if _mounted(mnt):
            if _run("umount", mnt, check=False).returncode != 0:
                _run("umount", "-l", mnt, check=False)
    present = set(_netns_list())
    for ns in state.get("namespaces", []):
        if ns in present:
            _run("ip", "netns", "del", ns, check=False)


def sweep(state_dir: Path = STATE_DIR) -> list[str]:
    """Remove the leftovers of crashed runs (owner process gone) and campaign namespaces no
    state file names; returns the runs removed.  A run whose owner lives is left alone."""
    removed: list[str] = []
    known: set[str] = set()
    for f in sorted(state_dir.glob("*.json")) if state_dir.exists() else []:
        try:
            st = json.loads(f.read_text())
        except (OSError, ValueError):
            f.unlink(missing_ok=True)
            continue
        if _same_process(int(st.get("owner_pid", 0)), st.get("owner_start")):
            known.update(st.get("namespaces", []))
            continue
        _teardown(st)
        f.unlink(missing_ok=True)
        removed.append(str(st.get("run")))
    orphans: dict[str, list[str]] = {}
    for ns in _netns_list():
        m = NS_RE.match(ns)
        if m and ns not in known:
            orphans.setdefault(m.group(1), []).append(ns)
    for run, names in orphans.items():
        _teardown({"namespaces": names})
        removed.append(run)
    return removed


# ---------------------------------------------------------------------------- namespace calls

_libc = ctypes.CDLL(None, use_errno=True)


def netns_call(ns: str, fn, *args):
    """``fn(*args)`` in a thread that joined network namespace ``ns`` (setns affects only the
    calling thread); its result, or its exception re-raised.  A socket made there stays in ``ns``."""
    out: dict = {}

    def run() -> None:
        try:
            fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            out["value"] = fn(*args)
        except BaseException as e:  # handed to the caller's thread
            out["error"] = e

    t = threading.Thread(target=run, name=f"netns-{ns}")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def netns_socket(ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """A socket in network namespace ``ns``."""
    return netns_call(ns, socket.socket, family, kind)


def sip_options(ns: str, host: str, port: int, timeout: float = 1.0) -> str | None:
    """Send one SIP OPTIONS from namespace ``ns`` to ``host:port``; the answer's status line
    or None (no answer within ``timeout``)."""
    s = netns_socket(ns)
    with s:
        s.bind(("0.0.0.0", 0))
        lport = s.getsockname()[1]
        tag = secrets.token_hex(6)
        s.connect((host, port))
        me = s.getsockname()[0]
        msg = (f"OPTIONS sip:{host}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me}:{lport};branch=z9hG4bK{tag}\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:lab@{me}:{lport}>;tag={tag}\r\nTo: <sip:{host}:{port}>\r\n"
               f"Call-ID: {tag}@{me}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        s.settimeout(timeout)
        try:
            s.send(msg.encode())
            return s.recv(65536).split(b"\r\n", 1)[0].decode("latin-1")
        except OSError:
            return None


def tcp_connects(ns: str, host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connection from ``ns`` to ``host:port`` is accepted within ``timeout``."""
    s = netns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            return True
        except OSError:
            return False


# ---------------------------------------------------------------------------- the network


class FaultNet:
    """The namespaces, veths, addresses and routes of one run, its tmpfs mounts and the
    processes it started; all removed by :meth:`close` (and by a later :func:`sweep` after a
    crash).  Use as a context manager."""

    HOSTS = ("a", "b", "pbx")

    def __init__(self, workdir: Path, *, run: str | None = None, state_dir: Path = STATE_DIR) -> None:
        if os.geteuid() != 0:
            raise PermissionError("the fault network needs root (ip netns, iptables, mount)")
        self.workdir = Path(workdir).absolute()
        self.run = run or secrets.token_hex(2)
        if not re.fullmatch(r"[0-9a-f]{4,8}", self.run):
            raise ValueError(f"run id must be 4-8 hex digits, not {self.run!r}")
        self.state_dir = state_dir
        self.state_path = state_dir / f"{self.run}.json"
        self.ns = {h: f"vf{self.run}-{h}" for h in (*self.HOSTS, "r")}
        self._lock = threading.Lock()
        self.state: dict = {"run": self.run, "owner_pid": os.getpid(), "owner_start": _starttime(os.getpid()),
                            "workdir": str(self.workdir), "namespaces": [], "mounts": [], "pids": []}
        self.swept = sweep(state_dir)
        self.up = False

    # -- state ---------------------------------------------------------------------------------

    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.state_path)

    def track(self, pid: int) -> None:
        """Record a process this run started (killed by PID at close or by a later sweep)."""
        with self._lock:
            self.state["pids"].append([pid, _starttime(pid)])
            self.state["pids"] = [p for p in self.state["pids"] if _same_process(*p)]
            self._save()

    # -- build ---------------------------------------------------------------------------------

    def start(self) -> FaultNet:
        if self.ns["r"] in _netns_list():
            raise RuntimeError(f"namespace {self.ns['r']} exists: run id {self.run} is in use")
        self.state["namespaces"] = list(self.ns.values())
        self._save()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            r = self.ns["r"]
            for ns in self.ns.values():
                _run("ip", "netns", "add", ns)
                _run("ip", "-n", ns, "link", "set", "lo", "up")
            for h in self.HOSTS:
                ns, inside = self.ns[h], ADDR[h]
                gw = inside.rsplit(".", 1)[0] + ".1"
                _run("ip", "-n", r, "link", "add", f"{h}0", "type", "veth",
                     "peer", "name", "eth0", "netns", ns)
                _run("ip", "-n", r, "addr", "add", f"{gw}/24", "dev", f"{h}0")
                _run("ip", "-n", r, "link", "set", f"{h}0", "up")
                _run("ip", "-n", ns, "addr", "add", f"{inside}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                _run("ip", "-n", ns, "route", "add", "default", "via", gw)
            _run("ip", "netns", "exec", r, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            ipt = ("ip", "netns", "exec", r, "iptables", "-w")
            _run(*ipt, "-N", "VF-FAULT")
            _run(*ipt, "-A", "FORWARD", "-j", "VF-FAULT")
            _run(*ipt, "-t", "mangle", "-N", "VF-DUP")
            _run(*ipt, "-t", "mangle", "-A", "FORWARD", "-j", "VF-DUP")
        except BaseException:
            self.close()
            raise
        self.up = True
        return self

    def tmpfs(self, path: Path, size_mb: int = 64) -> Path:
        """A tmpfs of ``size_mb`` MiB mounted at ``path`` (made; mode 0700), removed at close."""
        path = Path(path).absolute()
        path.mkdir(parents=True, exist_ok=True)
        self.state["mounts"].append(str(path))
        self._save()
        _run("mount", "-t", "tmpfs", "-o", f"size={int(size_mb)}m,mode=0700", f"vf{self.run}", str(path))
        return path

    # -- use -----------------------------------------------------------------------------------

    def exec_prefix(self, host: str) -> list[str]:
        """``ip netns exec <ns>``: a command run in ``host``'s namespace (``"r"``: the router)."""
        return ["ip", "netns", "exec", self.ns[host]]

    def popen(self, host: str, argv: list[str], **kw) -> subprocess.Popen:
        """Start ``argv`` in ``host``'s namespace; tracked for clean-up."""
        proc = subprocess.Popen(self.exec_prefix(host) + list(argv), **kw)
        self.track(proc.pid)
        return proc

    def iptables(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """iptables in the router namespace (``-w``: waits for the xtables lock)."""
        return _run(*self.exec_prefix("r"), "iptables", "-w", *args, check=check)

    def close(self) -> None:
        """Stop every process, unmount every tmpfs, delete every namespace of this run."""
        _teardown(self.state)
        self.state_path.unlink(missing_ok=True)
        self.up = False

    def __enter__(self) -> FaultNet:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------- processes


def build_clockshift(directory: Path) -> Path:
    """``directory/clockshift.so`` built from :data:`CLOCKSHIFT_SRC` (again when the source is
    newer)."""
    out = Path(directory) / "clockshift.so"
    if out.exists() and out.stat().st_mtime >= CLOCKSHIFT_SRC.stat().st_mtime:
        return out
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise FileNotFoundError("gcc is not installed: it builds lab/clockshift.c (apt-get install gcc)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    _run(gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(tmp), str(CLOCKSHIFT_SRC), "-ldl",
         timeout=60)
    os.replace(tmp, out)
    return out


class NsNode(Node):
    """A :class:`lab.pair.Node` whose ``vmha node`` runs in its namespace with its wall clock
    shifted by ``clock_file`` (lab/clockshift.c)."""

    def __init__(self, name: str, config: Path, log_path: Path, *, net: FaultNet, clock_file: Path) -> None:
        super().__init__(name, config, log_path)
        self.net = net
        self.clock_file = clock_file
        lib = build_clockshift(net.workdir)
        clock_file.write_text("+0\n")
        self.env = {"LD_PRELOAD": str(lib), "CLOCKSHIFT_FILE": str(clock_file)}

    def start(self, extra_env: dict | None = None) -> None:
        env = {**os.environ, **self.env, **(extra_env or {})}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.net.exec_prefix(self.name) + [
            sys.executable, "-m", "failover.cli", "node", "--config", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)
        self.net.track(self.proc.pid)

    def set_clock(self, offset_s: int) -> None:
        """The node's wall clock ``offset_s`` seconds off the host's (re-read within 1 s)."""
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(f"{offset_s:+d}\n")
        os.replace(tmp, self.clock_file)


class NsKamailio(KamailioPbx):
    """:class:`lab.sip.KamailioPbx` in the PBX namespace on the PBX address: set 1 is a's SIP
    ports, set 2 b's (first available, top down; see lab/sip.py)."""

    def __init__(self, workdir: Path, *, net: FaultNet, primary: list[tuple[str, int]],
                 secondary: list[tuple[str, int]], port: int = PBX_PORT, **kw) -> None:
        super().__init__(workdir, port=port, primary=[("127.0.0.1", 1)], secondary=[], **kw)
        self.primary, self.secondary = list(primary), list(secondary)
        self.net = net
        self.host = ADDR["pbx"]
        self.address = f"{self.host}:{self.port}"

    def _config(self) -> str:
        return (super()._config().replace("listen=udp:127.0.0.1:", f"listen=udp:{self.host}:")
                .replace("sip:pbx@127.0.0.1:", f"sip:pbx@{self.host}:"))

    def start(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "run").mkdir(exist_ok=True)
        self.list_path.write_text(self._dispatcher_list())
        self.cfg_path.write_text(self._config())
        exe = shutil.which(self.kamailio) or shutil.which(self.kamailio, path="/usr/sbin:/usr/local/sbin")
        if exe is None:
            raise FileNotFoundError("kamailio is not installed (apt-get install kamailio)")
        with open(self.log_path, "ab") as log:
            self.proc = self.net.popen("pbx", [exe, "-DD", "-E", "-Y", str(self.workdir / "run"), "-m", "16",
                                               "-M", "4", "-f", str(self.cfg_path)],
                                       cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise RuntimeError(f"kamailio exited with {code} at start-up; see {self.log_path}")
            status = sip_options(self.net.ns["pbx"], self.host, self.port, 0.2)
            if status and " 200 " in status + " ":
                break
            if time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"kamailio does not answer on {self.address}; see {self.log_path}")
        out = _run("pgrep", "-P", str(self.proc.pid), check=False).stdout.split()
        self._children = [int(x) for x in out]


# ---------------------------------------------------------------------------- the rig


def _patch(path: Path, extra: dict) -> None:
    import tomllib

    data = tomllib.loads(path.read_text())
    for section, values in extra.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section].update(values)
        else:
            data[section] = values
    path.write_text(tomli_w.dumps(data))


#: the node files' fast recording settings (as the pair tests use)
FAST = {"messaging": {"realtime_audio": False, "silence": 0.5, "min_message": 0.2, "max_message": 10}}


class Cluster:
    """The whole rig of one campaign run: :class:`FaultNet`, a pair of :class:`NsNode`
    (``sip_count`` SIP lines each, call information from the calls' Diversion, lamps by SMDI
    through the splitter), kamailio in the PBX namespace and the SMDI splitter lab.

    ``cluster.start()`` builds and starts everything and waits until one node is active (a,
    normally), kamailio answers and both nodes' SIP lines are idle; ``cluster.add_subscribers(exts)``;
    ``cluster.close()`` stops it all (also on failure)."""

    def __init__(self, workdir: Path, *, run: str | None = None, sip_count: int = 4,
                 tmpfs_mb: int = 64, extra: dict | None = None) -> None:
        self.dir = Path(workdir).absolute()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.net = FaultNet(self.dir, run=run)
        self.sip_count = sip_count
        self.tmpfs_mb = tmpfs_mb
        self.extra = extra or {}
        self.nodes: dict[str, NsNode] = {}
        self.kamailio: NsKamailio | None = None
        self.serial: SerialSplitterLab | None = None

    @property
    def store_dir(self) -> Path:
        return self.dir / "data" / "store"

    def data_dir(self, name: str) -> Path:
        return self.dir / "data" / name

    def sip_ports(self, name: str) -> list[tuple[str, int]]:
        workers = -(-self.sip_count // 4)
        return [(ADDR[name], SIP_PORT + i) for i in range(workers)]

    def terminals(self, name: str) -> list[int]:
        """SMDI terminal numbers of a node's SIP lines: a 1.., b 101.."""
        base = 1 if name == "a" else 101
        return list(range(base, base + self.sip_count))

    def node_sections(self, name: str) -> dict:
        assert self.serial is not None
        return {
            "ports": {
                "loopback": {"enabled": False},
                "sip": {"enabled": True, "bind": ADDR[name], "sip_port": SIP_PORT, "rtp_port": RTP_PORT,
                        "count": self.sip_count,
                        "mwi_target": f"sip:{{extension}}@{ADDR['pbx']}:5999",  # unused: lamps are SMDI
                        "mwi_account": "sip:{extension}@vm.example"},
                "smdi": {"enabled": True, "device": str(self.serial.tty(name)),
                         "terminals": self.terminals(name)},
            },
            "integration": {"voice_ports": ["sip"], "call_info": "signalling", "mwi": "smdi"},
        }

    def write_files(self) -> None:
        write_pair(self.dir, "a", "b", f"{ADDR['a']}:{LINK_PORT}", f"{ADDR['b']}:{LINK_PORT}", "data",
                   loopback_ports=None, force=True)
        for name, role in (("a", "primary"), ("b", "secondary")):
            _patch(self.dir / f"{role}.toml", {**FAST, **self.node_sections(name), **self.extra})

    def start(self, timeout: float = 60.0) -> None:
        try:
            self.net.start()
            for name in ("a", "b"):
                self.net.tmpfs(self.data_dir(name), self.tmpfs_mb)
            self.store_dir.mkdir(parents=True, exist_ok=True)
            self.serial = SerialSplitterLab(self.dir / "serial")
            self.serial.start()
            for pid in self.serial.pids().values():
                self.net.track(pid)
            self.write_files()
            for name, role in (("a", "primary"), ("b", "secondary")):
                self.nodes[name] = NsNode(name, self.dir / f"{role}.toml", self.dir / f"{name}.log",
                                          net=self.net, clock_file=self.dir / f"{name}.clock")
            self.nodes["a"].start()
            self.nodes["b"].start()
            self.wait(lambda: len(self.active()) == 1, timeout, "one node active")
            self.kamailio = NsKamailio(self.dir / "kamailio", net=self.net, primary=self.sip_ports("a"),
                                       secondary=self.sip_ports("b"), fr_timer_ms=1000, fr_inv_timer_ms=5000)
            self.kamailio.start()
            self.wait(lambda: all(self.lines_idle(n) for n in ("a", "b")), timeout,
                      "both nodes' SIP lines idle")
        except BaseException:
            self.close()
            raise

    def lines_idle(self, name: str) -> bool:
        st = self.nodes[name].status() or {}
        ports = [p for p in st.get("ports", []) if p.get("kind") == "sip"]
        return len(ports) == self.sip_count and all(p.get("state") == "idle" for p in ports)

    def wait(self, predicate, timeout: float, what: str):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            v = predicate()
            if v:
                return v
            time.sleep(0.1)
        raise TimeoutError(f"{what}: not within {timeout:g} s; states {self.states()}")

    def wait_state(self, name: str, state: str, timeout: float = 30.0) -> None:
        self.wait(lambda: self.nodes[name].state() == state, timeout, f"{name} {state}")

    def states(self) -> dict[str, str | None]:
        return {n: node.state() for n, node in self.nodes.items()}

    def active(self) -> list[str]:
        return [n for n, s in self.states().items() if s == "active"]

    def add_subscribers(self, extensions: list[str], timeout: float = 30.0) -> None:
        """Subscribers ``ext`` (mailbox ``ext``, lamps by SMDI) written on the active node."""
        self.db_write([{"op": "put", "table": "subscribers", "row": {
            "extension": e, "name": f"Sub {e}", "mailbox": e, "mwi_method": "smdi", "notify": []}}
            for e in extensions], timeout)

    def db_write(self, ops: list[dict], timeout: float = 30.0) -> None:
        """``db_write`` of ``ops`` on the active node (waits for one up to ``timeout``)."""
        name = self.wait(lambda: (self.active() or [None])[0], timeout, "an active node")
        r = self.nodes[name].admin({"op": "db_write", "ops": ops})
        if not (r and r.get("ok")):
            raise RuntimeError(f"db_write on {name} refused: {r}")

    def close(self) -> None:
        for node in self.nodes.values():
            try:
                node.stop()
            except Exception:  # noqa: BLE001 - clean-up goes on; the teardown kills by PID
                pass
        if self.kamailio is not None:
            self.kamailio.stop()
        if self.serial is not None:
            self.serial.stop()
        for name in self.nodes:
            self.save_data(name)
        self.net.close()

    def save_data(self, name: str) -> Path | None:
        """Copy node ``name``'s data_dir (its tmpfs: event log, database, spool) to
        ``<workdir>/saved-<name>`` before the tmpfs goes (regular files only; not the filler
        of a full disk)."""
        src, dst = self.data_dir(name), self.dir / f"saved-{name}"
        if not _mounted(str(src)):
            return None

        def skip(folder: str, names: list[str]) -> list[str]:
            def keep(n: str) -> bool:
                p = os.path.join(folder, n)
                return not n.startswith(".vf-") and (os.path.isdir(p) or os.path.isfile(p))
            return [n for n in names if not keep(n)]

        shutil.rmtree(dst, ignore_errors=True)
        try:
            shutil.copytree(src, dst, ignore=skip, symlinks=True)
        except (OSError, shutil.Error):
            return None
        return dst

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
