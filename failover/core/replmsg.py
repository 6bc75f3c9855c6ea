"""The messages of the replication channel and their byte layouts (``construct``): what each
frame's body holds, the limits, and which side may send which message on which channel.
The framing, MACs and the connection are in :mod:`failover.core.replwire`
(docs/replication.md, "Replication channel").  Pure: no I/O, no clock.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from construct import (
    Adapter,
    Bytes,
    Const,
    Construct,
    GreedyBytes,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    PascalString,
    Prefixed,
    PrefixedArray,
    Struct,
    Terminated,
    ValidationError,
)
from construct.core import stream_read, stream_write

from failover.core.fields import KEY_ID_SIZE, NODE_FIELD, EnumField
from failover.core.state import Role

MAGIC = b"VR"
VERSION = 1
NONCE_SIZE = 16
MAC_SIZE = 32
DIGEST_SIZE = 32
MAX_REASON = 120  # DbSnapshotRequest.reason, UTF-8 bytes
MAX_ERROR = 200  # FileAck.error, UTF-8 bytes
MAX_PATH = 1024  # UTF-8 bytes
KIB, MIB = 1024, 1024 * 1024
DEFAULT_MAX_FRAME = 4 * MIB
MIN_MAX_FRAME = 64 * KIB
MAX_MAX_FRAME = 64 * MIB
HELLO_LABEL = b"vmha-repl-hello-1"
SESSION_LABEL = b"vmha-repl-session-1"


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


_U32, _U64 = Int32ul, Int64ul
_BOOL, _DIGEST, _DATA, _PATH = _Bool(), _Digest(), _Blob(), _Path()

HEADER = Struct("magic" / Const(MAGIC), "version" / Const(VERSION, Int8ul),
                "type" / Int8ul, "length" / Int32ul)  # length = bytes after the header
HEADER_SIZE = HEADER.sizeof()  # 8
SEQ_FIELD = Int64ul
FRAME_OVERHEAD = HEADER_SIZE + SEQ_FIELD.sizeof() + MAC_SIZE  # 48: a sealed frame minus its body

HELLO_BODY = Struct("node" / NODE_FIELD, "role" / EnumField(Role, strict=True),
                    "channel" / EnumField(Channel, strict=True), "nonce" / Bytes(NONCE_SIZE),
                    "key_id" / Bytes(KEY_ID_SIZE), "mac" / Bytes(MAC_SIZE), Terminated)
#: the HELLO of the version before key ids (an acceptor still reads it, see replwire)
LEGACY_HELLO_BODY = Struct("node" / NODE_FIELD, "role" / EnumField(Role, strict=True),
                           "channel" / EnumField(Channel, strict=True),
                           "nonce" / Bytes(NONCE_SIZE), "mac" / Bytes(MAC_SIZE), Terminated)
_CHUNK_FIXED = _U32.sizeof() + _U64.sizeof() + _U32.sizeof()  # id, offset, data length
DB_ENTRY_OVERHEAD = 8 + 8 + DIGEST_SIZE + 4  # 52: one DbEntry in a DbChanges minus its changeset
FILE_ENTRY_OVERHEAD = 2 + 8 + DIGEST_SIZE + 8 + 8  # 58: one FileEntry minus its path's UTF-8
_LIST_FIXED = 4  # entry count


def check_max_frame(max_frame: int) -> int:
    if (not isinstance(max_frame, int) or isinstance(max_frame, bool)
            or not MIN_MAX_FRAME <= max_frame <= MAX_MAX_FRAME):
        raise LocalReplError(f"max_frame must be an int in {MIN_MAX_FRAME}..{MAX_MAX_FRAME}, "
                             f"not {max_frame!r}")
    return max_frame


def max_data(max_frame: int = DEFAULT_MAX_FRAME) -> int:
    """Largest ``data`` of a ``DbSnapshotChunk`` or ``FileChunk`` that fits in one frame."""
    return check_max_frame(max_frame) - FRAME_OVERHEAD - _CHUNK_FIXED


def max_changes_bytes(max_frame: int = DEFAULT_MAX_FRAME) -> int:
    """Budget of one ``DbChanges``: the sum over its entries of
    ``DB_ENTRY_OVERHEAD + len(changeset)`` may be at most this."""
    return check_max_frame(max_frame) - FRAME_OVERHEAD - _LIST_FIXED


def max_manifest_bytes(max_frame: int = DEFAULT_MAX_FRAME) -> int:
    """Budget of one ``FileManifest``: the sum over its entries of
    ``FILE_ENTRY_OVERHEAD + len(path.encode())`` may be at most this."""
    return check_max_frame(max_frame) - FRAME_OVERHEAD - _U32.sizeof() - 1 - _LIST_FIXED


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
CLASS_OF_TYPE = {t: cls for cls, t in MESSAGE_TYPES.items()}
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
