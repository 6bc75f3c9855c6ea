"""A stand-in for ``python -m telephony.sip.worker`` that misbehaves on purpose (started by
the SIP driver in place of its Python: ``SipPorts(python=<this script>)``; the driver's
arguments follow).  Each start takes the next scenario from the JSON list in the file named by
``$FAKE_SIP_PLAN`` (``$FAKE_SIP_PLAN.n`` counts the starts); when the list is used up it is a
well-behaved worker for one call: ``ready``, then an ``incoming`` call ``good-<n>`` that it
ends when the driver answers.

A reset on the worker's Unix socket: Linux resets an AF_UNIX stream (the peer's next read
fails with ECONNRESET) when the socket is closed with unread data in its receive queue
(``SO_LINGER`` plays no part there), so the scenarios that reset first wait until the driver
has written to them (its ``answer`` or ``reject``) and close without reading it.
"""
from __future__ import annotations

import json
import os
import select
import socket
import sys

CALL = {"ev": "incoming", "from": "<sip:4021@pbx>", "to": "<sip:5000@vm>",
        "request_uri": "sip:5000@vm", "sip_call_id": "", "raw": "", "remote": "127.0.0.1:5060"}


def line(**msg) -> bytes:
    return json.dumps(msg).encode() + b"\n"


def wait_for_driver(s: socket.socket) -> None:
    """Until the driver has written something (left unread: the close then resets)."""
    select.select([s], [], [], 30)


def reset(s: socket.socket) -> None:
    os._exit(0)  # the kernel closes the socket with the driver's bytes unread: ECONNRESET


def main() -> None:
    argv = sys.argv[1:]
    control = argv[argv.index("--control") + 1]
    plan_path = os.environ["FAKE_SIP_PLAN"]
    with open(plan_path) as f:
        plan = json.load(f)
    try:
        with open(plan_path + ".n") as f:
            n = int(f.read())
    except FileNotFoundError:
        n = 0
    with open(plan_path + ".n", "w") as f:
        f.write(str(n + 1))
    scenario = plan[n] if n < len(plan) else "good"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(control)
    ready = line(ev="ready", name="fake", pid=os.getpid(), sip="127.0.0.1:1", ports=1,
                 mode="trunk")
    call = line(**CALL, call=f"{scenario}-{n}")
    if scenario == "partial_first_line":  # dies half-way through its first line
        s.sendall(ready[:9])
        os._exit(0)
    if scenario == "reset_mid_line":  # a call, then half a line and a reset
        s.sendall(ready + call)
        wait_for_driver(s)
        s.sendall(b'{"ev": "dtmf", "call": "reset_mid')
        reset(s)
    if scenario == "reset_after_call_start":  # reset as soon as the driver answers
        s.sendall(ready + call)
        wait_for_driver(s)
        reset(s)
    if scenario == "garbage_then_reset":
        s.sendall(ready)
        s.sendall(b"\xff\xfe not json at all\n")
        s.sendall(b"[" * 100_000 + b"\n")                       # nested too deeply
        s.sendall(line(ev="notify_result", id=[1], code=200))   # an id that is no int
        s.sendall(line(ev="registration", account={"x": 1}, state=["registered"]))
        s.sendall(line(ev="incoming", call=["not", "a", "string"]))
        s.sendall(line(ev="error", message={"m": 1}))
        s.sendall(call)
        wait_for_driver(s)
        s.sendall(b"\x00\x01garbage without an end")
        reset(s)
    # good: one call, ended by the caller once answered, then wait for the driver
    s.sendall(ready + call)
    buf = b""
    while True:
        data = s.recv(65536)
        if not data:
            return
        buf += data
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            op = json.loads(raw)
            if op.get("op") == "answer":
                s.sendall(line(ev="disconnected", call=op["call"], code=200, by="remote"))
            elif op.get("op") == "shutdown":
                return


if __name__ == "__main__":
    main()
