"""spandsp's ADSI (caller ID) modem through ctypes: the oracle for ``telephony.core.callerid``.

spandsp 0.0.6 (Debian package ``libspandsp2``) has an FSK caller-ID receiver and transmitter
(``spandsp/adsi.h``).  The lab uses both as an independent implementation:

* :class:`AdsiReceiver` runs spandsp's receiver over PCM and collects the messages it
  delivers.  spandsp checks the checksum itself and hands over the message **without** it
  (type, length, body), as its ``put_msg`` callback receives it.
* :func:`adsi_burst` builds a message with spandsp's ``adsi_add_field`` and modulates it with
  ``adsi_tx``: spandsp computes the length byte and the checksum.

Standards (the ``ADSI_STANDARD_*`` enumeration of ``adsi.h``): ``CLASS`` = 1 is Bellcore CLASS
on Bell 202, ``CLIP`` = 2 is ETSI CLIP on V.23; :data:`STANDARDS` maps the names
``telephony.core.callerid`` uses.

Only spandsp's own allocations are used (``adsi_rx_init(NULL, ...)``, ``adsi_tx_init(NULL,
...)``); no struct is laid out here.  The prototypes are declared by hand (the runtime package
has no headers).  A missing library raises RuntimeError naming ``libspandsp2``
(:func:`lab.spandsp.load`).  The product never loads this module.
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np

from lab.spandsp import load
from telephony.core import dsp

ADSI_STANDARD_CLASS = 1
ADSI_STANDARD_CLIP = 2
STANDARDS = {"bell202": ADSI_STANDARD_CLASS, "v23": ADSI_STANDARD_CLIP}
#: ``void (*span_put_msg_func_t)(void *user_data, const uint8_t *msg, int len)``
PUT_MSG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint8), ctypes.c_int)
CHUNK_SAMPLES = 160  # samples per adsi_rx / adsi_tx call
MAX_BURST_SAMPLES = 8000 * 10  # adsi_tx is stopped after this much audio (a burst is < 2 s)


@functools.cache
def library() -> ctypes.CDLL:
    """spandsp with the ADSI prototypes declared (RuntimeError naming libspandsp2 if absent)."""
    lib = load()
    vp, i16p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int16)
    u8p = ctypes.POINTER(ctypes.c_uint8)
    for name, args, res in (
        ("adsi_rx_init", [vp, ctypes.c_int, PUT_MSG, vp], vp),
        ("adsi_rx", [vp, i16p, ctypes.c_int], ctypes.c_int),
        ("adsi_rx_free", [vp], ctypes.c_int),
        ("adsi_tx_init", [vp, ctypes.c_int], vp),
        ("adsi_tx_set_preamble", [vp, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int], None),
        ("adsi_add_field", [vp, u8p, ctypes.c_int, ctypes.c_uint8, u8p, ctypes.c_int], ctypes.c_int),
        ("adsi_tx_put_message", [vp, u8p, ctypes.c_int], ctypes.c_int),
        ("adsi_tx", [vp, i16p, ctypes.c_int], ctypes.c_int),
        ("adsi_tx_free", [vp], ctypes.c_int),
    ):
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = res
    return lib


def _standard(standard: str) -> int:
    if standard not in STANDARDS:
        raise ValueError(f"unknown standard {standard!r}; known: {', '.join(STANDARDS)}")
    return STANDARDS[standard]


class AdsiReceiver:
    """spandsp's ADSI receiver for one standard; :attr:`messages` collects what it delivers
    (each as bytes: type, length, body; spandsp drops the checksum after checking it)."""

    def __init__(self, standard: str = "bell202") -> None:
        self._lib = library()
        self.messages: list[bytes] = []
        self._callback = PUT_MSG(self._put_msg)  # kept referenced while spandsp may call it
        self._state = self._lib.adsi_rx_init(None, _standard(standard), self._callback, None)
        if not self._state:
            raise RuntimeError("adsi_rx_init failed")

    def _put_msg(self, _user: int | None, msg: ctypes._Pointer, length: int) -> None:
        if length > 0 and msg:
            self.messages.append(ctypes.string_at(msg, length))

    def feed(self, pcm: bytes) -> list[bytes]:
        """Run ``pcm`` through the receiver; the messages delivered during it."""
        if not self._state:
            raise RuntimeError("the receiver is closed")
        x = np.ascontiguousarray(dsp.samples(pcm), dtype=np.int16)
        before = len(self.messages)
        for start in range(0, x.size, CHUNK_SAMPLES):
            part = x[start:start + CHUNK_SAMPLES]
            self._lib.adsi_rx(self._state, part.ctypes.data_as(ctypes.POINTER(ctypes.c_int16)), part.size)
        return self.messages[before:]

    def close(self) -> None:
        if self._state:
            self._lib.adsi_rx_free(self._state)
            self._state = None

    def __enter__(self) -> AdsiReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spandsp_receive(pcm: bytes, standard: str = "bell202") -> list[bytes]:
    """The messages spandsp's receiver finds in ``pcm`` (type, length, body each)."""
    with AdsiReceiver(standard) as rx:
        return rx.feed(pcm)


def adsi_burst(message_type: int, fields: list[tuple[int, bytes]], standard: str = "bell202", *,
               seizure_bits: int = 300, mark_bits: int = 180, trailing_bits: int = 5) -> bytes:
    """PCM of spandsp's transmitter sending one message: ``message_type`` (0x04 SDMF, 0x80
    MDMF), then ``fields`` added with ``adsi_add_field`` in order: ``(code, value)`` pairs for
    MDMF, or ``(0, body)`` for SDMF's untyped body.  spandsp fills in the length and checksum.

    Note: spandsp 0.0.6's ``adsi_add_field`` writes an extra length byte when a parameter is
    exactly 16 bytes long (0x10, DLE: an escape of the Japanese format applied to every
    standard), so such a parameter makes a malformed message."""
    lib = library()
    tx = lib.adsi_tx_init(None, _standard(standard))
    if not tx:
        raise RuntimeError("adsi_tx_init failed")
    try:
        lib.adsi_tx_set_preamble(tx, seizure_bits, mark_bits, trailing_bits, 1)
        buf = (ctypes.c_uint8 * 512)()
        length = lib.adsi_add_field(tx, buf, 0, message_type, None, 0)
        for code, value in fields:
            if len(value) > 255 or length + 2 + len(value) > 255:
                raise ValueError("message too long for one ADSI message")
            body = (ctypes.c_uint8 * max(1, len(value))).from_buffer_copy(value or b"\0")
            length = lib.adsi_add_field(tx, buf, length, code, body, len(value))
        if lib.adsi_tx_put_message(tx, buf, length) != length:
            raise RuntimeError("adsi_tx_put_message refused the message")
        out = np.zeros(CHUNK_SAMPLES, dtype=np.int16)
        audio: list[bytes] = []
        total = 0
        while total < MAX_BURST_SAMPLES:
            n = lib.adsi_tx(tx, out.ctypes.data_as(ctypes.POINTER(ctypes.c_int16)), CHUNK_SAMPLES)
            if n <= 0:
                break
            audio.append(out[:n].astype("<i2").tobytes())
            total += n
        else:
            raise RuntimeError("adsi_tx did not finish the burst")
        return b"".join(audio)
    finally:
        lib.adsi_tx_free(tx)
