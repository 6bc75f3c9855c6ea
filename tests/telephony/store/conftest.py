"""The Dovecot the IMAP tests of the store package share (one for the package), and a
parametrised empty store of each kind."""
from __future__ import annotations

import pytest

from lab import dovecot
from lab.dovecot import DovecotServer
from telephony.store import ImapStore, MaildirStore

SKIP_IMAP = dovecot.available()


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
