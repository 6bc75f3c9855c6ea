"""Fixtures of the telephony tests: the Dovecot the IMAP tests share (one for the package,
started only when a test asks for it), a parametrised empty store of each kind, a Maildir
store."""
from __future__ import annotations

import pytest

from lab import dovecot
from lab.dovecot import DovecotServer
from telephony.store import ImapStore, MaildirStore

SKIP_IMAP = dovecot.available()
#: a test that needs the real Dovecot (in CI a skip fails: docs/testing.md)
needs_dovecot = pytest.mark.skipif(SKIP_IMAP is not None, reason=SKIP_IMAP or "")


@pytest.fixture(scope="package")
def dovecot_server(tmp_path_factory):
    if SKIP_IMAP:
        pytest.skip(SKIP_IMAP)
    with DovecotServer(tmp_path_factory.mktemp("dovecot")) as server:
        yield server


@pytest.fixture(params=["maildir", "imap"])
def store(request, tmp_path):
    """An empty store of each kind (the IMAP one on the package's Dovecot, mail wiped)."""
    if request.param == "maildir":
        root = tmp_path / "store"
        root.mkdir()
        return MaildirStore(root)
    if SKIP_IMAP:
        pytest.skip(SKIP_IMAP)
    server = request.getfixturevalue("dovecot_server")
    server.reset_mail()
    return ImapStore(server.host, server.port, credentials=server.credentials,
                     mailboxes=server.mailboxes)


@pytest.fixture
def maildir(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    return MaildirStore(root)
