"""A billing system stand-in that receives turnup's webhooks.

It verifies Standard Webhooks signatures with the `standardwebhooks` package
(an implementation we did not write), records every delivery, deduplicates by
`webhook-id`, and can be told to fail: a scripted sequence of status codes, the
first N requests failing, or down/up at runtime (503 + Retry-After).

    POST /webhooks   a delivery
    GET  /received   JSON of what arrived

Run alone: `python -m emulators.billing_receiver --port 9000 --secret whsec_...`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hmac
import json
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import uvicorn
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.clock import Clock

MAX_BODY_BYTES = 1 << 20
TIMESTAMP_TOLERANCE = timedelta(minutes=5)  # as standardwebhooks enforces


@dataclass(frozen=True, slots=True)
class Received:
    webhook_id: str
    event_type: str | None
    data: Any
    verified: bool
    received_at: datetime
    status: int = 200  # what we answered
    timestamp: str | None = None  # the webhook-timestamp header of this attempt


class BillingReceiver:
    """Receives, verifies and records webhooks.

    `status_sequence` (after `fail_first` 500s) gives the answer to each
    verified delivery in turn; once used up the answer is 200. 429 and 503
    answers carry `Retry-After: retry_after`. With `clock` given, the
    timestamp window is checked against that clock (for fake-clock tests);
    the signature still comes from `standardwebhooks`.
    """

    def __init__(
        self,
        secret: str,
        fail_first: int = 0,
        status_sequence: list[int] | None = None,
        *,
        retry_after: str | None = "1",
        response_delay: float = 0.0,
        clock: Clock | None = None,
        on_receive: Callable[[Received], None] | None = None,
    ) -> None:
        self._webhook = Webhook(secret)
        self._clock = clock
        self._script: list[int] = [500] * fail_first + list(status_sequence or [])
        self.retry_after = retry_after
        self.response_delay = response_delay
        self.on_receive = on_receive
        self.down = False
        self.deliveries: list[Received] = []  # every request, in arrival order
        self.accepted: dict[str, Received] = {}  # first accepted delivery per webhook-id
        self.duplicates = 0
        self.rejected = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.app = Starlette(
            routes=[
                Route("/webhooks", self._webhooks, methods=["POST"]),
                Route("/received", self._received, methods=["GET"]),
            ]
        )

    # -- control -------------------------------------------------------------

    def set_down(self, down: bool) -> None:
        self.down = down

    def script(self, statuses: list[int]) -> None:
        """Queue status codes for the next verified deliveries."""
        self._script.extend(statuses)

    @property
    def events(self) -> list[Received]:
        """Accepted deliveries, one per webhook-id, in first-arrival order."""
        return list(self.accepted.values())

    def ids_received(self) -> list[str]:
        return [r.webhook_id for r in self.deliveries]

    # -- HTTP ------------------------------------------------------------------

    async def _webhooks(self, request: Request) -> Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.response_delay:
                await asyncio.sleep(self.response_delay)
            return await self._handle(request)
        finally:
            self.in_flight -= 1

    async def _handle(self, request: Request) -> Response:
        now = datetime.now(UTC)
        webhook_id = request.headers.get("webhook-id", "")
        timestamp = request.headers.get("webhook-timestamp")
        if self.down:
            self._record(Received(webhook_id, None, None, False, now, 503, timestamp))
            return self._answer(503)

        body = await _read_limited(request, MAX_BODY_BYTES)
        if body is None:
            self._record(Received(webhook_id, None, None, False, now, 413, timestamp))
            return Response("body too large", status_code=413)
        try:
            document = self._verify(body, dict(request.headers))
        except Exception as exc:  # bad signature, headers, JSON or timestamp
            self.rejected += 1
            self._record(Received(webhook_id, None, None, False, now, 400, timestamp))
            return Response(f"rejected: {exc}", status_code=400)

        event_type = document.get("type") if isinstance(document, dict) else None
        data = document.get("data") if isinstance(document, dict) else None
        status = self._script.pop(0) if self._script else 200
        received = Received(webhook_id, event_type, data, True, now, status, timestamp)
        self._record(received)
        if 200 <= status < 300:
            if webhook_id in self.accepted:
                self.duplicates += 1
            else:
                self.accepted[webhook_id] = received
                if self.on_receive is not None:
                    self.on_receive(received)
        return self._answer(status)

    def _verify(self, body: bytes, headers: dict[str, str]) -> Any:
        if self._clock is None:
            return self._webhook.verify(body, headers)
        # Same checks as Webhook.verify, but the window is judged by our clock.
        msg_id = headers["webhook-id"]
        sent_at = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
        if abs(self._clock.now() - sent_at) > TIMESTAMP_TOLERANCE:
            raise ValueError("timestamp outside tolerance")
        expected = base64.b64decode(
            self._webhook.sign(msg_id, sent_at, body.decode()).split(",", 1)[1]
        )
        for candidate in headers["webhook-signature"].split(" "):
            version, _, signature = candidate.partition(",")
            if version == "v1" and hmac.compare_digest(expected, base64.b64decode(signature)):
                return json.loads(body)
        raise ValueError("no matching signature")

    def _answer(self, status: int) -> Response:
        headers = {}
        if status in (429, 503) and self.retry_after is not None:
            headers["retry-after"] = self.retry_after
        return Response(status_code=status, headers=headers)

    def _record(self, received: Received) -> None:
        self.deliveries.append(received)

    async def _received(self, request: Request) -> Response:
        return JSONResponse(
            {
                "deliveries": [_as_json(r) for r in self.deliveries],
                "accepted": len(self.accepted),
                "duplicates": self.duplicates,
                "rejected": self.rejected,
            }
        )


def _as_json(received: Received) -> dict[str, Any]:
    return {
        "webhook_id": received.webhook_id,
        "event_type": received.event_type,
        "data": received.data,
        "verified": received.verified,
        "received_at": received.received_at.isoformat(),
        "status": received.status,
        "timestamp": received.timestamp,
    }


async def _read_limited(request: Request, limit: int) -> bytes | None:
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


@contextlib.asynccontextmanager
async def running_receiver(
    receiver: BillingReceiver, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve `receiver` with uvicorn; yields the webhook URL (".../webhooks")."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(receiver.app, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise RuntimeError("billing receiver stopped before it started")
            await asyncio.sleep(0.01)
        netloc = f"[{host}]" if ":" in host else host
        yield f"http://{netloc}:{bound_port}/webhooks"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Billing webhook receiver emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", required=True, help="whsec_<base64>")
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument(
        "--status", type=int, action="append", default=[], help="scripted status (repeatable)"
    )
    args = parser.parse_args(argv)

    def show(received: Received) -> None:
        print(
            json.dumps(
                {
                    "id": received.webhook_id,
                    "type": received.event_type,
                    "data": received.data,
                    "at": received.received_at.isoformat(),
                }
            ),
            flush=True,
        )

    receiver = BillingReceiver(
        args.secret, fail_first=args.fail_first, status_sequence=args.status, on_receive=show
    )
    print(f"listening on http://{args.host}:{args.port}/webhooks", file=sys.stderr, flush=True)
    uvicorn.run(receiver.app, host=args.host, port=args.port, lifespan="off", log_level="warning")


__all__ = ["BillingReceiver", "Received", "main", "running_receiver"]

if __name__ == "__main__":
    main()
