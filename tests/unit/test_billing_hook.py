"""Billing webhooks: signing, backoff schedule and the relay against a real receiver."""

from __future__ import annotations

import base64
import json
import math
import random
import socket
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import anyio
import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from daemon.billing_hook import (
    BackoffSchedule,
    MemoryOutbox,
    OutboxMessage,
    WebhookRelay,
    WebhookSecretError,
    WebhookSigner,
    build_body,
    retry_after_seconds,
    sign_headers,
)
from daemon.billing_hook.schedule import DAY, DEFAULT_DELAYS
from daemon.clock import FakeClock
from emulators.billing_receiver import BillingReceiver, running_receiver

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _message(payload: Mapping[str, Any] | None = None, attempts: int = 0) -> OutboxMessage:
    created = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    return OutboxMessage(
        id="msg_0123456789abcdef0123456789abcdef",
        event_type="service.activated",
        payload=payload if payload is not None else {"order_id": "ORD-1", "serial": "ALCL1A2B3C4D"},
        created_at=created,
        attempts=attempts,
        next_attempt_at=created,
    )


# -- signing -------------------------------------------------------------------


def test_spec_vector() -> None:
    # The Standard Webhooks reference test vector.
    headers = sign_headers(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        datetime.fromtimestamp(1614265330, UTC),
        b'{"test": 2432232314}',
    )
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert headers["webhook-timestamp"] == "1614265330"


def test_body_is_compact_sorted_and_deterministic() -> None:
    body = build_body(_message({"b": 1, "a": {"y": 2, "x": [1, "é"]}}))
    assert body == build_body(_message({"a": {"x": [1, "é"], "y": 2}, "b": 1}))
    assert b" " not in body
    assert body.startswith(b'{"data":{"a":{"x":[1,"\xc3\xa9"],"y":2},"b":1},')
    document = json.loads(body)
    assert document["type"] == "service.activated"
    assert document["timestamp"] == "2026-03-04T05:06:07.123456Z"


def test_body_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(ValueError):
        build_body(_message({"speed": math.nan}))
    with pytest.raises(TypeError):
        build_body(_message({"blob": object()}))


def test_headers_verify_with_standardwebhooks() -> None:
    body = build_body(_message())
    headers = sign_headers(SECRET, "msg_abc", datetime.now(UTC), body)
    assert headers["webhook-id"] == "msg_abc"
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "turnup-webhooks/0.1"
    assert Webhook(SECRET).verify(body, headers)["data"]["serial"] == "ALCL1A2B3C4D"


def test_tampered_body_or_wrong_secret_fails() -> None:
    body = build_body(_message())
    headers = sign_headers(SECRET, "msg_abc", datetime.now(UTC), body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"ORD-1", b"ORD-2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(body, headers)


def test_id_stable_while_timestamp_and_signature_change() -> None:
    signer = WebhookSigner(SECRET)
    body = build_body(_message())
    now = datetime.now(UTC)
    first = signer.headers("msg_abc", now, body)
    retry = signer.headers("msg_abc", now + timedelta(seconds=5), body)
    assert first["webhook-id"] == retry["webhook-id"] == "msg_abc"
    assert int(retry["webhook-timestamp"]) == int(first["webhook-timestamp"]) + 5
    assert first["webhook-signature"] != retry["webhook-signature"]
    for headers in (first, retry):
        Webhook(SECRET).verify(body, headers)


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # no prefix
        "whsec_",
        "whsec_not base64!!",
        "whsec_" + base64.b64encode(b"short").decode(),
        "whsec_" + base64.b64encode(bytes(65)).decode(),
    ],
)
def test_bad_secrets_are_refused_up_front(secret: str) -> None:
    with pytest.raises(WebhookSecretError):
        WebhookSigner(secret)


def test_unpadded_secret_is_accepted() -> None:
    padded = "whsec_" + base64.b64encode(bytes(range(25))).decode()
    assert padded.endswith("=")
    body = b"{}"
    now = datetime.now(UTC)
    assert sign_headers(padded.rstrip("="), "m", now, body) == sign_headers(padded, "m", now, body)


# -- schedule --------------------------------------------------------------------


def test_default_schedule_lasts_days() -> None:
    schedule = BackoffSchedule(jitter=0.0)
    assert schedule.delays == DEFAULT_DELAYS
    assert schedule.total_seconds >= 3 * DAY
    assert schedule.next_delay(0) == 0.0
    assert schedule.next_delay(1) == 5.0
    assert schedule.next_delay(2) == 300.0
    assert schedule.next_delay(len(DEFAULT_DELAYS) - 1) == DAY
    assert schedule.next_delay(len(DEFAULT_DELAYS)) is None
    assert schedule.next_delay(1000) is None
    assert list(schedule.delays) == sorted(schedule.delays)


def test_jitter_stays_within_ten_percent_and_is_reproducible() -> None:
    first = BackoffSchedule(rng=random.Random(7))
    second = BackoffSchedule(rng=random.Random(7))
    seen = set()
    for _ in range(200):
        delay = first.next_delay(3)
        assert delay is not None
        assert 1800 * 0.9 <= delay <= 1800 * 1.1
        assert delay == second.next_delay(3)
        seen.add(delay)
    assert len(seen) > 1
    assert first.next_delay(0) == 0.0  # the first attempt is never delayed


def test_short_schedule_exhausts() -> None:
    schedule = BackoffSchedule([0, 1, 2], jitter=0)
    assert [schedule.next_delay(n) for n in range(4)] == [0, 1, 2, None]
    assert schedule.max_attempts == 3


@pytest.mark.parametrize("delays", [[], [-1.0], [math.inf]])
def test_schedule_rejects_nonsense(delays: list[float]) -> None:
    with pytest.raises(ValueError):
        BackoffSchedule(delays)


NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("9999999", DAY),  # capped
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        ("Thu, 01 Jan 2026 12:10:00 GMT", 600.0),
        ("Thu, 01 Jan 2026 11:00:00 GMT", 0.0),  # in the past: go now
        ("Sat, 01 Jan 2028 00:00:00 GMT", DAY),  # far future: capped
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1e9", None),
        ("Thu, 99 Foo 2026 12:10:00 GMT", None),
    ],
)
def test_retry_after(header: str | None, expected: float | None) -> None:
    assert retry_after_seconds(header, NOW) == expected


# -- relay -----------------------------------------------------------------------


class RecordingMetrics:
    def __init__(self) -> None:
        self.results: list[str] = []

    def delivery(self, result: str) -> None:
        self.results.append(result)


def _relay(
    store: Any,
    url: str,
    clock: FakeClock,
    client: httpx.AsyncClient,
    delays: list[float] | None = None,
    **kwargs: Any,
) -> tuple[WebhookRelay, RecordingMetrics]:
    metrics = RecordingMetrics()
    relay = WebhookRelay(
        store,
        url,
        SECRET,
        clock,
        BackoffSchedule(delays or [0, 5, 10], jitter=0.0),
        client,
        metrics=metrics,
        **kwargs,
    )
    return relay, metrics


def _clock() -> FakeClock:
    # Start at wall time: the receiver checks the signed timestamp window.
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest.mark.anyio
async def test_happy_delivery() -> None:
    clock = _clock()
    store = MemoryOutbox()
    first = store.add("service.activated", {"order_id": "ORD-1"}, clock.now())
    second = store.add("device.unmatched", {"serial": "HWTC00000001"}, clock.now())
    receiver = BillingReceiver(SECRET)  # verifies against the wall clock
    async with running_receiver(receiver) as url, httpx.AsyncClient() as client:
        relay, metrics = _relay(store, url, clock, client)
        assert await relay.deliver_once() == 2
        assert await relay.deliver_once() == 0
    assert metrics.results == ["success", "success"]
    assert {m.id for m in store.delivered} == {first.id, second.id}
    assert store.pending == []
    by_id = {r.webhook_id: r for r in receiver.events}
    assert by_id[first.id].event_type == "service.activated"
    assert by_id[first.id].data == {"order_id": "ORD-1"}
    assert by_id[second.id].data == {"serial": "HWTC00000001"}
    assert all(r.verified for r in receiver.deliveries)
    assert receiver.rejected == 0


@pytest.mark.anyio
async def test_receiver_down_then_back_keeps_the_webhook_id() -> None:
    clock = _clock()
    store = MemoryOutbox()
    message = store.add("service.activated", {"order_id": "ORD-7"}, clock.now())
    receiver = BillingReceiver(SECRET, clock=clock, retry_after="120")
    receiver.set_down(True)
    async with running_receiver(receiver) as url, httpx.AsyncClient() as client:
        relay, metrics = _relay(store, url, clock, client)
        assert await relay.deliver_once() == 1
        pending = store.get(message.id)
        assert pending is not None and pending.attempts == 1
        # Retry-After (120 s) beats the schedule's 5 s.
        assert pending.next_attempt_at == clock.now() + timedelta(seconds=120)

        clock.advance(60)
        assert await relay.deliver_once() == 0  # not due yet
        clock.advance(60)
        assert await relay.deliver_once() == 1  # still down
        receiver.set_down(False)
        clock.advance(10)
        assert await relay.deliver_once() == 0
        clock.advance(110)
        assert await relay.deliver_once() == 1
    assert metrics.results == ["retry", "retry", "success"]
    assert [m.id for m in store.delivered] == [message.id]
    assert store.delivered[0].attempts == 3
    assert receiver.ids_received() == [message.id] * 3
    timestamps = [r.timestamp for r in receiver.deliveries]
    assert len(set(timestamps)) == 3  # each attempt signed afresh
    assert [r.webhook_id for r in receiver.events] == [message.id]
    assert receiver.duplicates == 0


@pytest.mark.anyio
async def test_server_errors_until_schedule_is_exhausted_then_dead_letter() -> None:
    clock = _clock()
    store = MemoryOutbox()
    message = store.add("provisioning.failed", {"order_id": "ORD-9"}, clock.now())
    receiver = BillingReceiver(SECRET, clock=clock, status_sequence=[500] * 10)
    async with running_receiver(receiver) as url, httpx.AsyncClient() as client:
        relay, metrics = _relay(store, url, clock, client, delays=[0, 1, 2])
        for _ in range(5):
            await relay.deliver_once()
            clock.advance(3)
    assert metrics.results == ["retry", "retry", "dead"]
    assert [m.id for m in store.dead] == [message.id]
    assert store.dead[0].attempts == 3
    assert store.last_error[message.id] == "HTTP 500"
    assert [a.status_code for a in store.attempt_log] == [500, 500, 500]
    assert receiver.ids_received() == [message.id] * 3
    assert store.pending == []


@pytest.mark.anyio
async def test_gone_disables_endpoint_and_stops_delivery() -> None:
    clock = _clock()
    store = MemoryOutbox()
    first = store.add("service.activated", {"n": 1}, clock.now())
    receiver = BillingReceiver(SECRET, clock=clock, status_sequence=[410])
    async with running_receiver(receiver) as url, httpx.AsyncClient() as client:
        relay, metrics = _relay(store, url, clock, client)
        assert await relay.deliver_once() == 1
        assert metrics.results == ["disabled"]
        assert store.disabled_reason is not None and "410" in store.disabled_reason
        # The message is kept, not dead-lettered.
        assert [m.id for m in store.pending] == [first.id]
        assert store.dead == []

        second = store.add("service.activated", {"n": 2}, clock.now())
        clock.advance(3600)
        assert await relay.deliver_once() == 0
        assert len(receiver.deliveries) == 1

        store.enable_endpoint()  # an operator turns it back on
        assert await relay.deliver_once() == 2
    assert {m.id for m in store.delivered} == {first.id, second.id}
    assert {r.webhook_id for r in receiver.events} == {first.id, second.id}


@pytest.mark.anyio
async def test_connection_refused_schedules_a_retry() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clock = _clock()
    store = MemoryOutbox()
    message = store.add("device.wrong_location", {"serial": "ZTEG00000001"}, clock.now())
    async with httpx.AsyncClient() as client:
        relay, metrics = _relay(store, f"http://127.0.0.1:{port}/webhooks", clock, client)
        assert await relay.deliver_once() == 1
    assert metrics.results == ["retry"]
    pending = store.get(message.id)
    assert pending is not None
    assert pending.attempts == 1
    assert pending.next_attempt_at == clock.now() + timedelta(seconds=5)
    assert "ConnectError" in store.last_error[message.id]
    assert store.attempt_log[-1].status_code is None


@pytest.mark.anyio
async def test_slow_receiver_times_out_and_is_retried() -> None:
    clock = _clock()
    store = MemoryOutbox()
    message = store.add("service.activated", {}, clock.now())
    receiver = BillingReceiver(SECRET, clock=clock, response_delay=1.0)
    async with running_receiver(receiver) as url, httpx.AsyncClient() as client:
        relay, metrics = _relay(store, url, clock, client, timeout=0.1)
        assert await relay.deliver_once() == 1
    assert metrics.results == ["retry"]
    assert "Timeout" in store.last_error[message.id]


@pytest.mark.anyio
async def test_concurrency_is_bounded() -> None:
    clock = _clock()
    store = MemoryOutbox()
    ids = {store.add("service.activated", {"n": n}, clock.now()).id for n in range(10)}
    receiver = BillingReceiver(SECRET, clock=clock, response_delay=0.05)
    async with running_receiver(receiver) as url, httpx.AsyncClient() as client:
        relay, metrics = _relay(store, url, clock, client, concurrency=3)
        assert await relay.deliver_once() == 10
    assert 1 <= receiver.max_in_flight <= 3
    assert {r.webhook_id for r in receiver.events} == ids
    assert metrics.results == ["success"] * 10


@pytest.mark.anyio
async def test_batch_limits_one_pass() -> None:
    clock = _clock()
    store = MemoryOutbox()
    for n in range(5):
        store.add("service.activated", {"n": n}, clock.now())
    receiver = BillingReceiver(SECRET, clock=clock)
    async with running_receiver(receiver) as url, httpx.AsyncClient() as client:
        relay, _ = _relay(store, url, clock, client, batch=2)
        assert [await relay.deliver_once() for _ in range(4)] == [2, 2, 1, 0]
    assert len(receiver.events) == 5


@pytest.mark.anyio
async def test_undeliverable_payload_is_dead_lettered_without_stopping_others() -> None:
    clock = _clock()
    store = MemoryOutbox()
    bad = store.add("service.activated", {"speed": math.nan}, clock.now())
    good = store.add("service.activated", {"speed": 940.5}, clock.now())
    receiver = BillingReceiver(SECRET, clock=clock)
    async with running_receiver(receiver) as url, httpx.AsyncClient() as client:
        relay, metrics = _relay(store, url, clock, client)
        assert await relay.deliver_once() == 2
    assert sorted(metrics.results) == ["dead", "success"]
    assert [m.id for m in store.dead] == [bad.id]
    assert [m.id for m in store.delivered] == [good.id]
    assert receiver.ids_received() == [good.id]


class FlakyStore(MemoryOutbox):
    """Fails the first claim and the first mark_delivered, like a database blip."""

    def __init__(self) -> None:
        super().__init__()
        self.claim_failures = 1
        self.mark_failures = 1
        self._changed = anyio.Event()

    async def claim_due(self, now: datetime, limit: int) -> list[OutboxMessage]:
        if self.claim_failures:
            self.claim_failures -= 1
            raise ConnectionError("database went away")
        return await super().claim_due(now, limit)

    async def mark_delivered(self, message_id: str, now: datetime, status_code: int) -> None:
        if self.mark_failures:
            self.mark_failures -= 1
            raise ConnectionError("database went away")
        await super().mark_delivered(message_id, now, status_code)
        self._changed.set()

    async def wait_delivered(self, count: int) -> None:
        while len(self.delivered) < count:
            self._changed = anyio.Event()
            await self._changed.wait()


@pytest.mark.anyio
async def test_run_survives_store_errors_and_wakes_on_demand() -> None:
    clock = _clock()
    store = FlakyStore()
    message = store.add("service.activated", {"order_id": "ORD-3"}, clock.now())
    receiver = BillingReceiver(SECRET, clock=clock)
    async with running_receiver(receiver) as url, httpx.AsyncClient() as client:
        # A poll interval of an hour: only wake() gets anything going.
        relay, metrics = _relay(store, url, clock, client, delays=[0, 1, 1], poll_interval=3600)
        async with anyio.create_task_group() as group:
            group.start_soon(relay.run)
            with anyio.fail_after(10):
                while not store.delivered:
                    clock.advance(1)
                    relay.wake()
                    await anyio.sleep(0.01)
            later = store.add("device.unmatched", {"serial": "CXNK00000001"}, clock.now())
            relay.wake()
            with anyio.fail_after(10):
                await store.wait_delivered(2)
            group.cancel_scope.cancel()
    assert relay.errors == 2
    # The first delivery reached billing but was not recorded, so it went again
    # with the same id; the receiver deduplicated it.
    assert receiver.ids_received() == [message.id, message.id, later.id]
    assert receiver.duplicates == 1
    assert [m.id for m in store.delivered] == [message.id, later.id]
    assert "success" in metrics.results


def test_relay_refuses_bad_configuration() -> None:
    clock = FakeClock()
    client = httpx.AsyncClient()
    schedule = BackoffSchedule()
    with pytest.raises(WebhookSecretError):
        WebhookRelay(MemoryOutbox(), "http://billing/hooks", "secret", clock, schedule, client)
    with pytest.raises(ValueError):
        WebhookRelay(MemoryOutbox(), "ftp://billing/hooks", SECRET, clock, schedule, client)
    with pytest.raises(ValueError):
        WebhookRelay(MemoryOutbox(), "http://b/h", SECRET, clock, schedule, client, concurrency=0)
