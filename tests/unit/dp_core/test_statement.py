"""The privacy statement: its numbers agree with the functions they come from."""

from __future__ import annotations

import json
import math

import pytest
from scipy import optimize, stats

from dp_core import NoiseSchedule, compute_epsilon, compute_epsilon_pld
from dp_core.group import user_level_epsilon
from dp_core.statement import (
    OPACUS_ORDERS,
    build_privacy_statement,
    gaussian_delta,
    gaussian_epsilon,
    render_privacy_statement,
    steps_per_epoch,
)

CONSTANT = NoiseSchedule(kind="constant", noise_multiplier=1.1)


def test_example_level_numbers_and_text():
    s = build_privacy_statement(sample_rate=0.01, steps=250, delta=1e-5, schedule=CONSTANT)
    rdp = compute_epsilon(sample_rate=0.01, noise_multiplier=1.1, steps=250, delta=1e-5)
    pld = compute_epsilon_pld(sample_rate=0.01, noise_multiplier=1.1, steps=250, delta=1e-5)
    assert (s.epsilon_rdp, s.order, s.epsilon_pld) == (rdp.epsilon, rdp.order, pld.epsilon)
    assert s.user.records_per_user == 1 and s.user.epsilon_rdp == rdp.epsilon
    assert s.steps_per_epoch == 100 and s.epochs == pytest.approx(2.5)
    text = render_privacy_statement(s)
    assert f"RDP {rdp.epsilon:.4f} (Renyi order {rdp.order:.3g})" in text
    assert f"PLD {pld.epsilon:.4f}" in text and "Poisson" in text and "shuffled" in text
    json.dumps(s.to_dict())


def test_epoch_level_is_one_gaussian_per_epoch():
    s = build_privacy_statement(sample_rate=0.01, steps=250, delta=1e-5, schedule=CONSTANT)
    # 3 epochs (the last one partial): 3 Gaussian mechanisms with sigma 1.1, no sampling.
    gaussian = compute_epsilon(sample_rate=1.0, noise_multiplier=1.1, steps=3, delta=1e-5)
    assert s.epoch_epsilon_rdp == pytest.approx(gaussian.epsilon, rel=1e-9)
    # The exact curve of one Gaussian with sigma 1.1 / sqrt(3): brentq on Balle & Wang's delta,
    # and never above the PLD accountant's upper bound of the same mechanism.
    exact = _brentq_gaussian_epsilon(1.1 / math.sqrt(3), 1e-5)
    pld = compute_epsilon_pld(
        sample_rate=1.0, noise_multiplier=1.1 / math.sqrt(3), steps=1, delta=1e-5
    )
    assert s.epoch_epsilon_pld == pytest.approx(exact, rel=1e-9)
    assert exact <= s.epoch_epsilon_pld <= pld.epsilon
    assert s.epoch_epsilon_pld > s.epsilon_pld  # no amplification by sampling


def _brentq_gaussian_epsilon(s: float, delta: float) -> float:
    def excess(e: float) -> float:  # Balle & Wang 2018, Thm. 8, written out independently
        return (
            float(
                stats.norm.cdf(1 / (2 * s) - e * s)
                - math.exp(e) * stats.norm.cdf(-1 / (2 * s) - e * s)
            )
            - delta
        )

    return float(optimize.brentq(excess, 0.0, 200.0, xtol=1e-14))


@pytest.mark.parametrize("sigma", [0.3, 0.8, 1.1, 3.0, 20.0])
@pytest.mark.parametrize("delta", [1e-3, 1e-5, 1e-9])
def test_gaussian_epsilon_is_the_exact_curve_rounded_up(sigma, delta):
    epsilon = gaussian_epsilon(noise_multiplier=sigma, delta=delta)
    assert gaussian_delta(noise_multiplier=sigma, epsilon=epsilon) <= delta  # toward privacy
    reference = _brentq_gaussian_epsilon(sigma, delta) if epsilon > 0 else 0.0
    assert epsilon == pytest.approx(reference, rel=1e-9, abs=1e-12)
    assert epsilon >= reference - 1e-12


def test_gaussian_epsilon_is_zero_when_delta_covers_the_whole_curve():
    # delta(0) = 2 Phi(1/(2 sigma)) - 1 ~ 0.0040 at sigma = 100
    assert gaussian_epsilon(noise_multiplier=100.0, delta=0.01) == 0.0


def test_decaying_noise_uses_each_epochs_smallest_sigma():
    decay = NoiseSchedule(kind="exponential", noise_multiplier=2.0, decay_rate=0.01)
    s = build_privacy_statement(sample_rate=0.1, steps=20, delta=1e-5, schedule=decay)
    worst = [decay.noise_multiplier_at(9), decay.noise_multiplier_at(19)]
    explicit = NoiseSchedule(kind="explicit", values=tuple(worst))
    from dp_core.calibration import epsilon_of_schedule

    expected = epsilon_of_schedule(sample_rate=1.0, schedule=explicit, steps=2, delta=1e-5)
    assert s.epoch_epsilon_rdp == pytest.approx(expected.epsilon, rel=1e-9)


def test_opacus_grid_note_when_the_order_is_beyond_63():
    s = build_privacy_statement(
        sample_rate=0.01, steps=100, delta=1e-5,
        schedule=NoiseSchedule(kind="constant", noise_multiplier=5.0),
    )  # fmt: skip
    assert s.order > OPACUS_ORDERS[-1] == 63.0
    assert s.opacus_grid_lacks_order and s.opacus_epsilon > s.epsilon_rdp
    assert "Opacus" in render_privacy_statement(s)
    typical = build_privacy_statement(sample_rate=0.01, steps=250, delta=1e-5, schedule=CONSTANT)
    assert not typical.opacus_grid_lacks_order
    assert "Opacus" not in render_privacy_statement(typical)


def test_user_level_for_several_records():
    s = build_privacy_statement(
        sample_rate=0.01, steps=250, delta=1e-5, schedule=CONSTANT, records_per_user=3
    )
    u = s.user
    assert u.epsilon == min(u.epsilon_rdp, u.epsilon_pld, u.epsilon_classical) > s.epsilon_pld
    assert u.bound == "classical" and u.epsilon < u.epsilon_rdp  # K eps1 beats Prop. 2 here
    text = render_privacy_statement(s)
    assert "up to 3 records" in text and f"epsilon {u.epsilon:.4f} (classical)" in text


def test_steps_per_epoch_is_ceil_n_over_b():
    assert steps_per_epoch(256 / 60000) == 235
    assert steps_per_epoch(0.01) == 100


def test_user_level_for_one_record_is_what_the_group_function_computes():
    decay = NoiseSchedule(kind="exponential", noise_multiplier=2.0, decay_rate=1e-3)
    s = build_privacy_statement(sample_rate=0.02, steps=300, delta=1e-5, schedule=decay)
    direct = user_level_epsilon(
        sample_rate=0.02, schedule=decay, steps=300, delta=1e-5, records_per_user=1
    )
    assert s.user == direct


def test_user_level_is_monotone_in_records_per_user():
    users = [
        build_privacy_statement(
            sample_rate=0.01, steps=250, delta=1e-5, schedule=CONSTANT, records_per_user=k
        ).user.epsilon
        for k in (1, 2, 3, 4, 8)
    ]
    assert users == sorted(users) and users[0] < users[-1]


def test_a_work_bound_coarsens_the_pld_grid_never_below_the_fine_value():
    fine = build_privacy_statement(sample_rate=0.01, steps=250, delta=1e-5, schedule=CONSTANT)
    bounded = build_privacy_statement(
        sample_rate=0.01, steps=250, delta=1e-5, schedule=CONSTANT, max_fft_points=20_000
    )
    assert bounded.epsilon_rdp == fine.epsilon_rdp  # RDP is untouched by the bound
    assert fine.epsilon_pld <= bounded.epsilon_pld < fine.epsilon_rdp * 1.5


def test_a_pld_beyond_the_work_bound_is_reported_as_not_computed():
    s = build_privacy_statement(
        sample_rate=0.01, steps=250, delta=1e-5, schedule=CONSTANT, records_per_user=2,
        max_fft_points=10,
    )  # fmt: skip
    assert math.isinf(s.epsilon_pld) and math.isinf(s.user.epsilon_pld)
    # The RDP group bound and the classical bound over the RDP curve stand alone.
    assert s.user.epsilon == min(s.user.epsilon_rdp, s.user.epsilon_classical)
    assert s.to_dict()["epsilon_pld"] is None
    assert "not computed" in render_privacy_statement(s)
