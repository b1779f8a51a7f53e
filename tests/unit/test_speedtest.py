"""The TR-143 speed-test server: download source, upload sink, bounds, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from daemon.app import _serve, _server, bind_tcp
from daemon.config import SpeedtestSettings
from daemon.metrics import Metrics
from daemon.tr069.speedtest import CHUNK, Speedtest
from emulators.scenarios.harness import wait_until

pytestmark = pytest.mark.anyio


def make(**changes: Any) -> Speedtest:
    settings = SpeedtestSettings(**{"download_bytes": 4096, "max_bytes": 10_000_000, **changes})
    return Speedtest(settings, Metrics())


def moved(app: Speedtest, direction: str) -> float:
    value = app.metrics.registry.get_sample_value(
        "turnup_speedtest_bytes_total", {"direction": direction}
    )
    return value or 0.0


@asynccontextmanager
async def asgi_client(app: Speedtest) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://speedtest") as client:
        yield client


@asynccontextmanager
async def served(app: Speedtest) -> AsyncIterator[str]:
    """`app` under uvicorn on a loopback port picked by the kernel, as the daemon runs it."""
    sock = bind_tcp("127.0.0.1", 0)
    server = _server(app)
    async with anyio.create_task_group() as tg:
        await tg.start(_serve, server, sock)
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True


# ---- download ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 1000, CHUNK, 3 * CHUNK + 17])
async def test_download_query_returns_exactly_n_bytes(size: int) -> None:
    app = make()
    async with served(app) as base, httpx.AsyncClient() as client:
        response = await client.get(f"{base}/download", params={"bytes": size})
    assert response.status_code == 200
    assert response.headers["content-length"] == str(size)
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["cache-control"] == "no-store"
    assert len(response.content) == size
    assert response.content == bytes(size)
    assert moved(app, "download") == size


async def test_download_size_in_the_path() -> None:
    app = make()
    async with asgi_client(app) as client:
        response = await client.get("/download/12345")
    assert response.status_code == 200
    assert len(response.content) == 12345


async def test_download_default_size() -> None:
    app = make(download_bytes=5000)
    async with asgi_client(app) as client:
        assert len((await client.get("/download")).content) == 5000
        assert len((await client.get("/download/")).content) == 5000


async def test_head_gives_the_length_without_a_body() -> None:
    app = make()
    async with asgi_client(app) as client:
        response = await client.head("/download?bytes=777")
    assert response.status_code == 200
    assert response.headers["content-length"] == "777"
    assert response.content == b""
    assert moved(app, "download") == 0


@pytest.mark.parametrize(
    "target",
    [
        "/download?bytes=10000001",  # above max_bytes
        "/download/10000001",
        "/download?bytes=abc",
        "/download/abc",
        "/download?bytes=0",
        "/download?bytes=-5",
        "/download?bytes=1e6",
    ],
)
async def test_bad_download_size_is_400(target: str) -> None:
    app = make()
    async with asgi_client(app) as client:
        response = await client.get(target)
    assert response.status_code == 400
    assert b"10000000" in response.content  # the message names the bound
    assert moved(app, "download") == 0
    assert app.in_flight == 0


async def test_max_bytes_itself_is_allowed() -> None:
    app = make(max_bytes=2048)
    async with asgi_client(app) as client:
        assert len((await client.get("/download?bytes=2048")).content) == 2048
        assert (await client.get("/download?bytes=2049")).status_code == 400


# ---- upload ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_upload_sink_counts_bytes(method: str) -> None:
    app = make()
    body = b"x" * (CHUNK + 99)
    async with served(app) as base, httpx.AsyncClient() as client:
        response = await client.request(method, f"{base}/upload", content=body)
    assert response.status_code == 200
    assert response.text == f"received {len(body)} bytes\n"
    assert moved(app, "upload") == len(body)


async def test_upload_streamed_in_pieces() -> None:
    app = make()

    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 5000

    async with served(app) as base, httpx.AsyncClient() as client:
        response = await client.put(f"{base}/upload", content=pieces())
    assert response.status_code == 200
    assert moved(app, "upload") == 50_000


async def test_upload_over_max_is_413() -> None:
    app = make(max_bytes=1024)
    async with asgi_client(app) as client:
        response = await client.put("/upload", content=b"z" * 1025)
        assert response.status_code == 413
        assert (await client.put("/upload", content=b"z" * 1024)).status_code == 200
    assert moved(app, "upload") == 1024
    assert app.in_flight == 0


@pytest.mark.parametrize(("method", "path"), [("GET", "/"), ("GET", "/upload"), ("PUT", "/x")])
async def test_other_routes_are_404(method: str, path: str) -> None:
    async with asgi_client(make()) as client:
        assert (await client.request(method, path)).status_code == 404


# ---- bounds ------------------------------------------------------------------------


async def test_transfers_in_flight_are_bounded() -> None:
    app = make(max_transfers=1)
    release = anyio.Event()
    first_sent = anyio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"a" * 1000
        first_sent.set()
        await release.wait()
        yield b"b" * 1000

    results: dict[str, httpx.Response] = {}
    async with served(app) as base, httpx.AsyncClient(timeout=30) as client:

        async def upload() -> None:
            results["upload"] = await client.put(f"{base}/upload", content=slow_body())

        async with anyio.create_task_group() as tg:
            tg.start_soon(upload)
            await first_sent.wait()
            assert await wait_until(lambda: app.in_flight == 1, 10)  # the server has it
            busy = await client.get(f"{base}/download?bytes=10")
            assert busy.status_code == 503
            assert busy.headers["retry-after"] == "5"
            assert moved(app, "download") == 0
            release.set()

    assert results["upload"].status_code == 200
    assert moved(app, "upload") == 2000
    assert app.in_flight == 0
    async with asgi_client(app) as client:  # the slot is free again
        assert (await client.get("/download?bytes=10")).status_code == 200


async def test_metrics_accumulate_across_transfers() -> None:
    app = make()
    async with asgi_client(app) as client:
        await client.get("/download?bytes=100")
        await client.get("/download/200")
        await client.post("/upload", content=b"u" * 50)
        await client.put("/upload", content=b"u" * 25)
    assert moved(app, "download") == 300
    assert moved(app, "upload") == 75
