"""`turnup demo`: the whole path on loopback, on the embedded SQLite default.

Starts the daemon (temporary SQLite, loopback ports), a billing receiver that
verifies signatures, creates orders across four vendor profiles (some matched
by serial, some only by location), adds one device nobody ordered and one
whose line is too slow for its plan, powers the fleet on with a progress bar,
and ends with a table per order. Exit code 0 only when every expected outcome
happened: each good order active with a verified `service.activated`, the slow
one `test_failed` with `provisioning.failed`, the stray device `unmatched`
with `device.unmatched`.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from emulators.billing_receiver import BillingReceiver, running_receiver
from emulators.cpe import DeviceSpec, Location
from emulators.fleet import Fleet
from emulators.scenarios.harness import LabConfig, Running, daemon_in_process

VENDORS = ("nokia", "huawei", "zte", "calix")
PREFIX = {"nokia": "ALCL", "huawei": "HWTC", "zte": "ZTEG", "calix": "CXNK"}
PLAN_RATES = {"fiber-100": (100, 20), "fiber-300": (300, 100), "fiber-1000": (1000, 300)}


@dataclass(frozen=True)
class DemoOrder:
    order_id: str
    vendor: str
    serial: str
    plan_id: str
    by_location: bool
    expect: str  # "active" or "test_failed"
    spec: DeviceSpec


def build_orders(count: int) -> tuple[list[DemoOrder], DeviceSpec]:
    orders: list[DemoOrder] = []
    plans = list(PLAN_RATES)
    for i in range(count + 1):
        vendor = VENDORS[i % len(VENDORS)]
        plan_id = plans[i % len(plans)]
        down, up = PLAN_RATES[plan_id]
        serial = f"{PREFIX[vendor]}{0xD0000000 + i:08X}"
        slow = i == count  # the extra one: its line gives half the plan
        factor = 0.5 if slow else 1.25
        loc = Location(
            "olt-demo",
            f"1/1/{i // 16 + 1}",
            i % 16 + 1,
            f"olt-demo xpon 1/1/{i // 16 + 1}:{i % 16 + 1}",
        )
        spec = DeviceSpec(
            serial=serial,
            personality=vendor,
            down_mbps=down * factor,
            up_mbps=up * factor,
            location=loc,
            username="cpe",
            password="cpe-secret",
            auth="digest" if i % 2 else "basic",
            first_event="2 PERIODIC" if i % 7 == 3 else "0 BOOTSTRAP",
        )
        orders.append(
            DemoOrder(
                f"demo-{i + 1:03d}",
                vendor,
                serial,
                plan_id,
                by_location=i % 5 == 4,
                expect="test_failed" if slow else "active",
                spec=spec,
            )
        )
    stray = DeviceSpec(
        serial="FHTT0BADBEEF",
        personality="nokia",
        down_mbps=200,
        up_mbps=50,
        location=Location("olt-demo", "1/1/9", 99, "olt-demo xpon 1/1/9:99"),
        username="cpe",
        password="cpe-secret",
        auth="digest",
    )
    return orders, stray


def order_body(o: DemoOrder) -> dict[str, Any]:
    loc = o.spec.location
    assert loc is not None
    body: dict[str, Any] = {
        "order_id": o.order_id,
        "account_id": f"acct-{o.order_id[-3:]}",
        "plan_id": o.plan_id,
        "network_type": "xgs-pon" if o.plan_id == "fiber-1000" else "gpon",
        "location": {
            "olt": loc.olt,
            "pon_port": loc.pon_port,
            "onu_id": loc.onu_id,
            "circuit_id": loc.circuit_id,
        },
        "settings": {
            "wifi": {"ssid": f"Home-{o.order_id[-3:]}", "key": "correct-horse-battery"},
            "pppoe": {"username": f"{o.order_id}@isp.example", "password": "ppp-secret"},
        },
    }
    if not o.by_location:
        body["device"] = {"serial": o.serial}
    return body


async def _demo(console: Console, count: int, workdir: Path, timeout: float) -> int:
    lab = LabConfig(workdir=workdir)
    receiver = BillingReceiver(lab.webhook_secret)
    async with running_receiver(receiver) as hook_url:
        lab.webhook_url = hook_url
        async with daemon_in_process(lab) as running:
            return await _drive(console, running, receiver, count, timeout)


async def _drive(
    console: Console, running: Running, receiver: BillingReceiver, count: int, timeout: float
) -> int:
    orders, stray = build_orders(count)
    e = running.endpoints
    console.print(f"[bold]turnup[/] API {e.api_url}  ACS {e.acs_url}  speed test {e.speedtest_url}")
    started = time.monotonic()
    async with running.client() as api:
        for o in orders:
            r = await api.post("/v1/orders", json=order_body(o))
            if r.status_code != 201:
                console.print(f"[red]order {o.order_id} refused: {r.status_code} {r.text}")
                return 1
        console.print(
            f"created {len(orders)} orders ({sum(o.by_location for o in orders)} by location only)"
        )
        specs = [o.spec for o in orders] + [stray]
        async with Fleet(e.acs_url, specs, max_concurrent_sessions=64) as fleet:
            fleet.power_on(stagger_seconds=0.02)
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            ) as progress:
                boot = progress.add_task("devices online", total=len(specs))
                done = progress.add_task("orders settled", total=len(orders))
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    states = await _states(api)
                    settled = sum(
                        1
                        for o in orders
                        if states.get(o.order_id) in ("active", "failed")
                        or (
                            states.get(o.order_id) == "test_failed"
                            and o.expect == "test_failed"
                            and _final_failure(receiver, o.order_id)
                        )
                    )
                    progress.update(boot, completed=fleet.stats().booted)
                    progress.update(done, completed=settled)
                    if settled == len(orders) and _webhooks_in(receiver, orders):
                        break
                    await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        views = {o.order_id: (await api.get(f"/v1/orders/{o.order_id}")).json() for o in orders}
        stray_view = (await api.get(f"/v1/devices/{stray.serial}")).json()
    return _report(console, orders, views, stray, stray_view, receiver, elapsed)


async def _states(api: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    after = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if after:
            params["after"] = after
        page = (await api.get("/v1/orders", params=params)).json()
        for item in page["items"]:
            out[item["id"]] = item["state"]
        after = page.get("next")
        if not after:
            return out


def _final_failure(receiver: BillingReceiver, order_id: str) -> bool:
    return any(
        r.event_type == "provisioning.failed" and r.data.get("order_id") == order_id
        for r in receiver.events
    )


def _webhooks_in(receiver: BillingReceiver, orders: list[DemoOrder]) -> bool:
    got = {(r.event_type, r.data.get("order_id")) for r in receiver.events}
    for o in orders:
        kind = "service.activated" if o.expect == "active" else "provisioning.failed"
        if (kind, o.order_id) not in got:
            return False
    return any(r.event_type == "device.unmatched" for r in receiver.events)


def _report(
    console: Console,
    orders: list[DemoOrder],
    views: dict[str, Any],
    stray: DeviceSpec,
    stray_view: dict[str, Any],
    receiver: BillingReceiver,
    elapsed: float,
) -> int:
    events = {(r.event_type, r.data.get("order_id")): r for r in receiver.events}
    table = Table(title=f"turnup demo: {len(orders)} orders, {elapsed:.1f} s")
    for col in (
        "order",
        "vendor",
        "match",
        "plan",
        "state",
        "seen → active",
        "down/up Mbit/s",
        "webhook",
        "signature",
        "expected",
    ):
        table.add_column(col, no_wrap=True)
    ok = True
    for o in orders:
        v = views[o.order_id]
        kind = "service.activated" if o.expect == "active" else "provisioning.failed"
        hook = events.get((kind, o.order_id))
        steps = {s["step"]: s["at"] for s in v.get("timeline", [])}
        tta = "-"
        if steps.get("active") and steps.get("first_seen"):
            span = datetime.fromisoformat(steps["active"]) - datetime.fromisoformat(
                steps["first_seen"]
            )
            tta = f"{span.total_seconds():.1f} s"
        down, up = v.get("measured_down_mbps"), v.get("measured_up_mbps")
        rates = f"{down:.0f}/{up:.0f}" if down and up else (f"{down:.0f}/-" if down else "-")
        good = v["state"] == o.expect and hook is not None and hook.verified
        ok &= good
        table.add_row(
            o.order_id,
            o.vendor,
            "location" if o.by_location else "serial",
            o.plan_id,
            v["state"],
            tta,
            rates,
            kind if hook else "[red]missing",
            "yes" if hook and hook.verified else "[red]no",
            "[green]ok" if good else f"[red]expected {o.expect}",
        )
    console.print(table)
    unmatched = [r for r in receiver.events if r.event_type == "device.unmatched"]
    stray_ok = stray_view.get("status") == "unmatched" and any(
        r.data.get("device", {}).get("serial") == stray.serial and r.verified for r in unmatched
    )
    console.print(
        f"device with no order {stray.serial}: status {stray_view.get('status')}, "
        f"device.unmatched webhook {'received and verified' if stray_ok else '[red]missing'}"
    )
    rejected = receiver.rejected
    console.print(
        f"webhooks: {len(receiver.events)} distinct, {receiver.duplicates} duplicate deliveries, "
        f"{rejected} rejected signatures"
    )
    ok &= stray_ok and rejected == 0
    console.print("[bold green]demo passed" if ok else "[bold red]demo FAILED")
    return 0 if ok else 1


def run_demo(orders: int = 20, keep: bool = False, timeout: float = 120.0) -> int:
    console = Console(width=max(Console().width, 132))
    workdir = Path(tempfile.mkdtemp(prefix="turnup-demo-"))
    try:
        return asyncio.run(_demo(console, orders, workdir, timeout))
    finally:
        if keep:
            console.print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
