"""The node manager's local listeners (control socket, admin socket) and its service start
against clients that reset and against refusals the node manager cannot prevent.

Real Unix sockets and a real child process; each listener runs in the test's own nursery, so an
error that escapes it fails the test.  A reset (``SO_LINGER`` 0) is sent mid-line, after
garbage, and right after the first message; the listener must go on serving the next good
client.
"""
from __future__ import annotations

import os
import socket
import struct
import sys

import trio

from failover.admin import admin_request
from failover.cli import format_status
from failover.core import events as ev
from failover.eventlog import EventLog
from failover.node import NodeManager
from failover.service_proc import ServiceRunner
from tests.failover.test_node_driver import FakeLink, FakeService, make_cfg

GUARD = 10.0  # hang guard only


async def unix_client(path) -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.connect(str(path))
    return sock


def reset(sock) -> None:
    """Close with RST where the socket family allows it (a Unix socket has no RST: closing it
    with unread data makes the peer's next read fail with ECONNRESET, which is the same
    error path)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


# ============================================================================ control socket


def control_runner(tmp_path):
    """A ServiceRunner waiting for the service of pid 4242, its inbox and event log."""
    cfg = make_cfg(tmp_path, "primary")
    events = EventLog(tmp_path / "events.jsonl", "a", console=None)
    inbox_send, inbox = trio.open_memory_channel(100)
    runner = ServiceRunner(cfg, inbox_send, events)
    runner.pid = 4242
    return cfg, runner, inbox, events


async def test_control_listener_survives_resets_and_garbage_then_hears_the_service(tmp_path):
    cfg, runner, inbox, events = control_runner(tmp_path)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.serve_control)
            path = cfg.control_socket
            # mid-line, garbage, a stale hello then reset with unread data waiting
            s = await unix_client(path)
            await s.send(b'{"op": "hel')
            reset(s)
            s = await unix_client(path)
            await s.send(os.urandom(2000) + b"\n" + b"\xff" * 70000)
            reset(s)
            s = await unix_client(path)
            await s.send(b'{"op": "hello", "pid": 4242, "node": "a", "ports": []}\n')
            assert isinstance(await inbox.receive(), ev.ServiceStarted)
            await s.send(b"x" * 100)
            reset(s)
            assert isinstance(await inbox.receive(), ev.ServiceExited)  # that service is gone
            # the real service comes back and is heard
            runner.generation += 1
            s = await unix_client(path)
            await s.send(b'{"op": "hello", "pid": 4242, "node": "a", "ports": ["p1"]}\n')
            started = await inbox.receive()
            assert isinstance(started, ev.ServiceStarted) and started.pid == 4242
            await s.send(b'{"op": "health", "seq": 1, "state": "inactive", "term": null, '
                         b'"calls": 0, "ports": []}\n')
            assert isinstance(await inbox.receive(), ev.ServiceHealthReport)
            s.close()
            nursery.cancel_scope.cancel()
    events.close()


async def test_an_unexpected_error_in_one_control_connection_is_counted_not_raised(tmp_path):
    cfg, runner, inbox, events = control_runner(tmp_path)

    async def broken(msg) -> None:
        raise KeyError("injected fault")
    runner._handle = broken
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.serve_control)
            s = await unix_client(cfg.control_socket)
            await s.send(b'{"op": "hello", "pid": 4242, "node": "a", "ports": []}\n'
                         b'{"op": "activated", "term": 3}\n')
            assert isinstance(await inbox.receive(), ev.ServiceStarted)
            assert isinstance(await inbox.receive(), ev.ServiceExited)  # seen as the service lost
            s.close()
            while not runner.failures.counts["control.connection"]:
                await trio.sleep(0.005)
            # still listening
            s = await unix_client(cfg.control_socket)
            s.close()
            nursery.cancel_scope.cancel()
    assert "KeyError" in runner.failures.last["control.connection"]
    events.close()


# ============================================================================ admin socket


async def test_admin_listener_survives_resets_and_a_failing_request(tmp_path):
    cfg = make_cfg(tmp_path, "primary")
    events = EventLog(cfg.node.data_dir / "events.jsonl", "a", console=None)
    svc = FakeService(cfg.node.data_dir / "state.json")
    nm = NodeManager(cfg, events, link=FakeLink(), service=svc)
    svc.inbox = nm.inbox_send
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await nursery.start(nm.run)
            path = cfg.admin.socket
            for payload in (b'{"op": "sta', os.urandom(3000), b'{"op": "status"}\n'):
                s = await unix_client(path)
                await s.send(payload)
                reset(s)
            # a request whose handling fails (a bug: injected) gets an error reply, and the
            # node manager goes on answering
            real = nm.status_dict
            nm.status_dict = lambda: 1 / 0
            reply = await trio.to_thread.run_sync(admin_request, path, {"op": "status"})
            assert not reply["ok"], reply
            assert reply["error"].startswith("internal error, nothing changed: ZeroDivisionError")
            nm.status_dict = real
            reply = await trio.to_thread.run_sync(admin_request, path, {"op": "status"})
            assert reply["ok"] and "admin.request" in reply["status"]["tasks"]  # counted
            shown = format_status(reply["status"])
            assert "task failures (contained): admin.request " in shown, shown
            nursery.cancel_scope.cancel()
    events.close()


# ============================================================================ SCHED_RR refused


async def test_a_refused_realtime_priority_does_not_stop_the_service_starting(tmp_path, monkeypatch):
    """With ``realtime_priority`` set, the child lowers itself one step between fork and exec.
    Where the kernel refuses (no CAP_SYS_NICE, RLIMIT_RTPRIO 0), that used to fail the start
    with SubprocessError and kill the node manager; now the child keeps the parent's
    scheduling and the service starts."""
    cfg = make_cfg(tmp_path, "primary")
    cfg = cfg.__class__(**{**vars(cfg), "failover": cfg.failover.__class__(
        **{**vars(cfg.failover), "realtime_priority": 10}),
        "service": cfg.service.__class__(**{**vars(cfg.service),
                                             "command": (sys.executable, "-c", "pass")})})
    events = EventLog(tmp_path / "events.jsonl", "a", console=None)
    inbox_send, inbox = trio.open_memory_channel(10)
    runner = ServiceRunner(cfg, inbox_send, events)

    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")
    # the forked child inherits these: its preexec step is refused, as on a host without the
    # privilege; the node manager itself is taken to run SCHED_RR
    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    monkeypatch.setattr(os, "sched_getscheduler", lambda pid: os.SCHED_RR)
    with trio.fail_after(GUARD):
        await runner.start("test")
    exited = inbox.receive_nowait()
    assert isinstance(exited, ev.ServiceExited)
    assert "exited with code 0" in exited.reason, exited.reason
    events.close()
