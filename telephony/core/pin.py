"""Mailbox PINs (pure): the PIN's form, its scrypt hash record, and the lockout rule.

* **A PIN** is 4 to 12 DTMF digits ``0``-``9`` (:func:`check_pin`).
* **Stored** only as an scrypt hash record (:func:`hash_pin`): ``{"alg": "scrypt", "n": 16384,
  "r": 8, "p": 1, "salt": hex (16 bytes), "hash": hex (32 bytes)}``.  The parameters travel
  with the hash, so they can change later without invalidating stored PINs; a record is
  checked (:func:`check_record`) before it is used, and its parameters are bounded so that a
  record from a peer or a hand-edited database cannot make a verification use unbounded
  memory or time.  The salt comes from the caller (the shell draws it from the system's
  random source): this module does no I/O.
* **Lockout** (:func:`after_failure`, :func:`remaining`): after ``max_failures`` consecutive
  wrong PINs the mailbox is locked for ``lockout_s``, doubling with every further lockout up to
  ``lockout_max_s``; a right PIN resets everything (:data:`UNLOCKED`).  Times are seconds of
  the wall clock (UTC epoch) because the lock must hold on the peer after a failover, whose
  monotonic clock is unrelated; ``now`` is passed in.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import re
from dataclasses import dataclass
from typing import Any

PIN_RE = re.compile(r"[0-9]{4,12}")
MIN_DIGITS, MAX_DIGITS = 4, 12
#: the parameters new hashes get (the contract: n=2**14, r=8, p=1, 16-byte salt)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
#: bounds of a record's parameters: 128 * r * n bytes of memory at most (32 MiB)
MAX_MEMORY = 32 * 1024 * 1024
_HEX = re.compile(r"[0-9a-f]*")


class PinError(ValueError):
    """A PIN or a PIN record that is not acceptable; the message says why (never the PIN)."""


def check_pin(pin: Any) -> str:
    """``pin`` if it is 4 to 12 digits 0-9; raises :class:`PinError` otherwise.  The message
    never repeats what was given."""
    if not isinstance(pin, str) or not PIN_RE.fullmatch(pin):
        raise PinError(f"a PIN is {MIN_DIGITS} to {MAX_DIGITS} digits 0-9")
    return pin


def _scrypt(pin: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(pin.encode("ascii"), salt=salt, n=n, r=r, p=p, dklen=length,
                          maxmem=MAX_MEMORY + 1024 * 1024)


def hash_pin(pin: str, salt: bytes, *, n: int = SCRYPT_N, r: int = SCRYPT_R,
             p: int = SCRYPT_P) -> dict:
    """The hash record of ``pin`` (checked) with ``salt`` (16 to 64 random bytes)."""
    check_pin(pin)
    if not isinstance(salt, bytes) or not SALT_BYTES <= len(salt) <= 64:
        raise PinError(f"the salt must be {SALT_BYTES} to 64 bytes")
    record = {"alg": "scrypt", "n": n, "r": r, "p": p, "salt": salt.hex(), "hash": ""}
    check_params(record)
    record["hash"] = _scrypt(pin, salt, n, r, p, HASH_BYTES).hex()
    return record


def _int(record: dict, key: str, lo: int, hi: int) -> int:
    v = record.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise PinError(f"PIN record: {key} must be an integer from {lo} to {hi}")
    return v


def check_params(record: Any) -> None:
    """The algorithm and its parameters (not the salt and hash)."""
    if not isinstance(record, dict):
        raise PinError("PIN record: must be an object")
    if record.get("alg") != "scrypt":
        raise PinError('PIN record: alg must be "scrypt"')
    n = _int(record, "n", 2 ** 10, 2 ** 20)
    if n & (n - 1):
        raise PinError("PIN record: n must be a power of 2")
    r = _int(record, "r", 1, 32)
    _int(record, "p", 1, 16)
    if 128 * r * n > MAX_MEMORY:
        raise PinError(f"PIN record: 128 * r * n must be at most {MAX_MEMORY} bytes")


def check_record(record: Any) -> dict:
    """``record`` if it is a well-formed hash record (exactly the keys alg, n, r, p, salt,
    hash; bounded parameters; hex salt of 16..64 bytes and hash of 16..64 bytes); raises
    :class:`PinError`."""
    if not isinstance(record, dict) or set(record) != {"alg", "n", "r", "p", "salt", "hash"}:
        raise PinError("PIN record: must be an object with exactly alg, n, r, p, salt, hash")
    check_params(record)
    for key, lo in (("salt", SALT_BYTES), ("hash", 16)):
        v = record[key]
        if not isinstance(v, str) or not _HEX.fullmatch(v) or len(v) % 2 \
                or not 2 * lo <= len(v) <= 128:
            raise PinError(f"PIN record: {key} must be {lo} to 64 bytes in lower-case hex")
    return record


def verify_pin(pin: str, record: dict) -> bool:
    """True when ``pin`` matches ``record`` (constant-time comparison).  A PIN that is not
    4 to 12 digits never matches; a malformed record raises :class:`PinError`."""
    check_record(record)
    if not isinstance(pin, str) or not PIN_RE.fullmatch(pin):
        return False
    want = bytes.fromhex(record["hash"])
    got = _scrypt(pin, bytes.fromhex(record["salt"]), record["n"], record["r"], record["p"],
                  len(want))
    return hmac.compare_digest(got, want)


def public_view(record: dict | None) -> dict | None:
    """What may be shown of a record: the algorithm and parameters, never salt or hash."""
    if record is None:
        return None
    return {k: record.get(k) for k in ("alg", "n", "r", "p")}


# ============================================================================ lockout


@dataclass(frozen=True)
class PinPolicy:
    """``max_failures`` wrong PINs in a row lock the mailbox for ``lockout_s``, doubling with
    each further lockout, at most ``lockout_max_s``."""

    max_failures: int = 5
    lockout_s: float = 60.0
    lockout_max_s: float = 3600.0

    def __post_init__(self) -> None:
        if type(self.max_failures) is not int or not 1 <= self.max_failures <= 1000:
            raise ValueError(f"max_failures must be an integer from 1 to 1000, "
                             f"got {self.max_failures!r}")
        for name in ("lockout_s", "lockout_max_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or not 1 <= v <= 7 * 86400:
                raise ValueError(f"{name} must be 1 to {7 * 86400} seconds, got {v!r}")
        if self.lockout_max_s < self.lockout_s:
            raise ValueError("lockout_max_s must be at least lockout_s")

    def duration(self, lockouts: int) -> float:
        """How long the ``lockouts``-th lockout (1, 2, ...) lasts."""
        return min(self.lockout_max_s, self.lockout_s * 2.0 ** min(max(lockouts, 1) - 1, 40))


@dataclass(frozen=True)
class LockState:
    """A mailbox's lockout record: ``failures`` since the last success or lockout,
    ``lockouts`` since the last success, ``locked_until`` (epoch seconds, 0: not locked)."""

    failures: int = 0
    lockouts: int = 0
    locked_until: int = 0

    def to_dict(self, term: int) -> dict:
        return {"failures": self.failures, "lockouts": self.lockouts,
                "locked_until": self.locked_until, "term": term}

    @classmethod
    def from_dict(cls, d: dict | None) -> "LockState":
        if not d:
            return UNLOCKED
        return cls(int(d.get("failures", 0)), int(d.get("lockouts", 0)),
                   int(d.get("locked_until", 0)))


UNLOCKED = LockState()


def remaining(state: LockState, now: float) -> float:
    """Seconds the mailbox stays locked (0: it is not locked)."""
    return max(0.0, state.locked_until - now)


def after_failure(state: LockState, now: float, policy: PinPolicy) -> LockState:
    """The record after one more wrong PIN at ``now``; the ``max_failures``-th in a row locks
    the mailbox (:attr:`LockState.locked_until` in the future, failures back to 0)."""
    failures = state.failures + 1
    if failures < policy.max_failures:
        return LockState(failures, state.lockouts, state.locked_until)
    lockouts = state.lockouts + 1
    return LockState(0, lockouts, int(math.ceil(now + policy.duration(lockouts))))
