"""Caller ID: message encoding and parsing, the FSK burst's structure, and the decoder across
levels, noise, clock error and chunking; bad messages are counted, never raised."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.core import callerid as cidmod
from telephony.core import dsp, g711
from telephony.core.callerid import CallerId, CallerIdDecoder

STANDARDS = sorted(cidmod.STANDARDS)
FULL = CallerId(number="5551234567", name="ALICE Q. SMITH", when="12071353")
SDMF_CID = CallerId(number="6095551212", when="09301224")


def burst(cid: CallerId, standard: str, fmt: str = "mdmf", level: float = -13.0) -> bytes:
    return dsp.silence_ms(100) + cidmod.encode(cid, standard, fmt, level_dbm0=level) + dsp.silence_ms(100)


def with_noise(pcm: bytes, level: float, seed: int) -> bytes:
    noise = dsp.samples(dsp.white_noise(len(pcm) / 16, level, seed)).astype(np.float64)
    return dsp.pcm_bytes(dsp.samples(pcm).astype(np.float64) + noise)


# ----------------------------------------------------------------------------- messages


def test_the_published_sdmf_example():
    # the Bellcore SDMF example: September 30, 12:24, number 609-555-1212, checksum 0x51
    wire = bytes.fromhex("04 12 30 39 33 30 31 32 32 34 36 30 39 35 35 35 31 32 31 32 51")
    assert cidmod.encode_message(SDMF_CID, "sdmf") == wire
    assert cidmod.parse_message(wire) == SDMF_CID


def test_mdmf_layout():
    msg = cidmod.encode_message(CallerId(number="123", name="AB", when="01020304"))
    assert msg[:2] == bytes([0x80, 2 + 8 + 2 + 3 + 2 + 2])
    assert msg[2:-1] == b"\x01\x0801020304" + b"\x02\x03123" + b"\x07\x02AB"
    assert sum(msg) % 256 == 0
    absent = cidmod.encode_message(CallerId(number_absent="P", name_absent="O"))
    head = bytes([0x80, 6, 0x04, 1, ord("P"), 0x08, 1, ord("O")])
    assert absent == head + bytes([(-(0x80 + 6 + 4 + 1 + 80 + 8 + 1 + 79)) & 0xFF])
    assert cidmod.parse_message(absent) == CallerId(number_absent="P", name_absent="O")


def test_unknown_mdmf_parameters_are_skipped():
    body = b"\x11\x01\x01" + b"\x02\x044425" + b"\x03\x02\x31\x32"  # call type, number, dialled number
    msg = bytes([0x80, len(body)]) + body
    assert cidmod.parse_message(msg + bytes([cidmod.checksum(msg)])) == CallerId(number="4425")


@pytest.mark.parametrize("wire,why", [
    (b"\x80", "does not match"),
    (b"\x80\x05\x02\x01\x31\x00", "does not match"),
    (b"\x80\x03\x02\x01\x31\x00", "bad checksum"),
    (b"\x80\x03\x02\x05\x31", "runs past"),
    (b"\x80\x06\x02\x01\x31\x02\x01\x32", "twice"),
    (b"\x80\x03\x04\x01X", "not 'O' or 'P'"),
    (b"\x80\x03\x07\x01\x07", "printable"),
    (b"\x80\x0a\x01\x0813450000", "MMDDHHMM"),
    (b"\x04\x05\x31\x32\x33\x34\x35", "shorter than"),
])
def test_malformed_messages_are_refused(wire, why):
    if wire[1:2] and len(wire) == wire[1] + 2:  # complete it with a good checksum
        wire = wire + bytes([cidmod.checksum(wire)])
    with pytest.raises(ValueError, match=why):
        cidmod.parse_message(wire)


def test_other_message_types_are_not_caller_id():
    mwi = bytes([0x82, 3, 0x0B, 1, 0xFF])
    with pytest.raises(cidmod.NotCallerId):
        cidmod.parse_message(mwi + bytes([cidmod.checksum(mwi)]))


@pytest.mark.parametrize("kwargs,why", [
    ({"number": "555-CALL"}, "a number is"),
    ({"number": ""}, "a number is"),
    ({"number": "1" * 33}, "a number is"),
    ({"name": "A\tB"}, "printable"),
    ({"name": "x" * 51}, "printable"),
    ({"when": "13011200"}, "MMDDHHMM"),
    ({"when": "0101120"}, "MMDDHHMM"),
    ({"number_absent": "X"}, "'O'"),
    ({"number": "1", "number_absent": "P"}, "and so is"),
    ({"name": "A", "name_absent": "O"}, "and so is"),
])
def test_bad_caller_ids_are_refused(kwargs, why):
    with pytest.raises(ValueError, match=why):
        CallerId(**kwargs)


def test_bad_encode_requests_are_refused():
    with pytest.raises(ValueError, match="needs the date"):
        cidmod.encode_message(CallerId(number="1"), "sdmf")
    with pytest.raises(ValueError, match="no name"):
        cidmod.encode_message(CallerId(number="1", name="A", when="01010000"), "sdmf")
    with pytest.raises(ValueError, match="unknown caller-ID standard"):
        cidmod.encode(FULL, "bell103")
    with pytest.raises(ValueError, match="unknown caller-ID format"):
        cidmod.encode(FULL, "v23", "xdmf")
    with pytest.raises(ValueError, match="level_dbm0"):
        cidmod.encode(FULL, "v23", level_dbm0=10)
    with pytest.raises(ValueError, match="unknown caller-ID standard"):
        CallerIdDecoder("bell212")
    with pytest.raises(ValueError, match="bytes or an int16 array"):
        CallerIdDecoder().feed([1, 2, 3])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the burst


def test_burst_bits():
    msg = cidmod.encode_message(SDMF_CID, "sdmf")
    bits = cidmod.message_bits(msg)
    assert bits[:300] == [0, 1] * 150
    assert bits[300:480] == [1] * 180
    chars = bits[480:480 + 10 * len(msg)]
    for k, byte in enumerate(msg):
        frame = chars[10 * k:10 * k + 10]
        assert frame[0] == 0 and frame[9] == 1
        assert sum(b << i for i, b in enumerate(frame[1:9])) == byte
    assert bits[480 + 10 * len(msg):] == [1] * cidmod.TRAILING_BITS


@pytest.mark.parametrize("standard", STANDARDS)
def test_burst_frequencies_and_level(standard):
    mark, space = cidmod.STANDARDS[standard]
    pcm = cidmod.modulate(b"\x04\x00\xfc", standard, level_dbm0=-20.0, seizure_bits=0,
                          mark_bits=1200, trailing_bits=0)
    x = dsp.samples(pcm)[:8000].astype(np.float64)  # one second of marks
    assert abs(dsp.level_dbm0(dsp.samples(pcm)[:8000]) + 20.0) < 0.1
    assert float(dsp.goertzel_power(x, mark)) > 0.99 * float(np.mean(x * x))
    spaces = cidmod.modulate(b"\x00", standard, seizure_bits=0, mark_bits=0, trailing_bits=0)
    z = dsp.samples(spaces)[8:48].astype(np.float64)  # inside the eight zero data bits
    assert float(dsp.goertzel_power(z, space)) > 0.9 * float(np.mean(z * z))
    assert len(pcm) == 2 * -(-8000 * (1200 + 30) // 1200)


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("standard", STANDARDS)
@pytest.mark.parametrize("fmt,cid", [("mdmf", FULL), ("sdmf", SDMF_CID),
                                     ("mdmf", CallerId(number_absent="O", name_absent="P", when="02291159")),
                                     ("sdmf", CallerId(number_absent="P", when="12312359"))])
@pytest.mark.parametrize("level", [-30.0, -20.0, -13.0, -5.0])
def test_decodes_across_levels(standard, fmt, cid, level):
    dec = CallerIdDecoder(standard)
    assert dec.feed(burst(cid, standard, fmt, level)) == cid
    assert (dec.messages, dec.errors, dec.ignored) == (1, 0, 0)
    assert dec.last_message == cidmod.encode_message(cid, fmt)


@pytest.mark.parametrize("standard", STANDARDS)
@pytest.mark.parametrize("level", [-30.0, -13.0, -5.0])
@pytest.mark.parametrize("seed", range(4))
def test_decodes_with_20_db_snr_white_noise(standard, level, seed):
    pcm = with_noise(burst(FULL, standard, level=level), level - 20.0, seed)
    dec = CallerIdDecoder(standard)
    assert dec.feed(pcm) == FULL
    assert dec.errors == 0


@pytest.mark.parametrize("standard", STANDARDS)
@pytest.mark.parametrize("rate", [7840, 7920, 8080, 8160])
def test_decodes_with_a_2_percent_clock_error(standard, rate):
    # resampled and played at 8 kHz: every bit 2 % long or short, every frequency 2 % off
    pcm = dsp.resample(burst(FULL, standard), 8000, rate)
    assert cidmod.decode(pcm, standard) == FULL


@pytest.mark.parametrize("standard", STANDARDS)
def test_bad_checksum_is_counted(standard):
    msg = bytearray(cidmod.encode_message(FULL))
    msg[-1] ^= 0x01
    pcm = dsp.silence_ms(50) + cidmod.modulate(bytes(msg), standard) + dsp.silence_ms(50)
    dec = CallerIdDecoder(standard)
    assert dec.feed(pcm) is None
    assert (dec.messages, dec.errors, dec.last_message) == (0, 1, None)
    # the decoder goes on: the next good burst decodes
    assert dec.feed(burst(FULL, standard)) == FULL
    assert (dec.messages, dec.errors) == (1, 1)


@pytest.mark.parametrize("standard", STANDARDS)
def test_malformed_and_foreign_messages_are_counted(standard):
    body = b"\x02\x09123"  # the parameter claims 9 bytes, the message has 3
    bad = bytes([0x80, len(body)]) + body
    mwi = bytes([0x82, 3, 0x0B, 1, 0xFF])
    dec = CallerIdDecoder(standard)
    for msg in (bad, mwi):
        pcm = cidmod.modulate(msg + bytes([cidmod.checksum(msg)]), standard) + dsp.silence_ms(50)
        assert dec.feed(pcm) is None
    assert (dec.messages, dec.errors, dec.ignored) == (0, 1, 1)


@pytest.mark.parametrize("standard", STANDARDS)
def test_a_burst_cut_short_is_counted_and_forgotten(standard):
    pcm = cidmod.encode(FULL, standard)
    dec = CallerIdDecoder(standard)
    assert dec.feed(pcm[: len(pcm) * 3 // 4] + dsp.silence_ms(100)) is None
    assert dec.errors == 1
    assert dec.feed(burst(FULL, standard)) == FULL


@pytest.mark.parametrize("standard", STANDARDS)
def test_two_bursts_in_a_row(standard):
    other = CallerId(number="911", name="B")
    dec = CallerIdDecoder(standard)
    assert dec.feed(burst(FULL, standard)) == FULL
    assert dec.feed(burst(other, standard)) == other
    assert dec.messages == 2


@pytest.mark.parametrize("standard", STANDARDS)
def test_noise_and_tones_decode_to_nothing(standard):
    dec = CallerIdDecoder(standard)
    for seed in range(3):
        assert dec.feed(dsp.white_noise(5000, -10.0, seed)) is None
    mark, space = cidmod.STANDARDS[standard]
    assert dec.feed(dsp.tone([mark], 3000, -10.0)) is None
    assert dec.feed(dsp.tone([mark, space], 3000, -10.0)) is None
    assert dec.messages == 0


# ----------------------------------------------------------------------------- properties

numbers = st.text(alphabet=sorted(cidmod.NUMBER_CHARS), min_size=1, max_size=cidmod.MAX_NUMBER)
names = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1,
                max_size=cidmod.MAX_NAME)
whens = st.builds(lambda mo, d, h, mi: f"{mo:02d}{d:02d}{h:02d}{mi:02d}",
                  st.integers(1, 12), st.integers(1, 31), st.integers(0, 23), st.integers(0, 59))
reasons = st.sampled_from(["O", "P"])


@st.composite
def caller_ids(draw: st.DrawFn) -> tuple[CallerId, str]:
    fmt = draw(st.sampled_from(cidmod.FORMATS))
    when = draw(whens) if fmt == "sdmf" else draw(st.none() | whens)
    if draw(st.booleans()):
        number, number_absent = draw(numbers), None
    else:
        number, number_absent = None, draw(reasons if fmt == "sdmf" else st.none() | reasons)
    name = name_absent = None
    if fmt == "mdmf":
        if draw(st.booleans()):
            name = draw(names)
        else:
            name_absent = draw(st.none() | reasons)
    return CallerId(number=number, name=name, when=when, number_absent=number_absent,
                    name_absent=name_absent), fmt


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=caller_ids(), standard=st.sampled_from(STANDARDS),
       level=st.floats(min_value=-30.0, max_value=-5.0), lead=st.integers(0, 4000),
       cuts=st.lists(st.integers(0, 40_000), max_size=8))
def test_roundtrip(case, standard, level, lead, cuts):
    cid, fmt = case
    assert cidmod.parse_message(cidmod.encode_message(cid, fmt)) == cid
    pcm = bytes(2 * lead) + cidmod.encode(cid, standard, fmt, level_dbm0=level) + dsp.silence_ms(50)
    dec = CallerIdDecoder(standard)
    edges = sorted({0, len(pcm), *(c for c in cuts if c < len(pcm))})
    got = [r for a, b in zip(edges, edges[1:], strict=False) if (r := dec.feed(pcm[a:b])) is not None]
    assert got == [cid]
    assert dec.errors == 0


@settings(max_examples=300, deadline=None)
@given(wire=st.binary(max_size=300))
def test_parse_never_fails_but_with_value_error(wire):
    try:
        cid = cidmod.parse_message(wire)
    except ValueError:
        return
    assert isinstance(cid, CallerId)
    assert sum(wire) % 256 == 0


@settings(max_examples=40, deadline=None)
@given(msg=st.binary(min_size=2, max_size=40), standard=st.sampled_from(STANDARDS))
def test_any_modulated_message_is_decoded_or_counted(msg, standard):
    dec = CallerIdDecoder(standard)
    result = dec.feed(cidmod.modulate(msg, standard) + dsp.silence_ms(50))
    assert dec.messages + dec.errors + dec.ignored <= 1
    if result is not None:
        assert result == cidmod.parse_message(dec.last_message)


@settings(max_examples=60, deadline=None)
@given(chunks=st.lists(st.binary(max_size=3000), max_size=12), standard=st.sampled_from(STANDARDS))
def test_arbitrary_audio_never_breaks_the_decoder(chunks, standard):
    dec = CallerIdDecoder(standard)
    for chunk in chunks:
        result = dec.feed(chunk)
        assert result is None or isinstance(result, CallerId)
        assert dec._d.size < 200  # noqa: SLF001 - bounded: about one character of audio
        assert len(dec._msg) <= cidmod.MAX_MESSAGE  # noqa: SLF001


@pytest.mark.parametrize("standard", STANDARDS)
@pytest.mark.parametrize("law", g711.LAWS)
@pytest.mark.parametrize("level", [-30.0, -5.0])
def test_decodes_through_g711(standard, law, level):
    heard = g711.decode(law, g711.encode(law, burst(FULL, standard, level=level)))
    assert cidmod.decode(heard, standard) == FULL
