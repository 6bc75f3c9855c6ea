"""DAHDI's user-space ABI, as data: the ioctl numbers, constants and struct layouts the DAHDI
board backend (:mod:`telephony.analog.dahdi`) relies on.  Pure: nothing here opens a device.

The facts restated here come from DAHDI's ``include/dahdi/user.h`` (Debian package
``dahdi-source`` installs it as ``/usr/include/dahdi/user.h``).  Every ioctl number is computed
the way the header computes it, with Linux's ``_IOC(dir, type, nr, size)`` encoding from the
ioctl magic :data:`DAHDI_CODE` and the argument's size; no number is written down ready-made.
``tests/telephony/analog/test_dahdi_abi.py`` compiles a C probe against the installed header
and compares every number, constant, ``sizeof`` and ``offsetof`` below with what the C compiler
says, so a drift between this module and the kernel's ABI fails the tests.

The ``_IOC`` encoding is the one of ``asm-generic/ioctl.h`` (x86, ARM, arm64, RISC-V, s390,
LoongArch): 8 bits of number, 8 of type, 14 of size, 2 of direction (none 0, write 1, read 2).
Alpha, MIPS, PowerPC and SPARC encode differently; :func:`generic_ioctl_machine` tells the
backend whether a machine uses this encoding.

Struct layouts are tuples of ``(field, struct-format)``; :class:`Layout` derives the
``struct`` format, the size and each field's offset.  Every field of the structs used is a C
``int``/``__u32`` (4 bytes on every Linux ABI) or a ``char`` array whose length is a multiple
of 4, so the native layout has no padding and the standard-size ``=`` format matches it.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

# -- Linux's ioctl number encoding (asm-generic/ioctl.h) --------------------------------------
IOC_NRBITS: Final = 8
IOC_TYPEBITS: Final = 8
IOC_SIZEBITS: Final = 14
IOC_DIRBITS: Final = 2
IOC_NRSHIFT: Final = 0
IOC_TYPESHIFT: Final = IOC_NRSHIFT + IOC_NRBITS
IOC_SIZESHIFT: Final = IOC_TYPESHIFT + IOC_TYPEBITS
IOC_DIRSHIFT: Final = IOC_SIZESHIFT + IOC_SIZEBITS
IOC_NONE: Final = 0
IOC_WRITE: Final = 1
IOC_READ: Final = 2


def ioc(direction: int, type_: int, nr: int, size: int) -> int:
    """``_IOC(dir, type, nr, size)``: each part must fit its bit field (ValueError if not)."""
    for what, value, bits in (("direction", direction, IOC_DIRBITS), ("type", type_, IOC_TYPEBITS),
                              ("number", nr, IOC_NRBITS), ("size", size, IOC_SIZEBITS)):
        if not 0 <= value < 1 << bits:
            raise ValueError(f"ioctl {what} {value} does not fit in {bits} bits")
    return (direction << IOC_DIRSHIFT) | (type_ << IOC_TYPESHIFT) | (nr << IOC_NRSHIFT) \
        | (size << IOC_SIZESHIFT)


def io(type_: int, nr: int) -> int:
    """``_IO(type, nr)``: no argument."""
    return ioc(IOC_NONE, type_, nr, 0)


def ior(type_: int, nr: int, size: int) -> int:
    """``_IOR(type, nr, T)`` with ``size = sizeof(T)``: the kernel writes the argument."""
    return ioc(IOC_READ, type_, nr, size)


def iow(type_: int, nr: int, size: int) -> int:
    """``_IOW(type, nr, T)``: the kernel reads the argument."""
    return ioc(IOC_WRITE, type_, nr, size)


def iowr(type_: int, nr: int, size: int) -> int:
    """``_IOWR(type, nr, T)``: both ways."""
    return ioc(IOC_READ | IOC_WRITE, type_, nr, size)


#: ``uname -m`` values (or their prefixes) of machines whose kernel uses the encoding above
_GENERIC_MACHINES = ("x86_64", "amd64", "i386", "i486", "i586", "i686", "aarch64", "arm64", "armv",
                     "riscv", "s390", "loongarch")


def generic_ioctl_machine(machine: str) -> bool:
    """Whether a machine (``platform.machine()``) numbers ioctls as :func:`ioc` does."""
    return machine.lower().startswith(_GENERIC_MACHINES)


# -- struct layouts ----------------------------------------------------------------------------
INT_SIZE: Final = 4  # sizeof(int) on every Linux ABI


@dataclass(frozen=True)
class Layout:
    """A C struct as data: its name in user.h and its fields in order."""

    name: str
    fields: tuple[tuple[str, str], ...]

    @property
    def format(self) -> str:
        return "=" + "".join(fmt for _, fmt in self.fields)

    @property
    def size(self) -> int:
        return struct.calcsize(self.format)

    @property
    def offsets(self) -> dict[str, int]:
        out, at = {}, 0
        for field, fmt in self.fields:
            out[field] = at
            at += struct.calcsize("=" + fmt)
        return out

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(field for field, _ in self.fields)

    def pack(self, **values: int | bytes) -> bytes:
        """The struct's bytes; fields not given are zero.  An unknown field is a ValueError."""
        unknown = set(values) - set(self.names)
        if unknown:
            raise ValueError(f"struct {self.name} has no field {sorted(unknown)[0]!r}")
        return struct.pack(self.format, *(values.get(field, b"" if fmt.endswith("s") else 0)
                                          for field, fmt in self.fields))

    def unpack(self, data: bytes) -> dict[str, int | bytes]:
        """The fields of the struct's bytes (ValueError unless exactly :attr:`size` bytes)."""
        if len(data) != self.size:
            raise ValueError(f"struct {self.name} is {self.size} bytes, not {len(data)}")
        return dict(zip(self.names, struct.unpack(self.format, data), strict=True))


#: ``struct dahdi_params`` (DAHDI_GET_PARAMS): a channel's number, span, signalling, hook state
DAHDI_PARAMS: Final = Layout("dahdi_params", (
    ("channo", "i"), ("spanno", "i"), ("chanpos", "i"), ("sigtype", "i"), ("sigcap", "i"),
    ("rxisoffhook", "i"), ("rxbits", "i"), ("txbits", "i"), ("txhooksig", "i"),
    ("rxhooksig", "i"), ("curlaw", "i"), ("idlebits", "i"), ("name", "40s"),
    ("prewinktime", "i"), ("preflashtime", "i"), ("winktime", "i"), ("flashtime", "i"),
    ("starttime", "i"), ("rxwinktime", "i"), ("rxflashtime", "i"), ("debouncetime", "i"),
    ("pulsebreaktime", "i"), ("pulsemaketime", "i"), ("pulseaftertime", "i"),
    ("chan_alarms", "I")))

#: ``struct dahdi_bufferinfo`` (DAHDI_GET_BUFINFO / DAHDI_SET_BUFINFO): a channel's buffering
DAHDI_BUFFERINFO: Final = Layout("dahdi_bufferinfo", (
    ("txbufpolicy", "i"), ("rxbufpolicy", "i"), ("numbufs", "i"), ("bufsize", "i"),
    ("readbufs", "i"), ("writebufs", "i")))

LAYOUTS: Final = (DAHDI_PARAMS, DAHDI_BUFFERINFO)

# -- ioctls ------------------------------------------------------------------------------------
#: the ioctl magic of DAHDI (Zaptel, its predecessor, used ``'J'``; DAHDI uses 0xDA)
DAHDI_CODE: Final = 0xDA

DAHDI_GET_BLOCKSIZE: Final = ior(DAHDI_CODE, 1, INT_SIZE)
DAHDI_SET_BLOCKSIZE: Final = iow(DAHDI_CODE, 1, INT_SIZE)
DAHDI_FLUSH: Final = iow(DAHDI_CODE, 3, INT_SIZE)
DAHDI_GET_PARAMS: Final = iowr(DAHDI_CODE, 5, DAHDI_PARAMS.size)
DAHDI_HOOK: Final = iow(DAHDI_CODE, 7, INT_SIZE)
DAHDI_GETEVENT: Final = ior(DAHDI_CODE, 8, INT_SIZE)
DAHDI_GET_BUFINFO: Final = ior(DAHDI_CODE, 27, DAHDI_BUFFERINFO.size)
DAHDI_SET_BUFINFO: Final = iow(DAHDI_CODE, 27, DAHDI_BUFFERINFO.size)
DAHDI_CHANNO: Final = ior(DAHDI_CODE, 34, INT_SIZE)
DAHDI_SPECIFY: Final = iow(DAHDI_CODE, 38, INT_SIZE)
DAHDI_SETLAW: Final = iow(DAHDI_CODE, 39, INT_SIZE)
DAHDI_SETLINEAR: Final = iow(DAHDI_CODE, 40, INT_SIZE)

#: every ioctl the backend uses, by its name in user.h
IOCTLS: Final = {
    "DAHDI_GET_BLOCKSIZE": DAHDI_GET_BLOCKSIZE, "DAHDI_SET_BLOCKSIZE": DAHDI_SET_BLOCKSIZE,
    "DAHDI_FLUSH": DAHDI_FLUSH, "DAHDI_GET_PARAMS": DAHDI_GET_PARAMS, "DAHDI_HOOK": DAHDI_HOOK,
    "DAHDI_GETEVENT": DAHDI_GETEVENT, "DAHDI_GET_BUFINFO": DAHDI_GET_BUFINFO,
    "DAHDI_SET_BUFINFO": DAHDI_SET_BUFINFO, "DAHDI_CHANNO": DAHDI_CHANNO,
    "DAHDI_SPECIFY": DAHDI_SPECIFY, "DAHDI_SETLAW": DAHDI_SETLAW,
    "DAHDI_SETLINEAR": DAHDI_SETLINEAR,
}

# -- constants ---------------------------------------------------------------------------------
#: the errno a read or write on a channel fails with while a signalling event waits to be
#: fetched with DAHDI_GETEVENT (user.h defines it when the C library has no ELAST, as glibc)
ELAST: Final = 500

SIG_FXO_BIT: Final = 1 << 12  # user.h's __DAHDI_SIG_FXO
SIG_FXS_BIT: Final = 1 << 13  # user.h's __DAHDI_SIG_FXS
DAHDI_SIG_NONE: Final = 0
DAHDI_SIG_FXSLS: Final = (1 << 0) | SIG_FXS_BIT
DAHDI_SIG_FXSGS: Final = (1 << 1) | SIG_FXS_BIT
DAHDI_SIG_FXSKS: Final = (1 << 2) | SIG_FXS_BIT
DAHDI_SIG_FXOLS: Final = (1 << 3) | SIG_FXO_BIT
DAHDI_SIG_FXOGS: Final = (1 << 4) | SIG_FXO_BIT
DAHDI_SIG_FXOKS: Final = (1 << 5) | SIG_FXO_BIT
DAHDI_SIG_EM: Final = 1 << 6
DAHDI_SIG_CLEAR: Final = 1 << 7

#: signalling value -> name (what DAHDI_GET_PARAMS reports in ``sigtype``)
SIGNALLING: Final = {
    DAHDI_SIG_NONE: "none", DAHDI_SIG_FXSLS: "fxsls", DAHDI_SIG_FXSGS: "fxsgs",
    DAHDI_SIG_FXSKS: "fxsks", DAHDI_SIG_FXOLS: "fxols", DAHDI_SIG_FXOGS: "fxogs",
    DAHDI_SIG_FXOKS: "fxoks", DAHDI_SIG_EM: "e&m", DAHDI_SIG_CLEAR: "clear",
}

DAHDI_LAW_DEFAULT: Final = 0
DAHDI_LAW_MULAW: Final = 1
DAHDI_LAW_ALAW: Final = 2

DAHDI_ONHOOK: Final = 0
DAHDI_OFFHOOK: Final = 1

DAHDI_FLUSH_READ: Final = 1
DAHDI_FLUSH_WRITE: Final = 2
DAHDI_FLUSH_EVENT: Final = 4
DAHDI_FLUSH_ALL: Final = DAHDI_FLUSH_READ | DAHDI_FLUSH_WRITE | DAHDI_FLUSH_EVENT

DAHDI_POLICY_IMMEDIATE: Final = 0
DAHDI_MAX_EVENTSIZE: Final = 64  # events the kernel queues per channel
DAHDI_MAX_CHANNELS: Final = 1024
DAHDI_MAX_BLOCKSIZE: Final = 8192
DAHDI_MAX_BUF_SPACE: Final = 32768
DAHDI_ALARM_NONE: Final = 0

DAHDI_EVENT_NONE: Final = 0
DAHDI_EVENT_ONHOOK: Final = 1
DAHDI_EVENT_RINGOFFHOOK: Final = 2
DAHDI_EVENT_WINKFLASH: Final = 3
DAHDI_EVENT_ALARM: Final = 4
DAHDI_EVENT_NOALARM: Final = 5
DAHDI_EVENT_DIALCOMPLETE: Final = 9
DAHDI_EVENT_RINGERON: Final = 10
DAHDI_EVENT_RINGEROFF: Final = 11
DAHDI_EVENT_HOOKCOMPLETE: Final = 12
DAHDI_EVENT_POLARITY: Final = 17
DAHDI_EVENT_RINGBEGIN: Final = 18
DAHDI_EVENT_REMOVED: Final = 20
DAHDI_EVENT_NEONMWI_ACTIVE: Final = 21
DAHDI_EVENT_NEONMWI_INACTIVE: Final = 22
DAHDI_EVENT_READ_OVERRUN: Final = 29
DAHDI_EVENT_WRITE_UNDERRUN: Final = 30
#: flags OR'ed with a digit in an event (pulse digit, DTMF down, DTMF up)
DAHDI_EVENT_PULSEDIGIT: Final = 1 << 16
DAHDI_EVENT_DTMFDOWN: Final = 1 << 17
DAHDI_EVENT_DTMFUP: Final = 1 << 18

#: event value -> name (without the DAHDI_EVENT_ prefix)
EVENTS: Final = {
    DAHDI_EVENT_NONE: "NONE", DAHDI_EVENT_ONHOOK: "ONHOOK",
    DAHDI_EVENT_RINGOFFHOOK: "RINGOFFHOOK", DAHDI_EVENT_WINKFLASH: "WINKFLASH",
    DAHDI_EVENT_ALARM: "ALARM", DAHDI_EVENT_NOALARM: "NOALARM",
    DAHDI_EVENT_DIALCOMPLETE: "DIALCOMPLETE", DAHDI_EVENT_RINGERON: "RINGERON",
    DAHDI_EVENT_RINGEROFF: "RINGEROFF", DAHDI_EVENT_HOOKCOMPLETE: "HOOKCOMPLETE",
    DAHDI_EVENT_POLARITY: "POLARITY", DAHDI_EVENT_RINGBEGIN: "RINGBEGIN",
    DAHDI_EVENT_REMOVED: "REMOVED", DAHDI_EVENT_NEONMWI_ACTIVE: "NEONMWI_ACTIVE",
    DAHDI_EVENT_NEONMWI_INACTIVE: "NEONMWI_INACTIVE",
    DAHDI_EVENT_READ_OVERRUN: "READ_OVERRUN", DAHDI_EVENT_WRITE_UNDERRUN: "WRITE_UNDERRUN",
}
_DIGIT_FLAGS = {DAHDI_EVENT_PULSEDIGIT: "PULSEDIGIT", DAHDI_EVENT_DTMFDOWN: "DTMFDOWN",
                DAHDI_EVENT_DTMFUP: "DTMFUP"}

#: every constant the backend relies on, by its name in user.h (the ABI test checks them all)
CONSTANTS: Final = {
    "ELAST": ELAST, "DAHDI_CODE": DAHDI_CODE,
    "__DAHDI_SIG_FXO": SIG_FXO_BIT, "__DAHDI_SIG_FXS": SIG_FXS_BIT,
    "DAHDI_SIG_NONE": DAHDI_SIG_NONE, "DAHDI_SIG_FXSLS": DAHDI_SIG_FXSLS,
    "DAHDI_SIG_FXSGS": DAHDI_SIG_FXSGS, "DAHDI_SIG_FXSKS": DAHDI_SIG_FXSKS,
    "DAHDI_SIG_FXOLS": DAHDI_SIG_FXOLS, "DAHDI_SIG_FXOGS": DAHDI_SIG_FXOGS,
    "DAHDI_SIG_FXOKS": DAHDI_SIG_FXOKS, "DAHDI_SIG_EM": DAHDI_SIG_EM,
    "DAHDI_SIG_CLEAR": DAHDI_SIG_CLEAR,
    "DAHDI_LAW_DEFAULT": DAHDI_LAW_DEFAULT, "DAHDI_LAW_MULAW": DAHDI_LAW_MULAW,
    "DAHDI_LAW_ALAW": DAHDI_LAW_ALAW, "DAHDI_ONHOOK": DAHDI_ONHOOK,
    "DAHDI_OFFHOOK": DAHDI_OFFHOOK, "DAHDI_FLUSH_READ": DAHDI_FLUSH_READ,
    "DAHDI_FLUSH_WRITE": DAHDI_FLUSH_WRITE, "DAHDI_FLUSH_EVENT": DAHDI_FLUSH_EVENT,
    "DAHDI_FLUSH_ALL": DAHDI_FLUSH_ALL, "DAHDI_POLICY_IMMEDIATE": DAHDI_POLICY_IMMEDIATE,
    "DAHDI_MAX_BLOCKSIZE": DAHDI_MAX_BLOCKSIZE, "DAHDI_MAX_BUF_SPACE": DAHDI_MAX_BUF_SPACE,
    "DAHDI_ALARM_NONE": DAHDI_ALARM_NONE,
    "DAHDI_MAX_EVENTSIZE": DAHDI_MAX_EVENTSIZE, "DAHDI_MAX_CHANNELS": DAHDI_MAX_CHANNELS,
    **{f"DAHDI_EVENT_{name}": value for value, name in EVENTS.items()},
    **{f"DAHDI_EVENT_{name}": value for value, name in _DIGIT_FLAGS.items()},
}


def event_name(code: int) -> str:
    """A readable name of an event DAHDI_GETEVENT returned (digits events carry their digit)."""
    for flag, name in _DIGIT_FLAGS.items():
        if code & flag:
            digit = code & 0xFFFF
            return f"{name}({chr(digit) if 32 < digit < 127 else digit})"
    return EVENTS.get(code, f"event {code}")


def signalling_name(sigtype: int) -> str:
    """A readable name of a channel's signalling (``sigtype`` of DAHDI_GET_PARAMS)."""
    return SIGNALLING.get(sigtype, f"signalling 0x{sigtype:x}")
