"""Harness for running real node pairs on loopback: used by the multi-process tests, the
benchmarks and ``vmha demo``.  Starts real ``vmha node`` processes, a TCP relay on the node
link that can be cut and healed, and talks to the nodes through their admin sockets.
Every process it starts is stopped by PID."""
from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from failover.admin import admin_request
from failover.configure import write_pair


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


# Ports this process has handed out.  A port is only checked free when it is picked, and
# nothing holds it until the process it was meant for binds it, so without this two picks for
# the same pair could return the same number (seen in CI: a node's loopback trunk and its
# replication listener both given 61235).  Not handing a number out again rules that out: the
# last 4,000 numbers handed out (about a sixth of the ports) are never handed out again; once
# 8,000 are remembered the older ones are forgotten (those were for tests long finished).
_given_tcp: dict[tuple[str, int], None] = {}
_given_udp: dict[int, None] = {}
_given_lock = threading.Lock()


def _remember(given: dict, keys) -> None:
    for k in keys:
        given[k] = None
    if len(given) > 8000:
        for k in list(given)[:len(given) - 4000]:
            del given[k]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid``; a process already gone (or not ours) is no error."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now, outside the kernel's ephemeral range, and not handed out
    before by this process.  Outside the ephemeral range: a port the kernel hands out for
    bind(0) may be given again to an outgoing connection's source port before the node binds
    it (seen as "Address already in use" with many connections in a test)."""
    lo, hi = _ephemeral_range()
    ranges = [r for r in ((1024 + 1, lo - 1), (hi + 1, 65535)) if r[0] < r[1]] or [(20000, 30000)]
    with _given_lock:
        for _ in range(1000):
            port = random.randint(*random.choice(ranges))
            if (host, port) in _given_tcp:
                continue
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _remember(_given_tcp, [(host, port)])
            return port
    raise RuntimeError(f"no free TCP port on {host}")


def free_udp_block(n: int = 1, *, top: int = 64000) -> int:
    """The first of ``n`` consecutive UDP ports free on 127.0.0.1 now, none of them handed
    out before by this process, outside the kernel's ephemeral range (SIP callers' and SIPp's
    own ports come from there) and below ``top`` (a SIP node's RTP ports are one contiguous block
    above its start: ``telephony.sip.settings.rtp_span``)."""
    lo, hi = _ephemeral_range()
    ranges = [r for r in ((10000, min(lo, top) - n), (hi + 1, top - n)) if r[0] < r[1]]
    with _given_lock:
        for _ in range(1000):
            base = random.randrange(*random.choice(ranges or [(20000, 30000)]))
            block = range(base, base + n)
            if any(p in _given_udp for p in block):
                continue
            if udp_block_free(base, n):
                _remember(_given_udp, block)
                return base
    raise RuntimeError("no free UDP port block on 127.0.0.1")


def udp_block_free(base: int, n: int) -> bool:
    """Whether UDP ports ``base`` .. ``base + n - 1`` can all be bound on 127.0.0.1 now."""
    socks = []
    try:
        for p in range(base, base + n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


class TcpRelay:
    """Forwards 127.0.0.1:listen -> 127.0.0.1:target.  ``cut()`` stops forwarding in both
    directions without closing anything (a pulled cable: TCP keeps the bytes and delivers them
    after ``heal()``); ``reset()`` closes every connection (a rebooted switch)."""

    def __init__(self, target_port: int, listen_port: int | None = None):
        self.target = target_port
        self.listen_port = listen_port or free_port()
        self._lsock = socket.socket()
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(("127.0.0.1", self.listen_port))
        self._lsock.listen(16)
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._flowing = threading.Event()
        self._flowing.set()
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"relay-{self.listen_port}")
        self._thread.start()

    def cut(self) -> None:
        self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()

    @property
    def is_cut(self) -> bool:
        return not self._flowing.is_set()

    def reset(self) -> None:
        with self._lock:
            for a, b in self._pairs:
                for s in (a, b):
                    try:
                        s.close()
                    except OSError:
                        pass
            self._pairs.clear()

    def close(self) -> None:
        self._stop = True
        self.reset()
        self._lsock.close()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop:
            with self._lock:
                socks = [self._lsock] + [s for p in self._pairs for s in p]
            try:
                readable, _, _ = select.select(socks if self._flowing.is_set() else [self._lsock],
                                               [], [], 0.01)
            except (OSError, ValueError):
                continue
            for s in readable:
                if s is self._lsock:
                    try:
                        c, _ = self._lsock.accept()
                        u = socket.create_connection(("127.0.0.1", self.target), timeout=1)
                        for x in (c, u):
                            x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                            x.setblocking(True)
                        with self._lock:
                            self._pairs.append((c, u))
                    except OSError:
                        try:
                            c.close()
                        except (OSError, UnboundLocalError):
                            pass
                    continue
                if not self._flowing.is_set():
                    continue
                with self._lock:
                    pair = next((p for p in self._pairs if s in p), None)
                if pair is None:
                    continue
                other = pair[1] if s is pair[0] else pair[0]
                try:
                    data = s.recv(65536)
                    if not data:
                        raise OSError("closed")
                    other.sendall(data)
                except OSError:
                    with self._lock:
                        if pair in self._pairs:
                            self._pairs.remove(pair)
                    for x in pair:
                        try:
                            x.close()
                        except OSError:
                            pass


@dataclass
class Node:
    name: str
    config: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    env: dict = field(default_factory=dict)

    def start(self, extra_env: dict | None = None) -> None:
        env = {**os.environ, **self.env, **(extra_env or {})}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "failover.cli", "node",
                                      "--config", str(self.config)],
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def admin(self, request: dict, timeout: float = 5.0) -> dict | None:
        from failover.config import load_config

        sock = load_config(self.config).admin.socket
        try:
            return admin_request(sock, request, timeout=timeout)
        except (OSError, ValueError):
            return None

    def status(self) -> dict | None:
        r = self.admin({"op": "status"})
        return r["status"] if r and r.get("ok") else None

    def state(self) -> str | None:
        st = self.status()
        return st["node"]["state"] if st else None

    def service_pid(self) -> int | None:
        """PID of the messaging service child (found by its parent and command line)."""
        if self.proc is None:
            return None
        try:
            out = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-f", "telephony.service"],
                                 capture_output=True, text=True, timeout=5).stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            return None
        return int(out[0]) if out else None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL of the whole process group (node manager and service)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        rc = self.proc.wait(timeout=5)
        self._log.close()
        return rc

    def kill(self) -> None:
        """kill -9 of the node manager only: its service must notice and stop on its own."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=5)

    def events(self) -> list[dict]:
        from failover.config import load_config

        path = load_config(self.config).node.data_dir / "events.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


def analog_sections(socket: str | Path, *, profile: str = "analog-dtmf", **keys) -> dict:
    """The TOML sections that put one node's voice ports on a voice-board simulator's board:
    ``[ports.analog]`` with the simulator backend on ``socket`` (``keys`` add or override its
    keys: ``count``, ``rings``, ``tone_profile`` ...), the loopback trunk off (a node's voice
    ports are the analog lines alone), ``[integration] profile`` (``analog-dtmf``: call
    information and lamps by DTMF on the lines; ``analog-smdi``: by the SMDI link, whose
    ``[ports.smdi]`` the caller adds)."""
    return {"ports": {"loopback": {"enabled": False},
                      "analog": {"enabled": True, "backend": "sim", "socket": str(socket), **keys}},
            "integration": {"profile": profile}}


#: each node's SCCP device-name prefix: a's ports register as ``CiscoUM1-VI1`` ...,
#: b's as ``CiscoUM2-VI1`` ... (one CallManager hunts over both lists)
SCCP_PREFIXES = {"a": "CiscoUM1-VI", "b": "CiscoUM2-VI"}
SCCP_PROFILE = "cucm-sccp"


def sccp_devices(prefix: str, count: int) -> list[str]:
    """The device names of ``count`` SCCP ports: ``prefix + i`` for i = 1 .. count (the
    driver's port ``sccp-i``)."""
    return [f"{prefix}{i}" for i in range(1, count + 1)]


def server_address(server: str | int | tuple[str, int]) -> str:
    """A CallManager's ``"host:port"`` from ``"host:port"``, ``(host, port)`` or a port on
    127.0.0.1."""
    if isinstance(server, bool):
        raise TypeError(f"not a CallManager address: {server!r}")
    if isinstance(server, int):
        return f"127.0.0.1:{server}"
    if isinstance(server, tuple):
        host, port = server
        return f"{host}:{int(port)}"
    if isinstance(server, str) and server.rpartition(":")[2].isdigit() and ":" in server:
        return server
    raise TypeError(f"not a CallManager address: {server!r}")


def sccp_table(servers, *, prefix: str, count: int = 4, **keys) -> dict:
    """One node's ``[ports.sccp]`` table: ``count`` ports named ``prefix + i`` registering
    with ``servers`` (tried in order: a list of ``"host:port"``, ``(host, port)`` or ports on
    127.0.0.1), station and RTP on 127.0.0.1, RTP on a block of UDP ports of its own (two
    nodes on one host must not share one: ``rtp_ports`` in ``keys`` overrides it); ``keys``
    add or override the other keys (``rehome_probe``, ``keepalive_max``, ``mwi_style`` ...)."""
    servers = [server_address(s) for s in servers]
    if not servers:
        raise ValueError("sccp ports need at least one CallManager")
    if "rtp_ports" not in keys:
        n = 8 * count  # RTP + RTCP per call, room for endpoints still closing
        base = free_udp_block(n)
        keys["rtp_ports"] = f"{base}-{base + n - 1}"
    return {"enabled": True, "count": count, "device_prefix": prefix, "servers": servers,
            "station_ip": "127.0.0.1", "rtp_host": "127.0.0.1", **keys}


def sccp_sections(servers, *, prefix: str, count: int = 4, profile: str = SCCP_PROFILE,
                  **keys) -> dict:
    """The TOML sections that make one node's voice ports SCCP stations of a CallManager (a
    simulator here: ``lab.callmanager``): ``[ports.sccp]`` (:func:`sccp_table`: ``servers``,
    ``prefix``, ``count`` and ``keys``), the loopback trunk off (the node's voice ports are
    its SCCP ports alone) and ``[integration] profile`` (``cucm-sccp``: the call's numbers
    and reason from CallManager's CallInfo, lamps by the ports' MWI calls)."""
    return {"ports": {"loopback": {"enabled": False},
                      "sccp": sccp_table(servers, prefix=prefix, count=count, **keys)},
            "integration": {"profile": profile}}


def merge_sections(*parts: dict | None) -> dict:
    """TOML sections merged one level down, later parts winning: ``{"ports": {"analog": ..}}``
    and ``{"ports": {"smdi": ..}}`` give both tables (``Pair``'s extras replace whole
    sub-tables, so a node's extra made of several parts is merged here first)."""
    out: dict = {}
    for part in parts:
        for section, values in (part or {}).items():
            out[section] = {**out.get(section, {}), **values} if isinstance(values, dict) else values
    return out


class Pair:
    """Two nodes on loopback.  With ``relay=True`` each node link direction and each node's
    replication listener is reached through a TcpRelay, so the test can cut and heal the
    network between the nodes (``cut()`` cuts both, like a pulled cable)."""

    def __init__(self, workdir: Path, *, relay: bool = True, profile: str = "default",
                 extra: dict | None = None, extra_a: dict | None = None, extra_b: dict | None = None,
                 analog=None, analog_keys: dict | None = None,
                 sccp=None, sccp_keys: dict | None = None, http: bool = False):
        """``extra``: TOML sections merged into both nodes' files (a nested table such as
        ``{"ports": {"smdi": {...}}}`` replaces that sub-table); ``extra_a``/``extra_b``: the
        same for one node, after ``extra``.  ``analog``: a voice-board simulator
        (``lab.voiceboard.VoiceBoardSim``, anything with ``socket_path(name)``): each node's
        analog lines on its board's socket (:func:`analog_sections`; ``analog_keys`` are its
        keyword arguments, ``profile`` among them), merged before ``extra_a``/``extra_b``,
        which may add more ``[ports.*]`` tables.  ``sccp``: the CallManagers (a list of
        addresses, :func:`sccp_sections`) both nodes' SCCP ports register with, each node
        under its own device prefix (:data:`SCCP_PREFIXES`); ``sccp_keys`` are the sections'
        keyword arguments (``count``, ``profile``, ``[ports.sccp]`` keys), merged like
        ``analog``.  ``http``: both nodes serve the admin HTTP API on a free loopback port
        (plain HTTP), each with ``peer_url`` the other's, and both operators files hold
        operators ``admin`` (role admin) and ``viewer`` (role read) with the same tokens
        (:attr:`tokens`, :meth:`http_url`); without it the nodes have no ``[http]`` at all."""
        if analog is not None:
            extra_a, extra_b = (merge_sections(analog_sections(analog.socket_path(n), **(analog_keys or {})),
                                               more) for n, more in (("a", extra_a), ("b", extra_b)))
        if sccp is not None:
            extra_a, extra_b = (merge_sections(sccp_sections(sccp, **{"prefix": SCCP_PREFIXES[n],
                                                                       **(sccp_keys or {})}), more)
                                for n, more in (("a", extra_a), ("b", extra_b)))
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        la, lb = free_port(), free_port()
        rla, rlb = free_port(), free_port()  # replication listeners
        self.loop_a, self.loop_b = free_port(), free_port()
        self.relays: list[TcpRelay] = []
        if relay:
            ra, rb = TcpRelay(la), TcpRelay(lb)  # dial ra to reach a, rb to reach b
            rra, rrb = TcpRelay(rla), TcpRelay(rlb)
            self.relays = [ra, rb, rra, rrb]
            dial_a, dial_b = ra.listen_port, rb.listen_port
            rdial_a, rdial_b = rra.listen_port, rrb.listen_port
        else:
            dial_a, dial_b = la, lb
            rdial_a, rdial_b = rla, rlb
        write_pair(self.dir, "a", "b", f"127.0.0.1:{la}", f"127.0.0.1:{lb}", "data",
                   loopback_ports=(self.loop_a, self.loop_b), profile=profile, force=True)
        #: the operators' bearer tokens (``http=True``): {"admin": ..., "read": ...}
        self.tokens: dict[str, str] = {}
        self._http_urls: dict[str, str] = {}
        http_a = http_b = None
        if http:
            ha, hb = free_port(), free_port()
            self._http_urls = {"a": f"http://127.0.0.1:{ha}", "b": f"http://127.0.0.1:{hb}"}
            http_a = {"http": {"listen": f"127.0.0.1:{ha}", "peer_url": self._http_urls["b"]}}
            http_b = {"http": {"listen": f"127.0.0.1:{hb}", "peer_url": self._http_urls["a"]}}
        self._patch(self.dir / "primary.toml", (la, dial_b), (rla, rdial_b), http_a, extra, extra_a)
        self._patch(self.dir / "secondary.toml", (lb, dial_a), (rlb, rdial_a), http_b, extra, extra_b)
        if http:
            self._add_operators()
        (self.dir / "data" / "store").mkdir(parents=True, exist_ok=True)  # the shared Maildir store
        self.a = Node("a", self.dir / "primary.toml", self.dir / "a.log")
        self.b = Node("b", self.dir / "secondary.toml", self.dir / "b.log")

    @staticmethod
    def _patch(path: Path, link: tuple[int, int], repl: tuple[int, int], *extras: dict | None) -> None:
        import tomllib

        import tomli_w

        data = tomllib.loads(path.read_text())
        data["link"]["listen"] = f"127.0.0.1:{link[0]}"
        data["link"]["peer"] = f"127.0.0.1:{link[1]}"
        data.setdefault("replication", {}).update(listen=f"127.0.0.1:{repl[0]}", peer=f"127.0.0.1:{repl[1]}")
        data.pop("http", None)  # the wizard's [http] ports are not picked for tests: set below or none
        for extra in extras:
            for section, values in (extra or {}).items():
                data.setdefault(section, {}).update(values)
        path.write_text(tomli_w.dumps(data))

    def _add_operators(self) -> None:
        """Operators ``admin`` and ``viewer`` with the same tokens in both nodes' files (the
        files are written with mode 0600 by the product's own code)."""
        from failover.config import load_config
        from failover.web.operators import add_operator, new_token

        self.tokens = {"admin": new_token(), "read": new_token()}
        for node in (self.a_config, self.b_config):
            path = load_config(node).http.operators_file
            add_operator(path, "admin", "admin", self.tokens["admin"], replace=True)
            add_operator(path, "viewer", "read", self.tokens["read"], replace=True)

    @property
    def a_config(self) -> Path:
        return self.dir / "primary.toml"

    @property
    def b_config(self) -> Path:
        return self.dir / "secondary.toml"

    def http_url(self, name: str) -> str:
        """Node ``name``'s API base URL, e.g. ``http://127.0.0.1:40123`` (``http=True`` only)."""
        if name not in self._http_urls:
            raise KeyError(f"node {name!r} has no HTTP API (Pair(..., http=True))")
        return self._http_urls[name]

    def node(self, name: str) -> Node:
        return self.a if name == "a" else self.b

    def loop_port(self, name: str) -> int:
        return self.loop_a if name == "a" else self.loop_b

    def cut(self) -> None:
        for r in self.relays:
            r.cut()

    def heal(self) -> None:
        for r in self.relays:
            r.heal()

    def states(self) -> dict[str, str | None]:
        return {"a": self.a.state(), "b": self.b.state()}

    def wait_for(self, predicate, timeout: float = 15.0, poll: float = 0.01, what: str = ""):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            v = predicate()
            if v:
                return v
            time.sleep(poll)
        raise TimeoutError(f"{what or 'condition'} not met in {timeout}s; states {self.states()}")

    def wait_state(self, name: str, state: str, timeout: float = 15.0) -> float:
        """Poll until node ``name`` reports ``state``; returns time.monotonic() when seen."""
        node = self.node(name)
        self.wait_for(lambda: node.state() == state, timeout)
        return time.monotonic()

    def start(self, first: str = "a", gap: float = 0.0) -> None:
        order = [self.a, self.b] if first == "a" else [self.b, self.a]
        order[0].start()
        if gap:
            time.sleep(gap)
        order[1].start()

    def stop(self) -> None:
        for n in (self.a, self.b):
            n.stop()
        for r in self.relays:
            r.close()

    def __enter__(self) -> "Pair":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
