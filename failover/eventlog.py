"""The node's event log: JSON lines under the data directory plus readable console lines.

Files at rest: the log is created ``0600`` (an older, looser file is tightened) and its
directory, the node's ``data_dir``, ``0700``: :func:`private_dir` creates it so, or tightens
a looser one, and the log's first record then says what it changed (``data_dir_mode``).

Console lines that go to the journal (systemd connects standard error to it and says so in
``JOURNAL_STREAM``) carry the journal's priority prefix (``<3>`` error, ``<4>`` warning, ``<6>``
info, ``<7>`` debug) and no time stamp of their own: journald stamps every line."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Iterator

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
#: sd-daemon priority prefixes (syslog levels) of the journal's stream protocol
JOURNAL_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3}
DIR_MODE = 0o700  # data_dir: only the node's own user
FILE_MODE = 0o600  # the event log


def private_dir(path: Path) -> str | None:
    """Create ``path`` (and missing parents) with mode 0700, or tighten an existing
    directory that group or others may use to 0700.  Returns what was changed (for a warning)
    or None when nothing was."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass
        os.chmod(path, DIR_MODE)  # whatever the umask said
        return None
    mode = path.stat().st_mode & 0o777
    if not mode & 0o077:
        return None
    os.chmod(path, mode & DIR_MODE)
    return (f"{path} was mode {mode:04o}: tightened to {mode & DIR_MODE:04o} (group and others "
            "must not read the configuration database, the event log, the spool or messages)")


class EventLog:
    def __init__(self, path: Path, node: str, *, console: IO[str] | None = sys.stderr,
                 level: str = "info") -> None:
        tightened = private_dir(path.parent)
        self.path = path
        self.node = node
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, FILE_MODE)
            self._f = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
        except BaseException:
            os.close(fd)
            raise
        self._console = console
        #: the console is the journal: priority prefixes, no time stamps
        self.journal = console is not None and is_journal(console)
        self._min = LEVELS[level]
        #: records that could not be written (a full or failing disk): writing the event log
        #: never raises, since every task's failure report goes through it
        self.write_errors = 0
        #: called with every record written (the HTTP API's event stream, the metrics): from
        #: whichever thread wrote it; a listener must be quick and must not raise
        self._listeners: list = []
        if tightened:
            self.write("warning", "data_dir_mode", tightened)

    def write(self, level: str, event: str, message: str, fields: dict | None = None) -> dict:
        rec = {"ts": round(time.time(), 6), "node": self.node, "level": level, "event": event,
               "message": message}
        if fields:
            rec["fields"] = fields
        if LEVELS.get(level, 20) >= self._min:
            try:
                self._f.write(json.dumps(rec, separators=(",", ":")) + "\n")
            except (OSError, ValueError) as e:  # ENOSPC, EIO; ValueError: the file was closed
                self.write_errors += 1
                if self.write_errors == 1 or self.write_errors % 1000 == 0:
                    self._to_console({**rec, "level": "error", "event": "eventlog_failed",
                                      "message": f"cannot write the event log {self.path}: {e} "
                                      f"({self.write_errors} records lost)"})
            self._to_console(rec)
            for listener in tuple(self._listeners):
                try:
                    listener(rec)
                except Exception:  # noqa: BLE001 - a listener's bug must not stop the log
                    self.write_errors += 1
        return rec

    def add_listener(self, fn) -> None:
        """Call ``fn(record)`` for every record written from now on (see ``_listeners``)."""
        self._listeners.append(fn)

    def remove_listener(self, fn) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def _to_console(self, rec: dict) -> None:
        if self._console is None:
            return
        try:
            self._console.write((journal_line(rec) if self.journal else format_record(rec)) + "\n")
            self._console.flush()
        except (OSError, ValueError):
            pass  # nowhere left to say it

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:
            self.write_errors += 1  # the last buffered record could not be written either


def format_record(rec: dict) -> str:
    ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.get("ts", 0)))
    ms = int((rec.get("ts", 0) % 1) * 1000)
    return f"{ts}.{ms:03d} {rec.get('node', '?'):<10} {rec.get('level', '?').upper():<7} " \
           f"{rec.get('event', '?'):<16} {rec.get('message', '')}"


def is_journal(stream: IO[str], environ: dict | None = None) -> bool:
    """Whether ``stream`` is the journal's stream socket systemd connected: ``JOURNAL_STREAM``
    (``DEVICE:INODE``, decimal) names the file ``stream`` writes to."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):  # no file descriptor (a StringIO), a bad value
        return False


def journal_line(rec: dict) -> str:
    """A record as the journal takes it: ``<priority>LEVEL event message``; every line of a
    message that has several carries the prefix (the journal makes one entry of each)."""
    level = str(rec.get("level", "info"))
    prefix = f"<{JOURNAL_PRIORITY.get(level, 6)}>"
    text = f"{level.upper():<7} {rec.get('event', '?'):<16} {rec.get('message', '')}"
    return "\n".join(prefix + line for line in text.split("\n"))


def read_events(path: Path, *, follow: bool = False, poll: float = 0.2) -> Iterator[dict]:
    """Yield records from an event log; with ``follow`` keep waiting for new ones (tail -f).
    A line that is not valid JSON is reported as a record of level 'error', not skipped."""
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        buf = ""
        while True:
            chunk = f.readline()
            if not chunk:
                if not follow:
                    return
                time.sleep(poll)
                if os.stat(path).st_size < f.tell():  # truncated or rotated
                    f.seek(0)
                continue
            buf += chunk
            if not buf.endswith("\n"):
                continue
            line, buf = buf.strip(), ""
            if not line:
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
            except ValueError:
                rec = {"level": "error", "event": "bad_log_line", "message": line[:200]}
            yield rec
