"""Tests of the sans-IO node link codec (failover/core/wire.py)."""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failover.core.state import Mode, Role, ServiceHealth, State
from failover.core.wire import (
    MAX_FRAME,
    NEED_DATA,
    Closed,
    Command,
    CommandKind,
    Dropped,
    FrameType,
    Hello,
    LinkConnection,
    LocalLinkError,
    RemoteLinkError,
    Status,
)

PSK = bytes(range(32))
N_D = bytes.fromhex("d0" * 16)
N_A = bytes.fromhex("a0" * 16)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make(dialer: bool, *, psk=PSK, node=None, role=None, nonce=None, expected_peer=None, **kw):
    return LinkConnection(
        keys=psk if isinstance(psk, tuple) else (psk,),
        node=node if node is not None else ("alpha" if dialer else "beta"),
        role=role if role is not None else (Role.PRIMARY if dialer else Role.SECONDARY),
        dialer=dialer, nonce=nonce or (N_D if dialer else N_A),
        expected_peer=expected_peer, **kw)


def pair(d_node="alpha", a_node="beta", n_d=N_D, n_a=N_A, psk=PSK):
    """Dialer and acceptor after a complete handshake."""
    d = make(True, node=d_node, nonce=n_d, psk=psk, expected_peer=a_node)
    a = make(False, node=a_node, nonce=n_a, psk=psk, expected_peer=d_node)
    a.receive_data(d.hello())
    assert a.next_event() == Hello(d_node, Role.PRIMARY, n_d)
    assert a.next_event() is NEED_DATA
    d.receive_data(a.hello())
    assert d.next_event() == Hello(a_node, Role.SECONDARY, n_a)
    assert d.established and a.established
    return d, a


def status(node="alpha", **kw) -> Status:
    fields = dict(node=node, role=Role.PRIMARY, state=State.ACTIVE, term=42,
                  service=ServiceHealth.RUNNING, mode=Mode.AUTOMATIC, eligible=True,
                  licensed=True, hold=False, shutting_down=True, calls=3, ports=24,
                  repl_pos=123456789, ping_interval_ms=1000, uptime_ms=86_400_000)
    fields.update(kw)
    return Status(**fields)


def drain(conn) -> list:
    """Events until NEED_DATA or Closed (included)."""
    events = []
    while True:
        ev = conn.next_event()
        events.append(ev)
        if ev is NEED_DATA or isinstance(ev, Closed):
            return events


# Reference implementation of the design page, written independently of the module.
def spec_key(psk, n_d, n_a, d_node, a_node):
    enc = lambda s: bytes([len(s)]) + s.encode("ascii")  # noqa: E731
    return hmac.new(psk, b"vmha-session-1" + n_d + n_a + enc(d_node) + enc(a_node),
                    hashlib.sha256).digest()


def seal(key, ftype, seq, body):
    signed = b"VM" + bytes([1, ftype]) + struct.pack("<H", 8 + len(body) + 32)
    signed += struct.pack("<Q", seq) + body
    return signed + hmac.new(key, b"d2a" + signed, hashlib.sha256).digest()


KEY = spec_key(PSK, N_D, N_A, "alpha", "beta")


# ---- handshake and roundtrip ----------------------------------------------------------------

def test_handshake_then_status_and_command_roundtrip():
    d, a = pair()
    assert d.peer == "beta" and a.peer == "alpha"
    s = status()
    a.receive_data(d.send(s))
    assert drain(a) == [s, NEED_DATA]
    c = Command(CommandKind.STEP_DOWN, 43, "operator asked: maintenance ⚙")
    a.receive_data(d.send(c))
    assert drain(a) == [c, NEED_DATA]
    assert a.counters["frames_ok"] == 3  # hello + 2
    assert all(v == 0 for k, v in a.counters.items() if k.startswith("dropped_"))


def test_event_types_are_the_enums():
    d, a = pair()
    a.receive_data(d.send(status()) + d.send(Command(CommandKind.TAKE_OVER, 7, "")))
    s, c, _ = drain(a)
    assert type(s.role) is Role and type(s.state) is State
    assert type(s.service) is ServiceHealth and type(s.mode) is Mode
    assert type(c.kind) is CommandKind


def test_not_established_before_handshake():
    d, a = make(True), make(False)
    assert not d.established and not a.established and d.peer is None
    a.receive_data(d.hello())
    a.next_event()
    assert not a.established  # not until it has answered
    a.hello()
    assert a.established and not d.established


# ---- golden bytes ---------------------------------------------------------------------------

NODE32 = "primary-node-0123456789abcdefghi"
GOLDEN_STATUS = (
    "564d01027700"                                    # magic, version 1, type 2, length 119
    "0100000000000000"                                # seq 1
    "20" + NODE32.encode().hex() +                    # node
    "00" "03" "2a00000000000000" "02" "00" "0b"       # role, state, term 42, service, mode, flags
    "0300" "1800" "15cd5b0700000000"                  # calls 3, ports 24, repl_pos 123456789
    "e8030000" "005c260500000000"                     # ping 1000 ms, uptime 86400000 ms
    "0807060504030201"                                # settings digest
    "64"                                              # health 100
)


def test_golden_status_frame():
    d, a = pair(d_node=NODE32)
    frame = d.send(status(node=NODE32, settings=0x0102030405060708))
    assert frame[:2] == b"VM" and frame[2] == 1 and frame[3] == FrameType.STATUS
    assert struct.unpack("<H", frame[4:6])[0] == len(frame) - 6
    assert frame[6:14] == (1).to_bytes(8, "little")
    assert frame[:-32].hex() == GOLDEN_STATUS
    key = spec_key(PSK, N_D, N_A, NODE32, "beta")
    assert frame[-32:] == hmac.new(key, b"d2a" + frame[:-32], hashlib.sha256).digest()
    assert len(frame) == 125 <= 200  # the guide's packet was 785 bytes
    assert d.send(status(node=NODE32))[6:14] == (2).to_bytes(8, "little")


def spec_key_id(psk):
    return hmac.new(psk, b"vmha-key-id-1", hashlib.sha256).digest()[:8]


def test_golden_hello_frame():
    frame = make(True).hello()
    signed = (b"VM\x01\x01" + struct.pack("<H", 1 + 5 + 1 + 16 + 8 + 32) + b"\x05alpha\x00" + N_D
              + spec_key_id(PSK))
    assert frame[:-32] == signed
    assert frame[-32:] == hmac.new(PSK, b"vmha-hello-1" + signed, hashlib.sha256).digest()


def test_command_frame_layout_and_sizes():
    d, _ = pair()
    frame = d.send(Command(CommandKind.TAKE_OVER, 9, "é" * 60))  # 120 bytes of utf-8
    assert frame[3] == FrameType.COMMAND
    assert frame[14:24] == b"\x02" + (9).to_bytes(8, "little") + b"\x78"
    assert len(frame) == 6 + 8 + 1 + 8 + 1 + 120 + 32 <= MAX_FRAME


# ---- framing: whole, byte by byte, concatenated -----------------------------------------

def frames_and_events():
    d = make(True, expected_peer="beta")
    a = make(False, expected_peer="alpha")
    hello_d = d.hello()
    a.receive_data(hello_d)
    a.next_event()
    hello_a = a.hello()
    d.receive_data(hello_a)
    d.next_event()
    s, c = status(), Command(CommandKind.STEP_DOWN, 5, "peer asked")
    return {"hello_d": hello_d, "hello_a": hello_a, "status1": d.send(s),
            "command2": d.send(c), "status3": d.send(s)}, (s, c)


def fresh_receivers():
    """Acceptor ready for STATUS/COMMAND seq 1 and a dialer waiting for the acceptor's HELLO."""
    a = make(False, expected_peer="alpha")
    a.receive_data(make(True).hello())
    a.next_event()
    a.hello()
    d = make(True, expected_peer="beta")
    d.hello()
    return d, a


@pytest.mark.parametrize("mode", ["whole", "bytewise", "concatenated"])
def test_feeding_modes(mode):
    frames, (s, c) = frames_and_events()
    d, a = fresh_receivers()
    stream = frames["status1"] + frames["command2"] + frames["status3"]
    if mode == "whole":
        chunks = [frames["status1"], frames["command2"], frames["status3"]]
    elif mode == "bytewise":
        chunks = [stream[i:i + 1] for i in range(len(stream))]
    else:
        chunks = [stream]
    events = []
    for chunk in chunks:
        a.receive_data(chunk)
        events += [e for e in drain(a) if e is not NEED_DATA]
    assert events == [s, c, s]
    hello = frames["hello_a"]
    for i in range(len(hello) - 1):
        d.receive_data(hello[i:i + 1])
        assert d.next_event() is NEED_DATA
    d.receive_data(hello[-1:])
    assert d.next_event() == Hello("beta", Role.SECONDARY, N_A)


def test_hello_and_frames_in_one_chunk_bytewise_then_eof():
    frames, (s, c) = frames_and_events()
    a = make(False)
    a.receive_data(frames["hello_d"])
    a.receive_data(frames["status1"][:10])
    assert a.next_event() == Hello("alpha", Role.PRIMARY, N_D)
    a.hello()
    assert a.next_event() is NEED_DATA
    a.receive_data(frames["status1"][10:] + frames["command2"])
    a.receive_data(b"")
    assert drain(a) == [s, c, Closed()]
    assert a.next_event() == Closed()
    with pytest.raises(LocalLinkError):
        a.receive_data(b"more")


# ---- forged, replayed, misplaced frames ------------------------------------------------------

def test_any_bit_flip_in_seq_body_or_mac_is_dropped_and_link_continues():
    d, a = pair()
    s = status()
    drops, size = 0, len(pair()[0].send(s))
    for bit in range(6 * 8, size * 8):
        frame = d.send(s)
        forged = bytearray(frame)
        forged[bit // 8] ^= 1 << (bit % 8)
        a.receive_data(bytes(forged))
        assert a.next_event() == Dropped("mac", len(frame))
        drops += 1
        a.receive_data(frame)
        assert a.next_event() == s
    assert a.counters["dropped_mac"] == drops > 600
    assert a.counters["dropped_seq"] == 0


def test_type_byte_flip_is_dropped_as_mac():
    d, a = pair()
    frame = bytearray(d.send(status()))
    frame[3] = FrameType.COMMAND
    a.receive_data(bytes(frame))
    assert a.next_event() == Dropped("mac", len(frame))


def test_replayed_frame_is_dropped_seq():
    d, a = pair()
    frame = d.send(status())
    a.receive_data(frame + frame)
    assert drain(a) == [status(), Dropped("seq", len(frame)), NEED_DATA]
    assert a.counters["dropped_seq"] == 1
    a.receive_data(d.send(status(term=44)))
    assert a.next_event() == status(term=44)


def test_skipped_seq_is_dropped_without_advancing():
    d, a = pair()
    f1, f2 = d.send(status(term=1)), d.send(status(term=2))
    a.receive_data(f2 + f1 + f2)
    assert drain(a) == [Dropped("seq", len(f2)), status(term=1), status(term=2), NEED_DATA]


def test_frame_replayed_into_new_connection_fails_mac():
    d, a = pair()
    frame = d.send(status())
    _, a2 = pair(n_d=b"\x01" * 16, n_a=b"\x02" * 16)
    a2.receive_data(frame)
    assert a2.next_event() == Dropped("mac", len(frame))
    _, a3 = pair()  # same nonces: same key, so the nonces are what protects
    a3.receive_data(frame)
    assert a3.next_event() == status()


def test_dialer_drops_status_and_command():
    d, a = pair()
    d2, _ = pair()
    frame = d2.send(status())
    d.receive_data(frame)
    assert d.next_event() == Dropped("direction", len(frame))
    assert d.counters["dropped_direction"] == 1


@pytest.mark.parametrize("ftype,body,reason", [
    (9, b"", "type"),
    (0, b"x", "type"),
    (FrameType.STATUS, b"", "parse"),
    (FrameType.COMMAND, b"\x01" + bytes(8) + b"\x02ok" + b"!", "parse"),  # trailing byte
    (FrameType.COMMAND, b"\x09" + bytes(8) + b"\x00", "parse"),           # unknown kind
    (FrameType.COMMAND, b"\x01" + bytes(8) + b"\x02\xff\xfe", "parse"),   # not utf-8
    (FrameType.COMMAND, b"\x01" + bytes(8) + b"\x79" + b"r" * 121, "parse"),  # reason > 120
])
def test_authentic_but_unusable_frames_are_dropped_and_consume_seq(ftype, body, reason):
    d, a = pair()
    bad = seal(KEY, ftype, 1, body)
    a.receive_data(bad)
    assert a.next_event() == Dropped(reason, len(bad))
    assert a.counters[f"dropped_{reason}"] == 1
    d.send(status())  # seq 1 was used up by the hand-made frame
    a.receive_data(d.send(status()))
    assert a.next_event() == status()


def test_status_bodies_of_the_versions_before_and_of_later_versions_are_read():
    """Without ``settings`` (two versions before): settings 0, health 100.  Without ``health``
    (the previous version): health 100.  With bytes after it (fields a later version
    appends): they are ignored."""
    d, a = pair()
    good = d.send(status(settings=77, health=30))[14:-32]
    for seq, (body, digest, health) in enumerate(
            [(good[:-9], 0, 100), (good[:-1], 77, 100), (good + b"new-field", 77, 30),
             (good, 77, 30)], start=1):
        a.receive_data(seal(KEY, FrameType.STATUS, seq, body))
        assert a.next_event() == status(settings=digest, health=health)


def test_status_body_checks():
    d, a = pair()
    good = d.send(status())[14:-32]
    variants = {
        "parse": [good[:6] + b"\x09" + good[7:],                 # unknown state
                  good[:16] + bytes([good[16] | 0x10]) + good[17:],  # reserved flag bit
                  good[:-2],                                     # settings cut short
                  good[:-9] + b"\x00",                           # 1 byte where 8 go
                  good[:-1] + b"\x65"],                          # health 101
        "node": [b"\x04beta" + good[6:]],                        # not the authenticated peer
    }
    seq = 1
    for reason, bodies in variants.items():
        for body in bodies:
            a.receive_data(seal(KEY, FrameType.STATUS, seq, body))
            assert a.next_event().reason == reason, body
            seq += 1
    a.receive_data(seal(KEY, FrameType.STATUS, seq, good))
    assert a.next_event() == status()


def test_frame_too_short_for_seq_and_mac_is_dropped():
    _, a = pair()
    frame = b"VM\x01\x02\x05\x00" + b"12345"
    a.receive_data(frame)
    assert a.next_event() == Dropped("parse", len(frame))


# ---- fatal errors ---------------------------------------------------------------------------

def test_wrong_psk_hello_is_fatal_both_ways():
    a = make(False)
    a.receive_data(make(True, psk=b"other key").hello())
    with pytest.raises(RemoteLinkError, match="do not accept"):
        a.next_event()
    with pytest.raises(RemoteLinkError):  # sticky
        a.next_event()
    d = make(True)
    d.hello()
    d.receive_data(acceptor_hello(psk=b"other key"))
    with pytest.raises(RemoteLinkError):
        d.next_event()


@pytest.mark.parametrize("dialer_kw", [
    dict(node="gamma"),                  # not the expected peer
    dict(role=Role.SECONDARY),           # both secondary
    dict(nonce=N_A),                     # our own nonce reflected
    dict(node="beta"),                   # our own name
])
def test_bad_hello_fields_are_fatal(dialer_kw):
    a = make(False, expected_peer="gamma" if dialer_kw.get("node") == "beta" else "alpha")
    a.receive_data(make(True, **dialer_kw).hello())
    with pytest.raises(RemoteLinkError):
        a.next_event()


def test_reflected_hello_is_fatal_for_dialer():
    d = make(True)
    hello = d.hello()
    d.receive_data(hello)
    with pytest.raises(RemoteLinkError):
        d.next_event()


def acceptor_hello(**kw) -> bytes:
    a = make(False, **kw)
    a.receive_data(make(True, psk=kw.get("psk", PSK)).hello())
    a.next_event()
    return a.hello()


def test_second_hello_is_fatal():
    d, a = pair()
    a.receive_data(make(True, nonce=b"\x07" * 16).hello())
    with pytest.raises(RemoteLinkError, match="second"):
        a.next_event()
    d.receive_data(acceptor_hello(nonce=b"\x07" * 16))  # valid MAC
    with pytest.raises(RemoteLinkError, match="second"):
        d.next_event()


def test_hello_to_dialer_before_its_own_is_fatal():
    d = make(True)
    d.receive_data(acceptor_hello())
    with pytest.raises(RemoteLinkError):
        d.next_event()


def test_frames_before_handshake_are_fatal():
    frames, _ = frames_and_events()
    a = make(False)
    a.receive_data(frames["status1"])
    with pytest.raises(RemoteLinkError, match="before"):
        a.next_event()
    a = make(False)  # hello received but not yet answered
    a.receive_data(frames["hello_d"] + frames["status1"])
    a.next_event()
    with pytest.raises(RemoteLinkError):
        a.next_event()
    d = make(True)
    d.hello()
    d.receive_data(frames["status1"])
    with pytest.raises(RemoteLinkError):
        d.next_event()


def test_malformed_hello_is_fatal():
    a = make(False)
    a.receive_data(b"VM\x01\x01\x03\x00abc")
    with pytest.raises(RemoteLinkError, match="malformed"):
        a.next_event()


@pytest.mark.parametrize("header", [
    b"XM\x01\x02\x10\x00",          # bad magic
    b"VM\x02\x02\x10\x00",          # bad version
    b"VM\x01\x02\xfb\x00",          # length 251 > 256 - 6
    b"VM\x01\x02\xff\xff",
])
def test_unusable_header_is_fatal_after_earlier_frames(header):
    d, a = pair()
    good = d.send(status())
    a.receive_data(good + header + b"\x00" * 5000)
    assert a._buf == bytearray()  # nothing kept after an unusable header
    assert a.next_event() == status()  # frames before the bad header still count
    with pytest.raises(RemoteLinkError):
        a.next_event()
    a.receive_data(b"ignored")
    with pytest.raises(RemoteLinkError):
        a.next_event()


def test_length_at_limit_is_accepted_and_buffer_is_bounded():
    _, a = pair()
    a.receive_data(b"VM\x01\x07\xfa\x00" + b"\x00" * 200)  # length 250: whole frame 256
    assert a.next_event() is NEED_DATA
    assert len(a._buf) < MAX_FRAME
    a.receive_data(b"\x00" * 50)
    assert a.next_event() == Dropped("mac", 256)
    assert a._buf == bytearray()


def test_smaller_max_frame_is_enforced():
    a = make(False, max_frame=200)
    a.receive_data(b"VM\x01\x02\xc3\x00")  # 195 + 6 = 201
    with pytest.raises(RemoteLinkError, match="limit"):
        a.next_event()


@pytest.mark.parametrize("cut", [1, 5, 6, 20])
def test_eof_mid_frame_is_fatal(cut):
    d, a = pair()
    a.receive_data(d.send(status())[:cut])
    assert a.next_event() is NEED_DATA
    a.receive_data(b"")
    with pytest.raises(RemoteLinkError, match="EOF"):
        a.next_event()


def test_clean_eof_is_closed_even_before_handshake():
    a = make(False)
    a.receive_data(b"")
    assert a.next_event() == Closed()


# ---- local misuse ---------------------------------------------------------------------------

def test_local_misuse():
    d, a = pair()
    with pytest.raises(LocalLinkError):
        a.send(status(node="beta"))
    with pytest.raises(LocalLinkError):
        make(True).send(status())  # before handshake
    with pytest.raises(LocalLinkError):
        make(False).hello()  # acceptor before the dialer's hello
    with pytest.raises(LocalLinkError):
        d.hello()  # twice
    with pytest.raises(LocalLinkError):
        a.hello()
    with pytest.raises(LocalLinkError):
        d.send(Hello("alpha", Role.PRIMARY, N_D))


@pytest.mark.parametrize("kw", [
    dict(nonce=b"short"), dict(psk=b""), dict(node="x" * 33), dict(node="nœud"), dict(node=""),
    dict(max_frame=100), dict(max_frame=70000), dict(role=0),
])
def test_constructor_validation(kw):
    with pytest.raises(LocalLinkError):
        make(True, **kw)


@pytest.mark.parametrize("msg", [
    status(node="other"),
    status(term=-1), status(term=2**64), status(calls=70000), status(ports=-1),
    status(ping_interval_ms=2**32), status(uptime_ms=1.5), status(eligible=1),
    status(settings=2**64), status(settings=-1), status(health=101), status(health=-1),
    status(state=17), status(role="primary"),
    Command(CommandKind.STEP_DOWN, 1, "é" * 61),  # 122 bytes of utf-8
    Command(CommandKind.STEP_DOWN, 2**64, "x"), Command(5, 1, "x"), Command(1, 1, b"x"),
])
def test_send_validates_fields(msg):
    d, a = pair()
    with pytest.raises(LocalLinkError):
        d.send(msg)
    a.receive_data(d.send(status()))  # a refused send did not use a seq
    assert a.next_event() == status()


def test_node_name_of_32_chars_is_accepted():
    d, _ = pair(d_node="n" * 32)
    assert len(d.send(status(node="n" * 32))) <= 200


# ---- property tests -------------------------------------------------------------------------

ALLOWED = (Hello, Status, Command, Dropped, Closed)


def feed_fuzz(conn, chunks, eof):
    try:
        for chunk in filter(None, chunks):  # b"" would be EOF
            conn.receive_data(chunk)
            for ev in drain(conn):
                assert ev is NEED_DATA or isinstance(ev, ALLOWED)
        if eof:
            conn.receive_data(b"")
            assert drain(conn)[-1] == Closed()
    except RemoteLinkError:
        pass


@FUZZ
@given(chunks=st.lists(st.binary(max_size=300), max_size=8), eof=st.booleans(),
       prefix=st.sampled_from(["none", "hello", "header"]))
def test_fuzz_before_handshake(chunks, eof, prefix):
    frames, _ = frames_and_events()
    lead = {"none": b"", "hello": frames["hello_d"], "header": b"VM\x01\x02"}[prefix]
    feed_fuzz(make(False), [lead] + chunks, eof)
    d = make(True)
    d.hello()
    feed_fuzz(d, [lead] + chunks, eof)


@FUZZ
@given(chunks=st.lists(st.binary(max_size=300), max_size=8), eof=st.booleans(),
       lead=st.sampled_from([b"", b"VM\x01\x02", b"VM\x01\x03\x30\x00", b"VM\x01\x02\x50\x00"]))
def test_fuzz_after_handshake(chunks, eof, lead):
    d, a = pair()
    feed_fuzz(a, [lead] + chunks, eof)
    feed_fuzz(d, [lead] + chunks, eof)


def fuzz_status(node="alpha"):
    u = lambda bits: st.integers(0, 2**bits - 1)  # noqa: E731
    return st.builds(
        Status, node=st.just(node), role=st.sampled_from(Role), state=st.sampled_from(State),
        term=u(64), service=st.sampled_from(ServiceHealth), mode=st.sampled_from(Mode),
        eligible=st.booleans(), licensed=st.booleans(), hold=st.booleans(),
        shutting_down=st.booleans(), calls=u(16), ports=u(16), repl_pos=u(64),
        ping_interval_ms=u(32), uptime_ms=u(64), settings=u(64), health=st.integers(0, 100))


def fuzz_command():
    reason = st.text(max_size=120).filter(lambda r: len(r.encode()) <= 120)
    return st.builds(Command, kind=st.sampled_from(CommandKind),
                     term=st.integers(0, 2**64 - 1), reason=reason)


@FUZZ
@given(msgs=st.lists(st.one_of(fuzz_status(), fuzz_command()), min_size=1, max_size=5))
def test_roundtrip_property(msgs):
    d, a = pair()
    a.receive_data(b"".join(d.send(m) for m in msgs))
    assert drain(a) == [*msgs, NEED_DATA]


@FUZZ
@given(msg=st.one_of(fuzz_status(), fuzz_command()), data=st.data())
def test_bit_flips_never_yield_a_message(msg, data):
    d, a = pair()
    frame = bytearray(d.send(msg))
    for bit in data.draw(st.sets(st.integers(0, len(frame) * 8 - 1), min_size=1, max_size=3)):
        frame[bit // 8] ^= 1 << (bit % 8)
    try:
        a.receive_data(bytes(frame))
        events = drain(a)
        a.receive_data(b"")
        events += drain(a)
    except RemoteLinkError:
        return
    assert not any(isinstance(e, (Status, Command)) for e in events), events
    assert any(isinstance(e, Dropped) for e in events)


# ---- purity ---------------------------------------------------------------------------------



def test_dataclasses_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        status().term = 1
