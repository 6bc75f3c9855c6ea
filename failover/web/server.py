"""Serve the admin HTTP API: hypercorn on the node manager's own Trio loop.

``serve_http(nm, task_status=...)`` (started by the node manager when ``http.listen`` is set):

* **At start** it opens the listening socket itself, so a port that cannot be bound is the
  node's configuration error like every other listener's (``ListenError``: ``cannot listen on
  127.0.0.1:8080 (setting http.listen): Address already in use``, exit 2), and with TLS loads
  the certificate and key once (a file that does not load is such an error too, naming
  ``http.tls_cert``/``http.tls_key``).
* **After start** ``serve_connections`` accepts on that socket and hands each connection to
  hypercorn's Trio connection handler (HTTP/1.1, HTTP/2, TLS), each under a backstop
  (``http.connection`` in the task failures) and at most ``MAX_CONNECTIONS`` at a time.  It
  does what ``hypercorn.trio.serve`` does for one worker, minus the ASGI lifespan (the
  application has no start-up or shut-down hooks), plus those two limits.  It runs under
  ``keep_running``: if it ever fails it is recorded (``http.serve``) and started again, while
  the socket itself stays open (connections wait in its backlog meanwhile).  Nothing the
  server does ends the node manager.
* **Slow clients**: a connection that has not sent a whole request within ``KEEP_ALIVE``
  seconds (a half request left open) or is idle that long between requests is closed by
  hypercorn; headers are bounded by hypercorn (16 KiB), bodies by the application (1 MiB).
* **On cancellation** (the node manager stopping) accepting stops and requests in progress
  get up to ``GRACE`` seconds.
* hypercorn writes no access log and no console lines: its own messages go to the event log
  (``http_server``; informational ones at debug level), and with ``log.level = "debug"`` one
  ``http_access`` record per request (the path, never the query string).
"""
from __future__ import annotations

import logging
import os
import ssl
from functools import partial
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from failover.web.app import build_app
from failover.web.hub import EventHub
from telephony.runtime.tasks import ListenError, keep_running, listen_tcp

if TYPE_CHECKING:
    from failover.node import NodeManager

__all__ = ["GRACE", "MAX_CONNECTIONS", "hypercorn_config", "serve_connections", "serve_http"]

GRACE = 1.0  # seconds requests in progress get when the node manager stops
MAX_CONNECTIONS = 256  # HTTP connections open at once (the node manager's descriptors are few)
KEEP_ALIVE = 15.0  # seconds a connection may stay idle or sit on a half-sent request


class _EventLogHandler(logging.Handler):
    """Python logging (hypercorn's) into the node's event log."""

    def __init__(self, nm: "NodeManager", event: str, floor: str):
        super().__init__(logging.DEBUG)
        self.nm, self.event, self.floor = nm, event, floor

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = ("error" if record.levelno >= logging.ERROR else
                     "warning" if record.levelno >= logging.WARNING else self.floor)
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            self.nm.events.write(level, self.event, message[:1000])
        except Exception:  # noqa: BLE001 - logging never raises into the server
            pass


def _logger(nm: "NodeManager", kind: str, event: str) -> logging.Logger:
    log = logging.getLogger(f"vmha.http.{kind}.{nm.cfg.node.name}.{id(nm)}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    for h in list(log.handlers):
        log.removeHandler(h)
    log.addHandler(_EventLogHandler(nm, event, "debug"))
    return log


def hypercorn_config(nm: "NodeManager") -> Config:
    """hypercorn's settings for this node (without ``bind``: set for each run)."""
    h = nm.cfg.http
    config = Config()
    config.errorlog = _logger(nm, "server", "http_server")
    debug = getattr(nm.cfg.log, "level", "info") == "debug"
    config.accesslog = _logger(nm, "access", "http_access") if debug else None
    config.access_log_format = "%(h)s \"%(r)s\" %(s)s %(b)s %(L)ss"  # the path, never the query
    config.graceful_timeout = GRACE
    config.keep_alive_timeout = KEEP_ALIVE
    config.include_server_header = False
    config.ssl_handshake_timeout = 10
    if h.tls:
        config.certfile = str(h.tls_cert)
        config.keyfile = str(h.tls_key)
    return config


def _check_tls(nm: "NodeManager", config: Config) -> ssl.SSLContext:
    """Load the certificate and key once at start: a problem is a start-up error naming the
    settings.  A key file that others may read is logged as a warning."""
    h = nm.cfg.http
    try:
        context = config.create_ssl_context()
    except (OSError, ssl.SSLError, ValueError) as e:
        why = getattr(e, "strerror", None) or getattr(e, "reason", None) or str(e)
        raise ListenError(getattr(e, "errno", None) or 0,
                          f"cannot use the TLS certificate (setting http.tls_cert {h.tls_cert}) and key "
                          f"(setting http.tls_key {h.tls_key}): {why}") from e
    try:
        mode = os.stat(h.tls_key).st_mode & 0o777
    except OSError:
        return context
    if mode & 0o007:
        nm.events.write("warning", "http_tls_key_mode", f"the TLS key {h.tls_key} has mode {mode:04o}: "
                        f"others can read it (chmod 600 or 640 it)")
    return context


class _Lent(trio.abc.Listener):
    """One of our listening sockets, lent to a run of the server: closing it (what
    ``trio.serve_listeners`` does when it ends) leaves the socket open for the next run."""

    def __init__(self, inner: trio.SocketListener):
        self.inner = inner

    async def accept(self):
        return await self.inner.accept()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def serve_connections(app, config: Config, listeners: list, failures, stop: trio.Event) -> None:
    """Serve ``app`` on ``listeners`` until ``stop`` is set (then give requests in progress
    ``config.graceful_timeout`` seconds).  hypercorn's own connection handler (``TCPServer``,
    HTTP/1.1 and HTTP/2, TLS when the listeners are ``trio.SSLListener``) runs each connection,
    under a backstop (a connection that fails is ``http.connection`` in the task failures,
    never more) and at most ``MAX_CONNECTIONS`` at a time: the next one is closed at once
    (``http_connections_full``, logged at most every 30 s), so no client can use up the node
    manager's file descriptors."""
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    open_now = 0

    async def connection(stream) -> None:
        nonlocal open_now
        if open_now >= MAX_CONNECTIONS:
            failures.limited("warning", "http_connections_full", f"{MAX_CONNECTIONS} HTTP connections "
                             "are open: new ones are closed at once until some end")
            await trio.aclose_forcefully(stream)
            return
        open_now += 1
        try:
            await TCPServer(wrapped, config, context, {}, stream)
        except Exception as e:  # noqa: BLE001 - one connection never ends the server
            failures.failed("http.connection", e)
            await trio.aclose_forcefully(stream)
        finally:
            open_now -= 1

    async with trio.open_nursery() as handlers:
        async with trio.open_nursery() as acceptors:
            acceptors.start_soon(partial(trio.serve_listeners, connection, listeners,
                                         handler_nursery=handlers))
            await stop.wait()
            acceptors.cancel_scope.cancel()
        await context.terminated.set()  # keep-alive connections close, no new request starts
        handlers.cancel_scope.deadline = trio.current_time() + config.graceful_timeout


async def serve_http(nm: "NodeManager", *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    h = nm.cfg.http
    assert h.listen is not None
    config = hypercorn_config(nm)
    ssl_context = _check_tls(nm, config) if h.tls else None
    sockets = await listen_tcp("http.listen", h.listen.host, h.listen.port)
    hub = None
    try:
        hub = EventHub(nm.events)
        app = build_app(nm, hub)
        stop = trio.Event()
        stopped = trio.Event()

        async def one_run() -> None:
            if not stop.is_set():
                listeners: list = [_Lent(s) for s in sockets]
                if ssl_context is not None:  # a certificate renewed on disk is used from the next run
                    fresh = config.create_ssl_context()
                    listeners = [trio.SSLListener(lst, fresh, https_compatible=True) for lst in listeners]
                await serve_connections(app, config, listeners, nm.failures, stop)
            stopped.set()
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope(shield=True)

            async def server() -> None:
                with scope:
                    await keep_running("http.serve", one_run, nm.failures)

            nursery.start_soon(server)
            nm.events.write("info", "http_listening", f"admin HTTP API on {h.url or h.listen} "
                            f"({'TLS' if h.tls else 'plain HTTP, loopback only'})",
                            {"url": h.url, "listen": str(h.listen), "tls": h.tls})
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                stop.set()  # hypercorn stops accepting; requests in progress get GRACE seconds
                with trio.CancelScope(shield=True), trio.move_on_after(GRACE + 1.0):
                    await stopped.wait()
                scope.cancel()
    finally:
        if hub is not None:
            hub.close()
        for lst in sockets:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(lst)
