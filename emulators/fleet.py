"""A fleet of emulated CPEs in one asyncio process, plus its connection-request server.

Owns: `Fleet` (device tasks in one TaskGroup, the shared session semaphore, counters,
the periodic-inform storm used by the benchmark), the connection-request HTTP server
(TR-069 3.2.2: GET /cr/<serial>, Digest auth, realm "turnup-cpe") and the CLI
`python -m emulators.fleet`.
Rules: structured concurrency (no fire-and-forget tasks); one broken device never takes
the fleet down; everything peer-controlled is bounded (request head size, run time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import hmac
import itertools
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import unquote

from emulators.cpe import DeviceSpec, EmulatedCpe, Location, OnEvent
from emulators.http_client import parse_challenges
from emulators.personalities import PERSONALITIES

__all__ = ["Fleet", "FleetStats", "StormResult", "main", "make_specs"]

CR_REALM = "turnup-cpe"
CR_NONCE_TTL = 300.0
MAX_CR_HEAD = 8192


@dataclass(slots=True)
class FleetStats:
    devices: int = 0
    powered_on: int = 0
    booted: int = 0
    sessions_ok: int = 0
    sessions_failed: int = 0
    acs_faults: int = 0  # SOAP faults the ACS sent to a CPE
    cpe_faults: int = 0  # faults CPEs answered ACS requests with
    diagnostics_done: int = 0
    diagnostics_failed: int = 0
    downloads_done: int = 0
    connection_requests: int = 0  # accepted by the CR server
    cr_rejected: int = 0  # 401/404/405 answers of the CR server
    device_crashes: int = 0
    in_session: int = 0


@dataclass(slots=True)
class StormResult:
    sessions: int
    ok: int
    errors: int
    elapsed: float
    error_samples: Counter[str] = field(default_factory=Counter)

    @property
    def per_second(self) -> float:
        return self.sessions / self.elapsed if self.elapsed > 0 else 0.0


# ------------------------------------------------------------- connection requests


def _h(algorithm: str, data: str) -> str:
    name = "sha256" if algorithm.upper().startswith("SHA-256") else "md5"
    return hashlib.new(name, data.encode("utf-8")).hexdigest()


class _CrDigest:
    """Stateless Digest verification: the nonce is a timestamp signed with a fleet secret."""

    def __init__(self) -> None:
        self._secret = os.urandom(16)

    def nonce(self) -> str:
        ts = f"{int(time.time()):x}"
        sig = hmac.new(self._secret, ts.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{ts}{sig}"

    def nonce_state(self, nonce: str) -> str:
        """ "ok", "stale" or "bad"."""
        ts, sig = nonce[:-32], nonce[-32:]
        good = hmac.new(self._secret, ts.encode(), hashlib.sha256).hexdigest()[:32]
        if not ts or not hmac.compare_digest(sig, good):
            return "bad"
        try:
            age = time.time() - int(ts, 16)
        except ValueError:
            return "bad"
        return "ok" if 0 <= age <= CR_NONCE_TTL else "stale"

    def challenge(self, stale: bool = False) -> str:
        s = ", stale=true" if stale else ""
        return f'Digest realm="{CR_REALM}", qop="auth", nonce="{self.nonce()}", algorithm=MD5{s}'

    def verify(
        self, authorization: str | None, method: str, target: str, user: str, password: str
    ) -> str:
        """ "ok", "stale" or "bad" for an Authorization header."""
        if not authorization:
            return "bad"
        creds = parse_challenges([authorization])
        if not creds or creds[0][0] != "digest":
            return "bad"
        p = creds[0][1]
        if p.get("username") != user or p.get("realm") != CR_REALM or p.get("uri") != target:
            return "bad"
        algorithm = p.get("algorithm", "MD5")
        if algorithm.upper() not in ("MD5", "SHA-256"):
            return "bad"
        nonce = p.get("nonce", "")
        state = self.nonce_state(nonce)
        if state == "bad":
            return "bad"
        ha1 = _h(algorithm, f"{user}:{CR_REALM}:{password}")
        ha2 = _h(algorithm, f"{method}:{target}")
        if p.get("qop"):
            if p["qop"] != "auth":
                return "bad"
            expected = _h(
                algorithm, f"{ha1}:{nonce}:{p.get('nc', '')}:{p.get('cnonce', '')}:auth:{ha2}"
            )
        else:
            expected = _h(algorithm, f"{ha1}:{nonce}:{ha2}")
        if not hmac.compare_digest(expected, p.get("response", "")):
            return "bad"
        return state  # a correct answer to an expired nonce is "stale"


class _CrProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection to the CR server; requests are answered inline (no tasks)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.skip = 0  # request body bytes still to discard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; duck-typed is fine.
        self.transport = cast(asyncio.Transport, transport)
        self.fleet._cr_conns.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.fleet._cr_conns.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.skip:
            n = min(self.skip, len(data))
            self.skip -= n
            data = data[n:]
        self.buf += data
        while self.transport is not None and not self.transport.is_closing():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_CR_HEAD:
                    self._reply(431, "Request Header Fields Too Large", close=True)
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            self._handle(head)

    def _handle(self, head: str) -> None:
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._reply(400, "Bad Request", close=True)
            return
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = headers.get("content-length", "0")
        if length.isdigit() and int(length):
            n = int(length)
            taken = min(n, len(self.buf))
            del self.buf[:taken]
            self.skip = n - taken
        close = "close" in headers.get("connection", "").lower() or version == "HTTP/1.0"
        status, reason, extra = self.fleet._connection_request(method, target, headers)
        self._reply(status, reason, extra, close=close)

    def _reply(
        self, status: int, reason: str, extra: Sequence[tuple[str, str]] = (), close: bool = False
    ) -> None:
        if self.transport is None:
            return
        lines = [f"HTTP/1.1 {status} {reason}", "Content-Length: 0"]
        lines += [f"{k}: {v}" for k, v in extra]
        if close:
            lines.append("Connection: close")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if close:
            self.transport.close()


# --------------------------------------------------------------------------- fleet


class Fleet:
    """Thousands of EmulatedCpe in one process; use as `async with Fleet(...) as fleet:`."""

    def __init__(
        self,
        acs_url: str,
        specs: Sequence[DeviceSpec],
        max_concurrent_sessions: int = 256,
        cr_host: str = "127.0.0.1",
        *,
        periodic_interval: float | None = None,
        on_event: OnEvent | None = None,
        cpe_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.acs_url = acs_url
        self.cr_host = cr_host
        self.cr_port = 0
        self.on_event = on_event
        self.semaphore = asyncio.Semaphore(max_concurrent_sessions)
        self._stats = FleetStats(devices=len(specs))
        self._digest = _CrDigest()
        self._cr_server: asyncio.Server | None = None
        self._cr_conns: set[asyncio.Transport] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._booted: set[str] = set()
        self._changed = asyncio.Event()
        self._closed = False
        opts = dict(cpe_options or {})
        self.cpes: list[EmulatedCpe] = []
        self.by_serial: dict[str, EmulatedCpe] = {}
        for spec in specs:
            if spec.serial in self.by_serial:
                raise ValueError(f"duplicate serial {spec.serial}")
            cpe = EmulatedCpe(
                spec,
                acs_url,
                session_limiter=self.semaphore,
                on_event=self._on_cpe_event,
                periodic_interval=periodic_interval,
                **opts,
            )
            self.cpes.append(cpe)
            self.by_serial[spec.serial] = cpe

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> Fleet:
        loop = asyncio.get_running_loop()
        self._cr_server = await loop.create_server(
            lambda: _CrProtocol(self), self.cr_host, 0, reuse_address=True
        )
        self.cr_port = self._cr_server.sockets[0].getsockname()[1]
        for cpe in self.cpes:
            cpe.set_connection_request_url(self.cr_url(cpe.serial))
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel every device task, wait for them, and stop the CR server."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self._tg is not None:
            # Tasks are cancelled above, so this only waits; a caller's exception is left
            # to propagate as itself rather than wrapped in an ExceptionGroup.
            await self._tg.__aexit__(None, None, None)
        if self._cr_server is not None:
            self._cr_server.close()
            for transport in list(self._cr_conns):
                transport.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._cr_server.wait_closed()

    def cr_url(self, serial: str) -> str:
        host = f"[{self.cr_host}]" if ":" in self.cr_host else self.cr_host
        return f"http://{host}:{self.cr_port}/cr/{serial}"

    # ------------------------------------------------------------------ devices

    def power_on(self, stagger_seconds: float = 0.0) -> None:
        """Start every device: device i boots after i * stagger_seconds."""
        if self._tg is None:
            raise RuntimeError("power_on() needs `async with fleet:`")
        for i, cpe in enumerate(self.cpes):
            self._tasks.append(
                self._tg.create_task(self._device_main(cpe, i * stagger_seconds), name=cpe.serial)
            )

    async def _device_main(self, cpe: EmulatedCpe, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        self._stats.powered_on += 1
        try:
            await cpe.run_forever()
        except Exception as exc:  # a bug in one device must not cancel the fleet
            cpe.last_error = f"device crashed: {exc!r}"
            self._stats.device_crashes += 1
            self._booted.add(cpe.serial)
            self._notify()

    def _notify(self) -> None:
        self._changed.set()

    def _on_cpe_event(self, kind: str, cpe: EmulatedCpe, data: Mapping[str, object]) -> None:
        s = self._stats
        if kind == "session_ok":
            s.sessions_ok += 1
        elif kind == "session_failed":
            s.sessions_failed += 1
        elif kind == "acs_fault":
            s.acs_faults += 1
        elif kind == "cpe_fault":
            s.cpe_faults += 1
        elif kind == "diagnostics":
            state = str(data.get("state", ""))
            if state.startswith("Error"):
                s.diagnostics_failed += 1
            else:
                s.diagnostics_done += 1
        elif kind == "download_done":
            s.downloads_done += 1
        if kind in ("session_ok", "session_failed") and cpe.serial not in self._booted:
            self._booted.add(cpe.serial)
        self._notify()
        if self.on_event is not None:
            self.on_event(kind, cpe, data)

    def stats(self) -> FleetStats:
        s = self._stats
        s.booted = len(self._booted)
        s.in_session = self.semaphore_in_use()
        return dataclasses.replace(s)

    def semaphore_in_use(self) -> int:
        return sum(1 for c in self.cpes if c.in_session)

    async def wait_for(
        self, predicate: Callable[[Fleet], bool], time_limit: float | None = None
    ) -> bool:
        """Wait until `predicate(fleet)` holds (re-checked on every device event)."""
        try:
            async with asyncio.timeout(time_limit):
                while not predicate(self):
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.25):
                            await self._changed.wait()
        except TimeoutError:
            return False
        return True

    async def wait_booted(self, time_limit: float | None = None) -> bool:
        return await self.wait_for(lambda f: len(f._booted) >= len(f.cpes), time_limit)

    async def wait_idle(self, time_limit: float | None = None) -> bool:
        """All devices booted, none in a session, none with queued work."""
        return await self.wait_for(
            lambda f: (
                len(f._booted) >= len(f.cpes)
                and not any(c.in_session or c.has_work for c in f.cpes)
            ),
            time_limit,
        )

    # -------------------------------------------------------- connection requests

    def _connection_request(
        self, method: str, target: str, headers: Mapping[str, str]
    ) -> tuple[int, str, list[tuple[str, str]]]:
        path = target.split("?", 1)[0]
        if not path.startswith("/cr/"):
            self._stats.cr_rejected += 1
            return 404, "Not Found", []
        cpe = self.by_serial.get(unquote(path[4:]))
        if cpe is None:
            self._stats.cr_rejected += 1
            return 404, "Not Found", []
        if method not in ("GET", "HEAD"):
            self._stats.cr_rejected += 1
            return 405, "Method Not Allowed", [("Allow", "GET")]
        ms = f"{cpe.root}ManagementServer."
        user = cpe.tree[f"{ms}ConnectionRequestUsername"].value
        password = cpe.tree[f"{ms}ConnectionRequestPassword"].value
        if password:
            state = self._digest.verify(
                headers.get("authorization"), method, target, user, password
            )
            if state != "ok":
                self._stats.cr_rejected += 1
                return (
                    401,
                    "Unauthorized",
                    [("WWW-Authenticate", self._digest.challenge(stale=state == "stale"))],
                )
        self._stats.connection_requests += 1
        cpe.connection_request()
        return 200, "OK", []

    # ----------------------------------------------------------------- benchmark

    async def periodic_storm(
        self, total_sessions: int, concurrency: int, *, lean: bool = False
    ) -> StormResult:
        """Run `total_sessions` "2 PERIODIC" sessions round robin over the devices.

        At most `concurrency` at once (and never more than the fleet's session semaphore;
        one device never runs two sessions at once). Follow-up work the ACS asks for is
        left to the device tasks if the fleet is powered on. `lean` runs routine
        sessions on the wire-level path (`EmulatedCpe.run_periodic_lean`).
        """
        if not self.cpes or total_sessions <= 0:
            return StormResult(0, 0, 0, 0.0)
        counter = itertools.count()
        ok = 0
        errors: Counter[str] = Counter()

        async def worker() -> None:
            nonlocal ok
            while (i := next(counter)) < total_sessions:
                cpe = self.cpes[i % len(self.cpes)]
                rec = await (
                    cpe.run_periodic_lean() if lean else cpe.run_session([("2 PERIODIC", "")])
                )
                if rec.ok:
                    ok += 1
                else:
                    errors[(rec.error or "?")[:80]] += 1
                if cpe.has_work:
                    cpe.kick()

        started = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            for _ in range(max(1, min(concurrency, total_sessions))):
                tg.create_task(worker())
        elapsed = time.monotonic() - started
        return StormResult(total_sessions, ok, total_sessions - ok, elapsed, errors)


# ------------------------------------------------------------------------------ CLI


def make_specs(
    count: int,
    vendors: Sequence[str],
    *,
    down_mbps: float = 100.0,
    up_mbps: float = 50.0,
    serial_base: int = 0x10000000,
    auth: str = "digest",
    password: str = "",
    with_location: bool = True,
    first_event: str = "0 BOOTSTRAP",
    cwmp_version: str = "1.0",
) -> list[DeviceSpec]:
    """`count` devices, vendors round robin, serials vendor-id + 8 hex digits."""
    specs: list[DeviceSpec] = []
    for i in range(count):
        p = PERSONALITIES[vendors[i % len(vendors)]]
        port, onu = divmod(i, 128)
        loc = (
            Location("olt-1", f"1/1/{port + 1}", onu + 1, f"olt-1 xpon 1/1/{port + 1}:{onu + 1}")
            if with_location
            else None
        )
        specs.append(
            DeviceSpec(
                serial=f"{p.vendor_id}{(serial_base + i) & 0xFFFFFFFF:08X}",
                personality=p.name,
                down_mbps=down_mbps,
                up_mbps=up_mbps,
                location=loc,
                first_event=first_event,
                password=password,
                auth=auth,  # type: ignore[arg-type]
                cwmp_version=cwmp_version,
            )
        )
    return specs


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m emulators.fleet", description="Power on a fleet of emulated ONTs/CPEs."
    )
    ap.add_argument("--acs", required=True, help="ACS URL, e.g. http://127.0.0.1:7547/acs")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--vendor", default="nokia,huawei,zte,calix", help="comma-separated")
    ap.add_argument("--down", type=float, default=100.0, help="TR-143 download Mbit/s")
    ap.add_argument("--up", type=float, default=50.0, help="TR-143 upload Mbit/s")
    ap.add_argument("--duration", type=float, default=60.0, help="stop after this many s")
    ap.add_argument("--until-idle", action="store_true", help="stop once booted and idle")
    ap.add_argument("--concurrency", type=int, default=256, help="sessions in flight")
    ap.add_argument("--stagger", type=float, default=0.0, help="s between power-ons")
    ap.add_argument("--periodic", type=float, default=None, help="periodic inform interval s")
    ap.add_argument("--auth", choices=("digest", "basic", "none"), default="digest")
    ap.add_argument("--password", default="", help="ACS password (username = serial)")
    ap.add_argument("--first-event", default="0 BOOTSTRAP")
    ap.add_argument("--cwmp-version", default="1.0", choices=[f"1.{i}" for i in range(5)])
    ap.add_argument("--serial-base", type=lambda s: int(s, 0), default=0x10000000)
    ap.add_argument("--cr-host", default="127.0.0.1")
    ap.add_argument("--storm", type=int, default=0, help="then run N periodic sessions")
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = ap.parse_args(argv)
    vendors = [v.strip().lower() for v in args.vendor.split(",") if v.strip()]
    unknown = [v for v in vendors if v not in PERSONALITIES]
    if unknown or not vendors:
        ap.error(f"unknown vendor(s) {unknown}; known: {', '.join(PERSONALITIES)}")
    args.vendors = vendors
    return args


async def _run_cli(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console(stderr=True)
    specs = make_specs(
        args.count,
        args.vendors,
        down_mbps=args.down,
        up_mbps=args.up,
        serial_base=args.serial_base,
        auth=args.auth,
        password=args.password,
        first_event=args.first_event,
        cwmp_version=args.cwmp_version,
    )
    storm: StormResult | None = None
    started = time.monotonic()
    deadline = started + args.duration
    async with Fleet(
        args.acs, specs, args.concurrency, args.cr_host, periodic_interval=args.periodic
    ) as fleet:
        # Thousands of parameter trees live as long as the process: keep full
        # collections from walking them (a pause stalls every TR-143 transfer).
        gc.collect()
        gc.freeze()
        fleet.power_on(args.stagger)
        with Progress(
            TextColumn("[bold]booted"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("boot", total=len(specs), detail="")
            while time.monotonic() < deadline:
                s = fleet.stats()
                progress.update(
                    bar,
                    completed=s.booted,
                    detail=f"ok {s.sessions_ok} failed {s.sessions_failed} "
                    f"faults {s.acs_faults}/{s.cpe_faults} diag {s.diagnostics_done} "
                    f"cr {s.connection_requests}",
                )
                if args.until_idle and s.booted >= len(specs):
                    if not any(c.in_session or c.has_work for c in fleet.cpes):
                        break
                if s.booted >= len(specs) and args.storm and storm is None:
                    break
                await asyncio.sleep(0.2)
        if args.storm and time.monotonic() < deadline:
            console.print(f"storm: {args.storm} periodic sessions, {args.concurrency} at once")
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    storm = await fleet.periodic_storm(args.storm, args.concurrency)
            except TimeoutError:
                console.print("[red]storm hit --duration")
            if not args.until_idle:
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        stats = fleet.stats()
        failures = Counter(c.last_error for c in fleet.cpes if c.last_error)
    table = Table(title=f"turnup fleet: {len(specs)} devices, {time.monotonic() - started:.1f} s")
    table.add_column("counter")
    table.add_column("value", justify="right")
    for f in dataclasses.fields(FleetStats):
        table.add_row(f.name, str(getattr(stats, f.name)))
    if storm is not None:
        table.add_row("storm sessions", f"{storm.ok}/{storm.sessions}")
        table.add_row("storm sessions/s", f"{storm.per_second:.0f}")
    Console().print(table)
    for err, n in failures.most_common(5):
        console.print(f"[yellow]{n} x {err}")
    return 0 if stats.sessions_failed == 0 and stats.booted == len(specs) else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            print("uvloop is not installed", file=sys.stderr)
            return 2
        return uvloop.run(_run_cli(args))
    return asyncio.run(_run_cli(args))


if __name__ == "__main__":
    raise SystemExit(main())
