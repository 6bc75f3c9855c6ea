"""The cores stay sans-IO: no trio, socket, time, threading or os imports."""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FORBIDDEN = {"trio", "socket", "time", "threading", "os", "asyncio", "select", "signal",
             "subprocess", "selectors"}
PURE = ["telephony/core/control.py", "telephony/core/activation.py", "telephony/core/events.py",
        "integrations/base.py", "integrations/loopback.py", "telephony/core/media.py", "telephony/core/mwi.py",
        "telephony/core/reports.py", "telephony/core/message.py", "telephony/smdi/core/codec.py",
        "telephony/smdi/core/link.py", "integrations/smdi.py", "telephony/sip/core/headers.py"]


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            found.add("__import__")
    return found


@pytest.mark.parametrize("rel", PURE)
def test_core_imports_no_io(rel):
    bad = imported_modules(ROOT / rel) & (FORBIDDEN | {"__import__"})
    assert not bad, f"{rel} imports {sorted(bad)}"


@pytest.mark.parametrize("rel", PURE)
def test_core_relative_imports_stay_pure(rel):
    """A core may import siblings only if they are pure too."""
    tree = ast.parse((ROOT / rel).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            sibling = f"{pathlib.Path(rel).parent}/{node.module}.py"
            assert sibling in PURE, f"{rel} imports {sibling}, which is not a checked core"
