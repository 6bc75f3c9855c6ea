"""What every message store does (telephony/store/base.py's MessageStore), run against a
MaildirStore and an ImapStore on a real Dovecot (the ``store`` fixture)."""
from __future__ import annotations

import pytest
import trio

from telephony.store import MaildirStore, StoredMessage, StoreError
from tests.telephony.messages import make_message, make_wav


async def test_deliver_counts_list_fetch(store):
    msg = make_message(1)
    assert await store.deliver(msg) is True
    assert await store.counts("mb1001") == (1, 0)
    [m] = await store.list("mb1001")
    assert isinstance(m, StoredMessage)
    assert (m.message_id, m.caller, m.forwarding, m.reason, m.duration_s, m.heard,
            m.recorded_at) == (msg.message_id, msg.caller, "4711", "no_answer", 2.25, False,
                               msg.recorded_at)
    assert await store.fetch_audio("mb1001", m.uid) == msg.audio


async def test_second_delivery_is_a_duplicate(store):
    msg = make_message(1)
    assert await store.deliver(msg) is True
    assert await store.deliver(msg) is False
    # the same message_id with other content is still the same message: the first one stays
    assert await store.deliver(make_message(1, audio=make_wav(99))) is False
    [m] = await store.list("mb1001")
    assert await store.fetch_audio("mb1001", m.uid) == msg.audio
    assert await store.counts("mb1001") == (1, 0)


async def test_message_ids_are_compared_exactly(store):
    """IMAP SEARCH is a case-insensitive substring match; ids differing in case or being a
    prefix of another are still different messages."""
    ids = ["Call-7.a.2@vmha", "call-7.a.2@vmha", "call-7.a.2@vmh", 'q"uo\\te(x)@vmha']
    for mid in ids:
        assert await store.deliver(make_message(1, message_id=mid)) is True
    for mid in ids:
        assert await store.deliver(make_message(1, message_id=mid)) is False
    assert sorted(m.message_id for m in await store.list("mb1001")) == sorted(ids)


async def test_list_oldest_first_and_new_only(store):
    for n in (12, 10, 11):
        await store.deliver(make_message(n))
    listed = await store.list("mb1001")
    assert [m.message_id for m in listed] == [make_message(n).message_id for n in (10, 11, 12)]
    await store.mark_heard("mb1001", listed[1].uid)
    assert [m.heard for m in await store.list("mb1001")] == [False, True, False]
    assert [m.message_id for m in await store.list("mb1001", new_only=True)] == \
        [make_message(n).message_id for n in (10, 12)]


async def test_mark_heard(store):
    await store.deliver(make_message(1))
    await store.deliver(make_message(2))
    first = (await store.list("mb1001"))[0]
    await store.mark_heard("mb1001", first.uid)
    assert await store.counts("mb1001") == (1, 1)
    await store.mark_heard("mb1001", first.uid)  # idempotent
    assert await store.counts("mb1001") == (1, 1)
    assert await store.fetch_audio("mb1001", first.uid) == make_message(1).audio
    # a heard message is still a duplicate
    assert await store.deliver(make_message(1)) is False
    assert await store.counts("mb1001") == (1, 1)


async def test_all_counts(store):
    assert await store.all_counts() == {}
    await store.deliver(make_message(1, "mb1001"))
    await store.deliver(make_message(2, "mb1001"))
    await store.deliver(make_message(3, "mb1002"))
    uid = (await store.list("mb1001"))[0].uid
    await store.mark_heard("mb1001", uid)
    assert await store.all_counts() == {"mb1001": (1, 1), "mb1002": (1, 0)}
    assert await store.counts("mb1003") == (0, 0)
    assert await store.list("mb1003") == []


@pytest.mark.parametrize("bad", ["../x", "", ".hidden", "a/b", "a" * 65, "mb 1", None])
async def test_bad_mailbox_id_is_refused_and_nothing_written(store, bad):
    with pytest.raises(StoreError, match="bad mailbox id"):
        await store.deliver(make_message(1, mailbox=bad))
    for call in (store.counts(bad), store.list(bad), store.fetch_audio(bad, "1"),
                 store.mark_heard(bad, "1")):
        with pytest.raises(StoreError, match="bad mailbox id"):
            await call
    assert await store.all_counts() == {}
    if isinstance(store, MaildirStore):
        assert list(store.root.iterdir()) == []


async def test_bad_message_is_refused_and_nothing_written(store):
    with pytest.raises(StoreError, match="control characters"):
        await store.deliver(make_message(1, caller="12\n34"))
    with pytest.raises(StoreError, match="ISO 8601"):
        await store.deliver(make_message(2, recorded_at="not a time"))
    assert await store.all_counts() == {}


async def test_unknown_or_bad_uid(store):
    await store.deliver(make_message(1))
    with pytest.raises(StoreError, match="no message"):
        await store.fetch_audio("mb1001", "4242")
    with pytest.raises(StoreError, match="no message"):
        await store.mark_heard("mb1001", "4242")
    for bad in ("a/b", "", "../x", "1:2,S"):
        with pytest.raises(StoreError, match="bad .*uid"):
            await store.fetch_audio("mb1001", bad)
    assert await store.counts("mb1001") == (1, 0)


async def test_concurrent_deliveries_store_one(store):
    msg = make_message(5)
    results = []

    async def one():
        results.append(await store.deliver(msg))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert sorted(results) == [False] * 4 + [True]
    assert await store.counts("mb1001") == (1, 0)
