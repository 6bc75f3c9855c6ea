"""Run one harness under atheris::

    python -m tests.fuzz.run NAME [libFuzzer flags] [corpus dir ...]

e.g. ``python -m tests.fuzz.run smdi -max_total_time=60 /tmp/work tests/fuzz/corpus/smdi``.
``tests/fuzz/dicts/NAME.dict`` (the protocol's tokens), when there is one, is given to
libFuzzer as its dictionary.
The project's packages (and the standard-library parsers the harness goes through, see
``EXTRA_INSTRUMENTED``) are imported inside ``atheris.instrument_imports()`` so that their
branches guide the fuzzer; libFuzzer writes new inputs to the first corpus directory and a
crashing input to ``-artifact_prefix``.  ``python -m tests.fuzz.run NAME --replay FILE ...``
runs the harness once on each file without atheris (what the corpus replay test does).
Harnesses that need files (config, configdb) keep them under ``VMHA_FUZZ_SCRATCH``; the test
suite and bench/fuzz.py point it at a directory they remove (a fuzzing run started by hand
without it leaves ``vmha-fuzz-NAME-PID`` in /dev/shm).
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tests.fuzz.common import EXTRA_INSTRUMENTED, HARNESSES

DICTS = Path(__file__).resolve().parent / "dicts"


def fix_atheris_last_backward_jump() -> None:
    """Work around a bug of atheris 2.3.0's bytecode instrumentation on Python 3.11.

    After inserting its counters, atheris re-sizes every instruction whose argument now needs
    an EXTENDED_ARG and moves what follows, but it never looks at the *last* instruction of a
    code object (the loop in ``Instrumentor._handle_size_changes`` stops one short).  When
    that instruction is a backward jump (a function ending in ``while True:``, e.g.
    ``LineFramer.next_line``) that grew, its argument is left one word short: it jumps into
    the middle of an instruction, and the function runs wrong code or the interpreter
    crashes.  This re-derives such a jump's argument from its target until it is consistent.
    """
    from atheris import instrument_bytecode as ib

    if getattr(ib.Instrumentor, "_vmha_fixed", False):
        return
    original = ib.Instrumentor._handle_size_changes

    def handle_size_changes(self) -> None:
        original(self)
        last = self._get_linear_instruction_listing()[-1]
        if not last._is_relative or last.mnemonic not in ib.REL_REFERENCE_IS_INVERTED:
            return
        while True:
            distance = last.offset + last.get_size() - last.reference
            arg = distance // ib.jump_arg_bytes(1)
            if arg == last.arg:
                break
            last.arg = arg  # may need one more EXTENDED_ARG: then the distance grows again
        last.check_state()

    ib.Instrumentor._handle_size_changes = handle_size_changes
    ib.Instrumentor._vmha_fixed = True


def _load(name: str, *, instrument: bool):
    if name not in HARNESSES:
        raise SystemExit(f"unknown harness {name!r}; one of: {', '.join(HARNESSES)}")
    if not instrument:
        return importlib.import_module(f"tests.fuzz.fuzz_{name}")
    import atheris

    fix_atheris_last_backward_jump()
    with atheris.instrument_imports(include=["telephony", "failover",
                                             *EXTRA_INSTRUMENTED.get(name, ())]):
        return importlib.import_module(f"tests.fuzz.fuzz_{name}")


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    name = argv[1]
    if argv[2:3] == ["--replay"]:
        own = "VMHA_FUZZ_SCRATCH" not in os.environ
        if own:  # the harnesses' scratch files go where this removes them
            os.environ["VMHA_FUZZ_SCRATCH"] = tempfile.mkdtemp(prefix="vmha-fuzz-")
        try:
            harness = _load(name, instrument=False)
            for path in argv[3:]:
                with open(path, "rb") as fh:
                    harness.test_one_input(fh.read())
        finally:
            if own:
                shutil.rmtree(os.environ["VMHA_FUZZ_SCRATCH"], ignore_errors=True)
        return
    harness = _load(name, instrument=True)
    import atheris

    flags = argv[2:]
    words = DICTS / f"{name}.dict"
    if words.is_file() and not any(f.startswith("-dict=") for f in flags):
        flags.insert(0, f"-dict={words}")
    atheris.Setup([argv[0], *flags], harness.test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
