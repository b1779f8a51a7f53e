"""The webhook relay: drains the outbox to the billing endpoint, signed, with retries.

It owns the delivery loop and the decision per attempt; the store owns
durability and the schedule owns timing. Rules (Standard Webhooks):

- Every attempt is a fresh POST of the same body with the same `webhook-id`
  and a new timestamp and signature. Delivery is at least once; receivers
  deduplicate on `webhook-id`.
- 2xx: delivered.
- 410 Gone: the receiver asked us to stop. The endpoint is disabled and the
  message stays pending on its normal schedule (never dead-lettered for
  this), so once an operator re-enables the endpoint the backlog goes out.
  Messages already claimed in the same pass are still attempted.
- 429/503 with `Retry-After`: the next attempt waits for the larger of the
  schedule delay and the header (capped, see `schedule.retry_after_seconds`).
- Anything else (other statuses, timeouts, refused connections): retry on the
  schedule, or dead-letter once it is exhausted.
- A single bad message never stops the loop: it is logged, counted and
  rescheduled.

Metrics stay out of here: the app passes a `RelayMetrics` adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

import httpx
import structlog
from structlog.typing import FilteringBoundLogger

from daemon.billing_hook.outbox import OutboxMessage, OutboxStore
from daemon.billing_hook.schedule import BackoffSchedule, retry_after_seconds
from daemon.billing_hook.signing import WebhookSigner, build_body
from daemon.clock import Clock

ERROR_SNIPPET_BYTES = 256


class DeliveryResult(StrEnum):
    SUCCESS = "success"
    RETRY = "retry"
    DEAD = "dead"
    DISABLED = "disabled"


class RelayMetrics(Protocol):
    def delivery(self, result: str) -> None:
        """One attempt settled; `result` is a `DeliveryResult` value."""
        ...


class WebhookRelay:
    def __init__(
        self,
        store: OutboxStore,
        url: str,
        secret: str,
        clock: Clock,
        schedule: BackoffSchedule,
        client: httpx.AsyncClient,
        batch: int = 100,
        concurrency: int = 16,
        poll_interval: float = 0.5,
        metrics: RelayMetrics | None = None,
        logger: FilteringBoundLogger | None = None,
        *,
        timeout: float = 10.0,
    ) -> None:
        if httpx.URL(url).scheme not in ("http", "https"):
            raise ValueError(f"webhook URL must be http(s), got {url!r}")
        if batch < 1 or concurrency < 1:
            raise ValueError("batch and concurrency must be at least 1")
        if poll_interval <= 0 or timeout <= 0:
            raise ValueError("poll_interval and timeout must be positive")
        self._store = store
        self._url = url
        self._signer = WebhookSigner(secret)  # raises WebhookSecretError early
        self._clock = clock
        self._schedule = schedule
        self._client = client
        self._batch = batch
        self._poll_interval = poll_interval
        self._timeout = timeout
        self._metrics = metrics
        self._log: FilteringBoundLogger = logger or structlog.get_logger("turnup.webhooks")
        self._limit = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._errors = 0

    @property
    def errors(self) -> int:
        """Unexpected failures caught by the guards (bugs or store outages)."""
        return self._errors

    def wake(self) -> None:
        """Deliver now: call after committing a transaction that wrote outbox rows."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled."""
        while True:
            attempted = 0
            try:
                attempted = await self.deliver_once()
            except Exception:
                self._errors += 1
                self._log.exception("webhook_pass_failed")
            if attempted >= self._batch:
                await asyncio.sleep(0)  # a full batch: more may be due, go again
                continue
            await self._idle()

    async def deliver_once(self) -> int:
        """One pass over due messages; returns how many were attempted."""
        if await self._store.endpoint_disabled() is not None:
            return 0
        messages = await self._store.claim_due(self._clock.now(), self._batch)
        if not messages:
            return 0
        async with asyncio.TaskGroup() as group:
            for message in messages:
                group.create_task(self._deliver_guarded(message))
        return len(messages)

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll_interval):
                await self._wake.wait()
        self._wake.clear()

    async def _deliver_guarded(self, message: OutboxMessage) -> None:
        async with self._limit:
            try:
                result = await self._deliver(message)
            except Exception as exc:
                self._errors += 1
                self._log.exception(
                    "webhook_delivery_error", message_id=message.id, event_type=message.event_type
                )
                if await self._reschedule_after_error(message, exc):
                    self._count(DeliveryResult.RETRY)
                return
            self._count(result)

    async def _deliver(self, message: OutboxMessage) -> DeliveryResult:
        try:
            body = build_body(message)
        except (TypeError, ValueError) as exc:
            # It will never encode; retrying cannot help.
            return await self._dead(message, f"payload cannot be encoded: {exc}", None)

        status: int | None = None
        retry_after: str | None = None
        error: str
        try:
            headers = self._signer.headers(message.id, self._clock.now(), body)
            async with asyncio.timeout(self._timeout):
                async with self._client.stream(
                    "POST", self._url, content=body, headers=headers, timeout=self._timeout
                ) as response:
                    status = response.status_code
                    if 200 <= status < 300:
                        error = ""
                    else:
                        retry_after = response.headers.get("retry-after")
                        snippet = await _read_snippet(response)
                        error = f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}"
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            status = None
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

        now = self._clock.now()
        attempts_made = message.attempts + 1
        if status is not None and 200 <= status < 300:
            await self._store.mark_delivered(message.id, now, status)
            return DeliveryResult.SUCCESS

        if status == 410:
            reason = f"receiver answered 410 Gone for {message.id}"
            await self._store.disable_endpoint(now, reason)
            # Keep the message pending, even past the schedule's end: the endpoint,
            # not the message, is at fault, and an operator may re-enable it.
            delay = self._schedule.next_delay(attempts_made)
            if delay is None:
                delay = self._schedule.delays[-1]
            next_at = now + timedelta(seconds=delay)
            await self._store.mark_retry(message.id, now, next_at, error, status)
            self._log.error(
                "webhook_endpoint_disabled", url=self._url, message_id=message.id, reason=reason
            )
            return DeliveryResult.DISABLED

        delay = self._schedule.next_delay(attempts_made)
        if delay is None:
            return await self._dead(message, error, status, now)
        if status in (429, 503):
            asked = retry_after_seconds(retry_after, now)
            if asked is not None:
                delay = max(delay, asked)
        next_at = now + timedelta(seconds=delay)
        await self._store.mark_retry(message.id, now, next_at, error, status)
        self._log.warning(
            "webhook_retry",
            message_id=message.id,
            event_type=message.event_type,
            attempts=attempts_made,
            status=status,
            error=error,
            next_attempt_at=next_at.isoformat(),
        )
        return DeliveryResult.RETRY

    async def _dead(
        self,
        message: OutboxMessage,
        error: str,
        status: int | None,
        now: datetime | None = None,
    ) -> DeliveryResult:
        now = now or self._clock.now()
        await self._store.mark_dead(message.id, now, error, status)
        self._log.error(
            "webhook_dead_letter",
            message_id=message.id,
            event_type=message.event_type,
            attempts=message.attempts + 1,
            status=status,
            error=error,
        )
        return DeliveryResult.DEAD

    async def _reschedule_after_error(self, message: OutboxMessage, exc: Exception) -> bool:
        """Put a message that hit an unexpected error back on its schedule."""
        now = self._clock.now()
        delay = self._schedule.next_delay(message.attempts + 1)
        if delay is None:
            delay = self._schedule.delays[-1]
        try:
            await self._store.mark_retry(
                message.id,
                now,
                now + timedelta(seconds=delay),
                f"internal error: {type(exc).__name__}: {exc}",
                None,
            )
        except Exception:
            self._errors += 1
            self._log.exception("webhook_reschedule_failed", message_id=message.id)
            return False
        return True

    def _count(self, result: DeliveryResult) -> None:
        if self._metrics is None:
            return
        try:
            self._metrics.delivery(result.value)
        except Exception:
            self._errors += 1
            self._log.exception("webhook_metrics_failed")


async def _read_snippet(response: httpx.Response) -> str:
    """The start of an error body, for the record; never the whole thing."""
    data = bytearray()
    chunks = response.aiter_raw()
    try:
        async for chunk in chunks:
            data += chunk
            if len(data) >= ERROR_SNIPPET_BYTES:
                break
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    text = bytes(data[:ERROR_SNIPPET_BYTES]).decode("utf-8", errors="replace")
    return " ".join(text.split())
