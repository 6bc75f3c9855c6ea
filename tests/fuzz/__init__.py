"""Coverage-guided fuzzing of every parser that reads bytes from outside the process (atheris).

Each ``fuzz_<name>.py`` holds one harness, ``test_one_input(data)``, plain Python that also runs
without atheris (the corpus replay in ``test_fuzz.py``).  ``python -m tests.fuzz.run NAME
[libFuzzer flags] [corpus dirs]`` runs one under atheris with the project's modules
instrumented; ``bench/fuzz.py`` runs them for minutes.  docs/testing.md and docs/reliability.md
("Fuzzing") describe the invariants and how to run them.
"""
