"""Independent oracles: numerical integration of Renyi divergences (scipy.integrate.quad)."""

from __future__ import annotations

import math

import numpy as np
from scipy import integrate, special, stats


def rdp_sampled_gaussian_quad(q: float, sigma: float, alpha: float) -> float:
    """RDP of the sampled Gaussian by integrating E_{mu0}[(mu/mu0)^alpha] - 1 directly.

    mu0 = N(0, s^2), mu = (1-q) mu0 + q N(1, s^2); the integrand (1 - q + q L)^alpha - 1 - alpha q (L-1)
    (L the likelihood ratio; E_mu0[L - 1] = 0) is >= 0 and avoids cancellation for small RDP.
    Integrated in log space pieces around the two modes (0 and alpha, where the tilted mass sits).
    """

    def integrand(z: float) -> float:
        w = (2.0 * z - 1.0) / (2.0 * sigma**2)
        log_density = stats.norm.logpdf(z, scale=sigma)
        if w > 30.0:  # far tail: (1 - q + q e^w)^alpha dominates, in log space to avoid overflow
            log_mix = np.logaddexp(math.log1p(-q), math.log(q) + w)
            return math.exp(min(log_density + alpha * log_mix, 700.0))
        x = q * math.expm1(w)
        if abs(x) < 1e-3:  # series of (1+x)^a - 1 - a x, no cancellation
            terms = sum(special.binom(alpha, j) * x**j for j in range(2, 12))
            return math.exp(log_density) * terms
        log_power = alpha * math.log1p(x)
        if log_power > 30.0:  # the -1 - alpha x corrections are below e^-30 relative
            return math.exp(min(log_density + log_power, 700.0))
        return math.exp(log_density) * (math.expm1(log_power) - alpha * x)

    points = sorted({-12 * sigma, 0.0, 0.5, alpha / 2, alpha, alpha + 12 * sigma})
    total = 0.0
    for lo, hi in zip(points[:-1], points[1:], strict=True):
        part, _ = integrate.quad(integrand, lo, hi, epsabs=0.0, epsrel=1e-13, limit=400)
        total += part
    for lo, hi in ((-np.inf, points[0]), (points[-1], np.inf)):
        part, _ = integrate.quad(integrand, lo, hi, epsabs=0.0, epsrel=1e-13, limit=400)
        total += part
    return math.log1p(total) / (alpha - 1.0)


def rdp_laplace_quad(b: float, alpha: float) -> float:
    """Renyi divergence D_alpha(Lap(0, b) || Lap(1, b)) by numerical integration."""

    def integrand(x: float) -> float:
        log_p = -abs(x) / b - math.log(2 * b)
        log_q = -abs(x - 1.0) / b - math.log(2 * b)
        return math.exp(alpha * log_p + (1.0 - alpha) * log_q)

    total = 0.0
    for lo, hi in ((-np.inf, 0.0), (0.0, 1.0), (1.0, np.inf)):
        part, _ = integrate.quad(integrand, lo, hi, epsabs=0.0, epsrel=1e-13, limit=200)
        total += part
    return math.log(total) / (alpha - 1.0)


def rdp_sampled_gaussian_binomial(q: float, sigma: float, alpha: int) -> float:
    """Integer-order closed form (MTZ 2019), summed naively in log space with Python floats."""
    logs = [
        math.lgamma(alpha + 1)
        - math.lgamma(k + 1)
        - math.lgamma(alpha - k + 1)
        + k * math.log(q)
        + (alpha - k) * math.log1p(-q)
        + (k * k - k) / (2 * sigma**2)
        for k in range(alpha + 1)
    ]
    peak = max(logs)
    return (peak + math.log(math.fsum(math.exp(x - peak) for x in logs))) / (alpha - 1)
