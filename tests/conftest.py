"""Shared fixtures: the anyio backend and a fresh database per test on both backends.

`store_url` is parametrised over SQLite (a temporary file) and PostgreSQL (a new
database on the server at 127.0.0.1:5432, dropped afterwards). The PostgreSQL
cases carry the `postgres` mark and skip, with the reason, when the server is
not reachable. `TURNUP_TEST_PG` overrides the server DSN.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from daemon.store import Store

PG_ADMIN_DSN = os.environ.get("TURNUP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
_PG_HOSTPORT = PG_ADMIN_DSN.split("@")[-1].rsplit("/", 1)[0]
_pg_unreachable: str | None = None

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, whatever loop is around."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _pg_admin(sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    global _pg_unreachable
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'turnup.db'}"
        return
    if _pg_unreachable is not None:
        pytest.skip(_pg_unreachable)
    name = f"turnup_t_{uuid.uuid4().hex[:16]}"
    try:
        _run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, TimeoutError) as exc:
        _pg_unreachable = f"PostgreSQL not reachable at {_PG_HOSTPORT}: {exc}"
        pytest.skip(_pg_unreachable)
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        _run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An opened (migrated) store on a fresh database; closed afterwards."""
    opened = await Store.open(store_url)
    try:
        yield opened
    finally:
        await opened.close()
