"""Voice-message factories the telephony tests share: a small WAV and a complete
:class:`~telephony.core.message.VoiceMessage` whose fields depend on one number."""
from __future__ import annotations

import io
import math
import wave

from telephony.core.events import Reason
from telephony.core.message import VoiceMessage, message_id_for


def make_wav(seed: int = 0, frames: int = 800) -> bytes:
    """A small 8 kHz 16-bit mono WAV whose samples depend on ``seed``."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"".join(
            int(8000 * math.sin((i + seed * 7) / 5)).to_bytes(2, "little", signed=True)
            for i in range(frames)))
    return buf.getvalue()


def make_message(n: int = 1, mailbox: str = "mb1001", **over) -> VoiceMessage:
    fields = dict(
        message_id=message_id_for(f"call-{n}", "node-a", 2), mailbox=mailbox,
        extension="1001", caller=f"030123{n:04d}", forwarding="4711",
        reason=Reason.NO_ANSWER, duration_s=1.25 + n, node="node-a", call_id=f"call-{n}",
        term=2, recorded_at=f"2026-11-25T10:{n % 60:02d}:00+00:00", audio=make_wav(n))
    fields.update(over)
    return VoiceMessage(**fields)
