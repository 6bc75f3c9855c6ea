"""``vmha demo``: a pair on loopback with simulated calls, a takeover and a failback.

Starts two real node processes (primary ``a`` first) on the embedded defaults with
:class:`failover.testing.Pair`, shows a compact Failover Monitor of both nodes a few times a
second, places simulated calls on the loopback trunk of the active node, and runs a script:

* ~5 s:  ``kill -9`` of the active node's messaging service; the peer takes over (the banner
  shows the time from the kill to the peer's ``failover`` event in its event log);
* ~15 s: manual failback through the primary's admin socket;
* ~19 s: one call on the inactive node's trunk: after an operator failback the secondary
  holds, so it refuses the call (no call takeover) and the PBX would hunt on to the primary;
* then calls keep coming until Ctrl-C or ``--duration``.

On a terminal the view is redrawn in place (ANSI clear + home); otherwise (CI logs, pipes)
changes are printed as plain progressive lines.  Every process is stopped by PID at the end.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import trio

from telephony.loopback_client import LoopbackClientError, place_call

from .config import load_config
from .eventlog import format_record
from .testing import Pair

# seconds after the pair was started: kill -9 of the active service, a call on the inactive
# node's trunk (call takeover), an operator failover, a call on the node that now holds
KILL_AT, TAKEOVER_CALL_AT, FAILOVER_AT, PROBE_AT = 5.0, 10.0, 15.0, 19.0
CALL_EVERY, HOLD = 0.5, (1.0, 1.8)  # at most 4 calls at once: the loopback trunk has 4 ports
REFRESH = 0.25
EVENT_LINES = 8
ACTIVATIONS = ("startup", "failover", "failback")


def other(name: str) -> str:
    return "b" if name == "a" else "a"


class Demo:
    def __init__(self, pair: Pair, tty: bool) -> None:
        self.pair, self.tty = pair, tty
        self.t0 = time.monotonic()
        self.status: dict[str, dict | None] = {"a": None, "b": None}
        self.logs = {n: load_config(pair.node(n).config).node.data_dir / "events.jsonl" for n in "ab"}
        self.offsets = {"a": 0, "b": 0}
        self.events: list[dict] = []  # event-log records of both nodes except per-call lines
        self.calls: Counter[str] = Counter()
        self.in_progress = 0
        self.avoid: set[str] = set()  # nodes whose service the demo just killed
        self.banners: list[str] = []
        self.measured: list[str] = []  # "time taken" lines for the summary
        self.next_step = f"kill -9 of the active messaging service at {KILL_AT:.0f} s"
        self.interrupted = ""  # the signal that stopped the demo
        self._shown: dict[str, tuple] = {}

    # ------------------------------------------------------------------ output

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        """A plain progressive line (not on a terminal, where the redrawn view shows it)."""
        if not self.tty:
            print(f"[{self.elapsed():6.2f}s] {text}", flush=True)

    def banner(self, text: str) -> None:
        self.banners.append(text)
        if not self.tty:
            print(f"\n{'=' * 8} {text} {'=' * 8}\n", flush=True)

    def node_line(self, name: str) -> str:
        st = self.status[name]
        if st is None:
            return f"{name}  (node manager not answering)"
        n, p = st["node"], st["peer"]
        return (f"{name}  {n['role']:<9} {n['state']:<10} term {n['term']:<3} service {n['service']:<8} "
                f"calls {st['calls_in_progress']:<2} peer {p['name']} "
                f"{'reachable' if p['reachable'] else 'UNREACHABLE'}")

    def calls_line(self) -> str:
        c = self.calls
        return (f"calls: answered {c['answered']}  dropped {c['dropped']}  rejected {c['rejected']}  "
                f"failed {c['failed']}  (in progress {self.in_progress})")

    def draw(self) -> None:
        width = shutil.get_terminal_size((120, 40)).columns
        lines = [f"vmha demo: pair on loopback in {self.pair.dir}   t = {self.elapsed():5.1f} s   "
                 "Ctrl-C to stop", "", "FAILOVER MONITOR"]
        lines += [self.node_line(n) for n in "ab"]
        lines += ["", self.calls_line(), f"next: {self.next_step}", ""]
        lines += [f">>> {b}" for b in self.banners[-3:]]
        lines += ["", "recent events (both nodes, by time; per-call lines hidden):"]
        lines += ["  " + format_record(r) for r in self.events[-EVENT_LINES:]]
        sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(x[:width - 1] for x in lines) + "\n")
        sys.stdout.flush()

    # ------------------------------------------------------------------ monitor

    def _read_new(self, name: str) -> list[dict]:
        try:
            with open(self.logs[name], "rb") as f:
                f.seek(self.offsets[name])
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offsets[name] += end
        out = []
        for line in data[:end].splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def _poll(self) -> list[dict]:  # blocking: runs in a thread
        self.status = {n: self.pair.node(n).status() for n in "ab"}
        new = [r for n in "ab" for r in self._read_new(n)]
        return sorted((r for r in new if not str(r.get("event", "")).startswith("call_")
                       or r.get("event") == "call_refused"), key=lambda r: r.get("ts", 0))

    async def monitor(self) -> None:
        last_calls = 0.0
        while True:
            new = await trio.to_thread.run_sync(self._poll)
            self.events = sorted(self.events + new, key=lambda r: r.get("ts", 0))[-200:]
            if self.tty:
                self.draw()
            else:
                for rec in new:
                    print("    " + format_record(rec), flush=True)
                for n in "ab":
                    st = self.status[n]
                    key = st and (st["node"]["state"], st["node"]["term"], st["node"]["service"],
                                  st["peer"]["reachable"])
                    if self._shown.get(n, 0) != key:
                        self._shown[n] = key
                        self.say(self.node_line(n))
                if time.monotonic() - last_calls >= 5:
                    last_calls = time.monotonic()
                    self.say(self.calls_line())
            await trio.sleep(REFRESH)

    def active(self) -> str | None:
        """The node to send calls to: active, not just killed, highest term (a stale view of a
        node that was active before cannot win: terms only move forward)."""
        up = [(st["node"]["term"], n) for n, st in self.status.items()
              if st and st["node"]["state"] == "active" and n not in self.avoid]
        return max(up)[1] if up else None

    async def wait_for(self, pred, timeout: float):
        with trio.move_on_after(timeout):
            while not (found := pred()):
                await trio.sleep(0.02)
            return found
        return None

    def activation_after(self, name: str, wall: float) -> dict | None:
        return next((r for r in self.events if r.get("node") == name and r.get("ts", 0) >= wall
                     and r.get("event") in ACTIVATIONS), None)

    # ------------------------------------------------------------------ calls

    async def one_call(self, name: str, call_id: str, probe: bool = False) -> None:
        self.calls["placed"] += 1
        self.in_progress += 1
        try:
            out = await place_call("127.0.0.1", self.pair.loop_port(name), call_id,
                                   calling=f"4{random.randint(100, 999)}", called="5000",
                                   hold=random.uniform(*HOLD), reply_timeout=5)
            result, detail = out.result, (f"by {out.node} in term {out.term}" if out.answered
                                          else out.reason)
        except (OSError, trio.BrokenResourceError, LoopbackClientError, trio.TooSlowError) as e:
            result, detail = "error", f"{type(e).__name__}: {e}"
        finally:
            self.in_progress -= 1
        self.calls["failed" if result == "error" else result] += 1
        if probe or result != "answered":
            self.say(f"call {call_id} on {name}'s trunk: {result} ({detail})")
        if probe and result in ("answered", "dropped"):
            self.banner(f"CALL TAKEOVER: the call on inactive {name}'s trunk was answered {detail}")
        elif probe:
            st = self.status[name]
            why = ("it holds after the operator's move, so no call takeover; the PBX hunts on "
                   f"to {other(name)}") if st and st["node"]["hold"] else "see its event log"
            self.banner(f"CALL ON INACTIVE {name}'s TRUNK: {result} ({detail}): {why}")

    async def caller(self, nursery: trio.Nursery) -> None:
        n = 0
        while True:
            await trio.sleep(CALL_EVERY)
            target = self.active()
            if target is not None:
                n += 1
                nursery.start_soon(self.one_call, target, f"demo-{n}")

    # ------------------------------------------------------------------ script

    async def at(self, t: float) -> None:
        await trio.sleep(max(0.0, t - self.elapsed()))

    async def kill_active(self) -> None:
        victim = await self.wait_for(self.active, 15)
        if victim is None:
            self.banner("no active node to fail: skipping the kill")
            return
        peer = other(victim)
        pid = await trio.to_thread.run_sync(self.pair.node(victim).service_pid)
        if pid is None:
            self.banner(f"messaging service of {victim} not found: skipping the kill")
            return
        self.avoid.add(victim)
        wall = time.time()
        os.kill(pid, signal.SIGKILL)
        self.banner(f"KILL -9 of {victim}'s messaging service (pid {pid}): calls on it are cut off")
        self.next_step = f"a call on the inactive node's trunk at {TAKEOVER_CALL_AT:.0f} s"
        rec = await self.wait_for(lambda: self.activation_after(peer, wall), 10)
        self.avoid.discard(victim)
        if rec is None:
            self.banner(f"no takeover by {peer} seen within 10 s of the kill")
            return
        took = (rec["ts"] - wall) * 1000
        self.measured.append(f"{rec['event']}: {peer} active {took:.1f} ms after kill -9 of "
                             f"{victim}'s messaging service")
        self.banner(f"TAKEOVER: {peer} is active in term {rec['fields']['term']}, {rec['event']} event "
                    f"{took:.1f} ms after the kill -9")

    async def operator(self, kind: str) -> None:
        """``vmha failover`` (the secondary b becomes active) or ``failback`` (the primary a)."""
        self.next_step = f"a call on the inactive node's trunk at {PROBE_AT:.0f} s"
        target = "b" if kind == "failover" else "a"
        st = self.status[target]
        if st and st["node"]["state"] in ("active", "activating"):
            self.banner(f"manual {kind} not needed: {target} is already active")
            return
        self.avoid.add(other(target))  # no new calls there while it steps down (status may lag)
        wall = time.time()
        reply = await trio.to_thread.run_sync(self.pair.node(other(target)).admin, {"op": kind})
        self.banner(f"MANUAL {kind.upper()} (admin socket of {other(target)}): "
                    f"{(reply or {}).get('message') or (reply or {}).get('error') or 'no answer'}")
        rec = await self.wait_for(lambda: self.activation_after(target, wall), 10)
        self.avoid.discard(other(target))
        if rec is None:
            self.banner(f"{target} did not become active within 10 s of the {kind}")
            return
        took = (rec["ts"] - wall) * 1000
        self.measured.append(f"{kind}: {target} active {took:.1f} ms after the {kind} request")
        self.banner(f"{kind.upper()}: {target} is active in term {rec['fields']['term']}, {took:.1f} ms "
                    f"after the request; {other(target)} drains its calls and holds")

    async def call_on_inactive(self, nursery: trio.Nursery, call_id: str) -> None:
        target = self.active()
        if target is not None:
            self.say(f"placing a call on the inactive node {other(target)}'s trunk")
            nursery.start_soon(self.one_call, other(target), call_id, True)

    async def script(self, nursery: trio.Nursery) -> None:
        await self.at(KILL_AT)
        await self.kill_active()
        await self.at(TAKEOVER_CALL_AT)
        self.next_step = f"manual failover at {FAILOVER_AT:.0f} s"
        await self.call_on_inactive(nursery, "takeover-1")
        await self.at(FAILOVER_AT)
        await self.operator("failover")
        await self.at(PROBE_AT)
        await self.call_on_inactive(nursery, "probe-1")
        self.next_step = "none: calls continue until Ctrl-C (or --duration)"

    async def run(self, duration: float) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                async def on_signal() -> None:
                    async for signum in signals:
                        self.interrupted = signal.Signals(signum).name
                        nursery.cancel_scope.cancel()
                nursery.start_soon(on_signal)
                nursery.start_soon(self.monitor)
                await self.wait_for(self.active, 20)
                nursery.start_soon(self.caller, nursery)
                nursery.start_soon(self.script, nursery)
                if duration > 0:
                    await trio.sleep(max(0.0, duration - self.elapsed()))
                    nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ summary

    def summary(self, ran: float, leftovers: list[str]) -> str:
        c = self.calls
        by = "Ctrl-C" if self.interrupted == "SIGINT" else self.interrupted
        stop = f" (stopped by {by})" if by else ""
        unfinished = c["placed"] - sum(c[k] for k in ("answered", "dropped", "rejected", "failed"))
        lines = [f"=== vmha demo summary: ran {ran:.1f} s{stop} ===",
                 f"calls placed {c['placed']}: answered {c['answered']}, dropped {c['dropped']} "
                 f"(answered, then cut off), rejected {c['rejected']}, failed {c['failed']}, "
                 f"hung up by the stop {unfinished}"]
        acts = [r for r in self.events if r.get("event") in ACTIVATIONS]
        lines.append(f"activations seen (start-up, failovers, failbacks): {len(acts)}")
        for r in acts:
            f = r.get("fields", {})
            lines.append(f"  {r['event']:<9} {r['node']} term {f.get('term')}: activation took "
                         f"{f.get('took_ms')} ms; cause: {f.get('cause')}")
        lines += ["measured by the demo:"] + [f"  {m}" for m in self.measured or ["nothing"]]
        lines.append("processes: all stopped" if not leftovers else
                     f"processes LEFT RUNNING: {', '.join(leftovers)}")
        return "\n".join(lines)


def leftover_processes(workdir: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True).stdout.split()
    return [p for p in out if int(p) != os.getpid()]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main_demo(args) -> int:
    workdir = Path(args.dir).resolve() if args.dir else Path(tempfile.mkdtemp(prefix="vmha-demo-"))
    tty = sys.stdout.isatty()
    pair = Pair(workdir, relay=True)
    demo = Demo(pair, tty)
    print(f"vmha demo: starting a pair on loopback in {workdir} (primary a first)", flush=True)
    # Ctrl-C (or SIGTERM) before the Trio signal receiver is in place: stop cleanly all the same
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        pair.start("a", gap=0.3)
        sm = {n: pair.node(n).pid for n in "ab"}
        print(f"node managers: a pid {sm['a']}, b pid {sm['b']}; loopback trunks: a 127.0.0.1:"
              f"{pair.loop_port('a')}, b 127.0.0.1:{pair.loop_port('b')}", flush=True)
        trio.run(demo.run, float(args.duration or 0))
    except KeyboardInterrupt:
        demo.interrupted = demo.interrupted or "SIGINT"
    finally:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)  # let the clean-up finish
        ran = demo.elapsed()
        print("\nstopping both nodes ...", flush=True)
        pair.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    left = leftover_processes(workdir)
    print(demo.summary(ran, left), flush=True)
    print(f"event logs and node output: {workdir}", flush=True)
    return 1 if left else 0
