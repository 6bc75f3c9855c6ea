"""Ports that cannot collide: the pair's sockets checked against each other by `vmha configure`
(which derives free ports for what the operator did not give), by `vmha configure --check`, and
at node start; and a listener that cannot bind is one line from `vmha node`, never a traceback.

Real files, real sockets and real `vmha` processes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w
import trio

from failover.config import (
    EXIT_CONFIG,
    ConfigError,
    hosts_overlap,
    listen_binds,
    load_config,
    port_collisions,
    same_host,
    settings_that_must_match,
)
from failover.configure import make_pair, write_pair
from lab.pair import free_port

ROOT = Path(__file__).resolve().parents[2]
VMHA = Path(sys.executable).parent / "vmha"
# the subprocesses import this checkout's code (the editable install may point elsewhere)
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def vmha(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(VMHA), *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV, cwd=ROOT)


def free_block(n: int) -> int:
    """The first of ``n`` consecutive TCP ports free on 127.0.0.1 now."""
    for _ in range(200):
        base = free_port()
        if base + n > 65535:
            continue
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise RuntimeError("no free block of TCP ports")


def bind_all_tcp(*cfgs) -> None:
    """Bind the node link and replication ports of the configurations, all at once (as the
    two nodes will)."""
    socks = []
    try:
        for c in cfgs:
            for b in listen_binds(c):
                if b.setting in ("link.listen", "replication.listen"):
                    s = socket.socket()
                    socks.append(s)
                    s.bind((b.host, b.lo))
                    s.listen()
    finally:
        for s in socks:
            s.close()


def patch(path: Path, **sections) -> None:
    data = tomllib.loads(path.read_text())
    for dotted, values in sections.items():
        t = data
        for k in dotted.split("__"):
            t = t.setdefault(k, {})
        t.update(values)
    path.write_text(tomli_w.dumps(data))


def drop(path: Path, section: str) -> None:
    data = tomllib.loads(path.read_text())
    data.pop(section, None)
    path.write_text(tomli_w.dumps(data))


# ============================================================================ the wizard


def test_make_pair_derives_replication_ports_off_adjacent_link_ports(tmp_path):
    p_text, s_text, _ = make_pair("vm1", "vm2", "127.0.0.1:13653", "127.0.0.1:13654")
    (tmp_path / "primary.toml").write_text(p_text)
    (tmp_path / "secondary.toml").write_text(s_text)
    a, b = load_config(tmp_path / "primary.toml"), load_config(tmp_path / "secondary.toml")
    assert port_collisions(a, b) == [] and settings_that_must_match(a, b) == []
    assert port_collisions(a) == [] and port_collisions(b) == []  # the start-time check too
    assert (a.link.listen.port, b.link.listen.port) == (13653, 13654)  # the operator's, kept
    ports = {a.replication.listen.port, b.replication.listen.port}
    assert len(ports) == 2 and not ports & {13653, 13654, 3671, 3672}
    assert a.replication.peer == b.replication.listen and b.replication.peer == a.replication.listen


def test_make_pair_keeps_the_defaults_when_nothing_collides():
    p_text, s_text, _ = make_pair("vm1", "vm2", "127.0.0.1:13653", "127.0.0.1:13700")
    assert "[replication]" not in p_text and "[replication]" not in s_text  # link port + 1
    p_text, s_text, _ = make_pair("vm1", "vm2", "10.0.0.1:3653", "10.0.0.2:3654")  # two hosts
    assert "[replication]" not in p_text and "3671" in p_text and "3672" in s_text


def test_make_pair_moves_the_default_loopback_ports_but_not_given_ones():
    p_text, s_text, _ = make_pair("vm1", "vm2", "127.0.0.1:3671", "127.0.0.1:3672")
    cfgs = [tomllib.loads(t) for t in (p_text, s_text)]
    lb = {c["ports"]["loopback"]["listen"] for c in cfgs}
    assert len(lb) == 2 and not lb & {"127.0.0.1:3671", "127.0.0.1:3672"}
    with pytest.raises(ConfigError) as ei:
        make_pair("vm1", "vm2", "127.0.0.1:13653", "127.0.0.1:13654", loopback_ports=(13654, 3672))
    assert ("primary.toml ports.loopback.listen 127.0.0.1:13654 collides with "
            "secondary.toml link.listen 127.0.0.1:13654") in str(ei.value)


def test_make_pair_refuses_colliding_link_ports():
    with pytest.raises(ConfigError) as ei:
        make_pair("vm1", "vm2", "127.0.0.1:13653", "127.0.0.1:13653")
    assert ("primary.toml link.listen 127.0.0.1:13653 collides with "
            "secondary.toml link.listen 127.0.0.1:13653") in str(ei.value)
    # the same port on two hosts is the normal case
    make_pair("vm1", "vm2", "10.0.0.1:3653", "10.0.0.2:3653")


def test_vmha_configure_adjacent_link_ports_gives_a_pair_that_binds(tmp_path):
    base = free_block(4)  # the link ports and the two above, where replication will go
    out = tmp_path / "conf"
    r = vmha("configure", "--out", str(out), "--primary", f"vm1@127.0.0.1:{base}",
             "--secondary", f"vm2@127.0.0.1:{base + 1}")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    a, b = load_config(out / "primary.toml"), load_config(out / "secondary.toml")
    assert port_collisions(a, b) == []
    assert a.replication.listen.port != b.link.listen.port
    assert "primary.toml listens on: link.listen" in r.stdout
    bind_all_tcp(a, b)  # both nodes' link and replication listeners, at once, on this host
    r = vmha("configure", "--check", str(out / "primary.toml"), str(out / "secondary.toml"))
    assert r.returncode == 0 and "no ports collide" in r.stdout, r.stdout + r.stderr


def test_vmha_configure_refuses_colliding_given_ports_and_writes_nothing(tmp_path):
    out = tmp_path / "conf"
    r = vmha("configure", "--out", str(out), "--primary", "vm1@127.0.0.1:13653",
             "--secondary", "vm2@127.0.0.1:13654", "--loopback-ports", "3671,13653")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert ("secondary.toml ports.loopback.listen 127.0.0.1:13653" in r.stderr
            and "primary.toml link.listen 127.0.0.1:13653" in r.stderr), r.stderr
    assert not out.exists()


# ============================================================================ --check


def old_wizard_pair(out: Path, lp: int = 13653) -> tuple[Path, Path]:
    """What the wizard wrote before: adjacent link ports, replication at link port + 1."""
    files = write_pair(out, "vm1", "vm2", f"127.0.0.1:{lp}", f"127.0.0.1:{lp + 1}")
    for f in (files.primary, files.secondary):
        drop(f, "replication")
    return files.primary, files.secondary


def test_check_names_both_settings_of_each_collision(tmp_path):
    a, b = old_wizard_pair(tmp_path)
    sip = {"enabled": True, "bind": "127.0.0.1", "count": 8, "per_worker": 4}  # 2 workers
    patch(a, ports__sip={**sip, "sip_port": 5070, "rtp_port": 20000})  # RTP 20000-15, 20016-31
    patch(b, ports__sip={**sip, "sip_port": 5071, "rtp_port": 20024},   # RTP 20024-39, 20040-55
          ports__loopback={"listen": "127.0.0.1:3671"})
    r = vmha("configure", "--check", str(a), str(b))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    collisions = [x for x in lines if " collides with " in x]
    assert collisions == [
        f"{a} replication.listen 127.0.0.1:13654 collides with {b} link.listen 127.0.0.1:13654",
        f"{a} ports.loopback.listen 127.0.0.1:3671 collides with {b} ports.loopback.listen 127.0.0.1:3671",
        f"{a} ports.sip.sip_port 127.0.0.1:5070-5071 collides with "
        f"{b} ports.sip.sip_port 127.0.0.1:5071-5072 (UDP)",
        f"{a} ports.sip.rtp_port 127.0.0.1:20016-20031 collides with "
        f"{b} ports.sip.rtp_port 127.0.0.1:20024-20039 (UDP)",
    ], lines


def test_check_within_one_node_and_udp_tcp_do_not_collide(tmp_path):
    a, b = old_wizard_pair(tmp_path, 14000)
    patch(a, replication={"listen": "127.0.0.1:14100", "peer": "127.0.0.1:14101"},
          ports__sip={"enabled": True, "sip_port": 14000, "rtp_port": 20000},  # UDP 14000: no clash
          ports__loopback={"listen": "127.0.0.1:14100"})
    patch(b, replication={"listen": "127.0.0.1:14101", "peer": "127.0.0.1:14100"})
    r = vmha("configure", "--check", str(a), str(b))
    assert r.returncode == 1
    assert [x for x in r.stdout.splitlines() if "collides" in x] == [
        f"{a} replication.listen 127.0.0.1:14100 collides with {a} ports.loopback.listen 127.0.0.1:14100"]


def test_rtp_ranges_overlap_as_ranges(tmp_path):
    a, b = old_wizard_pair(tmp_path)
    for f, port in ((a, "127.0.0.1:13660"), (b, "127.0.0.1:13661")):
        patch(f, replication={"listen": port})
    patch(a, replication={"peer": "127.0.0.1:13661"})
    patch(b, replication={"peer": "127.0.0.1:13660"})
    patch(a, ports__sip={"enabled": True, "sip_port": 5070, "rtp_port": 20000, "count": 4})  # 20000-20015
    for rtp, collides in ((20015, True), (20016, False), (19990, True), (19984, False)):
        patch(b, ports__sip={"enabled": True, "sip_port": 5080, "rtp_port": rtp, "count": 4})
        out = port_collisions(load_config(a), load_config(b))
        assert bool(out) == collides, (rtp, out)


def test_nodes_on_two_hosts_may_use_the_same_ports(tmp_path):
    a, b = old_wizard_pair(tmp_path)
    patch(a, link={"listen": "10.0.0.1:3653", "peer": "10.0.0.2:3653"})
    patch(b, link={"listen": "10.0.0.2:3653", "peer": "10.0.0.1:3653"},
          ports__loopback={"listen": "127.0.0.1:3671"})
    ca, cb = load_config(a), load_config(b)
    assert not same_host(ca, cb) and port_collisions(ca, cb) == []
    patch(b, link={"listen": "0.0.0.0:3653", "peer": "127.0.0.1:3653"})  # dials a on loopback
    assert same_host(load_config(a), load_config(b))


@pytest.mark.parametrize("h1, h2, proto, overlap", [
    ("127.0.0.1", "127.0.0.1", "tcp", True),
    ("127.0.0.1", "127.0.0.2", "tcp", False),
    ("0.0.0.0", "127.0.0.1", "tcp", True),
    ("0.0.0.0", "::1", "tcp", False),
    ("::", "::1", "tcp", True),
    ("::", "127.0.0.1", "tcp", False),  # trio's TCP listeners are IPv6-only
    ("::", "127.0.0.1", "udp", True),  # a dual-stack UDP socket is assumed
    ("localhost", "127.0.0.1", "tcp", True),
    ("vm1.example", "VM1.example.", "tcp", True),
    ("vm1.example", "10.0.0.1", "tcp", False),
    ("vm1.example", "0.0.0.0", "tcp", True),
])
def test_hosts_overlap(h1, h2, proto, overlap):
    assert hosts_overlap(h1, h2, proto) is overlap and hosts_overlap(h2, h1, proto) is overlap


def test_rtp_ports_per_sip_port_matches_the_worker():
    from failover.config import RTP_PORTS_PER_SIP_PORT
    from telephony.sip.core.worker_protocol import RTP_PORTS_PER_CALL

    assert RTP_PORTS_PER_SIP_PORT == RTP_PORTS_PER_CALL


# ============================================================================ vmha node


def node_files(tmp_path: Path) -> tuple[Path, Path]:
    base = free_block(6)
    files = write_pair(tmp_path, "vm1", "vm2", f"127.0.0.1:{base}", f"127.0.0.1:{base + 3}",
                       loopback_ports=(free_port(), free_port()))
    for f in (files.primary, files.secondary):
        patch(f, log={"console": False}, failover={"startup_wait": 30})
    return files.primary, files.secondary


def events_of(cfg_path: Path) -> list[dict]:
    path = load_config(cfg_path).node.data_dir / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def assert_one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == EXIT_CONFIG, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmha node: "), r.stderr
    return lines[0]


def test_vmha_node_whose_link_port_is_taken_says_so_in_one_line(tmp_path):
    primary, _ = node_files(tmp_path)
    cfg = load_config(primary)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cfg.link.listen.port))
        squatter.listen()
        r = vmha("node", "--config", str(primary))
    line = assert_one_line(r)
    assert f"127.0.0.1:{cfg.link.listen.port}" in line and "link" in line and "listen" in line, line
    assert "in use" in line
    recs = [x for x in events_of(primary) if x["level"] == "error"]
    assert recs and recs[-1]["event"] == "listen_failed" and str(cfg.link.listen.port) in recs[-1]["message"]


def test_vmha_node_whose_replication_port_is_taken_says_so_in_one_line(tmp_path):
    primary, _ = node_files(tmp_path)
    cfg = load_config(primary)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cfg.replication.listen.port))
        squatter.listen()
        r = vmha("node", "--config", str(primary))
    line = assert_one_line(r)
    assert f"127.0.0.1:{cfg.replication.listen.port}" in line and "replication" in line, line


def test_vmha_node_refuses_ports_that_collide_with_the_peers(tmp_path):
    """The old wizard's pair on one host: the primary's replication listener (link port + 1)
    is the secondary's link port.  The primary refuses at start, before binding anything."""
    base = free_block(3)
    a, b = old_wizard_pair(tmp_path, base)
    patch(a, log={"console": False})
    r = vmha("node", "--config", str(a))
    line = assert_one_line(r)
    assert line == (f"vmha node: {a} replication.listen 127.0.0.1:{base + 1} collides with "
                    f"{a} link.peer 127.0.0.1:{base + 1} (where the peer listens, on this host)")
    assert [x["event"] for x in events_of(a) if x["level"] == "error"] == ["port_collision"]


def test_vmha_node_refuses_its_own_colliding_ports(tmp_path):
    primary, _ = node_files(tmp_path)
    cfg = load_config(primary)
    patch(primary, ports__loopback={"listen": str(cfg.replication.listen)})
    r = vmha("node", "--config", str(primary))
    line = assert_one_line(r)
    assert line == (f"vmha node: {primary} replication.listen {cfg.replication.listen} collides "
                    f"with {primary} ports.loopback.listen {cfg.replication.listen}")


def test_a_plain_bind_error_at_start_is_one_line_naming_the_setting(tmp_path, capsys, monkeypatch):
    """A listener that raises the bare OSError of its bind (not a ListenError): the node finds
    which of its listen addresses fails the same way and names it."""
    import failover.link
    from failover.node import run_node

    async def bare_listen(setting, host, port):
        return await trio.open_tcp_listeners(port, host=host or None)

    monkeypatch.setattr(failover.link, "listen_tcp", bare_listen)
    primary, _ = node_files(tmp_path)
    cfg = load_config(primary)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cfg.link.listen.port))
        squatter.listen()
        code = trio.run(run_node, cfg)
    assert code == EXIT_CONFIG
    err = capsys.readouterr().err.splitlines()
    assert err == [f"vmha node: cannot listen on {cfg.link.listen} (setting link.listen): "
                   "Address already in use"], err
