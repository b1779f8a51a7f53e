"""Run a whole turnup on loopback: the daemon (in-process or as a child
process), a billing receiver and helpers to drive the control API.

Used by `turnup demo`, the end-to-end tests and the benchmarks, so all three
exercise the same wiring as `turnup run`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from daemon.app import App, Endpoints
from daemon.config import Settings, load_settings

DEMO_PLANS: list[dict[str, Any]] = [
    {
        "id": "fiber-100",
        "name": "Fiber 100",
        "down_mbps": 100,
        "up_mbps": 20,
        "vlan": 100,
        "verify": "download",
    },
    {
        "id": "fiber-300",
        "name": "Fiber 300",
        "down_mbps": 300,
        "up_mbps": 100,
        "vlan": 101,
        "verify": "download_upload",
    },
    {
        "id": "fiber-1000",
        "name": "Fiber 1000",
        "down_mbps": 1000,
        "up_mbps": 300,
        "vlan": 102,
        "verify": "download",
    },
]


def free_port() -> int:
    """A port free right now on loopback (for a daemon that must restart on the same one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + " }"
    return json.dumps(str(value))


def write_config(path: Path, sections: dict[str, Any]) -> Path:
    """Write a TOML config from nested dicts (the demo and tests use real files)."""
    lines: list[str] = []
    for name, body in sections.items():
        if name == "plans":
            for plan in body:
                lines.append("[[plans]]")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in plan.items() if v is not None)
                lines.append("")
            continue
        if not isinstance(body, dict):
            lines.insert(0, f"{name} = {_toml_value(body)}")
            continue
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in body.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@dataclass
class LabConfig:
    workdir: Path
    webhook_url: str = ""
    webhook_secret: str = field(default_factory=new_secret)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    store_url: str = ""
    cpe_password: str = "cpe-secret"
    verification: dict[str, Any] = field(
        default_factory=lambda: {
            "pass_fraction": 0.9,
            "max_test_attempts": 2,
            "retry_delay_seconds": 1.0,
            "step_timeout_seconds": 60.0,
            "timer_interval_seconds": 0.2,
        }
    )
    webhook_schedule: list[float] = field(default_factory=lambda: [0, 0.5, 1, 2, 4, 8, 15, 30])
    download_bytes: int = 1_000_000
    upload_bytes: int = 500_000
    plans: list[dict[str, Any]] = field(default_factory=lambda: list(DEMO_PLANS))
    acs_auth: str = "any"
    max_sessions: int = 20_000
    session_timeout: float = 30.0
    ports: dict[str, int] = field(default_factory=dict)  # "api"/"acs"/"speedtest" -> fixed port

    def sections(self) -> dict[str, Any]:
        store = self.store_url or f"sqlite+aiosqlite:///{self.workdir / 'turnup.db'}"
        return {
            "store": {"url": store},
            "api": {"host": "127.0.0.1", "port": self.ports.get("api", 0), "token": self.token},
            "acs": {
                "host": "127.0.0.1",
                "port": self.ports.get("acs", 0),
                "auth": self.acs_auth,
                "shared_username": "cpe",
                "shared_password": self.cpe_password,
                "connection_request_username": "turnup",
                "connection_request_password": "cr-" + self.cpe_password,
                "periodic_inform_interval": 3600,
                "max_sessions": self.max_sessions,
                "session_timeout_seconds": self.session_timeout,
            },
            "speedtest": {
                "host": "127.0.0.1",
                "port": self.ports.get("speedtest", 0),
                "download_bytes": self.download_bytes,
                "upload_bytes": self.upload_bytes,
            },
            "verification": self.verification,
            "webhooks": {
                "url": self.webhook_url,
                "secret": self.webhook_secret,
                "schedule_seconds": self.webhook_schedule,
                "timeout_seconds": 5.0,
                "poll_interval_seconds": 0.2,
            },
            "logging": {"level": "warning"},
            "plans": self.plans,
        }

    def write(self) -> Path:
        return write_config(self.workdir / "turnup.toml", self.sections())

    def settings(self) -> Settings:
        return load_settings(self.write())


@dataclass
class Running:
    endpoints: Endpoints
    token: str
    app: App | None = None
    process: asyncio.subprocess.Process | None = None

    def client(self, timeout: float = 30.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.endpoints.api_url,
            headers={"authorization": f"Bearer {self.token}"},
            timeout=timeout,
        )


@contextlib.asynccontextmanager
async def daemon_in_process(lab: LabConfig) -> AsyncIterator[Running]:
    settings = lab.settings()
    ready: asyncio.Future[Endpoints] = asyncio.get_running_loop().create_future()
    app = App(settings, on_ready=lambda e: ready.set_result(e) if not ready.done() else None)
    task = asyncio.create_task(app.run())
    try:
        waiting: list[asyncio.Future[Any]] = [task, ready]
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises the start-up error
            raise RuntimeError("daemon exited during start-up")
        yield Running(ready.result(), lab.token, app=app)
    finally:
        app.stop()
        try:
            await asyncio.wait_for(task, 15)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def daemon_process(lab: LabConfig, ready_timeout: float = 30.0) -> AsyncIterator[Running]:
    """`turnup run` as a child process (for kill -9 tests)."""
    config = lab.write()
    ready_file = lab.workdir / f"ready-{secrets.token_hex(4)}.json"
    log_file = (lab.workdir / "daemon.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        "run",
        "--config",
        str(config),
        "--ready-file",
        str(ready_file),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log_file,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + ready_timeout
        while not ready_file.exists():
            if proc.returncode is not None or time.monotonic() > deadline:
                log = (lab.workdir / "daemon.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"daemon did not become ready (rc={proc.returncode}):\n{log}")
            await asyncio.sleep(0.05)
        data = json.loads(ready_file.read_text())
        yield Running(Endpoints(**data), lab.token, process=proc)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log_file.close()


async def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        await asyncio.sleep(interval)
    return False
