"""Lamps by dialling (docs/analog.md, "Lamps by dialling"): a message-waiting lamp is
switched by dialling a feature code on an analog line, as a telephone would (``*91`` +
extension: on, ``*92`` + extension: off), and the PBX's answer is judged by ear.

One lamp job (:meth:`LampDialler.send_mwi`, the messaging core's lamp sink for subscribers
whose ``mwi_method`` is ``dtmf``):

1. only while the service is active in the job's term (checked before the line is taken
   and again right before the first digit goes out: an inactive node dials nothing);
2. take an idle line (at most ``parallel`` lines dial at once; when every line is busy the
   job waits in line for one), seize it and wait for dial tone (none within
   ``dial_tone_timeout``: a failure; a ring that arrives first wins the line: glare);
3. dial the code (:func:`telephony.core.dtmf.generate`, 80 ms on / 80 ms off, -10 dBm0);
4. judge: the confirmation tone is success; reorder or busy (the PBX refused the code) or
   nothing within ``confirm_timeout`` is a failure;
5. hang up (the line rests for its guard time).

A failure that may pass (no dial tone, glare, no answer, the board down) is retried up to
``retries`` times, ``retry_delay`` apart (doubling); a refusal (reorder, busy) is not. The
last failure is reported to the node's event log (``analog_mwi_failed``) and raised, so the
messaging core keeps the lamp unconfirmed and the next resync tries again.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from telephony.core import dtmf
from telephony.core.mwi import TransmitRefused, require_term
from telephony.runtime.tasks import report_event

__all__ = ["SeizeFailed", "SeizedLine", "LineSource", "Outcome", "LampDialler", "DIGIT_ON_MS",
           "DIGIT_OFF_MS", "DIGIT_LEVEL_DBM0"]

log = logging.getLogger("telephony.analog.mwi")

DIGIT_ON_MS = 80
DIGIT_OFF_MS = 80
DIGIT_LEVEL_DBM0 = -10.0
#: tones that mean the PBX refused the code
REFUSALS = ("reorder", "busy")


class SeizeFailed(ConnectionError):
    """No line could be seized with dial tone (``reason``: no dial tone, glare, down)."""


class SeizedLine(Protocol):
    """A line taken off hook with dial tone (the driver's)."""

    name: str

    async def dial(self, pcm: bytes) -> None:
        """Send ``pcm`` to the line in 20 ms frames, in real time."""
        ...

    async def wait_tone(self, names: tuple[str, ...], deadline: float) -> str | None:
        """The first of ``names`` heard from now on, or None at ``deadline`` (trio clock)."""
        ...

    async def release(self) -> None:
        """Hang up (idempotent)."""
        ...


class LineSource(Protocol):
    async def seize(self) -> SeizedLine:
        """An idle line off hook with dial tone; waits while every line is busy; raises
        :class:`SeizeFailed`."""
        ...


@dataclass(frozen=True)
class Outcome:
    ok: bool
    reason: str  # "confirm", "reorder", "busy", "no answer", "no dial tone", ...
    retry: bool = False


class LampDialler:
    """The lamp sink of the analog lines (see the module docstring)."""

    def __init__(self, lines: LineSource, *, on_code: Callable[[str], str],
                 off_code: Callable[[str], str], confirm_timeout: float = 5.0,
                 retries: int = 2, retry_delay: float = 2.0, parallel: int = 1,
                 gate: Callable[[], int | None] = lambda: None,
                 report: Callable[[str, str, str], Awaitable[None]] | None = None,
                 counters: dict[str, int] | None = None) -> None:
        self.lines = lines
        self.on_code, self.off_code = on_code, off_code
        self.confirm_timeout = confirm_timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.limiter = trio.CapacityLimiter(parallel)
        self.gate = gate
        self.report = report
        self.counters = counters if counters is not None else {}
        for k in ("mwi_sent", "mwi_failed", "mwi_refused", "mwi_attempts", "mwi_rejected_codes"):
            self.counters.setdefault(k, 0)

    async def send_mwi(self, job) -> None:
        """Switch the lamp of ``job`` (``telephony.core.mwi.MwiJob``).  Raises
        :class:`~telephony.core.mwi.TransmitRefused` unless active in ``job.term`` (nothing
        dialled), ``ConnectionError`` when every attempt failed."""
        digits = (self.on_code if job.on else self.off_code)(job.extension)
        delay = self.retry_delay
        last = Outcome(False, "not tried")
        for attempt in range(self.retries + 1):
            try:
                require_term(self.gate(), job, f"lamp code {digits}")
                async with self.limiter:
                    last = await self._attempt(job, digits)
            except TransmitRefused:
                self.counters["mwi_refused"] += 1
                raise
            if last.ok:
                self.counters["mwi_sent"] += 1
                log.info("lamp %s for %s: %s confirmed", "on" if job.on else "off",
                         job.extension, digits)
                return
            if not last.retry:
                break
            if attempt < self.retries:
                await trio.sleep(delay)
                delay *= 2
        self.counters["mwi_failed"] += 1
        message = (f"lamp {'on' if job.on else 'off'} for {job.extension} (mailbox "
                   f"{job.mailbox}): dialling {digits} failed: {last.reason}")
        await report_event(self.report, log, "warning", "analog_mwi_failed", message)
        raise ConnectionError(message)

    async def _attempt(self, job, digits: str) -> Outcome:
        self.counters["mwi_attempts"] += 1
        try:
            line = await self.lines.seize()
        except SeizeFailed as e:
            return Outcome(False, str(e), retry=True)
        try:
            # the last check before anything goes on the line: a node deactivated while the
            # job waited for a line dials nothing
            require_term(self.gate(), job, f"lamp code {digits}")
            await line.dial(dtmf.generate(digits, on_ms=DIGIT_ON_MS, off_ms=DIGIT_OFF_MS,
                                          level_dbm0=DIGIT_LEVEL_DBM0))
            heard = await line.wait_tone(("confirm", *REFUSALS),
                                         trio.current_time() + self.confirm_timeout)
        except SeizeFailed as e:
            return Outcome(False, str(e), retry=True)
        finally:
            with trio.CancelScope(shield=True):
                await line.release()
        if heard == "confirm":
            return Outcome(True, "confirm")
        if heard is None:
            return Outcome(False, f"no answer within {self.confirm_timeout:g} s", retry=True)
        self.counters["mwi_rejected_codes"] += 1
        return Outcome(False, f"the PBX answered {heard} tone")
