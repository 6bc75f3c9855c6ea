"""Qualification of analog voice-board ports with a telephone-line tester (docs/analog.md,
"Hardware qualification").

The tester is opened through pyvisa (``pyvisa.ResourceManager("@py")``, any VISA resource: a
real instrument on the LAN, or the simulated one of :mod:`lab.instrument`).  Its lines are
wired to the analog ports of the system under test (a vmha node), and the run checks what a
port does on a line, recording every figure it measured with its limits:

* ``identify``: ``*IDN?`` of the instrument;
* per line (all lines rung together), ``answer``: the port answers after the configured
  number of rings (the rings counted and the seconds from the first ring to off hook);
  ``loop_current``: the loop current with the port off hook; ``disconnect``: the tester drops
  the loop and the port is back on hook within the bound;
* ``message``: a call with the in-band integration digits of a forwarded call leaves a message
  in the subscriber's mailbox (counted in the store);
* ``lamp_on``: the message turns the subscriber's lamp on: a port seizes a line and dials the
  lamp-on feature code; the tester measures the DTMF (each frequency within ±1.5 % of nominal,
  the level within range of the driver's dialling level) and shows the lamp on;
* ``lamp_off``: the subscriber listens to the message (a mailbox-access call) and the port dials
  the lamp-off code; the lamp is off;
* ``alarm``: the tester puts the line in alarm; the node reports the port down; the alarm
  cleared, the port is idle again.

The figures go to ``--report DIR``: ``analog-qualification.json`` (every step with figures,
limits and pass/fail) and ``analog-qualification.txt`` (the same, readable).

Everything blocks (pyvisa is synchronous); the waits poll with their own bounds, which are
limits of the qualification (recorded in the report): the lab's (``Limits()``) with a real
tester, hang guards (``Limits.simulated()``) on the simulated bench.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from integrations.analog import DTMF_PATTERNS, MWI_OFF_CODE, MWI_ON_CODE
from telephony.analog.mwi import DIGIT_LEVEL_DBM0
from telephony.analog.settings import dial_string, parse_channels
from telephony.core.dtmf import FREQS

REPORT_JSON = "analog-qualification.json"
REPORT_TEXT = "analog-qualification.txt"
_DTMF_ANSWER = re.compile(r'"([0-9*#A-D]*)",([-+0-9.eE]+),([-+0-9.eE]+),([-+0-9.eE]+)')


class InstrumentError(Exception):
    """The instrument refused a command (its error queue) or answered something unreadable."""


@dataclass(frozen=True)
class Limits:
    """What the run accepts.  Times are bounds of the qualification (what a port must do),
    measured by polling the instrument every ``poll_s``."""

    freq_tolerance: float = 0.015  # DTMF frequency deviation from nominal, either group
    #: the level of the DTMF the port dials (both tones together): the driver's level per
    #: tone + 3 dB, ±2 dB
    dtmf_level_dbm0: tuple[float, float] = (DIGIT_LEVEL_DBM0 + 3.01 - 2.0, DIGIT_LEVEL_DBM0 + 3.01 + 2.0)
    loop_ma: tuple[float, float] = (15.0, 80.0)  # loop current off hook
    answer_slack_s: float = 1.5  # after the last expected ring's cycle
    onhook_s: float = 2.0  # back on hook after the loop drop
    message_s: float = 60.0  # the message in the store after the call ended
    lamp_s: float = 60.0  # the lamp-on / lamp-off code dialled after the message / the access
    call_s: float = 120.0  # a call (message or mailbox access) ends
    down_s: float = 10.0  # the node reports the port down after the alarm
    up_s: float = 40.0  # the port idle again after the alarm cleared
    poll_s: float = 0.02

    @classmethod
    def simulated(cls) -> Limits:
        """The limits of a run on the simulated bench (CI): the same figures judged, except
        that the bounds of time are wide, hang guards rather than speed requirements (a
        loaded test machine must not fail the run; a slow machine only makes the lower
        bound of the answer easier to pass)."""
        return cls(answer_slack_s=30.0, onhook_s=30.0, message_s=120.0, lamp_s=120.0,
                   call_s=240.0, down_s=60.0, up_s=120.0)


class SystemUnderTest(Protocol):
    """The node whose analog ports are on the tester's lines."""

    #: the tester's (board, line) for each analog port under test
    lines: Sequence[tuple[str, int]]
    #: rings the port lets pass before it answers, and the ring signal's period (s)
    rings: int
    ring_period_s: float
    #: the subscriber the message and the lamp are for
    extension: str
    mailbox: str

    def forwarded_digits(self, extension: str) -> str:
        """The in-band digits the PBX sends for a call forwarded from ``extension``."""

    def access_digits(self, extension: str) -> str:
        """The in-band digits the PBX sends for a direct call from ``extension``."""

    def lamp_codes(self, extension: str) -> tuple[str, str]:
        """The strings a port dials to turn the lamp of ``extension`` on and off."""

    def new_messages(self, mailbox: str) -> int:
        """New messages in ``mailbox`` (read from the store)."""

    def port_state(self, board: str, line: int) -> str | None:
        """The node's state of the port on ``(board, line)`` (``idle``, ``down``, ...)."""


@dataclass
class Step:
    name: str
    line: str | None
    passed: bool
    figures: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    detail: str = ""


@dataclass
class Report:
    instrument: str = ""
    resource: str = ""
    simulated: bool = True
    started: str = ""
    finished: str = ""
    steps: list[Step] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.steps) and all(s.passed for s in self.steps)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "instrument": self.instrument, "resource": self.resource,
                "simulated": self.simulated, "started": self.started, "finished": self.finished,
                "steps": [asdict(s) for s in self.steps]}

    def summary(self) -> str:
        out = [f"Analog port qualification: {'PASS' if self.passed else 'FAIL'}",
               f"instrument: {self.instrument} ({self.resource}{', simulated' if self.simulated else ''})",
               f"run: {self.started} .. {self.finished}", ""]
        for s in self.steps:
            where = f" [{s.line}]" if s.line else ""
            out.append(f"{'PASS' if s.passed else 'FAIL'}  {s.name}{where}")
            for k, v in s.figures.items():
                lim = s.limits.get(k)
                out.append(f"      {k} = {v}" + (f"   (limit {lim})" if lim is not None else ""))
            if s.detail:
                out.append(f"      {s.detail}")
        return "\n".join(out) + "\n"

    def write(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        j, t = directory / REPORT_JSON, directory / REPORT_TEXT
        j.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        t.write_text(self.summary())
        return j, t


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_number(cmd: str, text: str) -> float:
    """A numeric answer; InstrumentError for anything else (or an infinity, a NaN)."""
    try:
        v = float(text)
    except ValueError:
        raise InstrumentError(f"{cmd} answered {text!r:.60}, not a number") from None
    if not math.isfinite(v):
        raise InstrumentError(f"{cmd} answered {text!r:.60}")
    return v


def parse_dtmf(text: str) -> tuple[str, float, float, float]:
    """``MEAS:DTMF?``'s answer: (digits, low Hz, high Hz, level dBm0)."""
    m = _DTMF_ANSWER.fullmatch(text)
    if not m:
        raise InstrumentError(f"MEAS:DTMF? answered {text!r:.80}")
    return m[1], *(parse_number("MEAS:DTMF?", m[i]) for i in (2, 3, 4))


def parse_rings(text: str) -> tuple[int, float]:
    """``MEAS:RING?``'s answer: (rings, seconds to off hook; -1 not answered)."""
    rings, comma, seconds = text.partition(",")
    if not comma or not rings.strip().isdigit() or len(rings) > 4:
        raise InstrumentError(f"MEAS:RING? answered {text!r:.60}")
    return int(rings), parse_number("MEAS:RING?", seconds)


class Instrument:
    """The tester's SCPI commands over an open pyvisa resource."""

    def __init__(self, resource: Any, *, poll_s: float = 0.02, timeout_ms: int = 5000) -> None:
        self.res = resource
        self.res.read_termination = "\n"
        self.res.write_termination = "\n"
        self.res.timeout = timeout_ms
        self.poll_s = poll_s

    def query(self, cmd: str) -> str:
        return str(self.res.query(cmd)).strip()

    def errors(self) -> list[str]:
        """Every entry of the instrument's error queue (emptied)."""
        out = []
        for _ in range(32):
            e = self.query("SYST:ERR?")
            if re.match(r"\s*[+]?0\s*,", e):
                return out
            out.append(e)
        return out

    def command(self, cmd: str) -> None:
        """Send a command; InstrumentError naming the errors it queued."""
        self.res.write(cmd)
        errs = self.errors()
        if errs:
            raise InstrumentError(f"{cmd!r} refused: {'; '.join(errs)}")

    def number(self, cmd: str) -> float:
        return parse_number(cmd, self.query(cmd))

    def select(self, board: str, line: int) -> None:
        self.command(f"LINE:SEL {board},{line}")

    def state(self) -> str:
        return self.query("LINE:STAT?").lower()

    def wait_state(self, want: str | Callable[[str], bool], bound_s: float) -> float:
        """Seconds until the selected line's state is ``want``; TimeoutError past ``bound_s``."""
        ok = want if callable(want) else (lambda s: s == want)
        t0 = time.monotonic()
        while True:
            s = self.state()
            if ok(s):
                return time.monotonic() - t0
            if time.monotonic() - t0 > bound_s:
                what = want if isinstance(want, str) else "an answer"
                raise TimeoutError(f"line state {s!r} after {bound_s:g} s (waiting for {what})")
            time.sleep(self.poll_s)

    def dtmf(self) -> tuple[str, float, float, float]:
        return parse_dtmf(self.query("MEAS:DTMF?"))

    def rings(self) -> tuple[int, float]:
        return parse_rings(self.query("MEAS:RING?"))

    def lamp(self, extension: str) -> bool:
        text = self.query(f'MEAS:LAMP? "{extension}"')
        if text not in ("0", "1"):
            raise InstrumentError(f"MEAS:LAMP? answered {text!r:.60}")
        return text == "1"


def _name(board: str, line: int) -> str:
    return f"{board},{line}"


def _guarded(name: str, line: str | None, fn: Callable[[Step], None]) -> Step:
    """Run one step; whatever fails it (a limit, the instrument, a bound) is its detail."""
    step = Step(name, line, False)
    try:
        fn(step)
    except Exception as e:  # noqa: BLE001 - a limit, the instrument, pyvisa's VisaIOError, a bound
        step.passed = False
        step.detail = f"{type(e).__name__}: {e}"[:300]
    return step


# -- judging (pure: figures in, verdict out) ----------------------------------------------
def within(v: float, lo: float, hi: float) -> bool:
    return lo <= v <= hi


def nominal(digits: str) -> tuple[str, float, float] | None:
    """The first digit of ``digits`` (the one the tester measures) with its nominal pair."""
    if not digits or digits[0] not in FREQS:
        return None
    lo, hi = FREQS[digits[0]]
    return digits[0], float(lo), float(hi)


def judge_dtmf(step: Step, want: str, answer: tuple[str, float, float, float], limits: Limits) -> None:
    digits, low, high, level = answer
    step.figures.update(digits=digits, low_hz=low, high_hz=high, level_dbm0=level)
    step.limits.update(digits=want, level_dbm0=list(limits.dtmf_level_dbm0),
                       freq_tolerance=f"±{limits.freq_tolerance * 100:g} %")
    ref = nominal(digits)
    problems = []
    if digits != want:
        problems.append(f"dialled {digits!r}, expected {want!r}")
    if ref is None:
        problems.append("no DTMF digit measured")
    else:
        d, lo, hi = ref
        dev_lo, dev_hi = (low - lo) / lo, (high - hi) / hi
        step.figures.update(digit_measured=d, nominal_low_hz=lo, nominal_high_hz=hi,
                            low_deviation_pct=round(dev_lo * 100, 3),
                            high_deviation_pct=round(dev_hi * 100, 3))
        step.limits.update(low_deviation_pct=f"±{limits.freq_tolerance * 100:g}",
                           high_deviation_pct=f"±{limits.freq_tolerance * 100:g}")
        if abs(dev_lo) > limits.freq_tolerance or abs(dev_hi) > limits.freq_tolerance:
            problems.append(f"frequencies {low:g}/{high:g} Hz off nominal {lo:g}/{hi:g} by more than "
                            f"{limits.freq_tolerance * 100:g} %")
    if not within(level, *limits.dtmf_level_dbm0):
        problems.append(f"level {level:g} dBm0 outside {limits.dtmf_level_dbm0}")
    step.passed = not problems
    step.detail = "; ".join(problems)


def judge_answer(step: Step, rings: int, seconds: float, want_rings: int, period_s: float,
                 limits: Limits) -> None:
    lo, hi = (want_rings - 1) * period_s, want_rings * period_s + limits.answer_slack_s
    step.figures.update(rings=rings, answered_after_s=round(seconds, 3))
    step.limits.update(rings=want_rings, answered_after_s=[round(lo, 3), round(hi, 3)])
    problems = []
    if seconds < 0:
        problems.append("not answered")
    else:
        if rings != want_rings:
            problems.append(f"answered after {rings} rings, configured {want_rings}")
        if not within(seconds, lo, hi):
            problems.append(f"answered after {seconds:.3f} s, outside {lo:g}..{hi:g} s")
    step.passed = not problems
    step.detail = "; ".join(problems)


def judge_range(step: Step, key: str, value: float, lo: float, hi: float) -> None:
    step.figures[key] = value
    step.limits[key] = [lo, hi]
    step.passed = within(value, lo, hi)
    if not step.passed:
        step.detail = f"{key} {value:g} outside {lo:g}..{hi:g}"


# -- steps -------------------------------------------------------------------------------
def step_identify(inst: Instrument, report: Report) -> Step:
    def run(step: Step) -> None:
        inst.res.write("*CLS")
        idn = inst.query("*IDN?")
        inst.command("*RST")
        fields = idn.split(",")
        step.figures["idn"] = idn
        step.limits["idn"] = "manufacturer,model,serial,firmware"
        report.instrument = idn
        step.passed = len(fields) == 4 and all(f.strip() for f in fields)
        if not step.passed:
            step.detail = f"*IDN? answered {idn!r:.80}"
    return _guarded("identify", None, run)


def steps_lines(inst: Instrument, sut: SystemUnderTest, limits: Limits) -> list[Step]:
    """``answer``, ``loop_current`` and ``disconnect`` of every line, from one call on each,
    all rung together (a tester rings several lines at once; a PBX that hunts takes the next
    idle line while the first ones ring): per line the rings and seconds to off hook, the
    loop current off hook, then, loop by loop, the seconds from the loop drop to on hook."""
    answered: dict[tuple[str, int], bool] = {}
    answers, loops, drops = [], [], []

    def ring(board: str, line: int) -> Callable[[Step], None]:
        def run(step: Step) -> None:
            answered[(board, line)] = False
            inst.select(board, line)
            idle = inst.state()
            step.figures["state_before"] = idle
            if idle != "idle":
                raise InstrumentError(f"line {_name(board, line)} is {idle!r}, not idle")
            step.figures["idle_loop_ma"] = inst.number("MEAS:LOOP?")
            inst.command('LINE:DIG ""')
            inst.command("LINE:AUD 30")
            inst.command(f"LINE:RING {sut.rings + 2}")
            answered[(board, line)] = None  # rung
        return run

    def answer(board: str, line: int, rung: Step) -> Callable[[Step], None]:
        def run(step: Step) -> None:
            step.figures.update(rung.figures)
            if answered.get((board, line)) is False:
                raise InstrumentError(rung.detail or "not rung")
            inst.select(board, line)
            waited = inst.wait_state(lambda s: s not in ("ringing", "idle"),
                                     (sut.rings + 1) * sut.ring_period_s + limits.answer_slack_s)
            state = inst.state()
            step.figures["state_answered"] = state
            if state != "offhook":
                raise InstrumentError(f"line went {state!r} instead of off hook ({waited:.3f} s)")
            answered[(board, line)] = True
            judge_answer(step, *inst.rings(), sut.rings, sut.ring_period_s, limits)
        return run

    def loop(board: str, line: int) -> Callable[[Step], None]:
        def run(step: Step) -> None:
            if not answered.get((board, line)):
                raise InstrumentError("not off hook (answer failed)")
            inst.select(board, line)
            judge_range(step, "loop_ma", inst.number("MEAS:LOOP?"), *limits.loop_ma)
        return run

    def disconnect(board: str, line: int) -> Callable[[Step], None]:
        def run(step: Step) -> None:
            if not answered.get((board, line)):
                raise InstrumentError("no call to drop (answer failed)")
            inst.select(board, line)
            inst.command("LINE:HANG")
            seconds = inst.wait_state("idle", limits.onhook_s)
            step.figures["onhook_after_s"] = round(seconds, 3)
            step.limits["onhook_after_s"] = [0, limits.onhook_s]
            judge_range(step, "idle_loop_ma", inst.number("MEAS:LOOP?"), 0.0, 1.0)
        return run

    rung = [_guarded("answer", _name(b, n), ring(b, n)) for b, n in sut.lines]
    for (b, n), r in zip(sut.lines, rung, strict=True):
        answers.append(_guarded("answer", _name(b, n), answer(b, n, r)))
    for b, n in sut.lines:
        loops.append(_guarded("loop_current", _name(b, n), loop(b, n)))
    for b, n in sut.lines:
        drops.append(_guarded("disconnect", _name(b, n), disconnect(b, n)))
    if not all(s.passed for s in drops):  # leave the lines as found for the next steps
        try:
            inst.command("*RST")
        except Exception:  # noqa: BLE001 - the next steps report the instrument's state
            pass
    return answers + loops + drops


def _call(inst: Instrument, sut: SystemUnderTest, board: str, line: int, digits: str, audio: str,
          limits: Limits, step: Step) -> None:
    """A call that sends ``digits`` after answer, then ``audio`` (``LINE:AUD``'s parameters:
    seconds of the test message or of silence); back when the line is idle again (the tester
    hung up, or the port did).  It waits for the line to be idle first (a port may hold it
    for a lamp)."""
    inst.select(board, line)
    inst.wait_state("idle", limits.lamp_s)
    inst.command(f'LINE:DIG "{digits}"')
    inst.command(f"LINE:AUD {audio}")
    inst.command(f"LINE:RING {sut.rings + 2}")
    inst.wait_state(lambda s: s not in ("ringing", "idle"),
                    (sut.rings + 1) * sut.ring_period_s + limits.answer_slack_s)
    step.figures["call_s"] = round(inst.wait_state("idle", limits.call_s), 3)
    rings, answered = inst.rings()
    step.figures["answered_after_s"] = answered
    try:
        step.figures["port_level_dbm0"] = inst.number("MEAS:LEV?")
    except InstrumentError:
        inst.errors()  # nothing heard from the port: the figure is absent


def _wait(cond: Callable[[], Any], bound_s: float, what: str, poll_s: float) -> tuple[Any, float]:
    t0 = time.monotonic()
    while True:
        v = cond()
        if v:
            return v, time.monotonic() - t0
        if time.monotonic() - t0 > bound_s:
            raise TimeoutError(f"{what} not within {bound_s:g} s")
        time.sleep(poll_s)


def _dial_counts(inst: Instrument, sut: SystemUnderTest) -> dict[tuple[str, int], int]:
    """How many strings the ports have dialled so far, per line."""
    out = {}
    for board, line in sut.lines:
        inst.select(board, line)
        out[(board, line)] = int(inst.number("MEAS:DTMF:COUN?"))
    return out


def _dialled(inst: Instrument, sut: SystemUnderTest, want: str,
             before: dict[tuple[str, int], int]) -> tuple[str, tuple[str, float, float, float]] | None:
    """The line on which a port dialled ``want`` since the counts ``before``, with the
    tester's measurement of it."""
    for (board, line), count in _dial_counts(inst, sut).items():
        if count > before.get((board, line), 0):
            inst.select(board, line)
            ans = inst.dtmf()
            if ans[0] == want:
                return _name(board, line), ans
    return None


def steps_messaging(inst: Instrument, sut: SystemUnderTest, limits: Limits) -> list[Step]:
    """``message``, ``lamp_on``, ``lamp_off`` (one subscriber, the first line)."""
    board, line = sut.lines[0]
    name = _name(board, line)
    on_code, off_code = sut.lamp_codes(sut.extension)
    state: dict[str, Any] = {}
    steps: list[Step] = []

    def message(step: Step) -> None:
        before = sut.new_messages(sut.mailbox)
        state["dtmf_before"] = _dial_counts(inst, sut)
        digits = sut.forwarded_digits(sut.extension)
        step.figures.update(mailbox=sut.mailbox, digits=digits, messages_before=before)
        _call(inst, sut, board, line, digits, "4", limits, step)
        count, seconds = _wait(lambda: (n := sut.new_messages(sut.mailbox)) > before and n,
                               limits.message_s, f"a new message in {sut.mailbox}", limits.poll_s)
        step.figures.update(messages_after=count, stored_after_s=round(seconds, 3))
        step.limits.update(messages_after=before + 1, stored_after_s=[0, limits.message_s])
        step.passed = count == before + 1
        if not step.passed:
            step.detail = f"{count - before} messages stored by one call"
        state["message"] = step.passed

    steps.append(_guarded("message", name, message))

    def lamp(step: Step, code: str, lit: bool) -> None:
        want = code
        found, seconds = _wait(lambda: _dialled(inst, sut, want, state["dtmf_before"]), limits.lamp_s,
                               f"{want} dialled on a port", limits.poll_s)
        where, answer = found
        step.line = where
        judge_dtmf(step, want, answer, limits)
        step.figures["dialled_after_s"] = round(seconds, 3)
        shown = inst.lamp(sut.extension)
        step.figures["lamp"] = "on" if shown else "off"
        step.limits["lamp"] = "on" if lit else "off"
        if shown != lit:
            step.passed = False
            shows = f"the tester shows the lamp {step.figures['lamp']}"
            step.detail = "; ".join(filter(None, [step.detail, shows]))
        state["dtmf_before"] = _dial_counts(inst, sut)

    def lamp_on(step: Step) -> None:
        if not state.get("message"):
            raise InstrumentError("no message was left (message failed)")
        lamp(step, on_code, True)
        state["lamp_on"] = step.passed

    steps.append(_guarded("lamp_on", None, lamp_on))

    def lamp_off(step: Step) -> None:
        if not state.get("lamp_on"):
            raise InstrumentError("the lamp is not on (lamp_on failed)")
        access = Step("access", name, False)
        _call(inst, sut, board, line, sut.access_digits(sut.extension), "60,SIL", limits, access)
        step.figures["access_call_s"] = access.figures.get("call_s")
        step.figures["new_after_access"] = sut.new_messages(sut.mailbox)
        lamp(step, off_code, False)
        step.limits["new_after_access"] = 0
        if step.figures["new_after_access"] != 0:
            step.passed = False
            step.detail = "; ".join(filter(None, [step.detail, "the message is still new"]))

    steps.append(_guarded("lamp_off", None, lamp_off))
    return steps


def step_alarm(inst: Instrument, sut: SystemUnderTest, board: str, line: int, limits: Limits) -> Step:
    name = _name(board, line)

    def run(step: Step) -> None:
        inst.select(board, line)
        inst.command("LINE:ALARM ON")
        try:
            step.figures["line_state"] = inst.state()
            _, down = _wait(lambda: sut.port_state(board, line) == "down", limits.down_s,
                            f"port {name} reported down", limits.poll_s)
            step.figures["down_after_s"] = round(down, 3)
        finally:
            inst.select(board, line)
            inst.command("LINE:ALARM OFF")
        _, up = _wait(lambda: sut.port_state(board, line) == "idle", limits.up_s,
                      f"port {name} idle again", limits.poll_s)
        step.figures["idle_after_clear_s"] = round(up, 3)
        step.figures["line_state_after"] = inst.state()
        step.limits.update(line_state="alarm", down_after_s=[0, limits.down_s],
                           idle_after_clear_s=[0, limits.up_s], line_state_after="idle")
        problems = [f"{k} {step.figures[k]!r}" for k, want in (("line_state", "alarm"),
                                                               ("line_state_after", "idle"))
                    if step.figures[k] != want]
        step.passed = not problems
        step.detail = "; ".join(problems)

    return _guarded("alarm", name, run)


def qualify(inst: Instrument, sut: SystemUnderTest, limits: Limits = Limits(), *,
            resource: str = "", simulated: bool = True) -> Report:
    """The whole run; every step is recorded whatever happens to the others."""
    report = Report(resource=resource, simulated=simulated, started=_now())
    report.steps.append(step_identify(inst, report))
    report.steps.extend(steps_lines(inst, sut, limits))
    report.steps.extend(steps_messaging(inst, sut, limits))
    for board, line in sut.lines:
        report.steps.append(step_alarm(inst, sut, board, line, limits))
    report.finished = _now()
    return report


def open_instrument(resource: str, *, backend: str = "@py", poll_s: float = 0.02):
    """(ResourceManager, Instrument) for ``resource`` through pyvisa."""
    import pyvisa

    rm = pyvisa.ResourceManager(backend)
    return rm, Instrument(rm.open_resource(resource), poll_s=poll_s)


# -- the system under test: a vmha pair --------------------------------------------------
def _pattern_digits(reason: str, extension: str) -> str:
    """The in-band digits of the analog-dtmf integration's pattern for ``reason``."""
    for pattern in DTMF_PATTERNS:
        name, _, digits = pattern.partition(":")
        if name == reason:
            return digits.replace("{ext}", extension).replace("{caller}", extension)
    raise ValueError(f"no {reason} pattern in {DTMF_PATTERNS}")


class PairSut:
    """A vmha pair (``lab.pair.Pair``) whose node ``node`` has its analog ports on the
    tester's ``board`` (lines 1..``lines``), with a subscriber whose lamp is dialled
    (``mwi_method = "dtmf"``)."""

    def __init__(self, pair: Any, *, board: str, lines: int, rings: int, tone_profile: str = "na",
                 node: str = "a", extension: str = "1002", mailbox: str = "mb1002") -> None:
        from failover.config import load_config
        from telephony.core import tones

        self.pair, self.node = pair, pair.node(node)
        self.board = board
        self.lines = [(board, n) for n in range(1, lines + 1)]
        self.rings = rings
        self.ring_period_s = tones.lookup(tone_profile, "ring").period_ms / 1000
        self.extension, self.mailbox = extension, mailbox
        self.store_root = load_config(self.node.config).store.maildir

    def forwarded_digits(self, extension: str) -> str:
        return _pattern_digits("busy", extension)

    def access_digits(self, extension: str) -> str:
        return _pattern_digits("direct", extension)

    def lamp_codes(self, extension: str) -> tuple[str, str]:
        return dial_string(MWI_ON_CODE, extension), dial_string(MWI_OFF_CODE, extension)

    def new_messages(self, mailbox: str) -> int:
        import trio

        from telephony.store.maildir import MaildirStore

        return trio.run(MaildirStore(self.store_root).counts, mailbox)[0]

    def port_state(self, board: str, line: int) -> str | None:
        if board != self.board:
            return None
        st = self.node.status() or {}
        for p in st.get("ports") or []:
            if p.get("name") == f"analog-{line}":
                return p.get("state")
        return None

    def add_subscriber(self) -> None:
        row = {"extension": self.extension, "name": "Qualification", "mailbox": self.mailbox,
               "mwi_method": "dtmf", "notify": []}
        # the lamp-off step opens the mailbox from the subscriber's own line: the per-subscriber
        # opt-in to skip the PIN from the own phone (the PIN itself is not what is qualified)
        pin = {"extension": self.extension, "pin": None, "skip_pin_from_own_phone": True}
        r = self.node.admin({"op": "db_write", "ops": [{"op": "put", "table": "subscribers", "row": row},
                                                       {"op": "put", "table": "pins", "row": pin}]},
                            timeout=10)
        if not r or not r.get("ok"):
            raise RuntimeError(f"cannot add the subscriber {self.extension}: {r}")

    def wait_ready(self, bound_s: float = 90.0) -> None:
        """Node ``a`` active and its peer inactive, every analog port idle."""
        def ready() -> bool:
            st = self.node.status() or {}
            peer = st.get("peer") or {}
            return ((st.get("node") or {}).get("state") == "active" and peer.get("state") == "inactive"
                    and all(self.port_state(b, n) == "idle" for b, n in self.lines))
        _wait(ready, bound_s, "the node active with its analog ports idle", 0.1)


#: the messaging settings of the qualification's pair: a short silence ends a message
MESSAGING = {"messaging": {"silence": 1.0, "min_message": 0.5, "max_message": 30}}


def run_qualification(*, visa: str | None, dahdi: str | None, work: Path, lines: int = 2,
                      rings: int = 2, limits: Limits | None = None) -> Report:
    """The whole qualification with its system under test started here: a vmha pair on
    loopback whose node ``a`` has its analog ports on the tester's board ``a``.

    Without ``visa``: the simulated bench (:class:`lab.instrument.BenchThread`: the board
    simulator with the simulated tester), both nodes' lines on its boards.  With ``visa`` (a
    real tester) and ``dahdi`` (the DAHDI FXO channels wired to the tester's lines 1..N of
    its board ``a``): node ``a`` on those channels; node ``b`` (which takes no call in the
    run) on a simulated board, since both nodes of a pair enable the same port drivers."""
    from contextlib import ExitStack

    from lab.instrument import BenchThread
    from lab.pair import Pair, analog_sections, merge_sections

    if visa and not dahdi:
        raise ValueError("--visa needs --dahdi CHANNELS: the DAHDI FXO channels wired to the tester's lines")
    if dahdi and not visa:
        raise ValueError("--dahdi needs --visa RESOURCE: the tester wired to those channels")
    keys = {"rings": rings}
    if dahdi:
        lines = len(parse_channels(dahdi))
    with ExitStack() as stack:
        bench = stack.enter_context(BenchThread(work / "bench", {"a": lines, "b": lines}))
        extra_a = analog_sections(bench.socket_path("a"), count=lines, **keys)
        if dahdi:
            extra_a = merge_sections(extra_a, {"ports": {"analog": {
                "enabled": True, "backend": "dahdi", "channels": dahdi, **keys}}})
        extra_b = analog_sections(bench.socket_path("b"), count=lines, **keys)
        pair = stack.enter_context(Pair(work / "pair", relay=False, extra=MESSAGING,
                                        extra_a=extra_a, extra_b=extra_b))
        pair.start()
        sut = PairSut(pair, board="a", lines=lines, rings=rings)
        sut.wait_ready()
        sut.add_subscriber()
        resource = visa or bench.resource
        rm, inst = open_instrument(resource)
        try:
            limits = limits or (Limits() if visa else Limits.simulated())
            return qualify(inst, sut, limits, resource=resource, simulated=visa is None)
        finally:
            inst.res.close()
            rm.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hwtests.qualify_analog",
                                description="Qualify analog voice-board ports with a line tester "
                                            "(docs/analog.md, 'Hardware qualification').")
    p.add_argument("--visa", metavar="RESOURCE",
                   help="the line tester's VISA resource (default: start the simulated tester "
                        "and board simulator)")
    p.add_argument("--dahdi", metavar="CHANNELS",
                   help="the DAHDI FXO channels wired to the tester's lines (e.g. 1-4); needed with "
                        "a real tester")
    p.add_argument("--report", metavar="DIR", type=Path, required=True, help="where the report goes")
    p.add_argument("--work", metavar="DIR", type=Path,
                   help="the node pair's and the simulators' directory (default: REPORT/work)")
    p.add_argument("--lines", type=int, default=2, help="lines to qualify without --dahdi (default 2)")
    p.add_argument("--rings", type=int, default=2, help="rings before the ports answer (default 2)")
    args = p.parse_args(argv)
    try:
        report = run_qualification(visa=args.visa, dahdi=args.dahdi, work=args.work or args.report / "work",
                                   lines=args.lines, rings=args.rings)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"qualify_analog: {e}", file=sys.stderr)
        return 2
    j, t = report.write(args.report)
    sys.stdout.write(report.summary())
    print(f"report: {j} {t}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
