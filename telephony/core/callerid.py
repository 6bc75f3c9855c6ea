"""On-hook caller ID: the message formats, an FSK encoder and a streaming decoder.

Pure (numpy only).  Audio is PCM (docs/analog.md, "Audio format").

A caller-ID burst is FSK at 1200 baud, either Bell 202 (mark 1200 Hz, space 2200 Hz: the
Bellcore/Telcordia CLASS standard) or ITU-T V.23 (mark 1300 Hz, space 2100 Hz: ETSI CLIP,
EN 300 659).  It is a channel seizure of alternating bits, a run of marks, then the message as
asynchronous characters (a space start bit, eight data bits least significant first, a mark
stop bit).  The message is a type byte, a length byte, that many bytes of body and a checksum
that makes the sum of every byte of the message 0 modulo 256.

* SDMF (type 0x04): the body is the date and time as eight ASCII digits ``MMDDHHMM``, then the
  number, or ``O`` (out of area) / ``P`` (private) when there is none.
* MDMF (type 0x80): the body is a list of parameters, each a type byte, a length byte and a
  value: 0x01 date/time (``MMDDHHMM``), 0x02 number, 0x04 reason the number is absent
  (``O``/``P``), 0x07 name, 0x08 reason the name is absent.  Other parameters are skipped.

:class:`CallerIdDecoder` demodulates with a pair of one-bit correlators (the energy at the mark
and at the space frequency over the last seven samples), finds each character by its start
bit (the first space after marks) and samples its bits at their centres, so its clock is
re-timed on every character.  A message is taken only after at least ten marks in a row (the
mark run of the burst), so the channel seizure is never mistaken for one.  A bad checksum or a
malformed message is counted in :attr:`CallerIdDecoder.errors` and otherwise ignored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from telephony.core.dsp import DBM0_PEAK, RATE, pcm_bytes, samples

BAUD: Final = 1200
STANDARDS: Final = {"bell202": (1200.0, 2200.0), "v23": (1300.0, 2100.0)}  # (mark, space) Hz
FORMATS: Final = ("mdmf", "sdmf")
SDMF: Final = 0x04
MDMF: Final = 0x80
P_DATETIME: Final = 0x01
P_NUMBER: Final = 0x02
P_NUMBER_ABSENT: Final = 0x04
P_NAME: Final = 0x07
P_NAME_ABSENT: Final = 0x08
REASONS: Final = {"O": "out of area", "P": "private"}
MAX_NUMBER: Final = 32
MAX_NAME: Final = 50
NUMBER_CHARS: Final = frozenset("0123456789*#+-() ")
SEIZURE_BITS: Final = 300
MARK_BITS: Final = 180
TRAILING_BITS: Final = 10
LEVEL_DBM0: Final = -13.0  # default transmit level
CARRIER_DBM0: Final = -40.0  # weakest carrier the decoder listens to
ARM_BITS: Final = 40  # marks in a row before a message may start (the burst has 180)
MAX_GAP_BITS: Final = 40  # most marks between two characters of one message
MAX_MESSAGE: Final = 258  # type + length + 255 + checksum

_SPB = RATE / BAUD  # samples per bit (6.67)
_WINDOW = 7  # correlator length in samples (about one bit)
_PERIOD = 80  # samples after which every 100 Hz-multiple oscillator repeats


class NotCallerId(ValueError):
    """A well-formed message of another kind (message waiting, for example)."""


@dataclass(frozen=True)
class CallerId:
    """What a caller-ID message says; every field may be missing.

    ``when`` is ``MMDDHHMM``; ``number_absent``/``name_absent`` say why the number/name is
    missing: ``"O"`` out of area (unavailable), ``"P"`` private."""

    number: str | None = None
    name: str | None = None
    when: str | None = None
    number_absent: str | None = None
    name_absent: str | None = None

    def __post_init__(self) -> None:
        if self.number is not None:
            if not isinstance(self.number, str) or not 1 <= len(self.number) <= MAX_NUMBER \
                    or not set(self.number) <= NUMBER_CHARS:
                raise ValueError(f"a number is 1 to {MAX_NUMBER} of {''.join(sorted(NUMBER_CHARS))!r}, "
                                 f"got {self.number!r:.60}")
        if self.name is not None:
            if not isinstance(self.name, str) or not 1 <= len(self.name) <= MAX_NAME \
                    or not all(" " <= c <= "~" for c in self.name):
                raise ValueError(f"a name is 1 to {MAX_NAME} printable ASCII characters, "
                                 f"got {self.name!r:.70}")
        if self.when is not None:
            _check_when(self.when)
        for field, value, present in (("number_absent", self.number_absent, self.number),
                                      ("name_absent", self.name_absent, self.name)):
            if value is not None and value not in REASONS:
                raise ValueError(f"{field} is 'O' (out of area) or 'P' (private), got {value!r:.20}")
            if value is not None and present is not None:
                raise ValueError(f"{field} is given, and so is the {field.split('_')[0]}")


def _check_when(when: object) -> None:
    ok = isinstance(when, str) and len(when) == 8 and when.isascii() and when.isdigit()
    if ok:
        month, day, hour, minute = (int(when[i:i + 2]) for i in range(0, 8, 2))
        ok = 1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59
    if not ok:
        raise ValueError(f"a date and time is MMDDHHMM (eight digits), got {when!r:.20}")


def _check(standard: str, fmt: str = "mdmf") -> None:
    if not isinstance(standard, str) or standard not in STANDARDS:
        raise ValueError(f"unknown caller-ID standard {standard!r:.30}; known: {', '.join(STANDARDS)}")
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ValueError(f"unknown caller-ID format {fmt!r:.30}; known: {', '.join(FORMATS)}")


# ============================================================================ messages


def checksum(data: bytes) -> int:
    """The byte that makes the sum of ``data`` and itself 0 modulo 256."""
    return -sum(data) & 0xFF


def encode_message(cid: CallerId, fmt: str = "mdmf") -> bytes:
    """The message bytes of ``cid``: type, length, body, checksum."""
    if not isinstance(cid, CallerId):
        raise ValueError(f"a CallerId is needed, not {type(cid).__name__}")
    _check("bell202", fmt)
    if fmt == "sdmf":
        if cid.when is None:
            raise ValueError("an SDMF message needs the date and time (when)")
        if cid.name is not None or cid.name_absent is not None:
            raise ValueError("an SDMF message carries no name; use MDMF")
        number = cid.number if cid.number is not None else cid.number_absent
        if number is None:
            raise ValueError("an SDMF message needs a number or the reason it is absent")
        kind, body = SDMF, (cid.when + number).encode("ascii")
    else:
        params = [(P_DATETIME, cid.when), (P_NUMBER, cid.number), (P_NUMBER_ABSENT, cid.number_absent),
                  (P_NAME, cid.name), (P_NAME_ABSENT, cid.name_absent)]
        kind, body = MDMF, b"".join(bytes([code, len(value)]) + value.encode("ascii")
                                    for code, value in params if value is not None)
    msg = bytes([kind, len(body)]) + body
    return msg + bytes([checksum(msg)])


def _text(value: bytes, what: str) -> str:
    if not all(0x20 <= b <= 0x7E for b in value):
        raise ValueError(f"the {what} holds bytes that are not printable ASCII")
    return value.decode("ascii")


def _reason(value: bytes, what: str) -> str:
    text = _text(value, what)
    if text not in REASONS:
        raise ValueError(f"the {what} is not 'O' or 'P': {text!r:.20}")
    return text


def parse_message(msg: bytes) -> CallerId:
    """The :class:`CallerId` in one whole message (type, length, body, checksum).

    Raises ValueError for a wrong length, a bad checksum or a malformed body, and
    :class:`NotCallerId` (a ValueError) for a valid message of another type."""
    msg = bytes(msg)
    if len(msg) < 3 or len(msg) != msg[1] + 3:
        raise ValueError(f"a message of {len(msg)} bytes does not match its length byte")
    if sum(msg) & 0xFF:
        raise ValueError(f"bad checksum 0x{msg[-1]:02x} (expected 0x{checksum(msg[:-1]):02x})")
    kind, body = msg[0], msg[2:-1]
    if kind == SDMF:
        if len(body) < 8:
            raise ValueError("an SDMF message shorter than its date and time")
        when, rest = _text(body[:8], "date and time"), _text(body[8:], "number")
        if rest in REASONS:
            return CallerId(when=when, number_absent=rest)
        return CallerId(when=when, number=rest or None)
    if kind != MDMF:
        raise NotCallerId(f"message type 0x{kind:02x} is not caller ID")
    fields: dict[int, bytes] = {}
    pos = 0
    while pos < len(body):
        if pos + 2 > len(body) or pos + 2 + body[pos + 1] > len(body):
            raise ValueError(f"parameter at offset {pos} runs past the end of the message")
        code, size = body[pos], body[pos + 1]
        if code in fields:
            raise ValueError(f"parameter 0x{code:02x} given twice")
        fields[code] = body[pos + 2:pos + 2 + size]
        pos += 2 + size
    out: dict[str, str] = {}
    for code, key, conv in ((P_DATETIME, "when", _text), (P_NUMBER, "number", _text),
                            (P_NUMBER_ABSENT, "number_absent", _reason), (P_NAME, "name", _text),
                            (P_NAME_ABSENT, "name_absent", _reason)):
        if code in fields:
            out[key] = conv(fields[code], key.replace("_", " "))
    return CallerId(**out)


# ============================================================================ modulation


def message_bits(message: bytes, *, seizure_bits: int = SEIZURE_BITS, mark_bits: int = MARK_BITS,
                 trailing_bits: int = TRAILING_BITS) -> list[int]:
    """The bit sequence of a burst (1 = mark): seizure 0101..., marks, the characters of
    ``message`` (start bit, eight data bits LSB first, stop bit), trailing marks."""
    for name, value in (("seizure_bits", seizure_bits), ("mark_bits", mark_bits),
                        ("trailing_bits", trailing_bits)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2000:
            raise ValueError(f"{name} must be an integer from 0 to 2000, got {value!r:.20}")
    if not isinstance(message, (bytes, bytearray)) or not 1 <= len(message) <= MAX_MESSAGE:
        raise ValueError(f"a message is 1 to {MAX_MESSAGE} bytes")
    bits = [i & 1 for i in range(seizure_bits)] + [1] * mark_bits
    for byte in message:
        bits += [0, *((byte >> i) & 1 for i in range(8)), 1]
    return bits + [1] * trailing_bits


def modulate(message: bytes, standard: str = "bell202", *, level_dbm0: float = LEVEL_DBM0,
             seizure_bits: int = SEIZURE_BITS, mark_bits: int = MARK_BITS,
             trailing_bits: int = TRAILING_BITS) -> bytes:
    """PCM of the FSK burst carrying ``message`` (whole message bytes), phase-continuous."""
    _check(standard)
    if isinstance(level_dbm0, bool) or not isinstance(level_dbm0, (int, float)) \
            or not -60.0 <= level_dbm0 <= 3.0:
        raise ValueError(f"level_dbm0 must be from -60 to +3, got {level_dbm0!r:.20}")
    bits = np.array(message_bits(message, seizure_bits=seizure_bits, mark_bits=mark_bits,
                                 trailing_bits=trailing_bits), dtype=np.int8)
    mark, space = STANDARDS[standard]
    n = math.ceil(bits.size * _SPB)
    which = np.minimum((np.arange(n) * BAUD) // RATE, bits.size - 1)
    freq = np.where(bits[which] == 1, mark, space)
    phase = 2 * np.pi * np.cumsum(freq) / RATE
    return pcm_bytes(DBM0_PEAK * 10 ** (level_dbm0 / 20) * np.sin(phase - phase[0]))


def encode(cid: CallerId, standard: str = "bell202", fmt: str = "mdmf", *,
           level_dbm0: float = LEVEL_DBM0) -> bytes:
    """PCM of the whole caller-ID burst for ``cid`` (seizure, marks, message)."""
    _check(standard, fmt)
    return modulate(encode_message(cid, fmt), standard, level_dbm0=level_dbm0)


# ============================================================================ demodulation


class CallerIdDecoder:
    """Streaming FSK caller-ID receiver for one line.

    ``feed(pcm)`` takes any amount of audio and returns the :class:`CallerId` of the last
    message completed in it, or None.  Counters: :attr:`messages` (caller-ID messages
    decoded), :attr:`errors` (bad checksums, framing errors inside a message, malformed or
    cut-off messages), :attr:`ignored` (valid messages of another type);
    :attr:`last_message` holds the bytes of the last message with a good checksum.  The
    decoder keeps at most about one character of audio between calls."""

    def __init__(self, standard: str = "bell202") -> None:
        _check(standard)
        self.standard = standard
        mark, space = STANDARDS[standard]
        k = np.arange(_PERIOD)
        self._osc_mark = np.exp(-2j * np.pi * mark * k / RATE)
        self._osc_space = np.exp(-2j * np.pi * space * k / RATE)
        amp = DBM0_PEAK * 10 ** (CARRIER_DBM0 / 20) * _WINDOW / 2
        self._carrier_power = amp * amp
        self.reset()
        self.messages = 0
        self.errors = 0
        self.ignored = 0
        self.last_message: bytes | None = None

    def reset(self) -> None:
        """Forget the audio and any message in progress (the counters stay)."""
        self._pos = 0  # absolute index of the next input sample
        self._odd = b""  # a lone byte of an odd-length chunk
        self._tail = np.zeros(_WINDOW - 1)
        self._d = np.zeros(0)  # mark minus space energy, per sample
        self._on = np.zeros(0, dtype=bool)  # carrier present, per sample
        self._base = 0  # absolute index of _d[0]
        self._cursor = 0  # absolute index of the next sample to examine
        self._marks = 0  # samples of continuous mark so far
        self._armed = False
        self._msg = bytearray()

    def _demodulate(self, x: np.ndarray) -> None:
        ext = np.concatenate([self._tail, x])
        idx = (np.arange(ext.size) + self._pos - (_WINDOW - 1)) % _PERIOD
        out = []
        for osc in (self._osc_mark, self._osc_space):
            c = np.concatenate([[0], np.cumsum(ext * osc[idx])])
            s = c[_WINDOW:] - c[:-_WINDOW]
            out.append(s.real ** 2 + s.imag ** 2)
        pm, ps = out
        self._tail = ext[-(_WINDOW - 1):]
        self._pos += x.size
        keep = self._cursor - self._base
        self._d = np.concatenate([self._d[keep:], pm - ps])
        self._on = np.concatenate([self._on[keep:], np.maximum(pm, ps) >= self._carrier_power])
        self._base = self._cursor

    def _fail(self) -> None:
        if self._msg:
            self.errors += 1
        self._msg.clear()
        self._armed = False
        self._marks = 0

    def _char(self, start: int) -> int | None:
        """The byte whose start bit's correlator edge is at ``start`` (relative index), -1 for
        a false start, -2 for a framing error, None when more audio is needed."""
        last = start + int(round(9.5 * _SPB)) + 1
        if last >= self._d.size:
            return None
        centres = [start + int(round((k + 0.5) * _SPB)) for k in range(10)]
        vals = [float(self._d[c - 1:c + 2].sum()) for c in centres]
        if vals[0] >= 0:
            return -1
        if vals[9] <= 0:
            return -2
        return sum(1 << i for i in range(8) if vals[1 + i] > 0)

    def _run(self) -> CallerId | None:
        found = None
        i = self._cursor - self._base
        d, on, n = self._d, self._on, self._d.size
        arm, gap = int(ARM_BITS * _SPB), int(MAX_GAP_BITS * _SPB)
        # runs of equal state (0 no carrier, 1 mark, 2 space): where each one ends
        state = np.where(on, np.where(d > 0, 1, 2), 0)
        starts = np.flatnonzero(state[1:] != state[:-1]) + 1

        def run_end(at: int) -> int:
            k = int(np.searchsorted(starts, at, side="right"))
            return int(starts[k]) if k < starts.size else n

        while i < n:
            if state[i] == 0:
                self._fail()
                i = run_end(i)
                continue
            if state[i] == 1:
                j = run_end(i)
                self._marks += j - i
                if not self._msg and self._marks >= arm:
                    self._armed = True
                if self._msg and self._marks > gap:
                    self._fail()
                i = j
                continue
            if not (self._armed or self._msg):
                self._marks = 0
                i = run_end(i)
                continue
            byte = self._char(i)
            if byte is None:
                break
            if byte == -1:
                i += 1
                continue
            i += int(round(9.5 * _SPB)) + 1
            self._marks = 0
            if byte == -2:
                self._fail()
                continue
            self._armed = False
            self._msg.append(byte)
            if len(self._msg) >= 2 and len(self._msg) == self._msg[1] + 3:
                found = self._finish(bytes(self._msg)) or found
                self._msg.clear()
        self._cursor = self._base + i
        return found

    def _finish(self, msg: bytes) -> CallerId | None:
        if sum(msg) & 0xFF == 0:
            self.last_message = msg
        try:
            cid = parse_message(msg)
        except NotCallerId:
            self.ignored += 1
            return None
        except ValueError:
            self.errors += 1
            return None
        self.messages += 1
        return cid

    def feed(self, pcm: bytes | bytearray | memoryview | np.ndarray) -> CallerId | None:
        """Decode more audio; the caller ID of the last message completed in it, or None."""
        if isinstance(pcm, np.ndarray):
            x = samples(pcm).astype(np.float64)
        elif isinstance(pcm, (bytes, bytearray, memoryview)):
            data = self._odd + bytes(pcm)
            cut = len(data) & ~1
            self._odd = data[cut:]
            x = np.frombuffer(data[:cut], dtype="<i2").astype(np.float64)
        else:
            raise ValueError(f"PCM audio must be bytes or an int16 array, not {type(pcm).__name__}")
        if x.size == 0:
            return None
        found = None
        for start in range(0, x.size, 8000):  # one second at a time keeps the buffers small
            self._demodulate(x[start:start + 8000])
            found = self._run() or found
        return found


def decode(pcm: bytes | np.ndarray, standard: str = "bell202") -> CallerId | None:
    """The caller ID a fresh :class:`CallerIdDecoder` finds in ``pcm`` (the last one)."""
    return CallerIdDecoder(standard).feed(pcm)
