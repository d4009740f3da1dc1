"""User-level (group) privacy: K = 1 is example-level, monotone in K, Prop. 2 checked directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp_core import InvalidParameterError, compute_epsilon
from dp_core.group import compute_user_epsilon, group_exponent, group_rdp, group_sample_rate
from dp_core.mechanisms import SampledGaussianSchedule
from dp_core.pld import compute_epsilon_pld
from dp_core.rdp.compose import compute_rdp
from dp_core.schedules import NoiseSchedule

SCHEDULE = NoiseSchedule(kind="constant", noise_multiplier=1.1)


def test_one_record_per_user_is_example_level_exactly():
    user = compute_user_epsilon(
        sample_rate=0.01, schedule=SCHEDULE, steps=500, delta=1e-5, records_per_user=1
    )
    example = compute_epsilon(sample_rate=0.01, noise_multiplier=1.1, steps=500, delta=1e-5)
    pld = compute_epsilon_pld(sample_rate=0.01, noise_multiplier=1.1, steps=500, delta=1e-5)
    assert user.epsilon_rdp == example.epsilon and user.order == example.order
    assert user.epsilon_pld == pld.epsilon
    assert user.group_sample_rate == 0.01


@pytest.mark.parametrize(("k", "c"), [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (8, 3), (9, 4)])
def test_group_exponent_is_ceil_log2(k, c):
    assert group_exponent(k) == c == math.ceil(math.log2(k))


def test_group_rdp_is_three_to_the_c_at_scaled_orders():
    mechanism = SampledGaussianSchedule(sample_rate=0.02, schedule=SCHEDULE, steps=100)
    orders = np.array([1.5, 2.0, 3.0, 8.0])
    beta, rdp = group_rdp(mechanism=mechanism, orders=orders, records_per_user=4)
    assert list(beta) == [2.0, 3.0, 8.0]  # Prop. 2 needs alpha = 4 beta >= 8
    assert rdp == pytest.approx(9.0 * compute_rdp(mechanism, 4.0 * beta), rel=1e-12)


def test_group_sample_rate():
    assert group_sample_rate(sample_rate=0.1, records_per_user=3) == pytest.approx(1 - 0.9**3)
    assert group_sample_rate(sample_rate=1.0, records_per_user=3) == 1.0


@settings(max_examples=6, deadline=None)
@given(q=st.floats(0.001, 0.05), sigma=st.floats(2.0, 5.0), k=st.integers(1, 3))
def test_monotone_in_records_per_user(q, sigma, k):
    schedule = NoiseSchedule(kind="constant", noise_multiplier=sigma)
    small = compute_user_epsilon(
        sample_rate=q, schedule=schedule, steps=200, delta=1e-5, records_per_user=k
    )
    large = compute_user_epsilon(
        sample_rate=q, schedule=schedule, steps=200, delta=1e-5, records_per_user=k + 1
    )
    assert large.epsilon_rdp >= small.epsilon_rdp - 1e-12
    assert large.epsilon_pld >= small.epsilon_pld - 1e-9


def test_invalid_group_size():
    with pytest.raises(InvalidParameterError):
        compute_user_epsilon(
            sample_rate=0.01, schedule=SCHEDULE, steps=10, delta=1e-5, records_per_user=0
        )
