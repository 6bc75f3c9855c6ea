"""The node manager's side of systemd's service protocol (docs/systemd.md), without libsystemd.

``sd_notify`` is one datagram per message on the ``AF_UNIX`` socket named in ``NOTIFY_SOCKET``
(a path, or an abstract name when it starts with ``@``), each line ``NAME=value``.  The node
manager says ``READY=1`` once its listeners are up, ``STATUS=`` when its state changes,
``WATCHDOG=1`` while its supervisor loop turns (:class:`WatchdogGate`) and ``STOPPING=1`` when it
shuts down.  Without ``NOTIFY_SOCKET`` there is no :class:`Notifier` and nothing of this runs.

A notification that cannot be sent (the socket gone, its queue full) never raises: it is
counted, and the first one is logged."""
from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

import trio

#: the variables systemd gives the main process only; a child must not see them (it would
#: notify on the node manager's behalf, or be taken for it)
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
MAX_STATUS = 200  # characters of STATUS= (systemctl status shows one line)

Log = Callable[..., object]  # EventLog.write(level, event, message, fields=None)


def notify_address(value: str) -> str | bytes:
    """The ``sockaddr_un`` path for ``NOTIFY_SOCKET``: ``@name`` is the abstract ``\\0name``.
    ValueError for anything else than an absolute path or an abstract name (systemd's
    ``vsock:`` addresses are not used here)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    raise ValueError(f"NOTIFY_SOCKET {value!r} is neither an absolute path nor an abstract '@name'")


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog timeout in seconds from ``WATCHDOG_USEC``, or None when there is none for
    this process: unset, not a positive integer, or ``WATCHDOG_PID`` names another process."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default ``os.environ``) without :data:`NOTIFY_VARIABLES`: for a child process."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k not in NOTIFY_VARIABLES}


def status_text(role: str, state: str, term: int, peer: str, reachable: bool) -> str:
    """The node's one-line ``STATUS=``: ``primary active, term 7, peer b reachable``."""
    return f"{role} {state}, term {term}, peer {peer} {'reachable' if reachable else 'unreachable'}"


class Notifier:
    """Sends ``sd_notify`` messages to one address; see the module's doc."""

    def __init__(self, address: str, *, watchdog: float | None = None, log: Log | None = None) -> None:
        self.address = address
        self._target = notify_address(address)
        #: the watchdog timeout (seconds) systemd expects pings within, None without one
        self.watchdog_interval = watchdog
        self._log = log
        #: messages that could not be sent
        self.failures = 0
        self.sent = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)  # never hold the node's loop: a full queue is a failure

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, log: Log | None = None) -> Notifier | None:
        """A notifier for ``NOTIFY_SOCKET`` (None when it is unset or empty).  An address this
        client cannot use is logged and gives None."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET")
        if not address:
            return None
        try:
            return cls(address, watchdog=watchdog_interval(env), log=log)
        except (ValueError, OSError) as e:
            if log is not None:
                log("warning", "sd_notify_failed", f"cannot notify the service manager: {e}")
            return None

    def notify(self, **fields: object) -> bool:
        """Send ``NAME=value`` lines (``notify(READY=1, STATUS="...")``) in one datagram.  A
        newline inside a value becomes a space.  False (counted, the first one logged) when
        it could not be sent."""
        lines = [f"{k}={str(v).replace(chr(10), ' ')}" for k, v in fields.items()]
        try:
            self._sock.sendto("\n".join(lines).encode("utf-8", "replace"), self._target)
        except OSError as e:
            self.failures += 1
            if self.failures == 1 and self._log is not None:
                try:
                    self._log("warning", "sd_notify_failed", f"cannot notify the service manager at "
                              f"{self.address}: {e}; further failures are only counted")
                except Exception:  # noqa: BLE001 - nothing may escape a notification
                    pass
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify(READY=1, **({"STATUS": status[:MAX_STATUS]} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text[:MAX_STATUS])

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(STOPPING=1, **({"STATUS": status[:MAX_STATUS]} if status else {}))

    def close(self) -> None:
        self._sock.close()


class WatchdogGate:
    """Whether a ``WATCHDOG=1`` may go out: only when the supervisor loop turned (handled an
    event or a deadline) since the last ping.  The loop turns at least once every ping
    interval (the heartbeat is one of its deadlines), so a loop that is stuck anywhere (an
    action that never returns, a deadlock) stops the pings although the process still runs,
    and systemd restarts it after ``WatchdogSec``.  Time comes in as ``now`` (monotonic)."""

    def __init__(self) -> None:
        self.turns = 0
        self.last_turn: float | None = None
        self._turns_at_ping = 0
        self.pings = 0
        self.withheld = 0

    def turned(self, now: float) -> None:
        """The loop handled something at ``now``."""
        self.turns += 1
        self.last_turn = now

    def ping_due(self) -> bool:
        """True (and the turn count is remembered) if the loop turned since the last True."""
        if self.turns == self._turns_at_ping:
            self.withheld += 1
            return False
        self._turns_at_ping = self.turns
        self.pings += 1
        return True

    def stalled_for(self, now: float) -> float | None:
        """Seconds since the loop last turned (None: it never did)."""
        return None if self.last_turn is None else max(0.0, now - self.last_turn)


async def keep_pinging(notifier: Notifier, gate: WatchdogGate, log: Log | None = None) -> None:
    """Every half watchdog interval: ``WATCHDOG=1`` if the gate says the loop turned, else
    nothing (and one warning per stall, naming how long the loop has not turned)."""
    period = (notifier.watchdog_interval or 0) / 2
    if period <= 0:
        return
    stalled = False
    while True:
        await trio.sleep(period)
        if gate.ping_due():
            notifier.watchdog()
            if stalled and log is not None:
                log("info", "watchdog_resumed", "the supervisor loop turns again: watchdog pings resume")
            stalled = False
        elif not stalled:
            stalled = True
            if log is not None:
                since = gate.stalled_for(trio.current_time())
                log("error", "watchdog_withheld", "the supervisor loop has not turned for "
                    f"{since if since is not None else period:.1f} s: no watchdog ping (systemd restarts "
                    f"the node after {notifier.watchdog_interval:g} s without one)")


__all__ = ["NOTIFY_VARIABLES", "Notifier", "WatchdogGate", "child_environment", "keep_pinging",
           "notify_address", "status_text", "watchdog_interval"]
