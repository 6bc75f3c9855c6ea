"""A recorded voice message, as the call flow hands it to the message store.  Pure data."""
from __future__ import annotations

from dataclasses import dataclass

from telephony.core.events import Reason


@dataclass(frozen=True)
class VoiceMessage:
    """One voice message.  ``message_id`` makes delivery idempotent: storing the same
    ``message_id`` twice (after a retry, a spool replay, a failover) leaves one message.

    ``message_id`` is ``<call_id>.<node>.<term>@vmha`` style, unique per recording, and at
    most 200 ASCII characters without spaces, ``<`` or ``>``.  ``audio`` is a WAV file's bytes
    (RIFF, 8 kHz 16-bit mono PCM from the loopback port)."""

    message_id: str
    mailbox: str  # the subscriber's mailbox id (configdb subscribers.mailbox)
    extension: str  # the subscriber's extension
    caller: str  # calling number ("" if unknown)
    forwarding: str  # the forwarding (redirecting) number, "" for a direct call
    reason: Reason
    duration_s: float
    node: str  # the node that recorded it
    call_id: str
    term: int  # the term the recording node was active in
    recorded_at: str  # ISO 8601 UTC, informational (the Date header); never compared
    audio: bytes

    def __post_init__(self) -> None:
        mid = self.message_id
        if not (isinstance(mid, str) and 0 < len(mid) <= 200 and mid.isascii()
                and not any(c in mid for c in " <>\t\r\n")):
            raise ValueError(f"message_id {mid!r}: 1..200 ASCII characters without spaces or <>")
        if not isinstance(self.audio, bytes) or not self.audio.startswith(b"RIFF"):
            raise ValueError("audio must be the bytes of a WAV (RIFF) file")
        if not isinstance(self.reason, Reason):
            raise ValueError(f"reason must be a Reason, not {self.reason!r}")


def message_id_for(call_id: str, node: str, term: int) -> str:
    """The idempotency key of the message recorded on ``call_id`` by ``node`` in ``term``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in call_id)[:120]
    return f"{safe}.{node}.{term}@vmha"
