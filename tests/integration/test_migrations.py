"""Migrations build exactly the tables the models describe, upgrade old rows, and downgrade cleanly."""

from __future__ import annotations

import json

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

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


def test_0003_turns_existing_runs_into_dp_sgd_with_their_spec(database_url):
    settings = Settings(database_url=database_url)
    upgrade_database(settings, "0002")
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO datasets (id, name, description, target_epsilon, target_delta,"
                    " orders, weights, capacity, rdp_reserved, rdp_committed, alive, created_at,"
                    " created_by) VALUES (1, 'd', '', 3.0, 1e-5, '[2.0]', '[1.0]', '[1.0]',"
                    " '[0.0]', '[0.0]', '[true]', '2026-11-23 00:00:00+00', 'test')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO runs (id, dataset_id, name, sample_rate, steps_per_epoch, epochs,"
                    " noise_schedule, noise_multiplier, decay_rate, max_grad_norm, reservation,"
                    " status, epochs_charged, created_at, created_by) VALUES (1, 1, 'old', 0.01,"
                    " 100, 3, 'exponential', 1.1, 0.01, NULL, 'plan', 'admitted', 0,"
                    " '2026-11-23 00:00:00+00', 'test')"
                )
            )
        upgrade_database(settings)
        with engine.connect() as conn:
            kind, spec = conn.execute(text("SELECT kind, spec FROM runs WHERE id = 1")).one()
            approx = conn.execute(text("SELECT approx_epsilon FROM datasets WHERE id = 1")).scalar()
    finally:
        engine.dispose()
    spec = json.loads(spec) if isinstance(spec, str) else spec
    assert kind == "dp_sgd" and approx == 0.0
    assert spec == {
        "kind": "dp_sgd", "sample_rate": 0.01, "steps_per_epoch": 100, "epochs": 3,
        "noise": {"schedule": "exponential", "noise_multiplier": 1.1, "decay_rate": 0.01},
        "max_grad_norm": None,
    }  # fmt: skip
