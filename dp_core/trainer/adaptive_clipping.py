"""Adaptive clipping: the clip norm tracks a quantile of the gradient norms.

Andrew, Thakkar, McMahan & Ramaswamy 2021 ("Differentially Private Learning with Adaptive
Clipping", NeurIPS, Algorithm 1): after each step, with b_i = 1[||g_i|| <= C] and m the expected
number of clipped units,

    b_bar = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2

estimates the fraction of unclipped examples (centring b_i at 1/2 halves the count's
sensitivity to 1/2). The clip norm then moves toward the target quantile gamma:

* ``geometric``: C <- C exp(-eta (b_bar - gamma))  (Andrew et al., Eq. 3; MindArmour 'Geometric')
* ``linear``:    C <- C - eta (b_bar - gamma)       (MindArmour 'Linear'), floored at ``min_clip``.

Privacy (Andrew et al., Thm. 1): a step releasing the gradient sum with noise multiplier z_grad
and the count with std sigma_b (noise multiplier 2 sigma_b) is a Gaussian mechanism with
z^-2 = z_grad^-2 + (2 sigma_b)^-2. The trainer therefore keeps the schedule's sigma_t as the
accounted (and charged) noise multiplier and adds gradient noise with

    z_grad = (sigma_t^-2 - (2 sigma_b)^-2)^(-1/2),

so the noisy count's cost is inside the mechanism the ledger charges, never forgotten.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dp_core.errors import InvalidParameterError
from dp_core.trainer.noise import standard_normal
from dp_core.validation import finite_float, positive_float

__all__ = ["AdaptiveClipping", "gradient_noise_multiplier", "update_clip_norm"]

_POLICIES = ("geometric", "linear")


@dataclass(frozen=True)
class AdaptiveClipping:
    """Settings of adaptive clipping (the initial norm is the trainer's ``max_grad_norm``).

    Attributes:
        target_quantile: gamma, the fraction of examples meant to be unclipped.
        learning_rate: eta, the step size of the clip-norm update.
        count_noise_std: sigma_b, std of the noise on the count of unclipped examples.
        policy: ``geometric`` or ``linear`` (MindArmour's 'Geometric' and 'Linear').
        min_clip: Floor of the clip norm under the linear policy.
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_std: float = 10.0
    policy: str = "geometric"
    min_clip: float = 1e-3

    def __post_init__(self) -> None:
        q = finite_float("target_quantile", self.target_quantile)
        if not 0.0 <= q <= 1.0:
            raise InvalidParameterError("target_quantile", q, "must be in [0, 1]")
        positive_float("learning_rate", self.learning_rate)
        positive_float("count_noise_std", self.count_noise_std)
        positive_float("min_clip", self.min_clip)
        policy = str(self.policy).strip().lower()
        if policy not in _POLICIES:
            raise InvalidParameterError("policy", self.policy, "must be 'geometric' or 'linear'")
        object.__setattr__(self, "policy", policy)


def gradient_noise_multiplier(*, noise_multiplier: float, count_noise_std: float) -> float:
    """Return z_grad = (sigma^-2 - (2 sigma_b)^-2)^(-1/2) (Andrew et al. 2021, Thm. 1).

    Raises:
        InvalidParameterError: if sigma >= 2 sigma_b (the count alone would spend the budget).
    """
    remainder = noise_multiplier**-2 - (2.0 * count_noise_std) ** -2
    if remainder <= 0.0:
        raise InvalidParameterError(
            "count_noise_std",
            count_noise_std,
            f"must exceed noise_multiplier / 2 = {noise_multiplier / 2:g} for adaptive clipping",
        )
    return float(remainder**-0.5)


def update_clip_norm(
    *,
    clip: float,
    unclipped: int,
    units: int,
    expected_units: float,
    settings: AdaptiveClipping,
    generator: torch.Generator,
    secure: bool = True,
) -> tuple[float, float]:
    """Return (next clip norm, the noisy unclipped fraction b_bar) after one step.

    Args:
        clip: The clip norm used in this step.
        unclipped: How many of the step's ``units`` (examples or microbatches) had norm <= clip.
        units: How many units the step clipped.
        expected_units: m, the expected number of units (qN, or the number of microbatches).
        settings: The adaptive clipping settings.
        generator: RNG for the count noise (secret: see :mod:`dp_core.randomness`).
        secure: Draw it in secure mode (:func:`dp_core.trainer.noise.standard_normal`).
    """
    noise = float(standard_normal((), generator, secure=secure)) * settings.count_noise_std
    fraction = (unclipped - 0.5 * units + noise) / expected_units + 0.5
    error = fraction - settings.target_quantile
    if settings.policy == "geometric":
        return clip * math.exp(-settings.learning_rate * error), fraction
    return max(settings.min_clip, clip - settings.learning_rate * error), fraction
