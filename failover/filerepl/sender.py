"""The Trio side of our outbound FILES connection: a ``SenderSession`` driven by a reader
(the peer's acks, offers and manifest) and a writer (manifest request, then the files).

The writer syncs each time this node becomes the sender: it asks for the receiver's manifest,
lets the session diff it with the index, then streams what differs as the session hands it
out (pipelined within its window, retried with back-off, paused while the peer's disk is
full).  Files are read and hashed in worker threads.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable

import trio

from failover.core.transfer import SenderSession
from failover.filerepl.hashing import Unstable, open_large, read_small


class Sender:
    """One outbound connection ``chan`` of the replicator ``rep``."""

    def __init__(self, rep: Any, chan, session: SenderSession):
        self.r = rep
        self.chan = chan
        self.session = session
        self._wake = trio.Event()

    # ---- plumbing

    def poke(self) -> None:
        """Something changed (a message, the role, a local file): look again."""
        self._wake.set()
        self._wake = trio.Event()

    def changed(self, path: str) -> None:
        """The local state of ``path`` changed."""
        self.session.enqueue(path)
        self.poke()

    async def _until(self, cond: Callable[[], bool], timeout: float = math.inf) -> bool:
        deadline = trio.current_time() + timeout
        while not cond():
            ev = self._wake
            with trio.move_on_at(deadline):
                await ev.wait()
            if trio.current_time() >= deadline:
                return cond()
        return True

    def _apply(self) -> None:
        while (action := self.session.next_action()) is not None:
            self.r.apply(action)

    async def run(self) -> None:
        """Read and write until the connection ends.  Whichever of the two stops first (the
        channel's ``ChannelClosed`` when the connection ends) stops the other, and what it
        raised is raised here as it is."""
        ended: Exception | None = None

        async def until_failure(body) -> None:
            nonlocal ended
            try:
                await body()
            except Exception as e:
                if ended is None:
                    ended = e
                nursery.cancel_scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(until_failure, self._reader)
                nursery.start_soon(until_failure, self._writer)
        finally:
            self.session.manifest_ok = False
            self.poke()
        if ended is not None:
            raise ended

    async def _reader(self) -> None:
        while True:
            msg = await self.chan.receive()
            self.session.receive(msg, trio.current_time())
            self._apply()
            self.poke()

    # ---- the writer

    async def _writer(self) -> None:
        r, s = self.r, self.session
        while True:
            await self._until(lambda: r.sending)
            epoch = r.role_epoch
            s.reset()
            if not await self._sync_manifest(epoch):
                if s.refused:
                    await self._until(lambda e=epoch: r.role_epoch != e, s.refused_wait())
                continue
            await self._stream(epoch)
            if s.refused:
                await self._until(lambda e=epoch: r.role_epoch != e, s.refused_wait())

    async def _sync_manifest(self, epoch: int) -> bool:
        r, s = self.r, self.session
        await self.chan.send(s.request_manifest())
        await self._until(lambda: s.manifest_received or s.refused or r.role_epoch != epoch
                          or not r.sending)
        if not s.manifest_received or r.role_epoch != epoch or not r.sending:
            return False
        s.adopt_manifest()
        self._apply()
        return True

    async def _stream(self, epoch: int) -> None:
        r, s = self.r, self.session
        while r.sending and r.role_epoch == epoch and not s.refused:
            path = s.next_path(trio.current_time())
            self._apply()
            if path is None:
                ev = self._wake
                with trio.move_on_at(s.next_deadline(trio.current_time())):
                    await ev.wait()
                continue
            how = s.how(path)
            if how == "delete":
                await self.chan.send(s.delete(path, r.next_version()))
            elif how == "large":
                await self._send_large(path, epoch)
            else:
                await self._send_small(path)

    async def _recheck(self, path: str) -> None:
        """``path`` is gone, not a regular file, or changed size class: look again."""
        await self.r.scan([path])
        self.session.enqueue(path)

    async def _read(self, fn, path: str, arg):
        """``fn(file, arg)`` in a thread; None (and the file looked at again later) when the
        file changed while read, is gone or is no longer a regular file."""
        try:
            res = await trio.to_thread.run_sync(fn, self.r.root / path, arg)
        except Unstable:
            self.session.retry_later(path, self.r.retry_min, trio.current_time())
            return None
        if res is None:
            await self._recheck(path)
        return res

    async def _send_small(self, path: str) -> None:
        r, s = self.r, self.session
        res = await self._read(read_small, path, r.resume_threshold)
        if res is None:
            return
        data, digest, sig = res
        e = r.note_content(path, len(data), digest, sig)
        msgs = s.send_small(path, e, data)
        self._apply()
        if not msgs:
            return
        for msg in msgs:
            await self.chan.send(msg)
        r.counters["bytes_sent"] += len(data)

    async def _send_large(self, path: str, epoch: int) -> None:
        r, s = self.r, self.session
        res = await self._read(open_large, path, s.local[path])
        if res is None:
            return
        fd, size, digest, sig = res
        try:
            e = r.note_content(path, size, digest, sig)
            begun = s.begin_large(path, e)
            self._apply()
            if begun is None:
                return
            tr, begin = begun
            await self.chan.send(begin)
            await self._until(lambda: tr.answered)
            if s.start_stream(tr) is None:
                return  # answered by an ack (refused or failed)
            while (step := s.next_read(tr)) is not None:
                if not r.sending or r.role_epoch != epoch or not s.in_flight(tr):
                    return  # stopped sending (or the transfer failed): leave it unfinished
                off, n = step
                data = await trio.to_thread.run_sync(os.pread, fd, n, off)
                if not data:
                    break  # shrank: the receiver reports the size mismatch
                await self.chan.send(s.chunk(tr, data))
                r.counters["bytes_sent"] += len(data)
            await self.chan.send(s.end(tr))
        finally:
            os.close(fd)
