"""telephony/store/maildir.py: what only the MaildirStore does."""
from __future__ import annotations

import mailbox

import pytest

from telephony.store import MaildirStore, StoreUnavailable
from tests.telephony.messages import make_message


async def test_maildir_files_are_standard_maildir(tmp_path):
    store = MaildirStore(tmp_path)
    msg = make_message(1)
    await store.deliver(msg)
    key = MaildirStore.key_for(msg.message_id)
    md = mailbox.Maildir(tmp_path / "mb1001", create=False)
    assert md.keys() == [key]
    assert md[key]["Message-ID"] == f"<{msg.message_id}>"
    assert md[key].get_subdir() == "new" and md[key].get_flags() == ""
    await store.mark_heard("mb1001", key)
    md = mailbox.Maildir(tmp_path / "mb1001", create=False)
    assert md[key].get_subdir() == "cur" and md[key].get_flags() == "S"
    assert list((tmp_path / "mb1001" / "tmp").iterdir()) == []


async def test_maildir_root_missing_is_unavailable(tmp_path):
    store = MaildirStore(tmp_path / "not-mounted")
    with pytest.raises(StoreUnavailable, match="not mounted"):
        await store.deliver(make_message(1))
    with pytest.raises(StoreUnavailable):
        await store.all_counts()
    assert not (tmp_path / "not-mounted").exists()


async def test_maildir_closed_store_is_unavailable(tmp_path):
    store = MaildirStore(tmp_path)
    await store.aclose()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.deliver(make_message(1))


async def test_maildir_race_with_a_heard_copy(tmp_path, monkeypatch):
    """The other node stored the message and it was heard (moved to cur/) between our look
    and our link: our copy is dropped."""
    store = MaildirStore(tmp_path)
    msg = make_message(1)
    await store.deliver(msg)
    await store.mark_heard("mb1001", MaildirStore.key_for(msg.message_id))
    real = MaildirStore._find
    calls = []

    def blind_once(d, key):
        calls.append(key)
        return None if len(calls) == 1 else real(d, key)

    monkeypatch.setattr(MaildirStore, "_find", staticmethod(blind_once))
    assert await store.deliver(msg) is False
    assert await store.counts("mb1001") == (0, 1)
