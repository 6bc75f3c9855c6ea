"""telephony/core/ids.py: the one mailbox id and extension rule, and that every checker uses it."""
from __future__ import annotations

import pytest

from telephony.configdb.core.validators import BadValue, v_extension, v_mailbox
from telephony.core.ids import EXTENSION_RE, MAILBOX_RE
from telephony.core.mime import StoreError, check_mailbox
from telephony.core.mwi import MemoryMwiLedger, MwiError, MwiPlanner

MAILBOXES = ["1", "mb1001", "A.b_c-d", "9" * 64, "", "_x", ".x", "-x", "a/b", "a b", "m" * 65,
             "é", "mb\n"]
EXTENSIONS = ["1", "1001", "9" * 32, "", "1" * 33, "12a", " 1", "١٢"]


def test_the_rules():
    assert [m for m in MAILBOXES if MAILBOX_RE.fullmatch(m)] == ["1", "mb1001", "A.b_c-d", "9" * 64]
    assert [e for e in EXTENSIONS if EXTENSION_RE.fullmatch(e)] == ["1", "1001", "9" * 32]


@pytest.mark.parametrize("mailbox", MAILBOXES)
def test_every_mailbox_check_agrees(mailbox):
    good = MAILBOX_RE.fullmatch(mailbox) is not None
    outcomes = []
    for check, error in ((check_mailbox, StoreError), (v_mailbox, BadValue)):
        try:
            check(mailbox)
            outcomes.append(True)
        except error:
            outcomes.append(False)
    planner = MwiPlanner(MemoryMwiLedger())
    planner.set_term(2)
    try:
        planner.on_counts(mailbox, "1001", 0, 0, "deliver")
        outcomes.append(True)
    except MwiError:
        outcomes.append(False)
    assert outcomes == [good] * 3


@pytest.mark.parametrize("extension", EXTENSIONS)
def test_every_extension_check_agrees(extension):
    good = EXTENSION_RE.fullmatch(extension) is not None
    try:
        v_extension(extension)
        db = True
    except BadValue:
        db = False
    planner = MwiPlanner(MemoryMwiLedger())
    planner.set_term(2)
    try:
        planner.on_counts("mb1", extension, 0, 0, "deliver")
        mwi = True
    except MwiError:
        mwi = False
    assert db == mwi == good
