"""Datasets with the admission filter's state, runs, the append-only ledger, API tokens.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("target_epsilon", sa.Float(), nullable=False),
        sa.Column("target_delta", sa.Float(), nullable=False),
        sa.Column("orders", sa.JSON(), nullable=False),
        sa.Column("weights", sa.JSON(), nullable=False),
        sa.Column("capacity", sa.JSON(), nullable=False),
        sa.Column("rdp_reserved", sa.JSON(), nullable=False),
        sa.Column("rdp_committed", sa.JSON(), nullable=False),
        sa.Column("alive", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.UniqueConstraint("name", name="uq_datasets_name"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("sample_rate", sa.Float(), nullable=False),
        sa.Column("steps_per_epoch", sa.Integer(), nullable=False),
        sa.Column("epochs", sa.Integer(), nullable=False),
        sa.Column("noise_schedule", sa.String(32), nullable=False),
        sa.Column("noise_multiplier", sa.Float(), nullable=False),
        sa.Column("decay_rate", sa.Float(), nullable=False),
        sa.Column("max_grad_norm", sa.Float(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("epochs_charged", sa.Integer(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    op.create_index("ix_runs_dataset_id", "runs", ["dataset_id"])
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("rdp", sa.JSON(), nullable=False),
        sa.Column("mechanism", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.UniqueConstraint("run_id", "kind", "epoch", name="uq_ledger_run_kind_epoch"),
    )
    op.create_index("ix_ledger_dataset_id_id", "ledger_entries", ["dataset_id", "id"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("datasets", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    )


def downgrade() -> None:
    op.drop_table("api_tokens")
    op.drop_index("ix_ledger_dataset_id_id", table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_index("ix_runs_dataset_id", table_name="runs")
    op.drop_table("runs")
    op.drop_table("datasets")
