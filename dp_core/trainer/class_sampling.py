"""Per-class Poisson sampling rates: DP-friendly rebalancing, accounted class by class.

Each record of class c joins each logical batch independently with probability q_c (Poisson
sampling, as in :mod:`dp_core.trainer.sampling`, with one rate per class instead of one for all).
Raising a minority class's rate shows the model its examples more often without copying or
synthesizing any record, unlike oversampling or SMOTE.

Accounting, with add-or-remove-one adjacency. The rates are fixed before training (explicit) or
derived from class counts declared public (``balanced``): they do not depend on the record added
or removed. Adding a record x of class c to a dataset then changes each step's output exactly as
the Poisson-subsampled Gaussian at rate q_c does: x is in the batch with probability q_c,
independently of the other records, which are sampled as before, and its clipped gradient moves
the noisy sum by at most C (Mironov, Talwar & Zhang 2019, Sec. 3). So

* a record of class c has the epsilon of ``SampledGaussianSchedule(q_c, schedule, steps)``
  (:func:`epsilon_per_class`), and
* the run's dataset-level guarantee, which must hold for every record, is that of the largest
  rate q_max = max_c q_c, because the RDP of the sampled Gaussian is nondecreasing in q. With
  L = mu_1 / mu_0 the likelihood ratio of N(1, s^2) to N(0, s^2) (E_mu0[L] = 1), both Renyi
  divergences between the mixture (1-q) mu_0 + q mu_1 and mu_0 are (1/(alpha-1)) log g(q) with
  g(q) = E_mu0[h(1 + q(L - 1))] and h(x) = x^alpha or x^(1-alpha), convex for x > 0; so g is
  convex in q with g'(0) = h'(1) E_mu0[L - 1] = 0, hence nondecreasing on [0, 1]. (The
  numerical check is in tests/unit/dp_core/test_sampled_gaussian.py.) No class is worse off than
  the one at q_max, and the ledger is charged a dp_sgd mechanism with sample_rate = q_max.

Steps per epoch: the expected batch is B = sum_c q_c n_c, so one epoch is ceil(N / B) steps,
:func:`dp_core.epochs.steps_per_epoch` at the mean rate B / N (the ledger's one rule). Like N in
the usual rule, the class counts n_c enter the plan's step count only. The loss normalization
divides the noisy sum by B; the noise std is sigma * C whatever the rates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from dp_core.errors import InvalidParameterError
from dp_core.trainer.budget_gate import RunPlan
from dp_core.trainer.sampling import bernoulli_mask, steps_per_epoch

__all__ = [
    "BALANCED_NOTE",
    "ClassSampling",
    "class_counts",
    "class_poisson_batch",
    "dataset_labels",
    "epsilon_per_class",
    "parse_class_sample_rates",
]

#: What a ``balanced`` run says wherever it reports its rates (help, statement, summary, README).
BALANCED_NOTE = (
    "rates derived from the training data's class counts (balanced): the class counts are "
    "DECLARED PUBLIC; if they are sensitive, give explicit rates (CLASS:q,...) chosen without "
    "looking at the data"
)


@dataclass(frozen=True)
class ClassSampling:
    """Per-class Poisson rates and the class counts of the training data.

    Attributes:
        rates: q_c, indexed by class (every class has one, each in (0, 1]).
        counts: n_c, the training records of each class.
        from_class_counts: The rates were derived from ``counts`` (``balanced``), which are then
            declared public.
    """

    rates: tuple[float, ...]
    counts: tuple[int, ...]
    from_class_counts: bool = False

    def __post_init__(self) -> None:
        if len(self.rates) != len(self.counts) or not self.rates:
            raise InvalidParameterError(
                "class_sample_rates", self.rates, f"needs one rate per class ({len(self.counts)})"
            )
        for c, q in enumerate(self.rates):
            if not (math.isfinite(q) and 0.0 < q <= 1.0):
                raise InvalidParameterError(
                    "class_sample_rates", q, f"of class {c} must be in (0, 1]"
                )

    @property
    def max_rate(self) -> float:
        """q_max: the rate the run's (dataset-level) guarantee and the ledger's charge use."""
        return max(self.rates)

    @property
    def limiting_classes(self) -> tuple[int, ...]:
        """The classes sampled at q_max: they set the run's guarantee."""
        return tuple(c for c, q in enumerate(self.rates) if q == self.max_rate)

    @property
    def num_examples(self) -> int:
        """N, the training records."""
        return sum(self.counts)

    @property
    def expected_batch_size(self) -> float:
        """B = sum_c q_c n_c, the expected logical batch (the loss normalization)."""
        return math.fsum(q * n for q, n in zip(self.rates, self.counts, strict=True))

    @property
    def steps_per_epoch(self) -> int:
        """ceil(N / B): :func:`dp_core.epochs.steps_per_epoch` at the mean rate B / N."""
        n = self.num_examples
        if n == 0:
            raise InvalidParameterError("class_sample_rates", self.rates, "the dataset is empty")
        return steps_per_epoch(min(self.expected_batch_size / n, 1.0))

    def example_rates(self, labels: Tensor) -> Tensor:
        """Return each record's inclusion probability q_{y_i} (float64: the rates exactly)."""
        return torch.tensor(self.rates, dtype=torch.float64)[labels.long()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: rates, counts, expected batch, steps per epoch, the limiting classes."""
        return {
            "rates": list(self.rates),
            "class_counts": list(self.counts),
            "from_class_counts": self.from_class_counts,
            "expected_batch_size": self.expected_batch_size,
            "steps_per_epoch": self.steps_per_epoch,
            "limiting_classes": list(self.limiting_classes),
        }


def dataset_labels(dataset: Dataset[Any]) -> Tensor:
    """Return the integer label of every record (a ``TensorDataset``'s second tensor, else y)."""
    if isinstance(dataset, TensorDataset):
        labels = dataset.tensors[1]
    else:
        n = len(dataset)  # type: ignore[arg-type]
        labels = torch.as_tensor([int(dataset[i][1]) for i in range(n)])
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
        raise InvalidParameterError(
            "class_sample_rates", "given", "needs one integer class label per record"
        )
    if labels.numel() and int(labels.min()) < 0:
        raise InvalidParameterError("class_sample_rates", int(labels.min()), "labels must be >= 0")
    return labels.long()


def class_counts(labels: Tensor, num_classes: int) -> tuple[int, ...]:
    """Return n_c for c < ``num_classes``; a label >= ``num_classes`` has no rate: refused."""
    if labels.numel() and int(labels.max()) >= num_classes:
        raise InvalidParameterError(
            "class_sample_rates",
            num_classes,
            f"gives no rate for class {int(labels.max())}, which the training data holds",
        )
    return tuple(int(n) for n in torch.bincount(labels, minlength=num_classes).tolist())


def _balanced_rates(counts: Sequence[int], batch_size: int) -> tuple[float, ...]:
    """q_c = min(1, B / (K n_c)): each class contributes B / K records per step in expectation."""
    k = len(counts)
    for c, n in enumerate(counts):
        if n == 0:
            raise InvalidParameterError(
                "class_sample_rates",
                "balanced",
                f"class {c} has no training records; give explicit rates CLASS:q,...",
            )
    return tuple(min(1.0, batch_size / (k * n)) for n in counts)


def _explicit_rates(spec: str, num_classes: int) -> tuple[float, ...]:
    """Parse ``CLASS:q,CLASS:q,...``: every class 0..K-1 exactly once, each q in (0, 1]."""
    rates: dict[int, float] = {}
    for item in (part.strip() for part in spec.split(",")):
        name, sep, value = item.partition(":")
        try:
            c, q = int(name), float(value)
        except ValueError:
            c, q = -1, 0.0
        if not sep or c < 0:
            raise InvalidParameterError(
                "class_sample_rates", spec, "must be 'balanced' or CLASS:q,... (e.g. 0:0.02,1:0.1)"
            )
        if c >= num_classes:
            raise InvalidParameterError(
                "class_sample_rates", spec, f"names class {c}; the classes are 0..{num_classes - 1}"
            )
        if c in rates:
            raise InvalidParameterError("class_sample_rates", spec, f"gives class {c} twice")
        if not (math.isfinite(q) and 0.0 < q <= 1.0):
            raise InvalidParameterError(
                "class_sample_rates", spec, f"rate {value} of class {c} must be in (0, 1]"
            )
        rates[c] = q
    missing = [c for c in range(num_classes) if c not in rates]
    if missing:
        raise InvalidParameterError(
            "class_sample_rates",
            spec,
            f"gives no rate for class(es) {', '.join(map(str, missing))}: every class needs one",
        )
    return tuple(rates[c] for c in range(num_classes))


def parse_class_sample_rates(
    spec: str, *, labels: Tensor, num_classes: int, batch_size: int
) -> ClassSampling:
    """Parse ``--class-sample-rates``: ``CLASS:q,...`` (every class) or ``balanced``.

    ``balanced`` sets q_c = min(1, batch_size / (K n_c)) from the training data's class counts,
    which are then declared public (:data:`BALANCED_NOTE`); explicit rates are data-independent.

    Raises:
        InvalidParameterError: on a malformed spec, an unknown or repeated class, a class without
            a rate, a rate outside (0, 1], or (balanced) a class without records.
    """
    counts = class_counts(labels, num_classes)
    if spec.strip() == "balanced":
        if batch_size < 1:
            raise InvalidParameterError("batch_size", batch_size, "must be >= 1")
        return ClassSampling(_balanced_rates(counts, batch_size), counts, from_class_counts=True)
    return ClassSampling(_explicit_rates(spec, num_classes), counts)


def class_poisson_batch(example_rates: Tensor, generator: torch.Generator) -> Tensor:
    """Return the (sorted) indices of a Poisson sample: record i kept with ``example_rates[i]``.

    With every rate equal to q this draws exactly what :func:`~dp_core.trainer.sampling.
    poisson_batch` draws at q (one uniform per record, compared with its rate).
    """
    mask = bernoulli_mask(example_rates, example_rates.numel(), generator)
    return mask.nonzero(as_tuple=True)[0]


def epsilon_per_class(plan: RunPlan, epochs: int) -> tuple[float, ...]:
    """Return each class's per-record epsilon after ``epochs`` epochs (RDP, at the plan's delta).

    Class c's records are subject to the plan's mechanism at rate q_c instead of q_max (see the
    module docstring); the largest of these is the plan's own epsilon.
    """
    if plan.class_sample_rates is None:
        raise InvalidParameterError("class_sample_rates", None, "the plan has no per-class rates")
    by_rate: dict[float, float] = {}
    for q in plan.class_sample_rates:
        if q not in by_rate:
            by_rate[q] = replace(plan, sample_rate=q, class_sample_rates=None).epsilon(epochs)
    return tuple(by_rate[q] for q in plan.class_sample_rates)
