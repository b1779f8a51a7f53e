"""The daemon: one task group that owns every server and background loop.

Builds the store, service, ACS, speed-test server, control API, webhook relay,
connection requester and timers; binds every socket first and only then
announces readiness (systemd `READY=1`, `/readyz`). SIGTERM/SIGINT stop the
servers, then cancel the loops; nothing is fire-and-forget.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio
import anyio.abc
import httpx
import structlog
import uvicorn

from daemon.billing_hook import BackoffSchedule, WebhookRelay
from daemon.clock import Clock, SystemClock
from daemon.config import Settings
from daemon.core.activation import Policy
from daemon.device_cache import DeviceCache
from daemon.httpserver import HttpServer
from daemon.metrics import Metrics
from daemon.service import Service
from daemon.store.repository import Store
from daemon.tr069.acs import Acs, SpeedtestUrls
from daemon.tr069.connection_request import ConnectionRequester
from daemon.tr069.profiles import ProfileSet
from daemon.tr069.speedtest import Speedtest

log = structlog.get_logger("turnup.app")


@dataclass(frozen=True, slots=True)
class Endpoints:
    api_url: str
    acs_url: str
    speedtest_url: str


class _PostCommit:
    def __init__(self) -> None:
        self.requester: ConnectionRequester | None = None
        self.relay: WebhookRelay | None = None

    def request_connection(self, serial: str) -> None:
        if self.requester is not None:
            self.requester.request(serial)

    def webhook_written(self) -> None:
        if self.relay is not None:
            self.relay.wake()


class _RelayMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def delivery(self, result: str) -> None:
        self.metrics.webhook_deliveries.labels(result).inc()


def policy_from(settings: Settings) -> Policy:
    v = settings.verification
    return Policy(
        pass_fraction=v.pass_fraction,
        max_test_attempts=v.max_test_attempts,
        test_retry_delay=timedelta(seconds=v.retry_delay_seconds),
        step_timeout=timedelta(seconds=v.step_timeout_seconds),
        max_config_attempts=v.max_config_attempts,
    )


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _url(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


class Notifier:
    """systemd sd_notify over $NOTIFY_SOCKET (read once by the CLI)."""

    def __init__(self, address: str | None, watchdog_usec: int | None) -> None:
        self.address = address
        self.watchdog_interval = (watchdog_usec / 1e6 / 2) if watchdog_usec else None

    def send(self, message: str) -> None:
        if not self.address:
            return
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                s.sendto(message.encode(), addr)
            except OSError as exc:
                log.warning("sd_notify_failed", error=str(exc))

    @classmethod
    def from_environment(cls) -> Notifier:
        usec = os.environ.get("WATCHDOG_USEC")
        return cls(os.environ.get("NOTIFY_SOCKET"), int(usec) if usec and usec.isdigit() else None)


class App:
    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        on_ready: Callable[[Endpoints], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.notifier = notifier or Notifier(None, None)
        self.on_ready = on_ready
        self.metrics = Metrics()
        self.ready = False
        self.endpoints: Endpoints | None = None
        self.service: Service | None = None
        self.store: Store | None = None
        self.acs: Acs | None = None
        self._stop = anyio.Event()
        self._servers: list[uvicorn.Server] = []

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        s = self.settings
        store = await Store.open(s.store.url, pool_size=s.store.pool_size)
        self.store = store
        try:
            await self._run(store)
        finally:
            await store.close()

    async def _run(self, store: Store) -> None:
        from daemon.api import create_api  # FastAPI import is slow; keep it off `check-config`

        s = self.settings
        post = _PostCommit()
        cache = DeviceCache(s.store.device_cache_seconds, s.store.device_cache_entries)
        service = Service(store, policy_from(s), self.clock, self.metrics, post, cache)
        self.service = service
        await service.load_plans([p.to_plan() for p in s.plans])
        requeued = await store.requeue_all_sent_tasks()
        if requeued:
            log.info("requeued_tasks_after_restart", count=requeued)
        profiles = ProfileSet.load(s.profiles_dir or None)

        # Bind every socket before anything is announced.
        acs_sock = bind_tcp(s.acs.host, s.acs.port)
        api_sock = bind_tcp(s.api.host, s.api.port)
        st_sock = bind_tcp(s.speedtest.host, s.speedtest.port) if s.speedtest.enabled else None
        acs_url = s.acs.public_url or (_url(acs_sock, s.acs.host) + s.acs.path)
        st_base = s.speedtest.public_url.rstrip("/") or (
            _url(st_sock, s.speedtest.host) if st_sock else ""
        )

        def speed_urls() -> SpeedtestUrls:
            sp = s.speedtest
            return SpeedtestUrls(
                download=sp.external_download_url
                or f"{st_base}/download?bytes={sp.download_bytes}",
                upload=sp.external_upload_url or f"{st_base}/upload",
                upload_bytes=sp.upload_bytes,
            )

        acs = Acs(service, profiles, s.acs, speed_urls, self.metrics, self.clock)
        self.acs = acs
        api = create_api(service, store, s.api, self.metrics, self.clock, lambda: self.ready)

        async with httpx.AsyncClient(
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            follow_redirects=False,
        ) as http:
            requester = ConnectionRequester(store, s.acs, self.metrics, http)
            post.requester = requester
            relay: WebhookRelay | None = None
            if s.webhooks.url:
                relay = WebhookRelay(
                    store,
                    s.webhooks.url,
                    s.webhooks.secret,
                    self.clock,
                    BackoffSchedule(s.webhooks.schedule_seconds),
                    http,
                    batch=s.webhooks.batch,
                    concurrency=s.webhooks.concurrency,
                    poll_interval=s.webhooks.poll_interval_seconds,
                    metrics=_RelayMetrics(self.metrics),
                    timeout=s.webhooks.timeout_seconds,
                )
                post.relay = relay
            else:
                log.warning(
                    "webhooks_disabled", reason="webhooks.url is empty; events stay in the outbox"
                )

            async with anyio.create_task_group() as tg:
                servers: list[tuple[Any, socket.socket]] = [(api, api_sock)]
                acs_scope = anyio.CancelScope()
                if s.acs.http_server == "builtin":
                    acs_server = HttpServer(
                        acs.respond,
                        immediate=acs.respond_now,
                        max_body_bytes=s.acs.max_body_bytes,
                        keepalive_timeout=s.acs.keepalive_timeout_seconds,
                        request_timeout=s.acs.session_timeout_seconds,
                        max_connections=s.acs.max_connections,
                        on_malformed=self.metrics.malformed.labels("cwmp").inc,
                        on_error=self.metrics.internal_errors.labels("acs").inc,
                    )
                    await tg.start(_serve_builtin, acs_server, acs_sock, acs_scope)
                else:
                    servers.insert(0, (acs, acs_sock))
                if st_sock is not None:
                    servers.append((Speedtest(s.speedtest, self.metrics), st_sock))
                for app, sock in servers:
                    server = _server(app)
                    self._servers.append(server)
                    await tg.start(_serve, server, sock)
                background = anyio.CancelScope()

                async def loops() -> None:
                    with background:
                        async with anyio.create_task_group() as inner:
                            inner.start_soon(
                                service.run_timers, s.verification.timer_interval_seconds
                            )
                            inner.start_soon(acs.run_sweeper)
                            inner.start_soon(service.run_flusher, s.store.sighting_flush_seconds)
                            inner.start_soon(requester.run)
                            if relay is not None:
                                inner.start_soon(relay.run)
                            if self.notifier.watchdog_interval:
                                inner.start_soon(self._watchdog)

                tg.start_soon(loops)
                self.endpoints = Endpoints(_url(api_sock, s.api.host), acs_url, st_base)
                self.ready = True
                self.notifier.send("READY=1\nSTATUS=serving")
                log.info("turnup_ready", api=self.endpoints.api_url, acs=acs_url, speedtest=st_base)
                if self.on_ready is not None:
                    self.on_ready(self.endpoints)
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async with anyio.create_task_group() as waiter:

                        async def on_signal() -> None:
                            async for signum in signals:
                                log.info("turnup_stopping", signal=signal.Signals(signum).name)
                                self._stop.set()
                                return

                        waiter.start_soon(on_signal)
                        await self._stop.wait()
                        waiter.cancel_scope.cancel()
                self.ready = False
                self.notifier.send("STOPPING=1")
                for srv in self._servers:
                    srv.should_exit = True
                acs_scope.cancel()
                background.cancel()
            await service.flush_sightings()  # the last batch of last_seen times

    async def _watchdog(self) -> None:
        assert self.notifier.watchdog_interval
        while True:
            self.notifier.send("WATCHDOG=1")
            await anyio.sleep(self.notifier.watchdog_interval)


def _server(app: Any) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        access_log=False,
        http="httptools",
        timeout_keep_alive=30,
        server_header=False,
        proxy_headers=False,  # not behind a proxy by default; saves a middleware per request
    )
    return uvicorn.Server(config)


async def _serve_builtin(
    server: HttpServer,
    sock: socket.socket,
    scope: anyio.CancelScope,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with scope:
        await server.serve(sock, task_status=task_status)


async def _serve(
    server: uvicorn.Server,
    sock: socket.socket,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    # uvicorn.Server.serve() would install its own signal handlers; the app owns signals.
    config = server.config
    if not config.loaded:
        config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    if not server.started:
        raise RuntimeError(f"server on {sock.getsockname()} did not start")
    task_status.started()
    if not server.should_exit:
        await server.main_loop()
    if server.started:
        await server.shutdown(sockets=[sock])


def configure_logging(level: str, json_output: bool) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), format="%(message)s")
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    processors.append(
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        cache_logger_on_first_use=True,
    )
