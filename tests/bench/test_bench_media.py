"""bench/bench_media.py's own machinery: the multimon-ng wrapper (a real multimon-ng process:
the case must reach it in its raw format, 22050 Hz 16-bit, or it decodes nothing) and the
nearest-rank percentile the figures use."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from telephony.core import dsp

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_media.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_media", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digit(low: float, high: float) -> bytes:
    return dsp.tone([low, high], 80, [-10.0, -10.0]) + dsp.silence_ms(80)


def test_multimon_decodes_what_the_bench_writes(bench, tmp_path):
    if shutil.which("multimon-ng") is None:
        pytest.fail("multimon-ng is not installed (apt-get install multimon-ng)")
    pcm = digit(697, 1209) + digit(770, 1336) + digit(941, 1477) + digit(852, 1633)  # 1 5 # C
    assert bench.multimon(pcm, tmp_path) == "15#C"
    assert bench.multimon(dsp.silence_ms(500), tmp_path) == ""
    assert bench.multimon(dsp.tone([1000], 300, [-10.0]), tmp_path) == ""  # one tone: no digit


def test_percentile_is_nearest_rank(bench):
    samples = [float(v) for v in range(1, 21)]  # 1 .. 20
    assert bench.pct(samples, 50) == 10.0 and bench.pct(samples, 95) == 19.0
    assert bench.pct(samples, 100) == 20.0 and bench.pct([], 50) is None
    d = bench.dist("x", [3.0, 1.0, 2.0])
    assert (d["x_p50"], d["x_p95"], d["x_max"], d["x_min"]) == (2.0, 3.0, 3.0, 1.0)
