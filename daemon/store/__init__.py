"""The SQL store (SQLite or PostgreSQL): schema, migrations, and the repository.

`Store.open(url)` migrates and opens; `store.transaction()` is one transaction
that writes core state and its effects together (see `repository.py`).
"""

from daemon.store.engine import current_revision, head_revision, upgrade
from daemon.store.repository import (
    EventRecord,
    OutboxRow,
    Store,
    StoreConflict,
    Task,
    Tx,
)

__all__ = [
    "EventRecord",
    "OutboxRow",
    "Store",
    "StoreConflict",
    "Task",
    "Tx",
    "current_revision",
    "head_revision",
    "upgrade",
]
