"""The SQL tables (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Owns the table definitions and the column types that keep both backends alike:
`UtcDateTime` stores timezone-aware UTC and hands back aware UTC (SQLite keeps no
offset and returns naive values). The Alembic migrations under `migrations/`
create exactly these tables; `tests/unit/test_store.py` checks they agree.
A change here needs a new migration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(sa.TypeDecorator[datetime]):
    """`DateTime(timezone=True)` that only takes and returns aware UTC datetimes."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps aware UTC only")
        value = value.astimezone(UTC)
        # SQLite has no offset: keep the UTC wall time so text comparisons order correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return as_utc(value) if value is not None else None


def as_utc(value: datetime) -> datetime:
    """Aware UTC from whatever a driver returned (naive means UTC here)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _json() -> sa.JSON:
    return sa.JSON()


def _json_nullable() -> sa.JSON:
    # Python None is stored as SQL NULL, not the JSON literal `null`.
    return sa.JSON(none_as_null=True)


def _col(name: str, type_: Any, *args: Any, **kw: Any) -> sa.Column[Any]:
    kw.setdefault("nullable", False)
    return sa.Column(name, type_, *args, **kw)


plans = sa.Table(
    "plans",
    metadata,
    _col("id", sa.Text(), primary_key=True),
    _col("name", sa.Text()),
    _col("down_mbps", sa.Float()),
    _col("up_mbps", sa.Float()),
    _col("vlan", sa.Integer(), nullable=True),
    _col("verify", sa.Text()),
    _col("created_at", UtcDateTime()),
    _col("updated_at", UtcDateTime()),
)

orders = sa.Table(
    "orders",
    metadata,
    _col("id", sa.Text(), primary_key=True),
    _col("request_hash", sa.Text()),
    _col("account_id", sa.Text()),
    _col("plan_id", sa.Text(), sa.ForeignKey("plans.id")),
    _col("network_type", sa.Text()),
    _col("state", sa.Text(), index=True),
    _col("expected_serial", sa.Text(), nullable=True),
    _col("serial_key", sa.Text(), nullable=True, index=True),
    _col("olt", sa.Text(), nullable=True),
    _col("pon_port", sa.Text(), nullable=True, index=True),
    _col("onu_id", sa.Integer(), nullable=True),
    _col("circuit_id", sa.Text(), nullable=True, index=True),
    _col("settings", _json()),
    _col("device_serial", sa.Text(), nullable=True, index=True),
    _col("timeline", _json()),
    _col("last_error", sa.Text(), nullable=True),
    _col("measured_down_mbps", sa.Float(), nullable=True),
    _col("measured_up_mbps", sa.Float(), nullable=True),
    _col("test_attempts", sa.Integer()),
    _col("config_attempts", sa.Integer()),
    _col("next_retry_at", UtcDateTime(), nullable=True, index=True),
    _col("deadline_at", UtcDateTime(), nullable=True, index=True),
    _col("test_phase", sa.Text(), nullable=True),
    _col("test_notes", _json()),
    _col("created_at", UtcDateTime()),
    _col("updated_at", UtcDateTime()),
    _col("version", sa.Integer()),
)

devices = sa.Table(
    "devices",
    metadata,
    _col("serial", sa.Text(), primary_key=True),
    _col("serial_key", sa.Text(), index=True),
    _col("status", sa.Text()),
    _col("first_seen", UtcDateTime()),
    _col("last_seen", UtcDateTime()),
    _col("vendor_id", sa.Text()),
    _col("manufacturer", sa.Text()),
    _col("oui", sa.Text()),
    _col("product_class", sa.Text()),
    _col("model", sa.Text()),
    _col("firmware", sa.Text()),
    _col("source", sa.Text()),
    _col("olt", sa.Text(), nullable=True),
    _col("pon_port", sa.Text(), nullable=True, index=True),
    _col("onu_id", sa.Integer(), nullable=True),
    _col("circuit_id", sa.Text(), nullable=True, index=True),
    _col("order_id", sa.Text(), nullable=True),
    _col("connection_request_url", sa.Text(), nullable=True),
    _col("data_model", sa.Text(), nullable=True),
    _col("profile", sa.Text(), nullable=True),
    _col("reported_unmatched", sa.Boolean()),
)

events = sa.Table(
    "events",
    metadata,
    _col("id", sa.Integer(), primary_key=True, autoincrement=True),
    _col("at", UtcDateTime()),
    _col("kind", sa.Text()),
    _col("order_id", sa.Text(), nullable=True, index=True),
    _col("serial", sa.Text(), nullable=True, index=True),
    _col("detail", _json()),
)

device_tasks = sa.Table(
    "device_tasks",
    metadata,
    _col("id", sa.Integer(), primary_key=True, autoincrement=True),
    _col("serial", sa.Text()),
    _col("order_id", sa.Text(), nullable=True),
    _col("kind", sa.Text()),
    _col("payload", _json()),
    _col("state", sa.Text()),
    _col("created_at", UtcDateTime()),
    _col("sent_at", UtcDateTime(), nullable=True),
    _col("finished_at", UtcDateTime(), nullable=True),
    _col("result", _json_nullable(), nullable=True),
    _col("fault", sa.Text(), nullable=True),
    sa.Index(None, "serial", "state"),
)

outbox = sa.Table(
    "outbox",
    metadata,
    _col("id", sa.Text(), primary_key=True),
    _col("event_type", sa.Text()),
    _col("payload", _json()),
    _col("created_at", UtcDateTime()),
    _col("next_attempt_at", UtcDateTime(), index=True),
    _col("attempts", sa.Integer()),
    _col("state", sa.Text(), index=True),
    _col("last_error", sa.Text(), nullable=True),
    _col("last_status", sa.Integer(), nullable=True),
    _col("delivered_at", UtcDateTime(), nullable=True),
)

webhook_endpoint = sa.Table(
    "webhook_endpoint",
    metadata,
    _col("id", sa.Integer(), primary_key=True, autoincrement=False),
    _col("disabled_at", UtcDateTime(), nullable=True),
    _col("reason", sa.Text(), nullable=True),
)
