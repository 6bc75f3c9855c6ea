"""The identifiers every part of the messaging service agrees on.  Pure.

* a **mailbox id**: 1 to 64 of ``A-Z a-z 0-9 _ . -``, starting with a letter or digit (the
  configuration database's ``subscribers.mailbox``, a Maildir directory, an IMAP account);
* an **extension**: 1 to 32 digits;
* a mailbox's **message count** (new, old): an integer >= 0 (:func:`check_count`).

Each caller raises its own error with its own message when a value does not match.
"""
from __future__ import annotations

import re

__all__ = ["MAILBOX_RE", "EXTENSION_RE", "check_count"]

MAILBOX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
EXTENSION_RE = re.compile(r"[0-9]{1,32}")


def check_count(name: str, mailbox: object, value: object, error: type[Exception]) -> int:
    """``value`` if it is a message count (an ``int`` >= 0, not a bool), else ``error``."""
    if type(value) is not int or value < 0:
        raise error(f"{name} count of mailbox {mailbox!r} must be an integer >= 0, not {value!r}")
    return value
