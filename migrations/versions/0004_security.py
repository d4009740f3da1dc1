"""Security: revoked tokens keep their row (``revoked_at``), and server-side dashboard sessions.

A revoked token used to be deleted, so a bootstrap token came back at the next start; now its hash
stays, marked revoked, and is never registered again. Dashboard cookies hold a random session id,
stored hashed in ``dashboard_sessions`` (expiring, deleted with the token's revocation).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("revoked_at", _TS, nullable=True))
    op.create_table(
        "dashboard_sessions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("session_hash", sa.String(64), nullable=False),
        sa.Column(
            "token_id",
            sa.Integer(),
            sa.ForeignKey("api_tokens.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.UniqueConstraint("session_hash", name="uq_dashboard_sessions_session_hash"),
    )
    op.create_index("ix_dashboard_sessions_token_id", "dashboard_sessions", ["token_id"])


def downgrade() -> None:
    op.drop_index("ix_dashboard_sessions_token_id", table_name="dashboard_sessions")
    op.drop_table("dashboard_sessions")
    # Revoked tokens were deleted before this revision: keep them refused by deleting them.
    op.execute("DELETE FROM api_tokens WHERE revoked_at IS NOT NULL")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("revoked_at")
