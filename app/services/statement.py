"""The privacy statement of a run as the ledger holds it (``GET /v1/runs/{id}/statement``).

Read only. The ledger's numbers (``epsilon_run``, ``epsilon_spent``) are read through the same
functions as the run and budget endpoints, so they are equal; the DP-SGD numbers come from
:func:`dp_core.statement.build_privacy_statement` for the steps the run charged, the pure function
``dpledger statement`` prints, with a bound on the PLD's work (:data:`MAX_FFT_POINTS`) so that no
request costs more than about a second of CPU.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from app.auth import Principal
from app.db import read_transaction
from app.errors import InvalidInputError
from app.ledger import readouts
from app.models import Dataset, Run
from app.schemas import (
    ApproxDpRelease,
    DpSgdMechanism,
    DpSgdStatementRead,
    MechanismKind,
    StatementRead,
)
from app.services.accounting import translated_dp_errors
from app.services.datasets import finite, headline
from app.services.runs import (
    api_status,
    charged_units,
    find_run,
    run_costs,
    run_epsilon,
    run_mechanism,
)
from dp_core.schedules import NoiseSchedule
from dp_core.statement import (
    SHUFFLING_NOTE,
    PrivacyStatement,
    build_privacy_statement,
    render_privacy_statement,
    reproducible_noise_note,
    steps_per_epoch,
)

#: The most FFT points one PLD composition may use (about 0.5 s of CPU on 2 cores); beyond it the grid is
#: coarsened, and beyond that the PLD epsilon is null (the RDP numbers stand alone).
MAX_FFT_POINTS = 1 << 21
#: The most records per user a statement computes group privacy for (the cost grows with K).
MAX_RECORDS_PER_USER = 64
#: The cost estimate made before a statement's DP-SGD numbers are computed (measured: a decaying
#: schedule costs about 10 us and 0.7 kB per step, a constant one about 10 us per epoch, on a
#: loaded 2-core machine). Beyond either limit the numbers are not computed: the statement keeps
#: the ledger's RDP epsilon and says why in ``dp_sgd_note``. Both keep a request under about 1 s
#: of CPU and 256 MB.
MAX_STATEMENT_NOISE_LEVELS = 50_000
MAX_STATEMENT_EPOCHS = 50_000
#: A decaying schedule's user-level PLD costs about 1 s at K = 16 and 2 s at K = 64 even for a
#: few hundred steps: beyond this K (and within it, beyond ``MAX_STATEMENT_NOISE_LEVELS / (K^2 /
#: 4)`` steps) its numbers are not computed.
MAX_DECAYING_RECORDS_PER_USER = 16
#: Statements' DP-SGD numbers by (engine, run, creation time, charged units, K, delta): a run's
#: mechanism never changes, so they only change when it charges. Bounded (cleared when full).
_CacheKey = tuple[int, int, datetime, int, int, float]
_CACHE: dict[_CacheKey, PrivacyStatement] = {}
_CACHE_MAX = 512


def get_statement(
    session: Session, run_id: int, principal: Principal, *, records_per_user: int
) -> StatementRead:
    """Return the statement of one run (readable by whoever may read the run)."""
    with read_transaction(session):
        run, dataset = find_run(session, run_id)
        principal.require_dataset_read(dataset.name)
        charged = charged_units(session, [run.id]).get(run.id, 0)
        return _statement(id(session.get_bind()), run, dataset, charged, records_per_user)


def page_statement(session: Session, run_id: int, principal: Principal) -> StatementRead | None:
    """The statement shown on the run's dashboard page (K = 1), None beyond the work bounds."""
    try:
        return get_statement(session, run_id, principal, records_per_user=1)
    except InvalidInputError:
        return None


def _statement(
    engine_id: int, run: Run, dataset: Dataset, charged: int, records_per_user: int
) -> StatementRead:
    mechanism = run_mechanism(run)
    dp_sgd, note = None, None
    if isinstance(mechanism, DpSgdMechanism):
        _check_records_per_user(records_per_user)
        note = _over_the_work_limit(mechanism, charged, records_per_user)
        if note is None:
            key = (engine_id, run.id, run.created_at, charged, records_per_user)
            dp_sgd = _cached(key + (dataset.target_delta,), mechanism, records_per_user)
    epsilon_run = run_epsilon(run, dataset, charged)
    order, planned = _ledger_order_and_plan(run, dataset, charged)
    spent = finite(headline(dataset).spent)
    read = StatementRead(
        run_id=run.id,
        run_name=run.name,
        dataset=dataset.name,
        kind=MechanismKind(mechanism.kind),
        status=api_status(run, charged),
        mechanism=mechanism.model_dump(mode="json"),
        sampling="poisson" if dp_sgd is not None else None,
        shuffling_note=SHUFFLING_NOTE if dp_sgd is not None else None,
        delta=dataset.target_delta,
        units_planned=run.epochs,
        units_charged=charged,
        epsilon_run=epsilon_run,
        epsilon_run_order=order,
        epsilon_run_planned=planned,
        dp_sgd=None if dp_sgd is None else DpSgdStatementRead.model_validate(dp_sgd.to_dict()),
        dp_sgd_note=note,
        target_epsilon=dataset.target_epsilon,
        epsilon_spent=spent,
        text="",
        reproducible_noise=bool(run.reproducible_noise),
    )
    read.text = _text(read, dp_sgd)
    return read


def _check_records_per_user(records_per_user: int) -> None:
    if not 1 <= records_per_user <= MAX_RECORDS_PER_USER:
        raise InvalidInputError(
            f"records_per_user must be between 1 and {MAX_RECORDS_PER_USER}",
            parameter="records_per_user",
        )


def _over_the_work_limit(
    mechanism: DpSgdMechanism, charged: int, records_per_user: int
) -> str | None:
    """Estimate the DP-SGD numbers' work before doing it; say why they are skipped (None: not)."""
    assert mechanism.steps_per_epoch is not None  # stored with its default filled in
    steps = mechanism.steps_per_epoch * charged
    per_epoch = steps_per_epoch(mechanism.sample_rate) if mechanism.sample_rate > 0 else 1
    epochs = -(-steps // max(per_epoch, 1))
    levels = 1 if mechanism.noise.schedule == "constant" else steps
    if records_per_user > 1 and levels > 1:  # the user-level PLD's window grows with K^2
        levels *= max(1, records_per_user**2 // 4)
        if records_per_user > MAX_DECAYING_RECORDS_PER_USER:  # ~2 s whatever the steps
            levels = max(levels, MAX_STATEMENT_NOISE_LEVELS + 1)
    if levels <= MAX_STATEMENT_NOISE_LEVELS and epochs <= MAX_STATEMENT_EPOCHS:
        return None
    return (
        f"the PLD, per-epoch and user-level numbers were not computed: {steps} steps"
        f" ({levels} noise levels at K = {records_per_user}, {epochs} epochs) exceed the service's work"
        f" limit ({MAX_STATEMENT_NOISE_LEVELS} noise levels, {MAX_STATEMENT_EPOCHS} epochs);"
        " the ledger's RDP epsilon above holds. `dpledger statement` computes them offline."
    )


def _cached(key: _CacheKey, mechanism: DpSgdMechanism, records_per_user: int) -> PrivacyStatement:
    cached = _CACHE.get(key)
    if cached is None:
        cached = _dp_sgd_numbers(mechanism, key[3], key[5], records_per_user)
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[key] = cached
    return cached


def _dp_sgd_numbers(
    mechanism: DpSgdMechanism, charged: int, delta: float, records_per_user: int
) -> PrivacyStatement:
    assert mechanism.steps_per_epoch is not None  # stored with its default filled in
    steps = mechanism.steps_per_epoch * charged
    noise = mechanism.noise
    with translated_dp_errors():
        return build_privacy_statement(
            sample_rate=mechanism.sample_rate,
            steps=steps,
            delta=delta,
            schedule=NoiseSchedule(
                kind=noise.schedule,
                noise_multiplier=noise.noise_multiplier,
                decay_rate=noise.decay_rate,
            ),
            records_per_user=records_per_user,
            max_fft_points=MAX_FFT_POINTS,
        )


def _ledger_order_and_plan(
    run: Run, dataset: Dataset, charged: int
) -> tuple[float | None, float | None]:
    """The order of the run's own ledger epsilon, and the epsilon of its whole plan."""
    if isinstance(run_mechanism(run), ApproxDpRelease):
        return None, run_epsilon(run, dataset, 1)
    orders = list(dataset.orders)
    costs = run_costs(run, orders)
    delta = dataset.target_delta
    charged_readout = readouts.run_epsilon(orders=orders, costs=costs, units=charged, delta=delta)
    planned = readouts.run_epsilon(orders=orders, costs=costs, units=run.epochs, delta=delta)
    return charged_readout.order, planned.epsilon


def _number(value: float | None, digits: int = 4) -> str:
    return "unbounded" if value is None else f"{value:.{digits}f}"


def _text(read: StatementRead, dp_sgd: PrivacyStatement | None) -> str:
    """The ledger's lines, then (DP-SGD) the statement of the charged steps."""
    order = "" if read.epsilon_run_order is None else f" at Renyi order {read.epsilon_run_order:g}"
    lines = [
        f"Run {read.run_id} ({read.run_name!r}, {read.kind.value}, {read.status.value}) on dataset"
        f" {read.dataset!r}: {read.units_charged} of {read.units_planned} units charged.",
        f"The ledger's RDP epsilon of the charged units at delta = {read.delta:g}:"
        f" {_number(read.epsilon_run)}{order} (the dataset's orders, costs rounded up); the whole"
        f" plan: {_number(read.epsilon_run_planned)}.",
        f"Dataset {read.dataset!r} has spent epsilon {_number(read.epsilon_spent)} of"
        f" {read.target_epsilon:g} across all its runs (the RDP filter's guarantee under adaptive"
        " choice of runs).",
    ]
    if dp_sgd is not None:
        lines += ["", render_privacy_statement(dp_sgd)]
    elif read.dp_sgd_note is not None:
        lines += ["", f"Note: {read.dp_sgd_note}"]
    if read.reproducible_noise:
        lines += ["", reproducible_noise_note()]
    return "\n".join(lines)
