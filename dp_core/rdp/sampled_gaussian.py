"""RDP of the Poisson-subsampled Gaussian mechanism.

Mironov, Talwar & Zhang 2019, "Renyi Differential Privacy of the Sampled Gaussian Mechanism"
(MTZ). With mixture mu = (1-q) N(0, s^2) + q N(1, s^2) and A_alpha = E_{mu0}[(mu/mu0)^alpha], the
RDP at order alpha is log(A_alpha) / (alpha - 1) (MTZ Thm. 4 / Sec. 3.3).

* Integer alpha: the exact binomial expansion (MTZ Sec. 3.3, eq. for integer orders)
  A = sum_k C(alpha, k) (1-q)^(alpha-k) q^k exp((k^2 - k) / (2 s^2)). Since the binomial
  weights sum to 1, A - 1 = sum_{k>=2} C(alpha,k) (1-q)^(alpha-k) q^k expm1((k^2-k)/(2 s^2)),
  a sum of positive terms: we compute log(A - 1) directly, which keeps tiny RDP values exact
  where summing A and subtracting 1 would lose digits.
* Fractional alpha: the two series of MTZ Sec. 3.3 split at z0 = s^2 log(1/q - 1) + 1/2, with
  their signed generalised binomial coefficients (dp_accounting 0.6.0 sums absolute values, which
  overestimates at orders near 1). For i > alpha the terms alternate with smoothly decaying
  magnitude ~ i^(-alpha-2), so we sum the head exactly and accelerate the tail with Euler's
  transform (repeated averaging of partial sums); convergence is checked, never assumed.
* q = 0 gives 0 and q = 1 the plain Gaussian, exactly.

All sums run in log space (log-sum-exp with a per-row shift) to avoid overflow at large orders.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import special

from dp_core.errors import DpCoreError
from dp_core.rdp.orders import FloatArray

_EULER_WINDOW = 24
_MAX_TERMS = 1 << 17
_SIGMA_CHUNK = 64
_REL_TOL = 1e-13


def rdp_sampled_gaussian(
    *, sample_rate: float, noise_multiplier: float, orders: FloatArray
) -> FloatArray:
    """Return the RDP at ``orders`` of one step of the Poisson-subsampled Gaussian mechanism."""
    matrix = rdp_sampled_gaussian_matrix(
        sample_rate=sample_rate, noise_multipliers=np.array([noise_multiplier]), orders=orders
    )
    return np.asarray(matrix[0], dtype=np.float64)


def rdp_sampled_gaussian_matrix(
    *, sample_rate: float, noise_multipliers: FloatArray, orders: FloatArray
) -> FloatArray:
    """Return RDP[i, j] of one sampled-Gaussian step with sigma_i at order alpha_j.

    Vectorised over sigmas and orders; this is the exact evaluator every fast path is tested against.
    """
    sigmas = np.asarray(noise_multipliers, dtype=np.float64).reshape(-1)
    a = np.asarray(orders, dtype=np.float64).reshape(-1)
    out = np.zeros((sigmas.size, a.size))
    if sample_rate == 0.0 or sigmas.size == 0:
        return out
    if sample_rate == 1.0:
        return np.asarray(a[None, :] / (2.0 * sigmas[:, None] ** 2), dtype=np.float64)
    is_int = a == np.round(a)
    if np.any(is_int):
        int_orders = tuple(int(x) for x in a[is_int])
        out[:, is_int] = _rdp_integer_orders(sample_rate, sigmas, int_orders)
    frac = np.flatnonzero(~is_int)
    if frac.size:
        for lo in range(0, sigmas.size, _SIGMA_CHUNK):
            chunk = sigmas[lo : lo + _SIGMA_CHUNK]
            out[lo : lo + _SIGMA_CHUNK, frac] = _rdp_fractional_orders(sample_rate, chunk, a[frac])
    return out


def _log_expm1(x: FloatArray) -> FloatArray:
    """log(exp(x) - 1) for x >= 0, stable for large x (x + log1p(-exp(-x)))."""
    with np.errstate(divide="ignore", over="ignore"):
        small = np.log(np.expm1(np.minimum(x, 30.0)))
        large = x + np.log1p(-np.exp(-np.maximum(x, 30.0)))
    return np.where(x > 30.0, large, small)


@functools.lru_cache(maxsize=64)
def _integer_layout(q: float, alphas: tuple[int, ...]) -> tuple[FloatArray, FloatArray, np.ndarray]:
    """Flattened k = 2..alpha for every integer order, with the sigma-independent log weights.

    Returns (k, log C(alpha,k) + k log q + (alpha-k) log(1-q), segment start of each order).
    """
    ks, weights, starts = [], [], []
    offset = 0
    for alpha in alphas:
        k = np.arange(2, alpha + 1, dtype=np.float64)
        ks.append(k)
        weights.append(
            special.gammaln(alpha + 1.0)
            - special.gammaln(k + 1.0)
            - special.gammaln(alpha - k + 1.0)
            + k * math.log(q)
            + (alpha - k) * math.log1p(-q)
        )
        starts.append(offset)
        offset += k.size
    return np.concatenate(ks), np.concatenate(weights), np.array(starts, dtype=np.intp)


def _rdp_integer_orders(q: float, sigmas: FloatArray, alphas: tuple[int, ...]) -> FloatArray:
    """RDP[i, j] at integer orders alpha_j >= 2 (binomial expansion of A - 1, see module doc)."""
    k, log_weight, starts = _integer_layout(q, alphas)
    lengths = np.diff(np.append(starts, k.size))
    half_k2 = 0.5 * k * (k - 1.0)
    denominators = np.asarray(alphas, dtype=np.float64) - 1.0
    out = np.empty((sigmas.size, len(alphas)))
    rows = max(1, 4_000_000 // k.size)  # bound memory: (rows x all terms of all orders)
    for lo in range(0, sigmas.size, rows):
        v = 1.0 / sigmas[lo : lo + rows, None] ** 2
        terms = log_weight + _log_expm1(half_k2 * v)
        # Segmented log-sum-exp: shift each order's terms by their maximum.
        peak = np.maximum.reduceat(terms, starts, axis=1)
        sums = np.add.reduceat(np.exp(terms - np.repeat(peak, lengths, axis=1)), starts, axis=1)
        log_a_minus_1 = peak + np.log(sums)
        # log(A) = log(1 + (A - 1)) = logaddexp(0, log(A - 1)), exact for tiny and huge A - 1.
        out[lo : lo + rows] = np.logaddexp(0.0, log_a_minus_1) / denominators
    return out


def _rdp_fractional_orders(q: float, sigmas: FloatArray, alphas: FloatArray) -> FloatArray:
    """RDP at (any real) orders alpha > 1 for each sigma, by the MTZ series (see module doc)."""
    sig = sigmas[:, None, None]
    al = alphas[None, :, None]
    z0 = sig**2 * math.log(1.0 / q - 1.0) + 0.5
    # Terms up to past alpha, the split point z0 (+10 sigma for the erfc cut-off) and the window.
    tail_matters = float(np.max(sigmas)) * abs(math.log(1.0 / q - 1.0)) < 12.0
    reach = float(np.max(alphas)) + (float(np.max(z0 + 10.0 * sig)) if tail_matters else 0.0)
    n_terms = int(min(max(reach, 0.0) + 48 + _EULER_WINDOW, _MAX_TERMS))
    while True:
        log_a, converged = _fractional_series(q, sig, al, z0, n_terms)
        if np.all(converged):
            return log_a / (alphas[None, :] - 1.0)
        if n_terms >= _MAX_TERMS:
            bad = np.argwhere(~converged)[0]
            raise DpCoreError(
                "sampled-Gaussian RDP series did not converge at "
                f"order {alphas[bad[1]]:g}, noise_multiplier {sigmas[bad[0]]:g}, sample_rate {q:g}"
            )
        n_terms = min(2 * n_terms, _MAX_TERMS)


def _log_abs_diff(x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Return (log|e^x - e^y|, sign(e^x - e^y)) without forming e^x or e^y."""
    big, small = np.maximum(x, y), np.minimum(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_mag = big + np.log(-np.expm1(small - big))
    log_mag = np.where(np.isneginf(big), -np.inf, log_mag)
    return log_mag, np.where(x >= y, 1.0, -1.0)


def _fractional_series(
    q: float, sig: FloatArray, al: FloatArray, z0: FloatArray, n_terms: int
) -> tuple[FloatArray, np.ndarray]:
    """Sum the two MTZ series with n_terms terms; return log A and a convergence mask.

    For q < 1/2 the series is rearranged to give A - 1 directly: with Phi the normal CDF,
    1 = Phi(z0/s) + Phi(-z0/s) and sum_i C(alpha,i) (1-q)^(alpha-i) q^i = 1 (binomial series,
    convergent for q/(1-q) < 1), so A1 - Phi(z0/s) = sum_i C(alpha,i)(1-q)^(alpha-i) q^i D_i with
    D_i = exp((i^2-i)/(2s^2)) Phi((z0-i)/s) - Phi(z0/s), and A - 1 = that + A2 - Phi(-z0/s).
    Summing A and subtracting 1 would lose every digit of a tiny RDP (A - 1 ~ 1e-8 leaves 8).
    """
    i = np.arange(n_terms, dtype=np.float64)[None, None, :]
    minus_one = q < 0.5
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # log|C(alpha, i)|; gammaln is log|Gamma| so negative non-integer arguments are fine, and
        # an integer alpha gives -inf beyond alpha (the coefficient is 0).
        log_coef = (
            special.gammaln(al + 1.0) - special.gammaln(i + 1.0) - special.gammaln(al - i + 1.0)
        )
        negatives = np.maximum(0.0, i - np.ceil(al))
        sign = np.where(negatives % 2 == 0, 1.0, -1.0)
        j = al - i
        v = 0.5 / sig**2
        c1 = (i * i - i) * v
        log_phi_hi = special.log_ndtr((z0 - i) / sig) + c1  # log of exp(c1) Phi((z0-i)/s)
        if minus_one:
            log_d, sign_d = _log_abs_diff(log_phi_hi, special.log_ndtr(z0 / sig))
        else:
            log_d, sign_d = log_phi_hi, np.ones_like(log_phi_hi)
        log_t1 = log_coef + i * math.log(q) + j * math.log1p(-q) + log_d
        log_t2 = log_coef + j * math.log(q) + i * math.log1p(-q) + (j * j - j) * v
        log_t2 = log_t2 + special.log_ndtr((j - z0) / sig)
        log_const = (
            special.log_ndtr(-z0 / sig)[:, :, 0] if minus_one else np.full(z0.shape[:2], -np.inf)
        )
        shift = np.maximum(np.max(np.maximum(log_t1, log_t2), axis=2), log_const)[:, :, None]
        scaled = sign * (sign_d * np.exp(log_t1 - shift) + np.exp(log_t2 - shift))
    partial = np.cumsum(np.nan_to_num(scaled), axis=2)
    # Euler's transform: repeatedly average the last partial sums of the alternating tail.
    level = partial[:, :, -_EULER_WINDOW - 1 :]
    for _ in range(_EULER_WINDOW - 1):
        level = 0.5 * (level[:, :, 1:] + level[:, :, :-1])
    total = 0.5 * (level[:, :, 0] + level[:, :, 1])
    error = 0.5 * np.abs(level[:, :, 1] - level[:, :, 0])
    shift2 = shift[:, :, 0]
    if minus_one:
        total = total - np.exp(log_const - shift2)  # A - 1 (scaled)
        accuracy = _REL_TOL * np.abs(total) + 64 * np.finfo(float).eps * np.max(
            np.abs(scaled), axis=2
        )
    else:  # total is A (scaled); A - 1 may cancel, accept the rounding of A itself
        accuracy = np.maximum(_REL_TOL * np.abs(total - np.exp(-shift2)), 8e-16 * np.abs(total))
    converged = np.isfinite(total) & (error <= accuracy)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if minus_one:
            # log A = log(1 + (A - 1)); A - 1 >= 0 exactly, so clip rounding below 0.
            log_a = np.logaddexp(0.0, np.log(np.maximum(total, 0.0)) + shift2)
        else:
            log_a = np.maximum(np.log(total) + shift2, 0.0)
    return log_a, converged
