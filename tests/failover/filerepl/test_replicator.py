"""Tests of file replication (the failover/filerepl/ package): real files under tmp_path, two
``FileReplicator`` instances wired through an in-memory pair of fake channels (and once through
a real ``ReplEndpoint`` pair on loopback).  The pure sessions have their own tests
(tests/failover/core/test_transfer.py).  Waits are on conditions and events; a negative check
("nothing was sent") follows a point where the replicator has had its chance (all tasks
blocked, a later refusal, the session ended)."""
from __future__ import annotations

import errno
import hashlib
import os
import secrets
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from failover.core.replwire import (
    FileAck,
    FileBegin,
    FileChunk,
    FileDelete,
    FileEnd,
    FileEntry,
    FileManifest,
    FileManifestRequest,
    FileOffer,
)
from failover.filerepl import (
    DISK_FULL,
    MANIFEST_PATH,
    RECEIVER_ACTIVE,
    TMP_DIR,
    FileReplicator,
    IndexEntry,
    plan,
)
from failover.filerepl.scan import Scanner
from failover.filerepl.watcher import Watcher
from failover.replchan import ChannelClosed, ReplTasks, events_log
from lab.pair import free_port
from tests.util import EventLogRecorder, until

DIRS = ["prompts", "streams", "support", "spool"]
MIB = 1024 * 1024


# ============================================================================ harness



class FakeChan:
    """One end of an in-memory connection with the ``ReplChannel`` API.  ``tap(msg)`` sees
    every message this end sends and may return a replacement (or raise ChannelClosed)."""

    def __init__(self, out: trio.MemorySendChannel, inp: trio.MemoryReceiveChannel, *,
                 peer: str, dialer: bool, tap=None):
        self._out, self._in = out, inp
        self.peer, self.dialer, self.channel = peer, dialer, 2
        self.tap = tap
        self.sent: list = []
        self.closed = False

    async def send(self, msg) -> None:
        if self.closed:
            raise ChannelClosed("closed")
        if self.tap is not None:
            msg = self.tap(msg)
        self.sent.append(msg)
        try:
            await self._out.send(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ChannelClosed("peer gone") from None

    async def receive(self):
        try:
            return await self._in.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError):
            raise ChannelClosed("closed") from None

    def close(self) -> None:
        self.closed = True
        self._out.close()
        self._in.close()

    def drain(self) -> list:
        """The messages queued for this end (taken without waiting)."""
        out = []
        while True:
            try:
                out.append(self._in.receive_nowait())
            except trio.WouldBlock:
                return out


def chan_pair(*, tap_out=None, tap_back=None, buffer: int = 16) -> tuple[FakeChan, FakeChan]:
    """(dialer end, acceptor end)."""
    d_send, a_recv = trio.open_memory_channel(buffer)
    a_send, d_recv = trio.open_memory_channel(buffer)
    return (FakeChan(d_send, d_recv, peer="beta", dialer=True, tap=tap_out),
            FakeChan(a_send, a_recv, peer="alpha", dialer=False, tap=tap_back))


async def _swallow(fn, chan) -> None:
    try:
        await fn(chan)
    except ChannelClosed:
        pass


class Link:
    """The FILES connection from ``src`` (sender session) to ``dst`` (receiver session)."""

    def __init__(self, nursery, src: "Node", dst: "Node", **kw):
        self.d, self.a = chan_pair(**kw)
        self.scope = trio.CancelScope()

        async def both():
            with self.scope:
                async with trio.open_nursery() as n:
                    n.start_soon(_swallow, src.rep.sender_session, self.d)
                    n.start_soon(_swallow, dst.rep.receiver_session, self.a)

        nursery.start_soon(both)

    def cut(self) -> None:
        self.d.close()
        self.a.close()


class Node:
    def __init__(self, tmp_path: Path, name: str, **kw):
        self.name = name
        self.data = tmp_path / name
        self.root = self.data / "files"
        self.events = EventLogRecorder()
        opts = dict(sweep_interval=3600.0, retry_min=0.05, retry_max=0.5,
                    watch_debounce_ms=10, watch_step_ms=5)
        opts.update(kw)
        self.opts = opts
        self.rep = self._replicator()
        self.scope: trio.CancelScope | None = None
        self.ended = trio.Event()  # set when the replicator's run() has returned

    def _replicator(self) -> FileReplicator:
        return FileReplicator(root=self.root, directories=DIRS, data_dir=self.data,
                              events=self.events, failures=ReplTasks(events_log(self.events)),
                              **self.opts)

    def p(self, rel: str) -> Path:
        return self.root / rel

    def write(self, rel: str, data: bytes) -> Path:
        path = self.p(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def read(self, rel: str) -> bytes | None:
        try:
            return self.p(rel).read_bytes()
        except FileNotFoundError:
            return None

    def temps(self) -> list[Path]:
        d = self.root / TMP_DIR
        return sorted(d.iterdir()) if d.exists() else []

    def conflicts(self) -> dict[str, bytes]:
        base = self.data / "conflicts" / "files"
        if not base.exists():
            return {}
        return {p.relative_to(base).as_posix(): p.read_bytes()
                for p in base.rglob("*") if p.is_file()}

    async def start(self, nursery) -> None:
        self.scope = trio.CancelScope()
        self.ended = ended = trio.Event()

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            try:
                with self.scope:
                    await self.rep.run(task_status=task_status)
            finally:
                ended.set()

        await nursery.start(run)

    def stop(self) -> None:
        self.scope.cancel()

    def restart(self) -> FileReplicator:
        """A fresh replicator on the same directories (as after a crash)."""
        self.rep = self._replicator()
        return self.rep


def active(node: Node, term: int = 2) -> None:
    node.rep.set_role(sending=True, receiving=False, term=term)


def inactive(node: Node, term: int = 2) -> None:
    node.rep.set_role(sending=False, receiving=True, term=term)


async def watching(node: Node) -> None:
    """Wait until the node's watcher reports changes: a file written after its first sweep
    and before it watches would only be found by the next sweep.  The probes are reserved
    names (``prompts/.vmha-probe-<n>``, left in place), which the watcher reports and the
    replicator ignores.  Every probe written once the watcher watched (from the first one
    it saw) is seen before this returns, so no event of theirs is still on its way."""
    seen: set[str] = set()
    written: list[str] = []
    watcher = node.rep.watcher
    real = watcher.rel_of

    def rel_of(abspath: str):
        seen.add(abspath)
        return real(abspath)

    def probe() -> bool:
        path = node.p(f"prompts/.vmha-probe-{len(written)}")
        path.write_bytes(b"probe")
        written.append(str(path))
        return bool(seen & set(written))

    watcher.rel_of = rel_of
    try:
        await until(probe, "the watcher")
        first = min(i for i, p in enumerate(written) if p in seen)
        await until(lambda: set(written[first:]) <= seen, "every later probe seen")
    finally:
        del watcher.rel_of


async def pair(nursery, tmp_path, *, a_kw=None, b_kw=None, watch=True, **link_kw):
    """a active (sender), b inactive (receiver), both running, a -> b connected; a's
    watcher is watching (unless ``watch`` is False: a test that stops it)."""
    a = Node(tmp_path, "a", **(a_kw or {}))
    b = Node(tmp_path, "b", **(b_kw or {}))
    active(a)
    inactive(b)
    await a.start(nursery)
    await b.start(nursery)
    link = Link(nursery, a, b, **link_kw)
    if watch:
        await watching(a)
    return a, b, link


def synced(a: Node, b: Node) -> bool:
    return a.rep.pending() == 0


def receiver_gone(node: Node) -> bool:
    """The node's receiver session has ended (it handled all it got, then cleaned up)."""
    return not node.rep.stats()["receiver_connected"]


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# ============================================================================ plan()


def E(size: int, data: bytes, seq: int = 1):
    return IndexEntry(size, sha(data), 2, seq)


def PE(data: bytes, seq: int = 1):
    return FileEntry(path="x/y", size=len(data), digest=sha(data), version_term=3,
                     version_seq=seq)


def test_plan_empty():
    assert plan({}, {}) == ([], [])


def test_plan_new_changed_same_and_deleted():
    local = {"prompts/new": E(1, b"n"), "prompts/same": E(1, b"s"), "prompts/chg": E(2, b"c2")}
    peer = {"prompts/same": PE(b"s"), "prompts/chg": PE(b"c1"), "prompts/old": PE(b"o")}
    assert plan(local, peer) == (["prompts/chg", "prompts/new"], ["prompts/old"])


def test_plan_same_digest_other_size_is_sent():
    e = IndexEntry(5, sha(b"abc"), 2, 1)
    assert plan({"p/a": e}, {"p/a": PE(b"abc")}) == (["p/a"], [])


def test_plan_unconfirmed_equal_content_is_confirmed():
    """version_seq 0 in the peer's manifest: identical but never received from us."""
    assert plan({"p/a": E(1, b"a")}, {"p/a": PE(b"a", seq=0)}) == (["p/a"], [])


def test_plan_ignores_versions_otherwise():
    e = IndexEntry(1, sha(b"a"), 99, 1000)
    assert plan({"p/a": e}, {"p/a": PE(b"a", seq=1)}) == ([], [])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([f"d/{c}" for c in "abcdefgh"]), st.binary(max_size=3)),
       st.dictionaries(st.sampled_from([f"d/{c}" for c in "abcdefgh"]),
                       st.tuples(st.binary(max_size=3), st.booleans())))
def test_plan_applied_to_the_peer_makes_it_equal(local_data, peer_data):
    local = {p: E(len(d), d) for p, d in local_data.items()}
    peer = {p: PE(d, seq=1 if ok else 0) for p, (d, ok) in peer_data.items()}
    sends, deletes = plan(local, peer)
    assert sends == sorted(sends) and deletes == sorted(deletes)
    assert not set(sends) & set(deletes)
    after = dict(peer)
    for p in deletes:
        del after[p]
    for p in sends:
        after[p] = PE(local_data[p])
    kept = {p for p, q in peer.items() if p not in local and q.version_seq == 0}
    assert {p: e.digest for p, e in after.items() if p not in kept} == \
        {p: e.digest for p, e in local.items()}
    assert set(after) - set(local) == kept  # the peer's own unsynced files are never deleted
    assert plan(local, after) == ([], [])


# ============================================================================ basic flow


async def test_create_modify_delete_propagate_by_watch_events(nursery, tmp_path):
    a, b, _ = await pair(nursery, tmp_path)
    await until(lambda: synced(a, b), "initial sync")
    a.write("prompts/en/hello.wav", b"hello")
    await until(lambda: b.read("prompts/en/hello.wav") == b"hello", "create replicated")
    a.write("prompts/en/hello.wav", b"hello again")
    await until(lambda: b.read("prompts/en/hello.wav") == b"hello again", "modify replicated")
    a.write("spool/q/1.msg", b"")  # empty file
    await until(lambda: b.read("spool/q/1.msg") == b"", "empty file replicated")
    a.p("prompts/en/hello.wav").unlink()
    await until(lambda: b.read("prompts/en/hello.wav") is None, "delete replicated")
    await until(lambda: synced(a, b), "pending 0")
    st_a, st_b = a.rep.stats(), b.rep.stats()
    assert st_a["sent"] >= 3 and st_a["deleted_sent"] == 1 and st_a["pending"] == 0
    assert st_b["received"] >= 3 and st_b["deleted_received"] == 1
    assert st_a["conflicts"] == st_b["conflicts"] == 0
    assert b.conflicts() == {}
    assert b.temps() == []
    # the receiver's index knows what it holds
    assert set(b.rep._index) == {"spool/q/1.msg"} == set(a.rep._index)


async def test_rename_and_directory_removal(nursery, tmp_path):
    a, b, _ = await pair(nursery, tmp_path)
    for i in range(5):
        a.write(f"streams/box/m{i}.wav", bytes([i]) * 100)
    await until(lambda: all(b.read(f"streams/box/m{i}.wav") for i in range(5)), "files")
    os.rename(a.p("streams/box"), a.p("streams/box2"))
    await until(lambda: b.read("streams/box2/m3.wav") == bytes([3]) * 100
                and b.read("streams/box/m3.wav") is None, "rename replicated")
    for f in a.p("streams/box2").iterdir():
        f.unlink()
    a.p("streams/box2").rmdir()
    await until(lambda: synced(a, b) and not list(b.p("streams/box2").glob("*")), "removed")
    assert b.conflicts() == {}


async def test_missed_event_is_fixed_by_barrier(nursery, tmp_path, monkeypatch):
    async def no_watch(self):  # every watch event is "missed"
        await trio.sleep_forever()

    monkeypatch.setattr(Watcher, "run", no_watch)
    a, b, _ = await pair(nursery, tmp_path, watch=False)
    await until(lambda: synced(a, b) and a.rep.stats()["sweeps"] >= 1, "initial sync and sweep")
    a.write("support/notes.txt", b"v1")
    await trio.testing.wait_all_tasks_blocked()  # the replicator had its chance
    assert b.read("support/notes.txt") is None and a.rep.pending() == 0  # nobody noticed
    await a.rep.barrier()
    assert a.rep.pending() >= 1
    await until(lambda: b.read("support/notes.txt") == b"v1", "replicated after barrier")
    await until(lambda: synced(a, b), "pending 0")


async def test_missed_event_is_fixed_by_the_sweep(nursery, tmp_path, monkeypatch):
    async def no_watch(self):
        await trio.sleep_forever()

    monkeypatch.setattr(Watcher, "run", no_watch)
    a, b, _ = await pair(nursery, tmp_path, a_kw={"sweep_interval": 0.1}, watch=False)
    a.write("support/notes.txt", b"v1")
    await until(lambda: b.read("support/notes.txt") == b"v1", "replicated by a sweep")
    a.p("support/notes.txt").unlink()
    await until(lambda: b.read("support/notes.txt") is None, "deletion found by a sweep")
    assert a.rep.stats()["last_sweep_s"] is not None


async def test_batch_delay_groups_changes(nursery, tmp_path):
    delay = 1.0
    a, b, link = await pair(nursery, tmp_path, a_kw={"batch_delay": delay})
    await until(lambda: synced(a, b), "initial sync")
    scans: list[set[str]] = []
    real_scan = a.rep.watcher.scan

    async def scan(rels):
        scans.append(set(rels))
        await real_scan(rels)

    a.rep.watcher.scan = scan
    t0 = trio.current_time()
    a.write("streams/one", b"1")
    await trio.sleep(0.15)  # pacing, not a wait: longer than the watch debounce, within the delay
    a.write("streams/two", b"2")
    await until(lambda: b.read("streams/one") == b"1" and b.read("streams/two") == b"2",
                "batch sent")
    assert trio.current_time() - t0 >= delay  # held back by the batching delay
    assert any({"streams/one", "streams/two"} <= s for s in scans), scans  # one batch


async def test_pending_counts_until_the_peer_manifest_arrives(nursery, tmp_path):
    a = Node(tmp_path, "a")
    active(a)
    await a.start(nursery)
    assert a.rep.pending() == 1  # never connected: not known to be replicated
    a.rep.set_role(sending=False, receiving=True, term=3)
    assert a.rep.pending() == 0  # not the sender: nothing of ours to wait for
    active(a, term=4)
    d, acc = chan_pair()
    nursery.start_soon(_swallow, a.rep.sender_session, d)
    req = await acc.receive()
    assert a.rep.pending() == 1
    await acc.send(FileManifest(request_id=req.request_id, last=True, entries=()))
    await until(lambda: a.rep.pending() == 0, "manifest received")
    assert a.rep.stats()["peer_manifest"]


async def test_files_present_before_start_and_restart_of_the_sender(nursery, tmp_path):
    a = Node(tmp_path, "a")
    b = Node(tmp_path, "b")
    for i in range(20):
        a.write(f"prompts/p{i}.wav", secrets.token_bytes(1000))
    active(a)
    inactive(b)
    await a.start(nursery)
    await b.start(nursery)
    link = Link(nursery, a, b)
    await a.rep.barrier()
    await until(lambda: synced(a, b), "initial sync")
    assert all(b.read(f"prompts/p{i}.wav") == a.read(f"prompts/p{i}.wav") for i in range(20))
    # a new connection: the manifest says everything is there, nothing is sent again
    link.cut()
    await until(lambda: a.rep.pending() > 0, "pending counts the missing manifest")
    link2 = Link(nursery, a, b)
    await until(lambda: synced(a, b), "resynchronised")
    assert not [m for m in link2.d.sent if isinstance(m, FileBegin)]
    assert [m for m in link2.d.sent if isinstance(m, FileManifestRequest)]


async def test_reserved_symlinks_special_and_empty_dirs_are_not_replicated(nursery, tmp_path):
    a, b, _ = await pair(nursery, tmp_path)
    a.write("prompts/real.wav", b"r")
    a.write("prompts/.vmha-private", b"x")
    a.write("prompts/.vmha-dir/inner", b"x")
    os.symlink(a.p("prompts/real.wav"), a.p("prompts/link.wav"))
    os.mkfifo(a.p("prompts/fifo"))
    a.p("prompts/empty/deeper").mkdir(parents=True)
    a.write("elsewhere/not-listed.txt", b"x")
    await a.rep.barrier()
    await until(lambda: b.read("prompts/real.wav") == b"r" and synced(a, b), "replicated")
    assert sorted(p.name for p in b.p("prompts").iterdir()) == ["real.wav"]
    assert not b.p("elsewhere").exists()
    skipped = a.events.named("file_skipped")
    assert {r["fields"]["path"] for r in skipped} == {"prompts/link.wav", "prompts/fifo"}
    await a.rep.barrier()
    await a.rep.barrier()
    assert len(a.events.named("file_skipped")) == 2  # logged once


async def test_stale_temps_removed_on_start_but_resumable_kept(tmp_path):
    node = Node(tmp_path, "b")
    tmp = node.root / TMP_DIR
    tmp.mkdir(parents=True)
    (tmp / "t-deadbeef").write_bytes(b"junk")
    (tmp / "r-unknown").write_bytes(b"junk")
    db, index, seq = node.rep._startup_sync()
    db.set_partial("support/big.bin", "r-known")
    db.close()
    (tmp / "t-again").write_bytes(b"junk")
    (tmp / "r-known").write_bytes(b"partial")
    db, _, _ = node.rep._startup_sync()
    db.close()
    assert [p.name for p in node.temps()] == ["r-known"]


async def test_index_is_persistent_and_unchanged_files_are_not_hashed_again(tmp_path,
                                                                         monkeypatch):
    node = Node(tmp_path, "a")
    for i in range(10):
        p = node.write(f"streams/s{i}", bytes([i]) * 10)
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns - 3_600 * 10**9))
    async with trio.open_nursery() as n:
        await node.start(n)
        await node.rep.barrier()
        versions = {p: (e.version_term, e.version_seq) for p, e in node.rep._index.items()}
        assert len(versions) == 10
        node.stop()
    hashed = []
    orig = Scanner.hash_file
    monkeypatch.setattr(Scanner, "hash_file",
                        lambda self, rel: hashed.append(rel) or orig(self, rel))
    node.restart()
    async with trio.open_nursery() as n:
        await node.start(n)
        await node.rep.barrier()
        assert hashed == []
        assert {p: (e.version_term, e.version_seq) for p, e in node.rep._index.items()} == versions
        p = node.write("streams/s3", b"changed")
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns - 3_600 * 10**9))
        await node.rep.barrier()
        assert hashed == ["streams/s3"]
        assert node.rep._index["streams/s3"].version_seq > versions["streams/s3"][1]
        node.stop()


# ============================================================================ large files


def chunks_of(chan: FakeChan, cls=FileChunk) -> list:
    return [m for m in chan.sent if isinstance(m, cls)]


async def test_20mb_file_streams_in_chunks_hash_verified(nursery, tmp_path):
    a, b, link = await pair(nursery, tmp_path)
    await until(lambda: synced(a, b), "initial sync")
    data = secrets.token_bytes(20 * MIB)
    a.write("support/big.bin", data)
    await until(lambda: b.read("support/big.bin") is not None and synced(a, b), "big file")
    assert sha(b.read("support/big.bin")) == sha(data)
    chunks = chunks_of(link.d)
    assert len(chunks) >= 20 * MIB // a.rep.chunk_size
    assert max(len(c.data) for c in chunks) <= a.rep.chunk_size
    begins = [m for m in link.d.sent if isinstance(m, FileBegin)]
    assert begins[-1].wait_offer and begins[-1].digest == sha(data)
    assert b.temps() == []


async def test_interrupted_large_transfer_never_shows_a_partial_target_and_resumes(
        nursery, tmp_path):
    old = b"old content"
    data = secrets.token_bytes(12 * MIB)
    state = {"chunks": 0, "cut": None}

    def tap(msg):
        if isinstance(msg, FileChunk):
            state["chunks"] += 1
            if state["chunks"] == 20:
                state["cut"]()
                raise ChannelClosed("cut in the middle of the transfer")
        return msg

    a, b, link = await pair(nursery, tmp_path, tap_out=tap)
    state["cut"] = link.cut
    a.write("support/big.bin", old)
    await until(lambda: b.read("support/big.bin") == old and synced(a, b), "initial sync")
    a.write("support/big.bin", data)
    await until(lambda: link.d.closed, "connection cut mid-transfer")
    await until(lambda: receiver_gone(b), "the receiver's session ended")
    assert b.read("support/big.bin") == old  # never a partial file at the target path
    partial = [p for p in b.temps() if p.name.startswith("r-")]
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < len(data)
    have = partial[0].stat().st_size
    assert a.rep.pending() > 0
    link2 = Link(nursery, a, b)
    await until(lambda: b.read("support/big.bin") == data and synced(a, b), "completed")
    offers = [m for m in link2.a.sent if isinstance(m, FileOffer)]
    assert offers and offers[0].offset == have  # resumed, not restarted
    sent = sum(len(c.data) for c in chunks_of(link2.d))
    assert sent == len(data) - have
    assert b.rep.stats()["resumed"] == 1 and b.events.named("file_resumed")
    assert b.temps() == [] and b.conflicts() == {}


async def test_receiver_restart_keeps_the_partial_and_resumes(nursery, tmp_path):
    """Like a kill -9 of the receiver: a new replicator on the same files resumes."""
    data = secrets.token_bytes(10 * MIB)
    state = {"chunks": 0}
    gate = trio.Event()

    def tap(msg):
        if isinstance(msg, FileChunk):
            state["chunks"] += 1
            if state["chunks"] == 15:
                gate.set()
        return msg

    a, b, link = await pair(nursery, tmp_path, tap_out=tap, buffer=1)
    await until(lambda: synced(a, b), "initial sync")
    a.write("support/big.bin", data)
    await gate.wait()
    link.scope.cancel()
    b.stop()
    await b.ended.wait()
    await until(lambda: receiver_gone(b), "the receiver's session ended")
    assert b.read("support/big.bin") is None
    (b.root / TMP_DIR / "t-stale").write_bytes(b"from a crashed small transfer")
    have = [p for p in b.temps() if p.name.startswith("r-")][0].stat().st_size
    assert have > 0
    b.restart()
    inactive(b)
    await b.start(nursery)
    assert [p.name for p in b.temps() if p.name.startswith("t-")] == []
    link2 = Link(nursery, a, b)
    await until(lambda: b.read("support/big.bin") == data and synced(a, b), "completed")
    offers = [m for m in link2.a.sent if isinstance(m, FileOffer)]
    assert offers[0].offset == have
    assert b.temps() == []


async def test_interrupted_small_transfer_leaves_nothing(nursery, tmp_path):
    data = secrets.token_bytes(3 * MIB)  # below the resume threshold: pipelined, in memory
    state = {"chunks": 0, "cut": None}

    def tap(msg):
        if isinstance(msg, FileChunk):
            state["chunks"] += 1
            if state["chunks"] == 5:
                state["cut"]()
                raise ChannelClosed("cut")
        return msg

    a, b, link = await pair(nursery, tmp_path, tap_out=tap)
    state["cut"] = link.cut
    a.write("streams/msg.wav", data)
    await until(lambda: link.d.closed, "cut")
    await until(lambda: receiver_gone(b), "the receiver's session ended")
    assert b.read("streams/msg.wav") is None and b.temps() == []
    begins = [m for m in link.d.sent if isinstance(m, FileBegin)]
    assert begins and not begins[0].wait_offer
    Link(nursery, a, b)
    await until(lambda: b.read("streams/msg.wav") == data and synced(a, b), "completed")
    assert b.temps() == []


# ============================================================================ conflicts


async def test_receiver_local_changes_are_preserved_in_conflicts(nursery, tmp_path):
    a, b, _ = await pair(nursery, tmp_path)
    a.write("prompts/greeting.wav", b"v1")
    a.write("prompts/bye.wav", b"bye")
    await until(lambda: b.read("prompts/greeting.wav") == b"v1"
                and b.read("prompts/bye.wav") == b"bye", "synced")
    # edited by hand on the inactive node, then changed on the active one
    b.write("prompts/greeting.wav", b"edited on b")
    b.write("prompts/bye.wav", b"bye edited on b")
    a.write("prompts/greeting.wav", b"v2")
    await until(lambda: b.read("prompts/greeting.wav") == b"v2", "overwritten")
    v = a.rep._index["prompts/greeting.wav"]
    assert b.conflicts() == {f"{v.version_term}-{v.version_seq}/prompts/greeting.wav":
                             b"edited on b"}
    # deletion on the active node of a file edited on the inactive one: kept too
    a.p("prompts/bye.wav").unlink()
    await until(lambda: b.read("prompts/bye.wav") is None and synced(a, b), "deleted")
    assert b"bye edited on b" in b.conflicts().values()
    assert b.rep.stats()["conflicts"] == 2
    ev = b.events.named("file_conflict")
    assert [e["fields"]["path"] for e in ev] == ["prompts/greeting.wav", "prompts/bye.wav"]


async def test_files_only_on_the_receiver_are_kept_in_place(nursery, tmp_path):
    seen = []
    b_kw = {"on_conflict": seen.append}
    a = Node(tmp_path, "a")
    b = Node(tmp_path, "b", **b_kw)
    a.write("spool/a-only", b"a")
    b.write("spool/b-only", b"written on b, never synced")
    b.write("spool/same", b"same")
    a.write("spool/same", b"same")
    active(a)
    inactive(b)
    await a.start(nursery)
    await b.start(nursery)
    Link(nursery, a, b)
    await until(lambda: synced(a, b) and b.read("spool/a-only") == b"a", "synced")
    # b's own work (e.g. a message spooled during a partition) is neither deleted nor moved
    assert b.read("spool/b-only") == b"written on b, never synced"
    assert b.conflicts() == {} and seen == []
    assert a.rep.stats()["peer_only_kept"] == 1 and a.rep.pending() == 0
    # identical on both sides from the start: confirmed without data, never a conflict later
    assert b.rep._index["spool/same"].confirmed and a.rep._index["spool/same"].confirmed
    a.write("spool/same", b"changed on a")
    await until(lambda: b.read("spool/same") == b"changed on a", "update")
    a.p("spool/a-only").unlink()
    await until(lambda: b.read("spool/a-only") is None, "deletion")
    assert b.conflicts() == {}
    # roles swap: b's own file now replicates to a
    Link(nursery, b, a)
    inactive(a)
    active(b, term=3)
    await until(lambda: a.read("spool/b-only") == b"written on b, never synced", "b's file on a")


async def test_directory_and_file_collisions(nursery, tmp_path):
    a, b, _ = await pair(nursery, tmp_path)
    b.write("streams/x", b"a file on b where a has a directory")
    b.write("streams/d/inner", b"a directory on b where a has a file")
    a.write("streams/x/y", b"xy")
    a.write("streams/d", b"d")
    await a.rep.barrier()
    await until(lambda: synced(a, b), "synced")
    assert b.read("streams/x/y") == b"xy" and b.read("streams/d") == b"d"
    assert sorted(b.conflicts().values()) == sorted(
        [b"a file on b where a has a directory", b"a directory on b where a has a file"])


# ============================================================================ roles


async def test_role_swap_changes_flow_back(nursery, tmp_path):
    a, b, _ = await pair(nursery, tmp_path)
    Link(nursery, b, a)  # b's own outbound connection, idle while b is inactive
    a.write("streams/m1.wav", b"from a")
    await until(lambda: b.read("streams/m1.wav") == b"from a" and synced(a, b), "a -> b")
    # failover: b active (new term), a inactive
    inactive(a, term=3)
    active(b, term=3)
    b.write("streams/m2.wav", b"from b")
    b.write("streams/m1.wav", b"changed on b")
    await until(lambda: a.read("streams/m2.wav") == b"from b"
                and a.read("streams/m1.wav") == b"changed on b" and synced(b, a), "b -> a")
    assert a.conflicts() == {} and b.conflicts() == {}
    assert a.rep._index["streams/m2.wav"].version_term == 3
    # and back again
    inactive(b, term=4)
    active(a, term=4)
    a.p("streams/m2.wav").unlink()
    await until(lambda: b.read("streams/m2.wav") is None and synced(a, b), "a -> b again")
    assert a.conflicts() == {} and b.conflicts() == {}


async def test_partition_writes_on_both_sides_are_preserved(nursery, tmp_path):
    a, b, link = await pair(nursery, tmp_path)
    a.write("streams/m.wav", b"v1")
    await until(lambda: b.read("streams/m.wav") == b"v1" and synced(a, b), "synced")
    link.cut()
    # split brain: both active, both write the same file
    active(b, term=3)
    b.write("streams/m.wav", b"written on b during the partition")
    a.write("streams/m.wav", b"written on a during the partition")
    await b.rep.barrier()
    await a.rep.barrier()
    # healed: b steps down, a's version wins, b's is kept
    inactive(b, term=4)
    active(a, term=4)
    Link(nursery, a, b)
    await until(lambda: b.read("streams/m.wav") == b"written on a during the partition"
                and synced(a, b), "healed")
    assert list(b.conflicts().values()) == [b"written on b during the partition"]


async def test_receiver_refuses_while_active(nursery, tmp_path):
    a, b, link = await pair(nursery, tmp_path)
    active(b)  # both think they are active: b refuses
    a.write("support/f", b"data")
    await a.rep.barrier()
    await until(lambda: any(isinstance(m, FileAck) and m.error == RECEIVER_ACTIVE
                            for m in link.a.sent), "refusal")

    def refused() -> list[FileAck]:
        return [m for m in link.a.sent if isinstance(m, FileAck) and not m.ok]

    # the sender backs off and asks again (a manifest request, refused too), more than once
    await until(lambda: len(refused()) >= 3 and any(m.path == MANIFEST_PATH for m in refused()),
                "refused again after backing off")
    assert b.read("support/f") is None and a.rep.pending() > 0
    refusals = refused()
    assert all(m.error == RECEIVER_ACTIVE for m in refusals)
    assert any(m.path == MANIFEST_PATH for m in refusals)
    inactive(b)
    await until(lambda: b.read("support/f") == b"data" and synced(a, b), "accepted")


async def test_not_sending_idles_and_pending_is_zero(nursery, tmp_path):
    a, b, link = await pair(nursery, tmp_path)
    await until(lambda: synced(a, b), "synced")
    a.rep.set_role(sending=False, receiving=False, term=2)  # manual mode
    n = len(link.d.sent)
    a.write("support/f", b"data")
    await a.rep.barrier()  # the replicator knows the file...
    assert "support/f" in a.rep._index
    await trio.testing.wait_all_tasks_blocked()  # ...and had its chance to send it
    assert a.rep.pending() == 0 and len(link.d.sent) == n and b.read("support/f") is None
    active(a)
    await until(lambda: b.read("support/f") == b"data" and synced(a, b), "sent after manual")


# ============================================================================ scale


async def test_ten_thousand_small_files(nursery, tmp_path):
    a = Node(tmp_path, "a")
    b = Node(tmp_path, "b")
    for i in range(10_000):
        a.write(f"prompts/d{i // 500}/p{i}.wav", b"RIFF" + i.to_bytes(4, "little") * 8)
    active(a)
    inactive(b)
    await a.start(nursery)
    await b.start(nursery)
    Link(nursery, a, b, buffer=64)
    await a.rep.barrier()
    await until(lambda: synced(a, b), "10,000 files replicated", timeout=300, poll=0.05)
    assert sum(1 for _ in b.p("prompts").rglob("*.wav")) == 10_000
    assert b.read("prompts/d7/p3500.wav") == a.read("prompts/d7/p3500.wav")
    assert a.rep.stats()["files"] == b.rep.stats()["files"] == 10_000
    for i in range(0, 10_000, 1000):
        a.p(f"prompts/d{i // 500}/p{i}.wav").unlink()
    await until(lambda: sum(1 for _ in b.p("prompts").rglob("*.wav")) == 9_990, "deletions",
                timeout=120, poll=0.05)
    await until(lambda: synced(a, b), "pending 0")


async def test_manifest_split_across_frames(nursery, tmp_path):
    kw = {"max_frame": 64 * 1024}
    a, b, link = await pair(nursery, tmp_path, a_kw=kw, b_kw=kw)
    for i in range(1500):
        a.write(f"spool/{'x' * 60}/{i:05d}", b"%d" % i)
    await a.rep.barrier()
    await until(lambda: synced(a, b) and b.rep.stats()["files"] == 1500, "synced")
    link.cut()
    await until(lambda: a.rep.pending() > 0, "disconnected")
    link2 = Link(nursery, a, b)
    await until(lambda: synced(a, b), "resynchronised")
    frames = [m for m in link2.a.sent if isinstance(m, FileManifest)]
    assert len(frames) > 2 and frames[-1].last and not any(f.last for f in frames[:-1])
    assert sum(len(f.entries) for f in frames) == 1500
    assert not [m for m in link2.d.sent if isinstance(m, FileBegin)]


# ============================================================================ failures


async def test_disk_full_pauses_and_resumes_with_nothing_lost(nursery, tmp_path):
    a, b, _ = await pair(nursery, tmp_path, b_kw={"resume_threshold": 1 * MIB})
    await until(lambda: synced(a, b), "synced")
    full = {"on": True, "hits": 0}
    real_write = b.rep.installer.write_all

    def write_all(fd, data):
        if full["on"]:
            full["hits"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, data)

    b.rep.installer.write_all = write_all
    files = {f"streams/m{i}.wav": secrets.token_bytes(1000 + i) for i in range(10)}
    big = secrets.token_bytes(3 * MIB)
    for rel, data in files.items():
        a.write(rel, data)
    a.write("support/big.bin", big)
    await a.rep.barrier()
    await until(lambda: a.rep.stats()["paused"] == DISK_FULL, "sender paused")
    assert b.rep.stats()["paused"] == DISK_FULL
    hits = full["hits"]
    await until(lambda: full["hits"] > hits, "a retry while the disk is full")
    assert full["hits"] >= 2
    assert all(b.read(rel) is None for rel in files) and b.read("support/big.bin") is None
    assert a.rep.pending() == 11
    full["on"] = False
    await until(lambda: synced(a, b), "resumed", timeout=30)
    assert all(b.read(rel) == data for rel, data in files.items())
    assert b.read("support/big.bin") == big
    assert a.rep.stats()["paused"] is None and b.rep.stats()["paused"] is None
    assert a.events.named("file_paused") and a.events.named("file_unpaused")
    assert b.temps() == []


async def test_disk_full_in_the_middle_of_a_large_file_keeps_the_partial(nursery, tmp_path):
    a, b, link = await pair(nursery, tmp_path)
    data = secrets.token_bytes(8 * MIB)
    writes = {"n": 0, "full": True}
    real_write = b.rep.installer.write_all

    def write_all(fd, chunk):
        writes["n"] += 1
        if writes["n"] > 10 and writes["full"]:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        real_write(fd, chunk)

    b.rep.installer.write_all = write_all
    a.write("support/big.bin", data)
    await until(lambda: a.rep.stats()["paused"] == DISK_FULL, "paused")
    partial = [p for p in b.temps() if p.name.startswith("r-")]
    assert len(partial) == 1 and partial[0].stat().st_size == 10 * a.rep.chunk_size
    assert b.read("support/big.bin") is None
    writes["full"] = False
    await until(lambda: b.read("support/big.bin") == data and synced(a, b), "completed")
    offers = [m.offset for m in link.a.sent if isinstance(m, FileOffer)]
    assert offers[0] == 0 and offers[-1] == 10 * a.rep.chunk_size


@pytest.mark.parametrize("size", [50_000, 5 * MIB], ids=["small", "resumable"])
async def test_corrupted_chunk_is_refused_and_retried(nursery, tmp_path, size):
    data = secrets.token_bytes(size)
    state = {"corrupted": 0}

    def tap(msg):
        if isinstance(msg, FileChunk) and state["corrupted"] == 0 and msg.offset == 0 \
                and len(msg.data) > 10:
            state["corrupted"] += 1
            bad = bytearray(msg.data)
            bad[7] ^= 0xFF
            return FileChunk(transfer_id=msg.transfer_id, offset=msg.offset, data=bytes(bad))
        return msg

    a, b, link = await pair(nursery, tmp_path, tap_out=tap, a_kw={"retry_min": 0.5})
    a.write("support/file", b"old")
    await until(lambda: b.read("support/file") == b"old" and synced(a, b), "synced")
    a.write("support/file", data)
    await until(lambda: any(isinstance(m, FileAck) and not m.ok for m in link.a.sent), "error")
    ack = [m for m in link.a.sent if isinstance(m, FileAck) and not m.ok][0]
    assert ack.error == "digest mismatch" and ack.path == "support/file"
    assert b.read("support/file") == b"old"  # target unchanged
    assert b.temps() == []  # temp removed
    # the ack is seen on the wire before the sender has handled it
    await until(lambda: a.rep.stats()["errors"] >= 1, "error counted")
    await until(lambda: b.read("support/file") == data and synced(a, b), "retried")
    assert b.conflicts() == {}


async def test_bad_paths_from_the_wire_are_refused(nursery, tmp_path):
    b = Node(tmp_path, "b")
    inactive(b)
    await b.start(nursery)
    d, acc = chan_pair()
    nursery.start_soon(_swallow, b.rep.receiver_session, acc)
    bad = ["prompts/.vmha-tmp/x", ".vmha-tmp/r-0", "etc/passwd", "prompts/../../etc/passwd",
           "/etc/passwd", "prompts//x", "prompts", "prompts/.vmhaX"]
    for i, path in enumerate(bad):
        await d.send(FileBegin(transfer_id=i + 1, path=path, size=1, digest=sha(b"x"),
                               version_term=2, version_seq=i + 1, wait_offer=False))
        await d.send(FileChunk(transfer_id=i + 1, offset=0, data=b"x"))
        await d.send(FileEnd(transfer_id=i + 1))
        ack = await d.receive()
        assert isinstance(ack, FileAck) and not ack.ok and ack.error.startswith("bad path"), ack
    for i, path in enumerate(bad):
        await d.send(FileDelete(transfer_id=100 + i, path=path, version_term=2, version_seq=1))
        ack = await d.receive()
        assert isinstance(ack, FileAck) and not ack.ok and ack.error.startswith("bad path"), ack
    # a good one still works on the same connection
    await d.send(FileBegin(transfer_id=7, path="prompts/ok", size=1, digest=sha(b"x"),
                           version_term=2, version_seq=9, wait_offer=False))
    await d.send(FileChunk(transfer_id=7, offset=0, data=b"x"))
    await d.send(FileEnd(transfer_id=7))
    ack = await d.receive()
    assert ack == FileAck(transfer_id=7, path="prompts/ok", ok=True, error="")
    assert sorted(p.relative_to(b.root).as_posix() for p in b.root.rglob("*") if p.is_file()) \
        == ["prompts/ok"]
    assert not (tmp_path / "etc").exists()


async def test_protocol_violations_from_the_wire(nursery, tmp_path):
    b = Node(tmp_path, "b")
    inactive(b)
    await b.start(nursery)
    d, acc = chan_pair()
    nursery.start_soon(_swallow, b.rep.receiver_session, acc)
    # wrong offset
    await d.send(FileBegin(transfer_id=1, path="prompts/a", size=4, digest=sha(b"abcd"),
                           version_term=2, version_seq=1, wait_offer=False))
    await d.send(FileChunk(transfer_id=1, offset=2, data=b"cd"))
    ack = await d.receive()
    assert not ack.ok and "offset" in ack.error
    await d.send(FileEnd(transfer_id=1))  # ignored: already answered
    # too much data
    await d.send(FileBegin(transfer_id=2, path="prompts/a", size=2, digest=sha(b"ab"),
                           version_term=2, version_seq=2, wait_offer=False))
    await d.send(FileChunk(transfer_id=2, offset=0, data=b"abc"))
    ack = await d.receive()
    assert ack.transfer_id == 2 and not ack.ok
    # too little data
    await d.send(FileBegin(transfer_id=3, path="prompts/a", size=4, digest=sha(b"abcd"),
                           version_term=2, version_seq=3, wait_offer=True))
    offer = await d.receive()
    assert offer == FileOffer(transfer_id=3, offset=0)
    await d.send(FileChunk(transfer_id=3, offset=0, data=b"ab"))
    await d.send(FileEnd(transfer_id=3))
    ack = await d.receive()
    assert ack.transfer_id == 3 and not ack.ok and "size" in ack.error
    assert b.read("prompts/a") is None and b.temps() == []


async def test_sender_ignores_bad_manifest_entries(nursery, tmp_path):
    a = Node(tmp_path, "a")
    active(a)
    await a.start(nursery)
    d, acc = chan_pair()
    nursery.start_soon(_swallow, a.rep.sender_session, d)
    req = await acc.receive()
    assert isinstance(req, FileManifestRequest)
    entries = tuple(FileEntry(path=p, size=1, digest=sha(b"x"), version_term=1, version_seq=1)
                    for p in ("prompts/.vmha-x", "other/x", "prompts/real"))
    await acc.send(FileManifest(request_id=req.request_id, last=True, entries=entries))
    msg = await acc.receive()
    assert msg == FileDelete(transfer_id=msg.transfer_id, path="prompts/real",
                             version_term=msg.version_term, version_seq=msg.version_seq)
    await acc.send(FileAck(transfer_id=msg.transfer_id, path="prompts/real", ok=True, error=""))
    await until(lambda: a.rep.pending() == 0, "pending 0")


async def test_pipelined_small_files_bounded_window(nursery, tmp_path):
    """Small files go out without waiting for acks, at most max_inflight_files at a time."""
    a = Node(tmp_path, "a", max_inflight_files=8)
    for i in range(40):
        a.write(f"spool/f{i}", b"%d" % i)
    active(a)
    await a.start(nursery)
    d, acc = chan_pair(buffer=1000)
    nursery.start_soon(_swallow, a.rep.sender_session, d)
    req = await acc.receive()
    await acc.send(FileManifest(request_id=req.request_id, last=True, entries=()))

    async def begins_until_blocked(n: int) -> list[FileBegin]:
        """The transfers started: ``n`` complete ones, then whatever else the sender sends
        before it waits for an ack (all tasks blocked)."""
        got: list = []
        ends = 0
        while ends < n:
            m = await acc.receive()
            got.append(m)
            ends += isinstance(m, FileEnd)
        await trio.testing.wait_all_tasks_blocked()
        got += acc.drain()
        return [m for m in got if isinstance(m, FileBegin)]

    begins = await begins_until_blocked(8)
    assert len(begins) == 8 and not any(m.wait_offer for m in begins)
    assert a.rep.stats()["in_flight"] == 8
    for m in begins[:3]:
        await acc.send(FileAck(transfer_id=m.transfer_id, path=m.path, ok=True, error=""))
    more = await begins_until_blocked(3)
    assert len(more) == 3
    assert a.rep.pending() == 37


# ============================================================================ real channel


async def test_over_a_real_replication_endpoint_pair(nursery, tmp_path):
    from failover.config import Address
    from failover.core.replwire import Channel
    from failover.core.state import Role
    from failover.replchan import ReplEndpoint

    a = Node(tmp_path, "a")
    b = Node(tmp_path, "b")
    active(a)
    inactive(b)
    await a.start(nursery)
    await b.start(nursery)
    psk = secrets.token_bytes(32)

    pa, pb = free_port(), free_port()
    eps = []
    for node, role, peer, lp, pp in ((a, Role.PRIMARY, "b", pa, pb),
                                     (b, Role.SECONDARY, "a", pb, pa)):
        eps.append(ReplEndpoint(
            node=node.name, role=role, peer_name=peer, keys=psk,
            listen=Address("127.0.0.1", lp), peer=Address("127.0.0.1", pp), events=node.events,
            sessions_out={Channel.FILES: node.rep.sender_session},
            sessions_in={Channel.FILES: node.rep.receiver_session}, max_frame=256 * 1024))
    for ep in eps:
        await nursery.start(ep.run)
    small = {f"prompts/p{i}.wav": secrets.token_bytes(2000) for i in range(50)}
    for rel, data in small.items():
        a.write(rel, data)
    big = secrets.token_bytes(6 * MIB)
    a.write("support/big.bin", big)
    await a.rep.barrier()
    try:
        await until(lambda: synced(a, b) and b.read("support/big.bin") == big, "over TCP", timeout=20)
    except AssertionError:
        print(a.rep.stats(), b.rep.stats(), eps[0].stats(), eps[1].stats(),
              a.events.records[-10:], b.events.records[-10:], sep="\n")
        raise
    assert all(b.read(rel) == data for rel, data in small.items())
    # fail over: b sends back to a over its own outbound connection
    inactive(a, term=3)
    active(b, term=3)
    b.write("streams/new.wav", b"from b")
    await until(lambda: a.read("streams/new.wav") == b"from b" and synced(b, a), "back to a",
                timeout=30)
    assert a.conflicts() == {} and b.conflicts() == {}
