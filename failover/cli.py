"""``vmha``: the operator's command line."""
from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import entry_points

from failover.config import EXIT_CONFIG, ConfigError, load_config
from failover.pincli import add_parser as add_pin_parser

EXIT_NOT_RUNNING = 3


def _config(args) -> "object":
    path = args.config or os.environ.get("VMHA_CONFIG")
    if not path:
        raise SystemExit("vmha: error: no node configuration: pass --config FILE or set VMHA_CONFIG")
    try:
        return load_config(path)
    except ConfigError as e:
        raise SystemExit(f"vmha: configuration error:\n{e}") from None


def _admin(cfg, request: dict) -> dict | None:
    from failover.admin import admin_request

    try:
        return admin_request(cfg.admin.socket, request)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except (OSError, ValueError) as e:
        raise SystemExit(f"vmha: admin socket {cfg.admin.socket}: {e}") from None


def cmd_node(args) -> int:
    """Exit codes: 0 after a shutdown, 2 (``EXIT_CONFIG``) when the configuration stops the
    node from starting (an invalid file or key, colliding ports, a listener that cannot bind:
    one line each, never a traceback), 130 on Ctrl-C."""
    from failover.node import main_node

    path = args.config or os.environ.get("VMHA_CONFIG")
    if not path:
        raise SystemExit("vmha: error: no node configuration: pass --config FILE or set VMHA_CONFIG")
    try:
        return main_node(load_config(path))
    except KeyboardInterrupt:
        return 130
    except ConfigError as e:
        for line in str(e).splitlines():
            print(f"vmha node: {line}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as e:
        print(f"vmha node: {e}", file=sys.stderr)
        return 1


def format_status(st: dict) -> str:
    n, p = st["node"], st["peer"]
    hb = p["last_heartbeat_age_s"]
    rows = [("NODE", "ROLE", "STATE", "TERM", "SERVICE", "MODE", "CALLS", "REACHABLE", "HEARTBEAT"),
            (f"{n['name']} (this)", n["role"], n["state"], str(n["term"]), n["service"], n["mode"],
             str(st["calls_in_progress"]), "-", "-"),
            (f"{p['name']} (peer)", "secondary" if n["role"] == "primary" else "primary",
             p["state"] or "?", "?" if p["term"] is None else str(p["term"]), p["service"] or "?",
             p["mode"] or "?", "?" if p["calls"] is None else str(p["calls"]),
             "yes" if p["reachable"] else "NO", "never" if hb is None else f"{hb:.2f} s ago")]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    ports = ", ".join(f"{x['name']} {x['state']}" + (f" ({x['detail']})" if x.get("detail") else "")
                      for x in st["ports"]) or "none reported"
    s = st["settings"]
    flags = [f for f in ("hold", "shutting_down") if n.get(f)] + ([] if n["licensed"] else ["UNLICENSED"])
    lines += ["", f"last change: {n['cause']}" + (f"   [{', '.join(flags)}]" if flags else "")]
    if n.get("service_failures"):
        retry = n.get("service_retry_in_s")
        lines.append(f"service failures in the restart window: {n['service_failures']}"
                     + ("" if retry is None else f"; backing off, next start in {retry:.1f} s"))
    lines += [f"ports: {ports}", _format_health(n, p),
              f"peer link: {'connected' if p['link'].get('out_connected') else 'down'} out, "
              f"{p['link'].get('in_connections', 0)} in; dropped frames: "
              f"{sum(v for k, v in p['link'].items() if k.startswith('dropped_'))}",
              f"failover after {s['takeover_after_s']} s of silence ({s['missed_pings']} x "
              f"{s['ping_interval_s'] * 1000:.0f} ms), lease {s['lease_s']} s, failback {s['failback']}"]
    keys = st.get("keys")
    if keys:  # ids only: the keys themselves never leave the key file
        lines.append(f"link key: {keys['current_id']}" + (
            f"; previous {keys['previous_id']} accepted until {keys['previous_until']}"
            if keys.get("previous_id") else ""))
    if p["link"].get("settings_match") is False:
        lines.append("SHARED SETTINGS DIFFER from the peer's: vmha configure --check on both "
                     "files names them")
    lines += _format_replication(st.get("replication"))
    lines += [f"{group}: " + ", ".join(f"{k} {v}" for k, v in counters.items())
              for group, counters in (st.get("counters") or {}).items()]
    lines += _format_tasks(st)
    return "\n".join(lines)


def _format_health(n: dict, p: dict) -> str:
    """This node's health, each driver's score and detail, and the peer's health."""
    drivers = "; ".join(f"{d['name']} {d['score']}" + (f" ({d['detail']})" if d.get("detail") else "")
                        for d in n.get("drivers") or [])
    peer = "?" if p.get("health") is None else p["health"]
    return f"health: {n.get('health', '?')}" + (f" ({drivers})" if drivers else "") + f"; peer {peer}"


def _format_tasks(st: dict) -> list[str]:
    """Failures the node manager's and replication's long-lived tasks contained (each was
    logged as task_failed); nothing when there were none."""
    out = []
    tasks = dict(st.get("tasks") or {})
    repl = st.get("replication") or {}
    tasks.update({f"replication {k}": v for k, v in (repl.get("tasks") or {}).items()})
    if tasks:
        out.append("task failures (contained): " + ", ".join(
            f"{name} {t['failures']}" + (" FAILING" if t.get("failing") else "")
            for name, t in sorted(tasks.items())))
    if repl.get("healthy") is False:
        out.append(f"REPLICATION UNHEALTHY: {repl.get('unhealthy_reason') or '?'}")
    return out


def _format_replication(r: dict | None) -> list[str]:
    if not r:
        return []
    d = r["db"]
    lag = "?" if d["lag_changes"] is None else d["lag_changes"]
    behind = "?" if d["behind_changes"] is None else d["behind_changes"]
    out = [f"database: log {d['head_seq']}, peer has acknowledged up to "
           f"{'?' if d['peer_acked_seq'] is None else d['peer_acked_seq']} (lag {lag}); applied from "
           f"the peer {d['applied_seq']} (behind {behind}); checksum {d['checksum']}"
           + ("  DIVERGED" if d["diverged"] else "") + (f"  PAUSED: {d['paused']}" if d["paused"] else "")
           + (f"; {d['conflicts']} conflicts (vmha db conflicts)" if d["conflicts"] else "")]
    if not r["enabled"]:
        return out + ["replication: disabled"]
    f = r.get("files") or {}
    out.append(f"files: {f.get('files', '?')} files, {f.get('pending', '?')} pending"
               + (f", {f['conflicts']} conflicts" if f.get("conflicts") else "")
               + (f", paused: {f['paused']}" if f.get("paused") else ""))
    return out


def cmd_status(args) -> int:
    if args.remote:
        return cmd_status_remote(args)
    if args.token_file or args.cacert:
        print("vmha status: --token-file and --cacert go with --remote URL", file=sys.stderr)
        return EXIT_CONFIG
    cfg = _config(args)
    reply = _admin(cfg, {"op": "status"})
    if reply is None:
        msg = {"node": {"name": cfg.node.name, "role": cfg.node.role.label, "state": "stopped",
                        "service": "unknown"}, "error": "node manager is not running"}
        print(json.dumps(msg, indent=2) if args.json else
              f"{cfg.node.name}: node manager is not running (no admin socket at {cfg.admin.socket})")
        return EXIT_NOT_RUNNING
    print(json.dumps(reply["status"], indent=2) if args.json else format_status(reply["status"]))
    return 0


def cmd_status_remote(args) -> int:
    """``vmha status --remote URL``: the same view through the node's HTTP API (no --config).
    Exit codes: 0, 3 when the node does not answer, 1 when it refuses (token, TLS, an answer
    that is not the status), 2 for a wrong command line or token file (nothing sent)."""
    from failover.web.client import ApiClient, ApiClientError, read_token

    try:
        client = ApiClient(args.remote, read_token(args.token_file), cacert=args.cacert)
        status = client.status()
    except ApiClientError as e:
        if args.json:
            print(json.dumps({"url": args.remote, "error": e.message}, indent=2))
        print(f"vmha status: {e.message}", file=sys.stderr)
        return e.exit_code
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def cmd_move(args) -> int:
    cfg = _config(args)
    req = {"op": args.cmd, "force": args.force} if args.cmd != "mode" else {"op": "mode", "mode": args.mode}
    reply = _admin(cfg, req)
    if reply is None:
        print(f"vmha {args.cmd}: node manager of {cfg.node.name} is not running", file=sys.stderr)
        return EXIT_NOT_RUNNING
    print(reply.get("message") or reply.get("error"))
    return 0 if reply.get("ok") else 1


def _db_request(args) -> dict:
    def parse_json(text: str, what: str):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise SystemExit(f"vmha db: {what} is not JSON: {e}") from None

    a = args.db_cmd
    if a == "put":
        return {"op": "db_write", "ops": [{"op": "put", "table": args.table,
                                           "row": parse_json(args.row, "the row")}]}
    if a == "delete":
        return {"op": "db_write", "ops": [{"op": "delete", "table": args.table, "key": args.key}]}
    if a == "apply":
        try:
            text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
        except OSError as e:
            raise SystemExit(f"vmha db apply: {e}") from None
        return {"op": "db_write", "ops": parse_json(text, args.file)}
    if a == "get":
        return {"op": "db_get", "table": args.table, "key": args.key}
    if a == "list":
        return {"op": "db_list", "table": args.table}
    return {"op": "db_conflicts", "limit": args.limit}


def cmd_db(args) -> int:
    cfg = _config(args)
    if args.db_cmd == "pin":
        return cmd_db_pin(args, cfg)
    reply = _admin(cfg, _db_request(args))
    if reply is None:
        print(f"vmha db: node manager of {cfg.node.name} is not running", file=sys.stderr)
        return EXIT_NOT_RUNNING
    if not reply.get("ok"):
        print(f"vmha db: {reply.get('error')}", file=sys.stderr)
        return 1
    out = {k: v for k, v in reply.items() if k != "ok"}
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


def cmd_db_pin(args, cfg) -> int:
    """``vmha db pin``: mailbox PINs (failover/pincli.py)."""
    from failover.pincli import PinCommandError, run

    try:
        print(run(args, lambda request: _admin(cfg, request)))
    except PinCommandError as e:
        print(f"vmha db pin: {e}", file=sys.stderr)
        return EXIT_NOT_RUNNING if "not running" in str(e) else 1
    return 0


def cmd_report(args) -> int:
    """The guide's reports, generated only on the primary while it is active."""
    from failover.eventlog import read_events
    from telephony.core.reports import (
        ReportGate,
        failover_history_csv,
        failover_history_report,
        message_counts_csv,
        message_counts_report,
    )

    cfg = _config(args)
    reply = _admin(cfg, {"op": "status"})
    if reply is None:
        print(f"vmha report: node manager of {cfg.node.name} is not running", file=sys.stderr)
        return EXIT_NOT_RUNNING
    n = reply["status"]["node"]
    ok, why = ReportGate().may_generate(n["role"], n["state"])
    if not ok:
        print(f"vmha report: {why}", file=sys.stderr)
        return 1
    if args.kind == "failovers":
        path = cfg.node.data_dir / "events.jsonl"
        rows = failover_history_report(read_events(path)) if path.exists() else []
        print(failover_history_csv(rows) if args.csv else json.dumps(rows, indent=2), end="\n")
        return 0
    import trio

    from telephony.messaging import build_store
    from telephony.store import StoreUnavailable

    subs = _admin(cfg, {"op": "db_list", "table": "subscribers"})
    if not subs or not subs.get("ok"):
        print(f"vmha report: cannot read the subscribers: {(subs or {}).get('error')}", file=sys.stderr)
        return 1

    async def counts():
        store = build_store(cfg)
        try:
            return await store.all_counts()
        finally:
            await store.aclose()

    try:
        report = message_counts_report(trio.run(counts), subs["rows"])
    except StoreUnavailable as e:
        print(f"vmha report: the message store is unavailable: {e}", file=sys.stderr)
        return 1
    print(message_counts_csv(report) if args.csv else json.dumps(report, indent=2), end="\n")
    return 0


def cmd_events(args) -> int:
    from failover.eventlog import format_record, read_events

    cfg = _config(args)
    path = cfg.node.data_dir / "events.jsonl"
    if not path.exists():
        print(f"vmha events: no event log at {path} yet", file=sys.stderr)
        return 1
    try:
        for rec in read_events(path, follow=args.follow):
            print(json.dumps(rec) if args.json else format_record(rec), flush=True)
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_configure(args, rest: list[str]) -> int:
    from failover.configure import configure_main

    return configure_main(rest)


def plugin_commands(sub) -> dict:
    """Subcommands that other packages of the installation add (entry-point group
    ``vmha.commands``: a callable that adds its parser to ``sub`` and returns its handler).
    The lab package adds ``vmha demo`` this way, so the node manager never imports the lab.
    They are loaded only when the command line does not name a built-in command
    (:data:`BUILTIN`): ``vmha node`` never imports a plugin."""
    handlers = {}
    for ep in sorted(entry_points(group="vmha.commands"), key=lambda e: e.name):
        handlers[ep.name] = ep.load()(sub)
    return handlers


#: the node manager's own commands (``configure`` has its own parser)
BUILTIN = ("node", "status", "failover", "failback", "mode", "db", "report", "events", "configure")


def build_parser(*, plugins: bool = True) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vmha", description="voice-messaging high availability pair")
    sub = ap.add_subparsers(dest="cmd", required=True)
    conf = argparse.ArgumentParser(add_help=False)
    conf.add_argument("-c", "--config", help="the node's TOML file (default: $VMHA_CONFIG)")
    sub.add_parser("node", parents=[conf], help="run the node manager and its messaging service")
    p = sub.add_parser("status", parents=[conf], help="the Failover Monitor view of both nodes")
    p.add_argument("--json", action="store_true")
    p.add_argument("--remote", metavar="URL", help="ask a node's HTTP API at URL (e.g. "
                   "https://vm1.example:8443) instead of the local admin socket; needs no --config")
    p.add_argument("--token-file", metavar="FILE", help="with --remote: the bearer token (role read "
                   "or admin) is the first line of FILE (default: $VMHA_TOKEN)")
    p.add_argument("--cacert", metavar="FILE", help="with --remote: verify the node's TLS "
                   "certificate with this CA file (default: the system's trust store)")
    for name, what in (("failover", "make the secondary active"), ("failback", "make the primary active")):
        p = sub.add_parser(name, parents=[conf], help=what)
        p.add_argument("--force", action="store_true", help="even if the peer cannot be reached")
    p = sub.add_parser("mode", parents=[conf], help="switch the node manager to manual or automatic")
    p.add_argument("mode", choices=("manual", "automatic"))
    p = sub.add_parser("db", parents=[conf], help="the replicated configuration database "
                       "(writes only on the active node)")
    dbs = p.add_subparsers(dest="db_cmd", required=True)
    q = dbs.add_parser("put", parents=[conf], help="insert or update a row: TABLE JSON-OBJECT")
    q.add_argument("table")
    q.add_argument("row")
    q = dbs.add_parser("delete", parents=[conf], help="delete a row by its key")
    q.add_argument("table")
    q.add_argument("key")
    q = dbs.add_parser("apply", parents=[conf], help="apply a JSON list of operations in one "
                       'transaction ([{"op": "put"|"delete", "table": ..., "row"|"key": ...}])')
    q.add_argument("file", help="file name, - for standard input")
    q = dbs.add_parser("get", parents=[conf], help="show one row")
    q.add_argument("table")
    q.add_argument("key")
    q = dbs.add_parser("list", parents=[conf], help="list a table")
    q.add_argument("table")
    q = dbs.add_parser("conflicts", parents=[conf], help="changes that lost a conflict (primary wins)")
    q.add_argument("--limit", type=int, default=100)
    add_pin_parser(dbs, conf)
    p = sub.add_parser("report", parents=[conf], help="reports (only on the primary while it "
                       "is active): messages per subscriber, failover history")
    p.add_argument("kind", choices=("messages", "failovers"))
    p.add_argument("--csv", action="store_true", help="CSV instead of JSON")
    p = sub.add_parser("events", parents=[conf], help="show the event log")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--json", action="store_true")
    sub.add_parser("configure", add_help=False, help="pairing wizard: write both nodes' TOML and the key "
                   "(see vmha configure --help)")
    ap.plugin_handlers = plugin_commands(sub) if plugins else {}
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["configure"]:
        return cmd_configure(None, argv[1:])
    ap = build_parser(plugins=argv[:1] == [] or argv[0] not in BUILTIN)
    args = ap.parse_args(argv)
    handlers = {"node": cmd_node, "status": cmd_status, "failover": cmd_move, "failback": cmd_move,
                "mode": cmd_move, "events": cmd_events, "db": cmd_db, "report": cmd_report,
                **ap.plugin_handlers}
    return handlers[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
