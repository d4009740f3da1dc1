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


def test_0005_turns_float_vectors_into_exact_quanta_and_keeps_runs_in_flight_chargeable(
    database_url,
):
    """A dataset with a plan run in flight (1 of 3 epochs charged), written by the float ledger."""
    from app.ledger import quanta
    from app.models import Dataset
    from app.services.accounting import DEFAULT_FILTER_ORDERS, filter_capacity
    from dp_core.conversion import rdp_to_epsilon
    from dp_core.mechanisms import SampledGaussianSchedule
    from dp_core.rdp.compose import compute_rdp
    from dp_core.schedules import NoiseSchedule

    settings = Settings(database_url=database_url)
    upgrade_database(settings, "0004")
    orders = list(DEFAULT_FILTER_ORDERS)
    weights = [1.0 / len(orders)] * len(orders)
    capacity = quanta.to_floats_down(
        filter_capacity(orders=orders, weights=weights, target_epsilon=8.0, target_delta=1e-5)
    )
    epoch = compute_rdp(
        SampledGaussianSchedule(
            sample_rate=0.01, schedule=NoiseSchedule(noise_multiplier=1.0), steps=100
        ),
        orders,
    )
    reserved, committed = 3 * epoch, epoch
    spec = {"kind": "dp_sgd", "sample_rate": 0.01, "steps_per_epoch": 100, "epochs": 3,
            "noise": {"schedule": "constant", "noise_multiplier": 1.0, "decay_rate": 0.0},
            "max_grad_norm": None}  # fmt: skip
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO datasets (id, name, description, target_epsilon, target_delta,"
                    " orders, weights, capacity, rdp_reserved, rdp_committed, alive, created_at,"
                    " created_by) VALUES (1, 'd', '', 8.0, 1e-5, :orders, :weights, :capacity,"
                    " :reserved, :committed, :alive, '2026-11-23 00:00:00+00', 'test')"
                ),
                {
                    "orders": json.dumps(orders),
                    "weights": json.dumps(weights),
                    "capacity": json.dumps(capacity.tolist()),
                    "reserved": json.dumps(reserved.tolist()),
                    "committed": json.dumps(committed.tolist()),
                    "alive": json.dumps([bool(b >= 0) for b in capacity]),
                },
            )
            conn.execute(
                text(
                    "INSERT INTO runs (id, dataset_id, name, kind, spec, sample_rate, steps_per_epoch,"
                    " epochs, noise_schedule, noise_multiplier, decay_rate, reservation, status,"
                    " epochs_charged, created_at, created_by) VALUES (1, 1, 'old', 'dp_sgd', :spec,"
                    " 0.01, 100, 3, 'constant', 1.0, 0.0, 'plan', 'running', 1,"
                    " '2026-11-23 00:00:00+00', 'test')"
                ),
                {"spec": json.dumps(spec)},
            )
            for kind, epoch_no, rdp in (("reservation", None, reserved), ("charge", 0, committed)):
                conn.execute(
                    text(
                        "INSERT INTO ledger_entries (dataset_id, run_id, kind, epoch, rdp,"
                        " mechanism, created_at, actor) VALUES (1, 1, :kind, :epoch, :rdp,"
                        " '{}', '2026-11-23 00:00:00+00', 'test')"
                    ),
                    {
                        "kind": kind,
                        "epoch": epoch_no,
                        "rdp": json.dumps(rdp.tolist()),
                    },
                )
        upgrade_database(settings)
        from sqlalchemy.pool import NullPool

        from app.auth import Principal
        from app.db import make_session_factory
        from app.schemas import Role
        from app.services.charging import charge_unit, finish_run

        admin = Principal(token_id=0, name="t", role=Role.admin, datasets=frozenset())
        # NullPool: every session's connection is closed when the session ends.
        app_engine = create_engine(database_url, poolclass=NullPool)
        factory = make_session_factory(app_engine)
        with factory() as session:
            dataset = session.get_one(Dataset, 1)
            assert quanta.covered(dataset.rdp_committed, dataset.rdp_reserved)
            assert quanta.to_floats_up(dataset.rdp_committed).tolist() >= committed.tolist()
        for unit in (1, 2):  # the run charges its remaining epochs, covered by what is reserved
            assert charge_unit(app_engine, 1, unit, admin).epoch == unit
        with factory() as session:
            run = finish_run(session, 1, admin)
        assert (run.status, run.epochs_charged) == ("finished", 3)
        assert (
            run.epsilon_run
            == rdp_to_epsilon(
                orders=orders, rdp=quanta.to_floats_up(run_costs_total(factory, 3)), delta=1e-5
            ).epsilon
        )
        with factory() as session:
            dataset = session.get_one(Dataset, 1)
            assert quanta.covered(dataset.rdp_committed, dataset.rdp_reserved)
            assert all(
                not alive or (s is not None and s <= b)
                for alive, s, b in zip(
                    dataset.alive, dataset.rdp_reserved, dataset.capacity, strict=True
                )
            )
    finally:
        engine.dispose()


def run_costs_total(factory, units):
    from app.ledger.costs import UnitCosts
    from app.models import Run

    with factory() as session:
        return UnitCosts.from_json(session.get_one(Run, 1).costs).total(0, units)
