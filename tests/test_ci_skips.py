"""The rule of the root conftest.py: in CI (CI=true) a skip fails unless it is `hardware:`."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

SKIPS = '''
import shutil
import pytest

def test_runs():
    pass

def test_missing_peer():
    pytest.skip("frobnicator is not installed (apt-get install frobnicator)")

@pytest.mark.skipif(True, reason="needs root to mount a tmpfs")
def test_marked():
    pass

@pytest.fixture
def board():
    pytest.skip("hardware: no voice board given (--board)")

def test_hardware(board):
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_failure():
    assert False
'''


@pytest.fixture
def suite(pytester):
    pytester.makeconftest(ROOT_CONFTEST.read_text())
    pytester.makepyfile(test_skips=SKIPS)
    return pytester


def test_outside_ci_skips_stay_skips(suite, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    result = suite.runpytest_subprocess("-rs")
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)


def test_in_ci_a_skip_that_is_not_hardware_fails_naming_its_reason(suite, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest_subprocess("-rs")
    # a skip in setup (skipif, a fixture) fails as an error, one in the call as a failure
    result.assert_outcomes(passed=1, failed=1, errors=1, skipped=1, xfailed=1)
    for line in ("*skipped in CI (CI=true): frobnicator is not installed (apt-get install frobnicator)*",
                 "*skipped in CI (CI=true): needs root to mount a tmpfs*",
                 "SKIPPED*hardware: no voice board given (--board)*"):
        result.stdout.fnmatch_lines([line])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_in_ci_a_module_skipped_at_import_fails(pytester, monkeypatch):
    pytester.makeconftest(ROOT_CONFTEST.read_text())
    pytester.makepyfile(test_gone='''
import pytest
pytest.importorskip("no_such_module_vmha", reason="no_such_module_vmha is not installed")

def test_never():
    pass
''')
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest_subprocess("-rs")
    result.stdout.fnmatch_lines(["*skipped in CI (CI=true): no_such_module_vmha is not installed*"])
    assert result.ret != pytest.ExitCode.OK
    monkeypatch.setenv("CI", "false")
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(skipped=1)
