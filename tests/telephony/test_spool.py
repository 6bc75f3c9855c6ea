"""The message spool and its worker: spool while the store is down, deliver exactly once when
it is back (also when both nodes hold a copy of the spool file), quarantine bad files."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.dovecot import DovecotServer
from telephony.spool import MAGIC, Spool, SpoolError, SpoolWorker, decode, encode
from telephony.store import ImapStore, MaildirStore, StoreError, StoreUnavailable
from tests.telephony.conftest import needs_dovecot
from tests.telephony.messages import make_message
from tests.util import EventLogRecorder, until


class Switchable:
    """A store wrapper that raises StoreUnavailable while ``up`` is False."""

    def __init__(self, inner, up: bool = True):
        self.inner = inner
        self.up = up
        self.attempts = 0

    async def deliver(self, msg):
        self.attempts += 1
        if not self.up:
            raise StoreUnavailable("test: the store is down")
        return await self.inner.deliver(msg)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []








# ============================================================================ Spool


def test_put_load_round_trip_and_atomic_file(tmp_path):
    spool = Spool(tmp_path / "spool")
    msg = make_message(1, caller="Jürgen", duration_s=3)
    path = spool.put(msg)
    assert files(tmp_path / "spool") == [path.name]  # no temp file left
    assert path.name == f"000000000001-{msg.message_id}.vmmsg"
    assert path.read_bytes().startswith(MAGIC)
    assert spool.load(path) == msg
    assert spool.pending() == [path]
    spool.remove(path)
    spool.remove(path)  # already gone is fine
    assert spool.pending() == []


def test_put_same_message_twice_keeps_one_file(tmp_path):
    spool = Spool(tmp_path)
    assert spool.put(make_message(1)) == spool.put(make_message(1))
    assert len(spool.pending()) == 1


def test_pending_order_is_the_counter_not_mtime(tmp_path):
    spool = Spool(tmp_path)
    paths = [spool.put(make_message(n)) for n in (3, 1, 2)]
    os.utime(paths[0], (1, 1))  # mtimes must not matter
    os.utime(paths[2], (2**31, 2**31))
    assert spool.pending() == paths
    assert [spool.load(p).call_id for p in spool.pending()] == ["call-3", "call-1", "call-2"]


def test_counter_continues_after_files_from_the_other_node(tmp_path):
    """After a failover the spool holds files replicated from the peer: new files sort
    after them, whatever this Spool object counted before."""
    spool = Spool(tmp_path)
    spool.put(make_message(1))
    replicated = tmp_path / f"{41:012d}-{make_message(2).message_id}.vmmsg"
    replicated.write_bytes(encode(make_message(2)))
    third = spool.put(make_message(3))
    assert third.name.startswith("000000000042-")
    assert [spool.load(p).call_id for p in spool.pending()] == ["call-1", "call-2", "call-3"]
    # a counter wider than 12 digits still sorts numerically
    wide = tmp_path / f"{10**13}-{make_message(4).message_id}.vmmsg"
    wide.write_bytes(encode(make_message(4)))
    assert spool.pending()[-1] == wide


def test_put_refuses_bad_input_and_leaves_nothing(tmp_path):
    spool = Spool(tmp_path / "spool")
    with pytest.raises(SpoolError, match="expected a VoiceMessage"):
        spool.put("not a message")  # type: ignore[arg-type]
    with pytest.raises(SpoolError, match="cannot be spooled|not a valid message|duration"):
        spool.put(make_message(1, duration_s=float("inf")))
    with pytest.raises(SpoolError, match="caller"):
        spool.put(make_message(1, caller=None))
    assert not (tmp_path / "spool").exists()
    # the directory cannot be made: a clear error, no temp file anywhere
    (tmp_path / "blocked").write_text("a file, not a directory")
    with pytest.raises(SpoolError, match="cannot spool message"):
        Spool(tmp_path / "blocked" / "spool").put(make_message(1))


def test_load_reports_partial_and_corrupt_files(tmp_path):
    spool = Spool(tmp_path)
    good = encode(make_message(1))
    cases = {
        "empty": b"",
        "magic": b"RIFF....",
        "truncated": good[:-10],
        "header-cut": good[:len(MAGIC) + 20],
        "flipped-audio": good[:-1] + bytes([good[-1] ^ 1]),
        "not-json": MAGIC + b"{nope\n" + b"RIFF",
        "not-object": MAGIC + b"[1,2]\n",
        "bad-reason": good.replace(b'"reason":"no_answer"', b'"reason":"coffee"'),
        "bad-term": good.replace(b'"term":2', b'"term":-2'),
        "deep-json": MAGIC + b"[" * 100000 + b"\n",
    }
    for name, data in cases.items():
        p = tmp_path / f"{name}.vmmsg"
        p.write_bytes(data)
        with pytest.raises(SpoolError, match=name + r"\.vmmsg: "):
            spool.load(p)
    with pytest.raises(FileNotFoundError):
        spool.load(tmp_path / "missing.vmmsg")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=3000))
def test_load_fuzz_random_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.vmmsg"
        p.write_bytes(data)
        with pytest.raises(SpoolError):
            Spool(Path(d)).load(p)


_GOOD = encode(make_message(7))


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_load_fuzz_damaged_files(data):
    """Cuts, flips and insertions in a valid file: a SpoolError or a valid message, never
    another exception."""
    raw = bytearray(_GOOD)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["cut", "flip", "insert"]))
        i = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "cut":
            del raw[i:]
        elif op == "flip" and raw:
            raw[i] ^= data.draw(st.integers(1, 255))
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.vmmsg"
        p.write_bytes(bytes(raw))
        try:
            msg = Spool(Path(d)).load(p)
        except SpoolError:
            return
    assert decode(encode(msg)) == msg


# ============================================================================ SpoolWorker


async def test_deliver_when_the_store_is_up(maildir, tmp_path):
    worker = SpoolWorker(Spool(tmp_path / "spool"), maildir)
    assert await worker.deliver(make_message(1)) == "stored"
    assert await worker.deliver(make_message(1)) == "duplicate"
    s = worker.stats()
    assert (s["spooled"], s["duplicates"], s["store_available"]) == (0, 1, True)
    assert files(tmp_path / "spool") == []


async def test_bad_message_is_not_spooled(tmp_path):
    """The store refuses a bad message before it tries any I/O, even while it is
    unavailable: the caller gets StoreError and nothing is spooled."""
    down = MaildirStore(tmp_path / "not-mounted")
    worker = SpoolWorker(Spool(tmp_path / "spool"), down)
    with pytest.raises(StoreError, match="bad mailbox id"):
        await worker.deliver(make_message(1, mailbox="../x"))
    assert await worker.deliver(make_message(1)) == "spooled"  # a good one is spooled
    assert len(files(tmp_path / "spool")) == 1


async def test_spooled_while_down_then_delivered(maildir, tmp_path):
    events = EventLogRecorder()
    store = Switchable(maildir, up=False)
    spool = Spool(tmp_path / "spool")
    worker = SpoolWorker(spool, store, retry_min=0.01, retry_max=0.05, events=events,
                         enabled=True)
    msgs = [make_message(n) for n in (1, 2, 3)]
    for m in msgs:
        assert await worker.deliver(m) == "spooled"
    names = files(tmp_path / "spool")
    assert len(names) == 3 and all(n.endswith(".vmmsg") for n in names)  # no temp files
    assert [spool.load(p) for p in spool.pending()] == msgs
    assert worker.stats()["store_available"] is False
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await until(lambda: store.attempts >= 6, "retries while the store is down")
        assert await maildir.all_counts() == {}
        store.up = True
        worker.wake()
        await until(lambda: worker.stats()["delivered_from_spool"] == 3, "delivery")
        nursery.cancel_scope.cancel()
    assert files(tmp_path / "spool") == []
    assert [m.message_id for m in await maildir.list("mb1001")] == [m.message_id for m in msgs]
    s = worker.stats()
    assert (s["spooled"], s["pending"], s["bad"], s["store_available"]) == (3, 0, 0, True)
    assert len(events.named("store_unavailable")) == 1  # once per outage, not per retry
    assert len(events.named("message_spooled")) == 3
    assert len(events.named("store_available")) == 1
    assert [r["fields"]["message_id"] for r in events.named("spool_delivered")] == \
        [m.message_id for m in msgs]


async def test_on_stored_follows_each_spooled_delivery_and_its_errors_do_not_stop_the_worker(
        maildir, tmp_path):
    """The messaging core lights the lamp in ``on_stored``: called once per message that
    reached the store from the spool (not for duplicates), after it is stored; a failing
    follow-up is reported and the spool is still drained."""
    events = EventLogRecorder()
    spool = Spool(tmp_path / "spool")
    seen: list[tuple[str, tuple[int, int]]] = []

    async def on_stored(msg):
        seen.append((msg.message_id, await maildir.counts(msg.mailbox)))
        if len(seen) == 2:
            raise RuntimeError("lamp driver broke")

    msgs = [make_message(n) for n in (1, 2, 3)]
    await maildir.deliver(msgs[0])  # already stored: a duplicate, no follow-up
    for m in msgs:
        spool.put(m)
    worker = SpoolWorker(spool, maildir, retry_min=0.01, events=events, enabled=True,
                         on_stored=on_stored)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        # the follow-up runs after the message has left the spool: wait for both
        await until(lambda: not spool.pending() and events.named("spool_followup_failed"),
                    "spool drained and the last follow-up done")
        nursery.cancel_scope.cancel()
    assert seen == [(msgs[1].message_id, (2, 0)), (msgs[2].message_id, (3, 0))]
    (failed,) = events.named("spool_followup_failed")
    assert "lamp driver broke" in failed["message"] and failed["fields"]["message_id"] == msgs[2].message_id
    assert worker.stats()["duplicates"] == 1


@needs_dovecot
async def test_imap_spooled_while_dovecot_is_stopped(tmp_path):
    with DovecotServer(tmp_path / "dovecot") as server:
        store = ImapStore(server.host, server.port, credentials=server.credentials,
                          timeout=2.0)
        worker = SpoolWorker(Spool(tmp_path / "spool"), store, retry_min=0.02,
                             retry_max=0.2, enabled=True)
        assert await worker.deliver(make_message(1)) == "stored"
        await trio.to_thread.run_sync(server.stop)
        assert await worker.deliver(make_message(2)) == "spooled"
        assert "refused" in worker.stats()["last_error"]
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await trio.to_thread.run_sync(server.start)
            await until(lambda: worker.stats()["delivered_from_spool"] == 1, "delivery")
            nursery.cancel_scope.cancel()
        assert files(tmp_path / "spool") == []
        assert [m.message_id for m in await store.list("mb1001")] == \
            [make_message(n).message_id for n in (1, 2)]


async def test_two_nodes_deliver_copies_of_one_spool_file_exactly_once(store, tmp_path):
    """The spool is replicated: after a failover both nodes may hold the same file.  Both
    workers run at once against the same store; it ends up with one message."""
    spool_a, spool_b = Spool(tmp_path / "a"), Spool(tmp_path / "b")
    msgs = [make_message(n) for n in (1, 2, 3)]
    for m in msgs:
        spool_a.put(m)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    worker_a = SpoolWorker(spool_a, store, retry_min=0.01, enabled=True)
    worker_b = SpoolWorker(spool_b, store, retry_min=0.01, enabled=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker_a.run)
        await nursery.start(worker_b.run)
        await until(lambda: not spool_a.pending() and not spool_b.pending(), "both spools")
        nursery.cancel_scope.cancel()
    listed = await store.list("mb1001")
    assert sorted(m.message_id for m in listed) == sorted(m.message_id for m in msgs)
    assert await store.counts("mb1001") == (3, 0)
    a, b = worker_a.stats(), worker_b.stats()
    assert a["delivered_from_spool"] + b["delivered_from_spool"] == 3
    assert a["duplicates"] + b["duplicates"] == 3


async def test_bad_spool_files_go_to_bad_and_the_worker_carries_on(maildir, tmp_path):
    events = EventLogRecorder()
    spool = Spool(tmp_path / "spool")
    first = spool.put(make_message(1))
    (tmp_path / "spool" / "000000000002-garbage.vmmsg").write_bytes(b"\x00garbage")
    partial = tmp_path / "spool" / "000000000003-partial.vmmsg"
    partial.write_bytes(encode(make_message(3))[:-100])
    refused = spool.put(make_message(4, recorded_at="last tuesday"))  # the store refuses it
    last = spool.put(make_message(5))
    # a temp file of a process that died in the middle of put()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / "spool" / f".vmha-spool-{int(dead.stdout)}-abcdef.tmp"
    stale.write_bytes(MAGIC + b'{"half')
    worker = SpoolWorker(spool, maildir, retry_min=0.01, events=events, enabled=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await until(lambda: not spool.pending(), "the spool to empty")
        nursery.cancel_scope.cancel()
    assert files(tmp_path / "spool") == [".bad"]
    assert files(tmp_path / "spool" / ".bad") == sorted(
        ["000000000002-garbage.vmmsg", partial.name, refused.name, stale.name])
    assert [m.message_id for m in await maildir.list("mb1001")] == \
        [make_message(n).message_id for n in (1, 5)]
    s = worker.stats()
    assert (s["bad"], s["delivered_from_spool"]) == (4, 2)
    bad = {r["fields"]["file"]: r["fields"]["error"] for r in events.named("spool_bad")}
    assert "partial file" in bad[partial.name]
    assert "bad magic" in bad["000000000002-garbage.vmmsg"]
    assert "the store refuses it" in bad[refused.name]
    assert "ISO 8601" in bad[refused.name]
    assert first.name not in bad and last.name not in bad


async def test_disabled_worker_does_nothing(maildir, tmp_path):
    spool = Spool(tmp_path / "spool")
    path = spool.put(make_message(1))
    worker = SpoolWorker(spool, maildir, retry_min=0.01)
    assert worker.stats()["enabled"] is False
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        worker.wake()
        await trio.testing.wait_all_tasks_blocked()
        assert spool.pending() == [path] and await maildir.all_counts() == {}
        worker.set_enabled(True)
        await until(lambda: not spool.pending(), "delivery once enabled")
        worker.set_enabled(False)
        await trio.testing.wait_all_tasks_blocked()
        second = spool.put(make_message(2))
        worker.wake()
        await trio.testing.wait_all_tasks_blocked()
        assert spool.pending() == [second]
        assert await maildir.counts("mb1001") == (1, 0)
        worker.set_enabled(True)
        await until(lambda: not spool.pending(), "delivery once enabled again")
        nursery.cancel_scope.cancel()
    assert await maildir.counts("mb1001") == (2, 0)


async def test_a_failing_store_does_not_kill_the_worker(maildir, tmp_path):
    class Broken:
        calls = 0

        async def deliver(self, msg):
            Broken.calls += 1
            if Broken.calls <= 2:
                raise RuntimeError("bug in the store")
            return await maildir.deliver(msg)

    events = EventLogRecorder()
    spool = Spool(tmp_path / "spool")
    spool.put(make_message(1))
    worker = SpoolWorker(spool, Broken(), retry_min=0.01, retry_max=0.02, events=events,
                         enabled=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await until(lambda: not spool.pending(), "delivery after the store recovers")
        nursery.cancel_scope.cancel()
    assert await maildir.counts("mb1001") == (1, 0)
    assert "RuntimeError" in events.named("store_failed")[0]["message"]


async def test_spool_unwritable_while_store_down_is_an_error(tmp_path, maildir):
    events = EventLogRecorder()
    (tmp_path / "blocked").write_text("")
    worker = SpoolWorker(Spool(tmp_path / "blocked" / "spool"), Switchable(maildir, up=False),
                         events=events)
    with pytest.raises(SpoolError, match="cannot spool"):
        await worker.deliver(make_message(1))
    assert events.named("spool_failed")


def test_worker_argument_checks(tmp_path, maildir):
    with pytest.raises(ValueError, match="retry_min"):
        SpoolWorker(Spool(tmp_path), maildir, retry_min=0)
    with pytest.raises(ValueError, match="retry_max"):
        SpoolWorker(Spool(tmp_path), maildir, retry_min=1, retry_max=0.5)


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB file system (tmpfs), or skip."""
    path = tmp_path / "small-disk"
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("not root: the full-disk tests mount a small tmpfs, which needs root "
                    "(run the tests as root, as .ci/setup does in CI)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed (the full-disk tests need it): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


async def test_full_disk_store_is_unavailable_and_the_message_is_spooled(small_disk, tmp_path):
    """The store's disk is full: StoreUnavailable ("disk full"), nothing half-written is left
    in the Maildir, the message waits in the spool and is delivered once there is room."""
    (small_disk / "store").mkdir()
    store = MaildirStore(small_disk / "store")
    big = make_message(1, audio=b"RIFF" + bytes(2 * 1024 * 1024))
    with pytest.raises(StoreUnavailable, match="disk full"):
        await store.deliver(big)
    assert files(small_disk / "store" / "mb1001" / "tmp") == []
    assert await store.counts("mb1001") == (0, 0)
    spool = Spool(tmp_path / "spool")
    worker = SpoolWorker(spool, store, retry_min=0.01, retry_max=0.05, enabled=True)
    assert await worker.deliver(big) == "spooled"
    assert "disk full" in worker.stats()["last_error"]
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await trio.to_thread.run_sync(
            lambda: subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)],
                                   check=True))
        await until(lambda: not spool.pending(), "delivery once there is room")
        nursery.cancel_scope.cancel()
    [m] = await store.list("mb1001")
    assert await store.fetch_audio("mb1001", m.uid) == big.audio


def test_full_disk_spool_put_is_a_clear_error_and_leaves_nothing(small_disk):
    spool = Spool(small_disk / "spool")
    with pytest.raises(SpoolError, match="cannot spool message .*No space left"):
        spool.put(make_message(1, audio=b"RIFF" + bytes(2 * 1024 * 1024)))
    assert files(small_disk / "spool") == []
    assert spool.put(make_message(2)).exists()  # a small one still fits
