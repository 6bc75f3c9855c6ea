"""``vmha status --remote URL``: the real command (a subprocess, no --config, no VMHA_CONFIG)
against a real pair's HTTP API on loopback; the same view as the local ``vmha status``, and
one clear line and the documented exit code for each way it can fail."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from failover.cli import EXIT_NOT_RUNNING
from failover.config import EXIT_CONFIG
from lab.pair import Pair, free_port

pytestmark = pytest.mark.multiprocess

GUARD = 30.0  # hang guard only


def vmha(*argv: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VMHA_CONFIG", "VMHA_TOKEN")}
    if token is not None:
        env["VMHA_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "failover.cli", *argv], capture_output=True, text=True,
                          timeout=GUARD, env=env)


@pytest.fixture(scope="module")
def pair():
    d = Path(tempfile.mkdtemp(prefix="vmha-cli-", dir="/tmp"))
    try:
        with Pair(d, http=True) as p:
            p.start()
            p.wait_for(lambda: p.a.state() == "active" and p.b.state() == "inactive"
                       and (p.b.status() or {}).get("peer", {}).get("reachable"), GUARD,
                       what="a active, b inactive")
            (d / "read.token").write_text(p.tokens["read"] + "\n")
            yield p, d / "read.token"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def table(text: str) -> list[list[str]]:
    """The status table's rows without the columns that move (calls, heartbeat age)."""
    rows = [line.split() for line in text.splitlines()[:3]]
    return [r[:7] for r in rows]


def test_remote_status_prints_what_the_local_one_prints(pair):
    p, token_file = pair
    remote = vmha("status", "--remote", p.http_url("b"), "--token-file", str(token_file))
    local = vmha("status", "--config", str(p.b_config))
    assert remote.returncode == 0 == local.returncode, remote.stderr
    assert remote.stderr == ""
    assert table(remote.stdout) == table(local.stdout)
    assert table(remote.stdout)[1][:4] == ["b", "(this)", "secondary", "inactive"]
    # the lines below the table name the same things
    words = [line.split(":")[0] for line in remote.stdout.splitlines()[4:]]
    assert words == [line.split(":")[0] for line in local.stdout.splitlines()[4:]]


def test_remote_status_json_with_the_token_from_the_environment(pair):
    p, _ = pair
    r = vmha("status", "--remote", p.http_url("a") + "/", "--json", token=p.tokens["read"])
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    local = json.loads(vmha("status", "--config", str(p.a_config), "--json").stdout)
    assert set(st) == set(local) and st["node"]["name"] == "a" and st["node"]["state"] == "active"
    assert st["node"]["term"] == local["node"]["term"]


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmha status: "), r.stderr
    return lines[0]


def test_a_wrong_token_is_one_line_and_exit_1(pair, tmp_path):
    p, _ = pair
    bad = tmp_path / "bad.token"
    bad.write_text("vmha_" + "Z" * 43 + "\n")
    r = vmha("status", "--remote", p.http_url("a"), "--token-file", str(bad))
    line = one_error_line(r)
    assert r.returncode == 1 and r.stdout == ""
    assert "401" in line and "token was refused" in line and p.http_url("a") in line
    r = vmha("status", "--remote", p.http_url("a"), "--token-file", str(bad), "--json")
    assert r.returncode == 1 and "401" in json.loads(r.stdout)["error"]


def test_nothing_listening_is_exit_3_like_a_stopped_node():
    url = f"http://127.0.0.1:{free_port()}"
    r = vmha("status", "--remote", url, token="vmha_x")
    assert r.returncode == EXIT_NOT_RUNNING == 3
    assert "connection refused" in one_error_line(r)
    r = vmha("status", "--remote", url, "--json", token="vmha_x")
    assert r.returncode == 3 and json.loads(r.stdout) == {"url": url, "error": json.loads(r.stdout)["error"]}


def test_usage_errors_send_nothing_and_exit_2(tmp_path):
    r = vmha("status", "--remote", "http://127.0.0.1:1")
    assert r.returncode == EXIT_CONFIG and "--token-file" in one_error_line(r)
    r = vmha("status", "--remote", "http://192.0.2.7:8080", token="vmha_x")
    assert r.returncode == EXIT_CONFIG and "https://" in one_error_line(r)
    r = vmha("status", "--token-file", str(tmp_path / "t"))
    assert r.returncode == EXIT_CONFIG and "--remote" in one_error_line(r)
