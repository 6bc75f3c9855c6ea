"""In-band DTMF (telephony.core.dtmf.DtmfDetector) on arbitrary audio.

The first byte picks a mode:

* 0 (audio): the input is 16-bit PCM, fed in reads of fuzzed sizes.
* 1 (digits): digits and tone timing/level from the input, within the limits the detector's
  rules accept (tones and pauses of 40 ms or more, each tone -30 to -3 dBm0, twist within
  3 dB), made by ``generate``.

Invariants: ``feed`` raises only ``ValueError`` (an odd-length chunk) and then changes nothing;
the digits found do not depend on how the audio is cut; fewer than ``BLOCK`` samples are ever
held; every digit is a DTMF key; what ``generate`` makes is detected as exactly its digits.
"""
from __future__ import annotations

from telephony.core.dtmf import BLOCK, DIGITS, DtmfDetector, detect, generate
from tests.fuzz.common import Input, check, chunks


def audio(inp: Input) -> None:
    pattern = inp.u8()
    pcm = inp.rest()
    pcm = pcm[:len(pcm) & ~1]
    det = DtmfDetector()
    if pcm:  # an odd-length chunk is refused and changes nothing
        try:
            det.feed(pcm[:1])
        except ValueError:
            pass
        else:
            raise AssertionError("an odd-length chunk was accepted")
        check((det.samples, det.pending_samples, det.in_digit) == (0, 0, None),
              "a refused chunk changed the detector")
    found, carry = [], b""
    for piece in chunks(pcm, pattern, scale=20):
        piece = carry + piece
        carry = piece[len(piece) & ~1:]
        found += det.feed(piece[:len(piece) & ~1])
        check(det.pending_samples < BLOCK, f"{det.pending_samples} samples held")
    check(all(d in DIGITS for d in found), f"digits {found}")
    check("".join(found) == detect(pcm), "digits depend on how the audio was cut")


def digits(inp: Input) -> None:
    keys = "".join(DIGITS[b % 16] for b in inp.sized(12))
    on_ms, off_ms = 40 + inp.u8(), 40 + inp.u8()
    level = -3 - inp.u8() % 28
    twist = (inp.u8() % 61 - 30) / 10
    pcm = generate(keys, on_ms=on_ms, off_ms=off_ms, level_dbm0=level, twist_db=twist)
    got = detect(pcm)
    check(got == keys, f"generate({keys!r}, on {on_ms} ms, off {off_ms} ms, {level} dBm0, "
                       f"twist {twist} dB) detected as {got!r}")


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    if inp.u8() & 1:
        digits(inp)
    else:
        audio(inp)


def seeds() -> list[bytes]:
    """Generated digits (audio mode, with a burst of noise) and digit scripts."""
    pcm = generate("159#", on_ms=50, off_ms=50, level_dbm0=-12)
    noise = bytes((k * 7919) % 256 for k in range(800))
    return [b"\0\0" + pcm, b"\0\x99" + noise + pcm[:4000], b"\1\4" + b"\0\5\12\16" + b"\0\0\7\30",
            b"\1\3" + b"\17\13\3" + b"\377\377\0\0"]
