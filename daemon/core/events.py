"""Domain events (nouns, what happened) and effects (what the adapters must do).

Adapters turn what they hear into events; the core turns events into a new
state plus effects; the store writes state + effects in one transaction; the
adapters carry the effects out after the commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from daemon.core.identity import Location
from daemon.core.throughput import ThroughputResult

# ---- events ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceSeen:
    """Any protocol heard a device (CWMP Inform, DHCP DISCOVER, Access-Request…)."""

    serial: str  # normalised
    source: str
    vendor_id: str = ""
    manufacturer: str = ""
    oui: str = ""
    product_class: str = ""
    model: str = ""
    firmware: str = ""
    location: Location = field(default_factory=Location)
    connection_request_url: str | None = None
    data_model: str | None = None
    profile: str | None = None
    diagnostics_complete: bool = False  # CWMP "8 DIAGNOSTICS COMPLETE"
    bootstrap: bool = False  # CWMP "0 BOOTSTRAP": the device lost its ACS-given state


@dataclass(frozen=True, slots=True)
class ConfigApplied:
    order_id: str


@dataclass(frozen=True, slots=True)
class ConfigFaulted:
    order_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ThroughputMeasured:
    order_id: str
    result: ThroughputResult


@dataclass(frozen=True, slots=True)
class TestFaulted:
    """The CPE refused the diagnostics request or its results could not be read."""

    __test__ = False  # not a pytest class, despite the name

    order_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class TimerDue:
    """The app's timer found `next_retry_at` or `deadline_at` in the past."""

    order_id: str


@dataclass(frozen=True, slots=True)
class RetryRequested:
    order_id: str


@dataclass(frozen=True, slots=True)
class CancelRequested:
    order_id: str


OrderEvent = (
    ConfigApplied
    | ConfigFaulted
    | ThroughputMeasured
    | TestFaulted
    | TimerDue
    | RetryRequested
    | CancelRequested
)

# ---- effects --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushConfiguration:
    order_id: str
    serial: str


@dataclass(frozen=True, slots=True)
class StartThroughputTest:
    order_id: str
    serial: str
    direction: str  # "download" / "upload"


@dataclass(frozen=True, slots=True)
class ReadThroughputResult:
    order_id: str
    serial: str
    direction: str


@dataclass(frozen=True, slots=True)
class CancelDeviceWork:
    serial: str


@dataclass(frozen=True, slots=True)
class RequestConnection:
    """Ask the device to open a session now (CWMP connection request)."""

    serial: str


@dataclass(frozen=True, slots=True)
class EmitWebhook:
    event_type: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Note:
    """A line in the event log / order timeline."""

    kind: str
    order_id: str | None
    serial: str | None
    detail: dict[str, Any]
    at: datetime


Effect = (
    PushConfiguration
    | StartThroughputTest
    | ReadThroughputResult
    | CancelDeviceWork
    | RequestConnection
    | EmitWebhook
    | Note
)
