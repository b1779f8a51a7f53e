"""The activation state machine: apply(event) -> new order/device + effects.

match → configure → verify (TR-143) → active, with the failure branches
(wrong location, configuration fault, throughput below plan, overdue steps).
Pure: the caller loads the order, device and plan, and writes what comes back
plus the effects in one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from daemon.core.events import (
    CancelDeviceWork,
    CancelRequested,
    ConfigApplied,
    ConfigFaulted,
    DeviceSeen,
    Effect,
    EmitWebhook,
    Note,
    OrderEvent,
    PushConfiguration,
    ReadThroughputResult,
    RequestConnection,
    RetryRequested,
    StartThroughputTest,
    TestFaulted,
    ThroughputMeasured,
    TimerDue,
)
from daemon.core.matching import MatchKind, match
from daemon.core.orders import (
    OPEN_STATES,
    Device,
    DeviceStatus,
    Order,
    OrderState,
    TimelineStep,
)
from daemon.core.plans import Plan, VerifyMode
from daemon.core.throughput import ThroughputResult

S = OrderState


@dataclass(frozen=True, slots=True)
class Policy:
    pass_fraction: float = 0.9
    max_test_attempts: int = 3
    test_retry_delay: timedelta = timedelta(minutes=5)
    step_timeout: timedelta = timedelta(minutes=10)
    max_config_attempts: int = 3


@dataclass(frozen=True, slots=True)
class Outcome:
    device: Device | None = None
    orders: tuple[Order, ...] = ()
    effects: tuple[Effect, ...] = ()


class NotAllowed(ValueError):
    """A request (retry, cancel) that the order's state does not allow; 409 on the API."""


@dataclass(slots=True)
class _Acc:
    effects: list[Effect] = field(default_factory=list)

    def note(
        self, kind: str, now: datetime, order: Order | None, serial: str | None, **d: Any
    ) -> None:
        self.effects.append(Note(kind, order.id if order else None, serial, d, now))


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at else None


def order_view(order: Order) -> dict[str, Any]:
    return {
        "order_id": order.id,
        "account_id": order.account_id,
        "plan_id": order.plan_id,
        "network_type": order.network_type.value,
        "state": order.state.value,
        "location": order.location.as_dict(),
        "timeline": {k: _iso(v) for k, v in order.timeline.items()},
    }


def activated_payload(
    order: Order, plan: Plan, device: Device | None, now: datetime
) -> dict[str, Any]:
    data = order_view(order)
    data.update(
        {
            "plan": plan.as_dict(),
            "device": device.describe() if device else {"serial": order.device_serial},
            "location": (
                device.location if device and device.location.known else order.location
            ).as_dict(),
            "activated_at": _iso(now),
            "measured": {"down_mbps": order.measured_down_mbps, "up_mbps": order.measured_up_mbps},
        }
    )
    return data


def failed_payload(order: Order, device: Device | None, reason: str) -> dict[str, Any]:
    data = order_view(order)
    data.update(
        {
            "device": device.describe() if device else {"serial": order.device_serial},
            "reason": reason,
            "test_attempts": order.test_attempts,
            "measured": {"down_mbps": order.measured_down_mbps, "up_mbps": order.measured_up_mbps},
        }
    )
    return data


# What a sighting may tell us about a device: a non-empty value replaces the stored one.
_SEEN_FIELDS = (
    "vendor_id",
    "manufacturer",
    "oui",
    "product_class",
    "model",
    "firmware",
    "connection_request_url",
    "data_model",
    "profile",
)


def _merge_device(device: Device | None, seen: DeviceSeen, now: datetime) -> Device:
    if device is None:
        device = Device(
            serial=seen.serial, status=DeviceStatus.UNMATCHED, first_seen=now, last_seen=now
        )
    updates: dict[str, Any] = {"last_seen": now, "source": seen.source}
    for name in _SEEN_FIELDS:
        value = getattr(seen, name)
        if value:
            updates[name] = value
    if seen.location.known:
        updates["location"] = seen.location
    return replace(device, **updates)


def _sighting_changes(device: Device, seen: DeviceSeen) -> bool:
    """Whether `_merge_device` would change anything but `last_seen`/`source`."""
    for name in _SEEN_FIELDS:
        value = getattr(seen, name)
        if value and value != getattr(device, name):
            return True
    return seen.location.known and seen.location != device.location


# ---- device sightings -----------------------------------------------------


def on_device_seen(
    seen: DeviceSeen,
    device: Device | None,
    bound_order: Order | None,
    candidates: Sequence[Order],
    plans: Mapping[str, Plan],
    policy: Policy,
    now: datetime,
) -> Outcome:
    """A device spoke. `bound_order` is the order it is bound to (if any);
    `candidates` are open orders that may fit it (the store preselects by serial
    key and location; we decide)."""
    acc = _Acc()
    first_contact = device is None
    dev = _merge_device(device, seen, now)
    if first_contact:
        acc.note(
            "device.first_seen",
            now,
            None,
            dev.serial,
            source=seen.source,
            location=dev.location.describe(),
        )

    if bound_order is not None and bound_order.state not in (S.CANCELLED, S.PENDING):
        if bound_order.state is S.TESTING and seen.diagnostics_complete and bound_order.test_phase:
            acc.effects.append(
                ReadThroughputResult(bound_order.id, dev.serial, bound_order.test_phase)
            )
            acc.note(
                "test.results_ready", now, bound_order, dev.serial, direction=bound_order.test_phase
            )
        if bound_order.state is S.ACTIVE and seen.bootstrap:
            # A live service's device came back from a factory reset (or was swapped
            # for a new unit with the same serial): it lost its configuration. Push it
            # again; the order stays active and billing is not told anything new.
            acc.effects.append(PushConfiguration(bound_order.id, dev.serial))
            acc.note("device.bootstrap_reconfigure", now, bound_order, dev.serial)
        return Outcome(dev, (), tuple(acc.effects))

    result = match(dev.serial, dev.location, [o for o in candidates if o.state in OPEN_STATES])
    if result.kind is MatchKind.MATCHED and result.order is not None:
        order, dev = _bind(result.order, dev, plans, policy, now, acc, how=result.reason)
        if seen.source != "tr069":
            acc.effects.append(RequestConnection(dev.serial))
        return Outcome(dev, (order,), tuple(acc.effects))
    if result.kind is MatchKind.WRONG_LOCATION and result.order is not None:
        order, dev = _hold(result.order, dev, result.reason, now, acc)
        return Outcome(dev, (order,) if order is not result.order else (), tuple(acc.effects))
    dev = replace(dev, status=DeviceStatus.UNMATCHED, order_id=None)
    if not dev.reported_unmatched:
        dev = replace(dev, reported_unmatched=True)
        acc.effects.append(
            EmitWebhook(
                "device.unmatched",
                {
                    "device": dev.describe(),
                    "location": dev.location.as_dict(),
                    "source": seen.source,
                    "first_seen": _iso(dev.first_seen),
                    "reason": result.reason or "no order expects this serial or location",
                },
            )
        )
        acc.note("device.unmatched", now, None, dev.serial, reason=result.reason or "no order")
    return Outcome(dev, (), tuple(acc.effects))


def _bind(
    order: Order,
    dev: Device,
    plans: Mapping[str, Plan],
    policy: Policy,
    now: datetime,
    acc: _Acc,
    how: str,
) -> tuple[Order, Device]:
    timeline = order.with_step(TimelineStep.FIRST_SEEN, dev.first_seen)
    timeline.setdefault(TimelineStep.MATCHED.value, now)
    new = order.transition(
        S.CONFIGURING,
        now,
        device_serial=dev.serial,
        timeline=timeline,
        config_attempts=1,
        test_attempts=0,
        last_error=None,
        deadline_at=now + policy.step_timeout,
        next_retry_at=None,
    )
    dev = replace(dev, status=DeviceStatus.BOUND, order_id=order.id)
    acc.effects.append(PushConfiguration(order.id, dev.serial))
    acc.note("order.matched", now, new, dev.serial, by=how, location=dev.location.describe())
    return new, dev


def _hold(order: Order, dev: Device, reason: str, now: datetime, acc: _Acc) -> tuple[Order, Device]:
    dev = replace(dev, status=DeviceStatus.HELD, order_id=None)
    if order.state is S.WRONG_LOCATION and order.last_error == reason:
        return order, dev
    timeline = order.with_step(TimelineStep.FIRST_SEEN, dev.first_seen)
    new = order.transition(S.WRONG_LOCATION, now, last_error=reason, timeline=timeline)
    acc.effects.append(
        EmitWebhook(
            "device.wrong_location",
            {
                **order_view(new),
                "device": dev.describe(),
                "seen_location": dev.location.as_dict(),
                "reason": reason,
            },
        )
    )
    acc.note("order.wrong_location", now, new, dev.serial, reason=reason)
    return new, dev


def on_order_placed(
    order: Order,
    devices: Sequence[Device],
    plans: Mapping[str, Plan],
    policy: Policy,
    now: datetime,
) -> Outcome:
    """A new order. `devices` are known, unbound devices that may fit it: a
    device already online is taken now, without a power cycle."""
    acc = _Acc()
    placed = replace(order, timeline={TimelineStep.ORDERED.value: now})
    acc.note("order.placed", now, placed, order.expected_serial, plan=order.plan_id)
    for dev in devices:
        if dev.status is DeviceStatus.BOUND:
            continue
        result = match(dev.serial, dev.location, [placed])
        if result.kind is MatchKind.MATCHED:
            new, bound = _bind(placed, dev, plans, policy, now, acc, how=result.reason)
            acc.effects.append(RequestConnection(bound.serial))
            return Outcome(bound, (new,), tuple(acc.effects))
        if result.kind is MatchKind.WRONG_LOCATION:
            new, held = _hold(placed, dev, result.reason, now, acc)
            return Outcome(held, (new,), tuple(acc.effects))
    return Outcome(None, (placed,), tuple(acc.effects))


# ---- order events ---------------------------------------------------------


def apply(
    order: Order,
    event: OrderEvent,
    plan: Plan,
    device: Device | None,
    policy: Policy,
    now: datetime,
) -> Outcome:
    acc = _Acc()
    new: Order = order
    dev = device
    match event:
        case ConfigApplied() if order.state is S.CONFIGURING:
            timeline = order.with_step(TimelineStep.CONFIGURED, now)
            acc.note("order.configured", now, order, order.device_serial)
            if plan.verify is VerifyMode.NONE:
                new = _activate(replace(order, timeline=timeline), plan, dev, now, acc)
            else:
                new = order.transition(
                    S.TESTING,
                    now,
                    timeline=timeline,
                    test_phase="download",
                    test_attempts=order.test_attempts + 1,
                    deadline_at=now + policy.step_timeout,
                    last_error=None,
                )
                acc.effects.append(StartThroughputTest(order.id, _serial(order), "download"))
                acc.note(
                    "test.requested",
                    now,
                    new,
                    order.device_serial,
                    direction="download",
                    attempt=new.test_attempts,
                )
        case ConfigFaulted(reason=reason) if order.state is S.CONFIGURING:
            new = _fail(order, f"configuration refused: {reason}", dev, now, acc)
        case ConfigApplied() if order.state is S.ACTIVE:
            # The configuration pushed again after a BOOTSTRAP reached the device.
            acc.note("order.reconfigured", now, order, order.device_serial)
            return Outcome(None, (), tuple(acc.effects))
        case ConfigFaulted(reason=reason) if order.state is S.ACTIVE:
            # Kept in the event log for the NOC; the service was verified and billed.
            acc.note("order.reconfigure_failed", now, order, order.device_serial, reason=reason)
            return Outcome(None, (), tuple(acc.effects))
        case ThroughputMeasured(result=result) if order.state is S.TESTING:
            new = _measured(order, result, plan, dev, policy, now, acc)
        case TestFaulted(reason=reason) if order.state is S.TESTING:
            new = _test_failed(order, reason, dev, policy, now, acc)
        case TimerDue():
            new = _timer(order, plan, dev, policy, now, acc)
        case RetryRequested():
            new = _retry(order, policy, now, acc)
        case CancelRequested():
            if order.state in (S.ACTIVE, S.CANCELLED):
                raise NotAllowed(f"order {order.id} is {order.state}; it cannot be cancelled")
            new = order.transition(S.CANCELLED, now, deadline_at=None, next_retry_at=None)
            acc.note("order.cancelled", now, new, order.device_serial)
            if dev is not None and dev.order_id == order.id:
                acc.effects.append(CancelDeviceWork(dev.serial))
                dev = replace(dev, status=DeviceStatus.UNMATCHED, order_id=None)
        case _:
            # A late or duplicate answer for a step the order has left: record, change nothing.
            acc.note(
                "order.event_ignored",
                now,
                order,
                order.device_serial,
                event=type(event).__name__,
                state=order.state.value,
            )
            return Outcome(None, (), tuple(acc.effects))
    return Outcome(
        dev if dev is not device else None, (new,) if new is not order else (), tuple(acc.effects)
    )


def _serial(order: Order) -> str:
    if not order.device_serial:
        raise ValueError(f"order {order.id} has no bound device")
    return order.device_serial


def _activate(order: Order, plan: Plan, dev: Device | None, now: datetime, acc: _Acc) -> Order:
    timeline = dict(order.timeline)
    if plan.verify is not VerifyMode.NONE:
        timeline.setdefault(TimelineStep.TESTED.value, now)
    timeline.setdefault(TimelineStep.ACTIVE.value, now)
    new = order.transition(
        S.ACTIVE,
        now,
        timeline=timeline,
        deadline_at=None,
        next_retry_at=None,
        test_phase=None,
        last_error=None,
    )
    acc.effects.append(EmitWebhook("service.activated", activated_payload(new, plan, dev, now)))
    acc.note(
        "order.active",
        now,
        new,
        new.device_serial,
        down_mbps=new.measured_down_mbps,
        up_mbps=new.measured_up_mbps,
    )
    return new


def _fail(order: Order, reason: str, dev: Device | None, now: datetime, acc: _Acc) -> Order:
    new = order.transition(S.FAILED, now, last_error=reason, deadline_at=None, next_retry_at=None)
    acc.effects.append(EmitWebhook("provisioning.failed", failed_payload(new, dev, reason)))
    acc.note("order.failed", now, new, order.device_serial, reason=reason)
    return new


def _measured(
    order: Order,
    result: ThroughputResult,
    plan: Plan,
    dev: Device | None,
    policy: Policy,
    now: datetime,
    acc: _Acc,
) -> Order:
    target = plan.down_mbps if result.direction == "download" else plan.up_mbps
    notes = order.test_notes + ((f"{result.direction}: {result.note}",) if result.note else ())
    if result.direction == "download":
        measured = replace(order, measured_down_mbps=result.mbps, test_notes=notes)
    else:
        measured = replace(order, measured_up_mbps=result.mbps, test_notes=notes)
    acc.note(
        "test.result",
        now,
        order,
        order.device_serial,
        direction=result.direction,
        mbps=result.mbps,
        target_mbps=target,
        interval=result.interval,
        note=result.note,
    )
    if not result.ok or result.mbps is None:
        return _test_failed(
            measured, f"{result.direction} test unusable: {result.note}", dev, policy, now, acc
        )
    needed = target * policy.pass_fraction
    if result.mbps < needed:
        reason = (
            f"{result.direction} {result.mbps:.1f} Mbit/s below {policy.pass_fraction:.0%} "
            f"of the plan's {target:g} Mbit/s"
        )
        return _test_failed(measured, reason, dev, policy, now, acc)
    if result.direction == "download" and plan.verify is VerifyMode.DOWNLOAD_UPLOAD:
        new = measured.transition(
            S.TESTING, now, test_phase="upload", deadline_at=now + policy.step_timeout
        )
        acc.effects.append(StartThroughputTest(order.id, _serial(order), "upload"))
        acc.note(
            "test.requested",
            now,
            new,
            order.device_serial,
            direction="upload",
            attempt=new.test_attempts,
        )
        return new
    return _activate(measured, plan, dev, now, acc)


def _test_failed(
    order: Order, reason: str, dev: Device | None, policy: Policy, now: datetime, acc: _Acc
) -> Order:
    attempt = order.test_attempts
    if attempt < policy.max_test_attempts:
        retry_at = now + policy.test_retry_delay
        text = (
            f"{reason} (attempt {attempt} of {policy.max_test_attempts}; retry at {_iso(retry_at)})"
        )
        new = order.transition(
            S.TEST_FAILED,
            now,
            last_error=text,
            next_retry_at=retry_at,
            deadline_at=None,
            test_phase=None,
        )
        acc.note(
            "test.failed",
            now,
            new,
            order.device_serial,
            reason=reason,
            attempt=attempt,
            retry_at=_iso(retry_at),
        )
        return new
    text = f"{reason} (attempt {attempt} of {policy.max_test_attempts}; no retries left)"
    new = order.transition(
        S.TEST_FAILED, now, last_error=text, next_retry_at=None, deadline_at=None, test_phase=None
    )
    acc.effects.append(EmitWebhook("provisioning.failed", failed_payload(new, dev, text)))
    acc.note(
        "test.failed", now, new, order.device_serial, reason=reason, attempt=attempt, final=True
    )
    return new


def _start_test(order: Order, state_from: Order, policy: Policy, now: datetime, acc: _Acc) -> Order:
    new = state_from.transition(
        S.TESTING,
        now,
        test_phase="download",
        test_attempts=order.test_attempts + 1,
        deadline_at=now + policy.step_timeout,
        next_retry_at=None,
    )
    acc.effects.append(StartThroughputTest(order.id, _serial(order), "download"))
    acc.effects.append(RequestConnection(_serial(order)))
    acc.note(
        "test.requested",
        now,
        new,
        order.device_serial,
        direction="download",
        attempt=new.test_attempts,
    )
    return new


def _timer(
    order: Order, plan: Plan, dev: Device | None, policy: Policy, now: datetime, acc: _Acc
) -> Order:
    if order.state is S.TEST_FAILED and order.next_retry_at and order.next_retry_at <= now:
        return _start_test(order, order, policy, now, acc)
    if order.deadline_at is None or order.deadline_at > now:
        return order
    if order.state is S.CONFIGURING:
        if order.config_attempts < policy.max_config_attempts:
            new = order.transition(
                S.CONFIGURING,
                now,
                config_attempts=order.config_attempts + 1,
                deadline_at=now + policy.step_timeout,
                last_error="configuration not confirmed in time; pushing again",
            )
            acc.effects.append(PushConfiguration(order.id, _serial(order)))
            acc.effects.append(RequestConnection(_serial(order)))
            acc.note(
                "order.config_retry", now, new, order.device_serial, attempt=new.config_attempts
            )
            return new
        return _fail(order, "configuration not confirmed in time", dev, now, acc)
    if order.state is S.TESTING:
        return _test_failed(
            order, f"no {order.test_phase or 'throughput'} result in time", dev, policy, now, acc
        )
    return order


def _retry(order: Order, policy: Policy, now: datetime, acc: _Acc) -> Order:
    if order.state in (S.FAILED, S.TEST_FAILED) and order.device_serial:
        new = order.transition(
            S.CONFIGURING,
            now,
            config_attempts=1,
            test_attempts=0,
            last_error=None,
            deadline_at=now + policy.step_timeout,
            next_retry_at=None,
            test_phase=None,
        )
        acc.effects.append(PushConfiguration(order.id, order.device_serial))
        acc.effects.append(RequestConnection(order.device_serial))
        acc.note("order.retry", now, new, order.device_serial)
        return new
    if order.state in (S.WRONG_LOCATION, S.FAILED):
        new = order.transition(
            S.PENDING,
            now,
            last_error=None,
            device_serial=None,
            deadline_at=None,
            next_retry_at=None,
        )
        acc.note("order.retry", now, new, order.device_serial, note="waiting for the device again")
        return new
    raise NotAllowed(
        f"order {order.id} is {order.state}; retry applies to failed, test_failed "
        "or wrong_location orders"
    )


def due_orders_filter(order: Order, now: datetime) -> bool:
    """Whether the app's timer should send `TimerDue` for this order (the rule
    `Tx.orders_due` implements in SQL)."""
    return bool(
        (order.next_retry_at and order.next_retry_at <= now)
        or (order.deadline_at and order.deadline_at <= now)
    )


def is_routine(seen: DeviceSeen, device: Device, order_state: OrderState | None) -> bool:
    """Whether `on_device_seen` would change nothing but `last_seen`/`source`.

    Such sightings (a periodic Inform from a settled device) need no decision
    and no transaction; the caller batches the `last_seen` update. An unmatched
    device is not re-matched here: a new order looks for known devices itself
    (`on_order_placed`).
    """
    if seen.diagnostics_complete or seen.bootstrap or seen.serial != device.serial:
        return False
    if _sighting_changes(device, seen):
        return False
    if device.status is DeviceStatus.BOUND:
        return order_state is not None and order_state not in (S.CANCELLED, S.PENDING)
    if device.status is DeviceStatus.UNMATCHED:
        return device.reported_unmatched
    return device.status is DeviceStatus.HELD
