#!/usr/bin/env python3
"""Media benchmark (docs/benchmarks.md, "Media"): the messaging service's per-frame audio work
and the DTMF detector.

::

    python bench/bench_media.py --json bench/results/media-run1.json             # every part
    python bench/bench_media.py --only recorder --json /tmp/recorder.json
    python bench/bench_media.py --report bench/results/media-*.json       # the tables of the docs
    PYTHONPATH=/tmp/bench_before python bench/bench_media.py --only sip,recorder --json before.json

Which code is measured: the ``telephony`` package this process imports (PYTHONPATH chooses a
checkout; the default is the editable install).  The result file records that checkout's root,
its commit and the product files that differ from the commit (``code``), and the file of
``telephony.core.media`` that was imported (``media_module``).  The ``sip`` part runs that
checkout's own ``bench/bench_sip.py`` with the same PYTHONPATH.

Key definitions (fixed here and in docs/benchmarks.md before the first run; a changed
definition gets a new key).  Percentiles are nearest rank over the runs of one invocation.

``sip_service_cpu_per_call`` (part ``sip``)
          The messaging service's CPU per call in progress during recorded calls, in ms of CPU
          per second of wall time: ``cpu_per_call_service_ms_per_s`` of one run of
          ``bench/bench_sip.py --only concurrent,resources --max N --steps N --calls N --hold H
          --sample S`` (defaults N = ``--sip-calls`` 48, H = 60 s, S = 30 s): (the service's
          utime + stime over an S-second window in the middle of the hold, every call up − the
          same over an S-second window idle before the calls) / the calls SIPp had up during
          the window.  Every call is a SIPp caller streaming a continuous tone into a real
          pjsua2 worker, which records it; the service follows each recording and judges
          every 20 ms frame (``media.Recorder``).  The bench_sip result file is written beside
          the media one (``sip_result_file``); ``sip_step_ok`` says whether the step passed
          (0 failed calls, every message whole).  One figure per run: run the part several
          times, alternating the code, for a distribution.
``recorder_cpu_us_per_call_second`` (part ``recorder``; ``_p50``, ``_p95``, ``_max``)
          A microbenchmark of the same path without SIP: CPU µs (``time.process_time``, this
          process) that ``media.Recorder`` takes for one second of one call's audio, fed as
          pjmedia writes a recording (4096-byte pieces), the audio being bench_sip's caller (a
          continuous 1250 Hz tone, never silent).  One run = ``--recorder-seconds`` (600) s of
          audio through a fresh recorder; figure = CPU µs / audio seconds; ``--runs`` runs.
``dtmf_channels_per_core`` (part ``dtmf``; ``_p50``, ``_p95``, ``_max``, ``_min``)
          How many 8 kHz channels one core decodes in real time with
          ``telephony.core.dtmf.DtmfDetector``: one run feeds ``--dtmf-seconds`` (60) s of
          audio in 20 ms chunks (320 bytes) to a fresh detector; figure = audio seconds / CPU
          seconds of this process (``time.process_time``, every thread counted).  The audio
          alternates 2 s of DTMF digits (``dtmf.generate``, random digits, 60 ms on / 60 ms off,
          -10 dBm0) and 2 s of white noise at -40 dBm0 (seeded: the same audio every run).
          ``--runs`` runs.  ``dtmf_digit_errors`` counts runs whose decoded digits were not
          the generated ones (the speed of a detector that misses digits would mean little).
``dtmf_agreement_spandsp`` (part ``agreement``)
          The share of the whole corpus ``lab.dtmf_corpus.build_corpus()`` (in-spec and
          out-of-spec cases) where ours (``dtmf.detect``) and spandsp (``lab.spandsp.spandsp_dtmf``)
          report the same digit string.  ``dtmf_agreement_spandsp_cases`` / ``_agree``; the
          disagreeing cases with both answers in ``dtmf_disagreements_spandsp``.
``dtmf_agreement_multimon_clean`` (part ``agreement``)
          The same against multimon-ng 1.2 on the clean in-spec cases only: each case is
          resampled to 22050 Hz (``telephony.core.dsp.resample``: multimon-ng's raw input is
          22050 Hz signed 16-bit native-endian mono), written to a file with 200 ms of silence
          before and after, decoded with ``multimon-ng -q -a DTMF -t raw FILE``; its digits are
          the ``DTMF: X`` lines in order.
``dtmf_agreement_multimon_nominal`` (part ``agreement``; added after the first runs)
          The same comparison with multimon-ng, on the clean in-spec cases whose tones are at
          their nominal frequencies with no twist (every clean in-spec case except the
          ``freq_*`` and ``twist_*`` ones: each digit, all 16, 40 ms tones, 40 ms pauses, levels
          0 to -26 dBm0).  multimon-ng is looser than the Q.24 limits on one side and stricter
          on the other (it splits a tone 1 % off into repeated digits and rejects 6 dB normal
          twist), so off-nominal in-spec tones measure multimon-ng, not us; this key is the
          comparison on audio both decoders are built for.  ``_cases`` / ``_agree``.
``talkoff_digits``, ``talkoff_digits_spandsp`` (part ``talkoff``)
          Digits reported on 10 minutes of espeak-ng speech (``lab.dtmf_corpus.speech(600)``),
          fed in 20 ms chunks to one ``DtmfDetector`` (ours), and by spandsp on the same audio.
          Every one is a false digit.

Every child process (bench_sip, multimon-ng) is run to completion or killed by its Popen
object; bench_sip stops its own processes by PID.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from telephony.core import media

CHUNK_20MS = 320          # bytes of one 20 ms chunk of 8 kHz 16-bit PCM
PJMEDIA_WRITE = 4096      # pjmedia writes a recording in steps of this many bytes
TONE_HZ = 1250.0          # bench_sip's caller
MULTIMON_RATE = 22050     # multimon-ng's raw input rate
PARTS = ("sip", "recorder", "dtmf", "agreement", "talkoff")


# ============================================================================ helpers

def pct(samples: list[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not samples:
        return None
    s = sorted(samples)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def dist(key: str, samples: list[float], digits: int = 1) -> dict:
    return {f"{key}_p50": round(pct(samples, 50), digits),
            f"{key}_p95": round(pct(samples, 95), digits),
            f"{key}_max": round(max(samples), digits),
            f"{key}_min": round(min(samples), digits),
            f"{key}_runs": [round(v, digits) for v in samples]}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


REPO = Path(__file__).resolve().parents[1]


def code_root() -> Path:
    """The checkout whose ``telephony`` package this process imported."""
    return Path(media.__file__).resolve().parents[2]


def shown(path: str | Path) -> str:
    """``path`` as a result file records it: relative to this repository when inside it (a
    result file names no machine's working directory), else as given (a clone in /tmp)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def shown_command(argv: list[str]) -> str:
    return " ".join(shown(a) if os.sep in a and Path(a).is_absolute() else a for a in argv)


def code_version(root: Path) -> dict:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,
                                  timeout=10).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""
    dirty = git("status", "--porcelain", "--", "telephony", "integrations", "failover", "lab")
    return {"root": "." if root == REPO else shown(root), "commit": git("rev-parse", "HEAD") or None,
            "uncommitted": [ln[3:] for ln in dirty.splitlines()]}


# ============================================================================ sip

def part_sip(args, json_path: Path) -> dict:
    root = code_root()
    n = args.sip_calls
    sip_json = json_path.resolve().with_name(json_path.stem + "-sip.json")
    cmd = [sys.executable, str(root / "bench" / "bench_sip.py"), "--only", "concurrent,resources",
           "--max", str(n), "--steps", str(n), "--calls", str(n), "--hold", f"{args.sip_hold:g}",
           "--sample", f"{args.sip_sample:g}", "--json", str(sip_json)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    log(f"sip: {shown_command(cmd)}")
    proc = subprocess.Popen(cmd, cwd=root, env=env)
    try:
        rc = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: bench_sip stops its processes on SIGTERM
            proc.terminate()
            proc.wait()
    out: dict = {"sip_command": shown_command(["bench_sip.py", *cmd[2:]]), "sip_rc": rc,
                 "sip_result_file": sip_json.name}
    if rc != 0 or not sip_json.exists():
        out["sip_service_cpu_per_call"] = None
        out["sip_error"] = f"bench_sip.py exited {rc}"
        return out
    r = json.loads(sip_json.read_text())
    steps = r.get("concurrent_steps") or [{}]
    out.update({
        "sip_service_cpu_per_call": r.get("cpu_per_call_service_ms_per_s"),
        "sip_step_ok": bool(steps[0].get("ok")),
        "sip_calls_up": r.get("resources_calls_up"),
        "sip_failed_calls": r.get("failed_calls"),
        "sip_service_cpu_load_ms_per_s": r.get("cpu_service_load_ms_per_s"),
        "sip_service_cpu_idle_ms_per_s": r.get("cpu_idle_service_ms_per_s"),
        "sip_workers_cpu_per_call_ms_per_s": r.get("cpu_per_call_workers_ms_per_s"),
        "sip_loadavg_under_load": r.get("loadavg_under_load"),
    })
    return out


# ============================================================================ recorder

def part_recorder(args) -> dict:
    second = media.tone(TONE_HZ, 1.0, 0.3)
    runs = []
    for i in range(args.runs):
        rec = media.Recorder(max_seconds=args.recorder_seconds + 60, silence_seconds=3.0)
        audio = second * args.recorder_seconds
        pieces = [audio[k:k + PJMEDIA_WRITE] for k in range(0, len(audio), PJMEDIA_WRITE)]
        t0 = time.process_time()
        for piece in pieces:
            rec.feed(piece)
        cpu = time.process_time() - t0
        if rec.reason is not None or len(rec.finish()) != len(audio):
            raise RuntimeError(f"the recorder ended early ({rec.reason}): the bench is wrong")
        runs.append(cpu * 1e6 / args.recorder_seconds)
        log(f"recorder run {i + 1}: {runs[-1]:.1f} µs of CPU per call-second")
    return dist("recorder_cpu_us_per_call_second", runs)


# ============================================================================ dtmf

def dtmf_audio(seconds: int, seed: int) -> tuple[bytes, str]:
    """``seconds`` of audio: 2 s of random DTMF digits, 2 s of noise, ...; and the digits."""
    from telephony.core import dsp, dtmf

    rnd = random.Random(seed)
    parts, digits = [], ""
    for k in range(0, seconds, 4):
        burst = "".join(rnd.choice(dtmf.DIGITS) for _ in range(16))  # 16 x 120 ms = 1.92 s
        pcm = dtmf.generate(burst, on_ms=60, off_ms=60, level_dbm0=-10.0)
        pcm += dsp.silence_ms(2000 - len(pcm) // 16)
        parts += [pcm, dsp.white_noise(2000, -40.0, seed=seed + k)]
        digits += burst
    return b"".join(parts), digits


def part_dtmf(args) -> dict:
    from telephony.core import dtmf

    audio, digits = dtmf_audio(args.dtmf_seconds, seed=1)
    chunks = [audio[k:k + CHUNK_20MS] for k in range(0, len(audio), CHUNK_20MS)]
    seconds = len(audio) / 16000
    runs, errors = [], 0
    for i in range(args.runs):
        det = dtmf.DtmfDetector()
        got: list[str] = []
        t0 = time.process_time()
        for c in chunks:
            got += det.feed(c)
        cpu = time.process_time() - t0
        errors += "".join(got) != digits
        runs.append(seconds / cpu)
        log(f"dtmf run {i + 1}: {runs[-1]:.1f} channels per core"
            + ("" if "".join(got) == digits else f" (decoded {len(got)} of {len(digits)} digits)"))
    return {**dist("dtmf_channels_per_core", runs), "dtmf_audio_s": seconds,
            "dtmf_digits_per_run": len(digits), "dtmf_digit_errors": errors}


# ============================================================================ agreement

def case_fields(case) -> tuple[str, bytes, bool, bool]:
    """(name, pcm, in_spec, clean) of one corpus case."""
    get = case.get if isinstance(case, dict) else (lambda k, d=None: getattr(case, k, d))
    return (str(get("name")), bytes(get("pcm")), bool(get("in_spec")), bool(get("clean")))


def multimon(pcm: bytes, tmp: Path) -> str:
    from telephony.core import dsp

    pad = dsp.silence_ms(200)
    raw = dsp.resample(pad + pcm + pad, 8000, MULTIMON_RATE)
    if sys.byteorder != "little":  # multimon-ng reads native-endian samples
        raw = np.frombuffer(raw, "<i2").astype("=i2").tobytes()
    path = tmp / "case.raw"
    path.write_bytes(raw)
    proc = subprocess.run(["multimon-ng", "-q", "-a", "DTMF", "-t", "raw", str(path)],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"multimon-ng failed ({proc.returncode}): {proc.stderr.strip()[:200]}")
    return "".join(re.findall(r"^DTMF: (\S)", proc.stdout, re.MULTILINE))


def part_agreement(args) -> dict:
    from lab.dtmf_corpus import build_corpus
    from lab.spandsp import spandsp_dtmf
    from telephony.core import dtmf

    cases = [case_fields(c) for c in build_corpus()]
    out: dict = {"dtmf_corpus_cases": len(cases),
                 "dtmf_corpus_in_spec": sum(1 for c in cases if c[2]),
                 "dtmf_corpus_clean_in_spec": sum(1 for c in cases if c[2] and c[3])}
    agree, diffs = 0, []
    for name, pcm, in_spec, _ in cases:
        ours, theirs = dtmf.detect(pcm), spandsp_dtmf(pcm)
        if ours == theirs:
            agree += 1
        else:
            diffs.append({"case": name, "in_spec": in_spec, "ours": ours, "spandsp": theirs})
    out.update({"dtmf_agreement_spandsp": round(agree / len(cases), 4) if cases else None,
                "dtmf_agreement_spandsp_cases": len(cases),
                "dtmf_agreement_spandsp_agree": agree,
                "dtmf_disagreements_spandsp": diffs})
    log(f"agreement with spandsp: {agree} / {len(cases)}")
    clean = [c for c in cases if c[2] and c[3]]
    agree, diffs = 0, []
    with tempfile.TemporaryDirectory(prefix="vmha-bench-media-") as d:
        for name, pcm, _, _ in clean:
            ours, theirs = dtmf.detect(pcm), multimon(pcm, Path(d))
            if ours == theirs:
                agree += 1
            else:
                diffs.append({"case": name, "ours": ours, "multimon": theirs})
    nominal = [c[0] for c in clean if not c[0].startswith(("freq_", "twist_"))]
    off = {x["case"] for x in diffs}
    n_agree = sum(1 for name in nominal if name not in off)
    out.update({"dtmf_agreement_multimon_nominal": round(n_agree / len(nominal), 4) if nominal else None,
                "dtmf_agreement_multimon_nominal_cases": len(nominal),
                "dtmf_agreement_multimon_nominal_agree": n_agree})
    out.update({"dtmf_agreement_multimon_clean": round(agree / len(clean), 4) if clean else None,
                "dtmf_agreement_multimon_clean_cases": len(clean),
                "dtmf_agreement_multimon_clean_agree": agree,
                "dtmf_disagreements_multimon": diffs,
                "multimon_version": _multimon_version()})
    log(f"agreement with multimon-ng (clean in-spec): {agree} / {len(clean)}")
    return out


def _multimon_version() -> str:
    try:
        p = subprocess.run(["multimon-ng", "-h"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({e})"
    return ((p.stdout + p.stderr).strip().splitlines() or ["unknown"])[0]


# ============================================================================ talk-off

def part_talkoff(args) -> dict:
    from lab.dtmf_corpus import speech
    from lab.spandsp import spandsp_dtmf
    from telephony.core import dtmf

    pcm = bytes(speech(args.talkoff_seconds))
    det = dtmf.DtmfDetector()
    got: list[str] = []
    for k in range(0, len(pcm), CHUNK_20MS):
        got += det.feed(pcm[k:k + CHUNK_20MS])
    theirs = spandsp_dtmf(pcm)
    log(f"talk-off on {len(pcm) / 16000:.0f} s of speech: ours {len(got)}, spandsp {len(theirs)}")
    return {"talkoff_speech_s": round(len(pcm) / 16000, 1), "talkoff_digits": len(got),
            "talkoff_digit_list": "".join(got), "talkoff_digits_spandsp": len(theirs),
            "talkoff_digit_list_spandsp": theirs}


# ============================================================================ report

def report(files: list[str]) -> None:
    """The tables of docs/benchmarks.md ("Media") from result files, so the page quotes the
    files and nothing else: one row per file of the ``sip``/``recorder`` parts, one per file
    of the DTMF parts."""
    rows = [(f, json.loads(Path(f).read_text())) for f in files]
    ab = [(f, d) for f, d in rows if "sip" in d["parts"] or "recorder" in d["parts"]]
    if ab:
        print("| file | code | load avg at start / under load | step passed (failed calls) "
              "| `sip_service_cpu_per_call` | service CPU load / idle | "
              "`recorder_cpu_us_per_call_second` p50 / p95 / max |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for f, d in ab:
            code = d["code"]["commit"][:7] + (" + " + ", ".join(d["code"]["uncommitted"])
                                               if d["code"]["uncommitted"] else "")
            load = f"{d['machine']['loadavg_start'][0]:.1f} / " + (
                f"{d['sip_loadavg_under_load']:.1f}" if d.get("sip_loadavg_under_load") else "—")
            if d.get("sip_service_cpu_per_call") is None:
                sip = (f"not measured ({d.get('sip_error', 'part not run')})", "—", "—")
            else:
                sip = (("yes" if d["sip_step_ok"] else "**no**") + f" ({d['sip_failed_calls']})",
                       f"{d['sip_service_cpu_per_call']:.2f} ms/s",
                       f"{d['sip_service_cpu_load_ms_per_s']:.0f} / "
                       f"{d['sip_service_cpu_idle_ms_per_s']:.0f} ms/s")
            key = "recorder_cpu_us_per_call_second"
            rec = (" / ".join(f"{d[f'{key}_{p}']:.0f}" for p in ("p50", "p95", "max")) + " µs"
                   if f"{key}_p50" in d else "—")
            print(f"| `{Path(f).name}` | {code} | {load} | {' | '.join(sip)} | {rec} |")
    dt = [(f, d) for f, d in rows if "dtmf_channels_per_core_p50" in d or "dtmf_agreement_spandsp" in d]
    if dt:
        if ab:
            print()
        print("| file | load avg at start | `dtmf_channels_per_core` p50 / p95 / max (min) | digit errors "
              "| `dtmf_agreement_spandsp` | `dtmf_agreement_multimon_clean` | `talkoff_digits` (spandsp) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for f, d in dt:
            ch = (" / ".join(f"{d[f'dtmf_channels_per_core_{p}']:.0f}" for p in ("p50", "p95", "max"))
                  + f" ({d['dtmf_channels_per_core_min']:.0f})" if "dtmf_channels_per_core_p50" in d else "—")
            sp = (f"{d['dtmf_agreement_spandsp']:.4f} ({d['dtmf_agreement_spandsp_agree']} / "
                  f"{d['dtmf_agreement_spandsp_cases']})" if "dtmf_agreement_spandsp" in d else "—")
            key = "dtmf_agreement_multimon_clean"
            mm = (f"{d[key]:.4f} ({d[key + '_agree']} / {d[key + '_cases']})" if key in d else "—")
            to = (f"{d['talkoff_digits']} ({d['talkoff_digits_spandsp']}) in {d['talkoff_speech_s']:.0f} s"
                  if "talkoff_digits" in d else "—")
            print(f"| `{Path(f).name}` | {d['machine']['loadavg_start'][0]:.1f} | {ch} | "
                  f"{d.get('dtmf_digit_errors', '—')} | {sp} | {mm} | {to} |")


# ============================================================================ main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the results here (required unless --report)")
    ap.add_argument("--report", nargs="+", metavar="FILE",
                    help="print the tables of docs/benchmarks.md from these result files; run nothing")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--runs", type=int, default=20, help="runs of the recorder and dtmf figures")
    ap.add_argument("--recorder-seconds", type=int, default=600)
    ap.add_argument("--dtmf-seconds", type=int, default=60)
    ap.add_argument("--talkoff-seconds", type=int, default=600)
    ap.add_argument("--sip-calls", type=int, default=48)
    ap.add_argument("--sip-hold", type=float, default=60.0)
    ap.add_argument("--sip-sample", type=float, default=30.0)
    args = ap.parse_args()
    if args.report:
        report(args.report)
        return 0
    if args.json is None:
        ap.error("give --json FILE (or --report FILE ...)")
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    if bad := set(only) - set(PARTS):
        ap.error(f"--only: unknown part(s) {sorted(bad)}")
    if args.runs < 1 or args.dtmf_seconds < 4 or args.recorder_seconds < 1:
        ap.error("--runs must be >= 1, --dtmf-seconds >= 4, --recorder-seconds >= 1")
    out: dict = {
        "benchmark": "media",
        "command": shown_command([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "pythonpath": shown_command(os.environ.get("PYTHONPATH", "").split(os.pathsep)),
        "python": platform.python_version(), "numpy": np.__version__,
        "code": code_version(code_root()), "media_module": shown(media.__file__),
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_start": list(os.getloadavg())},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "percentile_method": "nearest rank", "parts": only,
    }
    t0 = time.monotonic()
    try:
        for part in PARTS:
            if part not in only:
                continue
            log(f"part {part}")
            if part == "sip":
                out.update(part_sip(args, args.json))
            else:
                out.update(globals()[f"part_{part}"](args))
    except BaseException as e:
        out["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        out["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        out["machine"]["loadavg_end"] = list(os.getloadavg())
        out["bench_wall_s"] = round(time.monotonic() - t0, 1)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
        log(f"results written to {args.json}")
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, (list, dict))}, indent=2,
                     ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
