"""The Trio side of the peer's inbound FILES connection: each message goes to a
``ReceiverSession``, whose actions are carried out here (the disk work in worker threads
through the ``Installer``), one message at a time.  Installing a file or a deletion and
recording it in the index go together, even if the connection drops meanwhile.
"""
from __future__ import annotations

from typing import Any, Mapping

import apsw
import trio

from failover.core.manifest import IndexEntry
from failover.core.replwire import FileDelete
from failover.core.transfer import (
    Commit,
    Discard,
    Incoming,
    ListManifest,
    Open,
    ReceiverSession,
    Remove,
    Send,
    Write,
)
from failover.filerepl.hashing import error_text
from failover.filerepl.install import DIGEST_MISMATCH

IO_ACTIONS = (Send, Open, Write, Commit, Remove, ListManifest)


class Receiver:
    """One inbound connection ``chan`` of the replicator ``rep``; ``index`` is its index."""

    def __init__(self, rep: Any, chan, session: ReceiverSession,
                 index: Mapping[str, IndexEntry]):
        self.r = rep
        self.chan = chan
        self.session = session
        self.index = index

    async def run(self) -> None:
        while True:
            msg = await self.chan.receive()
            self.session.receive(msg, receiving=self.r.receiving)
            await self._act()

    def abort(self) -> None:
        """The connection is gone: close the open transfer (a resumable temp file is kept);
        what was left to send is dropped."""
        self.session.abort()
        while (action := self.session.next_action()) is not None:
            if isinstance(action, Discard):
                self.r.installer.discard(action.inc, action.keep)
            elif not isinstance(action, IO_ACTIONS):
                self.r.apply(action)

    async def _act(self) -> None:
        s, r = self.session, self.r
        while (action := s.next_action()) is not None:
            if isinstance(action, Send):
                await self.chan.send(action.msg)
            elif isinstance(action, Open):
                await self._open(action.inc)
            elif isinstance(action, Write):
                try:
                    await trio.to_thread.run_sync(r.installer.write_chunk, action.inc.handle,
                                                  action.data)
                except OSError as e:
                    s.fail(action.inc, error_text(e))
            elif isinstance(action, Commit):
                await self._commit(action.inc)
            elif isinstance(action, Remove):
                await self._remove(action.msg)
            elif isinstance(action, ListManifest):
                await r.scan()
                s.manifest(action.request_id, self.index)
            elif isinstance(action, Discard):
                r.installer.discard(action.inc, action.keep)
            else:
                r.apply(action)

    async def _open(self, inc: Incoming) -> None:
        try:
            tf = await trio.to_thread.run_sync(self.r.installer.open_incoming, inc,
                                               self.index.get(inc.path))
        except (OSError, apsw.Error) as e:
            self.session.fail(inc, error_text(e))
            return
        if tf is None:
            self.session.already_have(inc)
        else:
            self.session.opened(inc, handle=tf, offset=tf.offset, resumable=tf.resumable)

    async def _commit(self, inc: Incoming) -> None:
        r = self.r
        infos = {inc.path: self.index.get(inc.path)}
        parts = inc.path.split("/")
        for i in range(1, len(parts)):
            p = "/".join(parts[:i])
            infos[p] = self.index.get(p)
        with trio.CancelScope(shield=True):
            try:
                error, sig, conflicts, displaced = await trio.to_thread.run_sync(
                    r.installer.commit, inc, infos)
            except (OSError, apsw.Error) as e:
                error, keep = error_text(e), None
            else:
                keep = error != DIGEST_MISMATCH
            if error is None:
                self.session.committed(inc)
                r.received(inc, sig, conflicts, displaced)
                await r.flush()
        if error is not None:
            self.session.fail(inc, error, keep=keep)

    async def _remove(self, msg: FileDelete) -> None:
        r = self.r
        with trio.CancelScope(shield=True):
            try:
                conflicts, displaced = await trio.to_thread.run_sync(
                    r.installer.delete, msg.path, msg.version_term, msg.version_seq,
                    self.index.get(msg.path))
            except (OSError, apsw.Error) as e:
                text = error_text(e)
            else:
                text = None
                r.removed(msg, conflicts, displaced)
                await r.flush()
        self.session.removed(msg, text)
