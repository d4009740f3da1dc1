"""Gaussian noise of the DP-SGD step (Abadi et al. 2016, Algorithm 1, 'Add noise').

Once per logical step, N(0, (s * sigma_t * C)^2 I) is added to the sum of clipped gradients,
where sigma_t is the schedule's noise multiplier at global step t, C = ``max_grad_norm`` and s
the L2 sensitivity of that sum in units of C (1 per example, 2 with microbatches). The sum is then
divided by the *expected* batch size qN, a constant, so the division costs no privacy
(Abadi et al. 2016 divide by the lot size L = qN).

**Secure mode** (the default): a floating-point Gaussian sampler leaves holes and a shape in the
low bits of what it returns, which can reveal the noise-free value (Mironov 2012; Jin et al.
2022, "Are We There Yet? Timing and Floating-Point Attacks on Differential Privacy Systems").
Following Holohan & Braghin 2021 ("Secure Random Sampling in Differential Privacy", Sec. 5.1),
as Opacus' ``secure_mode`` does, each coordinate is the sum of 2n = 4 independent float64
standard normals divided by sqrt(2n) = 2 (exactly N(0, 1) in distribution), so recovering the
noise from the released bits means solving for 4 draws at once (about 2^159 work for 53-bit
mantissas instead of 2^53). The generator is seeded from OS entropy and never stored
(:mod:`dp_core.randomness`). ``bench/trainer.py`` measures its cost.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SECURE_DRAWS", "add_noise", "standard_normal"]

#: Standard normals summed per coordinate in secure mode (2n with n = 2, Holohan & Braghin 2021).
SECURE_DRAWS = 4


def standard_normal(
    shape: torch.Size | tuple[int, ...], generator: torch.Generator, *, secure: bool = True
) -> Tensor:
    """Return float64 N(0, 1) draws from ``generator`` (CPU): in secure mode, 4 summed, halved."""
    if not secure:
        return torch.randn(shape, generator=generator, dtype=torch.float64)
    total = torch.randn(shape, generator=generator, dtype=torch.float64)
    for _ in range(SECURE_DRAWS - 1):
        total += torch.randn(shape, generator=generator, dtype=torch.float64)
    result: Tensor = total / SECURE_DRAWS**0.5
    return result


def add_noise(
    grads: list[Tensor], std: float, generator: torch.Generator, *, secure: bool = True
) -> list[Tensor]:
    """Return ``g + N(0, std^2)`` for each tensor, drawn from ``generator`` (CPU, float64)."""
    noisy = []
    for g in grads:
        draw = std * standard_normal(g.shape, generator, secure=secure)
        noisy.append(g + draw.to(device=g.device, dtype=g.dtype))
    return noisy
