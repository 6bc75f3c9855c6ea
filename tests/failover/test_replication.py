"""Replication's lag in seconds (``lag_s`` in ``Replication.stats()["db"]``): the age of the
oldest change of this node's log that the peer has not acknowledged.  Two real in-process
``Replication`` instances over real sockets (the harness of test_repl_faults.py); the peer
is stopped and started again."""
from __future__ import annotations

import trio

from failover.core.state import Mode, State
from tests.failover.test_repl_faults import GUARD, ReplNode, db_synced, ports, sub
from tests.util import until


def node(tmp_path, name: str, p: dict) -> ReplNode:
    n = ReplNode(tmp_path, name, "primary" if name == "a" else "secondary", p)
    n.repl.update(State.ACTIVE if name == "a" else State.INACTIVE, 2, Mode.AUTOMATIC)
    return n


async def test_lag_seconds_is_the_age_of_the_oldest_unacknowledged_change(tmp_path):
    p = ports()
    a, b = node(tmp_path, "a", p), node(tmp_path, "b", p)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await a.start(nursery)
            assert a.repl.stats()["db"]["lag_s"] is None  # the peer was never heard
            await b.start(nursery)
            await a.repl.write(2, [{"op": "put", "table": "subscribers", "row": sub("1001")}])
            await until(lambda: db_synced(a, b), "first change replicated")
            assert a.repl.stats()["db"]["lag_s"] == 0.0
            b.scope.cancel()  # the peer stops: nothing is acknowledged any more
            await trio.sleep(0.01)
            first = trio.current_time()
            await a.repl.write(2, [{"op": "put", "table": "subscribers", "row": sub("1002")}])
            await trio.sleep(0.05)
            await a.repl.write(2, [{"op": "put", "table": "subscribers", "row": sub("1003")}])
            d = a.repl.stats()["db"]
            assert d["lag_changes"] == 2
            lag = d["lag_s"]
            # the age of the first unacknowledged change, not of the newest one
            assert trio.current_time() - first + 0.001 >= lag >= 0.05
            await trio.sleep(0.05)
            # lag_s is rounded to milliseconds: allow that rounding on both readings
            assert a.repl.stats()["db"]["lag_s"] >= lag + 0.05 - 0.001
            # the peer comes back and acknowledges everything: no lag
            b = node(tmp_path, "b", p)
            await b.start(nursery)
            await until(lambda: db_synced(a, b) and a.repl.stats()["db"]["head_seq"] == 3, "caught up")
            assert a.repl.stats()["db"]["lag_s"] == 0.0
            nursery.cancel_scope.cancel()
