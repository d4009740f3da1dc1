"""Tuning (Papernot & Steinke 2022): RDP against their theorems' closed forms for a Gaussian base."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, special

from dp_core import InvalidParameterError, RdpAccountant
from dp_core.mechanisms import Gaussian, Tuning, mechanism_from_dict, mechanism_to_dict
from dp_core.rdp.compose import compute_rdp

ORDERS = np.array([1.5, 2.0, 4.0, 8.0, 16.0, 32.0])


def closed_penalty(sigma: float, eta: float, gamma: float) -> float:
    """min over lambda_hat >= 1 of (1+eta)(1-1/l) l/(2 s^2) + (1+eta) log(1/gamma)/l (Thm. 2)."""
    f = lambda h: (1 + eta) * (h - 1) / (2 * sigma**2) + (1 + eta) * math.log(1 / gamma) / h  # noqa: E731
    best = max(1.0, sigma * math.sqrt(2 * math.log(1 / gamma)))  # stationary point of f
    return f(best)


@pytest.mark.parametrize(
    ("sigma", "eta", "gamma"), [(2.0, 1.0, 0.1), (5.0, 0.0, 0.05), (1.0, 1.0, 0.5), (3.0, 2.0, 0.2)]
)
def test_negative_binomial_matches_theorem_2(sigma, eta, gamma):
    tuning = Tuning(base=Gaussian(sigma), distribution="negative_binomial", eta=eta, gamma=gamma)
    ours = compute_rdp(tuning, ORDERS)
    closed = (
        ORDERS / (2 * sigma**2)
        + closed_penalty(sigma, eta, gamma)
        + math.log(tuning.expected_runs) / (ORDERS - 1)
    )
    assert np.all(ours >= closed - 1e-12)  # the grid only loosens the minimum over lambda_hat
    assert ours == pytest.approx(closed, abs=5e-3)


@pytest.mark.parametrize(("eta", "gamma"), [(1.0, 0.1), (0.0, 0.05), (2.0, 0.2), (-0.5, 0.3)])
def test_expected_runs_matches_the_distribution(eta, gamma):
    k = np.arange(1, 4000, dtype=np.float64)
    if eta == 0.0:
        pmf = (1 - gamma) ** k / (k * math.log(1 / gamma))
    else:  # (1-gamma)^k / (gamma^-eta - 1) * prod_{l<k} (l + eta)/(l + 1)
        log_prod = special.gammaln(k + eta) - special.gammaln(eta) - special.gammaln(k + 1)
        pmf = np.exp(k * math.log1p(-gamma) + log_prod) / (gamma**-eta - 1)
        if eta < 0:
            pmf = np.abs(pmf)
    assert pmf.sum() == pytest.approx(1.0, rel=1e-9)
    tuning = Tuning(base=Gaussian(1.0), distribution="negative_binomial", eta=eta, gamma=gamma)
    assert tuning.expected_runs == pytest.approx(float(k @ pmf), rel=1e-9)


def gaussian_delta(epsilon: float, sigma: float) -> float:
    """Exact delta of the Gaussian mechanism (Balle & Wang 2018, Thm. 8)."""
    return float(
        special.ndtr(-epsilon * sigma + 1 / (2 * sigma))
        - math.exp(epsilon) * special.ndtr(-epsilon * sigma - 1 / (2 * sigma))
    )


@pytest.mark.parametrize(("sigma", "mu"), [(2.0, 5.0), (4.0, 20.0)])
def test_poisson_between_exact_and_mironov_delta(sigma, mu):
    tuning = Tuning(base=Gaussian(sigma), distribution="poisson", mu=mu)
    ours = compute_rdp(tuning, ORDERS)
    for order, value in zip(ORDERS, ours, strict=True):
        eps_hat = math.log1p(1 / (order - 1))
        rest = order / (2 * sigma**2) + math.log(mu) / (order - 1)
        assert value >= rest + mu * gaussian_delta(eps_hat, sigma) - 1e-12
        # Mironov 2017, Prop. 3 solved for delta is a looser conversion than the one used here.
        mironov = optimize.minimize_scalar(
            lambda a, e=eps_hat: (a - 1) * (a / (2 * sigma**2) - e),
            bounds=(1.01, 1e4),
            method="bounded",
        ).fun
        assert value <= rest + mu * min(1.0, math.exp(mironov)) + 1e-12


def test_accountant_json_and_validation():
    tuning = Tuning(base=Gaussian(3.0), distribution="negative_binomial", eta=1.0, gamma=0.1)
    assert mechanism_from_dict(mechanism_to_dict(tuning)) == tuning
    accountant = RdpAccountant()
    accountant.compose(tuning)
    assert accountant.get_epsilon(1e-5).epsilon > RdpAccountant().get_epsilon(1e-5).epsilon
    for bad in ({"distribution": "x"}, {"distribution": "poisson", "mu": 0.0},
                {"distribution": "negative_binomial", "gamma": 1.0},
                {"distribution": "negative_binomial", "eta": -1.0}):  # fmt: skip
        with pytest.raises(InvalidParameterError):
            Tuning(base=Gaussian(1.0), **bad)
