"""Voice messages read back from the message store (telephony.core.mime).

The first byte picks a mode:

* 0 (raw): the bytes are a stored file (a Maildir file, an IMAP FETCH body): ``parse_mime``,
  ``parse_headers``, then the listing record (``stored_message``, ``age_key``).
* 1 (round trip): a ``VoiceMessage`` made of fuzzed fields is written by ``build_mime``; what
  it writes must read back with every field as given.

Invariants: reading raises only ``StoreError``, whatever the bytes; a listing record never
fails; what ``build_mime`` accepts, ``parse_mime`` and ``parse_headers`` give back exactly
(caller, forwarding, node, call id, extension, time, reason, duration, term, id and audio).
"""
from __future__ import annotations

import math

from telephony.core.events import Reason
from telephony.core.message import VoiceMessage
from telephony.core.mime import (
    StoreError,
    age_key,
    build_mime,
    parse_headers,
    parse_mime,
    stored_message,
)
from tests.fuzz.common import Input, check

REASONS = tuple(Reason)


def read(data: bytes) -> None:
    try:
        headers, wav = parse_mime(data)
    except StoreError:
        headers = None
    else:
        check(isinstance(wav, bytes) and all(isinstance(k, str) and k == k.lower()
                                             and isinstance(v, str) for k, v in headers.items()),
              "parse_mime gave a bad header dict")
    try:
        listing = parse_headers(data)
    except StoreError:
        return
    m = stored_message("1", listing, False)
    check(math.isfinite(m.duration_s), f"duration {m.duration_s}")
    age_key(m)


def round_trip(inp: Input) -> None:
    fields = {name: inp.text(80) for name in ("caller", "forwarding", "node", "call_id",
                                                 "extension")}
    when = inp.text(40) if inp.flag() else "2026-12-07T18:00:00+00:00"
    mid = inp.sized(60).decode("ascii", "replace").replace("\ufffd", "?") + "@vmha"
    try:
        msg = VoiceMessage(message_id=mid, mailbox="1002", reason=REASONS[inp.u8() % len(REASONS)],
                           duration_s=inp.uint(2) / 8, term=inp.uint(4), recorded_at=when,
                           audio=b"RIFF" + inp.sized(300), **fields)
    except ValueError:
        return
    try:
        data = build_mime(msg)
    except StoreError:
        return
    headers, wav = parse_mime(data)
    check(wav == msg.audio, "audio changed")
    listing = parse_headers(data)
    for name in ("caller", "forwarding", "node", "call_id", "extension", "recorded_at"):
        key = "x-vmha-" + name.replace("_", "-")
        for h in (headers, listing):
            check(h.get(key) == getattr(msg, name),
                  f"{name} {getattr(msg, name)!r:.80} read back as {h.get(key)!r:.80}")
    m = stored_message("1", listing, False)
    check((m.message_id, m.reason, m.duration_s) == (msg.message_id, str(msg.reason),
                                                     round(msg.duration_s, 3)),
          f"listing {m!r:.120} of {msg.message_id!r}")
    check(headers["x-vmha-term"] == str(msg.term), "term changed")


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    if inp.u8() & 1:
        round_trip(inp)
    else:
        read(inp.rest())


def seeds() -> list[bytes]:
    """Messages written by ``build_mime`` (raw mode) and field sets (round-trip mode)."""
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(24)
    msgs = [VoiceMessage("c-1.ums-a.3@vmha", "1002", "1002", "5551001", "2000", Reason.BUSY, 4.5,
                         "ums-a", "c-1", 3, "2026-12-07T18:00:00+00:00", wav),
            VoiceMessage("c-2.ums-b.4@vmha", "1003", "1003", "Zoë ✓ \u0085", "", Reason.DIRECT, 0.0,
                         "ums-b", "c-2", 4, "2026-12-07T18:00:00", wav)]
    out = [b"\0" + build_mime(m) for m in msgs]
    out.append(b"\0" + build_mime(msgs[0]).replace(b"\n", b"\r\n"))
    fields = b"".join(bytes([len(t)]) + t for t in (b"5551001", b"1002", b"ums-a", b"c-1", b"2000"))
    out.append(b"\1" + fields + b"\0" + bytes([5]) + b"c-1.a" + bytes([2, 36, 0, 3, 0, 0, 0, 8])
               + b"WAVEfmt ")
    return out
