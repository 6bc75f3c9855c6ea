"""integrations/: the three parts of an integration as data, the named profiles, the lamp
table and the default wiring of a file without an [integration] section."""
from __future__ import annotations

import ast
import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest

from integrations.analog import ANALOG_DTMF, ANALOG_SMDI
from integrations.base import (
    IN_BAND_PORTS,
    MWI_DRIVERS,
    NUMBERED_PORTS,
    CallInfo,
    IntegrationProfile,
    MwiMethod,
    VoicePort,
    default_integration,
    mwi_drivers,
    node_mwi_drivers,
)
from integrations.cucm_sccp import CUCM_SCCP
from integrations.cucm_sip import CUCM_SIP
from integrations.loopback import LOOPBACK
from integrations.profiles import PROFILES, analog_integration, sccp_integration, smdi_integration
from integrations.smdi import GATEWAY_SMDI, SERIAL_SMDI

ROOT = Path(__file__).resolve().parents[2]


def test_integrations_import_nothing_of_the_project():
    for path in (ROOT / "integrations").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in ("telephony", "failover", "lab", "tests"), \
                    f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] not in ("telephony", "failover", "lab", "tests")


def test_the_profiles_name_their_three_parts():
    assert list(PROFILES) == ["cucm-sip", "cucm-sccp", "serial-smdi", "gateway-smdi",
                              "analog-dtmf", "analog-smdi", "loopback"]
    parts = {name: (p.voice_ports, p.call_info, p.mwi_method) for name, p in PROFILES.items()}
    assert parts == {
        "cucm-sip": (("sip",), CallInfo.SIGNALLING, MwiMethod.SIP_NOTIFY),
        "cucm-sccp": (("sccp",), CallInfo.SIGNALLING, MwiMethod.SCCP),
        "serial-smdi": (("loopback",), CallInfo.SMDI, MwiMethod.SMDI),
        "gateway-smdi": (("sip",), CallInfo.SMDI, MwiMethod.SMDI),
        "analog-dtmf": (("analog",), CallInfo.DTMF, MwiMethod.DTMF),
        "analog-smdi": (("analog",), CallInfo.SMDI, MwiMethod.SMDI),
        "loopback": (("loopback",), CallInfo.SIGNALLING, MwiMethod.NONE),
    }
    assert (CUCM_SIP, CUCM_SCCP, SERIAL_SMDI, GATEWAY_SMDI, ANALOG_DTMF, ANALOG_SMDI, LOOPBACK) == \
        tuple(PROFILES.values())
    for p in PROFILES.values():
        assert p.name and set(p.voice_ports) <= set(VoicePort)
        if p.call_info is CallInfo.SMDI:
            assert set(p.voice_ports) <= NUMBERED_PORTS
        if p.call_info is CallInfo.DTMF:
            assert set(p.voice_ports) <= IN_BAND_PORTS


def test_a_profile_checks_its_parts():
    base = dict(name="x", port_kind="loopback", ports=4, mwi_method=MwiMethod.NONE)
    assert IntegrationProfile(**base).voice_ports == ("loopback",)  # from the port kind
    with pytest.raises(ValueError, match="unknown voice ports"):
        IntegrationProfile(**base, voice_ports=("skinny",))
    assert IntegrationProfile(**base, voice_ports=("sccp",)).voice_ports == ("sccp",)
    with pytest.raises(ValueError, match="DTMF call information needs voice ports"):
        IntegrationProfile(**base, call_info=CallInfo.DTMF)
    assert IntegrationProfile(**{**base, "port_kind": "analog"},
                              call_info=CallInfo.DTMF).voice_ports == ("analog",)
    with pytest.raises(ValueError, match="ports must be"):
        IntegrationProfile(**{**base, "ports": 0})


def test_the_lamp_table():
    assert MWI_DRIVERS == {
        MwiMethod.SIP_NOTIFY: {"sip": "sip"},
        MwiMethod.SMDI: {"smdi": "smdi"},
        MwiMethod.DTMF: {"dtmf": "analog"},
        MwiMethod.SCCP: {"sccp": "sccp"},
        MwiMethod.LOOPBACK: {"sip": "loopback"},
        MwiMethod.NONE: {},
    }
    # the SCCP ports call CallManager's MWI numbers for the sccp subscribers
    assert node_mwi_drivers(SimpleNamespace(integration=SimpleNamespace(mwi="sccp"))) == \
        {"sccp": "sccp"}
    assert node_mwi_drivers(SimpleNamespace(integration=SimpleNamespace(mwi="dtmf"))) == \
        {"dtmf": "analog"}
    cfg = SimpleNamespace(integration=SimpleNamespace(mwi="smdi"))
    assert node_mwi_drivers(cfg) == {"smdi": "smdi"}
    node_mwi_drivers(cfg)["x"] = "y"  # a copy: the table is not changed through it
    assert MWI_DRIVERS[MwiMethod.SMDI] == {"smdi": "smdi"}


def _old_mwi_drivers(*, sip: bool, smdi: bool, loopback: bool) -> dict[str, str]:
    """The wiring before the integration model (no [integration] section)."""
    out: dict[str, str] = {}
    if sip:
        out["sip"] = "sip"
    elif loopback and not smdi:
        out["sip"] = "loopback"
    if smdi:
        out["smdi"] = "smdi"
    return out


@pytest.mark.parametrize("sip, smdi, loopback", list(itertools.product((False, True), repeat=3)))
def test_the_default_integration_is_the_old_wiring(sip, smdi, loopback):
    voice, call_info, mwi = default_integration(sip=sip, smdi=smdi, loopback=loopback)
    assert voice == tuple(k for k, on in (("loopback", loopback), ("sip", sip)) if on)
    # the loopback trunk's lines took their numbers from SMDI whenever the link was on
    assert call_info is (CallInfo.SMDI if smdi else CallInfo.SIGNALLING)
    if not (sip and smdi):  # both: refused by the configuration without an [integration]
        assert mwi_drivers(sip=sip, smdi=smdi, loopback=loopback) == \
            _old_mwi_drivers(sip=sip, smdi=smdi, loopback=loopback)
        assert dict(MWI_DRIVERS[mwi]) == _old_mwi_drivers(sip=sip, smdi=smdi, loopback=loopback)


@pytest.mark.parametrize("sip, smdi, loopback", list(itertools.product((False, True), repeat=3)))
def test_analog_lines_in_the_default_integration(sip, smdi, loopback):
    voice, call_info, mwi = default_integration(sip=sip, smdi=smdi, loopback=loopback,
                                                analog=True)
    assert voice == tuple(k for k, on in (("loopback", loopback), ("sip", sip), ("analog", True))
                          if on)
    assert call_info is (CallInfo.SMDI if smdi else CallInfo.DTMF if voice == ("analog",)
                         else CallInfo.SIGNALLING)
    assert mwi is (MwiMethod.SIP_NOTIFY if sip else MwiMethod.SMDI if smdi else MwiMethod.DTMF)
    assert mwi_drivers(sip=sip, smdi=smdi, loopback=loopback, analog=True) == \
        dict(MWI_DRIVERS[mwi])


@pytest.mark.parametrize("sip, smdi, loopback, analog",
                         list(itertools.product((False, True), repeat=4)))
def test_sccp_ports_in_the_default_integration(sip, smdi, loopback, analog):
    voice, call_info, mwi = default_integration(sip=sip, smdi=smdi, loopback=loopback,
                                                analog=analog, sccp=True)
    assert voice == tuple(k for k, on in (("loopback", loopback), ("sip", sip),
                                          ("analog", analog), ("sccp", True)) if on)
    assert call_info is (CallInfo.SMDI if smdi else CallInfo.SIGNALLING)  # CallInfo is theirs
    assert mwi is (MwiMethod.SIP_NOTIFY if sip else MwiMethod.SMDI if smdi
                   else MwiMethod.DTMF if analog else MwiMethod.SCCP)
    assert mwi_drivers(sip=sip, smdi=smdi, loopback=loopback, analog=analog, sccp=True) == \
        dict(MWI_DRIVERS[mwi])
    # without SCCP ports nothing changes
    assert default_integration(sip=sip, smdi=smdi, loopback=loopback, analog=analog) == \
        default_integration(sip=sip, smdi=smdi, loopback=loopback, analog=analog, sccp=False)


def test_sccp_calls_are_labelled_with_their_profile():
    assert sccp_integration(None) is CUCM_SCCP and CUCM_SCCP.name == "cucm-sccp"
    assert sccp_integration("cucm-sip").name == "cucm-sip"  # the profile named wins
    assert VoicePort.SCCP in NUMBERED_PORTS and VoicePort.SCCP not in IN_BAND_PORTS
    assert CUCM_SCCP.normalise("calling", "+1 (555) 010-0199") == "15550100199"


def test_smdi_calls_are_labelled_with_the_integration_that_serves_them():
    assert smdi_integration(None, ("analog",)).name == "analog-smdi"
    assert analog_integration(None, "dtmf").name == "analog-dtmf"
    assert analog_integration(None, "smdi").name == "analog-smdi"
    assert analog_integration("analog-smdi", "smdi") is ANALOG_SMDI
    assert smdi_integration(None, ("sip",)).name == "gateway-smdi"
    assert smdi_integration(None, ("loopback",)).name == "serial-smdi"
    assert smdi_integration("serial-smdi", ("loopback",)).name == "serial-smdi"
    assert smdi_integration("gateway-smdi", ("sip",)).name == "gateway-smdi"


def test_the_sip_ports_a_node_may_have_are_bounded_by_the_rtp_layout():
    """The CUCM SIP profile's ports (``SipProfile``, based on it): 4 contiguous RTP ports a SIP
    port, so 256 ports (64 workers) take 1024 RTP ports, and the limit is where the last RTP
    port passes 65535, whatever the number of workers."""
    from telephony.sip.settings import SipProfile, rtp_span, worker_rtp_port

    p = SipProfile(count=256, rtp_port=20000)
    assert p.base is CUCM_SIP and p.workers == 64
    assert rtp_span(20000, 4, 256) == (20000, 21023)
    assert [worker_rtp_port(20000, 4, i) for i in (0, 1, 63)] == [20000, 20016, 21008]
    assert SipProfile(count=1024).workers == 256            # the key's largest count fits
    assert SipProfile(count=130, per_worker=1, rtp_port=65000).workers == 130  # 65000..65519
    assert rtp_span(65000, 4, 134) == (65000, 65535)
    SipProfile(count=134, rtp_port=65000)                   # the last RTP port is 65535
    with pytest.raises(ValueError, match=r"RTP ports 65000\.\.65539 for 135 SIP ports"):
        SipProfile(count=135, rtp_port=65000)
    assert rtp_span(64000, 3, 7) == (64000, 64000 + 4 * 7 - 1)  # a last worker not full
