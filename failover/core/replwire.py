"""Sans-IO codec of the replication channel (docs/replication.md, "Replication channel").
Pure: no I/O, no clock.

One TCP connection carries one channel (``Channel.DB`` or ``Channel.FILES``).  The *dialer*
(the sender of the channel) sends a HELLO naming the channel, the *acceptor* (the receiver)
answers with its own HELLO for the same channel, then both sides send sealed frames, each
direction with its own session key and its own ``seq`` counting from 1::

    header  b"VR" | version u8 (=1) | type u8 | length u32      (length = bytes after the header)
    HELLO   node (u8-prefixed ascii, 1..32) | role u8 | channel u8 | nonce 16 | key_id 8 | mac 32
            key_id = HMAC-SHA256(psk, b"vmha-key-id-1")[:8]
            mac = HMAC-SHA256(psk, b"vmha-repl-hello-1" + header + node + role + channel + nonce
                              + key_id)
    sealed  seq u64 | body | mac 32,   mac = HMAC-SHA256(key_dir, header + seq + body)

    key_d2a = HMAC-SHA256(psk, b"vmha-repl-session-1" + b"d2a" + nonce_d + nonce_a
                               + dialer_node + acceptor_node + channel);  key_a2d with b"a2d"

``psk`` is the key the HELLOs use: the connection is given the keys it accepts (``keys``,
1..4); the dialer signs with ``keys[0]``, the acceptor finds the dialer's key by its id among
its keys and answers with the same key.  An acceptor also reads a HELLO of the version before
key ids (no ``key_id``) if one of its keys verifies it, and answers in that form.

Encoding notes where the page is terse (same choices as ``_wire.py``): ``node`` in the HELLO
MAC and in the session keys is the field as encoded on the wire (u8 length prefix + ASCII), so
names cannot run together; ``channel`` is its u8.  A message is only accepted on its channel
and in the direction of the table (the dialer is the sender, the acceptor the receiver; the
``DbSchema`` and ``DbState`` go both ways); ``send()`` refuses the others, the receiver drops
them.

A sealed frame with a bad MAC, a repeated or skipped seq, an unknown type, a message of the
other channel or direction, or a body that does not parse (a bad ``path`` included, see
``check_path``) is returned as ``Dropped`` and counted; the connection carries on.  An
authentic frame in sequence uses up its seq even when its body is then dropped.  A header that
cannot be parsed, a length above ``max_frame``, EOF inside a frame, or anything wrong with a
HELLO raises ``RemoteReplError``: close the connection.

Driver loop: ``receive_data(chunk)`` (``b""`` at EOF), then call ``next_event()`` until it
returns ``NEED_DATA`` or ``Closed`` **before feeding more data**: the buffer of the incomplete
frame never exceeds ``max_frame`` bytes, but complete frames wait in a queue until
``next_event()`` takes them, so only a caller that drains after each ``receive_data()`` keeps
the memory bounded (by ``max_frame`` plus the size of one chunk).
"""
from __future__ import annotations

import hmac
from collections import deque

from construct import ConstructError

from failover.core.fields import KEY_ID_SIZE, MAX_NODE, check_keys, hmac_sha256, key_id
from failover.core.replmsg import (
    BODIES,
    CHANNEL_OF,
    CLASS_OF_TYPE,
    DB_ENTRIES_LAYOUT,
    DB_ENTRY_OVERHEAD,
    DEFAULT_MAX_FRAME,
    DIGEST_SIZE,
    DROP_REASONS,
    FILE_ENTRIES_LAYOUT,
    FILE_ENTRY_OVERHEAD,
    FRAME_OVERHEAD,
    FROM_ACCEPTOR,
    FROM_DIALER,
    HEADER,
    HEADER_SIZE,
    HELLO_BODY,
    HELLO_LABEL,
    LEGACY_HELLO_BODY,
    MAC_SIZE,
    MAGIC,
    MAX_ERROR,
    MAX_MAX_FRAME,
    MAX_PATH,
    MAX_REASON,
    MESSAGE_TYPES,
    MIN_MAX_FRAME,
    NODE_FIELD,
    NONCE_SIZE,
    SEQ_FIELD,
    SESSION_LABEL,
    VERSION,
    Channel,
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
    Hello,
    LocalReplError,
    Message,
    MsgType,
    RemoteReplError,
    ReplError,
    check_max_frame,
    check_path,
    max_changes_bytes,
    max_data,
    max_manifest_bytes,
)
from failover.core.state import Role
from failover.core.wire import Dropped
from telephony.core.framing import (  # the node link's outcome types
    NEED_DATA,
    Closed,
    NeedData,
)

__all__ = [  # the messages (failover.core.replmsg) are part of this codec's interface
    "BODIES", "CHANNEL_OF", "CLASS_OF_TYPE", "Channel", "Closed", "DB_ENTRIES_LAYOUT",
    "DB_ENTRY_OVERHEAD", "DEFAULT_MAX_FRAME", "DIGEST_SIZE", "DROP_REASONS", "DbChanges",
    "DbEntry", "DbSchema", "DbSnapshotBegin", "DbSnapshotChunk", "DbSnapshotRequest", "DbState",
    "Dropped", "FILE_ENTRIES_LAYOUT", "FILE_ENTRY_OVERHEAD", "FRAME_OVERHEAD", "FROM_ACCEPTOR",
    "FROM_DIALER", "FileAck", "FileBegin", "FileChunk", "FileDelete", "FileEnd", "FileEntry",
    "FileManifest", "FileManifestRequest", "FileOffer", "HEADER", "HEADER_SIZE", "HELLO_BODY",
    "HELLO_LABEL", "Hello", "KEY_ID_SIZE", "LEGACY_HELLO_BODY", "LocalReplError", "MAC_SIZE",
    "MAGIC", "MAX_ERROR", "MAX_MAX_FRAME",
    "MAX_NODE", "MAX_PATH", "MAX_REASON", "MESSAGE_TYPES", "MIN_MAX_FRAME", "Message", "MsgType",
    "NEED_DATA", "NODE_FIELD", "NONCE_SIZE", "NeedData", "RemoteReplError", "ReplConnection",
    "ReplError", "SEQ_FIELD", "SESSION_LABEL", "VERSION", "check_max_frame", "check_path",
    "key_id", "max_changes_bytes", "max_data", "max_manifest_bytes", "session_key",
]


def _header(ftype: int, length: int) -> bytes:
    return HEADER.build(dict(type=ftype, length=length))


def session_key(psk: bytes, direction: bytes, nonce_d: bytes, nonce_a: bytes, dialer_node: str,
                acceptor_node: str, channel: Channel) -> bytes:
    """``key_d2a`` (``direction=b"d2a"``) or ``key_a2d`` of a connection."""
    return hmac_sha256(psk, SESSION_LABEL, direction, nonce_d, nonce_a, NODE_FIELD.build(dialer_node),
                NODE_FIELD.build(acceptor_node), bytes([channel]))


# ---- connection -----------------------------------------------------------------------------

class ReplConnection:
    """One replication connection (both directions), from one side's point of view.

    Dialer (``channel`` required): send ``hello()`` first; ``next_event()`` then yields the
    acceptor's ``Hello``, after which ``established`` is true.  Acceptor (``channel`` may be
    None: it adopts the dialer's, see ``channel``; if given, a HELLO for another channel is
    refused): ``next_event()`` yields the dialer's ``Hello``; only then is ``hello()`` valid,
    and its bytes must be sent back.  Once established both sides ``send()`` messages.

    ``keys``: the 1..4 distinct keys this side accepts (a tuple of bytes); a dialer signs with
    ``keys[0]`` and accepts only an answer signed with it; ``key_id`` is the id in use.
    """

    def __init__(self, *, keys: tuple[bytes, ...], node: str, role: Role,
                 channel: Channel | None = None, dialer: bool, nonce: bytes,
                 expected_peer: str | None = None, max_frame: int = DEFAULT_MAX_FRAME):
        keys = check_keys(keys, LocalReplError)
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise LocalReplError(f"nonce must be {NONCE_SIZE} bytes")
        check_max_frame(max_frame)
        if not isinstance(role, Role):
            raise LocalReplError(f"role must be a Role, not {role!r}")
        if not isinstance(dialer, bool):
            raise LocalReplError(f"dialer must be a bool, not {dialer!r}")
        if channel is not None and not isinstance(channel, Channel):
            raise LocalReplError(f"channel must be a Channel or None, not {channel!r}")
        if dialer and channel is None:
            raise LocalReplError("the dialer must name its channel")
        if expected_peer is not None and not isinstance(expected_peer, str):
            raise LocalReplError(f"expected_peer must be a str or None, not {expected_peer!r}")
        self._node_bytes = self._encode(NODE_FIELD, node, "node")
        self._keys = {key_id(k): k for k in keys}
        self._psk: bytes | None = keys[0] if dialer else None  # the HELLO key, once known
        self._legacy = False  # the peer's HELLO had no key id: answer in the same form
        self._node, self._role, self._channel = node, role, channel
        self._dialer, self._nonce = dialer, nonce
        self._expected_peer, self._max_frame = expected_peer, max_frame
        self._peer: Hello | None = None
        self._hello_sent = False
        self._key_out: bytes | None = None
        self._key_in: bytes | None = None
        self._seq_out = 0  # last seq sent
        self._seq_in = 0  # last seq accepted
        self._allowed_in = FROM_ACCEPTOR if dialer else FROM_DIALER
        self._allowed_out = FROM_DIALER if dialer else FROM_ACCEPTOR
        self._buf = bytearray()  # incomplete frame, never more than max_frame bytes
        self._need = 0  # size of the frame in _buf once its header is known
        self._frames: deque[bytes] = deque()  # complete frames not yet returned
        self._eof = False
        self._error: RemoteReplError | None = None  # raised once _frames is empty
        self.last_frame_size = 0  # size of the frame behind the last event from next_event()
        self.counters: dict[str, int] = {"frames_ok": 0}
        self.counters.update((f"dropped_{r}", 0) for r in DROP_REASONS)

    @property
    def peer(self) -> Hello | None:
        """The peer's ``Hello`` once received."""
        return self._peer

    @property
    def channel(self) -> Channel | None:
        """The connection's channel (an acceptor created without one: None until the HELLO)."""
        return self._channel

    @property
    def dialer(self) -> bool:
        return self._dialer

    @property
    def max_frame(self) -> int:
        return self._max_frame

    @property
    def established(self) -> bool:
        return self._key_in is not None and self._hello_sent

    @property
    def key_id(self) -> bytes | None:
        """Id of the key this connection's HELLOs use (the dialer's: from the start; the
        acceptor's: once the dialer's HELLO is verified)."""
        return key_id(self._psk) if self._psk is not None else None

    @property
    def buffered(self) -> int:
        """Bytes of the incomplete frame held (at most ``max_frame``)."""
        return len(self._buf)

    # ---- sending -------------------------------------------------------------------------

    def hello(self) -> bytes:
        """Our HELLO frame (dialer: first thing; acceptor: after the dialer's Hello)."""
        if self._hello_sent:
            raise LocalReplError("hello() already called")
        if not self._dialer and self._peer is None:
            raise LocalReplError("acceptor may only answer after the dialer's HELLO")
        self._hello_sent = True
        kid = b"" if self._legacy else key_id(self._psk)
        length = len(self._node_bytes) + 2 + NONCE_SIZE + len(kid) + MAC_SIZE
        signed = (_header(MsgType.HELLO, length) + self._node_bytes
                  + bytes([self._role, self._channel]) + self._nonce + kid)
        return signed + hmac_sha256(self._psk, HELLO_LABEL, signed)

    def send(self, msg: Message) -> bytes:
        """Frame ``msg`` with the next seq of our direction.  Raises ``LocalReplError`` (and
        uses up no seq) for a message that is invalid, not ours to send on this channel or in
        this direction, or larger than ``max_frame``."""
        if not self.established:
            raise LocalReplError("send() before the handshake completed")
        cls = type(msg)
        ftype = MESSAGE_TYPES.get(cls)
        if ftype is None:
            raise LocalReplError(f"cannot send {cls.__name__}")
        if CHANNEL_OF[cls] is not self._channel:
            raise LocalReplError(f"{cls.__name__} does not belong on the {self._channel.name} "
                                 "channel")
        if cls not in self._allowed_out:
            side = "dialer (sender)" if self._dialer else "acceptor (receiver)"
            raise LocalReplError(f"the {side} never sends {cls.__name__}")
        body = self._encode(BODIES[ftype], vars(msg), cls.__name__)
        length = SEQ_FIELD.sizeof() + len(body) + MAC_SIZE
        if HEADER_SIZE + length > self._max_frame:
            raise LocalReplError(f"{cls.__name__} frame of {HEADER_SIZE + length} bytes is over "
                                 f"max_frame {self._max_frame}")
        if self._seq_out >= 2**64 - 1:
            raise LocalReplError("seq exhausted")
        self._seq_out += 1
        signed = _header(ftype, length) + SEQ_FIELD.build(self._seq_out) + body
        return signed + hmac_sha256(self._key_out, signed)

    @staticmethod
    def _encode(con, value, what: str) -> bytes:
        try:
            return con.build(value)
        except (ConstructError, TypeError, ValueError, OverflowError) as e:
            raise LocalReplError(f"{what}: {e}") from None  # UnicodeError is a ValueError

    # ---- receiving -----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the socket; ``b""`` means EOF.

        Splits the stream into frames and checks their headers.  Complete frames wait for
        ``next_event()``; the incomplete one is buffered (at most ``max_frame`` bytes).
        """
        if self._eof:
            raise LocalReplError("receive_data() after EOF")
        if self._error is not None:
            return  # the stream is already unusable; discard
        if not data:
            self._eof = True
            if self._buf:
                self._error = RemoteReplError(f"EOF inside a frame ({len(self._buf)} bytes)")
            return
        view, pos, end = memoryview(data), 0, len(data)
        while pos < end:
            if not self._need:
                take = min(HEADER_SIZE - len(self._buf), end - pos)
                self._buf += view[pos:pos + take]
                pos += take
                if len(self._buf) < HEADER_SIZE:
                    return
                try:
                    header = HEADER.parse(self._buf)
                except ConstructError:
                    self._fail_stream(f"bad frame header {bytes(self._buf[:4])!r}")
                    return
                if HEADER_SIZE + header.length > self._max_frame:
                    self._fail_stream(f"frame length {header.length} over the limit")
                    return
                self._need = HEADER_SIZE + header.length
            take = min(self._need - len(self._buf), end - pos)
            self._buf += view[pos:pos + take]
            pos += take
            if len(self._buf) == self._need:
                self._frames.append(bytes(self._buf))
                self._buf.clear()
                self._need = 0

    def _fail_stream(self, why: str) -> None:
        self._error = RemoteReplError(why)
        self._buf.clear()
        self._need = 0

    def next_event(self) -> Hello | Message | Dropped | Closed | NeedData:
        """The next event, ``NEED_DATA`` or ``Closed``; raises ``RemoteReplError``."""
        if self._frames:
            frame = self._frames.popleft()
            self.last_frame_size = len(frame)
            return self._process(frame)
        if self._error is not None:
            raise self._error
        return Closed() if self._eof else NEED_DATA

    def _fatal(self, why: str) -> RemoteReplError:
        self._error = RemoteReplError(why)
        self._frames.clear()
        return self._error

    def _process(self, frame: bytes) -> Hello | Message | Dropped:
        ftype = frame[3]
        if ftype == MsgType.HELLO:
            return self._receive_hello(frame)
        if not self.established:
            raise self._fatal("frame before the handshake completed")
        if len(frame) < FRAME_OVERHEAD:
            return self._drop("parse", frame)
        signed = memoryview(frame)[:-MAC_SIZE]
        if not hmac.compare_digest(frame[-MAC_SIZE:], hmac_sha256(self._key_in, signed)):
            return self._drop("mac", frame)
        seq = int.from_bytes(frame[HEADER_SIZE:HEADER_SIZE + 8], "little")
        if seq != self._seq_in + 1:
            return self._drop("seq", frame)
        self._seq_in = seq  # authentic and in order: consumed even if its body is unusable
        cls = CLASS_OF_TYPE.get(ftype)
        if cls is None:
            return self._drop("type", frame)
        if CHANNEL_OF[cls] is not self._channel:
            return self._drop("channel", frame)
        if cls not in self._allowed_in:
            return self._drop("direction", frame)
        try:
            f = BODIES[ftype].parse(signed[HEADER_SIZE + 8:])
        except (ConstructError, ValueError):  # ValueError covers UnicodeDecodeError
            return self._drop("parse", frame)
        self.counters["frames_ok"] += 1
        return cls(**{k: f[k] for k in cls.__dataclass_fields__})

    def _receive_hello(self, frame: bytes) -> Hello:
        if self._peer is not None:
            raise self._fatal("second HELLO on the connection")
        if self._dialer and not self._hello_sent:
            raise self._fatal("HELLO from the acceptor before ours")
        key, f = self._hello_key(frame)
        if self._expected_peer is not None and f.node != self._expected_peer:
            raise self._fatal(f"HELLO from {f.node!r}, expected {self._expected_peer!r}")
        if f.role == self._role or f.nonce == self._nonce or f.node == self._node:
            raise self._fatal("HELLO claims our own role, name or nonce (reflected?)")
        if self._channel is not None and f.channel is not self._channel:
            raise self._fatal(f"HELLO for channel {f.channel.name}, this connection is "
                              f"{self._channel.name}")
        self._psk = key
        self._channel = f.channel
        self._peer = Hello(node=f.node, role=f.role, channel=f.channel, nonce=f.nonce)
        if self._dialer:
            args = (self._nonce, f.nonce, self._node, f.node, self._channel)
            self._key_out = session_key(self._psk, b"d2a", *args)
            self._key_in = session_key(self._psk, b"a2d", *args)
        else:
            args = (f.nonce, self._nonce, f.node, self._node, self._channel)
            self._key_out = session_key(self._psk, b"a2d", *args)
            self._key_in = session_key(self._psk, b"d2a", *args)
        self.counters["frames_ok"] += 1
        return self._peer

    def _hello_key(self, frame: bytes):
        """Parse and verify a HELLO: ``(key, fields)``; the key is the one that signed it."""
        body, signed = frame[HEADER_SIZE:], frame[:-MAC_SIZE]
        layouts = (HELLO_BODY,) if self._dialer else (HELLO_BODY, LEGACY_HELLO_BODY)
        for layout in layouts:
            try:
                f = layout.parse(body)
                break
            except (ConstructError, ValueError):
                continue
        else:
            raise self._fatal("malformed HELLO")
        if "key_id" not in f:  # the version before key ids: any of our keys may verify it
            for key in self._keys.values():
                if hmac.compare_digest(f.mac, hmac_sha256(key, HELLO_LABEL, signed)):
                    self._legacy = True
                    return key, f
            raise self._fatal("HELLO (without key id) MAC mismatch: signed with a key we do not "
                              "accept")
        key = self._keys.get(f.key_id)
        if key is None or (self._dialer and key != self._psk):
            raise self._fatal(f"HELLO signed with key id {f.key_id.hex()}, which we do not "
                              f"accept (ours: {', '.join(k.hex() for k in self._keys)})")
        if not hmac.compare_digest(f.mac, hmac_sha256(key, HELLO_LABEL, signed)):
            raise self._fatal(f"HELLO MAC mismatch for key id {f.key_id.hex()}")
        return key, f

    def _drop(self, reason: str, frame: bytes) -> Dropped:
        self.counters[f"dropped_{reason}"] += 1
        return Dropped(reason, len(frame))
