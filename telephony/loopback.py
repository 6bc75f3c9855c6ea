"""The loopback test trunk: a simulated PBX trunk of N ports (``loopback-1..N``) on TCP.

A client (the simulated PBX, see :mod:`lab.loopback_client`) connects to the listener
(127.0.0.1 by default) and places **one call per connection** with JSON lines::

    -> {"op": "offer", "call_id": "c1", "calling": "4021", "called": "5000",
        "forwarding": "4000", "reason": "busy"}
    <- {"ev": "answered", "node": "a", "port": "loopback-1", "term": 8}
       or {"ev": "rejected", "reason": "busy" | "refused" | "timeout" | "duplicate" | "shutdown"}
    -> {"op": "hangup"}
    <- {"ev": "ended"}

After ``answered`` the call is in progress until the client sends ``hangup`` or closes the
connection.  When the service hangs the call up itself (deactivate without drain, shutdown,
node manager gone) the client gets ``{"ev": "dropped"}`` and the connection closes.
``calling``, ``called`` and ``forwarding`` default to "" and ``reason`` to "direct".

**Lines.**  ``"line": N`` rings port ``loopback-N`` itself (``rejected`` ``busy`` if that port
is not idle), as a PBX rings one line of a voice board.  With ``line_info`` set (the serial
SMDI integration), such a call carries no numbers of its own: its information comes from the
PBX's data link (the SMDI record for that line's terminal), and the offer's numbers are
ignored.

**Call flow and media.**  With a ``flow`` (``LoopbackTrunk(flow=...)``, usually
``CallFlow.handle``), the trunk runs ``await flow(call, port, term)`` once the call is
answered; ``port`` is a :class:`LoopbackPort` (a ``telephony.core.callflow.CallPort``).  Audio is
8 kHz 16-bit signed little-endian mono PCM, base64 in JSON, at most ``MAX_AUDIO_CHUNK`` (2560)
bytes of PCM (160 ms) per line::

    <- {"ev": "play", "audio": "<b64 pcm>"}        the service plays audio (repeated)
    <- {"ev": "play_end"}                           ... to the end, or
    <- {"ev": "play_end", "digit": "5"}             ... cut short by a DTMF digit
    <- {"ev": "beep"}                               the next play is the record beep
    <- {"ev": "messages", "new": 3, "saved": 1}     mailbox access: the count being played
    <- {"ev": "record_start"}                       what the client says is recorded now
    <- {"ev": "record_end", "reason": "silence" | "max" | "dtmf"}
    <- {"ev": "hangup"} then {"ev": "ended"}        the service hangs up
    <- {"ev": "transfer", "to": "0"}                the service asks for a blind transfer
    -> {"op": "transfer", "ok": true}               the PBX takes the call:
    <- {"ev": "ended", "transferred": "0"}          ... the call is over for the service
    -> {"op": "transfer", "ok": false}              the PBX refuses: the call goes on
    -> {"op": "audio", "audio": "<b64 pcm>"}        what the caller says (any time;
                                                    kept only while recording)
    -> {"op": "dtmf", "digit": "1"}                 one of 0-9 * #
    -> {"op": "hangup"}                             as before: <- {"ev": "ended"}

Play is paced in real time (one 20 ms chunk per 20 ms) unless ``realtime=False``, which sends
as fast as the client reads (in chunks of ``play_chunk`` bytes).  A recording's length is
counted in audio received, so a client may send faster than real time; missing audio counts as
silence (the time since the last audio, on the Trio clock), and a recording never lasts longer
than its maximum on the Trio clock either.  Digits wait in a queue of ``MAX_PENDING_DIGITS``
(an interruptible play takes a typed-ahead digit at once; a recording starts with the queue
cleared).  A transfer the client does not answer within ``transfer_timeout`` seconds (a
trunk setting, default 10) has failed and the call goes on; a ``transfer`` answer with no
transfer asked for gets an ``error``.  A bad ``audio`` or ``dtmf`` line gets an ``error`` and
changes nothing.  After the service hung up, input is read and ignored for up to
``cleanup_timeout`` seconds.  The flow may go on after the caller hung up (to store the
message) for up to ``flow_grace`` seconds; the call counts as in progress
(``service.end_call``) until the flow is done.  Without a ``flow`` the trunk behaves as
before: the call is held until a side hangs up, and ``audio`` and ``dtmf`` lines get
"unknown op" errors.

Lines are bounded (``max_line``, 4 KiB).  A bad line gets ``{"ev": "error", "message": ...}``
and changes nothing; an over-long line gets the error and the connection is closed (the
stream cannot be resynchronised).  Offers are not read while a call is held waiting for the
node manager: a ``hangup`` sent then is handled once the offer is decided.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from integrations.base import IntegrationProfile
from integrations.loopback import LOOPBACK

from telephony.core.control import NEED_DATA, Closed, ControlConnection, ControlError, FramingError
from telephony.core import media
from telephony.core.callflow import check_destination
from telephony.core.events import CallArrival
from telephony.core.mwi import require_term
from telephony.runtime.ports import ActiveCall, CallService, PortRegistry, PortState
from telephony.runtime.tasks import Backoff, TaskFailures, contained, listen_tcp, python_logger

log = logging.getLogger("telephony.loopback")

MAX_LINE = 4096
MAX_AUDIO_CHUNK = 2560  # bytes of PCM in one audio line (160 ms); its line is < 3.5 KiB
MAX_PENDING_DIGITS = 32
DTMF_DIGITS = "0123456789*#"
ANNOUNCEMENTS = frozenset({"beep", "messages"})
_OFFER_FIELDS = {"call_id", "calling", "called", "forwarding", "reason", "media", "line"}
_B64_MAX = 4 * ((MAX_AUDIO_CHUNK + 2) // 3)

#: ``flow(call, port, term)``: run while an answered call is in progress.
Flow = Callable[[CallArrival, "LoopbackPort", int], Awaitable[Any]]


def parse_call_op(msg: dict[str, Any]) -> tuple[str, Any]:
    """Check one client message sent during a call (a dict with a string ``op``).  Returns
    ``("audio", pcm)``, ``("dtmf", digit)``, ``("transfer", ok)`` or ``("hangup", None)``;
    raises ValueError with a message for the client otherwise.  Pure and bounded: the base64
    text is measured before it is decoded."""
    op = msg.get("op")
    if op == "hangup":
        return "hangup", None
    if op == "audio":
        _no_extra(msg, "audio")
        text = msg.get("audio")
        if not isinstance(text, str):
            raise ValueError("audio must be a base64 string of 16-bit PCM")
        if len(text) > _B64_MAX:
            raise ValueError(f"audio is over {MAX_AUDIO_CHUNK} bytes of PCM; send it in "
                             "smaller lines")
        try:
            pcm = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("audio is not valid base64") from None
        if not pcm:
            raise ValueError("audio is empty")
        if len(pcm) % media.SAMPLE_WIDTH:
            raise ValueError(f"audio must hold whole 16-bit samples: {len(pcm)} bytes is odd")
        if len(pcm) > MAX_AUDIO_CHUNK:
            raise ValueError(f"audio is {len(pcm)} bytes of PCM; at most {MAX_AUDIO_CHUNK} "
                             "per line")
        return "audio", pcm
    if op == "dtmf":
        _no_extra(msg, "digit")
        digit = msg.get("digit")
        if not (isinstance(digit, str) and len(digit) == 1 and digit in DTMF_DIGITS):
            raise ValueError(f"digit must be one of 0-9, * and #, got {digit!r:.20}")
        return "dtmf", digit
    if op == "transfer":
        _no_extra(msg, "ok")
        if not isinstance(msg.get("ok"), bool):
            raise ValueError("ok must be true (the transfer is done) or false (refused)")
        return "transfer", msg["ok"]
    raise ValueError(f"unknown op {op!r:.40} during a call; send audio, dtmf, transfer "
                     "or hangup")


def _no_extra(msg: dict[str, Any], *allowed: str) -> None:
    unknown = set(msg) - {"op", *allowed}
    if unknown:
        raise ValueError(f"unknown fields {', '.join(sorted(map(str, unknown)))[:80]}")


_MONITOR: Any = object()  # _read_offer's answer for a {"op": "monitor"} connection


class LoopbackTrunk:
    """Port driver of the loopback trunk (implements :class:`telephony.runtime.ports.PortDriver`)."""

    #: its monitor shows the lamp's new/old counts (a count change is a lamp job too)
    mwi_counts = True

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, count: int | None = None,
                 profile: IntegrationProfile = LOOPBACK, max_line: int = MAX_LINE,
                 cleanup_timeout: float = 1.0,
                 listeners: list[trio.abc.Listener] | None = None, flow: Flow | None = None,
                 realtime: bool = True, play_chunk: int | None = None,
                 silence_threshold: float = media.SILENCE_THRESHOLD,
                 flow_grace: float = 30.0, transfer_timeout: float = 10.0) -> None:
        self.kind = profile.port_kind
        self.host = host
        self.port = port
        self.count = profile.ports if count is None else count
        if not 1 <= self.count <= 1024:
            raise ValueError(f"a loopback trunk has 1..1024 ports, not {self.count}")
        self.profile = profile
        self.max_line = max_line
        self.cleanup_timeout = cleanup_timeout
        #: the call flow (``telephony.core.callflow.CallFlow.handle``); None: calls are only held
        self.flow = flow
        self.realtime = realtime
        chunk = (media.FRAME_BYTES if realtime else MAX_AUDIO_CHUNK) if play_chunk is None \
            else play_chunk
        if isinstance(chunk, bool) or not isinstance(chunk, int) \
                or not media.SAMPLE_WIDTH <= chunk <= MAX_AUDIO_CHUNK or chunk % 2:
            raise ValueError(f"play_chunk must be an even number of bytes from 2 to "
                             f"{MAX_AUDIO_CHUNK}, not {chunk!r}")
        self.play_chunk = chunk
        media.SilenceDetector(silence_threshold)  # checks it
        self.silence_threshold = silence_threshold
        if isinstance(flow_grace, bool) or not isinstance(flow_grace, (int, float)) \
                or not (math.isfinite(flow_grace) and flow_grace >= 0):
            raise ValueError(f"flow_grace must be a number of seconds >= 0, not {flow_grace!r}")
        self.flow_grace = flow_grace
        if isinstance(transfer_timeout, bool) or not isinstance(transfer_timeout, (int, float)) \
                or not (math.isfinite(transfer_timeout) and 0 < transfer_timeout <= 3600):
            raise ValueError(f"transfer_timeout must be a number of seconds above 0, "
                             f"not {transfer_timeout!r}")
        self.transfer_timeout = float(transfer_timeout)
        self.address: tuple[str, int] | None = None
        # tests may hand in listeners of their own (in-memory streams); else open() binds TCP
        self._given = listeners is not None
        self._listeners: list[trio.abc.Listener] = list(listeners or [])
        self._registry: PortRegistry | None = None
        self._monitors: set[_Line] = set()  # connections that asked for MWI ("monitor")
        #: ``await line_info(port, call_id, node) -> CallArrival``: the information of a call
        #: ringing on a given line (``"line": N``), from the PBX's data link (SMDI); None: the
        #: offer's own fields are used
        self.line_info: Callable[[str, str, str], Awaitable[CallArrival]] | None = None
        #: True: run the flow only for offers with "media": true (the messaging service sets
        #: it, so a signalling-only client keeps the old behaviour: the call is held)
        self.media_only = False
        #: the term the service answers in, or None (``MessagingService.answering_term``): a
        #: lamp job of any other term is refused; None here: no gate (a trunk without service)
        self.gate: Callable[[], int | None] | None = None
        #: failures of the accept loop and of connections (the service puts its own here)
        self.task_failures = TaskFailures(python_logger(log))

    async def _monitor(self, line: "_Line") -> None:
        """The simulated PBX's MWI side: ``{"op": "monitor"}`` gets ``{"ev": "monitoring"}``,
        then one ``{"ev": "mwi", ...}`` line per lamp job, until the client closes.  It is a
        monitor before ``monitoring`` goes out: every job sent after the client read that line
        reaches it."""
        try:
            async with line.lock:  # "monitoring" goes out before any job
                self._monitors.add(line)
                await line.stream.send_all(_line_bytes(ev="monitoring"))
            while await line.read() is not None:
                pass  # nothing is expected from a monitor; its lines are ignored
        finally:
            self._monitors.discard(line)

    async def send_mwi(self, job) -> None:
        """Send a lamp job (``telephony.core.mwi.MwiJob``) to every monitor; raises
        :class:`~telephony.core.mwi.TransmitRefused` (nothing sent) unless the service is active in
        the job's term, ConnectionError when no monitor got it (the MWI ledger then keeps the
        lamp unconfirmed)."""
        if self.gate is not None:
            require_term(self.gate(), job, f"lamp job for {job.extension}")
        sent = 0
        for line in list(self._monitors):
            try:
                await line.reply(ev="mwi", extension=job.extension, mailbox=job.mailbox,
                                 on=job.on, new=job.new, old=job.old, term=job.term,
                                 reason=job.reason)
                sent += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._monitors.discard(line)
        if not sent:
            raise ConnectionError("no MWI monitor connected to the loopback trunk")

    def port_names(self) -> list[str]:
        return [f"loopback-{i}" for i in range(1, self.count + 1)]

    def register(self, registry: PortRegistry) -> None:
        self._registry = registry
        for name in self.port_names():
            registry.register(name, self.kind)

    async def open(self) -> tuple[str, int]:
        """Bind the listener (idempotent); returns the (host, port) actually bound."""
        if self._given:
            self.address = self.address or ("memory", 0)
        elif not self._listeners:
            listeners = await listen_tcp("ports.loopback.listen", self.host, self.port)
            sockname = listeners[0].socket.getsockname()
            self._listeners = list(listeners)
            self.address = (sockname[0], sockname[1])
        assert self.address is not None
        return self.address

    async def run(self, service: CallService, *,
                  task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        if self._registry is None:
            raise RuntimeError("register() the trunk before running it")
        await self.open()
        registry = self._registry
        try:
            async with trio.open_nursery() as nursery:
                for listener in self._listeners:
                    nursery.start_soon(self._accept_loop, listener, service, nursery)
                registry.set_state(self.kind, PortState.IDLE)
                log.info("loopback trunk listening on %s:%d with %d ports",
                         *(self.address or ("?", 0)), self.count)
                task_status.started(self.address)
        finally:
            registry.set_state(self.kind, PortState.DOWN)
            with trio.CancelScope(shield=True):
                for listener in self._listeners:
                    await listener.aclose()
            if not self._given:
                self._listeners = []

    async def _accept_loop(self, listener: trio.abc.Listener, service: CallService,
                           nursery: trio.Nursery) -> None:
        """Accept for ever.  A failed accept (EMFILE and friends, anything else) is recorded
        (task ``loopback-accept``) and followed by a growing delay, never the end of the
        listener; the ports stay usable for the connections already open."""
        backoff = Backoff(first=0.1, cap=5.0, healthy_after=0.0)
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                raise  # the trunk is stopping
            except Exception as exc:  # noqa: BLE001 - back off rather than spin or die
                delay = backoff.next(0.0)
                self.task_failures.failed("loopback-accept", exc, retry_in=delay)
                await trio.sleep(delay)
                continue
            backoff.reset()
            nursery.start_soon(self._guarded, stream, service)

    async def _guarded(self, stream: trio.abc.Stream, service: CallService) -> None:
        """One bad connection must not take the service (and its other calls) down: what
        escapes its handler is recorded (task ``loopback-connection``)."""
        await contained("loopback-connection", self.task_failures, self.handle_connection,
                        stream, service)

    # ------------------------------------------------------------------ one connection

    async def handle_connection(self, stream: trio.abc.Stream, service: CallService) -> None:
        """Serve one client connection: one call (see the module docstring)."""
        line = _Line(stream, self.max_line)
        active: ActiveCall | None = None
        decided = False  # a final reply to the offer (answered/rejected) went out
        client_gone = False
        try:
            fields = await self._read_offer(line, service)
            if fields is None:
                return
            if fields is _MONITOR:
                await self._monitor(line)
                return
            media = self.media_only is False or bool(line.media)
            assert self._registry is not None
            wanted = fields.pop("line", None)
            if wanted is not None:  # a ring on that very line (a voice board's port)
                port = self._registry.claim_port(f"loopback-{wanted}")
            else:
                port = self._registry.claim(self.kind)
            if port is None:
                log.info("call %s rejected: %s busy", fields["call_id"],
                         f"line {wanted}" if wanted is not None else f"all {self.count} loopback ports")
                decided = True
                await line.reply(ev="rejected", reason="busy")
                return
            try:
                if wanted is not None and self.line_info is not None:
                    # the line carries no numbers: the call's information comes from the
                    # PBX's data link (an SMDI record for this line's terminal)
                    arrival = await self.line_info(port.name, fields["call_id"], service.node)
                else:
                    arrival = CallArrival(node=service.node, port=port.name,
                                          integration=self.profile.name, **fields)
            except BaseException:  # checked in _read_offer; the node name is the service's own
                port.state = PortState.IDLE
                raise
            decision = await service.offer(arrival)
            decided = True
            if not decision.answered:
                await line.reply(ev="rejected", reason=decision.reason)
                return
            active = decision.call
            assert active is not None
            await line.reply(ev="answered", node=arrival.node, port=arrival.port,
                             term=decision.term)
            if self.flow is None or not media:
                client_gone = await self._in_call(line, active, service)
            else:
                client_gone = await self._in_call_flow(line, active, service)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            # the client's connection broke or was reset (alone, or from a nursery's child)
            client_gone = True
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.cleanup_timeout
                if active is not None and not active.finished:
                    # the client vanished (ended) or the service is stopping (dropped)
                    await service.end_call(active, "ended" if client_gone else "dropped")
                if not client_gone:
                    if active is not None and active.dropped.is_set() and not line.dropped_sent \
                            and not line.final_sent:
                        await line.try_reply(ev="dropped")
                    elif line.offered and not decided:  # stopped while the offer was held
                        await line.try_reply(ev="rejected", reason="shutdown")
                await line.aclose()

    async def _read_offer(self, line: _Line, service: CallService) -> dict[str, Any] | None:
        while True:
            msg = await line.read()
            if msg is None:
                return None
            op = msg["op"]
            if op == "monitor" and not line.offered:
                return _MONITOR
            if op != "offer":
                hint = "no call in progress" if op in ("hangup", "audio", "dtmf") \
                    else f"unknown op {op!r:.40}"
                await line.reply(ev="error", message=f"{hint}; send an offer first")
                continue
            try:
                fields = self._offer_fields(msg)
                CallArrival(node=service.node, port="check", integration=self.profile.name,
                            **{k: v for k, v in fields.items() if k != "line"})
            except ValueError as exc:
                await line.reply(ev="error", message=f"bad offer: {exc}")
                continue
            line.offered = True
            line.media = msg.get("media", False)
            return fields

    def _offer_fields(self, msg: dict[str, Any]) -> dict[str, Any]:
        unknown = set(msg) - _OFFER_FIELDS - {"op"}
        if unknown:
            raise ValueError(f"unknown fields {', '.join(sorted(unknown))}")
        if "call_id" not in msg:
            raise ValueError("call_id is missing")
        if not isinstance(msg.get("media", False), bool):
            raise ValueError("media must be true or false")
        fields: dict[str, Any] = {"call_id": msg["call_id"], "reason": msg.get("reason", "direct")}
        if "line" in msg:
            n = msg["line"]
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.count:
                raise ValueError(f"line must be a port number 1..{self.count}")
            fields["line"] = n
        for name in ("calling", "called", "forwarding"):
            value = msg.get(name, "")
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
            fields[name] = self.profile.normalise(name, value)
        return fields

    async def _in_call(self, line: _Line, active: ActiveCall, service: CallService) -> bool:
        """Serve the call until it ends; True if the client connection broke."""
        gone = False
        async with trio.open_nursery() as nursery:

            async def watch_drop() -> None:
                await active.dropped.wait()
                # shielded: a shutdown that cancels us right after the drop must not cut the
                # line in half; the client gets the whole {"ev": "dropped"}
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self.cleanup_timeout
                    await line.try_reply(ev="dropped")
                    line.dropped_sent = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_drop)
            # errors are caught here, inside the nursery, so they do not become groups
            try:
                while True:
                    msg = await line.read()
                    if active.finished:  # the service hung up first: watch_drop replies
                        break
                    if msg is None:  # the client closed the connection: the call is over
                        await service.end_call(active, "ended")
                        break
                    if msg["op"] == "hangup":
                        await service.end_call(active, "ended")
                        await line.reply(ev="ended")
                        break
                    await line.reply(ev="error", message=f"unknown op {msg['op']!r:.40} "
                                     'during a call; send {"op": "hangup"}')
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                gone = True
            if not active.dropped.is_set():
                nursery.cancel_scope.cancel()
        return gone

    async def _in_call_flow(self, line: _Line, active: ActiveCall, service: CallService) -> bool:
        """Serve a call with a flow until the caller's side is over and the flow is done (or
        ``flow_grace`` has passed since the caller's side ended); True if the client
        connection broke."""
        assert self.flow is not None
        flow = self.flow
        port = LoopbackPort(line, realtime=self.realtime, play_chunk=self.play_chunk,
                            silence_threshold=self.silence_threshold,
                            send_timeout=self.cleanup_timeout,
                            transfer_timeout=self.transfer_timeout)
        arrival = active.arrival
        gone = False
        flow_done = trio.Event()
        reader = trio.CancelScope()

        def linger() -> None:
            # the service ended the call: read (and ignore) what the client sent meanwhile,
            # for a while, so that closing does not reset the connection under its feet
            reader.deadline = min(reader.deadline, trio.current_time() + self.cleanup_timeout)

        port._on_service_end = linger
        async with trio.open_nursery() as nursery:

            async def watch_drop() -> None:
                await active.dropped.wait()
                if port._ended_by is None:  # the caller's side was still up
                    port._end("dropped")
                    with trio.CancelScope(shield=True) as scope:
                        scope.deadline = trio.current_time() + self.cleanup_timeout
                        await line.try_reply(ev="dropped")
                        line.dropped_sent = True
                    linger()

            async def run_flow() -> None:
                try:
                    try:
                        await flow(arrival, port, active.term)
                    except Exception:
                        log.exception("call flow of %s failed", arrival.summary())
                    if not active.dropped.is_set():  # else watch_drop has the last word
                        await port.hangup()  # shielded, bounded by cleanup_timeout
                except BaseException:
                    port._end("dropped")  # cancelled: the trunk is stopping (no-op if over)
                    raise
                finally:
                    flow_done.set()

            nursery.start_soon(watch_drop)
            nursery.start_soon(run_flow)
            with reader:
                try:
                    while True:
                        msg = await line.read()
                        if msg is None:  # the client closed the connection
                            port._end("caller")
                            break
                        try:
                            kind, value = parse_call_op(msg)
                        except ValueError as exc:
                            if port._ended_by is None:
                                await line.reply(ev="error", message=str(exc))
                            continue
                        if kind == "hangup":
                            if port._ended_by is None:
                                port._end("caller")
                                await line.reply(ev="ended")
                                line.final_sent = True
                            break
                        if port._ended_by is not None:
                            continue  # the call is over: drained and ignored
                        try:
                            if kind == "audio":
                                port._feed_audio(value)
                            elif kind == "transfer":
                                port._feed_transfer(value)
                            else:
                                port._feed_digit(value)
                        except ValueError as exc:
                            await line.reply(ev="error", message=str(exc))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    gone = True
                    port._end("caller")
            # the caller's side is over; the flow may still be storing the message
            with trio.move_on_after(self.flow_grace) as grace:
                await flow_done.wait()
            if grace.cancelled_caught:
                log.warning("call flow of %s still running %gs after the call ended: "
                            "cancelled", arrival.summary(), self.flow_grace)
            nursery.cancel_scope.cancel()
        if not active.finished:
            await service.end_call(active, "ended")
        return gone


class LoopbackPort:
    """The media side of one loopback call: a ``telephony.core.callflow.CallPort`` (and an
    ``Announcer``).  The trunk feeds it the client's audio and digits; the flow calls
    :meth:`play`, :meth:`record`, :meth:`collect_digits`, :meth:`transfer`,
    :meth:`hangup`."""

    def __init__(self, line: _Line, *, realtime: bool = True,
                 play_chunk: int = media.FRAME_BYTES,
                 silence_threshold: float = media.SILENCE_THRESHOLD,
                 send_timeout: float = 1.0, transfer_timeout: float = 10.0) -> None:
        self._line = line
        self.transfer_timeout = transfer_timeout
        #: a transfer waiting for the client's answer: None (none asked), "pending", or its
        #: answer True / False
        self._transfer: bool | str | None = None
        self.send_timeout = send_timeout  # bounds the (shielded) hangup lines
        self.realtime = realtime
        self.play_chunk = play_chunk
        self.silence_threshold = silence_threshold
        self._digits: deque[str] = deque()
        self._changed = trio.Event()
        self._recorder: media.Recorder | None = None
        self._last_audio = 0.0
        #: who ended the call: "caller", "service" or "dropped"; None while it is up
        self._ended_by: str | None = None
        self._on_service_end: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ trunk side

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _end(self, by: str) -> None:
        if self._ended_by is None:
            self._ended_by = by
            self._wake()

    def _feed_audio(self, pcm: bytes) -> None:
        rec = self._recorder
        if rec is None or rec.reason is not None:
            return  # not recording: the caller's audio goes nowhere
        self._last_audio = trio.current_time()
        talking = rec.speech_started
        if rec.feed(pcm) is not None or rec.speech_started is not talking:
            self._wake()  # over, or the silence timer of record() starts now

    def _feed_transfer(self, ok: bool) -> None:
        if self._transfer != "pending":
            raise ValueError("no transfer was asked for")
        self._transfer = ok
        self._wake()

    def _feed_digit(self, digit: str) -> None:
        if len(self._digits) >= MAX_PENDING_DIGITS:
            raise ValueError(f"{MAX_PENDING_DIGITS} digits are already waiting; "
                             f"{digit!r} is dropped")
        self._digits.append(digit)
        self._wake()

    async def _send(self, **msg: Any) -> bool:
        if self._ended_by is not None:
            return False
        try:
            await self._line.reply(**msg)
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._end("caller")
            return False

    # ------------------------------------------------------------------ CallPort

    @property
    def hung_up(self) -> bool:
        return self._ended_by is not None

    @property
    def ended_by(self) -> str | None:
        """"caller", "service" (the flow hung up), "transferred" or "dropped"; None while
        the call is up."""
        return self._ended_by

    async def announce(self, event: str, **fields: int | str) -> None:
        """Send a structured event (``beep``, ``messages``) alongside the audio."""
        if event not in ANNOUNCEMENTS:
            raise ValueError(f"cannot announce {event!r:.40}; only {sorted(ANNOUNCEMENTS)}")
        for k, v in fields.items():
            if k in ("ev", "op") or isinstance(v, bool) or not isinstance(v, (int, str)):
                raise ValueError(f"announcement field {k}={v!r:.40} must be a string or int")
        await self._send(ev=event, **fields)

    async def play(self, wav: bytes, *, interruptible: bool = True) -> str | None:
        pcm = media.pcm_of(wav)
        if self.hung_up:
            return None
        if interruptible and self._digits:  # typed ahead: the play ends before it starts
            digit = self._digits.popleft()
            await self._send(ev="play_end", digit=digit)
            return digit
        start = trio.current_time()
        sent = 0
        for chunk in media.frames(pcm, self.play_chunk):
            if not await self._send(ev="play", audio=base64.b64encode(chunk).decode("ascii")):
                return None
            sent += len(chunk)
            if self.realtime:
                deadline = start + sent / media.BYTES_PER_SECOND
                while trio.current_time() < deadline:
                    changed = self._changed
                    if self.hung_up or (interruptible and self._digits):
                        break
                    with trio.move_on_at(deadline):
                        await changed.wait()
            else:
                await trio.lowlevel.checkpoint()
            if self.hung_up:
                return None
            if interruptible and self._digits:
                digit = self._digits.popleft()
                await self._send(ev="play_end", digit=digit)
                return digit
        await self._send(ev="play_end")
        return None

    async def record(self, *, max_seconds: float, silence_seconds: float) -> tuple[bytes, str]:
        rec = media.Recorder(max_seconds=max_seconds, silence_seconds=silence_seconds,
                             threshold=self.silence_threshold)
        if self.hung_up:
            return media.wav_bytes(b""), "hangup"
        self._digits.clear()
        start = self._last_audio = trio.current_time()
        self._recorder = rec
        reason = "hangup"
        try:
            if await self._send(ev="record_start"):
                while True:
                    changed = self._changed
                    if rec.reason is not None:
                        reason = rec.reason
                        break
                    if self.hung_up:
                        reason = "hangup"
                        break
                    if self._digits:
                        self._digits.popleft()
                        reason = "dtmf"
                        break
                    now = trio.current_time()
                    deadline = start + max_seconds
                    if rec.speech_started:
                        deadline = min(deadline, self._last_audio + silence_seconds)
                    if now >= deadline:
                        reason = "max" if now >= start + max_seconds else "silence"
                        break
                    with trio.move_on_at(deadline):
                        await changed.wait()
        finally:
            self._recorder = None
        pcm = rec.finish()
        if not self.hung_up:
            await self._send(ev="record_end", reason=reason)
        return media.wav_bytes(pcm), reason

    async def collect_digits(self, *, max_digits: int, timeout: float,
                             terminator: str = "#") -> str:
        if isinstance(max_digits, bool) or not isinstance(max_digits, int) \
                or not 1 <= max_digits <= 64:
            raise ValueError(f"max_digits must be an integer from 1 to 64, got {max_digits!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a number of seconds above 0, got {timeout!r}")
        if terminator and (len(terminator) != 1 or terminator not in DTMF_DIGITS):
            raise ValueError(f"terminator must be one DTMF digit or '', got {terminator!r:.20}")
        out = ""
        deadline = trio.current_time() + timeout
        while len(out) < max_digits:
            changed = self._changed
            if self._digits:
                digit = self._digits.popleft()
                if terminator and digit == terminator:
                    break
                out += digit
                deadline = trio.current_time() + timeout
                continue
            if self.hung_up or trio.current_time() >= deadline:
                break
            with trio.move_on_at(deadline):
                await changed.wait()
        return out

    async def transfer(self, destination: str) -> bool:
        check_destination(destination)
        if self.hung_up:
            return False
        self._transfer = "pending"
        try:
            if not await self._send(ev="transfer", to=destination):
                return False
            with trio.move_on_after(self.transfer_timeout):
                while self._transfer == "pending" and not self.hung_up:
                    await self._changed.wait()
            if self._transfer is not True or self.hung_up:
                return False
        finally:
            self._transfer = None
        # the PBX has the call: the voice mail's part is over
        self._end("transferred")
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.send_timeout
            try:
                await self._line.reply(ev="ended", transferred=destination)
                self._line.final_sent = True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        self._on_service_end()
        return True

    async def hangup(self) -> None:
        if self._ended_by is not None:
            return
        self._end("service")
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.send_timeout
            try:
                await self._line.reply(ev="hangup")
                await self._line.reply(ev="ended")
                self._line.final_sent = True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        self._on_service_end()


def _line_bytes(**msg: Any) -> bytes:
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class _Line:
    """JSON lines on one client connection; reads are bounded, replies are serialised."""

    def __init__(self, stream: trio.abc.Stream, max_line: int) -> None:
        self.stream = stream
        self.conn = ControlConnection(max_line)
        self.lock = trio.Lock()
        self.offered = False
        self.media = False
        self.dropped_sent = False
        self.final_sent = False  # ended went out (flow calls)
        self._eof = False

    async def read(self) -> dict[str, Any] | None:
        """The next message with an "op", or None at end of stream (or after an over-long
        line, which is answered with an error)."""
        while True:
            try:
                ev = self.conn.next_event()
            except FramingError as exc:
                await self.reply(ev="error", message=f"{exc}; closing the connection")
                return None
            if ev is NEED_DATA:
                data = await self.stream.receive_some(65536)
                self.conn.receive_data(data)
                continue
            if isinstance(ev, Closed):
                return None
            if isinstance(ev, ControlError):
                await self.reply(ev="error", message=f"bad line: {ev.reason}")
                continue
            return ev

    async def reply(self, **msg: Any) -> None:
        data = _line_bytes(**msg)
        async with self.lock:
            await self.stream.send_all(data)

    async def try_reply(self, **msg: Any) -> None:
        try:
            await self.reply(**msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass

    async def aclose(self) -> None:
        await self.stream.aclose()
