"""The identifiers every part of the messaging service agrees on.  Pure.

* a **mailbox id**: 1 to 64 of ``A-Z a-z 0-9 _ . -``, starting with a letter or digit (the
  configuration database's ``subscribers.mailbox``, a Maildir directory, an IMAP account);
* an **extension**: 1 to 32 digits.

Each caller raises its own error with its own message when a value does not match.
"""
from __future__ import annotations

import re

__all__ = ["MAILBOX_RE", "EXTENSION_RE"]

MAILBOX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
EXTENSION_RE = re.compile(r"[0-9]{1,32}")
