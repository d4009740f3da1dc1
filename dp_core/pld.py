"""Privacy-loss-distribution (PLD) accounting of one DP-SGD run: the tightest honest epsilon.

The privacy loss of a pair (P, Q) is L = log(P(x)/Q(x)) with x ~ P; its distribution (the PLD)
determines the whole privacy curve through the hockey-stick divergence

    delta(epsilon) = E_P[(1 - exp(epsilon - L))_+] + P(L = +inf)

(Sommer, Meiser & Mohammadi 2019, "Privacy loss classes: the central limit theorem in differential
privacy", Def. 3 and Lemma 5; Meiser & Mohammadi 2018, "Tight on budget?", Sec. 3), and T
adaptive compositions have the T-fold convolution of the per-step PLDs as their PLD (Sommer et al.
2019, Thm. 1). We compute it as Koskela, Jaelkoe & Honkela 2020 ("Computing tight differential
privacy guarantees using FFT", Alg. 1) and Koskela et al. 2021 ("Tight differential privacy for
discrete-valued mechanisms and for the subsampled Gaussian mechanism using FFT") do: put the loss on
a grid of width h, raise the discrete Fourier transform to the power T, transform back. Gopi, Lee &
Wutschitz 2021 ("Numerical composition of differential privacy", the PRV accountant) analyse the
same computation; Opacus' ``PRVAccountant`` implements it.

What makes the result an upper bound (every step rounds toward more privacy loss):

* **Per step: pessimistic "connect-the-dots" discretization** (Doroshenko, Ghazi, Kamath, Kumar &
  Manurangsi 2022, "Connect the dots: tighter discrete approximations of privacy loss
  distributions", Alg. 1 and Thm. 9). The P-mass and the Q-mass of the loss in each grid interval
  (e_j, e_{j+1}] are moved to its two end points so that both are preserved; the discrete pair's
  privacy curve then equals the true one at every grid point and is linear in exp(epsilon) between
  them, hence above it (the hockey-stick curve is convex in exp(epsilon)). The discrete pair
  dominates the true one, and domination is preserved by composition (their Thm. 9; Zhu, Dong &
  Wang 2022, "Optimal accounting of differential privacy via characteristic function", Lemma 9).
  The lower tail below the grid is rounded UP to its first point and the upper tail above the grid
  is put at +inf (kept as delta).
* **Composition window.** The FFT works modulo its length N, so mass of the T-fold sum outside the
  window aliases into it. Aliased mass is non-negative, so it can only raise the computed delta;
  what leaves the window is bounded by a Chernoff bound, P(S >= s) <= exp(T K(t) - t s) with K the
  exact cumulant generating function of the discrete PLD, and that bound is added to delta.
* **Floating point.** Negative round-off in the inverse FFT is clipped to 0 (which raises delta)
  and an a-priori bound on the FFT's round-off (Higham 2002, "Accuracy and Stability of Numerical
  Algorithms", Thm. 24.2, carried through the power) is added to delta.
* **Decaying noise.** A smaller sigma gives a dominating mechanism (add noise to post-process), so
  each sigma is rounded DOWN to a geometric grid sigma_max * r^-k and equal sigmas are composed as
  one power; up to 256 distinct sigmas are used exactly.

The mechanism is the Poisson-subsampled Gaussian under add/remove adjacency: "remove" compares
P = (1-q) N(0, s^2) + q N(1, s^2) with Q = N(0, s^2), "add" compares P = N(0, s^2) with that mixture
(dp_accounting's two directions; Zhu, Dong & Wang 2022, Sec. 5). Each direction is composed on its
own and the reported epsilon is the larger of the two, i.e. the epsilon of max(delta_add,
delta_remove).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft
from scipy import special

from dp_core.errors import DpCoreError, InvalidParameterError
from dp_core.rdp.orders import FloatArray
from dp_core.schedules import NoiseSchedule
from dp_core.validation import non_negative_int, open_probability, positive_float, probability

__all__ = [
    "DEFAULT_BUCKET_RATIO",
    "DEFAULT_DISCRETIZATION",
    "EXACT_SCHEDULE_DISCRETIZATION",
    "SCHEDULE_DISCRETIZATION",
    "DiscretePld",
    "PldCurve",
    "PldEpsilon",
    "compose_plds",
    "compute_epsilon_pld",
    "delta_of_pld",
    "epsilon_of_pld",
    "sampled_gaussian_pld",
    "sampled_gaussian_pld_curve",
]

DEFAULT_DISCRETIZATION = 8e-5  # a little finer than dp_accounting's 1e-4 (up to 8 sigmas)
EXACT_SCHEDULE_DISCRETIZATION = 3e-4  # default for 9 to 256 distinct sigmas (used exactly)
SCHEDULE_DISCRETIZATION = 1e-3  # default when composing many distinct (bucketed) sigmas
DEFAULT_BUCKET_RATIO = 1.005
_TAIL_Z = 11.0  # per-step tails beyond 11 standard deviations: Phi(-11) ~ 2e-28
_WINDOW_TAIL = 1e-18  # Chernoff bound on the composed mass outside the FFT window, per side
_FINE_GRID_SIGMAS = 8  # up to this many distinct sigmas, the fine default grid
_EXACT_SIGMAS = 256  # up to this many distinct sigmas, each is used exactly (no rounding down)
_DIRECTIONS = ("remove", "add")
_MAX_GRID = 1 << 25
_UNDERFLOW = -760.0  # exp() of less is 0 in float64


@dataclass(frozen=True)
class DiscretePld:
    """A PLD on the grid h * (offset + i): P-masses ``probs`` and the mass at +inf.

    Attributes:
        offset: Integer index of the first grid point.
        probs: Non-negative P-mass at each grid point (loss ``h * (offset + i)``).
        infinity_mass: P-mass where the loss is +inf (or was put there pessimistically).
        discretization: The grid width h.
    """

    offset: int
    probs: FloatArray
    infinity_mass: float
    discretization: float


@dataclass(frozen=True)
class PldEpsilon:
    """Epsilon of a run by PLD accounting (an upper bound of the true epsilon).

    Attributes:
        epsilon: max(epsilon_add, epsilon_remove): the run is (epsilon, delta)-DP under add/remove.
        delta: The delta the epsilon holds for.
        epsilon_add: Epsilon of the "add" direction.
        epsilon_remove: Epsilon of the "remove" direction.
        discretization: Grid width h of the privacy loss.
        steps: Number of DP-SGD steps.
        buckets: Number of distinct noise multipliers composed (after rounding down).
        bucket_ratio: Ratio r of the geometric grid sigmas were rounded down to (1.0: exact).
    """

    epsilon: float
    delta: float
    epsilon_add: float
    epsilon_remove: float
    discretization: float
    steps: int
    buckets: int
    bucket_ratio: float


# --- one step: the pessimistic connect-the-dots PLD --------------------------------------------


def _threshold(losses: FloatArray, q: float, sigma: float, sign: float) -> FloatArray:
    """x* with sign * L(x*) = loss, where exp(sign * L(x)) = 1 - q + q exp((2x - 1) / (2 s^2)).

    Solving gives x* = s^2 (log(exp(sign * loss) - (1 - q)) - log q) + 1/2; below the loss's
    infimum (exp(sign * loss) <= 1 - q) there is no solution and x* = -inf.
    """
    v = sign * losses
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # log(e^v - (1-q)) = v + log1p(-(1-q) e^-v): stable for the large v of the tails.
        log_diff = v if q == 1.0 else v + np.log1p(-(1.0 - q) * np.exp(-v))
    x = sigma**2 * (log_diff - math.log(q)) + 0.5
    return np.asarray(np.where(np.isnan(x), -np.inf, x), dtype=np.float64)


def _ndtr(z: FloatArray) -> FloatArray:
    """Standard normal CDF, from its log (scipy's typed stub); exact in both tails."""
    return np.asarray(np.exp(special.log_ndtr(z)), dtype=np.float64)


def _survivals(x: FloatArray, q: float, sigma: float, direction: str) -> tuple[FloatArray, ...]:
    """(P(L > l), P(L <= l), Q(L > l), Q(L <= l)) at thresholds x* = x(l) of one direction.

    remove: P = mixture, Q = N(0, s^2), L increasing in x, so L > l iff x > x*.
    add: P = N(0, s^2), Q = mixture, L decreasing in x, so L > l iff x < x*.
    Both tails are computed directly with ndtr (never 1 - ndtr) so tiny tails keep their digits.
    """
    hi0, lo0 = _ndtr(-x / sigma), _ndtr(x / sigma)  # N(0): x > x*, x <= x*
    hi1, lo1 = _ndtr((1.0 - x) / sigma), _ndtr((x - 1.0) / sigma)  # N(1)
    mix_hi, mix_lo = (1.0 - q) * hi0 + q * hi1, (1.0 - q) * lo0 + q * lo1
    if direction == "remove":
        return mix_hi, mix_lo, hi0, lo0
    return lo0, hi0, mix_lo, mix_hi


def _loss_range(q: float, sigma: float, direction: str) -> tuple[float, float]:
    """Losses below/above which P has less than Phi(-11) mass (exact bounds where finite)."""
    z = _TAIL_Z * sigma
    floor = math.log1p(-q) if q < 1.0 else -math.inf

    def remove_loss(x: float) -> float:  # log(1 - q + q exp((2x - 1) / (2 s^2)))
        return float(np.logaddexp(floor, math.log(q) + (2.0 * x - 1.0) / (2.0 * sigma**2)))

    if direction == "remove":  # x ~ mixture, L increasing: infimum log(1-q), top at x = 1 + z
        low = math.log1p(-q) if q < 1.0 else remove_loss(-z)
        return low, remove_loss(1.0 + z)
    # add: x ~ N(0), L = -remove_loss(x) decreasing: bottom at x = z, supremum -log(1-q)
    high = -math.log1p(-q) if q < 1.0 else -remove_loss(-z)
    return -remove_loss(z), high


def sampled_gaussian_pld(
    *,
    sample_rate: float,
    noise_multiplier: float,
    direction: str,
    discretization: float,
    max_points: int | None = None,
) -> DiscretePld:
    """Pessimistic (connect-the-dots) PLD of one step of the Poisson-subsampled Gaussian.

    Doroshenko et al. 2022, Alg. 1: with a_j, b_j the P- and Q-mass of the loss in
    (e_j, e_{j+1}], the point e_{j+1} receives v_j = (a_j - e^{e_j} b_j) / (1 - e^{-h}) and e_j
    receives a_j - v_j, which keeps both masses. Lower tail: rounded up to the first grid point;
    upper tail: +inf.

    Args:
        sample_rate: q in (0, 1].
        noise_multiplier: sigma > 0.
        direction: ``"remove"`` or ``"add"`` (see the module docstring).
        discretization: Grid width h > 0.
        max_points: Refuse (DpCoreError, before allocating) a grid of more points than this
            (a tiny sigma spreads the losses over ~1/sigma^2: a work bound, not a validity one).
    """
    q, sigma, h = sample_rate, noise_multiplier, discretization
    low, high = _loss_range(q, sigma, direction)
    first, last = math.floor(low / h), math.ceil(high / h)
    limit = _MAX_GRID if max_points is None else min(max_points, _MAX_GRID)
    if last - first + 1 > limit:
        raise DpCoreError(
            f"one step's privacy loss spans {last - first + 1} grid points, over the work bound"
            f" of {limit}; use a larger discretization (or RDP accounting)"
        )
    losses = h * np.arange(first, last + 1, dtype=np.float64)
    sign = 1.0 if direction == "remove" else -1.0
    p_hi, p_lo, q_hi, q_lo = _survivals(_threshold(losses, q, sigma, sign), q, sigma, direction)
    # Interval masses by differences of whichever tail is smaller (keeps tiny masses accurate).
    upper = p_hi[:-1] < p_lo[1:]
    a = np.where(upper, p_hi[:-1] - p_hi[1:], p_lo[1:] - p_lo[:-1])
    b = np.where(upper, q_hi[:-1] - q_hi[1:], q_lo[1:] - q_lo[:-1])
    a, b = np.maximum(a, 0.0), np.maximum(b, 0.0)
    with np.errstate(divide="ignore"):  # e^{e_j} b_j in log space: no overflow at large losses
        shifted_b = np.exp(losses[:-1] + np.log(b))
    to_upper = np.clip((a - shifted_b) / -math.expm1(-h), 0.0, a)
    probs = np.zeros(losses.size)
    probs[1:] += to_upper
    probs[:-1] += a - to_upper
    probs[0] += p_lo[0]  # the lower tail, rounded up to the first grid point
    return DiscretePld(first, probs, float(p_hi[-1]), h)


# --- composition by FFT --------------------------------------------------------------------------


def _log_mgf(pld: DiscretePld, t: FloatArray) -> FloatArray:
    """Log sum_i p_i exp(t (offset + i)) of the finite part, for each t (per grid index).

    Exact, computed block-wise as a matrix product: with blocks of w consecutive points starting
    at b, sum_i p_i e^{t i} = sum_b e^{t b} sum_{r < w} p_{b+r} e^{t r}; the inner sums for all
    blocks and all t are one (blocks x w) @ (w x len(t)) product, and w keeps e^{t r} finite.
    """
    width = int(max(1, min(64, 600.0 // max(float(np.max(np.abs(t))), 1e-300))))
    size = -(-pld.probs.size // width) * width
    padded = np.zeros(size)
    padded[: pld.probs.size] = pld.probs
    inner = padded.reshape(-1, width) @ np.exp(np.outer(np.arange(width), t))  # blocks x t
    starts = pld.offset + width * np.arange(size // width, dtype=np.float64)
    with np.errstate(divide="ignore"):
        exponents = np.log(inner) + starts[:, None] * t[None, :]
    peak = exponents.max(axis=0)  # log-sum-exp over blocks, shifted by each column's maximum
    return np.asarray(peak + np.log(np.exp(exponents - peak[None, :]).sum(axis=0)))


def _moments(pld: DiscretePld) -> tuple[float, float]:
    """Mean and variance (per grid index) of the finite part, normalised to its mass."""
    index = pld.offset + np.arange(pld.probs.size, dtype=np.float64)
    mass = float(pld.probs.sum())
    mean = float(pld.probs @ index) / mass
    return mean, float(pld.probs @ (index - mean) ** 2) / mass


def _window(plds: list[tuple[DiscretePld, int]], log_tail: float) -> tuple[int, int]:
    """Grid indices [lo, hi] outside which the composed mass is <= exp(log_tail) per side.

    Chernoff: P(S >= s) <= exp(K(t) - t s) and P(S <= s) <= exp(K(-t) + t s) for t > 0, with K the
    sum of the steps' exact log-MGFs (independent steps; Koskela et al. 2021 use the same bound).
    Any t gives a valid bound; we try t0 * 2^-k below t0 = z / sd, the optimum for a normal sum
    (heavy upper tails of the subsampled Gaussian's loss need a smaller t).
    """
    variance = sum(count * _moments(pld)[1] for pld, count in plds)
    t0 = math.sqrt(-2.0 * log_tail / max(variance, 1e-300))
    t = t0 * np.geomspace(1e-3, 2.0, 14)
    both = np.concatenate([t, -t])
    cumulant = np.zeros(both.size)
    for pld, count in plds:
        cumulant += count * _log_mgf(pld, both)
    k_up, k_down = cumulant[: t.size], cumulant[t.size :]
    hi = float(np.min((k_up - log_tail) / t))
    lo = float(np.max(-(k_down - log_tail) / t))
    return math.floor(lo), math.ceil(hi)


def _fold(pld: DiscretePld, n: int) -> FloatArray:
    """The PLD's masses with grid index m put in slot m mod n."""
    folded = np.zeros(n)
    start = pld.offset % n
    for begin in range(0, pld.probs.size, n):  # a support longer than n wraps more than once
        chunk = pld.probs[begin : begin + n]
        slot = (start + begin) % n
        head = min(chunk.size, n - slot)
        folded[slot : slot + head] += chunk[:head]
        folded[: chunk.size - head] += chunk[head:]
    return folded


def compose_plds(
    plds: list[tuple[DiscretePld, int]], *, max_fft_points: int | None = None
) -> tuple[DiscretePld, float]:
    """Compose PLDs, each a given number of times, by one FFT (Koskela et al. 2020, Alg. 1).

    The transform of the composition is the product of the steps' transforms raised to their
    counts, accumulated as a sum of logarithms. Every |transform| <= 1, so a frequency whose
    running product has underflowed to 0 stays 0 and is skipped for the remaining PLDs.

    Args:
        plds: ``(pld, count)`` pairs on the same grid.
        max_fft_points: Refuse (DpCoreError, before any FFT) a composition whose transforms would
            hold more points in all (one transform of the window per distinct PLD); None: only
            the window limit of 2^25 points applies.

    Returns:
        The composed PLD on its window, and the mass that may lie outside the window plus the
        floating-point bound: add it to any delta read from the PLD (see :func:`delta_of_pld`).
    """
    h = plds[0][0].discretization
    lo, hi = _window(plds, math.log(_WINDOW_TAIL))
    if max_fft_points is not None and len(plds) * (hi - lo + 1) > max_fft_points:
        raise DpCoreError(
            f"composing {len(plds)} PLDs over {hi - lo + 1} grid points exceeds the work bound of"
            f" {max_fft_points} points; use a larger discretization"
        )
    if hi - lo + 1 > _MAX_GRID:
        raise DpCoreError(
            f"the composed privacy loss spans {hi - lo + 1} grid points (more than {_MAX_GRID}); "
            "use a larger discretization"
        )
    n = sp_fft.next_fast_len(hi - lo + 1, real=True)
    log_phi = np.zeros(n // 2 + 1, dtype=np.complex128)
    alive = np.arange(log_phi.size)
    steps, survive = 0, 0.0
    for pld, count in sorted(plds, key=lambda item: -item[1]):
        # Grid index m goes to slot m mod n; the circular convolution keeps sums modulo n.
        phi = sp_fft.rfft(_fold(pld, n))
        with np.errstate(divide="ignore"):
            logs = np.log(phi[alive])
        # Real and imaginary parts scaled apart: an exact zero of phi has log -inf + 0j, and the
        # complex product count * (-inf + 0j) would make its imaginary part 0 * inf = nan.
        log_phi[alive] += count * logs.real + 1j * (count * logs.imag)
        alive = alive[log_phi[alive].real > _UNDERFLOW]
        steps += count
        survive += count * math.log1p(-pld.infinity_mass)
    spectrum = np.zeros(log_phi.size, dtype=np.complex128)
    spectrum[alive] = np.exp(log_phi[alive])
    composed = np.roll(sp_fft.irfft(spectrum, n), -(lo % n))  # slot i <- index lo + i
    # Round-off of the FFTs and of the power: Higham 2002 Thm. 24.2 per transform, amplified by
    # the T-th power; by Parseval this bounds the total absolute error of the output.
    eps = np.finfo(np.float64).eps
    float_error = (
        8.0
        * eps
        * (steps + 2.0 * math.log2(n))
        * math.sqrt(2.0 * float(np.sum(np.abs(spectrum) ** 2)))
    )
    composed = np.maximum(composed, 0.0)
    infinity = -math.expm1(survive)
    return DiscretePld(lo, composed, infinity, h), 2.0 * _WINDOW_TAIL + float_error


# --- reading the privacy curve ------------------------------------------------------------------


def delta_of_pld(pld: DiscretePld, epsilon: float, slack: float = 0.0) -> float:
    """Hockey-stick delta(epsilon) = sum_{l_i > eps} p_i (1 - e^{eps - l_i}) + p_inf + slack."""
    losses = pld.discretization * (pld.offset + np.arange(pld.probs.size))
    above = losses > epsilon
    value = float(np.sum(pld.probs[above] * -np.expm1(epsilon - losses[above])))
    return min(1.0, value + pld.infinity_mass + slack)


def epsilon_of_pld(pld: DiscretePld, delta: float, slack: float = 0.0) -> float:
    """Smallest epsilon >= 0 with delta_of_pld(pld, epsilon, slack) <= delta (+inf if none).

    Between consecutive losses l_{k-1} <= eps < l_k the curve is A_k - e^eps B_k with
    A_k = p_inf + slack + sum_{i >= k} p_i and B_k = sum_{i >= k} p_i e^{-l_i}; we find the first
    grid loss where delta falls below the target and solve that piece in closed form.
    """
    base = pld.infinity_mass + slack
    if base >= delta:
        return math.inf
    h = pld.discretization
    start = max(0, -pld.offset)  # only losses >= 0 matter for epsilon >= 0 (and e^-l <= 1)
    probs = pld.probs[start:]
    if probs.size == 0:  # every finite loss is negative: delta(0) is the +inf mass alone
        return 0.0
    losses = h * (pld.offset + start + np.arange(probs.size))
    mass = base + np.cumsum(probs[::-1])[::-1]  # A_k
    weighted = np.cumsum((probs * np.exp(-losses))[::-1])[::-1]  # B_k
    a_next = np.append(mass[1:], base)
    b_next = np.append(weighted[1:], 0.0)
    with np.errstate(divide="ignore"):  # e^{l_k} B_{k+1} in log space: no overflow for big l_k
        at_grid = a_next - np.exp(losses + np.log(b_next))  # delta(l_k)
    if mass[0] - weighted[0] <= delta:  # delta(0): the l = 0 term contributes p (1 - 1) = 0
        return 0.0
    k = int(np.argmax(at_grid <= delta))
    if at_grid[k] > delta:  # never below the target: only +inf mass remains at the top
        return math.inf
    a, b = float(mass[k]), float(weighted[k])
    lower = float(losses[k - 1]) if k > 0 else 0.0
    solved = math.log((a - delta) / b) if b > 0.0 and a > delta else float(losses[k])
    return float(min(max(solved, lower, 0.0), losses[k]))


# --- the run ------------------------------------------------------------------------------------


def _buckets(sigmas: FloatArray, counts: FloatArray, ratio: float) -> tuple[FloatArray, FloatArray]:
    """Round each sigma DOWN to the grid sigma_max * ratio^-k and merge equal values."""
    if sigmas.size <= _EXACT_SIGMAS or ratio == 1.0:
        return sigmas, counts
    top = float(sigmas.max())
    k = np.ceil(np.log(top / sigmas) / math.log(ratio) - 1e-12)
    rounded = top * ratio ** (-k)
    rounded = np.minimum(rounded, sigmas)  # guard the log/exp round trip: never above sigma
    keys, inverse = np.unique(k, return_inverse=True)
    merged = np.zeros(keys.size)
    np.add.at(merged, inverse, counts)
    lowest = np.full(keys.size, np.inf)
    np.minimum.at(lowest, inverse, rounded)
    return lowest, merged


def _schedule_of(
    noise_multiplier: float | None, schedule: str | NoiseSchedule, decay_rate: float
) -> NoiseSchedule:
    if isinstance(schedule, NoiseSchedule):
        if noise_multiplier is not None:
            raise InvalidParameterError(
                "noise_multiplier", noise_multiplier, "give either a NoiseSchedule or a number"
            )
        return schedule
    if noise_multiplier is None:
        raise InvalidParameterError("noise_multiplier", None, "is required")
    return NoiseSchedule(kind=schedule, noise_multiplier=noise_multiplier, decay_rate=decay_rate)


def compute_epsilon_pld(
    *,
    sample_rate: float,
    steps: int,
    delta: float,
    noise_multiplier: float | None = None,
    schedule: str | NoiseSchedule = "constant",
    decay_rate: float = 0.0,
    discretization: float | None = None,
    bucket_ratio: float = DEFAULT_BUCKET_RATIO,
    max_fft_points: int | None = None,
) -> PldEpsilon:
    """Epsilon at ``delta`` of ``steps`` Poisson-subsampled Gaussian steps, by PLD accounting.

    The result is an upper bound of the true epsilon (see the module docstring for why each
    approximation rounds toward more privacy loss).

    Args:
        sample_rate: Poisson sampling rate q in [0, 1].
        steps: Number of steps T >= 0.
        delta: Target delta in (0, 1).
        noise_multiplier: sigma (s0 of a decaying schedule); omit when ``schedule`` is a
            :class:`~dp_core.schedules.NoiseSchedule`.
        schedule: Schedule kind (as :class:`~dp_core.schedules.NoiseSchedule`) or a schedule.
        decay_rate: Decay rate k of the schedule kind.
        discretization: Grid width h of the privacy loss; by default :data:`DEFAULT_DISCRETIZATION`
            (a little finer than dp_accounting's 1e-4) for up to 8 distinct sigmas,
            :data:`EXACT_SCHEDULE_DISCRETIZATION` up to 256 (used exactly) and
            :data:`SCHEDULE_DISCRETIZATION` once sigmas are rounded into buckets (the error of the composed epsilon shrinks like h^2; the work grows like the
            number of sigmas over h, so a 100,000-step decaying schedule stays under 2 s).
        bucket_ratio: r >= 1: decaying sigmas are rounded down to sigma_max * r^-k (1.0: exact).
        max_fft_points: Refuse (DpCoreError) a composition whose transforms would hold more
            points in all (distinct sigmas x window); a caller bounding its work retries with a
            coarser ``discretization``. None: no bound but the window's.
    """
    q = probability("sample_rate", sample_rate)
    steps = non_negative_int("steps", steps)
    delta = open_probability("delta", delta)
    if discretization is not None:
        positive_float("discretization", discretization)
    ratio = positive_float("bucket_ratio", bucket_ratio)
    if ratio < 1.0:
        raise InvalidParameterError("bucket_ratio", bucket_ratio, "must be >= 1")
    noise = _schedule_of(noise_multiplier, schedule, decay_rate)
    if steps == 0 or q == 0.0:
        return PldEpsilon(
            0.0, delta, 0.0, 0.0, discretization or DEFAULT_DISCRETIZATION, steps, 0, 1.0
        )
    distinct, steps_each = noise.segments(0, steps)
    sigmas, counts = _buckets(distinct, steps_each, ratio)
    exact = distinct.size <= _EXACT_SIGMAS or ratio == 1.0
    h = discretization or _default_discretization(sigmas.size, rounded=not exact)
    epsilons = {
        direction: _epsilon_direction(q, sigmas, counts, direction, h, delta, max_fft_points)
        for direction in _DIRECTIONS
    }
    return PldEpsilon(
        epsilon=max(epsilons.values()),
        delta=delta,
        epsilon_add=epsilons["add"],
        epsilon_remove=epsilons["remove"],
        discretization=h,
        steps=steps,
        buckets=int(sigmas.size),
        bucket_ratio=1.0 if exact else ratio,
    )


def _default_discretization(buckets: int, *, rounded: bool) -> float:
    """The grid that keeps the work (about buckets / h) bounded: finer for fewer sigmas.

    Once sigmas are rounded down (up to 0.5% each), that dominates the grid's error anyway.
    """
    if buckets <= _FINE_GRID_SIGMAS:
        return DEFAULT_DISCRETIZATION
    if buckets <= _EXACT_SIGMAS and not rounded:
        return EXACT_SCHEDULE_DISCRETIZATION
    return SCHEDULE_DISCRETIZATION


def _composed_direction(
    q: float,
    sigmas: FloatArray,
    counts: FloatArray,
    direction: str,
    h: float,
    max_fft_points: int | None = None,
) -> tuple[DiscretePld, float]:
    plds = [
        (
            sampled_gaussian_pld(
                sample_rate=q,
                noise_multiplier=float(s),
                direction=direction,
                discretization=h,
                max_points=max_fft_points,
            ),
            int(c),
        )
        for s, c in zip(sigmas, counts, strict=True)
    ]
    return compose_plds(plds, max_fft_points=max_fft_points)


def _epsilon_direction(
    q: float,
    sigmas: FloatArray,
    counts: FloatArray,
    direction: str,
    h: float,
    delta: float,
    max_fft_points: int | None = None,
) -> float:
    composed, slack = _composed_direction(q, sigmas, counts, direction, h, max_fft_points)
    return epsilon_of_pld(composed, delta, slack)


@dataclass(frozen=True)
class PldCurve:
    """Both directions' composed PLDs of a run: its epsilon at any delta from one composition.

    Attributes:
        composed: (PLD, slack) of each direction; empty when nothing was spent.
    """

    composed: tuple[tuple[DiscretePld, float], ...]

    def epsilon(self, delta: float) -> float:
        """Epsilon at ``delta``: the larger of the two directions' (an upper bound)."""
        return max((epsilon_of_pld(pld, delta, slack) for pld, slack in self.composed), default=0.0)


def sampled_gaussian_pld_curve(
    *,
    sample_rate: float,
    schedule: NoiseSchedule,
    steps: int,
    discretization: float | None = None,
    max_fft_points: int | None = None,
) -> PldCurve:
    """The privacy curve of :func:`compute_epsilon_pld`'s run, composed once for many deltas."""
    q = probability("sample_rate", sample_rate)
    steps = non_negative_int("steps", steps)
    if steps == 0 or q == 0.0:
        return PldCurve(())
    distinct, steps_each = schedule.segments(0, steps)
    sigmas, counts = _buckets(distinct, steps_each, DEFAULT_BUCKET_RATIO)
    exact = distinct.size <= _EXACT_SIGMAS
    h = discretization or _default_discretization(sigmas.size, rounded=not exact)
    return PldCurve(
        tuple(
            _composed_direction(q, sigmas, counts, direction, h, max_fft_points)
            for direction in _DIRECTIONS
        )
    )
