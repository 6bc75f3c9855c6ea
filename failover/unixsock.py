"""The node manager's Unix stream sockets (the admin socket, the control channel to the
messaging service): mode 0600, a stale socket file replaced, every connection under a
backstop, the listener kept running, the file removed when it stops."""
from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from telephony.runtime.tasks import TaskFailures, guard_handler, keep_running


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


async def serve_unix(path: Path, name: str, handle: Callable[[trio.SocketStream], Awaitable[None]],
                     failures: TaskFailures, *, backlog: int = 16,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``handle`` on a Unix socket at ``path`` until cancelled.  A connection whose
    handler fails is recorded as ``{name}.connection``; a failing listener as ``{name}.listen``
    and restarted (``keep_running``)."""
    listener = await open_unix_listener(path, backlog)
    handler = guard_handler(f"{name}.connection", failures, handle)

    async def serve() -> None:
        await trio.serve_listeners(handler, [listener])
    task_status.started()
    try:
        await keep_running(f"{name}.listen", serve, failures)
    finally:
        try:
            path.unlink()
        except OSError:
            pass
