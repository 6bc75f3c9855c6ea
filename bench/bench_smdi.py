#!/usr/bin/env python3
"""Serial SMDI benchmark (docs/benchmarks.md, "Serial SMDI").

::

    python bench/bench_smdi.py --json bench/results/smdi-run1.json

parse     ``--records`` call-detail records (all call types, 4- to 10-digit numbers, one record
          in 50 preceded by line noise) fed to ``SmdiReader`` in 4 KiB reads; records/s, median
          of ``--runs``.
link      the same kind of stream written by a PBX-side process into a real pty (a socat pair)
          and parsed by a running ``SmdiLink``; records/s from the first byte written until the
          link has counted every record (what one node can take from the line, far above any
          real line rate: 9600 baud carries ~35 records/s).
resync    the guide's MWI resync over the line, with fresh lamps during it: ``--lamps``
          subscribers in a real configuration database (SQLite, ``synchronous=FULL``), lamp
          states unknown (a new active node after a takeover), 1% with messages in a Maildir
          store; ``Messaging.resync()`` plans every lamp and sends it through a running
          ``SmdiLink`` (9600 baud 7E1: 10 bits a character, 960 bytes/s) to the PBX simulator
          (``PbxSimulator``), which reads at 9600 baud, 10 bits a character, on the far end of
          a socat pty pair.  ``--fresh`` more subscribers, whose lamps a first (untimed) resync
          set off and confirmed, each get a message at a random time during the resync (a
          message just left): the message is stored, then ``Messaging.lamp()`` is called, as
          the call flow does; the messaging core's lamp task sends it through the same link.
          ``--resync-runs`` runs; the figures pool the fresh lamps of every run.

Key definitions (fixed before the runs; a changed definition gets a new key):

``fresh_lamp_wait_p50_s``, ``_p95_s``, ``_p99_s``, ``_max_s``
          a fresh lamp's wait: from the ``Messaging.lamp()`` call (the message is stored and
          its lamp queued) until the simulator has received the lamp's command in full (its
          last byte off the simulated 9600-baud wire), nearest-rank percentiles over every
          fresh lamp of every run.  ``fresh_lamps``: how many; ``fresh_lamps_lost``: fresh
          lamps whose command never arrived (must be 0).
``fresh_lamp_driver_wait_p50_s``, ``_p99_s``, ``_max_s``
          the same, from the moment the messaging core hands the job to the link
          (``send_mwi`` called): the link's own share.
``resync_5000_s``
          as in the earlier result files: from the ``Messaging.resync()`` call until the PBX
          side has read the last resync command's last byte (median of the runs; the fresh
          lamps' commands interleave and add their wire time).  ``resync_5000_s_runs``: each.
``resync_5000_queued_s``
          from the first resync job handed to the link (``send_mwi`` called) until the
          simulator has received the last resync command in full (median of the runs).
``resync_line_bound_s``
          the resync's commands alone at the line rate: their bytes x 10 bits / 9600 baud.
``resync_5000_queued_over_line_bound``
          ``resync_5000_queued_s`` / ``resync_line_bound_s`` (the fresh lamps' bytes are not
          in the bound, so their wire time shows in it).
``deep_fresh_lamp_wait_p50_s``, ``_p99_s``, ``_max_s``, ``deep_resync_5000_s``
          (``--deep-runs``) the link alone, with every resync job queued at once: ``--lamps``
          ``send_mwi`` calls with ``reason="resync"`` started together, ``--fresh`` jobs with
          ``reason="deliver"`` at random times during it; a fresh job's wait is from its
          ``send_mwi`` call until the simulator has received its command in full;
          ``deep_resync_5000_s`` from the first resync call until the last resync command is
          received.  This is the case the priority lane exists for (a resync that hands the
          link more than one job at a time).

Retired: ``resync_theoretical_s``, ``resync_line_rate_ratio``, ``resync_line_rate_ratio_max``
(result files smdi-run1..3).  They compared a pty read at once with the link's own pacer, so
they showed only that the pacer matched its own constant; they keep that meaning in those
files.

Clocks: ``trio.current_time()`` / ``time.perf_counter()`` in this process; in the ``link``
figure the PBX side is a thread of this process writing the pty's far end; in ``resync`` it is
the PBX simulator, a Trio task of this process (same clock).  Every socat process is stopped by
its PID.

What a pty can and cannot show: a pty has no baud rate (the kernel moves bytes at once), so the
timing here is real only because the simulator reads at the line rate and the link paces
itself; a real UART, its FIFO, a terminal server or a data splitter add delays a pty does not
have (docs/smdi.md, "What a pty can and cannot show").
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

from failover.core.state import Role  # noqa: E402
from lab.smdi import SocatPair  # noqa: E402
from lab.smdi_pbx import PbxSimulator  # noqa: E402
from telephony.configdb import ConfigDB  # noqa: E402
from telephony.core import media  # noqa: E402
from telephony.core.events import Reason  # noqa: E402
from telephony.core.message import VoiceMessage  # noqa: E402
from telephony.core.mwi import MwiJob  # noqa: E402
from telephony.messaging import Messaging  # noqa: E402
from telephony.smdi.core.codec import SmdiReader, encode_call_record  # noqa: E402
from telephony.smdi.driver import SmdiLink  # noqa: E402
from telephony.smdi.settings import SerialSettings, SmdiProfile  # noqa: E402
from telephony.store import MaildirStore  # noqa: E402


def record_stream(n: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    parts = []
    for i in range(n):
        if i % 50 == 0:
            parts.append(b"\x7f\x7fxx\r\n")  # line noise now and then
        length = rnd.choice((4, 7, 10))
        digits = lambda n=length: "".join(rnd.choice("0123456789") for _ in range(n))  # noqa: E731
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


class _TimedSink:
    """The link as the messaging core's sink, noting when each job was handed to it."""

    def __init__(self, link: SmdiLink) -> None:
        self.link = link
        self.handed: dict[tuple[str, bool, str], float] = {}  # (ext, on, reason) -> first call

    async def send_mwi(self, job) -> None:
        self.handed.setdefault((job.extension, job.on, job.reason), trio.current_time())
        await self.link.send_mwi(job)


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    v = sorted(values)
    return v[max(0, min(len(v) - 1, -(-len(v) * p // 100) - 1))] if v else float("nan")


def _received(pbx: PbxSimulator) -> dict[tuple[str, bool], float]:
    """(number, on) -> when the simulator had the command in full (the first such)."""
    out: dict[tuple[str, bool], float] = {}
    for t, c in pbx.commands:
        out.setdefault((c.number, c.on), t)
    return out


async def _wait_for(pred, what: str, timeout: float) -> None:
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(0.05)
        return
    raise TimeoutError(f"timed out waiting for {what}")


def _subscriber(ext: str, i: int) -> dict:
    return {"op": "put", "table": "subscribers", "row": {
        "extension": ext, "name": f"S{i}", "mailbox": f"m{ext}", "mwi_method": "smdi",
        "notify": []}}


def _message(ext: str, tag: str, audio: bytes) -> VoiceMessage:
    return VoiceMessage(
        message_id=f"bench-{tag}-{ext}.a.2@vmha", mailbox=f"m{ext}", extension=ext,
        caller="5550100", forwarding=ext, reason=Reason.BUSY, duration_s=0.5, node="a",
        call_id=f"bench-{tag}-{ext}", term=2, recorded_at="2026-11-25T12:00:00+00:00",
        audio=audio)


async def resync_run(tmp: Path, lamps: int, fresh: int, seed: int) -> dict:
    rnd = random.Random(seed)
    db = ConfigDB(tmp / "config.db", role=Role.PRIMARY)
    pair = SocatPair(tmp / "node", tmp / "pbx")
    pair.start()
    try:
        bulk_ext = [f"{10000 + i}" for i in range(lamps)]
        fresh_ext = [f"{20000 + i}" for i in range(fresh)]
        (tmp / "store").mkdir()
        store = MaildirStore(tmp / "store")
        audio = media.wav_bytes(media.tone(440, 0.5))
        serial = SerialSettings(str(tmp / "node"), baudrate=9600)  # 7E1: 10 bits a character
        link = SmdiLink(serial=serial, profile=SmdiProfile(terminals=(1,)), node="a")
        link.gate = lambda: 2
        sink = _TimedSink(link)
        m = Messaging(node="a", db=db, store=store, spool_dir=tmp / "spool",
                      streams=tmp / "streams", sink=sink)
        m.term = 2
        async with PbxSimulator(tmp / "pbx", baudrate=9600, bits_per_char=10).running() as pbx:
            async with trio.open_nursery() as nursery:
                await nursery.start(link.run, _Service())
                await _wait_for(lambda: link.is_open, "the link", 10)
                nursery.start_soon(m._lamp_loop)  # the messaging core's lamp task
                # the fresh subscribers' lamps: set off and confirmed (untimed)
                db.write(2, [_subscriber(e, i) for i, e in enumerate(fresh_ext)])
                await m.resync("takeover")
                await _wait_for(lambda: len(pbx.commands) >= fresh, "the first resync", 60)
                # the resync's subscribers: lamps unknown, 1% with a message
                ops = [_subscriber(e, i) for i, e in enumerate(bulk_ext)]
                for k in range(0, len(ops), 1000):
                    db.write(2, ops[k:k + 1000])
                for i in range(0, lamps, 100):
                    await store.deliver(_message(bulk_ext[i], "r", audio))
                bulk_bytes = sum(len(link.profile.mwi.encode(i % 100 == 0, e))
                                 for i, e in enumerate(bulk_ext))
                bound = bulk_bytes * serial.bits_per_char / serial.baudrate
                at = sorted(rnd.uniform(0.5, bound - 1.0) for _ in fresh_ext)
                queued: dict[str, float] = {}

                async def fresh_lamps(t0: float) -> None:
                    for ext, when in zip(fresh_ext, at, strict=True):
                        await trio.sleep_until(t0 + when)
                        await store.deliver(_message(ext, "f", audio))  # a message just left
                        queued[ext] = trio.current_time()
                        await m.lamp(f"m{ext}", ext)

                t0 = trio.current_time()
                nursery.start_soon(fresh_lamps, t0)
                result = await m.resync("takeover")
                await _wait_for(lambda: len(queued) == fresh, "the fresh lamps' calls", 60)

                def all_in() -> bool:
                    rx = _received(pbx)
                    return (all((e, i % 100 == 0) in rx for i, e in enumerate(bulk_ext))
                            and all((e, True) in rx for e in fresh_ext))

                await _wait_for(all_in, "every command", 120)
                nursery.cancel_scope.cancel()
        rx = _received(pbx)
        last_bulk = max(rx[(e, i % 100 == 0)] for i, e in enumerate(bulk_ext))
        first_handed = min(t for (e, _, r), t in sink.handed.items() if r == "resync"
                           and e in set(bulk_ext))
        waits = [rx[(e, True)] - queued[e] for e in fresh_ext if (e, True) in rx]
        driver_waits = [rx[(e, True)] - sink.handed[(e, True, "deliver")] for e in fresh_ext
                        if (e, True) in rx and (e, True, "deliver") in sink.handed]
        return {"seconds": last_bulk - t0, "queued_s": last_bulk - first_handed,
                "line_bound_s": bound, "waits": waits, "driver_waits": driver_waits,
                "lost": fresh - len(waits), "jobs": result["jobs"], "sent": result["sent"],
                "bulk_bytes": bulk_bytes, "superseded": link.counters.get("mwi_superseded", 0),
                "on": sum(1 for (n, on) in rx if on and n in set(bulk_ext)),
                "off": sum(1 for (n, on) in rx if not on and n in set(bulk_ext))}
    finally:
        pair.stop()
        db.close()


async def deep_run(tmp: Path, lamps: int, fresh: int, seed: int) -> dict:
    """The link alone: every resync job queued at once, fresh jobs at random times."""
    rnd = random.Random(seed)
    pair = SocatPair(tmp / "node", tmp / "pbx")
    pair.start()
    try:
        serial = SerialSettings(str(tmp / "node"), baudrate=9600)
        link = SmdiLink(serial=serial, profile=SmdiProfile(terminals=(1,)), node="a")
        link.gate = lambda: 2
        bulk = [MwiJob(f"{10000 + i}", f"m{10000 + i}", i % 100 == 0, 0, 0, 2, "resync")
                for i in range(lamps)]
        fresh_jobs = [MwiJob(f"{20000 + i}", f"m{20000 + i}", True, 1, 0, 2, "deliver")
                      for i in range(fresh)]
        bulk_bytes = sum(len(link.profile.mwi.encode(j.on, j.extension)) for j in bulk)
        bound = bulk_bytes * serial.bits_per_char / serial.baudrate
        at = sorted(rnd.uniform(0.5, bound - 1.0) for _ in fresh_jobs)
        queued: dict[str, float] = {}
        async with PbxSimulator(tmp / "pbx", baudrate=9600, bits_per_char=10).running() as pbx:
            async with trio.open_nursery() as nursery:
                await nursery.start(link.run, _Service())
                await _wait_for(lambda: link.is_open, "the link", 10)

                async def send(job, *, task_status=trio.TASK_STATUS_IGNORED):
                    task_status.started()
                    await link.send_mwi(job)  # queued before its first checkpoint

                t0 = trio.current_time()
                for job in bulk:  # in order: the resync's order
                    await nursery.start(send, job)
                for job, when in zip(fresh_jobs, at, strict=True):
                    await trio.sleep_until(t0 + when)
                    queued[job.extension] = trio.current_time()
                    await nursery.start(send, job)
                await pbx.wait_commands(lamps + fresh, timeout=bound * 2 + 60)
                nursery.cancel_scope.cancel()
        rx = _received(pbx)
        last_bulk = max(rx[(j.extension, j.on)] for j in bulk)
        waits = [rx[(j.extension, True)] - queued[j.extension] for j in fresh_jobs
                 if (j.extension, True) in rx]
        return {"seconds": last_bulk - t0, "waits": waits, "lost": fresh - len(waits),
                "line_bound_s": bound}
    finally:
        pair.stop()


async def main_async(args) -> dict:
    out: dict = {"benchmark": "smdi", "host": platform.node(), "cpus": os.cpu_count(),
                 "python": platform.python_version(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "loadavg_start": os.getloadavg()[0], "records": args.records, "lamps": args.lamps,
                 "baud": 9600, **code_version()}
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
            res = await resync_run(sub, args.lamps, args.fresh, seed=100 + r)
            print(f"resync {r + 1}: {_brief(res)}", flush=True)
            runs.append(res)
        deep = []
        for r in range(args.deep_runs):
            sub = tmp / f"deep{r}"
            sub.mkdir()
            res = await deep_run(sub, args.lamps, args.fresh, seed=200 + r)
            print(f"deep {r + 1}: {_brief(res)}", flush=True)
            deep.append(res)
    waits = [w for r in runs for w in r["waits"]]
    dwaits = [w for r in runs for w in r["driver_waits"]]
    secs = sorted(r["seconds"] for r in runs)
    qsecs = sorted(r["queued_s"] for r in runs)
    bound = runs[0]["line_bound_s"]
    out.update({
        "fresh_per_run": args.fresh, "fresh_lamps": len(waits),
        "fresh_lamps_lost": sum(r["lost"] for r in runs),
        "fresh_lamp_wait_p50_s": round(pct(waits, 50), 4),
        "fresh_lamp_wait_p95_s": round(pct(waits, 95), 4),
        "fresh_lamp_wait_p99_s": round(pct(waits, 99), 4),
        "fresh_lamp_wait_max_s": round(max(waits), 4),
        "fresh_lamp_driver_wait_p50_s": round(pct(dwaits, 50), 4),
        "fresh_lamp_driver_wait_p99_s": round(pct(dwaits, 99), 4),
        "fresh_lamp_driver_wait_max_s": round(max(dwaits), 4),
        "resync_5000_s": round(statistics.median(secs), 2),
        "resync_5000_s_runs": [round(s, 2) for s in secs],
        "resync_5000_queued_s": round(statistics.median(qsecs), 2),
        "resync_line_bound_s": round(bound, 2),
        "resync_5000_queued_over_line_bound": round(statistics.median(qsecs) / bound, 4),
        "resync_jobs": runs[0]["jobs"], "resync_sent": runs[0]["sent"],
        "resync_on": runs[0]["on"], "resync_off": runs[0]["off"],
        "resync_bytes": runs[0]["bulk_bytes"],
        "mwi_superseded": sum(r["superseded"] for r in runs),
    })
    if deep:
        dw = [w for r in deep for w in r["waits"]]
        out.update({
            "deep_runs": len(deep), "deep_fresh_lamps": len(dw),
            "deep_fresh_lamps_lost": sum(r["lost"] for r in deep),
            "deep_fresh_lamp_wait_p50_s": round(pct(dw, 50), 4),
            "deep_fresh_lamp_wait_p99_s": round(pct(dw, 99), 4),
            "deep_fresh_lamp_wait_max_s": round(max(dw), 4),
            "deep_resync_5000_s": round(statistics.median(r["seconds"] for r in deep), 2),
        })
    out["loadavg_end"] = os.getloadavg()[0]
    return out


def _brief(res: dict) -> dict:
    w = res["waits"]
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()
            if k not in ("waits", "driver_waits")} | {
        "wait_p50": round(pct(w, 50), 3), "wait_max": round(max(w), 3) if w else None}


def code_version() -> dict:
    """The commit the code was run from, and the product files that differed from it."""
    import subprocess

    root = Path(__file__).resolve().parents[1]

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,
                                  timeout=10).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""
    dirty = git("status", "--porcelain", "--", "telephony", "integrations", "failover",
                "bench/bench_smdi.py")
    return {"commit": git("rev-parse", "HEAD") or None,
            "uncommitted": [ln[3:] for ln in dirty.splitlines()]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json")
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--lamps", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5, help="runs of the parse and link figures")
    ap.add_argument("--resync-runs", type=int, default=3,
                    help="runs of the resync (each takes ~85 s at 9600 baud)")
    ap.add_argument("--fresh", type=int, default=100, help="fresh lamps during each resync")
    ap.add_argument("--deep-runs", type=int, default=1,
                    help="runs with every resync job queued in the link at once")
    args = ap.parse_args()
    out = trio.run(main_async, args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
