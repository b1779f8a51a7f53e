"""The domain core imports no I/O: no asyncio, SQL, HTTP, prometheus or pyrad."""

from __future__ import annotations

import ast
from pathlib import Path

FORBIDDEN = {
    "asyncio",
    "anyio",
    "sqlalchemy",
    "aiosqlite",
    "asyncpg",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "prometheus_client",
    "pyrad",
    "socket",
    "structlog",
    "logging",
    "lxml",
    "tftpy",
    "scapy",
    "daemon.store",
    "daemon.api",
    "daemon.tr069",
    "daemon.app",
}
CORE = Path(__file__).resolve().parents[2] / "daemon" / "core"


def test_core_imports_no_io() -> None:
    files = sorted(CORE.glob("*.py"))
    assert files, "daemon/core is empty"
    offenders = []
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []
