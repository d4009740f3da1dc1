"""Group privacy charged by the ledger: RunSpec with max_records_per_individual K.

Oracle: the Poisson-subsampled Gaussian's RDP at integer orders by its binomial expansion
(Mironov, Talwar & Zhang 2019, Sec. 3.3), summed in mpmath at 50 digits, then Mironov 2017
Prop. 2 written out by hand (3^c times the curve at 2^c * max(beta, 2)).
"""

from __future__ import annotations

import math

import mpmath
import pytest

from app.ledger import quanta
from app.ledger.plans import MAX_GROUP_ORDER, RunSpec
from app.ledger.rounding import cost_up
from app.schemas import DpSgdMechanism, NoiseSpec, RunCreate
from app.services.accounting import charge_spec
from dp_core.mechanisms import SampledGaussianSchedule
from dp_core.rdp.compose import compute_rdp
from dp_core.schedules import NoiseSchedule

ORDERS = (1.5, 2.0, 3.0, 4.0, 8.0, 16.0)
Q, SIGMA, STEPS, EPOCHS = 0.01, 1.1, 100, 3


def _oracle_step(alpha: int, *, q: float, sigma: float) -> float:
    """RDP of one subsampled-Gaussian step at integer alpha (binomial expansion, 50 digits)."""
    mpmath.mp.dps = 50
    q_, s = mpmath.mpf(q), mpmath.mpf(sigma)
    total = mpmath.fsum(
        mpmath.binomial(alpha, k)
        * (1 - q_) ** (alpha - k)
        * q_**k
        * mpmath.exp((k * k - k) / (2 * s * s))
        for k in range(alpha + 1)
    )
    return float(mpmath.log(total) / (alpha - 1))


def _oracle_group_epoch(beta: float, k: int) -> float:
    c = math.ceil(math.log2(k))
    alpha = int(2**c * max(beta, 2.0))
    return 3**c * STEPS * _oracle_step(alpha, q=Q, sigma=SIGMA)


def _spec(k: int, *, schedule: NoiseSchedule | None = None) -> RunSpec:
    noise = schedule or NoiseSchedule(kind="constant", noise_multiplier=SIGMA)
    return RunSpec(Q, STEPS, EPOCHS, noise, k)


def test_k1_costs_are_todays_costs() -> None:
    # Today's rule, written out: one step's RDP rounded up, times the steps, each epoch.
    one = SampledGaussianSchedule(
        sample_rate=Q, schedule=NoiseSchedule(kind="constant", noise_multiplier=SIGMA), steps=1
    )
    step = cost_up(compute_rdp(one, list(ORDERS)))
    expected = quanta.scale(step, STEPS)
    costs = _spec(1).costs(ORDERS)
    assert costs.units == EPOCHS
    assert all(costs.unit(e) == expected for e in range(EPOCHS))
    # The schema's default is K = 1, and the DP-SGD form gives the same plan.
    body = RunCreate(
        dataset="d",
        name="r",
        sample_rate=Q,
        steps_per_epoch=STEPS,
        epochs=EPOCHS,
        noise=NoiseSpec(noise_multiplier=SIGMA),
    )
    spec = charge_spec(body.resolved_mechanism())
    assert spec == RunSpec(Q, STEPS, EPOCHS, NoiseSchedule(kind="constant", noise_multiplier=SIGMA))
    assert spec.costs(ORDERS) == costs


@pytest.mark.parametrize("k", [2, 3, 4])
def test_group_costs_match_the_transformed_curve(k: int) -> None:
    costs = _spec(k).costs(ORDERS)
    floats = quanta.to_floats_up(costs.unit(0))
    for beta, got in zip(ORDERS, floats, strict=True):
        want = _oracle_group_epoch(beta, k)
        assert got >= want, f"order {beta}: charged {got} below the group bound {want}"
        assert got == pytest.approx(want, rel=2e-6)
    # K = 3 is rounded up to 4 (c = 2), not down to 2.
    if k == 3:
        assert costs == _spec(4).costs(ORDERS)
        two = _spec(2).costs(ORDERS).unit(0)
        assert all(a < b for a, b in zip(two, costs.unit(0), strict=True) if a and b)


def test_group_cost_exceeds_the_per_record_cost() -> None:
    per_record = quanta.to_floats_up(_spec(1).costs(ORDERS).unit(0))
    group = quanta.to_floats_up(_spec(2).costs(ORDERS).unit(0))
    assert all(g > 3 * p for g, p in zip(group, per_record, strict=True))


def test_decaying_schedule_group_costs_per_epoch() -> None:
    schedule = NoiseSchedule(kind="exponential", noise_multiplier=1.5, decay_rate=0.001)
    spec = RunSpec(Q, 20, 2, schedule, 2)
    costs = spec.costs(ORDERS)
    for epoch in range(2):
        mechanism = spec.mechanism(epoch, epoch + 1)
        alphas = [2 * max(b, 2.0) for b in ORDERS]
        want = [3 * v for v in compute_rdp(mechanism, alphas)]
        got = quanta.to_floats_up(costs.unit(epoch))
        assert all(g >= w for g, w in zip(got, want, strict=True))
        assert list(got) == pytest.approx(want, rel=2e-6)


def test_orders_beyond_the_evaluation_limit_cost_infinity() -> None:
    huge = MAX_GROUP_ORDER  # 2 * huge is past the limit: never evaluated, never under-charged
    costs = _spec(2).costs((2.0, huge))
    assert costs.unit(0)[0] is not None
    assert costs.unit(0)[1] is None


def test_schema_bounds_k() -> None:
    base = {"kind": "dp_sgd", "sample_rate": Q, "epochs": 1, "noise": {"noise_multiplier": 1.0}}
    assert DpSgdMechanism.model_validate(base).max_records_per_individual == 1
    assert (
        DpSgdMechanism.model_validate(
            {**base, "max_records_per_individual": 8}
        ).max_records_per_individual
        == 8
    )
    for bad in (0, -1, 1025):
        with pytest.raises(ValueError, match="max_records_per_individual"):
            DpSgdMechanism.model_validate({**base, "max_records_per_individual": bad})


def test_grouped_decaying_plans_count_their_larger_orders_against_the_limit() -> None:
    from app.errors import InvalidInputError
    from app.ledger.plans import unit_costs

    schedule = NoiseSchedule(kind="exponential", noise_multiplier=3.0, decay_rate=0.001)
    per_record = RunSpec(Q, 10, 2, schedule, 1)
    grouped = RunSpec(Q, 10, 2, schedule, 3)  # c = 2: 4 evaluations' worth per step
    assert (per_record.noise_levels(), grouped.noise_levels()) == (20, 80)
    unit_costs(per_record, ORDERS, max_noise_levels=20)
    with pytest.raises(InvalidInputError, match="80 noise-level evaluations"):
        unit_costs(grouped, ORDERS, max_noise_levels=79)
    assert unit_costs(grouped, ORDERS, max_noise_levels=80).units == 2
    constant = RunSpec(Q, 10, 2, NoiseSchedule(kind="constant", noise_multiplier=1.0), 1024)
    assert constant.noise_levels() == 1
