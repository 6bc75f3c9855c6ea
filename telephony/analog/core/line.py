"""One analog (FXO) line's state machine: ringing, answering, the far end hanging up,
seizing the line for an outgoing call (lamps by dialling), alarms (docs/analog.md, "Analog
ports").  Pure: events in (with ``now``, seconds on any monotonic clock), actions out.

States (:class:`LineState`)::

    DOWN ──board up / alarm clear──▶ IDLE ──RING_ON──▶ RINGING ──rings done + answer()──▶ CONNECTED
                                      ▲  ◀──ring stopped for ring_timeout (caller gave up)──┘ │
                                      │                                                      │
                                    GUARD ◀──ON_HOOK: hangup(), loop drop ≥ cpc_min_ms, ──────┘
                                      ▲      a busy/reorder/dial tone, silence ≥ silence_limit
                                      │
     IDLE ──seize()──▶ SEIZING ──dial tone──▶ OUTBOUND ──release()──▶ GUARD
                         │ no dial tone in dial_tone_timeout: ON_HOOK, SEIZE_FAILED
                         └ RING_ON (glare): ON_HOOK, SEIZE_FAILED("glare"), then the ring is
                           a call like any other (OFFER)

* The first RING_ON of an idle line is offered at once (:attr:`Kind.OFFER`): the service
  decides while the line rings.  :meth:`LineMachine.answer` (the service answers) goes off
  hook when ``rings`` rings have ended, at once if they already have; :meth:`refuse` (the
  service rejects) lets the line ring on without offering it again until it is idle.
* A ring cycle that stops for more than ``ring_timeout`` seconds means the caller gave up or
  the PBX hunted on: :attr:`Kind.ABANDONED`, idle again.
* Connected, the far end's hang-up is a LOOP_DROP of at least ``cpc_min_ms`` (a drop that
  says its length; one that does not is timed until LOOP_ON), a busy, reorder or dial tone
  heard on the line (the caller hung up and the PBX says so), or ``silence_limit`` seconds
  with nothing heard and nothing played.
* After going on hook the line waits ``guard`` seconds before it can be seized (a PBX needs
  a moment to clear the line); a ring during the guard is taken as usual.
* ALARM takes the line DOWN (whatever it was doing ends) until ALARM_CLEAR; so does the loss
  of the board (:meth:`board_down`) until :meth:`board_up`.

Every method returns the list of :class:`Action` to carry out, in order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from telephony.core import media

__all__ = ["LineState", "Kind", "Action", "LineTiming", "LineMachine", "DISCONNECT_TONES"]

#: tones that mean the far end has gone (heard while connected)
DISCONNECT_TONES = frozenset({"busy", "reorder", "dial"})


class LineState(StrEnum):
    DOWN = "down"  # alarm, or the board is not connected
    IDLE = "idle"
    RINGING = "ringing"  # a call rings; offered (or refused: rings on unanswered)
    CONNECTED = "connected"  # off hook in a call
    SEIZING = "seizing"  # off hook for an outgoing call, waiting for dial tone
    OUTBOUND = "outbound"  # dial tone heard: the line is ours to dial on
    GUARD = "guard"  # just went on hook


class Kind(StrEnum):
    OFFER = "offer"  # a call rings on an idle line: offer it to the service
    OFF_HOOK = "off_hook"  # set the hook off
    ON_HOOK = "on_hook"  # set the hook on
    CONNECTED = "connected"  # the call is answered (off hook)
    DISCONNECTED = "disconnected"  # the far end hung up (``reason``)
    ABANDONED = "abandoned"  # the caller gave up before the answer (``reason``)
    DIAL_TONE = "dial_tone"  # a seized line has dial tone
    SEIZE_FAILED = "seize_failed"  # a seizure ended without dial tone (``reason``)
    DOWN = "down"  # the line is unusable (``reason``)
    UP = "up"  # the line is usable again


@dataclass(frozen=True)
class Action:
    kind: Kind
    reason: str = ""


@dataclass(frozen=True)
class LineTiming:
    """The machine's settings (``[ports.analog]``)."""

    rings: int = 2
    ring_timeout: float = 6.0
    cpc_min_ms: int = 100
    silence_limit: float = 30.0
    dial_tone_timeout: float = 3.0
    guard: float = 0.5
    silence_threshold: float = media.SILENCE_THRESHOLD

    def __post_init__(self) -> None:
        if isinstance(self.rings, bool) or not isinstance(self.rings, int) or not 1 <= self.rings <= 20:
            raise ValueError(f"rings must be an integer from 1 to 20, not {self.rings!r}")
        if isinstance(self.cpc_min_ms, bool) or not isinstance(self.cpc_min_ms, int) \
                or not 1 <= self.cpc_min_ms <= 10_000:
            raise ValueError(f"cpc_min_ms must be an integer from 1 to 10000, not {self.cpc_min_ms!r}")
        for name in ("ring_timeout", "silence_limit", "dial_tone_timeout", "guard",
                     "silence_threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0 or (v == 0 and name not in ("guard", "silence_threshold")):
                raise ValueError(f"{name} must be a number of seconds above 0, not {v!r}")


class LineMachine:
    """The state machine of one line (see the module docstring)."""

    def __init__(self, timing: LineTiming = LineTiming()) -> None:
        self.t = timing
        self.state = LineState.DOWN
        self.board_ok = False
        self.alarmed = False
        self.rings = 0  # rings begun in this ringing spell
        self.rings_done = 0  # rings ended in this ringing spell
        self.ring_on = False
        self.last_ring = -math.inf  # when a ring last started or stopped
        self.offered = False  # this ringing spell was offered
        self.refused = False  # ... and the service said no
        self.answer_wanted = False
        self.since = 0.0  # when the current state began
        self.activity = 0.0  # when something was last heard or played (connected)
        self.drop_at: float | None = None  # a loop drop of unknown length began here
        self.last_disconnect = ""

    # ------------------------------------------------------------------ helpers

    @property
    def usable(self) -> bool:
        return self.board_ok and not self.alarmed

    def _enter(self, state: LineState, now: float) -> None:
        self.state = state
        self.since = now
        if state is not LineState.RINGING:
            self.rings = self.rings_done = 0
            self.ring_on = False
            self.offered = self.refused = self.answer_wanted = False
        self.drop_at = None

    def _hang_up(self, now: float) -> list[Action]:
        self._enter(LineState.GUARD, now)
        return [Action(Kind.ON_HOOK)]

    def _end(self, now: float, why: str) -> list[Action]:
        """Whatever the line was doing ends (alarm, board lost): the actions that say so."""
        s = self.state
        out: list[Action] = []
        if s is LineState.CONNECTED:
            out = [Action(Kind.DISCONNECTED, why), Action(Kind.ON_HOOK)]
        elif s in (LineState.SEIZING, LineState.OUTBOUND):
            out = [Action(Kind.SEIZE_FAILED, why), Action(Kind.ON_HOOK)]
        elif s is LineState.RINGING:
            out = [Action(Kind.ABANDONED, why)]
        if s is not LineState.DOWN:
            out.append(Action(Kind.DOWN, why))
        self._enter(LineState.DOWN, now)
        return out

    def _maybe_answer(self, now: float) -> list[Action]:
        if self.state is LineState.RINGING and self.answer_wanted \
                and self.rings_done >= self.t.rings:
            self._enter(LineState.CONNECTED, now)
            self.activity = now
            return [Action(Kind.OFF_HOOK), Action(Kind.CONNECTED)]
        return []

    def _ringing(self, now: float) -> list[Action]:
        """A RING_ON on an idle (or guard) line: a new call."""
        self._enter(LineState.RINGING, now)
        self.rings, self.ring_on, self.last_ring, self.offered = 1, True, now, True
        return [Action(Kind.OFFER)]

    # ------------------------------------------------------------------ board events

    def ring_on_event(self, now: float) -> list[Action]:
        s = self.state
        if s in (LineState.IDLE, LineState.GUARD):
            return self._ringing(now)
        if s is LineState.RINGING:
            if not self.ring_on:
                self.rings += 1
            self.ring_on, self.last_ring = True, now
            return []
        if s is LineState.SEIZING:  # glare: the PBX rang the line we were seizing
            return [Action(Kind.ON_HOOK), Action(Kind.SEIZE_FAILED, "glare"), *self._ringing(now)]
        return []  # off hook (a ring cannot reach us) or down

    def ring_off_event(self, now: float) -> list[Action]:
        if self.state is LineState.RINGING and self.ring_on:
            self.ring_on = False
            self.rings_done += 1
            self.last_ring = now
            return self._maybe_answer(now)
        return []

    def loop_on_event(self, now: float) -> list[Action]:
        self.drop_at = None  # a drop of unknown length was a glitch
        return []

    def loop_drop_event(self, now: float, ms: int = 0) -> list[Action]:
        if self.state is not LineState.CONNECTED:
            return []
        if ms >= self.t.cpc_min_ms:
            return self._disconnect(now, "loop_drop")
        if ms <= 0 and self.drop_at is None:  # length not known yet: time it (tick)
            self.drop_at = now
        return []

    def alarm_event(self, now: float) -> list[Action]:
        self.alarmed = True
        return self._end(now, "alarm")

    def alarm_clear_event(self, now: float) -> list[Action]:
        self.alarmed = False
        return self._up(now)

    def board_up(self, now: float) -> list[Action]:
        self.board_ok = True
        return self._up(now)

    def board_down(self, now: float, why: str = "board") -> list[Action]:
        self.board_ok = False
        return self._end(now, why)

    def _up(self, now: float) -> list[Action]:
        if self.state is LineState.DOWN and self.usable:
            self._enter(LineState.IDLE, now)
            return [Action(Kind.UP)]
        return []

    def tone(self, now: float, name: str) -> list[Action]:
        """A call-progress tone was recognised on the line's audio."""
        if self.state is LineState.CONNECTED and name in DISCONNECT_TONES:
            return self._disconnect(now, f"{name}_tone")
        if self.state is LineState.SEIZING and name == "dial":
            self._enter(LineState.OUTBOUND, now)
            return [Action(Kind.DIAL_TONE)]
        return []

    def audio(self, now: float, pcm: bytes) -> list[Action]:
        """A frame heard on the line (silence is timed while connected)."""
        if self.state is LineState.CONNECTED and pcm and media.rms(pcm) >= self.t.silence_threshold:
            self.activity = now
        return []

    def played(self, now: float, pcm: bytes) -> None:
        """A frame sent to the line: playing counts as activity for the silence limit."""
        if self.state is LineState.CONNECTED and pcm and media.rms(pcm) >= self.t.silence_threshold:
            self.activity = now

    def _disconnect(self, now: float, why: str) -> list[Action]:
        self.last_disconnect = why
        return [Action(Kind.DISCONNECTED, why), *self._hang_up(now)]

    # ------------------------------------------------------------------ the service's side

    def answer(self, now: float) -> list[Action]:
        """The service answers the offered call: off hook once ``rings`` rings have ended
        (now if they have).  Nothing when the line no longer rings (the caller gave up)."""
        if self.state is not LineState.RINGING or self.refused:
            return []
        self.answer_wanted = True
        return self._maybe_answer(now)

    def refuse(self, now: float) -> list[Action]:
        """The service rejects the offered call: the line rings on unanswered (the PBX hunts
        on) and is idle again once the ringing stops."""
        if self.state is LineState.RINGING:
            self.refused = True
            self.answer_wanted = False
        return []

    def hangup(self, now: float) -> list[Action]:
        """The service hangs up (connected) or gives a line up (outbound)."""
        if self.state in (LineState.CONNECTED, LineState.OUTBOUND):
            return self._hang_up(now)
        if self.state is LineState.SEIZING:
            return [Action(Kind.SEIZE_FAILED, "released"), *self._hang_up(now)]
        return []

    release = hangup

    def seize(self, now: float) -> list[Action]:
        """Take an idle line for an outgoing call; ``[]`` when it is not idle."""
        if self.state is not LineState.IDLE:
            return []
        self._enter(LineState.SEIZING, now)
        return [Action(Kind.OFF_HOOK)]

    # ------------------------------------------------------------------ time

    def deadline(self) -> float:
        """When :meth:`tick` has something to do next (``inf``: nothing)."""
        s = self.state
        if s is LineState.RINGING:
            return self.last_ring + self.t.ring_timeout if not self.ring_on else math.inf
        if s is LineState.CONNECTED:
            d = self.activity + self.t.silence_limit
            if self.drop_at is not None:
                d = min(d, self.drop_at + self.t.cpc_min_ms / 1000)
            return d
        if s is LineState.SEIZING:
            return self.since + self.t.dial_tone_timeout
        if s is LineState.GUARD:
            return self.since + self.t.guard
        return math.inf

    def tick(self, now: float) -> list[Action]:
        s = self.state
        if s is LineState.RINGING and not self.ring_on \
                and now >= self.last_ring + self.t.ring_timeout:
            why = "refused" if self.refused else "caller gave up"
            self._enter(LineState.IDLE, now)
            return [Action(Kind.ABANDONED, why)]
        if s is LineState.CONNECTED:
            if self.drop_at is not None and now >= self.drop_at + self.t.cpc_min_ms / 1000:
                return self._disconnect(now, "loop_drop")
            if now >= self.activity + self.t.silence_limit:
                return self._disconnect(now, "silence")
        if s is LineState.SEIZING and now >= self.since + self.t.dial_tone_timeout:
            return [Action(Kind.SEIZE_FAILED, "no dial tone"), *self._hang_up(now)]
        if s is LineState.GUARD and now >= self.since + self.t.guard:
            self._enter(LineState.IDLE, now)
        return []
