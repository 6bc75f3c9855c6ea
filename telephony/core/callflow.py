"""The voice-mail call flow, independent of the port that carries the call.

A port driver answers a call, then hands the flow a :class:`CallPort` (play, record, collect
digits, transfer, hang up) and awaits ``CallFlow.handle(call, port, term)``.  The loopback trunk
implements :class:`CallPort` (``telephony.loopback.LoopbackPort``); tests use an in-memory one.

What the flow does (:meth:`CallFlow.handle`):

* **Forwarded call** (reason busy / no_answer / all / unknown, with a forwarding number) to a
  subscriber's extension: the subscriber's greeting (the standard greeting when they have
  none, or theirs is not a valid WAV), a beep, then a recording of up to ``max_message_s``
  that ends on ``silence_s`` of silence, on any DTMF digit (callers are told to press #), or
  on hang-up.  A digit during the greeting skips to the beep, except ``0`` when an
  ``operator`` is set: that transfers the call to the operator (below).  A recording of at least
  ``min_message_s`` becomes a :class:`~telephony.core.message.VoiceMessage` (id
  ``message_id_for(call_id, node, term)``): ``await deliver(msg)``, then
  ``await lamp(mailbox, extension)``, then the goodbye prompt and the flow hangs up.
* **Direct call from a subscriber's extension** (reason direct, ``calling`` is an extension):
  mailbox access, behind the PIN (below).  "You have N new messages"
  (:func:`telephony.core.media.messages_prompt`; ports that can, also get the structured
  ``messages`` announcement with ``new`` and ``saved``),
  then every new message, oldest first.  A message played to the end is marked heard; a
  digit skips the rest of a message (it stays new), ``*`` stops the playback.  After a change,
  ``await lamp(mailbox, extension)``.  Then the end-of-messages prompt and the flow hangs up.
* **PIN** (:class:`PinGate`, the flow's ``pins``): before a mailbox opens the gate says
  ``ask`` (the caller keys the PIN, ended by ``#`` or after ``pin_timeout`` seconds without a
  digit; at most :data:`PIN_TRIES` tries per call), ``skip`` (the subscriber opted into
  ``skip_pin_from_own_phone`` and calls from their own extension), ``no_pin`` (none set and no
  opt-in: access refused) or ``locked`` (too many wrong PINs: refused for the lockout).  A
  wrong PIN that locks the mailbox ends the call.  After a PIN was accepted, :data:`PIN_CHANGE_KEY`
  during (or typed ahead of) the end-of-messages prompt changes the PIN: the new one twice.
  Without a gate (``pins=None``) every mailbox access is refused.  The gate writes the event
  log; the flow never logs a PIN.
* **Anyone else** (unknown calling number, forwarding number that is no subscriber): the
  opening greeting.  Digits typed during it are an extension (finished by ``#`` or
  ``digit_timeout`` seconds without a digit): a subscriber's extension leads to their greeting
  and a message for them; ``0`` alone is the operator when one is set.  Otherwise a beep and
  a recording for the directory's default mailbox; with no default mailbox the caller hears
  goodbye and the flow hangs up.
* **Operator transfer** (``operator`` set: the digits of the operator's extension): ``0``
  during a subscriber's greeting, or ``0`` alone typed during the opening greeting, plays the
  ``transfer`` prompt ("please hold") and asks the port for a blind transfer
  (:meth:`CallPort.transfer`).  When the PBX takes the call the flow is over (outcome
  ``transferred``, no message); when it refuses or does not answer in time the flow goes on
  where it was: the beep and a recording.  Without an operator ``0`` is a digit like any other.

Hang-up at any point ends the flow cleanly: every port method returns at once after a
hang-up, the flow stops using the port, and a recording cut short by the hang-up is still
delivered when it is long enough.  Errors of ``deliver``, ``lamp`` or the directory and
message store propagate to the caller (the port driver logs them): the flow does not hide a
message that could not be stored.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol, runtime_checkable

from telephony.core import media
from telephony.core.events import CallArrival, Reason
from telephony.core.message import VoiceMessage, message_id_for
from telephony.core.pin import MAX_DIGITS as MAX_PIN_DIGITS
from telephony.core.pin import PIN_RE

log = logging.getLogger("telephony.core.callflow")

DTMF_DIGITS = "0123456789*#"
#: The most new messages one mailbox-access call plays.
MAX_PLAYED = 100
#: PIN tries one call gets (the lockout counts every wrong one, across calls and nodes)
PIN_TRIES = 3
#: the key that changes the PIN at the end of the messages (after a PIN was accepted)
PIN_CHANGE_KEY = "9"


def pin_prompts() -> dict[str, bytes]:
    """The PIN prompts (generated tones, like :func:`telephony.core.media.default_prompts`)."""
    def seq(*parts: tuple[float, float]) -> bytes:
        return media.wav_bytes(b"".join(media.silence(s) if f == 0 else media.tone(f, s)
                                        for f, s in parts))
    return {
        "enter_pin": seq((600, 0.15), (0, 0.05), (900, 0.15)),
        "pin_wrong": seq((300, 0.25), (0, 0.05), (300, 0.25)),
        "mailbox_locked": seq((250, 0.6)),
        "no_pin": seq((250, 0.3), (0, 0.1), (250, 0.3)),
        "new_pin": seq((900, 0.15), (0, 0.05), (600, 0.15)),
        "repeat_pin": seq((900, 0.15), (0, 0.05), (900, 0.15)),
        "pin_changed": seq((600, 0.15), (750, 0.15), (900, 0.15)),
        "pin_not_changed": seq((900, 0.15), (600, 0.15), (300, 0.15)),
    }


#: every prompt name the flow plays (``prompts=`` may replace any of them)
PIN_PROMPT_NAMES = tuple(pin_prompts())


@runtime_checkable
class CallPort(Protocol):
    """The media side of one answered call.

    After the far end hung up, every method returns at once and none raises for it:
    ``play`` returns None, ``record`` returns what was recorded with reason ``"hangup"``,
    ``collect_digits`` returns the digits so far, ``hangup`` does nothing.  Bad arguments (a
    WAV in another format, a negative time) raise ValueError.
    """

    async def play(self, wav: bytes, *, interruptible: bool = True) -> str | None:
        """Play a WAV file.  Returns the DTMF digit that interrupted it (digits typed ahead
        count), or None when it played to the end (or the call was hung up)."""
        ...

    async def record(self, *, max_seconds: float, silence_seconds: float) -> tuple[bytes, str]:
        """Record the caller: returns (WAV bytes, end reason ``silence`` | ``max`` |
        ``hangup`` | ``dtmf``).  Digits typed before the recording started are discarded;
        any digit during it ends it."""
        ...

    async def collect_digits(self, *, max_digits: int, timeout: float,
                             terminator: str = "#") -> str:
        """Collect up to ``max_digits`` digits, stopping at ``terminator`` (not returned) or
        after ``timeout`` seconds without a digit."""
        ...

    async def transfer(self, destination: str) -> bool:
        """Blind transfer of the call to ``destination`` (1 to 31 DTMF digits: an extension or
        number).  True: the PBX took the call; the voice mail's part is over and ``hung_up``
        is True afterwards.  False: the PBX refused it, or did not say within the port's
        transfer timeout; the call goes on as before.  After a hang-up it returns False at
        once.  A bad destination raises ValueError."""
        ...

    async def hangup(self) -> None:
        """Hang the call up (idempotent)."""
        ...

    @property
    def hung_up(self) -> bool:
        """True once the call is over (either side hung up)."""
        ...


@runtime_checkable
class Announcer(Protocol):
    """Optional for a :class:`CallPort`: a structured note to the far end alongside the
    audio (the loopback trunk sends it as an event: ``beep``, ``messages``).  Real ports do
    not have it; the flow uses it when the port does."""

    async def announce(self, event: str, **fields: int | str) -> None: ...


class Directory(Protocol):
    """The subscriber directory, as the flow needs it.  A subscriber row is a dict with
    ``extension``, ``name``, ``mailbox``, ``mwi_method``, ``notify``, ``greeting``."""

    def by_extension(self, ext: str) -> dict | None: ...

    def default_mailbox(self) -> dict | None:
        """Where messages of callers the flow cannot place go (a row with at least
        ``mailbox``; ``extension`` may be absent), or None: nowhere."""
        ...

    def greeting(self, subscriber: dict) -> bytes | None:
        """WAV bytes of the subscriber's greeting; None: use the standard greeting."""
        ...


class Mailboxes(Protocol):
    """The message store, as the flow needs it."""

    async def counts(self, mailbox: str) -> tuple[int, int]:
        """(new, saved) message counts."""
        ...

    async def list_new(self, mailbox: str) -> list[tuple[str, bytes]]:
        """The new messages as (uid, WAV bytes), oldest first."""
        ...

    async def mark_heard(self, mailbox: str, uid: str) -> None: ...


@dataclass(frozen=True)
class PinCheck:
    """The gate's answer before a mailbox opens: ``mode`` ``ask`` | ``skip`` | ``no_pin`` |
    ``locked`` (``locked_for``: seconds left)."""

    mode: str
    locked_for: float = 0.0


@dataclass(frozen=True)
class PinVerdict:
    """The gate's answer to one PIN: ``ok``; ``locked_for`` > 0 when the mailbox is locked
    now (this failure locked it, or it already was)."""

    ok: bool
    locked_for: float = 0.0


class PinGate(Protocol):
    """Mailbox PINs, as the flow needs them.  Every method writes the event log itself
    (access, failure, lockout, change; never the PIN).  ``calling``: the caller's number."""

    async def check(self, subscriber: dict, calling: str) -> PinCheck: ...

    async def verify(self, subscriber: dict, pin: str, calling: str) -> PinVerdict: ...

    async def opened(self, subscriber: dict, calling: str, how: str) -> None:
        """The mailbox opened (``how``: ``pin`` or ``own_phone``)."""
        ...

    async def change(self, subscriber: dict, pin: str, calling: str) -> bool:
        """Store a new PIN (4 to 12 digits, checked by the flow); False: it could not be
        stored (the caller hears so)."""
        ...


@dataclass(frozen=True)
class Outcome:
    """How a call went.  ``kind``:

    * ``message``: a message was recorded and delivered (``message``);
    * ``mailbox_access``: the subscriber listened (``heard``: uids marked heard, in order;
      ``new_messages``: the count announced, None when the call ended before the count);
    * ``no_message``: a recording was made but too short, or there was nowhere to leave one;
    * ``hung_up_early``: the caller hung up before the recording began;
    * ``transferred``: the caller asked for the operator and the PBX took the call
      (``transferred_to``: the operator's extension);
    * ``access_refused``: the mailbox did not open (``refused``: ``locked``, ``no_pin``,
      ``wrong_pin`` after :data:`PIN_TRIES` tries, ``no_gate``, or ``hangup`` during the
      PIN).
    """

    kind: str
    message: VoiceMessage | None = None
    heard: list[str] = field(default_factory=list)
    mailbox: str | None = None
    new_messages: int | None = None
    end_reason: str | None = None  # how the recording ended, when there was one
    transferred_to: str | None = None
    refused: str | None = None
    pin_changed: bool = False


def check_destination(destination: Any) -> str:
    """A transfer destination: 1 to 31 DTMF digits (0-9, * and #).  Raises ValueError."""
    if not isinstance(destination, str) or not 1 <= len(destination) <= 31 \
            or any(c not in DTMF_DIGITS for c in destination):
        raise ValueError(f"a transfer destination is 1 to 31 of the digits 0-9, * and #, "
                         f"got {destination!r:.40}")
    return destination


def check_digit_request(max_digits: Any, timeout: Any, terminator: Any) -> None:
    """The arguments of ``CallPort.collect_digits``: 1 to 64 digits, a timeout above 0 s, a
    terminator of one DTMF digit or ''.  Raises ValueError (every port checks the same way)."""
    if isinstance(max_digits, bool) or not isinstance(max_digits, int) \
            or not 1 <= max_digits <= 64:
        raise ValueError(f"max_digits must be an integer from 1 to 64, got {max_digits!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds above 0, got {timeout!r}")
    if not isinstance(terminator, str) or (terminator and (len(terminator) != 1
                                                           or terminator not in DTMF_DIGITS)):
        raise ValueError(f"terminator must be one DTMF digit or '', got {terminator!r:.20}")


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _positive(name: str, v: Any, *, zero: bool = False, limit: float = 86400.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or not (0 <= v if zero else 0 < v) or v > limit:
        raise ValueError(f"{name} must be a number of seconds {'>= 0' if zero else 'above 0'} "
                         f"and at most {limit:g}, got {v!r:.40}")
    return float(v)


class CallFlow:
    """The voice-mail call flow (see the module docstring).  ``lamp(mailbox, extension)``
    recomputes the message-waiting indicator after a change.  ``prompts`` replaces fixed
    prompts by name (:data:`telephony.core.media.PROMPT_NAMES`; WAV bytes, checked here).
    ``operator``: the extension ``0`` transfers to (None: no operator transfer)."""

    def __init__(self, *, node: str, directory: Directory, mailboxes: Mailboxes,
                 deliver: Callable[[VoiceMessage], Awaitable[None]],
                 lamp: Callable[[str, str], Awaitable[None]],
                 prompts: dict[str, bytes] | None = None, max_message_s: float = 120.0,
                 silence_s: float = 3.0, min_message_s: float = 0.5,
                 clock: Callable[[], str] = _utc_now, digit_timeout: float = 3.0,
                 operator: str | None = None, pins: PinGate | None = None,
                 pin_timeout: float = 5.0) -> None:
        if not isinstance(node, str) or not node:
            raise ValueError("node must be a non-empty string")
        self.operator = None if operator is None else check_destination(operator)
        self.node = node
        self.directory = directory
        self.mailboxes = mailboxes
        self.deliver = deliver
        self.lamp = lamp
        self.max_message_s = _positive("max_message_s", max_message_s, limit=3600)
        self.silence_s = _positive("silence_s", silence_s, limit=3600)
        self.min_message_s = _positive("min_message_s", min_message_s, zero=True,
                                       limit=self.max_message_s)
        self.digit_timeout = _positive("digit_timeout", digit_timeout, limit=60)
        self.pin_timeout = _positive("pin_timeout", pin_timeout, limit=60)
        self.pins = pins
        self.clock = clock
        self.prompts = {**media.default_prompts(), **pin_prompts()}
        for name, wav in (prompts or {}).items():
            if name not in self.prompts:
                raise ValueError(f"unknown prompt {name!r:.40}; known: "
                                 f"{', '.join(media.PROMPT_NAMES + PIN_PROMPT_NAMES)}")
            try:
                media.pcm_of(wav)
            except ValueError as exc:
                raise ValueError(f"prompt {name}: {exc}") from None
            self.prompts[name] = bytes(wav)

    # ------------------------------------------------------------------ entry

    async def handle(self, call: CallArrival, port: CallPort, term: int) -> Outcome:
        """Run the flow for one answered call (the port driver awaits it)."""
        outcome = await self._route(call, port, term)
        log.info("call %s: %s%s%s", call.call_id, outcome.kind,
                 f" for mailbox {outcome.mailbox}" if outcome.mailbox else "",
                 f" ({outcome.end_reason})" if outcome.end_reason else "")
        return outcome

    async def _route(self, call: CallArrival, port: CallPort, term: int) -> Outcome:
        if call.reason is not Reason.DIRECT and call.forwarding:
            sub = self._subscriber(call.forwarding)
            if sub is not None:
                return await self._take_message(call, port, term, sub, self._greeting_of(sub))
        elif call.reason is Reason.DIRECT and call.calling:
            sub = self._subscriber(call.calling)
            if sub is not None:
                return await self._mailbox_access(call, port, sub)
        return await self._unknown_caller(call, port, term)

    # ------------------------------------------------------------------ leaving a message

    async def _unknown_caller(self, call: CallArrival, port: CallPort, term: int) -> Outcome:
        digit = await port.play(self.prompts["opening_greeting"], interruptible=True)
        if port.hung_up:
            return Outcome("hung_up_early")
        if digit is not None and digit not in "*#":
            rest = await port.collect_digits(max_digits=31, timeout=self.digit_timeout)
            if digit + rest == "0" and self.operator is not None and not port.hung_up \
                    and await self._to_operator(call, port):
                return Outcome("transferred", transferred_to=self.operator)
            sub = self._subscriber(digit + rest)
            if sub is not None:
                return await self._take_message(call, port, term, sub, self._greeting_of(sub))
            if port.hung_up:
                return Outcome("hung_up_early")
        target = self._row(self.directory.default_mailbox(), "the default mailbox")
        if target is None:
            log.info("call %s: no subscriber and no default mailbox", call.call_id)
            await self._goodbye(port)
            return Outcome("no_message")
        return await self._take_message(call, port, term, target, greeting=None)

    async def _take_message(self, call: CallArrival, port: CallPort, term: int, sub: dict,
                            greeting: bytes | None) -> Outcome:
        mailbox, extension = sub["mailbox"], sub.get("extension") or ""
        if greeting is not None:
            digit = await port.play(greeting, interruptible=True)  # a digit skips to the beep
            if digit == "0" and self.operator is not None and not port.hung_up \
                    and await self._to_operator(call, port):
                return Outcome("transferred", mailbox=mailbox, transferred_to=self.operator)
            if port.hung_up:
                return Outcome("hung_up_early", mailbox=mailbox)
        await self._announce(port, "beep")
        await port.play(self.prompts["beep"], interruptible=False)
        if port.hung_up:
            return Outcome("hung_up_early", mailbox=mailbox)
        wav, why = await port.record(max_seconds=self.max_message_s,
                                     silence_seconds=self.silence_s)
        seconds = media.wav_duration(wav)
        if seconds < self.min_message_s or seconds == 0:
            log.info("call %s: %.2fs recording (%s) is too short to keep", call.call_id,
                     seconds, why)
            await self._goodbye(port)
            return Outcome("no_message", mailbox=mailbox, end_reason=why)
        msg = VoiceMessage(
            message_id=message_id_for(call.call_id, self.node, term), mailbox=mailbox,
            extension=extension, caller=call.calling, forwarding=call.forwarding,
            reason=call.reason, duration_s=round(seconds, 3), node=self.node,
            call_id=call.call_id, term=term, recorded_at=self.clock(), audio=wav)
        await self.deliver(msg)
        await self.lamp(mailbox, extension)
        await self._goodbye(port)
        return Outcome("message", msg, mailbox=mailbox, end_reason=why)

    # ------------------------------------------------------------------ mailbox access

    async def _pin(self, call: CallArrival, port: CallPort, sub: dict) -> str:
        """The PIN step: ``pin`` or ``own_phone`` when the mailbox may open, else the reason
        it is refused (the caller has heard why; the gate has logged it)."""
        mailbox = sub["mailbox"]
        if self.pins is None:
            log.warning("mailbox %s: no PIN gate: access refused", mailbox)
            return "no_gate"
        check = await self.pins.check(sub, call.calling)
        if check.mode == "skip":
            return "own_phone"
        if check.mode != "ask":
            if not port.hung_up:
                await port.play(self.prompts["mailbox_locked" if check.mode == "locked"
                                             else "no_pin"], interruptible=False)
            return "locked" if check.mode == "locked" else "no_pin"
        for _ in range(PIN_TRIES):
            pin = await self._keyed(port, "enter_pin")
            if port.hung_up:
                return "hangup"
            if not pin:  # nothing keyed in time: a try of this call, not a wrong PIN
                await port.play(self.prompts["pin_wrong"], interruptible=False)
                continue
            verdict = await self.pins.verify(sub, pin, call.calling)
            if verdict.ok:
                return "pin"
            if verdict.locked_for > 0:
                await port.play(self.prompts["mailbox_locked"], interruptible=False)
                return "locked"
            await port.play(self.prompts["pin_wrong"], interruptible=False)
            if port.hung_up:
                return "hangup"
        return "wrong_pin"

    async def _keyed(self, port: CallPort, prompt: str) -> str:
        """Play ``prompt`` and collect digits up to ``#`` (a digit typed during the prompt
        is the first one)."""
        first = await port.play(self.prompts[prompt], interruptible=True)
        if port.hung_up or first == "#":
            return ""
        # one more than a PIN has: the '#' after a 12-digit PIN ends the entry, not the next one
        rest = await port.collect_digits(max_digits=MAX_PIN_DIGITS + 1, timeout=self.pin_timeout)
        return (first or "") + rest

    async def _change_pin(self, call: CallArrival, port: CallPort, sub: dict) -> bool:
        """The new PIN, twice; True when it was stored."""
        first = await self._keyed(port, "new_pin")
        if port.hung_up:
            return False
        second = await self._keyed(port, "repeat_pin")
        if port.hung_up:
            return False
        ok = first == second and PIN_RE.fullmatch(first) is not None
        if ok:
            assert self.pins is not None
            ok = await self.pins.change(sub, first, call.calling)
        await port.play(self.prompts["pin_changed" if ok else "pin_not_changed"],
                        interruptible=False)
        return ok

    async def _mailbox_access(self, call: CallArrival, port: CallPort, sub: dict) -> Outcome:
        mailbox, extension = sub["mailbox"], sub.get("extension") or ""
        how = await self._pin(call, port, sub)
        if how not in ("pin", "own_phone"):
            await self._goodbye(port)
            return Outcome("access_refused", mailbox=mailbox, refused=how)
        assert self.pins is not None
        await self.pins.opened(sub, call.calling, how)
        new, saved = await self.mailboxes.counts(mailbox)
        heard: list[str] = []
        if port.hung_up:
            return Outcome("mailbox_access", heard=heard, mailbox=mailbox)
        await self._announce(port, "messages", new=new, saved=saved)
        await port.play(media.messages_prompt(new), interruptible=True)
        stopped = False
        if new and not port.hung_up:
            items = (await self.mailboxes.list_new(mailbox))[:MAX_PLAYED]
            for uid, wav in items:
                if port.hung_up:
                    break
                try:
                    digit = await port.play(wav, interruptible=True)
                except ValueError as exc:
                    log.warning("mailbox %s: message %s cannot be played: %s", mailbox, uid, exc)
                    continue
                if port.hung_up:
                    break  # not heard to the end: it stays new
                if digit is None:
                    await self.mailboxes.mark_heard(mailbox, uid)
                    heard.append(uid)
                elif digit == "*":
                    stopped = True
                    break
        if heard:
            await self.lamp(mailbox, extension)
        changed = False
        if not port.hung_up:
            if not stopped:
                digit = await port.play(self.prompts["end_of_messages"], interruptible=True)
                if digit == PIN_CHANGE_KEY and how == "pin" and not port.hung_up:
                    changed = await self._change_pin(call, port, sub)
            await self._goodbye(port)
        return Outcome("mailbox_access", heard=heard, mailbox=mailbox, new_messages=new,
                       pin_changed=changed)

    # ------------------------------------------------------------------ helpers

    async def _to_operator(self, call: CallArrival, port: CallPort) -> bool:
        """"Please hold", then a blind transfer to the operator; True if the PBX took it."""
        assert self.operator is not None
        await port.play(self.prompts["transfer"], interruptible=False)
        if port.hung_up:
            return False
        taken = await port.transfer(self.operator)
        log.info("call %s: transfer to the operator %s %s", call.call_id, self.operator,
                 "taken by the PBX" if taken else "failed: the flow goes on")
        return taken

    def _subscriber(self, ext: str) -> dict | None:
        return self._row(self.directory.by_extension(ext), f"extension {ext}")

    @staticmethod
    def _row(row: Any, what: str) -> dict | None:
        if row is None:
            return None
        if not isinstance(row, dict) or not isinstance(row.get("mailbox"), str) \
                or not row["mailbox"] or not isinstance(row.get("extension") or "", str):
            log.warning("directory row for %s has no usable mailbox: %r", what, row)
            return None
        return row

    def _greeting_of(self, sub: dict) -> bytes:
        try:
            wav = self.directory.greeting(sub)
            if wav is not None:
                media.pcm_of(wav)
                return wav
        except (ValueError, OSError) as exc:
            log.warning("greeting of extension %s is unusable (%s): the standard greeting "
                        "plays", sub.get("extension"), exc)
        return self.prompts["standard_greeting"]

    async def _goodbye(self, port: CallPort) -> None:
        if not port.hung_up:
            await port.play(self.prompts["goodbye"], interruptible=False)
        if not port.hung_up:
            await port.hangup()

    @staticmethod
    async def _announce(port: CallPort, event: str, **fields: int | str) -> None:
        if isinstance(port, Announcer) and not port.hung_up:
            await port.announce(event, **fields)
