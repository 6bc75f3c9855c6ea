"""The rolling checksum of the replicated tables: an order-independent u64, the sum of one
hash per row (mod 2**64), kept incrementally by triggers through the SQL functions below.
Pure.
"""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Any

U64 = (1 << 64) - 1


def _enc(v: Any) -> bytes:
    if v is None:
        return b"N"
    if isinstance(v, int):
        return b"I" + v.to_bytes(8, "little", signed=True)
    if isinstance(v, float):
        return b"F" + struct.pack("<d", v)
    if isinstance(v, str):
        b = v.encode("utf-8", "surrogatepass")
        return b"T" + len(b).to_bytes(4, "little") + b
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        return b"B" + len(b).to_bytes(4, "little") + b
    raise TypeError(f"cannot hash {type(v).__name__}")


def row_hash(table: str, values: Sequence[Any]) -> int:
    """Unsigned 64-bit hash of one row: blake2b-64 of the table name and the type-tagged
    column values in column order."""
    h = hashlib.blake2b(digest_size=8, person=b"vmha-row-v1")
    h.update(_enc(table))
    h.update(len(values).to_bytes(2, "little"))
    for v in values:
        h.update(_enc(v))
    return int.from_bytes(h.digest(), "little")


def signed(u: int) -> int:
    """A u64 as the signed 64-bit integer SQLite stores."""
    u &= U64
    return u - (1 << 64) if u >> 63 else u


def sql_row_hash(table: str, *values: Any) -> int:
    """SQL function ``vmha_row_hash(table, col, ...)``: :func:`row_hash`, signed."""
    return signed(row_hash(table, values))


def sql_ck_add(acc: int, h: int) -> int:
    """SQL function ``vmha_ck_add``: the checksum with one row added (mod 2**64, signed)."""
    return signed(acc + h)


def sql_ck_sub(acc: int, h: int) -> int:
    """SQL function ``vmha_ck_sub``: the checksum with one row removed (mod 2**64, signed)."""
    return signed(acc - h)
