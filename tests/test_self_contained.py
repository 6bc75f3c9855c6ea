"""The project stands on its own: nothing in it points outside the repository.

No path into a machine's working directories (the old shared folder next to the checkout, or
absolute paths of the machine it was written on), no reference to an outside protocol notes
file, and no "issue N" from a tracker the reader does not have.  Protocol facts live in
docs/protocols.md, decisions in the docs.  This scans every file git knows about (tracked or
new, not ignored) and names each offending line.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# written so that this file does not match itself
FORBIDDEN = {
    "a path out of the repository": re.compile(r"\.\./" + r"shared\b"),
    "a machine's absolute path": re.compile(r"(?<![\w.])/" + r"work/"),
    "the outside protocol notes": re.compile(r"PROTOCOLS" + r"\.md"),
    "an issue-tracker reference": re.compile(r"\b[Ii]ssues?\s+#?[0-9]+\b|\b[Ii]ssue" + r"\s*#"),
}


def project_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.fail("git ls-files failed: this test needs the git checkout to list the project's files")
    names = {n for n in out.decode().split("\0") if n}
    skip_dirs = (".venv/", ".git/")
    return sorted(ROOT / n for n in names
                  if not n.startswith(skip_dirs) and (ROOT / n).is_file())


def offences(path: Path) -> list[str]:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return []  # binary (audio, pcap)
    found = []
    for lineno, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        for what, pattern in FORBIDDEN.items():
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{lineno}: {what}: {line.strip()[:120]}")
    return found


def test_nothing_points_outside_the_project():
    files = project_files()
    assert len(files) > 50, files  # the listing worked
    bad = [o for f in files for o in offences(f)]
    assert not bad, "references outside the project (use docs/protocols.md or our docs):\n" + "\n".join(bad)


@pytest.mark.parametrize("line", [
    "see ../" "shared/NOTES.md", "/" "work/shared/x", "PROTOCOLS" ".md 1.3", "(issue" " 5)",
    "Issue" " #12", "issues" " 3 and 4"])
def test_the_patterns_catch_what_they_should(line):
    assert any(p.search(line) for p in FORBIDDEN.values()), line


@pytest.mark.parametrize("line", [
    "shared/%u/INBOX", "/srv/shared/vm", "a shared Maildir store", "tissue 5", "RFC3842_EXAMPLE"])
def test_the_patterns_leave_ordinary_text_alone(line):
    assert not any(p.search(line) for p in FORBIDDEN.values()), line
