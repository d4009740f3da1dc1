"""A run's life in the ledger as pure transitions: open, charge a unit, finish.

Each transition maps (budget state, run state, request) to (new budget state, new run state,
ledger entries to write, the filter's answer). Services only read, lock, apply, save and log;
the dashboard's history replays the stored entries through :func:`replay_entry`, which applies
the very same functions, so the budget rule exists once.

How a run holds its budget (``mode``):

* ``plan``: its whole cost is reserved when it opens (every unit guaranteed); a charge moves one
  unit from reserved to committed; finishing releases the units never charged.
* ``epoch``: nothing is reserved; each unit passes the filter when charged (reserved and
  committed grow together), so concurrent runs can stop it early.
* ``once``: a release, admitted and charged in one step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from app.errors import EpochBeyondPlanError, EpochOutOfOrderError, RunNotActiveError
from app.ledger import budget
from app.ledger.budget import Admission, BudgetState
from app.ledger.costs import UnitCosts
from app.ledger.quanta import Vec


class HoldMode(StrEnum):
    """How a run holds its budget."""

    plan = "plan"
    epoch = "epoch"
    once = "once"


class EntryKind(StrEnum):
    """Kinds of ledger entries."""

    reservation = "reservation"
    charge = "charge"
    release = "release"


@dataclass(frozen=True)
class Entry:
    """A ledger line to write: units [start, stop) of the run, and their exact cost."""

    kind: EntryKind
    start: int
    stop: int
    cost: Vec

    @property
    def unit(self) -> int | None:
        """The unit a charge is for (None for reservations and releases)."""
        return self.start if self.kind is EntryKind.charge else None


@dataclass(frozen=True)
class RunState:
    """What the ledger knows of a run: its costs, how it holds them, what it charged."""

    costs: UnitCosts
    mode: HoldMode
    charged: int = 0
    open: bool = False
    finished: bool = False


@dataclass(frozen=True)
class Transition:
    """The outcome of one request; ``entries`` is empty when nothing changes."""

    budget: BudgetState
    run: RunState
    entries: tuple[Entry, ...]
    admission: Admission | None = None

    @property
    def refused(self) -> bool:
        """Whether the filter refused the request."""
        return self.admission is not None and not self.admission.admitted


def open_run(state: BudgetState, run: RunState) -> Transition:
    """Admit a new run: reserve its plan, check its first unit, or charge a release at once."""
    units = run.costs.units
    if run.mode is HoldMode.epoch:
        # Admitted when its first unit would pass the filter now; nothing is held yet.
        answer = budget.admit(state, run.costs.unit(0))
        opened = replace(run, open=answer.admitted)
        return Transition(state, opened, (), replace(answer, state=state))
    total = run.costs.total(0, units)
    answer = budget.admit(state, total)
    if not answer.admitted:
        return Transition(state, run, (), answer)
    if run.mode is HoldMode.once:
        charged = budget.commit(answer.state, total)
        done = replace(run, charged=units, open=False, finished=True)
        return Transition(charged, done, (Entry(EntryKind.charge, 0, units, total),), answer)
    held = replace(run, open=True)
    return Transition(answer.state, held, (Entry(EntryKind.reservation, 0, units, total),), answer)


def _check_chargeable(run: RunState, unit: int) -> None:
    if run.finished or not run.open:
        raise RunNotActiveError("the run is not active; it cannot be charged")
    if unit >= run.costs.units:
        raise EpochBeyondPlanError(
            f"unit {unit} is beyond the plan ({run.costs.units} units: 0..{run.costs.units - 1})"
        )
    if unit != run.charged:
        raise EpochOutOfOrderError(f"the run must charge unit {run.charged} next, not {unit}")


def charge(state: BudgetState, run: RunState, unit: int) -> Transition:
    """Charge unit ``unit`` before it runs: from the reservation, or through the filter.

    A unit already charged is not charged again (the caller returns the stored entry).
    """
    if unit < run.charged:
        return Transition(state, run, ())
    _check_chargeable(run, unit)
    cost = run.costs.unit(unit)
    answer: Admission | None = None
    if run.mode is HoldMode.epoch:
        answer = budget.admit(state, cost)
        if not answer.admitted:
            return Transition(state, run, (), answer)
        state = answer.state
    charged = budget.commit(state, cost)
    return Transition(
        charged,
        replace(run, charged=unit + 1),
        (Entry(EntryKind.charge, unit, unit + 1, cost),),
        answer,
    )


def finish(state: BudgetState, run: RunState) -> Transition:
    """Finish a run: release the reservation of the units it never charged (idempotent)."""
    if run.finished:
        return Transition(state, run, ())
    if not run.open:
        raise RunNotActiveError("the run is not active; there is nothing to finish")
    done = replace(run, open=False, finished=True)
    units = run.costs.units
    if run.mode is not HoldMode.plan or run.charged == units:
        return Transition(state, done, ())
    unused = run.costs.total(run.charged, units)
    released = budget.release(state, unused)
    return Transition(released, done, (Entry(EntryKind.release, run.charged, units, unused),))


def replay_entry(
    state: BudgetState, kind: EntryKind, cost: Vec, *, reserved_before: bool
) -> BudgetState:
    """Apply one stored entry to a replayed state, with the same functions as the services.

    ``reserved_before`` says whether the charge's run holds a reservation (a plan run); a charge
    of a run that does not (pay as you go, a release) passed the filter when it was written.
    """
    if kind is EntryKind.reservation:
        return budget.admit(state, cost).state
    if kind is EntryKind.release:
        return budget.release(state, cost)
    if not reserved_before:
        state = budget.admit(state, cost).state
    return budget.commit(state, cost)
