"""The parsers under coverage-guided fuzzing (tests/fuzz, docs/testing.md "Fuzzing").

Two checks per harness:

* the corpus replay: every file of ``tests/fuzz/corpus/<name>/`` (the seeds made with our own
  encoders and the reproducers of bugs fuzzing found) through the harness in this process;
* a short atheris run: ``python -m tests.fuzz.run NAME`` for ``VMHA_FUZZ_SECONDS`` (default
  5) seconds in a subprocess, from the corpus, with the project's modules instrumented.  The
  runs go in parallel, as many at once as the machine has CPUs (``VMHA_FUZZ_JOBS`` to change
  it).  A crash fails the test with the input (hex and repr), the harness's traceback and
  whether the input also fails without instrumentation (see tests/fuzz/run.py).

Long runs are ``bench/fuzz.py``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fuzz.common import CORPUS, HARNESSES

ROOT = Path(__file__).resolve().parents[2]
SECONDS = int(os.environ.get("VMHA_FUZZ_SECONDS", "5"))
JOBS = int(os.environ.get("VMHA_FUZZ_JOBS", "0")) or max(1, min(8, os.cpu_count() or 1))
SCRATCH_BASE = "/dev/shm" if os.path.isdir("/dev/shm") else None  # harnesses' files


def corpus_files(name: str) -> list[Path]:
    return sorted(p for p in (CORPUS / name).iterdir() if p.is_file())


@pytest.fixture(scope="module")
def scratch():
    """Where the harnesses run in this process keep their files (removed at the end)."""
    path = tempfile.mkdtemp(prefix="vmha-fuzz-", dir=SCRATCH_BASE)
    old = os.environ.get("VMHA_FUZZ_SCRATCH")
    os.environ["VMHA_FUZZ_SCRATCH"] = path
    yield path
    if old is None:
        del os.environ["VMHA_FUZZ_SCRATCH"]
    else:
        os.environ["VMHA_FUZZ_SCRATCH"] = old
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("name", HARNESSES)
def test_corpus_replays(scratch, name):
    """Every seed and every recorded reproducer goes through the harness without a finding."""
    import importlib

    harness = importlib.import_module(f"tests.fuzz.fuzz_{name}")
    files = corpus_files(name)
    assert files, f"tests/fuzz/corpus/{name} is empty: run python -m tests.fuzz.make_corpus {name}"
    failures = []
    for path in files:
        try:
            harness.test_one_input(path.read_bytes())
        except Exception as e:  # noqa: BLE001 - every finding is reported, with its file
            failures.append(f"{path.relative_to(ROOT)}: {type(e).__name__}: {e}")
    assert not failures, "corpus inputs that fail their harness:\n" + "\n".join(failures)


def describe_crash(name: str, out_dir: Path, log: str) -> str:
    crashes = sorted(p for p in out_dir.iterdir() if p.name.startswith(("crash-", "timeout-",
                                                                           "oom-", "leak-")))
    lines = [f"atheris found a failing input for the {name} harness"]
    for path in crashes:
        data = path.read_bytes()
        scratch = tempfile.mkdtemp(prefix="vmha-fuzz-", dir=SCRATCH_BASE)
        try:
            replay = subprocess.run([sys.executable, "-m", "tests.fuzz.run", name, "--replay",
                                     str(path)], cwd=ROOT, capture_output=True, text=True,
                                    errors="replace",
                                    env={**os.environ, "VMHA_FUZZ_SCRATCH": scratch})
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        verdict = ("yes: a finding in the parser or the harness" if replay.returncode else
                   "NO: only under atheris's instrumentation (an instrumentation artefact, "
                   "see tests/fuzz/run.py)")
        lines += [f"  {path.name}: {len(data)} bytes", f"  hex: {data.hex()}",
                  f"  repr: {data!r:.2000}",
                  f"  fails without instrumentation: {verdict}",
                  f"  reproduce: python -m tests.fuzz.run {name} --replay FILE "
                  f"(save the bytes above, or copy it into tests/fuzz/corpus/{name}/)"]
    if not crashes:
        lines.append("  (no input file was written)")
    tail = log[log.find("=== Uncaught Python exception"):] if "Uncaught" in log else log[-4000:]
    return "\n".join(lines) + "\n--- harness output ---\n" + tail[:6000]


class ShortRuns:
    """Starts every harness's short run on first use, at most ``JOBS`` at a time."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.pool = ThreadPoolExecutor(max_workers=JOBS)
        self.lock = threading.Lock()
        self.runs: dict[str, Future] = {}

    def start_all(self) -> None:
        with self.lock:
            for name in HARNESSES:
                if name not in self.runs:
                    self.runs[name] = self.pool.submit(self.run, name)

    def run(self, name: str) -> tuple[int, str, Path]:
        work = self.base / name
        new, out = work / "corpus", work / "out"
        new.mkdir(parents=True)
        out.mkdir()
        cmd = [sys.executable, "-m", "tests.fuzz.run", name, f"-max_total_time={SECONDS}",
               "-timeout=30", "-print_final_stats=1", f"-artifact_prefix={out}/", str(new),
               str(CORPUS / name)]
        scratch = tempfile.mkdtemp(prefix="vmha-fuzz-", dir=SCRATCH_BASE)
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                  timeout=SECONDS * 4 + 120, errors="replace",
                                  env={**os.environ, "VMHA_FUZZ_SCRATCH": scratch})
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return proc.returncode, proc.stdout + proc.stderr, out

    def result(self, name: str) -> tuple[int, str, Path]:
        self.start_all()
        return self.runs[name].result()


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory):
    try:
        import atheris  # noqa: F401
    except ImportError as e:
        pytest.fail(f"atheris is not installed ({e}): .venv/bin/pip install -e '.[test]'")
    runs = ShortRuns(tmp_path_factory.mktemp("fuzz"))
    yield runs
    runs.pool.shutdown(wait=True)


@pytest.mark.parametrize("name", HARNESSES)
def test_short_fuzz_run_finds_nothing(short_runs, name):
    rc, log, out = short_runs.result(name)
    assert rc == 0, describe_crash(name, out, log)
    assert "stat::number_of_executed_units" in log, f"the run did not finish:\n{log[-3000:]}"
    runs = int(log.split("stat::number_of_executed_units:")[1].split()[0])
    assert runs > len(corpus_files(name)), f"only {runs} executions:\n{log[-3000:]}"


# a function that ends in a ``while True:`` loop whose body is long once instrumented: the
# case atheris 2.3.0 gets wrong on Python 3.11 (tests/fuzz/run.py)
_LOOP_AT_THE_END = '''
def f(items):
    out = []
    it = iter(items)
    while True:
        item = next(it)
        if isinstance(item, int):
            return out
        if isinstance(item, float):
            out.append("f")
        elif isinstance(item, str):
            continue
        elif item.strip():
            out.append(item)
'''


def test_instrumented_loop_at_the_end_of_a_function_runs_as_written():
    import dis

    from atheris import instrument_bytecode

    from tests.fuzz.run import fix_atheris_last_backward_jump

    fix_atheris_last_backward_jump()
    namespace: dict = {}
    exec(compile(_LOOP_AT_THE_END, "sample", "exec"), namespace)
    f = namespace["f"]
    items = [b"a", 1.0, "s", b" ", b"b", 3]
    plain = f(items)
    code = instrument_bytecode.patch_code(f.__code__, True, True)
    instructions = list(dis.get_instructions(code))
    starts = {i.offset for i in instructions}
    jumps = [i for i in instructions if "JUMP" in i.opname]
    assert jumps and all(j.argval in starts for j in jumps), \
        [(j.offset, j.opname, j.argval) for j in jumps if j.argval not in starts]
    f.__code__ = code
    assert f(items) == plain == [b"a", "f", b"b"]
