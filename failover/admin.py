"""Admin socket of the node manager (Unix stream socket, mode 0600): one JSON request line,
one JSON reply line.  ``vmha status/failover/failback/mode`` speak it."""
from __future__ import annotations

import json
import pwd
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from failover.operations import perform
from failover.unixsock import serve_unix
from telephony.core.control import NEED_DATA, Closed, ControlConnection, ControlError, FramingError
from telephony.core.framing import LineFramer, Unfinished, decode_json_object
from telephony.runtime.tasks import describe

if TYPE_CHECKING:
    from failover.node import NodeManager

MAX_REQUEST = 1 << 20  # a configuration write may carry many rows
IDLE_TIMEOUT = 30.0  # seconds a connection may wait for its next request


async def serve_admin(nm: "NodeManager", *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        # one JSON request line, one reply line; a client may send further requests on the
        # same connection (each answered in order) and closes it when done
        codec = ControlConnection(max_line=MAX_REQUEST)
        operator = peer_operator(stream.socket)
        try:
            while True:
                with trio.move_on_after(IDLE_TIMEOUT) as idle:
                    msg = codec.next_event()
                    while msg is NEED_DATA:
                        codec.receive_data(await stream.receive_some(65536))
                        msg = codec.next_event()
                if idle.cancelled_caught or isinstance(msg, Closed):
                    return
                try:
                    reply = await answer(nm, msg, operator)
                except Exception as e:  # noqa: BLE001 - a bug in one request: say so, go on
                    nm.failures.failed("admin.request", e)
                    reply = {"ok": False, "error": f"internal error, nothing changed: {describe(e)}"}
                await stream.send_all(json.dumps(reply).encode() + b"\n")
        except (trio.BrokenResourceError, OSError, FramingError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    # one failing request never ends the listener; the listener never ends the node manager
    await serve_unix(nm.cfg.admin.socket, "admin", handle, nm.failures, task_status=task_status)


async def answer(nm: "NodeManager", msg, operator: str = "unix") -> dict:
    """The reply to one admin request (``operations.perform`` carries it out)."""
    if isinstance(msg, ControlError):
        return {"ok": False, "error": f"bad request: {msg.reason}"}
    return await perform(nm, msg.get("op"), msg, operator, "unix")


def peer_operator(sock) -> str:
    """``unix:<user>`` for the user of the process at the other end of an admin connection
    (``SO_PEERCRED``; the uid when it has no name), ``unix`` where the kernel does not say."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
    except (OSError, AttributeError, struct.error):
        return "unix"
    if uid < 0:  # not a Unix socket, or no process behind it
        return "unix"
    try:
        return f"unix:{pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"unix:{uid}"


#: bytes of one reply a client reads at most (a reply may list a whole table: ``db_list``)
MAX_REPLY = 1 << 26


def _read_reply(sock: socket.socket, framer: LineFramer) -> dict:
    """The next reply line on a blocking admin connection, as a JSON object.
    ConnectionError when the node manager closed the connection without one; ValueError for
    a reply that is no JSON object or is longer than :data:`MAX_REPLY`.  A last line without
    its ``\\n`` is still read (the connection closed right after it)."""
    while True:
        try:
            line = framer.next_line()
        except FramingError as e:
            raise ValueError(f"bad reply from the node manager: {e}") from None
        if line is NEED_DATA:
            framer.receive_data(sock.recv(65536))
            continue
        if isinstance(line, Closed):
            raise ConnectionError("node manager closed the admin connection without answering")
        msg = decode_json_object(line.raw if isinstance(line, Unfinished) else line)
        if isinstance(msg, str):
            raise ValueError(f"bad reply from the node manager: {msg}")
        return msg


class AdminClient:
    """A blocking admin connection for several requests in a row (benchmarks, scripts)."""

    def __init__(self, path: Path, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self._replies = LineFramer(MAX_REPLY)

    def request(self, request: dict) -> dict:
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        return _read_reply(self.sock, self._replies)

    def close(self) -> None:
        self.sock.close()


def admin_request(path: Path, request: dict, timeout: float = 10.0) -> dict:
    """Blocking client used by the CLI."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(request).encode() + b"\n")
        return _read_reply(s, LineFramer(MAX_REPLY))
