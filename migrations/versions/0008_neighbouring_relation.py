"""Neighbouring relation of a dataset's budget: fixed by its first admitted run.

Runs whose accounting uses another relation (replace-one for fixed-size sampling, add/remove
for everything else) are refused from then on. Existing datasets take the relation of their
earliest admitted or finished run: replace-one when it is a dp_fedavg run with fixed-size
sampling, add/remove otherwise; datasets without such a run stay open (null).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _relation(kind: str, spec: Any) -> str:
    """The relation of a stored run (a frozen copy of the rule; migrations never import app)."""
    if isinstance(spec, str):
        spec = json.loads(spec)
    fixed = kind == "dp_fedavg" and isinstance(spec, dict) and spec.get("sampling") == "fixed"
    return "replace_one" if fixed else "add_remove"


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("neighbouring_relation", sa.String(16), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT dataset_id, kind, spec FROM runs WHERE status <> 'refused' ORDER BY id")
    ).all()
    first: dict[int, str] = {}
    for dataset_id, kind, spec in rows:
        first.setdefault(int(dataset_id), _relation(kind, spec))
    for dataset_id, relation in first.items():
        bind.execute(
            sa.text("UPDATE datasets SET neighbouring_relation = :r WHERE id = :i"),
            {"r": relation, "i": dataset_id},
        )


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("neighbouring_relation")
