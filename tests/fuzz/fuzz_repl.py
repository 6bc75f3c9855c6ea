"""Replication frames (failover.core.replwire.ReplConnection, bodies of failover.core.replmsg).

The first byte picks a mode:

* 0 (raw): the bytes, cut into reads, go to a fresh acceptor or dialer: header checks, HELLO
  parsing, frames before the handshake, EOF inside a frame.
* 1 (sealed): a handshake on a channel (DB or FILES) is made, then the input is a list of
  frames (type, body, seq) sealed with the receiving direction's session key
  (docs/replication.md), received by the acceptor or by the dialer: every body layout.
* 2 (hello): an acceptor given a HELLO built from fuzzed fields, signed with one of its keys,
  another key, or in the form before key ids.

Invariants: only ``RemoteReplError`` escapes ``next_event`` (nothing escapes
``receive_data``) and it is raised again on the next call; ``buffered`` never exceeds
``max_frame``; every frame is counted ok or dropped with a known reason; every message
accepted is of the channel and direction it may come in; sent again by our encoder it reads
back equal.  The handshake is in ``make_conn``, ``hello_frame`` and ``keys_for``.
"""
from __future__ import annotations

import copy
import struct

from failover.core.fields import NODE_FIELD, hmac_sha256, key_id
from failover.core.replwire import (
    CHANNEL_OF,
    DROP_REASONS,
    FROM_ACCEPTOR,
    FROM_DIALER,
    HEADER,
    HELLO_LABEL,
    MIN_MAX_FRAME,
    NONCE_SIZE,
    Channel,
    Closed,
    Dropped,
    Hello,
    MsgType,
    NeedData,
    RemoteReplError,
    ReplConnection,
    session_key,
)
from failover.core.state import Role
from tests.fuzz.common import Input, check, chunks

PSK = bytes(range(1, 33))
PSK_OLD = bytes(range(101, 133))
NONCE_D, NONCE_A = b"\x11" * NONCE_SIZE, b"\x22" * NONCE_SIZE
DIALER, ACCEPTOR = "ums-a", "ums-b"
MAX_FRAME = MIN_MAX_FRAME


def make_conn(*, dialer: bool, channel: Channel | None) -> ReplConnection:
    if dialer:
        return ReplConnection(keys=(PSK,), node=DIALER, role=Role.PRIMARY, channel=channel,
                              dialer=True, nonce=NONCE_D, max_frame=MAX_FRAME)
    return ReplConnection(keys=(PSK, PSK_OLD), node=ACCEPTOR, role=Role.SECONDARY,
                          channel=channel, dialer=False, nonce=NONCE_A, max_frame=MAX_FRAME)


def hello_frame(node: bytes, role: int, channel: int, nonce: bytes, psk: bytes, *,
                legacy: bool) -> bytes:
    body = bytes([len(node)]) + node + bytes([role, channel]) + nonce
    body += b"" if legacy else key_id(psk)
    signed = HEADER.build(dict(type=MsgType.HELLO, length=len(body) + 32)) + body
    return signed + hmac_sha256(psk, HELLO_LABEL, signed)


def keys_for(channel: Channel) -> tuple[bytes, bytes]:
    """(key_d2a, key_a2d) of the pair ``established`` makes."""
    args = (NONCE_D, NONCE_A, DIALER, ACCEPTOR, channel)
    return session_key(PSK, b"d2a", *args), session_key(PSK, b"a2d", *args)


def established(channel: Channel) -> tuple[ReplConnection, ReplConnection]:
    d, a = make_conn(dialer=True, channel=channel), make_conn(dialer=False, channel=None)
    a.receive_data(d.hello())
    check(isinstance(a.next_event(), Hello), "acceptor did not take the dialer's HELLO")
    d.receive_data(a.hello())
    check(isinstance(d.next_event(), Hello), "dialer did not take the acceptor's HELLO")
    return d, a


_PAIRS: dict[Channel, tuple[ReplConnection, ReplConnection]] = {}


def fresh_pair(channel: Channel) -> tuple[ReplConnection, ReplConnection]:
    """A copy of an established pair (the handshake costs more than most inputs)."""
    if channel not in _PAIRS:
        _PAIRS[channel] = established(channel)
    return copy.deepcopy(_PAIRS[channel])


def seal(key: bytes, ftype: int, seq: int, body: bytes) -> bytes:
    signed = struct.pack("<2sBBIQ", b"VR", 1, ftype, 8 + len(body) + 32, seq) + body
    return signed + hmac_sha256(key, signed)


def drain(conn: ReplConnection) -> tuple[list, bool]:
    events = []
    while True:
        try:
            ev = conn.next_event()
        except RemoteReplError:
            try:
                conn.next_event()
            except RemoteReplError:
                return events, True
            raise AssertionError("a RemoteReplError was not raised again") from None
        check(conn.buffered <= conn.max_frame, f"{conn.buffered} bytes held")
        if isinstance(ev, (NeedData, Closed)):
            return events, False
        events.append(ev)


def feed(conn: ReplConnection, stream: bytes, pattern: int, eof: bool) -> list:
    events = []
    for piece in chunks(stream, pattern):
        conn.receive_data(piece)
        check(conn.buffered <= conn.max_frame, f"{conn.buffered} bytes held")
        got, failed = drain(conn)
        events += got
        if failed:
            return events
    if eof:
        conn.receive_data(b"")
        events += drain(conn)[0]
    return events


def check_events(conn: ReplConnection, events: list, handshake: int) -> None:
    counted = conn.counters["frames_ok"] + sum(conn.counters[f"dropped_{r}"] for r in DROP_REASONS)
    check(counted == len(events) + handshake, f"{counted} frames counted, {len(events)} events")
    allowed = FROM_ACCEPTOR if conn.dialer else FROM_DIALER
    for ev in events:
        if isinstance(ev, Dropped):
            check(ev.reason in DROP_REASONS, f"drop reason {ev}")
        elif not isinstance(ev, Hello):
            check(type(ev) in allowed, f"{type(ev).__name__} accepted against its direction")
            check(CHANNEL_OF[type(ev)] is conn.channel, f"{type(ev).__name__} on {conn.channel}")


def round_trip(channel: Channel, to_dialer: bool, events: list) -> None:
    msgs = [ev for ev in events if not isinstance(ev, (Dropped, Hello))]
    if not msgs:
        return
    d, a = fresh_pair(channel)
    sender, receiver = (a, d) if to_dialer else (d, a)
    for msg in msgs:
        receiver.receive_data(sender.send(msg))
        back = receiver.next_event()
        check(back == msg, f"round trip changed {msg!r} into {back!r}")


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    mode, pattern = inp.u8() % 3, inp.u8()
    if mode == 0:
        dialer = inp.flag()
        conn = make_conn(dialer=dialer, channel=Channel.DB if dialer else None)
        if dialer and inp.flag():
            conn.hello()
        events = feed(conn, inp.rest(), pattern, eof=True)
        check_events(conn, [ev for ev in events if not isinstance(ev, Hello)],
                     sum(isinstance(ev, Hello) for ev in events))
        return
    if mode == 1:
        channel = Channel.FILES if inp.flag() else Channel.DB
        to_dialer = inp.flag()
        d, a = fresh_pair(channel)
        key = keys_for(channel)[1 if to_dialer else 0]
        receiver = d if to_dialer else a
        seq, stream, eof = 0, b"", inp.flag()
        while inp.left:
            ftype = inp.u8() % 17
            how = inp.u8()
            seq = (seq + 1 if how < 200 else seq + how - 210) % 2**64
            frame = seal(key, ftype, seq, inp.sized(4000))
            if how == 255:
                frame = frame[:-1] + bytes([frame[-1] ^ 1])  # a bad MAC
            stream += frame
        events = feed(receiver, stream, pattern, eof=eof)
        check_events(receiver, events, 1)
        round_trip(channel, to_dialer, events)
        return
    a = make_conn(dialer=False, channel=(None, Channel.DB, Channel.FILES)[inp.u8() % 3])
    node, role, channel = inp.sized(40), inp.u8(), inp.u8()
    psk = (PSK, PSK_OLD, b"another key")[inp.u8() % 3]
    frame = hello_frame(node, role, channel, inp.take(NONCE_SIZE).ljust(NONCE_SIZE, b"\0"), psk,
                        legacy=inp.flag())
    events = feed(a, frame + inp.rest(), pattern, eof=inp.flag())
    if events and isinstance(events[0], Hello):
        h = events[0]
        check(psk != b"another key", "HELLO signed with a key we do not hold was accepted")
        check(h.node != ACCEPTOR and h.role != Role.SECONDARY and h.nonce != NONCE_A,
              f"reflected HELLO accepted: {h}")
        check(NODE_FIELD.build(h.node)[1:] == node, "HELLO node differs from the wire")
        reply = a.hello()
        check(reply[3] == MsgType.HELLO, "answer is not a HELLO")


def seeds() -> list[bytes]:
    """Real messages of both channels and directions from our encoder."""
    from failover.core.replwire import (
        DbChanges,
        DbEntry,
        DbSchema,
        DbSnapshotBegin,
        DbSnapshotChunk,
        DbSnapshotRequest,
        DbState,
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

    digest = bytes(range(32))
    per_side = {
        (Channel.DB, False): [DbSchema(3), DbState(5, 2, 1, 4, 1, 0xFEED, True),
                              DbChanges((DbEntry(2, 5, digest, b"SQLite changeset"),
                                         DbEntry(2, 6, digest, b""))),
                              DbSnapshotBegin(1, 5, 2, 4, 1, 99, 100, digest),
                              DbSnapshotChunk(1, 0, b"x" * 100)],
        (Channel.DB, True): [DbSchema(3), DbSnapshotRequest(4, "log pruned"),
                             DbState(4, 1, 1, 5, 2, 0xFEED, False)],
        (Channel.FILES, False): [FileManifestRequest(1),
                                 FileBegin(7, "greetings/1001/unavail.wav", 5, digest, 2, 9, True),
                                 FileChunk(7, 0, b"RIFF!"), FileEnd(7),
                                 FileDelete(8, "names/1002.wav", 2, 10)],
        (Channel.FILES, True): [FileManifest(1, True, (FileEntry("a/b.wav", 5, digest, 2, 9),)),
                                FileOffer(7, 0), FileAck(7, "a/b.wav", False, "disk full")],
    }
    out = []
    for (channel, to_dialer), msgs in per_side.items():
        d, a = established(channel)
        sender = a if to_dialer else d
        data = bytes([1, 0, channel == Channel.FILES, to_dialer, 0])
        for msg in msgs:
            frame = sender.send(msg)
            body = frame[HEADER.sizeof() + 8:-32]
            data += bytes([frame[3], 0]) + len(body).to_bytes(2, "little") + body
        out.append(data + b"\0")
    d = make_conn(dialer=True, channel=Channel.FILES)
    out.append(bytes([0, 0, 0]) + d.hello())
    out.append(bytes([2, 0, 0, len(DIALER)]) + DIALER.encode()
               + bytes([Role.PRIMARY, Channel.DB, 0]) + NONCE_D + b"\0")
    return out
