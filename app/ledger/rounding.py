"""Rounding toward privacy, with stated margins that cover the evaluators' real error.

dp_core computes RDP and capacities in floating point. Its evaluators are accurate to about 1e-13
relative for integer orders (log-space binomial sums) and about 1e-8 relative in the hardest
corner of the fractional-order series (sampling rate q >= 0.5, large sigma, orders near 1; measured
against quadrature, in both directions). The ledger therefore enlarges every cost by

    cost_up(x) = x * (1 + RDP_RELATIVE_MARGIN) + RDP_ABSOLUTE_MARGIN

before it enters the exact fixed-point arithmetic of :mod:`app.ledger.quanta` (rounded up to a
quantum there), and shrinks every capacity by

    capacity_down(B) = B - |B| * CAPACITY_RELATIVE_MARGIN - CAPACITY_ABSOLUTE_MARGIN

(rounded down to a quantum). The margins are 100x the largest error measured, and
``tests/unit/app/test_ledger_rounding.py`` checks them against high-precision oracles (mpmath)
on random cases, the hard corner included. Their cost: a relative 1e-6 of every epsilon, far
below anything a practitioner reports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction

import numpy as np

from app.ledger import quanta
from app.ledger.quanta import FloatArray, Vec

RDP_RELATIVE_MARGIN = 1e-6
RDP_ABSOLUTE_MARGIN = 1e-15
CAPACITY_RELATIVE_MARGIN = 1e-12
CAPACITY_ABSOLUTE_MARGIN = 1e-12


def cost_up(rdp: Iterable[float]) -> Vec:
    """Return an RDP cost computed in floats as quanta, enlarged by the margins (up)."""
    values = np.asarray(list(rdp), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        widened = values + values * RDP_RELATIVE_MARGIN + RDP_ABSOLUTE_MARGIN
    widened = np.where(np.isinf(values), np.inf, widened)
    return quanta.from_floats_up(np.nextafter(widened, np.inf))


def capacity_down(capacity: Iterable[float]) -> Vec:
    """Return filter capacities computed in floats as quanta, shrunk by the margins (down)."""
    values = np.asarray(list(capacity), dtype=np.float64)
    narrowed = values - np.abs(values) * CAPACITY_RELATIVE_MARGIN - CAPACITY_ABSOLUTE_MARGIN
    return quanta.from_floats_down(np.nextafter(narrowed, -np.inf))


def subtract_down(minuend: float, subtrahend: float) -> float:
    """Return minuend - subtrahend rounded down (e.g. the filter's share of a split budget)."""
    diff = minuend - subtrahend
    # The float difference may be rounded either way; step down when it is above the exact one.
    if Fraction(diff) > Fraction(minuend) - Fraction(subtrahend):
        diff = math.nextafter(diff, -math.inf)
    return diff


def as_floats(values: Vec) -> FloatArray:
    """Return a cost as floats, each the smallest float not below the exact value."""
    return quanta.to_floats_up(values)
