"""An answered call's conversation: the call flow run on a frame-based media port until the
call is over (:func:`converse`), the same for every driver whose port is a
:class:`~telephony.runtime.mediaport.MediaCallPort` (the analog lines, the SCCP ports)."""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from telephony.core.events import CallArrival
from telephony.runtime.mediaport import MediaCallPort
from telephony.runtime.ports import ActiveCall

__all__ = ["Flow", "converse"]

log = logging.getLogger("telephony.runtime.conversation")

#: ``flow(call, port, term)``: the messaging core's call flow, run while the call is up
Flow = Callable[[CallArrival, Any, int], Awaitable[Any]]


async def wait_ended(port: MediaCallPort) -> None:
    """Until either side has ended the call on ``port``."""
    while not port.hung_up:
        await port.wait_changed()


async def converse(port: MediaCallPort, active: ActiveCall, arrival: CallArrival,
                   flow: Flow | None, *, hang_up: Callable[[], Awaitable[None]],
                   flow_grace: float) -> str:
    """Run ``flow(arrival, port, active.term)`` (without a flow: hold the call) until the call
    is over; returns the call's end event for the call desk (``dropped`` when the service
    dropped it, else ``ended``).

    * The service dropping the call (``active.dropped``) ends the port and ``hang_up()`` runs.
    * A flow that fails is logged; the call is hung up as if it had ended.
    * A flow still running ``flow_grace`` seconds after the call ended is cancelled (logged).
    * When the flow returns with the call still up, the port hangs up.
    """
    flow_done = trio.Event()
    async with trio.open_nursery() as nursery:

        async def watch_drop() -> None:
            await active.dropped.wait()
            port.end("dropped")
            await hang_up()

        async def grace() -> None:
            await wait_ended(port)
            with trio.move_on_after(flow_grace):
                await flow_done.wait()
            if not flow_done.is_set():
                log.warning("call flow of %s still running %gs after the call ended: cancelled",
                            arrival.summary(), flow_grace)
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_drop)
        nursery.start_soon(grace)
        if flow is not None:
            try:
                await flow(arrival, port, active.term)
            except Exception:  # noqa: BLE001 - one call's flow failing is logged
                log.exception("call flow of %s failed", arrival.summary())
        else:
            await wait_ended(port)
        flow_done.set()
        if not port.hung_up:
            await port.hangup()
        nursery.cancel_scope.cancel()
    return "dropped" if port.ended_by == "dropped" else "ended"
