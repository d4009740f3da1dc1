"""Request and response bodies (pydantic v2). JSON field names are part of the API contract.

Numbers are finite (no NaN or infinity) and bounded, so absurd requests fail with 422 before any
work is done; dp_core then checks the mechanism itself (e.g. a decay that drives sigma to 0).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

from app.ledger.transitions import EntryKind as LedgerEntryKind
from app.text import describe_unsafe, find_unsafe


def _refuse_unsafe(value: Any, *, multiline: bool) -> Any:
    """Refuse NUL, control and bidi characters in any string of ``value`` (see app.text).

    Walks nested lists and dicts with an explicit stack (no recursion, whatever the depth).
    """
    stack: list[tuple[Any, bool]] = [(value, multiline)]
    while stack:
        item, lines = stack.pop()
        if isinstance(item, str):
            char = find_unsafe(item, multiline=lines)
            if char is not None:
                raise ValueError(f"holds a refused character ({describe_unsafe(char)})")
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend((element, lines) for element in item)
        elif isinstance(item, dict):
            stack.extend((key, False) for key in item)
            stack.extend((element, lines) for element in item.values())
    return value


def _one_line(value: str) -> str:
    result: str = _refuse_unsafe(value, multiline=False)
    return result


Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", examples=["mnist"])]
#: A label shown in lists and on terminals: no control, NUL or bidi characters, no newlines.
Name = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_one_line)]
#: Free text: tab and newlines allowed, other control, NUL and bidi characters refused.
Text = Annotated[
    str,
    Field(max_length=2000),
    AfterValidator(lambda value: _refuse_unsafe(value, multiline=True)),
]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Epsilon = Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]
Delta = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
# Below 1e-3 the mechanism is not private in any useful sense, and the RDP series for such a
# sigma only burns CPU before failing: refused at validation (dp_core calibrates in [1e-3, 1e5]).
NoiseMultiplier = Annotated[float, Field(ge=1e-3, le=1e6, allow_inf_nan=False)]
DecayRate = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]
SampleRate = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Steps = Annotated[int, Field(ge=0, le=100_000_000)]
Order = Annotated[float, Field(gt=1, le=1e6, allow_inf_nan=False)]
Weight = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
ScheduleName = Annotated[str, Field(min_length=1, max_length=32, examples=["constant"])]


class Request(BaseModel):
    """Base of request bodies: unknown fields and type coercion are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_unsafe_characters(cls, value: Any) -> Any:
        # Every string of every request body, identically on SQLite and PostgreSQL (names and
        # labels are checked more strictly by ``Name``; free text keeps its newlines here).
        return _refuse_unsafe(value, multiline=True)


class Role(StrEnum):
    """What a token may do."""

    admin = "admin"
    trainer = "trainer"
    viewer = "viewer"


class RunStatus(StrEnum):
    """Life cycle of a run."""

    admitted = "admitted"
    running = "running"
    finished = "finished"
    refused = "refused"


class Reservation(StrEnum):
    """How a run holds its budget.

    ``plan``: its whole planned RDP curve is reserved at admission, so every planned epoch is
    guaranteed. ``epoch``: nothing is reserved; each epoch passes the admission filter when the
    trainer charges it, so concurrent runs can take the budget and stop this one early.
    """

    plan = "plan"
    epoch = "epoch"


# Kinds of ledger entries: the ledger core's own enum, part of the API as is.
EntryKind = LedgerEntryKind


# --- datasets -------------------------------------------------------------------------------


PrivacyUnit = Literal["example", "user"]


class DatasetCreate(Request):
    """A new dataset with its budget and the admission filter's grid (fixed at creation)."""

    name: Slug
    description: Text = ""
    target_epsilon: Epsilon
    target_delta: Delta
    orders: Annotated[list[Order], Field(min_length=1, max_length=256)] | None = Field(
        default=None, description="Renyi orders of the filter; default: the service's grid."
    )
    weights: Annotated[list[Weight], Field(min_length=1, max_length=256)] | None = Field(
        default=None,
        description="Share of target_delta per order (sum 1); default: uniform over the orders.",
    )
    approx_dp_epsilon: Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)] = Field(
        default=0.0,
        description=(
            "Part of target_epsilon set aside for black-box (epsilon, delta) releases, spent by"
            " basic composition; the admission filter gets the rest. Default 0: none allowed."
        ),
    )
    approx_dp_delta: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = Field(
        default=0.0, description="Part of target_delta set aside for black-box releases."
    )
    privacy_unit: PrivacyUnit = Field(
        default="example",
        description=(
            "What one unit of privacy protects: one record ('example': DP-SGD, PATE, releases)"
            " or all the data of one user ('user': federated learning with dp_fedavg)."
        ),
    )


class ApproxDpBudget(BaseModel):
    """The approximate-DP part of a dataset's budget and what black-box releases spent of it."""

    epsilon: float = Field(description="Epsilon set aside at creation for black-box releases.")
    delta: float = Field(description="Delta set aside at creation for black-box releases.")
    epsilon_spent: float
    delta_spent: float
    epsilon_remaining: float = Field(description="epsilon - epsilon_spent (rounded down).")


class DatasetRead(BaseModel):
    """A dataset."""

    name: str
    description: str
    target_epsilon: float
    target_delta: float
    orders: list[float]
    weights: list[float]
    approx_dp: ApproxDpBudget
    epsilon_spent: float | None = Field(
        description="The dataset's spent epsilon (as GET /v1/datasets/{name}/budget)."
    )
    epsilon_remaining: float = Field(
        description="What new runs may still reserve (as GET /v1/datasets/{name}/budget)."
    )
    created_at: datetime
    privacy_unit: PrivacyUnit = Field(
        default="example", description="What one unit of privacy protects: an example or a user."
    )
    neighbouring_relation: Literal["add_remove", "replace_one"] | None = Field(
        default=None,
        description=(
            "The neighbouring relation of the budget's guarantee: add/remove one unit, or replace"
            " one unit (fixed-size sampling); fixed by the first admitted run (null before)."
        ),
    )


class DatasetList(BaseModel):
    """A page of datasets."""

    items: list[DatasetRead]
    total: int


# --- runs -----------------------------------------------------------------------------------


class NoiseSpec(Request):
    """The noise schedule of a run: sigma_t over the 0-based global step t."""

    schedule: ScheduleName = "constant"
    noise_multiplier: NoiseMultiplier
    decay_rate: DecayRate = 0.0


class MechanismKind(StrEnum):
    """What a run does with the data; each kind is charged against the same dataset budget."""

    dp_sgd = "dp_sgd"
    pate = "pate"
    laplace_release = "laplace_release"
    gaussian_release = "gaussian_release"
    approx_dp_release = "approx_dp_release"
    tuning = "tuning"
    dp_fedavg = "dp_fedavg"


RunSampleRate = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
StepsPerEpoch = Annotated[int, Field(ge=1, le=10_000_000)]
PlannedEpochs = Annotated[int, Field(ge=1, le=10_000)]
Sensitivity = Annotated[float, Field(gt=0, le=1e12, allow_inf_nan=False)]
NoiseAmount = Annotated[float, Field(gt=0, le=1e12, allow_inf_nan=False)]


#: K, the most records one individual holds (group privacy); 1 is example-level privacy.
RecordsPerIndividual = Annotated[int, Field(ge=1, le=1024)]
_GROUP_DESCRIPTION = (
    "K: the most records one individual may hold. K > 1 is charged the group-privacy cost"
    " (Mironov 2017, Prop. 2, K rounded up to a power of two 2^c: 3^c times the RDP at order"
    " 2^c * alpha)."
)


class DpSgdMechanism(Request):
    """DP-SGD: Poisson sampling with ``sample_rate``, ``epochs`` planned, a noise schedule."""

    kind: Literal["dp_sgd"]
    sample_rate: RunSampleRate
    steps_per_epoch: StepsPerEpoch | None = Field(
        default=None, description="Default: ceil(1 / sample_rate)."
    )
    epochs: PlannedEpochs
    noise: NoiseSpec
    max_grad_norm: PositiveFloat | None = Field(default=None, description="Informational.")
    max_records_per_individual: RecordsPerIndividual = Field(
        default=1, description=_GROUP_DESCRIPTION
    )
    privacy_unit: Literal["example", "user"] = Field(
        default="example",
        description=(
            "user: user-level DP-SGD (each step samples users at sample_rate and clips each"
            " sampled user's summed gradient to max_grad_norm); only on a dataset whose"
            " privacy_unit is user, as dp_fedavg."
        ),
    )


class PateMechanism(Request):
    """PATE label aggregation: ``queries`` noisy-max answers over teacher votes, charged per batch.

    ``noise_multiplier`` is the noise on each vote count, in votes: the Gaussian std sigma for
    ``gnmax`` (Papernot et al. 2018), the Laplace scale b = 1/gamma for ``lnmax`` (Papernot et
    al. 2017). The whole data-independent RDP curve is reserved at admission (or per batch with
    ``reservation=epoch``); batch n is charged with ``POST /v1/runs/{id}/batches``.
    """

    kind: Literal["pate"]
    aggregator: Literal["gnmax", "lnmax"]
    noise_multiplier: NoiseAmount
    queries: Annotated[int, Field(ge=1, le=100_000_000)]
    batch_size: Annotated[int, Field(ge=1, le=100_000_000)] | None = Field(
        default=None, description="Queries per charge; default: all queries in one batch."
    )


class LaplaceRelease(Request):
    """One release of a statistic with L1 ``sensitivity`` plus Laplace noise of scale ``noise_scale``."""

    kind: Literal["laplace_release"]
    sensitivity: Sensitivity
    noise_scale: NoiseAmount


class GaussianRelease(Request):
    """One release of a statistic with L2 ``sensitivity`` plus Gaussian noise of std ``noise_std``."""

    kind: Literal["gaussian_release"]
    sensitivity: Sensitivity
    noise_std: NoiseAmount


class ApproxDpRelease(Request):
    """A black-box (epsilon, delta)-DP release: charged to the dataset's approximate-DP sub-budget."""

    kind: Literal["approx_dp_release"]
    epsilon: Epsilon
    delta: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]


class TuningMechanism(Request):
    """Private hyperparameter tuning (Papernot & Steinke 2022), charged as ONE job of one unit.

    ``base`` is a DP-SGD run that bounds every candidate (each candidate samples at most at
    ``base.sample_rate``, for at most its steps, with noise at least its schedule's). The job
    trains a random number of candidates, drawn from ``distribution`` (truncated negative
    binomial with ``eta``, ``gamma``, or Poisson with mean ``mu``), each with one of the
    ``candidates`` hyperparameter settings, and releases only the best. Its whole RDP curve
    (their Thm. 2 or Thm. 6) is reserved at admission: charge unit 0 before the first candidate
    trains.
    """

    kind: Literal["tuning"]
    base: DpSgdMechanism
    candidates: Annotated[int, Field(ge=1, le=10_000)] = Field(
        description="How many hyperparameter settings the job chooses among (informational)."
    )
    distribution: Literal["negative_binomial", "poisson"]
    eta: Annotated[float, Field(gt=-1, le=1e3, allow_inf_nan=False)] = 1.0
    gamma: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 0.5
    mu: Annotated[float, Field(gt=0, le=1e4, allow_inf_nan=False)] = 1.0


class DpFedAvgMechanism(Request):
    """User-level DP-FedAvg (McMahan et al. 2018) on a ``privacy_unit="user"`` dataset.

    Each round samples users (``sampling="poisson"`` with ``sample_rate``, or ``"fixed"``:
    ``clients_per_round`` of the ``users`` without replacement), clips each sampled user's whole
    update to ``clip`` and adds Gaussian noise of std ``noise_multiplier * clip`` to their sum.
    With secure aggregation, ``quantization_step`` and the model ``dimension`` bound what rounding
    adds to the sensitivity. A unit is a round, charged with ``POST /v1/runs/{id}/epochs``.
    """

    kind: Literal["dp_fedavg"]
    users: Annotated[int, Field(ge=1, le=1_000_000_000)]
    sampling: Literal["poisson", "fixed"] = "poisson"
    sample_rate: RunSampleRate | None = Field(default=None, description="Poisson sampling only.")
    clients_per_round: Annotated[int, Field(ge=1, le=1_000_000_000)] | None = Field(
        default=None, description="Fixed-size sampling only."
    )
    rounds: PlannedEpochs
    noise_multiplier: NoiseMultiplier
    clip: Annotated[float, Field(gt=0, le=1e12, allow_inf_nan=False)]
    quantization_step: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] = 0.0
    dimension: Annotated[int, Field(ge=0, le=10_000_000_000)] = 0


AnyMechanism = (
    DpSgdMechanism
    | PateMechanism
    | LaplaceRelease
    | GaussianRelease
    | ApproxDpRelease
    | TuningMechanism
    | DpFedAvgMechanism
)
MechanismSpec = Annotated[AnyMechanism, Field(discriminator="kind")]


_REPRODUCIBLE_DESCRIPTION = (
    "The run drew its noise and sampling from a public seed (--reproducible-noise), not from "
    "secret OS entropy: its guarantee does not hold against anyone who knows the seed."
)


class RunCreate(Request):
    """A run: DP-SGD given by the top-level fields, or any mechanism given as ``mechanism``.

    The top-level ``sample_rate``/``epochs``/``noise`` fields are the DP-SGD form (what the
    trainer sends); ``mechanism`` takes one of the kinds, DP-SGD included. Give one form, not both.
    Releases (laplace/gaussian/approx_dp) are admitted and charged at once.
    """

    dataset: Slug
    name: Name
    sample_rate: RunSampleRate | None = None
    steps_per_epoch: StepsPerEpoch | None = Field(
        default=None, description="Default: ceil(1 / sample_rate)."
    )
    epochs: PlannedEpochs | None = None
    noise: NoiseSpec | None = None
    max_grad_norm: PositiveFloat | None = Field(default=None, description="Informational.")
    max_records_per_individual: RecordsPerIndividual | None = Field(
        default=None, description=_GROUP_DESCRIPTION + " Default 1."
    )
    mechanism: MechanismSpec | None = None
    reservation: Reservation = Field(
        default=Reservation.plan,
        strict=False,  # accept the enum's string values from JSON
        description=(
            "plan: reserve every planned epoch (batch) at admission (guaranteed); epoch: each epoch"
            " passes the filter when charged (pay as you go; may be refused mid-run)."
        ),
    )
    reproducible_noise: StrictBool = Field(default=False, description=_REPRODUCIBLE_DESCRIPTION)

    @model_validator(mode="after")
    def _one_form(self) -> RunCreate:
        given = [name for name in _DP_SGD_FIELDS if getattr(self, name) is not None]
        if self.mechanism is not None and given:
            raise ValueError(
                f"give either mechanism or the top-level DP-SGD fields, not both ({', '.join(given)})"
            )
        if self.mechanism is None:
            missing = [name for name in ("sample_rate", "epochs", "noise") if name not in given]
            if missing:
                raise ValueError(f"missing {', '.join(missing)} (or give a mechanism)")
        return self

    def resolved_mechanism(self) -> AnyMechanism:
        """Return the mechanism, building the DP-SGD one from the top-level fields if needed."""
        if self.mechanism is not None:
            return self.mechanism
        assert self.sample_rate is not None and self.epochs is not None and self.noise is not None
        return DpSgdMechanism(
            kind="dp_sgd",
            sample_rate=self.sample_rate,
            steps_per_epoch=self.steps_per_epoch,
            epochs=self.epochs,
            noise=self.noise,
            max_grad_norm=self.max_grad_norm,
            max_records_per_individual=self.max_records_per_individual or 1,
        )


_DP_SGD_FIELDS = (
    "sample_rate",
    "steps_per_epoch",
    "epochs",
    "noise",
    "max_grad_norm",
    "max_records_per_individual",
)


class RunRead(BaseModel):
    """A run and where it stands; the DP-SGD fields are null for other kinds.

    ``epochs`` and ``epochs_charged`` count the run's units of charge: epochs of DP-SGD, batches
    of PATE queries, and 1 for a release.
    """

    id: int
    dataset: str
    name: str
    kind: MechanismKind
    mechanism: dict[str, Any] = Field(description="The mechanism as requested (defaults filled).")
    sample_rate: float | None
    steps_per_epoch: int | None
    epochs: int
    noise: NoiseSpec | None
    max_grad_norm: float | None
    max_records_per_individual: int | None = Field(
        default=None,
        description="DP-SGD: K, the group size the run is charged for (1 = per record).",
    )
    reproducible_noise: bool = Field(default=False, description=_REPRODUCIBLE_DESCRIPTION)
    reservation: Reservation
    status: RunStatus
    epochs_charged: int
    epsilon_run: float | None = Field(
        description=(
            "This run's own epsilon at the dataset's target_delta, from its charges alone (what"
            " Opacus would print for it; for approx_dp_release the declared epsilon)."
        )
    )
    created_at: datetime


class AdmissionPreview(BaseModel):
    """The answer of ``POST /v1/runs?dry_run=true`` when the run would be admitted."""

    dataset: str
    admitted: Literal[True] = True
    epsilon_projected: float = Field(description="Filter epsilon after admitting the run.")
    epsilon_remaining: float = Field(description="Filter epsilon left before admitting it.")
    order: float | None = Field(
        description="An alive order at which the run fits (null for approx_dp_release)."
    )


class EpochCharge(Request):
    """The epoch the trainer is about to start (0-based)."""

    epoch: Annotated[int, Field(ge=0, le=10_000_000)]


class BatchCharge(Request):
    """The batch of PATE queries the caller is about to answer (0-based)."""

    batch: Annotated[int, Field(ge=0, le=100_000_000)]


class EpochChargeRead(BaseModel):
    """The charge of one DP-SGD epoch (a retry returns the same body)."""

    run_id: int
    epoch: int
    ledger_entry_id: int
    created_at: datetime
    epsilon_run: float | None = Field(
        description="The run's own epsilon after this charge (as RunRead.epsilon_run)."
    )


class BatchChargeRead(BaseModel):
    """The charge of one batch of PATE queries (a retry returns the same body)."""

    run_id: int
    batch: int
    ledger_entry_id: int
    created_at: datetime
    epsilon_run: float | None = Field(
        description="The job's own epsilon after this batch (as RunRead.epsilon_run)."
    )


# --- ledger and budget ----------------------------------------------------------------------


class LedgerEntryRead(BaseModel):
    """One append-only ledger entry; ``rdp`` has one value per dataset order (null = +inf)."""

    id: int
    run_id: int
    kind: EntryKind
    epoch: int | None
    rdp: list[float | None]
    mechanism: dict[str, Any]
    created_at: datetime
    actor: str


class LedgerEntryList(BaseModel):
    """A page of ledger entries, oldest first."""

    items: list[LedgerEntryRead]
    total: int
    next_after: int | None = Field(
        default=None,
        description="Pass as `after` to read the next page (a cursor); null on the last page.",
    )


class OrderHeadroom(BaseModel):
    """The filter at one order: capacity B(a), S(a), headroom B(a) - S(a), membership in L."""

    order: float
    weight: float
    capacity: float
    rdp_committed: float | None
    rdp_reserved: float | None
    headroom: float | None
    share_used: float | None = Field(
        description=(
            "S(a) / B(a): the share of this order's capacity in use (null when B(a) <= 0: the"
            " order cannot hold any cost at this budget)."
        )
    )
    alive: bool


class RunBudget(BaseModel):
    """One run's share of the budget."""

    id: int
    name: str
    kind: MechanismKind
    status: RunStatus
    epochs: int
    epochs_charged: int
    epsilon_run: float | None = Field(
        description="This run's own epsilon, from its charges alone (as RunRead.epsilon_run)."
    )
    reproducible_noise: bool = Field(default=False, description=_REPRODUCIBLE_DESCRIPTION)


class KindSpend(BaseModel):
    """What one mechanism kind spent on a dataset."""

    kind: MechanismKind
    runs: int
    epsilon_run: float | None = Field(
        description=(
            "Epsilon of this kind's charges alone: the plain RDP conversion at target_delta, or"
            " the sum of epsilons for approx_dp_release."
        )
    )


class BudgetRead(BaseModel):
    """Where a dataset's budget stands, read through the admission filter."""

    dataset: str
    target_epsilon: float
    target_delta: float
    epsilon_spent: float | None = Field(
        description=(
            "The dataset's spent epsilon: the filter's guarantee for every charge so far, across"
            " all runs, plus what black-box releases spent of the approximate-DP part."
        )
    )
    epsilon_reserved: float | None = Field(
        description="What open reservations hold on top of epsilon_spent (not yet spent)."
    )
    epsilon_remaining: float = Field(
        description=(
            "What new runs may still reserve through the filter, >= 0. When no order has"
            " died, epsilon_spent + epsilon_reserved + epsilon_remaining + approx_dp.epsilon_remaining"
            " = target_epsilon."
        )
    )
    epsilon_non_adaptive: float | None = Field(
        description=(
            "Plain RDP-accountant epsilon of the committed RDP at target_delta (what Opacus would"
            " print). Valid only if the runs were not chosen adaptively; the budget is enforced"
            " with the filter epsilons above."
        )
    )
    runs: list[RunBudget] = Field(
        description="One page of the dataset's runs, oldest first (see runs_next_after)."
    )
    runs_next_after: int | None = Field(
        default=None,
        description="Pass as runs_after to read the next page of runs; null on the last page.",
    )
    runs_refused_total: int = Field(
        default=0,
        description="Runs ever refused on this dataset; only the newest 100 are kept and listed.",
    )
    by_kind: list[KindSpend] = Field(description="Committed spend per mechanism kind.")
    approx_dp: ApproxDpBudget = Field(
        description="The black-box sub-budget (basic composition), included in epsilon_spent."
    )
    orders: list[OrderHeadroom]
    privacy_unit: PrivacyUnit = Field(
        default="example", description="What one unit of privacy protects: an example or a user."
    )


# --- privacy statement -----------------------------------------------------------------------


class UserLevelRead(BaseModel):
    """User-level epsilon for users with up to ``records_per_user`` records (group privacy)."""

    records_per_user: int
    epsilon: float | None = Field(
        description="The smallest of epsilon_rdp, epsilon_pld and epsilon_classical (all bounds)."
    )
    epsilon_rdp: float | None = Field(description="Mironov 2017, Prop. 2 (group privacy of RDP).")
    order: float | None = Field(description="Renyi order of epsilon_rdp (of the group curve).")
    epsilon_pld: float | None = Field(
        description="PLD of the subsampled Gaussian with rate 1-(1-q)^K and noise sigma/K."
    )
    group_sample_rate: float
    delta: float
    epsilon_classical: float | None = Field(
        description="K x the example-level epsilon at example_delta (group privacy of DP)."
    )
    example_delta: float | None = Field(description="delta1 of epsilon_classical's point.")
    bound: Literal["rdp", "pld", "classical"] = Field(description="Which bound gave epsilon.")


class DpSgdStatementRead(BaseModel):
    """The example-, epoch- and user-level numbers of the DP-SGD steps a run charged.

    The same fields, with the same values, as ``dpledger statement --json`` for these parameters
    (both come from ``dp_core.statement.build_privacy_statement``).
    """

    sample_rate: float
    steps: int = Field(description="Steps charged: steps_per_epoch (of the run) x epochs charged.")
    steps_per_epoch: int = Field(description="ceil(1/q): TF Privacy's steps of one epoch.")
    epochs: float = Field(description="steps * q, the expected passes over the data.")
    schedule: dict[str, Any]
    delta: float
    epsilon_rdp: float | None = Field(description="RDP epsilon, refined over real orders.")
    order: float | None = Field(description="The Renyi order of epsilon_rdp.")
    epsilon_pld: float | None = Field(description="PLD epsilon (an upper bound, tighter).")
    epoch_epsilon_rdp: float | None = Field(
        description="Each example once per epoch in any order (no sampling assumed), by RDP."
    )
    epoch_order: float | None
    epoch_epsilon_pld: float | None = Field(
        description="The same by the exact Gaussian curve (Balle & Wang 2018)."
    )
    user: UserLevelRead
    opacus_epsilon: float | None = Field(description="Epsilon on Opacus' grid (orders 1.1-63).")
    opacus_grid_lacks_order: bool


class StatementRead(BaseModel):
    """The privacy statement of a run as the ledger holds it (``GET /v1/runs/{id}/statement``).

    ``epsilon_run`` is the ledger's number (RunRead.epsilon_run: the dataset's orders, costs
    rounded up); ``dp_sgd`` holds the tighter numbers of the same charged steps (RDP refined over
    real orders, and PLD). ``epsilon_spent`` is the dataset's filter guarantee across every run
    (BudgetRead.epsilon_spent).
    """

    run_id: int
    run_name: str
    dataset: str
    kind: MechanismKind
    status: RunStatus
    mechanism: dict[str, Any] = Field(description="The mechanism record the ledger holds.")
    sampling: str | None = Field(description="'poisson' for DP-SGD (null for other kinds).")
    shuffling_note: str | None = Field(description="What changes if the data was shuffled.")
    delta: float = Field(description="The dataset's target_delta: every epsilon holds for it.")
    units_planned: int
    units_charged: int
    epsilon_run: float | None = Field(description="As RunRead.epsilon_run (charged units).")
    epsilon_run_order: float | None = Field(description="The ledger order of epsilon_run.")
    epsilon_run_planned: float | None = Field(
        description="The same conversion of every planned unit (what the plan would spend)."
    )
    dp_sgd: DpSgdStatementRead | None = Field(
        description="Null for kinds other than dp_sgd, and beyond the work limit (dp_sgd_note)."
    )
    dp_sgd_note: str | None = Field(
        default=None,
        description="Why a DP-SGD run's dp_sgd numbers were not computed (the request's work"
        " limit); epsilon_run, the ledger's RDP epsilon, holds regardless.",
    )
    target_epsilon: float
    epsilon_spent: float | None = Field(
        description="The dataset's spent epsilon across all runs (as BudgetRead.epsilon_spent)."
    )
    text: str = Field(description="The statement as text (what `dpledger statement` prints).")
    reproducible_noise: bool = Field(default=False, description=_REPRODUCIBLE_DESCRIPTION)


# --- stateless accountant -------------------------------------------------------------------


class EpsilonRequest(Request):
    """Epsilon of DP-SGD with a noise schedule (as ``dpledger epsilon``)."""

    sample_rate: SampleRate
    noise_multiplier: NoiseMultiplier
    steps: Steps
    delta: Delta
    schedule: ScheduleName = "constant"
    decay_rate: DecayRate = 0.0


class EpsilonRead(BaseModel):
    """The accountant's answer: RDP and PLD epsilons of the same steps, labelled.

    ``epsilon`` is ``epsilon_rdp`` (kept for compatibility); ``epsilon_pld`` is the PLD
    accountant's upper bound of the same curve, usually tighter. Admission on a dataset always
    uses RDP (the filter), whatever these say.
    """

    epsilon: float = Field(description="Same as epsilon_rdp (kept for compatibility).")
    epsilon_rdp: float = Field(description="RDP epsilon, refined over real orders.")
    epsilon_pld: float | None = Field(description="PLD epsilon (null when not computed).")
    epsilon_grid: float
    order: float
    delta: float
    steps: int


class MaxStepsRequest(Request):
    """The most DP-SGD steps within a target (as ``dpledger max-steps``)."""

    target_epsilon: Epsilon
    delta: Delta
    sample_rate: SampleRate
    noise_multiplier: NoiseMultiplier
    schedule: ScheduleName = "constant"
    decay_rate: DecayRate = 0.0
    limit: Annotated[int, Field(ge=1, le=100_000_000)] = Field(
        default=100_000_000, description="Search no further than this many steps."
    )


class MaxStepsRead(BaseModel):
    """The most steps whose epsilon stays within the target, and that epsilon."""

    steps: int
    epsilon: float
    delta: float


class NoiseMultiplierRequest(Request):
    """The smallest noise multiplier meeting a target (as ``dpledger noise-multiplier``)."""

    target_epsilon: Epsilon
    delta: Delta
    sample_rate: SampleRate
    steps: Steps
    schedule: ScheduleName = "constant"
    decay_rate: DecayRate = 0.0


class NoiseMultiplierRead(BaseModel):
    """The calibrated noise multiplier and the epsilon it gives (never above the target)."""

    noise_multiplier: float
    epsilon: float


# --- audits ---------------------------------------------------------------------------------

AuditEpsilon = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]
Fraction01 = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
AuditCount = Annotated[int, Field(ge=0, le=100_000_000)]
FprKey = Annotated[str, Field(pattern=r"^[0-9][0-9.e-]{0,15}$")]


class MembershipInference(Request):
    """A loss-threshold membership-inference attack on the trained model (train vs held out)."""

    attack: Literal["loss_threshold"] = "loss_threshold"
    auc: Fraction01
    tpr_at_fpr: Annotated[dict[FprKey, Fraction01], Field(max_length=16)] = Field(
        default_factory=dict, description='True-positive rate at each false-positive rate ("0.01").'
    )
    members: AuditCount
    non_members: AuditCount


class AuditCreate(Request):
    """The result of a one-run audit (Steinke, Nasr & Jagielski 2023), as ``dpledger audit`` prints it.

    The service stores it with the run; it never changes the budget. A lower bound above the
    theoretical epsilon is stored as reported (it means the run did not execute what it declared)
    and flagged by ``AuditRead.exceeds_theoretical``.
    """

    epsilon_theoretical: AuditEpsilon | None = Field(
        description="The run's epsilon as accounted (null: a non-private control run)."
    )
    epsilon_lower_bound: AuditEpsilon
    confidence: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
    delta: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] | None = None
    canaries: Annotated[int, Field(ge=1, le=100_000_000)]
    canaries_included: AuditCount
    guesses: AuditCount
    correct_guesses: AuditCount
    canary_kind: Literal["gradient", "input"]
    noise_multiplier: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] | None = None
    test_accuracy: Fraction01 | None = None
    membership_inference: MembershipInference | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None

    @model_validator(mode="after")
    def _consistent_counts(self) -> AuditCreate:
        if self.canaries_included > self.canaries:
            raise ValueError("canaries_included must be <= canaries")
        if not self.correct_guesses <= self.guesses <= self.canaries:
            raise ValueError("need correct_guesses <= guesses <= canaries")
        return self


class AuditRead(BaseModel):
    """A stored audit of a run."""

    id: int
    run_id: int
    epsilon_theoretical: float | None
    epsilon_lower_bound: float
    exceeds_theoretical: bool = Field(
        description="The empirical lower bound is above the theoretical epsilon (a broken run)."
    )
    confidence: float
    delta: float | None
    canaries: int
    canaries_included: int
    guesses: int
    correct_guesses: int
    canary_kind: str
    noise_multiplier: float | None
    test_accuracy: float | None
    membership_inference: dict[str, Any] | None
    seed: int | None
    created_at: datetime
    actor: str


class AuditList(BaseModel):
    """The audits of a run, oldest first."""

    items: list[AuditRead]
    total: int


# --- tokens and health ----------------------------------------------------------------------


class TokenCreate(Request):
    """A new API token; a trainer's datasets must exist (422 otherwise)."""

    name: Name
    role: Literal["admin", "trainer", "viewer"]
    datasets: Annotated[list[Slug], Field(max_length=256)] = Field(
        default_factory=list, description="Datasets a trainer token may charge."
    )


class TokenCreated(BaseModel):
    """A created token; ``token`` is shown only here, only once."""

    id: int
    name: str
    role: Literal["admin", "trainer", "viewer"]
    datasets: list[str]
    token: str


class Health(BaseModel):
    """Liveness and database reachability."""

    status: Literal["ok"]


class ErrorBody(BaseModel):
    """Every error response."""

    code: str
    message: str
