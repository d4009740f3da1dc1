"""Noise schedules: formulas, aliases, validation, and the many-sigma fast path."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dp_core.errors import InvalidParameterError
from dp_core.rdp.orders import DEFAULT_ORDERS
from dp_core.rdp.sampled_gaussian import rdp_sampled_gaussian
from dp_core.rdp.schedule_sum import rdp_sampled_gaussian_sum
from dp_core.schedules import NoiseSchedule, parse_schedule_kind


@pytest.mark.parametrize(
    ("kind", "formula"),
    [
        ("inverse-time", lambda t: 2.0 / (1 + 0.01 * t)),
        ("geometric", lambda t: 2.0 * (1 - 0.01) ** t),
        ("exponential", lambda t: 2.0 * math.exp(-0.01 * t)),
    ],
)
def test_decay_formulas(kind, formula):
    values = NoiseSchedule(kind=kind, noise_multiplier=2.0, decay_rate=0.01).noise_multipliers(
        5, 50
    )
    np.testing.assert_allclose(values, [formula(t) for t in range(5, 50)], rtol=1e-13)


@pytest.mark.parametrize(
    ("alias", "kind"), [("Time", "inverse-time"), ("Step", "geometric"), ("Exp", "exponential")]
)
def test_mindarmour_aliases(alias, kind):
    assert parse_schedule_kind(alias) == kind
    assert NoiseSchedule(kind=alias, noise_multiplier=1.0, decay_rate=0.1).kind == kind


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"kind": "bogus"}, "schedule"),
        ({"kind": "geometric", "decay_rate": 1.0}, "decay_rate"),
        ({"kind": "exponential", "decay_rate": -0.1}, "decay_rate"),
        ({"kind": "constant", "decay_rate": 0.1}, "decay_rate"),
        ({"kind": "constant", "noise_multiplier": 0.0}, "noise_multiplier"),
        ({"kind": "constant", "noise_multiplier": math.nan}, "noise_multiplier"),
    ],
)
def test_invalid_schedules_name_the_parameter(kwargs, parameter):
    with pytest.raises(InvalidParameterError) as caught:
        NoiseSchedule(**kwargs)
    assert caught.value.parameter == parameter
    assert parameter in str(caught.value)


def test_a_decay_that_underflows_to_zero_is_refused():
    with pytest.raises(InvalidParameterError, match="drives the noise multiplier to 0 at step 1"):
        NoiseSchedule(
            kind="exponential", noise_multiplier=1.0, decay_rate=1000.0
        ).noise_multipliers(0, 10)


def test_explicit_schedule_and_segments():
    schedule = NoiseSchedule(kind="explicit", values=(1.0, 2.0, 1.0, 3.0))
    values, counts = schedule.segments(0, 4)
    assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == {
        1.0: 2.0,
        2.0: 1.0,
        3.0: 1.0,
    }
    with pytest.raises(InvalidParameterError, match="only 4 values"):
        schedule.noise_multipliers(0, 5)


def test_round_trip_through_dict():
    for schedule in (
        NoiseSchedule(kind="geometric", noise_multiplier=1.5, decay_rate=0.01),
        NoiseSchedule(kind="explicit", values=(1.0, 2.0)),
    ):
        assert NoiseSchedule.from_dict(schedule.to_dict()) == schedule


def plain_loop(q: float, sigmas: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """The reference: one exact evaluation per step, summed."""
    total = np.zeros(orders.size)
    for sigma in sigmas:
        total += rdp_sampled_gaussian(sample_rate=q, noise_multiplier=float(sigma), orders=orders)
    return total


@pytest.mark.parametrize(
    ("q", "schedule", "steps"),
    [
        (0.02, NoiseSchedule(kind="exponential", noise_multiplier=2.0, decay_rate=0.0005), 400),
        (0.01, NoiseSchedule(kind="inverse-time", noise_multiplier=1.5, decay_rate=0.002), 400),
        (0.05, NoiseSchedule(kind="geometric", noise_multiplier=6.0, decay_rate=0.005), 400),
    ],
)
def test_fast_path_matches_the_plain_loop(q, schedule, steps):
    sigmas = schedule.noise_multipliers(0, steps)
    fast = rdp_sampled_gaussian_sum(
        sample_rate=q,
        noise_multipliers=sigmas,
        counts=np.ones(steps),
        orders=DEFAULT_ORDERS,
        exact_limit=0,
    )
    np.testing.assert_allclose(fast, plain_loop(q, sigmas, DEFAULT_ORDERS), rtol=1e-9)


def test_fast_path_weights_repeated_sigmas():
    sigmas = np.linspace(0.8, 3.0, 200)
    counts = np.arange(1, 201, dtype=float)
    orders = np.array([1.5, 4.0, 20.0, 256.0])
    fast = rdp_sampled_gaussian_sum(
        sample_rate=0.03, noise_multipliers=sigmas, counts=counts, orders=orders, exact_limit=0
    )
    exact = sum(
        c * rdp_sampled_gaussian(sample_rate=0.03, noise_multiplier=s, orders=orders)
        for s, c in zip(sigmas, counts, strict=True)
    )
    np.testing.assert_allclose(fast, exact, rtol=1e-9)
