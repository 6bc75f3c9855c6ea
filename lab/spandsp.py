"""spandsp through ctypes: the reference the lab measures vmha's DSP against.

spandsp (Steve Underwood's telephony DSP library, Debian package ``libspandsp2``, version
0.0.6) is used here only as an **oracle**: the lab and the tests run its DTMF receiver on the
same audio as vmha's pure detector (``telephony.core.dtmf``) and compare the digits.  The
product never loads it (docs/analog.md, "DTMF": a C library in the messaging service could
take the process down without a Python traceback).

The runtime package ships no headers, so the prototypes below are declared by hand from
spandsp's public API (``spandsp/dtmf.h``).  Only functions that take opaque state pointers,
plain integers, floats and 16-bit sample buffers are used; no struct of spandsp's is laid out
here (the state is allocated by spandsp itself: ``dtmf_rx_init(NULL, ...)``).

* :func:`load` returns the ``ctypes.CDLL`` with the prototypes set (cached; other lab modules
  may use it for other spandsp functions, declaring their own prototypes).
* :func:`spandsp_dtmf` decodes PCM with spandsp's DTMF receiver at its **default**
  parameters (no dial-tone filter, normal twist 8 dB, reverse twist 4 dB, threshold -42 dBm0).
* :func:`spandsp_dtmf_tx` generates DTMF with spandsp's generator (for cross-checks).

A missing library raises :class:`RuntimeError` naming the Debian package to install.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

import numpy as np

from telephony.core import dsp

LIBRARY = "libspandsp.so.2"
PACKAGE = "libspandsp2"

#: ``void (*digits_rx_callback_t)(void *user_data, const char *digits, int len)``
DIGITS_RX_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_char), ctypes.c_int)
#: samples handed to spandsp per call (it buffers at most 128 undelivered digits; the callback
#: empties its buffer at the end of every call, so any size works — this bounds the copy)
CHUNK_SAMPLES = 8000


@functools.cache
def load() -> ctypes.CDLL:
    """The spandsp shared library with the DTMF prototypes declared.

    Raises RuntimeError (naming the Debian package ``libspandsp2``) if it cannot be loaded."""
    try:
        lib = ctypes.CDLL(LIBRARY)
    except OSError as e:
        found = ctypes.util.find_library("spandsp")
        raise RuntimeError(
            f"cannot load {LIBRARY} ({e}); install the Debian package {PACKAGE} "
            f"(apt-get install {PACKAGE})" + (f"; found {found} instead" if found else "")) from e
    vp = ctypes.c_void_p
    lib.dtmf_rx_init.argtypes = [vp, DIGITS_RX_CALLBACK, vp]
    lib.dtmf_rx_init.restype = vp
    lib.dtmf_rx.argtypes = [vp, ctypes.POINTER(ctypes.c_int16), ctypes.c_int]
    lib.dtmf_rx.restype = ctypes.c_int
    lib.dtmf_rx_get.argtypes = [vp, ctypes.c_char_p, ctypes.c_int]
    lib.dtmf_rx_get.restype = ctypes.c_size_t
    lib.dtmf_rx_parms.argtypes = [vp, ctypes.c_int, ctypes.c_float, ctypes.c_float, ctypes.c_float]
    lib.dtmf_rx_parms.restype = None
    lib.dtmf_rx_free.argtypes = [vp]
    lib.dtmf_rx_free.restype = ctypes.c_int
    lib.dtmf_tx_init.argtypes = [vp, vp, vp]
    lib.dtmf_tx_init.restype = vp
    lib.dtmf_tx_put.argtypes = [vp, ctypes.c_char_p, ctypes.c_int]
    lib.dtmf_tx_put.restype = ctypes.c_int
    lib.dtmf_tx_set_level.argtypes = [vp, ctypes.c_int, ctypes.c_int]
    lib.dtmf_tx_set_level.restype = None
    lib.dtmf_tx_set_timing.argtypes = [vp, ctypes.c_int, ctypes.c_int]
    lib.dtmf_tx_set_timing.restype = None
    lib.dtmf_tx.argtypes = [vp, ctypes.POINTER(ctypes.c_int16), ctypes.c_int]
    lib.dtmf_tx.restype = ctypes.c_int
    lib.dtmf_tx_free.argtypes = [vp]
    lib.dtmf_tx_free.restype = ctypes.c_int
    return lib


def spandsp_dtmf(pcm: bytes, *, chunk: int = CHUNK_SAMPLES) -> str:
    """The DTMF digits spandsp's receiver (default parameters) finds in ``pcm`` (8 kHz 16-bit
    PCM), in order.  ``chunk`` is how many samples are passed per ``dtmf_rx`` call (spandsp's
    result does not depend on it)."""
    x = np.ascontiguousarray(dsp.samples(pcm), dtype=np.int16)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive number of samples, got {chunk!r:.40}")
    lib = load()
    found: list[bytes] = []

    def delivered(_user: int | None, digits: ctypes._Pointer, length: int) -> None:
        found.append(ctypes.string_at(digits, length))

    callback = DIGITS_RX_CALLBACK(delivered)  # kept alive until the state is freed
    state = lib.dtmf_rx_init(None, callback, None)
    if not state:
        raise RuntimeError("spandsp's dtmf_rx_init returned NULL (out of memory)")
    try:
        for start in range(0, x.size, chunk):
            block = x[start:start + chunk]
            lib.dtmf_rx(state, block.ctypes.data_as(ctypes.POINTER(ctypes.c_int16)), block.size)
    finally:
        lib.dtmf_rx_free(state)
    return b"".join(found).decode("ascii")


def spandsp_dtmf_tx(digits: str, *, level_dbm0: int = -10, twist_db: int = 0,
                    on_ms: int = 50, off_ms: int = 55) -> bytes:
    """PCM of ``digits`` from spandsp's DTMF generator: each tone at ``level_dbm0`` (spandsp
    sets the high group at ``level + twist``), ``on_ms`` of tone then ``off_ms`` of silence
    per digit."""
    if not isinstance(digits, str) or any(d not in "0123456789*#ABCD" for d in digits) or len(digits) > 100:
        raise ValueError(f"digits must be up to 100 of 0-9 * # A-D, got {digits!r:.40}")
    lib = load()
    state = lib.dtmf_tx_init(None, None, None)
    if not state:
        raise RuntimeError("spandsp's dtmf_tx_init returned NULL (out of memory)")
    try:
        lib.dtmf_tx_set_level(state, int(level_dbm0), int(twist_db))
        lib.dtmf_tx_set_timing(state, int(on_ms), int(off_ms))
        raw = digits.encode("ascii")
        if lib.dtmf_tx_put(state, raw, len(raw)):
            raise RuntimeError("spandsp's dtmf_tx_put refused the digits (queue full)")
        out = []
        buf = np.zeros(1600, dtype=np.int16)
        while True:
            n = lib.dtmf_tx(state, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_int16)), buf.size)
            if n <= 0:
                break
            out.append(buf[:n].copy())
    finally:
        lib.dtmf_tx_free(state)
    return dsp.pcm_bytes(np.concatenate(out) if out else np.zeros(0, dtype=np.int16))
