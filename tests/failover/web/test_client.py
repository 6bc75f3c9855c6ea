"""The API client of ``vmha status --remote`` (failover/web/client.py).

Against a real pair on loopback: node ``a`` serves the API over TLS with a certificate made
here by ``openssl``, node ``b`` over plain HTTP.  Then the token file's rules, and the client
fuzzed against a real socket that answers anything (status lines, headers, bodies)."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failover.config import load_config
from failover.web.client import (
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    MAX_RESPONSE,
    TOKEN_ENV,
    ApiClient,
    ApiClientError,
    read_token,
)
from lab.pair import Pair, free_port

pytestmark = pytest.mark.multiprocess

GUARD = 30.0  # hang guard only


def make_cert(d: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA) and its key."""
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    key.chmod(0o600)
    return cert, key


@pytest.fixture(scope="module")
def tls_pair():
    d = Path(tempfile.mkdtemp(prefix="vmha-cli-", dir="/tmp"))
    try:
        cert, key = make_cert(d, "vmha-a")
        with Pair(d, http=True, extra_a={"http": {"tls_cert": str(cert), "tls_key": str(key)}}) as p:
            p.start()
            p.wait_for(lambda: p.a.state() == "active" and p.b.state() == "inactive", GUARD,
                       what="a active, b inactive")
            port = load_config(p.a_config).http.listen.port
            yield p, f"https://127.0.0.1:{port}", cert, d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def error_of(fn) -> ApiClientError:
    with pytest.raises(ApiClientError) as info:
        fn()
    return info.value


def test_status_over_plain_http_on_loopback(tls_pair):
    pair, _, _, _ = tls_pair
    status = ApiClient(pair.http_url("b"), pair.tokens["read"]).status()
    local = pair.b.status()
    assert status["node"]["name"] == local["node"]["name"] == "b"
    assert status["node"]["term"] == local["node"]["term"] and status["peer"]["name"] == "a"
    assert set(status) == set(local)  # the same dict vmha status --json prints


def test_status_over_tls_verified_with_the_given_ca(tls_pair):
    pair, url, cert, _ = tls_pair
    status = ApiClient(url + "/", pair.tokens["read"], cacert=str(cert)).status()
    assert status["node"]["name"] == "a" and status["node"]["state"] == "active"


def test_an_untrusted_certificate_is_a_clear_error(tls_pair):
    pair, url, _, d = tls_pair
    e = error_of(lambda: ApiClient(url, pair.tokens["read"]).status())  # the system's store
    assert e.exit_code == EXIT_REFUSED
    assert "does not verify" in e.message and "--cacert" in e.message and url in e.message
    other, _ = make_cert(d, "other-ca")
    e = error_of(lambda: ApiClient(url, pair.tokens["read"], cacert=str(other)).status())
    assert e.exit_code == EXIT_REFUSED and "does not verify" in e.message
    # TLS spoken to a plain HTTP port: a handshake failure, not a traceback
    e = error_of(lambda: ApiClient(pair.http_url("b").replace("http:", "https:"), pair.tokens["read"],
                                   cacert=str(other)).status())
    assert e.exit_code == EXIT_REFUSED and "TLS" in e.message


def test_a_refused_token_says_so(tls_pair):
    pair, url, cert, _ = tls_pair
    for client in (ApiClient(pair.http_url("b"), "vmha_" + "A" * 43),
                   ApiClient(url, "vmha_" + "A" * 43, cacert=str(cert))):
        e = error_of(client.status)
        assert e.exit_code == EXIT_REFUSED
        assert "401" in e.message and "token was refused" in e.message


def test_nothing_listening_is_unreachable():
    port = free_port()
    e = error_of(lambda: ApiClient(f"http://127.0.0.1:{port}", "t").status())
    assert e.exit_code == EXIT_UNREACHABLE and "connection refused" in e.message
    e = error_of(lambda: ApiClient("https://no-such-host.invalid:8443", "t").status())
    assert e.exit_code == EXIT_UNREACHABLE and "cannot resolve" in e.message


def test_bad_urls_are_refused_before_anything_is_sent():
    with socket.socket() as s:  # a listener that must see no connection
        s.bind(("127.0.0.1", 0))
        s.listen()
        s.settimeout(0.2)
        for url in ("ftp://127.0.0.1/", "127.0.0.1:8080", "http:///x", "http://127.0.0.1:99999",
                    f"http://127.0.0.1:{s.getsockname()[1]}/?x=1", "http://192.0.2.7:8080"):
            e = error_of(lambda u=url: ApiClient(u, "t"))
            assert e.exit_code == EXIT_USAGE, (url, e.message)
        with pytest.raises(TimeoutError):
            s.accept()
    e = error_of(lambda: ApiClient("https://127.0.0.1:1", "t", cacert="/nonexistent/ca.pem"))
    assert e.exit_code == EXIT_USAGE and "/nonexistent/ca.pem" in e.message


def test_the_token_comes_from_the_file_or_the_environment(tmp_path):
    f = tmp_path / "token"
    f.write_text("vmha_abc\n# comment lines after the token are ignored\n")
    assert read_token(str(f), env={}) == "vmha_abc"
    assert read_token(None, env={TOKEN_ENV: " vmha_env \n"}) == "vmha_env"
    for content in (b"", b"\n\n", b"two words\n", "v\u00e9\n".encode(), b"x" * 5000, b"\xff\xfe"):
        f.write_bytes(content)
        e = error_of(lambda: read_token(str(f), env={TOKEN_ENV: "ignored"}))
        assert e.exit_code == EXIT_USAGE and str(f) in e.message
    e = error_of(lambda: read_token(str(tmp_path / "missing"), env={}))
    assert e.exit_code == EXIT_USAGE and "cannot read the token file" in e.message
    e = error_of(lambda: read_token(None, env={}))
    assert e.exit_code == EXIT_USAGE and "--token-file" in e.message and TOKEN_ENV in e.message


# ----------------------------------------------------------------------------- fuzz: any answer


class AnswerServer:
    """A real TCP listener that answers every connection with the given bytes, then closes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.answer = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(65536)
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def server():
    s = AnswerServer()
    yield s
    s.close()


def http_answer(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("latin-1", "replace") + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


status_json = {"ok": True, "status": {"node": {"name": "a"}, "peer": {"name": "b"}}}
bodies = st.one_of(st.binary(max_size=300),
                   st.sampled_from([json.dumps(status_json).encode(), b'{"ok": true}', b"[]", b"null",
                                    b'{"ok": false, "error": {"code": "x", "message": "no"}}',
                                    b'{"ok": true, "status": []}']))
answers = st.one_of(
    st.binary(max_size=400),
    st.builds(http_answer, st.sampled_from([200, 201, 204, 301, 307, 400, 401, 403, 404, 409, 500, 503]),
              st.lists(st.tuples(st.sampled_from(["Location", "Content-Type", "X-A", "WWW-Authenticate"]),
                                 st.text(max_size=30)), max_size=3), bodies))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answers)
def test_any_answer_is_a_status_or_one_clear_error(server, answer):
    server.answer = answer
    client = ApiClient(f"http://127.0.0.1:{server.port}", "tok", timeout=5)
    try:
        status = client.status()
    except ApiClientError as e:
        assert e.exit_code in (EXIT_REFUSED, EXIT_UNREACHABLE) and e.message
    else:
        assert status == status_json["status"]


def test_a_redirect_is_not_followed_and_an_oversized_answer_is_refused(server):
    server.answer = http_answer(307, [("Location", "http://127.0.0.1:1/api/v1/status")], b"")
    e = error_of(ApiClient(f"http://127.0.0.1:{server.port}", "tok").status)
    assert e.exit_code == EXIT_REFUSED and "not followed" in e.message and "127.0.0.1:1" in e.message
    server.answer = http_answer(200, [], b" " * (MAX_RESPONSE + 1))
    e = error_of(ApiClient(f"http://127.0.0.1:{server.port}", "tok").status)
    assert e.exit_code == EXIT_REFUSED and "over" in e.message
