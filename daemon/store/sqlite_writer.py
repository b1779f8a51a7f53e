"""Whole SQLite transactions in one thread, one hop each.

aiosqlite sends every statement to its own thread and back: measured here,
~0.2 ms per statement before SQLAlchemy's own work, against ~13 µs for the
same SELECT on a plain sqlite3 connection. A turn-up decision is 4-10
statements, so the hops, not SQLite, set the pace (bench/acs.py --profile
showed SQLAlchemy + aiosqlite + the loop's thread wake-ups at ~70% of the
daemon's CPU during activations).

`SqliteWriter.run(fn)` sends the whole transaction `fn(tx)` to one thread that
owns a synchronous SQLAlchemy connection (pysqlite) and its own event loop;
`Tx` runs unchanged on top of `_SyncConnection`, whose `execute` is awaitable
but finishes at once. Writes are serialised by the store's write lock, as
before; readers keep using aiosqlite (WAL lets them run beside the writer).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from daemon.store.engine import BEGIN_MODE, json_dumps, sqlite_begin, sqlite_connect

T = TypeVar("T")


class _SyncConnection:
    """What `Tx` needs of an AsyncConnection, over a sync connection."""

    def __init__(self, conn: Connection) -> None:
        self.sync_connection = conn

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        if parameters is None:
            return self.sync_connection.execute(statement)
        return self.sync_connection.execute(statement, parameters)


class SqliteWriter:
    def __init__(self, url: str) -> None:
        sync_url = make_url(url).set(drivername="sqlite+pysqlite")
        self.engine = sa.create_engine(sync_url, json_serializer=json_dumps, pool_size=1)
        event.listen(self.engine, "connect", sqlite_connect)
        event.listen(self.engine, "begin", sqlite_begin)
        self._conn: Connection | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="turnup-sqlite-writer", daemon=True
        )
        self._thread.start()

    async def run(self, fn: Callable[[Any], Awaitable[T]], make_tx: Callable[[Any], Any]) -> T:
        """Run `fn(make_tx(connection))` as one transaction in the writer thread."""
        future = asyncio.run_coroutine_threadsafe(self._run(fn, make_tx), self._loop)
        return await asyncio.wrap_future(future)

    async def _run(self, fn: Callable[[Any], Awaitable[T]], make_tx: Callable[[Any], Any]) -> T:
        if self._conn is None:
            self._conn = self.engine.connect().execution_options(**{BEGIN_MODE: "IMMEDIATE"})
        conn = self._conn
        trans = conn.begin()
        try:
            result = await fn(make_tx(cast(AsyncConnection, _SyncConnection(conn))))
        except BaseException:
            trans.rollback()
            raise
        trans.commit()
        return result

    def close(self) -> None:
        def stop() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._loop.stop()

        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(stop)
            self._thread.join(timeout=10)
        self._loop.close()
        self.engine.dispose()
