"""The qualification run's step logic (hwtests/qualify_analog.py) against canned instruments:
pyvisa-sim devices (hwtests/sim_instruments.yaml) for a port that qualifies, one out of every
limit, and one that never answers.  The whole run against the live simulated tester and a
real pair is hwtests/test_analog_qualification.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import pyvisa
from hypothesis import given, settings
from hypothesis import strategies as st

from hwtests.qualify_analog import (
    REPORT_JSON,
    REPORT_TEXT,
    Instrument,
    InstrumentError,
    Limits,
    Report,
    Step,
    judge_answer,
    judge_dtmf,
    judge_range,
    main,
    nominal,
    parse_dtmf,
    parse_number,
    parse_rings,
    step_identify,
    steps_lines,
)
from telephony.core.dtmf import FREQS

YAML = Path(__file__).resolve().parents[2] / "hwtests" / "sim_instruments.yaml"
GOOD, DRIFTING, SILENT = (f"TCPIP::127.0.0.1::{p}::SOCKET" for p in (5025, 5026, 5027))


@pytest.fixture
def rm():
    manager = pyvisa.ResourceManager(f"{YAML}@sim")
    yield manager
    manager.close()


def open_tester(rm, resource: str) -> Instrument:
    return Instrument(rm.open_resource(resource), poll_s=0.001, timeout_ms=500)


class Sut:
    """The system-under-test side of the steps that need one (lines, rings, cadence)."""

    lines = [("a", 1)]
    rings = 2
    ring_period_s = 0.02
    extension, mailbox = "1002", "mb1002"


def test_identify_reads_idn_and_resets(rm):
    report = Report()
    step = step_identify(open_tester(rm, GOOD), report)
    assert step.passed and step.figures["idn"] == report.instrument == "Acme Telecom,LT-900,SN42,2.1"
    bad = step_identify(open_tester(rm, DRIFTING), Report())
    assert not bad.passed and "LT-900" in bad.detail


def test_a_refused_command_is_an_instrument_error_naming_the_queue(rm):
    inst = open_tester(rm, GOOD)
    inst.command("LINE:SEL a,1")  # taken: nothing queued
    with pytest.raises(InstrumentError, match=r"'LINE:FROB 1' refused: -113,\"Undefined header\""):
        inst.command("LINE:FROB 1")
    assert inst.errors() == []  # the queue was read empty


def test_the_good_ports_figures_pass_every_limit(rm):
    inst, limits = open_tester(rm, GOOD), Limits()
    answer = Step("answer", "a,1", False)
    judge_answer(answer, *inst.rings(), 2, 6.0, limits)
    assert answer.passed and answer.figures == {"rings": 2, "answered_after_s": 7.2}
    assert answer.limits == {"rings": 2, "answered_after_s": [6.0, 12.0 + limits.answer_slack_s]}
    loop = Step("loop_current", "a,1", False)
    judge_range(loop, "loop_ma", inst.number("MEAS:LOOP?"), *limits.loop_ma)
    assert loop.passed and loop.figures["loop_ma"] == 25.0
    lamp = Step("lamp_on", "a,1", False)
    judge_dtmf(lamp, "*911002", inst.dtmf(), limits)
    assert lamp.passed, lamp.detail
    assert lamp.figures["digit_measured"] == "*" and lamp.figures["nominal_low_hz"] == 941.0
    assert abs(lamp.figures["low_deviation_pct"]) < 0.1 and inst.lamp("1002") is True


def test_the_drifting_ports_figures_fail_with_what_is_wrong(rm):
    inst, limits = open_tester(rm, DRIFTING), Limits()
    answer = Step("answer", "a,1", False)
    judge_answer(answer, *inst.rings(), 2, 6.0, limits)
    assert not answer.passed and "after 3 rings, configured 2" in answer.detail
    assert "14.100 s, outside" in answer.detail
    loop = Step("loop_current", "a,1", False)
    judge_range(loop, "loop_ma", inst.number("MEAS:LOOP?"), *limits.loop_ma)
    assert not loop.passed and "loop_ma 9 outside 15..80" == loop.detail
    lamp = Step("lamp_on", "a,1", False)
    judge_dtmf(lamp, "*911002", inst.dtmf(), limits)
    assert not lamp.passed
    assert "off nominal 941/1209 by more than 1.5 %" in lamp.detail and "level -13 dBm0" in lamp.detail
    assert lamp.figures["low_deviation_pct"] == pytest.approx((960 - 941) / 941 * 100, abs=0.001)
    assert inst.lamp("1002") is False


@pytest.mark.parametrize("scale, passed", [(1.0149, True), (0.9851, True), (1.0151, False), (0.9849, False)])
def test_the_frequency_limit_is_one_and_a_half_percent_either_way(scale, passed):
    low, high = FREQS["5"]
    for measured in ((low * scale, high), (low, high * scale)):
        step = Step("lamp_on", None, False)
        judge_dtmf(step, "5", ("5", *measured, -7.0), Limits())
        assert step.passed is passed, (measured, step.detail)


def test_wrong_digits_and_no_digits_fail():
    step = Step("lamp_on", None, False)
    judge_dtmf(step, "*911002", ("*921002", 941.0, 1209.0, -7.0), Limits())
    assert not step.passed and "dialled '*921002', expected '*911002'" in step.detail
    step = Step("lamp_on", None, False)
    judge_dtmf(step, "*911002", ("", 0.0, 0.0, -99.0), Limits())
    assert not step.passed and "no DTMF digit measured" in step.detail
    assert nominal("#1") == ("#", 941.0, 1477.0) and nominal("") is None


def test_a_port_that_never_answers_fails_its_line_steps_with_reasons(rm):
    inst = open_tester(rm, SILENT)
    steps = steps_lines(inst, Sut(), Limits(answer_slack_s=0.05))
    assert [(s.name, s.passed) for s in steps] == [("answer", False), ("loop_current", False),
                                                     ("disconnect", False)]
    assert steps[0].detail.startswith("TimeoutError: line state 'idle'")
    assert steps[0].figures == {"state_before": "idle", "idle_loop_ma": 0.0}
    assert "answer failed" in steps[1].detail and "answer failed" in steps[2].detail


def test_report_json_and_summary(tmp_path):
    report = Report(instrument="X,Y,Z,1", resource="TCPIP::h::1::SOCKET", simulated=False,
                    started="s", finished="f")
    assert not report.passed  # no step: nothing qualified
    report.steps.append(Step("identify", None, True, {"idn": "X,Y,Z,1"}, {"idn": "4 fields"}))
    assert report.passed
    report.steps.append(Step("loop_current", "a,1", False, {"loop_ma": 9.0}, {"loop_ma": [15, 80]},
                             "loop_ma 9 outside 15..80"))
    j, t = report.write(tmp_path / "out")
    assert (j.name, t.name) == (REPORT_JSON, REPORT_TEXT)
    data = json.loads(j.read_text())
    assert data["passed"] is False and [s["name"] for s in data["steps"]] == ["identify", "loop_current"]
    assert data["steps"][1]["figures"] == {"loop_ma": 9.0}
    assert data["steps"][1]["limits"] == {"loop_ma": [15, 80]}
    text = t.read_text()
    assert text.startswith("Analog port qualification: FAIL")
    assert "FAIL  loop_current [a,1]" in text and "loop_ma = 9.0   (limit [15, 80])" in text


def test_waiting_for_a_line_state_has_its_bound(rm):
    inst = open_tester(rm, GOOD)
    inst.res.write("LINE:STAT idle")  # the canned device's state (not a tester command)
    assert inst.wait_state("idle", 1.0) < 1.0
    with pytest.raises(TimeoutError, match="line state 'idle' after 0.05 s"):
        inst.wait_state("offhook", 0.05)


def test_answers_are_parsed_or_refused():
    assert parse_dtmf('"*911002#",941.0,1209.0,-7.0') == ("*911002#", 941.0, 1209.0, -7.0)
    assert parse_rings("2,8.004") == (2, 8.004) and parse_rings("4,-1") == (4, -1.0)
    for bad in ('"*91",941', '"x",1,2,3', "*91,1,2,3", '"1",nan,2,3'):
        with pytest.raises(InstrumentError, match="MEAS:DTMF"):
            parse_dtmf(bad)
    for bad in ("2", "-2,1", "a,1", "2,inf", "99999,1"):
        with pytest.raises(InstrumentError, match="MEAS:RING"):
            parse_rings(bad)
    with pytest.raises(InstrumentError, match="MEAS:LOOP\\? answered 'x'"):
        parse_number("MEAS:LOOP?", "x")


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=120))
def test_fuzzed_answers_give_figures_or_an_instrument_error(text):
    import math

    for parse in (parse_dtmf, parse_rings, lambda t: parse_number("MEAS:LOOP?", t)):
        try:
            got = parse(text)
        except InstrumentError:
            continue
        figures = got[1:] if isinstance(got, tuple) else (got,)
        assert all(isinstance(f, (int, float)) and math.isfinite(f) for f in figures), got


@pytest.mark.parametrize("argv, why", [
    (["--visa", "TCPIP::10.0.0.9::5025::SOCKET"], "--visa needs --dahdi CHANNELS"),
    (["--dahdi", "1-4"], "--dahdi needs --visa RESOURCE"),
    (["--visa", "TCPIP::10.0.0.9::5025::SOCKET", "--dahdi", "4-1"], "'4-1'")])
def test_bad_options_exit_2_before_anything_starts(tmp_path, capsys, argv, why):
    assert main(argv + ["--report", str(tmp_path / "out")]) == 2
    assert why in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
