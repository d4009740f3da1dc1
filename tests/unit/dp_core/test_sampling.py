"""dp_core.sampling: inclusion thresholds rounded toward privacy."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from dp_core.sampling import UNIFORM_GRID, rate_down


@given(st.floats(min_value=0.0, max_value=1.0, allow_nan=False))
def test_rate_down_never_exceeds_q_and_loses_less_than_one_grid_step(q):
    down = rate_down(q)
    assert down <= q and q - down < 1.0 / UNIFORM_GRID
    assert down * UNIFORM_GRID == math.floor(down * UNIFORM_GRID)  # on the grid


def test_rate_down_keeps_rates_already_on_the_grid():
    for q in (0.0, 1.0, 0.5, 0.25, 3 / 2**53, 1 - 2**-53):
        assert rate_down(q) == q


def test_numpy_uniform_doubles_lie_on_the_grid():
    """The reason P(U < rate_down(q)) = rate_down(q) for numpy's Generator.random (used by the
    federated server's Poisson sampling of users)."""
    u = np.random.default_rng(5).random(200_000)
    scaled = u * float(UNIFORM_GRID)
    assert np.array_equal(scaled, np.floor(scaled)) and u.min() >= 0.0 and u.max() < 1.0
