"""The service layer: runs core decisions inside one store transaction each and
hands the post-commit work (connection requests, webhook wake-ups, metrics) to
the adapters.

Every adapter (ACS, API, later DHCP/RADIUS/TFTP) calls these methods; none of
them touches the core and the store together on its own. A version clash on an
order (two sessions deciding at once) retries the whole decision.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol, TypeVar

import structlog

from daemon.clock import Clock
from daemon.core.activation import (
    Outcome,
    Policy,
    apply,
    is_routine,
    on_device_seen,
    on_order_placed,
)
from daemon.core.events import (
    CancelRequested,
    DeviceSeen,
    EmitWebhook,
    Note,
    OrderEvent,
    PushConfiguration,
    ReadThroughputResult,
    RequestConnection,
    RetryRequested,
    StartThroughputTest,
    ThroughputMeasured,
    TimerDue,
)
from daemon.core.identity import Location, normalize_serial
from daemon.core.orders import Device, NetworkType, Order, OrderState, TimelineStep
from daemon.core.plans import Plan
from daemon.device_cache import DeviceCache
from daemon.metrics import Metrics
from daemon.store.repository import Store, StoreConflict, Task, Tx

log = structlog.get_logger("turnup.service")
T = TypeVar("T")


class PostCommit(Protocol):
    def request_connection(self, serial: str) -> None: ...

    def webhook_written(self) -> None: ...


class NullPostCommit:
    def request_connection(self, serial: str) -> None:
        return None

    def webhook_written(self) -> None:
        return None


class UnknownPlan(ValueError):
    pass


class OrderNotFound(LookupError):
    pass


class IdempotencyConflict(ValueError):
    """The order id exists with different contents."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A device task taken from the queue and marked sent, with what building
    its RPC needs (the order and device, for a configure task)."""

    task: Task
    order: Order | None = None
    device: Device | None = None


@dataclass(frozen=True, slots=True)
class _Applied:
    """An order event decided and written; what to do after the commit."""

    order: Order
    outcome: Outcome
    plan: Plan
    actions: list[RequestConnection]


@dataclass(frozen=True, slots=True)
class OrderRequest:
    id: str
    account_id: str
    plan_id: str
    network_type: NetworkType
    expected_serial: str | None = None
    location: Location = field(default_factory=Location)
    settings: dict[str, Any] = field(default_factory=dict)


class Service:
    def __init__(
        self,
        store: Store,
        policy: Policy,
        clock: Clock,
        metrics: Metrics,
        post_commit: PostCommit | None = None,
        cache: DeviceCache | None = None,
    ) -> None:
        self.store = store
        self.cache = cache or DeviceCache(ttl=300.0, max_entries=200_000)
        self.policy = policy
        self.clock = clock
        self.metrics = metrics
        self.post_commit: PostCommit = post_commit or NullPostCommit()
        self._plans: dict[str, Plan] = {}
        self._routine_counters: dict[str, Any] = {}

    def _routine_seen(self, source: str) -> Any:
        """The routine-sighting counter child for `source` (labels() costs a lock
        and a dict look-up per call; this is the hottest counter)."""
        child = self._routine_counters.get(source)
        if child is None:
            child = self._routine_counters[source] = self.metrics.devices_seen.labels(
                source, "routine"
            )
        return child

    # ---- plans ------------------------------------------------------------

    async def load_plans(self, configured: Iterable[Plan] = ()) -> None:
        """Write the plans from config, then cache every stored plan."""
        now = self.clock.now()
        async with self.store.transaction() as tx:
            for plan in configured:
                await tx.upsert_plan(plan, now)
            self._plans = {p.id: p for p in await tx.list_plans()}

    async def upsert_plan(self, plan: Plan) -> Plan:
        async with self.store.transaction() as tx:
            await tx.upsert_plan(plan, self.clock.now())
        self._plans[plan.id] = plan
        return plan

    def plans(self) -> dict[str, Plan]:
        return dict(self._plans)

    def plan(self, plan_id: str) -> Plan:
        try:
            return self._plans[plan_id]
        except KeyError:
            raise UnknownPlan(f"plan {plan_id!r} is not in the catalogue") from None

    # ---- orders -----------------------------------------------------------

    async def place_order(self, req: OrderRequest, request_hash: str) -> tuple[Order, bool]:
        """Create an order, idempotent on its id. Returns (order, created)."""
        plan = self.plan(req.plan_id)
        serial = normalize_serial(req.expected_serial) if req.expected_serial else None

        async def work(tx: Tx) -> tuple[Order, bool, Outcome | None]:
            existing = await tx.get_order(req.id)
            if existing is not None:
                if await tx.get_order_hash(req.id) != request_hash:
                    raise IdempotencyConflict(
                        f"order {req.id!r} already exists with different contents"
                    )
                return existing, False, None
            now = self.clock.now()
            order = Order(
                id=req.id,
                account_id=req.account_id,
                plan_id=plan.id,
                network_type=req.network_type,
                state=OrderState.PENDING,
                created_at=now,
                updated_at=now,
                expected_serial=serial,
                location=req.location,
                settings=dict(req.settings),
            )
            devices = await tx.candidate_devices(order)
            outcome = on_order_placed(order, devices, self._plans, self.policy, now)
            return order, True, outcome

        async def run(tx: Tx) -> tuple[Order, bool, Outcome | None, list[RequestConnection]]:
            order, created, outcome = await work(tx)
            if outcome is None:
                return order, created, None, []
            actions = await tx.apply_outcome(outcome, self.clock.now(), new_order_hash=request_hash)
            stored = await tx.get_order(order.id)
            assert stored is not None
            return stored, created, outcome, actions

        order, created, outcome, actions = await self._transaction(run)
        if outcome is not None:
            self._after(outcome, actions)
        return order, created

    async def get_order(self, order_id: str) -> Order:
        async with self.store.read() as tx:
            order = await tx.get_order(order_id)
        if order is None:
            raise OrderNotFound(f"no order {order_id!r}")
        return order

    async def cancel_order(self, order_id: str) -> Order:
        return await self._order_event(order_id, CancelRequested(order_id))

    async def retry_order(self, order_id: str) -> Order:
        return await self._order_event(order_id, RetryRequested(order_id))

    async def order_event(self, order_id: str, event: OrderEvent) -> Order:
        return await self._order_event(order_id, event)

    async def _order_event(self, order_id: str, event: OrderEvent) -> Order:
        async def run(tx: Tx) -> _Applied:
            applied = await self._apply_event(tx, event, self.clock.now())
            if applied is None:
                raise OrderNotFound(f"no order {order_id!r}")
            return applied

        applied = await self._transaction(run)
        self._after_event(applied, event)
        return applied.order

    async def _apply_event(self, tx: Tx, event: OrderEvent, now: datetime) -> _Applied | None:
        """Load the order the event is about, decide, write: the one place an
        order event meets the store. None when there is no such order."""
        order = await tx.get_order(event.order_id, for_update=True)
        if order is None:
            return None
        plan = self.plan(order.plan_id)
        device = await tx.get_device(order.device_serial) if order.device_serial else None
        outcome = apply(order, event, plan, device, self.policy, now)
        actions = await tx.apply_outcome(outcome, now)
        return _Applied(outcome.orders[0] if outcome.orders else order, outcome, plan, actions)

    def _after_event(self, applied: _Applied, event: OrderEvent) -> None:
        self._after(applied.outcome, applied.actions)
        if isinstance(event, ThroughputMeasured):
            self._count_throughput(event, applied.plan)

    # ---- devices ----------------------------------------------------------

    async def device_seen(self, seen: DeviceSeen) -> Device | None:
        """Record a sighting and act on it; returns the device as stored, or None for
        a routine sighting answered from memory (see `DeviceCache`)."""
        if self.seen_routinely(seen):
            return None

        async def run(tx: Tx) -> tuple[Outcome, list[RequestConnection], str, OrderState | None]:
            device = await tx.get_device(seen.serial, for_update=True)
            bound = None
            if device is not None and device.order_id:
                bound = await tx.get_order(device.order_id, for_update=True)
            candidates: list[Order] = []
            if bound is None or bound.state in (OrderState.CANCELLED, OrderState.PENDING):
                candidates = await tx.candidate_orders(seen.serial, seen.location)
            now = self.clock.now()
            outcome = on_device_seen(seen, device, bound, candidates, self._plans, self.policy, now)
            actions = await tx.apply_outcome(outcome, now)
            assert outcome.device is not None
            label = outcome.device.status.value if outcome.orders or bound is None else "bound"
            state = bound.state if bound is not None else None
            return outcome, actions, label, state

        outcome, actions, label, bound_state = await self._transaction(run)
        self.metrics.devices_seen.labels(seen.source, label).inc()
        self._after(outcome, actions, bound_state)
        assert outcome.device is not None
        return outcome.device

    def seen_routinely(self, seen: DeviceSeen) -> bool:
        """Record a routine sighting from memory (no transaction) and return True;
        False, having changed nothing, when the sighting needs a decision."""
        known = self.cache.get(seen.serial, self.clock.monotonic())
        if known is None:
            return False
        if not is_routine(seen, known.device, known.order_state):
            return False
        now = self.clock.now()
        # Nothing to decide: batch the last_seen write. The cached device keeps the
        # last_seen it was loaded with (nothing decides on it); the batch carries
        # the new one to the store.
        if known.device.source != seen.source:
            known.device = replace(known.device, source=seen.source)
        self.cache.touch(seen.serial, now, seen.source)
        self._routine_seen(seen.source).inc()
        return True

    def has_no_work(self, serial: str) -> bool:
        """True when this process knows the device's task queue is empty (see
        `DeviceCache`); False means "look in the store"."""
        return self.cache.is_idle(serial, self.clock.monotonic())

    async def get_device(self, serial: str) -> Device | None:
        async with self.store.read() as tx:
            return await tx.get_device(normalize_serial(serial))

    async def queue_rpc(self, serial: str, method: str, args: dict[str, Any]) -> int:
        serial = normalize_serial(serial)
        async with self.store.transaction() as tx:
            if await tx.get_device(serial) is None:
                raise LookupError(f"no device {serial!r}")
            task_id = await tx.add_task(
                serial, None, "rpc", {"method": method, "args": args}, self.clock.now()
            )
        self.cache.mark_busy(serial)
        self.post_commit.request_connection(serial)
        return task_id

    # ---- the device work queue (the ACS drains it) ------------------------

    async def claim_work(self, serial: str) -> Claimed | None:
        """The device's next queued task, marked sent; None when there is none."""
        if self.has_no_work(serial):
            return None
        token = self.cache.work_token(serial)

        async def run(tx: Tx) -> Claimed | None:
            return await self._claim(tx, serial)

        claimed = await self._transaction(run)
        if claimed is None:
            self.cache.mark_idle(serial, token)
        return claimed

    async def finish_work(
        self,
        task: Task,
        state: str,
        *,
        result: dict[str, Any] | None = None,
        fault: str | None = None,
        event: OrderEvent | None = None,
    ) -> Claimed | None:
        """One transaction: close `task`, apply what its answer means for the
        order, and claim the device's next task."""
        token = self.cache.work_token(task.serial)

        async def run(tx: Tx) -> tuple[Claimed | None, _Applied | None]:
            now = self.clock.now()
            await tx.finish_task(task.id, state, now, result=result, fault=fault)
            applied = await self._apply_event(tx, event, now) if event is not None else None
            return await self._claim(tx, task.serial), applied

        claimed, applied = await self._transaction(run)
        if applied is not None and event is not None:
            self._after_event(applied, event)
        if claimed is None:
            self.cache.mark_idle(task.serial, token)
        return claimed

    async def record(self, note: Note) -> None:
        """A line in the event log that decides nothing (e.g. a CPE's TransferComplete)."""
        await self.store.run_transaction(lambda tx: tx.add_note(note))

    async def requeue_sent(self, serial: str) -> int:
        """Work sent in a session that died goes back to the queue."""
        async with self.store.transaction() as tx:
            count = await tx.requeue_sent_tasks(serial)
        self.cache.mark_busy(serial)
        return count

    async def _claim(self, tx: Tx, serial: str) -> Claimed | None:
        task = await tx.next_task(serial)
        if task is None:
            return None
        await tx.mark_task_sent(task.id, self.clock.now())
        if task.kind != "configure" or not task.order_id:
            return Claimed(task)
        order = await tx.get_order(task.order_id)
        device = await tx.get_device(serial)
        return Claimed(task, order, device)

    # ---- batched last_seen --------------------------------------------------

    async def flush_sightings(self) -> int:
        touched = self.cache.take_touched()
        if not touched:
            return 0
        try:
            await self.store.run_transaction(lambda tx: tx.touch_devices(touched))
        except BaseException:
            self.cache.restore_touched(touched)  # nothing lost: next flush tries again
            raise
        return len(touched)

    async def run_flusher(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush_sightings()
            except Exception:
                log.exception("flush_sightings_failed")
                self.metrics.internal_errors.labels("service").inc()

    # ---- timers -----------------------------------------------------------

    async def tick(self, limit: int = 200) -> int:
        """Send TimerDue to orders whose retry or deadline has come."""
        now = self.clock.now()
        async with self.store.read() as tx:
            due = await tx.orders_due(now, limit)
        for order in due:
            try:
                await self._order_event(order.id, TimerDue(order.id))
            except Exception:  # one order's trouble must not stop the others
                log.exception("timer_failed", order_id=order.id)
                self.metrics.internal_errors.labels("timer").inc()
        return len(due)

    async def refresh_gauges(self) -> None:
        async with self.store.read() as tx:
            counts = await tx.count_orders_by_state()
        for state in OrderState:
            self.metrics.orders_by_state.labels(state.value).set(counts.get(state.value, 0))
        depth, age = await self.store.outbox_stats(self.clock.now())
        self.metrics.outbox_depth.set(depth)
        self.metrics.outbox_oldest_age.set(age)

    async def run_timers(self, interval: float, gauge_every: float = 5.0) -> None:
        last_gauges = 0.0
        while True:
            try:
                await self.tick()
                mono = self.clock.monotonic()
                if mono - last_gauges >= gauge_every:
                    await self.refresh_gauges()
                    last_gauges = mono
            except Exception:
                log.exception("timer_loop_error")
                self.metrics.internal_errors.labels("timer").inc()
            await asyncio.sleep(interval)

    # ---- plumbing ---------------------------------------------------------

    async def _transaction(self, fn: Callable[[Tx], Awaitable[T]], attempts: int = 5) -> T:
        for attempt in range(attempts):
            try:
                return await self.store.run_transaction(fn)
            except StoreConflict:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    def _after(
        self,
        outcome: Outcome,
        actions: list[RequestConnection],
        bound_state: OrderState | None = None,
    ) -> None:
        """After the commit (never inside it: a retried transaction must not
        count twice, and the relay must find the row it is woken for)."""
        self._refresh_cache(outcome, bound_state)
        for action in actions:
            self.post_commit.request_connection(action.serial)
        if any(isinstance(effect, EmitWebhook) for effect in outcome.effects):
            self.post_commit.webhook_written()
        for order in outcome.orders:
            state = order.state
            if state is OrderState.ACTIVE:
                self.metrics.activations.labels("active").inc()
                active_at = order.timeline.get(TimelineStep.ACTIVE.value)
                seen_at = order.timeline.get(TimelineStep.FIRST_SEEN.value)
                ordered_at = order.timeline.get(TimelineStep.ORDERED.value)
                if active_at and seen_at:
                    self.metrics.time_first_seen_to_active.observe(
                        max(0.0, _seconds(active_at, seen_at))
                    )
                if active_at and ordered_at:
                    self.metrics.time_ordered_to_active.observe(
                        max(0.0, _seconds(active_at, ordered_at))
                    )
            elif state is OrderState.TEST_FAILED and order.next_retry_at is None:
                self.metrics.activations.labels("test_failed").inc()
            elif state in (OrderState.FAILED, OrderState.WRONG_LOCATION, OrderState.CANCELLED):
                self.metrics.activations.labels(state.value).inc()

    def _refresh_cache(self, outcome: Outcome, bound_state: OrderState | None) -> None:
        mono = self.clock.monotonic()
        for order in outcome.orders:
            if order.device_serial:
                self.cache.order_state(order.device_serial, order.state)
        if outcome.device is not None:
            dev = outcome.device
            state = next((o.state for o in outcome.orders if o.id == dev.order_id), bound_state)
            self.cache.remember(dev, state if dev.order_id else None, mono)
        for effect in outcome.effects:
            if isinstance(effect, PushConfiguration | StartThroughputTest | ReadThroughputResult):
                self.cache.mark_busy(effect.serial)

    def _count_throughput(self, event: ThroughputMeasured, plan: Plan) -> None:
        result = event.result
        if result.mbps is None:
            self.metrics.throughput_results.labels(result.direction, "unusable").inc()
            return
        self.metrics.throughput.labels(result.direction).observe(result.mbps)
        target = plan.down_mbps if result.direction == "download" else plan.up_mbps
        passed = result.mbps >= target * self.policy.pass_fraction
        self.metrics.throughput_results.labels(result.direction, "pass" if passed else "fail").inc()


def _seconds(a: datetime, b: datetime) -> float:
    return (a - b).total_seconds()
