"""Replication notices the configuration database's other writers (the messaging service)
by file events, not by polling (failover/replication.py, ``_watch_writers``): the database's
``-wal`` changes, one ``data_version`` read follows.  A slow look every ``WRITERS_FALLBACK``
seconds catches a lost event; without inotify it polls as before.

Two in-process ``Replication`` instances over real sockets, a real second SQLite connection
as the other writer.  ``trio.fail_after`` is a hang guard only."""
from __future__ import annotations

import pytest
import trio

from failover import replication
from failover.core.state import Role
from failover.filerepl import inotify
from telephony.configdb import ConfigDB
from tests.failover.test_repl_faults import GUARD, db_synced, make_pair, sub
from tests.util import until


async def other_writer(a, ext: str) -> None:
    """Another process's connection writes one subscriber (as the messaging service would)."""
    def write() -> None:
        other = ConfigDB(a.cfg.database.path, role=Role.PRIMARY)
        try:
            other.write(2, [{"op": "put", "table": "subscribers", "row": sub(ext)}])
        finally:
            other.close()
    await trio.to_thread.run_sync(write)


async def replicate_other_writes(tmp_path) -> None:
    a, b = make_pair(tmp_path)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await b.start(nursery)
            await a.start(nursery)
            await a.repl.write(2, [{"op": "put", "table": "subscribers", "row": sub("1001")}])
            await until(lambda: db_synced(a, b), "first change replicated")
            for n, ext in enumerate(("1002", "1003", "1004"), start=2):
                await other_writer(a, ext)
                await until(lambda n=n: b.repl.stats()["db"]["applied_seq"] == n and db_synced(a, b),
                            f"the other writer's change {n} replicated")
            nursery.cancel_scope.cancel()


@pytest.mark.skipif(not inotify.available(), reason="Linux inotify only")
async def test_other_writers_are_noticed_by_file_events_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(replication, "WRITERS_FALLBACK", 3600.0)  # no slow look in the test's time
    await replicate_other_writes(tmp_path)


async def test_a_lost_event_is_caught_by_the_slow_look(tmp_path, monkeypatch):
    async def never(self) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(inotify.NameWatch, "wait", never)
    monkeypatch.setattr(replication, "WRITERS_FALLBACK", 0.05)
    await replicate_other_writes(tmp_path)


async def test_without_inotify_other_writers_are_polled(tmp_path, monkeypatch):
    monkeypatch.setattr(inotify, "available", lambda: False)
    monkeypatch.setattr(replication, "WRITERS_FALLBACK", 3600.0)
    await replicate_other_writes(tmp_path)


async def test_a_divergence_found_wakes_the_secondary_to_ask_for_a_snapshot(tmp_path):
    """The DB receiver sleeps until the peer's next message or a divergence found (it has
    no timer any more): diverged databases are still repaired, the secondary taking the
    primary's snapshot."""
    a, b = make_pair(tmp_path)

    def partitioned_writes() -> None:  # each node active alone for a while (a partition)
        for node, role, term, ops in (
                (a, Role.PRIMARY, 2, [{"op": "put", "table": "subscribers",
                                       "row": {**sub("1003"), "name": "P", "mailbox": "M"}}]),
                (b, Role.SECONDARY, 3, [{"op": "put", "table": "subscribers",
                                         "row": {**sub("1003"), "name": "S", "mailbox": "N"}},
                                        {"op": "put", "table": "subscribers",
                                         "row": {**sub("1004"), "name": "Y", "mailbox": "M"}}])):
            node.cfg.database.path.parent.mkdir(parents=True, exist_ok=True)
            db = ConfigDB(node.cfg.database.path, role=role)
            try:
                db.write(term, ops)
            finally:
                db.close()

    await trio.to_thread.run_sync(partitioned_writes)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await b.start(nursery)
            await a.start(nursery)
            await until(lambda: b.repl.counters["snapshots_installed"] >= 1, "the snapshot installed")
            await until(lambda: not b.repl.diverged and a.repl.stats()["db"]["checksum"]
                        == b.repl.stats()["db"]["checksum"], "the databases equal again")
            assert b.events.named("db_diverged")
            nursery.cancel_scope.cancel()
