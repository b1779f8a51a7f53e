"""The billing receiver emulator: verification, recording, dedupe and scripted failures."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from daemon.billing_hook import sign_headers
from daemon.clock import FakeClock
from emulators.billing_receiver import BillingReceiver, Received, main, running_receiver

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _body(event_type: str = "service.activated", **data: object) -> bytes:
    document = {"type": event_type, "timestamp": "2026-01-01T00:00:00.000000Z", "data": data}
    return json.dumps(document).encode()


async def _post(
    client: httpx.AsyncClient,
    url: str,
    msg_id: str,
    body: bytes,
    secret: str = SECRET,
    at: datetime | None = None,
) -> httpx.Response:
    headers = sign_headers(secret, msg_id, at or datetime.now(UTC), body)
    return await client.post(url, content=body, headers=headers)


@pytest.mark.anyio
async def test_accepts_records_and_dedupes() -> None:
    receiver = BillingReceiver(SECRET)
    async with running_receiver(receiver) as url, httpx.AsyncClient() as client:
        assert url.endswith("/webhooks")
        body = _body(order_id="ORD-1")
        assert (await _post(client, url, "msg_1", body)).status_code == 200
        assert (await _post(client, url, "msg_1", body)).status_code == 200  # a retry
        assert (await _post(client, url, "msg_2", _body("device.unmatched"))).status_code == 200
        listing = (await client.get(url.removesuffix("/webhooks") + "/received")).json()
    assert [r.webhook_id for r in receiver.events] == ["msg_1", "msg_2"]
    first = receiver.events[0]
    assert isinstance(first, Received)
    assert (first.event_type, first.data, first.verified) == (
        "service.activated",
        {"order_id": "ORD-1"},
        True,
    )
    assert receiver.duplicates == 1
    assert len(receiver.deliveries) == 3
    assert listing["accepted"] == 2
    assert listing["duplicates"] == 1
    assert listing["rejected"] == 0
    assert [d["webhook_id"] for d in listing["deliveries"]] == ["msg_1", "msg_1", "msg_2"]


@pytest.mark.anyio
async def test_rejects_bad_signatures() -> None:
    receiver = BillingReceiver(SECRET)
    async with running_receiver(receiver) as url, httpx.AsyncClient() as client:
        body = _body(order_id="ORD-1")
        wrong_secret = await _post(client, url, "msg_1", body, secret=OTHER_SECRET)
        headers = sign_headers(SECRET, "msg_2", datetime.now(UTC), body)
        tampered = await client.post(url, content=body.replace(b"ORD-1", b"ORD-X"), headers=headers)
        unsigned = await client.post(url, content=body)
        stale = await _post(client, url, "msg_3", body, at=datetime.now(UTC) - timedelta(hours=1))
        garbage = await client.post(
            url, content=body, headers={**headers, "webhook-signature": "nonsense"}
        )
    assert [r.status_code for r in (wrong_secret, tampered, unsigned, stale, garbage)] == [400] * 5
    assert receiver.rejected == 5
    assert receiver.events == []
    assert all(not r.verified and r.status == 400 for r in receiver.deliveries)


@pytest.mark.anyio
async def test_scripted_failures_then_success() -> None:
    receiver = BillingReceiver(SECRET, fail_first=1, status_sequence=[503, 429], retry_after="7")
    async with running_receiver(receiver) as url, httpx.AsyncClient() as client:
        answers = [await _post(client, url, "msg_1", _body()) for _ in range(4)]
    assert [a.status_code for a in answers] == [500, 503, 429, 200]
    assert [a.headers.get("retry-after") for a in answers] == [None, "7", "7", None]
    assert [r.status for r in receiver.deliveries] == [500, 503, 429, 200]
    assert [r.webhook_id for r in receiver.events] == ["msg_1"]
    assert receiver.duplicates == 0


@pytest.mark.anyio
async def test_down_and_up() -> None:
    receiver = BillingReceiver(SECRET)
    async with running_receiver(receiver) as url, httpx.AsyncClient() as client:
        receiver.set_down(True)
        down = await _post(client, url, "msg_1", _body())
        receiver.set_down(False)
        up = await _post(client, url, "msg_1", _body())
    assert down.status_code == 503 and down.headers["retry-after"] == "1"
    assert up.status_code == 200
    assert [r.webhook_id for r in receiver.events] == ["msg_1"]


@pytest.mark.anyio
async def test_fake_clock_judges_the_timestamp_window() -> None:
    clock = FakeClock(datetime(2030, 6, 1, tzinfo=UTC))
    receiver = BillingReceiver(SECRET, clock=clock)
    async with running_receiver(receiver) as url, httpx.AsyncClient() as client:
        ok = await _post(client, url, "msg_1", _body(), at=clock.now())
        clock.advance(3600)
        stale = await _post(client, url, "msg_2", _body(), at=clock.now() - timedelta(minutes=6))
        forged = await _post(client, url, "msg_3", _body(), secret=OTHER_SECRET, at=clock.now())
    assert (ok.status_code, stale.status_code, forged.status_code) == (200, 400, 400)


@pytest.mark.anyio
async def test_oversized_body_is_refused() -> None:
    receiver = BillingReceiver(SECRET)
    async with running_receiver(receiver) as url, httpx.AsyncClient() as client:
        answer = await _post(client, url, "msg_big", _body(blob="x" * (2 << 20)))
    assert answer.status_code == 413
    assert receiver.events == []


def test_cli_requires_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([])
    assert "--secret" in capsys.readouterr().err
