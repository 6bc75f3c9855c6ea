"""Replication keeps going through faults (docs/replication.md, "Failures are contained"):
peers that reset connections at any point, files that cannot be looked at, a database error
in a long-lived task, a listen port in use.

Real sockets on 127.0.0.1 and real files; two in-process ``Replication`` instances (database
and files over real ``ReplEndpoint``s).  ``trio.fail_after``/``until`` are hang guards only;
waits are on counters and outcomes.
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import struct

import apsw
import pytest
import trio

from failover.config import parse_config
from failover.core.replwire import NEED_DATA, Channel, DbState, FileManifestRequest, Hello, ReplConnection
from failover.core.state import Mode, Role, State
from failover.replication import Replication
from lab.pair import free_port
from telephony.configdb import ConfigDB
from telephony.runtime.tasks import ListenError
from tests.failover.filerepl.test_replicator import pair, synced
from tests.util import EventLogRecorder, until

PSK = bytes(range(32))
GUARD = 30  # seconds: hang guard only



def sub(ext: str) -> dict:
    return {"extension": ext, "name": f"User {ext}", "mailbox": f"mb{ext}",
            "mwi_method": "sip", "notify": []}


# ============================================================================ the pair


class ReplNode:
    def __init__(self, tmp_path, name: str, role: str, ports: dict):
        other = "b" if name == "a" else "a"
        self.name = name
        self.events = EventLogRecorder()
        doc = {
            "node": {"name": name, "role": role, "data_dir": str(tmp_path / name)},
            "link": {"listen": f"127.0.0.1:{ports[name, 'link']}",
                     "peer": f"127.0.0.1:{ports[other, 'link']}", "peer_name": other,
                     "reconnect_min": 0.01, "reconnect_max": 0.2},
            "ports": {"loopback": {"listen": f"127.0.0.1:{ports[name, 'loop']}"}},
            "replication": {"listen": f"127.0.0.1:{ports[name, 'repl']}",
                            "peer": f"127.0.0.1:{ports[other, 'repl']}",
                            "sweep_interval": 3600.0},
        }
        self.cfg = parse_config(doc, str(tmp_path / f"{name}.toml"))
        self.repl = Replication(self.cfg, PSK, self.events)
        self.scope = trio.CancelScope()

    async def start(self, nursery) -> None:
        async def run(task_status=trio.TASK_STATUS_IGNORED):
            with self.scope:
                await self.repl.run(task_status=task_status)
        await nursery.start(run)

    @property
    def files_root(self):
        return self.cfg.replication.files_root


def ports() -> dict:
    return {(n, k): free_port() for n in "ab" for k in ("link", "loop", "repl")}


def make_pair(tmp_path):
    p = ports()
    a = ReplNode(tmp_path, "a", "primary", p)
    b = ReplNode(tmp_path, "b", "secondary", p)
    a.repl.update(State.ACTIVE, 2, Mode.AUTOMATIC)
    b.repl.update(State.INACTIVE, 2, Mode.AUTOMATIC)
    return a, b


def db_synced(a: ReplNode, b: ReplNode) -> bool:
    sa, sb = a.repl.stats()["db"], b.repl.stats()["db"]
    return sa["head_seq"] >= 1 and sb["applied_seq"] == sa["head_seq"] \
        and sa["lag_changes"] == 0


# ============================================================================ resets


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def hello_bytes(channel: Channel) -> tuple[ReplConnection, bytes]:
    conn = ReplConnection(keys=(PSK,), node="a", role=Role.PRIMARY, channel=channel, dialer=True,
                          nonce=os.urandom(16), expected_peer="b")
    return conn, conn.hello()


def handshake(port: int, channel: Channel) -> tuple[socket.socket, ReplConnection]:
    """A real dialer's handshake with the node listening on ``port`` (blocking; in a thread)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn, hello = hello_bytes(channel)
    s.sendall(hello)
    while (e := conn.next_event()) is NEED_DATA:
        data = s.recv(65536)
        assert data, "the listener closed during the handshake"
        conn.receive_data(data)
    assert isinstance(e, Hello) and conn.established
    return s, conn


def fault(port: int, channel: Channel, kind: str) -> None:
    """Connect to ``port`` and misbehave, ending with a reset."""
    if kind == "mid-handshake":
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(hello_bytes(channel)[1][:11])  # header and part of the HELLO
    elif kind == "garbage":
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(os.urandom(700))
    elif kind == "mid-frame":
        s, conn = handshake(port, channel)
        msg = (DbState(1, 2, 1, 0, 0, 0, True) if channel is Channel.DB
               else FileManifestRequest(request_id=7))
        frame = conn.send(msg)
        s.sendall(frame[: len(frame) // 2])
    elif kind == "garbage-after-handshake":
        s, _ = handshake(port, channel)
        s.sendall(b"VR\x01" + os.urandom(300))
    else:
        raise AssertionError(kind)
    reset(s)


FAULTS = ("mid-handshake", "garbage", "mid-frame", "garbage-after-handshake")


async def all_faults(port: int) -> None:
    for channel in (Channel.DB, Channel.FILES):
        for kind in FAULTS:
            await trio.to_thread.run_sync(fault, port, channel, kind)


async def test_resets_at_any_point_never_end_the_listener_and_later_connections_replicate(
        tmp_path):
    a, b = make_pair(tmp_path)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await b.start(nursery)
            port = b.repl.endpoint.listen_port
            rejected = b.repl.endpoint.counters["in_rejected"]
            await all_faults(port)  # nobody else connected yet
            # the two handshake faults per channel are refused; the others got a session slot
            await until(lambda: b.repl.endpoint.counters["in_rejected"] >= rejected + 4,
                        "handshake faults counted")
            # later good connections (a's dialers) replicate the database and files
            await a.start(nursery)
            (a.files_root / "prompts").mkdir(parents=True, exist_ok=True)
            (a.files_root / "prompts" / "hello.wav").write_bytes(b"hello")
            await a.repl.write(2, [{"op": "put", "table": "subscribers", "row": sub("1001")}])
            await until(lambda: db_synced(a, b), "database replicated")
            await a.repl.files.barrier()  # written before its watcher may have been ready
            await until(lambda: (b.files_root / "prompts" / "hello.wav").exists(),
                        "file replicated")
            # the same faults while a's connections are up: they go on
            await all_faults(port)
            await a.repl.write(2, [{"op": "put", "table": "subscribers", "row": sub("1002")}])
            (a.files_root / "prompts" / "again.wav").write_bytes(b"again")
            await a.repl.files.barrier()
            await until(lambda: db_synced(a, b) and a.repl.stats()["db"]["head_seq"] == 2,
                        "database replicated after more faults")
            await until(lambda: (b.files_root / "prompts" / "again.wav").exists(),
                        "file replicated after more faults")
            assert b.repl.stats()["healthy"], b.repl.stats()["unhealthy_reason"]
            nursery.cancel_scope.cancel()


async def test_a_listen_port_in_use_is_one_error_naming_the_setting(tmp_path):
    a, b = make_pair(tmp_path)
    taken = socket.socket()
    taken.bind(("127.0.0.1", a.cfg.replication.listen.port))
    taken.listen()
    try:
        with trio.fail_after(GUARD):
            async with trio.open_nursery() as nursery:
                with pytest.raises(ListenError) as ei:
                    await a.start(nursery)
        assert "replication.listen" in str(ei.value)
        assert f"127.0.0.1:{a.cfg.replication.listen.port}" in str(ei.value)
    finally:
        taken.close()


# ============================================================================ database errors


async def test_an_apsw_error_in_the_watch_for_other_writers_is_contained(tmp_path, monkeypatch):
    a, b = make_pair(tmp_path)
    real = ConfigDB.data_version
    armed = {"a": False}
    failed = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def data_version(db):
        if armed["a"] and db is a.repl.db:
            armed["a"] = False
            token.run_sync_soon(failed.set)
            raise apsw.IOError("disk I/O error (injected)")
        return real(db)

    monkeypatch.setattr(ConfigDB, "data_version", data_version)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await b.start(nursery)
            await a.start(nursery)
            await a.repl.write(2, [{"op": "put", "table": "subscribers", "row": sub("1001")}])
            await until(lambda: db_synced(a, b), "first change replicated")
            armed["a"] = True
            await failed.wait()
            # the watch goes on: it still notices another process's writes, which are shipped
            other = ConfigDB(a.cfg.database.path, role=Role.PRIMARY)
            try:
                await trio.to_thread.run_sync(
                    other.write, 2, [{"op": "put", "table": "subscribers", "row": sub("1002")}])
            finally:
                other.close()
            await until(lambda: b.repl.stats()["db"]["applied_seq"] == 2 and db_synced(a, b),
                        "the other writer's change replicated")
            # counted, logged, reported; healthy again once the watch works again
            st = a.repl.stats()
            assert st["tasks"]["db.watch_writers"]["failures"] == 1
            assert "IOError" in st["tasks"]["db.watch_writers"]["last_error"]
            assert a.events.named("task_failed")
            await until(lambda: a.repl.stats()["healthy"], "healthy again")
            assert a.repl.stats()["tasks"]["db.watch_writers"]["failing"] is False
            assert a.repl.stats()["unhealthy_reason"] is None
            nursery.cancel_scope.cancel()


async def test_an_apsw_error_in_a_db_session_ends_only_its_connection(tmp_path, monkeypatch):
    a, b = make_pair(tmp_path)
    real = ConfigDB.apply_remote
    armed = {"b": True}

    def apply_remote(db, *args, **kw):
        if armed["b"] and db is b.repl.db:
            armed["b"] = False
            raise apsw.IOError("disk I/O error (injected)")
        return real(db, *args, **kw)

    monkeypatch.setattr(ConfigDB, "apply_remote", apply_remote)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await b.start(nursery)
            await a.start(nursery)
            await a.repl.write(2, [{"op": "put", "table": "subscribers", "row": sub("1001")}])
            await until(lambda: db_synced(a, b), "replicated after the failed session")
            assert b.repl.failures.counts["db.receiver"] == 1
            assert "IOError" in b.repl.stats()["tasks"]["db.receiver"]["last_error"]
            await until(lambda: b.repl.stats()["healthy"], "healthy again")
            nursery.cancel_scope.cancel()


# ============================================================================ stat errors


async def test_a_stat_error_on_one_file_is_counted_and_the_others_replicate(
        nursery, tmp_path, monkeypatch):
    a, b, _ = await pair(nursery, tmp_path)
    await until(lambda: synced(a, b), "initial sync")
    bad = str(a.p("prompts/bad.wav"))
    broken = {"on": True}
    real_lstat = os.lstat

    def lstat(path, *args, **kw):
        if broken["on"] and os.fspath(path) == bad:
            raise OSError(errno.EIO, "Input/output error (injected)", bad)
        return real_lstat(path, *args, **kw)

    monkeypatch.setattr(os, "lstat", lstat)
    a.write("prompts/bad.wav", b"bad")
    a.write("prompts/good.wav", b"good")
    await until(lambda: b.read("prompts/good.wav") == b"good", "the other file replicated")
    await until(lambda: a.rep.stats()["scan_errors"] >= 1, "stat error counted")
    st = a.rep.stats()
    assert st["unreadable"] == 1
    assert "prompts/bad.wav" in a.rep.failures.failing()["files.scan"]
    assert "EIO" in a.rep.failures.last["files.scan"] or "Input/output" in \
        a.rep.failures.last["files.scan"]
    # it is looked at again later (here: the barrier's full scan), then replicated
    broken["on"] = False
    await a.rep.barrier()
    await until(lambda: b.read("prompts/bad.wav") == b"bad", "the file replicated once readable")
    assert a.rep.stats()["unreadable"] == 0 and "files.scan" not in a.rep.failures.failing()


async def test_a_watched_directory_turned_into_a_symlink_loop(nursery, tmp_path):
    a, b, _ = await pair(nursery, tmp_path)
    a.write("support/keep.txt", b"keep")
    await until(lambda: b.read("support/keep.txt") == b"keep" and synced(a, b), "replicated")
    shutil.rmtree(a.p("support"))
    os.symlink("support", a.p("support"))  # support -> support: ELOOP
    # the other directories are still watched and replicated
    a.write("prompts/after.wav", b"after")
    await until(lambda: b.read("prompts/after.wav") == b"after", "other directory replicated")
    await until(lambda: a.rep.stats()["scan_errors"] >= 1, "ELOOP counted")
    assert "support" in a.rep.failures.failing().get("files.scan", "")
    # nothing below the unreadable directory is deleted on the peer
    assert "support/keep.txt" in a.rep._index and b.read("support/keep.txt") == b"keep"
    await a.rep.barrier()  # a full scan survives it too
    a.write("streams/x.wav", b"x")
    await until(lambda: b.read("streams/x.wav") == b"x", "still replicating")


async def test_a_subdirectory_turned_into_a_symlink_loop(nursery, tmp_path):
    a, b, _ = await pair(nursery, tmp_path)
    a.write("spool/q/1.msg", b"one")
    await until(lambda: b.read("spool/q/1.msg") == b"one" and synced(a, b), "replicated")
    shutil.rmtree(a.p("spool/q"))
    os.symlink("q", a.p("spool/q"))  # below the top, symlinks are not followed: gone
    await until(lambda: b.read("spool/q/1.msg") is None, "deletion replicated")
    a.write("spool/2.msg", b"two")
    await until(lambda: b.read("spool/2.msg") == b"two" and synced(a, b), "still replicating")


async def test_changes_another_process_wrote_just_before_they_are_sent_are_not_ahead(
        tmp_path, monkeypatch):
    """The messaging service writes the same database.  When its change lands between the
    node manager's own write and the sender's read of the log, the batch sent holds more than
    the head the node manager had cached; the peer's acknowledgement of it must not read as
    'peer ahead of our log' (seen in the demo as a db_peer_ahead error)."""
    a, b = make_pair(tmp_path)
    real = ConfigDB.entries_after
    armed = {"on": False}

    def entries_after(db, after, **kw):
        if armed["on"] and db is a.repl.db:
            armed["on"] = False  # the service's write lands right now, before the read
            other = ConfigDB(a.cfg.database.path, role=Role.PRIMARY)
            try:
                other.write(2, [{"op": "put", "table": "subscribers", "row": sub("1003")}])
            finally:
                other.close()
        return real(db, after, **kw)

    monkeypatch.setattr(ConfigDB, "entries_after", entries_after)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            await b.start(nursery)
            await a.start(nursery)
            await a.repl.write(2, [{"op": "put", "table": "subscribers", "row": sub("1001")}])
            await until(lambda: db_synced(a, b), "first change replicated")
            armed["on"] = True
            await a.repl.write(2, [{"op": "put", "table": "subscribers", "row": sub("1002")}])
            await until(lambda: b.repl.stats()["db"]["applied_seq"] == 3 and db_synced(a, b),
                        "both changes replicated")
            nursery.cancel_scope.cancel()
    assert not armed["on"], "the other writer's change was not injected"
    assert not a.events.named("db_peer_ahead"), a.events.named("db_peer_ahead")
