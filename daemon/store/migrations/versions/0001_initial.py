"""The initial schema: plans, orders, devices, events, device tasks, outbox, endpoint.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _text(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.Text(), nullable=nullable)


def _int(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.Integer(), nullable=nullable)


def _float(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.Float(), nullable=nullable)


def _json(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.JSON(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "plans",
        _text("id"),
        _text("name"),
        _float("down_mbps"),
        _float("up_mbps"),
        _int("vlan", nullable=True),
        _text("verify"),
        _time("created_at"),
        _time("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_plans"),
    )

    op.create_table(
        "orders",
        _text("id"),
        _text("request_hash"),
        _text("account_id"),
        _text("plan_id"),
        _text("network_type"),
        _text("state"),
        _text("expected_serial", nullable=True),
        _text("serial_key", nullable=True),
        _text("olt", nullable=True),
        _text("pon_port", nullable=True),
        _int("onu_id", nullable=True),
        _text("circuit_id", nullable=True),
        _json("settings"),
        _text("device_serial", nullable=True),
        _json("timeline"),
        _text("last_error", nullable=True),
        _float("measured_down_mbps", nullable=True),
        _float("measured_up_mbps", nullable=True),
        _int("test_attempts"),
        _int("config_attempts"),
        _time("next_retry_at", nullable=True),
        _time("deadline_at", nullable=True),
        _text("test_phase", nullable=True),
        _json("test_notes"),
        _time("created_at"),
        _time("updated_at"),
        _int("version"),
        sa.PrimaryKeyConstraint("id", name="pk_orders"),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name="fk_orders_plan_id_plans"),
    )
    for column in (
        "state",
        "serial_key",
        "circuit_id",
        "device_serial",
        "next_retry_at",
        "deadline_at",
    ):
        op.create_index(f"ix_orders_{column}", "orders", [column])

    op.create_table(
        "devices",
        _text("serial"),
        _text("serial_key"),
        _text("status"),
        _time("first_seen"),
        _time("last_seen"),
        _text("vendor_id"),
        _text("manufacturer"),
        _text("oui"),
        _text("product_class"),
        _text("model"),
        _text("firmware"),
        _text("source"),
        _text("olt", nullable=True),
        _text("pon_port", nullable=True),
        _int("onu_id", nullable=True),
        _text("circuit_id", nullable=True),
        _text("order_id", nullable=True),
        _text("connection_request_url", nullable=True),
        _text("data_model", nullable=True),
        _text("profile", nullable=True),
        sa.Column("reported_unmatched", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("serial", name="pk_devices"),
    )
    op.create_index("ix_devices_serial_key", "devices", ["serial_key"])
    op.create_index("ix_devices_circuit_id", "devices", ["circuit_id"])

    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        _time("at"),
        _text("kind"),
        _text("order_id", nullable=True),
        _text("serial", nullable=True),
        _json("detail"),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_order_id", "events", ["order_id"])
    op.create_index("ix_events_serial", "events", ["serial"])

    op.create_table(
        "device_tasks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        _text("serial"),
        _text("order_id", nullable=True),
        _text("kind"),
        _json("payload"),
        _text("state"),
        _time("created_at"),
        _time("sent_at", nullable=True),
        _time("finished_at", nullable=True),
        _json("result", nullable=True),
        _text("fault", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_device_tasks"),
    )
    op.create_index("ix_device_tasks_serial_state", "device_tasks", ["serial", "state"])

    op.create_table(
        "outbox",
        _text("id"),
        _text("event_type"),
        _json("payload"),
        _time("created_at"),
        _time("next_attempt_at"),
        _int("attempts"),
        _text("state"),
        _text("last_error", nullable=True),
        _int("last_status", nullable=True),
        _time("delivered_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index("ix_outbox_next_attempt_at", "outbox", ["next_attempt_at"])
    op.create_index("ix_outbox_state", "outbox", ["state"])

    endpoint = op.create_table(
        "webhook_endpoint",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        _time("disabled_at", nullable=True),
        _text("reason", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_endpoint"),
    )
    op.bulk_insert(endpoint, [{"id": 1, "disabled_at": None, "reason": None}])


def downgrade() -> None:
    for table in ("webhook_endpoint", "outbox", "device_tasks", "events", "devices", "orders"):
        op.drop_table(table)
    op.drop_table("plans")
