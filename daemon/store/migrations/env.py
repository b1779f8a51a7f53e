"""Alembic environment for the turnup store.

Two ways in:
- programmatic (`daemon.store.engine.upgrade(url)`, `Store.open`, `turnup db
  upgrade`): the caller opens the connection and its transaction and passes it as
  `config.attributes["connection"]`; we run inside it and leave commit to it;
- the plain `alembic` command line with `-x url=...` or `sqlalchemy.url`: we open an
  async engine ourselves.
Offline mode (`--sql`) renders the DDL for the URL's dialect.
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection

from daemon.store.schema import metadata

config = context.config
MIGRATION_LOCK = 0x7475726E7570  # "turnup"


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("no database URL: pass -x url=... or set sqlalchemy.url")
    return url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        # SQLite DDL is transactional too; the store begins its own transaction.
        transactional_ddl=True,
        compare_type=True,
    )


def _run_sync(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Several daemons may start at once against one database: one migrates,
        # the others wait here and then find the schema at head.
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_sync(connection)
        return
    from daemon.store.engine import create_engine_for

    async def run() -> None:
        engine = create_engine_for(_url(), pool_size=1)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_run_sync)
        finally:
            await engine.dispose()

    asyncio.run(run())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
