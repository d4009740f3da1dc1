"""What a run plans to execute, and what each of its units costs (computed once, at admission).

Three kinds of plans share one interface: ``units`` (how many charges), ``mechanism(start, stop)``
(the dp_core record of units [start, stop), stored with each ledger entry) and
:func:`unit_costs` (each unit's RDP cost, rounded toward privacy).

* :class:`RunSpec`: DP-SGD with Poisson sampling; a unit is an epoch of ``steps_per_epoch`` steps.
* :class:`PateSpec`: PATE noisy-max answers; a unit is a batch of ``batch_size`` queries (the last
  may be smaller).
* :class:`ReleaseSpec`: one Laplace or Gaussian release; a single unit.
* :class:`FedAvgSpec`: user-level DP-FedAvg; a unit is a round of client sampling.

Costs are computed from closed forms wherever units repeat: composition adds RDP (Mironov 2017,
Prop. 1), so ``k`` identical steps or queries cost exactly ``k`` times one, and the one is
rounded up before it is multiplied (exactly, in quanta). Only a decaying schedule needs one
evaluation per epoch, bounded by ``max_noise_levels`` (its steps, each at its own sigma).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeAlias

import numpy as np

from app.errors import InvalidInputError
from app.ledger import quanta
from app.ledger.costs import UnitCosts
from app.ledger.rounding import cost_up
from dp_core.federated import DpFedAvgRounds
from dp_core.mechanisms import Composed, Gaussian, Laplace, SampledGaussianSchedule
from dp_core.pate import PateMechanism as PateQueries
from dp_core.pate import pate_mechanism
from dp_core.rdp.compose import compute_rdp
from dp_core.schedules import NoiseSchedule


def _rdp(mechanism: object, orders: tuple[float, ...]) -> np.ndarray:
    return np.asarray(compute_rdp(mechanism, np.asarray(orders, dtype=np.float64)))


@dataclass(frozen=True)
class RunSpec:
    """DP-SGD with Poisson sampling at ``sample_rate`` and a noise schedule; units are epochs."""

    sample_rate: float
    steps_per_epoch: int
    epochs: int
    schedule: NoiseSchedule

    @property
    def units(self) -> int:
        """The planned number of epochs."""
        return self.epochs

    def mechanism(self, start: int, stop: int) -> SampledGaussianSchedule:
        """Return the mechanism of epochs [start, stop)."""
        return SampledGaussianSchedule(
            sample_rate=self.sample_rate,
            schedule=self.schedule,
            steps=self.steps_per_epoch * (stop - start),
            start_step=self.steps_per_epoch * start,
        )

    def noise_levels(self) -> int:
        """How many per-step evaluations the plan's cost needs (1 for constant noise)."""
        return 1 if self.schedule.is_constant else self.steps_per_epoch * self.epochs

    def costs(self, orders: tuple[float, ...]) -> UnitCosts:
        """Return each epoch's cost (constant noise: one step's cost times the steps)."""
        if self.schedule.is_constant:
            step = cost_up(_one_step(self, orders))
            return UnitCosts.uniform(quanta.scale(step, self.steps_per_epoch), self.epochs)
        return UnitCosts.from_units(
            [cost_up(_rdp(self.mechanism(e, e + 1), orders)) for e in range(self.epochs)]
        )


def _one_step(spec: RunSpec, orders: tuple[float, ...]) -> np.ndarray:
    single = SampledGaussianSchedule(
        sample_rate=spec.sample_rate, schedule=spec.schedule, steps=1, start_step=0
    )
    return _rdp(single, orders)


@dataclass(frozen=True)
class PateSpec:
    """PATE: ``queries`` noisy-max answers, charged in batches of ``batch_size`` (the last smaller)."""

    aggregator: str
    noise_multiplier: float
    queries: int
    batch_size: int

    @property
    def units(self) -> int:
        """The number of batches."""
        return -(-self.queries // self.batch_size)

    def mechanism(self, start: int, stop: int) -> PateQueries:
        """Return the record of the queries of batches [start, stop)."""
        last = min(stop * self.batch_size, self.queries)
        return pate_mechanism(
            self.aggregator,
            noise_multiplier=self.noise_multiplier,
            queries=max(0, last - start * self.batch_size),
        )

    def noise_levels(self) -> int:
        """One: every query has the same noise."""
        return 1

    def costs(self, orders: tuple[float, ...]) -> UnitCosts:
        """Return each batch's cost: batch_size times one query's (the last: the remainder)."""
        query = cost_up(_rdp(_one_query(self), orders))
        full, rest = divmod(self.queries, self.batch_size)
        segments: list[tuple[int, quanta.Vec]] = []
        if full:
            segments.append((full, quanta.scale(query, self.batch_size)))
        if rest:
            segments.append((1, quanta.scale(query, rest)))
        return UnitCosts(tuple(segments))


def _one_query(spec: PateSpec) -> PateQueries:
    return pate_mechanism(spec.aggregator, noise_multiplier=spec.noise_multiplier, queries=1)


@dataclass(frozen=True)
class ReleaseSpec:
    """One noisy release of a statistic: a single unit of charge."""

    release: Gaussian | Laplace

    @property
    def units(self) -> int:
        """One."""
        return 1

    def mechanism(self, start: int, stop: int) -> Gaussian | Laplace | Composed:
        """Return the release for [0, 1), nothing for an empty range."""
        return self.release if start < stop else Composed(())

    def noise_levels(self) -> int:
        """One."""
        return 1

    def costs(self, orders: tuple[float, ...]) -> UnitCosts:
        """Return the release's cost."""
        return UnitCosts.uniform(cost_up(_rdp(self.release, orders)), 1)


@dataclass(frozen=True)
class FedAvgSpec:
    """User-level DP-FedAvg; a unit is one round (:class:`dp_core.federated.DpFedAvgRounds`)."""

    rounds_record: DpFedAvgRounds

    @property
    def units(self) -> int:
        """The planned number of rounds."""
        return self.rounds_record.rounds

    def mechanism(self, start: int, stop: int) -> DpFedAvgRounds:
        """Return the record of rounds [start, stop)."""
        return replace(self.rounds_record, rounds=max(0, stop - start))

    def noise_levels(self) -> int:
        """One: every round has the same noise."""
        return 1

    def costs(self, orders: tuple[float, ...]) -> UnitCosts:
        """Return each round's cost: one round's RDP, rounded up, for every round."""
        one = cost_up(_rdp(self.mechanism(0, 1), orders))
        return UnitCosts.uniform(one, self.units)


ChargeSpec: TypeAlias = RunSpec | PateSpec | ReleaseSpec | FedAvgSpec


def unit_costs(spec: ChargeSpec, orders: tuple[float, ...], *, max_noise_levels: int) -> UnitCosts:
    """Return the plan's per-unit costs, refusing plans whose accounting would be too costly.

    Raises:
        InvalidInputError: when the plan needs more than ``max_noise_levels`` evaluations (a
            decaying schedule over too many steps); constant noise never does.
    """
    levels = spec.noise_levels()
    if levels > max_noise_levels:
        raise InvalidInputError(
            f"a decaying noise schedule over {levels} steps exceeds the limit of"
            f" {max_noise_levels} noise levels per run (setting DPLEDGER_MAX_NOISE_LEVELS);"
            " use fewer steps or a step schedule",
            parameter="noise",
        )
    return spec.costs(orders)
