"""The SQL store on both backends (SQLite file, fresh PostgreSQL database per test)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from daemon.core.activation import Outcome, Policy, on_device_seen, on_order_placed
from daemon.core.events import DeviceSeen, EmitWebhook, Note, RequestConnection
from daemon.core.identity import Location
from daemon.core.orders import Device, DeviceStatus, NetworkType, Order, OrderState
from daemon.core.plans import Plan, VerifyMode
from daemon.store import Store, StoreConflict, current_revision, head_revision, upgrade
from daemon.store.engine import create_engine_for
from daemon.store.schema import metadata

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PLAN = Plan("fiber-500", "Fiber 500", 500.0, 100.0, vlan=100, verify=VerifyMode.DOWNLOAD_UPLOAD)


def make_order(order_id: str = "ord-1", **changes: Any) -> Order:
    base = Order(
        id=order_id,
        account_id="acct-1",
        plan_id=PLAN.id,
        network_type=NetworkType.GPON,
        state=OrderState.PENDING,
        created_at=T0,
        updated_at=T0,
    )
    return replace(base, **changes)


def make_device(serial: str = "ALCL1A2B3C4D", **changes: Any) -> Device:
    base = Device(serial=serial, status=DeviceStatus.UNMATCHED, first_seen=T0, last_seen=T0)
    return replace(base, **changes)


async def seed_plan(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.upsert_plan(PLAN, T0)


# ---- migrations ------------------------------------------------------------------


def _schema_diff(connection: sa.Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_migrations_fresh_rerun_and_match_schema(store_url: str) -> None:
    assert await current_revision(store_url) is None
    await upgrade(store_url)
    assert await current_revision(store_url) == head_revision() == "0002"
    await upgrade(store_url)  # idempotent
    store = await Store.open(store_url)  # migrates again: a no-op
    await store.close()
    assert await current_revision(store_url) == "0002"

    engine = create_engine_for(store_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_schema_diff) == []
            if engine.dialect.name == "sqlite":
                pragma = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
                assert pragma == "wal"
                assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
                assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 5000
                assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 1
    finally:
        await engine.dispose()


async def test_open_without_migrate_leaves_schema_alone(store_url: str) -> None:
    store = await Store.open(store_url, migrate=False)
    await store.close()
    assert await current_revision(store_url) is None


# ---- plans -------------------------------------------------------------------------


async def test_plan_upsert_and_list(store: Store) -> None:
    other = Plan("copper-50", "Copper 50", 50.0, 10.0, verify=VerifyMode.NONE)
    async with store.transaction() as tx:
        await tx.upsert_plan(PLAN, T0)
        await tx.upsert_plan(other, T0)
    changed = replace(PLAN, name="Fiber 500+", down_mbps=550.0, vlan=None)
    async with store.transaction() as tx:
        await tx.upsert_plan(changed, T0 + timedelta(hours=1))
    async with store.read() as tx:
        assert await tx.list_plans() == [other, changed]
        assert await tx.get_plan(PLAN.id) == changed
        assert await tx.get_plan("nope") is None


# ---- orders --------------------------------------------------------------------------


async def test_order_round_trip_every_field(store: Store) -> None:
    await seed_plan(store)
    order = make_order(
        state=OrderState.TESTING,
        network_type=NetworkType.XGS_PON,
        expected_serial="ALCL1A2B3C4D",
        location=Location(olt="olt-7", pon_port="1/1/3", onu_id=12, circuit_id="olt-7 pon 1/1/3"),
        settings={"pppoe": {"user": "u1", "password": "p"}, "vlans": [100, 200], "ipv6": True},
        device_serial="ALCL1A2B3C4D",
        timeline={"ordered": T0, "matched": T0 + timedelta(minutes=3, microseconds=7)},
        last_error="something",
        measured_down_mbps=512.5,
        measured_up_mbps=None,
        test_attempts=2,
        config_attempts=1,
        next_retry_at=T0 + timedelta(minutes=5),
        deadline_at=T0 + timedelta(minutes=10),
        test_phase="upload",
        test_notes=("download: rom-eom", "upload: odd"),
        version=3,
    )
    async with store.transaction() as tx:
        await tx.insert_order(order, "hash-1")
    async with store.read() as tx:
        got = await tx.get_order(order.id)
        assert got == order
        assert got is not None
        assert got.created_at.tzinfo is UTC and got.timeline["matched"].tzinfo is not None
        assert await tx.get_order_hash(order.id) == "hash-1"
        assert await tx.get_order("missing") is None
        assert await tx.get_order_hash("missing") is None


async def test_update_order_bumps_version_and_detects_conflict(store: Store) -> None:
    await seed_plan(store)
    async with store.transaction() as tx:
        await tx.insert_order(make_order(), "h")
    async with store.transaction() as tx:
        loaded = await tx.get_order("ord-1", for_update=True)
        assert loaded is not None
        moved = loaded.transition(OrderState.CANCELLED, T0 + timedelta(minutes=1))
        saved = await tx.update_order(moved)
        assert saved.version == loaded.version + 1
    with pytest.raises(StoreConflict):
        async with store.transaction() as tx:
            await tx.update_order(replace(loaded, last_error="stale writer"))
    async with store.read() as tx:
        current = await tx.get_order("ord-1")
    assert current == saved


async def test_insert_order_reusing_an_id_conflicts_and_keeps_the_first(store: Store) -> None:
    await seed_plan(store)
    async with store.transaction() as tx:
        await tx.insert_order(make_order(), "hash-a")
    async with store.transaction() as tx:
        with pytest.raises(StoreConflict):
            await tx.insert_order(make_order(account_id="someone-else"), "hash-b")
        # the transaction is still usable after the conflict
        assert await tx.get_order_hash("ord-1") == "hash-a"
        await tx.insert_order(make_order("ord-2"), "hash-c")
    async with store.read() as tx:
        first = await tx.get_order("ord-1")
        assert first is not None and first.account_id == "acct-1"
        assert await tx.get_order_hash("ord-2") == "hash-c"


async def test_list_orders_keyset_paging_and_counts(store: Store) -> None:
    await seed_plan(store)
    async with store.transaction() as tx:
        for i in range(7):
            state = OrderState.PENDING if i % 2 else OrderState.CANCELLED
            await tx.insert_order(make_order(f"ord-{i}", state=state), "h")
    async with store.read() as tx:
        page1 = await tx.list_orders(None, 3, None)
        page2 = await tx.list_orders(None, 3, page1[-1].id)
        page3 = await tx.list_orders(None, 3, page2[-1].id)
        assert [o.id for o in page1 + page2 + page3] == [f"ord-{i}" for i in range(7)]
        pending = await tx.list_orders("pending", 10, None)
        assert [o.id for o in pending] == ["ord-1", "ord-3", "ord-5"]
        counts = await tx.count_orders_by_state()
    assert counts["pending"] == 3 and counts["cancelled"] == 4 and counts["active"] == 0
    assert set(counts) == {s.value for s in OrderState}


async def test_orders_due(store: Store) -> None:
    await seed_plan(store)
    later = T0 + timedelta(hours=1)
    async with store.transaction() as tx:
        await tx.insert_order(make_order("a", state=OrderState.CONFIGURING, deadline_at=T0), "h")
        await tx.insert_order(
            make_order("b", state=OrderState.TEST_FAILED, next_retry_at=T0 - timedelta(1)), "h"
        )
        await tx.insert_order(make_order("c", state=OrderState.TESTING, deadline_at=later), "h")
        await tx.insert_order(make_order("d", state=OrderState.FAILED, deadline_at=T0), "h")
        await tx.insert_order(make_order("e", state=OrderState.TESTING), "h")
    async with store.read() as tx:
        assert [o.id for o in await tx.orders_due(T0, 10)] == ["b", "a"]
        assert [o.id for o in await tx.orders_due(later, 10)] == ["b", "a", "c"]
        assert [o.id for o in await tx.orders_due(later, 1)] == ["b"]


# ---- matching candidates -------------------------------------------------------------


async def test_candidate_orders_by_serial_in_every_spelling(store: Store) -> None:
    await seed_plan(store)
    async with store.transaction() as tx:
        await tx.insert_order(make_order("by-serial", expected_serial="ALCL1A2B3C4D"), "h")
        await tx.insert_order(make_order("prefixless", expected_serial="deadbeef"), "h")
        await tx.insert_order(
            make_order("held", expected_serial="ALCL1A2B3C4D", state=OrderState.WRONG_LOCATION),
            "h",
        )
        await tx.insert_order(
            make_order("busy", expected_serial="ALCL1A2B3C4D", state=OrderState.CONFIGURING), "h"
        )
        await tx.insert_order(make_order("other", expected_serial="HWTC00000001"), "h")
    nowhere = Location()
    async with store.transaction() as tx:
        for spelling in ("ALCL1A2B3C4D", "414C434C1A2B3C4D", "1A2B3C4D", "alcl1a2b3c4d"):
            found = await tx.candidate_orders(spelling, nowhere)
            assert [o.id for o in found] == ["by-serial", "held"], spelling
        for spelling in ("HWTCDEADBEEF", "48575443DEADBEEF"):
            found = await tx.candidate_orders(spelling, nowhere)
            assert [o.id for o in found] == ["prefixless"], spelling
        assert await tx.candidate_orders("ZTEG99999999", nowhere) == []


async def test_candidate_orders_by_location(store: Store) -> None:
    await seed_plan(store)
    circuit = Location(circuit_id="olt-1 xpon 0/1/2:7")
    port = Location(olt="OLT-1", pon_port="0/1/2", onu_id=7)
    async with store.transaction() as tx:
        await tx.insert_order(make_order("by-circuit", location=circuit), "h")
        await tx.insert_order(make_order("by-port", location=Location("olt-1", "0/1/2")), "h")
        await tx.insert_order(make_order("other-port", location=Location("olt-1", "0/1/3")), "h")
        await tx.insert_order(
            make_order("serial-only", expected_serial="ZTEG12345678", location=circuit), "h"
        )
        await tx.insert_order(
            make_order("closed", state=OrderState.ACTIVE, location=Location("olt-1", "0/1/2")),
            "h",
        )
    async with store.transaction() as tx:
        found = await tx.candidate_orders("HWTC00000009", circuit)
        assert [o.id for o in found] == ["by-circuit"]
        found = await tx.candidate_orders("HWTC00000009", port)
        assert [o.id for o in found] == ["by-port"]
        both = Location(olt="olt-1", pon_port="0/1/2", circuit_id=circuit.circuit_id)
        found = await tx.candidate_orders("ZTEG12345678", both)
        assert [o.id for o in found] == ["by-circuit", "by-port", "serial-only"]


async def test_candidate_devices(store: Store) -> None:
    await seed_plan(store)
    async with store.transaction() as tx:
        await tx.save_device(make_device("ALCL1A2B3C4D"))
        await tx.save_device(
            make_device(
                "HWTC00000001", location=Location(circuit_id="c-1"), status=DeviceStatus.HELD
            )
        )
        await tx.save_device(make_device("ZTEG00000002", location=Location("OLT-2", "1/1")))
        await tx.save_device(
            make_device(
                "FHTT00000003", location=Location(circuit_id="c-1"), status=DeviceStatus.BOUND
            )
        )
        await tx.save_device(make_device("CXNK00000004", location=Location("olt-2", "1/2")))
    async with store.transaction() as tx:
        by_serial = await tx.candidate_devices(make_order(expected_serial="1a2b3c4d"))
        assert [d.serial for d in by_serial] == ["ALCL1A2B3C4D"]
        by_circuit = await tx.candidate_devices(make_order(location=Location(circuit_id="c-1")))
        assert [d.serial for d in by_circuit] == ["HWTC00000001"]
        by_port = await tx.candidate_devices(make_order(location=Location("olt-2", "1/1")))
        assert [d.serial for d in by_port] == ["ZTEG00000002"]
        assert await tx.candidate_devices(make_order()) == []


# ---- devices ----------------------------------------------------------------------------


async def test_device_upsert_round_trip(store: Store) -> None:
    device = make_device(
        vendor_id="ALCL",
        manufacturer="Nokia",
        oui="00D0F6",
        product_class="G-010G-Q",
        model="G-010G-Q",
        firmware="3FE46398BFGB",
        source="dhcp",
        location=Location("olt-1", "1/1/1", 4, "olt-1 1/1/1:4"),
    )
    async with store.transaction() as tx:
        await tx.save_device(device)
    updated = replace(
        device,
        status=DeviceStatus.BOUND,
        order_id="ord-1",
        last_seen=T0 + timedelta(minutes=2),
        source="tr069",
        connection_request_url="http://10.0.0.2:7547/cr",
        data_model="tr181",
        profile="nokia",
        reported_unmatched=True,
        location=Location(circuit_id="x"),
    )
    async with store.transaction() as tx:
        await tx.save_device(updated)
    async with store.read() as tx:
        assert await tx.get_device(device.serial) == updated
        assert await tx.get_device("nope") is None
        await_list = await tx.list_devices(None, 10, None)
        assert await_list == [updated]
        assert await tx.list_devices("unmatched", 10, None) == []


async def test_list_devices_paging(store: Store) -> None:
    async with store.transaction() as tx:
        for i in range(5):
            await tx.save_device(make_device(f"HWTC0000000{i}"))
    async with store.read() as tx:
        first = await tx.list_devices("unmatched", 2, None)
        rest = await tx.list_devices("unmatched", 10, first[-1].serial)
    assert [d.serial for d in first + rest] == [f"HWTC0000000{i}" for i in range(5)]


# ---- events ----------------------------------------------------------------------------


async def test_events_paging_and_filters(store: Store) -> None:
    async with store.transaction() as tx:
        for i in range(6):
            await tx.add_note(
                Note(
                    kind=f"k{i}",
                    order_id="o1" if i % 2 else "o2",
                    serial="S1" if i < 3 else None,
                    detail={"i": i, "when": T0},
                    at=T0 + timedelta(seconds=i),
                )
            )
    async with store.read() as tx:
        first = await tx.list_events(0, 4)
        rest = await tx.list_events(first[-1].id, 4)
        assert [e.kind for e in first + rest] == [f"k{i}" for i in range(6)]
        assert first[1].at == T0 + timedelta(seconds=1) and first[1].detail["i"] == 1
        assert first[1].detail["when"] == T0.isoformat()
        by_order = await tx.list_events(0, 10, order_id="o1")
        assert [e.kind for e in by_order] == ["k1", "k3", "k5"]
        by_both = await tx.list_events(0, 10, order_id="o1", serial="S1")
        assert [e.kind for e in by_both] == ["k1"]


# ---- device tasks -----------------------------------------------------------------------


async def test_task_queue_lifecycle(store: Store) -> None:
    serial = "ALCL1A2B3C4D"
    async with store.transaction() as tx:
        configure = await tx.add_task(serial, "ord-1", "configure", {}, T0)
        rpc_args = {"method": "Reboot", "args": {"CommandKey": "x"}}
        rpc = await tx.add_task(serial, None, "rpc", rpc_args, T0)
        await tx.add_task("OTHER0000001", None, "configure", {}, T0)
        with pytest.raises(ValueError):
            await tx.add_task(serial, None, "dance", {}, T0)
    async with store.transaction() as tx:
        assert await tx.has_queued_tasks(serial)
        task = await tx.next_task(serial)
        assert task is not None and task.id == configure and task.kind == "configure"
        await tx.mark_task_sent(task.id, T0 + timedelta(seconds=1))
        nxt = await tx.next_task(serial)
        assert nxt is not None and nxt.id == rpc and nxt.payload == rpc_args
        await tx.mark_task_sent(rpc, T0 + timedelta(seconds=2))
        assert await tx.next_task(serial) is None
        assert not await tx.has_queued_tasks(serial)
    # the device dropped the session: both sent tasks go back to the queue
    async with store.transaction() as tx:
        assert await tx.requeue_sent_tasks(serial) == 2
        again = await tx.next_task(serial)
        assert again is not None and again.id == configure and again.sent_at is None
        await tx.mark_task_sent(configure, T0 + timedelta(seconds=3))
        await tx.finish_task(configure, "done", T0 + timedelta(seconds=4), result={"status": 0})
        with pytest.raises(ValueError):
            await tx.finish_task(rpc, "queued", T0)
        await tx.mark_task_sent(rpc, T0)
        await tx.add_task("OTHER0000001", None, "rpc", rpc_args, T0)
        other = await tx.next_task("OTHER0000001")
        assert other is not None
        await tx.mark_task_sent(other.id, T0)
    # a restart: every task sent in a session that died goes back to the queue
    assert await store.requeue_all_sent_tasks() == 2
    async with store.transaction() as tx:
        assert await tx.cancel_tasks(serial, T0 + timedelta(seconds=5)) == 1
        assert await tx.cancel_tasks(serial, T0 + timedelta(seconds=5)) == 0
        assert await tx.next_task(serial) is None
        tasks = await tx.list_tasks(serial)
        assert [(t.id, t.state) for t in tasks] == [(rpc, "cancelled"), (configure, "done")]
        done = tasks[1]
        assert done.result == {"status": 0} and done.fault is None
        assert done.sent_at == T0 + timedelta(seconds=3)
        assert done.finished_at == T0 + timedelta(seconds=4)
        assert tasks[0].result is None and tasks[0].finished_at == T0 + timedelta(seconds=5)
        faulted = await tx.add_task(serial, "ord-1", "download_diagnostics", {}, T0)
        await tx.finish_task(faulted, "faulted", T0, fault="9002 Internal error")
        (latest, *_) = await tx.list_tasks(serial, limit=1)
        assert latest.state == "faulted" and latest.fault == "9002 Internal error"
        assert await tx.has_queued_tasks("OTHER0000001")


# ---- outbox --------------------------------------------------------------------------------


async def _add_messages(store: Store, count: int) -> list[str]:
    ids = []
    async with store.transaction() as tx:
        for i in range(count):
            ids.append(await tx.add_outbox("device.unmatched", {"n": i}, T0 + timedelta(i)))
    return ids


async def test_outbox_claim_retry_dead_redeliver_and_stats(store: Store) -> None:
    first, second, third = await _add_messages(store, 3)
    assert all(m.startswith("msg_") and len(m) == 36 for m in (first, second, third))
    now = T0 + timedelta(days=5)
    assert await store.outbox_stats(now) == (3, 5 * 86400.0)

    claimed = await store.claim_due(now, 2)
    assert [m.id for m in claimed] == [first, second]
    assert claimed[0].payload == {"n": 0} and claimed[0].attempts == 0
    assert claimed[0].created_at == T0 and claimed[0].event_type == "device.unmatched"
    # leased: a second pass does not hand them out again
    assert [m.id for m in await store.claim_due(now, 10)] == [third]
    assert await store.claim_due(now, 10) == []

    await store.mark_delivered(first, now, 204)
    retry_at = now + timedelta(minutes=5)
    await store.mark_retry(second, now, retry_at, "HTTP 500", 500)
    await store.mark_dead(third, now, "HTTP 400: bad", 400)

    rows = {r.id: r for r in await store.list_outbox(None, 10, None)}
    assert rows[first].state == "delivered" and rows[first].delivered_at == now
    assert rows[first].attempts == 1 and rows[first].last_status == 204
    assert rows[second].state == "pending" and rows[second].next_attempt_at == retry_at
    assert rows[second].last_error == "HTTP 500" and rows[second].attempts == 1
    assert rows[third].state == "dead" and rows[third].last_status == 400
    assert await store.get_outbox(third) == rows[third]
    assert await store.get_outbox("msg_unknown") is None
    assert await store.outbox_stats(now) == (1, 4 * 86400.0)

    # a settled message ignores a late second settlement
    await store.mark_retry(first, now, retry_at, "late", None)
    assert (await store.list_outbox("delivered", 10, None))[0].attempts == 1

    assert await store.claim_due(now, 10) == []
    due = await store.claim_due(retry_at, 10)
    assert [(m.id, m.attempts) for m in due] == [(second, 1)]

    assert [r.id for r in await store.list_dead()] == [third]
    assert await store.redeliver(third, now) is True
    assert await store.redeliver(third, now) is False
    assert await store.redeliver("msg_unknown", now) is False
    assert await store.list_dead() == []
    again = await store.claim_due(now, 10)
    assert [(m.id, m.attempts) for m in again] == [(third, 0)]


async def test_list_outbox_paging(store: Store) -> None:
    ids = sorted(await _add_messages(store, 5))
    page = await store.list_outbox("pending", 2, None)
    rest = await store.list_outbox("pending", 10, page[-1].id)
    assert [r.id for r in page + rest] == ids
    assert await store.list_outbox("dead", 10, None) == []


async def test_concurrent_claims_never_share_a_message(store: Store) -> None:
    ids = await _add_messages(store, 30)
    now = T0 + timedelta(days=60)
    batches = await asyncio.gather(*(store.claim_due(now, 4) for _ in range(10)))
    seen = [m.id for batch in batches for m in batch]
    assert len(seen) == len(set(seen)) == 30
    assert set(seen) == set(ids)


async def test_endpoint_disable_and_enable(store: Store) -> None:
    assert await store.endpoint_disabled() is None
    await store.disable_endpoint(T0, "HTTP 410 Gone")
    await store.disable_endpoint(T0 + timedelta(hours=1), "second reason")
    assert await store.endpoint_disabled() == "HTTP 410 Gone"
    assert await store.endpoint_disabled_at() == T0
    await store.enable_endpoint()
    assert await store.endpoint_disabled() is None
    await store.disable_endpoint(T0 + timedelta(hours=2), "again")
    assert await store.endpoint_disabled() == "again"


# ---- apply_outcome: one transaction ------------------------------------------------------


async def _seed_for_matching(store: Store) -> Order:
    order = make_order(expected_serial="ALCL1A2B3C4D", location=Location(circuit_id="c-9"))
    async with store.transaction() as tx:
        await tx.upsert_plan(PLAN, T0)
        await tx.insert_order(order, "h")
    return order


async def _see(store: Store, tx_serial: str, location: Location, now: datetime) -> Outcome:
    async with store.read() as tx:
        device = await tx.get_device(tx_serial)
        candidates = await tx.candidate_orders(tx_serial, location)
        plans = {p.id: p for p in await tx.list_plans()}
    seen = DeviceSeen(serial=tx_serial, source="dhcp", vendor_id="ALCL", location=location)
    return on_device_seen(seen, device, None, candidates, plans, Policy(), now)


async def test_apply_outcome_writes_everything_in_one_transaction(store: Store) -> None:
    await _seed_for_matching(store)
    now = T0 + timedelta(minutes=1)
    matched = await _see(store, "414C434C1A2B3C4D", Location(circuit_id="c-9"), now)
    stranger = await _see(store, "HWTC77777777", Location(circuit_id="elsewhere"), now)
    assert matched.orders and any(isinstance(e, RequestConnection) for e in matched.effects)
    assert any(isinstance(e, EmitWebhook) for e in stranger.effects)

    async with store.transaction() as tx:
        connect = await tx.apply_outcome(matched, now)
        connect += await tx.apply_outcome(stranger, now)
    assert connect == [RequestConnection("414C434C1A2B3C4D")]

    async with store.read() as tx:
        order = await tx.get_order("ord-1")
        assert order is not None
        assert order.state is OrderState.CONFIGURING and order.version == 1
        assert order.device_serial == "414C434C1A2B3C4D" and "matched" in order.timeline
        device = await tx.get_device("414C434C1A2B3C4D")
        assert device is not None
        assert device.status is DeviceStatus.BOUND and device.order_id == "ord-1"
        stray = await tx.get_device("HWTC77777777")
        assert stray is not None and stray.reported_unmatched
        task = await tx.next_task("414C434C1A2B3C4D")
        assert task is not None and (task.kind, task.order_id) == ("configure", "ord-1")
        kinds = [e.kind for e in await tx.list_events(0, 50)]
        assert {"device.first_seen", "order.matched", "device.unmatched"} <= set(kinds)
    pending = await store.list_outbox("pending", 10, None)
    assert [r.event_type for r in pending] == ["device.unmatched"]
    assert pending[0].payload["device"]["serial"] == "HWTC77777777"

    # the same sighting applied twice from a stale read: the version check refuses it
    with pytest.raises(StoreConflict):
        async with store.transaction() as tx:
            await tx.apply_outcome(matched, now)


async def test_apply_outcome_failure_leaves_nothing(store: Store) -> None:
    await _seed_for_matching(store)
    now = T0 + timedelta(minutes=1)
    matched = await _see(store, "ALCL1A2B3C4D", Location(circuit_id="c-9"), now)
    stranger = await _see(store, "HWTC77777777", Location(), now)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with store.transaction() as tx:
            await tx.apply_outcome(matched, now)
            await tx.apply_outcome(stranger, now)
            raise Boom
    async with store.read() as tx:
        order = await tx.get_order("ord-1")
        assert order is not None and order.state is OrderState.PENDING and order.version == 0
        assert await tx.get_device("ALCL1A2B3C4D") is None
        assert await tx.get_device("HWTC77777777") is None
        assert await tx.list_tasks("ALCL1A2B3C4D") == []
        assert await tx.list_events(0, 10) == []
    assert await store.outbox_stats(now) == (0, 0.0)


async def test_apply_outcome_inserts_a_new_order_with_its_hash(store: Store) -> None:
    await seed_plan(store)
    device = make_device("ZTEG0000ABCD", location=Location(circuit_id="c-5"))
    async with store.transaction() as tx:
        await tx.save_device(device)
    order = make_order("new-1", location=Location(circuit_id="c-5"))
    async with store.transaction() as tx:
        candidates = await tx.candidate_devices(order)
        outcome = on_order_placed(order, candidates, {PLAN.id: PLAN}, Policy(), T0)
        with pytest.raises(StoreConflict):  # without its hash it is no new order: no such row
            await tx.apply_outcome(outcome, T0)
        connect = await tx.apply_outcome(outcome, T0, new_order_hash="body-hash")
    assert connect == [RequestConnection("ZTEG0000ABCD")]
    async with store.read() as tx:
        stored = await tx.get_order("new-1")
        assert stored is not None and stored.state is OrderState.CONFIGURING
        assert await tx.get_order_hash("new-1") == "body-hash"
        bound = await tx.get_device("ZTEG0000ABCD")
        assert bound is not None and bound.status is DeviceStatus.BOUND


# ---- concurrency and isolation ----------------------------------------------------------


async def test_concurrent_write_transactions_do_not_lock(store: Store) -> None:
    await seed_plan(store)

    async def writer(i: int) -> None:
        for round_ in range(3):
            async with store.transaction() as tx:
                if round_ == 0:
                    await tx.insert_order(make_order(f"c-{i:02d}"), f"h{i}")
                await tx.save_device(make_device(f"HWTC{i:08X}", last_seen=T0))
                await tx.add_note(Note("test.concurrent", f"c-{i:02d}", None, {"r": round_}, T0))
                await tx.add_outbox("device.unmatched", {"i": i}, T0)
                await asyncio.sleep(0)  # yield mid-transaction so the tasks interleave
                await tx.add_task(f"HWTC{i:08X}", None, "configure", {}, T0)
            async with store.read() as tx:
                await tx.list_orders(None, 5, None)

    await asyncio.gather(*(writer(i) for i in range(20)))
    async with store.read() as tx:
        assert len(await tx.list_orders(None, 100, None)) == 20
        assert len(await tx.list_devices(None, 100, None)) == 20
        assert len(await tx.list_events(0, 100)) == 60
    assert (await store.outbox_stats(T0))[0] == 60


async def test_read_does_not_wait_for_a_writer_and_sees_only_commits(store: Store) -> None:
    await seed_plan(store)
    async with store.transaction() as tx:
        await tx.insert_order(make_order("uncommitted"), "h")

        async def look() -> Order | None:
            async with store.read() as reader:
                return await reader.get_order("uncommitted")

        assert await asyncio.wait_for(look(), timeout=10) is None
    async with store.read() as reader:
        assert await reader.get_order("uncommitted") is not None


async def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(sa.exc.StatementError):
        async with store.transaction() as tx:
            await tx.upsert_plan(PLAN, datetime(2026, 1, 1))
