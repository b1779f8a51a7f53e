"""A lean wire-level periodic session, for storms of routine "2 PERIODIC" Informs.

What a CPE's C firmware does for a periodic Inform, with no general HTTP client and no
XML parser in the loop: open a TCP connection, POST the Inform (the same bytes the full
emulator builds, credentials the same way), answer one 401 if the ACS asks, check that
the reply is the InformResponse for our cwmp:ID, POST empty with the session cookie and
expect 204, close. The full session in `cpe.py` spends most of its time in the generic
stream-based client and the XML parser; on a 2-core machine that, not the ACS, capped the
measured storm rate (bench/README.md).

The lean path runs only routine sessions. If the ACS answers the empty POST with an RPC
(work is queued for the device), the session is handed back: the connection is closed,
the session counts as `handed_over` and the device runs a full session for the work. A
device with pending events or an unsent TransferComplete never takes the lean path.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

from emulators.http_client import ClientAuth, Headers

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024


class WireError(Exception):
    """The session failed on the wire or the ACS answered something unexpected."""

    def __init__(self, reason: str, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class HandedOver(Exception):
    """The ACS has work for the device: the full session must run it."""


@dataclass(slots=True)
class WireResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header_all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


class ClientProtocol(asyncio.Protocol):
    """HTTP/1.1 client framing over one connection: one request at a time,
    responses framed by Content-Length (chunked is accepted too)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[WireResponse] | None = None
        self.head: tuple[int, list[tuple[bytes, bytes]], int] | None = None
        self.chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(WireError("connection closed by the ACS", retryable=True))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None or self.waiter.done():
            if len(self.buf) > MAX_HEAD + MAX_BODY:
                self._fail("unsolicited data from the ACS")
            return
        try:
            resp = self._parse()
        except WireError as exc:
            self._fail(exc.reason)
            return
        if resp is not None:
            self.waiter.set_result(resp)

    def _fail(self, reason: str) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(WireError(reason))
        if self.transport is not None:
            self.transport.abort()

    def _parse(self) -> WireResponse | None:
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    raise WireError("response head too large")
                return None
            lines = bytes(self.buf[:end]).split(b"\r\n")
            del self.buf[: end + 4]
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise WireError(f"bad status line {lines[0][:60]!r}")
            headers: list[tuple[bytes, bytes]] = []
            length = -1
            self.chunked = False
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep:
                    raise WireError(f"bad header line {line[:60]!r}")
                name = name.strip().lower()
                value = value.strip()
                headers.append((name, value))
                if name == b"content-length":
                    if not value.isdigit():
                        raise WireError("bad Content-Length")
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.chunked = True
            status = int(parts[1])
            if status == 204 or status == 304 or 100 <= status < 200:
                length = 0
            if length > MAX_BODY:
                raise WireError("response body too large")
            self.head = (status, headers, length)
        status, headers, length = self.head
        if self.chunked:
            body = self._dechunk()
            if body is None:
                return None
        elif length < 0:
            raise WireError("response without Content-Length (connection-delimited)")
        else:
            if len(self.buf) < length:
                return None
            body = bytes(self.buf[:length])
            del self.buf[:length]
        self.head = None
        return WireResponse(status, headers, body)

    def _dechunk(self) -> bytes | None:
        out = bytearray()
        pos = 0
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise WireError("bad chunk size") from None
            if size == 0:
                end = buf.find(b"\r\n\r\n", eol)
                if end < 0:
                    return None
                del buf[: end + 4]
                return bytes(out)
            if len(buf) < eol + 2 + size + 2:
                return None
            out += buf[eol + 2 : eol + 2 + size]
            if len(out) > MAX_BODY:
                raise WireError("response body too large")
            pos = eol + 2 + size + 2

    async def request(self, data: bytes) -> WireResponse:
        """Send one request and wait for its response (the caller bounds the time)."""
        if self.transport is None or self.transport.is_closing():
            raise WireError("connection closed", retryable=True)
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        if self.buf:
            self.data_received(b"")
        return await self.waiter


@dataclass(slots=True)
class WireTarget:
    host: str
    port: int
    path: str  # request target, e.g. "/acs"
    authority: str  # Host header value


async def periodic_session(
    target: WireTarget,
    *,
    inform: bytes,
    cwmp_id: str,
    auth: ClientAuth,
    user_agent: str,
    timeout: float,
) -> int:
    """Run one routine session; return the number of HTTP requests it took.

    Raises `WireError` on failure and `HandedOver` when the ACS sends an RPC."""
    try:
        async with asyncio.timeout(timeout):  # one bound for the whole session
            return await _session(target, inform, cwmp_id, auth, user_agent)
    except TimeoutError:
        raise WireError("timed out", retryable=True) from None


async def _session(
    target: WireTarget, inform: bytes, cwmp_id: str, auth: ClientAuth, user_agent: str
) -> int:
    loop = asyncio.get_running_loop()
    try:
        _, proto = await loop.create_connection(ClientProtocol, target.host, target.port)
    except OSError as exc:
        raise WireError(f"connect {target.authority}: {exc}", retryable=True) from None
    fixed = (
        f"POST {target.path} HTTP/1.1\r\nHost: {target.authority}\r\nUser-Agent: {user_agent}\r\n"
    )
    requests = 0
    try:
        cookie = ""
        tries = 2 if auth.active else 1
        while True:
            authz = auth.authorization("POST", target.path)
            head = (
                f'{fixed}Content-Type: text/xml; charset="utf-8"\r\nSOAPAction: \r\n'
                f"Content-Length: {len(inform)}\r\n"
                + (f"Authorization: {authz}\r\n" if authz else "")
                + "\r\n"
            )
            resp = await proto.request(head.encode() + inform)
            requests += 1
            if resp.status != 401 or tries == 0:
                break
            tries -= 1
            challenge = Headers(
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in resp.headers
                if k == b"www-authenticate"
            )
            if not auth.on_challenge(challenge):
                raise WireError(f"HTTP 401: {auth.last_error}")
        if resp.status != 200:
            raise WireError(f"HTTP {resp.status} waiting for InformResponse", resp.status >= 500)
        body = resp.body
        if b"InformResponse>" not in body or f">{cwmp_id}</".encode() not in body:
            raise WireError(f"expected InformResponse for {cwmp_id}, got {body[:120]!r}")
        for raw in resp.header_all(b"set-cookie"):
            pair = raw.split(b";", 1)[0].decode("latin-1").strip()
            if "=" in pair:
                cookie = pair if not cookie else f"{cookie}; {pair}"
        authz = auth.authorization("POST", target.path)
        head = (
            f"{fixed}Content-Length: 0\r\n"
            + (f"Cookie: {cookie}\r\n" if cookie else "")
            + (f"Authorization: {authz}\r\n" if authz else "")
            + "\r\n"
        )
        resp = await proto.request(head.encode())
        requests += 1
        if resp.status == 204 or (resp.status == 200 and not resp.body.strip()):
            return requests
        if resp.status == 200:
            raise HandedOver()
        raise WireError(f"HTTP {resp.status} during session", resp.status >= 500)
    finally:
        if proto.transport is not None:
            proto.transport.close()
