"""A systemd unit for one node (``vmha configure --systemd DIR --config NODE.toml``).

The unit runs the node manager as ``Type=notify`` with a watchdog (failover/sdnotify.py), as
an unprivileged user, in a sandbox cut to what the node's file says it uses: its data
directories writable, its serial or DAHDI devices reachable, capabilities only for ports below
1024, real-time scheduling only with ``failover.realtime_priority``.  docs/systemd.md explains
every line; the times are derived here from the node's settings (:func:`unit_times`)."""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from failover.config import ConfigError, NodeConfig, listen_binds, load_config
from telephony.runtime.files import fsync_dir

UNIT_MODE = 0o644
DEFAULT_USER = "vmha"
#: systemd's ProtectHome= hides these; a node file, program or directory under one needs them
HOME_DIRS = (Path("/home"), Path("/root"), Path("/run/user"))
TMP_DIRS = (Path("/tmp"), Path("/var/tmp"))  # PrivateTmp= replaces these
#: directories systemd creates for the unit, owned by its user: StateDirectory= under
#: /var/lib, RuntimeDirectory= under /run (a tmpfs: created again at each start)
MANAGED_ROOTS = {"StateDirectory": Path("/var/lib"), "RuntimeDirectory": Path("/run")}
#: the service child's shutdown (failover/service_proc.py): 5 s for it to exit, 2 s after a kill
SERVICE_SHUTDOWN_S = 7.0
_UNSAFE = set(" \t\n\r\"'\\;") | {chr(c) for c in range(32)} | {chr(127)}


@dataclass(frozen=True)
class UnitTimes:
    """The unit's times in whole seconds (docs/systemd.md, "Times")."""

    watchdog: int  # WatchdogSec: max(5, 10 x ping_interval)
    start: int  # TimeoutStartSec: max(90, start_timeout + startup_wait + 30)
    stop: int  # TimeoutStopSec: handover_wait + drain_timeout + the service's shutdown + 30
    restart: int  # RestartSec


def unit_times(cfg: NodeConfig) -> UnitTimes:
    """The unit's times from the node's settings.

    * ``WatchdogSec``: the supervisor loop turns at least once per ``ping_interval`` (the
      heartbeat is one of its deadlines) and is pinged every half watchdog interval, so ten
      ping intervals leave five turns per ping; at least 5 s so a short stall of the whole
      machine (a swap storm, a VM pause) is not a restart.
    * ``TimeoutStartSec``: READY=1 comes once the listeners are up, well before the service
      child has started (``service.start_timeout``) and the start-up wait has ended
      (``failover.startup_wait``); the limit covers both anyway, and never less than systemd's
      default 90 s (a slow first import on a loaded machine).
    * ``TimeoutStopSec``: SIGTERM on the active node hands over (waiting up to
      ``replication.handover_wait`` for replication), lets calls in progress drain (up to
      ``failover.drain_timeout``, 300 s by default) and then stops the service child; killing
      it earlier would hang up callers.
    """
    f = cfg.failover
    handover = cfg.replication.handover_wait if cfg.replication.enabled else 0.0
    return UnitTimes(
        watchdog=max(5, math.ceil(10 * f.ping_interval)),
        start=max(90, math.ceil(cfg.service.start_timeout + cfg.startup_wait_s + 30)),
        stop=math.ceil(handover + f.handover_timeout + f.drain_timeout + SERVICE_SHUTDOWN_S + 30),
        restart=5,
    )


def _under(path: Path, roots) -> bool:
    return any(path == r or r in path.parents for r in roots)


def _word(path: str | Path, what: str) -> str:
    """A path as one word of a unit file (``%`` escaped); ConfigError for characters a unit's
    path lists cannot carry unquoted (white space, quotes, backslash, control characters)."""
    text = str(path)
    bad = sorted(set(text) & _UNSAFE)
    if bad:
        raise ConfigError(text, f"{what}: a path with {''.join(bad)!r} cannot be written into a "
                          "systemd unit; move it")
    return text.replace("%", "%%")


def _exec_word(text: str, what: str) -> str:
    return _word(text, what).replace("$", "$$")


def _writable(cfg: NodeConfig) -> list[Path]:
    """Directories the node and its service write: data_dir, the replicated files, the
    database's directory (SQLite writes its journal next to it), a Maildir store, the admin
    socket's directory; those inside another one are left out."""
    dirs = [cfg.node.data_dir, cfg.replication.files_root, cfg.database.path.parent,
            cfg.admin.socket.parent]
    if cfg.store.kind == "maildir":
        dirs.append(cfg.store.maildir)
    out: list[Path] = []
    for d in sorted({Path(os.path.abspath(d)) for d in dirs}, key=lambda p: (len(p.parts), str(p))):
        if not any(d == o or o in d.parents for o in out):
            out.append(d)
    return out


def _managed(d: Path) -> tuple[str, Path] | None:
    """(setting, relative path) when systemd can create ``d`` itself (see MANAGED_ROOTS)."""
    for setting, root in MANAGED_ROOTS.items():
        if _under(d, [root]) and d != root:
            return setting, d.relative_to(root)
    return None


def _devices(cfg: NodeConfig) -> tuple[list[str], list[str]]:
    """(DeviceAllow= values, notes) for the serial SMDI link and a DAHDI board."""
    allow, notes = [], []
    smdi = cfg.ports.smdi
    if smdi.enabled and smdi.device and "://" not in smdi.device:
        dev = Path(smdi.device)
        if not _under(dev, [Path("/dev")]) and dev.exists():
            dev = dev.resolve()  # a link (a lab's pty) to the device itself
        if _under(dev, [Path("/dev")]):
            allow.append(f"{_word(dev, 'ports.smdi.device')} rw")
        else:
            notes.append(f"the SMDI device {smdi.device} is not under /dev: allow it by hand "
                         "(DeviceAllow=)")
    analog = cfg.ports.analog
    if analog.enabled and analog.backend == "dahdi":
        allow.append("char-dahdi rw")  # /dev/dahdi/channel and its siblings
    return allow, notes


def _read_paths(cfg: NodeConfig, config_path: Path, python: str) -> list[Path]:
    """Files the node reads: they must be visible inside the sandbox."""
    paths = [config_path, cfg.node.key_file, Path(python), Path(os.path.realpath(python))]
    http = cfg.http
    paths += [p for p in (http.tls_cert, http.tls_key, http.operators_file) if p is not None]
    if cfg.ports.sip.enabled and cfg.ports.sip.password_file:
        paths.append(Path(cfg.ports.sip.password_file))
    if cfg.store.imap_passwords is not None:
        paths.append(cfg.store.imap_passwords)
    if cfg.ports.analog.enabled and cfg.ports.analog.socket:
        paths.append(Path(cfg.ports.analog.socket))
    if cfg.ports.smdi.enabled and cfg.ports.smdi.device and "://" not in cfg.ports.smdi.device:
        paths.append(Path(cfg.ports.smdi.device))
    if cfg.service.command:
        paths.append(Path(cfg.service.command[0]))
    return [Path(os.path.abspath(p)) for p in paths]


def unit_text(cfg: NodeConfig, config_path: Path, *, python: str = sys.executable,
              user: str = DEFAULT_USER) -> str:
    """The unit file for the node of ``cfg`` (read from ``config_path``), run by ``python``
    (the venv's interpreter, not resolved: its ``pyvenv.cfg`` makes the venv) as ``user``.
    ConfigError when a path cannot be written into a unit."""
    config_path = Path(os.path.abspath(config_path))
    name, role = cfg.node.name, cfg.node.role.label
    times = unit_times(cfg)
    writable = _writable(cfg)
    everything = writable + _read_paths(cfg, config_path, python)
    home = any(_under(p, HOME_DIRS) for p in everything)
    tmp = any(_under(p, TMP_DIRS) for p in everything)
    devices, device_notes = _devices(cfg)
    data_dir = Path(os.path.abspath(cfg.node.data_dir))
    low_ports = sorted({b.setting for b in listen_binds(cfg) if b.proto != "unix" and 0 < b.lo < 1024})
    rt = cfg.failover.realtime_priority

    exec_start = " ".join(_exec_word(w, "ExecStart") for w in
                          (python, "-m", "failover.cli", "node", "--config", str(config_path)))
    lines = [
        "# Generated by `vmha configure --systemd` from " + _word(config_path, "--config") + ".",
        "# Regenerate it after changing the node's file; docs/systemd.md explains every setting.",
        "[Unit]",
        f"Description=vmha voice-mail failover node {name} ({role})",
        "After=network-online.target",
        "Wants=network-online.target",
        "# a node never gives up (docs/design.md): no start rate limit",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_start}",
        "# SIGHUP: read the link's key file again (a rotation); nothing else is reloaded",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "# SIGTERM to the node manager only: it hands over, drains calls, then stops its service",
        "KillMode=mixed",
        f"WatchdogSec={times.watchdog}s",
        f"TimeoutStartSec={times.start}s",
        f"TimeoutStopSec={times.stop}s",
        "TimeoutAbortSec=30s",
        "Restart=on-failure",
        f"RestartSec={times.restart}s",
        "# exit 2: the node's file is wrong; restarting does not fix it",
        "RestartPreventExitStatus=2",
        f"User={_word(user, '--user')}",
        f"Group={_word(user, '--user')}",
        f"WorkingDirectory={_word(data_dir, 'node.data_dir')}",
        "UMask=0077",
        f"SyslogIdentifier=vmha-{name}",
        "StandardOutput=journal",
        "StandardError=journal",
        "",
        "# real-time scheduling (failover.realtime_priority): the rlimit, not CAP_SYS_NICE",
    ]
    if rt > 0:
        lines += ["RestrictRealtime=no", f"LimitRTPRIO={rt}"]
    else:
        lines += ["RestrictRealtime=yes", "LimitRTPRIO=0"]
    lines += ["", "# capabilities: none, except to bind a port below 1024"]
    if low_ports:
        lines += ["# " + ", ".join(low_ports) + " below 1024",
                  "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
                  "AmbientCapabilities=CAP_NET_BIND_SERVICE"]
    else:
        lines += ["CapabilityBoundingSet="]
    lines += ["NoNewPrivileges=yes", "", "# file system"]
    lines += ["ProtectSystem=strict"]
    managed: dict[str, list[str]] = {}
    rw = []
    for d in writable:
        m = _managed(d)
        if m is None:
            rw.append(d)
        else:
            managed.setdefault(m[0], []).append(_word(m[1], "a data directory"))
    for setting, dirs in managed.items():
        lines += [f"{setting}={' '.join(dirs)}", f"{setting}Mode=0700"]
        if setting == "RuntimeDirectory":  # another unit (the peer on a lab host) may share it
            lines += ["RuntimeDirectoryPreserve=yes"]
    if rw:
        lines += ["ReadWritePaths=" + " ".join(_word(d, "a data directory") for d in rw)]
    if home:
        lines += ["# a file or the program is under /home or /root: visible, read-only",
                  "ProtectHome=read-only"]
    else:
        lines += ["ProtectHome=yes"]
    if tmp:
        lines += ["# a file of the node is under /tmp or /var/tmp: no private /tmp", "PrivateTmp=no"]
    else:
        lines += ["PrivateTmp=yes"]
    lines += ["", "# devices"]
    if devices:
        lines += ["# the SMDI serial line / DAHDI board: that device and the standard ones only",
                  "PrivateDevices=no", "DevicePolicy=closed"]
        lines += [f"DeviceAllow={d}" for d in devices]
        lines += ["SupplementaryGroups=dialout"]
    else:
        lines += ["PrivateDevices=yes"]
    lines += [f"# {n}" for n in device_notes]
    lines += [
        "",
        "# kernel, network, system calls",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "LockPersonality=yes",
        "RestrictNamespaces=yes",
        "RestrictSUIDSGID=yes",
        "RemoveIPC=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
        "# no MemoryDenyWriteExecute=: ctypes callbacks (libffi) and native wheels may need",
        "# writable+executable memory; refused, they fail at run time, not at start",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def unit_name(cfg: NodeConfig) -> str:
    return f"vmha-{cfg.node.name}.service"


def install_steps(cfg: NodeConfig, unit: Path, *, user: str = DEFAULT_USER) -> list[str]:
    """What an operator runs (as root) to install and start the unit."""
    name = unit_name(cfg)
    data_dir = Path(os.path.abspath(cfg.node.data_dir))
    steps = [f"getent passwd {user} >/dev/null || useradd --system --user-group --no-create-home "
             f"--home-dir {data_dir} --shell /usr/sbin/nologin {user}"]
    steps += [f"install -d -m 0700 {d} && chown -R {user}:{user} {d}" for d in _writable(cfg)
              if _managed(d) is None]  # systemd creates the others
    steps += [f"chown {user}:{user} {cfg.node.key_file}   # the link key: mode 0600, the node's user",
              f"cp {unit} /etc/systemd/system/{name}",
              "systemctl daemon-reload",
              f"systemctl enable --now {name}",
              f"journalctl -u {name} -f   # the node's event log lines, with priorities"]
    return steps


def install_notes(cfg: NodeConfig, *, user: str = DEFAULT_USER, python: str = sys.executable) -> list[str]:
    """Warnings about this installation (a program the user may not be able to run)."""
    real = os.path.realpath(python)
    if _under(Path(real), HOME_DIRS):
        return [f"{python} runs {real}, in a home directory the user {user} may not be able to "
                "read: better install vmha in a venv under /opt"]
    return []


def configure_systemd(config_path: str, out_dir: str, *, force: bool = False,
                      user: str = DEFAULT_USER, python: str = sys.executable) -> int:
    """``vmha configure --systemd DIR --config NODE.toml [--force]``: write
    ``DIR/vmha-<node>.service`` (0644) and print how to install it.  Exit 0 when written,
    2 on a configuration error or an existing file without ``force`` (nothing written)."""
    try:
        cfg = load_config(config_path)
        text = unit_text(cfg, Path(config_path), python=python, user=user)
        out = Path(out_dir)
        path = out / unit_name(cfg)
        if os.path.lexists(path) and not force:
            raise ConfigError(path, "refusing to overwrite it (use --force)")
        try:
            out.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, UNIT_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, UNIT_MODE)  # whatever the umask said
            os.replace(tmp, path)
            fsync_dir(out)
        except OSError as e:
            raise ConfigError(getattr(e, "filename", None) or out,
                              f"cannot write: {e.strerror or e}") from None
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"wrote {path} (mode 0644) for node {cfg.node.name} ({cfg.node.role.label})")
    for note in install_notes(cfg, user=user, python=python):
        print(f"note: {note}")
    print("install it (as root):")
    for step in install_steps(cfg, path, user=user):
        print(f"  {step}")
    return 0


__all__ = ["UnitTimes", "configure_systemd", "install_notes", "install_steps", "unit_name", "unit_text",
           "unit_times"]
