"""On-hook caller ID (telephony.core.callerid): the message parser and the FSK decoder.

The first byte picks a mode:

* 0 (message): the bytes are one SDMF/MDMF message (type, length, body, checksum).
* 1 (audio): the bytes are 16-bit PCM for a decoder (Bell 202 or V.23), fed in reads of
  fuzzed sizes, possibly after a real burst.
* 2 (modem): a ``CallerId`` of fuzzed fields is modulated by ``encode`` and decoded.

Invariants: ``parse_message`` raises only ``ValueError`` (``NotCallerId`` for other types); a
message it accepts, written again by ``encode_message``, parses equal; the decoder raises
nothing for any bytes and keeps its counters consistent; what ``encode``
sends (either standard, either format) the decoder gives back exactly.
"""
from __future__ import annotations

from telephony.core.callerid import (
    NUMBER_CHARS,
    CallerId,
    CallerIdDecoder,
    decode,
    encode,
    encode_message,
    parse_message,
)
from tests.fuzz.common import Input, check, chunks

STANDARDS = ("bell202", "v23")
_NUMBER = "".join(sorted(NUMBER_CHARS))


def message(data: bytes) -> None:
    try:
        cid = parse_message(data)
    except ValueError:
        return
    fmt = "sdmf" if data[0] == 0x04 else "mdmf"
    try:
        again = encode_message(cid, fmt)
    except ValueError:
        check(fmt == "sdmf", f"MDMF {cid} cannot be written again")
        return  # an SDMF message whose number is empty (only the date): not writable
    check(parse_message(again) == cid, f"message round trip changed {cid}")


def audio(inp: Input) -> None:
    standard = STANDARDS[inp.u8() & 1]
    pattern = inp.u8()
    prefix = b""
    if inp.flag():
        prefix = encode(CallerId(number="5551001", name="Zoe"), standard)
    dec = CallerIdDecoder(standard)
    for piece in chunks(prefix + inp.rest(), pattern, scale=40):
        got = dec.feed(piece)
        check(got is None or isinstance(got, CallerId), f"{got!r:.80}")
    check(min(dec.messages, dec.errors, dec.ignored) >= 0, "negative counter")


def modem(inp: Input) -> None:
    standard, fmt = STANDARDS[inp.u8() & 1], ("mdmf", "sdmf")[inp.u8() & 1]
    number = "".join(_NUMBER[b % len(_NUMBER)] for b in inp.sized(32)) or None
    name = "".join(chr(0x20 + b % 95) for b in inp.sized(50)) or None
    when = "%02d%02d%02d%02d" % (1 + inp.u8() % 12, 1 + inp.u8() % 28, inp.u8() % 24,
                                 inp.u8() % 60) if inp.flag() else None
    absent = ("O", "P")[inp.u8() & 1] if number is None and inp.flag() else None
    try:
        cid = CallerId(number=number, name=name, when=when, number_absent=absent)
        pcm = encode(cid, standard, fmt)
    except ValueError:
        return
    got = decode(pcm, standard)
    check(got == cid, f"{standard} {fmt} {cid} decoded as {got}")


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    mode = inp.u8() % 3
    if mode == 0:
        message(inp.rest())
    elif mode == 1:
        audio(inp)
    else:
        modem(inp)


def seeds() -> list[bytes]:
    """Messages of each format and a burst of each standard."""
    cids = [CallerId(number="5551001", name="Zoe Smith", when="12071800"),
            CallerId(number_absent="P", name_absent="P", when="01010000")]
    out = [b"\0" + encode_message(c) for c in cids]
    out.append(b"\0" + encode_message(CallerId(number="5551001", when="12071800"), "sdmf"))
    out.append(b"\1\0\0" + encode(cids[0], "bell202")[:6000])
    out.append(b"\1\1\5\1" + bytes(200))
    out.append(b"\2\0\0" + bytes([7]) + b"5551001" + bytes([3]) + b"Zoe" + b"\1")
    return out
