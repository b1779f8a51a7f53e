"""A small HTTP/1.1 server for the ACS hot path: an asyncio Protocol over httptools.

Why not uvicorn here (it still serves the control API and the speed-test server):
a CWMP session is a new TCP connection carrying two or three short requests. On
the benchmark machine uvicorn spends ~130 µs of server CPU per such session with
an app that does nothing, this server ~75 µs (`bench/acs.py`, phase "server floor").
At the issue's target (~210 µs per session) that difference is a quarter of the budget.

What it does, and nothing more:
- HTTP/1.0 and 1.1 requests, keep-alive, pipelined requests answered in order
  (at most `MAX_QUEUED` parsed ahead; reading pauses beyond that);
- the body is read whole, bounded by `max_body_bytes` (a larger Content-Length is
  refused before the body arrives: 413 and close); chunked bodies are accepted;
- `Expect: 100-continue` is answered;
- malformed requests get 400 and the connection is closed (`on_malformed` counts);
- a peer that does not read its answers is not read from either (reading pauses
  while the transport's write buffer is above its high-water mark);
- one sweep per second closes connections idle past `keepalive_timeout` and those
  that started a request but did not finish it within `request_timeout`
  (slow-loris bound);
- at most `max_connections` at once; beyond that a 503 and close;
- the handler gets a `Request` and returns `(status, body, headers)`; an exception
  there is logged and answered 500. An optional `immediate` handler is tried first,
  synchronously: answers that need no I/O go out without a task per request (a
  third of the requests' cost on the ACS hot path); it returns None to pass;
- stop: the listener closes, idle connections close, requests in flight get
  `grace` seconds, then every connection is aborted.
No TLS (the ACS is plain HTTP on the management network; put TLS in front if
needed), no upgrades, no trailers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast
from urllib.parse import unquote

import anyio
import anyio.abc
import httptools
import structlog

log = structlog.get_logger("turnup.http")

MAX_QUEUED = 4  # parsed requests waiting behind the one in flight
MAX_HEADER_BYTES = 16 * 1024  # names + values, plus 32 per header (at most 512 headers)

Headers = list[tuple[bytes, bytes]]
Response = tuple[int, bytes, Headers]


@dataclass(slots=True)
class Request:
    """One request, read whole. `headers` maps lower-case names to the first value
    sent under that name; `raw_headers` keeps every header in order."""

    method: str
    target: str  # the request target as sent (path and query)
    path: str
    headers: dict[bytes, bytes]
    raw_headers: Headers
    client: tuple[str, int] | None
    body: bytes

    def header(self, name: bytes) -> str:
        value = self.headers.get(name)
        return "" if value is None else value.decode("latin-1")


Handler = Callable[[Request], Awaitable[Response]]

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def encode_response(status: int, body: bytes, headers: Headers, keep_alive: bool) -> bytes:
    """Status line, headers, Content-Length (none for 1xx/204/304) and body in one
    buffer, so each response is one write."""
    reason = _REASONS.get(status, b"")
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    for name, value in headers:
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
            raise ValueError(f"header {name!r} carries a line break")
        parts.append(b"%s: %s\r\n" % (name, value))
    no_body = status == 204 or status == 304 or 100 <= status < 200
    if not no_body:
        parts.append(b"content-length: %d\r\n" % len(body))
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if not no_body:
        parts.append(body)
    return b"".join(parts)


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        *,
        immediate: Callable[[Request], Response | None] | None = None,
        max_body_bytes: int,
        keepalive_timeout: float = 30.0,
        request_timeout: float = 30.0,
        max_connections: int = 20_000,
        on_malformed: Callable[[], None] | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.handler = handler
        self.immediate = immediate
        self.max_body_bytes = max_body_bytes
        self.keepalive_timeout = keepalive_timeout
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.on_malformed = on_malformed
        self.on_error = on_error
        self.connections: set[_Connection] = set()
        self.requests_in_flight = 0
        self._server: asyncio.AbstractServer | None = None
        self._stopping = False
        self._drained = asyncio.Event()  # set once stopping and nothing is in flight

    # ---- lifetime -------------------------------------------------------------

    async def serve(
        self,
        sock: socket.socket,
        *,
        grace: float = 5.0,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on the bound socket until cancelled; then stop as described above."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock, backlog=2048)
        task_status.started()
        try:
            while True:
                await asyncio.sleep(1.0)
                self.sweep(loop.time())
        finally:
            with anyio.CancelScope(shield=True):
                await self._shutdown(grace)

    async def _shutdown(self, grace: float) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if not conn.busy:
                conn.close()
        if self.requests_in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), grace)
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()

    def sweep(self, now: float) -> None:
        for conn in list(self.connections):
            conn.check_timeouts(now)

    @property
    def stopping(self) -> bool:
        return self._stopping


class _Connection(asyncio.Protocol):
    """One TCP connection: parse, queue, run the handler, write, repeat."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client: tuple[str, int] | None = None
        self.queue: deque[tuple[Request, bool]] = deque()
        self.busy = False  # a handler is running for this connection
        self.paused = False  # reading paused (queue full, or writes backed up)
        self.write_paused = False
        self.closed = False
        self.eof = False
        self.last_activity = self.loop.time()
        self.request_started: float | None = None  # a request is partly read
        # the request being parsed
        self._url = b""
        self._headers: Headers = []
        self._header_map: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0

    # ---- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        if server.stopping or len(server.connections) >= server.max_connections:
            self.transport.write(
                encode_response(503, b"server busy\n", [(b"retry-after", b"10")], False)
            )
            self.transport.close()
            self.closed = True
            return
        server.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_activity = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, b"upgrades are not supported\n", raise_=False)
            return
        except httptools.HttpParserError as exc:
            # A callback that refused the request raised to stop the parser; httptools
            # hands that back as HttpParserCallbackError (a HttpParserError).
            if not self.closed:
                self._refuse(400, f"malformed HTTP request: {exc}\n".encode(), raise_=False)
            return
        if not self.busy and self.queue:
            self._next()
        if len(self.queue) >= MAX_QUEUED and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def pause_writing(self) -> None:
        # The answers are piling up in the transport (a peer that pipelines requests
        # and does not read): stop reading and answering until they drain.
        self.write_paused = True
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.busy and not self.closed:
            self._next()

    def eof_received(self) -> bool | None:
        # The peer finished sending. Answer what is queued, then close.
        self.eof = True
        if not self.busy and not self.queue:
            self.close()
        return True

    # ---- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        self.request_started = self.loop.time()
        self._url = b""
        self._headers = []
        self._header_map = {}
        self._header_bytes = 0
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_HEADER_BYTES:
            self._refuse(414, b"request target too long\n")

    def on_header(self, name: bytes, value: bytes) -> None:
        # A header costs at least 32 bytes in this budget, so it also bounds the count.
        self._header_bytes += len(name) + len(value) + 32
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(431, b"request headers too large\n")
        name = name.lower()
        self._headers.append((name, value))
        if name not in self._header_map:
            self._header_map[name] = value

    def on_headers_complete(self) -> None:
        headers = self._header_map
        declared = headers.get(b"content-length")
        if declared is not None:
            # llhttp has already refused a malformed or repeated Content-Length.
            if not declared.strip().isdigit():
                self._refuse(400, b"bad content-length\n")
            if int(declared) > self.server.max_body_bytes:
                self._refuse(413, b"request body too large\n")
        expect = headers.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        if self._body_size > self.server.max_body_bytes:
            self._refuse(413, b"request body too large\n")
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        self.request_started = None
        url = self._url
        q = url.find(b"?")
        raw_path = url if q < 0 else url[:q]
        parser = self.parser
        request = Request(
            method=parser.get_method().decode("ascii", "replace"),
            target=url.decode("latin-1"),
            path=unquote(raw_path.decode("latin-1"))
            if b"%" in raw_path
            else raw_path.decode("latin-1"),
            headers=self._header_map,
            raw_headers=self._headers,
            client=self.client,
            body=b"".join(self._body) if len(self._body) != 1 else self._body[0],
        )
        self._body = []
        self.queue.append((request, parser.should_keep_alive()))

    # ---- running requests -------------------------------------------------------

    def _next(self) -> None:
        """Answer queued requests in order: at once while `immediate` can, then
        the first one that needs the async handler, in a task."""
        immediate = self.server.immediate
        while self.queue and not self.closed:
            if self.write_paused:
                return  # the peer is not reading its answers; `resume_writing` goes on
            request, keep_alive = self.queue.popleft()
            if immediate is not None:
                try:
                    answer = immediate(request)
                except Exception:
                    log.exception("http_handler_error", path=request.path)
                    if self.server.on_error is not None:
                        self.server.on_error()
                    answer = 500, b"internal error\n", []
                if answer is not None:
                    self._answer(answer, keep_alive)
                    continue
            self.busy = True
            self.server.requests_in_flight += 1
            self.loop.create_task(self._run(request, keep_alive))
            return
        if self.eof:
            self.close()
        elif self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    async def _run(self, request: Request, keep_alive: bool) -> None:
        try:
            try:
                answer = await self.server.handler(request)
            except Exception:
                log.exception("http_handler_error", path=request.path, client=_addr(self.client))
                if self.server.on_error is not None:
                    self.server.on_error()
                answer = 500, b"internal error\n", []
            self._answer(answer, keep_alive)
        finally:
            self.busy = False
            server = self.server
            server.requests_in_flight -= 1
            if server.stopping and not server.requests_in_flight:
                server._drained.set()
        if self.closed:
            return
        self.last_activity = self.loop.time()
        self._next()

    def _answer(self, answer: Response, keep_alive: bool) -> None:
        status, body, headers = answer
        if any(n == b"connection" and v.lower() == b"close" for n, v in headers):
            keep_alive = False
            headers = [(n, v) for n, v in headers if n != b"connection"]
        if self.server.stopping:
            keep_alive = False
        try:
            data = encode_response(status, body, headers, keep_alive)
        except ValueError:
            log.exception("http_bad_response")
            data = encode_response(500, b"internal error\n", [], False)
            keep_alive = False
        self._write(data, keep_alive)

    def _write(self, data: bytes, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            return
        transport.write(data)
        if not keep_alive:
            self.close()

    def _refuse(self, status: int, message: bytes, *, raise_: bool = True) -> None:
        """Answer a request we will not run and close the connection; from a parser
        callback, raise to stop the parser."""
        if self.server.on_malformed is not None and status in (400, 413, 414, 431):
            self.server.on_malformed()
        if not self.busy and self.transport is not None and not self.closed:
            self.transport.write(encode_response(status, message, [], False))
        self.queue.clear()
        self.close()
        if raise_:
            raise _Refused

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    def check_timeouts(self, now: float) -> None:
        if self.closed or self.busy:
            return
        if self.request_started is not None:
            if now - self.request_started > self.server.request_timeout:
                if self.transport is not None:
                    self.transport.write(
                        encode_response(408, b"request not completed in time\n", [], False)
                    )
                self.close()
        elif not self.queue and now - self.last_activity > self.server.keepalive_timeout:
            self.close()


class _Refused(Exception):
    """Raised out of a parser callback to stop parsing a refused request."""


def _addr(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"
