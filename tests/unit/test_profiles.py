"""Vendor profiles: parsing, selection, rendering, sandboxing, TR-143 paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon.core.identity import Location
from daemon.core.plans import Plan, VerifyMode
from daemon.tr069.codec import ParameterValue
from daemon.tr069.profiles import ProfileError, ProfileSet, parse_profile

BUILTIN = ("calix", "generic-tr098", "generic-tr181", "huawei", "nokia", "zte")
TR181 = "Device."
TR098 = "InternetGatewayDevice."
IGD_WAN = "InternetGatewayDevice.WANDevice.1.WANConnectionDevice.1."
IGD_PPP = IGD_WAN + "WANPPPConnection.1."
IGD_WLAN = "InternetGatewayDevice.LANDevice.1.WLANConfiguration.1."

PLAN = Plan("fiber-300", "Fiber 300", 300, 100, vlan=100, verify=VerifyMode.DOWNLOAD_UPLOAD)
SETTINGS = {
    "pppoe": {"username": "acct-1@isp", "password": "ppp-secret"},
    "wifi": {"ssid": "Home & <Net>", "key": "wifi-key-123"},
}


def context(
    plan: Plan = PLAN, settings: dict[str, Any] | None = None, cr_password: str = "cr-secret"
) -> dict[str, Any]:
    """The same shape as the ACS's configure context."""
    return {
        "plan": plan.as_dict(),
        "order": {"id": "ord-1", "account_id": "acct-1", "network_type": "gpon", "location": {}},
        "settings": SETTINGS if settings is None else settings,
        "acs": {
            "periodic_inform_interval": 3600,
            "connection_request_username": "turnup",
            "connection_request_password": cr_password,
        },
        "device": {"serial": "ALCL1A2B3C4D"},
    }


def _common(root: str) -> list[tuple[str, str, str]]:
    ms = root + "ManagementServer."
    return [
        (ms + "PeriodicInformEnable", "true", "xsd:boolean"),
        (ms + "PeriodicInformInterval", "3600", "xsd:unsignedInt"),
        (ms + "ConnectionRequestUsername", "turnup", "xsd:string"),
        (ms + "ConnectionRequestPassword", "cr-secret", "xsd:string"),
    ]


EXPECTED_TR181 = [
    *_common(TR181),
    ("Device.Ethernet.VLANTermination.1.Enable", "true", "xsd:boolean"),
    ("Device.Ethernet.VLANTermination.1.VLANID", "100", "xsd:unsignedInt"),
    ("Device.PPP.Interface.1.Enable", "true", "xsd:boolean"),
    ("Device.PPP.Interface.1.Username", "acct-1@isp", "xsd:string"),
    ("Device.PPP.Interface.1.Password", "ppp-secret", "xsd:string"),
    ("Device.WiFi.SSID.1.SSID", "Home & <Net>", "xsd:string"),
    ("Device.WiFi.AccessPoint.1.Security.KeyPassphrase", "wifi-key-123", "xsd:string"),
]
_TR098_TAIL = [
    (IGD_PPP + "Enable", "true", "xsd:boolean"),
    (IGD_PPP + "Username", "acct-1@isp", "xsd:string"),
    (IGD_PPP + "Password", "ppp-secret", "xsd:string"),
    (IGD_WLAN + "SSID", "Home & <Net>", "xsd:string"),
    (IGD_WLAN + "KeyPassphrase", "wifi-key-123", "xsd:string"),
]
EXPECTED = {
    "nokia": EXPECTED_TR181,
    "calix": EXPECTED_TR181,
    "generic-tr181": EXPECTED_TR181,
    "huawei": [
        *_common(TR098),
        (IGD_PPP + "X_HW_VLAN", "100", "xsd:unsignedInt"),
        *_TR098_TAIL,
    ],
    "zte": [
        *_common(TR098),
        (IGD_WAN + "X_ZTE-COM_WANPONLinkConfig.VLANID", "100", "xsd:unsignedInt"),
        *_TR098_TAIL,
    ],
    "generic-tr098": [*_common(TR098), *_TR098_TAIL],  # TR-098 has no standard WAN VLAN
}


@pytest.fixture(scope="module")
def profiles() -> ProfileSet:
    return ProfileSet.load()


def triples(params: tuple[ParameterValue, ...]) -> list[tuple[str, str, str]]:
    return [(p.name, p.value, p.xsd_type) for p in params]


MINIMAL = 'name = "{name}"\ndata_model = "{model}"\n'


# ---- parsing -----------------------------------------------------------------------


def test_every_builtin_profile_parses(profiles: ProfileSet) -> None:
    assert sorted(profiles.by_name) == sorted(BUILTIN)
    for name, p in profiles.by_name.items():
        assert p.name == name
        assert p.source == f"builtin:{name}.toml"
        assert p.data_model in ("tr181", "tr098")
        assert p.entries, name
        assert all(e.path.startswith(p.root) for e in p.entries)
        assert set(p.location_paths) == {"olt", "pon_port", "onu_id", "circuit_id"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name = 'x'\n", "data_model"),
        ("name = 'x'\ndata_model = 'tr069'\n", "tr181 or tr098"),
        ("name = 'x'\ndata_model = 'tr181'\n[[set]]\nvalue = '1'\n", "path"),
        ("name = 'x'\ndata_model = 'tr181'\n[[set]]\npath = 'Device.A'\n", "value"),
        ("name = 'x'\ndata_model = 'tr181'\n[[set]]\npath = 'Device.A'\nvalue = '{{ x'\n", "x"),
        ("name = = 'x'\n", "TOMLDecodeError"),
    ],
)
def test_broken_profile_is_a_profile_error_naming_the_file(text: str, needle: str) -> None:
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "/etc/turnup/profiles/broken.toml")
    assert str(info.value).startswith("/etc/turnup/profiles/broken.toml: ")
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("tr181", "InternetGatewayDevice.ManagementServer.URL"),
        ("tr098", "Device.ManagementServer.URL"),
        ("tr181", "DeviceInfo.X"),
    ],
)
def test_path_outside_the_data_model_root_is_refused(model: str, path: str) -> None:
    text = MINIMAL.format(name="x", model=model) + f'[[set]]\npath = "{path}"\nvalue = "1"\n'
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "/etc/turnup/profiles/x.toml")
    msg = str(info.value)
    assert "/etc/turnup/profiles/x.toml" in msg
    assert "set[0].path" in msg and path in msg and "outside" in msg


# ---- selection ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vendor_id", "oui", "root", "expected"),
    [
        ("ALCL", "", TR181, "nokia"),
        ("alcl", "", TR181, "nokia"),
        ("HWTC", "", TR098, "huawei"),
        ("ZTEG", "", TR098, "zte"),
        ("CXNK", "", TR181, "calix"),
        ("FHTT", "", TR181, "generic-tr181"),
        ("FHTT", "", TR098, "generic-tr098"),
        ("", "", TR181, "generic-tr181"),
        ("", "", TR098, "generic-tr098"),
        ("", "ACD1B8", TR181, "nokia"),
        ("", "00e0fc", TR098, "huawei"),
        ("", "D0608C", TR098, "zte"),
        ("", "000631", TR181, "calix"),
        # a vendor profile only serves its own data model
        ("HWTC", "00E0FC", TR181, "generic-tr181"),
        ("ALCL", "", TR098, "generic-tr098"),
    ],
)
def test_select(profiles: ProfileSet, vendor_id: str, oui: str, root: str, expected: str) -> None:
    assert profiles.select(vendor_id, oui, "", root).name == expected


def test_select_prefers_a_product_class_match(tmp_path: Path) -> None:
    (tmp_path / "nokia-xs.toml").write_text(
        'name = "nokia-xs"\ndata_model = "tr181"\nvendor_ids = ["ALCL"]\n'
        'product_classes = ["XS-2426G-A"]\n'
    )
    ps = ProfileSet.load(tmp_path)
    assert ps.select("ALCL", "", "XS-2426G-A", TR181).name == "nokia-xs"
    assert ps.select("ALCL", "", "G-240W-F", TR181).name == "nokia"


def test_operator_profile_overrides_builtin_by_name(tmp_path: Path) -> None:
    (tmp_path / "my-nokia.toml").write_text(
        'name = "nokia"\ndescription = "ours"\ndata_model = "tr181"\nvendor_ids = ["ALCL"]\n'
        '[[set]]\npath = "Device.X_OURS.VLAN"\nvalue = "{{ plan.vlan }}"\ntype = "xsd:int"\n'
    )
    (tmp_path / "notes.txt").write_text("not a profile")
    ps = ProfileSet.load(tmp_path)
    assert sorted(ps.by_name) == sorted(BUILTIN)
    nokia = ps.select("ALCL", "", "", TR181)
    assert nokia.description == "ours"
    assert nokia.source == str(tmp_path / "my-nokia.toml")
    assert triples(nokia.render_configuration(context())) == [
        ("Device.X_OURS.VLAN", "100", "xsd:int")
    ]


def test_a_broken_operator_profile_fails_the_load_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\ndata_model = "tr181"\n[[set]]\npath = "X.Y"\nvalue = "1"\n')
    with pytest.raises(ProfileError, match=str(bad)):
        ProfileSet.load(tmp_path)


# ---- rendering ---------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN)
def test_render_full_configuration(profiles: ProfileSet, name: str) -> None:
    params = profiles.by_name[name].render_configuration(context())
    assert triples(params) == EXPECTED[name]


@pytest.mark.parametrize("name", BUILTIN)
def test_entries_skipped_when_settings_are_missing(profiles: ProfileSet, name: str) -> None:
    no_vlan = Plan("fiber-100", "Fiber 100", 100, 20, vlan=None)
    params = profiles.by_name[name].render_configuration(
        context(plan=no_vlan, settings={}, cr_password="")
    )
    names = [p.name for p in params]
    assert not any("VLAN" in n for n in names)
    assert not any("SSID" in n or "KeyPassphrase" in n for n in names)
    assert not any("PPP" in n for n in names)
    assert not any("ConnectionRequest" in n for n in names)
    root = profiles.by_name[name].root
    assert triples(params) == [
        (root + "ManagementServer.PeriodicInformEnable", "true", "xsd:boolean"),
        (root + "ManagementServer.PeriodicInformInterval", "3600", "xsd:unsignedInt"),
    ]


def test_wifi_without_key_sets_only_the_ssid(profiles: ProfileSet) -> None:
    params = profiles.by_name["nokia"].render_configuration(
        context(settings={"wifi": {"ssid": "Home"}})
    )
    names = [p.name for p in params]
    assert "Device.WiFi.SSID.1.SSID" in names
    assert "Device.WiFi.AccessPoint.1.Security.KeyPassphrase" not in names
    assert not any("PPP" in n for n in names)


def test_value_rendering_empty_or_none_is_skipped() -> None:
    text = MINIMAL.format(name="x", model="tr181") + (
        '[[set]]\npath = "Device.A"\nvalue = "{{ plan.vlan }}"\n'
        '[[set]]\npath = "Device.B"\nvalue = "  "\n'
        '[[set]]\npath = "Device.C"\nvalue = "{{ settings.nothing.here }}"\n'
        '[[set]]\npath = "Device.D"\nvalue = " kept "\n'
    )
    p = parse_profile(text, "x.toml")
    no_vlan = Plan("p", "P", 1, 1, vlan=None)
    assert triples(p.render_configuration(context(plan=no_vlan))) == [
        ("Device.D", "kept", "xsd:string")
    ]


# ---- sandbox -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ plan.__class__.__init__.__globals__ }}",
        "{{ plan._private }}",
        "{{ plan['__class__'] }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ plan|attr('__class__') }}",
    ],
)
def test_private_attribute_access_is_refused_at_load(template: str) -> None:
    text = MINIMAL.format(name="evil", model="tr181") + (
        f'[[set]]\npath = "Device.A"\nvalue = "{template}"\n'
    )
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "/etc/turnup/profiles/evil.toml")
    assert "/etc/turnup/profiles/evil.toml: set[0].value" in str(info.value)


def test_private_attribute_in_when_is_refused_at_load() -> None:
    text = MINIMAL.format(name="evil", model="tr181") + (
        '[[set]]\npath = "Device.A"\nvalue = "1"\nwhen = "plan.__class__"\n'
    )
    with pytest.raises(ProfileError, match=r"evil\.toml: set\[0\]\.when"):
        parse_profile(text, "evil.toml")


@pytest.mark.parametrize(
    "template", ["{{ plan.clear() }}", "{{ plan.update(vlan=1) }}", "{{ range(10**9)|list }}"]
)
def test_unsafe_call_at_render_is_a_clear_profile_error(template: str) -> None:
    # The sandbox refuses these at render time; the error names the profile and the
    # path, and is an ordinary exception the ACS turns into a faulted task.
    text = MINIMAL.format(name="bad", model="tr181") + (
        f'[[set]]\npath = "Device.A"\nvalue = "{template}"\n'
    )
    p = parse_profile(text, "/etc/turnup/profiles/bad.toml")
    ctx = context()
    with pytest.raises(ProfileError) as info:
        p.render_configuration(ctx)
    assert str(info.value).startswith("/etc/turnup/profiles/bad.toml: Device.A: ")
    assert ctx["plan"]["vlan"] == 100  # the immutable sandbox left the context alone


# ---- diagnostics and location ------------------------------------------------------


def test_diagnostics_tr181(profiles: ProfileSet) -> None:
    p = profiles.by_name["nokia"]
    dl = "Device.IP.Diagnostics.DownloadDiagnostics."
    ul = "Device.IP.Diagnostics.UploadDiagnostics."
    assert triples(p.diagnostics_request("download", "http://st/download?bytes=9", 0)) == [
        (dl + "DiagnosticsState", "Requested", "xsd:string"),
        (dl + "DownloadURL", "http://st/download?bytes=9", "xsd:string"),
    ]
    assert triples(p.diagnostics_request("upload", "http://st/upload", 5000)) == [
        (ul + "DiagnosticsState", "Requested", "xsd:string"),
        (ul + "UploadURL", "http://st/upload", "xsd:string"),
        (ul + "TestFileLength", "5000", "xsd:unsignedInt"),
    ]
    assert p.diagnostics_result_names("download") == tuple(
        dl + leaf
        for leaf in (
            "DiagnosticsState",
            "ROMTime",
            "BOMTime",
            "EOMTime",
            "TestBytesReceived",
            "TotalBytesReceived",
        )
    )
    assert p.diagnostics_result_names("upload")[-2:] == (
        ul + "TestFileLength",
        ul + "TotalBytesSent",
    )


def test_diagnostics_tr098(profiles: ProfileSet) -> None:
    p = profiles.by_name["huawei"]
    dl = "InternetGatewayDevice.DownloadDiagnostics."
    assert [x.name for x in p.diagnostics_request("download", "http://st/d", 0)] == [
        dl + "DiagnosticsState",
        dl + "DownloadURL",
    ]
    names = p.diagnostics_result_names("download")
    assert names[0] == dl + "DiagnosticsState"
    assert dl + "TestBytesReceived" in names
    assert all(n.startswith(dl) for n in names)
    ul = "InternetGatewayDevice.UploadDiagnostics."
    assert all(n.startswith(ul) for n in p.diagnostics_result_names("upload"))
    assert [x.name for x in p.diagnostics_request("upload", "http://st/u", 10)] == [
        ul + "DiagnosticsState",
        ul + "UploadURL",
        ul + "TestFileLength",
    ]


def test_diagnostics_values_strip_the_prefix(profiles: ProfileSet) -> None:
    p = profiles.by_name["generic-tr098"]
    dl = "InternetGatewayDevice.DownloadDiagnostics."
    params = [
        ParameterValue(dl + "DiagnosticsState", "Completed"),
        ParameterValue(dl + "TestBytesReceived", "1000", "xsd:unsignedInt"),
        ParameterValue("InternetGatewayDevice.DeviceInfo.SerialNumber", "X"),
    ]
    assert p.diagnostics_values("download", params) == {
        "DiagnosticsState": "Completed",
        "TestBytesReceived": "1000",
    }


def test_location_from(profiles: ProfileSet) -> None:
    loc = "Device.X_TURNUP_Location."
    p = profiles.by_name["nokia"]
    params = {
        loc + "OLT": "olt-7",
        loc + "PONPort": "1/1/3",
        loc + "ONUID": "12",
        loc + "CircuitID": "",
        "Device.DeviceInfo.SerialNumber": "ALCL1A2B3C4D",
    }
    assert p.location_from(params) == Location(olt="olt-7", pon_port="1/1/3", onu_id=12)
    assert p.location_from({}) == Location()
    assert p.location_from({loc + "ONUID": "twelve"}).onu_id is None
    igd = "InternetGatewayDevice.X_TURNUP_Location."
    assert profiles.by_name["zte"].location_from({igd + "CircuitID": "olt1 pon 1/1/1:5"}) == (
        Location(circuit_id="olt1 pon 1/1/1:5")
    )
