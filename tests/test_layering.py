"""The dependency rule of docs/design.md ("Packages and the dependency rule"), checked on the
source: every import of every module, at module level or inside a function, is an edge.

* no cycle between packages or subpackages;
* the top-level direction: ``lab`` → anything; ``failover`` → ``telephony``, ``integrations``;
  ``telephony`` → ``integrations``; ``integrations`` → nothing of the project; no product
  package imports ``lab``, ``tests``, ``bench`` or ``hwtests``;
* inside ``telephony``: ``core`` and ``runtime`` import only ``core``/``runtime`` (and
  ``integrations``); a driver subpackage imports only those and itself;
* no private name (``_x``) taken from another module, no underscore module imported from
  outside its own package;
* every module in a package named ``core``, and all of ``integrations``, is pure (sans-IO);
* no product module is over 800 lines.

The checker is a plain function of a source tree, so a test can plant a cycle and see it caught.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("telephony", "failover", "integrations")
PROJECT = (*PRODUCT, "lab", "tests", "bench", "hwtests")
#: which top-level packages each may import (itself always)
ALLOWED = {
    "lab": set(PRODUCT),
    "failover": {"telephony", "integrations"},
    "telephony": {"integrations"},
    "integrations": set(),
}
#: subpackages of telephony that sit below the drivers and the service
TELEPHONY_BASE = ("telephony.core", "telephony.runtime")
#: the driver subpackages of telephony (a driver imports the base, integrations and itself)
DRIVERS = ("telephony.sip", "telephony.smdi", "telephony.loopback", "telephony.analog", "telephony.sccp")
#: what a pure module may not import
IO_MODULES = {"trio", "socket", "time", "threading", "os", "asyncio", "select", "signal",
              "subprocess", "selectors", "shutil", "tempfile", "pathlib", "serial", "apsw",
              "pjsua2", "ctypes", "multiprocessing", "watchfiles", "http", "urllib.request",
              "imaplib", "smtplib", "sqlite3", "importlib"}
MAX_LINES = 800


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported (resolved: ``from a import b`` where a.b is a module → a.b)
    names: tuple[str, ...]  # names taken by ``from ... import`` (empty for ``import x``)
    line: int
    in_function: bool


def modules(root: Path, packages=PROJECT) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")) if (root / pkg).is_dir() else ():
            rel = path.relative_to(root).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def package_of(mod: str, mods: dict[str, Path]) -> str:
    """The package a module belongs to (a package's ``__init__`` belongs to the package)."""
    path = mods[mod]
    return mod if path.name == "__init__.py" else mod.rpartition(".")[0] or mod


def imports(root: Path, mods: dict[str, Path]) -> list[Import]:
    found = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        functions = [n for n in ast.walk(tree)
                     if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)]
        inside = {id(x) for f in functions for x in ast.walk(f) if x is not f}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.append(Import(mod, alias.name, (), node.lineno, id(node) in inside))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = package_of(mod, mods).split(".")
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join([*pkg, base] if base else pkg)
                names = tuple(a.name for a in node.names)
                subs = [n for n in names if f"{base}.{n}" in mods]
                for n in subs:  # ``from pkg import module``
                    found.append(Import(mod, f"{base}.{n}", (), node.lineno, id(node) in inside))
                rest = tuple(n for n in names if n not in subs)
                if rest or not subs:
                    found.append(Import(mod, base, rest, node.lineno, id(node) in inside))
    return found


def owner(target: str, mods: dict[str, Path]) -> str | None:
    """The project module an import lands in (``a.b.C`` → ``a.b``), None outside the project."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in mods:
            return name
        parts.pop()
    return None


#: subpackages that are one unit with their parent for the cycle check: the node manager's HTTP
#: server is one of its drivers, like its admin socket and node link (docs/design.md)
PART_OF = {"failover.web": "failover"}


def unit(mod: str, mods: dict[str, Path]) -> str:
    pkg = package_of(mod, mods)
    return PART_OF.get(pkg, pkg)


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def check(root: Path) -> list[str]:
    """Every breach of the rule in the tree at ``root``, one line each (empty: clean)."""
    mods = modules(root)
    problems: list[str] = []
    edges: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], str] = {}
    for imp in imports(root, mods):
        target = owner(imp.target, mods)
        if target is None:
            continue
        here = f"{mods[imp.module].relative_to(root)}:{imp.line}"
        top, ttop = imp.module.split(".")[0], target.split(".")[0]
        src_unit, dst_unit = unit(imp.module, mods), unit(target, mods)
        if src_unit != dst_unit and top in (*PRODUCT, "lab"):  # tests and benches are leaves
            edges[src_unit].add(dst_unit)
            where.setdefault((src_unit, dst_unit), here)
        if top in ALLOWED and ttop != top and ttop not in ALLOWED[top]:
            problems.append(f"{here}: {imp.module} imports {target}: {top} may not import {ttop}")
        if top == "telephony":
            if src_unit.startswith(TELEPHONY_BASE) and not (
                    target.startswith(TELEPHONY_BASE) or ttop == "integrations"):
                problems.append(f"{here}: {imp.module} imports {target}: telephony's core and "
                                "runtime import only core, runtime and integrations")
            drv = next((d for d in DRIVERS if imp.module == d or imp.module.startswith(d + ".")), None)
            if drv and ttop == "telephony" and not (
                    target.startswith(TELEPHONY_BASE) or target == drv
                    or target.startswith(drv + ".")):
                problems.append(f"{here}: {imp.module} imports {target}: a driver imports only "
                                "telephony's core and runtime, integrations and itself")
        if top in PRODUCT or top == "lab":
            private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
            if private and target != imp.module:
                problems.append(f"{here}: {imp.module} takes private {private} from {target}")
            last = target.rpartition(".")[2]
            if last.startswith("_") and last != "__init__" and \
                    target.rpartition(".")[0] != package_of(imp.module, mods):
                problems.append(f"{here}: {imp.module} imports {target}, private to its package")
    for comp in find_cycles(edges):
        links = [f"{a} → {b} ({where[(a, b)]})" for a in comp for b in comp if (a, b) in where]
        problems.append("import cycle between " + ", ".join(comp) + ": " + "; ".join(links))
    return problems


def pure_modules(root: Path) -> dict[str, Path]:
    mods = modules(root, PRODUCT)
    return {m: p for m, p in mods.items()
            if "core" in m.split(".")[:-1] or (m.split(".")[-1] == "core" and p.name == "__init__.py")
            or m.split(".")[0] == "integrations"}


def impurities(root: Path) -> list[str]:
    mods = modules(root)
    pure = pure_modules(root)
    problems = []
    for imp in imports(root, mods):
        if imp.module not in pure:
            continue
        here = f"{mods[imp.module].relative_to(root)}:{imp.line}"
        parts = imp.target.split(".")
        if any(".".join(parts[:i]) in IO_MODULES for i in range(1, len(parts) + 1)):
            problems.append(f"{here}: pure module {imp.module} imports {imp.target}")
        target = owner(imp.target, mods)
        if target is not None and target not in pure:
            problems.append(f"{here}: pure module {imp.module} imports {target}, which is not pure")
    for mod, path in pure.items():
        if "__import__" in path.read_text() or "importlib" in path.read_text():
            problems.append(f"{path.relative_to(root)}: pure module {mod} imports dynamically")
    return problems


# ============================================================================ the tests


def test_the_tree_follows_the_rule():
    problems = check(ROOT)
    assert not problems, "\n".join(problems)


def test_pure_modules_do_no_io():
    assert len(pure_modules(ROOT)) >= 20  # the rule finds the cores (a renamed folder would hide them)
    problems = impurities(ROOT)
    assert not problems, "\n".join(problems)


def test_no_product_module_is_over_800_lines():
    long = {str(p.relative_to(ROOT)): n for p in modules(ROOT, PRODUCT).values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def _tree(tmp: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp


BASE = {"telephony/__init__.py": "", "telephony/core/__init__.py": "",
        "telephony/core/events.py": "import re\n", "telephony/sip/__init__.py": "",
        "telephony/sip/driver.py": "from telephony.core import events\n",
        "telephony/service.py": "import telephony.sip.driver\n",
        "failover/__init__.py": "", "failover/node.py": "from telephony.core.events import X\n",
        "integrations/__init__.py": "", "integrations/base.py": "import re\n",
        "lab/__init__.py": "", "lab/pair.py": "import failover.node\n"}


def test_a_clean_planted_tree_passes(tmp_path):
    root = _tree(tmp_path, BASE)
    assert check(root) == []
    assert impurities(root) == []


@pytest.mark.parametrize("change, expect", [
    # a cycle hidden inside a function
    ({"telephony/core/events.py": "def f():\n    from telephony.sip import driver\n"},
     "import cycle between telephony.core, telephony.sip"),
    # the wrong direction at the top
    ({"telephony/service.py": "import failover.node\n"}, "telephony may not import failover"),
    ({"failover/node.py": "from lab import pair\n"}, "failover may not import lab"),
    ({"integrations/base.py": "from telephony.core.events import X\n"},
     "integrations may not import telephony"),
    # a driver reaching up into the service level
    ({"telephony/sip/driver.py": "import telephony.service\n"}, "a driver imports only"),
    # a private name across modules, a private module from outside its package
    ({"failover/node.py": "from telephony.core.events import _hidden\n"}, "takes private"),
    ({"telephony/core/_x.py": "", "failover/node.py": "import telephony.core._x\n"},
     "private to its package"),
])
def test_a_planted_breach_is_caught(tmp_path, change, expect):
    root = _tree(tmp_path, {**BASE, **change})
    problems = check(root)
    assert any(expect in p for p in problems), problems


@pytest.mark.parametrize("text, expect", [
    ("import trio\n", "imports trio"),
    ("def f():\n    import os\n", "imports os"),
    ("from telephony.sip import driver\n", "which is not pure"),
])
def test_a_planted_impurity_is_caught(tmp_path, text, expect):
    root = _tree(tmp_path, {**BASE, "telephony/core/events.py": text})
    problems = impurities(root)
    assert any(expect in p for p in problems), problems
