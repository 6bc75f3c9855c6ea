"""``lab.pair.Pair(http=True)``: both nodes serve the API on loopback with each other's URL as
``peer_url``, and the same two operators (tokens) on both; without ``http`` no ``[http]``."""
from __future__ import annotations

import pytest

from failover.config import load_config
from lab.pair import Pair
from tests.failover.web.http_util import call


def test_pair_http_serves_both_nodes_with_the_same_tokens(short_dir):
    with Pair(short_dir, http=True) as p:
        a, b = load_config(p.a.config), load_config(p.b.config)
        assert a.http.url == p.http_url("a") and b.http.url == p.http_url("b")
        assert a.http.peer == p.http_url("b") and b.http.peer == p.http_url("a")
        assert p.http_url("a") != p.http_url("b")
        assert set(p.tokens) == {"admin", "read"} and p.tokens["admin"] != p.tokens["read"]
        p.start()
        p.wait_state("a", "active", 30)
        p.wait_state("b", "inactive", 30)
        for name in ("a", "b"):
            for role, operator in (("admin", "admin"), ("read", "viewer")):
                r = call(p.http_url(name), "GET", "/api/v1/session", token=p.tokens[role])
                assert r.status == 200, r.body
                assert (r.json["operator"], r.json["role"], r.json["node"]) == (operator, role, name)


def test_pair_without_http_has_no_api(short_dir):
    p = Pair(short_dir)
    try:
        assert not load_config(p.a.config).http.enabled and not load_config(p.b.config).http.enabled
        assert p.tokens == {}
        with pytest.raises(KeyError, match="http=True"):
            p.http_url("a")
    finally:
        p.stop()
