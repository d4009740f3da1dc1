"""The admission filter as pure functions, against the rule written out independently."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from app.services.accounting import filter_capacity, subtract_up
from app.services.admission_filter import FilterState, decide, filter_epsilon

ORDERS = [2.0, 4.0, 8.0, 16.0]


def test_capacity_matches_the_issue_formula():
    weights, eps, delta = [0.1, 0.2, 0.3, 0.4], 2.5, 1e-6
    a, d = np.array(ORDERS), np.array(weights) * delta
    expected = eps - np.log(1 / d) / (a - 1) - np.log(1 - 1 / a) + np.log(a) / (a - 1)
    got = filter_capacity(orders=ORDERS, weights=weights, target_epsilon=eps, target_delta=delta)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert np.all(got <= expected)  # rounded toward more privacy


def _state(reserved, alive, eps=3.0):
    cap = filter_capacity(orders=ORDERS, weights=[0.25] * 4, target_epsilon=eps, target_delta=1e-5)
    return FilterState(eps, cap, np.asarray(reserved, float), np.asarray(alive, bool))


curves = st.lists(st.floats(0.0, 5.0), min_size=4, max_size=4).map(np.array)
flags = st.lists(st.booleans(), min_size=4, max_size=4).map(np.array)


@settings(max_examples=200, deadline=None)
@given(reserved=curves, alive=flags, x=curves)
def test_decide_follows_the_rule(reserved, alive, x):
    state = _state(reserved, alive)
    decision = decide(state, x)
    fits = alive & (reserved + x <= state.capacity)
    assert decision.admitted == bool(fits.any())
    if decision.admitted:
        assert fits[decision.order_index]
        assert np.all(decision.state.reserved >= reserved + x)
        np.testing.assert_allclose(decision.state.reserved, reserved + x, rtol=1e-15, atol=1e-300)
        assert np.array_equal(
            decision.state.alive, alive & (decision.state.reserved <= state.capacity)
        )
        # The admitting order survives, so the alive set never empties on admission.
        assert decision.state.alive.any()
        assert decision.epsilon_projected <= state.target_epsilon
    else:
        assert decision.state is state
        assert decision.epsilon_projected > state.target_epsilon


@settings(max_examples=100, deadline=None)
@given(reserved=curves, alive=flags, released=st.floats(0.0, 1.0))
def test_release_lowers_s_but_keeps_alive_set(reserved, alive, released):
    lowered = subtract_up(reserved, np.full(4, released))
    assert np.all(lowered >= 0.0)
    assert np.all(lowered <= np.nextafter(np.maximum(reserved - released, 0.0), np.inf))
    assert np.all(lowered >= np.maximum(reserved - released, 0.0))


def test_filter_epsilon_is_exact_on_capacity():
    state = _state(np.zeros(4), [True] * 4)
    assert filter_epsilon(state, np.zeros(4)) == 0.0
    on_edge = state.capacity.copy()
    assert abs(filter_epsilon(state, on_edge) - 3.0) < 1e-12
    dead = _state(np.zeros(4), [False, False, False, True])
    assert abs(filter_epsilon(dead, on_edge + np.array([-9, -9, -9, 0.5])) - 3.5) < 1e-12
