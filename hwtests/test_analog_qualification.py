"""Qualification of analog voice-board ports with a telephone-line tester, through pyvisa
(hwtests/qualify_analog.py; docs/analog.md, "Hardware qualification").

Without options (CI) it needs no hardware: the simulated tester (lab/instrument.py, SCPI on a
real TCP socket, opened with pyvisa-py) drives the board simulator, and the system under test
is a real vmha pair whose node ``a`` has its analog ports on the simulator's board ``a``.  In a
lab, ``--visa RESOURCE`` names a real tester and ``--dahdi CHANNELS`` the FXO channels wired
to its lines 1..N::

    .venv/bin/python -m pytest hwtests/test_analog_qualification.py \\
        --visa TCPIP::10.0.0.9::5025::SOCKET --dahdi 1-4 --hw-report qualification.json

The run's own bounds are its limits (in the report); nothing here is a speed requirement of
the test machine.
"""
from __future__ import annotations

import json

import pytest

from hwtests.qualify_analog import REPORT_JSON, REPORT_TEXT, main


@pytest.mark.multiprocess
def test_analog_ports_qualify(request, tmp_path, hw_report):
    visa, dahdi = request.config.getoption("--visa"), request.config.getoption("--dahdi")
    if visa and not dahdi:
        pytest.skip("hardware: --visa names a tester but no --dahdi CHANNELS are wired to it")
    out = tmp_path / "report"
    argv = ["--report", str(out), "--work", str(tmp_path / "work")]
    if visa:
        argv += ["--visa", visa, "--dahdi", dahdi]
    rc = main(argv)
    data = json.loads((out / REPORT_JSON).read_text())
    text = (out / REPORT_TEXT).read_text()
    hw_report["analog_qualification"] = data
    names = [s["name"] for s in data["steps"]]
    lines = 2 if not dahdi else None
    if lines:
        assert names.count("answer") == names.count("disconnect") == names.count("alarm") == lines
    assert {"identify", "message", "lamp_on", "lamp_off"} <= set(names)
    assert data["simulated"] is (visa is None)
    assert data["passed"] is True and rc == 0, text
    assert text.startswith("Analog port qualification: PASS")
