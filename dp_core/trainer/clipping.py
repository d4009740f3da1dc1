"""Per-example clipping and the sum of clipped gradients (Abadi et al. 2016, Algorithm 1).

Each example's *whole* gradient g_i (all parameters together) is scaled by
min(1, C / ||g_i||_2), so its L2 norm is at most C = ``max_grad_norm``; only the sum of the
clipped gradients leaves this module. Two engines compute that sum:

* :class:`FuncEngine` materialises per-example gradients with ``torch.func`` (any model vmap
  handles), and also serves TF Privacy's microbatches;
* :class:`~dp_core.trainer.bookkeeping.BookkeepingEngine` never materialises them for Linear and
  Conv2d layers (Bu et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from dp_core.trainer.per_sample import LossFn, per_sample_gradients, trainable_parameters

__all__ = [
    "CLIP_EPS",
    "ClippedSum",
    "FuncEngine",
    "GradientEngine",
    "MicrobatchAccumulator",
    "clip_factors",
    "count_correct",
]

CLIP_EPS = 1e-6
"""Added to each norm before dividing, so that a zero gradient does not divide by zero."""


def clip_factors(norms: Tensor, max_grad_norm: float) -> Tensor:
    """Return min(1, C / (||g_i|| + 1e-6)) per example (Abadi et al. 2016, Algorithm 1, 'Clip')."""
    return (max_grad_norm / (norms + CLIP_EPS)).clamp(max=1.0)


def count_correct(outputs: Tensor, targets: Tensor) -> int:
    """Return how many argmax predictions equal the targets (0 unless a classification batch)."""
    if outputs.ndim != 2 or targets.ndim != 1 or targets.is_floating_point():
        return 0
    return int((outputs.argmax(dim=1) == targets).sum())


@dataclass
class ClippedSum:
    """What one physical batch contributes to a DP-SGD step.

    Attributes:
        grads: Sum over the batch of clipped per-example gradients, one tensor per trainable
            parameter (in ``named_parameters`` order).
        norms: Per-example gradient norms before clipping, shape ``[B]``.
        loss_sum: Sum of the per-example losses.
        correct: Number of correct argmax predictions (classification only, else 0).
    """

    grads: list[Tensor]
    norms: Tensor
    loss_sum: float
    correct: int


class GradientEngine(Protocol):
    """Computes the sum of clipped per-example gradients of one physical batch."""

    def clipped_sum(self, inputs: Tensor, targets: Tensor, max_grad_norm: float) -> ClippedSum:
        """Return the clipped sum of the batch's per-example gradients."""
        ...


def _flat_norms(grads: list[Tensor]) -> Tensor:
    squares = [g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in grads]
    return torch.stack(squares).sum(dim=0).sqrt()


class FuncEngine:
    """Clipped sums from materialised per-example gradients (``torch.func``)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        """Bind the engine to a model and a mean-reduced loss."""
        self.model = model
        self.loss_fn = loss_fn

    def per_sample(self, inputs: Tensor, targets: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """Return per-example gradients (list aligned with trainable params), losses, outputs."""
        result = per_sample_gradients(self.model, self.loss_fn, inputs, targets)
        names = trainable_parameters(self.model)
        return [result.grads[n] for n in names], result.losses, result.outputs

    def clipped_sum(self, inputs: Tensor, targets: Tensor, max_grad_norm: float) -> ClippedSum:
        """Return the clipped sum of the batch's per-example gradients."""
        grads, losses, outputs = self.per_sample(inputs, targets)
        norms = _flat_norms(grads)
        factors = clip_factors(norms, max_grad_norm)
        summed = [torch.einsum("b,b...->...", factors, g) for g in grads]
        return ClippedSum(summed, norms, float(losses.sum()), count_correct(outputs, targets))


class MicrobatchAccumulator:
    """TF Privacy's microbatches on Poisson batches: clip the *mean* gradient of each microbatch.

    Each sampled example is put in one of M microbatches uniformly at random, independently of
    the data. Adding or removing one example then changes one microbatch mean, and both the old
    and the new clipped means have norm <= C, so the sum of clipped means has L2 sensitivity
    2C (C when every microbatch holds one example). The trainer scales the noise accordingly
    (see :data:`MICROBATCH_SENSITIVITY`), so the accounted noise multiplier stays sigma. TF
    Privacy adds noise for sensitivity C, which under add/remove adjacency understates it.
    """

    def __init__(self, engine: FuncEngine, num_microbatches: int) -> None:
        """Start empty sums for ``num_microbatches`` microbatches."""
        self.engine = engine
        self.num_microbatches = num_microbatches
        self.sums: list[Tensor] | None = None
        self.counts = torch.zeros(num_microbatches)
        self.loss_sum = 0.0
        self.correct = 0

    def add(self, inputs: Tensor, targets: Tensor, assignment: Tensor) -> None:
        """Add a physical batch whose examples go to microbatches ``assignment`` (shape [B])."""
        grads, losses, outputs = self.engine.per_sample(inputs, targets)
        if self.sums is None:
            self.sums = [g.new_zeros((self.num_microbatches, *g.shape[1:])) for g in grads]
        for total, g in zip(self.sums, grads, strict=True):
            total.index_add_(0, assignment, g)
        self.counts.index_add_(0, assignment, torch.ones(assignment.shape[0]))
        self.loss_sum += float(losses.sum())
        self.correct += count_correct(outputs, targets)

    def clipped_sum(self, max_grad_norm: float) -> tuple[list[Tensor], Tensor, Tensor]:
        """Return (sum of clipped non-empty microbatch means, their norms, non-empty mask)."""
        if self.sums is None:
            raise RuntimeError("no example was added")
        nonempty = self.counts > 0
        means = [s / self.counts.clamp(min=1).reshape(-1, *([1] * (s.ndim - 1))) for s in self.sums]
        norms = _flat_norms(means)
        factors = clip_factors(norms, max_grad_norm) * nonempty
        summed = [torch.einsum("m,m...->...", factors.to(m.dtype), m) for m in means]
        return summed, norms[nonempty], nonempty


MICROBATCH_SENSITIVITY = 2.0
"""L2 sensitivity of a sum of clipped microbatch means, in units of C (see MicrobatchAccumulator)."""
