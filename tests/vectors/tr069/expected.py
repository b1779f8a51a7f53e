"""Expected decoded form of every XML vector in this directory.

One table drives the decode tests, and every entry is also encoded and decoded
again. The XML files are synthetic, modelled on the TR-069 Amendment 6 Annex A
RPC definitions; each file names its source in a comment. ATTACKS must all be
refused with CwmpDecodeError.
"""

from __future__ import annotations

from daemon.tr069.codec import (
    AddObjectResponse,
    DeleteObjectResponse,
    DeviceId,
    Download,
    DownloadResponse,
    Envelope,
    EventStruct,
    FactoryResetResponse,
    Fault,
    GetParameterNamesResponse,
    GetParameterValuesResponse,
    GetRPCMethods,
    GetRPCMethodsResponse,
    Inform,
    InformResponse,
    ParameterInfo,
    ParameterValue,
    RebootResponse,
    SetParameterFault,
    SetParameterValues,
    SetParameterValuesResponse,
    TransferComplete,
)
from daemon.tr069.codec import CwmpVersion as V

PV = ParameterValue

VECTORS: dict[str, Envelope] = {
    "inform_bootstrap_tr181.xml": Envelope(
        Inform(
            device_id=DeviceId("Nokia", "ALCL", "G-010G-Q", "ALCL1A2B3C4D"),
            events=(EventStruct("0 BOOTSTRAP"), EventStruct("1 BOOT")),
            max_envelopes=1,
            current_time="2026-01-01T00:00:00+00:00",
            retry_count=0,
            parameters=(
                PV("Device.RootDataModelVersion", "2.11"),
                PV("Device.DeviceInfo.HardwareVersion", "3FE49362AAAA"),
                PV("Device.DeviceInfo.SoftwareVersion", "3FE49568HJIJ82"),
                PV("Device.DeviceInfo.ProvisioningCode", ""),
                PV(
                    "Device.ManagementServer.ConnectionRequestURL",
                    "http://100.64.12.34:7547/cr/ALCL1A2B3C4D",
                ),
                PV("Device.ManagementServer.ParameterKey", ""),
                PV("Device.DeviceInfo.UpTime", "42", "xsd:unsignedInt"),
            ),
        ),
        cwmp_id="1000",
        version=V.V1_0,
    ),
    "inform_periodic_tr098.xml": Envelope(
        Inform(
            device_id=DeviceId(
                "Huawei Technologies Co., Ltd", "00E0FC", "HG8245H", "48575443A1B2C3D4"
            ),
            events=(EventStruct("2 PERIODIC"),),
            max_envelopes=1,
            current_time="2026-01-01T12:00:00",
            retry_count=0,
            parameters=(
                PV(
                    "InternetGatewayDevice.DeviceSummary",
                    "InternetGatewayDevice:1.4[](Baseline:1, EthernetLAN:1)",
                ),
                PV("InternetGatewayDevice.DeviceInfo.SoftwareVersion", "V3R017C10S120"),
                PV(
                    "InternetGatewayDevice.ManagementServer.ConnectionRequestURL",
                    "http://10.1.2.3:7547/",
                ),
                PV(
                    "InternetGatewayDevice.WANDevice.1.WANConnectionDevice.1."
                    "WANIPConnection.1.ExternalIPAddress",
                    "10.1.2.3",
                ),
            ),
        ),
        cwmp_id=None,
        version=V.V1_2,
    ),
    "inform_diagnostics_complete.xml": Envelope(
        Inform(
            device_id=DeviceId("ZTE", "ZTEG", "F601", "ZTEGC0FFEE01"),
            events=(EventStruct("8 DIAGNOSTICS COMPLETE"),),
            max_envelopes=1,
            current_time="2026-01-02T03:04:05Z",
            retry_count=0,
            parameters=(
                PV("Device.IP.Diagnostics.DownloadDiagnostics.DiagnosticsState", "Complete"),
                PV(
                    "Device.IP.Diagnostics.DownloadDiagnostics.ROMTime",
                    "2026-01-02T03:04:00.000000Z",
                    "xsd:dateTime",
                ),
                PV(
                    "Device.IP.Diagnostics.DownloadDiagnostics.BOMTime",
                    "2026-01-02T03:04:00.100000Z",
                    "xsd:dateTime",
                ),
                PV(
                    "Device.IP.Diagnostics.DownloadDiagnostics.EOMTime",
                    "2026-01-02T03:04:02.100000Z",
                    "xsd:dateTime",
                ),
                PV(
                    "Device.IP.Diagnostics.DownloadDiagnostics.TestBytesReceived",
                    "250000000",
                    "xsd:unsignedInt",
                ),
            ),
        ),
        cwmp_id="diag-7",
        version=V.V1_4,
    ),
    "inform_sloppy.xml": Envelope(
        Inform(
            device_id=DeviceId("Calix", "CXNK", "GigaPoint", "CXNK00ABCDEF"),
            events=(
                EventStruct("6 CONNECTION REQUEST"),
                EventStruct("M Reboot", "reboot-42"),
            ),
            max_envelopes=1,
            current_time="2026-01-01T00:00:00Z",
            retry_count=3,
            parameters=(
                PV(
                    "Device.ManagementServer.ConnectionRequestURL",
                    "http://192.0.2.7:7547/cr?a=1&b=2",
                ),
                PV("Device.DeviceInfo.UpTime", "77", "xsd:unsignedInt"),
                PV("Device.DeviceInfo.Description", " keep my spaces "),
            ),
        ),
        cwmp_id="abc123",
        version=V.V1_1,
    ),
    "set_parameter_values_response.xml": Envelope(SetParameterValuesResponse(0), "11"),
    "get_parameter_values_response.xml": Envelope(
        GetParameterValuesResponse(
            (
                PV("Device.WiFi.SSID.1.SSID", "home & garden <5G>"),
                PV("Device.WiFi.SSID.1.Enable", "true", "xsd:boolean"),
                PV(
                    "Device.IP.Diagnostics.DownloadDiagnostics.TestBytesReceived",
                    "1250000000",
                    "xsd:unsignedLong",
                ),
            )
        ),
        "12",
    ),
    "get_parameter_names_response.xml": Envelope(
        GetParameterNamesResponse(
            (
                ParameterInfo("Device.WiFi.SSID.", False),
                ParameterInfo("Device.WiFi.SSID.1.SSID", True),
                ParameterInfo("Device.WiFi.SSID.1.Status", False),
            )
        ),
        "13",
    ),
    "add_object_response.xml": Envelope(AddObjectResponse(3, 0), "14"),
    "delete_object_response.xml": Envelope(DeleteObjectResponse(1), "15"),
    "reboot_response.xml": Envelope(RebootResponse(), "16"),
    "factory_reset_response.xml": Envelope(FactoryResetResponse(), "17"),
    "download_response.xml": Envelope(
        DownloadResponse(1, "0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"), "18"
    ),
    "transfer_complete.xml": Envelope(
        TransferComplete("fw-2026.01", 0, "", "2026-01-01T00:01:00Z", "2026-01-01T00:03:00Z"),
        "19",
    ),
    "get_rpc_methods.xml": Envelope(GetRPCMethods(), "20"),
    "fault_9005.xml": Envelope(
        Fault(
            9003,
            "Invalid arguments",
            (
                SetParameterFault("Device.WiFi.SSID.1.SSIDX", 9005, "Invalid parameter name"),
                SetParameterFault("Device.WiFi.SSID.1.Enable", 9007, "Invalid parameter value"),
            ),
        ),
        "21",
    ),
    "get_rpc_methods_response.xml": Envelope(
        GetRPCMethodsResponse(
            ("GetRPCMethods", "SetParameterValues", "GetParameterValues", "Download")
        ),
        "22",
    ),
    "set_parameter_values.xml": Envelope(
        SetParameterValues(
            (
                PV(
                    "Device.IP.Diagnostics.DownloadDiagnostics.DownloadURL",
                    "http://speed.example.net/250MB.bin",
                ),
                PV("Device.IP.Diagnostics.DownloadDiagnostics.DiagnosticsState", "Requested"),
            ),
            "order-17",
        ),
        "23",
    ),
    "download.xml": Envelope(
        Download(
            "fw-2026.01",
            "1 Firmware Upgrade Image",
            "http://files.example.net/fw.bin",
            file_size=123456,
        ),
        "24",
    ),
    "inform_response.xml": Envelope(InformResponse(1), "1000"),
}

ATTACKS: tuple[str, ...] = (
    "billion_laughs.xml",
    "xxe_file.xml",
    "xxe_network.xml",
    "malformed.xml",
    "deep_nesting.xml",
)
