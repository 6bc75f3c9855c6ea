"""lab/nemesis.py on a real pair in namespaces (lab.faultnet.Cluster: two vmha nodes with SIP
lines behind kamailio, the SMDI splitter): every fault kind has its effect while applied and
none after its heal.  Datagrams between the namespaces show the network faults (sockets made
in each namespace by this process); /proc and the nodes' status show the process faults.
Hang guards only; the one time bound checked is a lower one (a delayed packet cannot arrive
before its hold)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.faultnet import ADDR, Cluster, netns_socket, sip_options
from lab.nemesis import KINDS, Nemesis, NemesisError, worker_pids
from lab.pair import pid_alive

pytestmark = [pytest.mark.multiprocess]
GUARD = 120.0  # s: a hang guard for the pair to come back after a process fault


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    assert os.geteuid() == 0, "the fault network needs root (ip netns, iptables, mount): run as root"
    cl = Cluster(tmp_path_factory.mktemp("nemesis"), sip_count=4)
    try:
        cl.start()
        cl.add_subscribers(["1001"])
        yield cl
    finally:
        cl.close()


@pytest.fixture
def nem(cluster):
    ready(cluster)
    n = Nemesis(cluster, seed=11)
    yield n
    n.heal()


def ready(cl: Cluster) -> None:
    """Both nodes answer with a service running, one is active (after a process fault)."""
    cl.wait(lambda: len(cl.active()) == 1 and all(n.service_pid() for n in cl.nodes.values()), GUARD,
            "the pair ready")


def udp(cl: Cluster, src: str, dst: str, n: int = 5, *, port: int = 9200, timeout: float = 1.0,
        gap: float = 0.0) -> list[tuple[int, float]]:
    """Send ``n`` numbered datagrams from ``src``'s namespace to ``dst``'s address; what
    arrived within ``timeout`` after the last: (number, seconds after its send)."""
    rx, tx = netns_socket(cl.net.ns[dst]), netns_socket(cl.net.ns[src])
    with rx, tx:
        rx.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE: no drop at a burst
        rx.bind((ADDR[dst], port))
        sent: dict[int, float] = {}
        for i in range(n):
            sent[i] = time.monotonic()
            tx.sendto(b"%d" % i, (ADDR[dst], port))
            if gap:
                time.sleep(gap)
        got = []
        end = time.monotonic() + timeout
        while True:
            rx.settimeout(max(0.001, end - time.monotonic()))
            try:
                i = int(rx.recv(100))
            except socket.timeout:
                return got
            got.append((i, time.monotonic() - sent[i]))


def test_partition_link_drops_both_directions_until_healed(cluster, nem):
    f = nem.apply("partition_link")
    assert udp(cluster, "a", "b") == [] and udp(cluster, "b", "a") == []
    assert len(udp(cluster, "pbx", "a")) == 5  # the PBX still reaches both
    nem.heal()
    assert f.evidence["packets_matched"] >= 10
    assert len(udp(cluster, "a", "b")) == 5 and len(udp(cluster, "b", "a")) == 5


def test_partition_link_oneway_drops_only_what_the_target_sends(cluster, nem):
    nem.apply("partition_link_oneway", target="b")
    assert udp(cluster, "b", "a") == []
    assert len(udp(cluster, "a", "b")) == 5
    nem.heal()
    assert len(udp(cluster, "b", "a")) == 5


def test_partition_pbx_cuts_one_node_from_the_pbx(cluster, nem):
    nem.apply("partition_pbx", target="a")
    assert sip_options(cluster.net.ns["pbx"], ADDR["a"], 5060, 0.5) is None
    assert "200" in (sip_options(cluster.net.ns["pbx"], ADDR["b"], 5060, 2.0) or "")
    assert udp(cluster, "a", "b", 2) and not udp(cluster, "a", "pbx", 2)
    nem.heal()
    assert len(udp(cluster, "pbx", "a")) == 5 and len(udp(cluster, "a", "pbx")) == 5
    cluster.wait(lambda: sip_options(cluster.net.ns["pbx"], ADDR["a"], 5060, 1.0), 30, "a's SIP port answers")


def test_link_loss_drops_a_share_of_the_packets(cluster, nem):
    f = nem.apply("link_loss", params={"p": 0.5})
    got = udp(cluster, "a", "b", 400, port=9201)
    nem.heal()
    assert 100 < len(got) < 300, len(got)  # binomial(400, 0.5): far outside 5 sigma otherwise
    assert f.evidence["packets_matched"] >= 100
    assert len(udp(cluster, "a", "b", 50, port=9201)) == 50


def test_link_duplicate_delivers_some_packets_twice_and_none_lost(cluster, nem):
    f = nem.apply("link_duplicate", params={"p": 0.5})
    got = udp(cluster, "a", "b", 200, port=9202)
    nem.heal()
    numbers = [i for i, _ in got]
    assert set(numbers) == set(range(200))
    assert 200 < len(numbers) < 400 and max(numbers.count(i) for i in range(200)) == 2
    assert f.evidence["packets_matched"] >= len(numbers) - 200
    after = [i for i, _ in udp(cluster, "a", "b", 50, port=9202)]
    assert sorted(after) == list(range(50))


def test_link_delay_holds_every_packet_and_releases_all_at_heal(cluster, nem):
    f = nem.apply("link_delay", params={"delay_ms": 150, "jitter_ms": 0})
    got = udp(cluster, "a", "b", 20, port=9203, timeout=2.0)
    nem.heal()
    assert sorted(i for i, _ in got) == list(range(20))
    assert min(dt for _, dt in got) >= 0.150  # none before its hold
    q = f.evidence["queue"]
    assert q["received"] >= 20 and q["released"] == q["received"] and q["overflow"] == 0
    assert [dt for _, dt in udp(cluster, "a", "b", 5, port=9203)] and \
        sorted(cluster.net.iptables("-S", "VF-FAULT").stdout.split()) == ["-N", "VF-FAULT"]


def test_link_reorder_lets_later_packets_overtake(cluster, nem):
    f = nem.apply("link_reorder", params={"p": 0.5, "reorder_ms": 50, "delay_ms": 1})
    got = udp(cluster, "b", "a", 100, port=9204, timeout=2.0, gap=0.002)
    nem.heal()
    order = [i for i, _ in got]
    assert sorted(order) == list(range(100)) and order != sorted(order)
    assert f.evidence["queue"]["reordered"] > 0


def test_kill_service_is_sigkill_and_the_node_manager_restarts_it(cluster, nem):
    f = nem.apply("kill_service", target="b")
    pid = f.evidence["pid"]
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)
    nem.heal()
    cluster.wait(lambda: (cluster.nodes["b"].service_pid() or pid) != pid, GUARD, "b's new service")


def test_kill_sip_worker_kills_one_worker_of_the_target(cluster, nem):
    target = "a"
    service = cluster.wait(lambda: cluster.nodes[target].service_pid(), GUARD, "a's service")
    before = cluster.wait(lambda: worker_pids(service), GUARD, "a SIP worker running")
    f = nem.apply("kill_sip_worker", target=target)
    assert f.evidence["pid"] in before
    nem.heal()
    cluster.wait(lambda: not pid_alive(f.evidence["pid"]), 10, "the worker gone")
    cluster.wait(lambda: set(worker_pids(service)) - set(before), GUARD, "a new worker")


def proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("kind", ["stop_nm", "stop_service"])
def test_stop_is_sigstop_until_the_heal(cluster, nem, kind):
    f = nem.apply(kind, target="b")
    pid = f.evidence["pid"]
    assert f.evidence["stopped"] and proc_state(pid) == "T"
    nem.heal()
    cluster.wait(lambda: proc_state(pid) != "T", 5, "SIGCONT")


@pytest.mark.parametrize("kind", ["kill_nm", "restart_node"])
def test_a_killed_or_stopped_node_manager_is_started_again_at_the_heal(cluster, nem, kind):
    node = cluster.nodes["b"]
    f = nem.apply(kind, target="b")
    assert f.evidence["pid"] == node.proc.pid
    cluster.wait(lambda: node.proc.poll() is not None, 60, "b's node manager ended")
    nem.heal()
    assert node.proc.poll() is None and node.proc.pid != f.evidence["pid"]
    cluster.wait(lambda: node.state() is not None, GUARD, "b answers again")


def test_disk_full_fills_the_targets_tmpfs_and_the_heal_frees_it(cluster, nem):
    f = nem.apply("disk_full", target="a")
    st = os.statvfs(cluster.data_dir("a"))
    assert st.f_bavail == 0 and f.evidence["bytes"] > 0
    assert os.statvfs(cluster.data_dir("b")).f_bavail > 0
    nem.heal()
    assert os.statvfs(cluster.data_dir("a")).f_bavail * 4096 >= f.evidence["bytes"] // 2


def test_clock_jump_moves_the_targets_clock_by_an_hour_and_back(cluster, nem):
    node = cluster.nodes["a"]
    prog = "import time; print(time.time())"

    def offset() -> float:
        out = subprocess.run(cluster.net.exec_prefix("a") + [sys.executable, "-c", prog],
                             env={**os.environ, **node.env}, capture_output=True, text=True, timeout=30,
                             check=True).stdout
        return float(out) - time.time()

    f = nem.apply("clock_jump", target="a", params={"offset_s": 3600})
    time.sleep(1.2)  # the clock file is re-read at most once a second
    assert 3570 < offset() < 3630 and node.clock_file.read_text() == "+3600\n"
    nem.heal()
    time.sleep(1.2)
    assert abs(offset()) < 30 and f.end is not None


def test_bad_requests_change_nothing(cluster, nem):
    with pytest.raises(ValueError):
        nem.apply("meteor_strike")
    with pytest.raises(ValueError):
        nem.apply("partition_pbx", target="pbx")
    nem.apply("partition_link")
    with pytest.raises(NemesisError):
        nem.apply("link_loss")
    rules = cluster.net.iptables("-S", "VF-FAULT").stdout
    assert rules.count("-j DROP") == 2 and "statistic" not in rules
    nem.heal()
    assert "-j DROP" not in cluster.net.iptables("-S", "VF-FAULT").stdout
    assert set(KINDS) >= {"partition_link", "clock_jump", "restart_node"} and len(KINDS) == 15
