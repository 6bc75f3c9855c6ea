"""A Cisco CallManager **simulator** (nobody has a CallManager here) for the SCCP voice-mail
ports: real SCCP over TCP with the project's codec, real RTP over UDP.  What it models and what
it leaves out: docs/sccp.md, "The CallManager simulator".  The engine is
:class:`lab.callmanager_sim.CallManagerSim` (re-exported here, the in-process form for driver
tests under Trio); this module is its process form::

    python -m lab.callmanager --listen 127.0.0.1:2000 --control /tmp/cm.sock \\
        --devices CiscoUM1-VI1,CiscoUM1-VI2,CiscoUM2-VI1,CiscoUM2-VI2 --pilot 5000 \\
        [--keepalive 30] [--pcap cm.pcap] [--mwi-on 2222 --mwi-off 2221] [--extensions 6001,6002]
        [--ring-timeout 10] [--rtp-host 127.0.0.1] [--record-dir DIR]

``--devices`` is a comma-separated list or a file of one device a line (``NAME`` or
``NAME=DN``; ``#`` comments), in hunt order.  It prints ``ready PORT`` on stdout once it
listens, and exits 0 on SIGTERM/SIGINT or the ``stop`` request.

Control: one JSON object a line on the Unix socket ``--control``, answered by one line
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.  Requests: ``{"op":
"registrations"}``, ``wait_registered`` (``devices``, ``timeout``), ``call`` (the keywords of
:meth:`CallManagerSim.call`), ``calls``, ``lamps``, ``lamp_events``, ``inject`` (``device``,
``hex``), ``reset`` (``device``, ``type``), ``stats``, ``stop``.  Tests use the sync
:class:`CallManagerClient` and :func:`start_callmanager` (which starts the process; stop it with
:func:`stop_callmanager`, by PID)::

    proc, cm = start_callmanager(tmp_path, ["CiscoUM1-VI1", "CiscoUM2-VI1"], keepalive=5)
    try:
        cm.wait_registered(["CiscoUM1-VI1"], timeout=20)
        result = cm.call("4021", last_redirecting="1002", reason=2, wav=str(greeting), hang_up_after=4)
        assert result["device"] == "CiscoUM1-VI1"
    finally:
        stop_callmanager(proc)
"""
from __future__ import annotations

import argparse
import json
import logging
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from lab.callmanager_dialplan import parse_devices, port_name
from lab.callmanager_sim import CallManagerSim
from telephony.core.framing import NEED_DATA, Closed, FramingError, LineFramer, Unfinished, decode_json_object

__all__ = ["CallManagerSim", "CallManagerClient", "CallManagerError", "start_callmanager",
           "stop_callmanager", "serve_control", "port_name", "parse_devices", "parse_args", "main"]

log = logging.getLogger("lab.callmanager")

MAX_REQUEST = 1 << 20  # bytes of one control line (an inject of 2000 bytes is 4 KB of hex)
ROOT = Path(__file__).resolve().parents[1]
_CALL_KEYS = {"calling", "called", "calling_name", "call_type", "original_called", "last_redirecting",
              "reason", "original_reason", "wav", "record_s", "hang_up_after", "digits", "digits_at",
              "rfc2833", "codec", "device"}


class CallManagerError(Exception):
    """The simulator refused a request (its reason is the message)."""


# ---------------------------------------------------------------------------- control server


async def _op(sim: CallManagerSim, req: dict[str, Any]) -> Any:
    op = req.get("op")
    if op == "registrations":
        return sim.registrations()
    if op == "wait_registered":
        return await sim.wait_registered(req.get("devices"), float(req.get("timeout", 10.0)))
    if op == "call":
        args = {k: v for k, v in req.items() if k != "op"}
        unknown = set(args) - _CALL_KEYS
        if unknown:
            raise ValueError(f"unknown call arguments: {', '.join(sorted(unknown))}")
        return await sim.call(**args)
    if op == "calls":
        return sim.calls()
    if op == "lamps":
        return sim.lamps()
    if op == "lamp_events":
        return list(sim.lamp_events)
    if op == "inject":
        try:
            data = bytes.fromhex(str(req.get("hex", "")))
        except ValueError:
            raise ValueError("hex: not hexadecimal") from None
        return await sim.inject(str(req.get("device")), data)
    if op == "reset":
        return await sim.reset(str(req.get("device")), int(req.get("type", 1)))
    if op == "stats":
        return sim.stats()
    if op == "stop":
        return True  # stopped once the answer is out (_control_conn)
    raise ValueError(f"unknown op {op!r}")


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


async def _answer(sim: CallManagerSim, line: bytes) -> dict[str, Any]:
    req = decode_json_object(line)
    if isinstance(req, str):
        return {"ok": False, "error": req}
    reply: dict[str, Any] = {}
    try:
        reply = {"ok": True, "result": await _op(sim, req)}
        if req.get("op") == "stop":
            reply["stop"] = True
    except* (ValueError, TypeError, TimeoutError) as group:
        reply = {"ok": False, "error": "; ".join(str(e) for e in _leaves(group))}
    except* Exception as group:
        for e in _leaves(group):
            sim.task_failures.failed("control", e)
        reply = {"ok": False, "error": "internal error: " + "; ".join(repr(e) for e in _leaves(group))}
    return reply


async def _control_conn(sim: CallManagerSim, stream: trio.SocketStream) -> None:
    framer = LineFramer(MAX_REQUEST)
    async with stream:
        while True:
            try:
                line = framer.next_line()
            except FramingError as e:
                await stream.send_all(json.dumps({"ok": False, "error": str(e)}).encode() + b"\n")
                return
            if line is NEED_DATA:
                framer.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(line, (Closed, Unfinished)):
                return
            reply = await _answer(sim, line)
            await stream.send_all(json.dumps(reply).encode() + b"\n")
            if reply.get("stop"):
                sim.stop()
                return


async def serve_control(sim: CallManagerSim, path: str | Path, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the JSON-lines control socket at ``path`` until cancelled (removed at the end)."""
    path = Path(path)
    if len(str(path).encode()) > 100:
        raise ValueError(f"control socket path {path} is too long for a Unix socket")
    path.unlink(missing_ok=True)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await _control_conn(sim, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away
        except Exception as e:  # noqa: BLE001 - one control connection's failure stays with it
            sim.task_failures.failed("control", e)

    try:
        task_status.started()
        await trio.serve_listeners(handler, [listener])
    finally:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- process form


def _devices_arg(text: str) -> dict[str, str]:
    p = Path(text)
    try:
        if "," not in text and p.is_file():
            return parse_devices(p.read_text().splitlines())
        return parse_devices(text)
    except (OSError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lab.callmanager",
                                description="A CallManager simulator serving SCCP voice-mail ports.")
    p.add_argument("--listen", type=_hostport, required=True, help="HOST:PORT for SCCP (port 0: any)")
    p.add_argument("--control", required=True, help="path of the JSON-lines control socket")
    p.add_argument("--devices", type=_devices_arg, required=True, help="FILE or NAME[=DN],... in hunt order")
    p.add_argument("--pilot", default="5000")
    p.add_argument("--keepalive", type=int, default=30, help="seconds, given in RegisterAck")
    p.add_argument("--keepalive-misses", type=int, default=3)
    p.add_argument("--pcap", default=None, help="write every SCCP byte to this pcap file")
    p.add_argument("--mwi-on", default="2222")
    p.add_argument("--mwi-off", default="2221")
    p.add_argument("--extensions", default="", help="comma-separated extensions MWI may be set for")
    p.add_argument("--ring-timeout", type=float, default=10.0)
    p.add_argument("--interdigit", type=float, default=3.0)
    p.add_argument("--rtp-host", default="127.0.0.1")
    p.add_argument("--record-dir", default=None, help="where the WAVs of what ports sent go")
    return p.parse_args(argv)


async def _main(args: argparse.Namespace) -> None:
    sim = CallManagerSim(args.devices, pilot=args.pilot, keepalive=args.keepalive,
                         keepalive_misses=args.keepalive_misses, pcap=args.pcap, mwi_on=args.mwi_on,
                         mwi_off=args.mwi_off, extensions=[e for e in args.extensions.split(",") if e],
                         ring_timeout=args.ring_timeout, interdigit=args.interdigit, rtp_host=args.rtp_host,
                         record_dir=args.record_dir)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.run, args.listen[0], args.listen[1])
        await nursery.start(serve_control, sim, args.control)

        async def signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                async for _ in received:
                    sim.stop()
                    return

        nursery.start_soon(signals)
        print(f"ready {port}", flush=True)
        await sim.wait_stopped()
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        args = parse_args(argv)
    except ValueError as e:  # a bad device list
        print(f"lab.callmanager: {e}", file=sys.stderr)
        return 2
    failed: list[BaseException] = []
    try:
        trio.run(_main, args)
    except* (ValueError, OSError) as group:  # bad settings, an address in use
        failed = _leaves(group)
    for e in failed:
        print(f"lab.callmanager: {e}", file=sys.stderr)
    return 2 if failed else 0


# ---------------------------------------------------------------------------- sync client


class CallManagerClient:
    """Blocking client of a simulator's control socket (one connection per request)."""

    def __init__(self, path: str | Path, *, timeout: float = 10.0, address: tuple[str, int] | None = None):
        self.path = Path(path)
        self.timeout = timeout
        #: where the simulator listens for SCCP (set by :func:`start_callmanager`)
        self.address = address

    def request(self, op: str, args: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """One request; its result, or :class:`CallManagerError` with the simulator's reason."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout if timeout is None else timeout)
            s.connect(str(self.path))
            s.sendall(json.dumps({"op": op, **(args or {})}).encode() + b"\n")
            framer = LineFramer(64 << 20)
            while True:
                line = framer.next_line()
                if line is NEED_DATA:
                    framer.receive_data(s.recv(65536))
                    continue
                if isinstance(line, Closed):
                    raise ConnectionError("the simulator closed the control connection without answering")
                reply = decode_json_object(line.raw if isinstance(line, Unfinished) else line)
                break
        if isinstance(reply, str):
            raise CallManagerError(f"bad reply: {reply}")
        if not reply.get("ok"):
            raise CallManagerError(reply.get("error", "refused"))
        return reply.get("result")

    def registrations(self) -> dict[str, dict[str, Any]]:
        return self.request("registrations")

    def wait_registered(self, devices: list[str] | None = None, timeout: float = 10.0) -> dict[str, Any]:
        try:
            return self.request("wait_registered", {"devices": devices, "timeout": timeout},
                                timeout=timeout + 5)
        except CallManagerError as e:
            if str(e).startswith("not registered"):
                raise TimeoutError(str(e)) from None
            raise

    def call(self, calling: str = "", **kwargs: Any) -> dict[str, Any]:
        """:meth:`CallManagerSim.call` (a ``wav`` path must be readable by the simulator)."""
        if "wav" in kwargs and kwargs["wav"] is not None:
            kwargs["wav"] = str(kwargs["wav"])
        record = float(kwargs.get("record_s", 60.0))
        budget = record + 60.0 + 30.0 * 16  # the call, media setup, every port ringing out
        return self.request("call", {"calling": calling, **kwargs}, timeout=budget)

    def calls(self) -> list[dict[str, Any]]:
        return self.request("calls")

    def lamps(self) -> dict[str, bool]:
        return self.request("lamps")

    def lamp_events(self) -> list[dict[str, Any]]:
        return self.request("lamp_events")

    def inject(self, device: str, data: bytes) -> int:
        return self.request("inject", {"device": device, "hex": bytes(data).hex()})

    def reset(self, device: str, reset_type: int = 1) -> bool:
        return self.request("reset", {"device": device, "type": reset_type})

    def stats(self) -> dict[str, Any]:
        return self.request("stats")

    def stop(self) -> bool:
        return self.request("stop")


def start_callmanager(workdir: str | Path, devices: list[str] | str, *, pilot: str = "5000",
                      keepalive: int = 30, pcap: str | Path | None = None, mwi_on: str = "2222",
                      mwi_off: str = "2221", extensions: list[str] = (), ring_timeout: float = 10.0,
                      rtp_host: str = "127.0.0.1", host: str = "127.0.0.1", port: int = 0,
                      timeout: float = 20.0) -> tuple[subprocess.Popen, CallManagerClient]:
    """Start ``python -m lab.callmanager`` (its log in ``workdir/callmanager.log``, its control
    socket ``workdir/cm.sock``, its recordings in ``workdir/cm-recordings``) and wait until it
    listens.  Returns the process and a client whose ``address`` is the SCCP ``(host, port)``.
    Stop it with :func:`stop_callmanager` (by PID)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    control = workdir / "cm.sock"
    devs = devices if isinstance(devices, str) else ",".join(devices)
    cmd = [sys.executable, "-m", "lab.callmanager", "--listen", f"{host}:{port}", "--control", str(control),
           "--devices", devs, "--pilot", pilot, "--keepalive", str(keepalive), "--mwi-on", mwi_on,
           "--mwi-off", mwi_off, "--ring-timeout", str(ring_timeout), "--rtp-host", rtp_host,
           "--record-dir", str(workdir / "cm-recordings")]
    if extensions:
        cmd += ["--extensions", ",".join(extensions)]
    if pcap is not None:
        cmd += ["--pcap", str(pcap)]
    logf = open(workdir / "callmanager.log", "ab")  # noqa: SIM115 - the child holds it
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=logf, stdin=subprocess.DEVNULL)
    finally:
        logf.close()
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            stop_callmanager(proc)
            raise TimeoutError(f"the CallManager simulator did not start in {timeout} s "
                               f"(see {workdir / 'callmanager.log'})")
        chunk = proc.stdout.read1(256)
        if not chunk:
            code = stop_callmanager(proc)
            raise RuntimeError(f"the CallManager simulator exited ({code}) before it was ready: "
                               + (workdir / "callmanager.log").read_text(errors="replace")[-2000:])
        line += chunk
    words = line.split()
    if len(words) != 2 or words[0] != b"ready":
        stop_callmanager(proc)
        raise RuntimeError(f"unexpected first line from the simulator: {line!r}")
    return proc, CallManagerClient(control, address=(host, int(words[1])))


def stop_callmanager(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM by PID, wait, SIGKILL if it is still there; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
