"""A serial lab of real ptys: a PBX simulator's tty, the software splitter, one tty per node.

Used by tests, benchmarks and the demo::

    with SerialSplitterLab(tmp_path, names=("a", "b")) as lab:
        pbx = serial.Serial(str(lab.pbx_tty), 9600, timeout=1)
        node_a = serial.Serial(str(lab.tty("a")), 9600, timeout=1)
        ...
        lab.drop("a")       # node a's device disappears (its socat pair is stopped)
        lab.restore("a")    # and comes back (a new /dev/pts/N behind the same link)
        assert lab.written_by("a") == b"..."

Layout in ``directory``::

    pbx        the PBX simulator's tty          <-socat->  pbx.in  (splitter's PBX side)
    <name>     node <name>'s serial device      <-socat->  <name>.in  (splitter's port <name>)
    splitter.log  JSON lines (see lab.splitter)
    splitter.err, socat-<name>.log  diagnostics

Every process is started in its own session and stopped by its PID (SIGTERM, then SIGKILL).

:class:`LinkService` is the messaging service a driver (the SMDI link) runs under when it runs
on its own, outside a node: tests, the hardware qualification runs, benchmarks.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from telephony.core.events import CallArrival
from telephony.runtime.ports import ActiveCall, Decision

PBX = "pbx"
_REPO_ROOT = Path(__file__).resolve().parents[1]
_RESERVED = {PBX, "splitter.log", "splitter.err"}
_SOCAT_SPECIAL = set(",:!\"'\\")


class LinkService:
    """The ``service`` a port driver's ``run`` takes (``telephony.runtime.ports.CallService``)
    when no messaging service is there: it names the node and takes no call (an offer is
    rejected as the service stopping would reject it).  The SMDI link only files and matches
    records with it; a test that wants announcements sets the link's ``announce`` hook."""

    def __init__(self, node: str = "a") -> None:
        self.node = node

    async def offer(self, call: CallArrival) -> Decision:
        return Decision(False, "shutdown")

    async def end_call(self, call: ActiveCall, event: str = "ended") -> None:
        return None


def _stop_process(proc: subprocess.Popen, timeout: float) -> int:
    """SIGTERM by PID, wait, SIGKILL if it is still there; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class SocatPair:
    """One ``socat -d -d pty,raw,echo=0,link=A pty,raw,echo=0,link=B`` process: a null-modem
    cable between two ptys, reachable by the two links."""

    def __init__(self, link_a: Path, link_b: Path, *, log: Path | None = None) -> None:
        self.link_a = Path(link_a).absolute()
        self.link_b = Path(link_b).absolute()
        for link in (self.link_a, self.link_b):
            if _SOCAT_SPECIAL & set(str(link)):
                raise ValueError(f"socat cannot take this link path: {link}")
        self.log = log
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 5.0) -> None:
        """Start socat and wait until both links resolve to their ptys."""
        if self.running:
            raise RuntimeError(f"socat pair {self.link_a.name}<->{self.link_b.name} is already running")
        socat = shutil.which("socat")
        if socat is None:
            raise FileNotFoundError("socat is not installed")
        for link in (self.link_a, self.link_b):
            _remove_link(link)  # stale, from a socat that was killed
        with open(self.log, "ab") if self.log is not None else nullcontext(subprocess.DEVNULL) as stderr:
            self._proc = subprocess.Popen(
                [socat, "-d", "-d", f"pty,raw,echo=0,link={self.link_a}",
                 f"pty,raw,echo=0,link={self.link_b}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        self.pid = self._proc.pid
        deadline = time.monotonic() + timeout
        while not (self.link_a.exists() and self.link_b.exists()):
            rc = self._proc.poll()
            if rc is not None:
                self.stop()
                raise RuntimeError(f"socat exited with {rc} before making {self.link_a} and {self.link_b}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"socat did not make {self.link_a} and {self.link_b} within {timeout} s")
            time.sleep(0.002)

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM by PID, wait, SIGKILL if needed.  The links are gone afterwards.  Idempotent."""
        proc, self._proc, self.pid = self._proc, None, None
        if proc is None:
            return
        _stop_process(proc, timeout)
        for link in (self.link_a, self.link_b):  # socat removes them on SIGTERM, not on SIGKILL
            _remove_link(link)


def _remove_link(link: Path) -> None:
    if link.is_symlink():
        link.unlink(missing_ok=True)


class SerialSplitterLab:
    """PBX simulator side <-> splitter <-> N node ttys, all real ptys.

    Layout in ``directory``: ``pbx`` (the PBX's tty), ``<name>`` (each node's tty), plus the
    internal links ``pbx.in`` and ``<name>.in`` (the splitter's ends) and ``splitter.log``."""

    def __init__(
        self,
        directory: Path,
        names: Sequence[str] = ("a", "b"),
        *,
        max_pending: int | None = None,
        python: str = sys.executable,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.names = tuple(names)
        if not self.names:
            raise ValueError("a lab needs at least one node")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"node names must be unique: {self.names}")
        for name in self.names:
            if name in _RESERVED or not name or "/" in name or name.startswith(".") or name.endswith(".in"):
                raise ValueError(f"bad node name: {name!r}")
        self.max_pending = max_pending
        self.python = python
        self.log_path = self.directory / "splitter.log"
        self.pairs: dict[str, SocatPair] = {
            side: SocatPair(self.directory / side, self.directory / f"{side}.in",
                            log=self.directory / f"socat-{side}.log")
            for side in (PBX, *self.names)
        }
        self.splitter: subprocess.Popen | None = None

    # -- paths -----------------------------------------------------------------------------------

    @property
    def pbx_tty(self) -> Path:
        """The tty the PBX simulator opens."""
        return self.directory / PBX

    def tty(self, name: str) -> Path:
        """The tty node ``name`` opens (its serial device); ``"pbx"`` gives ``pbx_tty``."""
        if name not in self.pairs:
            raise KeyError(name)
        return self.directory / name

    # -- processes -------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start the socat pairs, then the splitter on their ``.in`` ends; wait for its "ready"."""
        if self.splitter is not None:
            raise RuntimeError("lab already started")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path.unlink(missing_ok=True)
        try:
            for pair in self.pairs.values():
                pair.start()
            self._start_splitter(timeout)
        except BaseException:
            self.stop()
            raise

    def _start_splitter(self, timeout: float) -> None:
        cmd = [self.python, "-m", "lab.splitter", "--pbx", str(self.directory / f"{PBX}.in")]
        for name in self.names:
            cmd += ["--port", f"{name}={self.directory / f'{name}.in'}"]
        cmd += ["--log", str(self.log_path)]
        if self.max_pending is not None:
            cmd += ["--max-pending", str(self.max_pending)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
        with open(self.directory / "splitter.err", "ab") as err:
            self.splitter = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                start_new_session=True, env=env,
            )
        assert self.splitter.stdout is not None
        out = self.splitter.stdout.fileno()
        seen = b""
        deadline = time.monotonic() + timeout
        while b"ready\n" not in seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"splitter not ready within {timeout} s; "
                                   f"see {self.directory / 'splitter.err'}")
            readable, _, _ = select.select([out], [], [], min(left, 0.1))
            if readable:
                chunk = os.read(out, 4096)
                if not chunk:
                    rc = self.splitter.wait(timeout=left)
                    raise RuntimeError(f"splitter exited with {rc} before ready: {self._stderr_tail()}")
                seen += chunk

    def _stderr_tail(self) -> str:
        try:
            return (self.directory / "splitter.err").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the splitter, then every socat pair, by PID.  Idempotent; also used by __exit__."""
        proc, self.splitter = self.splitter, None
        if proc is not None:
            _stop_process(proc, 5.0)
            if proc.stdout is not None:
                proc.stdout.close()
        for pair in self.pairs.values():
            pair.stop()

    def pids(self) -> dict[str, int]:
        """PIDs of the processes this lab has running: "splitter" and "socat:<side>"."""
        out = {f"socat:{side}": pair.pid for side, pair in self.pairs.items() if pair.pid is not None}
        if self.splitter is not None:
            out["splitter"] = self.splitter.pid
        return out

    def drop(self, name: str, *, wait: bool = True, timeout: float = 5.0) -> None:
        """Stop that side's socat pair: its device disappears.  With ``wait``, return once the
        splitter has logged it ``down``."""
        before = self._count_events("down", name)
        self.pairs[name].stop()
        if wait and self.splitter is not None:
            self.wait_event("down", name, count=before + 1, timeout=timeout)

    def restore(self, name: str, *, wait: bool = True, timeout: float = 5.0) -> None:
        """Start that side's socat pair again with the same links (a new /dev/pts/N).  With
        ``wait``, return once the splitter has reopened it (logged ``up``)."""
        before = self._count_events("up", name)
        self.pairs[name].start(timeout)
        if wait and self.splitter is not None:
            self.wait_event("up", name, count=before + 1, timeout=timeout)

    # -- log -------------------------------------------------------------------------------------

    def log_records(self) -> list[dict[str, Any]]:
        """The splitter log, parsed (a line still being written is left out)."""
        try:
            text = self.log_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.split("\n")[:-1] if line]

    def written_by(self, name: str) -> bytes:
        """All bytes node ``name`` transmitted (``"pbx"``: all the PBX sent), from the log."""
        return b"".join(bytes.fromhex(r["hex"]) for r in self.log_records() if r.get("from") == name)

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool],
                 timeout: float = 5.0) -> list[dict[str, Any]]:
        """Poll the log until ``predicate(records)`` holds; return the records.  TimeoutError if not."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.log_records()
            if predicate(records):
                return records
            if time.monotonic() > deadline:
                raise TimeoutError(f"splitter log did not reach the expected state within {timeout} s")
            time.sleep(0.005)

    def wait_event(self, event: str, name: str, *, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until the splitter has logged ``event`` ("up", "down", "overflow", "drained") for ``name``
        at least ``count`` times."""
        self.wait_for(lambda recs: _count(recs, event, name) >= count, timeout)

    def _count_events(self, event: str, name: str) -> int:
        return _count(self.log_records(), event, name)

    # -- context manager ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _count(records: list[dict[str, Any]], event: str, name: str) -> int:
    return sum(1 for r in records if r.get("event") == event and r.get("name") == name)
