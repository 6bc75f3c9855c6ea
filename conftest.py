"""Rules for the whole test run (tests/ and hwtests/).

**In CI a skip is a failure.**  When ``CI=true`` is in the environment, every test or module
that would be skipped fails instead, naming the skip's reason, unless the reason starts with
``hardware:``.  Those are the only skips CI accepts: a check of real hardware (a serial port, a
voice board, an instrument) that was not named on the command line.  A missing peer program, a
missing Debian package, not running as root, or an import that failed are failures in CI: the
suite is there to run, and a green run with half of it skipped says nothing.

Outside CI the same tests still skip, with their reason (``pytest -rs`` prints them).  The rule
is tested by tests/test_ci_skips.py, and docs/testing.md describes it.
"""
from __future__ import annotations

import os

import pytest

#: the one prefix of a skip reason that CI accepts
HARDWARE = "hardware:"


def _in_ci() -> bool:
    return os.environ.get("CI") == "true"


def _reason(longrepr) -> str:
    """The reason of a skip report (its longrepr is (path, line, "Skipped: reason"))."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
    else:
        text = str(longrepr)
    return text.removeprefix("Skipped: ")


def _fail_the_skip(report) -> None:
    reason = _reason(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped in CI (CI=true): {reason}\n"
        f"Only a test of hardware not named on the command line may skip in CI, and its reason "
        f"must start with {HARDWARE!r}; install what is missing (bash .ci/setup test, as root, "
        f"installs every peer) or fix the import.")


def _not_hardware(report) -> bool:
    return (report.skipped and not hasattr(report, "wasxfail")
            and not _reason(report.longrepr).startswith(HARDWARE))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if _in_ci() and _not_hardware(report):
        _fail_the_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A whole module skipped at import (pytest.importorskip, allow_module_level)."""
    report = yield
    if _in_ci() and _not_hardware(report):
        _fail_the_skip(report)
    return report


@pytest.fixture(autouse=True, scope="session")
def _ram_media_dirs_left_by_test_nodes():
    """The SIP ports keep their prompt and recording files in ``/dev/shm/vmha-<node>-<hash>``
    (telephony.sip.driver.media_dir_for), one directory per node's data_dir, removed when the
    driver stops cleanly.  Test pairs are often stopped harder than that; the empty
    directories they leave are removed at the end of the run (only those made during it, and
    not one a running SIP driver holds open: a node of another test run on this machine keeps
    its directory open, empty as it is between calls)."""
    import os
    from pathlib import Path

    shm = Path("/dev/shm")
    before = set(shm.glob("vmha-*")) if shm.is_dir() else set()
    yield
    made = (set(shm.glob("vmha-*")) if shm.is_dir() else set()) - before
    if not made:
        return
    held = set()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                held.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
    for d in made:
        if str(d) in held:
            continue
        try:
            d.rmdir()  # only an empty one
        except OSError:
            pass


@pytest.fixture
def short_dir():
    """A fresh directory under /tmp with a short path (a pair's Unix sockets live in it, and a
    socket path is limited to 107 bytes), removed afterwards."""
    import shutil
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp(prefix="vmha-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)
