"""The event hub (failover/web/hub.py) over a real EventLog: numbering and order, the ring's
bound, and waking a Trio waiter from a record written on another thread."""
from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from failover.eventlog import EventLog
from failover.web.hub import EventHub

GUARD = 10.0  # hang guard only


@pytest.fixture
def log(tmp_path):
    events = EventLog(tmp_path / "events.jsonl", "a", console=None)
    yield events
    events.close()


async def test_records_are_numbered_in_order_and_copied(log):
    hub = EventHub(log, size=100)
    written = [log.write("info", "e", f"record {i}", {"i": i}) for i in range(5)]
    got = hub.recent()
    assert [r["seq"] for r in got] == [1, 2, 3, 4, 5]
    assert [r["message"] for r in got] == [f"record {i}" for i in range(5)]
    assert got[2] == {"seq": 3, **written[2]}
    assert "seq" not in written[2]  # the log's own record is not changed
    assert hub.last_seq == 5 and hub.first_seq == 1
    assert [r["seq"] for r in hub.recent(after=3)] == [4, 5]
    assert hub.recent(after=5) == [] and hub.recent(after=99) == []
    assert hub.recent(limit=0) == []
    # more than limit: the newest by default, the oldest with oldest_first
    assert [r["seq"] for r in hub.recent(after=1, limit=2)] == [4, 5]
    assert [r["seq"] for r in hub.recent(after=1, limit=2, oldest_first=True)] == [2, 3]
    hub.close()


async def test_the_ring_keeps_only_the_newest(log):
    hub = EventHub(log, size=5)
    for i in range(12):
        log.write("info", "e", str(i))
    assert [r["seq"] for r in hub.recent(limit=100)] == [8, 9, 10, 11, 12]
    assert hub.first_seq == 8 and hub.last_seq == 12
    # a reader that was at 3 gets what is left, from the oldest kept (the gap shows in seq)
    assert [r["seq"] for r in hub.recent(after=3, limit=2, oldest_first=True)] == [8, 9]
    assert [r["seq"] for r in hub.recent(after=9, limit=100, oldest_first=True)] == [10, 11, 12]
    hub.close()


def test_size_must_be_positive(log):
    async def make(size):
        EventHub(log, size=size)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="size must be an integer"):
            trio.run(make, bad)


async def test_wait_returns_at_once_when_a_newer_record_exists(log):
    hub = EventHub(log)
    log.write("info", "e", "one")
    with trio.fail_after(GUARD):
        await hub.wait(0)
    with trio.move_on_after(0.05) as scope:
        await hub.wait(1)  # nothing newer than 1
    assert scope.cancelled_caught
    hub.close()


async def test_a_record_from_a_worker_thread_wakes_the_waiter(log):
    hub = EventHub(log)
    woke: list[int] = []

    async def waiter():
        await hub.wait(0)
        woke.append(hub.last_seq)

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []
            # a plain thread, not one of Trio's workers: the wake-up goes through the token
            t = threading.Thread(target=log.write, args=("info", "from_thread", "hello"))
            t.start()
            await trio.to_thread.run_sync(t.join)
    assert woke == [1]
    assert hub.recent()[0]["event"] == "from_thread"
    assert log.write_errors == 0
    hub.close()


async def test_many_threads_writing_at_once_get_distinct_consecutive_numbers(log):
    hub = EventHub(log, size=10000)
    n_threads, each = 8, 200
    seen_last = 0

    def writer(k: int) -> None:
        for i in range(each):
            log.write("info", "burst", f"{k}:{i}")

    async def follower():
        nonlocal seen_last
        while seen_last < n_threads * each:
            await hub.wait(seen_last)
            seen_last = hub.last_seq

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follower)
            threads = [threading.Thread(target=writer, args=(k,)) for k in range(n_threads)]
            for t in threads:
                t.start()
            for t in threads:
                await trio.to_thread.run_sync(t.join)
    records = hub.recent(limit=n_threads * each)
    assert [r["seq"] for r in records] == list(range(1, n_threads * each + 1))
    # each writer's own records keep their order
    for k in range(n_threads):
        mine = [int(r["message"].split(":")[1]) for r in records if r["message"].startswith(f"{k}:")]
        assert mine == list(range(each))
    hub.close()


async def test_close_stops_listening_and_releases_waiters(log):
    hub = EventHub(log)
    released = trio.Event()

    async def waiter():
        await hub.wait(0)
        released.set()

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            hub.close()
            await released.wait()
    log.write("info", "e", "after close")
    assert hub.last_seq == 0 and hub.recent() == []
    hub.close()  # twice is fine


def test_a_record_written_after_the_trio_run_ended_is_harmless(log):
    holder = {}

    async def main():
        holder["hub"] = EventHub(log)

    trio.run(main)
    # the token's run is over: the wake-up cannot be delivered, and that is no error
    log.write("info", "e", "outside")
    log.write("info", "e", "outside again")
    hub = holder["hub"]
    assert hub.last_seq == 2 and log.write_errors == 0
    hub.close()
