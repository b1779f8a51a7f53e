"""The built-in HTTP/1.1 server of the ACS listener, over real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest

from daemon.httpserver import HttpServer, Request, Response, encode_response

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def echo(request: Request) -> Response:
    body = f"{request.method} {request.target} {len(request.body)}".encode()
    return 200, body, [(b"x-path", request.path.encode())]


@asynccontextmanager
async def serving(
    handler: Callable[[Request], object] = echo, **kw: object
) -> AsyncIterator[tuple[HttpServer, int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    kw.setdefault("max_body_bytes", 1000)
    server = HttpServer(handler, **kw)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: server.serve(sock, task_status=task_status, grace=2))
        try:
            yield server, sock.getsockname()[1]
        finally:
            tg.cancel_scope.cancel()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(n), 5) if n else b""
    return status, headers, body


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def post(target: str, body: bytes = b"", extra: str = "") -> bytes:
    return (
        f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""


async def test_keep_alive_and_pipelining_answer_in_order() -> None:
    async with serving() as (_, port):
        r, w = await connect(port)
        w.write(post("/a", b"1") + post("/b?q=1", b"22") + post("/c%20d", b""))
        for expected, path in (
            (b"POST /a 1", "/a"),
            (b"POST /b?q=1 2", "/b"),
            (b"POST /c%20d 0", "/c d"),
        ):
            status, headers, body = await read_response(r)
            assert (status, body, headers["x-path"]) == (200, expected, path)
            assert "connection" not in headers
        w.write(post("/again", b"x"))
        assert (await read_response(r))[2] == b"POST /again 1"
        w.close()


async def test_http_1_0_and_connection_close_end_the_connection() -> None:
    async with serving() as (_, port):
        r, w = await connect(port)
        w.write(b"POST /x HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        status, headers, _ = await read_response(r)
        assert status == 200 and headers["connection"] == "close"
        assert await closed(r)
        r, w = await connect(port)
        w.write(post("/x", extra="Connection: close\r\n"))
        assert (await read_response(r))[1]["connection"] == "close"
        assert await closed(r)


async def test_oversized_bodies_are_refused_before_and_while_reading() -> None:
    malformed: list[int] = []
    async with serving(on_malformed=lambda: malformed.append(1)) as (_, port):
        r, w = await connect(port)
        w.write(b"POST /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")  # no body sent at all
        status, headers, body = await read_response(r)
        assert (status, headers["connection"]) == (413, "close") and b"too large" in body
        assert await closed(r)
        r, w = await connect(port)
        chunk = b"x" * 600
        w.write(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        w.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2 + b"0\r\n\r\n")
        assert (await read_response(r))[0] == 413
        assert await closed(r)
    assert len(malformed) == 2


async def test_chunked_body_within_bounds_is_read_whole() -> None:
    async with serving() as (_, port):
        r, w = await connect(port)
        w.write(
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        assert (await read_response(r))[2] == b"POST /x 5"


async def test_malformed_request_gets_400_and_close() -> None:
    malformed: list[int] = []
    async with serving(on_malformed=lambda: malformed.append(1)) as (_, port):
        r, w = await connect(port)
        w.write(b"NOT HTTP AT ALL\r\n\r\n")
        status, _, body = await read_response(r)
        assert status == 400 and b"malformed" in body
        assert await closed(r)
    assert malformed == [1]


async def test_expect_100_continue() -> None:
    async with serving() as (_, port):
        r, w = await connect(port)
        w.write(b"POST /x HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100")
        w.write(b"ok")
        assert (await read_response(r))[2] == b"POST /x 2"


async def test_handler_errors_are_500_and_counted() -> None:
    errors: list[int] = []

    async def broken(request: Request) -> Response:
        raise RuntimeError("boom")

    async with serving(broken, on_error=lambda: errors.append(1)) as (_, port):
        r, w = await connect(port)
        w.write(post("/x") + post("/y"))
        assert (await read_response(r))[0] == 500
        assert (await read_response(r))[0] == 500  # the connection goes on
    assert errors == [1, 1]


async def test_immediate_answers_skip_the_async_handler_and_none_passes() -> None:
    seen: list[str] = []

    def immediate(request: Request) -> Response | None:
        seen.append(request.path)
        return (204, b"", []) if request.path == "/now" else None

    async with serving(immediate=immediate) as (_, port):
        r, w = await connect(port)
        w.write(post("/now") + post("/later", b"abc") + post("/now"))
        assert (await read_response(r))[0] == 204
        assert (await read_response(r))[2] == b"POST /later 3"
        assert (await read_response(r))[0] == 204
    assert seen == ["/now", "/later", "/now"]


async def test_idle_and_slow_connections_are_closed_by_the_sweep() -> None:
    async with serving(keepalive_timeout=5, request_timeout=5) as (server, port):
        idle_r, idle_w = await connect(port)
        idle_w.write(post("/x"))
        await read_response(idle_r)
        slow_r, slow_w = await connect(port)
        slow_w.write(b"POST /x HTTP/1.1\r\nContent-Len")  # a request that never completes
        await asyncio.sleep(0.1)
        server.sweep(asyncio.get_running_loop().time() + 10)
        assert await closed(idle_r)
        status, _, _ = await read_response(slow_r)
        assert status == 408
        assert await closed(slow_r)


async def test_connection_cap_answers_503() -> None:
    async with serving(max_connections=1) as (_, port):
        r1, w1 = await connect(port)
        w1.write(post("/x"))
        await read_response(r1)
        r2, _ = await connect(port)
        status, headers, _ = await read_response(r2)
        assert status == 503 and headers["retry-after"] == "10"


async def test_stop_lets_requests_in_flight_finish() -> None:
    release = asyncio.Event()

    async def slow(request: Request) -> Response:
        await release.wait()
        return 200, b"done", []

    async with serving(slow) as (server, port):
        r, w = await connect(port)
        w.write(post("/x"))
        await asyncio.sleep(0.1)
        assert server.requests_in_flight == 1
        asyncio.get_running_loop().call_later(0.2, release.set)
    # the serving context cancelled the server; the request still got its answer
    status, headers, body = await read_response(r)
    assert (status, body, headers["connection"]) == (200, b"done", "close")


def test_encode_response_refuses_header_injection() -> None:
    assert encode_response(204, b"", [], True) == b"HTTP/1.1 204 No Content\r\n\r\n"
    with pytest.raises(ValueError):
        encode_response(200, b"", [(b"x", b"a\r\nb: c")], True)


async def test_a_peer_that_does_not_read_is_not_answered_without_bound() -> None:
    """Pipelined requests from a peer that never reads: answering stops once the
    transport's buffer is full, and goes on when the peer reads."""
    answered: list[int] = []
    big = b"x" * 65536

    def immediate(request: Request) -> Response:
        answered.append(1)
        return 200, big, []

    total = 400  # 400 x 64 KiB of answers: far more than the socket buffers hold
    async with serving(immediate=immediate) as (_, port):
        r, w = await connect(port)
        w.write(post("/x") * total)
        await asyncio.sleep(0.5)
        assert 0 < len(answered) < total
        for _ in range(total):
            status, _, body = await read_response(r)
            assert status == 200 and len(body) == len(big)
    assert len(answered) == total


async def test_oversized_request_line_and_headers_are_refused() -> None:
    malformed: list[int] = []
    async with serving(on_malformed=lambda: malformed.append(1)) as (_, port):
        r, w = await connect(port)
        w.write(b"POST /" + b"a" * 20_000 + b" HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert (await read_response(r))[0] == 414
        assert await closed(r)
        r, w = await connect(port)
        w.write(b"POST /x HTTP/1.1\r\n" + b"X-Filler: 0123456789\r\n" * 1000 + b"\r\n")
        assert (await read_response(r))[0] == 431
        assert await closed(r)
    assert len(malformed) == 2
