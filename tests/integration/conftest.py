"""Fixtures and helpers of the multi-process pair tests.

Every test gets a fresh, short working directory under /tmp (the admin and control sockets
live below it, and AF_UNIX paths are limited to 107 bytes).  When a test fails, the tail of
both node logs is attached to its report and the directory is kept for a post-mortem; when it
passes, the directory is removed.

Real clock everywhere: the ``GUARD`` timeouts only stop a hung test, they never judge speed.
"""
from __future__ import annotations

import functools
import shutil
import tempfile
import tomllib
from pathlib import Path

import pytest
import trio

from lab.pair import Node, Pair
from tests import util

GUARD = 20.0  # seconds; a guard against a hang, never a performance limit
LOG_TAIL = 60  # lines of each node log attached to a failure report


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    workdir = getattr(item, "funcargs", {}).get("pair_dir")
    if rep.failed and workdir is not None:
        for name in ("a.log", "b.log"):
            path = Path(workdir) / name
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL:]
                rep.sections.append((f"{path} (last {len(lines)} lines)", "\n".join(lines)))


@pytest.fixture
def pair_dir(request):
    """A short, fresh directory for one Pair; kept (and named in the report) on failure."""
    d = Path(tempfile.mkdtemp(prefix="vmha-", dir="/tmp"))
    yield d
    failed = any(getattr(request.node, f"rep_{w}", None) is not None
                 and getattr(request.node, f"rep_{w}").failed for w in ("setup", "call"))
    if failed:
        print(f"\npair directory kept for inspection: {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


# ============================================================================ polling


#: :func:`tests.util.until` with the predicate run in a worker thread (the predicates here
#: block: they read status over a socket, files, process tables)
until = functools.partial(util.until, in_thread=True, timeout=GUARD, poll=0.02)


async def status(node: Node, timeout: float = 5.0) -> dict | None:
    """The node's admin status (None if it does not answer)."""
    r = await trio.to_thread.run_sync(lambda: node.admin({"op": "status"}, timeout=timeout))
    return r["status"] if r and r.get("ok") else None


async def states(pair: Pair) -> dict[str, tuple[str | None, int | None]]:
    """{"a": (state, term), "b": (state, term)}; (None, None) for a node that does not answer."""
    out = {}
    for name in ("a", "b"):
        st = await status(pair.node(name))
        out[name] = (st["node"]["state"], st["node"]["term"]) if st else (None, None)
    return out


async def wait_active(pair: Pair, active: str, what: str = "", timeout: float = GUARD) -> dict:
    """Wait until ``active`` is active and the other node is inactive, each seeing the other;
    returns both statuses {"a": ..., "b": ...}."""
    other = "b" if active == "a" else "a"

    def check():
        sa, so = pair.node(active).status(), pair.node(other).status()
        if not sa or not so:
            return None
        ok = (sa["node"]["state"] == "active" and so["node"]["state"] == "inactive"
              and sa["peer"]["reachable"] and so["peer"]["reachable"]
              and so["peer"]["state"] == "active")
        return {active: sa, other: so} if ok else None

    return await until(check, what or f"{active} active and {other} inactive", timeout=timeout)


async def watch_states(pair: Pair, seconds: float, poll: float = 0.05) -> list[dict]:
    """Sample both nodes' (state, term) for ``seconds``; returns the samples (a check over a
    window, not a sleep: callers assert on every sample)."""
    samples = []
    end = trio.current_time() + seconds
    while trio.current_time() < end:
        samples.append(await states(pair))
        await trio.sleep(poll)
    return samples


# ============================================================================ processes


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (an orphan may wait a while to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def link_listen(node: Node) -> tuple[str, int]:
    """The node's link.listen address from its TOML file."""
    data = tomllib.loads(Path(node.config).read_text())
    host, _, port = data["link"]["listen"].rpartition(":")
    return host, int(port)


def events_of(node: Node, event: str, level: str | None = None, where=None) -> list[dict]:
    """Records of ``event`` (at ``level``; for which ``where(record)`` is true) in the node's
    event log, oldest first."""
    return [e for e in node.events() if e.get("event") == event
            and (level is None or e.get("level") == level) and (where is None or where(e))]


async def wait_events(node: Node, event: str, level: str | None = None, where=None,
                      count: int = 1) -> list[dict]:
    """Wait until the node's event log holds at least ``count`` such records; returns them.
    (The node manager writes a record after acting, so a state change or a call outcome can be
    observed a moment before the record that explains it.)"""
    return await until(lambda: (found := events_of(node, event, level, where)) and len(found) >= count
                       and found, f"{count} {event!r} event(s) in {node.name}'s log")


__all__ = ["GUARD", "until", "status", "states", "wait_active", "watch_states", "pid_alive",
           "link_listen", "events_of", "wait_events"]
