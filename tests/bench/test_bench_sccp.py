"""bench/bench_sccp.py's own machinery: the per-packet deviation D of its jitter key (with a
wrapping RTP timestamp), the nearest-rank percentile, the "all registered" moment taken from
the simulator's ``since`` stamps, the caller's tone file and the options."""
from __future__ import annotations

import importlib.util
import wave
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_sccp.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_sccp", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deviation_is_arrival_step_minus_timestamp_step(bench):
    # 20 ms packets (160 samples); the third arrives 5 ms late, the fourth on time again
    arrivals = [10.000, 10.020, 10.045, 10.060]
    ts = [1000, 1160, 1320, 1480]
    d = bench.deviations_ms(arrivals, ts)
    assert np.allclose(d, [0.0, 5.0, 5.0], atol=1e-6)


def test_deviation_across_a_timestamp_wrap(bench):
    ts = [2**32 - 160, 0, 160]  # the 32-bit timestamp wraps between the first two
    d = bench.deviations_ms([0.0, 0.020, 0.041], ts)
    assert np.allclose(d, [0.0, 1.0], atol=1e-6)
    assert len(bench.deviations_ms([0.0], [0])) == 0


def test_percentile_is_nearest_rank(bench):
    samples = [float(v) for v in range(1, 201)]  # 1 .. 200
    assert bench.pct(samples, 50) == 100.0
    assert bench.pct(samples, 99) == 198.0
    assert bench.pct([], 50) is None
    out = bench.dist("x", samples, 1, p99=True)
    assert out == {"x_p50": 100.0, "x_p95": 190.0, "x_p99": 198.0, "x_max": 200.0}


def test_all_registered_is_the_latest_since_once_every_device_is(bench):
    regs = {"D1": {"state": "registered", "since": 5.0}, "D2": {"state": "registered", "since": 7.5},
            "X": {"state": "registered", "since": 99.0}}
    assert bench.registered_since(regs, ["D1", "D2"]) == 7.5  # others do not count
    regs["D2"] = {"state": "registering", "since": 7.5}
    assert bench.registered_since(regs, ["D1", "D2"]) is None
    assert bench.registered_since(regs, ["D1", "D3"]) is None  # never seen


def test_tone_file_is_8khz_16bit_and_never_silent(bench, tmp_path):
    path = tmp_path / "tone.wav"
    bench.write_tone(path, 2.0)
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels(), w.getnframes()) == (8000, 2, 1, 16000)
        pcm = np.frombuffer(w.readframes(16000), dtype="<i2").astype(float)
    frames = pcm.reshape(-1, 160)
    assert (np.sqrt((frames ** 2).mean(axis=1)) > 3000).all()


def test_options_quick_only_and_steps(bench):
    a = bench.parse_args(["--json", "x.json", "--only", "register_all_s,cm_failover_s"])
    assert a.only == ["register", "failover"] and a.steps == [48, 96, 144, 192]
    q = bench.parse_args(["--json", "x.json", "--quick"])
    assert (q.max, q.steps, q.ports, q.runs) == (16, [8, 16], 16, 2)
    s = bench.parse_args(["--json", "x.json", "--max", "150", "--steps", "200,48,144"])
    assert s.steps == [48, 144]
    with pytest.raises(SystemExit):
        bench.parse_args(["--json", "x.json", "--only", "nonsense"])
