"""Trio driver of the replication channel (codec: ``_replwire.ReplConnection``;
docs/replication.md, "Replication channel").

A ``ReplEndpoint`` listens for the peer's connections and dials one connection per channel on
which this node is the sender.  Each connection, once its HELLO exchange succeeded, is handed
to a *session* coroutine as a ``ReplChannel``: ``sessions_out[channel]`` for the ones we dial,
``sessions_in[channel]`` for the ones we accept.  When a session ends (it returns, or raises
``ChannelClosed``, ``OSError`` or ``trio.BrokenResourceError``) the connection is closed and
the dialer reconnects with exponential backoff.  Any other exception of a session is a bug: it
is logged as an error with its traceback and handled like a disconnect, so it never brings
the node manager down.

Memory per connection is bounded: a reader task decodes at most 64 KiB at a time and queues
the messages (at most 64, at most ``2 * max_frame`` bytes) for ``ReplChannel.receive()``; a
session that stops reading stops the reader, and TCP flow control stalls the peer.

When the connection ends, messages already queued are still returned by ``receive()``, then
it raises ``ChannelClosed``; a session that is not waiting in ``receive()`` when the
connection ends with nothing left queued is cancelled.

A second inbound connection for a channel replaces the one whose session is running (the
peer reconnected) as soon as it has carried an authentic message, or at once if the running
one ends; a HELLO alone can be replayed, so it never displaces anything.  The dialer's
session should therefore speak first (e.g. a ``DbState``, a ``FileManifestRequest``).

Keys: ``keys`` is one key (bytes) or a function returning the keys accepted now, current
first; each connection takes them when it starts and is never touched by a later change.  A
dialer whose handshake fails tries the next accepted key on its next attempt, and starts with
the current key again after a connection that was up (as the node link does).
"""
from __future__ import annotations

import os
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field
from functools import partial
from typing import Awaitable, Callable

import trio

from failover.config import Address
from failover.core.replwire import (
    DEFAULT_MAX_FRAME,
    NEED_DATA,
    Channel,
    Closed,
    Dropped,
    Hello,
    LocalReplError,
    RemoteReplError,
    ReplConnection,
    ReplError,
    max_changes_bytes,
    max_data,
)
from failover.core.state import Role
from telephony.runtime.tasks import TaskFailures, describe, keep_running, listen_tcp

__all__ = ["ChannelClosed", "ReplChannel", "ReplEndpoint", "ReplTasks", "Session",
           "INBOX_ITEMS", "RECEIVE_SIZE", "LISTEN_SETTING"]

RECEIVE_SIZE = 65536
INBOX_ITEMS = 64
LONG_CONNECTION = 1.0  # seconds: a connection that lasted longer resets the backoff
_DISCONNECTS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, RemoteReplError)
LISTEN_SETTING = "replication.listen"  # named in the one-line error when the port is taken


class ReplTasks(TaskFailures):
    """``TaskFailures`` of the replication tasks, plus which of them are failing *now*: a task
    is failing from a recorded failure until it reports that it works again (``ok``), e.g. the
    next successful poll, connection or scan.  Status shows ``failing()`` as unhealthy."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._ok_at: dict[str, int] = {}

    def ok(self, task: str) -> None:
        if task in self.counts:
            self._ok_at[task] = self.counts[task]

    def failing(self) -> dict[str, str]:
        """task -> its last error, for the tasks that failed since they last worked."""
        return {t: self.last.get(t, "") for t, n in sorted(self.counts.items())
                if n > self._ok_at.get(t, 0)}


def events_log(events):
    """A ``telephony.runtime.tasks.LogFn`` writing to an event log (``events.write``)."""
    def write(level: str, event: str, message: str) -> None:
        if events is not None:
            events.write(level, event, message)
    return write


class ChannelClosed(Exception):
    """The connection is gone (EOF, socket error, protocol error, replaced); ``str()`` says
    why."""


Session = Callable[["ReplChannel"], Awaitable[None]]


class _InboxClosed(Exception):
    pass


class _Inbox:
    """FIFO bounded by a number of messages and their total frame size (one message always
    fits in an empty inbox).  After ``close()`` the queued messages can still be taken."""

    def __init__(self, max_items: int, max_bytes: int):
        self._items: deque[tuple[object, int]] = deque()
        self._max_items, self._max_bytes = max_items, max_bytes
        self.bytes = 0
        self.closed = False
        self.receiving = 0  # tasks waiting in get()
        self._getters = trio.lowlevel.ParkingLot()
        self._putters = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: object, size: int) -> None:
        await trio.lowlevel.checkpoint()
        while self._items and not self.closed and (len(self._items) >= self._max_items
                                                   or self.bytes + size > self._max_bytes):
            await self._putters.park()
        if self.closed:
            raise _InboxClosed
        self._items.append((item, size))
        self.bytes += size
        self._getters.unpark()

    async def get(self) -> object:
        await trio.lowlevel.checkpoint()
        self.receiving += 1
        try:
            while not self._items:
                if self.closed:
                    raise _InboxClosed
                await self._getters.park()
        finally:
            self.receiving -= 1
        item, size = self._items.popleft()
        self.bytes -= size
        self._putters.unpark_all()
        return item

    def close(self) -> None:
        self.closed = True
        self._getters.unpark_all()
        self._putters.unpark_all()


class ReplChannel:
    """One established, authenticated replication connection, as seen by a session."""

    peer: str
    peer_role: Role
    channel: Channel
    dialer: bool
    max_frame: int

    def __init__(self, stream: trio.SocketStream, conn: ReplConnection, endpoint: ReplEndpoint):
        hello = conn.peer
        assert conn.established and hello is not None
        self.peer, self.peer_role, self.channel = hello.node, hello.role, conn.channel
        self.dialer, self.max_frame = conn.dialer, conn.max_frame
        self.key_id = conn.key_id.hex()  # id of the key the connection's HELLOs used
        self._stream, self._conn, self._endpoint = stream, conn, endpoint
        self._lock = trio.Lock()
        self._inbox = _Inbox(INBOX_ITEMS, 2 * conn.max_frame)
        self._own: Counter[str] = Counter(frames_in=0, bytes_in=0, frames_out=0, bytes_out=0)
        self._closed_reason: str | None = None
        self._scope: trio.CancelScope | None = None  # the connection's reader and session
        self._reader_done = False
        self._proven = False  # carried an authentic message
        self._on_change: Callable[[], None] | None = None
        self._gen = 0
        self._admitted = False  # inbound: its session was allowed to start
        self._finished = trio.Event()

    def __repr__(self) -> str:
        side = "to" if self.dialer else "from"
        return f"<ReplChannel {self.channel.name} {side} {self.peer}>"

    @property
    def counters(self) -> dict[str, int]:
        """frames/bytes in/out of this connection and the codec's ``dropped_*``."""
        out = dict(self._own)
        out.update((k, v) for k, v in self._conn.counters.items() if k.startswith("dropped_"))
        return out

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def max_data(self) -> int:
        """Largest ``data`` of one chunk message on this connection."""
        return max_data(self.max_frame)

    @property
    def max_changes_bytes(self) -> int:
        """Budget of one ``DbChanges`` on this connection (see ``_replwire``)."""
        return max_changes_bytes(self.max_frame)

    # ---- API for sessions ----------------------------------------------------------------

    async def send(self, msg) -> None:
        """Send one message.  Raises ``ChannelClosed`` if the connection is gone, and
        ``LocalReplError`` (nothing sent) if the message is invalid or not ours to send."""
        async with self._lock:
            if self._closed_reason is not None:
                raise ChannelClosed(self._closed_reason)
            data = self._conn.send(msg)
            sent = False
            try:
                await self._stream.send_all(data)
                sent = True
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
                self._close(f"send failed: {type(e).__name__}: {e}")
                raise ChannelClosed(self._closed_reason) from e
            finally:
                if not sent:  # cancelled half-way: the stream is unusable
                    self._close("a send was interrupted")
            self._own["frames_out"] += 1
            self._own["bytes_out"] += len(data)

    async def receive(self):
        """The next message from the peer (``Dropped`` frames are counted and skipped).
        Raises ``ChannelClosed`` once the connection has ended and nothing is left queued."""
        try:
            return await self._inbox.get()
        except _InboxClosed:
            raise ChannelClosed(self._closed_reason or "closed") from None

    async def aclose(self) -> None:
        """Close the connection; the session should return soon after."""
        self._close("closed by the session")
        await trio.aclose_forcefully(self._stream)

    # ---- internals -----------------------------------------------------------------------

    def _close(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
        self._inbox.close()
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _cancel(self, reason: str) -> None:
        self._close(reason)
        if self._scope is not None:
            self._scope.cancel()

    async def _read_loop(self) -> None:
        conn, reason = self._conn, None
        try:
            while True:
                while (e := conn.next_event()) is not NEED_DATA:
                    if isinstance(e, Closed):
                        reason = "peer closed the connection"
                        return
                    if isinstance(e, Dropped):
                        self._endpoint._dropped(self, e)
                        continue
                    if isinstance(e, Hello):  # the codec makes a second HELLO fatal
                        continue
                    self._own["frames_in"] += 1
                    if not self._proven:
                        self._proven = True
                        self._changed()
                    await self._inbox.put(e, conn.last_frame_size)
                data = await self._stream.receive_some(RECEIVE_SIZE)
                self._own["bytes_in"] += len(data)
                conn.receive_data(data)
        except _InboxClosed:
            reason = "closed"
        except RemoteReplError as e:
            reason = f"protocol error: {e}"
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            reason = f"connection lost: {type(e).__name__}: {e}"
        except Exception as e:  # a bug here must not take the endpoint down
            reason = f"reader failed: {type(e).__name__}: {e}"
            self._endpoint._bug(f"{self.channel.name} reader", e)
        finally:
            self._reader_done = True
            self._close(reason or "reader stopped")
            if not self._inbox and not self._inbox.receiving and self._scope is not None:
                self._scope.cancel()  # the session is not reading and nothing is left for it


@dataclass
class _ChannelState:
    out_connected: bool = False
    connects_out: int = 0
    connects_in: int = 0
    attempt: int = 0  # failed dialer handshakes in a row: picks the key tried next
    last_error: str | None = None
    totals: Counter = field(default_factory=Counter)  # of the connections that ended
    live: set = field(default_factory=set)
    current_in: ReplChannel | None = None  # inbound connection whose session runs
    in_changed: trio.Event = field(default_factory=trio.Event)
    redial: trio.Event = field(default_factory=trio.Event)

    def notify_in(self) -> None:
        self.in_changed.set()
        self.in_changed = trio.Event()


class _Refused(Exception):
    pass


class ReplEndpoint:
    """Listener and dialers of one node's replication channels (see the module docstring).

    ``peer`` is read at each dial attempt, so it may be changed while running.  With port 0
    in ``listen``, ``listen_port`` gives the bound port once ``run`` has started (if the host
    is empty, the first of the listeners).

    Nothing but cancellation ends ``run`` once it has started: a connection that fails at any
    point (a reset during the handshake or mid-frame, garbage) ends only itself; a dial loop or
    the accept loop that fails is recorded in ``failures`` (``ReplTasks``: count, last error,
    rate-limited log, failing now) and started again after a growing delay.  Opening the
    listener (``open()``, also done by ``run``) raises one ``ListenError`` naming the setting.
    """

    def __init__(self, *, node: str, role: Role, peer_name: str,
                 keys: bytes | Callable[[], tuple[bytes, ...]], listen: Address,
                 peer: Address, events, sessions_out: dict[Channel, Session],
                 sessions_in: dict[Channel, Session], max_frame: int = DEFAULT_MAX_FRAME,
                 connect_timeout: float = 1.0, reconnect_min: float = 0.05,
                 reconnect_max: float = 2.0, handshake_timeout: float = 5.0,
                 failures: ReplTasks | None = None):
        self.keys = (lambda: (keys,)) if isinstance(keys, bytes) else keys
        try:  # validates node, role, keys, peer_name, max_frame like the connections will
            ReplConnection(keys=self.keys(), node=node, role=role, channel=Channel.DB, dialer=True,
                           nonce=bytes(16), expected_peer=peer_name, max_frame=max_frame)
        except LocalReplError as e:
            raise ValueError(str(e)) from None
        if not isinstance(peer_name, str) or not peer_name or peer_name == node:
            raise ValueError("peer_name must be the other node's name")
        for name, sessions in (("sessions_out", sessions_out), ("sessions_in", sessions_in)):
            for ch, fn in sessions.items():
                if not isinstance(ch, Channel) or not callable(fn):
                    raise ValueError(f"{name} maps a Channel to a session coroutine function")
        if not 0 < reconnect_min <= reconnect_max:
            raise ValueError("need 0 < reconnect_min <= reconnect_max")
        if not (connect_timeout > 0 and handshake_timeout > 0):
            raise ValueError("timeouts must be positive")
        self.node, self.role, self.peer_name = node, role, peer_name
        self.listen, self.peer, self.events = listen, peer, events
        self.sessions_out, self.sessions_in = dict(sessions_out), dict(sessions_in)
        self.max_frame, self.connect_timeout = max_frame, connect_timeout
        self.reconnect_min, self.reconnect_max = reconnect_min, reconnect_max
        self.handshake_timeout = handshake_timeout
        self.counters: Counter[str] = Counter()  # in_rejected, session_errors
        self.failures = failures if failures is not None else ReplTasks(events_log(events))
        self._state = {ch: _ChannelState() for ch in Channel}
        self._listeners: list[trio.SocketListener] = []
        self._last_log: dict[str, float] = {}
        self._gen = 0

    # ---- API -----------------------------------------------------------------------------

    @property
    def listen_port(self) -> int:
        if not self._listeners:
            raise RuntimeError("not listening yet")
        return self._listeners[0].socket.getsockname()[1]

    def stats(self) -> dict:
        """Per channel (``"db"``, ``"files"``): out_connected, in_connected, counters
        (frames/bytes in/out, dropped_* of all its connections, both directions), reconnects
        (outbound connections established after the first), connects_in, last_error."""
        out = {}
        for ch, st in self._state.items():
            if ch not in self.sessions_out and ch not in self.sessions_in:
                continue
            counters = Counter(st.totals)
            for chan in st.live:
                counters.update(chan.counters)
            out[ch.name.lower()] = {
                "out_connected": st.out_connected, "in_connected": st.current_in is not None,
                "counters": dict(sorted(counters.items())),
                "reconnects": max(st.connects_out - 1, 0), "connects_in": st.connects_in,
                "out_key_id": next((c.key_id for c in st.live if c.dialer), None),
                "in_key_id": st.current_in.key_id if st.current_in is not None else None,
                "last_error": st.last_error}
        return out

    async def open(self) -> None:
        """Open the listening sockets (if not open yet).  Raises ``ListenError`` (one line:
        the setting, the address, why) when the address is in use or not ours."""
        if not self._listeners:
            self._listeners = await listen_tcp(LISTEN_SETTING, self.listen.host or None,
                                               self.listen.port)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await self.open()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_running, "repl.listener", self._serve, self.failures)
            for ch in self.sessions_out:
                nursery.start_soon(keep_running, f"repl.{ch.name.lower()}.dialer",
                                   partial(self._dial_loop, ch), self.failures)
            task_status.started()

    async def _serve(self) -> None:
        """Accept connections until cancelled.  ``serve_listeners`` closes the sockets when
        it fails, so a restart (after a failure recorded by ``keep_running``) opens them
        again."""
        if any(listener.socket.fileno() < 0 for listener in self._listeners):
            self._listeners = []
            await self.open()
            self.failures.ok("repl.listener")
        await trio.serve_listeners(self._accepted, self._listeners)

    # ---- logging -------------------------------------------------------------------------

    def _log(self, level: str, event: str, message: str, fields: dict | None = None) -> None:
        self.events.write(level, event, message, fields)

    def _log_limited(self, level: str, key: str, message: str, every: float = 30.0,
                     fields: dict | None = None, event: str | None = None) -> None:
        """Write ``event`` (default: ``key``) at most once per ``every`` seconds per ``key``."""
        now = trio.current_time()
        if now - self._last_log.get(key, -1e9) >= every:
            self._last_log[key] = now
            self._log(level, event or key, message, fields)

    def _dropped(self, chan: ReplChannel, e: Dropped) -> None:
        total = chan.counters[f"dropped_{e.reason}"]
        self._log_limited("warning", f"repl_drop_{e.reason}",
                          f"dropped a {e.size}-byte frame on the replication "
                          f"{chan.channel.name} channel: {e.reason} (connection total {total})",
                          every=5.0)

    def _bug(self, what: str, exc: BaseException) -> None:
        """A bug (not a disconnect) ended one connection: counted in ``session_errors`` and
        in ``failures`` (task ``repl.<what>``, without a second log line), logged with its
        traceback at most once per 30 s per ``what``."""
        self.counters["session_errors"] += 1
        task = "repl." + what.lower().replace(" ", ".")
        self.failures.counts[task] += 1
        self.failures.last[task] = describe(exc)
        tb = "".join(traceback.format_exception(exc))
        summary = " | ".join(tb.strip().splitlines()[-6:])
        self._log_limited("error", f"repl_session_error:{task}",
                          f"replication {what} failed: {type(exc).__name__}: {exc}; closing the "
                          f"connection (failure {self.failures.counts[task]})",
                          fields={"traceback": tb[-8000:], "summary": summary},
                          event="repl_session_error")

    # ---- connections ---------------------------------------------------------------------

    def _connection(self, dialer: bool, channel: Channel | None, attempt: int = 0) -> ReplConnection:
        keys = self.keys()
        i = attempt % len(keys)
        return ReplConnection(keys=keys[i:] + keys[:i], node=self.node, role=self.role, channel=channel,
                              dialer=dialer, nonce=os.urandom(16), expected_peer=self.peer_name,
                              max_frame=self.max_frame)

    @staticmethod
    def _tune(stream: trio.SocketStream) -> None:
        sock = trio.socket
        try:
            stream.setsockopt(sock.IPPROTO_TCP, sock.TCP_NODELAY, True)
            stream.setsockopt(sock.SOL_SOCKET, sock.SO_KEEPALIVE, True)
            for opt, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
                if hasattr(sock, opt):
                    stream.setsockopt(sock.IPPROTO_TCP, getattr(sock, opt), value)
        except OSError:
            pass  # best effort

    @staticmethod
    async def _await_hello(stream: trio.SocketStream, conn: ReplConnection) -> Hello:
        while True:
            e = conn.next_event()
            if isinstance(e, Hello):
                return e
            if isinstance(e, Closed):
                raise trio.BrokenResourceError("peer closed the connection during the handshake")
            if e is not NEED_DATA:  # cannot happen: the codec raises on a frame before HELLO
                raise RemoteReplError(f"{type(e).__name__} before the HELLO")
            conn.receive_data(await stream.receive_some(RECEIVE_SIZE))

    async def _run_connection(self, chan: ReplChannel, session: Session,
                              admit: Callable[[], Awaitable[str | None]] | None = None) -> str:
        """Run ``chan``'s reader and ``session``; close the stream; say why it ended."""
        st = self._state[chan.channel]
        st.live.add(chan)
        reason = None
        try:
            async with trio.open_nursery() as nursery:
                chan._scope = nursery.cancel_scope
                nursery.start_soon(chan._read_loop)
                if admit is not None and (reason := await admit()) is not None:
                    chan._cancel(reason)
                else:
                    name = chan.channel.name.lower()
                    self.failures.ok(f"repl.{name}.session")  # the channel works again
                    self.failures.ok(f"repl.{name}.reader")
                    reason = await self._session(chan, session)
                    chan._cancel(reason)
        finally:
            st.live.discard(chan)
            st.totals.update(chan.counters)
            chan._close(reason or "closed")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(chan._stream)
            if st.current_in is chan:
                st.current_in = None
            chan._finished.set()
            st.notify_in()
        return chan._closed_reason or reason or "closed"

    async def _session(self, chan: ReplChannel, session: Session) -> str:
        """Run the session; a bug in it is logged and ends the connection, nothing else."""
        try:
            await session(chan)
            return "session ended"
        except BaseException as e:
            if not isinstance(e, (Exception, BaseExceptionGroup)):
                raise  # Cancelled, KeyboardInterrupt, SystemExit
            if isinstance(e, BaseExceptionGroup):  # Cancelled inside a group must go on
                fatal, rest = e.split((trio.Cancelled, KeyboardInterrupt, SystemExit))
            else:
                fatal, rest = None, e
            reason = chan._closed_reason or "session ended"
            if rest is not None:
                if isinstance(rest, BaseExceptionGroup):
                    bug = rest.split((ChannelClosed, *_DISCONNECTS))[1] is not None
                else:
                    bug = not isinstance(rest, (ChannelClosed, *_DISCONNECTS))
                if bug:
                    self._bug(f"{chan.channel.name} session", rest)
                    reason = f"session error: {type(rest).__name__}: {rest}"
                elif chan._closed_reason is None:
                    reason = f"{type(rest).__name__}: {rest}"
            if fatal is not None:
                raise fatal from None  # the group's own part, not a new error while handling it
            return reason

    # ---- dialing -------------------------------------------------------------------------

    async def _dial_loop(self, ch: Channel) -> None:
        st, session = self._state[ch], self.sessions_out[ch]
        backoff = self.reconnect_min
        while True:
            stream, up_since = None, None
            peer = self.peer
            try:
                with trio.fail_after(self.connect_timeout):
                    stream = await trio.open_tcp_stream(peer.host, peer.port)
                self._tune(stream)
                conn = self._connection(True, ch, st.attempt)
                st.attempt += 1  # reset below once the handshake is done
                with trio.fail_after(self.handshake_timeout):
                    await stream.send_all(conn.hello())
                    await self._await_hello(stream, conn)
                st.attempt = 0
                chan = ReplChannel(stream, conn, self)
                up_since = trio.current_time()
                st.out_connected = True
                st.connects_out += 1
                st.redial = trio.Event()
                self.failures.ok(f"repl.{ch.name.lower()}.dialer")
                self._log("info", "repl_up", f"replication {ch.name} channel connected to "
                          f"{self.peer_name} at {peer}", {"channel": ch.name.lower()})
                reason = await self._run_connection(chan, session)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError,
                    trio.ClosedResourceError, ReplError) as e:
                reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            except Exception as e:  # a bug of this module: log it, keep dialing
                self._bug(f"{ch.name} dialer", e)
                reason = f"internal error: {type(e).__name__}: {e}"
            finally:
                st.out_connected = False
                if stream is not None:
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(stream)
            st.last_error = reason
            if up_since is not None:
                self._log("warning", "repl_down", f"replication {ch.name} channel to "
                          f"{self.peer_name} closed: {reason}", {"channel": ch.name.lower()})
                if trio.current_time() - up_since > LONG_CONNECTION:
                    backoff = self.reconnect_min
            else:
                self._log_limited("info", f"repl_retry_{ch.name.lower()}",
                                  f"cannot open the replication {ch.name} channel to "
                                  f"{self.peer_name} at {peer}: {reason}; retrying")
            with trio.move_on_after(backoff):
                await st.redial.wait()
            if st.redial.is_set():
                st.redial = trio.Event()
                backoff = self.reconnect_min
            else:
                backoff = min(backoff * 2, self.reconnect_max)

    # ---- accepting -----------------------------------------------------------------------

    async def _accepted(self, stream: trio.SocketStream) -> None:
        try:
            await self._accepted_inner(stream)
        except Exception as e:  # serve_listeners would let it take the endpoint down
            self._bug("accept", e)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _accepted_inner(self, stream: trio.SocketStream) -> None:
        self._tune(stream)
        conn = self._connection(False, None)
        try:
            with trio.fail_after(self.handshake_timeout):
                await self._await_hello(stream, conn)
                if conn.channel not in self.sessions_in:
                    raise _Refused(f"no session for the {conn.channel.name} channel")
                await stream.send_all(conn.hello())
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError,
                ReplError, _Refused) as e:
            self.counters["in_rejected"] += 1
            self._log_limited("warning", "repl_reject", "inbound replication connection "
                              f"refused: {type(e).__name__}: {e} "
                              f"(total {self.counters['in_rejected']})", every=5.0)
            return
        self.failures.ok("repl.accept")
        for other in self._state.values():  # the peer is up: dial it now
            other.redial.set()
        ch = conn.channel
        st = self._state[ch]
        chan = ReplChannel(stream, conn, self)
        self._gen += 1
        chan._gen = self._gen
        chan._on_change = st.notify_in
        st.connects_in += 1
        reason = await self._run_connection(chan, self.sessions_in[ch],
                                            admit=lambda: self._admit(st, chan))
        if chan._admitted:
            self._log("info", "repl_in_down", f"inbound replication {ch.name} channel from "
                      f"{self.peer_name} closed: {reason}", {"channel": ch.name.lower()})
        else:
            self._log_limited("warning", "repl_reject", "inbound replication connection "
                              f"closed before its session: {reason}", every=5.0)

    async def _admit(self, st: _ChannelState, chan: ReplChannel) -> str | None:
        """Wait until ``chan`` may run its session: no other inbound session of the channel,
        or ``chan`` is proven and newer (then the older one is replaced).  A reason if not."""
        with trio.move_on_after(self.handshake_timeout):
            while (current := st.current_in) is not None:
                if chan._reader_done:
                    return chan._closed_reason
                if chan._proven:
                    if current._gen > chan._gen:
                        return "a newer connection for the channel is active"
                    current._cancel("replaced by a newer connection from the peer")
                    await current._finished.wait()
                    continue
                await st.in_changed.wait()
            st.current_in = chan
            chan._admitted = True
            self._log("info", "repl_in_up", f"inbound replication {chan.channel.name} channel "
                      f"from {self.peer_name}", {"channel": chan.channel.name.lower()})
            return None
        return ("another connection for the channel is active and this one carried no "
                "authentic message in time")
