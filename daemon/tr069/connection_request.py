"""Connection requests (TR-069 §3.2.2): ask an online CPE to open a session now.

An HTTP GET with Digest auth to the device's ConnectionRequestURL. Requests
are queued (bounded; duplicates for one serial coalesce) and sent by a fixed
number of workers. A failed request loses nothing: the queued work stays in
the store and goes out at the device's next periodic Inform.
"""

from __future__ import annotations

import asyncio

import httpx
import structlog

from daemon.config import AcsSettings
from daemon.metrics import Metrics
from daemon.store.repository import Store

log = structlog.get_logger("turnup.connection_request")


class ConnectionRequester:
    def __init__(
        self,
        store: Store,
        settings: AcsSettings,
        metrics: Metrics,
        client: httpx.AsyncClient,
        queue_size: int = 10_000,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.client = client
        self.queue: asyncio.Queue[str] = asyncio.Queue(queue_size)
        self.pending: set[str] = set()

    def request(self, serial: str) -> None:
        """Queue a connection request; never blocks."""
        if serial in self.pending:
            return
        try:
            self.queue.put_nowait(serial)
        except asyncio.QueueFull:
            self.metrics.connection_requests.labels("dropped_queue_full").inc()
            return
        self.pending.add(serial)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for _ in range(self.settings.max_connection_requests_in_flight):
                tg.create_task(self._worker())

    async def _worker(self) -> None:
        while True:
            serial = await self.queue.get()
            self.pending.discard(serial)
            try:
                await self.send(serial)
            except Exception:
                log.exception("connection_request_error", serial=serial)
                self.metrics.internal_errors.labels("connection_request").inc()

    async def send(self, serial: str) -> str:
        async with self.store.read() as tx:
            device = await tx.get_device(serial)
        url = device.connection_request_url if device else None
        if not url or not url.startswith(("http://", "https://")):
            self.metrics.connection_requests.labels("no_url").inc()
            return "no_url"
        s = self.settings
        auth = (
            httpx.DigestAuth(s.connection_request_username, s.connection_request_password)
            if s.connection_request_password
            else None
        )
        try:
            response = await self.client.get(
                url, auth=auth, timeout=s.connection_request_timeout_seconds
            )
        except httpx.HTTPError as exc:
            self.metrics.connection_requests.labels("unreachable").inc()
            log.info("connection_request_failed", serial=serial, error=type(exc).__name__)
            return "unreachable"
        if response.status_code in (200, 204):
            self.metrics.connection_requests.labels("ok").inc()
            return "ok"
        result = "auth_failed" if response.status_code == 401 else "refused"
        self.metrics.connection_requests.labels(result).inc()
        log.info("connection_request_refused", serial=serial, status=response.status_code)
        return result
