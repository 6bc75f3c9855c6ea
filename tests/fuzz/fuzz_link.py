"""Node-link frames (failover.core.wire.LinkConnection).

The first byte picks a mode:

* 0 (raw): the bytes, cut into reads, go to a fresh acceptor (or dialer) as they come off the
  socket: HELLO parsing, header checks, frames before the handshake.
* 1 (sealed): a handshake is made, then the input is a list of frames (type, body, seq) that
  the harness seals with the session key of docs/design.md, so that the body parsers behind
  the MAC are reached.
* 2 (hello): the dialer's view: the acceptor's HELLO built from fuzzed fields and signed with
  the PSK, then raw bytes.

Invariants: only ``RemoteLinkError`` escapes ``next_event`` (and nothing escapes
``receive_data``); the incomplete frame held stays under ``max_frame``; after an error the
connection keeps raising it; every frame is either counted ok or dropped with a known reason;
what the acceptor accepts (Status, Command) is sent again by a dialer and read back equal.

The connections are made with key rings (the acceptor accepts a current and a previous key;
the HELLO names its key by id, or has no id in the form before key ids): the helpers
``make_conn``, ``hello_frame`` and ``session_key`` are the only places that know the handshake.
"""
from __future__ import annotations

import copy
import struct

from failover.core.fields import NODE_FIELD, hmac_sha256, key_id
from failover.core.state import Role
from failover.core.wire import (
    DIRECTION,
    DROP_REASONS,
    HEADER,
    MAX_FRAME,
    NONCE_SIZE,
    Closed,
    Command,
    Dropped,
    FrameType,
    Hello,
    LinkConnection,
    NeedData,
    RemoteLinkError,
    Status,
)
from tests.fuzz.common import Input, check, chunks

PSK = bytes(range(1, 33))
PSK_OLD = bytes(range(101, 133))  # the acceptor's previous key
NONCE_D, NONCE_A = b"\x11" * NONCE_SIZE, b"\x22" * NONCE_SIZE
DIALER, ACCEPTOR = "ums-a", "ums-b"
HELLO_LABEL = b"vmha-hello-1"  # docs/design.md, "Node link"
SESSION_LABEL = b"vmha-session-1"


def make_conn(*, dialer: bool, nonce: bytes | None = None, max_frame: int = MAX_FRAME
              ) -> LinkConnection:
    if dialer:
        return LinkConnection(keys=(PSK,), node=DIALER, role=Role.PRIMARY, dialer=True,
                              nonce=nonce or NONCE_D, max_frame=max_frame)
    return LinkConnection(keys=(PSK, PSK_OLD), node=ACCEPTOR, role=Role.SECONDARY, dialer=False,
                          nonce=nonce or NONCE_A, max_frame=max_frame)


def hello_frame(node: bytes, role: int, nonce: bytes, psk: bytes = PSK, *, legacy: bool = False
                ) -> bytes:
    """A HELLO with any node bytes / role byte, signed as docs/design.md says (``legacy``: the
    form without a key id)."""
    body = bytes([len(node)]) + node + bytes([role]) + nonce + (b"" if legacy else key_id(psk))
    signed = HEADER.build(dict(type=FrameType.HELLO, length=len(body) + 32)) + body
    return signed + hmac_sha256(psk, HELLO_LABEL, signed)


def session_key(nonce_d: bytes = NONCE_D, nonce_a: bytes = NONCE_A) -> bytes:
    seed = nonce_d + nonce_a + NODE_FIELD.build(DIALER) + NODE_FIELD.build(ACCEPTOR)
    return hmac_sha256(PSK, SESSION_LABEL, seed)


def seal(key: bytes, ftype: int, seq: int, body: bytes) -> bytes:
    signed = struct.pack("<2sBBHQ", b"VM", 1, ftype, 8 + len(body) + 32, seq) + body
    return signed + hmac_sha256(key, DIRECTION, signed)


def established_pair() -> tuple[LinkConnection, LinkConnection]:
    d, a = make_conn(dialer=True), make_conn(dialer=False)
    a.receive_data(d.hello())
    check(isinstance(a.next_event(), Hello), "acceptor did not take the dialer's HELLO")
    d.receive_data(a.hello())
    check(isinstance(d.next_event(), Hello), "dialer did not take the acceptor's HELLO")
    return d, a


_PAIR: list[tuple[LinkConnection, LinkConnection]] = []


def fresh_pair() -> tuple[LinkConnection, LinkConnection]:
    """A copy of an established pair (the handshake costs more than most inputs)."""
    if not _PAIR:
        _PAIR.append(established_pair())
    return copy.deepcopy(_PAIR[0])


def held(conn: LinkConnection) -> int:
    """Bytes of the incomplete frame the connection holds."""
    return conn.buffered if hasattr(conn, "buffered") else len(conn._buf)


def drain(conn: LinkConnection, max_frame: int) -> tuple[list, RemoteLinkError | None]:
    events = []
    while True:
        try:
            ev = conn.next_event()
        except RemoteLinkError as e:
            try:
                conn.next_event()
            except RemoteLinkError:
                return events, e
            raise AssertionError("a RemoteLinkError was not raised again") from None
        check(held(conn) < max_frame, f"{held(conn)} bytes held, max_frame {max_frame}")
        if isinstance(ev, (NeedData, Closed)):
            return events, None
        events.append(ev)


def feed(conn: LinkConnection, stream: bytes, pattern: int, max_frame: int, eof: bool) -> list:
    events = []
    for piece in chunks(stream, pattern):
        conn.receive_data(piece)
        got, err = drain(conn, max_frame)
        events += got
        if err is not None:
            return events
    if eof:
        conn.receive_data(b"")
        events += drain(conn, max_frame)[0]
    return events


def check_counters(conn: LinkConnection, events: list) -> None:
    counted = conn.counters["frames_ok"] + sum(conn.counters[f"dropped_{r}"] for r in DROP_REASONS)
    check(counted == len(events), f"{counted} frames counted, {len(events)} events")
    for ev in events:
        check(not isinstance(ev, Dropped) or ev.reason in DROP_REASONS, f"drop reason {ev}")


def round_trip(events: list) -> None:
    """Every Status/Command the acceptor took, sent by our dialer, reads back equal."""
    msgs = [ev for ev in events if isinstance(ev, (Status, Command))]
    if not msgs:
        return
    d, a = fresh_pair()
    for msg in msgs:
        a.receive_data(d.send(msg))
        back = a.next_event()
        check(back == msg, f"round trip changed {msg!r} into {back!r}")


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    mode, pattern = inp.u8() % 3, inp.u8()
    max_frame = MAX_FRAME if inp.flag() else 65535 + HEADER.sizeof()
    if mode == 0:
        dialer = inp.flag()
        conn = make_conn(dialer=dialer, max_frame=max_frame)
        if dialer and inp.flag():
            conn.hello()
        events = feed(conn, inp.rest(), pattern, max_frame, eof=True)
        check_counters(conn, events)
        return
    if mode == 1:
        _, a = fresh_pair()
        key, seq, stream, eof = session_key(), 0, b"", inp.flag()
        while inp.left:
            ftype = inp.u8() % 5
            how = inp.u8()
            seq = (seq + 1 if how < 200 else seq + how - 210) % 2**64
            body = inp.sized()
            frame = seal(key, ftype, seq, body)
            if how == 255 and frame:
                frame = frame[:-1] + bytes([frame[-1] ^ 1])  # a bad MAC
            stream += frame
        events = feed(a, stream, pattern, max_frame, eof=eof)
        check_counters(a, [Hello(DIALER, Role.PRIMARY, NONCE_D), *events])
        round_trip(events)
        return
    d = make_conn(dialer=True, max_frame=max_frame)
    d.hello()
    node = inp.sized(40)
    role, legacy = inp.u8(), inp.flag()
    psk = (PSK, PSK_OLD)[inp.u8() & 1]
    frame = hello_frame(node, role, inp.take(NONCE_SIZE).ljust(NONCE_SIZE, b"\0"), psk,
                        legacy=legacy)
    events = feed(d, frame + inp.rest(), pattern, max_frame, eof=inp.flag())
    if events and isinstance(events[0], Hello):
        h = events[0]
        check(h.node != DIALER and h.role != Role.PRIMARY and h.nonce != NONCE_D,
              f"reflected HELLO accepted: {h}")
        check(d.established, "HELLO accepted but not established")


def seeds() -> list[bytes]:
    """Real frames from our own encoder, in each mode's input format."""
    from failover.core.state import Mode, ServiceHealth, State
    from failover.core.wire import CommandKind

    status = Status(node=DIALER, role=Role.PRIMARY, state=State.ACTIVE, term=7,
                    service=ServiceHealth.RUNNING, mode=Mode.AUTOMATIC, eligible=True,
                    licensed=True, hold=False, shutting_down=False, calls=3, ports=24,
                    repl_pos=1234, ping_interval_ms=1000, uptime_ms=99_000, settings=0xABCDEF)
    command = Command(CommandKind.TAKE_OVER, 8, "operator move")
    d, a = established_pair()
    frames = [d.send(status), d.send(command), d.send(Command(CommandKind.YIELD, 9, "é" * 60))]
    bodies = [(f[3], f[HEADER.sizeof() + 8:-32]) for f in frames]  # type byte, body after seq
    sealed = bytes([1, 0, 1, 0])
    for ftype, body in bodies:
        sealed += bytes([ftype, 0, len(body)]) + body
    d2 = make_conn(dialer=True)
    raw_acceptor = bytes([0, 0, 1, 0]) + d2.hello()
    hello = bytes([2, 0, 1, len(ACCEPTOR)]) + ACCEPTOR.encode() + bytes([Role.SECONDARY, 0, 0])
    hello += NONCE_A
    return [sealed, raw_acceptor, hello, bytes([1, 1, 0, 1]) + bytes([3, 0, len(bodies[1][1])])
            + bodies[1][1]]
