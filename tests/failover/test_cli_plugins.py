"""The CLI's plugin commands: ``vmha demo`` comes from the lab through the ``vmha.commands``
entry point, and the node manager's own commands never import the lab."""
from __future__ import annotations

import subprocess
import sys

import pytest

from failover.cli import BUILTIN, build_parser


@pytest.mark.parametrize("argv", [["node", "--help"], ["status", "--help"], ["events", "--help"]])
def test_a_builtin_command_does_not_import_the_lab(argv):
    code = ("import sys\nfrom failover.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m == 'lab' or m.startswith('lab.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_the_demo_comes_from_the_lab_plugin():
    ap = build_parser()
    assert "demo" in ap.plugin_handlers and "demo" not in BUILTIN
    assert ap.plugin_handlers["demo"].__module__ == "lab.demo"
    args = ap.parse_args(["demo", "--duration", "1"])
    assert args.cmd == "demo" and args.duration == 1.0


def test_without_plugins_demo_is_not_a_command(capsys):
    with pytest.raises(SystemExit):
        build_parser(plugins=False).parse_args(["demo"])
    assert "invalid choice: 'demo'" in capsys.readouterr().err
