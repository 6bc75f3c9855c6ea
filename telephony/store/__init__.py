"""The message store: where voice messages live once recorded (the guide's separate message
server).

Two implementations of :class:`~telephony.store.base.MessageStore`:

* :class:`~telephony.store.maildir.MaildirStore` — one Maildir per mailbox under a root
  directory both nodes can reach (the default).  The file name (the Maildir key, the message's
  ``uid``) is derived from the ``message_id``, so a second delivery of the same message finds
  the first one.
* :class:`~telephony.store.imap.ImapStore` — one account per mailbox on a real IMAP server
  (Dovecot), through the standard library's :mod:`imaplib` in worker threads, one connection
  per call.

Every message is a MIME mail built by :func:`~telephony.core.mime.build_mime` (headers
``X-VMHA-*`` carry the call data, the WAV is an ``audio/wav`` attachment);
:func:`~telephony.core.mime.parse_mime` is its inverse.  The MIME form is pure and lives in
:mod:`telephony.core.mime`; the interface and errors in :mod:`telephony.store.base`.

Errors: :class:`StoreUnavailable` means "not now" (connection refused, timeout, login refused,
disk full, the store directory missing): the caller spools the message and retries later.
:class:`StoreError` means the request itself is wrong (bad mailbox id, unknown uid, a message
field that cannot be stored, a message too large); retrying cannot help.  A request refused
with :class:`StoreError` changes nothing in the store.
"""
from __future__ import annotations

from telephony.core.mime import (
    MAX_MESSAGE,
    build_mime,
    check_mailbox,
    parse_headers,
    parse_mime,
    safe_name,
)
from telephony.store.base import MessageStore, StoredMessage, StoreError, StoreUnavailable
from telephony.store.imap import STATUS_PER_LOGIN, STATUS_WINDOW, ImapStore
from telephony.store.maildir import MaildirStore

__all__ = [
    "StoreUnavailable", "StoreError", "StoredMessage", "MessageStore", "MaildirStore",
    "ImapStore", "build_mime", "parse_mime", "parse_headers", "check_mailbox", "safe_name",
    "MAX_MESSAGE", "STATUS_PER_LOGIN", "STATUS_WINDOW",
]
