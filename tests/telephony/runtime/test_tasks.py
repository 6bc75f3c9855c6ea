"""telephony/runtime/tasks.py: the containment every long-lived task relies on (virtual clock)."""
from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

from telephony.runtime.tasks import (
    Backoff,
    ListenError,
    TaskFailures,
    contained,
    describe,
    keep_running,
    listen_tcp,
)


def recorder():
    lines: list[tuple[str, str, str]] = []
    return lines, lambda level, event, message: lines.append((level, event, message))


def test_describe_flattens_exception_groups_and_names_the_cause():
    try:
        try:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        except ConnectionResetError as e:
            raise trio.BrokenResourceError from e
    except trio.BrokenResourceError as e:
        inner = e
    group = ExceptionGroup("nursery", [ExceptionGroup("inner", [inner]), ValueError("bad")])
    text = describe(group)
    assert text == ("BrokenResourceError (from ConnectionResetError: [Errno 104] Connection "
                    "reset by peer); ValueError: bad")
    assert len(describe(ValueError("x" * 1000))) == 300


def test_failures_are_all_counted_but_logged_at_most_once_per_interval():
    now = [0.0]
    lines, log = recorder()
    f = TaskFailures(log, every=30.0, clock=lambda: now[0])
    for i in range(5):
        now[0] = i  # five failures within 30 s
        f.failed("link.dial", OSError("refused"), retry_in=0.5)
    assert f.counts["link.dial"] == 5 and len(lines) == 1
    assert lines[0] == ("error", "task_failed",
                        "link.dial failed: OSError: refused; retrying in 0.5s (failure 1)")
    now[0] = 40.0
    f.failed("link.dial", "returned unexpectedly", level="warning")
    assert lines[-1] == ("warning", "task_failed", "link.dial failed: returned unexpectedly "
                         "(failure 6, 4 more not logged)")
    f.failed("admin.connection", KeyError("k"))  # another task has its own interval
    assert len(lines) == 3
    assert f.stats() == {"admin.connection": {"failures": 1, "last_error": "KeyError: 'k'"},
                         "link.dial": {"failures": 6, "last_error": "returned unexpectedly"}}


def test_backoff_doubles_to_its_cap_and_starts_over_after_a_healthy_run():
    b = Backoff(first=0.25, cap=1.0, healthy_after=60.0)
    assert [b.next(0.0) for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert b.next(60.0) == 0.25


async def test_keep_running_survives_errors_groups_and_returns_with_growing_delays(autojump_clock):
    lines, log = recorder()
    failures = TaskFailures(log, every=0.0)
    starts: list[float] = []

    async def body() -> None:
        starts.append(trio.current_time())
        n = len(starts)
        if n == 1:
            raise OSError("first")
        if n == 2:
            async with trio.open_nursery() as nursery:  # an error from a child: a group
                async def child() -> None:
                    raise trio.BrokenResourceError("child")
                nursery.start_soon(child)
        if n == 3:
            return  # a long-lived body must not return: recorded too
        await trio.sleep_forever()

    with trio.move_on_after(100):
        await keep_running("t", body, failures, Backoff(first=1.0, cap=4.0))
    assert [round(b - a, 6) for a, b in zip(starts, starts[1:], strict=False)] == [1.0, 2.0, 4.0]
    assert failures.counts["t"] == 3
    assert "OSError: first" in lines[0][2] and "BrokenResourceError: child" in lines[1][2]
    assert lines[2][0] == "warning" and "returned unexpectedly" in lines[2][2]


async def test_keep_running_lets_cancellation_through(autojump_clock):
    failures = TaskFailures(lambda *a: None)
    with trio.CancelScope() as scope:
        async def body() -> None:
            scope.cancel()
            await trio.sleep_forever()
        await keep_running("t", body, failures)
    assert scope.cancelled_caught and not failures.counts


async def test_contained_records_and_does_not_raise():
    lines, log = recorder()
    failures = TaskFailures(log)

    async def handler(x: int) -> None:
        raise ZeroDivisionError(x)
    await contained("admin.connection", failures, handler, 7)
    assert failures.counts["admin.connection"] == 1 and "ZeroDivisionError: 7" in lines[0][2]


async def test_listen_tcp_names_the_setting_and_the_address():
    first = await listen_tcp("link.listen", "127.0.0.1", 0)
    port = first[0].socket.getsockname()[1]
    with pytest.raises(ListenError) as e:
        await listen_tcp("replication.listen", "127.0.0.1", port)
    assert e.value.errno == errno.EADDRINUSE
    assert e.value.strerror == (f"cannot listen on 127.0.0.1:{port} (setting replication.listen): "
                                "Address already in use")
    for listener in first:
        await listener.aclose()
