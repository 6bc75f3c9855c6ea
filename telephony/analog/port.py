"""The media side of one call on an analog line (:class:`AnalogPort`): the call flow's
``CallPort`` over a board line (docs/analog.md, "Analog ports").

The driver (:class:`telephony.analog.driver.AnalogPorts`) feeds it what the line hears: the
caller's audio (:meth:`AnalogPort.feed_audio`, 20 ms frames), the DTMF digits its detector
found (:meth:`feed_digit`) and the end of the call (:meth:`end`).  The flow plays prompts
(sent to the board in 20 ms frames, paced in real time), records the caller
(:class:`telephony.core.media.Recorder`), collects digits and hangs up (on hook).  The body is
the generic frame-based port, :class:`telephony.runtime.mediaport.MediaCallPort`, which the
SCCP ports share.

**Transfer** is not supported on analog lines: a blind transfer needs a hook flash, a dialled
number and the PBX's call-progress judged in between, which the board interface does not
offer.  :meth:`transfer` checks its destination and returns False, so the flow goes on (the
beep and a recording), as for a PBX that refused the transfer.
"""
from __future__ import annotations

from telephony.core.callflow import check_destination
from telephony.runtime.mediaport import MAX_PENDING_DIGITS, MediaCallPort

__all__ = ["AnalogPort", "MAX_PENDING_DIGITS"]


class AnalogPort(MediaCallPort):
    """One answered call on one line (a ``telephony.core.callflow.CallPort``).

    ``send(frame)`` sends one 20 ms frame (320 bytes of PCM) to the line; ``on_hook()`` puts
    the line on hook.  ``realtime=False`` sends frames as fast as ``send`` takes them.  The
    driver feeds it the frames the line hears (``feed_audio``), the digits its DTMF detector
    found (``feed_digit``) and the call's end (``end``: ``caller`` when the far end hung up,
    ``dropped`` when the service or the board ended it)."""

    async def transfer(self, destination: str) -> bool:
        """Not supported on analog lines (see the module docstring): always False."""
        check_destination(destination)
        return False
