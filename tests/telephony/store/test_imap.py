"""telephony/store/imap.py: what only the ImapStore does, against a real Dovecot."""
from __future__ import annotations

import socket

import pytest
import trio

from lab import dovecot
from lab.dovecot import DovecotServer
from telephony.store import ImapStore, StoreError, StoreUnavailable
from tests.telephony.conftest import needs_dovecot
from tests.telephony.messages import make_message


@needs_dovecot
async def test_imap_race_keeps_the_older_copy(dovecot_server, monkeypatch):
    """Another node appended the same message between our search and our append: the
    re-check after APPEND finds two, keeps the older UID and expunges ours."""
    dovecot_server.reset_mail()
    store = ImapStore(dovecot_server.host, dovecot_server.port,
                      credentials=dovecot_server.credentials)
    msg = make_message(1)
    assert await store.deliver(msg) is True
    real = ImapStore._find_uids
    calls = []

    def blind_once(conn, message_id):
        calls.append(message_id)
        return [] if len(calls) == 1 else real(conn, message_id)

    monkeypatch.setattr(ImapStore, "_find_uids", staticmethod(blind_once))
    assert await store.deliver(msg) is False
    assert [m.uid for m in await store.list("mb1001")] == ["1"]
    assert await store.counts("mb1001") == (1, 0)


@needs_dovecot
async def test_imap_wrong_password_is_unavailable_with_a_clear_message(dovecot_server):
    store = ImapStore(dovecot_server.host, dovecot_server.port,
                      credentials=lambda mb: (mb, "not-the-password"))
    with pytest.raises(StoreUnavailable) as exc:
        await store.deliver(make_message(1))
    text = str(exc.value)
    assert "login as 'mb1001'" in text and "refused" in text
    assert "AUTHENTICATIONFAILED" in text
    assert "not-the-password" not in text


@needs_dovecot
async def test_imap_unknown_account_is_a_store_error(dovecot_server):
    store = ImapStore(dovecot_server.host, dovecot_server.port,
                      credentials=dovecot_server.credentials)
    with pytest.raises(StoreError, match="no IMAP account for mailbox mb9999"):
        await store.counts("mb9999")
    with pytest.raises(StoreError, match="mailboxes="):
        await store.all_counts()


@needs_dovecot
async def test_imap_server_stopped_is_unavailable(tmp_path):
    with DovecotServer(tmp_path) as server:
        store = ImapStore(server.host, server.port, credentials=server.credentials,
                          mailboxes=server.mailboxes)
        assert await store.deliver(make_message(1)) is True
        await trio.to_thread.run_sync(server.stop)
        for call in (store.deliver(make_message(2)), store.counts("mb1001"),
                     store.list("mb1001"), store.all_counts()):
            with pytest.raises(StoreUnavailable, match="cannot connect .*refused"):
                await call
        await trio.to_thread.run_sync(server.start)
        assert await store.counts("mb1001") == (1, 0)


async def test_imap_silent_server_times_out():
    """A server that accepts but never greets: StoreUnavailable after the timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)  # never accepted: the kernel completes the handshake, no greeting
        store = ImapStore("127.0.0.1", listener.getsockname()[1],
                          credentials=lambda mb: (mb, "x"), timeout=0.2)
        with pytest.raises(StoreUnavailable, match="timed out"):
            await store.counts("mb1001")


def test_imap_store_constructor_checks():
    with pytest.raises(ValueError, match="port"):
        ImapStore("127.0.0.1", 0, credentials=dovecot.USERS.get)
    with pytest.raises(ValueError, match="timeout"):
        ImapStore("127.0.0.1", 143, credentials=dovecot.USERS.get, timeout=0)
