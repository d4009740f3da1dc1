"""Datasets: creation (fixing the filter's grid and capacity), lookup and the row lock."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth import Principal
from app.db import read_transaction, write_transaction
from app.errors import (
    DatasetExistsError,
    InvalidInputError,
    NotFoundError,
)
from app.ledger import approx, budget
from app.ledger.approx import filter_target
from app.ledger.budget import BudgetState
from app.models import Dataset
from app.schemas import (
    ApproxDpBudget,
    DatasetCreate,
    DatasetList,
    DatasetRead,
    PrivacyUnit,
    Role,
)
from app.services.accounting import DEFAULT_FILTER_ORDERS, filter_capacity

_WEIGHT_SUM_TOLERANCE = 1e-6


def dataset_to_read(dataset: Dataset) -> DatasetRead:
    """Return the API view of a dataset, with its headline budget numbers."""
    numbers = headline(dataset)
    return DatasetRead(
        name=dataset.name,
        description=dataset.description,
        target_epsilon=dataset.target_epsilon,
        target_delta=dataset.target_delta,
        orders=list(dataset.orders),
        weights=list(dataset.weights),
        approx_dp=approx_dp_budget(dataset),
        epsilon_spent=finite(numbers.spent),
        epsilon_remaining=numbers.remaining,
        created_at=dataset.created_at,
        privacy_unit=privacy_unit_of(dataset),
        neighbouring_relation=relation_of(dataset),
    )


def relation_of(dataset: Dataset) -> Literal["add_remove", "replace_one"] | None:
    """Return the dataset's neighbouring relation (None before its first admitted run)."""
    relation = dataset.neighbouring_relation
    if relation is None:
        return None
    return "replace_one" if relation == "replace_one" else "add_remove"


def finite(value: float) -> float | None:
    """Return ``value``, or None (JSON null) when it is infinite."""
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Headline:
    """A dataset's headline epsilons (see BudgetRead): spent, reserved on top, remaining."""

    spent: float
    reserved: float
    remaining: float


def headline(dataset: Dataset) -> Headline:
    """Return the headline numbers: the one definition behind the API, dashboard, metrics, CLI.

    spent = the filter epsilon of the charges + the black-box releases' epsilon; reserved = what
    open reservations add; remaining = what the filter still admits (>= 0).
    """
    state = budget_state(dataset)
    return Headline(
        spent=budget.epsilon_spent(state) + dataset.approx_epsilon_spent,
        reserved=budget.epsilon_reserved(state),
        remaining=budget.epsilon_remaining(state),
    )


def approx_dp_budget(dataset: Dataset) -> ApproxDpBudget:
    """Return the dataset's approximate-DP sub-budget and its spend."""
    return ApproxDpBudget(
        epsilon=dataset.approx_epsilon,
        delta=dataset.approx_delta,
        epsilon_spent=dataset.approx_epsilon_spent,
        delta_spent=dataset.approx_delta_spent,
        epsilon_remaining=approx.part_remaining(
            budget=dataset.approx_epsilon, spent=dataset.approx_epsilon_spent
        ),
    )


def budget_state(dataset: Dataset) -> BudgetState:
    """Return the dataset's budget state (:mod:`app.ledger.budget`)."""
    epsilon, _ = filter_target(
        target_epsilon=dataset.target_epsilon,
        target_delta=dataset.target_delta,
        approx_epsilon=dataset.approx_epsilon,
        approx_delta=dataset.approx_delta,
    )
    return BudgetState(
        target_epsilon=epsilon,
        capacity=dataset.capacity,
        reserved=dataset.rdp_reserved,
        committed=dataset.rdp_committed,
        alive=tuple(bool(flag) for flag in dataset.alive),
    )


def store_budget_state(dataset: Dataset, state: BudgetState) -> None:
    """Write a new budget state back onto the dataset row (capacity and target never change)."""
    dataset.rdp_reserved = state.reserved
    dataset.rdp_committed = state.committed
    dataset.alive = list(state.alive)


def _grid(body: DatasetCreate) -> tuple[list[float], list[float]]:
    """Validate and sort the filter's orders and weights; weights are normalised to sum to 1."""
    orders = list(DEFAULT_FILTER_ORDERS) if body.orders is None else list(body.orders)
    if len(set(orders)) != len(orders):
        raise InvalidInputError("orders must be distinct", parameter="orders")
    weights = [1.0 / len(orders)] * len(orders) if body.weights is None else list(body.weights)
    if len(weights) != len(orders):
        raise InvalidInputError(
            f"weights has {len(weights)} values for {len(orders)} orders", parameter="weights"
        )
    total = math.fsum(weights)
    if abs(total - 1.0) > _WEIGHT_SUM_TOLERANCE:
        raise InvalidInputError(
            f"weights must sum to 1 (they sum to {total:g})", parameter="weights"
        )
    # Normalise, then nudge each weight down so the deltas never add up to more than delta_G.
    normalised = [float(np.nextafter(w / total, 0.0)) for w in weights]
    pairs = sorted(zip(orders, normalised, strict=True))
    return [a for a, _ in pairs], [w for _, w in pairs]


def _check_sub_budget(body: DatasetCreate) -> None:
    """The approximate-DP part must leave the filter a positive epsilon and delta."""
    if body.approx_dp_epsilon >= body.target_epsilon:
        raise InvalidInputError(
            "approx_dp_epsilon must be below target_epsilon", parameter="approx_dp_epsilon"
        )
    if body.approx_dp_delta >= body.target_delta:
        raise InvalidInputError(
            "approx_dp_delta must be below target_delta", parameter="approx_dp_delta"
        )


def create_dataset(session: Session, body: DatasetCreate, principal: Principal) -> DatasetRead:
    """Create a dataset with an empty ledger and every order of its grid alive."""
    principal.require_admin()
    orders, weights = _grid(body)
    _check_sub_budget(body)
    # Basic composition of the two parts (Dwork & Roth 2014, Thm. 3.16), valid when their
    # requests interleave adaptively as both are filters (Rogers et al. 2016; concurrent
    # composition: Vadhan & Wang 2021, Lyu 2022).
    epsilon, delta = filter_target(
        target_epsilon=body.target_epsilon,
        target_delta=body.target_delta,
        approx_epsilon=body.approx_dp_epsilon,
        approx_delta=body.approx_dp_delta,
    )
    capacity = filter_capacity(
        orders=orders, weights=weights, target_epsilon=epsilon, target_delta=delta
    )
    start = BudgetState.empty(target_epsilon=epsilon, capacity=capacity)
    if not start.usable:
        raise InvalidInputError(
            f"no order of the grid can hold any RDP at target_epsilon {epsilon:g} and"
            f" target_delta {delta:g}: at every order the conversion to (epsilon, delta) alone"
            " exceeds the target (orders near 1 need a large epsilon); use larger orders",
            parameter="orders",
        )
    dataset = Dataset(
        name=body.name,
        description=body.description,
        target_epsilon=body.target_epsilon,
        target_delta=body.target_delta,
        orders=orders,
        weights=weights,
        capacity=capacity,
        rdp_reserved=start.reserved,
        rdp_committed=start.committed,
        alive=list(start.alive),
        approx_epsilon=body.approx_dp_epsilon,
        approx_delta=body.approx_dp_delta,
        approx_epsilon_spent=0.0,
        approx_delta_spent=0.0,
        privacy_unit=body.privacy_unit,
        created_by=principal.actor,
    )
    try:
        with write_transaction(session):
            if session.scalar(select(Dataset.id).where(Dataset.name == body.name)) is not None:
                raise DatasetExistsError(f"dataset {body.name!r} already exists")
            session.add(dataset)
    except IntegrityError as error:  # a concurrent create of the same name won the race
        raise DatasetExistsError(f"dataset {body.name!r} already exists") from error
    return dataset_to_read(dataset)


def privacy_unit_of(dataset: Dataset) -> PrivacyUnit:
    """Return the dataset's privacy unit ("example" for rows made before the column existed)."""
    return "user" if dataset.privacy_unit == "user" else "example"


def find_dataset(session: Session, name: str) -> Dataset:
    """Return the dataset called ``name`` or raise NotFoundError."""
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        raise NotFoundError(f"no dataset {name!r}")
    return dataset


def lock_dataset(session: Session, dataset_id: int) -> Dataset:
    """Return the dataset row, locked until the transaction ends.

    PostgreSQL: ``SELECT ... FOR UPDATE``. SQLite ignores FOR UPDATE; its write transactions
    already hold the database's write lock (``BEGIN IMMEDIATE``, see :mod:`app.db`).
    """
    dataset = session.scalar(
        select(Dataset)
        .where(Dataset.id == dataset_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if dataset is None:
        raise NotFoundError(f"no dataset with id {dataset_id}")
    return dataset


def get_dataset(session: Session, name: str, principal: Principal) -> DatasetRead:
    """Return one dataset."""
    principal.require_dataset_read(name)
    with read_transaction(session):
        return dataset_to_read(find_dataset(session, name))


def list_datasets(
    session: Session, principal: Principal, *, limit: int, offset: int
) -> DatasetList:
    """Return a page of the datasets this caller may read, by name."""
    query = select(Dataset)
    if principal.role is Role.trainer:
        query = query.where(Dataset.name.in_(sorted(principal.datasets)))
    with read_transaction(session):
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(query.order_by(Dataset.name).limit(limit).offset(offset)).all()
        return DatasetList(items=[dataset_to_read(row) for row in rows], total=total)
