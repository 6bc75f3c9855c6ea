"""The loopback trunk's wire: the bounds, one JSON line per message, and the checks of what a
client sends during a call (the protocol: :mod:`telephony.loopback`)."""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import trio

from telephony.core import media
from telephony.core.control import NEED_DATA, Closed, ControlConnection, ControlError, FramingError

MAX_LINE = 4096
MAX_AUDIO_CHUNK = 2560  # bytes of PCM in one audio line (160 ms); its line is < 3.5 KiB
MAX_PENDING_DIGITS = 32
DTMF_DIGITS = "0123456789*#"
ANNOUNCEMENTS = frozenset({"beep", "messages"})
OFFER_FIELDS = {"call_id", "calling", "called", "forwarding", "reason", "media", "line"}
_B64_MAX = 4 * ((MAX_AUDIO_CHUNK + 2) // 3)


def parse_call_op(msg: dict[str, Any]) -> tuple[str, Any]:
    """Check one client message sent during a call (a dict with a string ``op``).  Returns
    ``("audio", pcm)``, ``("dtmf", digit)``, ``("transfer", ok)`` or ``("hangup", None)``;
    raises ValueError with a message for the client otherwise.  Pure and bounded: the base64
    text is measured before it is decoded."""
    op = msg.get("op")
    if op == "hangup":
        return "hangup", None
    if op == "audio":
        _no_extra(msg, "audio")
        text = msg.get("audio")
        if not isinstance(text, str):
            raise ValueError("audio must be a base64 string of 16-bit PCM")
        if len(text) > _B64_MAX:
            raise ValueError(f"audio is over {MAX_AUDIO_CHUNK} bytes of PCM; send it in "
                             "smaller lines")
        try:
            pcm = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("audio is not valid base64") from None
        if not pcm:
            raise ValueError("audio is empty")
        if len(pcm) % media.SAMPLE_WIDTH:
            raise ValueError(f"audio must hold whole 16-bit samples: {len(pcm)} bytes is odd")
        if len(pcm) > MAX_AUDIO_CHUNK:
            raise ValueError(f"audio is {len(pcm)} bytes of PCM; at most {MAX_AUDIO_CHUNK} "
                             "per line")
        return "audio", pcm
    if op == "dtmf":
        _no_extra(msg, "digit")
        digit = msg.get("digit")
        if not (isinstance(digit, str) and len(digit) == 1 and digit in DTMF_DIGITS):
            raise ValueError(f"digit must be one of 0-9, * and #, got {digit!r:.20}")
        return "dtmf", digit
    if op == "transfer":
        _no_extra(msg, "ok")
        if not isinstance(msg.get("ok"), bool):
            raise ValueError("ok must be true (the transfer is done) or false (refused)")
        return "transfer", msg["ok"]
    raise ValueError(f"unknown op {op!r:.40} during a call; send audio, dtmf, transfer "
                     "or hangup")


def _no_extra(msg: dict[str, Any], *allowed: str) -> None:
    unknown = set(msg) - {"op", *allowed}
    if unknown:
        raise ValueError(f"unknown fields {', '.join(sorted(map(str, unknown)))[:80]}")



def line_bytes(**msg: Any) -> bytes:
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class JsonLines:
    """JSON lines on one client connection; reads are bounded, replies are serialised."""

    def __init__(self, stream: trio.abc.Stream, max_line: int) -> None:
        self.stream = stream
        self.conn = ControlConnection(max_line)
        self.lock = trio.Lock()
        self.offered = False
        self.media = False
        self.dropped_sent = False
        self.final_sent = False  # ended went out (flow calls)
        self._eof = False

    async def read(self) -> dict[str, Any] | None:
        """The next message with an "op", or None at end of stream (or after an over-long
        line, which is answered with an error)."""
        while True:
            try:
                ev = self.conn.next_event()
            except FramingError as exc:
                await self.reply(ev="error", message=f"{exc}; closing the connection")
                return None
            if ev is NEED_DATA:
                data = await self.stream.receive_some(65536)
                self.conn.receive_data(data)
                continue
            if isinstance(ev, Closed):
                return None
            if isinstance(ev, ControlError):
                await self.reply(ev="error", message=f"bad line: {ev.reason}")
                continue
            return ev

    async def reply(self, **msg: Any) -> None:
        data = line_bytes(**msg)
        async with self.lock:
            await self.stream.send_all(data)

    async def try_reply(self, **msg: Any) -> None:
        try:
            await self.reply(**msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass

    async def aclose(self) -> None:
        await self.stream.aclose()
