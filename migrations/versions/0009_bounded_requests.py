"""Idempotency keys bound to their request body; refused runs kept in a bounded form.

``runs.request_hash``: the SHA-256 of the canonical JSON of the request that created a run with an
``Idempotency-Key`` (a reuse with another body is refused). ``datasets.refused_runs_forgotten``:
how many refused runs were deleted to keep the last N (the count of refusals stays exact).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("request_hash", sa.String(64), nullable=True))
        batch.create_index("ix_runs_dataset_id_status_id", ["dataset_id", "status", "id"])
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(
            sa.Column(
                "refused_runs_forgotten", sa.Integer(), nullable=False, server_default="0"
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("refused_runs_forgotten")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_dataset_id_status_id")
        batch.drop_column("request_hash")
