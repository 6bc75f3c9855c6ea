"""Trio driver of the node link (the codec is ``_wire.LinkConnection``).

Each node manager dials its peer and sends its frames on that connection; it accepts the
peer's connection and receives frames on it (docs/design.md, "Node link").  Frames that the
codec drops are counted and logged, never acted on; a connection whose stream is unusable is
closed and the dialer reconnects with exponential backoff.

Keys: ``keys`` is one key (bytes) or a function returning the keys accepted now, current
first (the node manager's key ring, re-read when the key file changes).  Each connection
takes them when it starts; a connection that is up is never touched by a change.  The dialer
signs with the current key; when a handshake fails it tries the next accepted key on the next
attempt (a node that rotated first still reaches a peer that has not got the new file yet),
and after a connection that was up it starts with the current key again.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable

import trio

from failover.config import NodeConfig, shared_settings_digest
from failover.core import events as ev
from failover.core.wire import (
    NEED_DATA,
    Closed,
    Command,
    CommandKind,
    Dropped,
    Hello,
    LinkConnection,
    LinkError,
    Status,
)
from failover.eventlog import EventLog
from telephony.runtime.tasks import Backoff, TaskFailures, describe, guard_handler, keep_running, listen_tcp

#: errors that end one link connection (the dialer then reconnects with backoff)
CONNECTION_ERRORS = (OSError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError,
                     LinkError)

COMMAND_NAMES = {CommandKind.STEP_DOWN: "step_down", CommandKind.TAKE_OVER: "take_over",
                 CommandKind.YIELD: "yield", CommandKind.HAND_OVER: "hand_over"}


class PeerLink:
    def __init__(self, cfg: NodeConfig, keys: bytes | Callable[[], tuple[bytes, ...]],
                 inbox: trio.MemorySendChannel, events: EventLog, failures: TaskFailures | None = None):
        self.cfg = cfg
        #: failures of the link's own tasks (dial loop, listener, one inbound connection):
        #: counted and logged, never raised out of ``run``
        self.failures = failures or TaskFailures(events.write)
        self.keys = (lambda: (keys,)) if isinstance(keys, bytes) else keys
        self._attempt = 0  # failed handshakes in a row: picks the key the dialer tries
        self.out_key_id: str | None = None  # ids of the keys the connections up now use
        self.in_key_id: str | None = None
        self.inbox = inbox
        self.events = events
        self._out_send, self._out_recv = trio.open_memory_channel(256)
        self.out_connected = False
        self.inbound: set[int] = set()
        self._inbound_gen = 0
        self.counters: Counter[str] = Counter()
        self._redial = trio.Event()  # set when the peer dials us: it is up, dial it now
        #: digest of the settings both nodes must share (sent in every status frame), and
        #: the peer's last one (None: not heard yet, or an older program that does not say)
        self.settings = shared_settings_digest(cfg)
        self.peer_settings: int | None = None

    # ------------------------------------------------------------------ API for the node manager

    def send(self, msg: Status | Command, important: bool = False) -> None:
        """Queue a frame for the peer.  Heartbeats are only queued while connected (an old
        heartbeat is worth nothing); a command that cannot be queued is logged."""
        if not self.out_connected:
            if important:
                self._log_limited("warning", "link_send", f"{type(msg).__name__} not sent: link to "
                                  f"{self.cfg.link.peer_name} is down")
            return
        try:
            self._out_send.send_nowait(msg)
        except trio.WouldBlock:
            self.counters["out_overflow"] += 1
            if important:
                self.events.write("warning", "link_send", "command not sent: link send queue full")

    def stats(self) -> dict:
        return {"out_connected": self.out_connected, "in_connections": len(self.inbound),
                "out_key_id": self.out_key_id if self.out_connected else None,
                "in_key_id": self.in_key_id if self.inbound else None,
                "settings_match": None if self.peer_settings is None
                else self.peer_settings == self.settings,
                **{k: v for k, v in sorted(self.counters.items())}}

    def _peer_settings(self, digest: int) -> None:
        """Say once when the peer's shared settings start or stop matching ours."""
        if not digest or digest == self.peer_settings:
            return
        before, self.peer_settings = self.peer_settings, digest
        if digest != self.settings:
            self.events.write("error", "settings_differ", f"{self.cfg.link.peer_name} runs with "
                              "other values of the settings both nodes must share (failover "
                              "timing, failback, replication, store, messaging): run vmha "
                              "configure --check on the two files to see which")
        elif before is not None:
            self.events.write("info", "settings_match", f"{self.cfg.link.peer_name} runs with "
                              "the same shared settings again")

    # ------------------------------------------------------------------ tasks

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        addr = self.cfg.link.listen
        listeners = await listen_tcp("link.listen", addr.host, addr.port)
        handler = guard_handler("link.inbound", self.failures, self._accepted)

        async def serve() -> None:
            await trio.serve_listeners(handler, listeners)

        async with trio.open_nursery() as nursery:
            # Neither task may end the node manager: whatever escapes one is counted, logged
            # and the task starts again after a growing delay.
            nursery.start_soon(keep_running, "link.listen", serve, self.failures)
            nursery.start_soon(keep_running, "link.dial", self._dial_loop, self.failures,
                               Backoff(first=self.cfg.link.reconnect_min, cap=self.cfg.link.reconnect_max))
            task_status.started()

    def _log_limited(self, level: str, event: str, message: str, every: float = 30.0) -> None:
        self.failures.limited(level, event, message, every)

    async def _dial_loop(self) -> None:
        link = self.cfg.link
        backoff = link.reconnect_min
        was_up = False
        while True:
            stream = None
            try:
                with trio.fail_after(link.connect_timeout):
                    stream = await trio.open_tcp_stream(link.peer.host, link.peer.port)
                keys = self.keys()
                i = self._attempt % len(keys)
                conn = LinkConnection(keys=keys[i:] + keys[:i], node=self.cfg.node.name,
                                      role=self.cfg.node.role, dialer=True, nonce=os.urandom(16),
                                      expected_peer=link.peer_name)
                self._attempt += 1  # reset below once the handshake is done
                await stream.send_all(conn.hello())
                with trio.fail_after(link.connect_timeout):
                    await self._await_hello(stream, conn)
                self._attempt = 0
                self.out_key_id = conn.key_id.hex()
                if i:
                    self._log_limited("warning", "link_old_key", f"connected to {link.peer_name} "
                                      f"with an older key (id {self.out_key_id}) after a handshake "
                                      "with the current one failed: if it has not got the new key "
                                      "file yet, copy it there", every=300.0)
                backoff = link.reconnect_min
                self._drain_queue()
                self.out_connected = True
                self.counters["connects"] += 1
                if not was_up:
                    self.events.write("info", "link_up", f"connected to {link.peer_name} at {link.peer}")
                was_up = True
                await self._pump(stream, conn)
                reason = "peer closed the connection"
            except CONNECTION_ERRORS as e:
                reason = describe(e)  # with the error it came from (a reset: ConnectionResetError)
            finally:
                self.out_connected = False
                if stream is not None:
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(stream)
            if was_up:
                self.events.write("warning", "link_down", f"link to {link.peer_name} lost: {reason}")
                was_up = False
            else:
                self._log_limited("info", "link_retry", f"cannot reach {link.peer_name} at {link.peer}: "
                                  f"{reason}; retrying")
            with trio.move_on_after(backoff):
                await self._redial.wait()
            if self._redial.is_set():
                self._redial = trio.Event()
                backoff = link.reconnect_min
            else:
                backoff = min(backoff * 2, link.reconnect_max)

    def _drain_queue(self) -> None:
        while True:
            try:
                self._out_recv.receive_nowait()
            except trio.WouldBlock:
                return

    async def _await_hello(self, stream: trio.SocketStream, conn: LinkConnection) -> Hello:
        while True:
            e = conn.next_event()
            if isinstance(e, Hello):
                return e
            if e is NEED_DATA:
                conn.receive_data(await stream.receive_some(4096))
                continue
            if isinstance(e, Closed):
                raise trio.BrokenResourceError("peer closed during the handshake")
            self._dropped(e)

    async def _pump(self, stream: trio.SocketStream, conn: LinkConnection) -> None:
        """Send queued frames until the connection ends.  The reader beside the sender catches
        its own errors (a reset arrives there first) and cancels the sender; the error is then
        raised here, after the nursery, as one plain exception the dial loop handles."""
        failed: list[BaseException] = []
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                # the acceptor never sends after its hello: anything it sends is dropped,
                # and EOF or an error ends this connection
                try:
                    while True:
                        data = await stream.receive_some(4096)
                        conn.receive_data(data)
                        while (e := conn.next_event()) is not NEED_DATA:
                            if isinstance(e, Closed):
                                return
                            self._dropped(e)
                except CONNECTION_ERRORS as e:
                    failed.append(e)
                finally:
                    nursery.cancel_scope.cancel()

            async def send() -> None:
                try:
                    async for msg in self._out_recv:
                        data = conn.send(msg)
                        await stream.send_all(data)
                        self.counters["frames_out"] += 1
                except CONNECTION_ERRORS as e:
                    failed.append(e)
                    nursery.cancel_scope.cancel()
            nursery.start_soon(watch)
            nursery.start_soon(send)
        if failed:
            raise failed[0]

    async def _accepted(self, stream: trio.SocketStream) -> None:
        link = self.cfg.link
        conn = LinkConnection(keys=self.keys(), node=self.cfg.node.name, role=self.cfg.node.role,
                              dialer=False, nonce=os.urandom(16), expected_peer=link.peer_name)
        self._inbound_gen += 1
        gen = self._inbound_gen
        try:
            with trio.fail_after(link.connect_timeout):
                await self._await_hello(stream, conn)
            await stream.send_all(conn.hello())
            authentic = False
            while authentic is False or gen in self.inbound:
                data = await stream.receive_some(4096)
                conn.receive_data(data)
                while (e := conn.next_event()) is not NEED_DATA:
                    if isinstance(e, Closed):
                        return
                    if not authentic and isinstance(e, (Status, Command)):
                        # Only a connection that has proved the session key (a replayed HELLO
                        # cannot) replaces the older ones from the peer.
                        authentic = True
                        self.inbound = {gen}
                        self.in_key_id = conn.key_id.hex()
                        if not self.out_connected:
                            self._redial.set()
                    await self._deliver(e)
        except CONNECTION_ERRORS as e:
            self.counters["in_rejected"] += 1
            self._log_limited("warning", "link_reject", f"inbound link connection closed: "
                              f"{type(e).__name__}: {e}", every=5.0)
        finally:
            self.inbound.discard(gen)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _deliver(self, e) -> None:
        if isinstance(e, Status):
            self.counters["heartbeats_in"] += 1
            self._peer_settings(e.settings)
            await self._to_inbox(ev.heartbeat_from(e))
        elif isinstance(e, Command):
            self.counters["commands_in"] += 1
            await self._to_inbox(ev.PeerCommand(COMMAND_NAMES[e.kind], e.term, e.reason))
        else:
            self._dropped(e)

    async def _to_inbox(self, event) -> None:
        """Into the node manager's inbox; waits only when it is full.  (``send`` always
        yields to the scheduler, one more turn of the loop for every heartbeat; the reader
        yields anyway at its next ``receive_some``.)"""
        try:
            self.inbox.send_nowait(event)
        except trio.WouldBlock:
            await self.inbox.send(event)

    def _dropped(self, e) -> None:
        if isinstance(e, Dropped):
            self.counters[f"dropped_{e.reason}"] += 1
            self._log_limited("warning", f"link_drop_{e.reason}",
                              f"dropped a {e.size}-byte frame from the link: {e.reason} "
                              f"(total {self.counters[f'dropped_{e.reason}']})", every=5.0)
        else:
            self.counters["dropped_unexpected"] += 1
