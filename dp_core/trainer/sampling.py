"""Poisson sampling of logical batches and their split into bounded physical batches.

The RDP analysis of the sampled Gaussian mechanism (Mironov, Talwar & Zhang 2019, "Renyi
Differential Privacy of the Sampled Gaussian Mechanism") assumes each example joins each batch
independently with probability q, so batch sizes are Binomial(N, q): mean qN, variance
qN(1 - q). An empty batch is a valid outcome (that step releases noise only). The physical
batch cap bounds memory on large logical batches (like Opacus' BatchMemoryManager) without
changing the mechanism: one noise draw and one optimizer step per logical batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dp_core.epochs import steps_per_epoch as epochs_rule
from dp_core.errors import InvalidParameterError

__all__ = ["poisson_batch", "split_physical", "steps_per_epoch"]


def poisson_batch(num_examples: int, sample_rate: float, generator: torch.Generator) -> Tensor:
    """Return the (sorted) indices of a Poisson sample: each example kept with ``sample_rate``."""
    mask = torch.rand(num_examples, generator=generator) < sample_rate
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
