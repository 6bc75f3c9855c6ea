"""The operators file: who may use the admin HTTP API, with which role.

A TOML file (``http.operators_file``, default ``<data_dir>/operators.toml``), mode 0600::

    [operators.alice]
    role = "admin"                                   # or "read"
    token_sha256 = "<64 lowercase hex digits>"       # SHA-256 of the bearer token
    created = "2026-12-07T21:00:00Z"

Only the SHA-256 of a token is stored: the token itself is printed once when it is made
(``vmha configure --add-operator``) and never written anywhere by vmha.  A token is
``"vmha_" + secrets.token_urlsafe(32)`` (256 random bits), so a plain hash is enough: there is
nothing to guess that a slow hash would protect.

``parse_operators`` is the bounded parser (at most ``MAX_FILE`` bytes and ``MAX_OPERATORS``
operators); ``load_operators`` also refuses a file that group or others may read (the same
rule as the link's key file: a hash of a bearer token is not the token, but nobody but the
node's user has any business with it); ``add_operator`` and ``remove_operator`` rewrite the
file atomically (temporary file with mode 0600, fsync, rename, fsync of the directory) under
an exclusive lock on the directory, so two writers never lose each other's change.
"""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import tomli_w

from telephony.core.settings import ConfigError
from telephony.runtime.files import SecretFileError, read_private_file

__all__ = ["MAX_FILE", "MAX_OPERATORS", "NAME_RULE", "ROLES", "OperatorEntry", "add_operator",
           "check_name", "check_token", "load_operators", "lookup", "new_token", "parse_operators",
           "remove_operator", "token_hash"]

ROLES = ("read", "admin")
MAX_FILE = 1 << 20  # 1 MiB: far beyond any real list of operators
MAX_OPERATORS = 1000
MAX_TOKEN = 512  # characters of a token presented (longer is refused before hashing)
MIN_TOKEN = 16
_SETTING = "http.operators_file"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
NAME_RULE = "1 to 64 characters: letters, digits and _ . @ -, starting with a letter or digit"
_HASH = re.compile(r"[0-9a-f]{64}")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no blank
_KEYS = {"role", "token_sha256", "created"}


@dataclass(frozen=True)
class OperatorEntry:
    name: str
    role: str  # "read" | "admin"
    token_sha256: str
    created: str = ""


def new_token() -> str:
    """A fresh bearer token: ``vmha_`` and 43 URL-safe characters (32 random bytes)."""
    return "vmha_" + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_name(name: str) -> str:
    """``name`` if it is a valid operator name; ``ValueError`` saying the rule otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"operator name {str(name)[:70]!r} is not valid: {NAME_RULE}")
    return name


def check_token(token: str) -> str:
    """``token`` if it may be used as a bearer token (printable ASCII without blanks,
    ``MIN_TOKEN`` to ``MAX_TOKEN`` characters); ``ValueError`` otherwise (never quoting it)."""
    if not isinstance(token, str) or not MIN_TOKEN <= len(token) <= MAX_TOKEN or not _TOKEN.fullmatch(token):
        raise ValueError(f"a token must be {MIN_TOKEN} to {MAX_TOKEN} printable ASCII characters "
                         "without blanks (vmha configure --add-operator makes one)")
    return token


def parse_operators(data: bytes, where: str = "<operators file>") -> dict[str, OperatorEntry]:
    """Parse the file's bytes.  Raises ``ConfigError`` naming ``where`` and the problem (never
    quoting a hash)."""
    if not isinstance(data, bytes):
        raise ConfigError(where, "the operators file must be read as bytes", _SETTING)
    if len(data) > MAX_FILE:
        raise ConfigError(where, f"the operators file is longer than {MAX_FILE} bytes", _SETTING)
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(where, "the operators file is not UTF-8 text", _SETTING) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(where, f"the operators file is not valid TOML: {e}", _SETTING) from None
    extra = sorted(set(doc) - {"operators"})
    if extra:
        raise ConfigError(where, f"unknown table or key {extra[0][:40]!r} (only [operators.NAME] "
                          "tables belong here)", _SETTING)
    table = doc.get("operators", {})
    if not isinstance(table, dict):
        raise ConfigError(where, "'operators' must be a table of [operators.NAME] tables", _SETTING)
    if len(table) > MAX_OPERATORS:
        raise ConfigError(where, f"more than {MAX_OPERATORS} operators", _SETTING)
    out: dict[str, OperatorEntry] = {}
    seen: dict[str, str] = {}
    for name, entry in table.items():
        try:
            check_name(name)
        except ValueError as e:
            raise ConfigError(where, str(e), _SETTING) from None
        what = f"operator {name!r}"
        if not isinstance(entry, dict):
            raise ConfigError(where, f"{what} must be a table ([operators.{name}])", _SETTING)
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise ConfigError(where, f"{what}: unknown key {unknown[0][:40]!r} (keys: role, "
                              "token_sha256, created)", _SETTING)
        role, digest, created = entry.get("role"), entry.get("token_sha256"), entry.get("created", "")
        if role not in ROLES:
            raise ConfigError(where, f"{what}: role must be \"read\" or \"admin\"", _SETTING)
        if not isinstance(digest, str) or not _HASH.fullmatch(digest):
            raise ConfigError(where, f"{what}: token_sha256 must be 64 lowercase hex digits", _SETTING)
        if isinstance(created, datetime):
            created = created.isoformat()
        if not isinstance(created, str) or len(created) > 64:
            raise ConfigError(where, f"{what}: created must be a time such as "
                              "\"2026-12-07T21:00:00Z\"", _SETTING)
        if digest in seen:
            raise ConfigError(where, f"{what} has the same token as operator {seen[digest]!r}", _SETTING)
        seen[digest] = name
        out[name] = OperatorEntry(name, role, digest, created)
    return out


def format_operators(entries: dict[str, OperatorEntry]) -> bytes:
    doc = {"operators": {e.name: {"role": e.role, "token_sha256": e.token_sha256,
                                  **({"created": e.created} if e.created else {})}
                         for e in sorted(entries.values(), key=lambda e: e.name)}}
    head = ("# vmha operators (written by `vmha configure --add-operator`; mode 0600).\n"
            "# Only SHA-256 hashes of the bearer tokens are kept here.\n")
    return (head + tomli_w.dumps(doc)).encode()


def load_operators(path: str | os.PathLike) -> dict[str, OperatorEntry]:
    """Read the operators file.  A missing file is no operators (``{}``).  Raises
    ``ConfigError`` (naming the file) if it cannot be read, is not a regular file, gives group
    or others any access, or does not parse."""
    p = str(path)
    try:
        data = read_private_file(p, MAX_FILE + 1)  # the parser says when it is too long
    except SecretFileError as e:
        if e.missing:
            return {}
        raise ConfigError(p, f"operators file: {str(e).removeprefix(p + ': ')}", _SETTING) from None
    return parse_operators(data, p)


def lookup(entries: dict[str, OperatorEntry], token: str) -> OperatorEntry | None:
    """The operator whose token this is, or None.  The token's hash is compared with every
    entry's in constant time (no early exit on the first match either)."""
    try:
        check_token(token)
    except ValueError:
        return None
    digest = token_hash(token).encode()
    found = None
    for e in entries.values():
        if hmac.compare_digest(digest, e.token_sha256.encode()):
            found = e
    return found


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rewrite(path: Path, change) -> object:
    """Lock the directory, load the file, ``change(entries)`` (may raise), write it back
    atomically.  Returns what ``change`` returned."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
        entries = load_operators(path)
        result = change(entries)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o600)
            data = format_operators(entries)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            Path(tmp).unlink(missing_ok=True)
            raise
        os.fsync(dfd)
        return result
    except OSError as e:
        raise ConfigError(path, f"cannot write the operators file: {e.strerror or e}", _SETTING) from None
    finally:
        os.close(dfd)  # releases the lock


def add_operator(path: str | os.PathLike, name: str, role: str, token: str | None = None, *,
                 replace: bool = False) -> str:
    """Add operator ``name`` with ``role`` and ``token`` (a new one when None) to the file
    (created if missing); returns the token.  An existing ``name`` is refused unless
    ``replace``; a token another operator already has is refused.  Raises ``ConfigError``
    (nothing written) or ``ValueError`` for a bad name, role or token."""
    check_name(name)
    if role not in ROLES:
        raise ValueError(f"role must be 'read' or 'admin', not {str(role)[:20]!r}")
    token = new_token() if token is None else check_token(token)
    digest = token_hash(token)
    p = Path(path)

    def change(entries: dict[str, OperatorEntry]) -> None:
        if name in entries and not replace:
            raise ConfigError(p, f"operator {name!r} exists already (use --force to give it a new "
                              "token and role)", _SETTING)
        clash = [e.name for e in entries.values() if e.token_sha256 == digest and e.name != name]
        if clash:
            raise ConfigError(p, f"operator {clash[0]!r} has this token already", _SETTING)
        entries[name] = OperatorEntry(name, role, digest, _now_iso())

    _rewrite(p, change)
    return token


def remove_operator(path: str | os.PathLike, name: str) -> None:
    """Remove operator ``name``; ``ConfigError`` if the file has no such operator."""
    p = Path(path)

    def change(entries: dict[str, OperatorEntry]) -> None:
        if name not in entries:
            raise ConfigError(p, f"no operator {str(name)[:70]!r} in the operators file", _SETTING)
        del entries[name]

    _rewrite(p, change)
