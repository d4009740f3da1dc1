"""User-level (group) privacy: K = 1 is example-level, monotone in K, Prop. 2 checked directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dp_core import InvalidParameterError, compute_epsilon
from dp_core.group import (
    classical_group_epsilon,
    group_exponent,
    group_rdp,
    group_sample_rate,
    user_level_epsilon,
)
from dp_core.mechanisms import SampledGaussianSchedule
from dp_core.pld import compute_epsilon_pld
from dp_core.rdp.compose import compute_rdp
from dp_core.schedules import NoiseSchedule

SCHEDULE = NoiseSchedule(kind="constant", noise_multiplier=1.1)


def test_one_record_per_user_is_example_level_exactly():
    user = user_level_epsilon(
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
    small = user_level_epsilon(
        sample_rate=q, schedule=schedule, steps=200, delta=1e-5, records_per_user=k
    )
    large = user_level_epsilon(
        sample_rate=q, schedule=schedule, steps=200, delta=1e-5, records_per_user=k + 1
    )
    assert large.epsilon_rdp >= small.epsilon_rdp - 1e-12
    assert large.epsilon_pld >= small.epsilon_pld - 1e-9


def test_invalid_group_size():
    with pytest.raises(InvalidParameterError):
        user_level_epsilon(
            sample_rate=0.01, schedule=SCHEDULE, steps=10, delta=1e-5, records_per_user=0
        )


def test_issue_19_case_the_classical_bound_wins_and_is_valid():
    # K = 4, q = 0.01, sigma = 1, 2,000 steps: RDP group privacy says 26.2, classical <= 22.5.
    schedule = NoiseSchedule(kind="constant", noise_multiplier=1.0)
    user = user_level_epsilon(
        sample_rate=0.01, schedule=schedule, steps=2000, delta=1e-5, records_per_user=4
    )
    assert user.epsilon_rdp == pytest.approx(26.2, abs=0.05)
    assert user.epsilon <= 22.5 and user.bound == "classical"
    assert user.epsilon == min(user.epsilon_rdp, user.epsilon_pld, user.epsilon_classical)
    # The classical point is feasible: delta1 (e^{K eps1} - 1) / (e^{eps1} - 1) <= delta ...
    eps1, d1 = user.epsilon_classical / 4, user.example_delta
    assert d1 * math.expm1(4 * eps1) / math.expm1(eps1) <= 1e-5
    # ... and eps1 is an example-level bound at delta1 (RDP; the PLD's tails exceed delta1).
    rdp = compute_epsilon(sample_rate=0.01, noise_multiplier=1.0, steps=2000, delta=d1)
    assert eps1 >= rdp.epsilon * (1 - 1e-9)


@settings(max_examples=5, deadline=None)
@given(q=st.floats(0.005, 0.05), sigma=st.floats(0.8, 3.0), k=st.integers(2, 6))
@example(q=0.05, sigma=0.8, k=4)  # no feasible classical point: inf
def test_user_level_epsilon_is_the_smallest_valid_bound(q, sigma, k):
    schedule = NoiseSchedule(kind="constant", noise_multiplier=sigma)
    user = user_level_epsilon(
        sample_rate=q, schedule=schedule, steps=300, delta=1e-5, records_per_user=k
    )
    values = {"rdp": user.epsilon_rdp, "pld": user.epsilon_pld, "classical": user.epsilon_classical}
    assert user.epsilon == values[user.bound] == min(values.values())
    if math.isinf(user.epsilon_classical):  # no example-level point keeps the group delta
        assert math.isnan(user.example_delta) and user.bound != "classical"
        return
    eps1 = user.epsilon_classical / k
    assert user.example_delta * math.expm1(k * eps1) / math.expm1(eps1) <= 1e-5
    example = compute_epsilon(
        sample_rate=q, noise_multiplier=sigma, steps=300, delta=user.example_delta
    )
    pld = compute_epsilon_pld(
        sample_rate=q, noise_multiplier=sigma, steps=300, delta=user.example_delta
    )
    # The example-level point used is an upper bound there (one of the two accountants' own).
    assert eps1 >= min(pld.epsilon, example.epsilon) * (1 - 1e-9)


def test_classical_bound_of_a_pure_dp_curve_is_k_epsilon():
    # A pure eps-DP run (delta1 = 0 works for any delta): the group bound is K eps.
    epsilon, d1 = classical_group_epsilon(
        example_epsilon=lambda _d: 0.5, delta=1e-5, records_per_user=3
    )
    assert epsilon == pytest.approx(1.5, rel=1e-12) and epsilon >= 1.5
    assert d1 * math.expm1(1.5) / math.expm1(0.5) <= 1e-5


def test_one_record_per_user_names_the_example_level_winner():
    user = user_level_epsilon(
        sample_rate=0.01, schedule=SCHEDULE, steps=500, delta=1e-5, records_per_user=1
    )
    assert user.epsilon_classical == user.epsilon == min(user.epsilon_rdp, user.epsilon_pld)
    assert user.bound == "pld" and user.example_delta == 1e-5
