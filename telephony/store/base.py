"""The message store's interface, shared by its implementations: :class:`MessageStore`, the
two errors and the listing record.

Errors: :class:`StoreUnavailable` means "not now" (connection refused, timeout, login refused,
disk full, the store directory missing): the caller spools the message and retries later.
:class:`StoreError` (from :mod:`telephony.core.mime`) means the request itself is wrong (bad
mailbox id, unknown uid, a message field that cannot be stored, a message too large); retrying
cannot help.  A request refused with :class:`StoreError` changes nothing in the store.
"""
from __future__ import annotations

import builtins
import imaplib
from typing import Protocol

from telephony.core.message import VoiceMessage
from telephony.core.mime import StoredMessage, StoreError

__all__ = ["StoreUnavailable", "StoreError", "StoredMessage", "MessageStore", "error_text"]


class StoreUnavailable(Exception):
    """The store cannot be reached or used now; spool the message and retry later."""


class MessageStore(Protocol):
    async def deliver(self, msg: VoiceMessage) -> bool:
        """Store ``msg``: True if stored now, False if a message with its ``message_id`` was
        already there.  Raises StoreUnavailable (retry later) or StoreError (never storable)."""

    async def counts(self, mailbox: str) -> tuple[int, int]:
        """(new = unheard, heard) messages of ``mailbox``."""

    async def list(self, mailbox: str, *, new_only: bool = False) -> builtins.list[StoredMessage]:
        """The messages of ``mailbox``, oldest (by ``recorded_at``) first."""

    async def fetch_audio(self, mailbox: str, uid: str) -> bytes:
        """The WAV bytes of one message (does not mark it heard)."""

    async def mark_heard(self, mailbox: str, uid: str) -> None:
        """Mark one message heard (idempotent)."""

    async def all_counts(self) -> dict[str, tuple[int, int]]:
        """(new, heard) of every mailbox that has at least one message."""

    async def aclose(self) -> None:
        """Release resources; later calls raise StoreUnavailable."""


def error_text(e: BaseException) -> str:
    """The short reason of an OS or ``imaplib`` error, for a StoreUnavailable message."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e.args[0]) if isinstance(e, imaplib.IMAP4.error) and e.args else str(e)
    if text.startswith(("b'", 'b"')):
        text = text[2:-1]
    return text or type(e).__name__
