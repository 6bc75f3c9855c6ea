"""The DAHDI ABI of :mod:`telephony.analog.core.dahdi_abi` against the C compiler's view of the
installed ``dahdi/user.h``: a C probe, generated from the module's own tables, prints every
ioctl number, constant, ``sizeof`` and ``offsetof`` the backend relies on, and each must equal
the Python value.  The probe needs the header (Debian ``dahdi-source``) and a C compiler
(``gcc``); without them the test fails naming the package: it never skips."""
from __future__ import annotations

import platform
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telephony.analog.core import dahdi_abi as abi

HEADER = Path("/usr/include/dahdi/user.h")


def c_probe() -> str:
    """C source printing ``name value`` for everything the module defines."""
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <dahdi/user.h>", "",
             "int main(void)", "{"]
    for name in abi.IOCTLS:
        lines.append(f'    printf("ioctl {name} %llu\\n", (unsigned long long)({name}));')
    for name in abi.CONSTANTS:
        lines.append(f'    printf("const {name} %lld\\n", (long long)({name}));')
    for layout in abi.LAYOUTS:
        lines.append(f'    printf("sizeof {layout.name} %zu\\n", sizeof(struct {layout.name}));')
        for field in layout.names:
            lines.append(f'    printf("offsetof {layout.name}.{field} %zu\\n", '
                         f'offsetof(struct {layout.name}, {field}));')
            lines.append(f'    printf("fieldsize {layout.name}.{field} %zu\\n", '
                         f'sizeof(((struct {layout.name} *)0)->{field}));')
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def c_values(tmp_path_factory) -> dict[str, int]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler (cc): the DAHDI ABI check compiles a probe against "
                    "dahdi/user.h; install the Debian package gcc (apt-get install gcc libc6-dev)")
    if not HEADER.is_file():
        pytest.fail(f"{HEADER} is missing: the DAHDI ABI check needs DAHDI's user header; "
                    "install the Debian package dahdi-source (apt-get install dahdi-source)")
    work = tmp_path_factory.mktemp("dahdi_probe")
    (work / "probe.c").write_text(c_probe())
    built = subprocess.run([cc, "-std=gnu11", "-Wall", "-Werror", "-o", str(work / "probe"),
                            str(work / "probe.c")], capture_output=True, text=True)
    assert built.returncode == 0, f"the C probe does not compile against {HEADER}:\n{built.stderr}"
    ran = subprocess.run([str(work / "probe")], capture_output=True, text=True, check=True)
    values = {}
    for line in ran.stdout.splitlines():
        kind, name, value = line.split()
        values[f"{kind} {name}"] = int(value)
    return values


def test_the_probe_reports_everything(c_values):
    want = len(abi.IOCTLS) + len(abi.CONSTANTS) \
        + sum(1 + 2 * len(layout.fields) for layout in abi.LAYOUTS)
    assert len(c_values) == want
    assert len(abi.IOCTLS) >= 12 and len(abi.CONSTANTS) >= 40


def test_ioctl_numbers_match_the_header(c_values):
    if not abi.generic_ioctl_machine(platform.machine()):
        pytest.fail(f"{platform.machine()} does not use the asm-generic ioctl encoding the "
                    "module computes; the DAHDI backend refuses to run here")
    wrong = {name: (hex(value), hex(c_values[f"ioctl {name}"]))
             for name, value in abi.IOCTLS.items() if c_values[f"ioctl {name}"] != value}
    assert not wrong, f"ioctl numbers (python, C): {wrong}"
    # the numbers really are the computed ones: read the parts back out of the C values
    params = c_values["ioctl DAHDI_GET_PARAMS"]
    assert params >> abi.IOC_DIRSHIFT == abi.IOC_READ | abi.IOC_WRITE
    assert (params >> abi.IOC_SIZESHIFT) & ((1 << abi.IOC_SIZEBITS) - 1) == abi.DAHDI_PARAMS.size
    assert (params >> abi.IOC_TYPESHIFT) & 0xFF == abi.DAHDI_CODE == 0xDA


def test_constants_match_the_header(c_values):
    wrong = {name: (value, c_values[f"const {name}"])
             for name, value in abi.CONSTANTS.items() if c_values[f"const {name}"] != value}
    assert not wrong, f"constants (python, C): {wrong}"


@pytest.mark.parametrize("layout", abi.LAYOUTS, ids=lambda layout: layout.name)
def test_struct_layouts_match_the_header(c_values, layout):
    assert layout.size == c_values[f"sizeof {layout.name}"]
    for field, fmt in layout.fields:
        assert layout.offsets[field] == c_values[f"offsetof {layout.name}.{field}"], field
        assert struct.calcsize("=" + fmt) == c_values[f"fieldsize {layout.name}.{field}"], field


def test_ioc_refuses_parts_that_do_not_fit():
    assert abi.io(abi.DAHDI_CODE, 4) == (0xDA << 8) | 4  # DAHDI_SYNC
    for bad in [(4, 0xDA, 1, 4), (1, 256, 1, 4), (1, 0xDA, 256, 4), (1, 0xDA, 1, 1 << 14),
                (1, 0xDA, -1, 4)]:
        with pytest.raises(ValueError, match="does not fit"):
            abi.ioc(*bad)


@given(st.integers(0, 3), st.integers(0, 255), st.integers(0, 255), st.integers(0, (1 << 14) - 1))
def test_ioc_parts_come_back_out(direction, type_, nr, size):
    n = abi.ioc(direction, type_, nr, size)
    assert 0 <= n < 1 << 32
    assert (n >> abi.IOC_DIRSHIFT, (n >> abi.IOC_TYPESHIFT) & 0xFF, n & 0xFF,
            (n >> abi.IOC_SIZESHIFT) & 0x3FFF) == (direction, type_, nr, size)


def test_layout_pack_and_unpack():
    data = abi.DAHDI_PARAMS.pack(channo=7, sigtype=abi.DAHDI_SIG_FXSKS, name=b"WCTDM/0/6")
    assert len(data) == abi.DAHDI_PARAMS.size == 136
    fields = abi.DAHDI_PARAMS.unpack(data)
    assert fields["channo"] == 7 and fields["sigtype"] == abi.DAHDI_SIG_FXSKS
    assert fields["name"].rstrip(b"\0") == b"WCTDM/0/6" and fields["chan_alarms"] == 0
    with pytest.raises(ValueError, match="no field 'channel'"):
        abi.DAHDI_PARAMS.pack(channel=1)
    with pytest.raises(ValueError, match="136 bytes, not 135"):
        abi.DAHDI_PARAMS.unpack(data[:-1])


def test_readable_names():
    assert abi.event_name(abi.DAHDI_EVENT_RINGBEGIN) == "RINGBEGIN"
    assert abi.event_name(abi.DAHDI_EVENT_DTMFDOWN | ord("5")) == "DTMFDOWN(5)"
    assert abi.event_name(99) == "event 99"
    assert abi.signalling_name(abi.DAHDI_SIG_FXSKS) == "fxsks"
    assert abi.signalling_name(1 << 15) == "signalling 0x8000"
    assert abi.generic_ioctl_machine("x86_64") and abi.generic_ioctl_machine("armv7l")
    assert not abi.generic_ioctl_machine("ppc64le") and not abi.generic_ioctl_machine("mips")
