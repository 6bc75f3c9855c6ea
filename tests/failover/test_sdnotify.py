"""systemd's notification protocol (failover/sdnotify.py) on real AF_UNIX datagram sockets,
and the node manager's use of it (failover/node.py) on a virtual clock: READY=1, STATUS=,
STOPPING=1, and WATCHDOG=1 only while the supervisor loop turns.  The real process under the
unit's command line is in test_systemd.py."""
from __future__ import annotations

import os
import socket
import uuid

import pytest
import trio

from failover.core import events as ev
from failover.eventlog import EventLog
from failover.node import NodeManager
from failover.sdnotify import (
    Notifier,
    WatchdogGate,
    child_environment,
    notify_address,
    status_text,
    watchdog_interval,
)
from tests.failover.test_node_driver import FakeLink, FakeService, make_cfg
from tests.util import EventLogRecorder


def bound(path=None) -> tuple[socket.socket, str]:
    """A datagram socket as systemd binds it: at ``path``, or abstract when None."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if path is None:
        name = f"vmha-test-{uuid.uuid4().hex}"
        s.bind(b"\0" + name.encode())
        return s, "@" + name
    s.bind(str(path))
    return s, str(path)


def drain(s: socket.socket) -> list[dict[str, str]]:
    """Every datagram waiting, each as its NAME=value fields."""
    out = []
    s.setblocking(False)
    while True:
        try:
            data = s.recv(4096)
        except BlockingIOError:
            return out
        out.append(dict(line.split("=", 1) for line in data.decode().split("\n")))


def test_addresses_paths_and_abstract_names():
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abc") == b"\0abc"
    for bad in ("", "@", "relative/sock", "vsock:2:1234"):
        with pytest.raises(ValueError):
            notify_address(bad)


def test_watchdog_interval_honours_watchdog_pid():
    me = os.getpid()
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "2500000", "WATCHDOG_PID": str(me)}) == 2.5
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(me + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "x"}) is None
    for bad in ("0", "-5", "2s", ""):
        assert watchdog_interval({"WATCHDOG_USEC": bad}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "7"}, pid=7) == 0.001


def test_child_environment_drops_the_managers_variables():
    env = {"PATH": "/bin", "NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "HOME": "/h"}
    assert child_environment(env) == {"PATH": "/bin", "HOME": "/h"}


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notifier_sends_one_datagram_per_message(tmp_path, abstract):
    sock, address = bound(None if abstract else tmp_path / "notify")
    with sock:
        n = Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "4000000"})
        assert n is not None and n.watchdog_interval == 4.0
        assert n.ready("primary starting\nsecond line")
        assert n.watchdog() and n.status("x" * 500) and n.stopping()
        assert n.notify(EXTEND_TIMEOUT_USEC=5000000)
        got = drain(sock)
        n.close()
    assert got == [{"READY": "1", "STATUS": "primary starting second line"}, {"WATCHDOG": "1"},
                   {"STATUS": "x" * 200}, {"STOPPING": "1"}, {"EXTEND_TIMEOUT_USEC": "5000000"}]
    assert n.sent == 5 and n.failures == 0


def test_no_socket_no_notifier_and_a_bad_address_is_logged():
    assert Notifier.from_env({}) is None
    assert Notifier.from_env({"NOTIFY_SOCKET": ""}) is None
    log = EventLogRecorder()
    assert Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:9"}, log=log.write) is None
    assert [r["event"] for r in log.records] == ["sd_notify_failed"]


def test_a_failing_notify_never_raises_is_counted_and_logged_once(tmp_path):
    sock, address = bound(tmp_path / "notify")
    log = EventLogRecorder()
    n = Notifier(address, log=log.write)
    assert n.watchdog()
    sock.close()
    os.unlink(address)  # the service manager went away
    assert not n.watchdog() and not n.ready() and not n.status("x")
    assert n.failures == 3 and n.sent == 1
    (rec,) = log.records
    assert rec["event"] == "sd_notify_failed" and rec["level"] == "warning" and address in rec["message"]


def test_a_full_queue_does_not_block(tmp_path):
    """Nobody reads the socket: sends fail (counted) once its queue is full, none blocks."""
    sock, address = bound(tmp_path / "notify")
    with sock:
        n = Notifier(address)
        results = [n.status("s" * 200) for _ in range(5000)]
    assert results[0] and not results[-1] and n.failures > 0 and n.sent + n.failures == 5000


def test_watchdog_gate_pings_only_after_a_turn():
    g = WatchdogGate()
    assert not g.ping_due() and g.stalled_for(5.0) is None  # the loop never turned yet
    g.turned(1.0)
    assert g.ping_due()
    assert not g.ping_due()  # no turn since the last ping: withheld
    g.turned(2.0)
    g.turned(2.1)
    assert g.ping_due() and not g.ping_due()
    assert g.stalled_for(7.1) == pytest.approx(5.0)
    assert (g.pings, g.withheld) == (2, 3)


def test_status_text_is_short():
    assert status_text("primary", "active", 7, "b", True) == "primary active, term 7, peer b reachable"
    assert status_text("secondary", "inactive", 0, "a", False).endswith("peer a unreachable")


# ------------------------------------------------------------------ the node manager, virtual clock


class StampingNotifier(Notifier):
    """The real notifier, which also notes when (virtual time) each message went out."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stamps: list[tuple[float, tuple[str, ...]]] = []

    def notify(self, **fields: object) -> bool:
        self.stamps.append((trio.current_time(), tuple(fields)))
        return super().notify(**fields)


class StallingService(FakeService):
    """Its ``activate`` does not return until ``release`` is set: the supervisor loop, which
    awaits its actions, is stuck inside that action meanwhile (the process runs on)."""

    def __init__(self, state_path):
        super().__init__(state_path)
        self.release = trio.Event()

    async def send(self, msg: dict) -> None:
        if msg["op"] == "activate":
            await self.release.wait()
        await super().send(msg)


async def test_node_manager_pings_while_its_loop_turns_and_stops_when_it_stalls(tmp_path, autojump_clock):
    sock, address = bound(tmp_path / "notify")
    cfg = make_cfg(tmp_path, role="primary")
    events = EventLog(cfg.node.data_dir / "events.jsonl", cfg.node.name, console=None)
    notifier = StampingNotifier(address, watchdog=2.0, log=events.write)
    svc = StallingService(cfg.node.data_dir / "state.json")
    nm = NodeManager(cfg, events, link=FakeLink(), service=svc, notifier=notifier)
    svc.inbox = nm.inbox_send
    got: list[tuple[float, dict]] = []

    def collect() -> list[dict]:
        got.extend((trio.current_time(), m) for m in drain(sock))
        return [m for _, m in got]

    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(nm.run)
        first = collect()
        assert first[0]["READY"] == "1" and first[0]["STATUS"].startswith("primary starting, term 0")
        # a primary alone activates after its start-up wait (1 s): the activate never returns
        await trio.sleep(0.9)
        pings_before = sum("WATCHDOG" in m for m in collect())
        assert pings_before == 0  # the first ping is due at half the interval (1 s)
        await trio.sleep(9.1)  # t = 10 s: the loop has been stuck since about 1 s
        msgs = collect()
        stalled_at = nm.watchdog_gate.last_turn
        assert stalled_at is not None and stalled_at - t0 < 1.5
        pings = [t - t0 for t, names in notifier.stamps if "WATCHDOG" in names]
        assert sum("WATCHDOG" in m for m in msgs) == len(pings) <= 1  # what went out arrived
        assert all(p <= stalled_at - t0 + 1.0 + 1e-6 for p in pings)  # none after the stall
        assert nm.watchdog_gate.withheld >= 8
        withheld = [r for r in _records(events) if r["event"] == "watchdog_withheld"]
        assert len(withheld) == 1 and withheld[0]["level"] == "error"  # said once per stall

        svc.release.set()  # the action returns: the loop turns again, the pings resume
        await trio.sleep(5)
        msgs = collect()
        assert sum("WATCHDOG" in m for m in msgs) >= len(pings) + 4
        assert any(m.get("STATUS", "").startswith("primary active, term ") for m in msgs), msgs
        assert [r["event"] for r in _records(events)].count("watchdog_resumed") == 1

        await nm.inbox_send.send(ev.ShutdownRequested("SIGTERM"))
        await trio.sleep(1)
        msgs = collect()
        stops = [m for m in msgs if "STOPPING" in m]
        assert len(stops) == 1 and stops[0]["STATUS"].startswith("stopping: primary")
        nursery.cancel_scope.cancel()
    sock.close()
    events.close()


async def test_without_notify_socket_nothing_runs(tmp_path, autojump_clock, monkeypatch):
    """No notifier: no gate, no watchdog task; the node runs as before."""
    import failover.node

    started = []
    monkeypatch.setattr(failover.node, "keep_pinging", lambda *a: started.append(a))
    cfg = make_cfg(tmp_path, role="primary")
    events = EventLog(cfg.node.data_dir / "events.jsonl", cfg.node.name, console=None)
    svc = FakeService(cfg.node.data_dir / "state.json")
    nm = NodeManager(cfg, events, link=FakeLink(), service=svc)
    svc.inbox = nm.inbox_send
    async with trio.open_nursery() as nursery:
        await nursery.start(nm.run)
        await trio.sleep(3)
        assert nm.notifier is None and nm.watchdog_gate is None
        assert nm.sup.state.label == "active" and started == []
        nursery.cancel_scope.cancel()
    events.close()


def _records(events: EventLog) -> list[dict]:
    import json

    return [json.loads(line) for line in events.path.read_text().splitlines()]
