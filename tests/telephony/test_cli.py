"""Command line and --config of ``python -m telephony.service`` (parsed in-process)."""
from __future__ import annotations

from pathlib import Path

import pytest

from telephony.service import ServiceOptions, parse_args


def test_flags():
    opts = parse_args(["--control", "/tmp/c.sock", "--node", "a", "--loopback-port", "7001",
                       "--ports", "8", "--health-interval", "0.05", "--offer-hold", "1.5"])
    assert opts == ServiceOptions(control="/tmp/c.sock", node="a", loopback=("127.0.0.1", 7001),
                                  ports=8, health_interval=0.05, offer_hold=1.5)


def test_defaults():
    opts = parse_args(["--control", "c", "--node", "a", "--loopback-port", "0"])
    assert (opts.ports, opts.health_interval, opts.offer_hold, opts.log_level) == \
        (4, 0.25, 2.0, "info")  # the keep-alive: service.health_timeout's default (1 s) / 4


def write(tmp_path, text):
    p = tmp_path / "node.toml"
    p.write_text(text)
    return str(p)


def test_config_file_gives_the_defaults_and_flags_win(tmp_path):
    cfg = write(tmp_path, """
[node]
name = "vm-a"
role = "primary"
[service]
health_interval = 0.1
offer_hold = 3
[ports.loopback]
listen = "127.0.0.1:7005"
count = 6
[log]
level = "debug"
""")
    opts = parse_args(["--control", "c", "--config", cfg])
    assert opts == ServiceOptions(control="c", node="vm-a", loopback=("127.0.0.1", 7005),
                                  ports=6, health_interval=0.1, offer_hold=3.0,
                                  log_level="debug", config=Path(cfg))
    opts = parse_args(["--control", "c", "--config", cfg, "--offer-hold", "0.5", "--node", "x"])
    assert opts.offer_hold == 0.5 and opts.node == "x" and opts.ports == 6


def test_the_keepalive_left_out_is_a_quarter_of_the_health_timeout(tmp_path):
    cfg = write(tmp_path, '[node]\nname = "a"\n[service]\nhealth_timeout = 2.0\n')
    assert parse_args(["--control", "c", "--config", cfg, "--loopback-port", "1"]).health_interval == 0.5
    cfg = write(tmp_path, '[node]\nname = "a"\n[service]\nhealth_timeout = 2.0\nhealth_interval = 0.1\n')
    assert parse_args(["--control", "c", "--config", cfg, "--loopback-port", "1"]).health_interval == 0.1


def test_config_with_the_loopback_trunk_disabled(tmp_path):
    cfg = write(tmp_path, '[node]\nname = "a"\n[ports.loopback]\nenabled = false\n')
    assert parse_args(["--control", "c", "--config", cfg]).loopback is None


@pytest.mark.parametrize("text,fragment", [
    ('[node]\nname = "a"\n[service]\noffer_hold = "long"\n', "service.offer_hold: expected"),
    ('[node]\nname = "a"\n[ports.loopback]\nlisten = "nowhere"\n', "ports.loopback.listen"),
    ('[node]\nname = "a b"\n', "node.name: expected a node name"),
    ("[node\n", "not valid TOML"),
])
def test_bad_config_exits_2_naming_the_key_and_file(tmp_path, capsys, text, fragment):
    cfg = write(tmp_path, text)
    with pytest.raises(SystemExit) as exc:
        parse_args(["--control", "c", "--config", cfg, "--loopback-port", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "node.toml" in err


def test_overlong_control_path_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--control", "/tmp/" + "x" * 120, "--node", "a", "--loopback-port", "1"])
    assert exc.value.code == 2
    assert "107 bytes" in capsys.readouterr().err
