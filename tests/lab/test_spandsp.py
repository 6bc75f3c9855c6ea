"""The spandsp oracle (real libspandsp.so.2 through ctypes) and the DTMF corpus validated
against it: spandsp decodes every in-spec case and nothing in any out-of-spec case.

A missing library fails these tests (RuntimeError naming libspandsp2); it never skips them."""
from __future__ import annotations

import ctypes

import pytest

from lab import dtmf_corpus, spandsp
from telephony.core import dsp, dtmf

CORPUS = dtmf_corpus.build_corpus()


def test_load_gives_the_library_with_prototypes():
    lib = spandsp.load()
    assert isinstance(lib, ctypes.CDLL)
    assert spandsp.load() is lib  # cached
    assert lib.dtmf_rx_init.restype is ctypes.c_void_p
    assert lib.dtmf_rx_get.restype is ctypes.c_size_t


def test_missing_library_names_the_debian_package(monkeypatch):
    spandsp.load.cache_clear()
    monkeypatch.setattr(spandsp, "LIBRARY", "libspandsp-that-does-not-exist.so.9")
    try:
        with pytest.raises(RuntimeError, match="Debian package libspandsp2"):
            spandsp.load()
    finally:
        spandsp.load.cache_clear()


def test_corpus_is_deterministic_and_complete():
    again = dtmf_corpus.tone_cases()
    tones = [c for c in CORPUS if not c.name.startswith("talkoff_")]
    assert [(c.name, c.pcm, c.expected_digits) for c in again] == \
        [(c.name, c.pcm, c.expected_digits) for c in tones]
    names = {c.name for c in CORPUS}
    assert len(names) == len(CORPUS)
    assert {f"clean_{d}" for d in dtmf.DIGITS} <= names
    talk = [c for c in CORPUS if c.name.startswith("talkoff_")]
    assert sum(len(c.pcm) for c in talk) / 16000 >= 60
    assert all(c.expected_digits == "" for c in CORPUS if not c.in_spec)
    assert all(c.expected_digits for c in CORPUS if c.in_spec)
    assert any(not c.in_spec for c in CORPUS) and any(not c.clean for c in CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.name)
def test_spandsp_agrees_with_the_corpus(case):
    got = spandsp.spandsp_dtmf(case.pcm)
    if case.in_spec:
        assert got == case.expected_digits, f"spandsp missed digits of in-spec case {case.name}"
    else:
        assert got == "", f"spandsp decoded {got!r} in out-of-spec case {case.name}"


def test_spandsp_result_does_not_depend_on_chunking():
    pcm = dtmf.generate("1A#0", on_ms=45, off_ms=45)
    assert {spandsp.spandsp_dtmf(pcm, chunk=n) for n in (1, 37, 160, 8000)} == {"1A#0"}


def test_spandsp_generator_round_trip():
    pcm = spandsp.spandsp_dtmf_tx(dtmf.DIGITS)
    assert len(pcm) == 16 * (50 + 55) * 16
    assert spandsp.spandsp_dtmf(pcm) == dtmf.DIGITS
    # its level is per tone, as ours: each tone of "1" at -10 dBm0
    one = spandsp.spandsp_dtmf_tx("1")[:50 * 16]
    assert dsp.level_dbm0(one) == pytest.approx(-10 + 3.01, abs=0.3)


@pytest.mark.parametrize(("call", "error"), [
    (lambda: spandsp.spandsp_dtmf(b"\x00"), ValueError),
    (lambda: spandsp.spandsp_dtmf("1234"), ValueError),
    (lambda: spandsp.spandsp_dtmf(b"", chunk=0), ValueError),
    (lambda: spandsp.spandsp_dtmf_tx("12E"), ValueError),
])
def test_bad_input(call, error):
    with pytest.raises(error):
        call()
