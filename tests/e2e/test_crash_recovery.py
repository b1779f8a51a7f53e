"""`kill -9` of the daemon during activations loses nothing.

The daemon runs as a child process (`turnup run`) on fixed loopback ports.
While billing is down and activations are under way it is killed with
SIGKILL, restarted on the same store and ports, and billing comes back. Every
order must end active, and billing must get exactly one webhook id per order,
the same id it was offered before the crash.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from emulators.billing_receiver import BillingReceiver, running_receiver
from emulators.cpe import DeviceSpec
from emulators.fleet import Fleet
from emulators.scenarios.harness import LabConfig, daemon_process, free_port, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

COUNT = 30


def order_body(serial: str) -> dict[str, Any]:
    return {
        "order_id": "k-" + serial,
        "account_id": "acct",
        "plan_id": "fiber-100",
        "network_type": "gpon",
        "device": {"serial": serial},
    }


async def states(running: Any) -> dict[str, str]:
    async with running.client() as api:
        page = (await api.get("/v1/orders", params={"limit": 500})).json()
    return {o["id"]: o["state"] for o in page["items"]}


async def test_kill_9_during_activations_then_restart(tmp_path: Path) -> None:
    lab = LabConfig(
        workdir=tmp_path, ports={"api": free_port(), "acs": free_port(), "speedtest": free_port()}
    )
    lab.verification = {**lab.verification, "step_timeout_seconds": 4.0, "max_test_attempts": 3}
    receiver = BillingReceiver(lab.webhook_secret)
    receiver.set_down(True)
    vendors = [("huawei", "HWTC"), ("nokia", "ALCL"), ("zte", "ZTEG"), ("calix", "CXNK")]
    serials = [f"{vendors[i % 4][1]}00DEAD{i:02X}" for i in range(COUNT)]
    specs = [
        DeviceSpec(
            serial=s,
            personality=vendors[i % 4][0],
            down_mbps=400,
            up_mbps=40,
            username="cpe",
            password=lab.cpe_password,
            auth="digest",
        )
        for i, s in enumerate(serials)
    ]
    async with running_receiver(receiver) as hook_url:
        lab.webhook_url = hook_url
        offered_before: set[str] = set()
        async with daemon_process(lab) as first:
            async with first.client() as api:
                for s in serials:
                    assert (await api.post("/v1/orders", json=order_body(s))).status_code == 201
            fleet = Fleet(
                first.endpoints.acs_url,
                specs,
                max_concurrent_sessions=8,
                cpe_options={"retry_base": 0.2, "retry_cap": 1.0, "max_retries": 50},
            )
            await fleet.__aenter__()
            try:
                fleet.power_on(stagger_seconds=0.05)

                async def some_active() -> bool:
                    return sum(v == "active" for v in (await states(first)).values()) >= 5

                assert await wait_until(some_active, 60)
                assert first.process is not None
                first.process.send_signal(signal.SIGKILL)  # kill -9, mid-activation
                await first.process.wait()
                offered_before = {d.webhook_id for d in receiver.deliveries}
                assert offered_before, "billing was offered webhooks before the crash"

                async with daemon_process(lab) as second:
                    receiver.set_down(False)

                    async def all_delivered() -> bool:
                        got = {
                            r.data["order_id"]
                            for r in receiver.events
                            if r.event_type == "service.activated"
                        }
                        return len(got) == COUNT

                    ok = await wait_until(all_delivered, 120, interval=0.25)
                    final = await states(second)
                    assert ok, f"not all activated: {sorted(set(final.values()))} {final}"
            finally:
                await fleet.aclose()

    activated = [r for r in receiver.events if r.event_type == "service.activated"]
    per_order: dict[str, set[str]] = {}
    for r in receiver.deliveries:
        if r.event_type == "service.activated":
            per_order.setdefault(r.data["order_id"], set()).add(r.webhook_id)
    # exactly one webhook id per order, across the crash and every retry
    assert all(len(ids) == 1 for ids in per_order.values()), per_order
    assert len(per_order) == COUNT and len(activated) == COUNT
    # every id offered before the crash was delivered afterwards with that same id
    delivered = {r.webhook_id for r in receiver.events}
    assert offered_before <= delivered
    assert all(r.verified for r in receiver.events)
    assert receiver.rejected == 0
