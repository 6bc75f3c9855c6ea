"""``python -m telephony.service`` as a real child process against a control socket the test
listens on, with real loopback calls on 127.0.0.1.

Real clock: every ``fail_after`` here is a hang guard, never a performance limit.  Every process
started is killed by PID in a ``finally``.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from lab.loopback_client import open_call, place_call
from tests.telephony.helpers import FakeManager

ROOT = Path(__file__).resolve().parents[2]
GUARD = 30  # seconds; only a guard against a hang

pytestmark = pytest.mark.multiprocess


@asynccontextmanager
async def service_process(*extra: str, offer_hold: float = 10.0, ports: int = 2):
    """Listen on a fresh control socket, start the service, accept it; yields
    (process, manager, hello, log_path)."""
    tmp = tempfile.mkdtemp(prefix="vmha-t-", dir="/tmp")  # AF_UNIX paths: at most 107 bytes
    path = os.path.join(tmp, "control.sock")
    log_path = Path(tmp) / "service.log"
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    proc = None
    try:
        await sock.bind(path)
        sock.listen(1)
        listener = trio.SocketListener(sock)
        with open(log_path, "wb") as log_file:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "telephony.service", "--control", path, "--node", "t1",
                 "--loopback-port", "0", "--ports", str(ports), "--health-interval", "0.02",
                 "--offer-hold", str(offer_hold), *extra],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
        with trio.fail_after(GUARD):
            stream = await listener.accept()
        manager = FakeManager(stream)
        with trio.fail_after(GUARD):
            hello = await manager.expect("hello")
        try:
            yield proc, manager, hello, log_path
        except BaseException:
            print(log_path.read_text(errors="replace"))
            raise
        finally:
            await stream.aclose()
            await listener.aclose()
    finally:
        if proc is not None and proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def loopback_address(hello: dict) -> tuple[str, int]:
    host, port = hello["loopback"].rsplit(":", 1)
    assert host == "127.0.0.1"
    return host, int(port)


async def test_service_process_end_to_end():
    async with service_process() as (proc, mgr, hello, log_path):
        assert hello["pid"] == proc.pid and hello["node"] == "t1"
        assert hello["ports"] == ["loopback-1", "loopback-2"]
        host, port = loopback_address(hello)
        with trio.fail_after(GUARD):
            health = await mgr.expect("health")
            assert health["state"] == "inactive" and health["term"] is None
            assert [p["state"] for p in health["ports"]] == ["idle", "idle"]

            # a call while inactive: offered to the node manager, answered once activated
            async with trio.open_nursery() as n:
                out = {}

                async def caller():
                    out["first"] = await place_call(host, port, "call-1", calling="4021",
                                                    called="5000", reason="busy", hold=0.05)

                n.start_soon(caller)
                offered = await mgr.expect("call_offered")
                assert offered["call"]["call_id"] == "call-1"
                assert offered["call"]["reason"] == "busy"
                assert offered["call"]["node"] == "t1"
                await mgr.send("activate", term=2, lease=30.0)
                await mgr.expect("activated", term=2)
                answered = await mgr.expect("call", event="answered")
                assert answered["term"] == 2
            assert out["first"].result == "answered" and out["first"].term == 2
            await mgr.expect("call", event="ended")

            # a short lease that is not renewed: the service fences itself
            await mgr.send("activate", term=4, lease=0.3)
            await mgr.expect("activated", term=4)
            fenced = await mgr.expect("fenced")
            assert fenced["term"] == 4
            assert (await mgr.expect("health"))["state"] == "fenced"

            # and new calls are not answered: offered, refused, rejected
            async with trio.open_nursery() as n:
                async def caller2():
                    out["second"] = await place_call(host, port, "call-2")

                n.start_soon(caller2)
                offered = await mgr.expect("call_offered")
                await mgr.send("refuse_call", call_id=offered["call"]["call_id"],
                               reason="the peer is active")
            assert out["second"].result == "rejected" and out["second"].reason == "refused"

            # a call in progress when the node manager goes away is dropped, and the
            # process exits on its own
            await mgr.send("activate", term=6, lease=30.0)
            await mgr.expect("activated", term=6)
            async with open_call(host, port, "call-3") as call:
                assert call.answered and call.answer["term"] == 6
                await mgr.stream.aclose()
                assert (await call.wait_dropped())["ev"] == "dropped"
            assert await proc.wait() == 0
        log_text = log_path.read_text()
        assert "fenced" in log_text and "node manager is gone" in log_text


async def test_shutdown_command_exits_0():
    async with service_process() as (proc, mgr, hello, _):
        with trio.fail_after(GUARD):
            await mgr.expect("health")
            await mgr.send("shutdown")
            await mgr.drain_until_closed()
            assert await proc.wait() == 0


async def test_sigterm_is_a_clean_exit():
    async with service_process() as (proc, mgr, hello, log_path):
        host, port = loopback_address(hello)
        with trio.fail_after(GUARD):
            await mgr.send("activate", term=2, lease=30.0)
            await mgr.expect("activated")
            async with open_call(host, port, "c1") as call:
                assert call.answered
                os.kill(proc.pid, signal.SIGTERM)
                dropped = await mgr.expect("call", event="dropped")
                assert dropped["call"]["call_id"] == "c1"
                assert (await call.wait_dropped())["ev"] == "dropped"
            await mgr.drain_until_closed()
            assert await proc.wait() == 0
        assert "SIGTERM received" in log_path.read_text()


@pytest.mark.parametrize("args,fragment", [
    (["--node", "a"], "--loopback-port is required"),
    (["--node", "a b", "--loopback-port", "1"], "expected a node name"),
    (["--node", "a", "--loopback-port", "70000"], "must be from 0 to 65535"),
    (["--node", "a", "--loopback-port", "1", "--offer-hold", "soon"], "expected a number"),
    (["--node", "a", "--loopback-port", "1", "--health-interval", "0"], "must be from 0.001"),
])
def test_bad_arguments_exit_2_with_a_clear_message(args, fragment):
    proc = subprocess.run([sys.executable, "-m", "telephony.service", "--control", "/tmp/x.sock",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=GUARD)
    assert proc.returncode == 2
    assert fragment in proc.stderr


def test_missing_control_socket_exits_1():
    proc = subprocess.run([sys.executable, "-m", "telephony.service", "--control",
                           "/tmp/vmha-no-such-dir/c.sock", "--node", "a", "--loopback-port", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=GUARD)
    assert proc.returncode == 1
    assert "cannot connect to the control socket" in proc.stderr


async def test_starved_service_reads_renewals_sent_in_time_instead_of_fencing():
    """SIGSTOP the active service while its manager keeps renewing (absolute deadlines): on
    SIGCONT it handles the queued renewals and keeps its term.  Renewals that stop do fence it."""
    import time as _time

    # The stop (1.5 s) is longer than the lease (1 s), so the activation's own deadline passes
    # while the service is stopped; the lease leaves the service up to 0.9 s after SIGCONT to
    # get a CPU (a loaded machine took more than 0.3 s with a 0.4 s lease).
    lease = 1.0
    async with service_process() as (proc, mgr, hello, log_path):
        await mgr.send("activate", term=2, lease=lease, until=_time.monotonic() + lease)
        with trio.fail_after(GUARD):
            await mgr.expect("activated", term=2)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            for _ in range(15):  # 1.5 s of renewals queue up in the socket
                await trio.sleep(0.1)
                await mgr.send("renew", term=2, lease=lease, until=_time.monotonic() + lease)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        for _ in range(3):
            await trio.sleep(0.1)
            await mgr.send("renew", term=2, lease=lease, until=_time.monotonic() + lease)
        for _ in range(3):  # the service is running again and has read its queue
            await mgr.expect("health")
        assert not [m for m in mgr.received if m["op"] == "fenced"], mgr.received[-5:]
        host, port = loopback_address(hello)
        out = await place_call(host, port, "after-stop", hold=0.0, reply_timeout=GUARD)
        assert out.answered and out.term == 2
        # now the renewals stop: the lease runs out and the service fences itself
        with trio.fail_after(GUARD):
            fenced = await mgr.expect("fenced")
        assert fenced["term"] == 2
