"""Orders and devices as the core sees them, and the order state table.

Every order state change goes through `transition()`, which checks the table
and raises `IllegalTransition` for anything else: a bug in our code, never the
peer's fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from daemon.core.identity import Location


class NetworkType(StrEnum):
    GPON = "gpon"
    XGS_PON = "xgs-pon"
    ACTIVE_ETHERNET = "active-ethernet"
    FIXED_WIRELESS = "fixed-wireless"


class OrderState(StrEnum):
    PENDING = "pending"  # ordered, no device yet
    CONFIGURING = "configuring"  # device matched, service configuration being pushed
    TESTING = "testing"  # configuration applied, throughput check under way
    ACTIVE = "active"  # verified; billing told
    TEST_FAILED = "test_failed"  # throughput below the plan; retries per config
    FAILED = "failed"  # the device refused the configuration (CWMP fault) or gave up
    WRONG_LOCATION = "wrong_location"  # expected serial seen elsewhere; held
    CANCELLED = "cancelled"


class IllegalTransition(RuntimeError):
    """Our code asked for a state change the table forbids."""


S = OrderState
TRANSITIONS: frozenset[tuple[OrderState, OrderState]] = frozenset(
    {
        (S.PENDING, S.CONFIGURING),
        (S.PENDING, S.WRONG_LOCATION),
        (S.PENDING, S.CANCELLED),
        (S.WRONG_LOCATION, S.CONFIGURING),
        (S.WRONG_LOCATION, S.PENDING),
        (S.WRONG_LOCATION, S.CANCELLED),
        (S.CONFIGURING, S.TESTING),
        (S.CONFIGURING, S.ACTIVE),
        (S.CONFIGURING, S.FAILED),
        (S.CONFIGURING, S.CANCELLED),
        (S.CONFIGURING, S.CONFIGURING),  # retry of the push
        (S.TESTING, S.TESTING),  # next direction, or a re-request
        (S.TESTING, S.ACTIVE),
        (S.TESTING, S.TEST_FAILED),
        (S.TESTING, S.FAILED),
        (S.TESTING, S.CANCELLED),
        (S.TEST_FAILED, S.TESTING),
        (S.TEST_FAILED, S.CONFIGURING),
        (S.TEST_FAILED, S.CANCELLED),
        (S.FAILED, S.CONFIGURING),
        (S.FAILED, S.PENDING),
        (S.FAILED, S.CANCELLED),
    }
)

OPEN_STATES = frozenset({S.PENDING, S.WRONG_LOCATION})  # waiting for a device
LIVE_STATES = frozenset({S.CONFIGURING, S.TESTING, S.TEST_FAILED})  # device bound, in work
FINAL_STATES = frozenset({S.ACTIVE, S.CANCELLED})


class TimelineStep(StrEnum):
    ORDERED = "ordered"
    FIRST_SEEN = "first_seen"
    MATCHED = "matched"
    CONFIGURED = "configured"
    TESTED = "tested"
    ACTIVE = "active"


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    account_id: str
    plan_id: str
    network_type: NetworkType
    state: OrderState
    created_at: datetime
    updated_at: datetime
    expected_serial: str | None = None
    location: Location = field(default_factory=Location)
    settings: dict[str, Any] = field(default_factory=dict)
    device_serial: str | None = None
    timeline: dict[str, datetime] = field(default_factory=dict)  # TimelineStep -> when
    last_error: str | None = None
    measured_down_mbps: float | None = None
    measured_up_mbps: float | None = None
    test_attempts: int = 0
    config_attempts: int = 0
    next_retry_at: datetime | None = None  # a test_failed/failed retry, when due
    deadline_at: datetime | None = None  # when the current step is overdue
    test_phase: str | None = None  # "download" / "upload" while TESTING
    test_notes: tuple[str, ...] = ()
    version: int = 0

    def transition(self, new: OrderState, now: datetime, **changes: Any) -> Order:
        if (self.state, new) not in TRANSITIONS:
            raise IllegalTransition(f"order {self.id}: {self.state} -> {new}")
        return replace(self, state=new, updated_at=now, **changes)

    def with_step(self, step: TimelineStep, at: datetime) -> dict[str, datetime]:
        timeline = dict(self.timeline)
        timeline.setdefault(step.value, at)
        return timeline


class DeviceStatus(StrEnum):
    UNMATCHED = "unmatched"
    BOUND = "bound"
    HELD = "held"  # wrong location


@dataclass(frozen=True, slots=True)
class Device:
    serial: str
    status: DeviceStatus
    first_seen: datetime
    last_seen: datetime
    vendor_id: str = ""
    manufacturer: str = ""
    oui: str = ""
    product_class: str = ""
    model: str = ""
    firmware: str = ""
    source: str = ""  # protocol that last saw it: tr069, dhcp, radius, tftp
    location: Location = field(default_factory=Location)
    order_id: str | None = None
    connection_request_url: str | None = None
    data_model: str | None = None  # "tr181" / "tr098"
    profile: str | None = None
    reported_unmatched: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "vendor_id": self.vendor_id,
            "vendor": self.manufacturer,
            "model": self.model or self.product_class,
            "firmware": self.firmware,
        }
