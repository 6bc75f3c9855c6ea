"""The node manager tells its service the peer's reachability (the ``link`` control op,
docs/smdi.md "A shared line in a partition"): after every change, after the actions of the
same event (a step-down reaches the service first), and an active secondary whose primary is
active too calls the peer unreachable until it has stepped down.  Virtual clock, the stand-ins
of test_node_driver."""
from __future__ import annotations

import pytest
import trio

from failover.core import events as ev
from failover.core.state import Role, ServiceHealth, State
from failover.eventlog import EventLog
from failover.node import NodeManager
from tests.failover.test_node_driver import FakeLink, FakeService, make_cfg


class LinkAwareService(FakeService):
    """Records ``link`` ops among the other ops, sending only changes (as ServiceRunner does)."""

    peer_reachable: bool | None = None

    async def peer_link(self, reachable: bool) -> None:
        if reachable is self.peer_reachable:
            return
        self.peer_reachable = reachable
        self.ops.append((trio.current_time(), {"op": "link", "peer_reachable": reachable}))


async def run(tmp_path, role, script):
    cfg = make_cfg(tmp_path, role)
    svc = LinkAwareService(cfg.node.data_dir / "state.json")
    events = EventLog(cfg.node.data_dir / "events.jsonl", cfg.node.name, console=None)
    nm = NodeManager(cfg, events, link=FakeLink(), service=svc)
    svc.inbox = nm.inbox_send
    async with trio.open_nursery() as nursery:
        await nursery.start(nm.run)
        await script(nm)
        nursery.cancel_scope.cancel()
    events.close()
    return [(t, m) for t, m in svc.ops if m["op"] in ("link", "activate", "deactivate")]


def beat(role: Role, state: State, term: int) -> ev.PeerHeartbeat:
    return ev.PeerHeartbeat("a" if role is Role.PRIMARY else "b", role, state, term,
                            ServiceHealth.RUNNING)


def summary(ops: list[tuple[float, dict]]) -> list[str]:
    return [f"link {m['peer_reachable']}" if m["op"] == "link" else f"{m['op']} {m['term']}"
            for _, m in ops]


async def test_the_secondary_holds_through_a_partition_until_it_has_stepped_down(tmp_path,
                                                                                  autojump_clock):
    async def script(nm):
        for _ in range(10):  # the primary active and heard
            await nm.inbox_send.send(beat(Role.PRIMARY, State.ACTIVE, 2))
            await trio.sleep(0.1)
        await trio.sleep(1.0)  # cut: the secondary takes over (term 3)
        for _ in range(5):  # healed: the primary's heartbeats still say term 2
            await nm.inbox_send.send(beat(Role.PRIMARY, State.ACTIVE, 2))
            await trio.sleep(0.1)
        # the primary took a term above the secondary's: the secondary steps down
        for _ in range(5):
            await nm.inbox_send.send(beat(Role.PRIMARY, State.ACTIVE, 4))
            await trio.sleep(0.1)

    ops = await run(tmp_path, "secondary", script)
    assert summary(ops) == ["link False", "link True", "link False", "activate 3",
                            "deactivate 3", "link True"]
    # the secondary stops writing two ping intervals before it (or its primary) can take over
    (t_down, _), (t_act, _) = ops[2], ops[3]
    assert t_act - t_down == pytest.approx(2 * 0.1, abs=1e-6)


async def test_the_primary_calls_the_peer_reachable_as_soon_as_it_hears_it(tmp_path,
                                                                           autojump_clock):
    async def script(nm):
        await trio.sleep(2.0)  # alone: the first node started activates (term 2)
        for _ in range(5):  # the secondary, active in term 3 during a partition, heard
            await nm.inbox_send.send(beat(Role.SECONDARY, State.ACTIVE, 3))
            await trio.sleep(0.1)

    ops = await run(tmp_path, "primary", script)
    # both active: the primary takes a term above the secondary's first, then says the peer
    # is reachable (its service resyncs every lamp after the partition)
    assert summary(ops)[:4] == ["link False", "activate 2", "activate 4", "link True"]
