"""Driver health as a failover trigger on real pairs (docs/failover-rules.md, "Driver health").

One test per cause, each on real processes and real peers: the message store unreachable (node
a's mount of the shared Maildir replaced by a file), the SMDI serial port gone (a's socat pty
removed, ``lab.smdi.SerialSplitterLab``), the SIP lines unregistered (each node's lines register
with a kamailio registrar of its own; a's is stopped).  In each the active node hands over to
the healthy peer, without hold, and stays inactive while unhealthy.  Then: both nodes unhealthy
(no move), manual mode (no move), a primary alone (``no_secondary`` at every start), and a
secondary whose licence clock survives its restart.

Hang guards only (``GUARD`` and the ``until`` timeouts); no timing is judged.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from lab.pair import Pair
from lab.sip import free_udp_port
from lab.smdi import SerialSplitterLab
from tests.integration.conftest import events_of, status, until, wait_active, wait_events
from tests.integration.test_messaging import FAST, admin
from tests.integration.test_sip import port_states, sip
from tests.integration.test_smdi import smdi
from tests.telephony.sip.test_worker import PJSUA2_MISSING

pytestmark = [pytest.mark.multiprocess]

MOVE_GUARD = 60.0  # s: grace + min_active + the handover, a hang guard only
#: quick rule for the tests: 1 s below the threshold, at least 3 s active, the store probed
#: every 0.2 s
HEALTH = {"health": {"grace": 1.0, "min_active": 3.0, "store_probe": 0.2}}


def with_health(*parts: dict) -> dict:
    out: dict = {}
    for part in (FAST, HEALTH, *parts):
        for section, values in part.items():
            out[section] = {**out.get(section, {}), **values}
    return out


def health(st: dict | None) -> tuple[int | None, dict[str, int]]:
    """(node health, {driver: score}) from a status."""
    if not st:
        return None, {}
    n = st["node"]
    return n.get("health"), {d["name"]: d["score"] for d in n.get("drivers") or []}


async def wait_health(node, pred, what: str) -> dict:
    async def check():
        st = await status(node)
        h, drivers = health(st)
        return st if st and pred(h, drivers) else None
    return await until(check, what, in_thread=False, timeout=MOVE_GUARD)


async def moved_for_health(pair: Pair, *, cause: str) -> None:
    """a (active, unhealthy) hands over to b by the health rule: b active, a inactive and not
    on hold, the decision in a's event log; then a stays inactive while unhealthy."""
    sts = await wait_active(pair, "b", "b active after a's health handover", timeout=MOVE_GUARD)
    assert sts["a"]["node"]["hold"] is False  # back by the normal rules once healthy
    low = events_of(pair.a, "health_low")[-1]  # (lines registering at start are a spell too)
    (move,) = events_of(pair.a, "health_failover")
    assert move["level"] == "warning" and move["fields"]["peer_health"] == 100, move
    assert move["fields"]["health"] < 50 and low["fields"]["health"] < 50
    assert cause in json.dumps(sts["a"]["node"]["drivers"]), sts["a"]["node"]["drivers"]
    assert sts["b"]["peer"]["health"] == move["fields"]["health"] or sts["b"]["peer"]["health"] < 50
    assert sts["a"]["peer"]["health"] == 100
    assert "handover from peer: health" in sts["b"]["node"]["cause"]
    # no flapping: b stays active for longer than grace + min_active while a is unhealthy
    end = trio.current_time() + 5.0
    while trio.current_time() < end:
        st = await status(pair.b)
        assert st and st["node"]["state"] == "active", st and st["node"]
        await trio.sleep(0.1)
    assert len(events_of(pair.a, "health_failover")) == 1


# ============================================================================ the store


def vmha_status(config: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "failover.cli", "status", "--config", str(config), *args],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def store_mounts(pair_dir: Path) -> dict[str, dict]:
    """Each node sees the pair's shared Maildir through a link of its own (its mount): the
    test can take it away from one node only."""
    shared = pair_dir / "data" / "store"
    out = {}
    for name in ("a", "b"):
        mount = pair_dir / f"mnt-{name}"
        mount.symlink_to(shared, target_is_directory=True)
        out[name] = {"store": {"maildir": str(mount)}}
    return out


async def test_message_store_unreachable_hands_over_to_the_peer(pair_dir):
    (pair_dir / "data" / "store").mkdir(parents=True)
    mounts = store_mounts(pair_dir)
    with Pair(pair_dir, extra=with_health(), extra_a=mounts["a"], extra_b=mounts["b"]) as pair:
        pair.start()
        await wait_active(pair, "a")
        st = await wait_health(pair.a, lambda h, d: h == 100 and d.get("store") == 100,
                               "a's store probed")
        assert {"loopback", "store"} <= set(health(st)[1])
        mount = pair_dir / "mnt-a"
        mount.unlink()
        mount.write_text("the mount is gone\n")  # a's store: not a directory any more
        st = await wait_health(pair.a, lambda h, d: d.get("store") == 0, "a's store unreachable")
        await moved_for_health(pair, cause="not a directory")
        # vmha status shows this node's health, each driver's score and detail, and the peer's
        shown = await trio.to_thread.run_sync(vmha_status, pair.a.config)
        line = next(x for x in shown.splitlines() if x.startswith("health: "))
        assert line.startswith("health: 0 (loopback 100 (4/4 ports usable); store 0 (") and \
            "not a directory" in line and line.endswith("; peer 100"), line
        as_json = json.loads(await trio.to_thread.run_sync(vmha_status, pair.b.config, "--json"))
        assert as_json["node"]["health"] == 100 and as_json["peer"]["health"] == 0
        scores = {d["name"]: d["score"] for d in as_json["node"]["drivers"]}
        assert scores == {"loopback": 100, "store": 100, "disk": 100}
        # the mount is back: a is healthy again, b stays active (nothing asks for a move)
        mount.unlink()
        mount.symlink_to(pair_dir / "data" / "store", target_is_directory=True)
        await wait_events(pair.a, "health_ok")
        await wait_health(pair.a, lambda h, d: h == 100, "a healthy again")
        assert (await status(pair.b))["node"]["state"] == "active"


# ============================================================================ the SMDI link


@pytest.mark.skipif(shutil.which("socat") is None,
                    reason="socat is not installed: it makes the SMDI ptys (apt-get install socat)")
async def test_smdi_serial_port_gone_hands_over_to_the_peer(pair_dir):
    with SerialSplitterLab(pair_dir / "serial") as lab:
        with Pair(pair_dir, extra=with_health(), extra_a=smdi(lab, "a"), extra_b=smdi(lab, "b")) as pair:
            pair.start()
            await wait_active(pair, "a")
            for node in (pair.a, pair.b):
                await wait_health(node, lambda h, d: h == 100 and d.get("smdi") == 100,
                                  f"{node.name}'s SMDI link up")
            await trio.to_thread.run_sync(lab.drop, "a")  # a's serial device disappears
            await wait_health(pair.a, lambda h, d: d.get("smdi") == 0, "a's SMDI link down")
            await moved_for_health(pair, cause="down: smdi")
            await trio.to_thread.run_sync(lab.restore, "a")
            await wait_health(pair.a, lambda h, d: h == 100, "a's SMDI link back")


# ============================================================================ SIP lines

_REGISTRAR_CFG = """#!KAMAILIO
# vmha test: a registrar of one node's SIP lines (tests/integration/test_driver_health.py)
debug=2
log_stderror=yes
children=1
disable_tcp=yes
auto_aliases=no
dns=no
rev_dns=no
listen=udp:127.0.0.1:{port}
{mpath}
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "xlog.so"
modparam("registrar", "default_expires", 10)
modparam("registrar", "min_expires", 1)
modparam("registrar", "max_expires", 10)

request_route {{
    if (is_method("REGISTER")) {{
        xlog("L_INFO", "VMHA-REGISTER $tu\\n");
        if (!save("location")) {{ sl_reply_error(); }}
        exit;
    }}
    if (is_method("OPTIONS")) {{ sl_send_reply("200", "registrar"); exit; }}
    sl_send_reply("404", "not here");
}}
"""


class Registrar:
    """kamailio as a SIP registrar for one node's lines: every registration is granted for
    10 s at most, so a line re-registers every few seconds and notices a registrar gone."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir, self.port = workdir, port
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "run").mkdir(exist_ok=True)
        exe = Path(shutil.which("kamailio") or "/usr/sbin/kamailio").resolve()
        mods = sorted(exe.parent.parent.glob("lib/*/kamailio/modules"))
        mpath = f'mpath="{mods[0]}/"' if mods else ""
        cfg = self.workdir / "kamailio.cfg"
        cfg.write_text(_REGISTRAR_CFG.format(port=self.port, mpath=mpath))
        with open(self.workdir / "kamailio.log", "ab") as log:
            self.proc = subprocess.Popen([str(exe), "-DD", "-E", "-Y", str(self.workdir / "run"),
                                          "-m", "16", "-M", "4", "-f", str(cfg)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + 15
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log_tail = (self.workdir / "kamailio.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"the kamailio registrar did not start:\n{log_tail}")
            time.sleep(0.05)

    def answers(self) -> bool:
        """It answers an OPTIONS with 200."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(0.2)
            lport = s.getsockname()[1]
            msg = (f"OPTIONS sip:127.0.0.1:{self.port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{lport}x{time.time_ns()}\r\n"
                   f"Max-Forwards: 70\r\nFrom: <sip:t@127.0.0.1:{lport}>;tag=t{lport}\r\n"
                   f"To: <sip:127.0.0.1:{self.port}>\r\nCall-ID: {time.time_ns()}@127.0.0.1\r\n"
                   "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
            try:
                s.sendto(msg.encode(), ("127.0.0.1", self.port))
                return s.recv(65535).startswith(b"SIP/2.0 200")
            except OSError:
                return False

    def registrations(self) -> int:
        try:
            return (self.workdir / "kamailio.log").read_text(errors="replace").count("VMHA-REGISTER")
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # kamailio and its children, by PID
            except ProcessLookupError:
                pass
            proc.wait(10)


@pytest.mark.skipif(PJSUA2_MISSING is not None, reason=PJSUA2_MISSING or "")
@pytest.mark.skipif(shutil.which("kamailio") is None,
                    reason="kamailio is not installed (apt-get install kamailio)")
async def test_sip_lines_unregistered_hands_over_to_the_peer(pair_dir):
    regs = {n: Registrar(pair_dir / f"registrar-{n}", free_udp_port()) for n in ("a", "b")}
    try:
        for r in regs.values():
            r.start()
        extra = {n: sip(n, mwi_port=free_udp_port(), count=2, mode="register",
                        registrar=f"sip:127.0.0.1:{regs[n].port}", user="vm", notify_timeout=2)
                 for n in ("a", "b")}
        extra = {n: {**e, "ports": {**e["ports"], "loopback": {"enabled": False}}}
                 for n, e in extra.items()}
        with Pair(pair_dir, extra=with_health(), extra_a=extra["a"], extra_b=extra["b"]) as pair:
            pair.start()
            await wait_active(pair, "a")
            for node in (pair.a, pair.b):
                await until(lambda node=node: port_states(node) == {"sip-1": "idle", "sip-2": "idle"},
                            f"{node.name}'s lines registered", timeout=MOVE_GUARD)
            await wait_health(pair.a, lambda h, d: h == 100 and d.get("sip") == 100, "a healthy")
            regs["a"].stop()  # a's registrar is gone: its lines' refreshes fail
            await wait_health(pair.a, lambda h, d: d.get("sip") == 0, "a's lines unregistered")
            await moved_for_health(pair, cause="down: sip-1")
            assert port_states(pair.b) == {"sip-1": "idle", "sip-2": "idle"}
            regs["a"].start()  # back: a's lines register again, a is healthy
            await wait_health(pair.a, lambda h, d: h == 100, "a's lines registered again")
    finally:
        for r in regs.values():
            r.stop()


# ============================================================================ no move


async def test_both_unhealthy_no_move(pair_dir):
    """Both nodes lose the store: neither is healthier by the margin, a stays active and says
    why it does not move."""
    (pair_dir / "data" / "store").mkdir(parents=True)
    mounts = store_mounts(pair_dir)
    with Pair(pair_dir, extra=with_health(), extra_a=mounts["a"], extra_b=mounts["b"]) as pair:
        pair.start()
        await wait_active(pair, "a")
        for node in (pair.a, pair.b):
            await wait_health(node, lambda h, d: d.get("store") == 100, f"{node.name}'s store probed")
        for name in ("a", "b"):
            mount = pair_dir / f"mnt-{name}"
            mount.unlink()
            mount.write_text("gone\n")
        await wait_health(pair.a, lambda h, d: h == 0, "a unhealthy")
        await wait_health(pair.b, lambda h, d: h == 0, "b unhealthy")
        blocked = await wait_events(pair.a, "health_blocked",
                                    where=lambda e: e["fields"]["why"] == "peer_not_healthier")
        assert "is not 50 above 0" in blocked[0]["message"]
        sts = await wait_active(pair, "a")
        assert sts["a"]["peer"]["health"] == 0
        assert not events_of(pair.a, "health_failover")


async def test_manual_mode_no_move(pair_dir):
    (pair_dir / "data" / "store").mkdir(parents=True)
    mounts = store_mounts(pair_dir)
    manual = {"failover": {"mode": "manual"}}
    with Pair(pair_dir, extra=with_health(), extra_a=mounts["a"],
              extra_b={**mounts["b"], **manual}) as pair:
        pair.start()
        await wait_active(pair, "a")
        await wait_health(pair.a, lambda h, d: d.get("store") == 100, "a's store probed")
        mount = pair_dir / "mnt-a"
        mount.unlink()
        mount.write_text("gone\n")
        blocked = await wait_events(pair.a, "health_blocked",
                                    where=lambda e: e["fields"]["why"] == "peer_manual")
        assert "b is in manual mode" in blocked[0]["message"]
        sts = await wait_active(pair, "a")
        assert sts["a"]["node"]["health"] == 0 and sts["a"]["peer"]["mode"] == "manual"
        # b back in automatic mode: the move goes ahead
        r = await admin(pair.b, {"op": "mode", "mode": "automatic"})
        assert r and r.get("ok"), r
        await wait_active(pair, "b", timeout=MOVE_GUARD)
        assert len(events_of(pair.a, "health_failover")) == 1


# ============================================================================ the guide's rules


async def test_primary_alone_logs_no_secondary_at_every_start(pair_dir):
    with Pair(pair_dir, extra=FAST) as pair:
        for start in (1, 2):
            pair.a.start()
            await until(lambda: pair.a.state() == "active", f"a active alone (start {start})")
            errs = await wait_events(pair.a, "no_secondary", level="error", count=start)
            assert "without hearing its secondary b" in errs[-1]["message"]
            assert pair.a.stop() == 0
        pair.start()  # both: the secondary answers, nothing more is logged
        await wait_active(pair, "a")
        await wait_events(pair.a, "peer_up", count=1)
        assert len(events_of(pair.a, "no_secondary")) == 2


def state_file(pair_dir: Path, name: str) -> dict:
    return json.loads((pair_dir / "data" / name / "state.json").read_text())


async def test_secondary_licence_clock_survives_its_restart(pair_dir):
    """b hears a (its contact time is written to its state file), a goes away, b is restarted:
    b keeps the old contact time, so its after-contact limit runs from there and it stops
    answering when that ends (a fresh clock would have used the 4-hour never-in-contact limit
    and kept it active)."""
    limit = 20.0
    extra = {**FAST, "licence": {"after_contact_limit": limit, "no_contact_limit": 14400}}
    with Pair(pair_dir, extra=extra) as pair:
        pair.start()
        await wait_active(pair, "a")
        contact = await until(lambda: state_file(pair_dir, "b").get("last_contact_wall"),
                              "b's contact time in its state file")
        assert contact <= time.time()
        st = await status(pair.b)
        assert st["node"]["last_contact_wall"] >= contact and st["node"]["licensed"]
        assert pair.a.stop() == 0
        await until(lambda: pair.b.state() == "active", "b active after a stopped")
        assert pair.b.stop() == 0
        # its activation wrote the latest contact with the term reservation
        contact = state_file(pair_dir, "b")["last_contact_wall"]
        assert contact is not None and contact <= time.time()
        restarted = time.time()
        pair.b.start()  # a real restart, alone
        st = await until(lambda: pair.b.status(), "b answers after its restart")
        assert st["node"]["last_contact_wall"] == contact  # read back, not restarted
        # the after-contact clock runs from the old contact: b does not answer once it has
        # run out (whether or not it was active alone for a while before, which depends on
        # how soon its service started)
        st = await until(lambda: (s := pair.b.status()) and not s["node"]["licensed"]
                         and s["node"]["state"] == "inactive" and s, "b unlicensed",
                         timeout=limit + 30)
        assert time.time() >= contact + limit and not st["node"]["eligible"]
        later = [e for e in pair.b.events() if e["ts"] >= restarted]
        if any(e["event"] == "activating" for e in later):  # it was active alone for a while
            assert any(e["event"] == "deactivated" and e["level"] == "error"
                       and "licence" in e["message"] for e in later), later
