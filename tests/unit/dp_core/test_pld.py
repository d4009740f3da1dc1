"""PLD accounting: an upper bound of the true epsilon, as tight as the peers'.

Oracles: the exact privacy curve of the Gaussian mechanism (Balle & Wang 2018, Thm. 8), the
hockey-stick divergence of one sampled-Gaussian step by numerical integration, and peer values
(dp_accounting's PLD, Opacus' PRV) vendored in data/pld_cases.json with their provenance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize, special, stats

from dp_core import InvalidParameterError, compute_epsilon
from dp_core.pld import (
    compose_plds,
    compute_epsilon_pld,
    delta_of_pld,
    epsilon_of_pld,
    sampled_gaussian_pld,
)
from dp_core.schedules import NoiseSchedule

DATA = Path(__file__).parent / "data" / "pld_cases.json"
CASES = json.loads(DATA.read_text())["cases"]


def gaussian_delta(epsilon: float, s: float) -> float:
    """Exact delta(eps) of the Gaussian mechanism with sensitivity 1 and noise s (Balle & Wang, Thm. 8)."""
    first = special.ndtr(-epsilon * s + 1.0 / (2.0 * s))
    second = math.exp(epsilon + special.log_ndtr(-epsilon * s - 1.0 / (2.0 * s)))
    return float(first - second)


def gaussian_epsilon(sigma: float, steps: int, delta: float) -> float:
    """Exact epsilon of T Gaussian steps: one Gaussian with noise sigma / sqrt(T)."""
    s = sigma / math.sqrt(steps)
    if gaussian_delta(0.0, s) <= delta:
        return 0.0
    return float(optimize.brentq(lambda e: gaussian_delta(e, s) - delta, 0.0, 500.0, xtol=1e-14))


def case_id(case: dict) -> str:
    return f"q{case['sample_rate']}-s{case['noise_multiplier']}-T{case['steps']}-{case['schedule']}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_the_peers_within_their_discretization_error(case):
    ours = compute_epsilon_pld(
        sample_rate=case["sample_rate"],
        noise_multiplier=case["noise_multiplier"],
        steps=case["steps"],
        delta=case["delta"],
        schedule=case["schedule"],
        decay_rate=case["decay_rate"],
    ).epsilon
    # dp_accounting (pessimistic, grid 1e-4) and we both bound the same true epsilon from above;
    # Opacus' PRV returns the upper end of an interval of width 2 * 0.01 around it.
    assert ours == pytest.approx(case["dp_accounting_pld"], abs=1e-3)
    assert ours <= case["opacus_prv"]
    if "gaussian_exact" in case:
        assert ours >= case["gaussian_exact"]


@pytest.mark.parametrize(
    ("sigma", "steps", "delta"),
    [(0.8, 1, 1e-5), (3.0, 10, 1e-5), (5.0, 200, 1e-6), (12.0, 50, 1e-6), (30.0, 2000, 1e-8)],
)
def test_never_below_the_exact_gaussian_epsilon(sigma, steps, delta):
    exact = gaussian_epsilon(sigma, steps, delta)
    ours = compute_epsilon_pld(
        sample_rate=1.0, noise_multiplier=sigma, steps=steps, delta=delta
    ).epsilon
    assert exact <= ours <= exact + 1e-3


def test_the_composed_curve_lies_above_the_exact_one():
    sigma, steps = 4.0, 30
    parts = [
        (sampled_gaussian_pld(sample_rate=1.0, noise_multiplier=sigma, direction=d,
                              discretization=1e-4), steps)
        for d in ("add", "remove")
    ]  # fmt: skip
    for part in parts:
        composed, slack = compose_plds([part])
        for epsilon in (0.0, 0.5, 1.0, 2.0, 3.0):
            exact = gaussian_delta(epsilon, sigma / math.sqrt(steps))
            ours = delta_of_pld(composed, epsilon, slack)
            assert exact <= ours <= exact * (1 + 1e-3) + 1e-12


def hockey_stick_quad(q: float, sigma: float, epsilon: float, direction: str) -> float:
    """delta(eps) of one sampled-Gaussian step by integrating (P - e^eps Q)_+ over x."""
    mix = lambda x: (1 - q) * stats.norm.pdf(x, 0, sigma) + q * stats.norm.pdf(x, 1, sigma)  # noqa: E731
    base = lambda x: stats.norm.pdf(x, 0, sigma)  # noqa: E731
    p, q_ = (mix, base) if direction == "remove" else (base, mix)
    value, _ = integrate.quad(
        lambda x: max(p(x) - math.exp(epsilon) * q_(x), 0.0), -15 * sigma, 1 + 15 * sigma,
        points=[0.0, 0.5, 1.0], limit=500, epsabs=1e-15, epsrel=1e-10,
    )  # fmt: skip
    return float(value)


@pytest.mark.parametrize("direction", ["add", "remove"])
def test_one_step_connects_the_dots(direction):
    """Doroshenko et al. 2022: equal to the true curve on the grid, above it in between."""
    q, sigma, h = 0.2, 0.8, 0.05
    pld = sampled_gaussian_pld(
        sample_rate=q, noise_multiplier=sigma, direction=direction, discretization=h
    )
    assert pld.probs.min() >= 0.0
    assert pld.probs.sum() + pld.infinity_mass == pytest.approx(1.0, abs=1e-12)
    losses = h * (pld.offset + np.arange(pld.probs.size))
    assert float(np.sum(pld.probs * np.exp(-losses))) <= 1.0 + 1e-12  # Q is a sub-probability
    for epsilon in (0.0, 0.1, 0.25, 0.5, 1.0):  # grid points
        assert delta_of_pld(pld, epsilon) == pytest.approx(
            hockey_stick_quad(q, sigma, epsilon, direction), rel=1e-7, abs=1e-14
        )
    for epsilon in (0.025, 0.13, 0.61):  # between grid points: above the true curve
        assert delta_of_pld(pld, epsilon) >= hockey_stick_quad(q, sigma, epsilon, direction)


@pytest.mark.parametrize("direction", ["add", "remove"])
def test_fft_composition_matches_direct_convolution(direction):
    """The FFT window, aliasing and round-off bound only ever raise delta (and barely)."""
    step = sampled_gaussian_pld(
        sample_rate=0.3, noise_multiplier=0.9, direction=direction, discretization=2e-3
    )
    direct = step.probs
    for _ in range(3):
        direct = np.convolve(direct, step.probs)
    losses = 2e-3 * (4 * step.offset + np.arange(direct.size))
    infinity = 1 - (1 - step.infinity_mass) ** 4
    composed, slack = compose_plds([(step, 4)])
    for epsilon in (0.0, 0.5, 1.0, 2.0, 4.0):
        above = losses > epsilon
        exact = float(np.sum(direct[above] * -np.expm1(epsilon - losses[above]))) + infinity
        ours = delta_of_pld(composed, epsilon, slack)
        assert exact <= ours <= exact + 1e-12


def test_epsilon_of_pld_inverts_delta_of_pld():
    pld, slack = compose_plds(
        [(sampled_gaussian_pld(sample_rate=0.05, noise_multiplier=1.0, direction="remove",
                               discretization=1e-3), 200)]
    )  # fmt: skip
    for delta in (1e-3, 1e-5, 1e-7):
        epsilon = epsilon_of_pld(pld, delta, slack)
        assert delta_of_pld(pld, epsilon, slack) == pytest.approx(delta, rel=1e-6)
        assert delta_of_pld(pld, epsilon * 0.999, slack) > delta


def test_tighter_than_rdp_on_typical_runs():
    for q, sigma, steps in ((0.01, 1.1, 1000), (256 / 60000, 1.1, 14100), (0.05, 2.0, 400)):
        pld = compute_epsilon_pld(sample_rate=q, noise_multiplier=sigma, steps=steps, delta=1e-5)
        rdp = compute_epsilon(sample_rate=q, noise_multiplier=sigma, steps=steps, delta=1e-5)
        assert pld.epsilon < rdp.epsilon
        assert pld.epsilon == max(pld.epsilon_add, pld.epsilon_remove)


def test_decaying_noise_is_bucketed_downward():
    schedule = NoiseSchedule(kind="exponential", noise_multiplier=2.0, decay_rate=1e-3)
    exact = compute_epsilon_pld(
        sample_rate=0.02, schedule=schedule, steps=300, delta=1e-5, discretization=1e-3,
        bucket_ratio=1.0,
    )  # fmt: skip
    rounded = compute_epsilon_pld(
        sample_rate=0.02, schedule=schedule, steps=300, delta=1e-5, discretization=1e-3,
        bucket_ratio=1.01,
    )  # fmt: skip
    assert exact.buckets == 300 and exact.bucket_ratio == 1.0
    assert rounded.buckets < 300 and rounded.bucket_ratio == 1.01
    assert exact.epsilon <= rounded.epsilon <= exact.epsilon * 1.02
    # Every sigma is at least the schedule's last one: the constant run at that sigma is worse.
    last = schedule.noise_multiplier_at(299)
    worst = compute_epsilon_pld(
        sample_rate=0.02, noise_multiplier=last, steps=300, delta=1e-5, discretization=1e-3
    )
    assert rounded.epsilon <= worst.epsilon


@settings(max_examples=12, deadline=None)
@given(
    q=st.floats(0.001, 0.2),
    sigma=st.floats(0.7, 4.0),
    steps=st.integers(1, 400),
)
def test_monotone_in_steps_and_noise(q, sigma, steps):
    def eps(s: float, t: int) -> float:
        return compute_epsilon_pld(
            sample_rate=q, noise_multiplier=s, steps=t, delta=1e-5, discretization=1e-3
        ).epsilon

    base = eps(sigma, steps)
    assert eps(sigma, steps + 50) >= base - 1e-9
    assert eps(sigma * 1.2, steps) <= base + 1e-9


def test_an_exact_zero_of_the_characteristic_function_is_no_nan():
    """Found by hypothesis: one FFT slot is exactly 0 here (log -inf); it must just die."""
    result = compute_epsilon_pld(
        sample_rate=0.19811634791468385,
        noise_multiplier=3.0821923511961,
        steps=1,
        delta=1e-5,
        discretization=1e-3,
    )
    assert (
        math.isfinite(result.epsilon)
        and 0.0
        < result.epsilon
        < compute_epsilon(
            sample_rate=0.19811634791468385, noise_multiplier=3.0821923511961, steps=1, delta=1e-5
        ).epsilon
    )


def test_nothing_spent():
    assert (
        compute_epsilon_pld(sample_rate=0.0, noise_multiplier=1.0, steps=10, delta=1e-5).epsilon
        == 0.0
    )
    assert (
        compute_epsilon_pld(sample_rate=0.1, noise_multiplier=1.0, steps=0, delta=1e-5).epsilon
        == 0.0
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 1.5, "noise_multiplier": 1.0},
        {"sample_rate": 0.1, "noise_multiplier": -1.0},
        {"sample_rate": 0.1, "noise_multiplier": 1.0, "discretization": 0.0},
        {"sample_rate": 0.1, "noise_multiplier": 1.0, "bucket_ratio": 0.9},
        {"sample_rate": 0.1},
        {
            "sample_rate": 0.1,
            "noise_multiplier": 1.0,
            "schedule": NoiseSchedule(kind="constant", noise_multiplier=1.0),
        },
    ],
)
def test_invalid_parameters(kwargs):
    with pytest.raises(InvalidParameterError):
        compute_epsilon_pld(steps=10, delta=1e-5, **kwargs)
