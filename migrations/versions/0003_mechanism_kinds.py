"""Every mechanism in one ledger: run kinds with their spec, and the approximate-DP sub-budget.

Existing runs become ``dp_sgd`` with their spec rebuilt from the DP-SGD columns, which turn
nullable (other kinds have no sample rate or schedule).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_DP_SGD_COLUMNS = (
    ("sample_rate", sa.Float()),
    ("steps_per_epoch", sa.Integer()),
    ("noise_schedule", sa.String(32)),
    ("noise_multiplier", sa.Float()),
    ("decay_rate", sa.Float()),
)
_APPROX_COLUMNS = ("approx_epsilon", "approx_delta", "approx_epsilon_spent", "approx_delta_spent")


def _backfill_specs() -> None:
    runs = sa.table(
        "runs",
        sa.column("id", sa.Integer()),
        sa.column("spec", sa.JSON()),
        sa.column("epochs", sa.Integer()),
        sa.column("max_grad_norm", sa.Float()),
        *(sa.column(name, type_) for name, type_ in _DP_SGD_COLUMNS),
    )
    connection = op.get_bind()
    for row in connection.execute(sa.select(runs)).mappings().all():
        spec = {
            "kind": "dp_sgd",
            "sample_rate": row["sample_rate"],
            "steps_per_epoch": row["steps_per_epoch"],
            "epochs": row["epochs"],
            "noise": {
                "schedule": row["noise_schedule"],
                "noise_multiplier": row["noise_multiplier"],
                "decay_rate": row["decay_rate"],
            },
            "max_grad_norm": row["max_grad_norm"],
        }
        connection.execute(sa.update(runs).where(runs.c.id == row["id"]).values(spec=spec))


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("kind", sa.String(32), nullable=False, server_default="dp_sgd"))
        batch.add_column(sa.Column("spec", sa.JSON(), nullable=True))
        for name, type_ in _DP_SGD_COLUMNS:
            batch.alter_column(name, existing_type=type_, nullable=True)
    _backfill_specs()
    with op.batch_alter_table("datasets") as batch:
        for name in _APPROX_COLUMNS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        for name in reversed(_APPROX_COLUMNS):
            batch.drop_column(name)
    op.execute("DELETE FROM ledger_entries WHERE run_id IN (SELECT id FROM runs WHERE kind <> 'dp_sgd')")
    op.execute("DELETE FROM runs WHERE kind <> 'dp_sgd'")
    with op.batch_alter_table("runs") as batch:
        for name, type_ in _DP_SGD_COLUMNS:
            batch.alter_column(name, existing_type=type_, nullable=False)
        batch.drop_column("spec")
        batch.drop_column("kind")
