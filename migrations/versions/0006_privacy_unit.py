"""Privacy unit of a dataset: "example" (every existing dataset) or "user" (federated learning).

A dataset's unit is fixed at creation; DP-SGD, PATE and releases charge example-level datasets,
DP-FedAvg charges user-level ones (the service refuses the mix with privacy_unit_mismatch).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(
            sa.Column("privacy_unit", sa.String(16), nullable=False, server_default="example")
        )


def downgrade() -> None:
    # A user-level dataset would silently become an example-level one (and its dp_fedavg runs
    # unreadable by the older code): refuse rather than lose what its budget means.
    users = op.get_bind().scalar(
        sa.text("SELECT COUNT(*) FROM datasets WHERE privacy_unit <> 'example'")
    )
    if users:
        raise RuntimeError(
            f"{users} user-level dataset(s) exist; delete them before downgrading below 0006"
        )
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("privacy_unit")
