"""Empirical privacy audits stored with runs (``POST/GET /v1/runs/{id}/audits``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_audits",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("epsilon_theoretical", sa.Float(), nullable=True),
        sa.Column("epsilon_lower_bound", sa.Float(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("delta", sa.Float(), nullable=True),
        sa.Column("canaries", sa.Integer(), nullable=False),
        sa.Column("canaries_included", sa.Integer(), nullable=False),
        sa.Column("guesses", sa.Integer(), nullable=False),
        sa.Column("correct_guesses", sa.Integer(), nullable=False),
        sa.Column("canary_kind", sa.String(32), nullable=False),
        sa.Column("noise_multiplier", sa.Float(), nullable=True),
        sa.Column("test_accuracy", sa.Float(), nullable=True),
        sa.Column("membership_inference", sa.JSON(), nullable=True),
        sa.Column("seed", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
    )
    op.create_index("ix_run_audits_run_id", "run_audits", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_run_audits_run_id", table_name="run_audits")
    op.drop_table("run_audits")
