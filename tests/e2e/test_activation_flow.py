"""The whole path on loopback: emulated CPEs → ACS → core → store → webhooks."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from emulators.cpe import DeviceSpec, EmulatedCpe, Location
from emulators.fleet import Fleet
from emulators.scenarios.harness import wait_until
from tests.e2e.conftest import Lab

pytestmark = pytest.mark.anyio

LOC = Location("olt-e2e", "1/1/1", 1, "olt-e2e xpon 1/1/1:1")
SERIALS = {
    "nokia": "ALCL00E2E001",
    "huawei": "HWTC00E2E002",
    "zte": "ZTEG00E2E003",
    "calix": "CXNK00E2E004",
}
VLAN_PATH = {
    "nokia": "Device.Ethernet.VLANTermination.1.VLANID",
    "calix": "Device.Ethernet.VLANTermination.1.VLANID",
    "huawei": "InternetGatewayDevice.WANDevice.1.WANConnectionDevice.1.WANPPPConnection.1.X_HW_VLAN",
    "zte": "InternetGatewayDevice.WANDevice.1.WANConnectionDevice.1.X_ZTE-COM_WANPONLinkConfig.VLANID",
}
SSID_PATH = {
    "nokia": "Device.WiFi.SSID.1.SSID",
    "calix": "Device.WiFi.SSID.1.SSID",
    "huawei": "InternetGatewayDevice.LANDevice.1.WLANConfiguration.1.SSID",
    "zte": "InternetGatewayDevice.LANDevice.1.WLANConfiguration.1.SSID",
}


def spec(
    serial: str,
    vendor: str,
    *,
    down: float = 400,  # 4x the plan: scheduling noise on a busy CI box never fails a good line
    up: float = 40,
    location: Location | None = LOC,
    auth: str = "digest",
    **kw: Any,
) -> DeviceSpec:
    return DeviceSpec(
        serial=serial,
        personality=vendor,
        down_mbps=down,
        up_mbps=up,
        location=location,
        username="cpe",
        password="cpe-secret",
        auth=auth,  # type: ignore[arg-type]
        **kw,
    )


def order(
    order_id: str, serial: str | None, plan: str = "fiber-100", location: Location | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "order_id": order_id,
        "account_id": "acct-" + order_id,
        "plan_id": plan,
        "network_type": "gpon",
        "settings": {
            "wifi": {"ssid": "Home-" + order_id, "key": "correct-horse-battery"},
            "pppoe": {"username": order_id + "@isp", "password": "ppp-secret"},
        },
    }
    if serial:
        body["device"] = {"serial": serial}
    if location:
        body["location"] = {
            "olt": location.olt,
            "pon_port": location.pon_port,
            "onu_id": location.onu_id,
            "circuit_id": location.circuit_id,
        }
    return body


async def state_of(lab: Lab, order_id: str) -> str:
    async with lab.running.client() as api:
        return str((await api.get(f"/v1/orders/{order_id}")).json()["state"])


async def wait_state(lab: Lab, order_id: str, state: str, timeout: float = 30) -> None:
    async def check() -> bool:
        return await state_of(lab, order_id) == state

    if not await wait_until(check, timeout):
        async with lab.running.client() as api:
            view = (await api.get(f"/v1/orders/{order_id}")).json()
        raise AssertionError(f"{order_id} is {view['state']}, not {state}: {view}")


def webhooks(lab: Lab, event_type: str) -> list[Any]:
    return [r for r in lab.receiver.events if r.event_type == event_type]


async def test_happy_path_every_vendor_profile(lab: Lab) -> None:
    e = lab.running.endpoints
    specs = [
        spec(serial, vendor, auth="basic" if vendor in ("zte", "calix") else "digest")
        for vendor, serial in SERIALS.items()
    ]
    async with lab.running.client() as api:
        for vendor, serial in SERIALS.items():
            r = await api.post("/v1/orders", json=order("o-" + vendor, serial))
            assert r.status_code == 201, r.text
    async with Fleet(e.acs_url, specs) as fleet:
        fleet.power_on()
        for vendor in SERIALS:
            await wait_state(lab, "o-" + vendor, "active")
        assert await wait_until(lambda: len(webhooks(lab, "service.activated")) == 4, 20)
        for vendor, serial in SERIALS.items():
            cpe = fleet.by_serial[serial]
            # the profile's parameter paths really reached the device
            assert cpe.get(VLAN_PATH[vendor]) == "100"
            assert cpe.get(SSID_PATH[vendor]) == "Home-o-" + vendor
    async with lab.running.client() as api:
        view = (await api.get("/v1/orders/o-huawei")).json()
    assert view["measured_down_mbps"] > 90
    steps = [s["step"] for s in view["timeline"] if s["at"]]
    assert steps == ["ordered", "first_seen", "matched", "configured", "tested", "active"]
    hooks = {r.data["order_id"]: r for r in webhooks(lab, "service.activated")}
    assert all(r.verified for r in hooks.values())
    nokia = hooks["o-nokia"].data
    assert nokia["device"]["serial"] == SERIALS["nokia"]
    assert nokia["device"]["vendor"] == "Nokia"
    assert nokia["measured"]["down_mbps"] > 90
    assert nokia["plan"]["id"] == "fiber-100"


async def test_unmatched_device_then_order_arrives(lab: Lab) -> None:
    e = lab.running.endpoints
    serial = "HWTC00E2E100"
    async with Fleet(e.acs_url, [spec(serial, "huawei")]) as fleet:
        fleet.power_on()
        assert await wait_until(lambda: webhooks(lab, "device.unmatched"), 20)
        async with lab.running.client() as api:
            dev = (await api.get(f"/v1/devices/{serial}")).json()
            assert dev["status"] == "unmatched" and dev["first_seen"]
            boots = fleet.by_serial[serial].sessions_ok
            r = await api.post("/v1/orders", json=order("o-late", serial))
            assert r.status_code == 201
        # no power cycle: a connection request brings the device back
        await wait_state(lab, "o-late", "active")
        assert fleet.by_serial[serial].connection_requests >= 1
        assert fleet.by_serial[serial].sessions_ok > boots


async def test_expected_serial_at_wrong_location(lab: Lab) -> None:
    e = lab.running.endpoints
    serial = "ZTEG00E2E200"
    elsewhere = Location("olt-other", "2/1/7", 9, "olt-other xpon 2/1/7:9")
    async with lab.running.client() as api:
        r = await api.post("/v1/orders", json=order("o-where", serial, location=LOC))
        assert r.status_code == 201
    async with Fleet(e.acs_url, [spec(serial, "zte", location=elsewhere)]) as fleet:
        fleet.power_on()
        await wait_state(lab, "o-where", "wrong_location")
        assert await wait_until(lambda: webhooks(lab, "device.wrong_location"), 20)
    async with lab.running.client() as api:
        view = (await api.get("/v1/orders/o-where")).json()
    assert "olt-other" in view["last_error"]
    assert not webhooks(lab, "service.activated")


async def test_throughput_fail_then_retry_passes(lab: Lab) -> None:
    e = lab.running.endpoints
    serial = "CXNK00E2E300"
    async with lab.running.client() as api:
        assert (await api.post("/v1/orders", json=order("o-slow", serial))).status_code == 201
    async with Fleet(e.acs_url, [spec(serial, "calix", down=40)]) as fleet:
        fleet.power_on()
        await wait_state(lab, "o-slow", "test_failed")
        async with lab.running.client() as api:
            view = (await api.get("/v1/orders/o-slow")).json()
        assert view["measured_down_mbps"] < 90
        assert "below 90%" in view["last_error"] and view["next_retry_at"]
        # the line gets fixed before the retry comes round
        cpe = fleet.by_serial[serial]
        cpe.spec = replace(cpe.spec, down_mbps=400)
        await wait_state(lab, "o-slow", "active")
    async with lab.running.client() as api:
        view = (await api.get("/v1/orders/o-slow")).json()
    assert view["measured_down_mbps"] > 90 and view["test_attempts"] == 2
    assert not webhooks(lab, "provisioning.failed")


async def test_throughput_fails_for_good_after_the_retries(lab: Lab) -> None:
    e = lab.running.endpoints
    serial = "ALCL00E2E301"
    async with lab.running.client() as api:
        assert (await api.post("/v1/orders", json=order("o-bad", serial))).status_code == 201
    async with Fleet(e.acs_url, [spec(serial, "nokia", down=30)]) as fleet:
        fleet.power_on()
        assert await wait_until(lambda: webhooks(lab, "provisioning.failed"), 30)
    failed = webhooks(lab, "provisioning.failed")[0].data
    assert failed["order_id"] == "o-bad" and failed["state"] == "test_failed"
    assert failed["measured"]["down_mbps"] < 90
    assert await state_of(lab, "o-bad") == "test_failed"


async def test_billing_down_then_back(lab: Lab) -> None:
    e = lab.running.endpoints
    serial = "HWTC00E2E400"
    lab.receiver.set_down(True)
    async with lab.running.client() as api:
        assert (await api.post("/v1/orders", json=order("o-hook", serial))).status_code == 201
    async with Fleet(e.acs_url, [spec(serial, "huawei")]) as fleet:
        fleet.power_on()
        await wait_state(lab, "o-hook", "active")
    async with lab.running.client() as api:
        assert await wait_until(lambda: len(lab.receiver.deliveries) >= 2, 20)
        pending = (await api.get("/v1/webhooks/outbox", params={"state": "pending"})).json()
        ids = {m["id"] for m in pending["items"] if m["event_type"] == "service.activated"}
        assert len(ids) == 1
        assert not webhooks(lab, "service.activated")
        lab.receiver.set_down(False)
        assert await wait_until(lambda: webhooks(lab, "service.activated"), 30)
    got = webhooks(lab, "service.activated")
    assert [r.webhook_id for r in got] == list(ids)  # the original webhook-id
    failed_attempts = [
        d for d in lab.receiver.deliveries if d.webhook_id in ids and d.status != 200
    ]
    assert failed_attempts  # it really was retried


async def test_retry_and_cancel_through_the_api(lab: Lab) -> None:
    async with lab.running.client() as api:
        assert (await api.post("/v1/orders", json=order("o-c", "ALCL00E2E500"))).status_code == 201
        r = await api.post("/v1/orders/o-c/retry")
        assert r.status_code == 409
        assert (await api.post("/v1/orders/o-c/cancel")).status_code == 200
        assert (await api.get("/v1/orders/o-c")).json()["state"] == "cancelled"


async def test_concurrent_orders_many_devices(lab: Lab) -> None:
    e = lab.running.endpoints
    specs = [spec(f"ALCL00E2{i:04X}", "nokia", location=None) for i in range(40)]
    async with lab.running.client() as api:
        for s in specs:
            r = await api.post("/v1/orders", json=order("m-" + s.serial, s.serial))
            assert r.status_code == 201
    async with Fleet(e.acs_url, specs, max_concurrent_sessions=32) as fleet:
        fleet.power_on()
        assert await wait_until(lambda: len(webhooks(lab, "service.activated")) == 40, 60)
    ids = [r.webhook_id for r in webhooks(lab, "service.activated")]
    assert len(set(ids)) == 40
    await asyncio.sleep(0)


async def test_operator_rpcs_reach_the_device(lab: Lab) -> None:
    """RPCs queued through the API go out at once (connection request), answers
    are stored on the task, and a Download ends with the CPE's TransferComplete."""
    e = lab.running.endpoints
    serial = "ALCL00E2E600"
    async with lab.running.client() as api:
        assert (await api.post("/v1/orders", json=order("o-rpc", serial))).status_code == 201
    async with Fleet(e.acs_url, [spec(serial, "nokia")]) as fleet:
        fleet.power_on()
        await wait_state(lab, "o-rpc", "active")
        cpe = fleet.by_serial[serial]
        firmware_url = e.speedtest_url + "/download?bytes=4096"
        rpcs = [
            {"method": "GetParameterValues", "args": {"names": ["Device.DeviceInfo."]}},
            {"method": "GetParameterNames", "args": {"path": "Device.WiFi.", "next_level": True}},
            {
                "method": "SetParameterValues",
                "args": {"parameters": [{"name": "Device.WiFi.SSID.1.SSID", "value": "Renamed"}]},
            },
            {
                "method": "Download",
                "args": {
                    "url": firmware_url,
                    "file_type": "1 Firmware Upgrade Image",
                    "command_key": "fw-1",
                },
            },
            {"method": "Reboot", "args": {"command_key": "after-fw"}},
            {"method": "GetParameterValues", "args": {"names": ["Device.Nope."]}},
        ]
        async with lab.running.client() as api:
            for rpc in rpcs:
                r = await api.post(f"/v1/devices/{serial}/tasks", json=rpc)
                assert r.status_code == 202, r.text

            async def settled() -> bool:
                view = (await api.get(f"/v1/devices/{serial}")).json()
                rpc_tasks = [t for t in view["tasks"] if t["kind"] == "rpc"]
                return len(rpc_tasks) == len(rpcs) and all(
                    t["state"] in ("done", "faulted") for t in rpc_tasks
                )

            assert await wait_until(settled, 30)

            async def transferred() -> bool:
                page = (await api.get("/v1/events", params={"serial": serial, "limit": 500})).json()
                return any(ev["kind"] == "device.transfer_complete" for ev in page["items"])

            assert await wait_until(transferred, 30)
            view = (await api.get(f"/v1/devices/{serial}")).json()
    by_method = {t["method"]: t for t in view["tasks"] if t["kind"] == "rpc"}
    gpv = [t for t in view["tasks"] if t["method"] == "GetParameterValues"]
    ok_gpv = next(t for t in gpv if t["state"] == "done")
    assert ok_gpv["result"]["parameters"]["Device.DeviceInfo.SerialNumber"] == serial
    bad_gpv = next(t for t in gpv if t["state"] == "faulted")
    assert "9005" in bad_gpv["fault"]  # the device's fault is kept on the task
    assert by_method["GetParameterNames"]["state"] == "done"
    assert by_method["Download"]["result"]["status"] == 1  # accepted, completes later
    assert by_method["Reboot"]["state"] == "done"
    assert cpe.get("Device.WiFi.SSID.1.SSID") == "Renamed"
    assert cpe.rpc_counts["Reboot"] == 1 and cpe.rpc_counts["Download"] == 1


async def test_lean_periodic_sessions_and_hand_over_when_work_is_queued(lab: Lab) -> None:
    """The storm client's wire-level periodic session against the real ACS: routine
    sessions end with 204 and move last_seen; when work is queued the ACS answers
    the empty POST with an RPC, the lean path hands over and a full session runs it."""
    e = lab.running.endpoints
    serial = "ALCL00E2E700"
    async with lab.running.client() as api:
        assert (await api.post("/v1/orders", json=order("o-lean", serial))).status_code == 201
    # No fleet, so no connection-request server: nothing but our own sessions reach the ACS.
    cpe = EmulatedCpe(spec(serial, "nokia"), e.acs_url, remember_auth=True)
    await cpe.run_until_idle([("0 BOOTSTRAP", "")])
    await wait_state(lab, "o-lean", "active")
    async with lab.running.client() as api:
        before = (await api.get(f"/v1/devices/{serial}")).json()["last_seen"]
        for _ in range(5):
            rec = await cpe.run_periodic_lean()
            assert rec.ok, rec.error
        assert cpe.lean_handed_over == 0

        async def moved() -> bool:
            return (await api.get(f"/v1/devices/{serial}")).json()["last_seen"] > before

        assert await wait_until(moved, 10)  # the batched last_seen write
        rpc = {"method": "GetParameterValues", "args": {"names": ["Device.DeviceInfo."]}}
        assert (await api.post(f"/v1/devices/{serial}/tasks", json=rpc)).status_code == 202
        rec = await cpe.run_periodic_lean()
        assert rec.ok, rec.error
        assert cpe.lean_handed_over == 1 and cpe.rpc_counts["GetParameterValues"] >= 1
        view = (await api.get(f"/v1/devices/{serial}")).json()
    task = next(t for t in view["tasks"] if t["kind"] == "rpc")
    assert task["state"] == "done"
    assert task["result"]["parameters"]["Device.DeviceInfo.SerialNumber"] == serial


async def test_object_rpcs_and_factory_reset_of_a_live_service(lab: Lab) -> None:
    """AddObject and DeleteObject through the API reach the device; after a
    FactoryReset the device bootstraps with its defaults and the ACS pushes the
    service configuration again. The order stays active; billing hears nothing new."""
    e = lab.running.endpoints
    serial = "ALCL00E2E800"
    async with lab.running.client() as api:
        assert (await api.post("/v1/orders", json=order("o-reset", serial))).status_code == 201
    async with Fleet(e.acs_url, [spec(serial, "nokia")]) as fleet:
        fleet.power_on()
        await wait_state(lab, "o-reset", "active")
        cpe = fleet.by_serial[serial]
        assert cpe.get(SSID_PATH["nokia"]) == "Home-o-reset"
        async with lab.running.client() as api:

            async def run(rpc: dict[str, Any]) -> dict[str, Any]:
                r = await api.post(f"/v1/devices/{serial}/tasks", json=rpc)
                assert r.status_code == 202, r.text
                task_id = r.json()["task_id"]

                async def done() -> dict[str, Any] | None:
                    view = (await api.get(f"/v1/devices/{serial}")).json()
                    task = next(t for t in view["tasks"] if t["id"] == task_id)
                    return task if task["state"] in ("done", "faulted") else None

                assert await wait_until(done, 30)
                task = await done()
                assert task is not None
                return task

            added = await run({"method": "AddObject", "args": {"object_name": "Device.WiFi.SSID."}})
            assert added["state"] == "done", added
            n = added["result"]["instance_number"]
            assert n >= 2 and f"Device.WiFi.SSID.{n}.SSID" in cpe.tree
            deleted = await run(
                {"method": "DeleteObject", "args": {"object_name": f"Device.WiFi.SSID.{n}."}}
            )
            assert deleted["state"] == "done", deleted
            assert f"Device.WiFi.SSID.{n}.SSID" not in cpe.tree

            reset = await run({"method": "FactoryReset", "args": {}})
            assert reset["state"] == "done", reset

            async def reconfigured() -> bool:
                page = (await api.get("/v1/events", params={"serial": serial, "limit": 500})).json()
                return any(ev["kind"] == "order.reconfigured" for ev in page["items"])

            assert await wait_until(reconfigured, 30)
            page = (await api.get("/v1/events", params={"serial": serial, "limit": 500})).json()
        kinds = [ev["kind"] for ev in page["items"]]
        assert "device.bootstrap_reconfigure" in kinds
        assert cpe.rpc_counts["FactoryReset"] == 1
        assert cpe.get(SSID_PATH["nokia"]) == "Home-o-reset"  # the defaults were replaced
        assert cpe.get(VLAN_PATH["nokia"]) == "100"
    assert await state_of(lab, "o-reset") == "active"
    activated = [r for r in webhooks(lab, "service.activated") if r.data["order_id"] == "o-reset"]
    assert len(activated) == 1
