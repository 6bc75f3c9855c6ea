"""Our caller-ID modem against spandsp's (libspandsp2, loaded through ctypes): our bursts
decode in spandsp's receiver to the same message bytes, and spandsp's transmitter's bursts
decode in ours to the same CallerId.  The library missing is a failure naming its package."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab import spandsp_callerid as sp
from telephony.core import callerid as cidmod
from telephony.core import dsp
from telephony.core.callerid import CallerId, CallerIdDecoder

STANDARDS = sorted(cidmod.STANDARDS)
CASES = [
    ("mdmf", CallerId(number="5551234567", name="ALICE Q. SMITH", when="12071353")),
    ("mdmf", CallerId(number_absent="P", name_absent="P", when="01010000")),
    ("mdmf", CallerId(number="4425", name_absent="O")),
    ("sdmf", CallerId(number="6095551212", when="09301224")),
    ("sdmf", CallerId(number_absent="O", when="12312359")),
]


def pad(pcm: bytes) -> bytes:
    return dsp.silence_ms(60) + pcm + dsp.silence_ms(120)


def test_the_library_loads():
    try:
        sp.library()
    except RuntimeError as e:
        pytest.fail(f"spandsp is needed for these tests: {e}")
    assert sp.STANDARDS == {"bell202": 1, "v23": 2}  # ADSI_STANDARD_CLASS, ADSI_STANDARD_CLIP


@pytest.mark.parametrize("standard", STANDARDS)
@pytest.mark.parametrize("fmt,cid", CASES)
@pytest.mark.parametrize("level", [-25.0, -13.0, -5.0])
def test_our_bursts_decode_in_spandsp(standard, fmt, cid, level):
    message = cidmod.encode_message(cid, fmt)
    got = sp.spandsp_receive(pad(cidmod.encode(cid, standard, fmt, level_dbm0=level)), standard)
    assert got == [message[:-1]]  # spandsp checked the checksum and dropped it


def fields_of(cid: CallerId, fmt: str) -> tuple[int, list[tuple[int, bytes]]]:
    """The message as adsi_add_field calls, built from the CallerId's fields (not our encoder)."""
    if fmt == "sdmf":
        return 0x04, [(0, (cid.when + (cid.number or cid.number_absent)).encode())]
    fields = []
    for code, value in ((1, cid.when), (2, cid.number), (4, cid.number_absent), (7, cid.name),
                        (8, cid.name_absent)):
        if value is not None:
            fields.append((code, value.encode()))
    return 0x80, fields


@pytest.mark.parametrize("standard", STANDARDS)
@pytest.mark.parametrize("fmt,cid", CASES)
def test_spandsp_bursts_decode_in_ours(standard, fmt, cid):
    kind, fields = fields_of(cid, fmt)
    pcm = sp.adsi_burst(kind, fields, standard)
    assert abs(dsp.level_dbm0(pcm) + 14.0) < 1.0  # spandsp transmits at -14 dBm0
    dec = CallerIdDecoder(standard)
    assert dec.feed(pad(pcm)) == cid
    assert dec.last_message == cidmod.encode_message(cid, fmt)
    assert dec.errors == 0


@pytest.mark.parametrize("standard", STANDARDS)
def test_spandsp_short_preamble_decodes_in_ours(standard):
    # spandsp's default preamble: 300 seizure bits and only 80 marks (call-waiting length)
    fmt, cid = CASES[0]
    kind, fields = fields_of(cid, fmt)
    assert cidmod.decode(pad(sp.adsi_burst(kind, fields, standard, mark_bits=80)), standard) == cid


@pytest.mark.parametrize("standard", STANDARDS)
def test_spandsp_sixteen_byte_parameter_quirk(standard):
    # spandsp 0.0.6's adsi_add_field doubles a length byte of 0x10 (a Japanese-format escape
    # applied to every standard); the message it sends is then malformed, and ours counts it
    name = b"SIXTEEN CHARS.AB"
    pcm = sp.adsi_burst(0x80, [(2, b"123"), (7, name)], standard)
    dec = CallerIdDecoder(standard)
    assert dec.feed(pad(pcm)) is None
    assert dec.errors == 1
    assert dec.last_message is not None and b"\x07\x10\x10" + name[:15] in dec.last_message
    assert sp.spandsp_receive(pad(pcm), standard)[0][2:] == b"\x02\x03123\x07\x10\x10" + name


numbers = st.text(alphabet="0123456789", min_size=1, max_size=20)
names = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=15)
whens = st.builds(lambda mo, d, h, mi: f"{mo:02d}{d:02d}{h:02d}{mi:02d}",
                  st.integers(1, 12), st.integers(1, 28), st.integers(0, 23), st.integers(0, 59))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(number=numbers, name=names, when=whens, standard=st.sampled_from(STANDARDS),
       level=st.floats(min_value=-25.0, max_value=-5.0))
def test_both_ways_for_many_caller_ids(number, name, when, standard, level):
    cid = CallerId(number=number, name=name, when=when)
    ours = cidmod.encode(cid, standard, level_dbm0=level)
    assert sp.spandsp_receive(pad(ours), standard) == [cidmod.encode_message(cid)[:-1]]
    kind, fields = fields_of(cid, "mdmf")
    if all(len(v) != 0x10 for _, v in fields):  # see the quirk above
        assert cidmod.decode(pad(sp.adsi_burst(kind, fields, standard)), standard) == cid


@pytest.mark.parametrize("standard", STANDARDS)
def test_spandsp_rejects_our_bad_checksum_too(standard):
    msg = bytearray(cidmod.encode_message(CASES[0][1]))
    msg[-1] ^= 0x80
    assert sp.spandsp_receive(pad(cidmod.modulate(bytes(msg), standard)), standard) == []
