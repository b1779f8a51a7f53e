"""A minimal HTTP/1.1 client on asyncio streams, for thousands of emulated CPEs.

Owns: one keep-alive connection (`HttpConnection`, one per CWMP session), response
framing (Content-Length, chunked, read-to-close; no body for HEAD/1xx/204/304),
client-side HTTP authentication (Basic, Digest MD5/SHA-256 with qop=auth, RFC 7616),
and the paced TR-143 transfers (`download`, `upload`) that time ROM/BOM/EOM.
Rules: bounded body sizes and timeouts; no logging; errors are `HttpError`.
httpx is not used on purpose: at thousands of devices its per-request cost dominates.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import re
import ssl as ssl_module
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

DEFAULT_TIMEOUT = 30.0
MAX_BODY = 16 * 1024 * 1024  # bound for CWMP bodies; transfers stream and never buffer
MAX_HEADER_LINES = 100
CHUNK = 64 * 1024


class HttpError(Exception):
    """The connection failed or the peer spoke something that is not HTTP/1.1."""


class ConnectError(HttpError):
    """The TCP (or TLS) connection could not be opened."""


class Headers:
    """Response headers: lower-case names, every value kept (Set-Cookie, WWW-Authenticate)."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(k.lower(), v) for k, v in items]

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self._items:
            if k == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self._items if k == name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __getitem__(self, name: str) -> str:
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass(slots=True)
class Response:
    status: int
    reason: str
    headers: Headers
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Url:
    scheme: str
    host: str
    port: int
    target: str  # path + query, as sent on the request line

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def parse_url(url: str) -> Url:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpError(f"unsupported URL {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return Url(parts.scheme, parts.hostname, port, target)


# ---------------------------------------------------------------------------- framing


async def _read_head(
    reader: asyncio.StreamReader,
) -> tuple[int, str, str, Headers, int]:
    """Read status line and headers; return (status, reason, version, headers, bytes)."""
    while True:
        line = await reader.readline()
        if not line:
            raise HttpError("connection closed before a response")
        nbytes = len(line)
        parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"bad status line {line[:80]!r}")
        status = int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        items: list[tuple[str, str]] = []
        for _ in range(MAX_HEADER_LINES):
            hline = await reader.readline()
            nbytes += len(hline)
            if not hline:
                raise HttpError("connection closed inside headers")
            if hline in (b"\r\n", b"\n"):
                break
            name, sep, value = hline.decode("latin-1").partition(":")
            if not sep:
                raise HttpError(f"bad header line {hline[:80]!r}")
            items.append((name.strip(), value.strip()))
        else:
            raise HttpError("too many header lines")
        if 100 <= status < 200 and status != 101:
            continue  # 100 Continue and friends: the real answer follows
        return status, reason, parts[0], Headers(items), nbytes


def _has_no_body(method: str, status: int) -> bool:
    return method == "HEAD" or status in (204, 304) or 100 <= status < 200


async def _iter_body(
    reader: asyncio.StreamReader,
    method: str,
    status: int,
    headers: Headers,
    chunk_size: int = CHUNK,
) -> AsyncIterator[bytes]:
    """Yield the decoded body in pieces; the caller counts or joins them."""
    if _has_no_body(method, status):
        return
    te = (headers.get("transfer-encoding") or "").lower()
    if "chunked" in te:
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise HttpError("connection closed inside chunked body")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError(f"bad chunk size {size_line[:40]!r}") from None
            if size == 0:
                # trailers until an empty line
                for _ in range(MAX_HEADER_LINES):
                    t = await reader.readline()
                    if t in (b"\r\n", b"\n", b""):
                        break
                return
            remaining = size
            while remaining:
                data = await reader.read(min(remaining, chunk_size))
                if not data:
                    raise HttpError("connection closed inside chunk")
                remaining -= len(data)
                yield data
            await reader.readexactly(2)  # CRLF after chunk data
        return
    cl = headers.get("content-length")
    if cl is not None:
        try:
            remaining = int(cl)
        except ValueError:
            raise HttpError(f"bad Content-Length {cl!r}") from None
        while remaining > 0:
            data = await reader.read(min(remaining, chunk_size))
            if not data:
                raise HttpError("connection closed before Content-Length bytes")
            remaining -= len(data)
            yield data
        return
    while True:  # no framing: the body runs to connection close
        data = await reader.read(chunk_size)
        if not data:
            return
        yield data


def _wants_close(version: str, headers: Headers) -> bool:
    conn = (headers.get("connection") or "").lower()
    if "close" in conn:
        return True
    return version == "HTTP/1.0" and "keep-alive" not in conn


def _client_ssl(scheme: str) -> ssl_module.SSLContext | None:
    return ssl_module.create_default_context() if scheme == "https" else None


def _encode_head(
    method: str, target: str, authority: str, headers: Iterable[tuple[str, str]], body_len: int
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {authority}"]
    has_len = False
    for k, v in headers:
        if k.lower() == "content-length":
            has_len = True
        if "\r" in k or "\n" in k or "\r" in v or "\n" in v:
            raise HttpError("CR/LF in header")
        lines.append(f"{k}: {v}")
    if not has_len and (body_len or method in ("POST", "PUT")):
        lines.append(f"Content-Length: {body_len}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# ---------------------------------------------------------------------- connections


class HttpConnection:
    """One keep-alive HTTP/1.1 connection to one origin (one CWMP session uses one)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        scheme: str = "http",
        timeout: float = DEFAULT_TIMEOUT,
        max_body: int = MAX_BODY,
    ) -> None:
        self.host = host
        self.port = port
        self.scheme = scheme
        self.timeout = timeout
        self.max_body = max_body
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.requests_sent = 0
        self.connects = 0

    @classmethod
    def for_url(cls, url: str, **kw: float | int) -> HttpConnection:
        u = parse_url(url)
        return cls(u.host, u.port, scheme=u.scheme, **kw)  # type: ignore[arg-type]

    @property
    def authority(self) -> str:
        return Url(self.scheme, self.host, self.port, "/").authority

    @property
    def is_open(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    self.host, self.port, ssl=_client_ssl(self.scheme)
                )
        except (OSError, TimeoutError) as exc:
            raise ConnectError(f"connect {self.host}:{self.port}: {exc!r}") from exc
        self.connects += 1

    async def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response:
        hdrs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        reused = self.is_open
        try:
            return await self._request_once(method, target, hdrs, body)
        except HttpError as exc:
            # A kept-alive connection the server closed while idle: retry once on a new
            # one (the request never reached the application, see RFC 9112 9.3.1).
            if not reused or isinstance(exc, ConnectError) or "before a response" not in str(exc):
                raise
            await self.aclose()
            return await self._request_once(method, target, hdrs, body)

    async def _request_once(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> Response:
        if not self.is_open:
            await self.connect()
        assert self._reader is not None and self._writer is not None
        reader, writer = self._reader, self._writer
        try:
            async with asyncio.timeout(self.timeout):
                writer.write(_encode_head(method, target, self.authority, headers, len(body)))
                if body:
                    writer.write(body)
                await writer.drain()
                self.requests_sent += 1
                status, reason, version, rh, _ = await _read_head(reader)
                pieces: list[bytes] = []
                size = 0
                async for piece in _iter_body(reader, method, status, rh):
                    size += len(piece)
                    if size > self.max_body:
                        raise HttpError(f"response body over {self.max_body} bytes")
                    pieces.append(piece)
        except TimeoutError as exc:
            await self.aclose()
            raise HttpError(f"timeout after {self.timeout}s") from exc
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            await self.aclose()
            raise HttpError(f"{type(exc).__name__}: {exc}") from exc
        except HttpError:
            await self.aclose()
            raise
        framed = "content-length" in rh or "chunked" in (rh.get("transfer-encoding") or "")
        if _wants_close(version, rh) or not (framed or _has_no_body(method, status)):
            await self.aclose()
        return Response(status, reason, rh, b"".join(pieces))

    async def aclose(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        writer.close()
        try:
            async with asyncio.timeout(2.0):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            pass

    async def __aenter__(self) -> HttpConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# -------------------------------------------------------------------- authentication

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BARE_VALUE_RE = re.compile(r"[^,\s]*")


def parse_challenges(values: Iterable[str]) -> list[tuple[str, dict[str, str]]]:
    """Split WWW-Authenticate values into (scheme lower-cased, params) challenges.

    RFC 9110 11.6.1: one header may hold several challenges separated by commas, and the
    scheme is separated from its first parameter by a space only.
    """
    out: list[tuple[str, dict[str, str]]] = []
    for value in values:
        i, n = 0, len(value)
        current: dict[str, str] | None = None
        while i < n:
            while i < n and value[i] in " \t,":
                i += 1
            m = _TOKEN_RE.match(value, i)
            if m is None:
                break
            token, i = m.group(0), m.end()
            j = i
            while j < n and value[j] in " \t":
                j += 1
            if j < n and value[j] == "=":
                j += 1
                while j < n and value[j] in " \t":
                    j += 1
                if j < n and value[j] == '"':
                    k, buf = j + 1, []
                    while k < n and value[k] != '"':
                        if value[k] == "\\" and k + 1 < n:
                            k += 1
                        buf.append(value[k])
                        k += 1
                    val, i = "".join(buf), k + 1
                else:
                    m2 = _BARE_VALUE_RE.match(value, j)
                    assert m2 is not None
                    val, i = m2.group(0), m2.end()
                if current is not None:
                    current[token.lower()] = val
            else:
                current = {}
                out.append((token.lower(), current))
    return out


_CHALLENGES: dict[tuple[str, ...], list[tuple[str, dict[str, str]]]] = {}


def _parsed_challenges(values: tuple[str, ...]) -> list[tuple[str, dict[str, str]]]:
    """`parse_challenges`, remembered: an ACS sends the same challenge to many CPEs
    (the result is shared; callers only read it)."""
    parsed = _CHALLENGES.get(values)
    if parsed is None:
        if len(_CHALLENGES) >= 256:
            _CHALLENGES.clear()
        parsed = _CHALLENGES[values] = parse_challenges(values)
    return parsed


def _h(algorithm: str, data: str) -> str:
    name = "sha256" if algorithm.upper().startswith("SHA-256") else "md5"
    return hashlib.new(name, data.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class ClientAuth:
    """Answers 401 challenges for one CWMP session ("basic", "digest" or "none").

    After the first challenge the chosen credentials are sent pre-emptively with every
    later request of the session, as real CPEs do (Digest with a growing nonce count).
    The caller bounds how many challenges it answers per request.
    """

    username: str
    password: str
    scheme: str = "digest"
    last_error: str | None = None
    challenges_seen: list[str] = field(default_factory=list)
    _kind: str | None = None
    _challenge: dict[str, str] | None = None
    _nc: int = 0
    # (key, header head, header tail, HA1, HA2, qop=auth) for the last challenge/method/URI
    _static: tuple[object, str, str, str, str, bool] = (None, "", "", "", "", False)

    @property
    def active(self) -> bool:
        return self._kind is not None

    def authorization(self, method: str, uri: str) -> str | None:
        if self._kind == "basic":
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return f"Basic {token}"
        if self._kind == "digest" and self._challenge is not None:
            return self._digest(method, uri, self._challenge)
        return None

    def on_challenge(self, headers: Headers) -> bool:
        """Take up a 401's challenge; False if this CPE cannot answer it."""
        challenges = _parsed_challenges(tuple(headers.get_all("www-authenticate")))
        self.challenges_seen = [s for s, _ in challenges]
        if self.scheme == "none":
            self.last_error = "401 but the CPE is configured without authentication"
            return False
        if self.scheme == "basic":
            if any(s == "basic" for s, _ in challenges):
                self._kind = "basic"
                return True
            self.last_error = f"no Basic challenge in {self.challenges_seen}"
            return False
        usable = [
            p
            for s, p in challenges
            if s == "digest"
            and p.get("algorithm", "MD5").upper() in ("MD5", "MD5-SESS", "SHA-256", "SHA-256-SESS")
        ]
        if not usable:
            self.last_error = f"no usable Digest challenge in {self.challenges_seen}"
            return False
        # Prefer SHA-256 when offered (RFC 7616 3.7: the client uses the first it supports;
        # servers list SHA-256 first).
        usable.sort(key=lambda p: 0 if p.get("algorithm", "MD5").upper().startswith("SHA") else 1)
        self._kind = "digest"
        self._challenge = usable[0]
        self._nc = 0
        return True

    def _digest(self, method: str, uri: str, ch: dict[str, str]) -> str:
        algorithm = ch.get("algorithm", "MD5")
        nonce = ch.get("nonce", "")
        self._nc += 1
        nc = f"{self._nc:08x}"
        cnonce = random.randbytes(8).hex()  # an emulator: no syscall per request
        cached = self._static[0]  # holds `ch`, so an identity test is safe
        if not (isinstance(cached, tuple) and cached[0] is ch and cached[1:] == (method, uri)):
            key = (ch, method, uri)
            # What stays the same for every request of this challenge, method and URI.
            realm = ch.get("realm", "")
            qops = [q.strip().lower() for q in ch.get("qop", "").split(",") if q.strip()]
            ha1 = _h(algorithm, f"{self.username}:{realm}:{self.password}")
            head = (
                f'Digest username="{_quote(self.username)}", realm="{_quote(realm)}", '
                f'nonce="{_quote(nonce)}", uri="{_quote(uri)}", algorithm={algorithm}'
            )
            tail = f', opaque="{_quote(ch["opaque"])}"' if "opaque" in ch else ""
            ha2 = _h(algorithm, f"{method}:{uri}")
            self._static = (key, head, tail, ha1, ha2, "auth" in qops)
        _, head, tail, ha1, ha2, qop_auth = self._static
        if algorithm.upper().endswith("-SESS"):
            ha1 = _h(algorithm, f"{ha1}:{nonce}:{cnonce}")
        if qop_auth:
            response = _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
            return f'{head}, response="{response}", qop=auth, nc={nc}, cnonce="{cnonce}"{tail}'
        response = _h(algorithm, f"{ha1}:{nonce}:{ha2}")  # RFC 2069 compatibility
        return f'{head}, response="{response}"{tail}'


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


# ------------------------------------------------------------------ TR-143 transfers


@dataclass(slots=True)
class TransferResult:
    """Wall-clock times (epoch seconds) and byte counts of one TR-143 transfer."""

    ok: bool
    state: str  # "" on success, else a TR-143 Error_* DiagnosticsState value
    status: int = 0
    rom_time: float = 0.0
    bom_time: float = 0.0
    eom_time: float = 0.0
    test_bytes: int = 0  # payload bytes (file bytes)
    total_bytes: int = 0  # payload + HTTP framing bytes on the connection
    error: str = ""


async def _pace(start: float, nbytes: int, rate_mbps: float | None) -> None:
    """Sleep so that nbytes*8/elapsed stays at or under rate_mbps."""
    if not rate_mbps or rate_mbps <= 0:
        return
    due = start + nbytes * 8 / (rate_mbps * 1e6)
    delay = due - time.monotonic()
    if delay > 0.0005:
        await asyncio.sleep(delay)


async def download(
    url: str,
    *,
    rate_mbps: float | None = None,
    chunk_size: int = CHUNK,
    time_limit: float = 120.0,
    wall: Callable[[], float] = time.time,
) -> TransferResult:
    """GET `url`, reading (and discarding) the body paced to `rate_mbps` (TR-143 download)."""
    try:
        u = parse_url(url)
    except HttpError as exc:
        return TransferResult(False, "Error_InitConnectionFailed", error=str(exc))
    try:
        async with asyncio.timeout(time_limit):
            reader, writer = await asyncio.open_connection(
                u.host, u.port, ssl=_client_ssl(u.scheme)
            )
    except (OSError, TimeoutError) as exc:
        return TransferResult(False, "Error_InitConnectionFailed", error=repr(exc))
    res = TransferResult(False, "Error_TransferFailed")
    try:
        async with asyncio.timeout(time_limit):
            head = _encode_head(
                "GET", u.target, u.authority, [("User-Agent", "turnup-cpe-emulator")], 0
            )
            res.rom_time = wall()
            writer.write(head)
            await writer.drain()
            status, _, _, headers, head_bytes = await _read_head(reader)
            res.status = status
            res.total_bytes = head_bytes
            res.bom_time = wall()  # first response packet (replaced by first body byte)
            if not 200 <= status < 300:
                res.state = "Error_TransferFailed"
                res.error = f"HTTP {status}"
                return res
            start = 0.0
            async for piece in _iter_body(reader, "GET", status, headers, chunk_size):
                if res.test_bytes == 0:
                    res.bom_time = wall()
                    start = time.monotonic()
                res.test_bytes += len(piece)
                await _pace(start, res.test_bytes, rate_mbps)
            res.eom_time = wall()
            res.total_bytes += res.test_bytes
            res.ok, res.state = True, ""
            return res
    except TimeoutError:
        res.state, res.error = "Error_Timeout", f"timeout after {time_limit}s"
        return res
    except (OSError, HttpError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        res.state, res.error = "Error_TransferFailed", repr(exc)
        return res
    finally:
        writer.close()


_PATTERN = bytes(range(256)) * (CHUNK // 256)


async def upload(
    url: str,
    nbytes: int,
    *,
    rate_mbps: float | None = None,
    method: str = "PUT",
    chunk_size: int = CHUNK,
    time_limit: float = 120.0,
    wall: Callable[[], float] = time.time,
) -> TransferResult:
    """Send `nbytes` generated bytes with PUT/POST paced to `rate_mbps` (TR-143 upload).

    EOMTime is taken when the server's answer arrives, not when the last write drained:
    kernel buffers on loopback hold megabytes, and "drained" would overstate the rate.
    """
    try:
        u = parse_url(url)
    except HttpError as exc:
        return TransferResult(False, "Error_InitConnectionFailed", error=str(exc))
    try:
        async with asyncio.timeout(time_limit):
            reader, writer = await asyncio.open_connection(
                u.host, u.port, ssl=_client_ssl(u.scheme)
            )
    except (OSError, TimeoutError) as exc:
        return TransferResult(False, "Error_InitConnectionFailed", error=repr(exc))
    res = TransferResult(False, "Error_TransferFailed")
    pattern = _PATTERN if chunk_size == CHUNK else (bytes(range(256)) * (chunk_size // 256 + 1))
    try:
        async with asyncio.timeout(time_limit):
            head = _encode_head(
                method,
                u.target,
                u.authority,
                [
                    ("User-Agent", "turnup-cpe-emulator"),
                    ("Content-Type", "application/octet-stream"),
                    ("Content-Length", str(nbytes)),
                ],
                nbytes,
            )
            res.rom_time = wall()
            writer.write(head)
            res.total_bytes = len(head)
            sent = 0
            start = time.monotonic()
            while sent < nbytes:
                n = min(chunk_size, nbytes - sent)
                if sent == 0:
                    res.bom_time = wall()
                writer.write(pattern[:n] if n < len(pattern) else pattern)
                await writer.drain()
                sent += n
                await _pace(start, sent, rate_mbps)
            if nbytes == 0:
                res.bom_time = wall()
            status, _, _, headers, _ = await _read_head(reader)
            res.eom_time = wall()
            res.status = status
            res.test_bytes = sent
            res.total_bytes += sent
            async for _piece in _iter_body(reader, method, status, headers):
                pass
            if not 200 <= status < 300:
                res.state, res.error = "Error_TransferFailed", f"HTTP {status}"
                return res
            res.ok, res.state = True, ""
            return res
    except TimeoutError:
        res.state, res.error = "Error_Timeout", f"timeout after {time_limit}s"
        return res
    except (OSError, HttpError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        res.state, res.error = "Error_TransferFailed", repr(exc)
        return res
    finally:
        writer.close()
