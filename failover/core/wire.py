"""Sans-IO codec for the node link (docs/design.md, "Node link").  Pure: no I/O, no clock.

Each TCP connection carries one direction.  The *dialer* sends HELLO, the *acceptor* answers
with its own HELLO, then only the dialer sends STATUS/COMMAND frames, authenticated with a
per-connection session key and a strictly increasing ``seq``.

Encoding notes where the design is terse: ``node`` in the HELLO MAC and in the session key
is the field as encoded on the wire (u8 length prefix + ASCII), so names cannot run together;
node names are 1..32 ASCII characters; the 4 unused flag bits must be zero.

Keys: a connection is given the keys it accepts (``keys``, 1..4; docs/configuration.md, "The
key file").  The dialer signs its HELLO with ``keys[0]`` and names it by its id (``key_id``);
the acceptor looks the id up among its keys, verifies the HELLO with that key, derives the
session key from it and answers with the same key.  A HELLO of the version before key ids
(no id: 32 bytes after the nonce instead of 40) is accepted by an acceptor if one of its keys
verifies it, and answered in the same form, so a node of that version can still dial in.

Driver loop: ``receive_data(chunk)`` (``b""`` at EOF), then call ``next_event()`` until it
returns ``NEED_DATA`` or ``Closed``.  ``RemoteLinkError`` means close the connection.
"""
from __future__ import annotations

import hmac
import struct
from collections import deque
from dataclasses import dataclass
from enum import IntEnum

from construct import (
    BitsInteger,
    BitStruct,
    Bytes,
    Const,
    ConstructError,
    ExprValidator,
    Flag,
    GreedyBytes,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    PascalString,
    Struct,
    Terminated,
)

from failover.core.events import PeerHeartbeat
from failover.core.fields import KEY_ID_SIZE, MAX_NODE, NODE_FIELD, EnumField, check_keys, hmac_sha256, key_id
from failover.core.state import Mode, Role, ServiceHealth, State
from telephony.core.framing import NEED_DATA, Closed, NeedData  # Closed: clean EOF at a frame boundary

MAGIC = b"VM"
VERSION = 1
MAX_FRAME = 256  # whole frame, header included
NONCE_SIZE = 16
MAC_SIZE = 32
MAX_REASON = 120
DIRECTION = b"d2a"
_HELLO_LABEL = b"vmha-hello-1"
_SESSION_LABEL = b"vmha-session-1"


class FrameType(IntEnum):
    HELLO = 1
    STATUS = 2
    COMMAND = 3


class CommandKind(IntEnum):
    STEP_DOWN = 1  # the sender took over in a newer term: stop being active
    TAKE_OVER = 2  # be active: from an active sender a handover; from an inactive one "stay active"
    YIELD = 3  # like STEP_DOWN, and stay on hold (operator or scheduled move)
    HAND_OVER = 4  # the sender (inactive) asks the active peer for a planned handover to it


_REASON = ExprValidator(PascalString(Int8ul, "utf8"), lambda obj, ctx: isinstance(obj, str)
                        and len(obj.encode("utf-8", "replace")) <= MAX_REASON)

HEADER = Struct("magic" / Const(MAGIC), "version" / Const(VERSION, Int8ul),
                "type" / Int8ul, "length" / Int16ul)  # length = bytes after the header
HEADER_SIZE = HEADER.sizeof()
_SEQ = Int64ul
_SEALED_OVERHEAD = _SEQ.sizeof() + MAC_SIZE  # seq before the body, mac after it

HELLO_BODY = Struct("node" / NODE_FIELD, "role" / EnumField(Role), "nonce" / Bytes(NONCE_SIZE),
                    "key_id" / Bytes(KEY_ID_SIZE), "mac" / Bytes(MAC_SIZE), Terminated)
#: the HELLO of the version before key ids (read by an acceptor, see the module docstring)
LEGACY_HELLO_BODY = Struct("node" / NODE_FIELD, "role" / EnumField(Role),
                           "nonce" / Bytes(NONCE_SIZE), "mac" / Bytes(MAC_SIZE), Terminated)
_FLAGS = BitStruct(Const(0, BitsInteger(4)), "shutting_down" / Flag, "hold" / Flag,
                   "licensed" / Flag, "eligible" / Flag)  # first field = most significant bit
_STATUS_FIELDS = (
    "node" / NODE_FIELD, "role" / EnumField(Role), "state" / EnumField(State), "term" / Int64ul,
    "service" / EnumField(ServiceHealth), "mode" / EnumField(Mode), "flags" / _FLAGS,
    "calls" / Int16ul, "ports" / Int16ul, "repl_pos" / Int64ul,
    "ping_interval_ms" / Int32ul, "uptime_ms" / Int64ul)
STATUS_BODY = Struct(*_STATUS_FIELDS, "settings" / Int64ul,
                     "health" / ExprValidator(Int8ul, lambda obj, ctx: obj <= 100), Terminated)
# Reading is lenient at the end only: a body that stops after uptime_ms (the version before
# ``settings``) reads as settings 0, one that stops after ``settings`` (the version before
# ``health``) as health 100, and bytes after ``health`` (fields a later version appends) are
# ignored; 1 to 7 bytes after uptime_ms, or a health over 100, are a parse error.  The frame
# is authenticated.
_STATUS_READ = Struct(*_STATUS_FIELDS, "rest" / GreedyBytes)
COMMAND_BODY = Struct("kind" / EnumField(CommandKind), "term" / Int64ul,
                      "reason" / _REASON, Terminated)
_FLAG_NAMES = ("eligible", "licensed", "hold", "shutting_down")
# The same STATUS body by ``struct``: a heartbeat goes each way every ping interval, and
# ``construct`` costs several times more per frame.  Built bytes and values read are equal
# to ``STATUS_BODY``'s and ``_STATUS_READ``'s (tests/failover/core/test_wire.py checks);
# whatever the fast path does not take (a bad value, a short or odd body) goes through
# ``construct``, which says what is wrong.
_STATUS_FIXED = struct.Struct("<BBQBBBHHQIQ")  # role .. uptime_ms, after the node field
_STATUS_TAIL = struct.Struct("<QB")  # settings, health
_HEADER_FAST = struct.Struct("<2sBBH")  # HEADER: magic, version, type, length


def _build_status(msg: Status) -> bytes | None:
    """STATUS_BODY.build of ``msg``, or None to let construct build it (and say what is wrong)."""
    try:
        node = msg.node.encode("ascii")
        if not 0 < len(node) <= MAX_NODE or not 0 <= msg.health <= 100:
            return None
        flags = msg.shutting_down << 3 | msg.hold << 2 | msg.licensed << 1 | msg.eligible
        return (bytes((len(node),)) + node
                + _STATUS_FIXED.pack(Role(msg.role), State(msg.state), msg.term,
                                     ServiceHealth(msg.service), Mode(msg.mode), flags, msg.calls,
                                     msg.ports, msg.repl_pos, msg.ping_interval_ms, msg.uptime_ms)
                + _STATUS_TAIL.pack(msg.settings, msg.health))
    except (struct.error, ValueError, TypeError, AttributeError):  # UnicodeError is a ValueError
        return None


def _read_status(body: bytes) -> Status | None:
    """``_STATUS_READ`` of ``body`` as a Status (the lenient end included), or None to let
    construct read it (a body it refuses is dropped as ``parse``)."""
    try:
        size = body[0]
        if not 0 < size <= MAX_NODE:
            return None
        node = body[1:1 + size].decode("ascii")
        at = 1 + size
        (role, state, term, service, mode, flags, calls, ports, repl_pos, ping_ms,
         uptime_ms) = _STATUS_FIXED.unpack_from(body, at)
        rest = body[at + _STATUS_FIXED.size:]
        if flags > 0x0F or 0 < len(rest) < 8 or (len(rest) > 8 and rest[8] > 100):
            return None
        return Status(node=node, role=Role(role), state=State(state), term=term,
                      service=ServiceHealth(service), mode=Mode(mode), eligible=bool(flags & 1),
                      licensed=bool(flags & 2), hold=bool(flags & 4), shutting_down=bool(flags & 8),
                      calls=calls, health=rest[8] if len(rest) > 8 else 100, ports=ports,
                      repl_pos=repl_pos, ping_interval_ms=ping_ms, uptime_ms=uptime_ms,
                      settings=int.from_bytes(rest[:8], "little"))
    except (struct.error, ValueError, IndexError):  # UnicodeDecodeError is a ValueError
        return None
# Largest legal frame (a COMMAND with a 120-byte reason); max_frame may not be below it.
_LARGEST_FRAME = HEADER_SIZE + _SEALED_OVERHEAD + 1 + 8 + 1 + MAX_REASON


@dataclass(frozen=True)
class Hello:
    node: str
    role: Role
    nonce: bytes


@dataclass(frozen=True, kw_only=True)
class Status(PeerHeartbeat):
    """STATUS: the heartbeat's fields, then what the frame adds."""

    ports: int
    repl_pos: int
    ping_interval_ms: int
    uptime_ms: int
    settings: int = 0  # digest of the settings both nodes must share (0: not said)


@dataclass(frozen=True)
class Command:
    kind: CommandKind
    term: int
    reason: str


@dataclass(frozen=True)
class Dropped:
    """A frame that was rejected and ignored; the connection carries on."""
    reason: str  # one of DROP_REASONS
    size: int    # whole frame, bytes


DROP_REASONS = ("mac", "seq", "type", "parse", "node", "direction")


class LinkError(Exception):
    """Base class of the node link errors."""


class LocalLinkError(LinkError):
    """This side misused the connection (bad argument, wrong moment)."""


class RemoteLinkError(LinkError):
    """The peer broke the protocol beyond repair: close the connection."""


def _header(ftype: FrameType, length: int) -> bytes:
    return _HEADER_FAST.pack(MAGIC, VERSION, ftype, length)  # = HEADER.build


class LinkConnection:
    """One direction of the node link, from one side's point of view.

    Dialer: send ``hello()`` first; ``next_event()`` then yields the acceptor's ``Hello``,
    after which ``established`` is true and ``send()`` works.  Acceptor: ``next_event()``
    yields the dialer's ``Hello``; only then is ``hello()`` valid, and its bytes must be sent
    back.  The acceptor only receives STATUS/COMMAND; the dialer only sends them.

    ``keys``: the 1..4 distinct keys this side accepts (a tuple of bytes); a dialer signs with
    ``keys[0]`` and accepts only an answer signed with it; ``key_id`` is the id in use.
    """

    def __init__(self, *, keys: tuple[bytes, ...], node: str, role: Role, dialer: bool, nonce: bytes,
                 expected_peer: str | None = None, max_frame: int = MAX_FRAME):
        keys = check_keys(keys, LocalLinkError)
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise LocalLinkError(f"nonce must be {NONCE_SIZE} bytes")
        if not _LARGEST_FRAME <= max_frame <= HEADER_SIZE + 0xFFFF:
            raise LocalLinkError(f"max_frame must be in {_LARGEST_FRAME}..{HEADER_SIZE + 0xFFFF}")
        if not isinstance(role, Role):
            raise LocalLinkError(f"role must be a Role, not {role!r}")
        self._node_bytes = self._encode(NODE_FIELD, node, "node")
        self._keys = {key_id(k): k for k in keys}
        self._psk: bytes | None = keys[0] if dialer else None  # the HELLO key, once known
        self._legacy = False  # the peer's HELLO had no key id: answer in the same form
        self._node, self._role = node, role
        self._dialer, self._nonce = dialer, nonce
        self._expected_peer, self._max_frame = expected_peer, max_frame
        self._peer: Hello | None = None
        self._hello_sent = False
        self._key: bytes | None = None
        self._seq = 0  # last seq sent (dialer) or accepted (acceptor)
        self._buf = bytearray()  # incomplete frame, always < max_frame bytes
        self._frames: deque[bytes] = deque()  # complete frames not yet returned
        self._eof = False
        self._error: RemoteLinkError | None = None  # raised once _frames is empty
        self.counters: dict[str, int] = {"frames_ok": 0}
        self.counters.update((f"dropped_{r}", 0) for r in DROP_REASONS)

    @property
    def peer(self) -> str | None:
        return self._peer.node if self._peer else None

    @property
    def established(self) -> bool:
        return self._key is not None and self._hello_sent

    @property
    def key_id(self) -> bytes | None:
        """Id of the key this connection's HELLOs use (the dialer's: from the start; the
        acceptor's: once the dialer's HELLO is verified)."""
        return key_id(self._psk) if self._psk is not None else None

    # ---- sending -------------------------------------------------------------------------

    def hello(self) -> bytes:
        """Our HELLO frame (dialer: first thing; acceptor: after the dialer's Hello)."""
        if self._hello_sent:
            raise LocalLinkError("hello() already called")
        if not self._dialer and self._peer is None:
            raise LocalLinkError("acceptor may only answer after the dialer's HELLO")
        self._hello_sent = True
        kid = b"" if self._legacy else key_id(self._psk)
        length = len(self._node_bytes) + 1 + NONCE_SIZE + len(kid) + MAC_SIZE
        signed = _header(FrameType.HELLO, length) + self._node_bytes + bytes([self._role])
        signed += self._nonce + kid
        return signed + hmac_sha256(self._psk, _HELLO_LABEL, signed)

    def send(self, msg: Status | Command) -> bytes:
        """Frame ``msg`` with the next seq.  Dialer only, once established."""
        if not self._dialer:
            raise LocalLinkError("the acceptor never sends STATUS/COMMAND")
        if not self.established:
            raise LocalLinkError("send() before the handshake completed")
        if isinstance(msg, Status):
            if msg.node != self._node:
                raise LocalLinkError(f"Status.node {msg.node!r} is not this node {self._node!r}")
            for name in _FLAG_NAMES:
                if not isinstance(getattr(msg, name), bool):
                    raise LocalLinkError(f"Status.{name} must be a bool")
            body = _build_status(msg)
            if body is None:
                fields = {k: v for k, v in vars(msg).items() if k not in _FLAG_NAMES}
                fields["flags"] = {name: getattr(msg, name) for name in _FLAG_NAMES}
                body = self._encode(STATUS_BODY, fields, "Status")
            ftype = FrameType.STATUS
        elif isinstance(msg, Command):
            ftype, body = FrameType.COMMAND, self._encode(COMMAND_BODY, vars(msg), "Command")
        else:
            raise LocalLinkError(f"cannot send {type(msg).__name__}")
        length = _SEQ.sizeof() + len(body) + MAC_SIZE
        if HEADER_SIZE + length > self._max_frame or self._seq >= 2**64 - 1:
            raise LocalLinkError("frame too large or seq exhausted")
        self._seq += 1
        signed = _header(ftype, length) + self._seq.to_bytes(8, "little") + body  # _SEQ
        return signed + hmac_sha256(self._key, DIRECTION, signed)

    @staticmethod
    def _encode(con, value, what: str) -> bytes:
        try:
            return con.build(value)
        except (ConstructError, TypeError, ValueError) as e:  # UnicodeError is a ValueError
            raise LocalLinkError(f"{what}: {e}") from None

    # ---- receiving -----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the socket; ``b""`` means EOF.

        Splits the stream into frames and checks their headers.  Complete frames wait for
        ``next_event()``; at most one incomplete frame (< max_frame bytes) is buffered.
        """
        if self._eof:
            raise LocalLinkError("receive_data() after EOF")
        if self._error is not None:
            return  # the stream is already unusable; discard
        if not data:
            self._eof = True
            if self._buf:
                self._error = RemoteLinkError(f"EOF inside a frame ({len(self._buf)} bytes)")
            return
        self._buf += data
        while len(self._buf) >= HEADER_SIZE:
            magic, version, _, length = _HEADER_FAST.unpack_from(self._buf)  # as HEADER.parse
            if magic != MAGIC or version != VERSION:
                self._error = RemoteLinkError(f"bad frame header {bytes(self._buf[:4])!r}")
                self._buf.clear()
                return
            size = HEADER_SIZE + length
            if size > self._max_frame:
                self._error = RemoteLinkError(f"frame length {length} over the limit")
                self._buf.clear()
                return
            if len(self._buf) < size:
                return
            self._frames.append(bytes(self._buf[:size]))
            del self._buf[:size]

    def next_event(self) -> Hello | Status | Command | Dropped | Closed | NeedData:
        """The next event, ``NEED_DATA`` or ``Closed``; raises ``RemoteLinkError``."""
        if self._frames:
            return self._process(self._frames.popleft())
        if self._error is not None:
            raise self._error
        return Closed() if self._eof else NEED_DATA

    def _process(self, frame: bytes) -> Hello | Status | Command | Dropped:
        ftype = frame[3]
        if ftype == FrameType.HELLO:
            return self._receive_hello(frame)
        if not self.established:
            self._error = RemoteLinkError("frame before the handshake completed")
            self._frames.clear()
            raise self._error
        if self._dialer:
            return self._drop("direction", frame)
        if len(frame) < HEADER_SIZE + _SEALED_OVERHEAD:
            return self._drop("parse", frame)
        signed, mac = frame[:-MAC_SIZE], frame[-MAC_SIZE:]
        if not hmac.compare_digest(mac, hmac_sha256(self._key, DIRECTION, signed)):
            return self._drop("mac", frame)
        seq = int.from_bytes(frame[HEADER_SIZE:HEADER_SIZE + _SEQ.sizeof()], "little")  # _SEQ
        if seq != self._seq + 1:
            return self._drop("seq", frame)
        self._seq = seq  # authentic and in order: consumed even if its body is unusable
        body = signed[HEADER_SIZE + _SEQ.sizeof():]
        try:
            if ftype == FrameType.STATUS and (event := _read_status(body)) is not None:
                pass
            elif ftype == FrameType.STATUS:
                f = _STATUS_READ.parse(body)
                if 0 < len(f.rest) < 8 or (len(f.rest) > 8 and f.rest[8] > 100):
                    return self._drop("parse", frame)
                f.settings = int.from_bytes(f.rest[:8], "little")
                f.health = f.rest[8] if len(f.rest) > 8 else 100
                event = Status(**{k: f[k] for k in Status.__dataclass_fields__
                                  if k not in _FLAG_NAMES},
                               **{k: f.flags[k] for k in _FLAG_NAMES})
            elif ftype == FrameType.COMMAND:
                f = COMMAND_BODY.parse(body)
                event = Command(kind=f.kind, term=f.term, reason=f.reason)
            else:
                return self._drop("type", frame)
        except (ConstructError, ValueError):  # ValueError covers UnicodeDecodeError
            return self._drop("parse", frame)
        if isinstance(event, Status) and event.node != self._peer.node:
            return self._drop("node", frame)
        self.counters["frames_ok"] += 1
        return event

    def _receive_hello(self, frame: bytes) -> Hello:
        def fail(why: str) -> RemoteLinkError:
            self._error = RemoteLinkError(why)
            self._frames.clear()
            return self._error

        if self._peer is not None:
            raise fail("second HELLO on the connection")
        if self._dialer and not self._hello_sent:
            raise fail("HELLO from the acceptor before ours")
        body = frame[HEADER_SIZE:]
        try:
            f = HELLO_BODY.parse(body)
        except (ConstructError, ValueError):
            f = None
        if f is None and not self._dialer:
            try:
                f = LEGACY_HELLO_BODY.parse(body)
            except (ConstructError, ValueError):
                pass
        if f is None:
            raise fail("malformed HELLO")
        signed = frame[:-MAC_SIZE]
        if "key_id" not in f:  # the version before key ids: any of our keys may verify it
            key = next((k for k in self._keys.values()
                        if hmac.compare_digest(f.mac, hmac_sha256(k, _HELLO_LABEL, signed))), None)
            if key is None:
                raise fail("HELLO (without key id) MAC mismatch: signed with a key we do not accept")
            self._legacy = True
        else:
            key = self._keys.get(f.key_id)
            if key is None or (self._dialer and key != self._psk):
                raise fail(f"HELLO signed with key id {f.key_id.hex()}, which we do not accept "
                           f"(ours: {', '.join(k.hex() for k in self._keys)})")
            if not hmac.compare_digest(f.mac, hmac_sha256(key, _HELLO_LABEL, signed)):
                raise fail(f"HELLO MAC mismatch for key id {f.key_id.hex()}")
        if self._expected_peer is not None and f.node != self._expected_peer:
            raise fail(f"HELLO from {f.node!r}, expected {self._expected_peer!r}")
        if f.role == self._role or f.nonce == self._nonce or f.node == self._node:
            raise fail("HELLO claims our own role, name or nonce (reflected?)")
        self._psk = key
        self._peer = Hello(node=f.node, role=f.role, nonce=f.nonce)
        peer_node = NODE_FIELD.build(f.node)
        if self._dialer:
            seed = self._nonce + f.nonce + self._node_bytes + peer_node
        else:
            seed = f.nonce + self._nonce + peer_node + self._node_bytes
        self._key = hmac_sha256(self._psk, _SESSION_LABEL, seed)
        self.counters["frames_ok"] += 1
        return self._peer

    def _drop(self, reason: str, frame: bytes) -> Dropped:
        self.counters[f"dropped_{reason}"] += 1
        return Dropped(reason, len(frame))
