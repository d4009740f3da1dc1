"""Stateless accounting, as the CLI does it: epsilon of a run, noise multiplier for a target."""

from __future__ import annotations

import dp_core
from app.schemas import EpsilonRead, EpsilonRequest, NoiseMultiplierRead, NoiseMultiplierRequest
from app.services.accounting import translated_dp_errors


def compute_epsilon(body: EpsilonRequest) -> EpsilonRead:
    """Return the epsilon of ``steps`` DP-SGD steps (dp_core's facade)."""
    with translated_dp_errors():
        result = dp_core.compute_epsilon(
            sample_rate=body.sample_rate,
            noise_multiplier=body.noise_multiplier,
            steps=body.steps,
            delta=body.delta,
            schedule=body.schedule,
            decay_rate=body.decay_rate,
        )
    return EpsilonRead(
        epsilon=result.epsilon,
        epsilon_grid=result.epsilon_grid,
        order=result.order,
        delta=body.delta,
        steps=body.steps,
    )


def calibrate_noise_multiplier(body: NoiseMultiplierRequest) -> NoiseMultiplierRead:
    """Return the smallest noise multiplier meeting the target (never overshooting it)."""
    with translated_dp_errors():
        result = dp_core.calibrate_noise_multiplier(
            target_epsilon=body.target_epsilon,
            delta=body.delta,
            sample_rate=body.sample_rate,
            steps=body.steps,
            schedule=body.schedule,
            decay_rate=body.decay_rate,
        )
    return NoiseMultiplierRead(noise_multiplier=result.noise_multiplier, epsilon=result.epsilon)
