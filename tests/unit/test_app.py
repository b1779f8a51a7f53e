"""The App: probes, the systemd notify protocol, and a clean stop (in-process and SIGTERM)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from daemon.app import App, Endpoints, Notifier
from emulators.scenarios.harness import LabConfig, daemon_in_process, daemon_process

pytestmark = pytest.mark.anyio


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A unix datagram socket standing in for systemd's $NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    try:
        yield str(path), sock
    finally:
        sock.close()


async def next_message(sock: socket.socket) -> str:
    data = await asyncio.get_running_loop().sock_recv(sock, 4096)
    return data.decode()


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def tcp_connects(url: str) -> bool:
    try:
        with socket.create_connection(host_port(url), timeout=5):
            return True
    except OSError:
        return False


# ---- probes ------------------------------------------------------------------------


async def test_healthz_and_readyz(tmp_path: Path) -> None:
    async with daemon_in_process(LabConfig(workdir=tmp_path)) as running:
        assert running.app is not None and running.app.ready
        async with httpx.AsyncClient(base_url=running.endpoints.api_url, timeout=10) as client:
            health = await client.get("/healthz")
            assert health.status_code == 200
            assert health.json() == {"status": "ok"}
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"status": "ready"}
        assert running.endpoints.acs_url.endswith("/acs")
        assert running.endpoints.speedtest_url.startswith("http://127.0.0.1:")


# ---- systemd notify ----------------------------------------------------------------


async def test_ready_only_once_every_port_serves_then_watchdog_and_stopping(
    tmp_path: Path, notify_socket: tuple[str, socket.socket]
) -> None:
    address, sock = notify_socket
    settings = LabConfig(workdir=tmp_path).settings()
    notifier = Notifier(address, watchdog_usec=200_000)
    assert notifier.watchdog_interval == 0.1
    app = App(settings, notifier=notifier)
    returned = anyio.Event()

    async def run_app() -> None:
        await app.run()
        returned.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_app)
        try:
            await _check_notify_sequence(app, sock)
        finally:
            app.stop()  # a failed check still lets run() finish instead of cancelling it
        with anyio.fail_after(30):
            await returned.wait()  # run() returns by itself once stopped
    assert returned.is_set()


async def _check_notify_sequence(app: App, sock: socket.socket) -> None:
    before_ready: list[str] = []
    with anyio.fail_after(30):
        while "READY=1" not in (message := await next_message(sock)).splitlines():
            before_ready.append(message)
    # At the moment READY=1 arrives, every endpoint accepts connections ...
    endpoints = app.endpoints
    assert isinstance(endpoints, Endpoints)
    assert app.ready
    for url in (endpoints.api_url, endpoints.acs_url, endpoints.speedtest_url):
        assert tcp_connects(url), url
    # ... and answers HTTP.
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(endpoints.api_url + "/readyz")).status_code == 200
        st = await client.get(endpoints.speedtest_url + "/download?bytes=10")
        assert st.status_code == 200 and len(st.content) == 10
        # a POST without credentials or a session: the ACS asks for credentials
        acs = await client.post(endpoints.acs_url, content=b"")
        assert acs.status_code == 401 and "www-authenticate" in acs.headers
    assert all(m == "WATCHDOG=1" for m in before_ready), before_ready
    assert "STATUS=serving" in message.splitlines()

    with anyio.fail_after(30):
        for _ in range(2):  # the watchdog keeps coming
            assert await next_message(sock) == "WATCHDOG=1"

    app.stop()
    with anyio.fail_after(30):
        while (message := await next_message(sock)) == "WATCHDOG=1":
            pass
    assert message == "STOPPING=1"
    assert not app.ready


async def test_notifier_abstract_socket() -> None:
    name = f"turnup-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        Notifier("@" + name, None).send("READY=1")
        assert sock.recv(100) == b"READY=1"


def test_notifier_without_systemd_is_silent(tmp_path: Path) -> None:
    Notifier(None, None).send("READY=1")  # no $NOTIFY_SOCKET: nothing to do
    Notifier(str(tmp_path / "gone.sock"), None).send("READY=1")  # logs, never raises
    assert Notifier(None, None).watchdog_interval is None


def test_notifier_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    n = Notifier.from_environment()
    assert n.address == "/run/systemd/notify"
    assert n.watchdog_interval == 15.0
    monkeypatch.setenv("WATCHDOG_USEC", "bogus")
    assert Notifier.from_environment().watchdog_interval is None
    monkeypatch.delenv("NOTIFY_SOCKET")
    monkeypatch.delenv("WATCHDOG_USEC")
    assert Notifier.from_environment().address is None


# ---- a real process ----------------------------------------------------------------


async def test_sigterm_stops_a_real_daemon_cleanly(tmp_path: Path) -> None:
    async with daemon_process(LabConfig(workdir=tmp_path)) as running:
        proc = running.process
        assert proc is not None
        async with httpx.AsyncClient(base_url=running.endpoints.api_url, timeout=10) as client:
            assert (await client.get("/readyz")).status_code == 200
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            returncode = await proc.wait()
    assert returncode == 0
    log = (tmp_path / "daemon.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert not tcp_connects(running.endpoints.api_url)
