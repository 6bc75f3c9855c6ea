"""A real node manager (failover.node.NodeManager, in this process, with a stand-in for the
peer link) and its real messaging service (``python -m telephony.service``, a child process):
the service reports health on change and sends keep-alives otherwise, so a hung service is still
found out within ``service.health_timeout``, and a change reaches the node manager at once.

Real clock and real processes.  Every ``fail_after`` is a hang guard; the one time compared
with a bound is the node manager's own detection delay against ``service.health_timeout``
(the product's promise), with room for the manager's tick.  The node manager kills its
service when the test ends (the nursery is cancelled, then the process group is checked).
"""
from __future__ import annotations

import os
import signal

import pytest
import trio

from failover.config import load_config
from failover.core.state import ServiceHealth, State
from failover.eventlog import EventLog
from failover.node import NodeManager
from lab.loopback_client import open_call
from lab.pair import free_port
from tests.failover.test_node_driver import FakeLink

pytestmark = pytest.mark.multiprocess

GUARD = 30.0  # seconds: hang guard only


def node_config(tmp_path, port: int, **service):
    """A primary alone (its peer never answers: it activates after startup_wait), the loopback
    trunk on ``port``, replication off; written to ``node.toml`` (the service reads it too)."""
    keys = "".join(f"{k} = {v!r}\n" for k, v in service.items())
    path = tmp_path / "node.toml"
    path.write_text(f"""
[node]
name = "a"
role = "primary"
data_dir = "{tmp_path / 'd'}"
key_file = "{tmp_path / 'k'}"
[link]
listen = "127.0.0.1:1"
peer = "127.0.0.1:2"
peer_name = "b"
[ports.loopback]
listen = "127.0.0.1:{port}"
count = 2
[replication]
enabled = false
[service]
{keys}""")
    return load_config(path)


async def run_node(tmp_path, script, **service) -> list[dict]:
    """Run the node manager with its real service under ``script(nm, port, events)``; returns
    the event records, each with ``t`` (trio.current_time() when it was written)."""
    port = free_port()
    cfg = node_config(tmp_path, port, **service)
    cfg.node.data_dir.mkdir(parents=True)
    events = EventLog(cfg.node.data_dir / "events.jsonl", cfg.node.name, console=None)
    seen: list[dict] = []
    events.add_listener(lambda rec: seen.append({**rec, "t": trio.current_time()}))
    nm = NodeManager(cfg, events, link=FakeLink())
    pids: list[int] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(nm.run)
            with trio.fail_after(GUARD):
                while not (nm.sup.state is State.ACTIVE and nm.sup.service is ServiceHealth.RUNNING
                           and nm.service.pid):
                    await trio.sleep(0.05)
            pids.append(nm.service.pid)
            await script(nm, port, seen, pids)
            nursery.cancel_scope.cancel()
    finally:
        events.close()
        for pid in pids:  # every service process the test saw: gone, or killed here
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return seen


async def test_a_stopped_service_is_found_out_within_health_timeout(tmp_path):
    """Idle, the service sends only keep-alives (a quarter of health_timeout): the node manager
    never takes it for hung.  SIGSTOPped, it is killed for "no health report" within
    health_timeout of the stop, and a new service starts."""
    timeout = 1.0  # the default service.health_timeout; health_interval left out: 0.25

    async def script(nm, port, seen, pids):
        await trio.sleep(4 * timeout)  # idle: keep-alives only
        assert not [e for e in seen if e["event"] == "service_kill"], seen
        assert nm.service.pid == pids[0]
        stopped = trio.current_time()
        os.kill(pids[0], signal.SIGSTOP)
        with trio.fail_after(GUARD):
            while not [e for e in seen if e["event"] == "service_kill"]:
                await trio.sleep(0.01)
        (kill,) = [e for e in seen if e["event"] == "service_kill"]
        assert f"no health report for {timeout:.3f}s" in kill["message"], kill
        # the last report came before the stop, so the deadline is at most health_timeout
        # after it (the message above says the deadline was health_timeout).  This bound only
        # tells detection apart from none (a keep-alive-driven check would take a multiple of
        # it); its slack is generous for a loaded machine: the timing is the benchmarks' job
        assert kill["t"] - stopped <= 2 * timeout, kill["t"] - stopped
        with trio.fail_after(GUARD):
            while not (nm.service.pid not in (None, pids[0])
                       and nm.sup.service is ServiceHealth.RUNNING):
                await trio.sleep(0.05)
        pids.append(nm.service.pid)

    await run_node(tmp_path, script, health_timeout=timeout)


async def test_a_call_and_its_end_reach_the_node_manager_without_waiting_for_the_keepalive(tmp_path):
    """With a 10 s keep-alive, the call count the node manager holds follows a real loopback
    call at once: the service reports the change, it does not wait for the next report."""
    keepalive = 10.0

    async def script(nm, port, seen, pids):
        assert nm.sup.calls == 0
        async with open_call("127.0.0.1", port, "c-1", reply_timeout=GUARD) as call:
            assert call.answered
            answered = trio.current_time()
            with trio.fail_after(GUARD):
                while nm.sup.calls != 1:
                    await trio.sleep(0.01)
            assert trio.current_time() - answered < keepalive / 2
            await call.hangup()
        ended = trio.current_time()
        with trio.fail_after(GUARD):
            while nm.sup.calls != 0:
                await trio.sleep(0.01)
        assert trio.current_time() - ended < keepalive / 2

    await run_node(tmp_path, script, health_timeout=4 * keepalive, health_interval=keepalive)
