"""The TR-143 speed-test server: a download source of N bytes and an upload sink.

Raw ASGI on its own listener, so a busy test never slows the ACS. Routes:
`GET /download?bytes=N` (also `/download/N`) streams N bytes; `PUT|POST
/upload` reads and discards the body. Sizes are bounded by config and the
number of transfers in flight is bounded (503 + Retry-After past it).
"""

from __future__ import annotations

from urllib.parse import parse_qs

from daemon.asgi import Receive, Scope, Send, serve_lifespan
from daemon.config import SpeedtestSettings
from daemon.metrics import Metrics

CHUNK = 256 * 1024
_BLOCK = bytes(CHUNK)  # zeros: CPEs do not compress, and this costs nothing to make


class Speedtest:
    def __init__(self, settings: SpeedtestSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if self.in_flight >= self.settings.max_transfers:
            await _plain(send, 503, b"busy\n", [(b"retry-after", b"5")])
            return
        self.in_flight += 1
        try:
            if path.startswith("/download") and method in ("GET", "HEAD"):
                await self._download(scope, send, head=method == "HEAD")
            elif path.startswith("/upload") and method in ("PUT", "POST"):
                await self._upload(receive, send)
            else:
                await _plain(send, 404, b"use GET /download?bytes=N or PUT /upload\n")
        finally:
            self.in_flight -= 1

    def _size(self, scope: Scope) -> int | None:
        path: str = scope["path"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        raw = query.get("bytes", [""])[0]
        if not raw and path.count("/") >= 2:
            raw = path.rsplit("/", 1)[1]
        if not raw:
            return self.settings.download_bytes
        try:
            size = int(raw)
        except ValueError:
            return None
        return size if 0 < size <= self.settings.max_bytes else None

    async def _download(self, scope: Scope, send: Send, head: bool) -> None:
        size = self._size(scope)
        if size is None:
            await _plain(send, 400, f"bytes must be 1..{self.settings.max_bytes}\n".encode())
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(size).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        if head:
            await send({"type": "http.response.body", "body": b""})
            return
        left = size
        view = memoryview(_BLOCK)
        while left > 0:
            n = min(left, CHUNK)
            left -= n
            await send(
                {
                    "type": "http.response.body",
                    "body": bytes(view[:n]) if n < CHUNK else _BLOCK,
                    "more_body": left > 0,
                }
            )
        self.metrics.speedtest_bytes.labels("download").inc(size)

    async def _upload(self, receive: Receive, send: Send) -> None:
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            total += len(message.get("body", b""))
            if total > self.settings.max_bytes:
                await _plain(send, 413, b"upload too large\n")
                return
            if not message.get("more_body", False):
                break
        self.metrics.speedtest_bytes.labels("upload").inc(total)
        await _plain(send, 200, f"received {total} bytes\n".encode())


async def _plain(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    out = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    out.extend(headers or [])
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})
