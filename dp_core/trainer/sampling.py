"""Poisson sampling of logical batches and their split into bounded physical batches.

The RDP analysis of the sampled Gaussian mechanism (Mironov, Talwar & Zhang 2019, "Renyi
Differential Privacy of the Sampled Gaussian Mechanism") assumes each example joins each batch
independently with probability q, so batch sizes are Binomial(N, q): mean qN, variance
qN(1 - q). An empty batch is a valid outcome (that step releases noise only). The physical
batch cap bounds memory on large logical batches (like Opacus' BatchMemoryManager) without
changing the mechanism: one noise draw and one optimizer step per logical batch.

Inclusion is drawn toward privacy (:func:`bernoulli_mask`): a float64 uniform on the grid
k * 2^-53 compared with q rounded down to that grid, so each example is included with
probability exactly floor(q 2^53) / 2^53 <= q, never above the rate the accountant charges (a
float32 uniform compared with q would include it with ceil(q 2^24) / 2^24, up to 6e-8 above q).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dp_core.epochs import steps_per_epoch as epochs_rule
from dp_core.errors import InvalidParameterError
from dp_core.sampling import UNIFORM_GRID, rate_down

__all__ = ["bernoulli_mask", "poisson_batch", "rate_down", "split_physical", "steps_per_epoch"]


def bernoulli_mask(probabilities: Tensor | float, count: int, generator: torch.Generator) -> Tensor:
    """Return ``count`` independent draws, True with probability ``rate_down(p) <= p``.

    ``probabilities`` is one rate for all or one per draw. A uniform U on the grid k / 2^53
    satisfies P(U < t) = t for every t on that grid, so comparing with the rate rounded down to
    the grid includes with exactly that probability: at most p, never above it.
    """
    if generator.device.type != "cpu":
        raise InvalidParameterError("generator", generator.device.type, "must be a CPU generator")
    uniform = torch.rand(count, generator=generator, dtype=torch.float64)
    if isinstance(probabilities, Tensor):
        # rate_down, elementwise: torch.rand(dtype=float64) on CPU draws k / 2^53
        threshold = torch.floor(probabilities.to(torch.float64) * UNIFORM_GRID) / UNIFORM_GRID
    else:
        threshold = torch.tensor(rate_down(probabilities), dtype=torch.float64)
    return uniform < threshold


def poisson_batch(num_examples: int, sample_rate: float, generator: torch.Generator) -> Tensor:
    """Return the (sorted) indices of a Poisson sample: each example kept with ``sample_rate``.

    The rate is rounded down to a multiple of 2^-53 (:func:`bernoulli_mask`).
    """
    mask = bernoulli_mask(sample_rate, num_examples, generator)
    return mask.nonzero(as_tuple=True)[0]


def split_physical(indices: Tensor, max_physical_batch_size: int | None) -> list[Tensor]:
    """Split a logical batch into chunks of at most ``max_physical_batch_size`` (empty -> [])."""
    if indices.numel() == 0:
        return []
    if max_physical_batch_size is None:
        return [indices]
    if max_physical_batch_size < 1:
        raise InvalidParameterError(
            "max_physical_batch_size", max_physical_batch_size, "must be >= 1"
        )
    return list(torch.split(indices, max_physical_batch_size))


def steps_per_epoch(sample_rate: float) -> int:
    """Return the steps in one epoch: :func:`dp_core.epochs.steps_per_epoch`, the ledger's rule."""
    return epochs_rule(sample_rate)
