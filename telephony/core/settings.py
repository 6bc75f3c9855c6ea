"""The settings toolkit: how a section of the node's TOML file is declared, checked and
documented.  Pure: no I/O (the loaders that read files are ``telephony.settings`` and
``failover.config``).

A **section** is a table ``{key: Key}`` (``SECTION`` and ``KEYS`` in each settings module:
``telephony/sip/settings.py``, ``telephony/smdi/settings.py``, ``telephony/loopback/settings.py``,
``telephony/settings.py``, ``failover/config.py``).  A :class:`Key` holds

* ``check``: raw TOML value -> typed value, raising :class:`Bad` saying what was expected
  (the loader turns it into a :class:`Problem` naming the dotted key);
* ``default``: :data:`REQUIRED`, ``None`` (absent: derived later, or "none") or a raw TOML
  value, checked like a written one;
* ``shared``: the key must match on both nodes of a pair (``MUST_MATCH``, the shared-settings
  digest);
* docs hints: the check names its *type* and *allowed* values, so the rows of
  docs/configuration.md are checked against the schema (:func:`doc_cells`).

A check object may also validate an already-typed value (``typed(value)``): a settings
dataclass built in code (a test, a benchmark) is checked by the same definition as the file.
"""
from __future__ import annotations

import datetime as _dt
import ipaddress
import math
import posixpath
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, NamedTuple

__all__ = [
    "Address", "parse_address", "check_node_name", "Problem", "ConfigError", "Bad", "got",
    "Ctx", "NO_CTX", "Key", "REQUIRED", "Num", "Choice", "enum_choice", "Pattern", "Addr", "Flag",
    "boolean", "path", "clock", "node_name", "ip_host", "Strings", "check_values", "walk",
    "schema_tree", "default_of", "check_typed", "doc_cells", "must_match",
]


# ============================================================================ errors


@dataclass(frozen=True)
class Problem:
    key: str  # dotted key ("failover.ping_interval"), "" when the problem is the file itself
    message: str


class ConfigError(Exception):
    """A configuration problem.  ``str()`` gives one line per problem: ``FILE: KEY: message``."""

    def __init__(self, source: Any, problems: list[Problem] | str, key: str = ""):
        self.source = str(source)
        if isinstance(problems, str):
            problems = [Problem(key, problems)]
        self.problems = tuple(problems)
        super().__init__("\n".join(
            f"{self.source}: {p.key}: {p.message}" if p.key else f"{self.source}: {p.message}"
            for p in self.problems))

    @property
    def key(self) -> str:
        """The dotted key of the first problem ("" for a file-level problem)."""
        return self.problems[0].key if self.problems else ""


class Bad(Exception):
    """Raised by a check: the message says what was expected."""


def got(v: Any) -> str:
    """``got 20 (integer)``: the value a check refused, shortened, with its TOML type."""
    kind = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(v), type(v).__name__)
    text = repr(v)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"got {text} ({kind})"


# ============================================================================ addresses, names


@dataclass(frozen=True)
class Address:
    """A ``host:port`` pair; IPv6 hosts are written ``[v6]:port``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_wildcard(self) -> bool:
        return self.host in ("0.0.0.0", "::")

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
_ADDR = re.compile(r"\[(?P<v6>[^\]]+)\]:(?P<p6>\d{1,5})|(?P<host>[^:\[\]]+):(?P<port>\d{1,5})")


def parse_address(text: str, *, min_port: int = 1, wildcard: bool = True) -> Address:
    """Parse ``host:port`` or ``[v6]:port``; raises ``ValueError`` saying what is wrong."""
    m = _ADDR.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError('expected "host:port" (IPv6: "[addr]:port")')
    host = m["v6"] if m["v6"] is not None else m["host"]
    port = int(m["p6"] if m["v6"] is not None else m["port"])
    if m["v6"] is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
    elif len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is not a valid host name")
    if not min_port <= port <= 65535:
        raise ValueError(f"port must be {min_port}..65535")
    addr = Address(host, port)
    if not wildcard and addr.is_wildcard:
        raise ValueError(f"{host} is a wildcard address; give the peer's real address")
    return addr


_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")


def check_node_name(text: object) -> str:
    """A node name: 1..32 ASCII letters, digits, '_', '.', '-'.  Raises ``ValueError``."""
    if not isinstance(text, str) or not _NAME.fullmatch(text):
        raise ValueError("expected a node name: 1 to 32 characters from A-Z a-z 0-9 _ . -")
    return text


# ============================================================================ checks


@dataclass(frozen=True)
class Ctx:
    """What a check may need besides the value: ``base_dir``, the directory relative paths are
    taken from (a ``pathlib.Path`` the loader passes in; None: a path must be absolute)."""

    base_dir: Any = None


NO_CTX = Ctx()


class Num:
    """A number from ``lo`` to ``hi`` (an integer with ``integer=True``; never a boolean)."""

    def __init__(self, lo: float, hi: float, *, integer: bool = False, unit: str = "seconds",
                 kind: str | None = None):
        self.lo, self.hi, self.integer, self.unit = lo, hi, integer, unit
        self.kind = kind or ("integer" if integer else unit)

    @property
    def expected(self) -> str:
        what = "an integer" if self.integer else f"a number of {self.unit}"
        return f"{what} from {self.lo:g} to {self.hi:g}"

    @property
    def allowed(self) -> str:
        return f"{_num(self.lo)} – {_num(self.hi)}"

    def __call__(self, v: Any, ctx: Ctx) -> float | int:
        ok_type = int if self.integer else (int, float)
        if isinstance(v, bool) or not isinstance(v, ok_type):
            raise Bad(f"expected {self.expected}, {got(v)}")
        if not (math.isfinite(v) and self.lo <= v <= self.hi):
            raise Bad(f"expected {self.expected}, {got(v)}")
        return int(v) if self.integer else float(v)

    def typed(self, v: Any) -> None:
        self(v, NO_CTX)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


class Choice:
    """One of the strings in ``options`` (``{text: value}``)."""

    kind = "string"

    def __init__(self, options: dict[str, Any], *, kind: str = "string"):
        self.options = options
        self.kind = kind

    @property
    def allowed(self) -> str:
        return ", ".join(f'`"{o}"`' for o in self.options)

    def __call__(self, v: Any, ctx: Ctx) -> Any:
        if not isinstance(v, str) or v not in self.options:
            raise Bad("expected one of " + ", ".join(f'"{o}"' for o in self.options) + f", {got(v)}")
        return self.options[v]

    def typed(self, v: Any) -> None:
        if v not in self.options.values() or isinstance(v, bool):
            raise Bad("expected one of " + ", ".join(repr(o) for o in self.options.values())
                      + f", {got(v)}")


def enum_choice(e: type[Enum]) -> Choice:
    """A choice of an enum's members by their lower-case names."""
    return Choice({m.name.lower(): m for m in e})


class Strings:
    """An array of distinct strings, each one of ``options`` (a tuple of them, in order)."""

    kind = "array of strings"

    def __init__(self, options: tuple[str, ...], *, what: str = "names"):
        self.options, self.what = options, what

    @property
    def allowed(self) -> str:
        return ", ".join(f'`"{o}"`' for o in self.options) + ", each at most once"

    def __call__(self, v: Any, ctx: Ctx) -> tuple[str, ...]:
        known = ", ".join(f'"{o}"' for o in self.options)
        if not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
            raise Bad(f"expected an array of {self.what} ({known}), {got(v)}")
        for s in v:
            if s not in self.options:
                raise Bad(f"{s!r} is not one of {known}")
        if len(set(v)) != len(v):
            raise Bad(f"a name is listed twice, {got(v)}")
        return tuple(v)


class Pattern:
    """A string matching ``regex`` (``fullmatch``); ``expected`` is said when it does not."""

    def __init__(self, regex: str | re.Pattern, expected: str, *, kind: str, allowed: str = ""):
        self.regex, self.expected, self.kind, self.allowed = re.compile(regex), expected, kind, allowed

    def __call__(self, v: Any, ctx: Ctx) -> str:
        if not isinstance(v, str) or not self.regex.fullmatch(v):
            raise Bad(f"expected {self.expected}, {got(v)}")
        return v

    def typed(self, v: Any) -> None:
        self(v, NO_CTX)


class Addr:
    """``"host:port"`` (:func:`parse_address`); ``wildcard=False`` refuses 0.0.0.0 and ::."""

    kind = "address"

    def __init__(self, *, wildcard: bool = True):
        self.wildcard = wildcard
        self.allowed = "host:port" if wildcard else "host:port, not a wildcard"

    def __call__(self, v: Any, ctx: Ctx) -> Address:
        if not isinstance(v, str):
            raise Bad(f'expected "host:port", {got(v)}')
        try:
            return parse_address(v, wildcard=self.wildcard)
        except ValueError as e:
            raise Bad(f"{e}, {got(v)}") from None


class Flag:
    """A check written as a plain function, with the docs' type (and allowed) text."""

    def __init__(self, fn: Callable[[Any, Ctx], Any], kind: str, allowed: str = "",
                 typed: Callable[[Any], None] | None = None):
        self.fn, self.kind, self.allowed = fn, kind, allowed
        if typed is not None:
            self.typed = typed

    def __call__(self, v: Any, ctx: Ctx) -> Any:
        return self.fn(v, ctx)


def _bool(v: Any, ctx: Ctx) -> bool:
    if not isinstance(v, bool):
        raise Bad(f"expected true or false, {got(v)}")
    return v


def _path(v: Any, ctx: Ctx) -> Any:
    if not isinstance(v, str) or not v or "\0" in v:
        raise Bad(f"expected a path (string), {got(v)}")
    if v.startswith("~"):
        raise Bad(f"'~' is not expanded: give an absolute path or one relative to the file, {got(v)}")
    base = ctx.base_dir
    if base is None:
        raise Bad(f"a path needs the file's directory, {got(v)}")
    return type(base)(posixpath.normpath(str(base / v)))


_HHMM = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


def _clock(v: Any, ctx: Ctx) -> _dt.time:
    if isinstance(v, _dt.time) and v.tzinfo is None:
        return v
    m = _HHMM.fullmatch(v) if isinstance(v, str) else None
    if m is None:
        raise Bad(f'expected a local time "HH:MM" (00:00 to 23:59), {got(v)}')
    return _dt.time(int(m[1]), int(m[2]))


def _name(v: Any, ctx: Ctx) -> str:
    try:
        return check_node_name(v)
    except ValueError as e:
        raise Bad(f"{e}, {got(v)}") from None


def _ip_host(v: Any, ctx: Ctx) -> str:
    """An IP address to bind (SIP and RTP are bound to it: SDP never names another one)."""
    try:
        if not isinstance(v, str):
            raise ValueError
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise Bad(f"expected an IP address, {got(v)}") from None


def _typed_of(fn: Callable[[Any, Ctx], Any]) -> Callable[[Any], None]:
    def typed(v: Any) -> None:
        fn(v, NO_CTX)
    return typed


boolean = Flag(_bool, "boolean", typed=_typed_of(_bool))
path = Flag(_path, "path")
clock = Flag(_clock, "local time", '`"HH:MM"`')
node_name = Flag(_name, "string", "node name", typed=_typed_of(_name))
ip_host = Flag(_ip_host, "IP address", "IPv4 or IPv6 address", typed=_typed_of(_ip_host))


# ============================================================================ keys and sections


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

Check = Callable[[Any, Ctx], Any]


class Key(NamedTuple):
    """One key of a section (see the module docstring)."""

    check: Check
    default: Any = REQUIRED  # REQUIRED, None (absent = derived later) or a raw TOML value
    shared: bool = False  # must match on both nodes of a pair
    doc_range: bool = True  # the docs' "allowed" cell shows the check's range / options


def schema_tree(schema: dict[str, dict[str, Key]]) -> dict:
    """A schema's dotted section names as nested dicts; leaves are the sections' key tables."""
    tree: dict = {}
    for dotted, keys in schema.items():
        *parents, last = dotted.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = keys
    return tree


def walk(data: dict, tree: dict, prefix: str, raw: dict, problems: list[Problem]) -> None:
    """Collect each section's table of ``data`` into ``raw`` (dotted section -> table) and an
    "unknown key" problem for every key no section of ``tree`` knows."""
    for k in data:
        if k not in tree:
            dotted = prefix + str(k)
            where = f"in [{prefix[:-1]}]" if prefix else "sections"
            problems.append(Problem(dotted, f"unknown key (known {where}: {', '.join(tree)})"))
    for name, sub in tree.items():
        dotted = prefix + name
        if name not in data:
            continue
        table = data[name]
        if not isinstance(table, dict):
            problems.append(Problem(dotted, f"expected a table [{dotted}], {got(table)}"))
            continue
        if all(isinstance(v, Key) for v in sub.values()):  # a section's key table
            raw[dotted] = table
            for k in table:
                if k not in sub:
                    problems.append(Problem(f"{dotted}.{k}", "unknown key (known in "
                                            f"[{dotted}]: {', '.join(sub)})"))
        else:
            walk(table, sub, dotted + ".", raw, problems)


def check_values(raw: dict[str, dict[str, Any]], schema: dict[str, dict[str, Key]], ctx: Ctx,
                 problems: list[Problem], *, required: bool = True) -> dict[str, dict[str, Any]]:
    """Each key of ``schema`` checked: ``{section: {key: typed value}}``.  A key not written
    takes its default (None when the default is None); a missing required key is a problem
    (with ``required=False`` it is left out: a partial view of a file another process checked
    whole)."""
    values: dict[str, dict[str, Any]] = {}
    for section, keys in schema.items():
        given = raw.get(section, {})
        out = values[section] = {}
        for key, spec in keys.items():
            dotted = f"{section}.{key}"
            if key in given:
                v = given[key]
            elif spec.default is REQUIRED:
                if required:
                    problems.append(Problem(dotted, "required key is missing"))
                continue
            elif spec.default is None:
                out[key] = None
                continue
            else:
                v = spec.default
            try:
                out[key] = spec.check(v, ctx)
            except Bad as e:
                problems.append(Problem(dotted, str(e)))
    return values


def default_of(keys: dict[str, Key], name: str) -> Any:
    """The typed default of ``keys[name]`` (None when it has none), for a settings dataclass's
    field default: the file's default and the code's are one definition."""
    d = keys[name].default
    return None if d is None or d is REQUIRED else keys[name].check(d, NO_CTX)


def check_typed(obj: Any, keys: dict[str, Key], names: tuple[str, ...] | None = None) -> None:
    """Check the fields of a settings dataclass built in code against their keys (those whose
    check can judge a typed value); raises ``ValueError("name: what was expected")``."""
    for name in names if names is not None else tuple(keys):
        typed = getattr(keys[name].check, "typed", None)
        value = getattr(obj, name)
        if typed is None or value is None:
            continue
        try:
            typed(value)
        except Bad as e:
            raise ValueError(f"{name}: {e}") from None


def must_match(schema: dict[str, dict[str, Key]]) -> tuple[str, ...]:
    """The dotted keys of ``schema`` marked ``shared``, in schema order."""
    return tuple(f"{s}.{k}" for s, keys in schema.items() for k, spec in keys.items() if spec.shared)


# ============================================================================ docs


def doc_cells(key: Key) -> tuple[str, tuple[str, ...]]:
    """The docs table's *type* cell for one key, and the fragments its *allowed* cell must
    contain (docs/configuration.md; compared without double quotes and thousands
    separators): a number's range ``lo – hi``, each option of a choice as `` `option` ``,
    or the check's own text."""
    check = key.check
    kind = getattr(check, "kind", "")
    if not key.doc_range:
        return kind, ()
    if isinstance(check, Num):
        return kind, (check.allowed,)
    if isinstance(check, (Choice, Strings)):
        return kind, tuple(f"`{o}`" for o in check.options)
    allowed = getattr(check, "allowed", "")
    return kind, ((allowed.replace('"', ""),) if allowed else ())
