"""Tests of the pure transfer sessions (failover/core/transfer.py) and the path rules
(failover/core/manifest.py): plain calls with an explicit ``now``, no I/O."""
from __future__ import annotations

import hashlib

import pytest

from failover.core.manifest import IndexEntry, ReplicatedPaths
from failover.core.replwire import (
    FileAck,
    FileBegin,
    FileChunk,
    FileDelete,
    FileEnd,
    FileEntry,
    FileManifest,
    FileManifestRequest,
    FileOffer,
)
from failover.core.transfer import (
    DISK_FULL,
    MANIFEST_PATH,
    RECEIVER_ACTIVE,
    Agreed,
    Commit,
    Count,
    Discard,
    Error,
    ListManifest,
    Log,
    Open,
    Pending,
    ReceiverSession,
    Remove,
    RxOk,
    RxPaused,
    Send,
    SenderSession,
    Settled,
    Write,
    clip,
)

PATHS = ReplicatedPaths(["prompts", "spool"])
RETRY_MIN, RETRY_MAX = 0.5, 4.0


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def entry(data: bytes, seq: int = 1, synced: bool = False) -> IndexEntry:
    return IndexEntry(len(data), sha(data), 2, seq, None, sha(data) if synced else None)


def peer_entry(path: str, data: bytes, seq: int = 1) -> FileEntry:
    return FileEntry(path=path, size=len(data), digest=sha(data), version_term=2, version_seq=seq)


def drain(session) -> list:
    out = []
    while (a := session.next_action()) is not None:
        out.append(a)
    return out


def snapshot(session) -> str:
    """Everything a session holds, comparable."""
    return repr(sorted(vars(session).items()))


def ok(msg, error: str = "") -> FileAck:
    return FileAck(transfer_id=msg.transfer_id, path=msg.path, ok=not error, error=error)


# ============================================================================ sender


def sender(local: dict, **kw) -> SenderSession:
    opts = dict(chunk_size=4, resume_threshold=100, retry_min=RETRY_MIN, retry_max=RETRY_MAX,
                max_inflight_files=2, max_inflight_bytes=1000)
    opts.update(kw)
    return SenderSession(local, PATHS, **opts)


def synced_sender(local: dict, peer=(), **kw) -> tuple[SenderSession, list]:
    """A sender whose manifest exchange is done (``peer``: the receiver's entries)."""
    s = sender(local, **kw)
    s.reset()
    req = s.request_manifest()
    s.receive(FileManifest(request_id=req.request_id, last=True, entries=tuple(peer)), 0.0)
    assert s.manifest_received
    s.adopt_manifest()
    return s, drain(s)


def start(s: SenderSession, path: str, now: float = 0.0) -> list:
    """Start the transfer of ``path`` as the shell would; its messages."""
    how = s.how(path)
    if how == "delete":
        return [s.delete(path, (2, 99))]
    e = s.local[path]
    if how == "small":
        return s.send_small(path, e, b"x" * e.size)
    return [s.begin_large(path, e)[1]]


def test_manifest_adoption_plans_confirms_and_queues():
    local = {"prompts/new": entry(b"new"), "prompts/same": entry(b"same"),
             "prompts/unconfirmed": entry(b"u"), "spool/mine": entry(b"m", synced=True)}
    peer = [peer_entry("prompts/same", b"same"), peer_entry("prompts/unconfirmed", b"u", seq=0),
            peer_entry("prompts/gone", b"g"), peer_entry("spool/peers-own", b"p", seq=0),
            peer_entry("spool/mine", b"m")]
    s, acts = synced_sender(local, peer)
    assert s.manifest_ok
    # the peer holds our content for "prompts/same": synced; "spool/mine" was already
    assert Agreed("prompts/same", sha(b"same")) in acts
    assert not [a for a in acts if isinstance(a, Agreed) and a.path != "prompts/same"]
    pending = [a for a in acts if isinstance(a, Pending)]
    assert pending == [Pending(frozenset({"prompts/new", "prompts/unconfirmed", "prompts/gone"}))]
    assert any(isinstance(a, Log) and a.event == "file_manifest" for a in acts)
    # deletions first, then sends; the peer's own file is left alone
    assert [s.next_path(0.0) for _ in range(2)] == ["prompts/gone", "prompts/new"]
    assert s.how("prompts/gone") == "delete" and s.how("prompts/new") == "small"
    assert s.how("prompts/unconfirmed") == "large"  # confirmed without data, by an offer


def test_manifest_in_frames_ignores_bad_entries_other_requests_and_late_frames():
    s = sender({})
    old = s.request_manifest()
    req = s.request_manifest()
    assert req.request_id == old.request_id + 1
    s.receive(FileManifest(request_id=old.request_id, last=True,
                           entries=(peer_entry("prompts/old", b"o"),)), 0.0)
    assert not s.manifest_received
    s.receive(FileManifest(request_id=req.request_id, last=False, entries=(
        peer_entry("prompts/a", b"a"), peer_entry("prompts/.vmha-x", b"x"),
        peer_entry("elsewhere/x", b"x"))), 0.0)
    assert not s.manifest_received
    s.receive(FileManifest(request_id=req.request_id, last=True,
                           entries=(peer_entry("spool/b", b"b"),)), 0.0)
    assert s.manifest_received
    s.receive(FileManifest(request_id=req.request_id, last=True,
                           entries=(peer_entry("spool/late", b"l"),)), 0.0)
    s.adopt_manifest()
    assert set(s.peer) == {"prompts/a", "spool/b"}


def test_window_of_files():
    local = {f"spool/f{i}": entry(b"%d" % i) for i in range(5)}
    s, _ = synced_sender(local, max_inflight_files=2)
    sent = []
    while (p := s.next_path(0.0)) is not None:
        sent.append(start(s, p))
    assert len(sent) == 2 and len(s.inflight) == 2
    assert s.next_deadline(0.0) == float("inf")  # only an ack opens the window
    s.receive(ok(sent[0][0]), 1.0)
    assert s.next_path(1.0) is not None


def test_window_of_bytes():
    local = {f"spool/f{i}": entry(b"x" * 40) for i in range(5)}
    s, _ = synced_sender(local, max_inflight_files=64, max_inflight_bytes=100)
    n = 0
    while (p := s.next_path(0.0)) is not None:
        start(s, p)
        n += 1
    assert n == 3 and s.inflight_bytes == 120  # the window closes once it is reached


def test_small_file_messages_and_an_acknowledgement():
    local = {"prompts/a": entry(b"0123456789")}
    s, _ = synced_sender(local)
    path = s.next_path(0.0)
    e = local[path]
    msgs = s.send_small(path, e, b"0123456789")
    begin = msgs[0]
    assert begin == FileBegin(transfer_id=begin.transfer_id, path="prompts/a", size=10,
                              digest=sha(b"0123456789"), version_term=2, version_seq=1,
                              wait_offer=False)
    assert [(m.offset, m.data) for m in msgs[1:-1]] == [(0, b"0123"), (4, b"4567"), (8, b"89")]
    assert msgs[-1] == FileEnd(transfer_id=begin.transfer_id)
    assert drain(s) == []
    s.receive(ok(begin), 1.0)
    assert drain(s) == [Count("sent"), Agreed("prompts/a", sha(b"0123456789")),
                        Settled("prompts/a")]
    assert not s.inflight and s.inflight_bytes == 0 and not s.differs("prompts/a")
    assert s.peer["prompts/a"].digest == sha(b"0123456789")


def test_an_empty_file_has_no_chunk():
    s, _ = synced_sender({"prompts/empty": entry(b"")})
    msgs = s.send_small("prompts/empty", s.local["prompts/empty"], b"")
    assert [type(m) for m in msgs] == [FileBegin, FileEnd]


def test_content_already_at_the_peer_is_settled_without_a_transfer():
    local = {"prompts/a": entry(b"a")}
    s, _ = synced_sender(local, [peer_entry("prompts/a", b"a")])
    assert s.send_small("prompts/a", local["prompts/a"], b"a") == []
    assert s.begin_large("prompts/a", local["prompts/a"]) is None
    assert drain(s) == [Settled("prompts/a"), Settled("prompts/a")] and not s.inflight


def test_changed_while_in_flight_is_sent_again():
    local = {"prompts/a": entry(b"v1")}
    s, _ = synced_sender(local)
    (begin, *_) = start(s, s.next_path(0.0))
    local["prompts/a"] = entry(b"v2", seq=2)
    s.enqueue("prompts/a")
    assert s.next_path(0.0) is None  # not while its transfer is in flight
    s.receive(ok(begin), 1.0)
    acts = drain(s)
    assert Settled("prompts/a") not in acts
    assert s.next_path(1.0) == "prompts/a"


def test_a_failed_path_is_retried_with_growing_delays():
    s, _ = synced_sender({"prompts/a": entry(b"a")})
    delays = []
    now = 10.0
    for _ in range(5):
        (begin, *_) = start(s, s.next_path(now))
        s.receive(ok(begin, "EIO: Input/output error"), now)
        (err,) = drain(s)
        assert isinstance(err, Error) and "prompts/a" in err.message
        assert err.fields == {"path": "prompts/a", "error": "EIO: Input/output error"}
        due = s.next_deadline(now)
        assert s.next_path(now) is None and s.next_path(due - 0.01) is None
        delays.append(due - now)
        now = due
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]  # doubling from retry_min, capped at retry_max
    (begin, *_) = start(s, s.next_path(now))
    s.receive(ok(begin), now)
    drain(s)
    assert s.backoff_n == {}  # a success starts the delays over


def test_disk_full_pauses_everything_once_per_round_and_backs_off():
    local = {f"spool/f{i}": entry(b"%d" % i) for i in range(3)}
    s, _ = synced_sender(local)
    begins = [start(s, s.next_path(0.0))[0] for _ in range(2)]
    for b in begins:  # both answers of one round: one pause
        s.receive(ok(b, DISK_FULL), 5.0)
    acts = drain(s)
    assert [a.event for a in acts if isinstance(a, Log)] == ["file_paused"]
    assert s.paused_reason == DISK_FULL and s.paused_until == 5.0 + RETRY_MIN
    assert s.next_path(5.0) is None and s.next_deadline(5.0) == 5.5
    # the next round fails again: the pause doubles, still one line
    again = start(s, s.next_path(5.5))[0]
    s.receive(ok(again, DISK_FULL), 6.0)
    assert drain(s) == [] and s.paused_until == 7.0
    # space again: unpaused, delays start over
    b = start(s, s.next_path(7.0))[0]
    s.receive(ok(b), 7.0)
    assert Log("info", "file_unpaused", "the peer has space again: sending files") in drain(s)
    assert s.paused_reason is None and s.pause_delay == RETRY_MIN


def test_a_refusing_peer_is_noted_once_and_resynced_with_backoff():
    local = {"prompts/a": entry(b"a"), "prompts/b": entry(b"b")}
    s, _ = synced_sender(local)
    first = start(s, s.next_path(0.0))[0]
    second = start(s, s.next_path(0.0))[0]
    s.receive(ok(first, RECEIVER_ACTIVE), 1.0)
    s.receive(ok(second, RECEIVER_ACTIVE), 1.0)
    assert [a.event for a in drain(s)] == ["file_refused"] and s.refused
    assert not s.inflight and s.paused_reason is None and not s.backoff
    assert [s.refused_wait() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    # a refused manifest request touches no transfer
    s.reset()
    req = s.request_manifest()
    s.receive(FileAck(transfer_id=req.request_id, path=MANIFEST_PATH, ok=False,
                      error=RECEIVER_ACTIVE), 2.0)
    assert s.refused and not s.manifest_received
    s.receive(FileManifest(request_id=req.request_id, last=True, entries=()), 3.0)
    s.adopt_manifest()
    assert s.refused_wait() == 0.5  # an adopted manifest starts the delays over


def test_large_file_offer_window_and_stream():
    local = {"prompts/big": entry(b"x" * 150)}  # above resume_threshold (100)
    s, _ = synced_sender(local, max_inflight_bytes=1000)
    path = s.next_path(0.0)
    assert s.how(path) == "large"
    tr, begin = s.begin_large(path, local[path])
    assert begin.wait_offer and s.inflight_bytes == 150 and not tr.answered
    s.receive(FileOffer(transfer_id=tr.tid, offset=140), 1.0)
    assert tr.answered and s.start_stream(tr) == 140
    assert s.inflight_bytes == 10  # only what is left counts against the window
    reads = []
    while (step := s.next_read(tr)) is not None:
        reads.append(step)
        off, n = step
        assert s.chunk(tr, b"y" * n) == FileChunk(transfer_id=tr.tid, offset=off, data=b"y" * n)
    assert reads == [(140, 4), (144, 4), (148, 2)]
    assert s.end(tr) == FileEnd(transfer_id=tr.tid)
    s.receive(ok(begin), 2.0)
    assert Count("sent") in drain(s) and s.inflight_bytes == 0


def test_a_large_transfer_answered_by_an_ack_is_not_streamed():
    local = {"prompts/big": entry(b"x" * 150)}
    s, _ = synced_sender(local)
    tr, begin = s.begin_large(s.next_path(0.0), local["prompts/big"])
    s.receive(ok(begin, "ENOSPC? no: EACCES"), 1.0)
    assert tr.answered and s.start_stream(tr) is None and not s.in_flight(tr)
    s.receive(FileOffer(transfer_id=tr.tid, offset=0), 1.0)  # too late: ignored
    assert tr.offset is None


def test_deletions_and_the_peers_own_files():
    local = {}
    peer = [peer_entry("prompts/ours", b"o"), peer_entry("prompts/theirs", b"t", seq=0)]
    s, acts = synced_sender(local, peer)
    assert Pending(frozenset({"prompts/ours"})) in acts
    assert s.next_path(0.0) == "prompts/ours" and s.next_path(0.0) is None
    (delete,) = start(s, "prompts/ours")
    assert delete == FileDelete(transfer_id=delete.transfer_id, path="prompts/ours",
                                version_term=2, version_seq=99)
    s.receive(ok(delete), 1.0)
    assert drain(s) == [Count("deleted_sent"), Agreed("prompts/ours", None),
                        Settled("prompts/ours")]
    assert "prompts/ours" not in s.peer
    s.enqueue("prompts/theirs")
    assert s.next_path(1.0) is None and drain(s) == [Settled("prompts/theirs")]


def test_bad_input_changes_nothing_at_the_sender():
    local = {"prompts/a": entry(b"a"), "prompts/big": entry(b"x" * 150)}
    s, _ = synced_sender(local)
    (small, *_) = start(s, "prompts/a")
    tr, _ = s.begin_large("prompts/big", local["prompts/big"])
    before = snapshot(s)
    for msg in (FileAck(transfer_id=999, path="prompts/a", ok=True, error=""),  # unknown id
                FileAck(transfer_id=999, path="prompts/a", ok=False, error="EIO"),
                FileOffer(transfer_id=999, offset=0),  # unknown id
                FileOffer(transfer_id=small.transfer_id, offset=0),  # not waiting for one
                FileManifest(request_id=12345, last=True, entries=()),  # not asked for
                FileManifestRequest(request_id=1),  # not a message for the sender
                FileBegin(transfer_id=1, path="prompts/a", size=1, digest=sha(b"a"),
                          version_term=1, version_seq=1, wait_offer=False)):
        s.receive(msg, 1.0)
        assert drain(s) == [] and snapshot(s) == before, msg
    s.receive(FileOffer(transfer_id=tr.tid, offset=3), 1.0)
    after_offer = snapshot(s)
    s.receive(FileOffer(transfer_id=tr.tid, offset=99), 1.0)  # a second offer
    assert snapshot(s) == after_offer and tr.offset == 3


def test_transfer_ids_are_distinct_and_register_the_path():
    local = {f"spool/f{i}": entry(b"%d" % i) for i in range(2)}
    s, _ = synced_sender(local)
    b0 = start(s, "spool/f0")[0]
    b1 = start(s, "spool/f1")[0]
    assert b0.transfer_id != b1.transfer_id
    assert s.inflight_paths == {"spool/f0": b0.transfer_id, "spool/f1": b1.transfer_id}


# ============================================================================ receiver


def receiver(**kw) -> ReceiverSession:
    opts = dict(resume_threshold=100, manifest_budget=1000)
    opts.update(kw)
    return ReceiverSession(PATHS, **opts)


def begin(tid: int, data: bytes, path: str = "prompts/a", wait_offer: bool = False,
          seq: int = 1) -> FileBegin:
    return FileBegin(transfer_id=tid, path=path, size=len(data), digest=sha(data),
                     version_term=2, version_seq=seq, wait_offer=wait_offer)


def acks(actions: list) -> list[FileAck]:
    return [a.msg for a in actions if isinstance(a, Send) and isinstance(a.msg, FileAck)]


def test_a_small_file_is_gathered_in_memory_then_committed():
    r = receiver()
    r.receive(begin(1, b"hello"), receiving=True)
    assert drain(r) == []
    r.receive(FileChunk(transfer_id=1, offset=0, data=b"hel"), receiving=True)
    r.receive(FileChunk(transfer_id=1, offset=3, data=b"lo"), receiving=True)
    assert drain(r) == [] and bytes(r.cur.buf) == b"hello"
    r.receive(FileEnd(transfer_id=1), receiving=True)
    (commit,) = drain(r)
    assert isinstance(commit, Commit) and commit.inc is r.cur and commit.inc.mode == "mem"
    r.committed(commit.inc)
    assert drain(r) == [RxOk(), Send(FileAck(transfer_id=1, path="prompts/a", ok=True,
                                             error=""))]
    assert r.cur is None


def test_a_resumable_file_is_opened_offered_written_and_committed():
    r = receiver()
    data = b"0123456789"
    r.receive(begin(7, data, wait_offer=True), receiving=True)
    (op,) = drain(r)
    assert isinstance(op, Open) and op.inc.wait_offer and r.cur is None
    r.opened(op.inc, handle="tmp", offset=4, resumable=True)
    acts = drain(r)
    assert acts[0] == Count("resumed") and isinstance(acts[1], Log)
    assert acts[1].event == "file_resumed" and acts[1].fields == {"path": "prompts/a",
                                                                  "offset": 4, "size": 10}
    assert acts[2] == Send(FileOffer(transfer_id=7, offset=4))
    r.receive(FileChunk(transfer_id=7, offset=4, data=b"456789"), receiving=True)
    (w,) = drain(r)
    assert isinstance(w, Write) and w.data == b"456789" and w.inc.offset == 10
    r.receive(FileEnd(transfer_id=7), receiving=True)
    (commit,) = drain(r)
    assert isinstance(commit, Commit) and commit.inc.resumed_from == 4


def test_content_the_target_already_holds_is_offered_in_full():
    r = receiver()
    r.receive(begin(3, b"abc", wait_offer=True), receiving=True)
    (op,) = drain(r)
    r.already_have(op.inc)
    assert drain(r) == [Send(FileOffer(transfer_id=3, offset=3))]
    r.receive(FileEnd(transfer_id=3), receiving=True)
    (commit,) = drain(r)
    assert commit.inc.mode == "have"
    # a chunk for it is a protocol error
    r2 = receiver()
    r2.receive(begin(4, b"abc", wait_offer=True), receiving=True)
    r2.already_have(drain(r2)[0].inc)
    drain(r2)
    r2.receive(FileChunk(transfer_id=4, offset=3, data=b""), receiving=True)
    (ack,) = acks(drain(r2))
    assert not ack.ok and "unexpected chunk" in ack.error


@pytest.mark.parametrize("chunks, error", [
    ([(2, b"cd")], "unexpected chunk at offset 2 (expected 0 of 4)"),
    ([(0, b"abcde")], "unexpected chunk at offset 0 (expected 0 of 4)"),
    ([(0, b"ab"), "end"], "size mismatch: got 2 of 4 bytes"),
])
def test_protocol_violations_fail_the_transfer(chunks, error):
    r = receiver()
    r.receive(begin(1, b"abcd", wait_offer=True), receiving=True)
    (op,) = drain(r)
    r.opened(op.inc, handle="tmp", offset=0, resumable=True)
    drain(r)
    for c in chunks:
        r.receive(FileEnd(transfer_id=1) if c == "end" else
                  FileChunk(transfer_id=1, offset=c[0], data=c[1]), receiving=True)
    acts = [a for a in drain(r) if not isinstance(a, Write)]
    assert acts == [Discard(op.inc, False), Error(f"receiving prompts/a failed: {error}",
                                                  {"path": "prompts/a"}),
                    Send(FileAck(transfer_id=1, path="prompts/a", ok=False, error=error))]
    assert r.cur is None
    # what follows for that transfer is ignored: its ack is sent
    r.receive(FileChunk(transfer_id=1, offset=0, data=b"ab"), receiving=True)
    r.receive(FileEnd(transfer_id=1), receiving=True)
    assert drain(r) == []


def test_a_failure_keeps_a_resumable_partial_only_when_the_disk_is_full():
    r = receiver()
    r.receive(begin(1, b"abcd", wait_offer=True), receiving=True)
    (op,) = drain(r)
    r.opened(op.inc, handle="tmp", offset=0, resumable=True)
    drain(r)
    r.fail(op.inc, DISK_FULL)
    assert drain(r) == [Discard(op.inc, True), RxPaused("prompts/a"),
                        Send(FileAck(transfer_id=1, path="prompts/a", ok=False, error=DISK_FULL))]
    # a non-resumable temp file is never kept
    r.receive(begin(2, b"x" * 150), receiving=True)  # large, no offer: a plain temp file
    (op,) = drain(r)
    r.opened(op.inc, handle="tmp", offset=0, resumable=False)
    assert drain(r) == []  # no offer asked for
    r.fail(op.inc, DISK_FULL)
    assert drain(r)[0] == Discard(op.inc, False)


def test_an_open_failure_is_acknowledged():
    r = receiver()
    r.receive(begin(1, b"abcd", wait_offer=True), receiving=True)
    (op,) = drain(r)
    r.fail(op.inc, "EACCES: Permission denied")
    assert drain(r) == [Error("receiving prompts/a failed: EACCES: Permission denied",
                              {"path": "prompts/a"}),
                        Send(FileAck(transfer_id=1, path="prompts/a", ok=False,
                                     error="EACCES: Permission denied"))]


def test_any_other_message_ends_the_open_transfer_keeping_its_partial():
    r = receiver()
    r.receive(begin(1, b"abcd", wait_offer=True), receiving=True)
    (op,) = drain(r)
    r.opened(op.inc, handle="tmp", offset=0, resumable=True)
    drain(r)
    delete = FileDelete(transfer_id=2, path="spool/x", version_term=2, version_seq=5)
    r.receive(delete, receiving=True)
    assert drain(r) == [Discard(op.inc, True), Remove(delete)] and r.cur is None
    r.removed(delete, None)
    assert drain(r) == [Send(FileAck(transfer_id=2, path="spool/x", ok=True, error=""))]
    r.removed(delete, "EIO: Input/output error")
    assert drain(r) == [Error("deleting spool/x failed: EIO: Input/output error",
                              {"path": "spool/x"}),
                        Send(FileAck(transfer_id=2, path="spool/x", ok=False,
                                     error="EIO: Input/output error"))]


def test_an_active_receiver_refuses_everything():
    r = receiver()
    r.receive(FileManifestRequest(request_id=5), receiving=False)
    r.receive(begin(6, b"a"), receiving=False)
    r.receive(FileDelete(transfer_id=7, path="prompts/a", version_term=2, version_seq=1),
              receiving=False)
    assert drain(r) == [
        Send(FileAck(transfer_id=5, path=MANIFEST_PATH, ok=False, error=RECEIVER_ACTIVE)),
        Send(FileAck(transfer_id=6, path="prompts/a", ok=False, error=RECEIVER_ACTIVE)),
        Send(FileAck(transfer_id=7, path="prompts/a", ok=False, error=RECEIVER_ACTIVE))]
    # one that becomes active in the middle of a transfer refuses its rest (no error counted)
    r.receive(begin(8, b"abcd"), receiving=True)
    r.receive(FileChunk(transfer_id=8, offset=0, data=b"ab"), receiving=False)
    assert drain(r) == [Send(FileAck(transfer_id=8, path="prompts/a", ok=False,
                                     error=RECEIVER_ACTIVE))]


def test_bad_paths_are_refused_and_counted():
    r = receiver()
    for path, ack_path in (("etc/passwd", "etc/passwd"), ("prompts/.vmha-tmp/x", None),
                           ("prompts//x", ".vmha-invalid"), ("/etc/passwd", ".vmha-invalid")):
        r.receive(begin(1, b"x", path=path), receiving=True)
        err, send = drain(r)
        assert isinstance(err, Error) and err.message.startswith("refused a file from the peer")
        assert not send.msg.ok and send.msg.error.startswith("bad path")
        assert send.msg.path == (ack_path or path) and r.cur is None
    r.receive(FileDelete(transfer_id=2, path="other/x", version_term=2, version_seq=1),
              receiving=True)
    err, send = drain(r)
    assert err.message.startswith("refused a deletion from the peer")


def test_the_manifest_is_split_by_the_frame_budget():
    local = {f"spool/{i:03d}": entry(b"%d" % i, synced=i % 2 == 0) for i in range(10)}
    cost = 58 + len("spool/000")  # FILE_ENTRY_OVERHEAD + path
    r = receiver(manifest_budget=3 * cost)
    r.receive(FileManifestRequest(request_id=9), receiving=True)
    assert drain(r) == [ListManifest(9)]
    r.manifest(9, local)
    frames = [a.msg for a in drain(r)]
    assert [len(f.entries) for f in frames] == [3, 3, 3, 1]
    assert [f.last for f in frames] == [False, False, False, True]
    entries = [e for f in frames for e in f.entries]
    assert [e.path for e in entries] == sorted(local)
    # content the peer did not give us is announced with version (0, 0)
    assert [(e.version_term, e.version_seq) for e in entries[:2]] == [(2, 1), (0, 0)]
    r.manifest(10, {})
    assert drain(r) == [Send(FileManifest(request_id=10, last=True, entries=()))]


def test_bad_input_changes_nothing_at_the_receiver():
    r = receiver()
    for msg in (FileChunk(transfer_id=1, offset=0, data=b"x"), FileEnd(transfer_id=1)):
        r.receive(msg, receiving=True)  # no transfer open
        assert drain(r) == [] and r.cur is None
    r.receive(begin(1, b"abcd", wait_offer=True), receiving=True)
    (op,) = drain(r)
    r.opened(op.inc, handle="tmp", offset=0, resumable=True)
    drain(r)
    before = snapshot(r)
    for msg in (FileChunk(transfer_id=2, offset=0, data=b"ab"),  # another transfer's
                FileEnd(transfer_id=2)):
        r.receive(msg, receiving=True)
        assert drain(r) == [] and snapshot(r) == before, msg


def test_an_unexpected_message_is_noted_while_receiving():
    r = receiver()
    r.receive(FileOffer(transfer_id=1, offset=0), receiving=True)
    assert [a.event for a in drain(r)] == ["file_unexpected"]
    r.receive(FileOffer(transfer_id=1, offset=0), receiving=False)
    assert drain(r) == []


def test_errors_are_clipped_to_the_wire_limit():
    r = receiver()
    r.receive(begin(1, b"abcd", wait_offer=True), receiving=True)
    (op,) = drain(r)
    long = "é" * 300
    r.fail(op.inc, long)
    (ack,) = acks(drain(r))
    assert ack.error == clip(long) and len(ack.error.encode()) <= 200
    assert ack.error == "é" * 100


# ============================================================================ paths


@pytest.mark.parametrize("dirs, why", [
    (["prompts", "prompts/sub"], "overlap"),
    (["prompts", "prompts"], "twice"),
    ([".vmha-tmp"], "reserved"),
    (["a/.vmha/b"], "reserved"),
    (["../up"], "component"),
])
def test_bad_directory_lists_are_refused(dirs, why):
    with pytest.raises(ValueError, match=why):
        ReplicatedPaths(dirs)


def test_path_rules():
    assert PATHS.top_of("prompts/a/b") == "prompts" and PATHS.top_of("prompts") is None
    assert PATHS.error("spool/x") is None
    assert "outside" in PATHS.error("streams/x") and "reserved" in PATHS.error("spool/.vmhax")
    assert PATHS.error("spool/../x").startswith("bad path")
    assert PATHS.covers("prompts") and PATHS.covers("spool/q/1")
    assert not PATHS.covers("streams/x") and not PATHS.covers("prompts/.vmha-tmp/x")
