"""app.ledger.approx: basic composition of black-box releases, exact and rounded toward privacy."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from app.ledger.approx import admit_release, exact_sums, filter_target, part_remaining

small = st.floats(min_value=0.0, max_value=2.0, allow_nan=False)


def test_releases_fill_the_part_to_the_last_bit():
    spent = exact_sums([(0.6, 1e-7)])
    decision = admit_release(budget=(1.0, 2e-7), spent=spent, release=(0.4, 1e-7))
    assert decision.admitted  # 0.6 + 0.4 = 1.0 exactly, though 0.6 + 0.4 > 1.0 in floats
    assert (decision.epsilon_spent, decision.delta_spent) == (1.0, 2e-7)


@given(st.lists(st.tuples(small, small), max_size=6), small, small, small)
def test_an_admitted_sum_never_exceeds_the_part_and_stored_totals_never_understate(
    history, budget, epsilon, delta
):
    spent = exact_sums(history)
    decision = admit_release(budget=(budget, budget), spent=spent, release=(epsilon, delta))
    total = spent[0] + Fraction(epsilon)
    assert decision.admitted == (
        total <= Fraction(budget) and spent[1] + Fraction(delta) <= Fraction(budget)
    )
    kept = total if decision.admitted else spent[0]
    assert Fraction(decision.epsilon_spent) >= kept
    assert Fraction(decision.epsilon_projected) >= total


@given(small, small)
def test_the_filter_gets_at_most_the_rest_and_remaining_is_never_overstated(whole, part):
    epsilon, delta = filter_target(
        target_epsilon=whole + part,
        target_delta=whole + part,
        approx_epsilon=part,
        approx_delta=part,
    )
    assert Fraction(epsilon) <= Fraction(whole + part) - Fraction(part)
    left = part_remaining(budget=whole + part, spent=part)
    assert left >= 0.0
    assert Fraction(left) <= max(Fraction(0), Fraction(whole + part) - Fraction(part))
