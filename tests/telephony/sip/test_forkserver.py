"""The SIP workers' fork server (:mod:`telephony.sip.forkserver`), real processes: a real fork
server forks real pjsua2 workers that connect to this test (playing the messaging service) on
their control sockets.  Every ``fail_after`` is a hang guard, never a speed limit.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from lab.pair import free_udp_block
from lab.sip import GUARD, free_udp_port
from telephony.sip.forkserver import ForkServer, worker_pids
from tests.telephony.sip.test_worker import PJSUA2_MISSING

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.skipif(PJSUA2_MISSING is not None, reason=PJSUA2_MISSING or ""),
]

ROOT = Path(__file__).resolve().parents[3]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def lib_sharing(pid: int) -> tuple[int, int]:
    """(Rss, Pss) in kB of the pjsua2 bindings' library mappings of ``pid``."""
    rss = pss = 0
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:
            inside = line.rstrip().endswith(".so") and "_pjsua2" in line
        elif inside and head[0] == "Rss:":
            rss += int(head[1])
        elif inside and head[0] == "Pss:":
            pss += int(head[1])
    return rss, pss


@asynccontextmanager
async def fork_server(**kw):
    server = ForkServer(cwd=str(ROOT))
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: server.run(task_status=task_status, **kw))
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


class Forked:
    def __init__(self, proc, stream: trio.SocketStream, ready: dict, tmp: Path) -> None:
        self.proc, self.stream, self.ready, self.tmp = proc, stream, ready, tmp
        self.buf = b""

    async def send(self, **op) -> None:
        await self.stream.send_all(json.dumps(op).encode() + b"\n")

    async def expect(self, ev: str) -> dict:
        while True:
            while b"\n" not in self.buf:
                data = await self.stream.receive_some(65536)
                assert data, f"the worker closed its socket while waiting for {ev}"
                self.buf += data
            line, self.buf = self.buf.split(b"\n", 1)
            msg = json.loads(line)
            if msg["ev"] == ev:
                return msg


@asynccontextmanager
async def forked_worker(server: ForkServer, name: str = "w1"):
    tmp = Path(tempfile.mkdtemp(prefix="vmha-fs-", dir="/tmp"))
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    proc = None
    try:
        await sock.bind(str(tmp / "c.sock"))
        sock.listen(1)
        with trio.fail_after(GUARD):
            proc = await server.spawn([
                "--control", str(tmp / "c.sock"), "--name", name, "--bind", "127.0.0.1",
                "--sip-port", str(free_udp_port()), "--rtp-port", str(free_udp_block(16)),
                "--ports", "4", "--media-dir", str(tmp)])
            assert proc is not None
            conn, _ = await sock.accept()
        stream = trio.SocketStream(conn)
        w = Forked(proc, stream, {}, tmp)
        with trio.fail_after(GUARD):
            w.ready = await w.expect("ready")
        yield w
        await stream.aclose()
    finally:
        sock.close()
        if proc is not None and proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(GUARD):
                await proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


async def test_a_forked_worker_is_its_own_process_and_shares_the_bindings():
    async with fork_server() as server, forked_worker(server) as w:
        pid = w.proc.pid
        assert w.ready["pid"] == pid
        assert parent_of(pid) == server.proc.pid       # forked by the fork server
        assert os.getsid(pid) == pid                   # in a session of its own
        assert pid in worker_pids(os.getpid()) and server.proc.pid not in worker_pids(os.getpid())
        rss, pss = lib_sharing(pid)
        assert rss > 0 and pss < rss, (rss, pss)       # the library's pages are shared
        await w.send(op="shutdown")
        with trio.fail_after(GUARD):
            assert await w.proc.wait() == 0            # its exit code, from the fork server
        assert pid not in worker_pids(os.getpid())


async def test_a_killed_worker_reports_the_signal_and_the_server_forks_on():
    async with fork_server() as server:
        async with forked_worker(server) as w:
            os.kill(w.proc.pid, signal.SIGKILL)
            with trio.fail_after(GUARD):
                assert await w.proc.wait() == -signal.SIGKILL
        async with forked_worker(server, "w2") as w2:   # the fork server is unharmed
            await w2.send(op="stats")
            with trio.fail_after(GUARD):
                assert (await w2.expect("stats"))["calls"] == 0
        assert server.starts == 1


async def test_workers_outlive_their_fork_server_which_comes_back():
    """A dead fork server: its workers run on (their own processes and sessions); spawn()
    says None meanwhile (the driver then starts workers with exec); it is restarted."""
    async with fork_server(restart_delay=0.2) as server, forked_worker(server) as w:
        os.kill(server.proc.pid, signal.SIGKILL)
        with trio.fail_after(GUARD):
            while server.running:
                await trio.sleep(0.01)
        assert await server.spawn(["--help"]) is None
        await w.send(op="stats")                       # the orphaned worker still serves
        with trio.fail_after(GUARD):
            assert (await w.expect("stats"))["calls"] == 0
        with trio.fail_after(GUARD):
            while not server.running:
                await trio.sleep(0.01)
        assert server.starts == 2
        await w.send(op="shutdown")
        with trio.fail_after(GUARD):
            await w.proc.wait()                        # its end is seen through its pidfd
