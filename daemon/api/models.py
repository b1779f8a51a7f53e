"""Request and response bodies of the control API (pydantic v2).

Owns the wire shapes and their validation: what an order, plan or CWMP task
request may contain (extra fields are refused), and how orders, devices,
events, tasks and webhooks are shown. No I/O here; the routes build these from
core dataclasses and store rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from daemon.core.identity import Location, parse_serial
from daemon.core.orders import DeviceStatus, NetworkType, OrderState
from daemon.core.plans import Plan, VerifyMode

ORDER_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
PLAN_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
MAX_LIMIT = 500


class _In(BaseModel):
    """A request body: unknown fields are an error, strings are stripped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- errors ------------------------------------------------------------------


class ErrorOut(_Out):
    error: str = Field(description="machine-readable code, e.g. not_found, conflict")
    message: str = Field(description="what went wrong, in plain words")
    details: list[dict[str, Any]] | None = Field(
        None, description="the raw validation errors, for 422 answers"
    )


# ---- orders: requests --------------------------------------------------------


class DeviceIn(_In):
    serial: str = Field(
        min_length=1,
        max_length=64,
        description="ONT/CPE serial: ALCL1A2B3C4D, 414C434C1A2B3C4D or a CPE serial number",
        examples=["ALCL1A2B3C4D"],
    )

    @field_validator("serial")
    @classmethod
    def _normalise(cls, v: str) -> str:
        # InvalidSerial is a ValueError: pydantic reports it against device.serial.
        return parse_serial(v).text


class LocationIn(_In):
    olt: str | None = Field(None, min_length=1, max_length=128)
    pon_port: str | None = Field(None, min_length=1, max_length=64, examples=["1/1/3"])
    onu_id: int | None = Field(None, ge=0, le=4095)
    circuit_id: str | None = Field(None, min_length=1, max_length=255)

    def to_location(self) -> Location:
        return Location(
            olt=self.olt, pon_port=self.pon_port, onu_id=self.onu_id, circuit_id=self.circuit_id
        )


class WifiIn(_In):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    ssid: str = Field(min_length=1, description="1 to 32 bytes (UTF-8)")
    key: str = Field(description="WPA2 passphrase: 8 to 63 printable ASCII characters")

    @field_validator("ssid")
    @classmethod
    def _ssid_bytes(cls, v: str) -> str:
        size = len(v.encode("utf-8"))
        if not 1 <= size <= 32:
            raise ValueError(f"the SSID must be 1 to 32 bytes, this one is {size}")
        return v

    @field_validator("key")
    @classmethod
    def _wpa2_key(cls, v: str) -> str:
        # IEEE 802.11i passphrase: 8..63 ASCII characters 32..126.
        if not 8 <= len(v) <= 63:
            raise ValueError(f"a WPA2 key must be 8 to 63 characters, this one is {len(v)}")
        if not all(32 <= ord(c) <= 126 for c in v):
            raise ValueError("a WPA2 key may use printable ASCII characters only")
        return v


class PppoeIn(_In):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    username: str = Field(min_length=1, max_length=253)
    password: str = Field(min_length=1, max_length=128)


class ServiceSettingsIn(_In):
    wifi: WifiIn | None = None
    pppoe: PppoeIn | None = None


class OrderIn(_In):
    order_id: str = Field(pattern=ORDER_ID_PATTERN, examples=["ORD-2026-000123"])
    account_id: str = Field(min_length=1, max_length=128)
    plan_id: str = Field(min_length=1, max_length=64)
    network_type: NetworkType
    device: DeviceIn | None = None
    location: LocationIn | None = None
    settings: ServiceSettingsIn = Field(default_factory=ServiceSettingsIn)

    @model_validator(mode="after")
    def _device_or_location(self) -> OrderIn:
        known = self.location is not None and self.location.to_location().known
        if self.device is None and not known:
            raise ValueError(
                "give device.serial or a known location "
                "(location.circuit_id, or location.olt with location.pon_port)"
            )
        return self


# ---- plans -------------------------------------------------------------------


class PlanIn(_In):
    name: str = Field(min_length=1, max_length=200)
    down_mbps: float = Field(gt=0, le=1_000_000)
    up_mbps: float = Field(gt=0, le=1_000_000)
    vlan: int | None = Field(None, ge=1, le=4094)
    verify: VerifyMode = VerifyMode.DOWNLOAD


class PlanOut(_Out):
    id: str
    name: str
    down_mbps: float
    up_mbps: float
    vlan: int | None
    verify: VerifyMode

    @classmethod
    def of(cls, plan: Plan) -> PlanOut:
        return cls(
            id=plan.id,
            name=plan.name,
            down_mbps=plan.down_mbps,
            up_mbps=plan.up_mbps,
            vlan=plan.vlan,
            verify=plan.verify,
        )


class PlanList(_Out):
    items: list[PlanOut]


# ---- orders: responses -------------------------------------------------------


class LocationOut(_Out):
    olt: str | None = None
    pon_port: str | None = None
    onu_id: int | None = None
    circuit_id: str | None = None

    @classmethod
    def of(cls, loc: Location) -> LocationOut:
        return cls(olt=loc.olt, pon_port=loc.pon_port, onu_id=loc.onu_id, circuit_id=loc.circuit_id)


class TimelineStepOut(_Out):
    step: str
    at: datetime | None


class BoundDeviceOut(_Out):
    serial: str
    vendor_id: str
    vendor: str | None
    manufacturer: str
    model: str
    firmware: str
    last_contact: datetime
    last_contact_source: str
    location: LocationOut


class EventOut(_Out):
    id: int
    at: datetime
    kind: str
    order_id: str | None
    serial: str | None
    detail: dict[str, Any]


class EventPage(_Out):
    items: list[EventOut]
    next: int | None = Field(description="pass as `after` for the next page; null at the end")


class ServiceSettingsOut(_Out):
    wifi_ssid: str | None = None
    wifi_key_set: bool = False
    pppoe_username: str | None = None
    pppoe_password_set: bool = False


class OrderOut(_Out):
    id: str
    account_id: str
    plan_id: str
    plan: PlanOut | None
    network_type: NetworkType
    state: OrderState
    summary: str = Field(description="where the order stands, in one line")
    expected_serial: str | None
    device_serial: str | None
    location: LocationOut
    settings: ServiceSettingsOut
    timeline: list[TimelineStepOut]
    last_error: str | None
    measured_down_mbps: float | None
    measured_up_mbps: float | None
    test_attempts: int
    config_attempts: int
    test_phase: str | None
    next_retry_at: datetime | None
    deadline_at: datetime | None
    test_notes: list[str]
    created_at: datetime
    updated_at: datetime
    device: BoundDeviceOut | None = None
    events: list[EventOut] = Field(default_factory=list)


class OrderListItem(_Out):
    id: str
    account_id: str
    plan_id: str
    network_type: NetworkType
    state: OrderState
    summary: str
    expected_serial: str | None
    device_serial: str | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class OrderPage(_Out):
    items: list[OrderListItem]
    next: str | None = Field(description="pass as `after` for the next page; null at the end")


# ---- devices -----------------------------------------------------------------


class TaskOut(_Out):
    id: int
    kind: str
    method: str | None
    order_id: str | None
    payload: dict[str, Any]
    state: str
    created_at: datetime
    sent_at: datetime | None
    finished_at: datetime | None
    result: Any = None
    fault: str | None


class DeviceListItem(_Out):
    serial: str
    status: DeviceStatus
    vendor_id: str
    vendor: str | None
    model: str
    first_seen: datetime
    last_seen: datetime
    last_contact_source: str
    location: LocationOut
    order_id: str | None


class DevicePage(_Out):
    items: list[DeviceListItem]
    next: str | None = Field(description="pass as `after` for the next page; null at the end")


class DeviceOut(_Out):
    serial: str
    status: DeviceStatus
    vendor_id: str
    vendor: str | None = Field(description="vendor name from the GPON vendor id, when known")
    manufacturer: str
    oui: str
    product_class: str
    model: str
    firmware: str
    data_model: str | None
    profile: str | None
    first_seen: datetime
    last_seen: datetime
    last_contact_source: str
    location: LocationOut
    order_id: str | None
    connection_request_url_present: bool
    tasks: list[TaskOut]


# ---- CWMP tasks --------------------------------------------------------------

_PARAM = Annotated[str, Field(min_length=1, max_length=256)]
_KEY = Annotated[str, Field(max_length=32, description="CWMP CommandKey / ParameterKey")]
XsdType = Literal[
    "xsd:string",
    "xsd:int",
    "xsd:unsignedInt",
    "xsd:long",
    "xsd:unsignedLong",
    "xsd:boolean",
    "xsd:dateTime",
    "xsd:base64",
    "xsd:hexBinary",
]
# TR-069 Amendment 6, A.3.2.8: the standard FileType values; vendor types start "X ".
FILE_TYPES = frozenset(
    {
        "1 Firmware Upgrade Image",
        "2 Web Content",
        "3 Vendor Configuration File",
        "4 Tone File",
        "5 Ringer File",
    }
)


class RebootArgs(_In):
    command_key: _KEY = ""


class NoArgs(_In):
    pass


class GetParameterValuesArgs(_In):
    names: list[_PARAM] = Field(min_length=1, max_length=256)


class ParameterIn(_In):
    name: _PARAM
    value: str | bool | int | float
    type: XsdType | None = None

    @field_validator("name")
    @classmethod
    def _leaf(cls, v: str) -> str:
        if v.endswith("."):
            raise ValueError("a parameter name cannot end with '.' (that names an object)")
        return v


class SetParameterValuesArgs(_In):
    parameters: list[ParameterIn] = Field(min_length=1, max_length=256)
    parameter_key: _KEY = ""


class GetParameterNamesArgs(_In):
    path: str = Field(max_length=256, description="a partial path ending in '.', or a name")
    next_level: bool = True


class _ObjectArgs(_In):
    object_name: _PARAM
    parameter_key: _KEY = ""

    @field_validator("object_name")
    @classmethod
    def _object(cls, v: str) -> str:
        if not v.endswith("."):
            raise ValueError("an object name ends with '.' (e.g. Device.NAT.PortMapping.)")
        return v


class AddObjectArgs(_ObjectArgs):
    pass


class DeleteObjectArgs(_ObjectArgs):
    pass


class DownloadArgs(_In):
    url: str = Field(min_length=1, max_length=1024)
    file_type: str = Field(examples=["1 Firmware Upgrade Image"])
    file_size: int = Field(0, ge=0)
    target_file_name: str = Field("", max_length=256)
    username: str = Field("", max_length=256)
    password: str = Field("", max_length=256)
    delay_seconds: int = Field(0, ge=0, le=86400)
    command_key: _KEY = ""

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.lower().startswith(("http://", "https://")):
            raise ValueError("the download URL must be http:// or https://")
        return v

    @field_validator("file_type")
    @classmethod
    def _file_type(cls, v: str) -> str:
        if v not in FILE_TYPES and not v.startswith("X "):
            raise ValueError(
                "file_type must be one of " + ", ".join(sorted(FILE_TYPES)) + " or 'X <vendor>'"
            )
        return v


class RebootTask(_In):
    method: Literal["Reboot"]
    args: RebootArgs = Field(default_factory=RebootArgs)


class FactoryResetTask(_In):
    method: Literal["FactoryReset"]
    args: NoArgs = Field(default_factory=NoArgs)


class GetParameterValuesTask(_In):
    method: Literal["GetParameterValues"]
    args: GetParameterValuesArgs


class SetParameterValuesTask(_In):
    method: Literal["SetParameterValues"]
    args: SetParameterValuesArgs


class GetParameterNamesTask(_In):
    method: Literal["GetParameterNames"]
    args: GetParameterNamesArgs


class AddObjectTask(_In):
    method: Literal["AddObject"]
    args: AddObjectArgs


class DeleteObjectTask(_In):
    method: Literal["DeleteObject"]
    args: DeleteObjectArgs


class DownloadTask(_In):
    method: Literal["Download"]
    args: DownloadArgs


TASK_METHODS = (
    "Reboot",
    "FactoryReset",
    "GetParameterValues",
    "SetParameterValues",
    "GetParameterNames",
    "AddObject",
    "DeleteObject",
    "Download",
)
TaskIn = Annotated[
    RebootTask
    | FactoryResetTask
    | GetParameterValuesTask
    | SetParameterValuesTask
    | GetParameterNamesTask
    | AddObjectTask
    | DeleteObjectTask
    | DownloadTask,
    Field(discriminator="method"),
]


def task_args(task: BaseModel) -> dict[str, Any]:
    """The args as the ACS reads them: codec field names, values as CWMP strings."""
    args: dict[str, Any] = task.model_dump(mode="json")["args"]
    if isinstance(task, SetParameterValuesTask):
        args["parameters"] = [_parameter(p) for p in task.args.parameters]
    return args


def _parameter(p: ParameterIn) -> dict[str, str]:
    value = p.value
    if isinstance(value, bool):
        text, guess = ("true" if value else "false"), "xsd:boolean"
    elif isinstance(value, int):
        text, guess = str(value), "xsd:int"
    else:
        text, guess = str(value), "xsd:string"
    return {"name": p.name, "value": text, "type": p.type or guess}


class TaskQueued(_Out):
    task_id: int
    serial: str
    method: str


# ---- webhooks ----------------------------------------------------------------


class OutboxOut(_Out):
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


class OutboxPage(_Out):
    items: list[OutboxOut]
    next: str | None = Field(description="pass as `after` for the next page; null at the end")


class OutboxList(_Out):
    items: list[OutboxOut]


class Redelivery(_Out):
    id: str
    state: Literal["pending"]


class EndpointOut(_Out):
    enabled: bool
    disabled_reason: str | None
    outbox_depth: int = Field(description="webhooks waiting for delivery")
    oldest_pending_age_seconds: float


# ---- probes ------------------------------------------------------------------


class Health(_Out):
    status: str
