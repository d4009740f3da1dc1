"""Accountant contract: composition, validate-then-mutate, JSON state, conversions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dp_core import (
    Composed,
    Gaussian,
    Laplace,
    PoissonSampled,
    RdpAccountant,
    Repeated,
    SampledGaussianSchedule,
)
from dp_core.conversion import GridEdgeWarning, rdp_capacity, rdp_to_delta, rdp_to_epsilon
from dp_core.errors import InvalidParameterError, UnsupportedMechanismError
from dp_core.mechanisms import mechanism_from_dict, mechanism_to_dict
from dp_core.rdp.compose import compute_rdp
from dp_core.schedules import NoiseSchedule

MECHANISMS = [
    Gaussian(1.5),
    Laplace(2.0),
    PoissonSampled(sample_rate=0.01, inner=Gaussian(1.1)),
    Repeated(count=10, inner=PoissonSampled(sample_rate=0.01, inner=Gaussian(1.1))),
    Composed((Gaussian(3.0), Laplace(5.0))),
    SampledGaussianSchedule(
        sample_rate=0.01,
        schedule=NoiseSchedule(kind="exponential", noise_multiplier=1.5, decay_rate=0.001),
        steps=50,
        start_step=100,
    ),
]


@pytest.mark.parametrize("mechanism", MECHANISMS, ids=lambda m: type(m).__name__)
def test_mechanism_json_round_trip(mechanism):
    assert mechanism_from_dict(mechanism_to_dict(mechanism)) == mechanism


@pytest.mark.parametrize("mechanism", MECHANISMS, ids=lambda m: type(m).__name__)
def test_composition_is_additive(mechanism):
    accountant = RdpAccountant()
    accountant.compose(mechanism, count=3)
    np.testing.assert_allclose(
        accountant.rdp, 3 * compute_rdp(mechanism, accountant.orders), rtol=1e-12
    )


def test_repeated_and_schedule_agree_with_steps():
    orders = np.array([2.0, 8.5, 32.0])
    schedule = SampledGaussianSchedule(
        sample_rate=0.02, schedule=NoiseSchedule(kind="constant", noise_multiplier=1.1), steps=100
    )
    repeated = Repeated(count=100, inner=PoissonSampled(sample_rate=0.02, inner=Gaussian(1.1)))
    np.testing.assert_allclose(
        compute_rdp(schedule, orders), compute_rdp(repeated, orders), rtol=1e-12
    )


def test_epochs_of_a_decaying_schedule_add_up_to_the_whole_run():
    schedule = NoiseSchedule(kind="inverse-time", noise_multiplier=2.0, decay_rate=0.01)
    orders = np.array([1.5, 4.0, 16.0])
    whole = compute_rdp(
        SampledGaussianSchedule(sample_rate=0.05, schedule=schedule, steps=300), orders
    )
    epochs = sum(
        compute_rdp(
            SampledGaussianSchedule(
                sample_rate=0.05, schedule=schedule, steps=100, start_step=100 * e
            ),
            orders,
        )
        for e in range(3)
    )
    np.testing.assert_allclose(epochs, whole, rtol=1e-10)


def test_unsupported_mechanism_leaves_state_untouched():
    accountant = RdpAccountant()
    accountant.compose(Gaussian(2.0))
    before = accountant.rdp
    with pytest.raises(UnsupportedMechanismError):
        accountant.compose(
            Composed((Gaussian(1.0), PoissonSampled(sample_rate=0.1, inner=Laplace(1.0))))
        )
    np.testing.assert_array_equal(accountant.rdp, before)
    assert len(accountant.entries) == 1


def test_invalid_parameters_cannot_be_built():
    with pytest.raises(InvalidParameterError) as caught:
        PoissonSampled(sample_rate=1.5, inner=Gaussian(1.0))
    assert caught.value.parameter == "sample_rate"
    with pytest.raises(InvalidParameterError):
        Repeated(count=-1, inner=Gaussian(1.0))
    with pytest.raises(InvalidParameterError):
        Gaussian(float("inf"))


def test_state_round_trips_through_json():
    accountant = RdpAccountant()
    for mechanism in MECHANISMS:
        accountant.compose(mechanism, 2)
    restored = RdpAccountant.from_json(accountant.to_json())
    np.testing.assert_allclose(restored.rdp, accountant.rdp, rtol=1e-13)
    assert restored.get_epsilon(1e-5) == accountant.get_epsilon(1e-5)
    with pytest.raises(InvalidParameterError):
        RdpAccountant.from_json("{not json")


def test_epsilon_and_delta_are_inverse():
    accountant = RdpAccountant()
    accountant.compose(PoissonSampled(sample_rate=0.01, inner=Gaussian(1.0)), 1000)
    eps = accountant.get_epsilon(1e-5)
    delta = accountant.get_delta(eps.epsilon)
    assert delta.delta <= 1e-5 * (1 + 1e-6)
    assert delta.delta == pytest.approx(1e-5, rel=1e-3)
    assert eps.epsilon <= eps.epsilon_grid


def test_real_order_refinement_is_a_valid_order_and_never_worse():
    accountant = RdpAccountant()
    accountant.compose(PoissonSampled(sample_rate=0.0041666, inner=Gaussian(1.3)), 720)
    report = accountant.get_epsilon(1e-5)
    direct = rdp_to_epsilon(
        orders=[report.order], rdp=[accountant.rdp_at(report.order)], delta=1e-5, warn=False
    )
    assert direct.epsilon == pytest.approx(report.epsilon, rel=1e-12)
    assert report.epsilon <= report.epsilon_grid


def test_cks_conversion_beats_mironov_and_capacity_inverts_it():
    orders = np.array([1.5, 2.0, 10.0, 64.0])
    rdp = np.array([0.01, 0.05, 0.4, 3.0])
    for a, r in zip(orders, rdp, strict=True):
        ours = rdp_to_epsilon(orders=[a], rdp=[r], delta=1e-5, warn=False).epsilon
        mironov = r + math.log(1e5) / (a - 1)  # Mironov 2017, Prop. 3
        assert ours < mironov
    capacity = rdp_capacity(orders=orders, epsilon=2.0, deltas=1e-6)
    for a, b in zip(orders, capacity, strict=True):
        assert (
            rdp_to_epsilon(orders=[a], rdp=[max(b, 0.0)], delta=1e-6, warn=False).epsilon
            == pytest.approx(2.0, rel=1e-12)
            or b < 0
        )


def test_grid_edge_is_reported_and_warned():
    with pytest.warns(GridEdgeWarning):
        result = rdp_to_epsilon(orders=[2.0, 3.0, 4.0], rdp=[1e-6, 2e-6, 3e-6], delta=1e-5)
    assert result.at_grid_edge and result.order == 4.0
    delta = rdp_to_delta(orders=[2.0, 3.0], rdp=[5.0, 50.0], epsilon=1.0, warn=False)
    assert 0 < delta.delta <= 1.0


def test_zero_steps_cost_nothing():
    accountant = RdpAccountant()
    accountant.compose(PoissonSampled(sample_rate=0.1, inner=Gaussian(1.0)), 0)
    assert accountant.get_epsilon(1e-5).epsilon == 0.0
