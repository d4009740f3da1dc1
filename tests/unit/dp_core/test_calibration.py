"""Calibration never overshoots; epsilon is monotone in noise, sampling rate and steps."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dp_core
from dp_core.errors import CalibrationError, InvalidParameterError

FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sample_rates = st.floats(min_value=1e-3, max_value=0.2)
sigmas = st.floats(min_value=0.5, max_value=8.0)
step_counts = st.integers(min_value=1, max_value=20_000)
targets = st.floats(min_value=0.3, max_value=20.0)


def eps(q: float, sigma: float, steps: int, **kwargs) -> float:
    return dp_core.compute_epsilon(
        sample_rate=q, noise_multiplier=sigma, steps=steps, delta=1e-5, **kwargs
    ).epsilon


@FAST
@given(q=sample_rates, sigma=sigmas, steps=step_counts)
def test_epsilon_falls_with_noise_and_rises_with_rate_and_steps(q, sigma, steps):
    base = eps(q, sigma, steps)
    assert eps(q, sigma * 1.1, steps) <= base
    assert eps(min(1.0, q * 1.5), sigma, steps) >= base
    assert eps(q, sigma, steps + max(1, steps // 4)) >= base


@FAST
@given(target=targets, q=sample_rates, steps=st.integers(min_value=10, max_value=20_000))
def test_noise_calibration_never_overshoots_and_is_tight(target, q, steps):
    result = dp_core.calibrate_noise_multiplier(
        target_epsilon=target, delta=1e-5, sample_rate=q, steps=steps
    )
    assert result.epsilon <= target
    assert eps(q, result.noise_multiplier, steps) <= target
    # within 0.1% of the smallest sufficient value: a bit less noise is already too little
    assert eps(q, result.noise_multiplier / 1.001, steps) > target


@FAST
@given(target=targets, q=sample_rates, sigma=st.floats(min_value=0.6, max_value=4.0))
def test_max_steps_is_the_largest_that_fits(target, q, sigma):
    result = dp_core.max_steps(
        target_epsilon=target, delta=1e-5, sample_rate=q, noise_multiplier=sigma
    )
    if result.steps:
        assert eps(q, sigma, result.steps) <= target
    assert eps(q, sigma, result.steps + 1) > target


def test_decaying_schedule_calibrates_s0_and_max_steps():
    kwargs = {"schedule": "exponential", "decay_rate": 1e-4}
    result = dp_core.calibrate_noise_multiplier(
        target_epsilon=3.0, delta=1e-5, sample_rate=0.01, steps=3000, **kwargs
    )
    assert eps(0.01, result.noise_multiplier, 3000, **kwargs) <= 3.0
    assert eps(0.01, result.noise_multiplier / 1.001, 3000, **kwargs) > 3.0
    steps = dp_core.max_steps(
        target_epsilon=3.0, delta=1e-5, sample_rate=0.01, noise_multiplier=1.2, **kwargs
    )
    assert eps(0.01, 1.2, steps.steps, **kwargs) <= 3.0 < eps(0.01, 1.2, steps.steps + 1, **kwargs)


def test_decay_is_more_expensive_than_constant_noise():
    assert eps(0.01, 1.5, 1000, schedule="inverse-time", decay_rate=1e-3) > eps(0.01, 1.5, 1000)


def test_impossible_calibrations_say_why():
    with pytest.raises(CalibrationError, match="nothing to calibrate"):
        dp_core.calibrate_noise_multiplier(
            target_epsilon=1.0, delta=1e-5, sample_rate=0.0, steps=100
        )
    with pytest.raises(InvalidParameterError) as caught:
        dp_core.calibrate_noise_multiplier(
            target_epsilon=-1.0, delta=1e-5, sample_rate=0.01, steps=100
        )
    assert caught.value.parameter == "target_epsilon"
    one_step = dp_core.max_steps(
        target_epsilon=0.01, delta=1e-5, sample_rate=1.0, noise_multiplier=0.5
    )
    assert one_step.steps == 0
