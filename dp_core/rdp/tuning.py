"""RDP of private hyperparameter tuning: run a mechanism a random number of times, keep the best.

Papernot & Steinke 2022, "Hyperparameter tuning with Renyi differential privacy" (ICLR). Let Q be
(lambda, eps(lambda))-RDP at every order; A runs Q K times (K random) and releases the best run.

* Truncated negative binomial K ~ D_{eta,gamma} (their Thm. 2): for any lambda > 1 and any
  lambda_hat >= 1, A is (lambda, eps')-RDP with
  eps' = eps(lambda) + (1 + eta)(1 - 1/lambda_hat) eps(lambda_hat) + (1 + eta) log(1/gamma)/lambda_hat
  + log(E[K]) / (lambda - 1), where E[K] = eta (1 - gamma) / (gamma (1 - gamma^eta)) (eta != 0) and
  (1/gamma - 1) / log(1/gamma) (eta = 0). We minimise over lambda_hat in {1} and the grid (any
  lambda_hat gives a valid bound, so a finite set only loosens it).
* Poisson K ~ Poisson(mu) (their Thm. 6): if Q is also (eps_hat, delta_hat)-DP with
  e^{eps_hat} <= 1 + 1/(lambda - 1), then eps' = eps(lambda) + mu delta_hat + log(mu)/(lambda - 1).
  We take eps_hat = log(1 + 1/(lambda - 1)) and delta_hat from Q's RDP curve (CKS conversion,
  an upper bound of the true delta_hat).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from dp_core.conversion import rdp_to_delta
from dp_core.mechanisms import Tuning
from dp_core.rdp.orders import DEFAULT_ORDERS, FloatArray

__all__ = ["rdp_tuning"]

RdpOf = Callable[[object, FloatArray], FloatArray]


def rdp_tuning(mechanism: Tuning, orders: FloatArray, rdp_of: RdpOf) -> FloatArray:
    """RDP of the tuning mechanism at ``orders``; ``rdp_of`` computes the base's RDP."""
    base = rdp_of(mechanism.base, orders)
    log_runs = math.log(mechanism.expected_runs)
    if mechanism.distribution == "poisson":
        return base + _poisson_penalty(mechanism, orders, rdp_of) + log_runs / (orders - 1.0)
    grid = np.union1d(orders, DEFAULT_ORDERS)
    return (
        base
        + _negative_binomial_penalty(mechanism, grid, rdp_of(mechanism.base, grid))
        + (log_runs / (orders - 1.0))
    )


def _negative_binomial_penalty(mechanism: Tuning, grid: FloatArray, rdp: FloatArray) -> float:
    """Min over lambda_hat in {1} and the grid of the middle terms of Thm. 2."""
    factor = 1.0 + mechanism.eta
    log_inverse_gamma = math.log(1.0 / mechanism.gamma)
    at_one = factor * log_inverse_gamma  # lambda_hat = 1: the eps(lambda_hat) term vanishes
    values = factor * (1.0 - 1.0 / grid) * rdp + factor * log_inverse_gamma / grid
    return float(min(at_one, float(np.min(values))))


def _poisson_penalty(mechanism: Tuning, orders: FloatArray, rdp_of: RdpOf) -> FloatArray:
    """Mu * delta_hat(eps_hat = log(1 + 1/(lambda - 1))) at each order (Thm. 6)."""
    grid = DEFAULT_ORDERS
    curve = rdp_of(mechanism.base, grid)
    deltas = [
        rdp_to_delta(orders=grid, rdp=curve, epsilon=math.log1p(1.0 / (a - 1.0)), warn=False).delta
        for a in orders
    ]
    return mechanism.mu * np.asarray(deltas, dtype=np.float64)
