"""The pairing wizard: write both nodes' TOML files and the link's pre-shared key.

``make_pair(...)`` is pure (text in, text out); ``write_pair(out_dir, ...)`` writes the three
files atomically and never overwrites unless ``force=True``; ``load_key(path)`` (from
:mod:`failover.keys`) reads the current key back and refuses a file that others can read;
``configure_main(argv)`` is ``vmha configure`` (also ``--rotate-key``, see ``rotate_key``).
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import tomli_w

from failover.config import (
    DEFAULT_LINK_PORT,
    PROFILES,
    Address,
    Bind,
    ConfigError,
    NodeConfig,
    Problem,
    binds_collide,
    check_node_name,
    listen_binds,
    load_config,
    parse_address,
    parse_config,
    port_collisions,
    same_host,
    settings_that_must_match,
)
from failover.keys import describe, load_key, load_keys, parse_duration, rotate, save_keys
from failover.web.operators import NAME_RULE, ROLES, add_operator, remove_operator
from failover.web.settings import is_loopback
from telephony.loopback import settings as loopback
from telephony.runtime.files import fsync_dir, write_new_file

__all__ = ["KEY_BYTES", "DEFAULT_LOOPBACK_PORTS", "DEFAULT_HTTP_PORTS", "AUTO", "PairFiles", "make_pair",
           "write_pair", "load_key", "rotate_key", "add_operator_main", "remove_operator_main",
           "configure_main"]

KEY_BYTES = 32
KEY_FILE_NAME = "link.key"
DEFAULT_LOOPBACK_PORTS = loopback.DEFAULT_PORTS  # (primary, secondary) ports.loopback.listen ports
AUTO = "auto"  # loopback_ports, http_ports: the defaults, moved up when they would collide
#: (primary, secondary) http.listen ports on 127.0.0.1 the wizard starts from
DEFAULT_HTTP_PORTS = (3680, 3681)


# ============================================================================ make_pair (pure)


def _node_doc(name: str, role: str, addr: str, peer_name: str, peer_addr: str, data_root: str,
              loopback_port: int | None, profile: str, failback: str,
              window: tuple[str, str] | None) -> dict:
    doc: dict = {
        "node": {"name": name, "role": role, "data_dir": str(Path(data_root) / name),
                 "key_file": KEY_FILE_NAME},
        "link": {"listen": addr, "peer": peer_addr, "peer_name": peer_name},
        "failover": {"profile": profile},
        "failback": {"type": failback},
    }
    if window is not None:
        doc["failback"]["window_start"], doc["failback"]["window_end"] = window
    doc["ports"] = {"loopback": loopback.toml_table(loopback_port)}
    return doc


def _header(role: str, name: str, peer: str, http: str = "") -> str:
    return (f"# vmha node configuration: {name} ({role}); its peer is {peer}.\n"
            "# Written by `vmha configure`.  Keys not listed take their defaults:\n"
            "# see docs/configuration.md.  link.key (the pre-shared key) must be copied to\n"
            "# the peer with mode 0600; it is never sent over the network.\n" + http + "\n")


_HTTP_LOCAL = ("# [http]: the admin API and the Failover Monitor page listen on 127.0.0.1 only (plain\n"
               "# HTTP is allowed only on loopback).  To reach them from other hosts set http.listen\n"
               "# to this node's address with http.tls_cert and http.tls_key, and http.peer_url to\n"
               "# the peer's API.  Operators: vmha configure --add-operator NAME --role admin\n"
               "# --config THIS_FILE (the same token on both nodes: see docs/admin-api.md).\n")
_HTTP_LAB = ("# [http]: the admin API and the Failover Monitor page (plain HTTP on loopback).\n"
             "# Operators: vmha configure --add-operator NAME --role admin --config THIS_FILE.\n")


def _is_loopback_addr(addr: str) -> bool:
    host = addr.rpartition(":")[0].strip("[]")
    return is_loopback(host)


def make_pair(primary_name: str, secondary_name: str, primary_addr: str, secondary_addr: str,
              data_root: str | os.PathLike = "data", *,
              loopback_ports: tuple[int, int] | None | str = AUTO,
              http_ports: tuple[int, int] | None | str = AUTO,
              profile: str = "default", failback: str = "manual",
              window: tuple[str, str] | None = None,
              key: bytes | None = None,
              base_dir: str | os.PathLike = "/") -> tuple[str, str, bytes]:
    """Return ``(primary_toml_text, secondary_toml_text, key_bytes)``.

    ``*_addr`` are each node's cluster-interface ``host:port``: it is that node's
    ``link.listen`` and the other node's ``link.peer``.  Each ``node.data_dir`` is
    ``<data_root>/<name>`` (a relative ``data_root`` is taken from the TOML file's directory);
    ``node.key_file`` is ``link.key`` next to the TOML files.  ``loopback_ports`` is
    ``(primary, secondary)``, ``None`` (disabled) or ``"auto"`` (3671/3672, each moved up to
    the next free port if it would collide).  ``http_ports`` likewise for ``http.listen`` on
    127.0.0.1 (``"auto"``: 3680/3681, moved up on a collision); when both nodes' addresses are
    loopback (a pair on one host) each file also gets ``http.peer_url``, the other's API; for
    other addresses the API stays on loopback and the file's header says what to set to reach
    it from elsewhere (TLS).  ``failback="scheduled"`` needs
    ``window=("HH:MM", "HH:MM")``.  ``key`` defaults to 32 fresh random bytes.  ``base_dir``
    is where the files will live (only used to check the resulting paths, e.g. the Unix
    socket length limit).

    Ports: the link ports are the operator's and never change.  The replication listeners
    default to link port + 1; when that (or an ``"auto"`` loopback port) would collide with
    another port of the pair (:func:`~failover.config.port_collisions`: both nodes on one
    host), the next free port up is taken and written explicitly (``replication.listen`` and
    ``peer`` in both files).  A collision among ports the operator gave is refused.

    Raises :class:`ConfigError` for bad input: the output is checked with ``parse_config``,
    as a pair and for port collisions before it is returned."""
    if key is None:
        key = secrets.token_bytes(KEY_BYTES)
    if len(key) != KEY_BYTES:
        raise ConfigError("make_pair", f"the key must be {KEY_BYTES} bytes, not {len(key)}")
    if window is not None and failback != "scheduled":
        raise ConfigError("make_pair", 'a failback window needs failback="scheduled"', "failback.type")
    auto_loopback = isinstance(loopback_ports, str)
    if auto_loopback and loopback_ports != AUTO:
        raise ConfigError("make_pair", f'loopback_ports must be (P, S), None or "{AUTO}"')
    lb = (DEFAULT_LOOPBACK_PORTS if auto_loopback else loopback_ports) or (None, None)
    auto_http = isinstance(http_ports, str)
    if auto_http and http_ports != AUTO:
        raise ConfigError("make_pair", f'http_ports must be (P, S), None or "{AUTO}"')
    hp = (DEFAULT_HTTP_PORTS if auto_http else http_ports) or (None, None)
    docs = {
        "primary": _node_doc(primary_name, "primary", primary_addr, secondary_name, secondary_addr,
                             str(data_root), lb[0], profile, failback, window),
        "secondary": _node_doc(secondary_name, "secondary", secondary_addr, primary_name,
                               primary_addr, str(data_root), lb[1], profile, failback, window),
    }

    for role, port in zip(("primary", "secondary"), hp, strict=True):
        if port is not None:
            docs[role]["http"] = {"listen": f"127.0.0.1:{port}"}

    def parse_all() -> dict[str, NodeConfig]:  # exactly as the node manager will read them
        return {role: parse_config(doc, f"{role}.toml", base_dir=base_dir) for role, doc in docs.items()}

    cfgs = parse_all()
    problems = settings_that_must_match(cfgs["primary"], cfgs["secondary"])
    if problems:
        raise ConfigError("make_pair", "; ".join(problems))
    if _derive_ports(docs, cfgs, auto_loopback, auto_http):
        cfgs = parse_all()
    lab = _is_loopback_addr(primary_addr) and _is_loopback_addr(secondary_addr)
    if lab and None not in hp:
        for role, other in (("primary", "secondary"), ("secondary", "primary")):
            docs[role]["http"]["peer_url"] = cfgs[other].http.url
        cfgs = parse_all()
    problems = port_collisions(cfgs["primary"], cfgs["secondary"])
    if problems:
        raise ConfigError("make_pair", [Problem("", p + " (change one of the ports given)")
                                         for p in problems])
    texts = [_header(role, doc["node"]["name"], doc["link"]["peer_name"],
                     "" if "http" not in doc else _HTTP_LAB if lab else _HTTP_LOCAL) + tomli_w.dumps(doc)
             for role, doc in docs.items()]
    return texts[0], texts[1], key


def _free_port(want: Bind, taken: list[Bind]) -> int:
    """``want.lo`` or the next port up (wrapping to 1024 after 65535) that collides with
    nothing in ``taken``; ``want.lo`` itself when every port is taken (the final check then
    reports it)."""
    port = want.lo
    for _ in range(65536):
        if not any(binds_collide(want._replace(lo=port, hi=port), t) for t in taken):
            return port
        port = port + 1 if port < 65535 else 1024
    return want.lo


def _derive_ports(docs: dict[str, dict], cfgs: dict[str, NodeConfig], auto_loopback: bool,
                  auto_http: bool = False) -> bool:
    """Move the ports the operator did not give (the replication listeners, the loopback
    trunks when ``auto_loopback``, the HTTP API when ``auto_http``) off any port they would
    collide with; edit ``docs``.  Returns whether anything changed."""
    roles = ("primary", "secondary")
    shared = same_host(cfgs["primary"], cfgs["secondary"])
    derivable = ({"replication.listen"} | ({"ports.loopback.listen"} if auto_loopback else set())
                 | ({"http.listen"} if auto_http else set()))
    placed = {r: [b for b in listen_binds(cfgs[r]) if b.setting not in derivable] for r in roles}
    chosen: dict[tuple[str, str], int] = {}
    for setting in ("replication.listen", "ports.loopback.listen", "http.listen"):
        for role in roles:
            want = [b for b in listen_binds(cfgs[role]) if b.setting == setting and setting in derivable]
            if not want:
                continue
            other = roles[1 - roles.index(role)]
            taken = placed[role] + (placed[other] if shared else [])
            port = _free_port(want[0], taken)
            chosen[setting, role] = port
            placed[role].append(want[0]._replace(lo=port, hi=port))
    changed = False
    for role in roles:
        lb = chosen.get(("ports.loopback.listen", role))
        if lb is not None and lb != cfgs[role].ports.loopback.listen.port:
            docs[role]["ports"]["loopback"]["listen"] = f"{cfgs[role].ports.loopback.listen.host}:{lb}"
            changed = True
        hp = chosen.get(("http.listen", role))
        if hp is not None and hp != cfgs[role].http.listen.port:
            docs[role]["http"]["listen"] = str(Address(cfgs[role].http.listen.host, hp))
            changed = True
    rp = {r: chosen.get(("replication.listen", r)) for r in roles}
    if None not in rp.values() and any(rp[r] != cfgs[r].replication.listen.port for r in roles):
        for role in roles:  # both ends of both channels, written out
            other = roles[1 - roles.index(role)]
            c = cfgs[role]
            docs[role]["replication"] = {
                "listen": str(Address(c.replication.listen.host, rp[role])),
                "peer": str(Address(c.replication.peer.host, rp[other])),
            }
        changed = True
    return changed


# ============================================================================ files


class PairFiles(NamedTuple):
    primary: Path
    secondary: Path
    key: Path


def _write_atomic(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write ``data`` to a fresh temp file (O_CREAT|O_EXCL, ``mode``), fsync, then move it to
    ``path``: ``os.replace`` with ``force``, else ``os.link`` (fails if ``path`` exists)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        write_new_file(tmp, data, mode)
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic no-clobber
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def write_pair(out_dir: str | os.PathLike, primary_name: str, secondary_name: str,
               primary_addr: str, secondary_addr: str, data_root: str | os.PathLike = "data", *,
               force: bool = False, **kwargs) -> PairFiles:
    """Write ``primary.toml``, ``secondary.toml`` (0644) and ``link.key`` (0600, 64 hex digits
    and a newline) into ``out_dir`` (created 0700 if missing).  Refuses, before writing
    anything, if any of them exists unless ``force``.  ``kwargs`` go to :func:`make_pair`.
    Raises :class:`ConfigError`."""
    out = Path(out_dir)
    files = PairFiles(out / "primary.toml", out / "secondary.toml", out / KEY_FILE_NAME)
    p_text, s_text, key = make_pair(primary_name, secondary_name, primary_addr, secondary_addr,
                                    data_root, base_dir=out.absolute(), **kwargs)
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not force:
            existing = [str(f) for f in files if os.path.lexists(f)]
            if existing:
                raise ConfigError(out, "refusing to overwrite " + ", ".join(existing)
                                  + " (use --force / force=True)")
        # the key first: a TOML file without its key is useless, a key without TOML is harmless
        _write_atomic(files.key, key.hex().encode() + b"\n", 0o600, force)
        _write_atomic(files.primary, p_text.encode(), 0o644, force)
        _write_atomic(files.secondary, s_text.encode(), 0o644, force)
        fsync_dir(out)
    except FileExistsError as e:  # lost a race with another writer
        raise ConfigError(out, f"refusing to overwrite {e.filename} (it appeared while writing)") from None
    except OSError as e:
        raise ConfigError(getattr(e, "filename", None) or out, f"cannot write: {e.strerror or e}") from None
    return files


# ============================================================================ CLI


def _node_arg(text: str) -> tuple[str, str]:
    """``NAME@HOST[:PORT]`` -> (name, "host:port"); the port defaults to 3653."""
    name, sep, addr = text.partition("@")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME@HOST:PORT")
    try:
        check_node_name(name)
        if ":" not in addr or addr.endswith("]"):  # no port given
            addr = f"{addr}:{DEFAULT_LINK_PORT}"
        a = parse_address(addr, wildcard=False)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    return name, str(a)


def _window_arg(text: str) -> tuple[str, str]:
    start, sep, end = text.partition("-")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HH:MM-HH:MM")
    return start.strip(), end.strip()


def _ports_arg(text: str) -> tuple[int, int] | None | str:
    if text in ("none", AUTO):
        return None if text == "none" else AUTO
    try:
        p, s = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected PRIMARY,SECONDARY ports, auto or none") from None
    return p, s


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="vmha configure",
        description="Write a node pair's TOML files and pre-shared key, or check two files.")
    ap.add_argument("--out", metavar="DIR", help="directory for primary.toml, secondary.toml, link.key")
    ap.add_argument("--primary", metavar="NAME@HOST:PORT", type=_node_arg,
                    help="primary node name and cluster-interface address (port default 3653)")
    ap.add_argument("--secondary", metavar="NAME@HOST:PORT", type=_node_arg)
    ap.add_argument("--profile", choices=list(PROFILES), default="default")
    ap.add_argument("--failback", choices=["manual", "scheduled"], default="manual")
    ap.add_argument("--window", metavar="HH:MM-HH:MM | DURATION",
                    help="scheduled failback window (local time; may cross midnight); with "
                         "--rotate-key: how long the old key is still accepted (e.g. 24h, 90m, "
                         "7d; default 24h)")
    ap.add_argument("--data-root", metavar="DIR", default="data",
                    help="each node's data_dir is DIR/NAME; relative = next to the TOML file "
                         "(default: data)")
    ap.add_argument("--loopback-ports", metavar="P,S", type=_ports_arg, default=AUTO,
                    help="ports.loopback.listen ports on 127.0.0.1 for primary,secondary, "
                         "'none' to disable, or 'auto' (default: 3671,3672, moved up to a free "
                         "port if either would collide with another port of the pair)")
    ap.add_argument("--http-ports", metavar="P,S", type=_ports_arg, default=AUTO,
                    help="http.listen ports on 127.0.0.1 for primary,secondary (the admin API and "
                         "the Failover Monitor page), 'none' for no API, or 'auto' (default: "
                         "3680,3681, moved up to a free port on a collision)")
    ap.add_argument("--force", action="store_true", help="overwrite existing files (with "
                    "--add-operator: replace the operator's token and role)")
    ap.add_argument("--rotate-key", action="store_true",
                    help="write a new current key into the key file of --config's node; the old "
                         "one stays accepted for --window (then copy the file to the peer)")
    ap.add_argument("--config", metavar="NODE.toml", help="the node whose key file --rotate-key "
                    "rotates, whose operators file --add-operator/--remove-operator edit, or "
                    "whose systemd unit --systemd writes")
    ap.add_argument("--add-operator", metavar="NAME", help="add an operator of the HTTP API to "
                    "--config's operators file and print its new bearer token once (" + NAME_RULE + ")")
    ap.add_argument("--role", choices=list(ROLES), help="the operator's role (with --add-operator)")
    ap.add_argument("--token-stdin", action="store_true", help="with --add-operator: read the token "
                    "from standard input instead of making one (to add the same operator on the peer)")
    ap.add_argument("--remove-operator", metavar="NAME", help="remove an operator from --config's "
                    "operators file (its sessions end at once)")
    ap.add_argument("--systemd", metavar="DIR", help="write a systemd unit for --config's node "
                    "into DIR (vmha-<node>.service)")
    ap.add_argument("--check", nargs=2, metavar=("A.toml", "B.toml"),
                    help="print the settings that must match on both nodes but differ, and "
                         "ports that collide; exit 1 if any")
    return ap


def configure_main(argv: Sequence[str]) -> int:
    """``vmha configure``.  Exit 0 = done / pair OK, 1 = --check found differences,
    2 = usage or configuration error."""
    ap = _parser()
    try:
        args = ap.parse_args(list(argv))
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        actions = [flag for flag, on in (("--rotate-key", args.rotate_key),
                                         ("--add-operator", args.add_operator is not None),
                                         ("--remove-operator", args.remove_operator is not None),
                                         ("--systemd", args.systemd is not None)) if on]
        if len(actions) > 1:
            print("vmha configure: error: give only one of " + ", ".join(actions) + " (--config "
                  "NODE.toml goes with exactly one of them)", file=sys.stderr)
            return 2
        if (args.role or args.token_stdin) and actions != ["--add-operator"]:
            print("vmha configure: error: --role and --token-stdin go with --add-operator", file=sys.stderr)
            return 2
        if actions or args.config:
            if len(actions) != 1 or not args.config or args.out or args.primary or args.secondary \
                    or args.check:
                print("vmha configure: error: --config NODE.toml goes with exactly one of "
                      "--rotate-key, --add-operator NAME, --remove-operator NAME, --systemd DIR",
                      file=sys.stderr)
                return 2
            if actions[0] != "--rotate-key" and args.window is not None:
                print(f"vmha configure: error: --window goes with --rotate-key, not {actions[0]}",
                      file=sys.stderr)
                return 2
            if args.add_operator is not None:
                if args.role is None:
                    print("vmha configure: error: --add-operator needs --role read|admin", file=sys.stderr)
                    return 2
                return add_operator_main(args.config, args.add_operator, args.role,
                                         token_stdin=args.token_stdin, force=args.force)
            if args.remove_operator is not None:
                return remove_operator_main(args.config, args.remove_operator)
            if args.systemd is not None:
                from failover.systemd import configure_systemd

                return configure_systemd(args.config, args.systemd, force=args.force)
            try:
                window = parse_duration(args.window) if args.window is not None else 86400.0
            except ValueError as e:
                print(f"vmha configure: error: --window {e}", file=sys.stderr)
                return 2
            return rotate_key(args.config, window, force=args.force)
        if args.window is not None:
            try:
                args.window = _window_arg(args.window)
            except argparse.ArgumentTypeError as e:
                print(f"vmha configure: error: --window {e}", file=sys.stderr)
                return 2
        if args.check:
            if args.out or args.primary or args.secondary:
                print("vmha configure: error: --check cannot be combined with --out/--primary/"
                      "--secondary", file=sys.stderr)
                return 2
            return _check(*args.check)
        missing = [o for o in ("out", "primary", "secondary") if getattr(args, o) is None]
        if missing:
            ap.print_usage(sys.stderr)
            print("vmha configure: error: needs " + ", ".join("--" + m for m in missing)
                  + " (or --check A.toml B.toml)", file=sys.stderr)
            return 2
        if args.failback == "scheduled" and args.window is None:
            print("vmha configure: error: --failback scheduled needs --window HH:MM-HH:MM", file=sys.stderr)
            return 2
        if args.window is not None and args.failback != "scheduled":
            print("vmha configure: error: --window needs --failback scheduled", file=sys.stderr)
            return 2
        (pn, pa), (sn, sa) = args.primary, args.secondary
        files = write_pair(args.out, pn, sn, pa, sa, args.data_root, force=args.force,
                           loopback_ports=args.loopback_ports, http_ports=args.http_ports,
                           profile=args.profile,
                           failback=args.failback, window=args.window)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"wrote {files.primary}\nwrote {files.secondary}\nwrote {files.key} (mode 0600)")
    for path in (files.primary, files.secondary):
        binds = [b for b in listen_binds(load_config(path)) if b.proto != "unix"]
        print(f"{path.name} listens on: " + ", ".join(f"{b.setting} {b.address}" for b in binds))
    print(f"Copy {files.secondary.name} and {files.key.name} to the secondary (keep mode 0600), "
          f"then start each node with: vmha node --config FILE")
    if args.http_ports is not None:
        print("The admin API and Failover Monitor page have no operators yet. Add one on both "
              "nodes with the same token (printed once, here kept in a file of mode 0600 that\n"
              "`vmha status --remote URL --token-file NAME.token` can use):\n"
              f"  (umask 077; vmha configure --add-operator NAME --role admin --config {files.primary} "
              "> NAME.token)\n"
              f"  vmha configure --add-operator NAME --role admin --config {files.secondary} "
              "--token-stdin < NAME.token")
    return 0


#: the longest token --token-stdin reads
MAX_STDIN_TOKEN = 4096


def add_operator_main(config_path: str, name: str, role: str, *, token_stdin: bool = False,
                      force: bool = False) -> int:
    """``vmha configure --add-operator NAME --role ROLE --config NODE.toml``: add the
    operator to the node's operators file (mode 0600) and print the new token, alone, on
    standard output (what it says about it goes to standard error), so it can be piped into
    the same command for the peer with ``--token-stdin``.  The running node picks the change
    up at its next request."""
    cfg = load_config(config_path)
    path = cfg.http.operators_file
    token = None
    if token_stdin:
        token = sys.stdin.read(MAX_STDIN_TOKEN + 1).strip()
        if not token:
            print("vmha configure: error: --token-stdin: no token on standard input", file=sys.stderr)
            return 2
    try:
        token = add_operator(path, name, role, token, replace=force)
    except ValueError as e:
        print(f"vmha configure: error: {e}", file=sys.stderr)
        return 2
    print(f"added operator {name} (role {role}) to {path} (mode 0600)"
          + ("" if cfg.http.enabled else f"; note: http.listen is not set in {config_path}, so "
             "this node serves no HTTP API"), file=sys.stderr)
    if token_stdin:
        print(f"{cfg.node.name}: operator {name} ({role}) added with the token from standard input")
        return 0
    print(token, flush=True)
    print(f"That is {name}'s bearer token, shown only this once. Add the same operator on "
          f"{cfg.link.peer_name} with --token-stdin (give it the token on standard input); use it as "
          "'Authorization: Bearer <token>' or on the login page.", file=sys.stderr)
    return 0


def remove_operator_main(config_path: str, name: str) -> int:
    """``vmha configure --remove-operator NAME --config NODE.toml``."""
    cfg = load_config(config_path)
    path = cfg.http.operators_file
    remove_operator(path, name)
    print(f"removed operator {name} from {path}; the node refuses its token and ends its sessions "
          f"at its next request. Remove it on {cfg.link.peer_name} too.")
    return 0


def rotate_key(config_path: str, window: float, *, force: bool = False) -> int:
    """``vmha configure --rotate-key``: a new random current key in the node's key file, the
    old current key accepted as the previous one for ``window`` seconds.  Refuses (exit 2,
    nothing written) while an earlier rotation's previous key is still accepted, unless
    ``force``: rotating again then would drop the key the peer may still be using."""
    cfg = load_config(config_path)
    path = cfg.node.key_file
    ring = load_keys(path)
    now = time.time()
    if ring.previous is not None and not ring.expired(now) and not force:
        ids = describe(ring)
        print(f"vmha configure: error: {path}: the previous key (id {ids['previous_id']}) is still "
              f"accepted until {ids['previous_until']}: an earlier rotation may not be finished "
              "(the peer may still use that key). Copy this file to the peer first; rotate again "
              "with --force to drop it anyway", file=sys.stderr)
        return 2
    new = rotate(ring, now, window)
    try:
        save_keys(path, new)
    except OSError as e:
        raise ConfigError(path, f"cannot write the key file: {e.strerror or e}", "node.key_file") from None
    ids = describe(new)
    print(f"wrote {path} (mode 0600): new current key id {ids['current_id']}; the old key "
          f"(id {ids['previous_id']}) is still accepted until {ids['previous_until']}")
    print(f"{cfg.node.name} picks the new file up by itself within a second (or at once on "
          f"SIGHUP). Next: copy {path} to {cfg.link.peer_name}'s node.key_file (keep mode 0600) "
          f"before {ids['previous_until']}; {cfg.link.peer_name} picks it up by itself too. "
          "Connections already up are not interrupted; new ones use the new key.")
    return 0


def _check(a_path: str, b_path: str) -> int:
    a, b = load_config(a_path), load_config(b_path)
    problems = settings_that_must_match(a, b) + port_collisions(a, b)
    # the pre-shared keys must be equal too; compared only where both files are present here
    ka, kb = a.node.key_file, b.node.key_file
    if ka.exists() and kb.exists():
        try:
            ra, rb = load_keys(ka), load_keys(kb)
            now = time.time()
            if not set(ra.accepted(now)) & set(rb.accepted(now)):
                problems.append(f"node.key_file: {ka} and {kb} hold different keys")
            elif ra.current != rb.current:
                newer, older = (ka, kb) if rb.current in ra.accepted(now) else (kb, ka)
                print(f"note: a key rotation is in progress: copy {newer} to {older}",
                      file=sys.stderr)
        except ConfigError as e:
            problems.append(f"node.key_file: {e}")
    else:
        print(f"note: key files not compared ({ka if not ka.exists() else kb} is not here)",
              file=sys.stderr)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s): {a_path} and {b_path} do not form a working pair",
              file=sys.stderr)
        return 1
    print(f"OK: {a.node.name} ({a.node.role.label}) and {b.node.name} ({b.node.role.label}) "
          "form a pair; shared settings match and no ports collide")
    return 0
