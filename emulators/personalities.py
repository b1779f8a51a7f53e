"""Vendor personalities of emulated ONTs/CPEs and their TR-069 parameter trees.

Owns: the four personalities (Nokia, Huawei, ZTE, Calix), the `Param` leaf type and
`build_tree()`, which lays out the exact parameter paths our ACS vendor profiles write
(TR-181 `Device.` for Nokia/Calix, TR-098 `InternetGatewayDevice.` for Huawei/ZTE).
Rules: this module knows nothing of the daemon's code; it is an independent model of
what real devices expose, so it can catch our ACS's mistakes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

UNKNOWN_TIME = "0001-01-01T00:00:00Z"  # TR-069 A.2.1: the "unknown time" value

XSD_STRING = "xsd:string"
XSD_BOOLEAN = "xsd:boolean"
XSD_UINT = "xsd:unsignedInt"
XSD_INT = "xsd:int"
XSD_DATETIME = "xsd:dateTime"


@dataclass(slots=True)
class Param:
    """One leaf of the data model."""

    value: str
    xsd: str = XSD_STRING
    writable: bool = False

    def copy(self) -> Param:
        return Param(self.value, self.xsd, self.writable)


@dataclass(frozen=True, slots=True)
class Location:
    """Where the ONT hangs in the access network (reported read-only in every Inform)."""

    olt: str
    pon_port: str
    onu_id: int
    circuit_id: str


@dataclass(frozen=True, slots=True)
class Personality:
    name: str
    vendor_id: str  # 4 ASCII letters, the GPON serial prefix
    manufacturer: str
    oui: str
    product_class: str
    model_name: str
    root: str  # "Device." (TR-181) or "InternetGatewayDevice." (TR-098)
    software_version: str
    hardware_version: str = "1.0"
    # Vendor-specific leaves, paths relative to `root`: (value, xsd type, writable).
    tree: Mapping[str, tuple[str, str, bool]] = field(default_factory=dict)

    @property
    def is_tr181(self) -> bool:
        return self.root == "Device."

    @property
    def diag_complete_state(self) -> str:
        # TR-181 says "Complete", TR-098 says "Completed" (TR-143 / TR-098 Amd 2).
        return "Complete" if self.is_tr181 else "Completed"

    def diag_prefix(self, kind: str) -> str:
        """`kind` is "Download" or "Upload"."""
        if self.is_tr181:
            return f"Device.IP.Diagnostics.{kind}Diagnostics."
        return f"InternetGatewayDevice.{kind}Diagnostics."


_HW_VLAN = "WANDevice.1.WANConnectionDevice.1.WANPPPConnection.1.X_HW_VLAN"
_ZTE_VLAN = "WANDevice.1.WANConnectionDevice.1.X_ZTE-COM_WANPONLinkConfig.VLANID"

PERSONALITIES: dict[str, Personality] = {
    "nokia": Personality(
        name="nokia",
        vendor_id="ALCL",
        manufacturer="Nokia",
        oui="ACD1B8",
        product_class="G-240W-F",
        model_name="G-240W-F",
        root="Device.",
        software_version="3FE46606AFIB89",
        hardware_version="3FE46541AAAA",
        tree={"DeviceInfo.X_ALU-COM_ServiceManage.WebEnable": ("false", XSD_BOOLEAN, True)},
    ),
    "calix": Personality(
        name="calix",
        vendor_id="CXNK",
        manufacturer="Calix",
        oui="000631",
        product_class="GigaSpire-u6",
        model_name="GS4220E",
        root="Device.",
        software_version="23.4.0.1.25",
        hardware_version="3000276410",
        tree={"X_000631_Device.ManagedByCloud": ("false", XSD_BOOLEAN, True)},
    ),
    "huawei": Personality(
        name="huawei",
        vendor_id="HWTC",
        manufacturer="Huawei Technologies Co., Ltd",
        oui="00E0FC",
        product_class="HG8245H",
        model_name="HG8245H",
        root="InternetGatewayDevice.",
        software_version="V3R017C10S135",
        hardware_version="4F07.A",
        tree={_HW_VLAN: ("0", XSD_UINT, True)},
    ),
    "zte": Personality(
        name="zte",
        vendor_id="ZTEG",
        manufacturer="ZTE",
        oui="D0608C",
        product_class="F670L",
        model_name="F670L",
        root="InternetGatewayDevice.",
        software_version="V9.0.11P1N12",
        hardware_version="V9.0",
        tree={_ZTE_VLAN: ("0", XSD_UINT, True)},
    ),
}


def get_personality(name: str) -> Personality:
    try:
        return PERSONALITIES[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown personality {name!r}; known: {', '.join(sorted(PERSONALITIES))}"
        ) from None


def location_paths(root: str) -> tuple[str, str, str, str]:
    base = f"{root}X_TURNUP_Location."
    return (f"{base}OLT", f"{base}PONPort", f"{base}ONUID", f"{base}CircuitID")


def inform_parameter_names(personality: Personality, has_location: bool) -> list[str]:
    """The parameters every Inform carries (TR-069 Table 7 forced-inform style)."""
    r = personality.root
    names = [
        f"{r}DeviceInfo.HardwareVersion",
        f"{r}DeviceInfo.SoftwareVersion",
        f"{r}ManagementServer.ConnectionRequestURL",
        f"{r}ManagementServer.ParameterKey",
    ]
    if has_location:
        names.extend(location_paths(r))
    return names


def _diag_leaves(prefix: str, kind: str) -> dict[str, Param]:
    t: dict[str, Param] = {
        f"{prefix}DiagnosticsState": Param("None", XSD_STRING, True),
        f"{prefix}Interface": Param("", XSD_STRING, True),
    }
    if kind == "Download":
        t[f"{prefix}DownloadURL"] = Param("", XSD_STRING, True)
    else:
        t[f"{prefix}UploadURL"] = Param("", XSD_STRING, True)
        t[f"{prefix}TestFileLength"] = Param("0", XSD_UINT, True)
    t[f"{prefix}ROMTime"] = Param(UNKNOWN_TIME, XSD_DATETIME)
    t[f"{prefix}BOMTime"] = Param(UNKNOWN_TIME, XSD_DATETIME)
    t[f"{prefix}EOMTime"] = Param(UNKNOWN_TIME, XSD_DATETIME)
    if kind == "Download":
        t[f"{prefix}TestBytesReceived"] = Param("0", XSD_UINT)
        t[f"{prefix}TotalBytesReceived"] = Param("0", XSD_UINT)
    else:
        t[f"{prefix}TotalBytesSent"] = Param("0", XSD_UINT)
    return t


def build_tree(
    personality: Personality,
    serial: str,
    acs_url: str,
    cr_url: str,
    location: Location | None = None,
    *,
    username: str | None = None,
    password: str = "",
) -> dict[str, Param]:
    """The full parameter tree of a freshly booted (or factory reset) device."""
    p = personality
    r = p.root
    t: dict[str, Param] = {
        f"{r}DeviceInfo.Manufacturer": Param(p.manufacturer),
        f"{r}DeviceInfo.ManufacturerOUI": Param(p.oui),
        f"{r}DeviceInfo.ProductClass": Param(p.product_class),
        f"{r}DeviceInfo.SerialNumber": Param(serial),
        f"{r}DeviceInfo.SoftwareVersion": Param(p.software_version),
        f"{r}DeviceInfo.HardwareVersion": Param(p.hardware_version),
        f"{r}DeviceInfo.ModelName": Param(p.model_name),
        f"{r}ManagementServer.URL": Param(acs_url, XSD_STRING, True),
        f"{r}ManagementServer.Username": Param(
            serial if username is None else username, XSD_STRING, True
        ),
        f"{r}ManagementServer.Password": Param(password, XSD_STRING, True),
        f"{r}ManagementServer.PeriodicInformEnable": Param("false", XSD_BOOLEAN, True),
        f"{r}ManagementServer.PeriodicInformInterval": Param("86400", XSD_UINT, True),
        f"{r}ManagementServer.ConnectionRequestURL": Param(cr_url),
        f"{r}ManagementServer.ConnectionRequestUsername": Param(serial, XSD_STRING, True),
        f"{r}ManagementServer.ConnectionRequestPassword": Param("", XSD_STRING, True),
        f"{r}ManagementServer.ParameterKey": Param(""),
    }
    ssid = f"{p.vendor_id}-{serial[-4:]}"
    if p.is_tr181:
        t.update(
            {
                "Device.Ethernet.VLANTermination.1.Enable": Param("false", XSD_BOOLEAN, True),
                "Device.Ethernet.VLANTermination.1.VLANID": Param("0", XSD_UINT, True),
                "Device.PPP.Interface.1.Enable": Param("false", XSD_BOOLEAN, True),
                "Device.PPP.Interface.1.Username": Param("", XSD_STRING, True),
                "Device.PPP.Interface.1.Password": Param("", XSD_STRING, True),
                "Device.WiFi.SSID.1.Enable": Param("true", XSD_BOOLEAN, True),
                "Device.WiFi.SSID.1.SSID": Param(ssid, XSD_STRING, True),
                "Device.WiFi.AccessPoint.1.Security.ModeEnabled": Param(
                    "WPA2-Personal", XSD_STRING, True
                ),
                "Device.WiFi.AccessPoint.1.Security.KeyPassphrase": Param("", XSD_STRING, True),
            }
        )
    else:
        ppp = "InternetGatewayDevice.WANDevice.1.WANConnectionDevice.1.WANPPPConnection.1."
        wlan = "InternetGatewayDevice.LANDevice.1.WLANConfiguration.1."
        t.update(
            {
                f"{ppp}Enable": Param("false", XSD_BOOLEAN, True),
                f"{ppp}Username": Param("", XSD_STRING, True),
                f"{ppp}Password": Param("", XSD_STRING, True),
                f"{wlan}Enable": Param("true", XSD_BOOLEAN, True),
                f"{wlan}SSID": Param(ssid, XSD_STRING, True),
                f"{wlan}KeyPassphrase": Param("", XSD_STRING, True),
            }
        )
    for kind in ("Download", "Upload"):
        t.update(_diag_leaves(p.diag_prefix(kind), kind))
    for rel, (value, xsd, writable) in p.tree.items():
        t[f"{r}{rel}"] = Param(value, xsd, writable)
    if location is not None:
        olt, port, onu, circuit = location_paths(r)
        t[olt] = Param(location.olt)
        t[port] = Param(location.pon_port)
        t[onu] = Param(str(location.onu_id), XSD_UINT)
        t[circuit] = Param(location.circuit_id)
    return t


# Leaves a real CPE never reveals: GetParameterValues returns "" (TR-181 / TR-098 say
# "When read, this parameter returns an empty string, regardless of the actual value").
SECRET_SUFFIXES = ("Password", "KeyPassphrase")


def is_secret(path: str) -> bool:
    return path.endswith(SECRET_SUFFIXES)
