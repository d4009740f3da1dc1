"""The ledger core (app.ledger) as pure functions: exact arithmetic, the filter rule written out
independently in rationals, and random sequences of transitions checked against exact sums."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import EpochBeyondPlanError, EpochOutOfOrderError, RunNotActiveError
from app.ledger import budget, quanta, transitions
from app.ledger.budget import BudgetState
from app.ledger.costs import UnitCosts
from app.ledger.transitions import EntryKind, HoldMode, RunState

SCALE = 1 << quanta.QUANTUM_BITS
ORDERS = 4


def exact(vec):
    return [None if v is None else Fraction(v, SCALE) for v in vec]


# --- quanta --------------------------------------------------------------------------------------


@given(st.floats(min_value=0.0, max_value=1e12, allow_nan=False))
def test_costs_enter_rounded_up_and_leave_as_floats_not_below(x):
    (q,) = quanta.from_floats_up([x])
    assert Fraction(q, SCALE) >= Fraction(x)
    assert Fraction(q, SCALE) - Fraction(x) < Fraction(1, SCALE)
    back = quanta.float_up(q)
    assert Fraction(back) >= Fraction(q, SCALE) and back >= x


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_capacities_enter_rounded_down(x):
    (q,) = quanta.from_floats_down([x])
    assert Fraction(q, SCALE) <= Fraction(x)
    assert Fraction(quanta.float_down(q)) <= Fraction(q, SCALE)


def test_infinity_is_absorbing_and_never_fits():
    assert quanta.from_floats_up([math.inf]) == (None,)
    assert quanta.add((1, None), (None, 2)) == (None, None)
    assert quanta.at_most((None,), (None,)) == (False,)
    assert quanta.scale((None, 3), 0) == (0, 0)
    with pytest.raises(ValueError):
        quanta.from_floats_up([-1e-300])
    with pytest.raises(ValueError):
        quanta.subtract((1,), (2,))


# --- unit costs ----------------------------------------------------------------------------------


costs_strategy = st.lists(
    st.tuples(
        st.integers(1, 5), st.lists(st.integers(0, 10**22), min_size=ORDERS, max_size=ORDERS)
    ),
    min_size=1,
    max_size=4,
).map(lambda segs: UnitCosts(tuple((n, tuple(v)) for n, v in segs)))


@given(costs=costs_strategy, data=st.data())
def test_segment_totals_equal_unit_by_unit_sums(costs, data):
    start = data.draw(st.integers(0, costs.units))
    stop = data.draw(st.integers(start, costs.units))
    by_unit = quanta.zeros(ORDERS)
    for unit in range(start, stop):
        by_unit = quanta.add(by_unit, costs.unit(unit))
    assert costs.total(start, stop) == by_unit
    assert UnitCosts.from_json(costs.to_json()) == costs


# --- the filter, against the rule written out in rationals ---------------------------------------


def independent_admit(state: BudgetState, cost):
    s, b, x = exact(state.reserved), exact(state.capacity), exact(cost)
    fits = [
        alive and xi is not None and si is not None and si + xi <= bi
        for alive, si, xi, bi in zip(state.alive, s, x, b, strict=True)
    ]
    return any(fits), fits


vectors = st.lists(st.integers(0, 10**21), min_size=ORDERS, max_size=ORDERS).map(tuple)


@settings(max_examples=300, deadline=None)
@given(
    reserved=vectors, cost=vectors, alive=st.lists(st.booleans(), min_size=ORDERS, max_size=ORDERS)
)
def test_admission_follows_the_rule(reserved, cost, alive):
    capacity = (10**21, 2 * 10**21, 3 * 10**21, -(10**20))
    state = BudgetState(3.0, capacity, reserved, quanta.zeros(ORDERS), tuple(alive))
    answer = budget.admit(state, cost)
    admitted, fits = independent_admit(state, cost)
    assert answer.admitted == admitted
    if admitted:
        assert fits[answer.order_index]
        assert answer.state.reserved == quanta.add(reserved, cost)
        assert answer.state.alive == tuple(fits)
        assert answer.epsilon_projected <= 3.0
    else:
        assert answer.state is state
        # (A zero cost is refused only when no order is alive, which no admission leaves.)
        assert answer.epsilon_projected > 3.0 or (quanta.is_zero(cost) and not any(alive))


def test_epsilon_is_exact_on_the_capacity_and_zero_for_nothing():
    capacity = quanta.from_floats_down([0.5, 1.0, 2.0, 4.0])
    state = BudgetState.empty(target_epsilon=3.0, capacity=capacity)
    assert budget.epsilon_of(state, quanta.zeros(ORDERS)) == 0.0
    assert budget.epsilon_of(state, capacity) == 3.0
    assert budget.epsilon_remaining(state) == 3.0
    over = quanta.add(capacity, (SCALE, SCALE, SCALE, SCALE))  # one more unit of RDP everywhere
    assert budget.epsilon_of(state, over) == 4.0


# --- random sequences of transitions -------------------------------------------------------------


class Model:
    """Exact bookkeeping of what the transitions must have done, kept apart from them."""

    def __init__(self, target: float, capacity):
        self.state = BudgetState.empty(target_epsilon=target, capacity=capacity)
        self.runs: list[RunState] = []
        self.reserved_sum = [Fraction(0)] * ORDERS
        self.committed_sum = [Fraction(0)] * ORDERS
        self.per_run_reserved: list[list[Fraction]] = []
        self.per_run_charged: list[list[Fraction]] = []

    def apply(self, index: int | None, step: transitions.Transition) -> None:
        self.state = step.budget
        if index is not None:
            self.runs[index] = step.run
        for entry in step.entries:
            cost = exact(entry.cost)
            sign = -1 if entry.kind is EntryKind.release else 1
            if entry.kind is not EntryKind.charge or step.run.mode is not HoldMode.plan:
                self.reserved_sum = [
                    r + sign * c for r, c in zip(self.reserved_sum, cost, strict=True)
                ]
            if entry.kind is EntryKind.charge:
                self.committed_sum = [r + c for r, c in zip(self.committed_sum, cost, strict=True)]
                self.per_run_charged[index] = [
                    r + c for r, c in zip(self.per_run_charged[index], cost, strict=True)
                ]
            else:
                self.per_run_reserved[index] = [
                    r + sign * c for r, c in zip(self.per_run_reserved[index], cost, strict=True)
                ]

    def check(self) -> None:
        s, c = self.state, self.state
        assert exact(s.reserved) == self.reserved_sum
        assert exact(c.committed) == self.committed_sum
        assert quanta.covered(s.committed, s.reserved)
        for alive, held, cap in zip(s.alive, s.reserved, s.capacity, strict=True):
            assert not alive or (held is not None and held <= cap)
        assert any(s.alive) or not any(self.reserved_sum)
        spent = budget.epsilon_spent(s)
        on_top = budget.epsilon_reserved(s)
        remaining = budget.epsilon_remaining(s)
        assert spent <= s.target_epsilon
        assert 0.0 <= remaining <= s.target_epsilon
        assert spent + on_top + remaining == pytest.approx(s.target_epsilon, abs=1e-9)


def _random_costs(rng: random.Random, units: int) -> UnitCosts:
    if rng.random() < 0.5:
        cost = tuple(rng.randrange(0, SCALE // 4) for _ in range(ORDERS))
        return UnitCosts.uniform(cost, units)
    return UnitCosts.from_units(
        [tuple(rng.randrange(0, SCALE // 4) for _ in range(ORDERS)) for _ in range(units)]
    )


@pytest.mark.parametrize("seed", range(25))
def test_random_sequences_keep_every_invariant(seed):
    rng = random.Random(seed)
    capacity = quanta.from_floats_down([0.6, 1.5, 2.5, -0.1])
    model = Model(target=3.0, capacity=capacity)
    for _ in range(120):
        action = rng.random()
        open_runs = [i for i, r in enumerate(model.runs) if r.open]
        if action < 0.3 or not open_runs:
            mode = rng.choice([HoldMode.plan, HoldMode.plan, HoldMode.epoch, HoldMode.once])
            units = 1 if mode is HoldMode.once else rng.randint(1, 6)
            run = RunState(costs=_random_costs(rng, units), mode=mode)
            model.runs.append(run)
            model.per_run_reserved.append([Fraction(0)] * ORDERS)
            model.per_run_charged.append([Fraction(0)] * ORDERS)
            index = len(model.runs) - 1
            model.apply(index, transitions.open_run(model.state, run))
        elif action < 0.8:
            index = rng.choice(open_runs)
            run = model.runs[index]
            if run.charged < run.costs.units:
                model.apply(index, transitions.charge(model.state, run, run.charged))
        else:
            index = rng.choice(open_runs)
            model.apply(index, transitions.finish(model.state, model.runs[index]))
            run = model.runs[index]
            if run.mode is HoldMode.plan:
                # A finished plan run's reservation equals its charges, exactly.
                assert model.per_run_reserved[index] == model.per_run_charged[index]
        model.check()


def test_a_unit_is_charged_once_in_order_and_only_while_open():
    state = BudgetState.empty(target_epsilon=3.0, capacity=quanta.from_floats_down([2.0] * ORDERS))
    run = RunState(costs=UnitCosts.uniform((SCALE // 100,) * ORDERS, 3), mode=HoldMode.plan)
    opened = transitions.open_run(state, run)
    with pytest.raises(EpochOutOfOrderError):
        transitions.charge(opened.budget, opened.run, 1)
    with pytest.raises(EpochBeyondPlanError):
        transitions.charge(opened.budget, opened.run, 3)
    first = transitions.charge(opened.budget, opened.run, 0)
    again = transitions.charge(first.budget, first.run, 0)
    assert again.entries == () and again.budget == first.budget
    done = transitions.finish(first.budget, first.run)
    assert done.budget.reserved == done.budget.committed
    with pytest.raises(RunNotActiveError):
        transitions.charge(done.budget, done.run, 1)
    assert transitions.finish(done.budget, done.run).entries == ()


def test_the_issue_sequence_never_shows_spend_over_the_target():
    """Releases, partial charges and finishes on a target of 50 (issue 10's report)."""
    rng = random.Random(10)
    capacity = quanta.from_floats_down([10.0, 30.0, 45.0, 47.0])
    state = BudgetState.empty(target_epsilon=50.0, capacity=capacity)
    for _ in range(200):
        cost = tuple(rng.randrange(1, SCALE // 3) for _ in range(ORDERS))
        mode = rng.choice([HoldMode.plan, HoldMode.once])
        run = RunState(costs=UnitCosts.uniform(cost, 1 if mode is HoldMode.once else 4), mode=mode)
        step = transitions.open_run(state, run)
        state, run = step.budget, step.run
        if mode is HoldMode.plan and run.open:
            for unit in range(rng.randint(0, 4)):
                step = transitions.charge(state, run, unit)
                state, run = step.budget, step.run
            state = transitions.finish(state, run).budget
        assert budget.epsilon_spent(state) <= 50.0
        assert budget.epsilon_spent(state) + budget.epsilon_reserved(state) <= 50.0 + 1e-12


def test_replay_rebuilds_the_stored_state():
    rng = random.Random(3)
    capacity = quanta.from_floats_down([0.6, 1.5, 2.5, 4.0])
    state = BudgetState.empty(target_epsilon=3.0, capacity=capacity)
    log: list[tuple[EntryKind, tuple, bool]] = []
    for _ in range(60):
        mode = rng.choice([HoldMode.plan, HoldMode.epoch, HoldMode.once])
        run = RunState(costs=_random_costs(rng, 1 if mode is HoldMode.once else 3), mode=mode)
        steps = [transitions.open_run(state, run)]
        state, run = steps[-1].budget, steps[-1].run
        while run.open and run.charged < run.costs.units and rng.random() < 0.7:
            steps.append(transitions.charge(state, run, run.charged))
            state, run = steps[-1].budget, steps[-1].run
        if run.open:
            steps.append(transitions.finish(state, run))
            state = steps[-1].budget
        for step in steps:
            log.extend((e.kind, e.cost, mode is HoldMode.plan) for e in step.entries)
    replayed = BudgetState.empty(target_epsilon=3.0, capacity=capacity)
    for kind, cost, planned in log:
        replayed = transitions.replay_entry(replayed, kind, cost, reserved_before=planned)
    assert replayed == state


@given(st.integers(min_value=0, max_value=2**200))
def test_floats_out_of_quanta_are_the_tightest_bounds(n):
    up, down = quanta.float_up(n), quanta.float_down(n)
    assert Fraction(down) <= Fraction(n, SCALE) <= Fraction(up)
    assert Fraction(math.nextafter(up, -math.inf)) < Fraction(n, SCALE) or up == 0.0
    assert Fraction(math.nextafter(down, math.inf)) > Fraction(n, SCALE)
