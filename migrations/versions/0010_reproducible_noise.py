"""Runs record whether their noise was reproducible from a public seed (``reproducible_noise``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing runs drew their noise from a seed too (dpledger before issue 20), but which of
    # them did is not known here: they keep false, as every run registered before this column.
    with op.batch_alter_table("runs") as batch:
        batch.add_column(
            sa.Column(
                "reproducible_noise", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("reproducible_noise")
