"""Options of the hardware qualification runs (hwtests/README.md).

Without options every run uses simulated resources (a socat pty pair stands in for a
null-modem cable), so CI runs them like any test.  In a lab the same checks run against real
ports::

    .venv/bin/python -m pytest hwtests --smdi-node /dev/ttyS0 --smdi-pbx /dev/ttyS1 \\
        --smdi-line 9600,7E1 --hw-report /tmp/qualification.json
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from telephony.smdi.settings import SerialSettings

_LINE = re.compile(r"(\d{2,7}),([5-8])([NEOMS])(1|1\.5|2)")
_PARITY = {"N": "none", "E": "even", "O": "odd", "M": "mark", "S": "space"}


def pytest_addoption(parser):
    g = parser.getgroup("vmha hardware qualification")
    g.addoption("--smdi-node", metavar="DEVICE",
                help="the voice-mail end of the SMDI line: a tty or a pyserial URL "
                     "(default: one end of a socat pty pair)")
    g.addoption("--smdi-pbx", metavar="DEVICE",
                help="the switch end (a second port on a null-modem cable, or the data "
                     "splitter's input); required with --smdi-node")
    g.addoption("--smdi-line", metavar="BAUD,FRAMING", default="9600,7E1",
                help="line settings of both ends (default 9600,7E1)")
    g.addoption("--hw-report", metavar="FILE",
                help="write the measured figures of the run to this JSON file")
    g.addoption("--dahdi", metavar="CHANNELS",
                help="DAHDI channels of FXO ports to qualify, as in system.conf (1-4,7); "
                     "without it the DAHDI board runs skip (they need a card)")
    g.addoption("--visa", metavar="RESOURCE",
                help="the telephone-line tester's VISA resource (TCPIP::host::port::SOCKET ...), "
                     "wired to the --dahdi channels; without it the analog qualification runs "
                     "on the simulated tester and board")


def _line(text: str) -> tuple[int, int, str, float]:
    m = _LINE.fullmatch(text.strip().upper())
    if not m:
        raise pytest.UsageError(f"--smdi-line must look like 9600,7E1, not {text!r}")
    return int(m[1]), int(m[2]), _PARITY[m[3]], float(m[4])


@pytest.fixture
def smdi_line(request, tmp_path):
    """(node settings, pbx device, simulated?): the two ends of the SMDI line under test."""
    node, pbx = request.config.getoption("--smdi-node"), request.config.getoption("--smdi-pbx")
    baud, bits, parity, stop = _line(request.config.getoption("--smdi-line"))
    if node:
        if not pbx:
            raise pytest.UsageError("--smdi-node needs --smdi-pbx (the switch end)")
        yield SerialSettings(node, baud, bits, parity, stop), pbx, False
        return
    if shutil.which("socat") is None:
        # not a hardware skip: the simulated cable is software, so CI fails without it
        pytest.skip("socat is not installed: it makes the simulated null-modem cable "
                    "(apt-get install socat)")
    from lab.smdi import SocatPair

    pair = SocatPair(tmp_path / "node", tmp_path / "pbx")
    pair.start()
    try:
        yield SerialSettings(str(tmp_path / "node"), baud, bits, parity, stop), \
            str(tmp_path / "pbx"), True
    finally:
        pair.stop()


@pytest.fixture
def dahdi_channels(request) -> list[int]:
    """The DAHDI channels given with ``--dahdi`` (FXO ports wired to the PBX's lines)."""
    from telephony.analog.dahdi import parse_channels

    text = request.config.getoption("--dahdi")
    if not text:
        pytest.skip("hardware: no DAHDI card given (--dahdi CHANNELS on a machine with FXO ports)")
    try:
        return parse_channels(text)
    except ValueError as e:
        raise pytest.UsageError(f"--dahdi: {e}") from None


@pytest.fixture(scope="session")
def hw_report(request):
    """A dict the runs fill with their figures; written to --hw-report at the end."""
    figures: dict = {}
    yield figures
    path = request.config.getoption("--hw-report")
    if path:
        Path(path).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
