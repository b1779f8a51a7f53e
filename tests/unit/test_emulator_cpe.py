"""The CPE emulator against a tiny in-test ACS (starlette on uvicorn, loopback, port 0).

The ACS here is written with plain strings and lxml, independent of daemon/tr069 and of
the emulator's own code, so both sides check each other. No timing asserts.
"""

from __future__ import annotations

import hashlib
import re
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from xml.sax.saxutils import escape

import anyio
import httpx
import pytest
import uvicorn
from lxml import etree
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from emulators.cpe import DeviceSpec, EmulatedCpe, Location
from emulators.fleet import Fleet, make_specs
from emulators.http_client import parse_challenges

pytestmark = pytest.mark.anyio

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
CWMP = "urn:dslforum-org:cwmp-1-0"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ------------------------------------------------------------------------ mini ACS


def envelope(cwmp_id: str, inner: str, ns: str = CWMP) -> bytes:
    return (
        f'<soapenv:Envelope xmlns:soapenv="{SOAP}" xmlns:cwmp="{ns}" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f'<soapenv:Header><cwmp:ID soapenv:mustUnderstand="1">{cwmp_id}</cwmp:ID>'
        f"</soapenv:Header><soapenv:Body>{inner}</soapenv:Body></soapenv:Envelope>"
    ).encode()


def spv(params: dict[str, tuple[str, str]], key: str = "k1") -> str:
    items = "".join(
        f"<ParameterValueStruct><Name>{escape(n)}</Name>"
        f'<Value xsi:type="{t}">{escape(v)}</Value></ParameterValueStruct>'
        for n, (v, t) in params.items()
    )
    return (
        f"<cwmp:SetParameterValues><ParameterList>{items}</ParameterList>"
        f"<ParameterKey>{key}</ParameterKey></cwmp:SetParameterValues>"
    )


def gpv(*names: str) -> str:
    items = "".join(f"<string>{escape(n)}</string>" for n in names)
    return (
        f"<cwmp:GetParameterValues><ParameterNames>{items}</ParameterNames>"
        "</cwmp:GetParameterValues>"
    )


def local(el: etree._Element) -> str:
    return etree.QName(el).localname


@dataclass
class AcsSession:
    serial: str
    events: list[str]
    inform_params: dict[str, str]
    queue: list[str]
    responses: list[etree._Element] = field(default_factory=list)
    transfer_complete: etree._Element | None = None
    authorizations: list[str] = field(default_factory=list)


Script = Callable[[str, list[str]], list[str]]


class MiniAcs:
    def __init__(
        self,
        script: Script | None = None,
        *,
        auth: str = "none",
        users: dict[str, str] | None = None,
    ) -> None:
        self.script: Script = script or (lambda serial, events: [])
        self.auth = auth
        self.users = users or {}
        self.sessions: list[AcsSession] = []
        self.by_sid: dict[str, AcsSession] = {}
        self.unauthorized = 0
        self.uploaded: list[int] = []
        self.nonce = uuid.uuid4().hex
        self.port = 0
        self.changed = anyio.Event()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/acs", self.acs, methods=["POST"]),
                Route("/dl", self.dl, methods=["GET"]),
                Route("/ul", self.ul, methods=["PUT", "POST"]),
            ]
        )

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if self.auth == "basic":
            import base64

            if not header.startswith("Basic "):
                return False
            user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
            return self.users.get(user) == pw
        if self.auth == "digest":
            if not header.startswith("Digest "):
                return False
            p = {m[0]: m[2] or m[3] for m in re.findall(r'(\w+)=("([^"]*)"|([^,\s]*))', header)}
            alg = p.get("algorithm", "MD5")
            h = (
                (lambda s: hashlib.sha256(s.encode()).hexdigest())
                if alg == "SHA-256"
                else (lambda s: hashlib.md5(s.encode()).hexdigest())
            )
            pw = self.users.get(p.get("username", ""))
            if pw is None or p.get("nonce") != self.nonce or p.get("uri") != "/acs":
                return False
            ha1 = h(f"{p['username']}:acs:{pw}")
            ha2 = h("POST:/acs")
            want = h(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:{p['qop']}:{ha2}")
            return p.get("response") == want
        return True

    def _challenge(self) -> Response:
        self.unauthorized += 1
        r = Response(status_code=401)
        if self.auth == "basic":
            r.headers["WWW-Authenticate"] = 'Basic realm="acs"'
        else:
            for alg in ("SHA-256", "MD5"):
                r.headers.append(
                    "WWW-Authenticate",
                    f'Digest realm="acs", qop="auth,auth-int", nonce="{self.nonce}", '
                    f'algorithm={alg}, opaque="xyz"',
                )
        return r

    async def acs(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._challenge()
        body = await request.body()
        sess = self.by_sid.get(request.cookies.get("sid", ""))
        if body.strip():
            root = etree.fromstring(body, etree.XMLParser(resolve_entities=False))
            cwmp_id = root.find(f"{{{SOAP}}}Header/*").text or ""
            rpc = root.find(f"{{{SOAP}}}Body")[0]
            method = local(rpc)
            if method == "Inform":
                serial = rpc.findtext("DeviceId/SerialNumber") or ""
                events = [e.findtext("EventCode") or "" for e in rpc.find("Event")]
                params = {
                    p.findtext("Name") or "": p.findtext("Value") or ""
                    for p in rpc.find("ParameterList")
                }
                sid = uuid.uuid4().hex
                sess = AcsSession(serial, events, params, list(self.script(serial, events)))
                sess.authorizations.append(request.headers.get("authorization", ""))
                self.by_sid[sid] = sess
                self.sessions.append(sess)
                resp = Response(
                    envelope(
                        cwmp_id,
                        "<cwmp:InformResponse><MaxEnvelopes>1</MaxEnvelopes></cwmp:InformResponse>",
                    ),
                    media_type="text/xml",
                )
                resp.set_cookie("sid", sid)
                resp.set_cookie("other", "x")  # two Set-Cookie headers
                return resp
            if sess is None:
                return Response("no session", status_code=400)
            sess.authorizations.append(request.headers.get("authorization", ""))
            if method == "TransferComplete":
                sess.transfer_complete = rpc
                return Response(
                    envelope(cwmp_id, "<cwmp:TransferCompleteResponse/>"), media_type="text/xml"
                )
            sess.responses.append(root.find(f"{{{SOAP}}}Body")[0])
        elif sess is None:
            return Response("no session", status_code=400)
        else:
            sess.authorizations.append(request.headers.get("authorization", ""))
        if sess.queue:
            return Response(
                envelope(uuid.uuid4().hex[:8], sess.queue.pop(0)), media_type="text/xml"
            )
        self.changed.set()
        self.changed = anyio.Event()
        return Response(status_code=204)

    async def dl(self, request: Request) -> Response:
        n = int(request.query_params.get("bytes", "0"))
        if request.query_params.get("chunked") == "1":

            async def gen() -> AsyncIterator[bytes]:
                left = n
                while left:
                    k = min(left, 50_000)
                    left -= k
                    yield b"x" * k

            return StreamingResponse(gen(), media_type="application/octet-stream")
        return Response(b"y" * n, media_type="application/octet-stream")

    async def ul(self, request: Request) -> Response:
        n = 0
        async for chunk in request.stream():
            n += len(chunk)
        self.uploaded.append(n)
        return Response(f"{n}", media_type="text/plain")

    def sessions_of(self, serial: str) -> list[AcsSession]:
        return [s for s in self.sessions if s.serial == serial]

    async def wait_session(self, serial: str, event: str) -> AcsSession:
        with anyio.fail_after(20):
            while True:
                for s in self.sessions_of(serial):
                    if event in s.events and not s.queue:
                        return s
                await anyio.sleep(0.02)


@asynccontextmanager
async def running(acs: MiniAcs) -> AsyncIterator[MiniAcs]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    acs.port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(acs.app(), log_level="warning", lifespan="off", access_log=False)
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            while True:
                if server.started:
                    break
                await anyio.sleep(0.01)
        try:
            yield acs
        finally:
            server.should_exit = True


def values(resp: etree._Element) -> dict[str, str]:
    return {p.findtext("Name") or "": p.findtext("Value") or "" for p in resp.find("ParameterList")}


def fault_of(resp: etree._Element) -> tuple[int, list[tuple[str, int]]]:
    assert local(resp) == "Fault"
    f = resp.find("detail")[0]
    spvf = [
        (x.findtext("ParameterName") or "", int(x.findtext("FaultCode") or 0))
        for x in f.findall("SetParameterValuesFault")
    ]
    return int(f.findtext("FaultCode") or 0), spvf


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def cpe_for(acs: MiniAcs, spec: DeviceSpec) -> EmulatedCpe:
    return EmulatedCpe(spec, f"{acs.base}/acs", retry_base=0.05, max_retries=2)


LOC = Location("olt-7", "1/1/3", 12, "olt-7 xpon 1/1/3:12")


# ---------------------------------------------------------------------- the tests


@pytest.mark.parametrize(
    ("personality", "serial", "prefix", "complete", "chunked"),
    [
        ("nokia", "ALCL1A2B3C4D", "Device.IP.Diagnostics.DownloadDiagnostics.", "Complete", "0"),
        ("huawei", "HWTC0000BEEF", "InternetGatewayDevice.DownloadDiagnostics.", "Completed", "1"),
        ("zte", "ZTEG00C0FFEE", "InternetGatewayDevice.DownloadDiagnostics.", "Completed", "0"),
        ("calix", "CXNK00ABCDEF", "Device.IP.Diagnostics.DownloadDiagnostics.", "Complete", "1"),
    ],
)
async def test_download_diagnostics(
    personality: str, serial: str, prefix: str, complete: str, chunked: str
) -> None:
    acs = MiniAcs()

    def script(_serial: str, events: list[str]) -> list[str]:
        if "0 BOOTSTRAP" in events:
            url = f"{acs.base}/dl?bytes=200000&chunked={chunked}"
            return [
                spv(
                    {
                        f"{prefix}DownloadURL": (url, "xsd:string"),
                        f"{prefix}DiagnosticsState": ("Requested", "xsd:string"),
                    },
                    key="diag-1",
                )
            ]
        if "8 DIAGNOSTICS COMPLETE" in events:
            return [gpv(prefix)]
        return []

    acs.script = script
    async with running(acs):
        spec = DeviceSpec(serial, personality, down_mbps=500, location=LOC)
        cpe = cpe_for(acs, spec)
        sessions = await cpe.run_until_idle(cpe.boot_events())

    assert sessions == 2
    boot, diag = acs.sessions
    assert boot.events == ["0 BOOTSTRAP", "1 BOOT"]
    root = "Device." if prefix.startswith("Device.") else "InternetGatewayDevice."
    assert boot.inform_params[f"{root}X_TURNUP_Location.ONUID"] == "12"
    assert boot.inform_params[f"{root}ManagementServer.ParameterKey"] == ""
    assert local(boot.responses[0]) == "SetParameterValuesResponse"
    assert boot.responses[0].findtext("Status") == "0"
    assert diag.events == ["8 DIAGNOSTICS COMPLETE"]
    assert diag.inform_params[f"{root}ManagementServer.ParameterKey"] == "diag-1"
    got = values(diag.responses[0])
    assert got[f"{prefix}DiagnosticsState"] == complete
    assert got[f"{prefix}TestBytesReceived"] == "200000"
    assert int(got[f"{prefix}TotalBytesReceived"]) > 200000
    assert ts(got[f"{prefix}EOMTime"]) > ts(got[f"{prefix}BOMTime"])
    assert ts(got[f"{prefix}BOMTime"]) >= ts(got[f"{prefix}ROMTime"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", got[f"{prefix}EOMTime"])
    assert cpe.sessions_ok == 2 and cpe.sessions_failed == 0
    assert cpe.diagnostics[-1].test_bytes == 200000


async def test_upload_diagnostics_and_quirk() -> None:
    prefix = "Device.IP.Diagnostics.UploadDiagnostics."
    acs = MiniAcs()

    def script(_serial: str, events: list[str]) -> list[str]:
        if "0 BOOTSTRAP" in events:
            return [
                spv(
                    {
                        f"{prefix}UploadURL": (f"{acs.base}/ul", "xsd:string"),
                        f"{prefix}TestFileLength": ("150000", "xsd:unsignedInt"),
                        f"{prefix}DiagnosticsState": ("Requested", "xsd:string"),
                    }
                )
            ]
        if "8 DIAGNOSTICS COMPLETE" in events:
            return [gpv(prefix)]
        return []

    acs.script = script
    async with running(acs):
        cpe = cpe_for(
            acs, DeviceSpec("ALCL00000001", "nokia", up_mbps=400, diag_quirk="missing_bom")
        )
        await cpe.run_until_idle(cpe.boot_events())
    got = values(acs.sessions[-1].responses[0])
    assert acs.uploaded == [150000]
    assert got[f"{prefix}DiagnosticsState"] == "Complete"
    assert int(got[f"{prefix}TotalBytesSent"]) >= 150000
    assert got[f"{prefix}BOMTime"] == "0001-01-01T00:00:00Z"  # the quirk


async def test_faults_unknown_and_readonly_parameters() -> None:
    acs = MiniAcs(
        lambda serial, events: [
            spv(
                {
                    "Device.Nope.Thing": ("1", "xsd:string"),
                    "Device.WiFi.SSID.1.SSID": ("changed", "xsd:string"),
                }
            ),
            spv({"Device.DeviceInfo.Manufacturer": ("Evil", "xsd:string")}),
            spv({"Device.WiFi.SSID.1.Enable": ("maybe", "xsd:boolean")}),
            gpv("Device.Nope."),
            "<cwmp:NoSuchMethod/>",
            gpv("Device.WiFi.SSID.1.SSID", "Device.ManagementServer.Password"),
        ]
    )
    async with running(acs):
        cpe = cpe_for(acs, DeviceSpec("ALCL0000F00D", "nokia", password="pw", auth="none"))
        rec = await cpe.run_session([("2 PERIODIC", "")])
    assert rec.ok, rec.error
    r = acs.sessions[0].responses
    assert fault_of(r[0]) == (9003, [("Device.Nope.Thing", 9005)])
    assert fault_of(r[1]) == (9003, [("Device.DeviceInfo.Manufacturer", 9008)])
    assert fault_of(r[2]) == (9003, [("Device.WiFi.SSID.1.Enable", 9007)])
    assert fault_of(r[3])[0] == 9005
    assert fault_of(r[4])[0] == 9000
    got = values(r[5])
    assert got["Device.WiFi.SSID.1.SSID"] == "ALCL-F00D"  # all-or-nothing: not "changed"
    assert got["Device.ManagementServer.Password"] == ""  # secrets read back empty
    assert cpe.faults_sent == 5
    # a sloppy device was not bootstrapped: its first Inform still says 0 BOOTSTRAP
    assert acs.sessions[0].events[0] == "0 BOOTSTRAP"


async def test_basic_auth_401_flow() -> None:
    acs = MiniAcs(
        lambda s, e: [gpv("InternetGatewayDevice.DeviceInfo.")],
        auth="basic",
        users={"HWTC00000001": "s3cret"},
    )
    async with running(acs):
        good = cpe_for(acs, DeviceSpec("HWTC00000001", "huawei", password="s3cret", auth="basic"))
        rec = await good.run_session(good.boot_events())
        assert rec.ok, rec.error
        bad = cpe_for(acs, DeviceSpec("HWTC00000001", "huawei", password="wrong", auth="basic"))
        bad_rec = await bad.run_session(bad.boot_events())
    assert acs.unauthorized >= 2
    assert all(a.startswith("Basic ") for a in acs.sessions[0].authorizations)
    assert values(acs.sessions[0].responses[0])[
        "InternetGatewayDevice.DeviceInfo.SerialNumber"
    ] == ("HWTC00000001")
    assert not bad_rec.ok and "401" in (bad_rec.error or "")
    assert len(acs.sessions) == 1


async def test_digest_auth_401_flow() -> None:
    acs = MiniAcs(
        lambda s, e: [gpv("Device.DeviceInfo.SerialNumber"), gpv("Device.DeviceInfo.ModelName")],
        auth="digest",
        users={"cxnk-user": 'pa:ss"word'},
    )
    async with running(acs):
        spec = DeviceSpec("CXNK0000CAFE", "calix", username="cxnk-user", password='pa:ss"word')
        cpe = cpe_for(acs, spec)
        rec = await cpe.run_session(cpe.boot_events())
        bad = cpe_for(acs, DeviceSpec("CXNK0000CAFE", "calix", username="cxnk-user", password="x"))
        bad_rec = await bad.run_session(bad.boot_events())
        basic_only = cpe_for(acs, DeviceSpec("CXNK0000CAFE", "calix", auth="basic"))
        basic_rec = await basic_only.run_session(basic_only.boot_events())
    assert rec.ok, rec.error
    auths = acs.sessions[0].authorizations
    assert len(auths) == 4  # Inform, empty POST, two RPC responses: all pre-emptive after 401
    assert all("algorithm=SHA-256" in a for a in auths)  # preferred over MD5
    assert [re.search(r"nc=(\w+)", a).group(1) for a in auths] == [  # type: ignore[union-attr]
        "00000001",
        "00000002",
        "00000003",
        "00000004",
    ]
    assert not bad_rec.ok and not basic_rec.ok
    assert "Basic" in (basic_rec.error or "")


async def test_connection_request_through_fleet_cr_server() -> None:
    def script(serial: str, events: list[str]) -> list[str]:
        if "0 BOOTSTRAP" in events:
            ms = ("Device." if serial.startswith("ALCL") else "InternetGatewayDevice.") + (
                "ManagementServer."
            )
            return [
                spv(
                    {
                        f"{ms}ConnectionRequestUsername": ("cr-user", "xsd:string"),
                        f"{ms}ConnectionRequestPassword": (f"cr-{serial}", "xsd:string"),
                    }
                )
            ]
        return []

    acs = MiniAcs(script)
    specs = make_specs(4, ["nokia", "huawei"], auth="none")
    async with running(acs), Fleet(f"{acs.base}/acs", specs, max_concurrent_sessions=2) as fleet:
        fleet.power_on()
        assert await fleet.wait_idle(time_limit=20)
        target = fleet.cpes[1]
        url = target.get("InternetGatewayDevice.ManagementServer.ConnectionRequestURL")
        assert url == fleet.cr_url(target.serial)
        async with httpx.AsyncClient() as client:
            assert (await client.get(url)).status_code == 401
            wrong = httpx.DigestAuth("cr-user", "nope")
            assert (await client.get(url, auth=wrong)).status_code == 401
            missing = fleet.cr_url("ZZZZ00000000")
            assert (await client.get(missing)).status_code == 404
            ok = await client.get(url, auth=httpx.DigestAuth("cr-user", f"cr-{target.serial}"))
            assert ok.status_code == 200
        session = await acs.wait_session(target.serial, "6 CONNECTION REQUEST")
        assert session.events == ["6 CONNECTION REQUEST"]
        assert await fleet.wait_idle(time_limit=20)
        stats = fleet.stats()
    assert stats.booted == 4 and stats.sessions_ok == 5 and stats.sessions_failed == 0
    assert stats.connection_requests == 1
    assert stats.cr_rejected == 5  # httpx asks without credentials first each time


async def test_reboot_download_add_delete_object() -> None:
    acs = MiniAcs()

    def script(_serial: str, events: list[str]) -> list[str]:
        if "0 BOOTSTRAP" in events:
            return [
                "<cwmp:AddObject><ObjectName>InternetGatewayDevice.LANDevice.1."
                "WLANConfiguration.</ObjectName><ParameterKey>add</ParameterKey></cwmp:AddObject>",
                "<cwmp:Download><CommandKey>fw-1</CommandKey><FileType>3 Vendor Configuration File"
                f"</FileType><URL>{acs.base}/dl?bytes=5000</URL><Username></Username><Password>"
                "</Password><FileSize>5000</FileSize><TargetFileName></TargetFileName>"
                "<DelaySeconds>0</DelaySeconds><SuccessURL></SuccessURL><FailureURL></FailureURL>"
                "</cwmp:Download>",
            ]
        if "7 TRANSFER COMPLETE" in events:
            return ["<cwmp:Reboot><CommandKey>rb-1</CommandKey></cwmp:Reboot>"]
        if "M Reboot" in events:
            return [
                "<cwmp:GetParameterNames><ParameterPath>InternetGatewayDevice.LANDevice.1."
                "WLANConfiguration.</ParameterPath><NextLevel>true</NextLevel>"
                "</cwmp:GetParameterNames>",
                "<cwmp:DeleteObject><ObjectName>InternetGatewayDevice.LANDevice.1."
                "WLANConfiguration.2.</ObjectName><ParameterKey>del</ParameterKey>"
                "</cwmp:DeleteObject>",
                "<cwmp:DeleteObject><ObjectName>InternetGatewayDevice.LANDevice.1."
                "WLANConfiguration.2.</ObjectName><ParameterKey>del</ParameterKey>"
                "</cwmp:DeleteObject>",
            ]
        return []

    acs.script = script
    async with running(acs):
        cpe = cpe_for(acs, DeviceSpec("ZTEG0000AAAA", "zte", location=LOC))
        await cpe.run_until_idle(cpe.boot_events())
    boot, transfer, reboot = acs.sessions
    assert boot.responses[0].findtext("InstanceNumber") == "2"
    assert boot.responses[1].findtext("Status") == "1"
    assert transfer.events == ["7 TRANSFER COMPLETE", "M Download"]
    assert transfer.transfer_complete is not None
    assert transfer.transfer_complete.findtext("CommandKey") == "fw-1"
    assert transfer.transfer_complete.findtext("FaultStruct/FaultCode") == "0"
    assert reboot.events == ["1 BOOT", "M Reboot"]
    names = [p.findtext("Name") for p in reboot.responses[0].find("ParameterList")]
    assert names == [
        "InternetGatewayDevice.LANDevice.1.WLANConfiguration.1.",
        "InternetGatewayDevice.LANDevice.1.WLANConfiguration.2.",
    ]
    assert reboot.responses[1].findtext("Status") == "0"
    assert fault_of(reboot.responses[2])[0] == 9005
    assert "InternetGatewayDevice.LANDevice.1.WLANConfiguration.2.SSID" not in cpe.tree


async def test_vendor_paths_and_inform_parameters() -> None:
    acs = MiniAcs(
        lambda s, e: (
            [
                spv(
                    {
                        "InternetGatewayDevice.WANDevice.1.WANConnectionDevice.1.WANPPPConnection.1."
                        "X_HW_VLAN": ("100", "xsd:unsignedInt"),
                        "InternetGatewayDevice.WANDevice.1.WANConnectionDevice.1.WANPPPConnection.1."
                        "Username": ("user@isp", "xsd:string"),
                    }
                )
            ]
            if s.startswith("HWTC")
            else [
                spv(
                    {
                        "InternetGatewayDevice.WANDevice.1.WANConnectionDevice.1."
                        "X_ZTE-COM_WANPONLinkConfig.VLANID": ("200", "xsd:unsignedInt"),
                        "InternetGatewayDevice.WANDevice.1.WANConnectionDevice.1.WANPPPConnection.1."
                        "X_HW_VLAN": ("100", "xsd:unsignedInt"),
                    }
                )
            ]
        )
    )
    async with running(acs):
        hw = cpe_for(acs, DeviceSpec("HWTC00000002", "huawei", location=LOC, cwmp_version="1.2"))
        zte = cpe_for(acs, DeviceSpec("ZTEG00000002", "zte"))
        assert (await hw.run_session(hw.boot_events())).ok
        assert (await zte.run_session(zte.boot_events())).ok
    hw_s, zte_s = acs.sessions
    assert hw_s.responses[0].findtext("Status") == "0"
    assert set(hw_s.inform_params) == {
        "InternetGatewayDevice.DeviceInfo.HardwareVersion",
        "InternetGatewayDevice.DeviceInfo.SoftwareVersion",
        "InternetGatewayDevice.ManagementServer.ConnectionRequestURL",
        "InternetGatewayDevice.ManagementServer.ParameterKey",
        "InternetGatewayDevice.X_TURNUP_Location.OLT",
        "InternetGatewayDevice.X_TURNUP_Location.PONPort",
        "InternetGatewayDevice.X_TURNUP_Location.ONUID",
        "InternetGatewayDevice.X_TURNUP_Location.CircuitID",
    }
    assert (
        hw.get(
            "InternetGatewayDevice.WANDevice.1.WANConnectionDevice.1.WANPPPConnection.1.X_HW_VLAN"
        )
        == "100"
    )
    # a Huawei path on a ZTE: 9005, and the ZTE VLAN stays unset
    assert fault_of(zte_s.responses[0]) == (
        9003,
        [
            (
                "InternetGatewayDevice.WANDevice.1.WANConnectionDevice.1.WANPPPConnection.1."
                "X_HW_VLAN",
                9005,
            )
        ],
    )


async def test_acs_down_is_recorded_and_retried() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    cpe = EmulatedCpe(
        DeviceSpec("ALCL0000DEAD", "nokia"),
        f"http://127.0.0.1:{port}/acs",
        retry_base=0.01,
        max_retries=2,
    )
    rec = await cpe.run_session_with_retry(cpe.boot_events())
    assert not rec.ok and rec.retryable
    assert cpe.sessions_failed == 3 and cpe.last_error
    assert not cpe.bootstrapped


async def test_periodic_storm() -> None:
    acs = MiniAcs()
    specs = make_specs(20, ["nokia", "huawei", "zte", "calix"], auth="none")
    async with running(acs), Fleet(f"{acs.base}/acs", specs, max_concurrent_sessions=64) as fleet:
        result = await fleet.periodic_storm(200, 32)
    assert result.sessions == 200 and result.ok == 200 and result.errors == 0
    assert len(acs.sessions) == 200
    assert {s.serial for s in acs.sessions} == {s.serial for s in specs}


def test_challenge_parser() -> None:
    got = parse_challenges(
        [
            'Digest realm="a, b", nonce="n1", qop="auth,auth-int", Basic realm="x"',
            'Newauth realm="apps", type=1, title="Login to \\"apps\\""',
        ]
    )
    assert got == [
        ("digest", {"realm": "a, b", "nonce": "n1", "qop": "auth,auth-int"}),
        ("basic", {"realm": "x"}),
        ("newauth", {"realm": "apps", "type": "1", "title": 'Login to "apps"'}),
    ]


async def test_factory_reset_and_schedule_inform() -> None:
    acs = MiniAcs()

    def script(_serial: str, events: list[str]) -> list[str]:
        if events == ["0 BOOTSTRAP", "1 BOOT"] and not acs.sessions:
            return [
                spv({"Device.WiFi.SSID.1.SSID": ("mine", "xsd:string")}),
                "<cwmp:ScheduleInform><DelaySeconds>1</DelaySeconds>"
                "<CommandKey>si</CommandKey></cwmp:ScheduleInform>",
            ]
        if "3 SCHEDULED" in events:
            return ["<cwmp:FactoryReset/>"]
        return []

    acs.script = script
    async with running(acs):
        cpe = cpe_for(acs, DeviceSpec("ALCL0000FACE", "nokia"))
        await cpe.run_until_idle(cpe.boot_events())
    assert [s.events for s in acs.sessions] == [
        ["0 BOOTSTRAP", "1 BOOT"],
        ["3 SCHEDULED", "M ScheduleInform"],
        ["0 BOOTSTRAP", "1 BOOT"],
    ]
    assert cpe.get("Device.WiFi.SSID.1.SSID") == "ALCL-FACE"  # back to factory value


async def test_fleet_periodic_informs() -> None:
    acs = MiniAcs()
    specs = make_specs(2, ["calix"], auth="none", first_event="2 PERIODIC")
    async with running(acs), Fleet(f"{acs.base}/acs", specs, periodic_interval=0.1) as fleet:
        fleet.power_on()
        with anyio.fail_after(20):
            while True:
                if len(acs.sessions) >= 6:
                    break
                await anyio.sleep(0.05)
    assert all(s.events == ["2 PERIODIC"] for s in acs.sessions)
    assert {s.serial for s in acs.sessions} == {s.serial for s in specs}
