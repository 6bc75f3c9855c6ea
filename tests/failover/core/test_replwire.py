"""Tests of the sans-IO replication channel codec (failover/core/replwire.py)."""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failover.core import replwire as rw
from failover.core.replwire import (
    DB_ENTRY_OVERHEAD,
    DEFAULT_MAX_FRAME,
    FILE_ENTRY_OVERHEAD,
    FRAME_OVERHEAD,
    NEED_DATA,
    Channel,
    Closed,
    DbChanges,
    DbEntry,
    DbSchema,
    DbSnapshotBegin,
    DbSnapshotChunk,
    DbSnapshotRequest,
    DbState,
    Dropped,
    FileAck,
    FileBegin,
    FileChunk,
    FileDelete,
    FileEnd,
    FileEntry,
    FileManifest,
    FileManifestRequest,
    FileOffer,
    Hello,
    LocalReplError,
    MsgType,
    RemoteReplError,
    ReplConnection,
    check_path,
    max_changes_bytes,
    max_data,
    max_manifest_bytes,
)
from failover.core.state import Role

PSK = bytes(range(32))
N_D = bytes.fromhex("d0" * 16)
N_A = bytes.fromhex("a0" * 16)
KIB = 1024
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
D1 = bytes(range(32))  # a digest
D2 = bytes(range(100, 132))


def make(dialer: bool, *, psk=PSK, node=None, role=None, nonce=None, channel="default",
         expected_peer=None, **kw):
    if channel == "default":
        channel = Channel.DB if dialer else None
    return ReplConnection(
        keys=psk if isinstance(psk, tuple) else (psk,),
        node=node if node is not None else ("alpha" if dialer else "beta"),
        role=role if role is not None else (Role.PRIMARY if dialer else Role.SECONDARY),
        channel=channel, dialer=dialer, nonce=nonce or (N_D if dialer else N_A),
        expected_peer=expected_peer, **kw)


def pair(channel=Channel.DB, d_node="alpha", a_node="beta", n_d=N_D, n_a=N_A, psk=PSK, **kw):
    """Dialer and acceptor after a complete handshake."""
    d = make(True, node=d_node, nonce=n_d, psk=psk, channel=channel, expected_peer=a_node, **kw)
    a = make(False, node=a_node, nonce=n_a, psk=psk, expected_peer=d_node, **kw)
    a.receive_data(d.hello())
    assert a.next_event() == Hello(d_node, Role.PRIMARY, channel, n_d)
    assert a.next_event() is NEED_DATA
    assert a.channel is channel and not a.established
    d.receive_data(a.hello())
    assert d.next_event() == Hello(a_node, Role.SECONDARY, channel, n_a)
    assert d.established and a.established
    return d, a


def drain(conn) -> list:
    """Events until NEED_DATA or Closed (included)."""
    events = []
    while True:
        ev = conn.next_event()
        events.append(ev)
        if ev is NEED_DATA or isinstance(ev, Closed):
            return events


# ---- reference implementation of docs/replication.md, written independently of the module ---

def enc_node(name: str) -> bytes:
    return bytes([len(name)]) + name.encode("ascii")


def spec_key(direction: bytes, psk=PSK, n_d=N_D, n_a=N_A, d_node="alpha", a_node="beta",
             channel=1) -> bytes:
    seed = b"vmha-repl-session-1" + direction + n_d + n_a + enc_node(d_node) + enc_node(a_node)
    return hmac.new(psk, seed + bytes([channel]), hashlib.sha256).digest()


def spec_key_id(psk=PSK) -> bytes:
    return hmac.new(psk, b"vmha-key-id-1", hashlib.sha256).digest()[:8]


def spec_hello(node="beta", role=1, channel=1, nonce=N_A, psk=PSK, key_id=None) -> bytes:
    body = enc_node(node) + bytes([role, channel]) + nonce
    body += spec_key_id(psk) if key_id is None else key_id
    signed = b"VR\x01\x01" + struct.pack("<I", len(body) + 32) + body
    return signed + hmac.new(psk, b"vmha-repl-hello-1" + signed, hashlib.sha256).digest()


def seal(key: bytes, ftype: int, seq: int, body: bytes) -> bytes:
    signed = b"VR" + bytes([1, ftype]) + struct.pack("<I", 8 + len(body) + 32)
    signed += struct.pack("<Q", seq) + body
    return signed + hmac.new(key, signed, hashlib.sha256).digest()


K_D2A, K_A2D = spec_key(b"d2a"), spec_key(b"a2d")
K_D2A_FILES, K_A2D_FILES = spec_key(b"d2a", channel=2), spec_key(b"a2d", channel=2)


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def path_bytes(p: str) -> bytes:
    raw = p.encode()
    return struct.pack("<H", len(raw)) + raw


# ---- samples: every message, in the direction of the table -----------------------------

DB_STATE = DbState(head_seq=5, head_term=2, first_seq=1, applied_seq=4, applied_term=2,
                   checksum=0xFEDCBA9876543210, active=True)
ENTRIES = (DbEntry(2, 5, D1, b"changeset-5"), DbEntry(4, 6, D2, b""))
MANIFEST = FileManifest(7, False, (FileEntry("greetings/100.wav", 12345, D1, 2, 9),
                                   FileEntry("mailbox/200/msg0001.txt", 0, D2, 4, 10)))
SAMPLES = {
    # channel, sent by the dialer, message
    "db_schema_d": (Channel.DB, True, DbSchema(2)),
    "db_schema_a": (Channel.DB, False, DbSchema(65535)),
    "db_state_d": (Channel.DB, True, DB_STATE),
    "db_state_a": (Channel.DB, False, dataclasses.replace(DB_STATE, active=False, checksum=0)),
    "db_changes": (Channel.DB, True, DbChanges(ENTRIES)),
    "db_changes_empty": (Channel.DB, True, DbChanges(())),
    "snapshot_request": (Channel.DB, False, DbSnapshotRequest(17, "gap before seq 3 ✓")),
    "snapshot_begin": (Channel.DB, True, DbSnapshotBegin(3, 17, 4, 16, 4, 2**64 - 1, 10**9, D2)),
    "snapshot_chunk": (Channel.DB, True, DbSnapshotChunk(3, 65536, b"\x00\xff" * 100)),
    "manifest_request": (Channel.FILES, True, FileManifestRequest(7)),
    "manifest": (Channel.FILES, False, MANIFEST),
    "manifest_empty": (Channel.FILES, False, FileManifest(8, True, ())),
    "file_begin": (Channel.FILES, True, FileBegin(11, "prompts/fr/bienvenue é.wav", 2**40,
                                                   D1, 6, 77, True)),
    "file_offer": (Channel.FILES, False, FileOffer(11, 4096)),
    "file_chunk": (Channel.FILES, True, FileChunk(11, 4096, b"RIFF" + bytes(300))),
    "file_end": (Channel.FILES, True, FileEnd(11)),
    "file_delete": (Channel.FILES, True, FileDelete(12, "mailbox/200/msg0001.txt", 6, 78)),
    "file_ack": (Channel.FILES, False, FileAck(12, "mailbox/200/msg0001.txt", False,
                                               "ENOSPC: no space left on device")),
}


def test_samples_cover_every_message_type():
    assert {type(m) for _, _, m in SAMPLES.values()} == set(rw.MESSAGE_TYPES)
    assert set(rw.MESSAGE_TYPES.values()) == set(MsgType) - {MsgType.HELLO}
    assert rw.FROM_DIALER | rw.FROM_ACCEPTOR == set(rw.MESSAGE_TYPES)
    assert rw.FROM_DIALER & rw.FROM_ACCEPTOR == {DbSchema, DbState}


# ---- golden bytes ---------------------------------------------------------------------------

def test_golden_hello_frame():
    frame = make(True).hello()
    assert frame[:8].hex() == "5652" "01" "01" "40000000"  # magic, version, HELLO, length 64
    assert frame[8:14] == b"\x05alpha"  # node, u8-prefixed
    assert frame[14] == Role.PRIMARY and frame[15] == Channel.DB
    assert frame[16:32] == N_D
    assert frame[32:40] == spec_key_id(PSK)
    assert len(frame) == 8 + 64
    signed = frame[:-32]
    assert frame[-32:] == hmac.new(PSK, b"vmha-repl-hello-1" + signed, hashlib.sha256).digest()
    assert frame == spec_hello("alpha", 0, 1, N_D)


def test_acceptor_answers_with_the_dialers_channel():
    d = make(True, channel=Channel.FILES)
    a = make(False)
    assert a.channel is None
    a.receive_data(d.hello())
    assert a.next_event().channel is Channel.FILES
    assert a.channel is Channel.FILES
    assert a.hello() == spec_hello("beta", 1, 2, N_A)


GOLDEN_DB_STATE = (
    "5652" "01" "02" "59000000"              # magic, version 1, type 2, length 89
    "0100000000000000"                       # seq 1
    "0500000000000000" "0200000000000000"    # head_seq 5, head_term 2
    "0100000000000000" "0400000000000000"    # first_seq 1, applied_seq 4
    "0200000000000000" "1032547698badcfe"    # applied_term 2, checksum
    "01"                                     # active
)


def test_golden_sealed_frame_both_directions():
    d, a = pair()
    frame = d.send(DB_STATE)
    assert frame[:-32].hex() == GOLDEN_DB_STATE
    assert len(frame) == 8 + 89
    assert frame[-32:] == hmac.new(K_D2A, frame[:-32], hashlib.sha256).digest()
    assert d.send(DB_STATE)[8:16] == u64(2)
    back = a.send(DB_STATE)  # the acceptor numbers its own direction from 1, with key_a2d
    assert back[:-32] == bytes.fromhex(GOLDEN_DB_STATE)
    assert back[-32:] == hmac.new(K_A2D, back[:-32], hashlib.sha256).digest()
    assert K_A2D != K_D2A


def test_golden_file_frames():
    d, a = pair(Channel.FILES)
    frame = d.send(FileBegin(9, "a/b.wav", 1000, D1, 3, 4, False))
    body = u32(9) + b"\x07\x00a/b.wav" + u64(1000) + D1 + u64(3) + u64(4) + b"\x00"
    assert frame == seal(K_D2A_FILES, 9, 1, body)
    frame = d.send(FileChunk(9, 512, b"xyz"))
    assert frame == seal(K_D2A_FILES, 11, 2, u32(9) + u64(512) + u32(3) + b"xyz")
    frame = a.send(FileAck(9, "a/b.wav", True, ""))
    assert frame == seal(K_A2D_FILES, 14, 1, u32(9) + b"\x07\x00a/b.wav" + b"\x01" + b"\x00")
    frame = a.send(MANIFEST)
    e1, e2 = MANIFEST.entries
    body = (u32(7) + b"\x00" + u32(2)
            + path_bytes(e1.path) + u64(e1.size) + e1.digest + u64(2) + u64(9)
            + path_bytes(e2.path) + u64(0) + e2.digest + u64(4) + u64(10))
    assert frame == seal(K_A2D_FILES, 8, 2, body)


def test_golden_db_frames():
    d, a = pair()
    assert d.send(DbSchema(2)) == seal(K_D2A, 15, 1, b"\x02\x00")
    assert a.send(DbSchema(3)) == seal(K_A2D, 15, 1, b"\x03\x00")
    with pytest.raises(LocalReplError):
        d.send(DbSchema(65536))
    d, a = pair()
    frame = d.send(DbChanges(ENTRIES))
    body = (u32(2) + u64(2) + u64(5) + D1 + u32(11) + b"changeset-5"
            + u64(4) + u64(6) + D2 + u32(0))
    assert frame == seal(K_D2A, 3, 1, body)
    frame = a.send(DbSnapshotRequest(17, "gap"))
    assert frame == seal(K_A2D, 4, 1, u64(17) + b"\x03gap")
    frame = d.send(DbSnapshotBegin(3, 17, 4, 16, 4, 99, 1000, D2))
    assert frame == seal(K_D2A, 5, 2, u32(3) + u64(17) + u64(4) + u64(16) + u64(4) + u64(99)
                         + u64(1000) + D2)


# ---- round trips ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", SAMPLES)
def test_roundtrip_each_message(name):
    channel, from_dialer, msg = SAMPLES[name]
    d, a = pair(channel)
    src, dst = (d, a) if from_dialer else (a, d)
    dst.receive_data(src.send(msg))
    assert drain(dst) == [msg, NEED_DATA]


def test_all_messages_both_directions_interleaved():
    for channel in Channel:
        d, a = pair(channel)
        to_a = [m for c, fd, m in SAMPLES.values() if c is channel and fd]
        to_d = [m for c, fd, m in SAMPLES.values() if c is channel and not fd]
        for i in range(max(len(to_a), len(to_d))):
            if i < len(to_a):
                a.receive_data(d.send(to_a[i]))
            if i < len(to_d):
                d.receive_data(a.send(to_d[i]))
        assert drain(a) == [*to_a, NEED_DATA]
        assert drain(d) == [*to_d, NEED_DATA]
        assert a.counters["frames_ok"] == 1 + len(to_a)
        assert d.counters["frames_ok"] == 1 + len(to_d)
        assert all(v == 0 for k, v in {**a.counters, **d.counters}.items()
                   if k.startswith("dropped_"))


def test_parsed_types():
    d, a = pair()
    a.receive_data(d.send(DbChanges(list(ENTRIES))))  # a list is accepted on send
    msg = a.next_event()
    assert msg == DbChanges(ENTRIES) and type(msg.entries) is tuple
    assert all(type(e.digest) is bytes and type(e.changeset) is bytes for e in msg.entries)
    a.receive_data(d.send(DB_STATE))
    msg = a.next_event()
    assert type(msg.active) is bool and msg.checksum == 0xFEDCBA9876543210
    d2, a2 = pair(Channel.FILES)
    d2.receive_data(a2.send(MANIFEST))
    msg = d2.next_event()
    assert type(msg.entries) is tuple and type(msg.last) is bool


@pytest.mark.parametrize("mode", ["whole", "bytewise", "concatenated"])
def test_feeding_modes(mode):
    d, a = pair()
    msgs = [DB_STATE, DbChanges(ENTRIES), DbSnapshotChunk(1, 0, bytes(5000))]
    frames = [d.send(m) for m in msgs]
    stream = b"".join(frames)
    chunks = {"whole": frames, "bytewise": [stream[i:i + 1] for i in range(len(stream))],
              "concatenated": [stream]}[mode]
    events = []
    for chunk in chunks:
        a.receive_data(chunk)
        assert a.buffered < len(max(frames, key=len))
        events += [e for e in drain(a) if e is not NEED_DATA]
    assert events == msgs
    assert a.buffered == 0


def test_hello_bytewise_and_frames_in_the_same_chunk_as_the_hello():
    d = make(True, expected_peer="beta")
    hello_d = d.hello()
    a = make(False, expected_peer="alpha")
    for i in range(len(hello_d) - 1):
        a.receive_data(hello_d[i:i + 1])
        assert a.next_event() is NEED_DATA
    a.receive_data(hello_d[-1:])
    assert a.next_event().node == "alpha"
    first = a.hello() + a.send(DbSnapshotRequest(1, "x"))  # the acceptor may speak at once
    d.receive_data(first)
    assert drain(d) == [Hello("beta", Role.SECONDARY, Channel.DB, N_A),
                        DbSnapshotRequest(1, "x"), NEED_DATA]


def test_eof():
    d, a = pair()
    a.receive_data(d.send(DB_STATE))
    a.receive_data(b"")
    assert drain(a) == [DB_STATE, Closed()]
    assert a.next_event() == Closed()
    with pytest.raises(LocalReplError):
        a.receive_data(b"more")


@pytest.mark.parametrize("cut", [1, 7, 8, 20, 96])
def test_eof_mid_frame_is_fatal(cut):
    d, a = pair()
    a.receive_data(d.send(DB_STATE)[:cut])
    assert a.next_event() is NEED_DATA
    a.receive_data(b"")
    with pytest.raises(RemoteReplError, match="EOF"):
        a.next_event()


def test_clean_eof_before_handshake_is_closed():
    a = make(False)
    a.receive_data(b"")
    assert a.next_event() == Closed()


# ---- drops ----------------------------------------------------------------------------------

def test_any_bit_flip_after_the_header_is_dropped_as_mac_and_the_stream_carries_on():
    d, a = pair()
    size = len(pair()[0].send(DB_STATE))
    for bit in range(8 * 8, size * 8):
        frame = d.send(DB_STATE)
        forged = bytearray(frame)
        forged[bit // 8] ^= 1 << (bit % 8)
        a.receive_data(bytes(forged))
        assert a.next_event() == Dropped("mac", size)
        a.receive_data(frame)
        assert a.next_event() == DB_STATE
    assert a.counters["dropped_mac"] == (size - 8) * 8
    assert a.counters["dropped_seq"] == 0


def test_type_byte_flip_is_dropped_as_mac():
    d, a = pair()
    frame = bytearray(d.send(DB_STATE))
    frame[3] = MsgType.DB_CHANGES
    a.receive_data(bytes(frame))
    assert a.next_event() == Dropped("mac", len(frame))


def test_frame_sealed_with_the_other_directions_key_is_dropped():
    d, a = pair()
    a.receive_data(seal(K_A2D, 2, 1, d.send(DB_STATE)[16:-32]))
    assert a.next_event().reason == "mac"


def test_replayed_and_skipped_seq_are_dropped():
    d, a = pair()
    f1, f2, f3 = (d.send(dataclasses.replace(DB_STATE, head_seq=i)) for i in (1, 2, 3))
    a.receive_data(f1 + f1 + f3 + f2 + f3)
    events = drain(a)
    assert [getattr(e, "head_seq", getattr(e, "reason", None)) for e in events[:-1]] == \
        [1, "seq", "seq", 2, 3]
    assert a.counters["dropped_seq"] == 2 and a.counters["frames_ok"] == 4


def test_frame_replayed_into_a_new_connection_fails_mac():
    d, _ = pair()
    frame = d.send(DB_STATE)
    _, a2 = pair(n_d=b"\x01" * 16, n_a=b"\x02" * 16)
    a2.receive_data(frame)
    assert a2.next_event() == Dropped("mac", len(frame))
    _, a3 = pair(Channel.FILES)  # same nonces, other channel: other key
    a3.receive_data(frame)
    assert a3.next_event() == Dropped("mac", len(frame))


BODY_OK = u64(1) * 6 + b"\x01"


@pytest.mark.parametrize("ftype,body,reason", [
    (16, b"", "type"),
    (0, b"x", "type"),
    (15, b"\x02", "parse"),                                  # DbSchema: u16, one byte short
    (15, b"\x02\x00\x00", "parse"),                          # ... one byte long
    (255, BODY_OK, "type"),
    (2, b"", "parse"),
    (2, BODY_OK + b"\x00", "parse"),                         # trailing byte
    (2, BODY_OK[:-1], "parse"),                              # short
    (2, BODY_OK[:-1] + b"\x02", "parse"),                    # bool byte not 0/1
    (3, u32(1) + u64(1) + u64(1) + bytes(32) + u32(5) + b"abc", "parse"),  # changeset short
    (3, u32(2) + u64(1) + u64(1) + bytes(32) + u32(0), "parse"),           # count too high
    (3, u32(0) + b"\x00", "parse"),
    (3, u32(2**32 - 1), "parse"),
    (5, u32(1) + u64(1) * 6 + bytes(31), "parse"),           # digest short
    (6, u32(1) + u64(0) + u32(10) + b"x" * 9, "parse"),      # data short
    (6, u32(1) + u64(0) + u32(1) + b"x" * 2, "parse"),       # data long
    (7, u32(1), "channel"),                                  # FILES message on DB
    (14, u32(1) + b"\x01\x00a\x01\x00", "channel"),
    (4, u64(1) + b"\x00", "direction"),                      # DbSnapshotRequest from the dialer
])
def test_authentic_but_unusable_frames_are_dropped_and_consume_seq(ftype, body, reason):
    d, a = pair()
    bad = seal(K_D2A, ftype, 1, body)
    a.receive_data(bad)
    assert a.next_event() == Dropped(reason, len(bad))
    assert a.counters[f"dropped_{reason}"] == 1
    d.send(DB_STATE)  # seq 1 was used up by the hand-made frame
    a.receive_data(d.send(DB_STATE))
    assert a.next_event() == DB_STATE


def test_snapshot_request_reason_limit():
    d, a = pair()
    for seq, (text, ok) in enumerate([("é" * 60, True), ("r" * 121, False),
                                      ("\xff", None)], start=1):
        raw = text.encode() if ok is not None else b"\xff"
        frame = seal(K_A2D, 4, seq, u64(5) + bytes([len(raw)]) + raw)
        d.receive_data(frame)
        e = d.next_event()
        assert e == (DbSnapshotRequest(5, text) if ok else Dropped("parse", len(frame)))


@pytest.mark.parametrize("name", ["db_changes", "snapshot_begin", "snapshot_chunk"])
def test_sender_messages_from_the_acceptor_are_dropped_direction(name):
    _, _, msg = SAMPLES[name]
    d, a = pair()
    body = pair()[0].send(msg)[16:-32]
    d.receive_data(seal(K_A2D, rw.MESSAGE_TYPES[type(msg)], 1, body))
    assert d.next_event().reason == "direction"


def test_receiver_messages_from_the_dialer_are_dropped_direction():
    d, a = pair(Channel.FILES)
    for seq, msg in enumerate([FileOffer(1, 0), MANIFEST, FileAck(1, "a", True, "")], start=1):
        body = pair(Channel.FILES)[1].send(msg)[16:-32]
        a.receive_data(seal(K_D2A_FILES, rw.MESSAGE_TYPES[type(msg)], seq, body))
        assert a.next_event().reason == "direction"
    assert a.counters["dropped_direction"] == 3


BAD_PATHS = ["../x", "/abs", "a//b", "a\\b", "", ".", "a/./b", "a/..", "a/", "nul\x00here",
             "x" * 1025, "é" * 513]
GOOD_PATHS = ["a", "a/b", "...", "a/.hidden", "..x/y..", "x" * 1024, "é" * 512, "sp ace/ü"]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_check_path_rejects(path):
    with pytest.raises(ValueError, match="path"):
        check_path(path)


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_check_path_accepts(path):
    assert check_path(path) == path


def test_check_path_rejects_non_str_and_surrogates():
    for bad in (b"a/b", None, 3, "a/\udcff"):
        with pytest.raises(ValueError):
            check_path(bad)


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_path_in_any_message_is_dropped_parse(path):
    d, a = pair(Channel.FILES)
    raw = path.encode("utf-8")
    p = struct.pack("<H", len(raw)) + raw
    to_a = [(9, u32(1) + p + u64(1) + D1 + u64(1) + u64(1) + b"\x00"),  # FileBegin
            (13, u32(1) + p + u64(1) + u64(1))]                          # FileDelete
    to_d = [(14, u32(1) + p + b"\x01\x00"),                              # FileAck
            (8, u32(1) + b"\x01" + u32(1) + p + u64(1) + D1 + u64(1) + u64(1))]  # manifest
    for seq, (ftype, body) in enumerate(to_a, start=1):
        a.receive_data(seal(K_D2A_FILES, ftype, seq, body))
        assert a.next_event().reason == "parse", (ftype, path)
    for seq, (ftype, body) in enumerate(to_d, start=1):
        d.receive_data(seal(K_A2D_FILES, ftype, seq, body))
        assert d.next_event().reason == "parse", (ftype, path)
    a.receive_data(seal(K_D2A_FILES, 12, 3, u32(1)))  # the drops used seqs 1 and 2
    assert a.next_event() == FileEnd(1)


def test_path_that_is_not_utf8_is_dropped_parse():
    d, a = pair(Channel.FILES)
    a.receive_data(seal(K_D2A_FILES, 13, 1, u32(1) + b"\x02\x00\xc3\x28" + u64(1) + u64(1)))
    assert a.next_event().reason == "parse"


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_path_is_refused_on_send(path):
    d, a = pair(Channel.FILES)
    for msg, src in [(FileBegin(1, path, 1, D1, 1, 1, False), d),
                     (FileDelete(1, path, 1, 1), d), (FileAck(1, path, True, ""), a),
                     (FileManifest(1, True, (FileEntry(path, 1, D1, 1, 1),)), a)]:
        with pytest.raises(LocalReplError, match="path"):
            src.send(msg)
    a.receive_data(d.send(FileEnd(1)))  # the refused sends used no seq
    assert a.next_event() == FileEnd(1)


def test_short_frame_is_dropped_parse():
    _, a = pair()
    frame = b"VR\x01\x02" + u32(39) + bytes(39)
    a.receive_data(frame)
    assert a.next_event() == Dropped("parse", 47)


# ---- fatal errors ---------------------------------------------------------------------------

def test_wrong_psk_hello_is_fatal_both_ways():
    a = make(False)
    a.receive_data(make(True, psk=b"other key").hello())
    with pytest.raises(RemoteReplError, match="do not accept"):
        a.next_event()
    with pytest.raises(RemoteReplError):  # sticky
        a.next_event()
    assert not a.established and a.peer is None and a.channel is None
    d = make(True)
    d.hello()
    d.receive_data(spec_hello(psk=b"other key"))
    with pytest.raises(RemoteReplError, match="do not accept"):
        d.next_event()


@pytest.mark.parametrize("dialer_kw,expected", [
    (dict(node="gamma"), "alpha"),             # not the expected peer
    (dict(role=Role.SECONDARY), None),         # both secondary: reflected?
    (dict(nonce=N_A), None),                   # our own nonce
    (dict(node="beta"), None),                 # our own name
])
def test_bad_hello_fields_are_fatal(dialer_kw, expected):
    a = make(False, expected_peer=expected)
    a.receive_data(make(True, **dialer_kw).hello())
    with pytest.raises(RemoteReplError):
        a.next_event()


def test_reflected_hello_is_fatal_for_the_dialer():
    d = make(True)
    d.receive_data(d.hello())
    with pytest.raises(RemoteReplError, match="reflected"):
        d.next_event()


def test_answer_for_another_channel_is_fatal_for_the_dialer():
    d = make(True, channel=Channel.DB)
    d.hello()
    d.receive_data(spec_hello(channel=2))
    with pytest.raises(RemoteReplError, match="channel"):
        d.next_event()
    assert not d.established


def test_acceptor_created_for_a_channel_refuses_another():
    a = make(False, channel=Channel.FILES)
    a.receive_data(make(True, channel=Channel.DB).hello())
    with pytest.raises(RemoteReplError, match="channel"):
        a.next_event()


def test_hello_for_an_unknown_channel_is_malformed():
    a = make(False)
    a.receive_data(spec_hello("alpha", 0, 3, N_D))
    with pytest.raises(RemoteReplError, match="malformed"):
        a.next_event()


def test_second_hello_is_fatal():
    d, a = pair()
    a.receive_data(make(True, nonce=b"\x07" * 16).hello())
    with pytest.raises(RemoteReplError, match="second"):
        a.next_event()
    d.receive_data(spec_hello(nonce=b"\x07" * 16))
    with pytest.raises(RemoteReplError, match="second"):
        d.next_event()


def test_hello_to_dialer_before_its_own_is_fatal():
    d = make(True)
    d.receive_data(spec_hello())
    with pytest.raises(RemoteReplError):
        d.next_event()


def test_frames_before_handshake_are_fatal():
    frame = pair()[0].send(DB_STATE)
    a = make(False)
    a.receive_data(frame)
    with pytest.raises(RemoteReplError, match="before"):
        a.next_event()
    a = make(False)  # hello received but not answered yet
    a.receive_data(make(True).hello() + frame)
    a.next_event()
    with pytest.raises(RemoteReplError):
        a.next_event()


def test_malformed_hello_is_fatal():
    a = make(False)
    a.receive_data(b"VR\x01\x01" + u32(3) + b"abc")
    with pytest.raises(RemoteReplError, match="malformed"):
        a.next_event()


@pytest.mark.parametrize("header", [
    b"XR\x01\x02" + u32(16),           # bad magic
    b"VR\x02\x02" + u32(16),           # bad version
    b"VR\x01\x02" + u32(DEFAULT_MAX_FRAME - 7),  # one byte over max_frame
    b"VR\x01\x02\xff\xff\xff\xff",
])
def test_unusable_header_is_fatal_after_earlier_frames(header):
    d, a = pair()
    good = d.send(DB_STATE)
    a.receive_data(good + header + bytes(5000))
    assert a.buffered == 0  # nothing kept after an unusable header
    assert a.next_event() == DB_STATE  # frames before the bad header still count
    with pytest.raises(RemoteReplError):
        a.next_event()
    a.receive_data(b"ignored")
    with pytest.raises(RemoteReplError):
        a.next_event()


def test_smaller_max_frame_is_enforced_and_buffer_bounded():
    mf = 64 * KIB
    d, a = pair(max_frame=mf)
    frame = d.send(DbSnapshotChunk(1, 0, bytes(max_data(mf))))
    assert len(frame) == mf
    for i in range(0, mf, 1000):
        a.receive_data(frame[i:i + 1000])
        assert a.buffered <= mf
        if i + 1000 < mf:
            assert a.next_event() is NEED_DATA
    assert a.next_event() == DbSnapshotChunk(1, 0, bytes(max_data(mf)))
    a.receive_data(b"VR\x01\x06" + u32(mf - 7))
    assert a.buffered == 0
    with pytest.raises(RemoteReplError, match="limit"):
        a.next_event()


# ---- sizes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mf", [64 * KIB, DEFAULT_MAX_FRAME, 64 * 1024 * KIB])
def test_max_data_exactly_fills_a_frame(mf):
    assert FRAME_OVERHEAD == 48
    assert max_data(mf) == mf - 48 - 16
    for channel, msg in [(Channel.DB, DbSnapshotChunk), (Channel.FILES, FileChunk)]:
        d, a = pair(channel, max_frame=mf)
        frame = d.send(msg(1, 0, bytes(max_data(mf))))
        assert len(frame) == mf
        with pytest.raises(LocalReplError, match="max_frame"):
            d.send(msg(1, 0, bytes(max_data(mf) + 1)))
        a.receive_data(frame)
        assert a.next_event().data == bytes(max_data(mf))


@pytest.mark.parametrize("mf", [64 * KIB, DEFAULT_MAX_FRAME])
def test_max_changes_bytes_exactly_fills_a_frame(mf):
    budget = max_changes_bytes(mf)
    assert DB_ENTRY_OVERHEAD == 52
    sizes = [100, 0, 5000]
    sizes.append(budget - sum(sizes) - DB_ENTRY_OVERHEAD * (len(sizes) + 1))
    entries = tuple(DbEntry(1, i, D1, bytes([i]) * n) for i, n in enumerate(sizes))
    assert sum(DB_ENTRY_OVERHEAD + len(e.changeset) for e in entries) == budget
    d, a = pair(max_frame=mf)
    frame = d.send(DbChanges(entries))
    assert len(frame) == mf
    bigger = entries[:-1] + (DbEntry(1, 3, D1, entries[-1].changeset + b"!"),)
    with pytest.raises(LocalReplError, match="max_frame"):
        d.send(DbChanges(bigger))
    a.receive_data(frame)
    assert a.next_event() == DbChanges(entries)


def test_max_manifest_bytes_exactly_fills_a_frame():
    mf = 64 * KIB
    budget = max_manifest_bytes(mf)
    assert FILE_ENTRY_OVERHEAD == 58
    paths = [f"dir/{i:04d}.wav" for i in range((budget - 500) // (FILE_ENTRY_OVERHEAD + 12))]
    used = sum(FILE_ENTRY_OVERHEAD + len(p) for p in paths)
    paths.append("x" * (budget - used - FILE_ENTRY_OVERHEAD))
    entries = tuple(FileEntry(p, 1, D1, 1, 1) for p in paths)
    d, a = pair(Channel.FILES, max_frame=mf)
    frame = a.send(FileManifest(1, True, entries))
    assert len(frame) == mf
    with pytest.raises(LocalReplError, match="max_frame"):
        a.send(FileManifest(1, True, entries[:-1] + (FileEntry(paths[-1] + "y", 1, D1, 1, 1),)))


@pytest.mark.parametrize("mf", [64 * KIB - 1, 64 * 1024 * KIB + 1, 0, 1.5e6, True])
def test_max_frame_range(mf):
    with pytest.raises(LocalReplError, match="max_frame"):
        make(True, max_frame=mf)
    with pytest.raises(LocalReplError):
        max_data(mf)


# ---- local misuse ---------------------------------------------------------------------------

def test_local_misuse():
    d, a = pair()
    with pytest.raises(LocalReplError):
        make(True).send(DB_STATE)  # before handshake
    with pytest.raises(LocalReplError):
        make(False).hello()  # acceptor before the dialer's hello
    with pytest.raises(LocalReplError):
        d.hello()  # twice
    with pytest.raises(LocalReplError):
        a.hello()
    with pytest.raises(LocalReplError):
        d.send(Hello("alpha", Role.PRIMARY, Channel.DB, N_D))
    with pytest.raises(LocalReplError, match="channel"):
        d.send(FileEnd(1))
    with pytest.raises(LocalReplError, match="never sends"):
        a.send(DbChanges(()))
    with pytest.raises(LocalReplError, match="never sends"):
        d.send(DbSnapshotRequest(1, ""))
    a.receive_data(d.send(DB_STATE))  # nothing above used a seq
    assert a.next_event() == DB_STATE


@pytest.mark.parametrize("kw", [
    dict(nonce=b"short"), dict(psk=b""), dict(psk="text"), dict(node="x" * 33),
    dict(node="nœud"), dict(node=""), dict(role=0), dict(channel=1), dict(channel=None),
    dict(expected_peer=b"beta"),
])
def test_constructor_validation(kw):
    with pytest.raises(LocalReplError):
        make(True, **kw)


def test_dialer_flag_must_be_bool():
    with pytest.raises(LocalReplError):
        ReplConnection(keys=(PSK,), node="a", role=Role.PRIMARY, channel=Channel.DB, dialer=1,
                       nonce=N_D)


BAD_DB = [
    dataclasses.replace(DB_STATE, checksum=2**64), dataclasses.replace(DB_STATE, head_seq=-1),
    dataclasses.replace(DB_STATE, applied_term=1.0), dataclasses.replace(DB_STATE, active=1),
    DbChanges((DbEntry(1, 1, D1[:31], b""),)), DbChanges((DbEntry(1, 1, D1, "text"),)),
    DbChanges((DbEntry(-1, 1, D1, b""),)), DbChanges((DbEntry(1, 2**64, D1, b""),)),
    DbChanges(((1, 1, D1, b""),)), DbChanges(ENTRIES[0]), DbChanges(None),
    DbSnapshotBegin(2**32, 1, 1, 1, 1, 1, 1, D1), DbSnapshotBegin(1, 1, 1, 1, 1, 1, 1, "d" * 32),
    DbSnapshotChunk(1, 1, "text"), DbSnapshotChunk(1, -1, b""),
]
BAD_FILES = [
    FileBegin(1, "a", 1, D1, 1, 1, "yes"), FileBegin(1, "a", 1, D1 + b"x", 1, 1, True),
    FileChunk(1, 2**64, b""), FileEnd(-1), FileDelete(1, "a", 1, None),
    FileManifestRequest(2**32),
]
BAD_FROM_ACCEPTOR = [
    FileAck(1, "a", True, "e" * 201), FileAck(1, "a", None, ""), FileOffer(1, 2**64),
    FileManifest(1, 0, ()), FileManifest(1, True, (MANIFEST,)),
    FileManifest(1, True, (FileEntry("a", 1, D1, 1, -5),)),
]


@pytest.mark.parametrize("msg", BAD_DB + BAD_FILES + BAD_FROM_ACCEPTOR, ids=repr)
def test_send_validates_fields_and_uses_no_seq(msg):
    channel = rw.CHANNEL_OF[type(msg)]
    d, a = pair(channel)
    src = a if msg in BAD_FROM_ACCEPTOR else d
    with pytest.raises(LocalReplError):
        src.send(msg)
    ok = DB_STATE if channel is Channel.DB else (FileEnd(1) if src is d else FileOffer(1, 0))
    dst = a if src is d else d
    dst.receive_data(src.send(ok))
    assert dst.next_event() == ok


def test_reason_and_error_limits_count_utf8_bytes():
    d, a = pair()
    a.send(DbSnapshotRequest(1, "é" * 60))
    with pytest.raises(LocalReplError):
        a.send(DbSnapshotRequest(1, "é" * 60 + "x"))
    d, a = pair(Channel.FILES)
    a.send(FileAck(1, "a", False, "é" * 100))
    with pytest.raises(LocalReplError):
        a.send(FileAck(1, "a", False, "é" * 100 + "x"))


# ---- reference layouts ----------------------------------------------------------------------

db_entry_st = st.builds(DbEntry, term=st.integers(0, 2**64 - 1), seq=st.integers(0, 2**64 - 1),
                        digest=st.binary(min_size=32, max_size=32),
                        changeset=st.binary(max_size=80))
path_st = st.lists(st.text(st.characters(blacklist_characters="/\\\x00",
                                         blacklist_categories=("Cs",)), min_size=1, max_size=8)
                   .filter(lambda s: s not in (".", "..")), min_size=1, max_size=4) \
    .map("/".join).filter(lambda p: len(p.encode()) <= 1024)
file_entry_st = st.builds(FileEntry, path=path_st, size=st.integers(0, 2**64 - 1),
                          digest=st.binary(min_size=32, max_size=32),
                          version_term=st.integers(0, 2**64 - 1),
                          version_seq=st.integers(0, 2**64 - 1))


@FUZZ
@given(db=st.lists(db_entry_st, max_size=6), files=st.lists(file_entry_st, max_size=6))
def test_hand_rolled_entry_lists_match_the_reference_layouts(db, files):
    fast = rw.BODIES[MsgType.DB_CHANGES].build({"entries": db})
    assert fast == rw.DB_ENTRIES_LAYOUT.build([vars(e) for e in db])
    assert rw.BODIES[MsgType.DB_CHANGES].parse(fast).entries == tuple(db)
    parsed = rw.DB_ENTRIES_LAYOUT.parse(fast)
    assert [DbEntry(**{k: e[k] for k in ("term", "seq", "digest", "changeset")})
            for e in parsed] == db
    fast = rw.BODIES[MsgType.FILE_MANIFEST].build(dict(request_id=1, last=True, entries=files))
    ref = rw.FILE_ENTRIES_LAYOUT.build([vars(e) for e in files])
    assert fast == u32(1) + b"\x01" + ref
    assert rw.BODIES[MsgType.FILE_MANIFEST].parse(fast).entries == tuple(files)


# ---- property tests -------------------------------------------------------------------------

u = lambda bits: st.integers(0, 2**bits - 1)  # noqa: E731
digest_st = st.binary(min_size=32, max_size=32)
text = lambda n: st.text(max_size=n).filter(lambda s: len(s.encode()) <= n)  # noqa: E731
MSG_ST = {
    (Channel.DB, True): st.one_of(
        st.builds(DbState, u(64), u(64), u(64), u(64), u(64), u(64), st.booleans()),
        st.builds(DbChanges, st.lists(db_entry_st, max_size=4).map(tuple)),
        st.builds(DbSnapshotBegin, u(32), u(64), u(64), u(64), u(64), u(64), u(64), digest_st),
        st.builds(DbSnapshotChunk, u(32), u(64), st.binary(max_size=200))),
    (Channel.DB, False): st.one_of(
        st.builds(DbState, u(64), u(64), u(64), u(64), u(64), u(64), st.booleans()),
        st.builds(DbSnapshotRequest, u(64), text(120))),
    (Channel.FILES, True): st.one_of(
        st.builds(FileManifestRequest, u(32)),
        st.builds(FileBegin, u(32), path_st, u(64), digest_st, u(64), u(64), st.booleans()),
        st.builds(FileChunk, u(32), u(64), st.binary(max_size=200)),
        st.builds(FileEnd, u(32)), st.builds(FileDelete, u(32), path_st, u(64), u(64))),
    (Channel.FILES, False): st.one_of(
        st.builds(FileManifest, u(32), st.booleans(),
                  st.lists(file_entry_st, max_size=4).map(tuple)),
        st.builds(FileOffer, u(32), u(64)),
        st.builds(FileAck, u(32), path_st, st.booleans(), text(200))),
}
ANY_MSG = st.sampled_from(list(MSG_ST)).flatmap(
    lambda k: st.tuples(st.just(k), st.lists(MSG_ST[k], min_size=1, max_size=4)))
ALLOWED = (Hello, Dropped, Closed, *rw.MESSAGE_TYPES)


@FUZZ
@given(case=ANY_MSG)
def test_roundtrip_property(case):
    (channel, from_dialer), msgs = case
    d, a = pair(channel)
    src, dst = (d, a) if from_dialer else (a, d)
    dst.receive_data(b"".join(src.send(m) for m in msgs))
    assert drain(dst) == [*msgs, NEED_DATA]


def feed_fuzz(conn, chunks, eof):
    try:
        for chunk in filter(None, chunks):  # b"" would be EOF
            conn.receive_data(chunk)
            assert conn.buffered <= conn.max_frame
            for ev in drain(conn):
                assert ev is NEED_DATA or isinstance(ev, ALLOWED)
                assert not isinstance(ev, tuple(rw.MESSAGE_TYPES)), ev  # nothing authentic
        if eof:
            conn.receive_data(b"")
            assert drain(conn)[-1] == Closed()
    except RemoteReplError:
        pass


LEADS = [b"", b"VR\x01\x02", b"VR\x01\x02" + u32(60), b"VR\x01\x03" + u32(100),
         b"VR\x01\x01" + u32(56)]


@FUZZ
@given(chunks=st.lists(st.binary(max_size=300), max_size=8), eof=st.booleans(),
       lead=st.sampled_from(LEADS), channel=st.sampled_from(Channel))
def test_fuzz_random_bytes_after_handshake(chunks, eof, lead, channel):
    d, a = pair(channel)
    feed_fuzz(a, [lead] + chunks, eof)
    feed_fuzz(d, [lead] + chunks, eof)


@FUZZ
@given(chunks=st.lists(st.binary(max_size=300), max_size=8), eof=st.booleans(),
       lead=st.sampled_from(LEADS + [spec_hello("alpha", 0, 1, N_D)]))
def test_fuzz_random_bytes_before_handshake(chunks, eof, lead):
    feed_fuzz(make(False), [lead] + chunks, eof)
    d = make(True)
    d.hello()
    feed_fuzz(d, [lead] + chunks, eof)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.integers(0, 10**6), min_size=1, max_size=3)),
    st.tuples(st.just("cut"), st.integers(0, 10**6)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
)


def mutate(frame: bytes, m) -> bytes:
    b = bytearray(frame)
    if m[0] == "flip":
        for bit in m[1]:
            b[(bit // 8) % len(b)] ^= 1 << (bit % 8)
    elif m[0] == "cut":
        del b[m[1] % len(b):]
    elif m[0] == "insert":
        b[m[1] % len(b):m[1] % len(b)] = m[2]
    else:
        b[m[1] % len(b)] = m[2]
    return bytes(b)


@FUZZ
@given(case=ANY_MSG, m=mutation, eof=st.booleans())
def test_mutated_frames_never_yield_a_message(case, m, eof):
    (channel, from_dialer), msgs = case
    d, a = pair(channel)
    src, dst = (d, a) if from_dialer else (a, d)
    frame = src.send(msgs[0])
    bad = mutate(frame, m)
    if bad == frame or not bad:
        return
    try:
        dst.receive_data(bad)
        events = drain(dst)
        if eof:
            dst.receive_data(b"")
            events += drain(dst)
    except RemoteReplError:
        return
    assert all(isinstance(e, (Dropped, Closed)) or e is NEED_DATA for e in events), events


@FUZZ
@given(ftype=st.integers(0, 255), body=st.binary(max_size=200), channel=st.sampled_from(Channel),
       to_acceptor=st.booleans())
def test_authentic_random_bodies_parse_canonically_or_drop(ftype, body, channel, to_acceptor):
    if ftype == MsgType.HELLO:  # a HELLO after the handshake is fatal, tested above
        return
    """A correctly sealed frame with any body: either dropped, or a message whose encoding
    is exactly that body (one encoding per message)."""
    d, a = pair(channel)
    key = spec_key(b"d2a" if to_acceptor else b"a2d", channel=channel)
    dst, src = (a, d) if to_acceptor else (d, a)
    frame = seal(key, ftype, 1, body)
    dst.receive_data(frame)
    ev = dst.next_event()
    if isinstance(ev, Dropped):
        assert ev.reason in ("type", "parse", "channel", "direction")
        return
    assert src.send(ev)[16:-32] == body


@FUZZ
@given(case=ANY_MSG, cuts=st.lists(st.integers(1, 400), max_size=6))
def test_any_split_of_the_stream_gives_the_same_messages(case, cuts):
    (channel, from_dialer), msgs = case
    d, a = pair(channel)
    src, dst = (d, a) if from_dialer else (a, d)
    stream = b"".join(src.send(m) for m in msgs)
    got, pos = [], 0
    for c in cuts + [len(stream)]:
        chunk = stream[pos:pos + c]
        if not chunk:
            break
        dst.receive_data(chunk)
        pos += len(chunk)
        got += [e for e in drain(dst) if e is not NEED_DATA]
    assert got == msgs and dst.buffered == 0


# ---- purity ---------------------------------------------------------------------------------



def test_dataclasses_are_frozen():
    for _, _, msg in SAMPLES.values():
        field = dataclasses.fields(msg)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(msg, field, 1)
