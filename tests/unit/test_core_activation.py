"""The activation state machine: matching, the transition table, each branch."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from daemon.core.activation import (
    NotAllowed,
    Policy,
    apply,
    due_orders_filter,
    on_device_seen,
    on_order_placed,
)
from daemon.core.events import (
    CancelDeviceWork,
    CancelRequested,
    ConfigApplied,
    ConfigFaulted,
    DeviceSeen,
    EmitWebhook,
    PushConfiguration,
    ReadThroughputResult,
    RequestConnection,
    RetryRequested,
    StartThroughputTest,
    TestFaulted,
    ThroughputMeasured,
    TimerDue,
)
from daemon.core.identity import Location
from daemon.core.orders import (
    TRANSITIONS,
    DeviceStatus,
    IllegalTransition,
    NetworkType,
    Order,
    OrderState,
)
from daemon.core.plans import Plan, VerifyMode
from daemon.core.throughput import ThroughputResult

T0 = datetime(2026, 11, 25, 19, 0, tzinfo=UTC)
PLAN = Plan("fiber-100", "Fiber 100", 100, 20, 100, VerifyMode.DOWNLOAD)
PLAN_DU = Plan("fiber-300", "Fiber 300", 300, 100, 101, VerifyMode.DOWNLOAD_UPLOAD)
PLAN_NONE = Plan("basic", "Basic", 10, 1, None, VerifyMode.NONE)
PLANS = {p.id: p for p in (PLAN, PLAN_DU, PLAN_NONE)}
POLICY = Policy(max_test_attempts=2, test_retry_delay=timedelta(seconds=30))
LOC = Location("olt-1", "1/1/1", 3, "olt-1 xpon 1/1/1:3")


def order(**kw: object) -> Order:
    base = Order(
        id="o-1",
        account_id="a-1",
        plan_id=PLAN.id,
        network_type=NetworkType.GPON,
        state=OrderState.PENDING,
        created_at=T0,
        updated_at=T0,
        expected_serial="ALCL00000001",
        location=LOC,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def seen(serial: str = "ALCL00000001", location: Location = LOC, **kw: object) -> DeviceSeen:
    return DeviceSeen(serial=serial, source="tr069", location=location, **kw)  # type: ignore[arg-type]


def kinds(effects: tuple[object, ...]) -> list[str]:
    return [type(e).__name__ for e in effects if type(e).__name__ != "Note"]


def webhooks(effects: tuple[object, ...]) -> list[str]:
    return [e.event_type for e in effects if isinstance(e, EmitWebhook)]


def matched_order() -> tuple[Order, object]:
    out = on_device_seen(seen(), None, None, [order()], PLANS, POLICY, T0)
    return out.orders[0], out.device


def test_transition_table_is_closed() -> None:
    o = order()
    for target in OrderState:
        allowed = (o.state, target) in TRANSITIONS
        if allowed:
            assert o.transition(target, T0).state is target
        else:
            with pytest.raises(IllegalTransition):
                o.transition(target, T0)
    # nothing leaves the final states
    for final in (OrderState.ACTIVE, OrderState.CANCELLED):
        assert not [t for t in TRANSITIONS if t[0] is final]


def test_match_by_serial_binds_and_pushes_config() -> None:
    out = on_device_seen(seen(), None, None, [order()], PLANS, POLICY, T0)
    o = out.orders[0]
    assert o.state is OrderState.CONFIGURING and o.device_serial == "ALCL00000001"
    assert out.device is not None and out.device.status is DeviceStatus.BOUND
    assert kinds(out.effects) == ["PushConfiguration"]
    assert {"first_seen", "matched"} <= set(o.timeline)


def test_match_by_location_only() -> None:
    o = order(expected_serial=None)
    out = on_device_seen(seen("HWTC0000BEEF"), None, None, [o], PLANS, POLICY, T0)
    assert out.orders[0].state is OrderState.CONFIGURING


def test_expected_serial_at_wrong_location_is_held() -> None:
    elsewhere = Location("olt-9", "1/1/1", 3, "olt-9 xpon 1/1/1:3")
    out = on_device_seen(seen(location=elsewhere), None, None, [order()], PLANS, POLICY, T0)
    assert out.orders[0].state is OrderState.WRONG_LOCATION
    assert out.device is not None and out.device.status is DeviceStatus.HELD
    assert webhooks(out.effects) == ["device.wrong_location"]
    assert "olt-9" in (out.orders[0].last_error or "")
    # seen again at the same wrong place: no second webhook
    again = on_device_seen(
        seen(location=elsewhere), out.device, None, [out.orders[0]], PLANS, POLICY, T0
    )
    assert webhooks(again.effects) == []


def test_unmatched_device_reported_once() -> None:
    out = on_device_seen(seen("ZTEG00000009"), None, None, [], PLANS, POLICY, T0)
    assert out.device is not None and out.device.status is DeviceStatus.UNMATCHED
    assert webhooks(out.effects) == ["device.unmatched"]
    again = on_device_seen(seen("ZTEG00000009"), out.device, None, [], PLANS, POLICY, T0)
    assert webhooks(again.effects) == []


def test_order_for_known_unmatched_device_starts_without_power_cycle() -> None:
    dev = on_device_seen(seen(), None, None, [], PLANS, POLICY, T0).device
    assert dev is not None
    out = on_order_placed(order(), [dev], PLANS, POLICY, T0 + timedelta(minutes=5))
    o = out.orders[0]
    assert o.state is OrderState.CONFIGURING
    assert kinds(out.effects) == ["PushConfiguration", "RequestConnection"]
    assert o.timeline["first_seen"] == T0  # the device's first contact, not now


def test_ambiguous_location_matches_nothing() -> None:
    a = order(id="a", expected_serial=None)
    b = order(id="b", expected_serial=None)
    out = on_device_seen(seen("HWTC00000001"), None, None, [a, b], PLANS, POLICY, T0)
    assert out.orders == () and out.device is not None
    assert out.device.status is DeviceStatus.UNMATCHED


def test_happy_path_download_only() -> None:
    o, dev = matched_order()
    out = apply(o, ConfigApplied(o.id), PLAN, dev, POLICY, T0)  # type: ignore[arg-type]
    o = out.orders[0]
    assert o.state is OrderState.TESTING and o.test_phase == "download"
    assert [type(e) for e in out.effects if not type(e).__name__ == "Note"] == [StartThroughputTest]
    # diagnostics complete → read results
    ready = on_device_seen(seen(diagnostics_complete=True), dev, o, [], PLANS, POLICY, T0)  # type: ignore[arg-type]
    assert kinds(ready.effects) == ["ReadThroughputResult"]
    result = ThroughputResult("download", True, 95.0, 10_000_000, 0.84, "bom-eom", "")
    out = apply(o, ThroughputMeasured(o.id, result), PLAN, dev, POLICY, T0)  # type: ignore[arg-type]
    o = out.orders[0]
    assert o.state is OrderState.ACTIVE and o.measured_down_mbps == 95.0
    assert webhooks(out.effects) == ["service.activated"]
    payload = next(e.data for e in out.effects if isinstance(e, EmitWebhook))
    assert payload["order_id"] == "o-1" and payload["measured"]["down_mbps"] == 95.0
    assert set(payload["timeline"]) >= {"first_seen", "matched", "configured", "tested", "active"}


def test_download_then_upload() -> None:
    o, dev = matched_order()
    o = replace(o, plan_id=PLAN_DU.id)
    o = apply(o, ConfigApplied(o.id), PLAN_DU, dev, POLICY, T0).orders[0]  # type: ignore[arg-type]
    down = ThroughputResult("download", True, 290.0, 1, 1.0, "bom-eom", "")
    out = apply(o, ThroughputMeasured(o.id, down), PLAN_DU, dev, POLICY, T0)  # type: ignore[arg-type]
    o = out.orders[0]
    assert o.state is OrderState.TESTING and o.test_phase == "upload"
    assert any(isinstance(e, StartThroughputTest) and e.direction == "upload" for e in out.effects)
    up = ThroughputResult("upload", True, 95.0, 1, 1.0, "bom-eom", "")
    out = apply(o, ThroughputMeasured(o.id, up), PLAN_DU, dev, POLICY, T0)  # type: ignore[arg-type]
    assert out.orders[0].state is OrderState.ACTIVE


def test_verify_none_activates_after_config() -> None:
    o, dev = matched_order()
    o = replace(o, plan_id=PLAN_NONE.id)
    out = apply(o, ConfigApplied(o.id), PLAN_NONE, dev, POLICY, T0)  # type: ignore[arg-type]
    assert out.orders[0].state is OrderState.ACTIVE
    assert "tested" not in out.orders[0].timeline


def test_slow_line_fails_then_retries_then_gives_up() -> None:
    o, dev = matched_order()
    o = apply(o, ConfigApplied(o.id), PLAN, dev, POLICY, T0).orders[0]  # type: ignore[arg-type]
    slow = ThroughputResult("download", True, 42.0, 1, 1.0, "bom-eom", "")
    out = apply(o, ThroughputMeasured(o.id, slow), PLAN, dev, POLICY, T0)  # type: ignore[arg-type]
    o = out.orders[0]
    assert o.state is OrderState.TEST_FAILED and o.measured_down_mbps == 42.0
    assert o.next_retry_at == T0 + timedelta(seconds=30)
    assert "42.0 Mbit/s below 90%" in (o.last_error or "")
    assert webhooks(out.effects) == []  # a retry is coming: billing not told yet
    assert not due_orders_filter(o, T0)
    later = T0 + timedelta(seconds=31)
    assert due_orders_filter(o, later)
    out = apply(o, TimerDue(o.id), PLAN, dev, POLICY, later)  # type: ignore[arg-type]
    o = out.orders[0]
    assert o.state is OrderState.TESTING and o.test_attempts == 2
    assert kinds(out.effects) == ["StartThroughputTest", "RequestConnection"]
    out = apply(o, ThroughputMeasured(o.id, slow), PLAN, dev, POLICY, later)  # type: ignore[arg-type]
    o = out.orders[0]
    assert o.state is OrderState.TEST_FAILED and o.next_retry_at is None
    assert webhooks(out.effects) == ["provisioning.failed"]


def test_config_fault_fails_and_retry_restarts() -> None:
    o, dev = matched_order()
    out = apply(o, ConfigFaulted(o.id, "9005 Invalid parameter name"), PLAN, dev, POLICY, T0)  # type: ignore[arg-type]
    o = out.orders[0]
    assert o.state is OrderState.FAILED and "9005" in (o.last_error or "")
    assert webhooks(out.effects) == ["provisioning.failed"]
    out = apply(o, RetryRequested(o.id), PLAN, dev, POLICY, T0)  # type: ignore[arg-type]
    assert out.orders[0].state is OrderState.CONFIGURING
    assert kinds(out.effects) == ["PushConfiguration", "RequestConnection"]


def test_test_fault_counts_as_failed_attempt() -> None:
    o, dev = matched_order()
    o = apply(o, ConfigApplied(o.id), PLAN, dev, POLICY, T0).orders[0]  # type: ignore[arg-type]
    out = apply(o, TestFaulted(o.id, "CWMP fault 9002"), PLAN, dev, POLICY, T0)  # type: ignore[arg-type]
    assert out.orders[0].state is OrderState.TEST_FAILED


def test_overdue_configuration_is_pushed_again_then_failed() -> None:
    o, dev = matched_order()
    late = o.deadline_at + timedelta(seconds=1)  # type: ignore[operator]
    out = apply(o, TimerDue(o.id), PLAN, dev, POLICY, late)  # type: ignore[arg-type]
    o2 = out.orders[0]
    assert o2.state is OrderState.CONFIGURING and o2.config_attempts == 2
    assert any(isinstance(e, PushConfiguration) for e in out.effects)
    assert any(isinstance(e, RequestConnection) for e in out.effects)
    o3 = replace(o2, config_attempts=POLICY.max_config_attempts)
    out = apply(o3, TimerDue(o.id), PLAN, dev, POLICY, o2.deadline_at + timedelta(seconds=1))  # type: ignore[arg-type,operator]
    assert out.orders[0].state is OrderState.FAILED


def test_cancel_releases_device_and_work() -> None:
    o, dev = matched_order()
    out = apply(o, CancelRequested(o.id), PLAN, dev, POLICY, T0)  # type: ignore[arg-type]
    assert out.orders[0].state is OrderState.CANCELLED
    assert any(isinstance(e, CancelDeviceWork) for e in out.effects)
    assert out.device is not None and out.device.status is DeviceStatus.UNMATCHED
    with pytest.raises(NotAllowed):
        apply(out.orders[0], RetryRequested(o.id), PLAN, None, POLICY, T0)
    with pytest.raises(NotAllowed):
        apply(out.orders[0], CancelRequested(o.id), PLAN, None, POLICY, T0)


def test_late_answer_changes_nothing() -> None:
    o, dev = matched_order()
    o = apply(o, ConfigApplied(o.id), PLAN, dev, POLICY, T0).orders[0]  # type: ignore[arg-type]
    out = apply(o, ConfigApplied(o.id), PLAN, dev, POLICY, T0)  # type: ignore[arg-type]
    assert out.orders == ()


def test_read_results_only_when_testing() -> None:
    o, dev = matched_order()
    out = on_device_seen(seen(diagnostics_complete=True), dev, o, [], PLANS, POLICY, T0)  # type: ignore[arg-type]
    assert not any(isinstance(e, ReadThroughputResult) for e in out.effects)


def test_bootstrap_of_an_active_device_pushes_its_configuration_again() -> None:
    o, dev = matched_order()
    active = replace(o, state=OrderState.ACTIVE)
    out = on_device_seen(seen(bootstrap=True), dev, active, [], PLANS, POLICY, T0)  # type: ignore[arg-type]
    assert kinds(out.effects) == ["PushConfiguration"] and out.orders == ()
    notes = [e.kind for e in out.effects if type(e).__name__ == "Note"]
    assert notes == ["device.bootstrap_reconfigure"]
    # a plain periodic Inform (or a BOOTSTRAP before the service is live) does not
    assert kinds(on_device_seen(seen(), dev, active, [], PLANS, POLICY, T0).effects) == []  # type: ignore[arg-type]
    testing = replace(o, state=OrderState.TESTING, test_phase="download")
    assert "PushConfiguration" not in kinds(
        on_device_seen(seen(bootstrap=True), dev, testing, [], PLANS, POLICY, T0).effects  # type: ignore[arg-type]
    )
    # its answer is recorded and changes no state; no second service.activated
    done = apply(active, ConfigApplied(o.id), PLAN, dev, POLICY, T0)  # type: ignore[arg-type]
    assert done.orders == () and webhooks(done.effects) == []
    assert [e.kind for e in done.effects] == ["order.reconfigured"]
    refused = apply(active, ConfigFaulted(o.id, "9007"), PLAN, dev, POLICY, T0)  # type: ignore[arg-type]
    assert refused.orders == () and [e.kind for e in refused.effects] == [
        "order.reconfigure_failed"
    ]
