"""Exact ledger arithmetic: RDP vectors in integer quanta, per-unit costs fixed at admission,
idempotent run creation, and the charged count read from the ledger instead of a column.

Float vectors become quanta of 2^-64, rounded toward privacy (costs and sums up, capacities
down). Runs still in flight get their per-unit costs computed with today's rounding; each
dataset's S then grows where needed to cover what those runs may still charge
(S := max(S, C + remaining costs)), and orders whose S passes their capacity leave the alive set:
conservative, and it keeps C <= S <= B exact from here on.

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None

_SCALE_BITS = 64


def _up(values: list[Any]) -> list[int | None]:
    return [None if v is None else math.ceil(math.ldexp(float(v), _SCALE_BITS)) for v in values]


def _down(values: list[Any]) -> list[int]:
    return [math.floor(math.ldexp(float(v), _SCALE_BITS)) for v in values]


def _tables() -> tuple[sa.TableClause, sa.TableClause, sa.TableClause]:
    datasets = sa.table(
        "datasets",
        sa.column("id", sa.Integer()),
        sa.column("orders", sa.JSON()),
        sa.column("capacity", sa.JSON()),
        sa.column("rdp_reserved", sa.JSON()),
        sa.column("rdp_committed", sa.JSON()),
        sa.column("alive", sa.JSON()),
    )
    runs = sa.table(
        "runs",
        sa.column("id", sa.Integer()),
        sa.column("dataset_id", sa.Integer()),
        sa.column("spec", sa.JSON()),
        sa.column("status", sa.String()),
        sa.column("reservation", sa.String()),
        sa.column("epochs_charged", sa.Integer()),
        sa.column("costs", sa.JSON()),
    )
    entries = sa.table("ledger_entries", sa.column("id", sa.Integer()), sa.column("rdp", sa.JSON()))
    return datasets, runs, entries


def _convert_vectors(connection: sa.Connection) -> None:
    datasets, _, entries = _tables()
    for row in connection.execute(sa.select(entries.c.id, entries.c.rdp)).all():
        connection.execute(entries.update().where(entries.c.id == row.id).values(rdp=_up(row.rdp)))
    for row in connection.execute(sa.select(datasets)).all():
        reserved, committed = _up(row.rdp_reserved), _up(row.rdp_committed)
        reserved = [
            None if s is None or c is None else max(s, c)
            for s, c in zip(reserved, committed, strict=True)
        ]
        connection.execute(
            datasets.update()
            .where(datasets.c.id == row.id)
            .values(capacity=_down(row.capacity), rdp_reserved=reserved, rdp_committed=committed)
        )


def _cover_runs_in_flight(connection: sa.Connection) -> None:
    """Fix the costs of runs still in flight and make each dataset's S cover them."""
    from app.ledger import quanta
    from app.ledger.plans import unit_costs
    from app.services.accounting import charge_spec, parse_mechanism

    datasets, runs, _ = _tables()
    for dataset in connection.execute(sa.select(datasets)).all():
        orders = tuple(float(a) for a in dataset.orders)
        needed = quanta.from_json(dataset.rdp_committed)
        live = connection.execute(
            sa.select(runs).where(
                runs.c.dataset_id == dataset.id,
                runs.c.status.in_(("admitted", "running")),
                runs.c.spec.is_not(None),
            )
        ).all()
        for run in live:
            spec = charge_spec(parse_mechanism(run.spec))
            costs = unit_costs(spec, orders, max_noise_levels=10**9)
            connection.execute(
                runs.update().where(runs.c.id == run.id).values(costs=costs.to_json())
            )
            if run.reservation == "plan":
                charged = min(run.epochs_charged, costs.units)
                needed = quanta.add(needed, costs.total(charged, costs.units))
        reserved = quanta.from_json(dataset.rdp_reserved)
        grown = tuple(
            None if s is None or n is None else max(s, n)
            for s, n in zip(reserved, needed, strict=True)
        )
        within = quanta.at_most(grown, quanta.from_json(dataset.capacity))
        alive = [bool(a) and ok for a, ok in zip(dataset.alive, within, strict=True)]
        connection.execute(
            datasets.update()
            .where(datasets.c.id == dataset.id)
            .values(rdp_reserved=quanta.to_json(grown), alive=alive)
        )


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("costs", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("idempotency_key", sa.String(200), nullable=True))
        batch.create_unique_constraint("uq_runs_idempotency_key", ["idempotency_key"])
    connection = op.get_bind()
    _convert_vectors(connection)
    _cover_runs_in_flight(connection)
    _, runs, _ = _tables()
    connection.execute(runs.update().where(runs.c.status == "running").values(status="admitted"))
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("epochs_charged")


def _float(value: int | None, *, up: bool) -> float | None:
    if value is None:
        return None
    nearest = value / (1 << _SCALE_BITS)
    exact = Fraction(value, 1 << _SCALE_BITS)
    if up and Fraction(nearest) < exact:
        return math.nextafter(nearest, math.inf)
    if not up and Fraction(nearest) > exact:
        return math.nextafter(nearest, -math.inf)
    return nearest


def downgrade() -> None:
    """Back to rounded floats (costs and sums up, capacities down) and a stored charged count."""
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("epochs_charged", sa.Integer(), nullable=False, server_default="0"))
    connection = op.get_bind()
    datasets, runs, entries = _tables()
    ledger = sa.table(
        "ledger_entries",
        sa.column("run_id", sa.Integer()),
        sa.column("kind", sa.String()),
        sa.column("epoch", sa.Integer()),
    )
    last = connection.execute(
        sa.select(ledger.c.run_id, sa.func.max(ledger.c.epoch))
        .where(ledger.c.kind == "charge")
        .group_by(ledger.c.run_id)
    ).all()
    for run_id, epoch in last:
        connection.execute(runs.update().where(runs.c.id == run_id).values(epochs_charged=epoch + 1))
        connection.execute(
            runs.update()
            .where(runs.c.id == run_id, runs.c.status == "admitted")
            .values(status="running")
        )
    for row in connection.execute(sa.select(entries.c.id, entries.c.rdp)).all():
        connection.execute(
            entries.update()
            .where(entries.c.id == row.id)
            .values(rdp=[_float(v, up=True) for v in row.rdp])
        )
    for row in connection.execute(sa.select(datasets)).all():
        connection.execute(
            datasets.update()
            .where(datasets.c.id == row.id)
            .values(
                capacity=[_float(v, up=False) for v in row.capacity],
                rdp_reserved=[_float(v, up=True) for v in row.rdp_reserved],
                rdp_committed=[_float(v, up=True) for v in row.rdp_committed],
            )
        )
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint("uq_runs_idempotency_key", type_="unique")
        batch.drop_column("idempotency_key")
        batch.drop_column("costs")
