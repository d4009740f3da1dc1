"""What a run plans to execute, and what each of its units costs (computed once, at admission).

Three kinds of plans share one interface: ``units`` (how many charges), ``mechanism(start, stop)``
(the dp_core record of units [start, stop), stored with each ledger entry) and
:func:`unit_costs` (each unit's RDP cost, rounded toward privacy).

* :class:`RunSpec`: DP-SGD with Poisson sampling; a unit is an epoch of ``steps_per_epoch`` steps.
  With ``group_size`` K > 1 (individuals with up to K records) each epoch costs its group RDP
  (:func:`dp_core.group.group_order_map`, Mironov 2017, Prop. 2); the stored ledger entry's
  mechanism stays the per-record one, the run's stored mechanism carries K.
* :class:`PateSpec`: PATE noisy-max answers; a unit is a batch of ``batch_size`` queries (the last
  may be smaller).
* :class:`ReleaseSpec`: one Laplace or Gaussian release; a single unit.
* :class:`TuningSpec`: private hyperparameter tuning over a DP-SGD base (Papernot & Steinke 2022);
  a single unit, the whole job (its RDP bound is not a sum over candidates, so it is charged
  once, before the first candidate trains).
* :class:`FedAvgSpec`: user-level DP-FedAvg; a unit is a round of client sampling.

Costs are computed from closed forms wherever units repeat: composition adds RDP (Mironov 2017,
Prop. 1), so ``k`` identical steps or queries cost exactly ``k`` times one, and the one is
rounded up before it is multiplied (exactly, in quanta). Only a decaying schedule needs one
evaluation per epoch, bounded by ``max_noise_levels`` (its steps, each at its own sigma).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeAlias

import numpy as np

from app.errors import InvalidInputError
from app.ledger import quanta
from app.ledger.costs import UnitCosts
from app.ledger.rounding import cost_up
from dp_core.federated import DpFedAvgRounds
from dp_core.group import MAX_GROUP_ORDER as DP_CORE_MAX_GROUP_ORDER
from dp_core.group import group_exponent, group_order_map
from dp_core.mechanisms import (
    Composed,
    Gaussian,
    Grouped,
    Laplace,
    SampledGaussianSchedule,
    Tuning,
)
from dp_core.pate import PateMechanism as PateQueries
from dp_core.pate import pate_mechanism
from dp_core.rdp.compose import compute_rdp
from dp_core.rdp.sampled_gaussian import rdp_sampled_gaussian_matrix
from dp_core.schedules import NoiseSchedule

#: Default of the setting DPLEDGER_MAX_NOISE_LEVELS: per-step evaluations one request may cost
#: (issue 21, on the loaded 2-core CI machine: an admission at the limit measured 1.25 s of CPU
#: at 25,000 and 0.9-1.2 s at 16,000; 12,000 keeps it, and searches at half, under 1 s).
DEFAULT_MAX_NOISE_LEVELS = 12_000


def _rdp(mechanism: object, orders: tuple[float, ...]) -> np.ndarray:
    return np.asarray(compute_rdp(mechanism, np.asarray(orders, dtype=np.float64)))


@dataclass(frozen=True)
class RunSpec:
    """DP-SGD with Poisson sampling at ``sample_rate`` and a noise schedule; units are epochs."""

    sample_rate: float
    steps_per_epoch: int
    epochs: int
    schedule: NoiseSchedule
    group_size: int = 1

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

    def grouped_mechanism(self, start: int, stop: int) -> SampledGaussianSchedule | Grouped:
        """Return epochs [start, stop) as they protect an individual: grouped when K > 1."""
        inner = self.mechanism(start, stop)
        return inner if self.group_size == 1 else Grouped(records=self.group_size, inner=inner)

    def noise_levels(self) -> int:
        """How many per-step evaluations the plan's cost needs (1 for constant noise).

        A group of K <= 2^c records reads the curve at orders 2^c times higher, and an
        evaluation's work grows with the order, so a grouped decaying plan counts 2^c per step.
        """
        if self.schedule.is_constant:
            return 1
        doublings: int = group_exponent(self.group_size)
        return self.steps_per_epoch * self.epochs * (1 << doublings)

    def costs(self, orders: tuple[float, ...]) -> UnitCosts:
        """Return each epoch's cost (constant noise: one step's cost times the steps)."""
        if self.schedule.is_constant:
            step = cost_up(self._for_group(orders, lambda a: _rdp(_one_step(self), a)))
            return UnitCosts.uniform(quanta.scale(step, self.steps_per_epoch), self.epochs)
        return UnitCosts.from_units(
            [cost_up(row) for row in self._for_group(orders, self._epoch_rdp)]
        )

    def _for_group(
        self, orders: tuple[float, ...], evaluate: Callable[[tuple[float, ...]], np.ndarray]
    ) -> np.ndarray:
        """Return ``evaluate(orders)`` for groups of ``group_size`` records (K = 1: as it is).

        ``evaluate`` gives RDP values with the orders on the last axis. For K > 1 it is read at
        the orders :func:`dp_core.group.group_order_map` names and scaled by 3^c (Mironov 2017,
        Prop. 2); the transform is linear in the RDP, so applying it per step or per epoch and
        adding is the transform of the whole run. Orders past ``MAX_GROUP_ORDER`` cost +inf.
        """
        if self.group_size == 1:
            return evaluate(orders)
        group = group_order_map(
            orders=np.asarray(orders, dtype=np.float64),
            records_per_user=self.group_size,
            max_order=MAX_GROUP_ORDER,
        )
        inside = tuple(float(a) for a in group.orders[group.inside])
        # With no order inside the limit, one cheap evaluation only gives the result's shape.
        values = np.asarray(evaluate(inside or (2.0,)))
        result = np.full((*values.shape[:-1], len(orders)), np.inf)
        if inside:
            result[..., group.inside] = group.factor * values
        return result

    def _epoch_rdp(self, orders: tuple[float, ...]) -> np.ndarray:
        """Return each epoch's RDP: per-step values of the exact evaluator, summed per epoch.

        One evaluation per distinct sigma of the whole run (at most ``noise_levels()``), then
        exact per-step lookups; float summation adds at most steps_per_epoch * 2^-53 relative
        error, far inside the rounding margin.
        """
        steps = self.steps_per_epoch * self.epochs
        sigmas = self.schedule.noise_multipliers(0, steps)
        distinct, index = np.unique(sigmas, return_inverse=True)
        table = rdp_sampled_gaussian_matrix(
            sample_rate=self.sample_rate,
            noise_multipliers=distinct,
            orders=np.asarray(orders, dtype=np.float64),
        )
        starts = np.arange(0, steps, self.steps_per_epoch)
        return np.add.reduceat(table[index.reshape(-1)], starts, axis=0)


#: Orders 2^c beta above this are not evaluated for a group (their cost is +inf: that order of
#: the dataset's filter is then out of reach for the run, never under-charged). The same limit
#: as dp_core's rule for :class:`dp_core.mechanisms.Grouped`, so both read the same bound.
MAX_GROUP_ORDER = DP_CORE_MAX_GROUP_ORDER


def _one_step(spec: RunSpec) -> SampledGaussianSchedule:
    return SampledGaussianSchedule(
        sample_rate=spec.sample_rate, schedule=spec.schedule, steps=1, start_step=0
    )


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
class TuningSpec:
    """Hyperparameter tuning: a random number of DP-SGD runs bounded by ``base``; one unit.

    Papernot & Steinke 2022 bound the whole job's RDP (their Thm. 2: truncated negative binomial;
    Thm. 6: Poisson) by the base's RDP plus a penalty and log(E[K])/(lambda - 1); the bound holds
    for the job as a whole, not repetition by repetition (the number of repetitions is secret and
    random), so the job is one unit of charge, admitted and charged up front.
    """

    base: RunSpec
    candidates: int
    distribution: str
    eta: float
    gamma: float
    mu: float

    @property
    def units(self) -> int:
        """One: the whole job."""
        return 1

    def mechanism(self, start: int, stop: int) -> Tuning | Composed:
        """Return the tuning job for [0, 1), nothing for an empty range."""
        if start >= stop:
            return Composed(())
        # The base as it protects an individual (grouped when K > 1): the tuning bound is then
        # stated for the same neighbouring relation as the base (Papernot & Steinke's theorems
        # hold for any relation under which the base is RDP).
        return Tuning(
            base=self.base.grouped_mechanism(0, self.base.epochs),
            distribution=self.distribution,
            eta=self.eta,
            gamma=self.gamma,
            mu=self.mu,
        )

    def noise_levels(self) -> int:
        """As the base run's (one per step of a decaying schedule)."""
        return self.base.noise_levels()

    def costs(self, orders: tuple[float, ...]) -> UnitCosts:
        """Return the job's cost: the tuning RDP bound at each order, rounded up."""
        return UnitCosts.uniform(cost_up(_rdp(self.mechanism(0, 1), orders)), 1)


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


ChargeSpec: TypeAlias = RunSpec | PateSpec | ReleaseSpec | TuningSpec | FedAvgSpec


def unit_costs(spec: ChargeSpec, orders: tuple[float, ...], *, max_noise_levels: int) -> UnitCosts:
    """Return the plan's per-unit costs, refusing plans whose accounting would be too costly.

    Raises:
        InvalidInputError: when the plan needs more than ``max_noise_levels`` evaluations (a
            decaying schedule over too many steps); constant noise never does.
    """
    levels = spec.noise_levels()
    if levels > max_noise_levels:
        raise InvalidInputError(
            f"a decaying noise schedule needing {levels} noise-level evaluations (one per step,"
            " 2^c per step for groups of up to 2^c records) exceeds the limit of"
            f" {max_noise_levels} noise levels per run (setting DPLEDGER_MAX_NOISE_LEVELS);"
            " use fewer steps or a step schedule",
            parameter="noise",
        )
    return spec.costs(orders)
