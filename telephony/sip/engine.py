"""The SIP worker's pjsua2 engine: every pjsua2 object of a worker process (endpoint, accounts,
calls, media players and recorders) and what is done with them.  Every method runs on the pj
thread (:class:`telephony.sip.pjthread.PjThread` drives :meth:`Engine.start`,
:meth:`Engine.poll` and :meth:`Engine.close`, and runs the ops the Trio side hands over with
:meth:`Engine.dispatch`); the engine reports with ``emit`` (events of
:mod:`telephony.sip.core.worker_protocol`).  The pjsua2 subclasses that bring pj's callbacks
here are in :mod:`telephony.sip.pjclasses`, the C functions pjsua2 does not wrap in
:mod:`telephony.sip.pjcapi`.

Recorder flushing (measured here, pjsua2-python 2.15.1.post1, 8 kHz 16-bit = 16,000 bytes/s):
pjmedia's WAV writer buffers 4000 bytes (``PJMEDIA_FILE_PORT_BUFSIZE``, 250 ms) and its file
I/O goes through stdio's 4096-byte buffer, so the file on disk is EMPTY for the first ~0.5 s
and then grows in steps of exactly 4096 bytes, one every ~256 ms (sizes 4096, 8192, ... at
0.49, 0.73, 0.97, 1.21 s after ``record``).  The 44-byte header is in the first step, with its
RIFF and data lengths 0 until the recorder is closed.  So a tail reader sees a sample 0.25 to
0.5 s after it was heard, must read raw 16-bit PCM from byte 44 on and ignore the header's
lengths.  Closing is asynchronous (the 2.14+ conference bridge removes ports on its clock
thread, a frame later): ``recorded`` is sent once the file is closed and its header holds the
final lengths, and ``bytes`` is then the whole file (44 + 2 * samples).

Waiting (docs/sip.md): :meth:`Engine.poll` waits in ``libHandleEvents`` for up to
:data:`IDLE_WAIT_MS` while nothing is to be checked (pjsip shortens the wait to its own next
timer: retransmissions, re-REGISTER), up to the next 480 deadline while a call rings, and
:data:`BUSY_WAIT_MS` only while a recorder's file is closing or the sound clock is waiting to
stop.  :meth:`Engine.wake` (any thread) sends a 4-byte CRLF keep-alive datagram to the worker's
own SIP UDP transport: pjsip's UDP transport drops any datagram of 32 bytes or less before
parsing or logging it and answers nothing (``udp_on_read_complete``, pjsip 2.15.1), but the
ioqueue wait returns, so a queued job runs at once.

The sound clock: pjmedia's null sound device is a clock thread ticking the conference bridge
every 20 ms.  The worker keeps it off (``setNoDev``) while there is no call, switches it on
(``setNullDev``, ~0.1 ms) when an INVITE arrives (before the call can have media) and off again
once no call, no closing recorder and no bridge port but the master's has been left for
:data:`CLOCK_LINGER` (``mediaActivePorts() == 1``: the bridge removes ports on its clock, so it
must tick until every removal is done; the linger keeps the ~20 ms stop away from busy times).
pjsua's own auto-close (``sndAutoCloseTime``) stays off: it leaked a conference slot per call.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from telephony.sip.core.worker_protocol import (
    MAX_WHEEL_CALLS,
    NO_ANSWER_TIMEOUT,
    NOTIFY_WAIT,
    RAW_LIMIT,
    RTP_PORTS_PER_CALL,
    OpError,
    clean_text,
    dtmf_from_info,
    is_plain_dtmf_info,
    request_uri_of,
)
from telephony.sip.pjcapi import PjsipCApi
from telephony.sip.pjclasses import pj, pj_classes, pj_message
from telephony.sip.pjthread import PjThread, Waker, endpoint_config

__all__ = ["CallState", "Engine", "Options", "wav_complete"]

log = logging.getLogger(__name__)

HANGUP_WAIT = 2.0            # s shutdown waits for calls to disconnect
UNREGISTER_WAIT = 1.5        # s shutdown waits for un-REGISTER answers
RECORDER_CLOSE_WAIT = 2.0    # s to wait for a destroyed recorder's file to be complete
IDLE_WAIT_MS = 10_000        # longest wait in libHandleEvents (a job or a packet ends it)
BUSY_WAIT_MS = 10            # while polling for a recorder's file or the bridge to empty
CLOCK_LINGER = 2.0           # s the clock runs on once idle (stopping it blocks ~20 ms)


def wav_complete(path: str) -> tuple[bool, int]:
    """(header final, file size): pjmedia's WAV writer fills in the RIFF and data lengths
    only when it closes the file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(44)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return True, 0
    if len(head) < 44 or head[:4] != b"RIFF":
        return False, size
    riff = int.from_bytes(head[4:8], "little")
    return riff == size - 8 and riff > 36, size


@dataclass
class CallState:
    """One call of the worker, from its INVITE until its ``disconnected`` was sent."""

    wid: str
    pj_id: int
    call: Any                      # the pj.Call; None once DISCONNECTED (reference dropped)
    acc: Any                       # the pj.Account it came in on
    account: str
    sip_call_id: str
    deadline: float | None         # monotonic time of the 480, while not answered
    answered: bool = False
    local_end: bool = False        # we hung up / rejected
    audio: Any = None              # the call's AudioMedia while media is active
    media_sent: bool = False
    players: dict[int, Any] = field(default_factory=dict)
    recorders: dict[int, tuple[Any, str]] = field(default_factory=dict)
    ended: bool = False
    end_code: int = 0
    end_reason: str = ""
    reported_end: bool = False
    closing_recs: list[tuple[int, str, float]] = field(default_factory=list)
    transfer: int | None = None    # id of the transfer waiting for its final status
    transfer_accepted: bool = False  # its REFER got a 2xx (or a NOTIFY came)


@dataclass
class Options:
    """A worker's settings (its command line: :func:`telephony.sip.worker.parse_args`)."""

    control: str
    name: str
    bind: str
    sip_port: int
    rtp_port: int
    ports: int
    media_dir: str
    mode: str = "trunk"
    registrar: str | None = None
    users: list[str] = field(default_factory=list)
    password: str | None = None
    reg_expires: int = 300
    tsx_timeout: int | None = None
    answer_timeout: float = NO_ANSWER_TIMEOUT
    log_level: int = 2


class Engine:
    """All pjsua2 state.  Every method runs on the pj thread (see pjthread.py)."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.pjt: PjThread | None = None
        self.ep: Any = None
        self.accounts: list[Any] = []
        self.notifier: Any = None          # the account of NOTIFYs with other From URIs
        self.calls: dict[str, CallState] = {}
        self.by_pj: dict[int, str] = {}
        self.seq = 0
        self.dead: list[Any] = []          # pj objects dropped in callbacks, freed next poll
        self.notifies: dict[int, tuple[int, Any, Any]] = {}  # token address -> (id, token, acc)
        self.finishing: set[str] = set()   # calls with recorders still closing
        self.ending: dict[str, CallState] = {}
        self.closing = False
        self.closed = False
        self.destroyed = False
        self.started = False
        self._log_writer: Any = None
        self._c_api: PjsipCApi | None = None
        self.clock_on = False              # the null sound device (the bridge's clock) runs
        self.clock_starts = 0
        self.clock_idle_at: float | None = None   # when the bridge was last seen empty
        self._waker: Waker | None = None
        self.rtp_range = (opts.rtp_port, opts.rtp_port + RTP_PORTS_PER_CALL * opts.ports - 1)

    # ------------------------------------------------------------------ plumbing

    def emit(self, ev: str, **fields: Any) -> None:
        assert self.pjt is not None
        self.pjt.emit({"ev": ev, **fields})

    def guard(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run a callback body; nothing escapes into pj."""
        try:
            fn(*args)
        except Exception:
            log.exception("callback %s failed", what)

    def on_pj(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run now if on the pj thread, else queue it there (media/clock-thread callbacks)."""
        assert self.pjt is not None
        if self.pjt.on_pj_thread():
            self.guard(getattr(fn, "__name__", "job"), fn, *args)
        else:
            self.pjt.submit(fn, *args)

    def c_api(self) -> PjsipCApi:
        """The pjsip C functions pjsua2 does not wrap (loaded on first use)."""
        if self._c_api is None:
            self._c_api = PjsipCApi(pj._pjsua2.__file__)
        return self._c_api

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        o = self.opts
        classes = pj_classes()
        ep = classes.Endpoint(self)
        self.ep = ep
        ep.libCreate()
        cfg = endpoint_config(pj, max_calls=min(o.ports, MAX_WHEEL_CALLS),
                              user_agent="vmha-sip-worker", log_level=o.log_level)
        self._log_writer = classes.LogWriter()
        cfg.logConfig.writer = self._log_writer
        ep.libInit(cfg)
        if o.tsx_timeout:
            self.c_api().set_tsx_timeout(o.tsx_timeout)
        ep.audDevManager().setNoDev()          # the clock runs only while a call is up
        tcfg = pj.TransportConfig()
        tcfg.port = o.sip_port
        tcfg.boundAddress = o.bind
        tcfg.publicAddress = o.bind
        self.tid = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        self._waker = Waker(o.bind, o.sip_port)
        ep.libStart()
        for codec, prio in (("PCMU/8000", 255), ("PCMA/8000", 254)):
            try:
                ep.codecSetPriority(codec, prio)
            except Exception:
                log.warning("codec %s not available", codec)
        if o.mode == "trunk":
            self._add_account(o.name, f"sip:{o.name}@{o.bind}:{o.sip_port}", None)
        else:
            assert o.registrar is not None
            host = o.registrar.split(":", 1)[1].split(";", 1)[0]
            if "@" in host:
                host = host.split("@", 1)[1]
            host = host.rsplit(":", 1)[0] if not host.startswith("[") else host
            for user in o.users:
                self._add_account(user, f"sip:{user}@{host}", user)
        self.started = True

    def _add_account(self, name: str, uri: str, user: str | None) -> None:
        o = self.opts
        acfg = pj.AccountConfig()
        acfg.idUri = uri
        acfg.sipConfig.transportId = self.tid
        mt = acfg.mediaConfig.transportConfig
        mt.boundAddress = o.bind                 # gotcha 2: SDP must not leak another address
        mt.publicAddress = o.bind
        mt.port = o.rtp_port
        mt.portRange = RTP_PORTS_PER_CALL * o.ports
        acfg.mwiConfig.enabled = False
        if user is not None:
            acfg.regConfig.registrarUri = o.registrar
            acfg.regConfig.timeoutSec = o.reg_expires
            acfg.regConfig.retryIntervalSec = 30
            acfg.regConfig.unregWaitMsec = 1000
            if o.password is not None:
                acfg.sipConfig.authCreds.append(
                    pj.AuthCredInfo("digest", "*", user, 0, o.password))
        acc = pj_classes().Account(self, name)
        acc.uri = uri
        acc.create(acfg, not self.accounts)
        self.accounts.append(acc)

    def _notify_account(self, uri: str | None) -> Any:
        """The account a NOTIFY goes out from: its URI is the From.  ``Account.sendRequest``
        takes From from the account (``SipTxOption.localUri`` is ignored there), so a From
        URI that is none of the port accounts is sent from one extra non-registering account
        whose idUri is switched with ``Account.modify`` (measured: well under 1 ms; pending
        requests keep their From; 20 NOTIFYs with 20 From URIs at once all got 200).  One
        account for any number of From URIs: pjsua has 8 accounts at most (a 9th aborts)."""
        if not uri:
            return self.accounts[0]
        for acc in self.accounts:
            if acc.uri == uri:
                return acc
        acfg = pj.AccountConfig()
        acfg.idUri = uri
        acfg.sipConfig.transportId = self.tid
        mt = acfg.mediaConfig.transportConfig     # an INVITE may match its URI: same media
        mt.boundAddress = mt.publicAddress = self.opts.bind
        mt.port = self.opts.rtp_port
        mt.portRange = RTP_PORTS_PER_CALL * self.opts.ports
        acfg.mwiConfig.enabled = False
        acc = self.notifier
        if acc is None:
            acc = pj_classes().Account(self, self.accounts[0].name)
            acc.create(acfg, False)
            acc.uri = uri
            self.notifier = acc
        elif acc.uri != uri:
            acc.modify(acfg)
            acc.uri = uri
        return acc

    def wake(self) -> None:
        """End a waiting :meth:`poll` now (any thread; see the module docstring)."""
        if self._waker is not None:
            self._waker.wake()

    def wait_ms(self) -> int:
        """How long the next poll may wait (see the module docstring)."""
        if self.finishing or self.ending or any(st.closing_recs for st in self.calls.values()):
            return BUSY_WAIT_MS
        wait = IDLE_WAIT_MS
        now = time.monotonic()
        if self.clock_on and not self.calls:
            if self.clock_idle_at is None:
                return BUSY_WAIT_MS      # until the bridge is empty
            wait = max(0, int((self.clock_idle_at + CLOCK_LINGER - now) * 1000) + 1)
        for st in self.calls.values():
            if st.deadline is not None and not st.ended:
                wait = min(wait, max(0, int((st.deadline - now) * 1000) + 1))
        return wait

    def _idle_clock(self) -> None:
        """Stop the clock once the bridge has been empty for :data:`CLOCK_LINGER`: stopping
        joins pjmedia's clock thread (measured 17 ms, up to a 20 ms tick), a wait an INVITE
        of a busy worker must not meet; starting it again takes ~0.1 ms."""
        if self.calls or self.ending or self.finishing or self.dead \
                or self.ep.mediaActivePorts() > 1:
            self.clock_idle_at = None
            return
        now = time.monotonic()
        if self.clock_idle_at is None:
            self.clock_idle_at = now
        elif now - self.clock_idle_at >= CLOCK_LINGER:
            self.set_clock(False)

    def set_clock(self, on: bool) -> None:
        """Switch the null sound device (the conference bridge's 20 ms clock) on or off."""
        if on == self.clock_on:
            return
        adm = self.ep.audDevManager()
        if on:
            adm.setNullDev()
            self.clock_starts += 1
        else:
            adm.setNoDev()
        self.clock_on = on
        self.clock_idle_at = None

    def poll(self) -> None:
        self.dead.clear()
        self.ep.libHandleEvents(self.wait_ms())
        self._check_closing()
        if self.clock_on:
            self._idle_clock()
        if self.calls:
            now = time.monotonic()
            for st in list(self.calls.values()):
                if st.deadline is not None and now >= st.deadline and not st.ended:
                    st.deadline = None
                    log.info("%s not answered in %g s: 480", st.wid, self.opts.answer_timeout)
                    try:
                        self._hangup(st, 480)
                    except Exception:
                        log.exception("480 for %s failed", st.wid)

    def _check_closing(self) -> None:
        for wid in list(self.finishing):
            st = self.ending.get(wid)
            if st is None:
                self.finishing.discard(wid)
            else:
                self._check_recs(st)
        for wid in [w for w, st in self.ending.items() if st.reported_end]:
            del self.ending[wid]
        for st in list(self.calls.values()):
            if st.closing_recs:
                self._check_recs(st)

    def _spin(self, until: Callable[[], bool], seconds: float) -> bool:
        end = time.monotonic() + seconds
        while not until():
            if time.monotonic() >= end:
                return False
            self.dead.clear()
            self.ep.libHandleEvents(10)
            self._check_closing()
            assert self.pjt is not None
            self.pjt.run_pending_jobs()
        return True

    def close(self) -> None:
        """Graceful teardown on the pj thread (also after a failed start)."""
        self.closing = True
        if self.ep is None:
            return
        if not self.started:      # start() failed half-way
            try:
                self.ep.libDestroy()
                self.destroyed = True
            except Exception:
                log.exception("libDestroy after a failed start")
            return
        t0 = time.monotonic()
        try:
            for st in list(self.calls.values()):
                if not st.ended and st.call is not None:
                    try:
                        self._hangup(st, 503 if not st.answered else None)
                    except Exception:
                        log.exception("hang-up of %s failed", st.wid)
            self._spin(lambda: not self.calls, HANGUP_WAIT)
            for st in list(self.calls.values()):   # left over: tear down what we hold
                st.call = None
                self._end_call(st, 0, "worker shut down")
            self._spin(lambda: not self.finishing, RECORDER_CLOSE_WAIT + 0.5)
            registered = [a for a in self.accounts if a.registered]
            for acc in registered:       # un-REGISTER now, while events can still be reported
                try:
                    acc.setRegistration(False)
                except Exception as exc:
                    log.warning("un-REGISTER of %s: %s", acc.name, pj_message(exc))
                    acc.registered = False
            self._spin(lambda: not any(a.registered for a in registered), UNREGISTER_WAIT)
            self._spin(lambda: not self.notifies, max(0.0, NOTIFY_WAIT - (time.monotonic() - t0)))
        except Exception:
            log.exception("shutdown step failed")
        self.closed = True
        if self.notifies:
            for nid, _token, _acc in list(self.notifies.values()):
                self.emit("notify_result", id=nid, code=408, reason="worker shut down")
            log.warning("%d NOTIFY still pending: pj is left undestroyed", len(self.notifies))
            return                                      # gotcha 4: libDestroy would abort
        self.dead.clear()
        for acc in ([self.notifier] if self.notifier else []) + self.accounts:
            try:
                acc.shutdown()
            except Exception:
                log.exception("account shutdown failed")
        self.accounts.clear()
        self.notifier = None
        self.ep.libDestroy()
        self.ep = None
        self.destroyed = True
        waker, self._waker = self._waker, None
        if waker is not None:
            waker.close()

    # ------------------------------------------------------------------ incoming calls

    def on_incoming(self, acc: Any, prm: Any) -> None:
        pj_id = prm.callId
        old = self.by_pj.get(pj_id)
        if old is not None:  # never replace a live Call object (gotcha 3)
            log.error("pj call %d is still %s; ignoring the new INVITE", pj_id, old)
            return
        self.set_clock(True)      # before the call can have media; off again in poll()
        raw = clean_text(prm.rdata.wholeMsg)
        remote = clean_text(prm.rdata.srcAddress)
        call = pj_classes().Call(self, acc, pj_id)
        self.seq += 1
        wid = f"{self.opts.name}-{self.seq}"
        call.wid = wid
        ci = call.getInfo()
        st = CallState(wid=wid, pj_id=pj_id, call=call, acc=acc, account=acc.name,
                       sip_call_id=ci.callIdString,
                       deadline=time.monotonic() + self.opts.answer_timeout)
        self.calls[wid] = st
        self.by_pj[pj_id] = wid
        op = pj.CallOpParam()
        op.statusCode = 180
        try:
            call.answer(op)
        except Exception as exc:
            log.warning("180 for %s failed: %s", wid, pj_message(exc))
        self.emit("incoming", call=wid, sip_call_id=clean_text(ci.callIdString),
                  **{"from": clean_text(ci.remoteUri)}, to=clean_text(ci.localUri),
                  request_uri=request_uri_of(raw), raw=raw[:RAW_LIMIT], remote=remote,
                  account=acc.name)

    def on_rejected(self, prm: Any) -> None:
        self.emit("busy", sip_call_id=clean_text(prm.callId),
                  **{"from": clean_text(prm.remoteInfo)}, to=clean_text(prm.localInfo),
                  code=prm.statusCode, reason=clean_text(prm.reason))

    def on_call_state(self, call: Any) -> None:
        ci = call.getInfo()
        wid = getattr(call, "wid", None)
        st = self.calls.get(wid) if wid else None
        if st is None or st.call is not call:
            return
        if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            # drop the Call now, inside its DISCONNECTED callback (gotcha 3): pjsua may give
            # its id to the next INVITE before the next poll
            self.by_pj.pop(st.pj_id, None)
            st.call = None
            st.audio = None          # the slot is gone (or someone else's) from now on
            call.wid = None
            assert self.pjt is not None
            self.pjt.submit(self._end_call, st, ci.lastStatusCode, clean_text(ci.lastReason))

    def _end_call(self, st: CallState, code: int, reason: str) -> None:
        if st.ended:
            return
        st.ended = True
        st.end_code, st.end_reason = code, reason
        if st.transfer is not None:   # pjsua reports nothing for a call that is hanging up
            tid, st.transfer = st.transfer, None
            self.emit("transfer_result", call=st.wid, id=tid, code=487,
                      reason="call ended before the transfer's final status"
                             + (", REFER accepted" if st.transfer_accepted else ""))
        for pid in list(st.players):
            self._drop_player(st, pid)
            self.emit("played", call=st.wid, id=pid, how="stopped")
        self.calls.pop(st.wid, None)
        self.ending[st.wid] = st
        for rid in list(st.recorders):
            self._close_recorder(st, rid)
        self._check_recs(st)

    def on_media_state(self, call: Any) -> None:
        st = self.calls.get(getattr(call, "wid", None) or "")
        if st is None or st.call is not call:
            return
        ci = call.getInfo()
        audio = None
        for i, m in enumerate(ci.media):
            if m.type == pj.PJMEDIA_TYPE_AUDIO and m.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                audio = call.getAudioMedia(i)
                break
        st.audio = audio
        if audio is None:
            return
        for player in st.players.values():   # after a re-INVITE: connect again
            player.startTransmit(audio)
        for rec, _path in st.recorders.values():
            audio.startTransmit(rec)
        if not st.media_sent:
            st.media_sent = True
            self.emit("media", call=st.wid)

    def on_dtmf(self, wid: str | None, digit: str, via: str) -> None:
        st = self.calls.get(wid or "")
        if st is not None and not st.ended:
            self.emit("dtmf", call=st.wid, digit=digit, via=via)

    # ------------------------------------------------------------------ ops (from Trio)

    def _call(self, wid: str) -> CallState:
        if self.closing:
            raise OpError("the worker is shutting down")
        st = self.calls.get(wid)
        if st is None or st.ended or st.call is None:
            raise OpError(f"no call {wid!r:.70}")
        return st

    def _hangup(self, st: CallState, code: int | None) -> None:
        op = pj.CallOpParam()
        if code is not None:
            op.statusCode = code
        st.local_end = True
        st.deadline = None
        st.call.hangup(op)

    def op_answer(self, f: dict) -> None:
        st = self._call(f["call"])
        if st.answered:
            raise OpError(f"call {st.wid} is already answered")
        op = pj.CallOpParam()
        op.statusCode = 200
        st.call.answer(op)
        st.answered = True
        st.deadline = None

    def op_reject(self, f: dict) -> None:
        st = self._call(f["call"])
        if st.answered:
            raise OpError(f"call {st.wid} is answered: hang it up instead")
        self._hangup(st, f["code"])

    def op_hangup(self, f: dict) -> None:
        st = self._call(f["call"])
        self._hangup(st, None if st.answered else 603)

    def _path(self, path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(self.opts.media_dir, path)

    def _media_op(self, f: dict, what: str, running: str) -> tuple[CallState, int, str]:
        """The call, id and file of a ``play``/``record`` op, checked: the call has media and
        the id is not running yet (``running`` names the call's table of them)."""
        st = self._call(f["call"])
        if st.audio is None:
            raise OpError(f"call {st.wid} has no active media")
        if f["id"] in getattr(st, running):
            raise OpError(f"{what} {f['id']} is already running on {st.wid}")
        return st, f["id"], self._path(f["path"])

    def op_play(self, f: dict) -> None:
        st, pid, path = self._media_op(f, "play", "players")
        if not os.path.isfile(path):
            raise OpError(f"no such file: {path}")
        player = pj_classes().Player(self, st.wid, pid)
        player.createPlayer(path, pj.PJMEDIA_FILE_NO_LOOP)
        player.startTransmit(st.audio)
        st.players[pid] = player

    def on_player_eof(self, wid: str, pid: int, player: Any) -> None:
        st = self.calls.get(wid)
        if st is None or st.players.get(pid) is not player:
            return           # stopped or hung up already
        self._drop_player(st, pid)
        self.emit("played", call=wid, id=pid, how="eof")

    def _drop_player(self, st: CallState, pid: int) -> None:
        player = st.players.pop(pid)
        if st.audio is not None:
            try:
                player.stopTransmit(st.audio)
            except Exception as exc:
                log.debug("stopTransmit: %s", pj_message(exc))
        self.dead.append(player)   # freed at the next poll, outside any callback

    def op_stop_play(self, f: dict) -> None:
        st = self._call(f["call"])
        pid = f["id"]
        if pid not in st.players:
            raise OpError(f"no play {pid} on {st.wid}")
        self._drop_player(st, pid)
        self.emit("played", call=st.wid, id=pid, how="stopped")

    def op_record(self, f: dict) -> None:
        st, rid, path = self._media_op(f, "recording", "recorders")
        if not os.path.isdir(os.path.dirname(path) or "."):
            raise OpError(f"no such directory: {os.path.dirname(path)}")
        if any(os.path.abspath(p) == os.path.abspath(path) for _r, p in st.recorders.values()):
            raise OpError(f"{path} is being recorded already")
        rec = pj.AudioMediaRecorder()
        rec.createRecorder(path)
        st.audio.startTransmit(rec)
        st.recorders[rid] = (rec, path)

    def _close_recorder(self, st: CallState, rid: int) -> None:
        rec, path = st.recorders.pop(rid)
        if st.audio is not None:
            try:
                st.audio.stopTransmit(rec)
            except Exception as exc:
                log.debug("stopTransmit: %s", pj_message(exc))
        # Dropping the last reference destroys the recorder, but pjmedia's conference bridge
        # (2.14+) removes ports asynchronously: the WAV writer flushes, fixes the header and
        # closes the file a frame or two later, on the clock thread.  "recorded" waits for it.
        del rec
        st.closing_recs.append((rid, path, time.monotonic() + RECORDER_CLOSE_WAIT))
        self._check_recs(st)

    def _check_recs(self, st: CallState) -> None:
        """Emit "recorded" for recorders whose file is complete (then "disconnected" if the
        call ended and nothing is left)."""
        now = time.monotonic()
        for item in list(st.closing_recs):
            rid, path, deadline = item
            done, size = wav_complete(path)
            if done or now >= deadline:
                if not done:
                    log.warning("%s: header not final after %.1f s", path, RECORDER_CLOSE_WAIT)
                st.closing_recs.remove(item)
                self.emit("recorded", call=st.wid, id=rid, path=path, bytes=size)
        if st.ended and not st.closing_recs and not st.reported_end:
            st.reported_end = True
            self.finishing.discard(st.wid)
            self.emit("disconnected", call=st.wid, code=st.end_code, reason=st.end_reason,
                      by="local" if st.local_end else "remote")
        elif st.closing_recs:
            self.finishing.add(st.wid)

    def op_stop_record(self, f: dict) -> None:
        st = self._call(f["call"])
        rid = f["id"]
        if rid not in st.recorders:
            raise OpError(f"no recording {rid} on {st.wid}")
        self._close_recorder(st, rid)

    def op_notify(self, f: dict) -> None:
        if self.closing:
            raise OpError("the worker is shutting down")
        if any(nid == f["id"] for nid, _t, _a in self.notifies.values()):
            raise OpError(f"notify {f['id']} is still pending")
        prm = pj.SendRequestParam()
        prm.method = "NOTIFY"
        prm.txOption.targetUri = f["target"]
        acc = self._notify_account(f["account"])
        prm.txOption.contentType = f["content_type"]
        prm.txOption.msgBody = f["body"]
        for name, value in f["headers"]:
            h = pj.SipHeader()
            h.hName = name
            h.hValue = value
            prm.txOption.headers.append(h)
        token = pj.SipHeader()   # any pj object: its address names this request
        prm.userData = token
        acc.sendRequest(prm)
        self.notifies[int(token.this)] = (f["id"], token, acc)

    def op_transfer(self, f: dict) -> None:
        st = self._call(f["call"])
        if not st.answered:
            raise OpError(f"call {st.wid} is not answered: a transfer needs an answered call")
        if st.transfer is not None:
            raise OpError(f"transfer {st.transfer} is still pending on {st.wid}")
        st.transfer, st.transfer_accepted = f["id"], False
        try:
            st.call.xfer(f["target"], pj.CallOpParam(True))
        except Exception:
            if st.transfer == f["id"]:     # no result was reported: the op failed
                st.transfer = None
                raise
            log.warning("%s: transfer %s reported before xfer() returned an error", st.wid,
                        f["id"])
            return
        log.info("%s: transfer %s: REFER to %s", st.wid, f["id"], f["target"])

    def on_transfer_status(self, call: Any, prm: Any) -> None:
        """``Call.onCallTransferStatus`` (pj thread): pjsua reports 100 "Accepted" for the
        REFER's 2xx, the sipfrag status of each NOTIFY, the REFER's final status when it is
        refused, 200 for ``Refer-Sub: false`` and 500 for a subscription ended without one;
        ``finalNotify`` when the subscription is over.  Nothing comes once the call is
        hanging up (then :meth:`_end_call` reports 487)."""
        st = self.calls.get(getattr(call, "wid", None) or "")
        code, final = int(prm.statusCode), bool(prm.finalNotify)
        reason = clean_text(prm.reason)
        if st is None or st.call is not call or st.ended or st.transfer is None:
            prm.cont = False
            return
        if not final and code < 200:     # accepted, or a provisional NOTIFY: wait on
            st.transfer_accepted = True
            return
        tid, st.transfer = st.transfer, None
        prm.cont = False                 # no more reports for this REFER
        log.info("%s: transfer %s: %d %s%s", st.wid, tid, code, reason,
                 "" if final else " (subscription still active)")
        self.emit("transfer_result", call=st.wid, id=tid, code=code, reason=reason)
        if 200 <= code < 300:
            assert self.pjt is not None
            self.pjt.submit(self._hang_up_transferred, st)   # not inside pjsua's callback

    def _hang_up_transferred(self, st: CallState) -> None:
        """RFC 5589: after a successful transfer the transferor sends BYE."""
        if st.ended or st.call is None:
            return                       # the far end hung up first
        try:
            self._hangup(st, None)
        except Exception as exc:
            log.warning("BYE after the transfer of %s failed: %s", st.wid, pj_message(exc))

    def on_send_request(self, prm: Any) -> None:
        key = int(prm.userData) if prm.userData is not None else None
        entry = self.notifies.get(key) if key is not None else None
        if entry is None:
            return
        tsx = prm.e.body.tsxState.tsx
        code = tsx.statusCode
        if code < 200:
            return
        del self.notifies[key]
        self.emit("notify_result", id=entry[0], code=code, reason=clean_text(tsx.statusText))

    def op_stats(self, f: dict) -> dict:
        return {"ev": "stats", "calls": len(self.calls), "media_ports": self.ep.mediaActivePorts(),
                "pending_notifies": len(self.notifies), "clock": self.clock_on,
                "clock_starts": self.clock_starts}

    def on_reg_state(self, acc: Any, prm: Any) -> None:
        code = prm.code
        expires = prm.expiration
        if 200 <= code < 300:
            state = "registered" if expires > 0 else "unregistered"
        else:
            state = "failed"
        acc.registered = state == "registered"
        self.emit("registration", account=acc.name, state=state, code=code,
                  reason=clean_text(prm.reason),
                  expires=expires)

    def on_info(self, wid: str | None, raw: str, tsx_ptr: int, rdata_ptr: int) -> None:
        """An INFO in a call, still unanswered (Trying).  pjsua answers and reports
        application/dtmf-relay itself (onDtmfDigit); application/dtmf is answered 200 here."""
        if not is_plain_dtmf_info(raw):
            return
        if not self.c_api().respond_in_tsx(tsx_ptr, rdata_ptr, 200):
            log.warning("could not answer INFO application/dtmf on %s", wid)
        digit = dtmf_from_info(raw)
        if digit is not None:
            self.on_dtmf(wid, digit, "info")

    def dispatch(self, f: dict) -> Any:
        """Run one checked op (pj thread).  A pj.Error becomes an OpError here, so that no
        pj object goes to the Trio thread."""
        try:
            return getattr(self, "op_" + f["op"])(f)
        except pj.Error as exc:
            raise OpError(pj_message(exc)) from None
