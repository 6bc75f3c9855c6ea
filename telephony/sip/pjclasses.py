"""The SIP worker's pjsua2 classes: the subclasses whose callbacks pjsua2 calls, each handing
the callback to the worker's engine (:class:`telephony.sip.engine.Engine`), and the one place
the worker imports pjsua2.

Every callback body is guarded (nothing escapes into pj: an exception there would abort the
process) and runs on the pj thread (:mod:`telephony.sip.pjthread`), except the media player's
end of file, which pjmedia may call on its own thread: it only queues a job.

``pj`` is the ``pjsua2`` module, or None when it is not installed: the op checks, the CLI's
argument checks and the tests of the pure parts do not need it; starting an engine does.
"""
from __future__ import annotations

import logging
import sys
from types import SimpleNamespace
from typing import Any

try:  # the worker cannot run without it; the op checks can
    import pjsua2 as pj
except ImportError:  # pragma: no cover - depends on the machine
    pj = None

__all__ = ["INSTALL_HINT", "pj", "pj_classes", "pj_message"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pjsua2 is not installed (pip install pjsua2-python==2.15.1.post1)"


def pj_message(exc: BaseException) -> str:
    """One line for an exception: a ``pj.Error``'s title and reason, else type and text."""
    if pj is not None and isinstance(exc, pj.Error):
        return f"{exc.title}: {exc.reason}" if exc.title else str(exc.reason)
    return f"{type(exc).__name__}: {exc}"


_CLASSES: Any = None


def pj_classes() -> Any:
    """The pjsua2 subclasses (defined once pjsua2 is known to import): ``LogWriter``,
    ``Endpoint``, ``Account``, ``Call`` and ``Player``; all but ``LogWriter`` are made with
    the engine they report to."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    if pj is None:
        raise RuntimeError(INSTALL_HINT)

    class LogWriter(pj.LogWriter):
        def write(self, entry: Any) -> None:
            try:
                sys.stderr.write(entry.msg if entry.msg.endswith("\n") else entry.msg + "\n")
            except Exception:
                pass

    class Endpoint(pj.Endpoint):
        def __init__(self, engine: Any) -> None:
            super().__init__()
            self.engine = engine

        def onRejectedIncomingCall(self, prm: Any) -> None:
            self.engine.guard("rejected", self.engine.on_rejected, prm)

    class Account(pj.Account):
        def __init__(self, engine: Any, name: str) -> None:
            super().__init__()
            self.engine = engine
            self.name = name
            self.registered = False

        def onIncomingCall(self, prm: Any) -> None:
            self.engine.guard("incoming", self.engine.on_incoming, self, prm)

        def onRegState(self, prm: Any) -> None:
            self.engine.guard("reg", self.engine.on_reg_state, self, prm)

        def onSendRequest(self, prm: Any) -> None:
            self.engine.guard("send_request", self.engine.on_send_request, prm)

    class Call(pj.Call):
        def __init__(self, engine: Any, acc: Any, call_id: int) -> None:
            super().__init__(acc, call_id)
            self.engine = engine
            self.wid: str | None = None

        def onCallState(self, prm: Any) -> None:
            self.engine.guard("call_state", self.engine.on_call_state, self)

        def onCallMediaState(self, prm: Any) -> None:
            self.engine.guard("media_state", self.engine.on_media_state, self)

        def onCallTransferStatus(self, prm: Any) -> None:
            self.engine.guard("transfer_status", self.engine.on_transfer_status, self, prm)

        def onDtmfDigit(self, prm: Any) -> None:
            try:
                via = "info" if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc2833"
                self.engine.on_pj(self.engine.on_dtmf, self.wid, prm.digit, via)
            except Exception:
                log.exception("dtmf callback failed")

        def onCallTsxState(self, prm: Any) -> None:
            try:
                e = prm.e
                if e.type != pj.PJSIP_EVENT_TSX_STATE:
                    return
                ts = e.body.tsxState
                tsx = ts.tsx
                if (tsx.role == pj.PJSIP_ROLE_UAS and tsx.method == "INFO"
                        and tsx.state == pj.PJSIP_TSX_STATE_TRYING
                        and ts.type == pj.PJSIP_EVENT_RX_MSG):
                    rdata = ts.src.rdata
                    self.engine.on_info(self.wid, rdata.wholeMsg, int(tsx.pjTransaction),
                                        int(rdata.pjRxData))
            except Exception:
                log.exception("tsx callback failed")

    class Player(pj.AudioMediaPlayer):
        def __init__(self, engine: Any, wid: str, pid: int) -> None:
            super().__init__()
            self.engine = engine
            self.wid = wid
            self.pid = pid

        def onEof2(self) -> None:
            try:  # may run on a pjmedia thread: only queue a job
                assert self.engine.pjt is not None
                self.engine.pjt.submit(self.engine.on_player_eof, self.wid, self.pid, self)
            except Exception:
                log.exception("eof callback failed")

    _CLASSES = SimpleNamespace(LogWriter=LogWriter, Endpoint=Endpoint, Account=Account,
                               Call=Call, Player=Player)
    return _CLASSES
