"""Database engines for the store's two backends, and running the migrations.

SQLite through aiosqlite is the embedded default, PostgreSQL through asyncpg the
shared one. On SQLite every connection gets WAL, `synchronous=NORMAL`, foreign
keys and a busy timeout, and we emit BEGIN ourselves (the driver's implicit
BEGIN is off) so that a writer can take the write lock up front with
`BEGIN IMMEDIATE` instead of failing later on a lock upgrade.

`upgrade(url)` runs Alembic `upgrade head` programmatically; the Alembic config
is built in code (no alembic.ini), with the scripts shipped in this package.
"""

from __future__ import annotations

import enum
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BEGIN_MODE = "turnup_sqlite_begin"  # execution option: "DEFERRED" (default) / "IMMEDIATE"

_SQLITE_PRAGMAS = (
    "PRAGMA busy_timeout=5000",  # first, so the WAL switch waits for other processes
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)


def backend_of(url: str) -> str:
    """ "sqlite" or "postgresql" (ValueError for anything else)."""
    backend = make_url(url).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database {backend!r}: use sqlite+aiosqlite or asyncpg")
    return backend


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver; `_sqlite_begin` opens every transaction itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def sqlite_begin(connection: Connection) -> None:
    mode = connection.get_execution_options().get(BEGIN_MODE, "DEFERRED")
    if mode not in ("DEFERRED", "IMMEDIATE"):
        raise ValueError(f"bad {BEGIN_MODE} {mode!r}")
    connection.exec_driver_sql(f"BEGIN {mode}")


def _is_memory(database: str | None, query: Any) -> bool:
    return not database or database == ":memory:" or query.get("mode") == "memory"


def create_engine_for(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine for `url`, with the SQLite connection setup when it is SQLite."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"json_serializer": json_dumps}
    if backend_of(url) == "sqlite":
        if not _is_memory(parsed.database, parsed.query):
            kwargs["pool_size"] = pool_size
            if parsed.database and not parsed.database.startswith("file:"):
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(parsed, **kwargs)
        event.listen(engine.sync_engine, "connect", sqlite_connect)
        event.listen(engine.sync_engine, "begin", sqlite_begin)
        return engine
    kwargs["pool_size"] = pool_size
    return create_async_engine(parsed, **kwargs)


def alembic_config(url: str | None = None) -> Config:
    """The Alembic config, built in code; `url` only matters for the env's own engine."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _upgrade_head(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def migrate(engine: AsyncEngine) -> None:
    """`upgrade head` on `engine`, in one transaction (DDL is transactional on both)."""
    async with engine.connect() as conn:
        await conn.execution_options(**{BEGIN_MODE: "IMMEDIATE"})
        async with conn.begin():
            await conn.run_sync(_upgrade_head)


async def upgrade(url: str) -> None:
    """Bring the database at `url` to the newest schema (idempotent)."""
    engine = create_engine_for(url, pool_size=1)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    """The schema revision the database is at (None before the first migration)."""
    engine = create_engine_for(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_current)
    finally:
        await engine.dispose()
