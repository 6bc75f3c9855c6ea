"""File replication from the active node to the inactive one (docs/replication.md).

The active node is the *sender* of the ``FILES`` channel, the inactive one the *receiver*;
whichever node is active sends, so after a failover the new active node's changes flow back to
the old one when it returns.

Modules
    ``failover.core.manifest`` and ``failover.core.transfer`` (pure): the path rules, index
    entries and manifest diff (``plan``); the sender's and receiver's protocol state — window,
    acks, retries, pause, offsets.  Here, around them: ``replicator``
    (``FileReplicator``: role, index in memory, counters, scans), ``sender`` and ``receiver``
    (the Trio shells of one connection), ``install`` (the receiver's disk work), ``index``
    (``files.db``), ``hashing`` (reading and hashing files), ``scan`` (disk against index) and
    ``watcher`` (inotify through ``treewatch`` and ``inotify``; ``watchfiles`` when polling).

Index
    ``<data_dir>/repl/files.db`` (SQLite through ``apsw``, not replicated) holds one row per
    local file of the replicated directories: path, size, sha256 digest, version (term, seq),
    local stat signature and *synced digest*.  The version is the term of the node that
    recorded the content change and a per-node counter (informational, carried on the wire).
    The stat signature ``(st_ino, st_size, st_mtime_ns, st_ctime_ns)`` is **only a local cache
    key**: a file whose signature did not change is not hashed again.  It is never sent, and
    no time is ever compared between the nodes; what the nodes compare is the content digest.
    A file modified less than 2 s before it was hashed gets no signature (it is hashed again
    at the next look), because a write in the same clock tick keeps the same mtime.

Synced digest
    The content both nodes last agreed on: set on the receiver when it installs a file from
    the peer, on the sender when the peer acknowledges a file (or its manifest shows the same
    content).  A receiver that must overwrite or delete a local file whose content differs
    from both the synced digest and the incoming content (it was written locally: during a
    partition while this node was active, or by hand on the inactive node) first *moves* it to
    ``<data_dir>/conflicts/files/<term>-<seq>/<path>`` (version of the incoming change),
    counts it and reports it (event ``file_conflict``, optional ``on_conflict`` callback).
    A file that only the receiver has, with content it never received from the peer, is left
    in place (not deleted, not moved): it is that node's own work (a message spooled during a
    partition, a greeting recorded just before a crash) and replicates from it when it is
    active again.  The sender counts such files (``peer_only_kept`` in ``stats()``).

Wire conventions on top of docs/replication.md
    * In a ``FileManifest`` an entry whose content is not the synced content (never received
      from the peer, or changed locally since) carries version (0, 0); real versions have
      seq >= 1.  The sender "confirms" such an entry whose content equals its own with a
      ``FileBegin(wait_offer=True)``: the receiver offers the full size, no data is sent, and
      the receiver records the content as synced.
    * A refused ``FileManifestRequest`` is answered by ``FileAck(request_id, ".vmha-manifest",
      ok=False, "receiver is active")``.
    * Errors in ``FileAck``: ``"disk full"`` (the sender pauses, backs off and retries),
      ``"receiver is active"`` (the sender backs off and asks for the manifest again), any
      other text (the sender retries that path with exponential backoff).

Receiver
    Atomic: the data goes to a temp file under ``<root>/.vmha-tmp/`` (small files are
    gathered in memory and written at ``FileEnd``), the whole-file sha256 is checked, then
    fsync, rename over the target, fsync of the directory; only then the ack.  Files of at
    least ``resume_threshold`` bytes are announced with ``wait_offer``: their temp file is
    named by sha256(path + digest), survives a lost connection or a crash, and its length is
    offered so the transfer resumes (event ``file_resumed``).  On start, other temp files are
    removed.  Paths with a component starting with ``.vmha``, outside the configured
    directories, or invalid are refused.

Sender
    On connect (and each time it becomes the sender) it asks for the receiver's manifest,
    diffs it with the local index (``plan``), then streams; afterwards the watcher's events
    and a sweep every ``sweep_interval`` feed it.  Transfers are pipelined (at most
    ``max_inflight_files`` / ``max_inflight_bytes`` un-acknowledged); the view of the peer's
    manifest is kept up to date from the acks.

Hashing, scanning, fsync and file writes run in worker threads; the Trio thread only moves
small objects around.
"""
from __future__ import annotations

from failover.core.manifest import IndexEntry, plan
from failover.core.transfer import DISK_FULL, MANIFEST_PATH, RECEIVER_ACTIVE
from failover.filerepl.replicator import TMP_DIR, FileReplicator

__all__ = ["FileReplicator", "IndexEntry", "plan", "TMP_DIR", "DISK_FULL", "RECEIVER_ACTIVE",
           "MANIFEST_PATH"]
