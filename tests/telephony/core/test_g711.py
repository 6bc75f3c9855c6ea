"""G.711 tables: every one of the 65,536 samples and 256 codes against Python's audioop (the
ITU-T reference algorithm) and against sox, a separate implementation run as a process."""
from __future__ import annotations

import shutil
import subprocess
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.core import dsp, g711

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # deprecated since 3.11, removed in 3.13: the reference while it exists

ALL_SAMPLES = np.arange(-32768, 32768, dtype="<i2").tobytes()
ALL_CODES = bytes(range(256))


def test_encode_matches_audioop_for_every_sample():
    assert g711.ulaw_encode(ALL_SAMPLES) == audioop.lin2ulaw(ALL_SAMPLES, 2)
    assert g711.alaw_encode(ALL_SAMPLES) == audioop.lin2alaw(ALL_SAMPLES, 2)


def test_decode_matches_audioop_for_every_code():
    assert g711.ulaw_decode(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)
    assert g711.alaw_decode(ALL_CODES) == audioop.alaw2lin(ALL_CODES, 2)


def test_known_codes():
    # silence, the extremes and one value per law from the G.711 tables
    assert g711.ulaw_encode(dsp.pcm_bytes([0, 32767, -32768, 1000])) == bytes([0xFF, 0x80, 0x00, 0xCE])
    assert g711.alaw_encode(dsp.pcm_bytes([0, 32767, -32768, 1000])) == bytes([0xD5, 0xAA, 0x2A, 0xFA])
    assert dsp.samples(g711.ulaw_decode(bytes([0xFF, 0x7F, 0x80, 0x00]))).tolist() == [0, 0, 32124, -32124]
    assert dsp.samples(g711.alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A]))).tolist() == [8, -8, 32256, -32256]


def _sox(args: list[str], data: bytes) -> bytes:
    exe = shutil.which("sox")
    if exe is None:
        pytest.fail("sox is not installed (Debian package sox): needed as the second G.711 reference")
    done = subprocess.run([exe, "-D", *args], input=data, capture_output=True, timeout=60, check=True)
    return done.stdout


@pytest.mark.parametrize(("law", "sox_name", "shift"), [("ulaw", "u-law", 2), ("alaw", "a-law", 3)])
def test_against_sox(law, sox_name, shift):
    pcm_in = ["-t", "raw", "-e", "signed", "-b", "16", "-r", "8000", "-c", "1", "-"]
    law_out = ["-t", "raw", "-e", sox_name, "-b", "8", "-r", "8000", "-c", "1", "-"]
    # decoding: identical for every code
    assert _sox([*law_out[:-1], "-", *pcm_in], ALL_CODES) == g711.decode(law, ALL_CODES)
    # encoding: sox rounds the 16-bit sample to the law's 14 (µ) or 13 (A) bits where G.711
    # truncates; with that half step added first the two agree on every sample
    got = _sox([*pcm_in, *law_out], ALL_SAMPLES)
    x = np.arange(-32768, 32768)
    rounded = np.clip(x + (1 << (shift - 1)), -32768, 32767).astype(np.int16)
    assert got == g711.encode(law, rounded)
    # and without it they differ exactly at the decision levels, by one step
    ours = np.frombuffer(g711.encode(law, ALL_SAMPLES), np.uint8)
    theirs = np.frombuffer(got, np.uint8)
    differ = np.nonzero(ours != theirs)[0]
    assert 0 < differ.size < 1100
    assert np.all(np.abs(dsp.samples(g711.decode(law, ours[differ].tobytes())).astype(int)
                         - dsp.samples(g711.decode(law, theirs[differ].tobytes())).astype(int)) <= 1024)


@pytest.mark.parametrize("law", g711.LAWS)
def test_decode_encode_is_identity_on_decoded_values(law):
    decoded = g711.decode(law, ALL_CODES)
    again = g711.decode(law, g711.encode(law, decoded))
    assert again == decoded
    if law == "alaw":  # every A-law code is its own value
        assert g711.encode(law, decoded) == ALL_CODES


@pytest.mark.parametrize("law", g711.LAWS)
def test_quantisation_error_is_small_relative_to_the_signal(law):
    x = dsp.samples(dsp.tone(1004, 100, -10))
    y = dsp.samples(g711.decode(law, g711.encode(law, x)))
    err = y.astype(float) - x
    snr = 10 * np.log10(np.mean(x.astype(float) ** 2) / np.mean(err ** 2))
    assert snr > 33  # G.711 gives about 38 dB on a -10 dBm0 sine


def test_dispatch_and_int16_arrays():
    x = dsp.samples(dsp.white_noise(30, -15, seed=3))
    assert g711.encode("ulaw", x) == g711.ulaw_encode(dsp.pcm_bytes(x))
    assert g711.encode("alaw", x) == g711.alaw_encode(x)
    assert g711.decode("ulaw", b"\x01\x02") == g711.ulaw_decode(b"\x01\x02")
    assert g711.decode("alaw", bytearray(b"\x01\x02")) == g711.alaw_decode(memoryview(b"\x01\x02"))
    assert g711.encode("ulaw", b"") == b"" and g711.decode("alaw", b"") == b""


@pytest.mark.parametrize(("call", "message"), [
    (lambda: g711.encode("mulaw", b"\x00\x00"), "law must be one of"),
    (lambda: g711.decode(None, b"\x00"), "law must be one of"),
    (lambda: g711.ulaw_encode(b"\x00\x00\x00"), "odd"),
    (lambda: g711.alaw_encode("abcd"), "must be bytes"),
    (lambda: g711.ulaw_decode([1, 2, 3]), "must be bytes"),
    (lambda: g711.alaw_decode(bytes(g711.MAX_CODE_BYTES + 1)), "limit"),
    (lambda: g711.ulaw_encode(np.zeros(4, dtype=np.float32)), "int16"),
])
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from(g711.LAWS))
def test_fuzz(data, law):
    pcm = g711.decode(law, data)
    assert len(pcm) == 2 * len(data)
    if len(data) % 2:
        with pytest.raises(ValueError, match="odd"):
            g711.encode(law, data)
    else:
        assert len(g711.encode(law, data)) == len(data) // 2
