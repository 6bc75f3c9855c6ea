"""The node's TOML configuration (failover.config.load_config: tomllib, then the schema).

The input is a TOML file's bytes, written to a scratch file and loaded as the node manager
loads it.  Invariants: ``load_config`` raises only ``ConfigError`` (not TOML, not UTF-8, an
unknown key, a bad value, a cross-check); a file that loads is also accepted by
``parse_config`` from the same document, its document written again with ``tomli_w`` loads
to the same configuration, and what the node derives from a configuration (the settings
digest, the sockets it binds and dials, the port-collision check, the supervisor's settings)
never raises.
"""
from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import tomli_w

from failover.config import (
    ConfigError,
    listen_binds,
    load_config,
    parse_config,
    peer_binds,
    port_collisions,
    settings_that_must_match,
    shared_settings_digest,
)
from tests.fuzz.common import check, scratch_dir

_SCRATCH: list[Path] = []


def test_one_input(data: bytes) -> None:
    if not _SCRATCH:
        _SCRATCH.append(scratch_dir("config"))
    path = _SCRATCH[0] / "node.toml"
    path.write_bytes(data)
    try:
        cfg = load_config(path)
    except ConfigError as e:
        check(str(path) in str(e), f"ConfigError does not name the file: {e}")
        return
    doc = tomllib.loads(data.decode("utf-8"))
    again = parse_config(doc, str(path), base_dir=path.parent)
    check(again == cfg, "parse_config of the same document differs from load_config")
    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError):
        text = None  # a document tomli_w cannot write (e.g. a time with a zone): fine
    if text is not None:
        path.write_text(text)
        check(load_config(path) == cfg, "the document written again loads differently")
    check(isinstance(shared_settings_digest(cfg), int), "digest")
    problems = settings_that_must_match(cfg, cfg)  # paired with itself: only the roles clash
    check(all(p.startswith(("node.role", "link.", "replication.peer")) for p in problems),
          f"a configuration differs from itself: {problems}")
    for bind in (*listen_binds(cfg), *peer_binds(cfg)):
        check(isinstance(bind.address, str), f"bind {bind!r}")
    port_collisions(cfg)
    cfg.supervisor_config()
    check(replace(cfg) == cfg, "a configuration is not a plain value")


def seeds() -> list[bytes]:
    """Pairs written by ``vmha configure`` and the TOML examples of the docs."""
    import re

    from failover.configure import make_pair

    out = []
    for kwargs in ({}, {"failback": "scheduled", "window": ("22:00", "23:30"),
                        "profile": "fast", "loopback_ports": None}):
        p, s, _ = make_pair("ums-a", "ums-b", "10.0.0.1:3653", "10.0.0.2:3653",
                            "/var/lib/vmha", key=bytes(32), **kwargs)
        out += [p.encode(), s.encode()]
    docs = Path(__file__).resolve().parents[2] / "docs"
    base = out[2].decode()  # no loopback port: the examples add their own ports
    for page in ("configuration.md", "integrations.md", "smdi.md", "analog.md"):
        for block in re.findall(r"```toml\n(.*?)```", (docs / page).read_text(), re.S):
            out.append(block.encode())
            if "[node]" not in block:
                out.append((base + "\n" + block).encode())
    return out
