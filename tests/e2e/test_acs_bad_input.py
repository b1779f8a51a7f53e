"""The ACS against hostile and broken CPEs (issue §13), end to end on loopback.

Every case talks raw HTTP with hand-written CWMP XML (our emulators reuse our
codec, so they could not catch its mistakes) and checks three things: the wire
answer (a SOAP fault or an HTTP error), the Prometheus counter that records it,
and the stored state seen through the control API (no device from a rejected
request, the in-flight task back in the queue, the order in the right state).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import httpx
import pytest
from lxml import etree
from prometheus_client.parser import text_string_to_metric_families

from emulators.billing_receiver import BillingReceiver, running_receiver
from emulators.scenarios.harness import LabConfig, daemon_in_process, wait_until
from tests.e2e.conftest import Lab

pytestmark = pytest.mark.anyio

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ENC = "http://schemas.xmlsoap.org/soap/encoding/"
CWMP = "urn:dslforum-org:cwmp-1-0"
MALFORMED = "turnup_malformed_requests_total"
FAULTS = "turnup_cwmp_faults_total"
SESSIONS = "turnup_cwmp_sessions_total"
AUTH_FAILURES = "turnup_cwmp_auth_failures_total"
INTERNAL = "turnup_internal_errors_total"
NO_CR = "http://127.0.0.1:1/cr"  # nothing listens there: connection requests fail fast


# ---- CWMP XML, by hand --------------------------------------------------------


def envelope(inner: str, cwmp_id: str | None = "1") -> bytes:
    header = (
        "<SOAP-ENV:Header>"
        f'<cwmp:ID SOAP-ENV:mustUnderstand="1">{escape(cwmp_id)}</cwmp:ID>'
        "</SOAP-ENV:Header>"
        if cwmp_id is not None
        else ""
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP_ENV}" xmlns:SOAP-ENC="{SOAP_ENC}"'
        ' xmlns:xsd="http://www.w3.org/2001/XMLSchema"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        f' xmlns:cwmp="{CWMP}">{header}<SOAP-ENV:Body>{inner}</SOAP-ENV:Body>'
        "</SOAP-ENV:Envelope>"
    ).encode()


def parameter_list(params: Iterable[tuple[str, str]]) -> str:
    items = list(params)
    structs = "".join(
        f"<ParameterValueStruct><Name>{escape(n)}</Name>"
        f'<Value xsi:type="xsd:string">{escape(v)}</Value></ParameterValueStruct>'
        for n, v in items
    )
    return (
        f'<ParameterList SOAP-ENC:arrayType="cwmp:ParameterValueStruct[{len(items)}]">'
        f"{structs}</ParameterList>"
    )


def inform_inner(serial: str, events: Iterable[str] = ("1 BOOT",)) -> str:
    evs = list(events)
    structs = "".join(
        f"<EventStruct><EventCode>{escape(e)}</EventCode><CommandKey></CommandKey></EventStruct>"
        for e in evs
    )
    params = parameter_list(
        [
            ("Device.DeviceInfo.HardwareVersion", "3FE46541AAAA"),
            ("Device.DeviceInfo.SoftwareVersion", "3FE46606AFIB89"),
            ("Device.DeviceInfo.ModelName", "G-240W-F"),
            ("Device.ManagementServer.ConnectionRequestURL", NO_CR),
            ("Device.ManagementServer.ParameterKey", ""),
        ]
    )
    return (
        "<cwmp:Inform><DeviceId><Manufacturer>Nokia</Manufacturer><OUI>ACD1B8</OUI>"
        f"<ProductClass>G-240W-F</ProductClass><SerialNumber>{escape(serial)}</SerialNumber>"
        f'</DeviceId><Event SOAP-ENC:arrayType="cwmp:EventStruct[{len(evs)}]">{structs}</Event>'
        "<MaxEnvelopes>1</MaxEnvelopes><CurrentTime>2026-01-01T00:00:00Z</CurrentTime>"
        f"<RetryCount>0</RetryCount>{params}</cwmp:Inform>"
    )


def inform(serial: str, events: Iterable[str] = ("1 BOOT",), cwmp_id: str = "inform-1") -> bytes:
    return envelope(inform_inner(serial, events), cwmp_id)


def spv_response(cwmp_id: str | None) -> bytes:
    return envelope(
        "<cwmp:SetParameterValuesResponse><Status>0</Status></cwmp:SetParameterValuesResponse>",
        cwmp_id,
    )


def gpv_response(cwmp_id: str | None, params: Iterable[tuple[str, str]] = ()) -> bytes:
    return envelope(
        f"<cwmp:GetParameterValuesResponse>{parameter_list(params)}"
        "</cwmp:GetParameterValuesResponse>",
        cwmp_id,
    )


# TR-143 results a fast line reports (1 Gbit/s for 100 MB in 0.8 s).
DIAG_VALUES = {
    "DiagnosticsState": "Completed",
    "ROMTime": "2026-01-01T00:00:00.000000Z",
    "BOMTime": "2026-01-01T00:00:00.100000Z",
    "EOMTime": "2026-01-01T00:00:00.900000Z",
    "TestBytesReceived": "100000000",
    "TotalBytesReceived": "100000000",
    "TotalBytesSent": "100000000",
    "TestFileLength": "100000000",
}


@dataclass
class Reply:
    """An ACS answer, parsed just enough for the assertions."""

    status: int
    method: str | None = None  # local name of the Body's child ("Fault" for a SOAP fault)
    cwmp_id: str | None = None
    fault_code: int | None = None
    names: list[str] = field(default_factory=list)  # parameter names in the RPC
    raw: httpx.Response | None = None


def _texts(el: Any, expr: str) -> list[str]:
    """Stripped texts of the elements an XPath selects (lxml's xpath is loosely typed)."""
    return [(found.text or "").strip() for found in el.xpath(expr)]


def parse_reply(resp: httpx.Response) -> Reply:
    reply = Reply(resp.status_code, raw=resp)
    if not resp.content or not resp.content.lstrip().startswith(b"<"):
        return reply
    root = etree.fromstring(resp.content, etree.XMLParser(resolve_entities=False))
    ids = _texts(root, "//*[local-name()='Header']/*[local-name()='ID']")
    reply.cwmp_id = ids[0] if ids else None
    body = root.find(f"{{{SOAP_ENV}}}Body")
    assert body is not None, resp.text
    first = body[0]
    reply.method = etree.QName(first).localname
    codes = _texts(root, "//*[local-name()='detail']//*[local-name()='FaultCode']")
    if codes:
        reply.fault_code = int(codes[0])
    reply.names = _texts(first, ".//*[local-name()='Name' or local-name()='string']")
    return reply


class Cpe:
    """One hand-driven CPE: its own HTTP client, so its own cookie jar and connection."""

    def __init__(
        self,
        lab: Lab,
        serial: str,
        auth: httpx.Auth | tuple[str, str] | None = None,
    ) -> None:
        self.url = lab.running.endpoints.acs_url
        self.serial = serial
        self.http = httpx.AsyncClient(auth=auth, timeout=15.0)

    async def __aenter__(self) -> Cpe:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def post(self, body: bytes = b"", headers: dict[str, str] | None = None) -> Reply:
        resp = await self.http.post(
            self.url, content=body, headers={"content-type": "text/xml", **(headers or {})}
        )
        return parse_reply(resp)

    async def inform(self, events: Iterable[str] = ("1 BOOT",)) -> Reply:
        reply = await self.post(inform(self.serial, events))
        assert reply.status == 200 and reply.method == "InformResponse", (
            reply.raw and reply.raw.text
        )
        return reply

    async def answer(self, rpc: Reply) -> Reply:
        """Answer an ACS RPC the way a healthy CPE would."""
        if rpc.method == "SetParameterValues":
            return await self.post(spv_response(rpc.cwmp_id))
        if rpc.method == "GetParameterValues":
            values = [(n, DIAG_VALUES.get(n.rsplit(".", 1)[-1], "")) for n in rpc.names]
            return await self.post(gpv_response(rpc.cwmp_id, values))
        raise AssertionError(f"unexpected RPC {rpc.method}")

    async def finish(self, rpc: Reply) -> None:
        """Answer RPCs until the ACS closes the session with 204."""
        while rpc.status != 204:
            assert rpc.status == 200 and rpc.method not in (None, "Fault"), rpc
            rpc = await self.answer(rpc)


def cpe(lab: Lab, serial: str) -> Cpe:
    return Cpe(lab, serial, auth=("cpe", lab.config.cpe_password))


# ---- metrics, API -------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(lab: Lab) -> Samples:
    async with lab.running.client() as api:
        resp = await api.get("/metrics")
    assert resp.status_code == 200, resp.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def device(lab: Lab, serial: str) -> dict[str, Any] | None:
    async with lab.running.client() as api:
        resp = await api.get(f"/v1/devices/{serial}")
    if resp.status_code == 404:
        return None
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def tasks(lab: Lab, serial: str, kind: str = "configure") -> list[dict[str, Any]]:
    dev = await device(lab, serial)
    assert dev is not None
    return [t for t in dev["tasks"] if t["kind"] == kind]


async def order_state(lab: Lab, order_id: str) -> str:
    async with lab.running.client() as api:
        return str((await api.get(f"/v1/orders/{order_id}")).json()["state"])


async def place_order(lab: Lab, order_id: str, serial: str) -> None:
    body = {
        "order_id": order_id,
        "account_id": "acct-" + order_id,
        "plan_id": "fiber-100",
        "network_type": "gpon",
        "device": {"serial": serial},
        "settings": {
            "wifi": {"ssid": "Home-" + order_id, "key": "correct-horse-battery"},
            "pppoe": {"username": order_id + "@isp", "password": "ppp-secret"},
        },
    }
    async with lab.running.client() as api:
        resp = await api.post("/v1/orders", json=body)
    assert resp.status_code == 201, resp.text


async def configure_in_flight(lab: Lab, client: Cpe, order_id: str) -> Reply:
    """Order → Inform → empty POST: the configure SetParameterValues is on the wire."""
    await place_order(lab, order_id, client.serial)
    await client.inform()
    rpc = await client.post()
    assert rpc.status == 200 and rpc.method == "SetParameterValues", rpc
    [task] = await tasks(lab, client.serial)
    assert task["state"] == "sent" and rpc.cwmp_id == str(task["id"])
    return rpc


def assert_fault(reply: Reply, code: int) -> None:
    text = reply.raw.text if reply.raw else ""
    assert reply.status == 500, text
    assert reply.method == "Fault" and reply.fault_code == code, text


async def assert_no_device(lab: Lab, serial: str) -> None:
    assert await device(lab, serial) is None
    async with lab.running.client() as api:
        listed = (await api.get("/v1/devices")).json()["items"]
    assert serial not in [d["serial"] for d in listed]


# ---- labs with other settings -------------------------------------------------


@dataclass
class CustomLab(LabConfig):
    credentials: dict[str, str] = field(default_factory=dict)
    max_body_bytes: int | None = None

    def sections(self) -> dict[str, Any]:
        sections = super().sections()
        if self.credentials:
            sections["acs"]["credentials"] = dict(self.credentials)
        if self.max_body_bytes is not None:
            sections["acs"]["max_body_bytes"] = self.max_body_bytes
        return sections


@contextlib.asynccontextmanager
async def custom_lab(tmp_path: Path, **kw: Any) -> AsyncIterator[Lab]:
    config = CustomLab(
        workdir=tmp_path, store_url=f"sqlite+aiosqlite:///{tmp_path / 'custom.db'}", **kw
    )
    receiver = BillingReceiver(config.webhook_secret)
    async with running_receiver(receiver) as url:
        config.webhook_url = url
        async with daemon_in_process(config) as running:
            yield Lab(config, receiver, running)


class HitRecorder:
    """A loopback TCP server that records every connection (the XXE canary)."""

    def __init__(self) -> None:
        self.hits: list[bytes] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            self.hits.append(await asyncio.wait_for(reader.read(4096), 2))
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    async def __aenter__(self) -> HitRecorder:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


# ---- 1. malformed XML ---------------------------------------------------------


async def test_malformed_xml_is_400_counted_and_stores_nothing(lab: Lab) -> None:
    serial = "ALCL0BAD0001"
    good = inform(serial)
    bodies = [
        good[: len(good) // 2],  # truncated mid-element
        good.replace(b"</SOAP-ENV:Body>", b""),  # unclosed
        b"<SOAP-ENV:Envelope xmlns:SOAP-ENV='x'><<</SOAP-ENV:Envelope>",
        b"this is not xml at all",
        good.replace(b"<SerialNumber>", b"<SerialNumber>\x01"),  # control character
    ]
    before = await scrape(lab)
    async with cpe(lab, serial) as c:
        for body in bodies:
            reply = await c.post(body)
            assert reply.status == 400, reply.raw and reply.raw.text
            assert reply.raw is not None and "malformed" in reply.raw.text.lower()
    after = await scrape(lab)
    assert moved(before, after, MALFORMED, protocol="cwmp") == len(bodies)
    await assert_no_device(lab, serial)


# ---- 2. billion laughs --------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
"""


async def test_billion_laughs_is_rejected_and_counted(lab: Lab) -> None:
    serial = "ALCL0BAD0002"
    # The entity goes where the serial would be read, so an expanding parser would
    # have to build 10^9 "lol"s before it could even look at the serial.
    body = BILLION_LAUGHS + inform(serial).split(b"?>", 1)[1].replace(serial.encode(), b"&lol9;")
    before = await scrape(lab)
    async with cpe(lab, serial) as c:
        reply = await c.post(body)
        assert reply.status == 400 and reply.raw is not None
        assert "DTD" in reply.raw.text
        # the daemon is still fine: a real Inform gets its answer
        await c.inform()
    after = await scrape(lab)
    assert moved(before, after, MALFORMED, protocol="cwmp") == 1
    assert moved(before, after, INTERNAL, adapter="acs") == 0


# ---- 3. XXE -------------------------------------------------------------------


async def test_xxe_file_and_network_entities_are_rejected_without_fetching(lab: Lab) -> None:
    serial = "ALCL0BAD0003"
    inner = inform(serial).split(b"?>", 1)[1]
    async with HitRecorder() as canary:
        bodies = [
            # external general entity to a local file, used as the serial
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            + inner.replace(serial.encode(), b"&xxe;"),
            # external general entity over HTTP to our canary
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "'
            + canary.url.encode()
            + b'/general">]>'
            + inner.replace(serial.encode(), b"&xxe;"),
            # external parameter entity (fetched while reading the DTD itself)
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % ext SYSTEM "'
            + canary.url.encode()
            + b'/parameter"> %ext;]>'
            + inner,
            # external DTD subset
            b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "' + canary.url.encode() + b'/dtd">' + inner,
        ]
        before = await scrape(lab)
        async with cpe(lab, serial) as c:
            for body in bodies:
                reply = await c.post(body)
                assert reply.status == 400, reply.raw and reply.raw.text
                assert reply.raw is not None and "root:" not in reply.raw.text
        after = await scrape(lab)
        await asyncio.sleep(0.2)  # give a (wrongly) started fetch time to land
        assert canary.hits == []
    assert moved(before, after, MALFORMED, protocol="cwmp") == len(bodies)
    await assert_no_device(lab, serial)


# ---- 4. any DTD ---------------------------------------------------------------


async def test_any_dtd_is_rejected(lab: Lab) -> None:
    serial = "ALCL0BAD0004"
    inner = inform(serial).split(b"?>", 1)[1].decode()
    bodies = [
        # a bare DOCTYPE, no entities at all
        ('<?xml version="1.0"?><!DOCTYPE SOAP-ENV:Envelope>' + inner).encode(),
        # an internal subset with a harmless element declaration
        ('<?xml version="1.0"?><!DOCTYPE x [<!ELEMENT x ANY>]>' + inner).encode(),
        # the same in UTF-16, which a byte search for "<!DOCTYPE" cannot see
        ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ELEMENT x ANY>]>' + inner).encode(
            "utf-16"
        ),
    ]
    before = await scrape(lab)
    async with cpe(lab, serial) as c:
        for body in bodies:
            reply = await c.post(body)
            assert reply.status == 400, reply.raw and reply.raw.text
            assert reply.raw is not None and "DTD" in reply.raw.text
    after = await scrape(lab)
    assert moved(before, after, MALFORMED, protocol="cwmp") == len(bodies)
    await assert_no_device(lab, serial)


# ---- 5. oversized bodies ------------------------------------------------------


async def test_oversized_bodies_are_413_with_and_without_content_length(lab: Lab) -> None:
    serial = "ALCL0BAD0005"
    assert lab.running.app is not None
    limit = lab.running.app.settings.acs.max_body_bytes
    padding = b"<!-- " + b"x" * (limit + 1) + b" -->"
    body = inform(serial).replace(b"<SOAP-ENV:Body>", b"<SOAP-ENV:Body>" + padding)
    assert len(body) > limit

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 16_384):
            yield body[i : i + 16_384]

    before = await scrape(lab)
    async with cpe(lab, serial) as c:
        honest = await c.post(body)  # httpx sends the true Content-Length
        assert honest.status == 413
        resp = await c.http.post(c.url, content=chunks())  # Transfer-Encoding: chunked
        assert resp.request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in resp.request.headers
        assert resp.status_code == 413
    after = await scrape(lab)
    assert moved(before, after, MALFORMED, protocol="cwmp") == 2
    await assert_no_device(lab, serial)
    async with cpe(lab, serial) as c:  # still serving
        await c.inform()


# ---- 6. authentication --------------------------------------------------------


async def test_auth_missing_wrong_and_unknown_scheme(lab: Lab) -> None:
    serial = "ALCL0BAD0006"
    before = await scrape(lab)
    async with Cpe(lab, serial) as anonymous:
        reply = await anonymous.post(inform(serial))
        assert reply.status == 401 and reply.raw is not None
        challenges = reply.raw.headers.get_list("www-authenticate")
        schemes = sorted(ch.split(" ", 1)[0].lower() for ch in challenges)
        assert schemes == ["basic", "digest"], challenges
        digest = next(ch for ch in challenges if ch.lower().startswith("digest"))
        assert "nonce=" in digest and 'qop="auth"' in digest
        # a scheme we do not speak, with a made-up name: counted, not a new label
        reply = await anonymous.post(
            inform(serial), headers={"authorization": "Xyzzy-1234 c2VjcmV0"}
        )
        assert reply.status == 401
    mid = await scrape(lab)
    assert moved(before, mid, AUTH_FAILURES, scheme="none") == 0
    assert moved(before, mid, AUTH_FAILURES, scheme="other") == 1
    assert not any(
        name == AUTH_FAILURES and ("scheme", "xyzzy-1234") in labels for name, labels in mid
    )

    async with Cpe(lab, serial, auth=("cpe", "not-the-password")) as wrong:
        reply = await wrong.post(inform(serial))
        assert reply.status == 401
    async with Cpe(lab, serial, auth=httpx.DigestAuth("cpe", "not-the-password")) as wrong:
        reply = await wrong.post(inform(serial))
        assert reply.status == 401
    after = await scrape(lab)
    assert moved(mid, after, AUTH_FAILURES, scheme="basic") == 1
    assert moved(mid, after, AUTH_FAILURES, scheme="digest") == 1
    await assert_no_device(lab, serial)

    # the right password works over both schemes
    async with cpe(lab, serial) as c:
        await c.inform()
    async with Cpe(lab, serial, auth=httpx.DigestAuth("cpe", lab.config.cpe_password)) as c:
        await c.inform()
    assert await device(lab, serial) is not None


async def test_empty_shared_password_is_accepted(tmp_path: Path) -> None:
    serial = "ALCL0BAD0016"
    async with custom_lab(tmp_path, cpe_password="") as lab:
        async with Cpe(lab, serial, auth=("cpe", "")) as c:
            await c.inform()
        async with Cpe(lab, serial, auth=httpx.DigestAuth("cpe", "")) as c:
            await c.inform()
        before = await scrape(lab)
        async with Cpe(lab, serial, auth=("cpe", "guess")) as c:
            assert (await c.post(inform(serial))).status == 401
        async with Cpe(lab, serial) as c:  # no credentials at all is still refused
            assert (await c.post(inform(serial))).status == 401
        after = await scrape(lab)
        assert moved(before, after, AUTH_FAILURES, scheme="basic") == 1
        assert await device(lab, serial) is not None


async def test_per_device_credential_used_by_another_serial_is_403(tmp_path: Path) -> None:
    owner, other = "ALCL0BAD0026", "ALCL0BAD0027"
    creds = {owner: "per-device-secret"}
    async with custom_lab(tmp_path, credentials=creds) as lab:
        before = await scrape(lab)
        async with Cpe(lab, other, auth=(owner, "per-device-secret")) as c:
            reply = await c.post(inform(other))
            assert reply.status == 403
        async with Cpe(lab, other, auth=httpx.DigestAuth(owner, "per-device-secret")) as c:
            reply = await c.post(inform(other))
            assert reply.status == 403
        after = await scrape(lab)
        assert moved(before, after, AUTH_FAILURES, scheme="basic") == 1
        assert moved(before, after, AUTH_FAILURES, scheme="digest") == 1
        await assert_no_device(lab, other)
        async with Cpe(lab, owner, auth=(owner, "per-device-secret")) as c:
            await c.inform()  # the owner itself is welcome
        assert await device(lab, owner) is not None


# ---- 7. responses of the wrong type -------------------------------------------


async def test_response_of_the_wrong_type_faults_and_requeues(lab: Lab) -> None:
    serial = "ALCL0BAD0007"
    async with cpe(lab, serial) as c:
        rpc = await configure_in_flight(lab, c, "o-wrong-type")
        before = await scrape(lab)
        # the ACS sent SetParameterValues; a GetParameterValuesResponse is not its answer
        reply = await c.post(gpv_response(rpc.cwmp_id))
        assert_fault(reply, 8003)
        after = await scrape(lab)
        assert moved(before, after, FAULTS, direction="to_cpe", code="8003") == 1
        assert moved(before, after, SESSIONS, result="aborted") == 1
        [task] = await tasks(lab, serial)
        assert task["state"] == "queued"  # back in the queue, not lost
        assert await order_state(lab, "o-wrong-type") == "configuring"
        # the session is over: whatever comes next on it has no session
        assert_fault(await c.post(spv_response(rpc.cwmp_id)), 8005)
        # a fresh session gets the very same task
        await c.inform()
        again = await c.post()
        assert again.method == "SetParameterValues" and again.cwmp_id == rpc.cwmp_id
        await c.finish(await c.answer(again))
    assert await order_state(lab, "o-wrong-type") == "testing"


async def test_response_when_nothing_was_sent_faults(lab: Lab) -> None:
    serial = "ALCL0BAD0017"
    async with cpe(lab, serial) as c:
        await c.inform()  # no order: nothing to do for this device
        before = await scrape(lab)
        reply = await c.post(spv_response("made-up"))
        assert_fault(reply, 8003)
        after = await scrape(lab)
        assert moved(before, after, FAULTS, direction="to_cpe", code="8003") == 1
        assert moved(before, after, SESSIONS, result="aborted") == 1
        assert_fault(await c.post(), 8005)  # session ended
    dev = await device(lab, serial)
    assert dev is not None and dev["status"] == "unmatched" and dev["tasks"] == []


async def test_unknown_method_is_malformed_and_requeues(lab: Lab) -> None:
    serial = "ALCL0BAD0018"
    async with cpe(lab, serial) as c:
        rpc = await configure_in_flight(lab, c, "o-unknown-method")
        before = await scrape(lab)
        reply = await c.post(envelope("<cwmp:FrobnicateResponse/>", rpc.cwmp_id))
        assert reply.status == 400
        after = await scrape(lab)
        assert moved(before, after, MALFORMED, protocol="cwmp") == 1
        # the session is gone and its task is back in the queue at once, so the
        # CPE's next session (it retries straight away) gets it again
        [task] = await tasks(lab, serial)
        assert task["state"] == "queued"
        await c.inform()
        again = await c.post()
        assert again.method == "SetParameterValues" and again.cwmp_id == rpc.cwmp_id


# ---- 8. mismatched cwmp:ID ----------------------------------------------------


async def test_mismatched_cwmp_id_faults_8003_and_requeues(lab: Lab) -> None:
    serial = "ALCL0BAD0008"
    async with cpe(lab, serial) as c:
        rpc = await configure_in_flight(lab, c, "o-bad-id")
        before = await scrape(lab)
        reply = await c.post(spv_response(f"not-{rpc.cwmp_id}"))
        assert_fault(reply, 8003)
        after = await scrape(lab)
        assert moved(before, after, FAULTS, direction="to_cpe", code="8003") == 1
        [task] = await tasks(lab, serial)
        assert task["state"] == "queued" and task["result"] is None
        assert await order_state(lab, "o-bad-id") == "configuring"


# ---- 9. CPE drops mid-session -------------------------------------------------


async def test_cpe_dropping_mid_session_times_out_and_the_rpc_comes_back(tmp_path: Path) -> None:
    serial = "ALCL0BAD0009"
    async with custom_lab(tmp_path, session_timeout=1.0) as lab:
        before = await scrape(lab)
        async with cpe(lab, serial) as c:
            rpc = await configure_in_flight(lab, c, "o-drop")
        # ...and the CPE never answers. The sweeper expires the session.

        async def expired() -> bool:
            return moved(before, await scrape(lab), SESSIONS, result="timeout") >= 1

        assert await wait_until(expired, 20)
        after = await scrape(lab)
        assert moved(before, after, SESSIONS, result="timeout") == 1
        assert moved(before, after, SESSIONS, result="aborted") == 0  # counted once, as timeout
        assert after[("turnup_cwmp_sessions_active", frozenset())] == 0
        [task] = await tasks(lab, serial)
        assert task["state"] == "queued"
        async with cpe(lab, serial) as c:
            await c.inform()
            again = await c.post()
            assert again.method == "SetParameterValues" and again.cwmp_id == rpc.cwmp_id
            await c.finish(await c.answer(again))
        [task] = await tasks(lab, serial)
        assert task["state"] == "done"
        assert await order_state(lab, "o-drop") == "testing"


# ---- 10. duplicate Inform -----------------------------------------------------


async def test_duplicate_inform_in_one_session_faults(lab: Lab) -> None:
    serial = "ALCL0BAD000A"
    async with cpe(lab, serial) as c:
        await c.inform()
        await c.finish(await c.post())
    first = await device(lab, serial)
    assert first is not None
    async with cpe(lab, serial) as c:
        await c.inform(events=("2 PERIODIC",))
        seen = await device(lab, serial)
        assert seen is not None and seen["last_seen"] >= first["last_seen"]
        before = await scrape(lab)
        reply = await c.post(inform(serial, ("2 PERIODIC",), cwmp_id="inform-2"))
        assert_fault(reply, 8003)
        after = await scrape(lab)
        assert moved(before, after, FAULTS, direction="to_cpe", code="8003") == 1
        assert moved(before, after, SESSIONS, result="aborted") == 1
    dev = await device(lab, serial)
    assert dev is not None
    assert dev["first_seen"] == first["first_seen"] and dev["last_seen"] == seen["last_seen"]
    async with lab.running.client() as api:
        listed = (await api.get("/v1/devices")).json()["items"]
    assert [d["serial"] for d in listed].count(serial) == 1


# ---- 11. two sessions from one device -----------------------------------------


async def test_two_sessions_from_one_device_newest_wins_nothing_lost(lab: Lab) -> None:
    serial = "ALCL0BAD000B"
    order_id = "o-twice"
    async with cpe(lab, serial) as old, cpe(lab, serial) as new:
        rpc = await configure_in_flight(lab, old, order_id)
        before = await scrape(lab)
        await new.inform()  # the same device, a second session
        mid = await scrape(lab)
        assert moved(before, mid, SESSIONS, result="superseded") == 1
        assert moved(before, mid, SESSIONS, result="aborted") == 0
        [task] = await tasks(lab, serial)
        assert task["state"] == "queued"  # the old session's RPC is back in the queue
        # the old session answers late: it no longer exists
        late = await old.post(spv_response(rpc.cwmp_id))
        assert_fault(late, 8005)
        after = await scrape(lab)
        assert moved(mid, after, FAULTS, direction="to_cpe", code="8005") == 1
        [task] = await tasks(lab, serial)
        assert task["state"] == "queued" and task["result"] is None  # the late answer did nothing
        # the new session gets the same configuration and finishes the work
        again = await new.post()
        assert again.method == "SetParameterValues" and again.cwmp_id == rpc.cwmp_id
        await new.finish(await new.answer(again))
        [task] = await tasks(lab, serial)
        assert task["state"] == "done"
        assert await order_state(lab, order_id) == "testing"
    # the CPE ran its download test and reports back; the order completes
    async with cpe(lab, serial) as c:
        await c.inform(events=("8 DIAGNOSTICS COMPLETE",))
        await c.finish(await c.post())

    async def active() -> bool:
        return await order_state(lab, order_id) == "active"

    assert await wait_until(active, 20), await order_state(lab, order_id)
    dev = await device(lab, serial)
    assert dev is not None
    kinds = [t["kind"] for t in dev["tasks"]]
    assert kinds.count("configure") == 1  # requeued, never duplicated
    assert all(t["state"] == "done" for t in dev["tasks"]), dev["tasks"]


# ---- 12. no session -----------------------------------------------------------


async def test_non_inform_without_session_faults_8005(lab: Lab) -> None:
    serial = "ALCL0BAD000C"
    before = await scrape(lab)
    async with cpe(lab, serial) as c:
        assert_fault(await c.post(spv_response("1")), 8005)
        assert_fault(await c.post(), 8005)  # an empty POST with no session, too
        tc = envelope(
            "<cwmp:TransferComplete><CommandKey>x</CommandKey><FaultStruct>"
            "<FaultCode>0</FaultCode><FaultString></FaultString></FaultStruct>"
            "<StartTime>0001-01-01T00:00:00Z</StartTime>"
            "<CompleteTime>0001-01-01T00:00:00Z</CompleteTime></cwmp:TransferComplete>"
        )
        assert_fault(await c.post(tc), 8005)
    after = await scrape(lab)
    assert moved(before, after, FAULTS, direction="to_cpe", code="8005") == 3
    await assert_no_device(lab, serial)


# ---- 13. method and path ------------------------------------------------------


async def test_wrong_method_and_path(lab: Lab) -> None:
    url = httpx.URL(lab.running.endpoints.acs_url)
    async with httpx.AsyncClient(auth=("cpe", lab.config.cpe_password), timeout=10) as http:
        resp = await http.get(url)
        assert resp.status_code == 405 and resp.headers["allow"] == "POST"
        resp = await http.put(url, content=inform("ALCL0BAD000D"))
        assert resp.status_code == 405
        resp = await http.post(url.copy_with(path="/not-the-acs"), content=inform("ALCL0BAD000D"))
        assert resp.status_code == 404
        resp = await http.get(url.copy_with(path="/"))
        assert resp.status_code == 404
    await assert_no_device(lab, "ALCL0BAD000D")


# ---- fuzz ---------------------------------------------------------------------


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        pos = rng.randrange(len(buf))
        if op < 0.4:
            buf[pos] = rng.randrange(256)
        elif op < 0.7:
            del buf[pos : pos + rng.randint(1, 40)]
        else:
            buf[pos:pos] = rng.choice([b"<", b">", b"&", b"&amp;", b"]]>", b"\x00", b"<x>"])
    return bytes(buf)


async def test_random_bodies_never_break_the_acs(lab: Lab) -> None:
    rng = random.Random(1)
    template = inform("ALCL0F0220AA")
    bodies: list[bytes] = []
    for i in range(50):
        if i % 2 == 0:
            bodies.append(rng.randbytes(rng.randint(1, 3000)))
        else:
            bodies.append(_mutate(rng, template))
    before = await scrape(lab)
    async with cpe(lab, "ALCL0F0220AA") as c:
        for body in bodies:
            reply = await c.post(body)
            if reply.status >= 500:
                assert reply.status == 500 and reply.method == "Fault", (body, reply)
            else:
                assert reply.status in (200, 204, 400, 401, 403, 413), (body, reply)
    after = await scrape(lab)
    assert moved(before, after, INTERNAL, adapter="acs") == 0
    assert moved(before, after, MALFORMED, protocol="cwmp") >= 25
    async with cpe(lab, "ALCL0F0220BB") as c:  # still serving
        await c.inform()
        assert (await c.post()).status == 204
