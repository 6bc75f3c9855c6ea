"""The node manager's Trio driver (failover/node.py) on a virtual clock (MockClock, autojump):
stand-ins replace the TCP link and the service process, so the times asserted are exact."""
from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from failover.config import parse_config
from failover.core import events as ev
from failover.core.state import Role, ServiceHealth, State
from failover.eventlog import EventLog
from failover.node import NodeManager
from failover.statefile import load_state


class FakeLink:
    settings = 0x5E77  # the shared-settings digest the node puts in its status frames

    def __init__(self):
        self.sent: list[tuple[float, object]] = []

    def send(self, msg, important: bool = False) -> None:
        self.sent.append((trio.current_time(), msg))

    def stats(self) -> dict:
        return {}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        await trio.sleep_forever()


class FakeService:
    """Answers like the messaging service: hello at start, activated on activate."""

    def __init__(self, state_path):
        self.ops: list[tuple[float, dict]] = []
        self.ports: list[dict] = []
        self.counters: dict = {}
        self.inbox = None
        self.state_path = state_path
        self.term_on_disk_at_activate: list[int] = []
        self.state, self.term = "inactive", None

    async def serve_control(self, *, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        await trio.sleep_forever()

    async def start(self, reason: str) -> None:
        await trio.sleep(0.05)  # process start-up
        await self.inbox.send(ev.ServiceStarted(4242))
        while True:  # health reports, as the real service sends them
            await trio.sleep(0.02)
            await self.inbox.send(ev.ServiceHealthReport(self.state, self.term, 0))

    async def send(self, msg: dict) -> None:
        self.ops.append((trio.current_time(), msg))
        if msg["op"] == "activate":
            self.term_on_disk_at_activate.append(load_state(self.state_path).term)
            self.state, self.term = "active", msg["term"]
            await self.inbox.send(ev.ServiceActivated(msg["term"]))
        elif msg["op"] == "deactivate":
            self.state = "inactive"
            await self.inbox.send(ev.ServiceDeactivated(msg["term"], 0))

    def kill(self, reason: str) -> None:
        pass

    async def shutdown(self, reason: str) -> None:
        pass


def make_cfg(tmp_path, role="secondary"):
    data = {
        "node": {"name": "b" if role == "secondary" else "a", "role": role, "data_dir": str(tmp_path / "d"),
                 "key_file": str(tmp_path / "k")},
        "link": {"listen": "127.0.0.1:1", "peer": "127.0.0.1:2",
                 "peer_name": "a" if role == "secondary" else "b"},
        "ports": {"loopback": {"enabled": False}},
        "replication": {"enabled": False},  # the replication driver has its own tests
    }
    return parse_config(data, str(tmp_path / "node.toml"))


def heartbeat():
    return ev.PeerHeartbeat("a", Role.PRIMARY, State.ACTIVE, 2, ServiceHealth.RUNNING)


async def run_manager(tmp_path, script, role="secondary"):
    cfg = make_cfg(tmp_path, role)
    link = FakeLink()
    svc = FakeService(cfg.node.data_dir / "state.json")
    events = EventLog(cfg.node.data_dir / "events.jsonl", cfg.node.name, console=None)
    nm = NodeManager(cfg, events, link=link, service=svc)
    svc.inbox = nm.inbox_send
    async with trio.open_nursery() as nursery:
        await nursery.start(nm.run)
        await script(nm, link, svc)
        nursery.cancel_scope.cancel()
    events.close()
    return nm, link, svc


async def test_heartbeats_go_out_every_ping_interval(tmp_path, autojump_clock):
    async def script(nm, link, svc):
        await trio.sleep(2.0)

    t0 = trio.current_time()
    nm, link, svc = await run_manager(tmp_path, script)
    times = [t - t0 for t, m in link.sent if type(m).__name__ == "Status"]
    gaps = [round(b - a, 9) for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) <= 0.1 + 1e-9  # never later than the ping interval
    assert len(times) >= 20
    # every status frame carries the digest of the settings both nodes must share
    assert {m.settings for _, m in link.sent if type(m).__name__ == "Status"} == {0x5E77}


async def test_silent_peer_is_taken_over_exactly_at_the_timeout(tmp_path, autojump_clock):
    """Peer heard until t=1.0, then silent: the secondary activates at 1.0 + 6 x 0.1 s,
    with a term already covered by the reservation on disk."""
    async def script(nm, link, svc):
        start = trio.current_time()
        while trio.current_time() - start < 1.0:
            await nm.inbox_send.send(heartbeat())
            await trio.sleep(0.1)
        nm.t_last = trio.current_time()
        await trio.sleep(2.0)

    nm, link, svc = await run_manager(tmp_path, script)
    activates = [(t, m) for t, m in svc.ops if m["op"] == "activate"]
    assert len(activates) == 1
    t_act, msg = activates[0]
    assert t_act == pytest.approx(nm.t_last - 0.1 + 0.6, abs=1e-6)  # last heartbeat + timeout
    assert msg["term"] == 3 and svc.term_on_disk_at_activate[0] >= 3
    log = [json.loads(x) for x in (tmp_path / "d" / "events.jsonl").read_text().splitlines()]
    assert any(r["event"] == "failover" and "peer silent" in r["message"] for r in log)


async def test_lease_is_renewed_every_ping_interval_while_active(tmp_path, autojump_clock):
    async def script(nm, link, svc):
        await trio.sleep(3.0)  # primary alone: first node started, then renewing

    nm, link, svc = await run_manager(tmp_path, script, role="primary")
    renews = [t for t, m in svc.ops if m["op"] == "renew"]
    act = [t for t, m in svc.ops if m["op"] == "activate"][0]
    assert renews and renews[0] == pytest.approx(act + 0.1, abs=1e-6)
    gaps = [b - a for a, b in zip(renews, renews[1:], strict=False)]
    assert max(gaps) == pytest.approx(0.1, abs=1e-6)
    lease = [m for t, m in svc.ops if m["op"] == "renew"][0]["lease"]
    assert lease == pytest.approx(0.5)


async def test_call_offered_while_inactive_activates_without_waiting(tmp_path, autojump_clock):
    async def script(nm, link, svc):
        for _ in range(10):
            await nm.inbox_send.send(heartbeat())
            await trio.sleep(0.1)
        nm.t_call = trio.current_time()
        await nm.inbox_send.send(ev.CallOffered("c1", "loopback-1"))
        await trio.sleep(0.01)

    nm, link, svc = await run_manager(tmp_path, script)
    acts = [t for t, m in svc.ops if m["op"] == "activate"]
    assert acts == [nm.t_call]  # no virtual time passes between the offer and the activation
    cmds = [m for t, m in link.sent if type(m).__name__ == "Command"]
    assert cmds and cmds[0].kind.name == "STEP_DOWN"
