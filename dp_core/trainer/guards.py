"""Data guards: refuse training data on which DP-SGD's per-record guarantee does not hold.

DP-SGD bounds the influence of one *training example* (Abadi et al. 2016). Its epsilon is a
statement about one *individual* only when each individual contributes one example:

* **Exact duplicates** (same features and label) are counted here; unless the user declares
  ``max_records_per_individual`` K (at least the largest group of copies), training is refused.
  With K declared, the run is accounted with group privacy for K (Mironov 2017, Proposition 2,
  :func:`dp_core.audit.group_privacy_rdp`; see :func:`group_epsilon`).
* **Resampled data** (SMOTE, random oversampling) is refused outright: a synthetic SMOTE point
  interpolates two real records, and an oversampled record appears several times, so one
  individual influences an unknown number of training examples and no K is known. Class
  weights in the loss (:func:`class_weighted_loss`) rebalance without touching the records, and
  so do per-class sampling rates (:mod:`dp_core.trainer.class_sampling`).

A dataset is flagged as resampled by an ``oversampled = True`` attribute (on the dataset or on
any of its tensors), or when its type comes from imbalanced-learn (``imblearn``) - detected by
module name, without importing imblearn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from dp_core.accountant import RdpAccountant
from dp_core.audit import group_privacy_rdp
from dp_core.conversion import rdp_to_epsilon
from dp_core.errors import CalibrationError, InvalidParameterError
from dp_core.mechanisms import SampledGaussianSchedule
from dp_core.rdp.compose import compute_rdp
from dp_core.rdp.orders import DEFAULT_ORDERS
from dp_core.schedules import NoiseSchedule
from dp_core.trainer.errors import TrainerError
from dp_core.trainer.per_sample import LossFn

__all__ = [
    "DuplicateRecordsError",
    "DuplicateReport",
    "ResampledDataError",
    "balanced_class_weights",
    "calibrate_group_noise_multiplier",
    "check_training_data",
    "class_weighted_loss",
    "find_duplicates",
    "group_epsilon",
    "is_resampled",
    "parse_class_weights",
]

SMOTE_MESSAGE = (
    "the training data is marked as resampled (oversampled=True or an imbalanced-learn sampler): "
    "SMOTE interpolates synthetic points between real records and oversampling repeats records, "
    "so one person influences several training examples and DP-SGD's per-record epsilon no "
    "longer holds for them; train on the original records and rebalance instead with a "
    "class-weighted loss (--class-weights balanced, or explicit weights), which keeps the "
    "guarantee, or with per-class Poisson sampling rates (--class-sample-rates CLASS:q,...), "
    "accounted per class: a record of class c gets the epsilon of q_c, the run that of max q_c"
)


class DuplicateRecordsError(TrainerError):
    """The training data holds exact duplicate records and no group size was declared."""

    code = "duplicate_records"


class ResampledDataError(TrainerError):
    """The training data was resampled (SMOTE, oversampling): per-record DP does not hold."""

    code = "resampled_data"


@dataclass(frozen=True)
class DuplicateReport:
    """Exact duplicates (same features and label) in a dataset.

    Attributes:
        records: Number of records.
        duplicated_records: Records that have at least one exact copy elsewhere.
        largest_group: The largest number of identical records (1: no duplicates).
        example: Indices of one group of identical records (empty when none).
    """

    records: int
    duplicated_records: int
    largest_group: int
    example: tuple[int, ...]


def _tensors(dataset: Dataset[Any]) -> tuple[Tensor, Tensor]:
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[0], dataset.tensors[1]
        return x, y
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return torch.stack([torch.as_tensor(x) for x, _ in items]), torch.as_tensor(
        [int(y) if torch.as_tensor(y).ndim == 0 else y for _, y in items]
    )


def find_duplicates(dataset: Dataset[Any]) -> DuplicateReport:
    """Find exact duplicate (features, label) records by comparing their bytes.

    Rows are compared exactly (``np.unique`` over the raw bytes of features and label), which
    is a hash-free, collision-free version of "hash the features and the label".
    """
    x, y = _tensors(dataset)
    n = int(x.shape[0])
    if n == 0:
        return DuplicateReport(0, 0, 1, ())
    features = np.ascontiguousarray(x.detach().cpu().reshape(n, -1).numpy()).view(np.uint8)
    labels = np.ascontiguousarray(y.detach().cpu().reshape(n, -1).numpy()).view(np.uint8)
    rows = np.ascontiguousarray(np.concatenate([features.reshape(n, -1), labels.reshape(n, -1)], 1))
    _, inverse, counts = np.unique(
        rows.view(np.dtype((np.void, rows.shape[1]))).ravel(),
        return_inverse=True,
        return_counts=True,
    )
    per_record = counts[inverse]
    largest = int(counts.max())
    example = tuple(int(i) for i in np.flatnonzero(inverse == int(np.argmax(counts)))[:5])
    return DuplicateReport(n, int((per_record > 1).sum()), largest, example if largest > 1 else ())


def is_resampled(dataset: object) -> bool:
    """Return whether ``dataset`` is flagged as resampled (see the module docstring)."""
    candidates = [dataset, *getattr(dataset, "tensors", ())]
    if any(getattr(obj, "oversampled", False) is True for obj in candidates):
        return True
    return any(type(obj).__module__.split(".")[0] == "imblearn" for obj in candidates)


def check_training_data(
    dataset: Dataset[Any], *, max_records_per_individual: int | None = None
) -> int:
    """Refuse resampled data and undeclared duplicates; return the group size K to account.

    Raises:
        ResampledDataError: if the data is flagged as resampled (always, whatever K).
        DuplicateRecordsError: if records repeat and K is not declared, or K is smaller than
            the largest group of identical records.
    """
    if is_resampled(dataset):
        raise ResampledDataError(SMOTE_MESSAGE)
    k = 1 if max_records_per_individual is None else max_records_per_individual
    if k < 1:
        raise InvalidParameterError("max_records_per_individual", k, "must be >= 1")
    report = find_duplicates(dataset)
    if report.largest_group > k:
        declared = (
            "deduplicate the records, or declare --max-records-per-individual K (K >= "
            f"{report.largest_group}) to be accounted with group privacy for K"
            if max_records_per_individual is None
            else f"--max-records-per-individual {k} is smaller than that"
        )
        raise DuplicateRecordsError(
            f"{report.duplicated_records} of {report.records} training records are exact "
            f"duplicates (up to {report.largest_group} identical copies, e.g. records "
            f"{', '.join(map(str, report.example))}); each copy is a separate example to DP-SGD, "
            f"so one individual's influence is multiplied: {declared}"
        )
    return k


def group_epsilon(mechanism: SampledGaussianSchedule, *, delta: float, group_size: int) -> float:
    """Return the epsilon at ``delta`` of ``mechanism`` for groups of ``group_size`` records.

    The mechanism's RDP on dp_core's default orders goes through
    :func:`dp_core.audit.group_privacy_rdp` (Mironov 2017, Proposition 2), then the usual
    RDP -> (epsilon, delta) conversion on the grid (no refinement between orders: a slightly
    larger, still valid, epsilon). K = 1 is the per-record epsilon, as the run reports it.
    """
    if group_size == 1:  # exactly what the run reports (the accountant refines the order)
        accountant = RdpAccountant()
        accountant.compose(mechanism)
        return float(accountant.get_epsilon(delta, warn=False).epsilon)
    rdp = compute_rdp(mechanism, DEFAULT_ORDERS)
    group = group_privacy_rdp(orders=DEFAULT_ORDERS, rdp=rdp, group_size=group_size)
    # warn=False: an optimum at the (shifted) grid's edge still gives a valid, if loose, bound.
    return float(
        rdp_to_epsilon(orders=group.orders, rdp=group.rdp, delta=delta, warn=False).epsilon
    )


def calibrate_group_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    group_size: int,
    schedule: str = "constant",
    decay_rate: float = 0.0,
) -> float:
    """Return a sigma (s0) whose group epsilon for K = ``group_size`` is <= ``target_epsilon``.

    Bisection on log sigma keeps the sufficient end of the bracket, so the result never
    overshoots the target (rounded toward privacy), to 1e-3 relative.

    Raises:
        CalibrationError: if no sigma in [1e-2, 1e4] meets the target.
    """

    def eps(sigma: float) -> float:
        mechanism = SampledGaussianSchedule(
            sample_rate=sample_rate,
            schedule=NoiseSchedule(kind=schedule, noise_multiplier=sigma, decay_rate=decay_rate),
            steps=steps,
        )
        return group_epsilon(mechanism, delta=delta, group_size=group_size)

    lo, hi = 1e-2, 1e4
    if eps(hi) > target_epsilon:
        raise CalibrationError(f"no noise multiplier <= {hi:g} meets epsilon {target_epsilon:g}")
    if eps(lo) <= target_epsilon:
        return lo
    while hi / lo > 1.001:  # invariant: eps(hi) <= target < eps(lo)
        mid = float(np.sqrt(lo * hi))
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def balanced_class_weights(labels: Tensor, num_classes: int) -> Tensor:
    """Return scikit-learn's "balanced" weights n / (k * n_c) (0 for an absent class).

    The class counts come from the training data: they are treated as public (like the label
    set). Pass explicit weights when the counts themselves are sensitive.
    """
    counts = torch.bincount(labels.long(), minlength=num_classes).double()
    weights = torch.where(counts > 0, labels.numel() / (num_classes * counts), 0.0)
    return weights.float()


def parse_class_weights(spec: str, labels: Tensor, num_classes: int) -> Tensor:
    """Parse ``balanced`` or a comma-separated list of ``num_classes`` non-negative weights."""
    if spec == "balanced":
        return balanced_class_weights(labels, num_classes)
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        raise InvalidParameterError(
            "class_weights", spec, "must be 'balanced' or comma-separated numbers"
        ) from None
    if len(values) != num_classes or not all(np.isfinite(v) and v >= 0 for v in values):
        raise InvalidParameterError(
            "class_weights", spec, f"needs {num_classes} finite non-negative weights"
        )
    return torch.tensor(values, dtype=torch.float32)


def class_weighted_loss(weights: Tensor) -> LossFn:
    """Return the batch mean of w[y_i] * cross_entropy_i (each example weighted, then clipped).

    Unlike ``F.cross_entropy(weight=...)``, which divides by the sum of the batch's weights (a
    quantity that mixes examples), this is a plain mean of per-example losses, as DP-SGD's
    per-example clipping needs: each example's gradient is still clipped to C, so the
    sensitivity, and the epsilon, are those of an unweighted run.
    """
    w = weights.detach().clone()

    def loss(output: Tensor, target: Tensor) -> Tensor:
        per_example = torch.nn.functional.cross_entropy(output, target, reduction="none")
        return (w.to(output.dtype)[target] * per_example).mean()

    return loss
