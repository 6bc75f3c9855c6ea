#!/usr/bin/env python3
"""Serial SMDI benchmark (docs/benchmarks.md, "Serial SMDI").

::

    python bench/smdi.py --json bench/results/smdi-run1.json

parse     ``--records`` call-detail records (all call types, 4- to 10-digit numbers, one record
          in 50 preceded by line noise) fed to ``SmdiReader`` in 4 KiB reads; records/s, median
          of ``--runs``.
link      the same kind of stream written by a PBX-side process into a real pty (a socat pair)
          and parsed by a running ``SmdiLink``; records/s from the first byte written until the
          link has counted every record (what one node can take from the line, far above any
          real line rate: 9600 baud carries ~35 records/s).
resync    the guide's MWI resync over the line: ``--lamps`` subscribers in a real configuration
          database (SQLite, ``synchronous=FULL``), lamp states unknown (a new active node after
          a takeover), 1% with messages in a Maildir store; ``Messaging.resync()`` plans every
          lamp and sends it through a running ``SmdiLink`` at 9600 baud 7E1 on a socat pty,
          confirming each in the ledger.  ``resync_5000_s``: from the call until the PBX side
          has read the last command's last byte.  ``resync_line_rate_ratio``: that time over
          the theoretical minimum, all command bytes x 10 bits / 9600 baud (a pty ignores the
          baud rate, so the pacing is the link's own; a ratio below 1 would mean it over-drove
          the line).

Clocks: ``trio.current_time()`` / ``time.perf_counter()`` in this process; the PBX side is a
thread of this process reading the pty's far end.  Every socat process is stopped by its PID.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import trio  # noqa: E402

from failover._state import Role  # noqa: E402
from failover.configdb import ConfigDB  # noqa: E402
from integrations.smdi import SerialSettings, SmdiProfile  # noqa: E402
from telephony import media  # noqa: E402
from telephony.events import Reason  # noqa: E402
from telephony.message import VoiceMessage  # noqa: E402
from telephony.messaging import Messaging  # noqa: E402
from telephony.smdi.codec import SmdiReader, encode_call_record  # noqa: E402
from telephony.smdi.driver import SmdiLink  # noqa: E402
from telephony.smdi.lab import SocatPair  # noqa: E402
from telephony.store import MaildirStore  # noqa: E402


def record_stream(n: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    parts = []
    for i in range(n):
        if i % 50 == 0:
            parts.append(b"\x7f\x7fxx\r\n")  # line noise now and then
        length = rnd.choice((4, 7, 10))
        digits = lambda: "".join(rnd.choice("0123456789") for _ in range(length))  # noqa: E731
        kind = rnd.choice("DABNU")
        parts.append(encode_call_record(1 + i % 8, kind, "" if kind == "D" else digits(),
                                        digits() if rnd.random() < 0.9 else ""))
    return b"".join(parts)


def parse_rate(data: bytes, n: int) -> float:
    reader = SmdiReader()
    t0 = time.perf_counter()
    got = 0
    for k in range(0, len(data), 4096):
        got += sum(1 for e in reader.feed(data[k:k + 4096]) if type(e).__name__ == "CallRecord")
    dt = time.perf_counter() - t0
    assert got == n, (got, n)
    return n / dt


class _Service:
    node = "a"


class _Far:
    """The PBX end of the pty: writes in a thread, reads everything into ``got``."""

    def __init__(self, path: Path) -> None:
        import termios
        import tty

        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd, termios.TCSANOW)
        self.got = bytearray()
        self.last_at = 0.0
        self._stop = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        import select

        while not self._stop:
            r, _, _ = select.select([self.fd], [], [], 0.1)
            if r:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:
                    return
                self.got += data
                self.last_at = time.perf_counter()

    def close(self) -> None:
        self._stop = True
        self.reader.join()
        os.close(self.fd)


async def link_rate(tmp: Path, data: bytes, n: int) -> float:
    pair = SocatPair(tmp / "node", tmp / "pbx")
    pair.start()
    far = _Far(tmp / "pbx")
    try:
        link = SmdiLink(serial=SerialSettings(str(tmp / "node")),
                        profile=SmdiProfile(terminals=(1, 2, 3, 4), record_wait=1), node="a")
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run, _Service())
            while not link.is_open:
                await trio.sleep(0.01)
            t0 = time.perf_counter()
            await trio.to_thread.run_sync(_write_all, far.fd, data)
            while link.counters["records"] < n:
                await trio.sleep(0.001)
            dt = time.perf_counter() - t0
            nursery.cancel_scope.cancel()
        return n / dt
    finally:
        far.close()
        pair.stop()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        k = os.write(fd, view[:4096])
        view = view[k:]


async def resync_run(tmp: Path, lamps: int) -> dict:
    db = ConfigDB(tmp / "config.db", role=Role.PRIMARY)
    pair = SocatPair(tmp / "node", tmp / "pbx")
    pair.start()
    far = _Far(tmp / "pbx")
    try:
        ops = [{"op": "put", "table": "subscribers", "row": {
            "extension": f"{10000 + i}", "name": f"S{i}", "mailbox": f"m{i}", "mwi_method": "smdi",
            "notify": []}} for i in range(lamps)]
        for k in range(0, len(ops), 1000):
            db.write(2, ops[k:k + 1000])
        (tmp / "store").mkdir()
        store = MaildirStore(tmp / "store")
        audio = media.wav_bytes(media.tone(440, 0.5))
        for i in range(0, lamps, 100):  # 1% have a new message: their lamps go on
            await store.deliver(VoiceMessage(
                message_id=f"bench-{i}.a.2@vmha", mailbox=f"m{i}", extension=f"{10000 + i}",
                caller="5550100", forwarding=f"{10000 + i}", reason=Reason.BUSY, duration_s=0.5,
                node="a", call_id=f"bench-{i}", term=2, recorded_at="2026-11-25T12:00:00+00:00",
                audio=audio))
        serial = SerialSettings(str(tmp / "node"), baudrate=9600)  # 7E1: 10 bits a character
        link = SmdiLink(serial=serial, profile=SmdiProfile(terminals=(1,)), node="a")
        link.gate = lambda: 2
        m = Messaging(node="a", db=db, store=store, spool_dir=tmp / "spool",
                      streams=tmp / "streams", sink=link)
        m.term = 2
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run, _Service())
            while not link.is_open:
                await trio.sleep(0.01)
            t0 = time.perf_counter()
            result = await m.resync()
            sent_bytes = link.counters["mwi_sent"]
            expected = sum(len(link.profile.mwi.encode(i % 100 == 0, f"{10000 + i}"))
                           for i in range(lamps))
            while len(far.got) < expected:
                await trio.sleep(0.005)
            await trio.sleep(0.2)
            elapsed = far.last_at - t0
            nursery.cancel_scope.cancel()
        theoretical = expected * serial.bits_per_char / serial.baudrate
        return {"seconds": elapsed, "theoretical_s": theoretical, "ratio": elapsed / theoretical,
                "jobs": result["jobs"], "sent": result["sent"], "commands": sent_bytes,
                "bytes": len(far.got), "on": far.got.count(b"OP:MWI "),
                "off": far.got.count(b"RMV:MWI ")}
    finally:
        far.close()
        pair.stop()
        db.close()


async def main_async(args) -> dict:
    out: dict = {"benchmark": "smdi", "host": platform.node(), "cpus": os.cpu_count(),
                 "python": platform.python_version(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "loadavg_start": os.getloadavg()[0], "records": args.records, "lamps": args.lamps,
                 "baud": 9600}
    data = record_stream(args.records)
    rates = sorted(parse_rate(data, args.records) for _ in range(args.runs))
    out["records_per_s"] = round(statistics.median(rates))
    out["records_per_s_min_max"] = [round(rates[0]), round(rates[-1])]
    print(f"parse: {out['records_per_s']} records/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="vmha-bench-smdi-", dir="/tmp") as d:
        tmp = Path(d)
        link_rates = []
        for r in range(args.runs):
            sub = tmp / f"link{r}"
            sub.mkdir()
            link_rates.append(await link_rate(sub, data, args.records))
        link_rates.sort()
        out["link_records_per_s"] = round(statistics.median(link_rates))
        out["link_records_per_s_min_max"] = [round(link_rates[0]), round(link_rates[-1])]
        print(f"link: {out['link_records_per_s']} records/s", flush=True)
        runs = []
        for r in range(args.resync_runs):
            sub = tmp / f"resync{r}"
            sub.mkdir()
            res = await resync_run(sub, args.lamps)
            print(f"resync {r + 1}: {res}", flush=True)
            runs.append(res)
    ratios = sorted(r["ratio"] for r in runs)
    secs = sorted(r["seconds"] for r in runs)
    out.update({
        "resync_5000_s": round(statistics.median(secs), 2),
        "resync_5000_s_runs": [round(s, 2) for s in secs],
        "resync_theoretical_s": round(runs[0]["theoretical_s"], 2),
        "resync_line_rate_ratio": round(statistics.median(ratios), 4),
        "resync_line_rate_ratio_max": round(ratios[-1], 4),
        "resync_jobs": runs[0]["jobs"], "resync_sent": runs[0]["sent"],
        "resync_on": runs[0]["on"], "resync_off": runs[0]["off"],
        "loadavg_end": os.getloadavg()[0],
    })
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json")
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--lamps", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5, help="runs of the parse and link figures")
    ap.add_argument("--resync-runs", type=int, default=3,
                    help="runs of the resync (each takes ~85 s at 9600 baud)")
    args = ap.parse_args()
    out = trio.run(main_async, args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
