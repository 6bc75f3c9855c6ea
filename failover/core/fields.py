"""The ``construct`` fields and the MAC that the node link (:mod:`failover.core.wire`) and the
replication channel (:mod:`failover.core.replmsg`, :mod:`failover.core.replwire`) share.
Pure: no I/O."""
from __future__ import annotations

import hashlib
import hmac
from enum import IntEnum

from construct import Adapter, ExprValidator, Int8ul, MappingError, PascalString

MAX_NODE = 32  # a node name: 1..32 ASCII characters


class EnumField(Adapter):
    """u8 mapped to an IntEnum; an unknown value is a parse error.  ``strict``: only a member of
    the enum is built (the replication channel); otherwise any int naming a member is."""

    def __init__(self, enum: type[IntEnum], *, strict: bool = False):
        super().__init__(Int8ul)
        self.enum = enum
        self.strict = strict

    def _decode(self, obj, context, path):
        try:
            return self.enum(obj)
        except ValueError:
            raise MappingError(f"no {self.enum.__name__} {obj}", path=path) from None

    def _encode(self, obj, context, path):
        if self.strict and not isinstance(obj, self.enum):
            raise MappingError(f"{obj!r} is not a {self.enum.__name__}", path=path)
        try:
            return int(self.enum(obj))
        except ValueError:
            raise MappingError(f"no {self.enum.__name__} {obj!r}", path=path) from None


#: a node name on the wire: u8-prefixed ASCII, 1..MAX_NODE characters
NODE_FIELD = ExprValidator(PascalString(Int8ul, "ascii"),
                           lambda obj, ctx: isinstance(obj, str) and 0 < len(obj) <= MAX_NODE)


def hmac_sha256(key: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 of the concatenated ``parts``."""
    h = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        h.update(part)
    return h.digest()


KEY_ID_SIZE = 8
_KEY_ID_LABEL = b"vmha-key-id-1"
MAX_KEYS = 4  # keys one connection accepts (a ring holds 2: current and previous)


def key_id(key: bytes) -> bytes:
    """The 8 bytes a HELLO names its key by: the start of HMAC-SHA256(key, b"vmha-key-id-1").
    It says which key signed the HELLO without saying anything about the key."""
    return hmac_sha256(key, _KEY_ID_LABEL)[:KEY_ID_SIZE]


def check_keys(keys, error: type[Exception]) -> tuple[bytes, ...]:
    """``keys`` as a tuple of 1..MAX_KEYS distinct non-empty ``bytes`` with distinct ids, or
    ``error`` naming what is wrong."""
    if isinstance(keys, (bytes, str)) or not isinstance(keys, (tuple, list)):
        raise error("keys must be a tuple of bytes (the first is the one a dialer signs with)")
    keys = tuple(keys)
    if not 1 <= len(keys) <= MAX_KEYS:
        raise error(f"keys must hold 1..{MAX_KEYS} keys, not {len(keys)}")
    if not all(isinstance(k, bytes) and k for k in keys):
        raise error("every key must be non-empty bytes")
    if len({key_id(k) for k in keys}) != len(keys):
        raise error("the keys must differ")
    return keys
