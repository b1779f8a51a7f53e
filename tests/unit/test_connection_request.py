"""Connection requests against a real loopback HTTP server that demands Digest auth."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from daemon.app import _serve, _server, bind_tcp
from daemon.config import AcsSettings
from daemon.core.orders import Device, DeviceStatus
from daemon.metrics import Metrics
from daemon.store import Store
from daemon.tr069.auth import DigestAuthenticator
from daemon.tr069.connection_request import ConnectionRequester
from emulators.scenarios.harness import wait_until

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CR_USER = "turnup"
CR_PASSWORD = "cr-secret"


@dataclass
class FakeCpe:
    """The CPE side of a connection request: GET with Digest auth (TR-069 §3.2.2)."""

    password: str | None = CR_PASSWORD  # None: no auth required
    status: int = 200
    hits: list[dict[str, Any]] = field(default_factory=list)
    digest: DigestAuthenticator = field(
        default_factory=lambda: DigestAuthenticator("cpe", b"server-secret", nonce_ttl=300)
    )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        target = scope["path"] + (
            f"?{scope['query_string'].decode()}" if scope["query_string"] else ""
        )
        auth = headers.get("authorization", "")
        hit = {"method": scope["method"], "target": target, "authorization": auth}
        self.hits.append(hit)
        status, extra = self.status, []
        if self.password is not None:
            result = self.digest.verify(
                auth, scope["method"], self._lookup, time.time(), uri=target
            )
            hit["authenticated"] = result.ok
            if not result.ok:
                status = 401
                extra = [(b"www-authenticate", self.digest.challenge(time.time()).encode())]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", b"0"), *extra],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    def _lookup(self, username: str) -> str | None:
        return self.password if username == CR_USER else None

    @property
    def authenticated(self) -> list[dict[str, Any]]:
        return [h for h in self.hits if h.get("authenticated")]


async def _start(cpe: FakeCpe, tg: anyio.abc.TaskGroup) -> tuple[str, Any]:
    sock = bind_tcp("127.0.0.1", 0)
    server = _server(cpe)
    await tg.start(_serve, server, sock)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/cr/ALCL1A2B3C4D", server


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'turnup.db'}")
    try:
        yield opened
    finally:
        await opened.close()


async def save_device(store: Store, serial: str, url: str | None) -> None:
    device = Device(
        serial=serial,
        status=DeviceStatus.UNMATCHED,
        first_seen=T0,
        last_seen=T0,
        connection_request_url=url,
    )
    async with store.transaction() as tx:
        await tx.save_device(device)


def settings(password: str = CR_PASSWORD, **changes: Any) -> AcsSettings:
    return AcsSettings(
        trust_management_network=True,
        connection_request_username=CR_USER,
        connection_request_password=password,
        connection_request_timeout_seconds=5,
        **changes,
    )


def count(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "turnup_connection_requests_total", {"result": result}
    )
    return value or 0.0


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ---- send --------------------------------------------------------------------------


async def test_send_with_digest_is_ok(store: Store) -> None:
    cpe = FakeCpe()
    metrics = Metrics()
    async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
        url, server = await _start(cpe, tg)
        await save_device(store, "ALCL1A2B3C4D", url)
        requester = ConnectionRequester(store, settings(), metrics, client)
        assert await requester.send("ALCL1A2B3C4D") == "ok"
        server.should_exit = True
    # first the bare GET, then the Digest answer to the challenge
    assert [h["method"] for h in cpe.hits] == ["GET", "GET"]
    assert cpe.hits[0]["authorization"] == ""
    assert cpe.hits[1]["authorization"].startswith("Digest ")
    assert f'username="{CR_USER}"' in cpe.hits[1]["authorization"]
    assert len(cpe.authenticated) == 1
    assert cpe.authenticated[0]["target"] == "/cr/ALCL1A2B3C4D"
    assert count(metrics, "ok") == 1


async def test_wrong_password_is_auth_failed(store: Store) -> None:
    cpe = FakeCpe(password="the-cpe-has-another")
    metrics = Metrics()
    async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
        url, server = await _start(cpe, tg)
        await save_device(store, "ALCL1A2B3C4D", url)
        requester = ConnectionRequester(store, settings(), metrics, client)
        assert await requester.send("ALCL1A2B3C4D") == "auth_failed"
        server.should_exit = True
    assert cpe.hits and not cpe.authenticated
    assert count(metrics, "auth_failed") == 1
    assert count(metrics, "ok") == 0


async def test_no_password_sends_no_auth(store: Store) -> None:
    cpe = FakeCpe(password=None, status=204)
    metrics = Metrics()
    async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
        url, server = await _start(cpe, tg)
        await save_device(store, "ALCL1A2B3C4D", url)
        requester = ConnectionRequester(store, settings(password=""), metrics, client)
        assert await requester.send("ALCL1A2B3C4D") == "ok"
        server.should_exit = True
    assert [h["authorization"] for h in cpe.hits] == [""]


async def test_other_status_is_refused(store: Store) -> None:
    cpe = FakeCpe(status=503)
    metrics = Metrics()
    async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
        url, server = await _start(cpe, tg)
        await save_device(store, "ALCL1A2B3C4D", url)
        requester = ConnectionRequester(store, settings(), metrics, client)
        assert await requester.send("ALCL1A2B3C4D") == "refused"
        server.should_exit = True
    assert count(metrics, "refused") == 1


@pytest.mark.parametrize("url", [None, "", "ftp://10.0.0.1/cr", "javascript:alert(1)"])
async def test_no_usable_url(store: Store, url: str | None) -> None:
    metrics = Metrics()
    await save_device(store, "ALCL1A2B3C4D", url)
    async with httpx.AsyncClient() as client:
        requester = ConnectionRequester(store, settings(), metrics, client)
        assert await requester.send("ALCL1A2B3C4D") == "no_url"
    assert count(metrics, "no_url") == 1


async def test_unknown_device_is_no_url(store: Store) -> None:
    metrics = Metrics()
    async with httpx.AsyncClient() as client:
        requester = ConnectionRequester(store, settings(), metrics, client)
        assert await requester.send("ZTEG00000001") == "no_url"


async def test_nothing_listening_is_unreachable(store: Store) -> None:
    metrics = Metrics()
    await save_device(store, "ALCL1A2B3C4D", f"http://127.0.0.1:{free_port()}/cr")
    async with httpx.AsyncClient() as client:
        requester = ConnectionRequester(store, settings(), metrics, client)
        assert await requester.send("ALCL1A2B3C4D") == "unreachable"
    assert count(metrics, "unreachable") == 1


# ---- queue -------------------------------------------------------------------------


async def test_request_coalesces_duplicates(store: Store) -> None:
    metrics = Metrics()
    async with httpx.AsyncClient() as client:
        requester = ConnectionRequester(store, settings(), metrics, client)
        for _ in range(5):
            requester.request("ALCL1A2B3C4D")
        requester.request("HWTC00000001")
        requester.request("ALCL1A2B3C4D")
    assert requester.queue.qsize() == 2
    assert requester.pending == {"ALCL1A2B3C4D", "HWTC00000001"}


async def test_full_queue_drops_with_a_metric(store: Store) -> None:
    metrics = Metrics()
    async with httpx.AsyncClient() as client:
        requester = ConnectionRequester(store, settings(), metrics, client, queue_size=2)
        for serial in ("ALCL00000001", "ALCL00000002", "ALCL00000003", "ALCL00000004"):
            requester.request(serial)
    assert requester.queue.qsize() == 2
    assert requester.pending == {"ALCL00000001", "ALCL00000002"}
    assert count(metrics, "dropped_queue_full") == 2


async def test_workers_send_queued_requests_once_each(store: Store) -> None:
    cpe = FakeCpe()
    metrics = Metrics()
    async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
        url, server = await _start(cpe, tg)
        await save_device(store, "ALCL1A2B3C4D", url)
        await save_device(store, "HWTC00000001", None)
        requester = ConnectionRequester(
            store, settings(max_connection_requests_in_flight=2), metrics, client
        )
        requester.request("ALCL1A2B3C4D")
        requester.request("ALCL1A2B3C4D")
        requester.request("HWTC00000001")
        tg.start_soon(requester.run)
        assert await wait_until(lambda: count(metrics, "ok") + count(metrics, "no_url") == 2, 20)
        assert not requester.pending
        # a request after the first went out is a new one
        requester.request("ALCL1A2B3C4D")
        assert await wait_until(lambda: count(metrics, "ok") == 2, 20)
        server.should_exit = True
        tg.cancel_scope.cancel()
    assert count(metrics, "ok") == 2
    assert count(metrics, "no_url") == 1
    assert len(cpe.authenticated) == 2
