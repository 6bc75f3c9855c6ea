"""Admin socket of the node manager (Unix stream socket, mode 0600): one JSON request line,
one JSON reply line.  ``vmha status/failover/failback/mode`` speak it."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from telephony._control import NEED_DATA, Closed, ControlConnection, ControlError, ControlProtocolError

if TYPE_CHECKING:
    from .node import NodeManager

MAX_REQUEST = 4096


async def open_unix_listener(path: Path, backlog: int = 16) -> trio.SocketListener:
    """A Unix stream socket at ``path`` (a stale one is replaced), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(backlog)
    return trio.SocketListener(sock)


async def serve_admin(nm: "NodeManager", *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    path: Path = nm.cfg.admin.socket
    listener = await open_unix_listener(path)
    task_status.started()

    async def handle(stream: trio.SocketStream) -> None:
        codec = ControlConnection(max_line=MAX_REQUEST)
        try:
            with trio.move_on_after(10):
                while True:
                    msg = codec.next_event()
                    if msg is NEED_DATA:
                        codec.receive_data(await stream.receive_some(4096))
                        continue
                    if isinstance(msg, Closed):
                        return
                    reply = await answer(nm, msg)
                    await stream.send_all(json.dumps(reply).encode() + b"\n")
                    return
        except (trio.BrokenResourceError, OSError, ControlProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    try:
        await trio.serve_listeners(handle, [listener])
    finally:
        try:
            path.unlink()
        except OSError:
            pass


async def answer(nm: "NodeManager", msg) -> dict:
    if isinstance(msg, ControlError):
        return {"ok": False, "error": f"bad request: {msg.reason}"}
    op = msg.get("op")
    if op == "status":
        return {"ok": True, "status": nm.status_dict()}
    if op in ("failover", "failback"):
        r = await nm.request(op, force=bool(msg.get("force", False)))
        return {"ok": r.ok, "message": r.message}
    if op == "mode":
        r = await nm.request("mode", arg=str(msg.get("mode", "")))
        return {"ok": r.ok, "message": r.message}
    return {"ok": False, "error": f"unknown request {op!r}: status, failover, failback, mode"}


def admin_request(path: Path, request: dict, timeout: float = 10.0) -> dict:
    """Blocking client used by the CLI."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    if not buf:
        raise ConnectionError("node manager closed the admin connection without answering")
    return json.loads(buf)
