"""dp_core.mechanisms: the Grouped node, the neighbouring relation, properties kept by composites."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp_core.errors import InvalidParameterError
from dp_core.federated import DpFedAvgRounds
from dp_core.group import MAX_GROUP_ORDER, group_rdp_at_orders
from dp_core.mechanisms import (
    ADD_REMOVE,
    REPLACE_ONE,
    Composed,
    Gaussian,
    Grouped,
    Laplace,
    PoissonSampled,
    Repeated,
    SampledGaussianSchedule,
    Tuning,
    mechanism_from_dict,
    mechanism_to_dict,
    neighbouring_relation,
)
from dp_core.rdp.compose import compute_rdp
from dp_core.rdp.orders import DEFAULT_ORDERS
from dp_core.schedules import NoiseSchedule

STEP = SampledGaussianSchedule(
    sample_rate=0.01, schedule=NoiseSchedule(kind="constant", noise_multiplier=1.2), steps=50
)
FIXED = DpFedAvgRounds(
    users=100, sampling="fixed", clients_per_round=10, noise_multiplier=2.0, clip=1.0, rounds=3
)
POISSON = DpFedAvgRounds(
    users=100, sampling="poisson", sample_rate=0.1, noise_multiplier=2.0, clip=1.0, rounds=3
)


@pytest.mark.parametrize("records", [1, 2, 3, 8])
def test_grouped_rdp_is_mironovs_group_bound(records):
    grouped = Grouped(records=records, inner=STEP)
    expected = group_rdp_at_orders(
        mechanism=STEP, orders=DEFAULT_ORDERS, records_per_user=records, max_order=MAX_GROUP_ORDER
    )
    np.testing.assert_array_equal(compute_rdp(grouped, DEFAULT_ORDERS), expected)


def test_grouped_by_one_is_the_mechanism_itself():
    np.testing.assert_array_equal(
        compute_rdp(Grouped(records=1, inner=STEP), DEFAULT_ORDERS),
        compute_rdp(STEP, DEFAULT_ORDERS),
    )


@given(st.integers(min_value=2, max_value=64))
@settings(max_examples=25, deadline=None)
def test_a_larger_group_never_costs_less(records):
    smaller = compute_rdp(Grouped(records=records - 1, inner=STEP), DEFAULT_ORDERS)
    larger = compute_rdp(Grouped(records=records, inner=STEP), DEFAULT_ORDERS)
    assert np.all(larger >= smaller)
    assert np.all(larger >= compute_rdp(STEP, DEFAULT_ORDERS))


@pytest.mark.parametrize("records", [0, -1, 2.5])
def test_grouped_refuses_a_size_below_one(records):
    with pytest.raises(InvalidParameterError):
        Grouped(records=records, inner=STEP)


def _tuning(base):
    return Tuning(base=base, distribution="negative_binomial", eta=1.0, gamma=0.5)


COMPOSITES = [
    lambda m: Grouped(records=4, inner=m),
    lambda m: Repeated(count=3, inner=m),
    lambda m: Composed((m, m)),
    _tuning,
]


@pytest.mark.parametrize("wrap", COMPOSITES)
@pytest.mark.parametrize("leaf", [STEP, Gaussian(2.0), Laplace(1.0), FIXED, POISSON])
def test_composites_keep_their_parts_relation_and_serialize_whole(wrap, leaf):
    mechanism = wrap(leaf)
    assert neighbouring_relation(mechanism) == neighbouring_relation(leaf)
    assert mechanism_from_dict(mechanism_to_dict(mechanism)) == mechanism


def test_a_tuning_job_over_a_grouped_base_keeps_the_group_through_json():
    job = _tuning(Grouped(records=8, inner=STEP))
    decoded = mechanism_from_dict(mechanism_to_dict(job))
    assert isinstance(decoded, Tuning)
    assert decoded.base == Grouped(records=8, inner=STEP)
    np.testing.assert_array_equal(
        compute_rdp(decoded, DEFAULT_ORDERS), compute_rdp(job, DEFAULT_ORDERS)
    )
    # The grouped job costs more than the ungrouped one at every order (K = 8 was lost before).
    assert np.all(compute_rdp(job, DEFAULT_ORDERS) > compute_rdp(_tuning(STEP), DEFAULT_ORDERS))


def test_relations_of_the_leaves():
    assert neighbouring_relation(FIXED) == REPLACE_ONE
    assert neighbouring_relation(POISSON) == ADD_REMOVE
    assert neighbouring_relation(PoissonSampled(sample_rate=0.1, inner=Gaussian(1.0))) == ADD_REMOVE


def test_a_description_mixing_relations_is_refused():
    with pytest.raises(InvalidParameterError, match="mixes neighbouring relations"):
        neighbouring_relation(Composed((FIXED, STEP)))
    with pytest.raises(InvalidParameterError):
        neighbouring_relation(Repeated(count=2, inner=Composed((POISSON, FIXED))))


@pytest.mark.parametrize("mu", [1e-9, 0.5, 0.999])
def test_poisson_tuning_below_one_expected_run_is_refused(mu):
    with pytest.raises(InvalidParameterError, match="mu"):
        Tuning(base=STEP, distribution="poisson", mu=mu)


@given(st.floats(min_value=1.0, max_value=1e3))
@settings(max_examples=25, deadline=None)
def test_poisson_tuning_rdp_is_never_negative(mu):
    rdp = compute_rdp(Tuning(base=STEP, distribution="poisson", mu=mu), DEFAULT_ORDERS)
    assert np.all(rdp >= 0.0)
