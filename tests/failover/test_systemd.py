"""The node's systemd unit (failover/systemd.py): checked by systemd's own ``systemd-analyze
verify``, and its ExecStart run the way systemd runs it — a real ``vmha node`` with
NOTIFY_SOCKET (a path or an abstract name), WATCHDOG_USEC and standard error on a stream socket
named by JOURNAL_STREAM — to see READY=1, the watchdog pings, STATUS=, STOPPING=1, journal
priorities and exit code 0 after SIGTERM.  Every process started is stopped by its PID."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import tomli_w

from failover.admin import admin_request
from failover.config import load_config
from failover.sdnotify import NOTIFY_VARIABLES
from failover.systemd import configure_systemd, install_steps, unit_text, unit_times
from lab.pair import Pair, kill_quietly, pid_alive

PYTHON = sys.executable  # the venv's interpreter, as `vmha configure --systemd` writes it


def unit_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def verify(unit: Path) -> list[str]:
    """``systemd-analyze verify``'s complaints about ``unit`` (lines naming it or its
    commands); the units it pulls in from this machine are not ours to judge."""
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is needed (Debian package systemd)"
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=120,
                       cwd=unit.parent)
    lines = (r.stdout + r.stderr).splitlines()
    ours = [line for line in lines if unit.name in line or str(unit) in line or "Command " in line]
    if r.returncode != 0:
        ours.append(f"exit code {r.returncode}: {lines}")
    return ours


@pytest.fixture
def pair(tmp_path):
    """A pair written by `vmha configure` (lab.pair's writer, free ports); nothing started."""
    p = Pair(tmp_path / "pair", relay=False)
    yield p
    p.stop()


def write_toml(path: Path, doc: dict) -> Path:
    path.write_text(tomli_w.dumps(doc))
    return path


# ---------------------------------------------------------------------- the unit's text


def test_generated_unit_passes_systemd_analyze_verify(pair, tmp_path, capsys):
    assert configure_systemd(str(pair.a.config), str(tmp_path / "units")) == 0
    unit = tmp_path / "units" / "vmha-a.service"
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert verify(unit) == []
    out = capsys.readouterr().out
    assert f"wrote {unit}" in out and "systemctl daemon-reload" in out
    assert "systemctl enable --now vmha-a.service" in out and "cp " in out

    s = unit_settings(unit.read_text())
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"] and s["KillMode"] == ["mixed"]
    assert s["ExecStart"] == [f"{PYTHON} -m failover.cli node --config {pair.a.config.absolute()}"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Description"][0].endswith("node a (primary)") and s["SyslogIdentifier"] == ["vmha-a"]
    cfg = load_config(pair.a.config)
    assert s["WorkingDirectory"] == [str(cfg.node.data_dir)]
    assert str(cfg.node.data_dir) in s["ReadWritePaths"][0].split()
    assert s["ProtectSystem"] == ["strict"] and s["NoNewPrivileges"] == ["yes"]
    assert s["PrivateDevices"] == ["yes"] and "DeviceAllow" not in s  # no serial line
    assert s["CapabilityBoundingSet"] == [""] and "AmbientCapabilities" not in s
    assert s["RestrictRealtime"] == ["yes"]  # the default profile does not use SCHED_RR
    assert s["PrivateTmp"] == ["no"]  # this test's files are under /tmp
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert "MemoryDenyWriteExecute" not in s
    # the venv's python is root's pyenv here: /root must stay visible
    if os.path.realpath(PYTHON).startswith(("/root/", "/home/")):
        assert s["ProtectHome"] == ["read-only"]


def test_verify_does_complain_about_a_broken_unit(pair, tmp_path):
    """The check above can fail: a bad value, an unknown key, a missing program."""
    assert configure_systemd(str(pair.a.config), str(tmp_path / "units")) == 0
    unit = tmp_path / "units" / "vmha-a.service"
    good = unit.read_text()
    unit.write_text(good.replace("KillMode=mixed", "KillMode=mixd\nNoSuchKey=1"))
    assert len(verify(unit)) >= 2
    unit.write_text(good.replace(f"ExecStart={PYTHON}", "ExecStart=/nonexistent/python"))
    assert verify(unit)


def test_a_node_with_a_serial_line_real_time_and_a_low_port(tmp_path):
    """SMDI on /dev/ttyS0, the fast profile (SCHED_RR 10), the link on port 653, data under
    /var/lib, the admin socket under /run: the device and dialout, the rlimit, the one
    capability, a state and a runtime directory."""
    path = write_toml(tmp_path / "node.toml", {
        "node": {"name": "ums-a", "role": "secondary", "data_dir": "/var/lib/vmha/ums-a"},
        "link": {"listen": "10.0.0.1:653", "peer": "10.0.0.2:3653", "peer_name": "ums-b"},
        "failover": {"profile": "fast"},
        "ports": {"loopback": {"listen": "127.0.0.1:3671"},
                  "smdi": {"enabled": True, "device": "/dev/ttyS0", "terminals": [1, 2]}},
        "store": {"maildir": "/srv/vmha/store"},
        "admin": {"socket": "/run/vmha/ums-a/admin.sock"},
    })
    cfg = load_config(path)
    text = unit_text(cfg, path)
    s = unit_settings(text)
    assert s["PrivateDevices"] == ["no"] and s["DevicePolicy"] == ["closed"]
    assert s["DeviceAllow"] == ["/dev/ttyS0 rw"] and s["SupplementaryGroups"] == ["dialout"]
    assert s["RestrictRealtime"] == ["no"] and s["LimitRTPRIO"] == ["10"]
    assert s["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert s["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert s["StateDirectory"] == ["vmha/ums-a"] and s["StateDirectoryMode"] == ["0700"]
    assert s["ReadWritePaths"] == ["/srv/vmha/store"]  # data_dir is the state directory
    assert s["RuntimeDirectory"] == ["vmha/ums-a"] and s["RuntimeDirectoryPreserve"] == ["yes"]
    steps = install_steps(cfg, tmp_path / "vmha-ums-a.service")
    made = [step.split()[4] for step in steps if step.startswith("install -d")]
    assert made == ["/srv/vmha/store"]  # systemd makes the state and runtime directories
    assert "chown vmha:vmha " + str(cfg.node.key_file) in "\n".join(steps)
    assert s["Description"][0].endswith("node ums-a (secondary)")
    assert s["WatchdogSec"] == ["5s"]
    unit = tmp_path / "units" / "vmha-ums-a.service"
    unit.parent.mkdir()
    unit.write_text(text)
    assert verify(unit) == []


def test_times_follow_the_nodes_settings(tmp_path):
    base = {"node": {"name": "n", "role": "primary", "data_dir": "/srv/vmha/n"},
            "link": {"peer": "10.0.0.2:3653", "peer_name": "m"}, "ports": {"loopback": {"enabled": False}}}
    default = unit_times(load_config(write_toml(tmp_path / "d.toml", base)))
    assert (default.watchdog, default.start) == (5, 90)
    # SIGTERM on the active node: hand over (replication 10 s + 2 s), drain 300 s, stop the service
    assert default.stop == 10 + 2 + 300 + 7 + 30
    guide = unit_times(load_config(write_toml(tmp_path / "g.toml", {
        **base, "failover": {"profile": "guide", "drain_timeout": 30},
        "service": {"start_timeout": 100}})))
    assert guide.watchdog == 10  # ten ping intervals of 1 s
    assert guide.start == 100 + 30 + 30  # start_timeout + startup_wait (30 missed pings) + 30
    assert guide.stop == 10 + 2 + 30 + 7 + 30


def test_refuses_to_overwrite_without_force_and_refuses_unwritable_paths(pair, tmp_path, capsys):
    out = tmp_path / "units"
    assert configure_systemd(str(pair.a.config), str(out)) == 0
    unit = out / "vmha-a.service"
    unit.write_text("# edited by the operator\n")
    assert configure_systemd(str(pair.a.config), str(out)) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert unit.read_text() == "# edited by the operator\n"  # nothing written
    assert configure_systemd(str(pair.a.config), str(out), force=True) == 0
    assert unit.read_text().startswith("# Generated by")
    assert sorted(p.name for p in out.iterdir()) == ["vmha-a.service"]  # no temporary file left

    spaced = write_toml(tmp_path / "spaced.toml", {
        "node": {"name": "n", "role": "primary", "data_dir": str(tmp_path / "my data")},
        "link": {"peer": "10.0.0.2:3653", "peer_name": "m"}, "ports": {"loopback": {"enabled": False}}})
    assert configure_systemd(str(spaced), str(tmp_path / "units2")) == 2
    assert "cannot be written into a systemd unit" in capsys.readouterr().err
    assert not (tmp_path / "units2").exists()
    assert configure_systemd(str(tmp_path / "missing.toml"), str(tmp_path / "units3")) == 2


# ---------------------------------------------------------------------- ExecStart, as systemd runs it


def exec_start(unit: str) -> list[str]:
    (line,) = unit_settings(unit)["ExecStart"]
    return [w.replace("$$", "$").replace("%%", "%") for w in shlex.split(line)]


class NotifySocket:
    """The service manager's end: a datagram socket with SO_PASSCRED, so every message comes
    with the sender's PID (what NotifyAccess=main checks)."""

    def __init__(self, path: Path | None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:
            name = f"vmha-test-{uuid.uuid4().hex}"
            self.sock.bind(b"\0" + name.encode())
            self.address = "@" + name
        else:
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[tuple[float, int, dict[str, str]]] = []  # (monotonic, pid, fields)

    def receive(self, until, what: str, timeout: float = 60.0):
        """Read messages until ``until(messages)`` is true (a hang guard, not a figure)."""
        end = time.monotonic() + timeout
        while not until(self.messages):
            left = end - time.monotonic()
            assert left > 0, f"no {what} in {timeout} s; got {[m for _, _, m in self.messages]}"
            self.sock.settimeout(min(left, 1.0))
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            pid = -1
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:12])[0]
            fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
            self.messages.append((time.monotonic(), pid, fields))
        return self.messages

    def count(self, name: str) -> int:
        return sum(name in m for _, _, m in self.messages)

    def close(self) -> None:
        self.sock.close()


class JournalStream:
    """Standard error as systemd connects it: a stream socket; its device:inode goes in
    JOURNAL_STREAM.  A thread reads what the node writes."""

    def __init__(self):
        self.ours, self.node_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        st = os.fstat(self.node_end.fileno())
        self.env = f"{st.st_dev}:{st.st_ino}"
        self.data = bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while chunk := self.ours.recv(65536):
            self.data += chunk

    def lines(self) -> list[str]:
        self._thread.join(timeout=10)
        return self.data.decode(errors="replace").splitlines()

    def close(self) -> None:
        self.node_end.close()
        self._thread.join(timeout=10)
        self.ours.close()


def service_pid(pid: int) -> int | None:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid), "-f", "telephony.service"], capture_output=True,
                             text=True, timeout=10).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return int(out[0]) if out else None


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode(errors="replace").split("=", 1) for e in raw if b"=" in e)


@pytest.mark.parametrize("abstract", [False, True], ids=["socket-path", "abstract-socket"])
def test_exec_start_under_a_notify_socket_and_a_watchdog(pair, tmp_path, abstract):
    assert configure_systemd(str(pair.a.config), str(tmp_path / "units")) == 0
    argv = exec_start((tmp_path / "units" / "vmha-a.service").read_text())
    cfg = load_config(pair.a.config)
    cfg.node.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # an install step
    notify = NotifySocket(None if abstract else tmp_path / "notify.sock")
    journal = JournalStream()
    env = {k: v for k, v in os.environ.items() if k not in NOTIFY_VARIABLES + ("JOURNAL_STREAM",)}
    env.update(NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="2000000", JOURNAL_STREAM=journal.env)
    proc = subprocess.Popen(argv, cwd=cfg.node.data_dir, env=env, stdin=subprocess.DEVNULL,
                            stdout=journal.node_end, stderr=journal.node_end, start_new_session=True)
    child = None
    try:
        # READY=1, once the admin socket exists and answers
        msgs = notify.receive(lambda m: any("READY" in f for _, _, f in m), "READY=1")
        ready_at = next(t for t, _, f in msgs if "READY" in f)
        assert cfg.admin.socket.exists()
        assert admin_request(cfg.admin.socket, {"op": "status"}, timeout=10)["ok"]
        ready = next(f for _, _, f in msgs if "READY" in f)
        assert ready["STATUS"].startswith("primary ") and "peer b unreachable" in ready["STATUS"]

        # alone, the primary becomes active after its start-up wait: STATUS= says so
        notify.receive(lambda m: any(f.get("STATUS", "").startswith("primary active, term ")
                                     for _, _, f in m), "STATUS=primary active")
        # the pings: every half interval (1 s) while the loop turns; never more often
        notify.receive(lambda m: notify.count("WATCHDOG") >= 4, "4 WATCHDOG=1")
        last = max(t for t, _, f in notify.messages if "WATCHDOG" in f)
        assert notify.count("WATCHDOG") <= (last - ready_at) / 1.0 + 1

        # the messaging service does not see the variables (it cannot notify for the node)
        child = service_pid(proc.pid)
        assert child is not None, "the messaging service child is not running"
        assert "NOTIFY_SOCKET" in environ_of(proc.pid)
        assert not set(NOTIFY_VARIABLES) & set(environ_of(child))

        proc.send_signal(signal.SIGTERM)
        notify.receive(lambda m: any("STOPPING" in f for _, _, f in m), "STOPPING=1")
        assert proc.wait(timeout=60) == 0
        assert not pid_alive(child)
        # every message came from the main process (NotifyAccess=main accepts them)
        assert {pid for _, pid, _ in notify.messages} == {proc.pid}
        stops = [f for _, _, f in notify.messages if "STOPPING" in f]
        assert len(stops) == 1 and stops[0]["STATUS"].startswith("stopping: primary")
    finally:
        if proc.poll() is None:
            kill_quietly(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if child is not None:
            kill_quietly(child, signal.SIGKILL)
        notify.close()
        journal.close()
    lines = journal.lines()
    node_lines = [line for line in lines if re.match(r"<[0-7]>", line)]
    assert node_lines, f"no journal lines: {lines[:5]}"
    # the node manager's event log lines: a priority each, no time stamp of their own
    events = [line for line in node_lines if re.match(r"<[3467]>(ERROR|WARNING|INFO|DEBUG)\s", line)]
    assert any(line.startswith("<6>INFO") for line in events)
    assert any(line.startswith("<4>WARNING") and "shutdown" in line for line in events)
    assert not any(re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) for line in events)


def test_sighup_reloads_the_key_file_as_exec_reload_does(pair, tmp_path):
    """ExecReload is ``kill -HUP $MAINPID``: the running node reads its key file again."""
    assert configure_systemd(str(pair.a.config), str(tmp_path / "units")) == 0
    unit = (tmp_path / "units" / "vmha-a.service").read_text()
    reload_cmd = unit_settings(unit)["ExecReload"][0]
    cfg = load_config(pair.a.config)
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {k: v for k, v in os.environ.items() if k not in NOTIFY_VARIABLES}
    env.update(NOTIFY_SOCKET=notify.address)
    log = open(tmp_path / "node.log", "wb")
    proc = subprocess.Popen(exec_start(unit), env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        notify.receive(lambda m: any("READY" in f for _, _, f in m), "READY=1")
        key = cfg.node.key_file
        key.write_bytes(b"not a key\n")  # a bad file: refused, logged, the running keys stay
        os.chmod(key, 0o600)
        subprocess.run(reload_cmd.replace("$MAINPID", str(proc.pid)).split(), check=True, timeout=10)

        def refused_on_sighup() -> bool:
            log_text = (cfg.node.data_dir / "events.jsonl").read_text()
            records = [json.loads(line) for line in log_text.splitlines()]
            return any(r["event"] == "key_file_error" and "(SIGHUP)" in r["message"] for r in records)

        end = time.monotonic() + 30  # a hang guard
        while not refused_on_sighup():
            assert time.monotonic() < end, "no key_file_error after SIGHUP"
            time.sleep(0.1)
        assert admin_request(cfg.admin.socket, {"op": "status"}, timeout=10)["ok"]
        assert proc.poll() is None  # a reload never stops the node
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
        notify.close()

