"""The node's event log: JSON lines under the data directory plus readable console lines."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Iterator

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class EventLog:
    def __init__(self, path: Path, node: str, *, console: IO[str] | None = sys.stderr,
                 level: str = "info") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.node = node
        self._f = open(path, "a", encoding="utf-8", buffering=1)
        self._console = console
        self._min = LEVELS[level]

    def write(self, level: str, event: str, message: str, fields: dict | None = None) -> dict:
        rec = {"ts": round(time.time(), 6), "node": self.node, "level": level, "event": event,
               "message": message}
        if fields:
            rec["fields"] = fields
        if LEVELS.get(level, 20) >= self._min:
            self._f.write(json.dumps(rec, separators=(",", ":")) + "\n")
            if self._console is not None:
                self._console.write(format_record(rec) + "\n")
                self._console.flush()
        return rec

    def close(self) -> None:
        self._f.close()


def format_record(rec: dict) -> str:
    ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.get("ts", 0)))
    ms = int((rec.get("ts", 0) % 1) * 1000)
    return f"{ts}.{ms:03d} {rec.get('node', '?'):<10} {rec.get('level', '?').upper():<7} " \
           f"{rec.get('event', '?'):<16} {rec.get('message', '')}"


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
