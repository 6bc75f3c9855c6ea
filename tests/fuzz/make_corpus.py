"""Write the seed corpora: ``python -m tests.fuzz.make_corpus [NAME ...]``.

Each harness's ``seeds()`` makes small real inputs with the project's own encoders (frames,
records, messages, configuration files, changesets); they are written to
``tests/fuzz/corpus/<name>/seed-NN``, replacing the old seeds.  Other files there (the
``crash-*`` reproducers of bugs found by fuzzing) are kept.
"""
from __future__ import annotations

import importlib
import sys

from tests.fuzz.common import CORPUS, HARNESSES


def write(name: str) -> int:
    seeds = importlib.import_module(f"tests.fuzz.fuzz_{name}").seeds()
    folder = CORPUS / name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("seed-*"):
        old.unlink()
    for k, data in enumerate(seeds):
        (folder / f"seed-{k:02d}").write_bytes(data)
    return len(seeds)


def main(names: list[str]) -> None:
    for name in names or HARNESSES:
        if name not in HARNESSES:
            raise SystemExit(f"unknown harness {name!r}")
        print(f"{name}: {write(name)} seeds")


if __name__ == "__main__":
    main(sys.argv[1:])
