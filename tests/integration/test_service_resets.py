"""Peers that reset their connection at the worst moment, send garbage, or fail to be accepted:
the messaging service contains it and keeps serving (docs/messaging-service.md, "Failures are
contained").

* the SIP driver's worker socket, against a real stand-in worker process
  (``fake_sip_worker.py``) that resets its Unix socket mid-line, right after a call starts, or
  after garbage; a failing ``accept`` (EMFILE) on that socket;
* the loopback trunk of a real service process over TCP: RST (``SO_LINGER`` 1, 0 then close)
  mid-first-line, mid-line during a call, right after the call is answered, after garbage;
  a failing ``accept`` on its listener;
* the SMDI link whose record handling fails.

Every wait is on an event, a message or a counter; ``fail_after`` is a hang guard only.
"""
from __future__ import annotations

import errno
import json
import shutil
import socket
import struct
import sys
from pathlib import Path

import pytest
import trio

from lab.loopback_client import place_call
from telephony.sip import driver as sip_driver
from telephony.sip.driver import SipPorts
from telephony.sip.settings import SipProfile
from tests.integration.test_service_process import loopback_address, service_process
from tests.telephony.helpers import running_service

GUARD = 30  # seconds: a hang guard only
FAKE_WORKER = Path(__file__).resolve().parent / "fake_sip_worker.py"

pytestmark = pytest.mark.multiprocess


# ============================================================================ SIP worker socket

def sip_ports(tmp_path: Path, monkeypatch, plan: list[str]) -> SipPorts:
    """One SIP worker (port sip-1) whose process is ``fake_sip_worker.py`` following ``plan``."""
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    monkeypatch.setenv("FAKE_SIP_PLAN", str(plan_file))
    python = tmp_path / "fake-python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_WORKER} \"$@\"\n")
    python.chmod(0o755)
    sip = SipPorts(profile=SipProfile(count=1), node="a", runtime_dir=tmp_path / "run",
                   media_dir=tmp_path / "media", restart_min=0.05, restart_max=0.2,
                   python=str(python))
    sip.reports = []  # the node's event log, as the service's report() would send it

    async def report(level: str, event: str, message: str) -> None:
        sip.reports.append((event, message))

    sip.report = report
    return sip


def restarts(sip: SipPorts) -> list[str]:
    return [m for e, m in sip.reports if e == "sip_worker_restart"]


async def wait_call_over(mgr, call_id: str) -> None:
    """Until the node manager got ``answered`` and then ``ended`` for ``call_id``."""
    seen: list[str] = []
    while "ended" not in seen:
        msg = await mgr.expect("call")
        if msg["call"]["call_id"] == call_id:
            seen.append(msg["event"])
    assert seen == ["answered", "ended"], seen


async def test_sip_worker_socket_resets_and_garbage_restart_the_worker_and_calls_go_on(
        tmp_path, monkeypatch):
    plan = ["partial_first_line", "reset_mid_line", "reset_after_call_start",
            "garbage_then_reset"]
    sip = sip_ports(tmp_path, monkeypatch, plan)
    with trio.fail_after(GUARD):
        async with running_service(drivers=[sip], offer_hold=GUARD) as (svc, mgr, result):
            await mgr.send("activate", term=2, lease=3600.0)
            # the well-behaved run that follows the four bad ones answers a call that ends
            await wait_call_over(mgr, f"good-{len(plan)}")
            assert not result["done"].is_set()  # the service is still running
            assert sip.counters["worker_restarts"] == len(plan)
            assert svc.task_failures.counts["sip-w1"] == len(plan)
            why_ended = restarts(sip)
            assert len(why_ended) == len(plan)
            # EOF mid-first-line: the worker process also exits, and the driver may see the
            # exit before the EOF (two signs of the same end, in either order)
            assert "closed its connection" in why_ended[0] or "exited" in why_ended[0], why_ended
            for why in why_ended[1:]:                           # the three resets
                assert "connection broke" in why and "reset" in why.lower(), why
            # the calls the resets cut were answered and are over: dropped with their worker
            calls = [(m["event"], m["call"]["call_id"]) for m in mgr.received if m["op"] == "call"]
            for cid in ("reset_mid_line-1", "reset_after_call_start-2", "garbage_then_reset-3"):
                assert ("answered", cid) in calls and ("dropped", cid) in calls, calls
            assert sip.counters["dropped_by_worker"] == 3
            # the failures reach vmha status as the "tasks" counters group
            while True:
                counters = await mgr.expect("counters")
                if counters["groups"].get("tasks", {}).get("sip-w1") == len(plan):
                    break
            # and the port is usable: idle in the health report
            while True:
                health = await mgr.expect("health")
                if health["ports"] == [{"name": "sip-1", "kind": "sip", "state": "idle"}]:
                    break


class FlakyListener(trio.abc.Listener[trio.abc.Stream]):
    """A worker socket whose first ``accept`` calls fail with EMFILE (out of descriptors)."""

    failures_left = 3

    def __init__(self, inner: trio.SocketListener) -> None:
        self.inner = inner
        self.socket = inner.socket

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        if FlakyListener.failures_left > 0:
            FlakyListener.failures_left -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return await self.inner.accept()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_sip_accept_failure_is_logged_counted_and_the_worker_restarted(
        tmp_path, monkeypatch, caplog):
    real = sip_driver._unix_listener

    async def flaky(path):
        return FlakyListener(await real(path))

    monkeypatch.setattr(sip_driver, "_unix_listener", flaky)
    monkeypatch.setattr(FlakyListener, "failures_left", 3)
    sip = sip_ports(tmp_path, monkeypatch, [])  # every run is well-behaved
    with trio.fail_after(GUARD):
        async with running_service(drivers=[sip], offer_hold=GUARD) as (svc, mgr, result):
            await mgr.send("activate", term=2, lease=3600.0)
            await wait_call_over(mgr, "good-3")  # runs 0-2 never got their connection
            assert not result["done"].is_set()
            assert sip.counters["supervisor_errors"] == 3
            assert svc.task_failures.counts["sip-w1"] == 3
            assert "Too many open files" in caplog.text  # logged (the first; rate-limited)
            why_ended = restarts(sip)
            assert len(why_ended) == 3 and all("Too many open files" in r for r in why_ended)


# ============================================================================ loopback trunk

async def tcp_connect(host: str, port: int) -> trio.socket.SocketType:
    s = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    await s.connect((host, port))
    return s


def rst(s: trio.socket.SocketType) -> None:
    """Close with SO_LINGER (1, 0): the kernel sends RST, not FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


async def read_line(s: trio.socket.SocketType) -> dict:
    buf = b""
    while not buf.endswith(b"\n"):
        data = await s.recv(65536)
        assert data, "the service closed the connection"
        buf += data
    return json.loads(buf.split(b"\n")[0])


def offer(call_id: str) -> bytes:
    return json.dumps({"op": "offer", "call_id": call_id, "calling": "4021",
                       "called": "5000"}).encode() + b"\n"


async def test_loopback_resets_at_the_worst_moments_leave_the_service_serving():
    async with service_process(ports=2) as (proc, mgr, hello, log_path):
        host, port = loopback_address(hello)
        with trio.fail_after(GUARD):
            await mgr.send("activate", term=2, lease=3600.0)
            await mgr.expect("activated", term=2)

            # 1. reset in the middle of the first line (the offer)
            s = await tcp_connect(host, port)
            await s.send(offer("half")[:20])
            rst(s)

            # 2. reset in the middle of a line during a call
            s = await tcp_connect(host, port)
            await s.send(offer("mid-line"))
            assert (await read_line(s))["ev"] == "answered"
            await s.send(b'{"op": "hang')
            rst(s)
            await wait_call_over(mgr, "mid-line")

            # 3. reset right after the call is answered (the answer is never read)
            s = await tcp_connect(host, port)
            await s.send(offer("just-answered"))
            msg = await mgr.expect("call", event="answered")
            assert msg["call"]["call_id"] == "just-answered"
            rst(s)
            msg = await mgr.expect("call", event="ended")
            assert msg["call"]["call_id"] == "just-answered"

            # 4. garbage, then a reset
            s = await tcp_connect(host, port)
            await s.send(b"\xff\xfe\x00 not json\n" + b"[" * 3000 + b"\n" + b'{"op": 5}\n')
            assert (await read_line(s))["ev"] == "error"
            await s.send(b"\x00garbage without an end")
            rst(s)

            # a later real call on another connection works, on either port
            for n in range(2):
                out = await place_call(host, port, f"after-{n}", hold=0.0, reply_timeout=GUARD)
                assert out.answered and out.term == 2
            while True:
                health = await mgr.expect("health")
                if [p["state"] for p in health["ports"]] == ["idle", "idle"]:
                    break
            assert proc.returncode is None
        assert "Traceback" not in log_path.read_text()


async def test_loopback_accept_failure_is_counted_and_the_listener_goes_on():
    from telephony.loopback import LoopbackTrunk
    from telephony.runtime.tasks import listen_tcp

    class Flaky(trio.abc.Listener[trio.abc.Stream]):
        def __init__(self, inner):
            self.inner, self.left = inner, 2

        async def accept(self):
            await trio.lowlevel.checkpoint()
            if self.left:
                self.left -= 1
                raise OSError(errno.EMFILE, "Too many open files")
            return await self.inner.accept()

        async def aclose(self):
            await self.inner.aclose()

    (real,) = await listen_tcp("test", "127.0.0.1", 0)
    host, port = real.socket.getsockname()[:2]
    trunk = LoopbackTrunk(count=1, listeners=[Flaky(real)])
    with trio.fail_after(GUARD):
        async with running_service(drivers=[trunk]) as (svc, mgr, _):
            await mgr.send("activate", term=2, lease=3600.0)
            await mgr.expect("activated", term=2)
            out = await place_call(host, port, "after-emfile", hold=0.0, reply_timeout=GUARD)
            assert out.answered
            assert svc.counters()["tasks"] == {"loopback-accept": 2}


def test_a_loopback_address_in_use_is_one_line_naming_the_setting_and_exit_1(tmp_path):
    import subprocess

    from tests.integration.test_service_process import ROOT

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = f"/tmp/vmha-rs-{port}.sock"
        Path(path).unlink(missing_ok=True)
        ctl.bind(path)
        ctl.listen(1)
        proc = subprocess.run([sys.executable, "-m", "telephony.service", "--control", path,
                               "--node", "a", "--loopback-port", str(port)],
                              cwd=ROOT, capture_output=True, text=True, timeout=GUARD)
        ctl.close()
        Path(path).unlink(missing_ok=True)
    finally:
        taken.close()
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln]
    assert len(lines) == 1, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port} (setting ports.loopback.listen)" in lines[0]
    assert "Traceback" not in proc.stderr


# ============================================================================ SMDI link

@pytest.mark.skipif(shutil.which("socat") is None,
                    reason="socat is not installed: it makes the SMDI pty pair (apt-get install socat)")
async def test_smdi_record_handling_failure_reopens_the_link_and_it_goes_on(tmp_path):
    from lab.smdi import LinkService as Service
    from lab.smdi import SocatPair
    from telephony.smdi.core.codec import encode_call_record
    from tests.telephony.smdi.test_driver import Far, make_link
    from tests.util import until

    pair = SocatPair(tmp_path / "node", tmp_path / "pbx")
    pair.start()
    far = Far(tmp_path / "pbx")
    try:
        link, reg, reports = make_link(tmp_path / "node")
        real_add = link.matcher.add
        boom = {"left": 1}

        def add(record, now):  # a bug in the record handling, once
            if boom["left"]:
                boom["left"] -= 1
                raise RuntimeError("record handling bug stand-in")
            return real_add(record, now)

        link.matcher.add = add
        async with trio.open_nursery() as n:
            await n.start(link.run, Service())
            await until(lambda: link.is_open, "open")
            far.write(encode_call_record(3, "B", "5551002", "5551001"))
            await until(lambda: link.task_failures.counts["smdi-link"] == 1, "failure recorded")
            await until(lambda: link.is_open and link.counters["opens"] == 2, "reopened")
            far.write(encode_call_record(2, "B", "5551003", "5551001"))
            await until(lambda: link.counters["records"] == 2, "the next record handled")
            assert any(e == "smdi_down" and "record handling bug" in m for _, e, m in reports)
            n.cancel_scope.cancel()
    finally:
        far.close()
        pair.stop()
