"""Gaussian noise of the DP-SGD step (Abadi et al. 2016, Algorithm 1, 'Add noise').

Once per logical step, N(0, (s * sigma_t * C)^2 I) is added to the sum of clipped gradients,
where sigma_t is the schedule's noise multiplier at global step t, C = ``max_grad_norm`` and s
the L2 sensitivity of that sum in units of C (1 per example, 2 with microbatches). The sum is then
divided by the *expected* batch size qN, a constant, so the division costs no privacy
(Abadi et al. 2016 divide by the lot size L = qN).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["add_noise"]


def add_noise(grads: list[Tensor], std: float, generator: torch.Generator) -> list[Tensor]:
    """Return ``g + N(0, std^2)`` for each tensor, drawn from ``generator`` (CPU)."""
    noisy = []
    for g in grads:
        draw = torch.randn(g.shape, generator=generator, dtype=g.dtype)
        noisy.append(g + std * draw.to(g.device))
    return noisy
