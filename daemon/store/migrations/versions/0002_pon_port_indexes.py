"""Index the PON port on orders and devices.

Matching by OLT + PON port looked at every open order (and every unbound
device) for each sighting: quadratic when thousands of ONTs come up at once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_orders_pon_port", "orders", ["pon_port"])
    op.create_index("ix_devices_pon_port", "devices", ["pon_port"])


def downgrade() -> None:
    op.drop_index("ix_devices_pon_port", table_name="devices")
    op.drop_index("ix_orders_pon_port", table_name="orders")
