"""The file watcher on real directories (failover/filerepl/watcher.py, treewatch.py): kernel
events through inotify (new directories are watched as they appear, a lost event or a
removed root means a full rescan), and the polling path (``force_polling``) for network
shares.  ``trio.fail_after``/``until`` are hang guards only."""
from __future__ import annotations

import os
import shutil

import pytest
import trio

from failover.core.manifest import ReplicatedPaths
from failover.filerepl import inotify
from failover.filerepl.treewatch import TreeWatch, WatchGap
from failover.filerepl.watcher import Watcher
from tests.util import until

GUARD = 30
DIRS = ("prompts", "spool")

needs_inotify = pytest.mark.skipif(not inotify.available(), reason="Linux inotify only")


class Failures:
    def __init__(self):
        self.failing: dict[str, str] = {}

    def failed(self, task, exc, *, retry_in=None, level="error"):
        self.failing[task] = str(exc)

    def ok(self, task):
        self.failing.pop(task, None)


class Seen:
    """What the watcher asked to scan, and its own errors."""

    def __init__(self):
        self.rels: list[set[str]] = []
        self.errors: list[str] = []

    async def scan(self, rels: set[str]) -> None:
        self.rels.append(set(rels))

    def has(self, rel: str) -> bool:
        return any(rel in batch for batch in self.rels)

    def full_rescans(self) -> int:
        return sum(1 for batch in self.rels if set(DIRS) <= batch)


def make(tmp_path, seen: Seen, **kw) -> Watcher:
    opts = dict(batch_delay=0.0, retry_min=0.05, retry_max=0.5, debounce_ms=10, step_ms=5,
                force_polling=None, poll_delay_ms=20)
    opts.update(kw)
    return Watcher(tmp_path, ReplicatedPaths(DIRS), scan=seen.scan, failures=Failures(),
                   on_error=seen.errors.append, **opts)


async def probe_until_seen(tmp_path, seen: Seen, rel: str) -> None:
    """Write ``rel`` again and again until the watcher reports it (the watch starts a little
    after the task does)."""
    async def seen_now() -> bool:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
        await trio.sleep(0.02)
        return seen.has(rel)

    with trio.fail_after(GUARD):
        while not await seen_now():
            pass


def test_kernel_events_unless_polling_is_asked_for(tmp_path, monkeypatch):
    seen = Seen()
    monkeypatch.delenv("WATCHFILES_FORCE_POLLING", raising=False)
    assert make(tmp_path, seen).kernel_events() is inotify.available()
    assert make(tmp_path, seen, force_polling=True).kernel_events() is False
    monkeypatch.setenv("WATCHFILES_FORCE_POLLING", "1")
    assert make(tmp_path, seen).kernel_events() is False
    assert make(tmp_path, seen, force_polling=False).kernel_events() is inotify.available()


@needs_inotify
async def test_new_directories_are_watched_with_what_is_already_in_them(tmp_path):
    seen = Seen()
    w = make(tmp_path, seen)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(w.run)
        await probe_until_seen(tmp_path, seen, "prompts/probe")
        # a tree made at once: its top is reported (its scan finds what was written before
        # the watches existed), and from then on a change deep inside is reported itself
        (tmp_path / "spool/a/b/c").mkdir(parents=True)
        (tmp_path / "spool/a/b/c/early.msg").write_bytes(b"early")
        await until(lambda: seen.has("spool/a"), "the new directory reported")
        await probe_until_seen(tmp_path, seen, "spool/a/b/c/late.msg")
        # a directory moved in from outside the tree is watched too
        outside = tmp_path / "outside/x"
        outside.mkdir(parents=True)
        os.rename(tmp_path / "outside", tmp_path / "prompts/moved")
        await until(lambda: seen.has("prompts/moved"), "the moved-in directory reported")
        await probe_until_seen(tmp_path, seen, "prompts/moved/x/late.wav")
        # a directory moved out is forgotten: a change inside it now is not reported under
        # its old name (events come in order, so the probe after it shows it would have been)
        os.rename(tmp_path / "prompts/moved", tmp_path / "gone")
        (tmp_path / "gone/x/after-move.wav").write_bytes(b"x")
        await probe_until_seen(tmp_path, seen, "prompts/probe-2")
        assert not seen.has("prompts/moved/x/after-move.wav")
        assert seen.errors == []
        nursery.cancel_scope.cancel()


@needs_inotify
async def test_a_removed_root_is_watched_again_after_a_full_rescan(tmp_path):
    seen = Seen()
    w = make(tmp_path, seen)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(w.run)
        await probe_until_seen(tmp_path, seen, "spool/probe")
        before = seen.full_rescans()
        shutil.rmtree(tmp_path / "spool")
        await until(lambda: seen.full_rescans() > before, "a full rescan after the gap")
        assert any("spool" in e and "removed" in e for e in seen.errors), seen.errors
        # the watch runs again (the directory is made again) and reports changes
        await probe_until_seen(tmp_path, seen, "spool/after")
        await probe_until_seen(tmp_path, seen, "prompts/after")
        nursery.cancel_scope.cancel()


@needs_inotify
async def test_an_overflowed_event_queue_is_a_gap_and_a_full_rescan(tmp_path):
    queued = int(open("/proc/sys/fs/inotify/max_queued_events").read())
    (tmp_path / "a").mkdir()
    watch = TreeWatch([str(tmp_path / "a")], debounce_ms=10, step_ms=5)
    try:
        await watch.start()
        for i in range(queued // 2 + 10):  # two events each, never read meanwhile
            fd = os.open(tmp_path / f"a/{i % 50}", os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
            os.utime(tmp_path / f"a/{i % 50}")
        with pytest.raises(WatchGap, match="overflowed"):
            with trio.fail_after(GUARD):
                while True:
                    await watch.changes()
    finally:
        watch.close()


@needs_inotify
async def test_the_overflow_makes_the_watcher_rescan_everything(tmp_path, monkeypatch):
    seen = Seen()
    w = make(tmp_path, seen)
    real = TreeWatch.changes
    armed = {"on": False}

    async def changes(self):
        out = await real(self)
        if armed["on"]:
            armed["on"] = False
            raise WatchGap("the kernel's inotify queue overflowed")
        return out

    monkeypatch.setattr(TreeWatch, "changes", changes)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(w.run)
        await probe_until_seen(tmp_path, seen, "prompts/probe")
        before = seen.full_rescans()
        armed["on"] = True
        (tmp_path / "prompts/lost").write_bytes(b"x")  # its event is "lost" with the gap
        await until(lambda: seen.full_rescans() > before, "a full rescan after the overflow")
        assert any("overflowed" in e for e in seen.errors)
        await probe_until_seen(tmp_path, seen, "spool/after")
        nursery.cancel_scope.cancel()


async def test_polling_for_network_shares_still_reports_changes(tmp_path):
    seen = Seen()
    w = make(tmp_path, seen, force_polling=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(w.run)
        await probe_until_seen(tmp_path, seen, "prompts/probe")
        (tmp_path / "spool/q").mkdir(parents=True)
        await probe_until_seen(tmp_path, seen, "spool/q/new.msg")
        nursery.cancel_scope.cancel()
