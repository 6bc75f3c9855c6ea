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
