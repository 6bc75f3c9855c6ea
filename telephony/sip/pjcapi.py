"""A few pjsip C functions that pjsua2 does not wrap, called through ctypes from the wheel's own
library (``_pjsua2``; it exports them, and ``ctypes.CDLL`` of the loaded module's path returns
the same handle, so the calls act on the running stack).

* :meth:`PjsipCApi.set_tsx_timeout`: Timer B/F, the SIP transaction timeout (pjsua2 has no
  setting for it).
* :meth:`PjsipCApi.respond_in_tsx`: answer a request pjsua2 does not handle itself (an INFO
  ``application/dtmf``).

Call them on the pj thread only (:mod:`telephony.sip.pjthread`).
"""
from __future__ import annotations

import ctypes
from typing import Any

__all__ = ["PjsipCApi"]


class PjsipCApi:
    """The C functions of the library at ``path`` (``pjsua2._pjsua2.__file__``)."""

    def __init__(self, path: str) -> None:
        lib: Any = ctypes.CDLL(path)
        lib.pjsip_tsx_set_timers.argtypes = [ctypes.c_uint] * 4
        lib.pjsip_tsx_set_timers.restype = None
        lib.pjsua_get_pjsip_endpt.argtypes = []
        lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
        lib.pjsip_endpt_create_response.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_void_p)]
        lib.pjsip_endpt_create_response.restype = ctypes.c_int
        lib.pjsip_tsx_send_msg.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.pjsip_tsx_send_msg.restype = ctypes.c_int
        self._lib = lib

    def set_tsx_timeout(self, ms: int) -> None:
        """Timer B/F (the transaction timeout) through ``pjsip_tsx_set_timers``.  T1, T2 and
        T4 stay at the RFC 3261 values (500, 4000, 5000 ms)."""
        self._lib.pjsip_tsx_set_timers(500, 4000, 5000, int(ms))

    def respond_in_tsx(self, tsx_ptr: int, rdata_ptr: int, code: int) -> bool:
        """Answer an incoming request's transaction (``pjsip_endpt_create_response`` +
        ``pjsip_tsx_send_msg``, as pjsua does for INFO dtmf-relay).  pjsua2 cannot answer a
        request it does not handle itself; without this an INFO application/dtmf gets
        "500 Unhandled by dialog usages".  Call it on the pj thread, inside the transaction's
        Trying callback."""
        lib = self._lib
        endpt = lib.pjsua_get_pjsip_endpt()
        if not (endpt and tsx_ptr and rdata_ptr):
            return False
        tdata = ctypes.c_void_p()
        if lib.pjsip_endpt_create_response(endpt, rdata_ptr, code, None,
                                           ctypes.byref(tdata)) != 0:
            return False
        return lib.pjsip_tsx_send_msg(tsx_ptr, tdata) == 0
