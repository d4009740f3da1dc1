"""Drawing Poisson inclusions toward privacy.

A sampler that includes each record with probability q must never include it with more than the
q the accountant charges. Uniform doubles from numpy's ``Generator.random`` and torch's
``rand(dtype=float64)`` on CPU lie on the grid k / 2^53 (k uniform in [0, 2^53)), so for a
threshold t on that grid P(U < t) = t exactly. Comparing with q itself would include with
ceil(q 2^53) / 2^53 >= q (and a float32 uniform with ceil(q 2^24) / 2^24, up to 6e-8 above q);
comparing with :func:`rate_down` (q) includes with exactly floor(q 2^53) / 2^53 <= q.
"""

from __future__ import annotations

import math

__all__ = ["UNIFORM_GRID", "rate_down"]

#: Uniform doubles are multiples of 1 / UNIFORM_GRID.
UNIFORM_GRID = 2**53


def rate_down(rate: float) -> float:
    """Return ``rate`` rounded down to a multiple of 2^-53 (exact: a power-of-two scaling).

    Args:
        rate: An inclusion probability in [0, 1].

    Returns:
        The largest multiple of 2^-53 that is <= ``rate``: the probability with which
        ``uniform < rate_down(rate)`` includes a record.
    """
    return math.floor(rate * UNIFORM_GRID) / UNIFORM_GRID
