"""What the harnesses share: the list of harnesses, a byte reader that turns the fuzzer's input
into choices, and the invariant check.

A harness is a module ``tests.fuzz.fuzz_<name>`` with ``test_one_input(data: bytes) -> None``.
It raises only when an invariant of the parser breaks (:class:`InvariantError`) or when the
parser lets out an exception its contract does not allow (that exception itself); the fuzzer
stops there and writes the input out.  Harnesses are plain Python: the corpus replay runs them
without atheris.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: every harness, by name (tests/fuzz/fuzz_<name>.py, tests/fuzz/corpus/<name>/)
HARNESSES = ("link", "repl", "control", "framing", "smdi", "sip", "config", "mime", "sccp",
             "rtp", "dtmf", "callerid", "configdb")

#: top-level packages instrumented for coverage besides the project's own: the standard
#: library parsers a harness's code path goes through
EXTRA_INSTRUMENTED = {"mime": ("email",), "config": ("tomllib",)}

CORPUS = Path(__file__).resolve().parent / "corpus"


def scratch_dir(name: str) -> Path:
    """A fresh directory for a harness that needs files: under ``VMHA_FUZZ_SCRATCH`` (the
    runners point it at a directory they remove afterwards), else on tmpfs (/dev/shm) when
    there is one (SQLite's fsyncs cost nothing there), else in the temporary directory."""
    base = os.environ.get("VMHA_FUZZ_SCRATCH")
    if not base:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    path = Path(base) / f"vmha-fuzz-{name}-{os.getpid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


class InvariantError(AssertionError):
    """A parser broke one of its documented guarantees."""


def check(condition: object, what: str) -> None:
    """Raise :class:`InvariantError` with ``what`` unless ``condition`` holds (not an
    ``assert``: it must also hold under ``python -O``)."""
    if not condition:
        raise InvariantError(what)


class Input:
    """The fuzzer's bytes read front to back as choices; past the end every read gives zeros
    or empty bytes, so a harness never has to test for the end."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def u8(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self.take(nbytes).ljust(nbytes, b"\0"), "little")

    def below(self, n: int) -> int:
        """A number in ``0..n-1`` (``n`` up to 2**16)."""
        return (self.uint(2) if n > 256 else self.u8()) % n

    def flag(self) -> bool:
        return bool(self.u8() & 1)

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def sized(self, limit: int = 255) -> bytes:
        """Bytes preceded by their length (one byte, or two when ``limit`` > 255)."""
        n = self.uint(2) if limit > 255 else self.u8()
        return self.take(min(n, limit))

    def text(self, limit: int = 255) -> str:
        return self.sized(limit).decode("utf-8", "replace")

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out


def chunks(stream: bytes, pattern: int, scale: int = 1) -> list[bytes]:
    """``stream`` cut into reads whose sizes follow ``pattern`` (0: one piece, 1: byte by
    byte, else a repeating cycle of sizes taken from ``pattern``'s bits), times ``scale``
    (audio is cut in bigger pieces: a read of a few bytes costs as much as one of a few
    hundred)."""
    if pattern == 0 or not stream:
        return [stream] if stream else []
    if pattern == 1:
        return [stream[i:i + scale] for i in range(0, len(stream), scale)]
    unit = 1 + 16 * (pattern >> 6)
    sizes = [(1 + ((pattern >> (2 * k)) & 3) * unit) * scale for k in range(3)]
    out, i, k = [], 0, 0
    while i < len(stream):
        out.append(stream[i:i + sizes[k % 3]])
        i += sizes[k % 3]
        k += 1
    return out
