"""The store: one transaction turns core state and effects into rows.

`Store` owns the engine and hands out transactions (`Tx`); `Tx` reads and
writes the core's dataclasses. `Tx.apply_outcome` is the one place where the
core's effects become rows: the order/device state, the event log, the device
work queue and the webhook outbox are written in the same transaction
(transactional outbox), and the connection requests are handed back to be sent
after the commit.

Concurrency:
- SQLite has one writer. Write transactions are serialised in-process by an
  asyncio.Lock and open with BEGIN IMMEDIATE, so they never meet "database is
  locked"; `read()` takes no lock (WAL readers never block). Do not nest
  `transaction()` inside `transaction()`: on SQLite that waits for itself.
- PostgreSQL: rows read to be rewritten are locked with SELECT ... FOR UPDATE;
  outbox claims use FOR UPDATE SKIP LOCKED and push `next_attempt_at` forward by
  a lease, so several daemons can share one outbox and a crash mid-delivery
  only delays a message.
- Orders also carry an optimistic `version`: `update_order` raises
  `StoreConflict` when the row moved on under us.
All times are aware UTC in and out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import RowMapping, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from daemon.billing_hook.outbox import OutboxMessage, new_message_id
from daemon.core.activation import Outcome
from daemon.core.events import (
    CancelDeviceWork,
    EmitWebhook,
    Note,
    PushConfiguration,
    ReadThroughputResult,
    RequestConnection,
    StartThroughputTest,
)
from daemon.core.identity import InvalidSerial, Location, serial_match_key
from daemon.core.orders import (
    OPEN_STATES,
    Device,
    DeviceStatus,
    NetworkType,
    Order,
    OrderState,
)
from daemon.core.plans import Plan, VerifyMode
from daemon.store.engine import BEGIN_MODE, backend_of, create_engine_for
from daemon.store.engine import migrate as migrate_engine
from daemon.store.engine import upgrade as upgrade  # re-exported for the CLI
from daemon.store.schema import (
    as_utc,
    device_tasks,
    devices,
    events,
    orders,
    outbox,
    plans,
    webhook_endpoint,
)
from daemon.store.sqlite_writer import SqliteWriter

TASK_KINDS = frozenset(
    {
        "configure",
        "download_diagnostics",
        "upload_diagnostics",
        "read_download",
        "read_upload",
        "rpc",
    }
)
TASK_STATES = frozenset({"queued", "sent", "done", "faulted", "cancelled"})
TASK_FINAL_STATES = frozenset({"done", "faulted", "cancelled"})
OUTBOX_STATES = frozenset({"pending", "delivered", "dead"})
DUE_STATES = (OrderState.CONFIGURING, OrderState.TESTING, OrderState.TEST_FAILED)
ENDPOINT_ID = 1


class StoreConflict(Exception):
    """An optimistic version clash, or an order id reused with a different body."""


@dataclass(frozen=True, slots=True)
class Task:
    """One unit of work queued for a device (drained by the ACS in a CWMP session)."""

    id: int
    serial: str
    order_id: str | None
    kind: str
    payload: dict[str, Any]
    state: str
    created_at: datetime
    sent_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    fault: str | None


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    at: datetime
    kind: str
    order_id: str | None
    serial: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: str
    event_type: str
    payload: dict[str, Any]
    created_at: datetime
    next_attempt_at: datetime
    attempts: int
    state: str
    last_error: str | None
    last_status: int | None
    delivered_at: datetime | None


T = TypeVar("T")

# ---- row <-> dataclass --------------------------------------------------------


def match_key(serial: str | None) -> str | None:
    """`serial_match_key`, tolerant of a serial no device could have (kept as typed)."""
    if not serial:
        return None
    try:
        return serial_match_key(serial)
    except InvalidSerial:
        return serial.strip().upper()


def _opt_utc(value: datetime | None) -> datetime | None:
    return as_utc(value) if value is not None else None


def _timeline_out(timeline: Mapping[str, datetime]) -> dict[str, str]:
    return {step: as_utc(at).isoformat() for step, at in timeline.items()}


def _timeline_in(raw: Mapping[str, str] | None) -> dict[str, datetime]:
    return {step: as_utc(datetime.fromisoformat(at)) for step, at in (raw or {}).items()}


def _location_values(location: Location) -> dict[str, Any]:
    return {
        "olt": location.olt,
        "pon_port": location.pon_port,
        "onu_id": location.onu_id,
        "circuit_id": location.circuit_id,
    }


def _location(row: RowMapping) -> Location:
    return Location(
        olt=row["olt"], pon_port=row["pon_port"], onu_id=row["onu_id"], circuit_id=row["circuit_id"]
    )


def _plan(row: RowMapping) -> Plan:
    return Plan(
        id=row["id"],
        name=row["name"],
        down_mbps=row["down_mbps"],
        up_mbps=row["up_mbps"],
        vlan=row["vlan"],
        verify=VerifyMode(row["verify"]),
    )


def _order_values(order: Order) -> dict[str, Any]:
    return {
        "id": order.id,
        "account_id": order.account_id,
        "plan_id": order.plan_id,
        "network_type": NetworkType(order.network_type).value,
        "state": OrderState(order.state).value,
        "expected_serial": order.expected_serial,
        "serial_key": match_key(order.expected_serial),
        **_location_values(order.location),
        "settings": dict(order.settings),
        "device_serial": order.device_serial,
        "timeline": _timeline_out(order.timeline),
        "last_error": order.last_error,
        "measured_down_mbps": order.measured_down_mbps,
        "measured_up_mbps": order.measured_up_mbps,
        "test_attempts": order.test_attempts,
        "config_attempts": order.config_attempts,
        "next_retry_at": order.next_retry_at,
        "deadline_at": order.deadline_at,
        "test_phase": order.test_phase,
        "test_notes": list(order.test_notes),
        "created_at": order.created_at,
        "updated_at": order.updated_at,
        "version": order.version,
    }


def _order(row: RowMapping) -> Order:
    return Order(
        id=row["id"],
        account_id=row["account_id"],
        plan_id=row["plan_id"],
        network_type=NetworkType(row["network_type"]),
        state=OrderState(row["state"]),
        created_at=as_utc(row["created_at"]),
        updated_at=as_utc(row["updated_at"]),
        expected_serial=row["expected_serial"],
        location=_location(row),
        settings=dict(row["settings"] or {}),
        device_serial=row["device_serial"],
        timeline=_timeline_in(row["timeline"]),
        last_error=row["last_error"],
        measured_down_mbps=row["measured_down_mbps"],
        measured_up_mbps=row["measured_up_mbps"],
        test_attempts=row["test_attempts"],
        config_attempts=row["config_attempts"],
        next_retry_at=_opt_utc(row["next_retry_at"]),
        deadline_at=_opt_utc(row["deadline_at"]),
        test_phase=row["test_phase"],
        test_notes=tuple(row["test_notes"] or ()),
        version=row["version"],
    )


def _device_values(device: Device) -> dict[str, Any]:
    return {
        "serial": device.serial,
        "serial_key": match_key(device.serial),
        "status": DeviceStatus(device.status).value,
        "first_seen": device.first_seen,
        "last_seen": device.last_seen,
        "vendor_id": device.vendor_id,
        "manufacturer": device.manufacturer,
        "oui": device.oui,
        "product_class": device.product_class,
        "model": device.model,
        "firmware": device.firmware,
        "source": device.source,
        **_location_values(device.location),
        "order_id": device.order_id,
        "connection_request_url": device.connection_request_url,
        "data_model": device.data_model,
        "profile": device.profile,
        "reported_unmatched": device.reported_unmatched,
    }


def _device(row: RowMapping) -> Device:
    return Device(
        serial=row["serial"],
        status=DeviceStatus(row["status"]),
        first_seen=as_utc(row["first_seen"]),
        last_seen=as_utc(row["last_seen"]),
        vendor_id=row["vendor_id"],
        manufacturer=row["manufacturer"],
        oui=row["oui"],
        product_class=row["product_class"],
        model=row["model"],
        firmware=row["firmware"],
        source=row["source"],
        location=_location(row),
        order_id=row["order_id"],
        connection_request_url=row["connection_request_url"],
        data_model=row["data_model"],
        profile=row["profile"],
        reported_unmatched=bool(row["reported_unmatched"]),
    )


def _task(row: RowMapping) -> Task:
    return Task(
        id=row["id"],
        serial=row["serial"],
        order_id=row["order_id"],
        kind=row["kind"],
        payload=dict(row["payload"] or {}),
        state=row["state"],
        created_at=as_utc(row["created_at"]),
        sent_at=_opt_utc(row["sent_at"]),
        finished_at=_opt_utc(row["finished_at"]),
        result=dict(row["result"]) if row["result"] is not None else None,
        fault=row["fault"],
    )


def _event(row: RowMapping) -> EventRecord:
    return EventRecord(
        id=row["id"],
        at=as_utc(row["at"]),
        kind=row["kind"],
        order_id=row["order_id"],
        serial=row["serial"],
        detail=dict(row["detail"] or {}),
    )


def _outbox_row(row: RowMapping) -> OutboxRow:
    return OutboxRow(
        id=row["id"],
        event_type=row["event_type"],
        payload=dict(row["payload"] or {}),
        created_at=as_utc(row["created_at"]),
        next_attempt_at=as_utc(row["next_attempt_at"]),
        attempts=row["attempts"],
        state=row["state"],
        last_error=row["last_error"],
        last_status=row["last_status"],
        delivered_at=_opt_utc(row["delivered_at"]),
    )


def _keyset(
    stmt: sa.Select[Any], key: sa.ColumnElement[Any], after: Any, limit: int
) -> sa.Select[Any]:
    if after is not None:
        stmt = stmt.where(key > after)
    return stmt.order_by(key).limit(max(limit, 0))


# ---- prebuilt statements for the hot paths --------------------------------------
# Building a statement costs more than SQLite takes to run it (coercions, column
# proxies for `excluded`, cache keys): the hot ones are built once, with bind
# parameters, and reused.

_B = sa.bindparam
_GET_DEVICE = sa.select(devices).where(devices.c.serial == _B("b_serial"))
_GET_ORDER = sa.select(orders).where(orders.c.id == _B("b_id"))
_ORDER_COLUMNS = [c.name for c in orders.c if c.name not in ("id", "created_at", "request_hash")]
_UPDATE_ORDER = (
    orders.update()
    .where(orders.c.id == _B("b_id"), orders.c.version == _B("b_version"))
    .values({name: _B(f"v_{name}") for name in _ORDER_COLUMNS})
)
_NEXT_TASK = (
    sa.select(device_tasks)
    .where(device_tasks.c.serial == _B("b_serial"), device_tasks.c.state == "queued")
    .order_by(device_tasks.c.id)
    .limit(1)
)
_MARK_SENT = (
    device_tasks.update()
    .where(device_tasks.c.id == _B("b_id"))
    .values(state="sent", sent_at=_B("b_at"))
)
_FINISH_TASK = (
    device_tasks.update()
    .where(device_tasks.c.id == _B("b_id"))
    .values(state=_B("b_state"), finished_at=_B("b_at"), result=_B("b_result"), fault=_B("b_fault"))
)
_ADD_TASK = device_tasks.insert().returning(device_tasks.c.id)
_ADD_OUTBOX = outbox.insert()
_UPSERT_DEVICE: dict[bool, Any] = {}


def _upsert_device(pg: bool) -> Any:
    stmt = _UPSERT_DEVICE.get(pg)
    if stmt is None:
        base = pg_dialect.insert(devices) if pg else sqlite_dialect.insert(devices)
        update = {c.name: base.excluded[c.name] for c in devices.c if c.name != "serial"}
        stmt = _UPSERT_DEVICE[pg] = base.on_conflict_do_update(
            index_elements=["serial"], set_=update
        )
    return stmt


# ---- one transaction ------------------------------------------------------------


class Tx:
    """One database transaction. Use through `Store.transaction()` / `Store.read()`."""

    def __init__(self, conn: AsyncConnection, backend: str, *, readonly: bool = False) -> None:
        self._conn = conn
        self.backend = backend
        self.readonly = readonly
        self._pg = backend == "postgresql"
        # Row locks only where they matter: PostgreSQL, in a write transaction
        # (SQLite's single writer is already serialised by the store).
        self._lock_rows = self._pg and not readonly

    @property
    def connection(self) -> AsyncConnection:
        return self._conn

    async def _rows(self, stmt: sa.Executable) -> Sequence[RowMapping]:
        return (await self._conn.execute(stmt)).mappings().all()

    async def _row(self, stmt: sa.Executable) -> RowMapping | None:
        return (await self._conn.execute(stmt)).mappings().first()

    async def _rowcount(self, stmt: sa.Executable) -> int:
        result = await self._conn.execute(stmt)
        return int(getattr(result, "rowcount", 0))

    def _insert(self, table: sa.Table) -> pg_dialect.Insert | sqlite_dialect.Insert:
        return pg_dialect.insert(table) if self._pg else sqlite_dialect.insert(table)

    def _locked(self, stmt: sa.Select[Any], for_update: bool) -> sa.Select[Any]:
        return stmt.with_for_update() if for_update and self._lock_rows else stmt

    # -- plans --------------------------------------------------------------------

    async def get_plan(self, plan_id: str) -> Plan | None:
        row = await self._row(sa.select(plans).where(plans.c.id == plan_id))
        return _plan(row) if row else None

    async def list_plans(self) -> list[Plan]:
        return [_plan(r) for r in await self._rows(sa.select(plans).order_by(plans.c.id))]

    async def upsert_plan(self, plan: Plan, now: datetime) -> None:
        values = {
            "id": plan.id,
            "name": plan.name,
            "down_mbps": plan.down_mbps,
            "up_mbps": plan.up_mbps,
            "vlan": plan.vlan,
            "verify": VerifyMode(plan.verify).value,
            "created_at": now,
            "updated_at": now,
        }
        stmt = self._insert(plans).values(values)
        update = {k: stmt.excluded[k] for k in values if k not in ("id", "created_at")}
        await self._conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=update))

    # -- orders -------------------------------------------------------------------

    async def get_order(self, order_id: str, *, for_update: bool = False) -> Order | None:
        stmt = _GET_ORDER.with_for_update() if for_update and self._lock_rows else _GET_ORDER
        row = (await self._conn.execute(stmt, {"b_id": order_id})).mappings().first()
        return _order(row) if row else None

    async def get_order_hash(self, order_id: str) -> str | None:
        stmt = sa.select(orders.c.request_hash).where(orders.c.id == order_id)
        value = (await self._conn.execute(stmt)).scalar_one_or_none()
        return str(value) if value is not None else None

    async def insert_order(self, order: Order, request_hash: str) -> None:
        """Insert a new order. An existing id raises `StoreConflict`; the
        transaction stays usable (the caller may re-read the existing order)."""
        stmt = (
            self._insert(orders)
            .values({**_order_values(order), "request_hash": request_hash})
            .on_conflict_do_nothing(index_elements=["id"])
        )
        if await self._rowcount(stmt) != 1:
            raise StoreConflict(f"order {order.id} already exists")

    async def update_order(self, order: Order) -> Order:
        """Write `order` if the row is still at `order.version`; returns it at the new version."""
        values = _order_values(order)
        values["version"] = order.version + 1
        params = {f"v_{name}": values[name] for name in _ORDER_COLUMNS}
        params["b_id"], params["b_version"] = order.id, order.version
        result = await self._conn.execute(_UPDATE_ORDER, params)
        if int(getattr(result, "rowcount", 0)) != 1:
            raise StoreConflict(f"order {order.id} changed since version {order.version}")
        return replace(order, version=order.version + 1)

    async def list_orders(self, state: str | None, limit: int, after: str | None) -> list[Order]:
        stmt = sa.select(orders)
        if state is not None:
            stmt = stmt.where(orders.c.state == state)
        return [_order(r) for r in await self._rows(_keyset(stmt, orders.c.id, after, limit))]

    async def candidate_orders(self, serial: str, location: Location) -> list[Order]:
        """Open orders that may fit a device: same serial key, or (no expected
        serial and) the same circuit-id or OLT + PON port. The core decides.

        One indexed SELECT per way to fit, not one OR'ed query: SQLite plans an
        OR across columns as a scan of every open order, which made a mass
        power-on quadratic."""
        open_states = orders.c.state.in_([s.value for s in OPEN_STATES])
        ways: list[sa.ColumnElement[bool]] = []
        key = match_key(serial)
        if key:
            ways.append(orders.c.serial_key == key)
        no_serial = orders.c.expected_serial.is_(None)
        if location.circuit_id:
            ways.append(sa.and_(orders.c.circuit_id == location.circuit_id, no_serial))
        if location.olt and location.pon_port:
            ways.append(
                sa.and_(
                    orders.c.pon_port == location.pon_port,
                    sa.func.lower(orders.c.olt) == location.olt.lower(),
                    no_serial,
                )
            )
        found: dict[str, Order] = {}
        for way in ways:
            stmt = sa.select(orders).where(way, open_states)
            for row in await self._rows(self._locked(stmt, True)):
                found.setdefault(row["id"], _order(row))
        return [found[k] for k in sorted(found)]

    async def orders_due(self, now: datetime, limit: int) -> list[Order]:
        """Live orders whose retry or deadline has come, the longest overdue first."""
        due_at = sa.func.coalesce(orders.c.next_retry_at, orders.c.deadline_at)
        stmt = (
            sa.select(orders)
            .where(
                orders.c.state.in_([s.value for s in DUE_STATES]),
                sa.or_(orders.c.next_retry_at <= now, orders.c.deadline_at <= now),
            )
            .order_by(due_at, orders.c.id)
            .limit(max(limit, 0))
        )
        return [_order(r) for r in await self._rows(stmt)]

    async def count_orders_by_state(self) -> dict[str, int]:
        """Every state, zero included (a gauge per state)."""
        counts = {s.value: 0 for s in OrderState}
        stmt = sa.select(orders.c.state, sa.func.count()).group_by(orders.c.state)
        for state, count in await self._conn.execute(stmt):
            counts[str(state)] = int(count)
        return counts

    # -- devices ------------------------------------------------------------------

    async def get_device(self, serial: str, *, for_update: bool = False) -> Device | None:
        stmt = _GET_DEVICE.with_for_update() if for_update and self._lock_rows else _GET_DEVICE
        row = (await self._conn.execute(stmt, {"b_serial": serial})).mappings().first()
        return _device(row) if row else None

    async def save_device(self, device: Device) -> None:
        await self._conn.execute(_upsert_device(self._pg), _device_values(device))

    async def touch_devices(self, touched: Mapping[str, tuple[datetime, str]]) -> None:
        """Batched `last_seen`/`source` for devices seen with nothing to decide
        (one executemany; never moves `last_seen` backwards)."""
        if not touched:
            return
        stmt = (
            devices.update()
            .where(devices.c.serial == sa.bindparam("b_serial"))
            .where(devices.c.last_seen < sa.bindparam("b_seen"))
            .values(last_seen=sa.bindparam("b_seen"), source=sa.bindparam("b_source"))
        )
        await self._conn.execute(
            stmt,
            [
                {"b_serial": serial, "b_seen": seen, "b_source": source}
                for serial, (seen, source) in touched.items()
            ],
        )

    async def list_devices(self, status: str | None, limit: int, after: str | None) -> list[Device]:
        stmt = sa.select(devices)
        if status is not None:
            stmt = stmt.where(devices.c.status == status)
        return [_device(r) for r in await self._rows(_keyset(stmt, devices.c.serial, after, limit))]

    async def candidate_devices(self, order: Order) -> list[Device]:
        """Unbound devices that may fit a new order: same serial key, or the same
        circuit-id or OLT + PON port. The core decides. (One indexed SELECT per
        way to fit, as in `candidate_orders`.)"""
        unbound = devices.c.status != DeviceStatus.BOUND.value
        ways: list[sa.ColumnElement[bool]] = []
        key = match_key(order.expected_serial)
        if key:
            ways.append(devices.c.serial_key == key)
        loc = order.location
        if loc.circuit_id:
            ways.append(devices.c.circuit_id == loc.circuit_id)
        if loc.olt and loc.pon_port:
            ways.append(
                sa.and_(
                    devices.c.pon_port == loc.pon_port,
                    sa.func.lower(devices.c.olt) == loc.olt.lower(),
                )
            )
        found: dict[str, Device] = {}
        for way in ways:
            stmt = sa.select(devices).where(way, unbound)
            for row in await self._rows(self._locked(stmt, True)):
                found.setdefault(row["serial"], _device(row))
        return [found[k] for k in sorted(found)]

    # -- events -------------------------------------------------------------------

    async def add_note(self, note: Note) -> None:
        await self._conn.execute(
            events.insert().values(
                at=note.at,
                kind=note.kind,
                order_id=note.order_id,
                serial=note.serial,
                detail=dict(note.detail),
            )
        )

    async def add_notes(self, notes: Sequence[Note]) -> None:
        await self._conn.execute(
            events.insert(),
            [
                {
                    "at": n.at,
                    "kind": n.kind,
                    "order_id": n.order_id,
                    "serial": n.serial,
                    "detail": dict(n.detail),
                }
                for n in notes
            ],
        )

    async def list_events(
        self,
        after_id: int,
        limit: int,
        order_id: str | None = None,
        serial: str | None = None,
    ) -> list[EventRecord]:
        stmt = sa.select(events)
        if order_id is not None:
            stmt = stmt.where(events.c.order_id == order_id)
        if serial is not None:
            stmt = stmt.where(events.c.serial == serial)
        return [_event(r) for r in await self._rows(_keyset(stmt, events.c.id, after_id, limit))]

    # -- device tasks ---------------------------------------------------------------

    async def add_task(
        self,
        serial: str,
        order_id: str | None,
        kind: str,
        payload: dict[str, Any],
        now: datetime,
    ) -> int:
        if kind not in TASK_KINDS:
            raise ValueError(f"unknown task kind {kind!r}")
        values = {
            "serial": serial,
            "order_id": order_id,
            "kind": kind,
            "payload": dict(payload),
            "state": "queued",
            "created_at": now,
        }
        return int((await self._conn.execute(_ADD_TASK, values)).scalar_one())

    async def next_task(self, serial: str) -> Task | None:
        stmt = _NEXT_TASK.with_for_update() if self._lock_rows else _NEXT_TASK
        row = (await self._conn.execute(stmt, {"b_serial": serial})).mappings().first()
        return _task(row) if row else None

    async def mark_task_sent(self, task_id: int, now: datetime) -> None:
        await self._conn.execute(_MARK_SENT, {"b_id": task_id, "b_at": now})

    async def finish_task(
        self,
        task_id: int,
        state: str,
        now: datetime,
        result: dict[str, Any] | None = None,
        fault: str | None = None,
    ) -> None:
        if state not in TASK_FINAL_STATES:
            raise ValueError(
                f"a task finishes as one of {sorted(TASK_FINAL_STATES)}, not {state!r}"
            )
        await self._conn.execute(
            _FINISH_TASK,
            {
                "b_id": task_id,
                "b_state": state,
                "b_at": now,
                "b_result": dict(result) if result is not None else None,
                "b_fault": fault,
            },
        )

    async def requeue_sent_tasks(self, serial: str) -> int:
        """Tasks sent in a session the device dropped go back to the queue."""
        return await self._rowcount(
            device_tasks.update()
            .where(device_tasks.c.serial == serial, device_tasks.c.state == "sent")
            .values(state="queued", sent_at=None)
        )

    async def cancel_tasks(self, serial: str, now: datetime) -> int:
        """Every unfinished task of the device (queued or sent) becomes cancelled."""
        return await self._rowcount(
            device_tasks.update()
            .where(
                device_tasks.c.serial == serial,
                device_tasks.c.state.in_(("queued", "sent")),
            )
            .values(state="cancelled", finished_at=now)
        )

    async def list_tasks(self, serial: str, limit: int = 50) -> list[Task]:
        """The device's most recent tasks, newest first."""
        stmt = (
            sa.select(device_tasks)
            .where(device_tasks.c.serial == serial)
            .order_by(device_tasks.c.id.desc())
            .limit(max(limit, 0))
        )
        return [_task(r) for r in await self._rows(stmt)]

    async def has_queued_tasks(self, serial: str) -> bool:
        stmt = sa.select(
            sa.exists().where(device_tasks.c.serial == serial, device_tasks.c.state == "queued")
        )
        return bool((await self._conn.execute(stmt)).scalar())

    # -- outbox -------------------------------------------------------------------

    async def add_outbox(self, event_type: str, payload: dict[str, Any], now: datetime) -> str:
        message_id = new_message_id()
        await self._conn.execute(
            _ADD_OUTBOX,
            {
                "id": message_id,
                "event_type": event_type,
                "payload": dict(payload),
                "created_at": now,
                "next_attempt_at": now,
                "attempts": 0,
                "state": "pending",
            },
        )
        return message_id

    # -- effects ------------------------------------------------------------------

    async def apply_outcome(
        self, outcome: Outcome, now: datetime, *, new_order_hash: str | None = None
    ) -> list[RequestConnection]:
        """Write what the core decided. Orders already stored are updated (version
        checked); orders not stored yet are inserted with `new_order_hash`. Returns
        the connection requests to send once the transaction has committed."""
        for order in outcome.orders:
            # A new order is at version 0 and comes with its request hash; every
            # other order is updated (version checked), never inserted by accident.
            if new_order_hash is not None and order.version == 0:
                await self.insert_order(order, new_order_hash)
            else:
                await self.update_order(order)
        if outcome.device is not None:
            await self.save_device(outcome.device)
        connect: list[RequestConnection] = []
        notes = [e for e in outcome.effects if isinstance(e, Note)]
        if notes:
            await self.add_notes(notes)
        for effect in outcome.effects:
            match effect:
                case Note():
                    pass  # written above in one statement
                case EmitWebhook(event_type=event_type, data=data):
                    await self.add_outbox(event_type, data, now)
                case PushConfiguration(order_id=order_id, serial=serial):
                    await self.add_task(serial, order_id, "configure", {}, now)
                case StartThroughputTest(order_id=order_id, serial=serial, direction=direction):
                    await self.add_task(
                        serial,
                        order_id,
                        f"{direction}_diagnostics",
                        {"direction": direction},
                        now,
                    )
                case ReadThroughputResult(order_id=order_id, serial=serial, direction=direction):
                    await self.add_task(
                        serial, order_id, f"read_{direction}", {"direction": direction}, now
                    )
                case CancelDeviceWork(serial=serial):
                    await self.cancel_tasks(serial, now)
                case RequestConnection():
                    if effect not in connect:
                        connect.append(effect)
        return connect


# ---- the store ------------------------------------------------------------------


def _memory_url(url: str) -> bool:
    parsed = make_url(url)
    return not parsed.database or parsed.database == ":memory:" or "mode=memory" in url


class Store:
    """The database: transactions for the daemon, and the relay's `OutboxStore`."""

    outbox_lease = timedelta(seconds=60)  # a claimed message is retried after this

    def __init__(self, engine: AsyncEngine, backend: str, url: str | None = None) -> None:
        self._engine = engine
        self._backend = backend
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if backend == "sqlite" else None
        # SQLite on a file: whole write transactions in one thread (see sqlite_writer).
        self._writer: SqliteWriter | None = None
        if backend == "sqlite" and url is not None and not _memory_url(url):
            self._writer = SqliteWriter(url)

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, pool_size: int = 10) -> Store:
        backend = backend_of(url)
        engine = create_engine_for(url, pool_size=pool_size)
        try:
            if migrate:
                await migrate_engine(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, backend, url)

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)
            self._writer = None
        await self._engine.dispose()

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def run_transaction(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """`fn(tx)` as one write transaction (commit when it returns, rollback when
        it raises). On SQLite the whole function runs in the writer thread, so
        it must only await `tx` (no sockets, no other tasks' events)."""
        if self._writer is None or self._write_lock is None:
            async with self.transaction() as tx:
                return await fn(tx)
        backend = self._backend
        async with self._write_lock:
            return await self._writer.run(fn, lambda conn: Tx(conn, backend))

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """One write transaction: commit on exit, rollback on an exception."""
        return self._write()

    def read(self) -> AbstractAsyncContextManager[Tx]:
        """One read-only transaction (on SQLite it takes no writer lock)."""
        return self._read()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Tx]:
        if self._write_lock is None:
            async with self._engine.connect() as conn, conn.begin():
                yield Tx(conn, self._backend)
            return
        async with self._write_lock, self._engine.connect() as conn:
            await conn.execution_options(**{BEGIN_MODE: "IMMEDIATE"})
            async with conn.begin():
                yield Tx(conn, self._backend)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Tx]:
        async with self._engine.connect() as conn:
            if self._backend == "postgresql":
                await conn.execution_options(postgresql_readonly=True)
            async with conn.begin():
                yield Tx(conn, self._backend, readonly=True)

    async def requeue_all_sent_tasks(self) -> int:
        """At start-up: tasks sent in sessions that died with the last process
        go back to the queue. Returns how many."""
        async with self.transaction() as tx:
            return await tx._rowcount(
                device_tasks.update()
                .where(device_tasks.c.state == "sent")
                .values(state="queued", sent_at=None)
            )

    # -- OutboxStore ----------------------------------------------------------------

    async def claim_due(self, now: datetime, limit: int) -> list[OutboxMessage]:
        """Pending messages due by `now`, oldest first, leased for `outbox_lease`."""

        async def claim(tx: Tx) -> list[OutboxRow]:
            stmt = (
                sa.select(outbox)
                .where(outbox.c.state == "pending", outbox.c.next_attempt_at <= now)
                .order_by(outbox.c.next_attempt_at, outbox.c.created_at, outbox.c.id)
                .limit(max(limit, 0))
            )
            if self._backend == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            rows = [_outbox_row(r) for r in await tx._rows(stmt)]
            if rows:
                await tx.connection.execute(
                    outbox.update()
                    .where(outbox.c.id.in_([r.id for r in rows]))
                    .values(next_attempt_at=now + self.outbox_lease)
                )
            return rows

        rows = await self.run_transaction(claim)
        return [
            OutboxMessage(
                id=r.id,
                event_type=r.event_type,
                payload=r.payload,
                created_at=r.created_at,
                attempts=r.attempts,
                next_attempt_at=r.next_attempt_at,
            )
            for r in rows
        ]

    async def _settle(self, message_id: str, **values: Any) -> None:
        # A message no longer pending (settled twice after a lease ran out) is left alone.
        stmt = (
            outbox.update()
            .where(outbox.c.id == message_id, outbox.c.state == "pending")
            .values(attempts=outbox.c.attempts + 1, **values)
        )
        await self.run_transaction(lambda tx: tx.connection.execute(stmt))

    async def mark_delivered(self, message_id: str, now: datetime, status_code: int) -> None:
        await self._settle(message_id, state="delivered", delivered_at=now, last_status=status_code)

    async def mark_retry(
        self,
        message_id: str,
        now: datetime,
        next_attempt_at: datetime,
        error: str,
        status_code: int | None,
    ) -> None:
        await self._settle(
            message_id, next_attempt_at=next_attempt_at, last_error=error, last_status=status_code
        )

    async def mark_dead(
        self, message_id: str, now: datetime, error: str, status_code: int | None
    ) -> None:
        await self._settle(message_id, state="dead", last_error=error, last_status=status_code)

    async def endpoint_disabled(self) -> str | None:
        async with self.read() as tx:
            row = await tx._row(
                sa.select(webhook_endpoint).where(webhook_endpoint.c.id == ENDPOINT_ID)
            )
        if row is None or row["disabled_at"] is None:
            return None
        return str(row["reason"] or "disabled")

    async def disable_endpoint(self, now: datetime, reason: str) -> None:
        """Disable the endpoint; the first reason stays until it is enabled again."""
        async with self.transaction() as tx:
            stmt = tx._insert(webhook_endpoint).values(
                id=ENDPOINT_ID, disabled_at=now, reason=reason
            )
            await tx.connection.execute(
                stmt.on_conflict_do_update(
                    index_elements=["id"],
                    set_={"disabled_at": now, "reason": reason},
                    where=webhook_endpoint.c.disabled_at.is_(None),
                )
            )

    async def enable_endpoint(self) -> None:
        async with self.transaction() as tx:
            await tx.connection.execute(
                webhook_endpoint.update()
                .where(webhook_endpoint.c.id == ENDPOINT_ID)
                .values(disabled_at=None, reason=None)
            )

    async def endpoint_disabled_at(self) -> datetime | None:
        async with self.read() as tx:
            row = await tx._row(
                sa.select(webhook_endpoint.c.disabled_at).where(
                    webhook_endpoint.c.id == ENDPOINT_ID
                )
            )
        return _opt_utc(row["disabled_at"]) if row else None

    async def get_outbox(self, message_id: str) -> OutboxRow | None:
        async with self.read() as tx:
            row = await tx._row(sa.select(outbox).where(outbox.c.id == message_id))
        return _outbox_row(row) if row else None

    async def list_dead(self, limit: int = 100) -> list[OutboxRow]:
        """Dead-lettered messages, oldest first."""
        async with self.read() as tx:
            rows = await tx._rows(
                sa.select(outbox)
                .where(outbox.c.state == "dead")
                .order_by(outbox.c.created_at, outbox.c.id)
                .limit(max(limit, 0))
            )
        return [_outbox_row(r) for r in rows]

    async def list_outbox(
        self, state: str | None, limit: int, after: str | None
    ) -> list[OutboxRow]:
        """Outbox rows by id (keyset paging: pass the last id seen as `after`)."""
        stmt = sa.select(outbox)
        if state is not None:
            stmt = stmt.where(outbox.c.state == state)
        async with self.read() as tx:
            rows = await tx._rows(_keyset(stmt, outbox.c.id, after, limit))
        return [_outbox_row(r) for r in rows]

    async def redeliver(self, message_id: str, now: datetime) -> bool:
        """A dead message goes back to pending, due now, same id, with a fresh
        retry schedule (attempts back to 0). False if unknown or not dead."""
        async with self.transaction() as tx:
            count = await tx._rowcount(
                outbox.update()
                .where(outbox.c.id == message_id, outbox.c.state == "dead")
                .values(state="pending", next_attempt_at=now, attempts=0)
            )
        return count == 1

    async def outbox_stats(self, now: datetime) -> tuple[int, float]:
        """(pending depth, age in seconds of the oldest pending message, 0 if none)."""
        stmt = sa.select(sa.func.count(), sa.func.min(outbox.c.created_at)).where(
            outbox.c.state == "pending"
        )
        async with self.read() as tx:
            count, oldest = (await tx.connection.execute(stmt)).one()
        if not count or oldest is None:
            return 0, 0.0
        return int(count), max(0.0, (now - as_utc(oldest)).total_seconds())
