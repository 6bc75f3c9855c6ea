"""The CallManager **simulator**'s dial plan (:mod:`lab.callmanager`): its device list, the
registry name of a device's port, call types, and what it makes of the digits a voice-mail port
dials to set a message-waiting lamp.  Two MWI styles, told apart by how the port went off hook:

* **CME style** (plain OffHook): an MWI prefix, then the subscriber's extension, e.g.
  ``2222`` + ``6001`` lights 6001's lamp, ``2221`` + ``6001`` puts it out (Cisco CME's
  ``mwi on``/``mwi off`` numbers).
* **CallManager style** (OffHookWithCgpn carrying the extension): the port goes off hook *as*
  the subscriber and dials CallManager's "MWI On" or "MWI Off" directory number alone.

``#`` ends the number early; otherwise the simulator decides as soon as the digits can only
mean one thing (or at the interdigit timeout, with ``final=True``).
"""
from __future__ import annotations

import re
from collections.abc import Collection, Iterable

from telephony.sccp.core.messages import CallType

__all__ = ["mwi_verdict", "parse_devices", "port_name", "call_type_of"]

_DEVICE_RE = re.compile(r"^[\x21-\x7e]{1,15}$")
_DIGITS_RE = re.compile(r"^[0-9*#A-D]*$")


def port_name(device: str) -> str | None:
    """The driver's registry name of a device: ``CiscoUM1-VI2`` -> ``sccp-2`` (its trailing
    number), None if it has none."""
    m = re.search(r"(\d+)$", device)
    return f"sccp-{int(m.group(1))}" if m else None


def parse_devices(spec: str | Iterable[str]) -> dict[str, str]:
    """Devices in hunt order, ``{name: directory number}``, from a list or a comma-separated
    string of ``NAME`` or ``NAME=DN`` (DN defaults to "")."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: dict[str, str] = {}
    for item in items:
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        name, _, dn = item.partition("=")
        name, dn = name.strip(), dn.strip()
        if not _DEVICE_RE.match(name):
            raise ValueError(f"bad device name {name!r}: 1 to 15 printable ASCII characters")
        if not _DIGITS_RE.match(dn) or len(dn) > 23:
            raise ValueError(f"bad directory number {dn!r} for {name}")
        if name in out:
            raise ValueError(f"device {name} listed twice")
        out[name] = dn
    if not out:
        raise ValueError("no devices")
    return out


def call_type_of(call_type: str | int | None, forwarded: bool) -> CallType:
    """``call_type`` as given (a name or 1..3), or FORWARD/INBOUND by ``forwarded``."""
    if call_type is None:
        return CallType.FORWARD if forwarded else CallType.INBOUND
    names = {"direct": CallType.INBOUND, "inbound": CallType.INBOUND, "outbound": CallType.OUTBOUND,
             "forward": CallType.FORWARD, "forwarded": CallType.FORWARD}
    if isinstance(call_type, str) and call_type.lower() in names:
        return names[call_type.lower()]
    if isinstance(call_type, int) and not isinstance(call_type, bool) and call_type in (1, 2, 3):
        return CallType(call_type)
    raise ValueError(f"call_type must be direct, forward, outbound or 1..3, not {call_type!r}")


def mwi_verdict(digits: str, cgpn: str | None, *, final: bool, mwi_on: str, mwi_off: str,
                extensions: Collection[str] = ()) -> tuple[bool, str] | str | None:
    """What dialled ``digits`` mean: ``(on, extension)``, a refusal reason (a ``str``), or
    None (wait: more digits may come).  ``cgpn`` given: CallManager style (the extension is
    ``cgpn``); None: CME style.  ``extensions`` empty: any 1..24-digit extension is known
    (CME style then needs ``#`` or ``final`` to know where the extension ends)."""
    if "#" in digits:
        digits, final = digits[:digits.index("#")], True
    codes = ((mwi_on, True), (mwi_off, False))
    if cgpn is not None:
        for code, on in codes:
            if digits == code:
                if not (cgpn.isdigit() and len(cgpn) <= 24) or (extensions and cgpn not in extensions):
                    return f"unknown extension {cgpn!r}"
                return on, cgpn
        if not final and any(code.startswith(digits) for code, _ in codes):
            return None
        return f"unknown code {digits!r}"
    for code, on in codes:
        if not digits.startswith(code):
            continue
        ext = digits[len(code):]
        if ext and not ext.isdigit():
            return f"bad extension {ext!r}"
        if extensions:
            longer = any(e != ext and e.startswith(ext) for e in extensions)
            if ext in extensions and (final or not longer):
                return on, ext
            if longer and not final:
                return None
            return f"unknown extension {ext!r}"
        if final:
            return (on, ext) if 1 <= len(ext) <= 24 else f"bad extension {ext!r}"
        return None
    if not final and any(code.startswith(digits) for code, _ in codes):
        return None
    return f"unknown code {digits!r}"
