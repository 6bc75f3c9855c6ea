"""Sans-IO codec of the replication channel (docs/replication.md, "Replication channel").
Pure: no I/O, no clock.

One TCP connection carries one channel (``Channel.DB`` or ``Channel.FILES``).  The *dialer*
(the sender of the channel) sends a HELLO naming the channel, the *acceptor* (the receiver)
answers with its own HELLO for the same channel, then both sides send sealed frames, each
direction with its own session key and its own ``seq`` counting from 1::

    header  b"VR" | version u8 (=1) | type u8 | length u32      (length = bytes after the header)
    HELLO   node (u8-prefixed ascii, 1..32) | role u8 | channel u8 | nonce 16 | mac 32
            mac = HMAC-SHA256(psk, b"vmha-repl-hello-1" + header + node + role + channel + nonce)
    sealed  seq u64 | body | mac 32,   mac = HMAC-SHA256(key_dir, header + seq + body)

    key_d2a = HMAC-SHA256(psk, b"vmha-repl-session-1" + b"d2a" + nonce_d + nonce_a
                               + dialer_node + acceptor_node + channel);  key_a2d with b"a2d"

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

import hashlib
import hmac
from collections import deque
from dataclasses import dataclass
from enum import IntEnum

from construct import (
    Adapter, Bytes, Const, Construct, ConstructError, ExprValidator, GreedyBytes, Int8ul, Int16ul,
    Int32ul, Int64ul, MappingError, PascalString, Prefixed, PrefixedArray, Struct, Terminated,
    ValidationError,
)
from construct.core import stream_read, stream_write

from failover.core.state import Role
from failover.core.wire import Dropped
from telephony.core.framing import NEED_DATA, Closed, NeedData  # the node link's outcome types

MAGIC = b"VR"
VERSION = 1
NONCE_SIZE = 16
MAC_SIZE = 32
DIGEST_SIZE = 32
MAX_NODE = 32
MAX_REASON = 120  # DbSnapshotRequest.reason, UTF-8 bytes
MAX_ERROR = 200  # FileAck.error, UTF-8 bytes
MAX_PATH = 1024  # UTF-8 bytes
KIB, MIB = 1024, 1024 * 1024
DEFAULT_MAX_FRAME = 4 * MIB
MIN_MAX_FRAME = 64 * KIB
MAX_MAX_FRAME = 64 * MIB
_HELLO_LABEL = b"vmha-repl-hello-1"
_SESSION_LABEL = b"vmha-repl-session-1"


class Channel(IntEnum):
    DB = 1
    FILES = 2


class MsgType(IntEnum):
    HELLO = 1
    DB_STATE = 2
    DB_CHANGES = 3
    DB_SNAPSHOT_REQUEST = 4
    DB_SNAPSHOT_BEGIN = 5
    DB_SNAPSHOT_CHUNK = 6
    FILE_MANIFEST_REQUEST = 7
    FILE_MANIFEST = 8
    FILE_BEGIN = 9
    FILE_OFFER = 10
    FILE_CHUNK = 11
    FILE_END = 12
    FILE_DELETE = 13
    FILE_ACK = 14
    DB_SCHEMA = 15


# ---- errors ---------------------------------------------------------------------------------

class ReplError(Exception):
    """Base class of the replication channel errors."""


class LocalReplError(ReplError):
    """This side misused the connection (bad argument, wrong moment, message too large)."""


class RemoteReplError(ReplError):
    """The peer broke the protocol beyond repair: close the connection."""


# ---- paths ----------------------------------------------------------------------------------

def check_path(path: str) -> str:
    """Return ``path`` if it is a replicated path, else raise ``ValueError`` saying why.

    A path is relative POSIX (``dir/name``), at most 1024 bytes of UTF-8, with no empty, ``.``
    or ``..`` component, no leading ``/``, no NUL and no backslash.
    """
    if not isinstance(path, str):
        raise ValueError(f"path must be a str, not {type(path).__name__}")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeError:
        raise ValueError(f"path {path!r} is not encodable as UTF-8") from None
    if size == 0:
        raise ValueError("path is empty")
    if size > MAX_PATH:
        raise ValueError(f"path is {size} bytes of UTF-8, more than {MAX_PATH}")
    if "\x00" in path:
        raise ValueError(f"path {path!r} contains a NUL character")
    if "\\" in path:
        raise ValueError(f"path {path!r} contains a backslash")
    if path.startswith("/"):
        raise ValueError(f"path {path!r} is absolute (leading '/')")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"path {path!r} has an empty, '.' or '..' component")
    return path


# ---- construct fields -----------------------------------------------------------------------

class _EnumField(Adapter):
    """u8 mapped to an IntEnum; an unknown value is a parse error."""

    def __init__(self, enum: type[IntEnum]):
        super().__init__(Int8ul)
        self.enum = enum

    def _decode(self, obj, context, path):
        try:
            return self.enum(obj)
        except ValueError:
            raise MappingError(f"no {self.enum.__name__} {obj}", path=path) from None

    def _encode(self, obj, context, path):
        if not isinstance(obj, self.enum):
            raise MappingError(f"{obj!r} is not a {self.enum.__name__}", path=path)
        return int(obj)


class _Bool(Adapter):
    """u8 that must be 0 or 1; only a real ``bool`` is built."""

    def __init__(self):
        super().__init__(Int8ul)

    def _decode(self, obj, context, path):
        if obj not in (0, 1):
            raise ValidationError(f"bool byte {obj} is not 0 or 1", path=path)
        return obj == 1

    def _encode(self, obj, context, path):
        if not isinstance(obj, bool):
            raise ValidationError(f"{obj!r} is not a bool", path=path)
        return int(obj)


class _Text(Adapter):
    """u8-prefixed UTF-8 of at most ``limit`` bytes."""

    def __init__(self, limit: int):
        super().__init__(PascalString(Int8ul, "utf8"))
        self.limit = limit

    def _check(self, obj, path):
        if not isinstance(obj, str):
            raise ValidationError(f"{obj!r} is not a str", path=path)
        if len(obj.encode("utf-8")) > self.limit:
            raise ValidationError(f"text longer than {self.limit} bytes of UTF-8", path=path)
        return obj

    def _decode(self, obj, context, path):
        return self._check(obj, path)

    def _encode(self, obj, context, path):
        return self._check(obj, path)


class _Path(Adapter):
    """u16-prefixed UTF-8 obeying ``check_path``."""

    def __init__(self):
        super().__init__(PascalString(Int16ul, "utf8"))

    def _check(self, obj, path):
        try:
            return check_path(obj)
        except ValueError as e:
            raise ValidationError(str(e), path=path) from None

    def _decode(self, obj, context, path):
        return self._check(obj, path)

    def _encode(self, obj, context, path):
        return self._check(obj, path)


class _Blob(Adapter):
    """u32-prefixed bytes; parsed as ``bytes``."""

    def __init__(self):
        super().__init__(Prefixed(Int32ul, GreedyBytes))

    def _decode(self, obj, context, path):
        return bytes(obj)

    def _encode(self, obj, context, path):
        if not isinstance(obj, (bytes, bytearray, memoryview)):
            raise ValidationError(f"{type(obj).__name__} is not bytes", path=path)
        return bytes(obj)


class _Digest(Adapter):
    def __init__(self):
        super().__init__(Bytes(DIGEST_SIZE))

    def _decode(self, obj, context, path):
        return obj

    def _encode(self, obj, context, path):
        if not isinstance(obj, bytes) or len(obj) != DIGEST_SIZE:
            raise ValidationError(f"a digest is exactly {DIGEST_SIZE} bytes", path=path)
        return obj


_NODE = ExprValidator(PascalString(Int8ul, "ascii"),
                      lambda obj, ctx: isinstance(obj, str) and 0 < len(obj) <= MAX_NODE)
_U32, _U64 = Int32ul, Int64ul
_BOOL, _DIGEST, _DATA, _PATH = _Bool(), _Digest(), _Blob(), _Path()

HEADER = Struct("magic" / Const(MAGIC), "version" / Const(VERSION, Int8ul),
                "type" / Int8ul, "length" / Int32ul)  # length = bytes after the header
HEADER_SIZE = HEADER.sizeof()  # 8
_SEQ = Int64ul
FRAME_OVERHEAD = HEADER_SIZE + _SEQ.sizeof() + MAC_SIZE  # 48: a sealed frame minus its body

HELLO_BODY = Struct("node" / _NODE, "role" / _EnumField(Role), "channel" / _EnumField(Channel),
                    "nonce" / Bytes(NONCE_SIZE), "mac" / Bytes(MAC_SIZE), Terminated)
_CHUNK_FIXED = _U32.sizeof() + _U64.sizeof() + _U32.sizeof()  # id, offset, data length
DB_ENTRY_OVERHEAD = 8 + 8 + DIGEST_SIZE + 4  # 52: one DbEntry in a DbChanges minus its changeset
FILE_ENTRY_OVERHEAD = 2 + 8 + DIGEST_SIZE + 8 + 8  # 58: one FileEntry minus its path's UTF-8
_LIST_FIXED = 4  # entry count


def _check_max_frame(max_frame: int) -> int:
    if (not isinstance(max_frame, int) or isinstance(max_frame, bool)
            or not MIN_MAX_FRAME <= max_frame <= MAX_MAX_FRAME):
        raise LocalReplError(f"max_frame must be an int in {MIN_MAX_FRAME}..{MAX_MAX_FRAME}, "
                             f"not {max_frame!r}")
    return max_frame


def max_data(max_frame: int = DEFAULT_MAX_FRAME) -> int:
    """Largest ``data`` of a ``DbSnapshotChunk`` or ``FileChunk`` that fits in one frame."""
    return _check_max_frame(max_frame) - FRAME_OVERHEAD - _CHUNK_FIXED


def max_changes_bytes(max_frame: int = DEFAULT_MAX_FRAME) -> int:
    """Budget of one ``DbChanges``: the sum over its entries of
    ``DB_ENTRY_OVERHEAD + len(changeset)`` may be at most this."""
    return _check_max_frame(max_frame) - FRAME_OVERHEAD - _LIST_FIXED


def max_manifest_bytes(max_frame: int = DEFAULT_MAX_FRAME) -> int:
    """Budget of one ``FileManifest``: the sum over its entries of
    ``FILE_ENTRY_OVERHEAD + len(path.encode())`` may be at most this."""
    return _check_max_frame(max_frame) - FRAME_OVERHEAD - _U32.sizeof() - 1 - _LIST_FIXED


# ---- events ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hello:
    node: str
    role: Role
    channel: Channel
    nonce: bytes


@dataclass(frozen=True)
class DbSchema:
    """The configuration database schema version of the sending program; the first message
    of each side of a DB session.  Changes and snapshots flow only between equal versions."""
    version: int


@dataclass(frozen=True)
class DbState:
    head_seq: int
    head_term: int
    first_seq: int
    applied_seq: int
    applied_term: int
    checksum: int  # u64
    active: bool


@dataclass(frozen=True)
class DbEntry:
    term: int
    seq: int
    digest: bytes  # 32 bytes
    changeset: bytes


@dataclass(frozen=True)
class DbChanges:
    entries: tuple[DbEntry, ...]


@dataclass(frozen=True)
class DbSnapshotRequest:
    head_seq: int
    reason: str  # at most 120 bytes of UTF-8


@dataclass(frozen=True)
class DbSnapshotBegin:
    snapshot_id: int
    head_seq: int
    head_term: int
    applied_seq: int
    applied_term: int
    checksum: int
    size: int
    digest: bytes


@dataclass(frozen=True)
class DbSnapshotChunk:
    snapshot_id: int
    offset: int
    data: bytes


@dataclass(frozen=True)
class FileManifestRequest:
    request_id: int


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    digest: bytes
    version_term: int
    version_seq: int


@dataclass(frozen=True)
class FileManifest:
    request_id: int
    last: bool
    entries: tuple[FileEntry, ...]


@dataclass(frozen=True)
class FileBegin:
    transfer_id: int
    path: str
    size: int
    digest: bytes
    version_term: int
    version_seq: int
    wait_offer: bool


@dataclass(frozen=True)
class FileOffer:
    transfer_id: int
    offset: int


@dataclass(frozen=True)
class FileChunk:
    transfer_id: int
    offset: int
    data: bytes


@dataclass(frozen=True)
class FileEnd:
    transfer_id: int


@dataclass(frozen=True)
class FileDelete:
    transfer_id: int
    path: str
    version_term: int
    version_seq: int


@dataclass(frozen=True)
class FileAck:
    transfer_id: int
    path: str
    ok: bool
    error: str  # at most 200 bytes of UTF-8


DROP_REASONS = ("mac", "seq", "type", "parse", "channel", "direction")

Message = (DbSchema | DbState | DbChanges | DbSnapshotRequest | DbSnapshotBegin | DbSnapshotChunk
           | FileManifestRequest | FileManifest | FileBegin | FileOffer | FileChunk | FileEnd
           | FileDelete | FileAck)
MESSAGE_TYPES: dict[type, MsgType] = {
    DbSchema: MsgType.DB_SCHEMA, DbState: MsgType.DB_STATE, DbChanges: MsgType.DB_CHANGES,
    DbSnapshotRequest: MsgType.DB_SNAPSHOT_REQUEST, DbSnapshotBegin: MsgType.DB_SNAPSHOT_BEGIN,
    DbSnapshotChunk: MsgType.DB_SNAPSHOT_CHUNK,
    FileManifestRequest: MsgType.FILE_MANIFEST_REQUEST, FileManifest: MsgType.FILE_MANIFEST,
    FileBegin: MsgType.FILE_BEGIN, FileOffer: MsgType.FILE_OFFER, FileChunk: MsgType.FILE_CHUNK,
    FileEnd: MsgType.FILE_END, FileDelete: MsgType.FILE_DELETE, FileAck: MsgType.FILE_ACK,
}
_CLASSES = {t: cls for cls, t in MESSAGE_TYPES.items()}
CHANNEL_OF: dict[type, Channel] = {
    cls: Channel.DB if cls.__name__.startswith("Db") else Channel.FILES for cls in MESSAGE_TYPES}
# who may send what (docs/replication.md, "direction"): the dialer is the channel's sender
FROM_DIALER = frozenset({DbSchema, DbState, DbChanges, DbSnapshotBegin, DbSnapshotChunk,
                         FileManifestRequest, FileBegin, FileChunk, FileEnd, FileDelete})
FROM_ACCEPTOR = frozenset({DbSchema, DbState, DbSnapshotRequest, FileManifest, FileOffer, FileAck})


# Reference layouts of the entry lists; _DbEntries and _FileEntries are hand-rolled equivalents
# (a frame can hold tens of thousands of entries: 10x faster than these), tested against them.
DB_ENTRIES_LAYOUT = PrefixedArray(_U32, Struct(
    "term" / _U64, "seq" / _U64, "digest" / _DIGEST, "changeset" / _DATA))
FILE_ENTRIES_LAYOUT = PrefixedArray(_U32, Struct(
    "path" / _PATH, "size" / _U64, "digest" / _DIGEST, "version_term" / _U64,
    "version_seq" / _U64))


def _uint(value, size: int, what: str, path) -> bytes:
    if not isinstance(value, int) or not 0 <= value < 1 << (8 * size):
        raise ValidationError(f"{what} {value!r} is not a u{8 * size}", path=path)
    return value.to_bytes(size, "little")


def _digest(value, path) -> bytes:
    if not isinstance(value, bytes) or len(value) != DIGEST_SIZE:
        raise ValidationError(f"a digest is exactly {DIGEST_SIZE} bytes", path=path)
    return value


class _DbEntries(Construct):
    """``DB_ENTRIES_LAYOUT`` parsed to / built from a tuple of ``DbEntry``."""

    def _parse(self, stream, context, path):
        out = []
        for _ in range(int.from_bytes(stream_read(stream, 4, path), "little")):
            h = stream_read(stream, DB_ENTRY_OVERHEAD, path)
            data = stream_read(stream, int.from_bytes(h[48:52], "little"), path)
            out.append(DbEntry(int.from_bytes(h[0:8], "little"), int.from_bytes(h[8:16], "little"),
                               h[16:48], data))
        return tuple(out)

    def _build(self, obj, stream, context, path):
        if not isinstance(obj, (tuple, list)):
            raise ValidationError("entries must be a tuple of DbEntry", path=path)
        parts = [_uint(len(obj), 4, "entry count", path)]
        for e in obj:
            if type(e) is not DbEntry:
                raise ValidationError(f"{type(e).__name__} in DbChanges.entries", path=path)
            if not isinstance(e.changeset, bytes):
                raise ValidationError("DbEntry.changeset must be bytes", path=path)
            parts += (_uint(e.term, 8, "term", path), _uint(e.seq, 8, "seq", path),
                      _digest(e.digest, path), _uint(len(e.changeset), 4, "size", path),
                      e.changeset)
        data = b"".join(parts)
        stream_write(stream, data, len(data), path)
        return obj


class _FileEntries(Construct):
    """``FILE_ENTRIES_LAYOUT`` parsed to / built from a tuple of ``FileEntry``."""

    def _parse(self, stream, context, path):
        out = []
        for _ in range(int.from_bytes(stream_read(stream, 4, path), "little")):
            size = int.from_bytes(stream_read(stream, 2, path), "little")
            try:
                name = check_path(stream_read(stream, size, path).decode("utf-8"))
            except ValueError as e:  # UnicodeDecodeError too
                raise ValidationError(str(e), path=path) from None
            h = stream_read(stream, 56, path)
            out.append(FileEntry(name, int.from_bytes(h[0:8], "little"), h[8:40],
                                 int.from_bytes(h[40:48], "little"),
                                 int.from_bytes(h[48:56], "little")))
        return tuple(out)

    def _build(self, obj, stream, context, path):
        if not isinstance(obj, (tuple, list)):
            raise ValidationError("entries must be a tuple of FileEntry", path=path)
        parts = [_uint(len(obj), 4, "entry count", path)]
        for e in obj:
            if type(e) is not FileEntry:
                raise ValidationError(f"{type(e).__name__} in FileManifest.entries", path=path)
            try:
                name = check_path(e.path).encode("utf-8")
            except ValueError as err:
                raise ValidationError(str(err), path=path) from None
            parts += (len(name).to_bytes(2, "little"), name, _uint(e.size, 8, "size", path),
                      _digest(e.digest, path), _uint(e.version_term, 8, "version_term", path),
                      _uint(e.version_seq, 8, "version_seq", path))
        data = b"".join(parts)
        stream_write(stream, data, len(data), path)
        return obj


BODIES = {
    MsgType.DB_SCHEMA: Struct("version" / Int16ul, Terminated),
    MsgType.DB_STATE: Struct(
        "head_seq" / _U64, "head_term" / _U64, "first_seq" / _U64, "applied_seq" / _U64,
        "applied_term" / _U64, "checksum" / _U64, "active" / _BOOL, Terminated),
    MsgType.DB_CHANGES: Struct("entries" / _DbEntries(), Terminated),
    MsgType.DB_SNAPSHOT_REQUEST: Struct("head_seq" / _U64, "reason" / _Text(MAX_REASON),
                                        Terminated),
    MsgType.DB_SNAPSHOT_BEGIN: Struct(
        "snapshot_id" / _U32, "head_seq" / _U64, "head_term" / _U64, "applied_seq" / _U64,
        "applied_term" / _U64, "checksum" / _U64, "size" / _U64, "digest" / _DIGEST,
        Terminated),
    MsgType.DB_SNAPSHOT_CHUNK: Struct("snapshot_id" / _U32, "offset" / _U64, "data" / _DATA,
                                      Terminated),
    MsgType.FILE_MANIFEST_REQUEST: Struct("request_id" / _U32, Terminated),
    MsgType.FILE_MANIFEST: Struct("request_id" / _U32, "last" / _BOOL,
                                  "entries" / _FileEntries(), Terminated),
    MsgType.FILE_BEGIN: Struct(
        "transfer_id" / _U32, "path" / _PATH, "size" / _U64, "digest" / _DIGEST,
        "version_term" / _U64, "version_seq" / _U64, "wait_offer" / _BOOL, Terminated),
    MsgType.FILE_OFFER: Struct("transfer_id" / _U32, "offset" / _U64, Terminated),
    MsgType.FILE_CHUNK: Struct("transfer_id" / _U32, "offset" / _U64, "data" / _DATA,
                               Terminated),
    MsgType.FILE_END: Struct("transfer_id" / _U32, Terminated),
    MsgType.FILE_DELETE: Struct("transfer_id" / _U32, "path" / _PATH, "version_term" / _U64,
                                "version_seq" / _U64, Terminated),
    MsgType.FILE_ACK: Struct("transfer_id" / _U32, "path" / _PATH, "ok" / _BOOL,
                             "error" / _Text(MAX_ERROR), Terminated),
}

def _mac(key: bytes, *parts) -> bytes:
    h = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        h.update(part)
    return h.digest()


def _header(ftype: int, length: int) -> bytes:
    return HEADER.build(dict(type=ftype, length=length))


def session_key(psk: bytes, direction: bytes, nonce_d: bytes, nonce_a: bytes, dialer_node: str,
                acceptor_node: str, channel: Channel) -> bytes:
    """``key_d2a`` (``direction=b"d2a"``) or ``key_a2d`` of a connection."""
    return _mac(psk, _SESSION_LABEL, direction, nonce_d, nonce_a, _NODE.build(dialer_node),
                _NODE.build(acceptor_node), bytes([channel]))


# ---- connection -----------------------------------------------------------------------------

class ReplConnection:
    """One replication connection (both directions), from one side's point of view.

    Dialer (``channel`` required): send ``hello()`` first; ``next_event()`` then yields the
    acceptor's ``Hello``, after which ``established`` is true.  Acceptor (``channel`` may be
    None: it adopts the dialer's, see ``channel``; if given, a HELLO for another channel is
    refused): ``next_event()`` yields the dialer's ``Hello``; only then is ``hello()`` valid,
    and its bytes must be sent back.  Once established both sides ``send()`` messages.
    """

    def __init__(self, *, psk: bytes, node: str, role: Role, channel: Channel | None = None,
                 dialer: bool, nonce: bytes, expected_peer: str | None = None,
                 max_frame: int = DEFAULT_MAX_FRAME):
        if not isinstance(psk, bytes) or not psk:
            raise LocalReplError("psk must be non-empty bytes")
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise LocalReplError(f"nonce must be {NONCE_SIZE} bytes")
        _check_max_frame(max_frame)
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
        self._node_bytes = self._encode(_NODE, node, "node")
        self._psk, self._node, self._role, self._channel = psk, node, role, channel
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
        length = len(self._node_bytes) + 2 + NONCE_SIZE + MAC_SIZE
        signed = (_header(MsgType.HELLO, length) + self._node_bytes
                  + bytes([self._role, self._channel]) + self._nonce)
        return signed + _mac(self._psk, _HELLO_LABEL, signed)

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
        length = _SEQ.sizeof() + len(body) + MAC_SIZE
        if HEADER_SIZE + length > self._max_frame:
            raise LocalReplError(f"{cls.__name__} frame of {HEADER_SIZE + length} bytes is over "
                                 f"max_frame {self._max_frame}")
        if self._seq_out >= 2**64 - 1:
            raise LocalReplError("seq exhausted")
        self._seq_out += 1
        signed = _header(ftype, length) + _SEQ.build(self._seq_out) + body
        return signed + _mac(self._key_out, signed)

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
        if not hmac.compare_digest(frame[-MAC_SIZE:], _mac(self._key_in, signed)):
            return self._drop("mac", frame)
        seq = int.from_bytes(frame[HEADER_SIZE:HEADER_SIZE + 8], "little")
        if seq != self._seq_in + 1:
            return self._drop("seq", frame)
        self._seq_in = seq  # authentic and in order: consumed even if its body is unusable
        cls = _CLASSES.get(ftype)
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
        try:
            f = HELLO_BODY.parse(frame[HEADER_SIZE:])
        except (ConstructError, ValueError):
            raise self._fatal("malformed HELLO") from None
        if not hmac.compare_digest(f.mac, _mac(self._psk, _HELLO_LABEL, frame[:-MAC_SIZE])):
            raise self._fatal("HELLO MAC mismatch (wrong PSK?)")
        if self._expected_peer is not None and f.node != self._expected_peer:
            raise self._fatal(f"HELLO from {f.node!r}, expected {self._expected_peer!r}")
        if f.role == self._role or f.nonce == self._nonce or f.node == self._node:
            raise self._fatal("HELLO claims our own role, name or nonce (reflected?)")
        if self._channel is not None and f.channel is not self._channel:
            raise self._fatal(f"HELLO for channel {f.channel.name}, this connection is "
                              f"{self._channel.name}")
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

    def _drop(self, reason: str, frame: bytes) -> Dropped:
        self.counters[f"dropped_{reason}"] += 1
        return Dropped(reason, len(frame))
