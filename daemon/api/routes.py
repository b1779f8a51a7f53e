"""The control API: FastAPI routes over the Service and the Store.

Owns the HTTP surface for BSS, NOC and field staff: orders, plans, devices,
CWMP tasks, the event log and the webhook outbox, plus health, readiness and
metrics. Rules: every /v1 route needs the bearer token (compared with
`hmac.compare_digest`); every 4xx answers `{"error", "message"}`; an
unexpected exception answers 500 `{"error": "internal"}`, is logged and
counted, and never shows a traceback. State changes go through the Service
(one transaction each); reads go to the Store directly.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures,
# and some of them name values local to create_api (the bearer dependency).
import hashlib
import hmac
import json
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.api.models import (
    MAX_LIMIT,
    ORDER_ID_PATTERN,
    PLAN_ID_PATTERN,
    TASK_METHODS,
    DeviceOut,
    DevicePage,
    EndpointOut,
    ErrorOut,
    EventPage,
    Health,
    OrderIn,
    OrderOut,
    OrderPage,
    OutboxList,
    OutboxPage,
    PlanIn,
    PlanList,
    PlanOut,
    Redelivery,
    TaskIn,
    TaskQueued,
    task_args,
)
from daemon.api.views import (
    device_item,
    device_out,
    event_out,
    order_item,
    order_out,
    outbox_out,
)
from daemon.clock import Clock
from daemon.config import ApiSettings
from daemon.core.activation import NotAllowed
from daemon.core.identity import InvalidSerial, Location, normalize_serial
from daemon.core.orders import DeviceStatus, Order, OrderState
from daemon.core.plans import Plan
from daemon.metrics import Metrics
from daemon.service import (
    IdempotencyConflict,
    OrderNotFound,
    OrderRequest,
    Service,
    UnknownPlan,
)
from daemon.store.repository import EventRecord, Store, Tx

log = structlog.get_logger("turnup.api")

MAX_BODY_BYTES = 1_048_576  # no legitimate request comes near this
ORDER_EVENTS = 50  # events shown with an order
DEVICE_TASKS = 20  # tasks shown with a device
OutboxState = Annotated[str, Query(pattern="^(pending|delivered|dead)$")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"1..{MAX_LIMIT}")]

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
}


class ApiError(Exception):
    """An answer with a status, a code and a plain-words message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def _error(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    details: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def _field(err: Mapping[str, Any]) -> str:
    """The dotted name of the field an error is about, as the client wrote it."""
    parts = [str(p) for p in err.get("loc", ())]
    if err.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        return "method"
    if parts and parts[0] in ("body", "query", "path", "header"):
        if len(parts) == 1:
            # A whole-body rule (model validator) needs no prefix; a missing body does.
            return "" if err.get("type") == "value_error" else "body"
        parts = parts[1:]
    if parts and parts[0] in TASK_METHODS:  # the tagged-union branch, not a field
        parts = parts[1:]
    return ".".join(parts)


def _plain(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def _details(errors: Any) -> list[dict[str, Any]]:
    """The raw errors, JSON-safe: containers and non-scalar context are dropped."""
    out: list[dict[str, Any]] = []
    for err in errors:
        item: dict[str, Any] = {
            "type": err.get("type"),
            "loc": [p if isinstance(p, int | str) else str(p) for p in err.get("loc", ())],
            "msg": _plain(str(err.get("msg", ""))),
        }
        value = err.get("input")
        secret = any(str(p) in ("key", "password") for p in err.get("loc", ()))
        if isinstance(value, str | int | float | bool) and not secret:
            item["input"] = value
        ctx = err.get("ctx")
        if isinstance(ctx, dict):
            item["ctx"] = {
                k: (v if isinstance(v, int | float | str) else str(v)) for k, v in ctx.items()
            }
        out.append(item)
    return out


def validation_message(errors: Any) -> str:
    lines = []
    for err in errors:
        field = _field(err)
        msg = _plain(str(err.get("msg", "invalid")))
        if err.get("type") == "union_tag_invalid":
            msg = "must be one of " + ", ".join(TASK_METHODS)
        elif err.get("type") == "union_tag_not_found":
            msg = "Field required"
        lines.append(f"{field}: {msg}" if field else msg)
    return "; ".join(lines) or "the request is not valid"


class _Guard:
    """Outermost ASGI wrapper: bounds request bodies and turns any exception that
    escaped the routes into 500 {"error": "internal"}, logged and counted."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await _error(413, "too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")(
                scope, receive, send
            )
            return
        started = False

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        received = 0

        async def receive_bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise ApiError(413, "too_large", "request body too large")
            return message

        try:
            await self.app(scope, receive_bounded, send_wrapper)
        except Exception:
            log.exception("api_internal_error", method=scope.get("method"), path=scope.get("path"))
            self.metrics.internal_errors.labels("api").inc()
            if started:
                raise
            await JSONResponse({"error": "internal", "message": "internal error"}, 500)(
                scope, receive, send
            )


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or wrong bearer token"},
    422: {"model": ErrorOut, "description": "the request is not valid"},
}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        404: "not found",
        409: "conflict with the current state",
    }
    out = dict(_ERRORS)
    for code in codes:
        out[code] = {"model": ErrorOut, "description": described.get(code, "error")}
    return out


def _request_hash(body: OrderIn) -> str:
    canonical = json.dumps(
        body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _serial(raw: str) -> str:
    try:
        return normalize_serial(raw)
    except InvalidSerial as exc:
        raise ApiError(422, "invalid", f"serial: {exc}") from None


def create_api(
    service: Service,
    store: Store,
    settings: ApiSettings,
    metrics: Metrics,
    clock: Clock,
    ready: Callable[[], bool],
) -> FastAPI:
    """The control API as an ASGI app. Refuses to build without a token."""
    if not settings.token:
        raise ValueError(
            "the control API needs a bearer token: set [api] token "
            "(or TURNUP_API__TOKEN) to at least 16 characters"
        )
    token = settings.token.encode("utf-8")
    bearer = HTTPBearer(auto_error=False, description="the token from [api] token")

    async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        given = credentials.credentials.encode("utf-8") if credentials else b""
        if not hmac.compare_digest(given, token):
            raise ApiError(
                401,
                "unauthorized",
                "a valid bearer token is required (Authorization: Bearer <token>)",
                {"WWW-Authenticate": "Bearer"},
            )

    app = FastAPI(
        title="turnup control API",
        version="1",
        description="Orders, plans, devices, CWMP tasks, events and webhooks of turnup.",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.add_middleware(_Guard, metrics=metrics)

    # ---- error shapes ----------------------------------------------------

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc.status, exc.code, exc.message, exc.headers)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        return _error(422, "invalid", validation_message(errors), details=_details(errors))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _STATUS_CODES.get(exc.status_code, "error" if exc.status_code < 500 else "internal")
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        return _error(exc.status_code, code, detail, dict(exc.headers or {}) or None)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)

    # ---- probes and metrics ----------------------------------------------

    @app.get("/healthz", tags=["probes"])
    async def healthz() -> Health:
        """The process is alive."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        tags=["probes"],
        responses={503: {"model": Health, "description": "still starting"}},
    )
    async def readyz() -> Response:
        """Ready once every socket is bound and the store is open."""
        if ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "starting"}, status_code=503)

    metrics_deps = [] if settings.metrics_public else [Depends(require_token)]

    @app.get(
        "/metrics",
        tags=["probes"],
        dependencies=metrics_deps,
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def prometheus() -> Response:
        """Prometheus exposition of the daemon's metrics."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], responses=_ERRORS)

    # ---- orders ----------------------------------------------------------

    def plan_of(order: Order) -> Plan | None:
        return service.plans().get(order.plan_id)

    async def full_order(order: Order) -> OrderOut:
        async with store.read() as tx:
            device = await tx.get_device(order.device_serial) if order.device_serial else None
            events = await last_events(tx, order.id)
        return order_out(order, plan_of(order), service.policy, clock.now(), device, events)

    @v1.post(
        "/orders",
        status_code=201,
        tags=["orders"],
        responses={
            200: {"model": OrderOut, "description": "the same order was placed before"},
            **_responses(409),
        },
    )
    async def place_order(body: OrderIn, response: Response) -> OrderOut:
        """Place an order; idempotent on `order_id` (same body again → 200, another → 409)."""
        request = OrderRequest(
            id=body.order_id,
            account_id=body.account_id,
            plan_id=body.plan_id,
            network_type=body.network_type,
            expected_serial=body.device.serial if body.device else None,
            location=body.location.to_location() if body.location else Location(),
            settings=body.settings.model_dump(mode="json", exclude_none=True),
        )
        try:
            order, created = await service.place_order(request, _request_hash(body))
        except UnknownPlan as exc:
            raise ApiError(422, "unknown_plan", str(exc)) from None
        except IdempotencyConflict as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        except InvalidSerial as exc:
            raise ApiError(422, "invalid", f"device.serial: {exc}") from None
        response.status_code = 201 if created else 200
        return await full_order(order)

    @v1.get("/orders", tags=["orders"])
    async def list_orders(
        state: OrderState | None = None,
        limit: Limit = 100,
        after: Annotated[str | None, Query(max_length=64, description="an order id")] = None,
    ) -> OrderPage:
        """Orders by id, optionally in one state; page with `after` = the last `next`."""
        async with store.read() as tx:
            rows = await tx.list_orders(state, limit + 1, after)
        now = clock.now()
        page = rows[:limit]
        return OrderPage(
            items=[order_item(o, plan_of(o), service.policy, now) for o in page],
            next=page[-1].id if len(rows) > limit else None,
        )

    OrderId = Annotated[str, Path(pattern=ORDER_ID_PATTERN)]

    @v1.get("/orders/{order_id}", tags=["orders"], responses=_responses(404))
    async def get_order(order_id: OrderId) -> OrderOut:
        """The order as a technician at the premises reads it."""
        try:
            order = await service.get_order(order_id)
        except OrderNotFound:
            raise ApiError(404, "not_found", f"no order {order_id!r}") from None
        return await full_order(order)

    async def order_action(order_id: str, action: Callable[[str], Awaitable[Order]]) -> OrderOut:
        try:
            order = await action(order_id)
        except OrderNotFound:
            raise ApiError(404, "not_found", f"no order {order_id!r}") from None
        except NotAllowed as exc:
            raise ApiError(409, "not_allowed", str(exc)) from None
        except UnknownPlan as exc:
            raise ApiError(409, "unknown_plan", str(exc)) from None
        return await full_order(order)

    @v1.post("/orders/{order_id}/cancel", tags=["orders"], responses=_responses(404, 409))
    async def cancel_order(order_id: OrderId) -> OrderOut:
        """Cancel an order that is not active; its device is released."""
        return await order_action(order_id, service.cancel_order)

    @v1.post("/orders/{order_id}/retry", tags=["orders"], responses=_responses(404, 409))
    async def retry_order(order_id: OrderId) -> OrderOut:
        """Try again after failed, test_failed or wrong_location."""
        return await order_action(order_id, service.retry_order)

    # ---- plans -----------------------------------------------------------

    PlanId = Annotated[str, Path(pattern=PLAN_ID_PATTERN)]

    @v1.get("/plans", tags=["plans"])
    async def list_plans() -> PlanList:
        """The service catalogue."""
        plans = sorted(service.plans().values(), key=lambda p: p.id)
        return PlanList(items=[PlanOut.of(p) for p in plans])

    @v1.get("/plans/{plan_id}", tags=["plans"], responses=_responses(404))
    async def get_plan(plan_id: PlanId) -> PlanOut:
        plan = service.plans().get(plan_id)
        if plan is None:
            raise ApiError(404, "not_found", f"plan {plan_id!r} is not in the catalogue")
        return PlanOut.of(plan)

    @v1.put("/plans/{plan_id}", tags=["plans"])
    async def put_plan(plan_id: PlanId, body: PlanIn) -> PlanOut:
        """Create or replace a plan."""
        plan = Plan(plan_id, body.name, body.down_mbps, body.up_mbps, body.vlan, body.verify)
        return PlanOut.of(await service.upsert_plan(plan))

    # ---- devices ---------------------------------------------------------

    @v1.get("/devices", tags=["devices"])
    async def list_devices(
        status: DeviceStatus | None = None,
        limit: Limit = 100,
        after: Annotated[str | None, Query(max_length=64, description="a serial")] = None,
    ) -> DevicePage:
        """Devices by serial; `status=unmatched` lists devices no order has claimed."""
        async with store.read() as tx:
            rows = await tx.list_devices(status, limit + 1, after)
        page = rows[:limit]
        return DevicePage(
            items=[device_item(d) for d in page],
            next=page[-1].serial if len(rows) > limit else None,
        )

    Serial = Annotated[str, Path(min_length=1, max_length=64, description="any spelling")]

    @v1.get("/devices/{serial}", tags=["devices"], responses=_responses(404))
    async def get_device(serial: Serial) -> DeviceOut:
        """A device, its binding and its last tasks."""
        key = _serial(serial)
        async with store.read() as tx:
            device = await tx.get_device(key)
            tasks = await tx.list_tasks(key, DEVICE_TASKS) if device else []
        if device is None:
            raise ApiError(404, "not_found", f"no device {key!r}")
        return device_out(device, tasks)

    @v1.post(
        "/devices/{serial}/tasks", status_code=202, tags=["devices"], responses=_responses(404)
    )
    async def queue_task(serial: Serial, task: Annotated[TaskIn, Body()]) -> TaskQueued:
        """Queue a CWMP RPC; the device is asked to connect and gets it in its next session."""
        key = _serial(serial)
        try:
            task_id = await service.queue_rpc(key, task.method, task_args(task))
        except LookupError:
            raise ApiError(404, "not_found", f"no device {key!r}") from None
        return TaskQueued(task_id=task_id, serial=key, method=task.method)

    # ---- events ----------------------------------------------------------

    @v1.get("/events", tags=["events"])
    async def list_events(
        after: Annotated[int, Query(ge=0, description="an event id")] = 0,
        limit: Limit = 100,
        order_id: Annotated[str | None, Query(pattern=ORDER_ID_PATTERN)] = None,
        serial: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    ) -> EventPage:
        """The event log, oldest first, after the given id."""
        key = _serial(serial) if serial else None
        async with store.read() as tx:
            rows = await tx.list_events(after, limit + 1, order_id=order_id, serial=key)
        page = rows[:limit]
        return EventPage(
            items=[event_out(e) for e in page],
            next=page[-1].id if len(rows) > limit else None,
        )

    # ---- webhooks --------------------------------------------------------

    @v1.get("/webhooks/outbox", tags=["webhooks"])
    async def list_outbox(
        state: OutboxState | None = None,
        limit: Limit = 100,
        after: Annotated[str | None, Query(max_length=64, description="a webhook id")] = None,
    ) -> OutboxPage:
        """Webhooks in the outbox by id, optionally in one state."""
        rows = await store.list_outbox(state, limit + 1, after)
        page = rows[:limit]
        return OutboxPage(
            items=[outbox_out(r) for r in page],
            next=page[-1].id if len(rows) > limit else None,
        )

    @v1.get("/webhooks/dead", tags=["webhooks"])
    async def list_dead(limit: Limit = 100) -> OutboxList:
        """Dead letters: webhooks that ran out of retries."""
        return OutboxList(items=[outbox_out(r) for r in await store.list_dead(limit)])

    @v1.post(
        "/webhooks/{message_id}/redeliver",
        status_code=202,
        tags=["webhooks"],
        responses=_responses(404, 409),
    )
    async def redeliver(
        message_id: Annotated[str, Path(min_length=1, max_length=64)],
    ) -> Redelivery:
        """Put a dead letter back in the queue (same webhook id)."""
        if await store.redeliver(message_id, clock.now()):
            service.post_commit.webhook_written()
            return Redelivery(id=message_id, state="pending")
        row = await store.get_outbox(message_id)
        if row is None:
            raise ApiError(404, "not_found", f"no webhook {message_id!r}")
        raise ApiError(
            409,
            "not_dead",
            f"webhook {message_id!r} is {row.state}; only dead ones are redelivered",
        )

    async def endpoint_view() -> EndpointOut:
        reason = await store.endpoint_disabled()
        depth, age = await store.outbox_stats(clock.now())
        return EndpointOut(
            enabled=reason is None,
            disabled_reason=reason,
            outbox_depth=depth,
            oldest_pending_age_seconds=age,
        )

    @v1.get("/webhooks/endpoint", tags=["webhooks"])
    async def get_endpoint() -> EndpointOut:
        """Whether billing is being sent webhooks, and the backlog."""
        return await endpoint_view()

    @v1.post("/webhooks/endpoint/enable", tags=["webhooks"])
    async def enable_endpoint() -> EndpointOut:
        """Re-enable delivery after the receiver answered 410 Gone."""
        await store.enable_endpoint()
        service.post_commit.webhook_written()
        return await endpoint_view()

    app.include_router(v1)
    return app


async def last_events(tx: Tx, order_id: str) -> list[EventRecord]:
    """The order's newest ORDER_EVENTS events, oldest first. The store pages
    forwards only, so walk the pages keeping the tail."""
    tail: deque[EventRecord] = deque(maxlen=ORDER_EVENTS)
    after = 0
    while True:
        page = await tx.list_events(after, MAX_LIMIT, order_id=order_id)
        tail.extend(page)
        if len(page) < MAX_LIMIT:
            return list(tail)
        after = page[-1].id
