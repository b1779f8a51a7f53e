"""How orders, devices, events, tasks and webhooks read on the control API.

Pure builders from core dataclasses and store rows to the response models in
`models.py`, plus the one-line order summary a technician at the premises
reads. No I/O: the routes load what these need.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from daemon.api.models import (
    BoundDeviceOut,
    DeviceListItem,
    DeviceOut,
    EventOut,
    LocationOut,
    OrderListItem,
    OrderOut,
    OutboxOut,
    PlanOut,
    ServiceSettingsOut,
    TaskOut,
    TimelineStepOut,
)
from daemon.core.activation import Policy
from daemon.core.identity import VENDORS
from daemon.core.orders import Device, Order, OrderState, TimelineStep
from daemon.core.plans import Plan, VerifyMode
from daemon.store.repository import EventRecord, OutboxRow, Task

S = OrderState


def when(at: datetime, now: datetime) -> str:
    """`19:20:01 UTC` today, `2026-01-02 19:20:01 UTC` on another day."""
    if at.date() == now.date():
        return at.strftime("%H:%M:%S UTC")
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def _reason(text: str | None, fallback: str) -> str:
    """The core's last_error without its "(attempt n of m; ...)" tail, capitalised."""
    if not text:
        return fallback
    head = text.split(" (attempt ", 1)[0].strip()
    return head[:1].upper() + head[1:]


def summarise(order: Order, plan: Plan | None, policy: Policy, now: datetime) -> str:
    """Where the order stands, in plain words."""
    state = order.state
    if state is S.PENDING:
        where = order.location.describe() if order.location.known else ""
        if order.expected_serial:
            text = f"Waiting for device {order.expected_serial} to come online"
            return f"{text} at {where}" if where else text
        return f"Waiting for a device to come online at {where or 'the ordered location'}"
    if state is S.WRONG_LOCATION:
        return f"Held: the device was seen at the wrong location ({order.last_error or 'unknown'})"
    if state is S.CONFIGURING:
        text = f"Device {order.device_serial} found; sending the service configuration"
        if order.config_attempts > 1:
            text += f" (attempt {order.config_attempts} of {policy.max_config_attempts})"
        return text
    if state is S.TESTING:
        phase = order.test_phase or "throughput"
        return (
            f"Configuration applied; {phase} test running "
            f"(attempt {order.test_attempts} of {policy.max_test_attempts})"
        )
    if state is S.TEST_FAILED:
        reason = _reason(order.last_error, "Throughput test failed")
        if order.next_retry_at is not None:
            return f"{reason}; retry at {when(order.next_retry_at, now)}"
        return f"{reason}; no automatic retries left, ask for a retry when fixed"
    if state is S.ACTIVE:
        since = order.timeline.get(TimelineStep.ACTIVE.value) or order.updated_at
        text = f"Active since {when(since, now)}"
        down, up = order.measured_down_mbps, order.measured_up_mbps
        if down is not None and up is not None:
            return f"{text}; measured {down:.1f}/{up:.1f} Mbit/s"
        if down is not None:
            return f"{text}; measured {down:.1f} Mbit/s down"
        if plan is not None and plan.verify is VerifyMode.NONE:
            return f"{text}; this plan has no throughput test"
        return text
    if state is S.FAILED:
        return f"Failed: {order.last_error or 'no reason recorded'}; ask for a retry when fixed"
    return f"Cancelled at {when(order.updated_at, now)}"


def settings_view(settings: dict[str, Any]) -> ServiceSettingsOut:
    """Names only: Wi-Fi keys and PPPoE passwords never leave through the API."""
    wifi = settings.get("wifi") or {}
    pppoe = settings.get("pppoe") or {}
    return ServiceSettingsOut(
        wifi_ssid=wifi.get("ssid"),
        wifi_key_set=bool(wifi.get("key")),
        pppoe_username=pppoe.get("username"),
        pppoe_password_set=bool(pppoe.get("password")),
    )


def event_out(e: EventRecord) -> EventOut:
    return EventOut(
        id=e.id,
        at=e.at,
        kind=e.kind,
        order_id=e.order_id,
        serial=e.serial,
        detail=dict(e.detail or {}),
    )


def bound_device_out(d: Device) -> BoundDeviceOut:
    return BoundDeviceOut(
        serial=d.serial,
        vendor_id=d.vendor_id,
        vendor=VENDORS.get(d.vendor_id),
        manufacturer=d.manufacturer,
        model=d.model or d.product_class,
        firmware=d.firmware,
        last_contact=d.last_seen,
        last_contact_source=d.source,
        location=LocationOut.of(d.location),
    )


def order_out(
    order: Order,
    plan: Plan | None,
    policy: Policy,
    now: datetime,
    device: Device | None = None,
    events: Sequence[EventRecord] = (),
) -> OrderOut:
    return OrderOut(
        id=order.id,
        account_id=order.account_id,
        plan_id=order.plan_id,
        plan=PlanOut.of(plan) if plan else None,
        network_type=order.network_type,
        state=order.state,
        summary=summarise(order, plan, policy, now),
        expected_serial=order.expected_serial,
        device_serial=order.device_serial,
        location=LocationOut.of(order.location),
        settings=settings_view(order.settings),
        timeline=[
            TimelineStepOut(step=step.value, at=order.timeline.get(step.value))
            for step in TimelineStep
        ],
        last_error=order.last_error,
        measured_down_mbps=order.measured_down_mbps,
        measured_up_mbps=order.measured_up_mbps,
        test_attempts=order.test_attempts,
        config_attempts=order.config_attempts,
        test_phase=order.test_phase,
        next_retry_at=order.next_retry_at,
        deadline_at=order.deadline_at,
        test_notes=list(order.test_notes),
        created_at=order.created_at,
        updated_at=order.updated_at,
        device=bound_device_out(device) if device else None,
        events=[event_out(e) for e in events],
    )


def order_item(order: Order, plan: Plan | None, policy: Policy, now: datetime) -> OrderListItem:
    return OrderListItem(
        id=order.id,
        account_id=order.account_id,
        plan_id=order.plan_id,
        network_type=order.network_type,
        state=order.state,
        summary=summarise(order, plan, policy, now),
        expected_serial=order.expected_serial,
        device_serial=order.device_serial,
        last_error=order.last_error,
        created_at=order.created_at,
        updated_at=order.updated_at,
    )


def task_out(t: Task) -> TaskOut:
    payload = dict(t.payload or {})
    method = payload.get("method")
    return TaskOut(
        id=t.id,
        kind=t.kind,
        method=method if isinstance(method, str) else None,
        order_id=t.order_id,
        payload=_redact(payload),
        state=t.state,
        created_at=t.created_at,
        sent_at=t.sent_at,
        finished_at=t.finished_at,
        result=t.result,
        fault=t.fault,
    )


_SECRET_KEYS = frozenset({"password", "key", "connection_request_password"})


def _redact(value: Any) -> Any:
    """Passwords in queued RPC args (Download credentials) are not echoed back."""
    if isinstance(value, dict):
        return {k: ("***" if k in _SECRET_KEYS and v else _redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def device_item(d: Device) -> DeviceListItem:
    return DeviceListItem(
        serial=d.serial,
        status=d.status,
        vendor_id=d.vendor_id,
        vendor=VENDORS.get(d.vendor_id),
        model=d.model or d.product_class,
        first_seen=d.first_seen,
        last_seen=d.last_seen,
        last_contact_source=d.source,
        location=LocationOut.of(d.location),
        order_id=d.order_id,
    )


def device_out(d: Device, tasks: Sequence[Task]) -> DeviceOut:
    return DeviceOut(
        serial=d.serial,
        status=d.status,
        vendor_id=d.vendor_id,
        vendor=VENDORS.get(d.vendor_id),
        manufacturer=d.manufacturer,
        oui=d.oui,
        product_class=d.product_class,
        model=d.model,
        firmware=d.firmware,
        data_model=d.data_model,
        profile=d.profile,
        first_seen=d.first_seen,
        last_seen=d.last_seen,
        last_contact_source=d.source,
        location=LocationOut.of(d.location),
        order_id=d.order_id,
        connection_request_url_present=bool(d.connection_request_url),
        tasks=[task_out(t) for t in tasks],
    )


def outbox_out(row: OutboxRow) -> OutboxOut:
    return OutboxOut(
        id=row.id,
        event_type=row.event_type,
        payload=dict(row.payload or {}),
        created_at=row.created_at,
        next_attempt_at=row.next_attempt_at,
        attempts=row.attempts,
        state=row.state,
        last_error=row.last_error,
        last_status=row.last_status,
        delivered_at=row.delivered_at,
    )
