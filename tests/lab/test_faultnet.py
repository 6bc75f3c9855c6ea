"""lab/faultnet.py: the namespaces and their routes, the tmpfs, the wall-clock shift
(lab/clockshift.c), the clean-up by PID (also of a crashed run's leftovers, never of a live
run's).  Real namespaces, veths, mounts and processes (root).  The whole rig with a running
pair is exercised by tests/lab/test_nemesis.py and tests/bench/test_bench_faults.py."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.faultnet import ADDR, STATE_DIR, FaultNet, NsNode, netns_socket, sweep
from lab.pair import pid_alive

pytestmark = [pytest.mark.multiprocess]


@pytest.fixture(autouse=True)
def root():
    assert os.geteuid() == 0, "the fault network needs root (ip netns, iptables, mount): run as root"


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines())


def udp_passes(net: FaultNet, src: str, dst: str, port: int = 9100, n: int = 3) -> int:
    """Datagrams from ``src``'s namespace that reach a socket on ``dst``'s address (1 s)."""
    rx = netns_socket(net.ns[dst])
    tx = netns_socket(net.ns[src])
    with rx, tx:
        rx.bind((ADDR[dst], port))
        rx.settimeout(1.0)
        for i in range(n):
            tx.sendto(b"%d" % i, (ADDR[dst], port))
        got = 0
        try:
            while got < n:
                rx.recv(100)
                got += 1
        except socket.timeout:
            pass
        return got


def test_the_hosts_reach_each_other_through_the_router_and_the_root_namespace_gets_no_link(tmp_path):
    before = root_links()
    with FaultNet(tmp_path) as net:
        assert {net.ns[h] for h in ("a", "b", "pbx", "r")} <= namespaces()
        assert root_links() == before  # every veth lives inside the run's namespaces
        for src, dst in (("a", "b"), ("b", "a"), ("pbx", "a"), ("pbx", "b"), ("a", "pbx")):
            assert udp_passes(net, src, dst) == 3, (src, dst)
        # the router's fault chains are in place and empty
        out = net.iptables("-S", "VF-FAULT").stdout.split("\n")
        assert out[0] == "-N VF-FAULT" and not [r for r in out[1:] if r]
        assert "-A FORWARD -j VF-DUP" in net.iptables("-t", "mangle", "-S").stdout
        # a process runs in its namespace: it sees only lo and eth0 with the node's address
        p = net.popen("a", ["ip", "-o", "-4", "addr"], stdout=subprocess.PIPE, text=True)
        out = p.communicate(timeout=10)[0]
        addrs = {line.split()[1]: line.split()[3] for line in out.splitlines()}
        assert addrs == {"lo": "127.0.0.1/8", "eth0": f"{ADDR['a']}/24"}, out


def test_close_stops_processes_unmounts_and_deletes_the_namespaces(tmp_path):
    net = FaultNet(tmp_path).start()
    try:
        fs = net.tmpfs(tmp_path / "disk", size_mb=1)
        sleeper = net.popen("pbx", ["sleep", "600"])
        inside = subprocess.Popen(net.exec_prefix("b") + ["sleep", "600"])  # not tracked: found by netns
        state = json.loads(net.state_path.read_text())
        assert state["namespaces"] == list(net.ns.values()) and str(fs) in state["mounts"]
        assert [sleeper.pid, state["pids"][0][1]] in state["pids"]
        with pytest.raises(OSError) as e:  # the tmpfs is as small as asked
            (fs / "big").write_bytes(b"\0" * (2 << 20))
        assert e.value.errno == errno.ENOSPC
    finally:
        net.close()
    sleeper.wait(timeout=5)
    inside.wait(timeout=5)
    assert not pid_alive(sleeper.pid) and not pid_alive(inside.pid)
    assert not mounted(tmp_path / "disk")
    assert not set(net.ns.values()) & namespaces()
    assert not net.state_path.exists()


CRASHING_RUN = """
import sys, time
from pathlib import Path
from lab.faultnet import FaultNet
net = FaultNet(Path(sys.argv[1])).start()
net.tmpfs(Path(sys.argv[1]) / "disk", 1)
p = net.popen("a", ["sleep", "600"])
print(net.run, p.pid, flush=True)
time.sleep(600)
"""


def test_a_crashed_runs_leftovers_are_swept_and_a_live_run_is_left_alone(tmp_path):
    crashed = subprocess.Popen([sys.executable, "-c", CRASHING_RUN, str(tmp_path / "crashed")],
                               stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    run, sleeper = crashed.stdout.readline().split()
    os.kill(crashed.pid, signal.SIGKILL)  # no clean-up of its own
    crashed.wait(timeout=5)
    assert f"vf{run}-a" in namespaces() and pid_alive(int(sleeper))
    assert (STATE_DIR / f"{run}.json").exists()
    with FaultNet(tmp_path / "live") as live:  # its start-up sweep
        assert run in live.swept
        assert not any(ns.startswith(f"vf{run}-") for ns in namespaces())
        assert not mounted(tmp_path / "crashed" / "disk")
        deadline = time.monotonic() + 5
        while pid_alive(int(sleeper)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(int(sleeper))
        assert not (STATE_DIR / f"{run}.json").exists()
        # a sweep while this run lives does not touch it
        assert live.run not in sweep()
        assert set(live.ns.values()) <= namespaces()
        assert udp_passes(live, "a", "b") == 3


def test_a_node_processes_wall_clock_follows_its_clock_file_and_monotonic_and_sleep_stay(tmp_path):
    with FaultNet(tmp_path) as net:
        node = NsNode("a", tmp_path / "a.toml", tmp_path / "a.log", net=net,
                      clock_file=tmp_path / "a.clock")
        # time.sleep: an absolute monotonic clock_nanosleep (libfaketime 0.9.10 broke it)
        prog = "import time; time.sleep(0.01); print(time.time(), time.monotonic())"

        def clock() -> tuple[float, float, float, float]:
            m0 = time.monotonic()
            out = subprocess.run(net.exec_prefix("a") + [sys.executable, "-c", prog],
                                 env={**os.environ, **node.env}, capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            return float(out[0]) - time.time(), float(out[1]), m0, time.monotonic()

        off, mono, m0, m1 = clock()
        assert abs(off) < 30 and m0 <= mono <= m1  # "+0"; monotonic is the host's
        node.set_clock(3600)
        time.sleep(1.2)  # the file is re-read at most once a second
        off, mono, m0, m1 = clock()
        assert 3600 - 30 < off < 3600 + 30 and m0 <= mono <= m1
        node.set_clock(-3600)
        time.sleep(1.2)
        assert -3600 - 30 < clock()[0] < -3600 + 30
        assert node.clock_file.read_text() == "-3600\n"
