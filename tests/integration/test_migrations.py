"""Migration 0001 builds exactly the tables the models describe, and downgrades cleanly."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app.db import alembic_config, upgrade_database
from app.models import Base
from app.settings import Settings


def test_upgrade_matches_models_and_downgrades(database_url):
    settings = Settings(database_url=database_url)
    upgrade_database(settings)
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        command.downgrade(alembic_config(settings), "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade_database(settings)  # and back up again
        assert {"datasets", "runs", "ledger_entries", "api_tokens"} <= set(
            inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()
