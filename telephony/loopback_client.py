"""A small Trio client of the loopback trunk: the simulated PBX of tests, benchmarks and the demo.

::

    outcome = await place_call("127.0.0.1", 7001, "c1", calling="4021", hold=0.5)
    if outcome.answered: print(outcome.node, outcome.port, outcome.term)

    async with open_call("127.0.0.1", 7001, "c2") as call:
        assert call.answered
        ...                      # the call is in progress
        await call.hangup()      # or leave the block: it hangs up for you

The protocol is described in :mod:`telephony.loopback`.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

MAX_LINE = 4096


class LoopbackClientError(Exception):
    """The trunk sent something this client does not understand, or nothing in time."""


@dataclass(frozen=True)
class CallOutcome:
    """How a call went.  ``result``: ``answered`` (and ended normally), ``rejected``,
    ``dropped`` (answered, then hung up by the service), ``error`` (the trunk refused the offer)."""

    result: str
    node: str | None = None
    port: str | None = None
    term: int | None = None
    reason: str | None = None  # why rejected, or the error message

    @property
    def answered(self) -> bool:
        """The call was answered (whether it ended normally or was dropped later)."""
        return self.term is not None


class LoopbackCall:
    """One call on one connection.  Use :func:`open_call` to get one."""

    def __init__(self, stream: trio.abc.Stream, *, reply_timeout: float) -> None:
        self._stream = stream
        self._buf = bytearray()
        self._eof = False
        self.reply_timeout = reply_timeout
        self.answer: dict[str, Any] | None = None  # the reply to the offer
        self.final: dict[str, Any] | None = None  # ended / dropped / None while in progress

    # ------------------------------------------------------------------ state

    @property
    def answered(self) -> bool:
        return self.answer is not None and self.answer.get("ev") == "answered"

    @property
    def in_progress(self) -> bool:
        return self.answered and self.final is None

    @property
    def outcome(self) -> CallOutcome:
        a = self.answer or {}
        if a.get("ev") == "answered":
            dropped = self.final is not None and self.final.get("ev") == "dropped"
            return CallOutcome("dropped" if dropped else "answered", a.get("node"), a.get("port"),
                               a.get("term"))
        if a.get("ev") == "rejected":
            return CallOutcome("rejected", reason=a.get("reason"))
        return CallOutcome("error", reason=a.get("message", "no answer"))

    # ------------------------------------------------------------------ actions

    async def offer(self, call_id: str, *, calling: str = "", called: str = "",
                    forwarding: str = "", reason: str = "direct") -> dict[str, Any]:
        await self._send({"op": "offer", "call_id": call_id, "calling": calling,
                          "called": called, "forwarding": forwarding, "reason": reason})
        self.answer = await self._receive(timeout=self.reply_timeout)
        return self.answer

    async def hangup(self) -> dict[str, Any]:
        """Hang up; returns the trunk's last word (``ended``, or ``dropped`` if it was first)."""
        if not self.in_progress:
            raise LoopbackClientError("no call in progress")
        try:
            await self._send({"op": "hangup"})
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the trunk closed first: what it said before is still in the buffer
        while self.final is None:
            ev = await self._receive(timeout=self.reply_timeout)
            if ev.get("ev") in ("ended", "dropped"):
                self.final = ev
        return self.final

    async def wait_dropped(self) -> dict[str, Any]:
        """Wait until the trunk hangs the call up (``dropped``) or closes the connection."""
        while self.final is None:
            ev = await self._receive(timeout=None)
            if ev.get("ev") in ("ended", "dropped"):
                self.final = ev
        return self.final

    # ------------------------------------------------------------------ lines

    async def _send(self, msg: dict[str, Any]) -> None:
        await self._stream.send_all(json.dumps(msg).encode() + b"\n")

    async def _receive(self, *, timeout: float | None) -> dict[str, Any]:
        with trio.fail_after(timeout if timeout is not None else float("inf")):
            while True:
                nl = self._buf.find(b"\n")
                if nl >= 0:
                    line = bytes(self._buf[:nl])
                    del self._buf[: nl + 1]
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        raise LoopbackClientError(f"trunk sent a non-JSON line: {line!r:.80}") \
                            from None
                    if not isinstance(msg, dict) or not isinstance(msg.get("ev"), str):
                        raise LoopbackClientError(f"trunk sent a line without ev: {line!r:.80}")
                    return msg
                if len(self._buf) > MAX_LINE:
                    raise LoopbackClientError("trunk sent an over-long line")
                if self._eof:
                    # the connection closed without a final word: treat it as dropped
                    return {"ev": "dropped", "reason": "connection closed"}
                try:
                    data = await self._stream.receive_some(MAX_LINE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self._eof = True
                self._buf += data


@asynccontextmanager
async def open_call(host: str, port: int, call_id: str, *, calling: str = "", called: str = "",
                    forwarding: str = "", reason: str = "direct",
                    reply_timeout: float = 30.0) -> AsyncIterator[LoopbackCall]:
    """Place a call and keep it; the block's end hangs it up if it is still in progress.
    ``reply_timeout`` bounds the wait for the answer (the trunk may hold the offer for a while)."""
    stream = await trio.open_tcp_stream(host, port)
    async with call_on_stream(stream, call_id, calling=calling, called=called,
                              forwarding=forwarding, reason=reason,
                              reply_timeout=reply_timeout) as call:
        yield call


@asynccontextmanager
async def call_on_stream(stream: trio.abc.Stream, call_id: str, *, calling: str = "",
                         called: str = "", forwarding: str = "", reason: str = "direct",
                         reply_timeout: float = 30.0) -> AsyncIterator[LoopbackCall]:
    """:func:`open_call` on a stream you connected yourself (closed at the end)."""
    async with stream:
        call = LoopbackCall(stream, reply_timeout=reply_timeout)
        await call.offer(call_id, calling=calling, called=called, forwarding=forwarding,
                         reason=reason)
        try:
            yield call
        finally:
            if call.in_progress:
                with trio.CancelScope(shield=True), trio.move_on_after(reply_timeout):
                    try:
                        await call.hangup()
                    except LoopbackClientError:
                        pass


async def place_call(host: str, port: int, call_id: str, *, calling: str = "", called: str = "",
                     forwarding: str = "", reason: str = "direct", hold: float = 0.0,
                     reply_timeout: float = 30.0) -> CallOutcome:
    """Place one call; if answered, stay on it for ``hold`` seconds (unless the trunk drops it
    first), then hang up.  Returns the outcome."""
    async with open_call(host, port, call_id, calling=calling, called=called,
                         forwarding=forwarding, reason=reason,
                         reply_timeout=reply_timeout) as call:
        if call.in_progress:
            with trio.move_on_after(hold):
                await call.wait_dropped()
            if call.in_progress:
                await call.hangup()
    return call.outcome
