"""``vmha db pin``: the operator's side of mailbox PINs (docs/messaging-service.md, "Mailbox
access and PINs").

::

    vmha db pin set EXTENSION [--stdin]     # a new PIN (asked twice, or one line on stdin)
    vmha db pin clear EXTENSION             # no PIN: access refused unless the opt-in is on
    vmha db pin skip EXTENSION on|off       # skip_pin_from_own_phone
    vmha db pin unlock EXTENSION            # forget the wrong-PIN count and the lockout
    vmha db pin show EXTENSION              # PIN set?, its parameters, opt-in, lockout

The command hashes the PIN itself (scrypt, a fresh random salt) and sends the node manager
only the hash record, through the admin socket, as one ``db_write`` transaction: like every
configuration write it works on the active node only and replicates to the peer.  A new PIN
also clears the lockout.  Nothing prints or logs a PIN, its hash or its salt.
"""
from __future__ import annotations

import getpass
import json
import sys
import time
from collections.abc import Callable

from telephony.configdb.pins import new_record, set_pin_ops, unlock_ops
from telephony.core.pin import LockState, PinError, check_pin, public_view, remaining

Admin = Callable[[dict], "dict | None"]


class PinCommandError(Exception):
    """What the command says on standard error before it exits 1."""


def add_parser(dbs, conf) -> None:
    """``vmha db pin ...`` under the ``db`` subcommands ``dbs``."""
    p = dbs.add_parser("pin", parents=[conf], help="mailbox PINs: set, clear, skip, unlock, show")
    ps = p.add_subparsers(dest="pin_cmd", required=True)
    q = ps.add_parser("set", parents=[conf], help="give a subscriber a new PIN (4 to 12 digits; "
                      "asked twice) and clear its lockout")
    q.add_argument("extension")
    q.add_argument("--stdin", action="store_true", help="read the PIN as one line of standard "
                   "input instead of asking")
    for name, what in (("clear", "remove the PIN (access is refused unless the subscriber has "
                                 "skip_pin_from_own_phone)"),
                       ("unlock", "forget the wrong-PIN count and lift a lockout"),
                       ("show", "whether a PIN is set, the opt-in and the lockout (never the "
                                "PIN or its hash)")):
        q = ps.add_parser(name, parents=[conf], help=what)
        q.add_argument("extension")
    q = ps.add_parser("skip", parents=[conf], help="skip_pin_from_own_phone: calls from the "
                      "subscriber's own extension open the mailbox without a PIN")
    q.add_argument("extension")
    q.add_argument("value", choices=("on", "off"))


def _ok(reply: dict | None, what: str) -> dict:
    if reply is None:
        raise PinCommandError("the node manager is not running")
    if not reply.get("ok"):
        raise PinCommandError(f"{what}: {reply.get('error')}")
    return reply


def _row(admin: Admin, table: str, key: str) -> dict | None:
    return _ok(admin({"op": "db_get", "table": table, "key": key}), f"reading {table}")["row"]


def read_pin(stdin: bool) -> str:
    """The new PIN: one line of standard input, or asked twice without echo."""
    if stdin:
        pin = sys.stdin.readline().strip()
    else:
        pin = getpass.getpass("new PIN: ")
        if getpass.getpass("the same PIN again: ") != pin:
            raise PinCommandError("the two PINs differ; nothing changed")
    try:
        return check_pin(pin)
    except PinError as e:
        raise PinCommandError(f"{e}; nothing changed") from None


def run(args, admin: Admin) -> str:
    """Carry out ``vmha db pin``; returns what to print (raises :class:`PinCommandError`)."""
    ext = args.extension
    if _row(admin, "subscribers", ext) is None:
        raise PinCommandError(f"no subscriber has extension {ext!r}; nothing changed")
    entry = _row(admin, "pins", ext)
    lock = _row(admin, "pin_lockouts", ext)
    record = entry["pin"] if entry else None
    skip = bool(entry["skip_pin_from_own_phone"]) if entry else False
    cmd = args.pin_cmd
    if cmd == "show":
        state = LockState.from_dict(lock["state"] if lock else None)
        left = remaining(state, time.time())
        return json.dumps({"extension": ext, "pin_set": record is not None,
                           "hash": public_view(record), "skip_pin_from_own_phone": skip,
                           "failures": state.failures, "lockouts": state.lockouts,
                           "locked_for_s": round(left), "locked_until":
                           time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.locked_until))
                           if left > 0 else None}, indent=2)
    if cmd == "set":
        record = new_record(read_pin(args.stdin))
        ops = set_pin_ops(ext, record, skip=skip, locked=lock is not None)
        said = (f"PIN of extension {ext} set (scrypt n={record['n']} r={record['r']} "
                f"p={record['p']})" + ("; its lockout is cleared" if lock else ""))
    elif cmd == "clear":
        ops = set_pin_ops(ext, None, skip=skip, locked=lock is not None)
        said = (f"PIN of extension {ext} removed: " + ("calls from the extension itself open the "
                "mailbox (skip_pin_from_own_phone), every other access is refused" if skip
                else "mailbox access is refused until a PIN is set"))
    elif cmd == "skip":
        ops = set_pin_ops(ext, record, skip=args.value == "on", locked=False)
        said = f"skip_pin_from_own_phone of extension {ext}: {args.value}"
    else:  # unlock
        if lock is None:
            return f"extension {ext} has no wrong PINs recorded: nothing to unlock"
        ops = unlock_ops(ext, True)
        said = f"extension {ext} unlocked (wrong-PIN count and lockout cleared)"
    reply = _ok(admin({"op": "db_write", "ops": ops}), "writing")
    return f"{said} (log seq {reply.get('seq')}, term {reply.get('term')})"
