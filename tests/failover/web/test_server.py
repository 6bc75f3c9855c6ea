"""The HTTP server of the node manager (failover/web/server.py), with real ``vmha node``
processes: start-up errors are one line and exit 2 (a taken port, plain HTTP off loopback, a
certificate that does not load); TLS with a certificate made here by ``openssl``; clients
that reset, send garbage or stall never hurt the node, which keeps answering."""
from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import tomli_w
import trio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import failover.web.server as server
from failover.config import EXIT_CONFIG, load_config
from failover.eventlog import EventLog
from failover.web.settings import HttpSettings
from lab.pair import Pair, free_port
from telephony.core.settings import Address
from telephony.runtime.tasks import TaskFailures
from tests.failover.web.http_util import call

ROOT = Path(__file__).resolve().parents[3]


def patch(path: Path, **sections) -> None:
    data = tomllib.loads(path.read_text())
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path.write_text(tomli_w.dumps(data))


def run_node(config: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "failover.cli", "node", "--config", str(config)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == EXIT_CONFIG, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmha node: "), r.stderr
    return lines[0]


def make_cert(d: Path, cn: str = "127.0.0.1") -> tuple[Path, Path]:
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={cn}", "-addext", f"subjectAltName=IP:{cn}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    key.chmod(0o600)
    return cert, key


# ============================================================================ start-up errors


def test_a_taken_http_port_is_one_line_and_exit_2(short_dir):
    p = Pair(short_dir, http=True, extra={"log": {"console": False}})
    try:
        port = load_config(p.a.config).http.listen.port
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            r = run_node(p.a.config)
        assert one_line(r) == (f"vmha node: cannot listen on 127.0.0.1:{port} (setting http.listen): "
                               "Address already in use")
        path = load_config(p.a.config).node.data_dir / "events.jsonl"
        errors = [json.loads(x) for x in path.read_text().splitlines() if '"error"' in x]
        assert [e["event"] for e in errors] == ["listen_failed"]
    finally:
        p.stop()


def test_plain_http_off_loopback_is_a_config_error_at_start(short_dir):
    p = Pair(short_dir, http=True, extra={"log": {"console": False}})
    try:
        port = free_port()
        patch(p.a.config, http={"listen": f"0.0.0.0:{port}"})
        r = subprocess.run([sys.executable, "-m", "failover.cli", "node", "--config", str(p.a.config)],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert r.returncode == EXIT_CONFIG and "Traceback" not in r.stderr, r.stderr
        assert "http.listen" in r.stderr and "loopback" in r.stderr and "tls_cert" in r.stderr, r.stderr
        with socket.socket() as s:  # and nothing listens there
            assert s.connect_ex(("127.0.0.1", port)) != 0
    finally:
        p.stop()


def test_a_certificate_that_does_not_load_is_one_line_and_exit_2(short_dir):
    p = Pair(short_dir, http=True, extra={"log": {"console": False}})
    try:
        bad = short_dir / "bad.pem"
        bad.write_text("not a certificate\n")
        bad.chmod(0o600)
        patch(p.a.config, http={"tls_cert": str(bad), "tls_key": str(bad)})
        line = one_line(run_node(p.a.config))
        assert "setting http.tls_cert" in line and str(bad) in line, line
    finally:
        p.stop()


# ============================================================================ TLS


def test_tls_serves_with_the_operators_certificate(short_dir):
    cert, key = make_cert(short_dir)
    port = free_port()
    tls = {"http": {"listen": f"127.0.0.1:{port}", "tls_cert": str(cert), "tls_key": str(key),
                    "public_url": f"https://127.0.0.1:{port}"}}
    with Pair(short_dir, http=True, extra_a=tls) as p:
        p.start()
        p.wait_state("a", "active", 30)
        url = f"https://127.0.0.1:{port}"
        ctx = ssl.create_default_context(cafile=str(cert))
        r = call(url, "GET", "/api/v1/session", token=p.tokens["admin"], context=ctx)
        assert r.status == 200 and r.json["operator"] == "admin"
        r = call(url, "POST", "/login", body={"token": p.tokens["read"]}, context=ctx)
        assert r.status == 200 and "secure" in r.header("set-cookie").lower()
        # a client that does not trust the certificate is refused by its own TLS check
        with pytest.raises(ssl.SSLCertVerificationError):
            call(url, "GET", "/api/v1/session", token=p.tokens["admin"], context=ssl.create_default_context())
        # plain HTTP to the TLS port, and a TLS client hello cut short: the node goes on
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                s.recv(100)
            except OSError:
                pass
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 20)
        r = call(url, "GET", "/api/v1/status", token=p.tokens["read"], context=ctx)
        assert r.status == 200 and r.json["status"]["node"]["name"] == "a"
        assert "http.serve" not in r.json["status"]["tasks"]


# ============================================================================ bad clients


def rst(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_resets_garbage_and_stalled_clients_do_not_hurt_the_node(short_dir):
    with Pair(short_dir, http=True) as p:
        p.start()
        p.wait_state("a", "active", 30)
        url, token = p.http_url("a"), p.tokens["read"]
        port = int(url.rsplit(":", 1)[1])

        def healthy() -> dict:
            r = call(url, "GET", "/api/v1/status", token=token)
            assert r.status == 200, r.body
            return r.json["status"]

        stalled = []
        for i in range(20):
            # reset in the middle of the request line, of the headers, of a body
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            body_cut = (b"POST /api/v1/db HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode()
                        + b"\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"ops\":")
            s.sendall([b"GET /api/v1/sta", b"POST /api/v1/mode HTTP/1.1\r\nHost: x\r\nContent-Le",
                       body_cut][i % 3])
            rst(s)
            # reset while the node is answering a large reply
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                      + token.encode() + b"\r\n\r\n")
            rst(s)
            # garbage
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(bytes(range(256)) * 4 + b"\r\n\r\n")
            s.settimeout(5)
            try:
                reply = s.recv(200)
                assert reply == b"" or reply.startswith(b"HTTP/1.1 400"), reply
            except OSError:
                pass
            s.close()
            # a slowloris: half a request, left open
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            stalled.append(s)
        # headers that never end but keep coming: cut off at hypercorn's bound
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(200):
                s.sendall(b"X-Pad: " + b"a" * 1000 + b"\r\n")
        except OSError:
            pass
        s.close()
        st = healthy()  # with 20 stalled connections still open
        assert st["node"]["state"] == "active"
        assert p.a.proc.poll() is None
        for s in stalled:
            rst(s)
        time.sleep(0.2)
        st = healthy()
        assert "http.serve" not in st["tasks"] and "http.request" not in st["tasks"], st["tasks"]
        assert p.a.status()["node"]["state"] == "active"  # the admin socket answers too
        # the node still stops cleanly (exit 0) with a stalled client and an open keep-alive
        stalled = socket.create_connection(("127.0.0.1", port), timeout=5)
        stalled.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n")
        kept = socket.create_connection(("127.0.0.1", port), timeout=5)
        kept.sendall(b"GET /api/v1/session HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + token.encode() + b"\r\n\r\n")
        assert kept.recv(12) == b"HTTP/1.1 200"
        assert p.a.stop() == 0
        assert [e for e in p.a.events() if e["event"] == "stopped"]
        stalled.close()
        kept.close()


def test_errors_are_json_and_large_bodies_are_refused(short_dir):
    with Pair(short_dir, http=True) as p:
        p.start()
        p.wait_state("a", "active", 30)
        url, admin = p.http_url("a"), p.tokens["admin"]
        r = call(url, "GET", "/no/such/thing", token=admin)
        assert r.status == 404 and r.code == "not_found" and r.json["ok"] is False
        r = call(url, "DELETE", "/api/v1/status", token=admin)
        assert r.status == 405 and r.code == "method_not_allowed" and "GET" in r.header("Allow")
        r = call(url, "POST", "/api/v1/mode", token=admin, body=b"{not json",
                 headers={"Content-Type": "application/json"})
        assert r.status == 400 and r.code == "bad_request"
        r = call(url, "POST", "/api/v1/mode", token=admin, body=b"[1, 2]",
                 headers={"Content-Type": "application/json"})
        assert r.status == 400 and r.code == "bad_request"
        # a body over 1 MiB is refused by its Content-Length, before it is read: only the
        # headers are sent (sending the whole body races the server's close of the
        # connection, whose reset can discard the answer on the client's side)
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /api/v1/mode HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Authorization: Bearer " + admin.encode() + b"\r\n"
                      b"Content-Type: application/json\r\nContent-Length: " + str((1 << 20) + 20).encode()
                      + b"\r\n\r\n" + b'{"mode": "' + b"x" * 4096)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413") and json.loads(body)["error"]["code"] == "too_large", answer
        assert p.a.status()["node"]["mode"] == "automatic"
        r = call(url, "GET", "/api/v1/status", token=admin)
        assert r.header("X-Content-Type-Options") == "nosniff" and r.header("Server") is None


# ============================================================================ in process


async def test_a_failing_server_is_recorded_and_started_again_on_the_same_socket(tmp_path, monkeypatch,
                                                                                capfd):
    """hypercorn failing (planted: its first run raises) is ``http.serve`` in the task
    failures; the server runs again on the socket opened at start, and a cancelled
    ``serve_http`` closes that socket.  With ``log.level = "debug"`` requests are in the
    event log; nothing goes to the console."""
    runs = []
    real = server.serve_connections

    async def flaky(*args, **kwargs):
        runs.append(trio.current_time())
        if len(runs) == 1:
            raise RuntimeError("planted: hypercorn failed")
        return await real(*args, **kwargs)

    async def hello(request):
        return PlainTextResponse("hello")

    monkeypatch.setattr(server, "serve_connections", flaky)
    monkeypatch.setattr(server, "build_app", lambda nm, hub: Starlette(routes=[Route("/", hello)]))
    port = free_port()
    events = EventLog(tmp_path / "events.jsonl", "t", console=None, level="debug")
    cfg = SimpleNamespace(http=HttpSettings(listen=Address("127.0.0.1", port)),
                          node=SimpleNamespace(name="t"), log=SimpleNamespace(level="debug"))
    nm = SimpleNamespace(cfg=cfg, events=events, failures=TaskFailures(events.write))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_http, nm)
        reply = await trio.to_thread.run_sync(lambda: call(f"http://127.0.0.1:{port}", "GET", "/"))
        assert reply.status == 200 and reply.body == b"hello"
        assert len(runs) == 2 and nm.failures.counts["http.serve"] == 1
        assert "planted: hypercorn failed" in nm.failures.last["http.serve"]
        nursery.cancel_scope.cancel()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # closed with the node manager
    events.close()
    # log.level debug: the requests are http_access records in the event log (not stdout)
    records = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    access = [r for r in records if r["event"] == "http_access"]
    # (hypercorn adds a record with status "-" when the client closes before the app's end)
    assert [a for a in access if '"GET / 1.1" 200 ' in a["message"]], [a["message"] for a in access]
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)


def stand_in(tmp_path: Path, port: int):
    events = EventLog(tmp_path / "events.jsonl", "t", console=None)
    cfg = SimpleNamespace(http=HttpSettings(listen=Address("127.0.0.1", port)),
                          node=SimpleNamespace(name="t"), log=SimpleNamespace(level="info"))
    return SimpleNamespace(cfg=cfg, events=events, failures=TaskFailures(events.write))


async def test_connections_over_the_limit_are_closed_and_half_requests_time_out(tmp_path, monkeypatch):
    async def hello(request):
        return PlainTextResponse("hello")

    monkeypatch.setattr(server, "build_app", lambda nm, hub: Starlette(routes=[Route("/", hello)]))
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 3)
    monkeypatch.setattr(server, "KEEP_ALIVE", 3.0)
    port = free_port()
    nm = stand_in(tmp_path, port)

    def half_requests(n: int) -> list[socket.socket]:
        socks = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(s)
        return socks

    def refused_at_once() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            try:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                return s.recv(100)
            except OSError:
                return b""

    def closed_by_server(s: socket.socket) -> bool:
        try:
            return s.recv(100) == b""
        except OSError:
            return True

    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_http, nm)
        stalled = await trio.to_thread.run_sync(half_requests, 3)
        await trio.sleep(0.2)
        assert await trio.to_thread.run_sync(refused_at_once) == b""  # the fourth: closed
        assert [r for r in nm.events.path.read_text().splitlines() if "http_connections_full" in r]
        # the half requests are closed by the server after KEEP_ALIVE
        for s in stalled:
            assert await trio.to_thread.run_sync(closed_by_server, s)
            s.close()
        reply = await trio.to_thread.run_sync(lambda: call(f"http://127.0.0.1:{port}", "GET", "/"))
        assert reply.status == 200 and reply.body == b"hello"
        assert not nm.failures.counts
        nursery.cancel_scope.cancel()
    nm.events.close()
