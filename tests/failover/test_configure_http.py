"""``vmha configure`` and the HTTP API: the wizard's ``[http]`` section, ``--add-operator`` /
``--remove-operator`` (run as the real command, token on stdout, ``--token-stdin``) and the
``--systemd`` wiring."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from failover.config import load_config, port_collisions
from failover.configure import DEFAULT_HTTP_PORTS, configure_main, make_pair, write_pair
from failover.web.operators import load_operators, lookup

ROOT = Path(__file__).resolve().parents[2]


def vmha(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "failover.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, input=stdin)


# ============================================================================ the wizard


def test_a_pair_on_one_host_gets_http_on_loopback_with_each_others_url(tmp_path):
    files = write_pair(tmp_path, "vm1", "vm2", "127.0.0.1:13653", "127.0.0.1:13663")
    a, b = load_config(files.primary), load_config(files.secondary)
    assert (a.http.listen.host, b.http.listen.host) == ("127.0.0.1", "127.0.0.1")
    assert (a.http.listen.port, b.http.listen.port) == DEFAULT_HTTP_PORTS
    assert a.http.peer == b.http.url == f"http://127.0.0.1:{DEFAULT_HTTP_PORTS[1]}"
    assert b.http.peer == a.http.url
    assert not a.http.tls and a.http.operators_file == a.node.data_dir / "operators.toml"
    assert port_collisions(a, b) == []
    assert "vmha configure --add-operator" in files.primary.read_text()
    assert configure_main(["--check", str(files.primary), str(files.secondary)]) == 0


def test_http_ports_move_off_ports_the_operator_gave():
    p_text, s_text, _ = make_pair("vm1", "vm2", "127.0.0.1:3680", "127.0.0.1:3681")
    ports = {tomllib.loads(t)["http"]["listen"] for t in (p_text, s_text)}
    assert len(ports) == 2 and not ports & {"127.0.0.1:3680", "127.0.0.1:3681"}
    peer = tomllib.loads(p_text)["http"]["peer_url"]
    assert peer == "http://" + tomllib.loads(s_text)["http"]["listen"]


def test_nodes_on_two_hosts_keep_the_api_on_loopback_and_say_how_to_open_it():
    p_text, s_text, _ = make_pair("vm1", "vm2", "10.0.0.1:3653", "10.0.0.2:3653")
    for text, port in zip((p_text, s_text), DEFAULT_HTTP_PORTS, strict=True):
        doc = tomllib.loads(text)
        assert doc["http"] == {"listen": f"127.0.0.1:{port}"}  # no peer_url: 127.0.0.1 is not the peer
        assert "tls_cert" in text.split("[node]")[0] and "loopback" in text.split("[node]")[0]


def test_no_http_when_asked(tmp_path):
    assert configure_main(["--out", str(tmp_path), "--primary", "vm1@127.0.0.1:13653",
                           "--secondary", "vm2@127.0.0.1:13663", "--http-ports", "none"]) == 0
    assert not load_config(tmp_path / "primary.toml").http.enabled
    assert "[http]" not in (tmp_path / "secondary.toml").read_text()


def test_the_wizard_says_how_to_add_operators_and_adds_none(tmp_path):
    r = vmha("configure", "--out", str(tmp_path), "--primary", "vm1@127.0.0.1:13653",
             "--secondary", "vm2@127.0.0.1:13663")
    assert r.returncode == 0, r.stderr
    assert "--add-operator NAME --role admin" in r.stdout and "--token-stdin" in r.stdout
    assert "http.listen 127.0.0.1:3680" in r.stdout
    assert not (tmp_path / "data").exists()  # no operators file, no token made behind the back


# ============================================================================ operators


@pytest.fixture
def pair_files(tmp_path):
    return write_pair(tmp_path, "vm1", "vm2", "127.0.0.1:13653", "127.0.0.1:13663")


def test_add_operator_prints_the_token_once_and_the_peer_takes_it_from_stdin(pair_files):
    r = vmha("configure", "--add-operator", "alice", "--role", "admin", "--config", str(pair_files.primary))
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("vmha_") and "\n" not in token  # stdout is the token alone
    assert "shown only this once" in r.stderr and token not in r.stderr
    path_a = load_config(pair_files.primary).http.operators_file
    assert stat.S_IMODE(os.stat(path_a).st_mode) == 0o600 and token not in path_a.read_text()
    assert lookup(load_operators(path_a), token).role == "admin"
    r = vmha("configure", "--add-operator", "alice", "--role", "admin", "--config",
             str(pair_files.secondary), "--token-stdin", stdin=token + "\n")
    assert r.returncode == 0, r.stderr
    assert token not in r.stdout + r.stderr
    path_b = load_config(pair_files.secondary).http.operators_file
    assert lookup(load_operators(path_b), token).name == "alice"
    # the same name again: refused, nothing changed; with --force: a new token and role
    before = path_a.read_bytes()
    r = vmha("configure", "--add-operator", "alice", "--role", "read", "--config", str(pair_files.primary))
    assert r.returncode == 2 and "exists already" in r.stderr and r.stdout == ""
    assert path_a.read_bytes() == before
    r = vmha("configure", "--add-operator", "alice", "--role", "read", "--config",
             str(pair_files.primary), "--force")
    assert r.returncode == 0
    entries = load_operators(path_a)
    assert lookup(entries, token) is None and lookup(entries, r.stdout.strip()).role == "read"


def test_remove_operator(pair_files):
    argv = ["--add-operator", "bob", "--role", "read", "--config", str(pair_files.primary)]
    assert configure_main(argv) == 0
    path = load_config(pair_files.primary).http.operators_file
    assert "bob" in load_operators(path)
    r = vmha("configure", "--remove-operator", "bob", "--config", str(pair_files.primary))
    assert r.returncode == 0 and "removed operator bob" in r.stdout and "vm2" in r.stdout
    assert load_operators(path) == {}
    r = vmha("configure", "--remove-operator", "bob", "--config", str(pair_files.primary))
    assert r.returncode == 2 and "no operator 'bob'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("argv, fragment", [
    (["--add-operator", "alice"], "needs --role"),
    (["--add-operator", "bad name", "--role", "read"], "operator name"),
    (["--add-operator", "alice", "--role", "root"], "invalid choice"),
    (["--role", "read"], "go with --add-operator"),
    (["--token-stdin", "--remove-operator", "alice"], "go with --add-operator"),
    (["--add-operator", "alice", "--role", "read", "--remove-operator", "bob"], "exactly one"),
    (["--add-operator", "alice", "--role", "read", "--window", "1h"], "--window goes with --rotate-key"),
])
def test_bad_operator_commands_change_nothing(pair_files, argv, fragment):
    r = vmha("configure", *argv, "--config", str(pair_files.primary))
    assert r.returncode == 2 and fragment in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not load_config(pair_files.primary).http.operators_file.exists()


def test_token_stdin_refuses_an_empty_or_odd_token(pair_files):
    for given, fragment in (("", "no token"), ("short\n", "printable ASCII"), ("a b c d e f g h i j k\n",
                                                                                 "printable ASCII")):
        r = vmha("configure", "--add-operator", "alice", "--role", "read", "--config",
                 str(pair_files.primary), "--token-stdin", stdin=given)
        assert r.returncode == 2 and fragment in r.stderr, r.stderr
    assert not load_config(pair_files.primary).http.operators_file.exists()


def test_add_operator_refuses_a_file_others_can_read(pair_files):
    argv = ["--add-operator", "alice", "--role", "read", "--config", str(pair_files.primary)]
    assert configure_main(argv) == 0
    path = load_config(pair_files.primary).http.operators_file
    path.chmod(0o640)
    r = vmha("configure", "--add-operator", "bob", "--role", "read", "--config", str(pair_files.primary))
    assert r.returncode == 2 and "chmod 600" in r.stderr and str(path) in r.stderr
    assert "bob" not in path.read_text()


# ============================================================================ --systemd


def test_systemd_writes_the_unit_through_configure(pair_files, tmp_path):
    out = tmp_path / "units"
    r = vmha("configure", "--systemd", str(out), "--config", str(pair_files.primary))
    assert r.returncode == 0, r.stderr
    unit = out / "vmha-vm1.service"
    assert unit.exists() and "Type=notify" in unit.read_text()
    r = vmha("configure", "--systemd", str(out), "--config", str(pair_files.primary))
    assert r.returncode == 2  # exists: refused without --force
    r = vmha("configure", "--systemd", str(out), "--config", str(pair_files.primary), "--force")
    assert r.returncode == 0, r.stderr
