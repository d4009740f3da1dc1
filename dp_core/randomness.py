"""Randomness a differential-privacy guarantee can stand on (numpy and the standard library only).

A DP guarantee holds against an adversary who does not know the mechanism's coins. dpledger draws
every coin behind a guarantee (noise, Poisson or uniform sampling of examples and users) from
fresh operating-system entropy that is never stored or printed:

* :func:`fresh_seed` is 63 bits from :mod:`secrets` (``os.urandom``), for a generator that lives
  only in memory for one run (torch's, which needs an integer seed);
* :func:`secret_generator` is a numpy ``Generator`` seeded from a fresh ``SeedSequence()`` (128
  bits of OS entropy);
* :func:`secure_random` is :class:`secrets.SystemRandom`, a CSPRNG, for the exact samplers below.

A *reproducible* run (``--reproducible-noise``) derives the same generators from the public
``--seed`` instead (:func:`stream_seed`): useful for debugging and tests, but the guarantee then
does not hold against anyone who knows the seed, and the ledger records the run as such.

Floating-point samplers leak through the low bits of the values they release (Mironov 2012, "On
Significance of the Least Significant Bits for Differential Privacy"). Where dpledger releases
noisy integers it uses the exact discrete Gaussian of Canonne, Kamath & Steinke 2020 ("The
Discrete Gaussian for Differential Privacy", NeurIPS), Algorithms 1-3, in integer and
:class:`fractions.Fraction` arithmetic: :func:`sample_discrete_gaussian`, and
:func:`discrete_gaussian_noise` for noise on the grid of step ``1 / granularity``.
"""

from __future__ import annotations

import math
import random
import secrets
import sys
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from dp_core.errors import InvalidParameterError

__all__ = [
    "NOISE_STREAM",
    "REPRODUCIBLE_NOISE_WARNING",
    "FEDERATED_STREAM",
    "PATE_STREAM",
    "SAMPLING_STREAM",
    "TUNING_STREAM",
    "discrete_gaussian_log_pmf",
    "discrete_gaussian_noise",
    "fresh_seed",
    "noise_random",
    "sample_bernoulli_exp",
    "sample_discrete_gaussian",
    "sample_discrete_laplace",
    "secret_generator",
    "secure_normal",
    "secure_random",
    "stream_generator",
    "stream_seed",
    "warn_reproducible_noise",
]

#: Stream numbers of :func:`stream_seed`: the noise and the sampling never share a generator.
NOISE_STREAM = 1
SAMPLING_STREAM = 2
TUNING_STREAM = 3
FEDERATED_STREAM = 4
PATE_STREAM = 5

REPRODUCIBLE_NOISE_WARNING = (
    "WARNING: --reproducible-noise: the noise and the sampling are drawn from --seed {seed}; the "
    "privacy guarantee does NOT hold against anyone who knows the seed. Use it for debugging "
    "and tests only; the ledger records this run as reproducible_noise."
)

Rational = Fraction | int


# --- secret and reproducible generators -------------------------------------------------------


def fresh_seed() -> int:
    """Return 63 bits of OS entropy (``secrets``): a seed to keep in memory, never to store."""
    return secrets.randbits(63)


def secret_generator() -> np.random.Generator:
    """Return a numpy generator seeded from fresh OS entropy (``SeedSequence()``, 128 bits)."""
    return np.random.default_rng(np.random.SeedSequence())


def secure_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    """Return N(0, 1) draws as the sum of 4 float64 standard normals divided by 2.

    Opacus' secure mode (Holohan & Braghin 2021, "Secure Random Sampling in Differential
    Privacy", Sec. 5.1): the distribution is exactly N(0, 1), and the released low bits no longer
    pin down a single draw (about 2^159 work to invert instead of 2^53).
    """
    total = rng.standard_normal(shape)
    for _ in range(3):
        total += rng.standard_normal(shape)
    return np.asarray(total / 2.0, dtype=np.float64)


def secure_random() -> random.Random:
    """Return :class:`secrets.SystemRandom`: every draw reads ``os.urandom`` (a CSPRNG)."""
    return secrets.SystemRandom()


def stream_seed(seed: int | None, *, stream: int, words: Sequence[int] = ()) -> int:
    """Return the 63-bit seed of one generator: fresh entropy, or derived from a public seed.

    Args:
        seed: ``None`` (the default everywhere): fresh OS entropy. An int: reproducible noise,
            derived from ``(seed, stream, *words)`` with numpy's ``SeedSequence`` so that
            distinct streams (noise, sampling), ranks and resume points never share a sequence.
        stream: :data:`NOISE_STREAM` or :data:`SAMPLING_STREAM` (or another small int).
        words: More non-negative ints to mix in (a rank, the step a run resumes at).
    """
    if seed is None:
        return fresh_seed()
    entropy = [int(seed), int(stream), *(int(w) for w in words)]
    if min(entropy) < 0:
        raise InvalidParameterError("seed", seed, "must be a non-negative integer")
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


def stream_generator(
    seed: int | None, *, stream: int, words: Sequence[int] = ()
) -> np.random.Generator:
    """Return a numpy generator: secret when ``seed`` is None, else derived as :func:`stream_seed`."""
    if seed is None:
        return secret_generator()
    return np.random.default_rng(stream_seed(seed, stream=stream, words=words))


def noise_random(seed: int | None, *, stream: int = NOISE_STREAM) -> random.Random:
    """Return the generator of the exact samplers: the CSPRNG, or a seeded ``random.Random``."""
    if seed is None:
        return secure_random()
    return random.Random(stream_seed(seed, stream=stream))


def warn_reproducible_noise(seed: int) -> None:
    """Print :data:`REPRODUCIBLE_NOISE_WARNING` on stderr (the loud part of the option)."""
    sys.stderr.write(REPRODUCIBLE_NOISE_WARNING.format(seed=seed) + "\n")


# --- exact samplers (Canonne, Kamath & Steinke 2020) ------------------------------------------


def _bernoulli_exp(numerator: int, denominator: int, rng: random.Random) -> bool:
    """Return True with probability exp(-numerator / denominator), in integers (Algorithm 1)."""
    if numerator <= denominator:
        k = 1  # Bernoulli(gamma / k) = [uniform in {0..k d - 1} < n]
        while rng.randrange(denominator * k) < numerator:
            k += 1
        return k % 2 == 1
    for _ in range(numerator // denominator):
        if not _bernoulli_exp(1, 1, rng):
            return False
    return _bernoulli_exp(numerator % denominator, denominator, rng)


def sample_bernoulli_exp(gamma: Rational, rng: random.Random) -> bool:
    """Return True with probability exactly exp(-gamma), gamma >= 0 rational.

    Canonne, Kamath & Steinke 2020, Algorithm 1: for gamma in [0, 1], draw A_k ~ Bernoulli(gamma
    / k) for k = 1, 2, ... until the first A_k = 0 and return whether that k is odd; for gamma > 1
    multiply floor(gamma) independent Bernoulli(exp(-1)) and one Bernoulli(exp(-(gamma -
    floor(gamma)))).
    """
    gamma = Fraction(gamma)
    if gamma < 0:
        raise InvalidParameterError("gamma", gamma, "must be >= 0")
    return _bernoulli_exp(gamma.numerator, gamma.denominator, rng)


def sample_discrete_laplace(scale: int, rng: random.Random) -> int:
    """Return Y with Pr[Y = y] proportional to exp(-|y| / scale), ``scale`` a positive integer.

    Canonne, Kamath & Steinke 2020, Algorithm 2 with s = 1, t = ``scale``: U uniform in
    {0..t-1} kept with probability exp(-U/t), V ~ Geometric(1 - e^-1), X = U + tV, a random sign,
    and the draw (sign -, 0) rejected so that 0 is not counted twice.
    """
    if scale < 1:
        raise InvalidParameterError("scale", scale, "must be a positive integer")
    while True:
        u = rng.randrange(scale)
        if not _bernoulli_exp(u, scale, rng):
            continue
        v = 0
        while _bernoulli_exp(1, 1, rng):
            v += 1
        magnitude = u + scale * v
        negative = rng.randrange(2) == 1
        if negative and magnitude == 0:
            continue
        return -magnitude if negative else magnitude


def sample_discrete_gaussian(sigma2: Rational, rng: random.Random) -> int:
    """Return Y ~ N_Z(0, sigma2): Pr[Y = y] proportional to exp(-y^2 / (2 sigma2)), exactly.

    Canonne, Kamath & Steinke 2020, Algorithm 3: t = floor(sigma) + 1, Y ~ DLap(t), accepted with
    probability exp(-(|Y| - sigma2/t)^2 / (2 sigma2)). All arithmetic is on integers (sigma2 =
    p/q makes the exponent (|Y| q t - p)^2 / (2 p q t^2)), so the output distribution is exact:
    no floating-point holes (Mironov 2012).

    Args:
        sigma2: The variance parameter sigma^2 > 0, rational (a float converts exactly).
        rng: Uniform integers: :func:`secure_random` (default) or a seeded ``random.Random``.
    """
    s2 = Fraction(sigma2)
    if s2 <= 0:
        raise InvalidParameterError("sigma2", sigma2, "must be > 0")
    return _discrete_gaussian(s2.numerator, s2.denominator, rng)


def _discrete_gaussian(p: int, q: int, rng: random.Random) -> int:
    """Algorithm 3 for sigma^2 = p / q (p, q positive integers)."""
    t = math.isqrt(p // q) + 1  # floor(sqrt(p / q)) + 1, in integers
    denominator = 2 * p * q * t * t
    while True:
        y = sample_discrete_laplace(t, rng)
        if _bernoulli_exp((abs(y) * q * t - p) ** 2, denominator, rng):
            return y


def discrete_gaussian_noise(
    shape: tuple[int, ...], *, sigma: float, granularity: int, rng: random.Random
) -> npt.NDArray[np.int64]:
    """Return discrete Gaussian noise for values released on the grid of step 1 / granularity.

    A value v on that grid is released as ``(v * granularity + Z) / granularity`` with Z ~
    N_Z(0, (sigma * granularity)^2): in grid units the sensitivity and the noise both scale by
    ``granularity``, so the release has exactly the Renyi DP of the continuous Gaussian with std
    sigma, alpha * Delta^2 / (2 sigma^2) (Canonne, Kamath & Steinke 2020, Prop. 5 and Thm. 15 for
    vectors). sigma^2 is converted exactly (a float is a dyadic rational): nothing is rounded.

    Args:
        shape: Shape of the integer noise array (in grid units).
        sigma: The noise's std in value units (e.g. votes), > 0.
        granularity: Grid points per value unit (1: integers), a positive integer.
        rng: As for :func:`sample_discrete_gaussian`.
    """
    if not math.isfinite(sigma) or sigma <= 0:
        raise InvalidParameterError("sigma", sigma, "must be a positive finite number")
    if granularity < 1:
        raise InvalidParameterError("granularity", granularity, "must be a positive integer")
    sigma2 = (Fraction(sigma) * granularity) ** 2
    p, q = sigma2.numerator, sigma2.denominator
    draws = [_discrete_gaussian(p, q, rng) for _ in range(math.prod(shape))]
    return np.asarray(draws, dtype=np.int64).reshape(shape)


def discrete_gaussian_log_pmf(
    values: npt.NDArray[np.int64], *, sigma2: float, support: int
) -> npt.NDArray[np.float64]:
    """Return log Pr[N_Z(0, sigma2) = y] for ``values``, normalized over |y| <= ``support``.

    The reference the samplers are tested against (numerically: choose ``support`` >= 40 sigma,
    beyond which the mass is below 1e-300).
    """
    grid = np.arange(-support, support + 1, dtype=np.float64)
    log_weights = -(grid**2) / (2.0 * sigma2)
    log_norm = float(np.logaddexp.reduce(log_weights))
    return np.asarray(-(values.astype(np.float64) ** 2) / (2.0 * sigma2) - log_norm)
