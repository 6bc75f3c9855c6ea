"""Tests of the replication channel's Trio driver (failover/replchan.py) over real TCP on
127.0.0.1.  ``trio.fail_after`` is only a hang guard; waits are on conditions, not on time."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from failover.config import Address
from failover.core.replwire import (
    NEED_DATA,
    Channel,
    DbState,
    FileAck,
    FileBegin,
    FileChunk,
    FileEnd,
    FileEntry,
    FileManifest,
    FileManifestRequest,
    Hello,
    ReplConnection,
    max_data,
)
from failover.core.state import Role
from failover.replchan import INBOX_ITEMS, ChannelClosed, ReplChannel, ReplEndpoint
from tests.util import EventLogRecorder, until

HOST = "127.0.0.1"
PSK = bytes(range(32))
D = bytes(32)
GUARD = 10  # seconds: hang guard only



def endpoint(node: str, events, *, peer_port: int = 0, listen_port: int = 0, psk: bytes = PSK,
             sessions_out=None, sessions_in=None, **kw) -> ReplEndpoint:
    kw.setdefault("reconnect_min", 0.01)
    kw.setdefault("reconnect_max", 0.1)
    kw.setdefault("handshake_timeout", 2.0)
    peer_name = "beta" if node == "alpha" else "alpha"
    role = Role.PRIMARY if node == "alpha" else Role.SECONDARY
    return ReplEndpoint(node=node, role=role, peer_name=peer_name, keys=psk,
                        listen=Address(HOST, listen_port), peer=Address(HOST, peer_port),
                        events=events, sessions_out=sessions_out or {},
                        sessions_in=sessions_in or {}, **kw)


async def serve(ep: ReplEndpoint, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run ``ep``; ``started()`` hands back a cancel scope that stops it."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(ep.run)
            task_status.started(scope)


async def start_pair(nursery, a_kw: dict, b_kw: dict):
    """alpha and beta, each dialing the other."""
    ra, rb = EventLogRecorder(), EventLogRecorder()
    a = endpoint("alpha", ra, **a_kw)
    await nursery.start(serve, a)
    b = endpoint("beta", rb, peer_port=a.listen_port, **b_kw)
    await nursery.start(serve, b)
    a.peer = Address(HOST, b.listen_port)  # read at each dial attempt
    return a, b, ra, rb


async def fake_dial(port: int, *, psk=PSK, channel=Channel.DB, node="alpha", refused=False):
    """A hand-driven dialer: TCP + codec, handshake done (or, with ``refused``, checked to
    be refused: the acceptor closes without answering)."""
    stream = await trio.open_tcp_stream(HOST, port)
    conn = ReplConnection(keys=(psk,), node=node, role=Role.PRIMARY, channel=channel, dialer=True,
                          nonce=os.urandom(16), expected_peer="beta")
    await stream.send_all(conn.hello())
    if refused:
        assert await read_until_eof(stream) == b""
        await stream.aclose()
        return None
    while (e := conn.next_event()) is NEED_DATA:
        conn.receive_data(await stream.receive_some(65536))
    assert isinstance(e, Hello) and e.node == "beta" and e.channel is channel
    return stream, conn


async def read_until_eof(stream) -> bytes:
    data = b""
    try:
        while chunk := await stream.receive_some(65536):
            data += chunk
    except trio.BrokenResourceError:  # a reset is an end too
        pass
    return data


def state(i: int, active=True) -> DbState:
    return DbState(head_seq=i, head_term=2, first_seq=1, applied_seq=0, applied_term=0,
                   checksum=i * 11, active=active)


# ---- exchange -------------------------------------------------------------------------------

async def test_exchange_both_ways_on_both_channels():
    done_send, done_recv = trio.open_memory_channel(10)
    results = {}

    async def db_sender(chan: ReplChannel):
        replies = []
        for i in range(1, 4):
            await chan.send(state(i))
            replies.append(await chan.receive())
        results[("db", chan.peer)] = (chan, replies)
        await done_send.send(("db", chan.peer))
        await trio.sleep_forever()

    async def db_receiver(chan: ReplChannel):
        while True:
            m = await chan.receive()
            await chan.send(DbState(m.head_seq, m.head_term, 1, m.head_seq, m.head_term,
                                    m.checksum, False))

    async def files_sender(chan: ReplChannel):
        await chan.send(FileManifestRequest(1))
        manifest = await chan.receive()
        await chan.send(FileBegin(2, "box/1.wav", 6, D, 1, 1, False))
        await chan.send(FileChunk(2, 0, b"abc"))
        await chan.send(FileChunk(2, 3, b"def"))
        await chan.send(FileEnd(2))
        ack = await chan.receive()
        results["files"] = (chan, manifest, ack)
        await done_send.send("files")
        await trio.sleep_forever()

    received_files = []

    async def files_receiver(chan: ReplChannel):
        data = b""
        while True:
            m = await chan.receive()
            received_files.append((chan, m))
            if isinstance(m, FileManifestRequest):
                await chan.send(FileManifest(m.request_id, True,
                                             (FileEntry("box/0.wav", 1, D, 1, 1),)))
            elif isinstance(m, FileChunk):
                data += m.data
            elif isinstance(m, FileEnd):
                await chan.send(FileAck(m.transfer_id, "box/1.wav", data == b"abcdef", ""))

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            a, b, ra, rb = await start_pair(
                nursery,
                dict(sessions_out={Channel.DB: db_sender, Channel.FILES: files_sender},
                     sessions_in={Channel.DB: db_receiver}),
                dict(sessions_out={Channel.DB: db_sender},
                     sessions_in={Channel.DB: db_receiver, Channel.FILES: files_receiver}))
            assert {await done_recv.receive() for _ in range(3)} == \
                {("db", "beta"), ("db", "alpha"), "files"}

            for peer, _me in (("beta", "alpha"), ("alpha", "beta")):
                chan, replies = results[("db", peer)]
                assert (chan.peer, chan.channel, chan.dialer) == (peer, Channel.DB, True)
                assert chan.peer_role is (Role.SECONDARY if peer == "beta" else Role.PRIMARY)
                assert replies == [DbState(i, 2, 1, i, 2, i * 11, False) for i in (1, 2, 3)]
                assert chan.counters["frames_out"] == 3 and chan.counters["frames_in"] == 3
                assert chan.counters["dropped_mac"] == 0
            chan, manifest, ack = results["files"]
            assert (chan.peer, chan.channel, chan.dialer) == ("beta", Channel.FILES, True)
            assert manifest == FileManifest(1, True, (FileEntry("box/0.wav", 1, D, 1, 1),))
            assert ack == FileAck(2, "box/1.wav", True, "")
            inbound = received_files[0][0]
            assert (inbound.peer, inbound.channel, inbound.dialer) == \
                ("alpha", Channel.FILES, False)
            assert [type(m) for _, m in received_files] == \
                [FileManifestRequest, FileBegin, FileChunk, FileChunk, FileEnd]

            sa, sb = a.stats(), b.stats()
            assert set(sa) == {"db", "files"} and set(sb) == {"db", "files"}
            assert sa["db"]["out_connected"] and sa["db"]["in_connected"]
            assert sa["files"]["out_connected"] and not sa["files"]["in_connected"]
            assert sb["files"]["in_connected"] and not sb["files"]["out_connected"]
            assert sa["db"]["counters"]["frames_out"] == 6  # 3 out on our dial, 3 replies
            assert sb["files"]["counters"]["frames_in"] == 5
            assert sb["files"]["counters"]["bytes_in"] > 0
            for r in (ra, rb):
                assert not [x for x in r.records if x["level"] == "error"], r.records
                assert r.named("repl_up") and r.named("repl_in_up")
            nursery.cancel_scope.cancel()


# ---- authentication -------------------------------------------------------------------------

async def test_wrong_psk_peer_never_reaches_a_session():
    calls = []

    async def session(chan):
        calls.append(chan)

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            rb = EventLogRecorder()
            b = endpoint("beta", rb, sessions_in={Channel.DB: session},
                         sessions_out={Channel.DB: session})
            await nursery.start(serve, b)
            ra = EventLogRecorder()
            a = endpoint("alpha", ra, peer_port=b.listen_port, psk=b"not the key",
                         sessions_out={Channel.DB: session}, sessions_in={Channel.DB: session})
            await nursery.start(serve, a)
            b.peer = Address(HOST, a.listen_port)
            await rb.wait_for("repl_reject")  # alpha's dial refused by beta
            await ra.wait_for("repl_reject")  # beta's dial refused by alpha
            await ra.wait_for("repl_retry_db")
            await rb.wait_for("repl_retry_db")
            await until(lambda: b.counters["in_rejected"] >= 3)
            assert calls == []
            assert "do not accept" in rb.named("repl_reject")[0]["message"]
            assert not b.stats()["db"]["in_connected"] and not b.stats()["db"]["out_connected"]
            assert b.stats()["db"]["last_error"]
            assert len(rb.named("repl_reject")) == 1  # rate-limited
            nursery.cancel_scope.cancel()


async def test_wrong_peer_name_and_missing_channel_are_refused_and_a_good_peer_still_works():
    got = []

    async def session(chan):
        while True:
            got.append(await chan.receive())

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            rb = EventLogRecorder()
            b = endpoint("beta", rb, sessions_in={Channel.DB: session})
            await nursery.start(serve, b)
            await fake_dial(b.listen_port, node="gamma", refused=True)
            await fake_dial(b.listen_port, channel=Channel.FILES, refused=True)
            assert b.counters["in_rejected"] == 2
            stream, conn = await fake_dial(b.listen_port)
            await stream.send_all(conn.send(state(1)))
            await until(lambda: got == [state(1)])
            assert b.stats()["db"]["in_connected"] and "files" not in b.stats()
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_handshake_timeout_and_garbage_do_not_disturb_a_running_session():
    got = []

    async def session(chan):
        while True:
            got.append(await chan.receive())

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            rb = EventLogRecorder()
            b = endpoint("beta", rb, sessions_in={Channel.DB: session}, handshake_timeout=0.2)
            await nursery.start(serve, b)
            stream, conn = await fake_dial(b.listen_port)
            await stream.send_all(conn.send(state(1)))
            silent = await trio.open_tcp_stream(HOST, b.listen_port)
            garbage = await trio.open_tcp_stream(HOST, b.listen_port)
            await garbage.send_all(b"GET / HTTP/1.0\r\n\r\n")
            assert await read_until_eof(garbage) == b""
            assert await read_until_eof(silent) == b""  # closed after the handshake timeout
            await stream.send_all(conn.send(state(2)))
            await until(lambda: got == [state(1), state(2)])
            assert b.counters["in_rejected"] == 2
            assert b.stats()["db"]["connects_in"] == 1
            for s in (stream, silent, garbage):
                await s.aclose()
            nursery.cancel_scope.cancel()


# ---- reconnection ---------------------------------------------------------------------------

async def test_peer_restart_redials_and_starts_a_new_session():
    a_sessions, b_got = [], []

    async def a_session(chan):
        a_sessions.append(chan)
        await chan.send(state(len(a_sessions)))
        while True:
            await chan.receive()

    async def b_session(chan):
        while True:
            b_got.append(await chan.receive())

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            ra = EventLogRecorder()
            a = endpoint("alpha", ra, sessions_out={Channel.DB: a_session})
            await nursery.start(serve, a)
            rb = EventLogRecorder()
            b = endpoint("beta", rb, sessions_in={Channel.DB: b_session})
            b_scope = await nursery.start(serve, b)
            port = b.listen_port
            a.peer = Address(HOST, port)
            await until(lambda: b_got == [state(1)])
            await ra.wait_for("repl_up")

            b_scope.cancel()  # beta stops: listener and connections closed
            down = await ra.wait_for("repl_down")
            assert "beta" in down[0]["message"]
            assert not a.stats()["db"]["out_connected"]

            b2 = endpoint("beta", EventLogRecorder(), listen_port=port,
                          sessions_in={Channel.DB: b_session})
            await nursery.start(serve, b2)
            await until(lambda: b_got == [state(1), state(2)])
            assert len(a_sessions) == 2 and a_sessions[0] is not a_sessions[1]
            assert a_sessions[0].closed
            await ra.wait_for("repl_up", 2)
            assert a.stats()["db"]["reconnects"] == 1
            assert a.stats()["db"]["out_connected"]
            nursery.cancel_scope.cancel()


async def test_second_inbound_connection_replaces_the_first_once_it_is_authentic():
    sessions = []

    async def session(chan):
        rec = SimpleNamespace(chan=chan, got=[], ended=trio.Event(), how=None)
        sessions.append(rec)
        try:
            while True:
                rec.got.append(await chan.receive())
        except ChannelClosed as e:
            rec.how = str(e)
            raise
        finally:
            rec.ended.set()

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            rb = EventLogRecorder()
            b = endpoint("beta", rb, sessions_in={Channel.DB: session}, handshake_timeout=0.3)
            await nursery.start(serve, b)
            s1, c1 = await fake_dial(b.listen_port)
            await s1.send_all(c1.send(state(1)))
            await until(lambda: sessions and sessions[0].got == [state(1)])

            s2, c2 = await fake_dial(b.listen_port)  # HELLO alone (could be a replay)
            await trio.testing.wait_all_tasks_blocked(0.02)
            assert len(sessions) == 1 and not sessions[0].ended.is_set()

            await s2.send_all(c2.send(state(2)))  # authentic: the newest wins
            await until(lambda: len(sessions) == 2 and sessions[1].got == [state(2)])
            assert sessions[0].ended.is_set()
            assert sessions[0].how is None or "replaced" in sessions[0].how
            assert await read_until_eof(s1) == b""
            await s1.aclose()

            s3, c3 = await fake_dial(b.listen_port)  # never proves itself: refused in time
            assert await read_until_eof(s3) == b""
            assert not sessions[1].ended.is_set() and len(sessions) == 2
            await s2.send_all(c2.send(state(3)))
            await until(lambda: sessions[1].got == [state(2), state(3)])
            assert "no authentic message" in rb.named("repl_reject")[0]["message"]
            st = b.stats()["db"]
            assert st["connects_in"] == 3 and st["in_connected"]
            for s in (s2, s3):
                await s.aclose()
            nursery.cancel_scope.cancel()


async def test_peer_closing_ends_a_session_that_is_not_reading():
    started, ended = trio.Event(), trio.Event()

    async def session(chan):
        started.set()
        try:
            await trio.sleep_forever()  # e.g. waiting for local changes
        finally:
            ended.set()

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            rb = EventLogRecorder()
            b = endpoint("beta", rb, sessions_in={Channel.DB: session})
            await nursery.start(serve, b)
            stream, conn = await fake_dial(b.listen_port)
            await started.wait()
            await stream.aclose()
            await ended.wait()
            await rb.wait_for("repl_in_down")
            assert "peer closed" in rb.named("repl_in_down")[0]["message"]
            assert not b.stats()["db"]["in_connected"]
            nursery.cancel_scope.cancel()


# ---- session bugs ---------------------------------------------------------------------------

async def test_a_session_bug_is_logged_and_the_channel_redialed():
    calls, b_got = [], []

    async def a_session(chan):
        calls.append(chan)
        await chan.send(state(len(calls)))
        if len(calls) == 1:
            raise RuntimeError("session bug")
        await trio.sleep_forever()

    async def b_session(chan):
        while True:
            b_got.append(await chan.receive())

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            a, b, ra, rb = await start_pair(nursery, dict(sessions_out={Channel.DB: a_session}),
                                            dict(sessions_in={Channel.DB: b_session}))
            await until(lambda: b_got == [state(1), state(2)])
            errors = ra.named("repl_session_error")
            assert len(errors) == 1 and errors[0]["level"] == "error"
            assert "RuntimeError: session bug" in errors[0]["message"]
            assert "raise RuntimeError" in errors[0]["fields"]["traceback"]
            assert a.counters["session_errors"] == 1
            assert "session bug" in (ra.named("repl_down")[0]["message"])
            assert a.stats()["db"]["out_connected"] and a.stats()["db"]["reconnects"] == 1
            nursery.cancel_scope.cancel()


async def test_an_inbound_session_bug_inside_a_nursery_is_logged_and_the_peer_redials():
    calls, a_calls = [], []

    async def b_session(chan):
        calls.append(chan)
        first = await chan.receive()
        if len(calls) == 1:
            async with trio.open_nursery() as inner:  # the bug comes as an ExceptionGroup
                inner.start_soon(trio.sleep_forever)
                raise KeyError(f"bad {first.head_seq}")
        await trio.sleep_forever()

    async def a_session(chan):
        a_calls.append(chan)
        await chan.send(state(len(a_calls)))
        while True:
            await chan.receive()

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            a, b, ra, rb = await start_pair(nursery, dict(sessions_out={Channel.DB: a_session}),
                                            dict(sessions_in={Channel.DB: b_session}))
            await until(lambda: len(calls) == 2)
            errors = rb.named("repl_session_error")
            assert len(errors) == 1 and "bad 1" in errors[0]["fields"]["traceback"]
            assert b.counters["session_errors"] == 1
            assert len(a_calls) == 2 and not ra.named("repl_session_error")
            nursery.cancel_scope.cancel()


async def test_a_disconnect_inside_a_session_nursery_is_not_a_bug():
    calls = []

    async def a_session(chan):
        calls.append(chan)
        async with trio.open_nursery() as inner:
            inner.start_soon(trio.sleep_forever)
            while True:
                await chan.receive()  # raises ChannelClosed when beta goes away

    async def b_session(chan):
        await chan.aclose()

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            a, b, ra, rb = await start_pair(nursery, dict(sessions_out={Channel.DB: a_session}),
                                            dict(sessions_in={Channel.DB: b_session}))
            await until(lambda: len(calls) >= 2)
            await ra.wait_for("repl_down", 2)
            assert not ra.named("repl_session_error") and not rb.named("repl_session_error")
            nursery.cancel_scope.cancel()


# ---- backpressure ---------------------------------------------------------------------------

def _kernel_buffers() -> int:
    total = 0
    for name in ("tcp_wmem", "tcp_rmem"):
        try:
            total += int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
        except (OSError, ValueError, IndexError):
            total += 32 * 1024 * 1024
    return total


async def test_a_session_that_stops_reading_stalls_the_sender_with_bounded_memory():
    mf = 64 * 1024
    size = max_data(mf)
    count = (_kernel_buffers() + 8 * mf) // size + 1  # more than the kernel can buffer
    sent = [0]
    release = trio.Event()
    inbound: list[ReplChannel] = []
    finished = trio.Event()
    offsets = []

    async def sender(chan):
        for i in range(count):
            await chan.send(FileChunk(1, i * size, b"x" * size))
            sent[0] += 1
        await trio.sleep_forever()

    async def receiver(chan):
        inbound.append(chan)
        await release.wait()
        for _ in range(count):
            m = await chan.receive()
            offsets.append(m.offset)
        finished.set()
        await trio.sleep_forever()

    with trio.fail_after(GUARD * 3):
        async with trio.open_nursery() as nursery:
            a, b, ra, rb = await start_pair(
                nursery, dict(sessions_out={Channel.FILES: sender}, max_frame=mf),
                dict(sessions_in={Channel.FILES: receiver}, max_frame=mf))
            await until(lambda: inbound and sent[0] > 4)
            await trio.testing.wait_all_tasks_blocked(0.05)
            chan = inbound[0]
            assert sent[0] < count  # the sender is stalled
            assert len(chan._inbox) <= INBOX_ITEMS and chan._inbox.bytes <= 2 * mf
            assert chan._inbox.bytes > mf  # full: the reader waits for the session
            assert chan._conn.buffered <= mf
            release.set()
            await finished.wait()
            assert offsets == [i * size for i in range(count)]
            assert sent[0] == count
            assert b.stats()["files"]["counters"]["frames_in"] == count
            nursery.cancel_scope.cancel()


# ---- construction ---------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(keys=b""), dict(node="beta"), dict(max_frame=1000), dict(reconnect_min=0),
    dict(reconnect_min=3.0), dict(handshake_timeout=0), dict(sessions_out={1: print}),
    dict(sessions_in={Channel.DB: None}), dict(node="x" * 40),
])
def test_endpoint_validates_arguments(kw):
    base = dict(node="alpha", role=Role.PRIMARY, peer_name="beta", keys=PSK,
                listen=Address(HOST, 0), peer=Address(HOST, 1), events=None,
                sessions_out={}, sessions_in={})
    base.update(kw)
    with pytest.raises(ValueError):
        ReplEndpoint(**base)


def test_listen_port_before_run():
    ep = endpoint("alpha", None)
    with pytest.raises(RuntimeError):
        _ = ep.listen_port
