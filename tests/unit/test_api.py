"""The control API against a real Store (SQLite and PostgreSQL) and Service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from daemon.api import create_api
from daemon.clock import FakeClock
from daemon.config import ApiSettings
from daemon.core.activation import Policy
from daemon.core.events import ConfigApplied, DeviceSeen, ThroughputMeasured
from daemon.core.identity import Location
from daemon.core.plans import Plan, VerifyMode
from daemon.core.throughput import ThroughputResult
from daemon.metrics import Metrics
from daemon.service import Service
from daemon.store import Store

pytestmark = pytest.mark.anyio

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLAN = Plan("fiber-100", "Fiber 100/20", 100.0, 20.0, vlan=100, verify=VerifyMode.DOWNLOAD)


@dataclass
class Api:
    client: httpx.AsyncClient
    service: Service
    store: Store
    clock: FakeClock
    metrics: Metrics
    ready: list[bool]

    async def get(self, url: str, **kw: Any) -> httpx.Response:
        return await self.client.get(url, headers=AUTH, **kw)

    async def post(self, url: str, body: Any = None) -> httpx.Response:
        return await self.client.post(url, headers=AUTH, json=body)

    async def put(self, url: str, body: Any) -> httpx.Response:
        return await self.client.put(url, headers=AUTH, json=body)


async def _api(store: Store, metrics_public: bool = False) -> tuple[Api, httpx.AsyncClient]:
    clock = FakeClock()
    metrics = Metrics()
    service = Service(store, Policy(), clock, metrics)
    await service.load_plans([PLAN])
    ready = [False]
    app = create_api(
        service,
        store,
        ApiSettings(token=TOKEN, metrics_public=metrics_public),
        metrics,
        clock,
        lambda: ready[0],
    )
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://turnup")
    return Api(client, service, store, clock, metrics, ready), client


@pytest.fixture
async def api(store: Store) -> AsyncIterator[Api]:
    made, client = await _api(store)
    async with client:
        yield made


def order_body(order_id: str = "ORD-1", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "order_id": order_id,
        "account_id": "ACC-42",
        "plan_id": PLAN.id,
        "network_type": "gpon",
        "device": {"serial": "ALCL1A2B3C4D"},
        "location": {"olt": "olt-1", "pon_port": "1/1/3", "onu_id": 7},
        "settings": {
            "wifi": {"ssid": "Home", "key": "correct horse"},
            "pppoe": {"username": "acc42@isp", "password": "pw"},
        },
    }
    body.update(changes)
    return body


def assert_error(resp: httpx.Response, status: int, code: str, *words: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == code, body
    for word in words:
        assert word in body["message"], body["message"]
    assert "Traceback" not in resp.text


# ---- start-up, auth, probes ---------------------------------------------------


async def test_refuses_to_start_without_token(store: Store) -> None:
    clock = FakeClock()
    metrics = Metrics()
    service = Service(store, Policy(), clock, metrics)
    with pytest.raises(ValueError, match="token"):
        create_api(service, store, ApiSettings(), metrics, clock, lambda: True)


async def test_auth(api: Api) -> None:
    c = api.client
    resp = await c.get("/v1/orders")
    assert_error(resp, 401, "unauthorized", "bearer token")
    assert resp.headers["www-authenticate"] == "Bearer"
    resp = await c.get("/v1/orders", headers={"Authorization": "Bearer wrong-token-wrong-token"})
    assert_error(resp, 401, "unauthorized")
    assert resp.headers["www-authenticate"] == "Bearer"
    resp = await c.get("/v1/orders", headers={"Authorization": f"Basic {TOKEN}"})
    assert resp.status_code == 401
    resp = await c.get("/v1/orders", headers={"Authorization": "Bearer "})
    assert resp.status_code == 401
    assert (await c.get("/v1/orders", headers=AUTH)).status_code == 200
    # every /v1 route is guarded, including writes that would change state
    assert (await c.post("/v1/orders", json=order_body())).status_code == 401
    assert (await c.put("/v1/plans/x", json={})).status_code == 401
    assert (await c.get("/v1/webhooks/dead")).status_code == 401
    assert (await api.get("/v1/orders")).json()["items"] == []


async def test_probes_docs_and_metrics(api: Api) -> None:
    c = api.client
    assert (await c.get("/healthz")).json() == {"status": "ok"}
    resp = await c.get("/readyz")
    assert resp.status_code == 503
    api.ready[0] = True
    assert (await c.get("/readyz")).status_code == 200
    docs = await c.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = (await c.get("/openapi.json")).json()
    assert "/v1/orders/{order_id}" in spec["paths"]
    assert "/v1/devices/{serial}/tasks" in spec["paths"]
    assert (await c.get("/metrics")).status_code == 401
    metrics = await api.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "turnup_activations_total" in metrics.text


async def test_public_metrics(store: Store) -> None:
    _, client = await _api(store, metrics_public=True)
    async with client:
        resp = await client.get("/metrics")
        assert resp.status_code == 200
        assert "turnup_internal_errors_total" in resp.text
        assert (await client.get("/v1/orders")).status_code == 401


async def test_unknown_route_and_method_have_error_bodies(api: Api) -> None:
    assert_error(await api.get("/v1/nothing"), 404, "not_found")
    resp = await api.client.delete("/v1/orders", headers=AUTH)
    assert_error(resp, 405, "method_not_allowed")


async def test_internal_error_is_hidden_logged_and_counted(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(order_id: str) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api.service, "get_order", boom)
    resp = await api.get("/v1/orders/ORD-1")
    assert resp.status_code == 500
    assert resp.json()["error"] == "internal"
    assert "secret" not in resp.text
    counted = api.metrics.registry.get_sample_value(
        "turnup_internal_errors_total", {"adapter": "api"}
    )
    assert counted == 1


async def test_oversized_body_refused(api: Api) -> None:
    resp = await api.client.post(
        "/v1/orders",
        headers={**AUTH, "content-type": "application/json"},
        content=b'{"order_id": "' + b"x" * 2_000_000 + b'"}',
    )
    assert_error(resp, 413, "too_large")


# ---- orders -----------------------------------------------------------------


async def test_create_is_idempotent_on_order_id(api: Api) -> None:
    first = await api.post("/v1/orders", order_body())
    assert first.status_code == 201, first.text
    order = first.json()
    assert order["id"] == "ORD-1"
    assert order["state"] == "pending"
    assert order["expected_serial"] == "ALCL1A2B3C4D"

    again = await api.post("/v1/orders", order_body())
    assert again.status_code == 200
    assert again.json()["id"] == "ORD-1"
    assert again.json()["created_at"] == order["created_at"]

    other = await api.post("/v1/orders", order_body(account_id="ACC-99"))
    assert_error(other, 409, "conflict", "ORD-1")

    stored = (await api.get("/v1/orders/ORD-1")).json()
    assert stored["account_id"] == "ACC-42"
    assert len((await api.get("/v1/orders")).json()["items"]) == 1


async def test_same_order_in_another_spelling_is_the_same_request(api: Api) -> None:
    assert (await api.post("/v1/orders", order_body())).status_code == 201
    hexed = order_body(device={"serial": "414c434c1a2b3c4d"})
    assert (await api.post("/v1/orders", hexed)).status_code == 200


def _without(key: str) -> dict[str, Any]:
    body = order_body()
    del body[key]
    return body


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        (
            order_body(device=None, location=None),
            422,
            "invalid",
            ["device.serial", "location.circuit_id"],
        ),
        (
            order_body(device=None, location={"olt": "olt-1"}),
            422,
            "invalid",
            ["device.serial", "known location"],
        ),
        (order_body(device={"serial": "bad serial!"}), 422, "invalid", ["device.serial"]),
        (order_body(plan_id="gold"), 422, "unknown_plan", ["plan 'gold' is not in the catalogue"]),
        (
            order_body(settings={"wifi": {"ssid": "Home", "key": "short"}}),
            422,
            "invalid",
            ["settings.wifi.key", "8 to 63"],
        ),
        (
            order_body(settings={"wifi": {"ssid": "x" * 33, "key": "long enough"}}),
            422,
            "invalid",
            ["settings.wifi.ssid", "32 bytes"],
        ),
        (order_body(colour="blue"), 422, "invalid", ["colour", "Extra inputs"]),
        (
            order_body(device={"serial": "ALCL1A2B3C4D", "mac": "x"}),
            422,
            "invalid",
            ["device.mac"],
        ),
        (order_body(order_id="has space"), 422, "invalid", ["order_id"]),
        (order_body(order_id="x" * 65), 422, "invalid", ["order_id"]),
        (order_body(network_type="dsl"), 422, "invalid", ["network_type"]),
        (_without("account_id"), 422, "invalid", ["account_id", "Field required"]),
    ],
)
async def test_order_validation_stores_nothing(
    api: Api, body: dict[str, Any], status: int, code: str, words: list[str]
) -> None:
    resp = await api.post("/v1/orders", body)
    assert_error(resp, status, code, *words)
    if code == "invalid":
        assert isinstance(resp.json()["details"], list)
    assert (await api.get("/v1/orders")).json()["items"] == []
    assert (await api.get("/v1/events")).json()["items"] == []


async def test_not_json_body(api: Api) -> None:
    resp = await api.client.post(
        "/v1/orders", headers={**AUTH, "content-type": "application/json"}, content=b"{nope"
    )
    assert resp.status_code == 422
    assert resp.json()["error"] == "invalid"


async def test_location_only_order(api: Api) -> None:
    body = order_body("ORD-LOC", device=None, location={"circuit_id": "olt-1 xpon 0/1/3:7"})
    resp = await api.post("/v1/orders", body)
    assert resp.status_code == 201, resp.text
    order = resp.json()
    assert order["expected_serial"] is None
    assert (
        order["summary"] == "Waiting for a device to come online at circuit-id=olt-1 xpon 0/1/3:7"
    )


async def test_sixteen_hex_serial_is_normalised(api: Api) -> None:
    resp = await api.post("/v1/orders", order_body(device={"serial": "414C434C1A2B3C4D"}))
    assert resp.status_code == 201
    assert resp.json()["expected_serial"] == "ALCL1A2B3C4D"


async def test_get_order_view(api: Api) -> None:
    await api.post("/v1/orders", order_body())
    resp = await api.get("/v1/orders/ORD-1")
    assert resp.status_code == 200
    order = resp.json()
    assert [s["step"] for s in order["timeline"]] == [
        "ordered",
        "first_seen",
        "matched",
        "configured",
        "tested",
        "active",
    ]
    assert order["timeline"][0]["at"] == "2026-01-01T00:00:00Z"
    assert all(s["at"] is None for s in order["timeline"][1:])
    assert order["summary"] == (
        "Waiting for device ALCL1A2B3C4D to come online at olt=olt-1 pon=1/1/3 onu=7"
    )
    assert order["plan"] == {
        "id": "fiber-100",
        "name": "Fiber 100/20",
        "down_mbps": 100.0,
        "up_mbps": 20.0,
        "vlan": 100,
        "verify": "download",
    }
    assert order["network_type"] == "gpon"
    assert order["location"] == {
        "olt": "olt-1",
        "pon_port": "1/1/3",
        "onu_id": 7,
        "circuit_id": None,
    }
    assert order["last_error"] is None
    assert order["device"] is None
    assert [e["kind"] for e in order["events"]] == ["order.placed"]
    # secrets stay in the store
    assert order["settings"] == {
        "wifi_ssid": "Home",
        "wifi_key_set": True,
        "pppoe_username": "acc42@isp",
        "pppoe_password_set": True,
    }
    assert "correct horse" not in resp.text
    assert_error(await api.get("/v1/orders/ORD-404"), 404, "not_found", "ORD-404")


async def test_list_orders_paging_and_filter(api: Api) -> None:
    for i in range(5):
        serial = f"ALCL0000000{i}"
        body = order_body(f"ORD-{i}", device={"serial": serial})
        assert (await api.post("/v1/orders", body)).status_code == 201
    await api.post("/v1/orders/ORD-3/cancel")

    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if after:
            params["after"] = after
        page = (await api.get("/v1/orders", params=params)).json()
        pages += 1
        seen += [o["id"] for o in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert seen == [f"ORD-{i}" for i in range(5)]
    assert pages == 3

    exact = (await api.get("/v1/orders", params={"limit": 5})).json()
    assert len(exact["items"]) == 5 and exact["next"] is None

    cancelled = (await api.get("/v1/orders", params={"state": "cancelled"})).json()
    assert [o["id"] for o in cancelled["items"]] == ["ORD-3"]
    assert cancelled["items"][0]["summary"].startswith("Cancelled at 00:00:00 UTC")

    assert_error(await api.get("/v1/orders", params={"limit": 0}), 422, "invalid", "limit")
    assert_error(await api.get("/v1/orders", params={"limit": 501}), 422, "invalid", "limit")
    assert_error(await api.get("/v1/orders", params={"state": "lost"}), 422, "invalid", "state")


async def test_cancel_then_retry(api: Api) -> None:
    await api.post("/v1/orders", order_body())
    resp = await api.post("/v1/orders/ORD-1/cancel")
    assert resp.status_code == 200
    assert resp.json()["state"] == "cancelled"
    assert_error(await api.post("/v1/orders/ORD-1/retry"), 409, "not_allowed", "retry")
    assert_error(await api.post("/v1/orders/ORD-1/cancel"), 409, "not_allowed", "cancelled")
    assert_error(await api.post("/v1/orders/ORD-9/cancel"), 404, "not_found")
    assert_error(await api.post("/v1/orders/ORD-9/retry"), 404, "not_found")


def _rate(mbps: float) -> ThroughputMeasured:
    result = ThroughputResult("download", True, mbps, int(mbps * 1_250_000), 10.0, "bom-eom", "")
    return ThroughputMeasured("ORD-1", result)


async def test_summary_through_test_failed_to_active(api: Api) -> None:
    await api.service.device_seen(_seen())
    await api.post("/v1/orders", order_body())
    api.clock.advance(3600 * 19 + 60 * 20)  # 19:20
    await api.service.order_event("ORD-1", ConfigApplied("ORD-1"))
    order = (await api.get("/v1/orders/ORD-1")).json()
    assert order["state"] == "testing"
    assert order["summary"] == "Configuration applied; download test running (attempt 1 of 3)"

    await api.service.order_event("ORD-1", _rate(42.0))
    order = (await api.get("/v1/orders/ORD-1")).json()
    assert order["state"] == "test_failed"
    assert order["summary"] == (
        "Download 42.0 Mbit/s below 90% of the plan's 100 Mbit/s; retry at 19:25:00 UTC"
    )
    assert order["next_retry_at"] == "2026-01-01T19:25:00Z"
    assert order["measured_down_mbps"] == 42.0
    assert order["test_attempts"] == 1
    assert "below 90%" in order["last_error"]

    api.clock.advance(301)
    await api.service.tick()
    await api.service.order_event("ORD-1", _rate(212.4))
    order = (await api.get("/v1/orders/ORD-1")).json()
    assert order["state"] == "active"
    assert order["summary"] == "Active since 19:25:01 UTC; measured 212.4 Mbit/s down"
    steps = {s["step"]: s["at"] for s in order["timeline"]}
    assert steps["active"] == "2026-01-01T19:25:01Z"
    assert steps["tested"] == "2026-01-01T19:25:01Z"
    assert steps["configured"] == "2026-01-01T19:20:00Z"
    assert order["last_error"] is None
    kinds = [e["kind"] for e in order["events"]]
    assert kinds[0] == "order.placed" and kinds[-1] == "order.active"
    assert (await api.get("/v1/devices/ALCL1A2B3C4D")).json()["tasks"]  # config + tests queued
    assert_error(await api.post("/v1/orders/ORD-1/cancel"), 409, "not_allowed", "active")


# ---- plans -------------------------------------------------------------------


async def test_plans(api: Api) -> None:
    plans = (await api.get("/v1/plans")).json()["items"]
    assert [p["id"] for p in plans] == ["fiber-100"]
    new = {"name": "Fiber 1G", "down_mbps": 1000, "up_mbps": 500, "verify": "download_upload"}
    resp = await api.put("/v1/plans/fiber-1000", new)
    assert resp.status_code == 200, resp.text
    assert resp.json()["verify"] == "download_upload"
    got = (await api.get("/v1/plans/fiber-1000")).json()
    assert got["down_mbps"] == 1000 and got["vlan"] is None
    assert_error(await api.get("/v1/plans/none"), 404, "not_found")
    assert_error(
        await api.put("/v1/plans/bad", {**new, "down_mbps": 0}), 422, "invalid", "down_mbps"
    )
    assert_error(await api.put("/v1/plans/bad", {**new, "vlan": 5000}), 422, "invalid", "vlan")
    # the new plan is orderable at once
    body = order_body("ORD-G", plan_id="fiber-1000")
    assert (await api.post("/v1/orders", body)).status_code == 201


# ---- devices -----------------------------------------------------------------


def _seen(serial: str = "ALCL1A2B3C4D", **kw: Any) -> DeviceSeen:
    return DeviceSeen(
        serial=serial,
        source="tr069",
        vendor_id=serial[:4],
        manufacturer="Nokia",
        oui="0CE936",
        product_class="G-240W-F",
        model="G-240W-F",
        firmware="3FE49362",
        location=Location(olt="olt-1", pon_port="1/1/3", onu_id=7),
        connection_request_url="http://10.0.0.7:7547/cr",
        data_model="tr181",
        **kw,
    )


async def test_unmatched_device_then_order_binds_it(api: Api) -> None:
    await api.service.device_seen(_seen())
    api.clock.advance(90)
    await api.service.device_seen(_seen())  # routine: last_seen is batched ...
    assert await api.service.flush_sightings() == 1  # ... and written by the flusher

    page = (await api.get("/v1/devices", params={"status": "unmatched"})).json()
    assert [d["serial"] for d in page["items"]] == ["ALCL1A2B3C4D"]
    item = page["items"][0]
    assert item["first_seen"] == "2026-01-01T00:00:00Z"
    assert item["last_seen"] == "2026-01-01T00:01:30Z"
    assert item["vendor"] == "Nokia"
    assert (await api.get("/v1/devices", params={"status": "bound"})).json()["items"] == []

    resp = await api.post("/v1/orders", order_body())
    assert resp.status_code == 201, resp.text
    order = resp.json()
    assert order["state"] == "configuring"
    assert order["device_serial"] == "ALCL1A2B3C4D"
    assert order["summary"].startswith("Device ALCL1A2B3C4D found")
    steps = {s["step"]: s["at"] for s in order["timeline"]}
    assert steps["first_seen"] == "2026-01-01T00:00:00Z"
    assert steps["matched"] == "2026-01-01T00:01:30Z"
    assert order["device"]["model"] == "G-240W-F"
    assert order["device"]["firmware"] == "3FE49362"
    assert order["device"]["last_contact"] == "2026-01-01T00:01:30Z"

    # any spelling of the serial finds the device
    device = (await api.get("/v1/devices/414c434c1a2b3c4d")).json()
    assert device["status"] == "bound"
    assert device["order_id"] == "ORD-1"
    assert device["vendor_id"] == "ALCL" and device["vendor"] == "Nokia"
    assert device["connection_request_url_present"] is True
    assert "http://10.0.0.7" not in str(device)
    assert device["data_model"] == "tr181"
    assert device["last_contact_source"] == "tr069"
    assert (await api.get("/v1/devices", params={"status": "unmatched"})).json()["items"] == []
    assert_error(await api.get("/v1/devices/ZTEG00000000"), 404, "not_found")
    assert_error(await api.get("/v1/devices/bad%20serial!"), 422, "invalid", "serial")


async def test_device_paging(api: Api) -> None:
    for i in range(3):
        await api.service.device_seen(_seen(f"HWTC0000000{i}"))
    first = (await api.get("/v1/devices", params={"limit": 2})).json()
    assert [d["serial"] for d in first["items"]] == ["HWTC00000000", "HWTC00000001"]
    second = (await api.get("/v1/devices", params={"limit": 2, "after": first["next"]})).json()
    assert [d["serial"] for d in second["items"]] == ["HWTC00000002"]
    assert second["next"] is None


async def test_tasks(api: Api) -> None:
    await api.service.device_seen(_seen())
    url = "/v1/devices/alcl1a2b3c4d/tasks"
    resp = await api.post(
        url,
        {"method": "GetParameterValues", "args": {"names": ["Device.DeviceInfo."]}},
    )
    assert resp.status_code == 202, resp.text
    queued = resp.json()
    assert queued["serial"] == "ALCL1A2B3C4D" and queued["method"] == "GetParameterValues"

    spv = {
        "method": "SetParameterValues",
        "args": {
            "parameters": [
                {"name": "Device.WiFi.SSID.1.Enable", "value": True},
                {"name": "Device.WiFi.SSID.1.SSID", "value": "Home"},
            ]
        },
    }
    assert (await api.post(url, spv)).status_code == 202
    assert (await api.post(url, {"method": "Reboot"})).status_code == 202
    download = {
        "method": "Download",
        "args": {
            "url": "https://fw.example/img.bin",
            "file_type": "1 Firmware Upgrade Image",
            "password": "s3cret",
        },
    }
    assert (await api.post(url, download)).status_code == 202

    device = (await api.get("/v1/devices/ALCL1A2B3C4D")).json()
    tasks = device["tasks"]
    assert [t["method"] for t in tasks] == [
        "Download",
        "Reboot",
        "SetParameterValues",
        "GetParameterValues",
    ]
    assert tasks[-1]["id"] == queued["task_id"]
    assert tasks[-1]["state"] == "queued"
    params = tasks[2]["payload"]["args"]["parameters"]
    assert params[0] == {
        "name": "Device.WiFi.SSID.1.Enable",
        "value": "true",
        "type": "xsd:boolean",
    }
    assert params[1]["type"] == "xsd:string"
    assert tasks[0]["payload"]["args"]["password"] == "***"
    assert "s3cret" not in str(device)

    bad = [
        ({"method": "GetParameterValues", "args": {}}, "args.names: Field required"),
        ({"method": "GetParameterValues", "args": {"names": []}}, "names"),
        ({"method": "SetParameterValues", "args": {"parameters": [{"name": "A."}]}}, "value"),
        (
            {
                "method": "Download",
                "args": {"url": "ftp://x/y", "file_type": "1 Firmware Upgrade Image"},
            },
            "url",
        ),
        ({"method": "Download", "args": {"url": "http://x/y", "file_type": "9 Nope"}}, "file_type"),
        ({"method": "AddObject", "args": {"object_name": "Device.NAT.PortMapping"}}, "object_name"),
        ({"method": "Reboot", "args": {"force": True}}, "force"),
        ({"method": "SelfDestruct", "args": {}}, "method: must be one of Reboot"),
        ({"args": {}}, "method: Field required"),
    ]
    for body, word in bad:
        assert_error(await api.post(url, body), 422, "invalid", word)
    assert len((await api.get("/v1/devices/ALCL1A2B3C4D")).json()["tasks"]) == 4

    resp = await api.post("/v1/devices/ZTEG00000000/tasks", {"method": "Reboot"})
    assert_error(resp, 404, "not_found", "ZTEG00000000")


# ---- events ------------------------------------------------------------------


async def test_events_paging_and_filters(api: Api) -> None:
    await api.service.device_seen(_seen("HWTC00000001"))
    await api.post("/v1/orders", order_body())
    await api.post("/v1/orders", order_body("ORD-2", device={"serial": "ZTEG00000002"}))
    await api.post("/v1/orders/ORD-2/cancel")

    every = (await api.get("/v1/events", params={"limit": 500})).json()
    assert every["next"] is None
    ids = [e["id"] for e in every["items"]]
    assert ids == sorted(ids) and len(ids) >= 4

    seen: list[int] = []
    after = 0
    while True:
        page = (await api.get("/v1/events", params={"after": after, "limit": 1})).json()
        seen += [e["id"] for e in page["items"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == ids

    ord2 = (await api.get("/v1/events", params={"order_id": "ORD-2"})).json()["items"]
    assert [e["kind"] for e in ord2] == ["order.placed", "order.cancelled"]
    # HWTC00000001 spelled as 16 hex digits
    by_serial = await api.get("/v1/events", params={"serial": "4857544300000001"})
    kinds = [e["kind"] for e in by_serial.json()["items"]]
    assert "device.first_seen" in kinds
    assert_error(await api.get("/v1/events", params={"after": -1}), 422, "invalid", "after")


async def test_order_shows_its_last_fifty_events(api: Api) -> None:
    await api.post("/v1/orders", order_body())
    # each late answer for a step the order has left leaves one note on it
    for _ in range(60):
        await api.service.order_event("ORD-1", ConfigApplied("ORD-1"))
    events = (await api.get("/v1/orders/ORD-1")).json()["events"]
    assert len(events) == 50
    every = (await api.get("/v1/events", params={"order_id": "ORD-1", "limit": 500})).json()
    assert [e["id"] for e in events] == [e["id"] for e in every["items"]][-50:]


# ---- webhooks ----------------------------------------------------------------


async def test_dead_letters_and_redelivery(api: Api) -> None:
    now = api.clock.now()
    async with api.store.transaction() as tx:
        dead_id = await tx.add_outbox("service.activated", {"order_id": "ORD-1"}, now)
        live_id = await tx.add_outbox("device.unmatched", {"serial": "X"}, now)
    await api.store.mark_dead(dead_id, now, "HTTP 500 after 11 attempts", 500)

    dead = (await api.get("/v1/webhooks/dead")).json()["items"]
    assert [d["id"] for d in dead] == [dead_id]
    assert dead[0]["state"] == "dead"
    assert dead[0]["last_error"] == "HTTP 500 after 11 attempts"
    assert dead[0]["last_status"] == 500
    assert dead[0]["payload"] == {"order_id": "ORD-1"}

    listed = (await api.get("/v1/webhooks/outbox", params={"state": "dead"})).json()
    assert [r["id"] for r in listed["items"]] == [dead_id]
    both = (await api.get("/v1/webhooks/outbox", params={"limit": 1})).json()
    assert len(both["items"]) == 1 and both["next"] is not None
    rest = (await api.get("/v1/webhooks/outbox", params={"after": both["next"]})).json()
    assert {both["items"][0]["id"], rest["items"][0]["id"]} == {dead_id, live_id}
    assert_error(
        await api.get("/v1/webhooks/outbox", params={"state": "lost"}), 422, "invalid", "state"
    )

    resp = await api.post(f"/v1/webhooks/{dead_id}/redeliver")
    assert resp.status_code == 202
    assert resp.json() == {"id": dead_id, "state": "pending"}
    assert (await api.get("/v1/webhooks/dead")).json()["items"] == []
    assert_error(await api.post(f"/v1/webhooks/{dead_id}/redeliver"), 409, "not_dead", "pending")
    assert_error(await api.post("/v1/webhooks/msg_nothing/redeliver"), 404, "not_found")


async def test_endpoint_status_and_enable(api: Api) -> None:
    now = api.clock.now()
    async with api.store.transaction() as tx:
        await tx.add_outbox("service.activated", {"order_id": "ORD-1"}, now)
    api.clock.advance(30)
    endpoint = (await api.get("/v1/webhooks/endpoint")).json()
    assert endpoint == {
        "enabled": True,
        "disabled_reason": None,
        "outbox_depth": 1,
        "oldest_pending_age_seconds": 30.0,
    }
    await api.store.disable_endpoint(api.clock.now(), "HTTP 410 Gone")
    endpoint = (await api.get("/v1/webhooks/endpoint")).json()
    assert endpoint["enabled"] is False
    assert endpoint["disabled_reason"] == "HTTP 410 Gone"
    enabled = (await api.post("/v1/webhooks/endpoint/enable")).json()
    assert enabled["enabled"] is True and enabled["disabled_reason"] is None
