"""`LedgerClient`: the one typed HTTP client of the dpledger service.

Every caller that talks to the ledger (the trainer's gate, ``dpledger pate --service``, the Opacus
integration) goes through this module, so the wire format lives in exactly one place:

* typed methods, one per endpoint, with keyword-only arguments where two floats meet;
* typed results (frozen pydantic models named as the service's ``<Resource>Read`` schemas; fields
  the service adds later are ignored, fields it may not send yet are optional);
* one exception hierarchy keyed by the service's error ``code`` (:class:`LedgerError` at the
  root; unknown codes map by HTTP status), translated in exactly one place (:func:`error_from_response`);
* retries with exponential backoff and full jitter, bounded in attempts and time, on connection
  errors and 502/503/504 (honouring ``Retry-After``) for idempotent calls only: reads, the
  stateless accountant, dry runs, epoch and batch charges (idempotent per run and epoch), finish,
  and run creation, which carries an ``Idempotency-Key`` so a retry after a lost response never
  registers a second run.

The client does not import the service's code (``app``): it works against a remote service with
only httpx and pydantic installed.
"""

from __future__ import annotations

import email.utils
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict

__all__ = [
    "AdmissionPreview",
    "ApproxDpBudget",
    "ApproxDpRelease",
    "AuditList",
    "AuditRead",
    "BatchChargeRead",
    "BudgetExceeded",
    "BudgetRead",
    "CalibrationFailed",
    "Conflict",
    "CrossSiteRequest",
    "DatasetExists",
    "DatasetList",
    "DatasetRead",
    "DpFedAvg",
    "DpSgd",
    "DpSgdStatementRead",
    "EpochBeyondPlan",
    "EpochChargeRead",
    "EpochOutOfOrder",
    "EpsilonRead",
    "Forbidden",
    "GaussianRelease",
    "Health",
    "IdempotencyKeyReused",
    "InvalidInput",
    "KindSpend",
    "LaplaceRelease",
    "LedgerClient",
    "LedgerEntryList",
    "LedgerEntryRead",
    "LedgerError",
    "MaxStepsRead",
    "Mechanism",
    "NO_RETRY",
    "NeighbouringRelationMismatch",
    "NoiseMultiplierRead",
    "NoiseSpec",
    "NotFound",
    "OrderHeadroom",
    "Pate",
    "PayloadTooLarge",
    "PrivacyUnitMismatch",
    "RateLimited",
    "RetryPolicy",
    "RunBudget",
    "RunNotActive",
    "RunRead",
    "ServerError",
    "ServiceUnavailable",
    "StatementRead",
    "TokenCreated",
    "Tuning",
    "Unauthorized",
    "UnitMismatch",
    "Unreachable",
    "Unsupported",
    "UserLevelRead",
    "error_from_response",
]

IDEMPOTENCY_HEADER = "Idempotency-Key"
_RETRY_STATUSES = frozenset({502, 503, 504})


# --- results ------------------------------------------------------------------------------------


class _Result(BaseModel):
    """Base of results: immutable, and tolerant of fields a newer service adds."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class ApproxDpBudget(_Result):
    """The approximate-DP sub-budget of a dataset and what black-box releases spent of it."""

    epsilon: float
    delta: float
    epsilon_spent: float
    delta_spent: float
    epsilon_remaining: float


class DatasetRead(_Result):
    """A dataset with its budget and the admission filter's grid."""

    name: str
    description: str
    target_epsilon: float
    target_delta: float
    orders: list[float]
    weights: list[float]
    approx_dp: ApproxDpBudget
    epsilon_spent: float | None
    epsilon_remaining: float
    created_at: datetime
    privacy_unit: str = "example"
    neighbouring_relation: str | None = None


class DatasetList(_Result):
    """A page of datasets."""

    items: list[DatasetRead]
    total: int


class NoiseSpec(_Result):
    """A run's noise schedule: sigma_t over the 0-based global step t."""

    schedule: str
    noise_multiplier: float
    decay_rate: float


class RunRead(_Result):
    """A run and where it stands (the DP-SGD fields are None for other kinds).

    ``epsilon_run`` is this run's own epsilon from its charges alone, at the dataset's
    target_delta (what Opacus would print for it); None when unbounded.
    """

    id: int
    dataset: str
    name: str
    kind: str
    mechanism: dict[str, Any]
    sample_rate: float | None
    steps_per_epoch: int | None
    epochs: int
    noise: NoiseSpec | None
    max_grad_norm: float | None
    reservation: str
    status: str
    epochs_charged: int
    created_at: datetime
    epsilon_run: float | None = None
    max_records_per_individual: int | None = None
    reproducible_noise: bool = False


class AuditRead(_Result):
    """A stored empirical privacy audit of a run (``exceeds_theoretical``: a broken run)."""

    id: int
    run_id: int
    epsilon_theoretical: float | None
    epsilon_lower_bound: float
    exceeds_theoretical: bool
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


class AuditList(_Result):
    """The audits of a run, oldest first."""

    items: list[AuditRead]
    total: int


class AdmissionPreview(_Result):
    """The answer of a dry run that would be admitted."""

    dataset: str
    admitted: bool
    epsilon_projected: float
    epsilon_remaining: float
    order: float | None


class EpochChargeRead(_Result):
    """The charge of one DP-SGD epoch; a retry returns the same charge.

    ``epsilon_run`` is the run's own epsilon after the charge (as :attr:`RunRead.epsilon_run`;
    None when unbounded). The dataset's spent epsilon is :meth:`LedgerClient.get_budget`'s.
    """

    run_id: int
    epoch: int
    ledger_entry_id: int
    created_at: datetime
    epsilon_run: float | None = None


class BatchChargeRead(_Result):
    """The charge of one PATE batch; a retry returns the same charge."""

    run_id: int
    batch: int
    ledger_entry_id: int
    created_at: datetime
    epsilon_run: float | None = None


class LedgerEntryRead(_Result):
    """One append-only ledger entry; ``rdp`` has one value per dataset order (None = +inf)."""

    id: int
    run_id: int
    kind: str
    epoch: int | None
    rdp: list[float | None]
    mechanism: dict[str, Any]
    created_at: datetime
    actor: str


class LedgerEntryList(_Result):
    """A page of ledger entries, oldest first."""

    items: list[LedgerEntryRead]
    total: int
    next_after: int | None = None


class OrderHeadroom(_Result):
    """The filter at one order: capacity, committed and reserved RDP, headroom, alive."""

    order: float
    weight: float
    capacity: float
    rdp_committed: float | None
    rdp_reserved: float | None
    headroom: float | None
    share_used: float | None
    alive: bool


class RunBudget(_Result):
    """One run's share of a dataset's budget."""

    id: int
    name: str
    kind: str
    status: str
    epochs: int
    epochs_charged: int
    epsilon_run: float | None
    reproducible_noise: bool = False


class KindSpend(_Result):
    """What one mechanism kind spent on a dataset."""

    kind: str
    runs: int
    epsilon_run: float | None


class BudgetRead(_Result):
    """Where a dataset's budget stands, read through the admission filter."""

    dataset: str
    target_epsilon: float
    target_delta: float
    epsilon_spent: float | None
    epsilon_reserved: float | None
    epsilon_remaining: float
    epsilon_non_adaptive: float | None
    runs: list[RunBudget]
    runs_next_after: int | None = None
    runs_refused_total: int = 0
    by_kind: list[KindSpend]
    approx_dp: ApproxDpBudget
    orders: list[OrderHeadroom]
    privacy_unit: str = "example"


class EpsilonRead(_Result):
    """The stateless accountant's epsilon: ``epsilon`` is ``epsilon_rdp``; ``epsilon_pld`` beside."""

    epsilon: float
    epsilon_rdp: float | None = None  # None only from a service older than these fields
    epsilon_pld: float | None = None
    epsilon_grid: float
    order: float
    delta: float
    steps: int


class UserLevelRead(_Result):
    """User-level epsilon for users with up to ``records_per_user`` records."""

    records_per_user: int
    epsilon: float | None
    epsilon_rdp: float | None
    order: float | None
    epsilon_pld: float | None
    group_sample_rate: float
    delta: float
    epsilon_classical: float | None
    example_delta: float | None
    bound: Literal["rdp", "pld", "classical"]


class DpSgdStatementRead(_Result):
    """The example-, epoch- and user-level numbers of the DP-SGD steps a run charged."""

    sample_rate: float
    steps: int
    steps_per_epoch: int
    epochs: float
    schedule: dict[str, Any]
    delta: float
    epsilon_rdp: float | None
    order: float | None
    epsilon_pld: float | None
    epoch_epsilon_rdp: float | None
    epoch_order: float | None
    epoch_epsilon_pld: float | None
    user: UserLevelRead
    opacus_epsilon: float | None
    opacus_grid_lacks_order: bool


class StatementRead(_Result):
    """The privacy statement of a run as the ledger holds it (``text`` is what to print)."""

    run_id: int
    run_name: str
    dataset: str
    kind: str
    status: str
    mechanism: dict[str, Any]
    sampling: str | None
    shuffling_note: str | None
    delta: float
    units_planned: int
    units_charged: int
    epsilon_run: float | None
    epsilon_run_order: float | None
    epsilon_run_planned: float | None
    dp_sgd: DpSgdStatementRead | None
    dp_sgd_note: str | None = None
    target_epsilon: float
    epsilon_spent: float | None
    text: str
    reproducible_noise: bool = False


class MaxStepsRead(_Result):
    """The most DP-SGD steps whose epsilon stays within the target, and that epsilon."""

    steps: int
    epsilon: float
    delta: float


class NoiseMultiplierRead(_Result):
    """The calibrated noise multiplier and the epsilon it gives."""

    noise_multiplier: float
    epsilon: float


class TokenCreated(_Result):
    """A created token; ``token`` is shown only here, only once."""

    id: int
    name: str
    role: str
    datasets: list[str]
    token: str


class Health(_Result):
    """Liveness and database reachability."""

    status: str


# --- mechanisms (what a run does) ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DpSgd:
    """DP-SGD: Poisson sampling at ``sample_rate``, ``epochs`` planned, a noise schedule.

    ``max_records_per_individual`` K > 1 makes the ledger charge the group-privacy cost for K.
    """

    sample_rate: float
    epochs: int
    noise_multiplier: float
    steps_per_epoch: int | None = None
    schedule: str = "constant"
    decay_rate: float = 0.0
    max_grad_norm: float | None = None
    max_records_per_individual: int = 1
    privacy_unit: Literal["example", "user"] = "example"

    def to_json(self) -> dict[str, Any]:
        """Return the ``mechanism`` object of ``POST /v1/runs`` (K sent only when K > 1, the
        privacy unit only when it is the user)."""
        body: dict[str, Any] = {
            "kind": "dp_sgd",
            "sample_rate": self.sample_rate,
            "epochs": self.epochs,
            "noise": {
                "schedule": self.schedule,
                "noise_multiplier": self.noise_multiplier,
                "decay_rate": self.decay_rate,
            },
        }
        if self.steps_per_epoch is not None:
            body["steps_per_epoch"] = self.steps_per_epoch
        if self.max_grad_norm is not None:
            body["max_grad_norm"] = self.max_grad_norm
        if self.max_records_per_individual != 1:
            body["max_records_per_individual"] = self.max_records_per_individual
        if self.privacy_unit != "example":
            body["privacy_unit"] = self.privacy_unit
        return body


@dataclass(frozen=True, kw_only=True)
class Pate:
    """PATE: ``queries`` noisy-max answers with ``noise_multiplier`` votes of noise."""

    aggregator: Literal["gnmax", "lnmax"]
    noise_multiplier: float
    queries: int
    batch_size: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the ``mechanism`` object of ``POST /v1/runs``."""
        body: dict[str, Any] = {
            "kind": "pate",
            "aggregator": self.aggregator,
            "noise_multiplier": self.noise_multiplier,
            "queries": self.queries,
        }
        if self.batch_size is not None:
            body["batch_size"] = self.batch_size
        return body


@dataclass(frozen=True, kw_only=True)
class LaplaceRelease:
    """One statistic with L1 ``sensitivity`` released with Laplace noise of ``noise_scale``."""

    sensitivity: float
    noise_scale: float

    def to_json(self) -> dict[str, Any]:
        """Return the ``mechanism`` object of ``POST /v1/runs``."""
        return {"kind": "laplace_release", "sensitivity": self.sensitivity,
                "noise_scale": self.noise_scale}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class GaussianRelease:
    """One statistic with L2 ``sensitivity`` released with Gaussian noise of std ``noise_std``."""

    sensitivity: float
    noise_std: float

    def to_json(self) -> dict[str, Any]:
        """Return the ``mechanism`` object of ``POST /v1/runs``."""
        return {"kind": "gaussian_release", "sensitivity": self.sensitivity,
                "noise_std": self.noise_std}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class ApproxDpRelease:
    """A black-box (epsilon, delta)-DP release, charged to the approximate-DP sub-budget."""

    epsilon: float
    delta: float

    def to_json(self) -> dict[str, Any]:
        """Return the ``mechanism`` object of ``POST /v1/runs``."""
        return {"kind": "approx_dp_release", "epsilon": self.epsilon, "delta": self.delta}


@dataclass(frozen=True, kw_only=True)
class Tuning:
    """Private hyperparameter tuning over ``base`` (Papernot & Steinke 2022): one job, one unit.

    ``base`` bounds every candidate; the number of candidates trained is random (truncated
    negative binomial with ``eta``, ``gamma``, or Poisson with mean ``mu``).
    """

    base: DpSgd
    candidates: int
    distribution: Literal["negative_binomial", "poisson"]
    eta: float = 1.0
    gamma: float = 0.5
    mu: float = 1.0

    def to_json(self) -> dict[str, Any]:
        """Return the ``mechanism`` object of ``POST /v1/runs``."""
        return {
            "kind": "tuning",
            "base": self.base.to_json(),
            "candidates": self.candidates,
            "distribution": self.distribution,
            "eta": self.eta,
            "gamma": self.gamma,
            "mu": self.mu,
        }


@dataclass(frozen=True, kw_only=True)
class DpFedAvg:
    """User-level DP-FedAvg: ``rounds`` rounds over ``users`` users, charged one round at a time.

    ``sampling="poisson"`` takes ``sample_rate``; ``sampling="fixed"`` takes ``clients_per_round``
    (m of the N users without replacement). ``noise_multiplier`` is sigma: the server adds noise
    of std sigma * clip to the sum of the clipped updates. Only for user-level datasets.
    """

    users: int
    rounds: int
    noise_multiplier: float
    clip: float
    sampling: Literal["poisson", "fixed"] = "poisson"
    sample_rate: float | None = None
    clients_per_round: int | None = None
    quantization_step: float = 0.0
    dimension: int = 0

    def to_json(self) -> dict[str, Any]:
        """Return the ``mechanism`` object of ``POST /v1/runs``."""
        body: dict[str, Any] = {
            "kind": "dp_fedavg",
            "users": self.users,
            "rounds": self.rounds,
            "noise_multiplier": self.noise_multiplier,
            "clip": self.clip,
            "sampling": self.sampling,
        }
        if self.sample_rate is not None:
            body["sample_rate"] = self.sample_rate
        if self.clients_per_round is not None:
            body["clients_per_round"] = self.clients_per_round
        if self.quantization_step:
            body["quantization_step"] = self.quantization_step
            body["dimension"] = self.dimension
        return body


Mechanism = DpSgd | Pate | LaplaceRelease | GaussianRelease | ApproxDpRelease | Tuning | DpFedAvg


# --- errors -------------------------------------------------------------------------------------


class LedgerError(Exception):
    """Root of every error the client raises.

    Attributes:
        message: One line saying what went wrong.
        status: The HTTP status, or None when no answer came.
        code: The service's error ``code`` (None when the body had none).
        body: The JSON error body (empty when there was none).
    """

    codes: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.body: dict[str, Any] = dict(body or {})

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        return f"HTTP {self.status} {self.code or 'error'}: {self.message}"


class InvalidInput(LedgerError):
    """The request was refused as invalid (422)."""

    codes: ClassVar[tuple[str, ...]] = ("invalid_input", "invalid_parameter")


class Unsupported(InvalidInput):
    """The accountant has no bound for the requested mechanism or target."""

    codes = ("unsupported",)


class CalibrationFailed(InvalidInput):
    """No noise multiplier within the service's search range meets the target."""

    codes = ("calibration_failed",)


class IdempotencyKeyReused(InvalidInput):
    """The Idempotency-Key was used before with a different request body (422)."""

    codes = ("idempotency_key_reused",)


class RateLimited(LedgerError):
    """Too many run requests from this token (429); ``body["retry_after_s"]`` says when to retry."""

    codes = ("rate_limited",)


class Unauthorized(LedgerError):
    """No token, or an unknown or revoked one (401)."""

    codes = ("unauthorized",)


class Forbidden(LedgerError):
    """The token's role or dataset scope does not allow this (403)."""

    codes = ("forbidden",)


class NotFound(LedgerError):
    """An unknown dataset, run or route (404)."""

    codes = ("not_found",)


class Conflict(LedgerError):
    """The request conflicts with the ledger's state (409)."""

    codes = ("conflict",)


class DatasetExists(Conflict):
    """A dataset with this name already exists."""

    codes = ("dataset_exists",)


class EpochOutOfOrder(Conflict):
    """An epoch was charged before the previous one."""

    codes = ("epoch_out_of_order",)


class EpochBeyondPlan(Conflict):
    """An epoch past the run's planned epochs."""

    codes = ("epoch_beyond_plan",)


class PrivacyUnitMismatch(Conflict):
    """The run protects another privacy unit (user or example) than the dataset declares."""

    codes = ("privacy_unit_mismatch",)


class NeighbouringRelationMismatch(Conflict):
    """The run's accounting uses another neighbouring relation than the dataset's runs."""

    codes = ("neighbouring_relation_mismatch",)


class UnitMismatch(Conflict):
    """A charge sent to another unit's route (a PATE batch to a DP-SGD run, or back)."""

    codes = ("unit_mismatch",)


class RunNotActive(Conflict):
    """The run is finished or was refused."""

    codes = ("run_not_active",)


class BudgetExceeded(Conflict):
    """The ledger refused a run or a charge: it does not fit the dataset's budget.

    Attributes:
        epsilon_projected: The filter epsilon the request would have reached (None: unbounded).
        epsilon_remaining: The filter epsilon left before the request.
        run_id: The refused run (None for a refused dry run or a refused admission).
        epochs_that_fit: How many of the planned epochs would fit, when the service says.
        noise_multiplier_that_fits: A noise multiplier with which the plan fits, when it says.
    """

    codes = ("budget_exceeded",)

    @property
    def epsilon_projected(self) -> float | None:
        return _optional_float(self.body.get("epsilon_projected"))

    @property
    def epsilon_remaining(self) -> float | None:
        return _optional_float(self.body.get("epsilon_remaining"))

    @property
    def run_id(self) -> int | None:
        return _optional_int(self.body.get("run_id"))

    @property
    def epochs_that_fit(self) -> int | None:
        return _optional_int(self.body.get("epochs_that_fit"))

    @property
    def noise_multiplier_that_fits(self) -> float | None:
        return _optional_float(self.body.get("noise_multiplier_that_fits"))


class CrossSiteRequest(Forbidden):
    """A browser form post from another site was refused (403)."""

    codes = ("cross_site_request",)


class PayloadTooLarge(LedgerError):
    """The request body is over the service's size limit (413)."""

    codes = ("payload_too_large",)


class ServerError(LedgerError):
    """The service failed (5xx)."""

    codes = ("internal_error",)


class ServiceUnavailable(ServerError):
    """The service (or a proxy before it) answered 502, 503 or 504, after every retry."""

    codes = ("database_unavailable",)


class Unreachable(ServiceUnavailable):
    """No answer came: connection refused, reset or timed out, after every retry."""


def _optional_float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _error_classes(root: type[LedgerError]) -> list[type[LedgerError]]:
    classes = [root]
    for sub in root.__subclasses__():
        classes.extend(_error_classes(sub))
    return classes


_BY_CODE: dict[str, type[LedgerError]] = {
    code: cls for cls in _error_classes(LedgerError) for code in cls.codes
}
_BY_STATUS: dict[int, type[LedgerError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidInput,
    429: RateLimited,
    502: ServiceUnavailable,
    503: ServiceUnavailable,
    504: ServiceUnavailable,
}


def error_from_response(response: httpx.Response) -> LedgerError:
    """Return the error an error ``response`` stands for: by its ``code``, else by its status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = " ".join(response.text.split())[:200] or response.reason_phrase
        body = {"message": text}
    code = body.get("code") if isinstance(body.get("code"), str) else None
    message = str(body.get("message", "")) or response.reason_phrase
    status = response.status_code
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else LedgerError
    return cls(message, status=status, code=code, body=body)


# --- retries ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How idempotent calls are retried on connection errors and 502/503/504.

    The n-th retry (n = 0, 1, ...) sleeps a uniform random time in
    ``[0, min(max_backoff_s, backoff_s * 2**n)]`` ("full jitter"), or the ``Retry-After`` the
    service asked for if that is longer. No retry starts once ``max_attempts`` calls were made or
    when its sleep would end past ``max_elapsed_s`` since the first call.
    """

    max_attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_elapsed_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.backoff_s, self.max_backoff_s, self.max_elapsed_s) < 0:
            raise ValueError("backoff_s, max_backoff_s and max_elapsed_s must be >= 0")

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Return the jittered sleep before retry number ``retry`` (0-based)."""
        return rng.uniform(0.0, min(self.max_backoff_s, self.backoff_s * 2.0**retry))


NO_RETRY = RetryPolicy(max_attempts=1)


def retry_after_seconds(response: httpx.Response, *, now: datetime | None = None) -> float | None:
    """Return the ``Retry-After`` delay of ``response`` in seconds (delta-seconds or HTTP-date)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, float((when - (now or datetime.now(UTC))).total_seconds()))


# --- the client ---------------------------------------------------------------------------------

R = TypeVar("R", bound=_Result)


@dataclass
class _Retrier:
    policy: RetryPolicy
    sleep: Callable[[float], None]
    clock: Callable[[], float]
    rng: random.Random = field(default_factory=random.Random)

    def wait(self, retry: int, started: float, asked: float | None) -> bool:
        """Sleep before retry ``retry`` if the policy allows it; return whether to retry."""
        if retry + 1 >= self.policy.max_attempts:
            return False
        delay = max(self.policy.backoff(retry, self.rng), asked or 0.0)
        if self.clock() - started + delay > self.policy.max_elapsed_s:
            return False
        self.sleep(delay)
        return True


class LedgerClient:
    """A synchronous client of the dpledger service.

    Example:
        >>> with LedgerClient("http://ledger:8000", token="dpl_...") as ledger:  # doctest: +SKIP
        ...     run = ledger.create_run(dataset="mnist", name="resnet",
        ...                             mechanism=DpSgd(sample_rate=0.004, epochs=10,
        ...                                             noise_multiplier=1.1))
        ...     ledger.charge_epoch(run.id, 0)

    Args:
        base_url: The service's URL (ignored when ``http`` is given: its base URL is used).
        token: The bearer token sent with every call (None: no Authorization header).
        timeout_s: Timeout of one HTTP call.
        retry: The retry policy of idempotent calls (``NO_RETRY`` turns retries off).
        transport: An httpx transport (tests: ``httpx.MockTransport``).
        http: An existing ``httpx.Client`` to send through (tests: Starlette's ``TestClient``);
            the caller keeps ownership of it.
        sleep: Called to wait between retries (tests: a recorder).
        clock: Monotonic seconds, for the retries' time bound.
        rng: Source of the backoff jitter.
    """

    def __init__(
        self,
        base_url: str = "http://localhost:8000",
        *,
        token: str | None = None,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._owns_http = http is None
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout_s, transport=transport)
        self.token = token
        self.retry = retry or RetryPolicy()
        self._retrier = _Retrier(self.retry, sleep, clock, rng or random.Random())

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The service's URL."""
        return str(self.http.base_url)

    def __repr__(self) -> str:
        return f"LedgerClient({self.base_url!r})"  # never the token

    def close(self) -> None:
        """Close the connection pool (unless it was passed in)."""
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        return {**headers, **(extra or {})}

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
    ) -> httpx.Response:
        """Send one call, retrying it when ``idempotent``; return a 2xx response or raise."""
        started = self._retrier.clock()
        retry = 0
        while True:
            try:
                response = self.http.request(
                    method, path, json=json, params=params, headers=self._headers(headers)
                )
            except httpx.TransportError as exc:
                if idempotent and self._retrier.wait(retry, started, None):
                    retry += 1
                    continue
                raise Unreachable(
                    f"ledger unreachable at {method} {path}: {type(exc).__name__}: {exc}"
                ) from exc
            if response.is_success:
                return response
            if (
                idempotent
                and response.status_code in _RETRY_STATUSES
                and self._retrier.wait(retry, started, retry_after_seconds(response))
            ):
                retry += 1
                continue
            raise error_from_response(response)

    def _call(
        self,
        result: type[R],
        method: str,
        path: str,
        *,
        idempotent: bool,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> R:
        response = self._send(
            method, path, json=json, params=params, headers=headers, idempotent=idempotent
        )
        try:
            return result.model_validate(response.json())
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise LedgerError(
                f"unexpected answer to {method} {path}: {exc}".splitlines()[0],
                status=response.status_code,
                code="invalid_response",
            ) from exc

    # -- health --------------------------------------------------------------------------------

    def health(self) -> Health:
        """``GET /healthz``: ok when the service reaches its database."""
        return self._call(Health, "GET", "/healthz", idempotent=True)

    def liveness(self) -> Health:
        """``GET /livez``: ok while the process serves requests."""
        return self._call(Health, "GET", "/livez", idempotent=True)

    # -- datasets ------------------------------------------------------------------------------

    def create_dataset(
        self,
        *,
        name: str,
        target_epsilon: float,
        target_delta: float,
        description: str = "",
        orders: list[float] | None = None,
        weights: list[float] | None = None,
        approx_dp_epsilon: float = 0.0,
        approx_dp_delta: float = 0.0,
        privacy_unit: Literal["example", "user"] = "example",
    ) -> DatasetRead:
        """``POST /v1/datasets`` (admin): a dataset and its budget. Not retried."""
        body: dict[str, Any] = {
            "name": name,
            "description": description,
            "target_epsilon": target_epsilon,
            "target_delta": target_delta,
            "approx_dp_epsilon": approx_dp_epsilon,
            "approx_dp_delta": approx_dp_delta,
        }
        if orders is not None:
            body["orders"] = list(orders)
        if weights is not None:
            body["weights"] = list(weights)
        if privacy_unit != "example":
            body["privacy_unit"] = privacy_unit
        return self._call(DatasetRead, "POST", "/v1/datasets", json=body, idempotent=False)

    def get_dataset(self, name: str) -> DatasetRead:
        """``GET /v1/datasets/{name}``."""
        return self._call(DatasetRead, "GET", f"/v1/datasets/{name}", idempotent=True)

    def list_datasets(self, *, limit: int = 100, offset: int = 0) -> DatasetList:
        """``GET /v1/datasets``: the datasets this token may read."""
        params = {"limit": limit, "offset": offset}
        return self._call(DatasetList, "GET", "/v1/datasets", params=params, idempotent=True)

    def get_budget(self, dataset: str) -> BudgetRead:
        """``GET /v1/datasets/{name}/budget``: where the dataset's budget stands."""
        return self._call(BudgetRead, "GET", f"/v1/datasets/{dataset}/budget", idempotent=True)

    def list_ledger(self, dataset: str, *, limit: int = 100, offset: int = 0) -> LedgerEntryList:
        """``GET /v1/datasets/{name}/ledger``: the append-only ledger, oldest first."""
        params = {"limit": limit, "offset": offset}
        path = f"/v1/datasets/{dataset}/ledger"
        return self._call(LedgerEntryList, "GET", path, params=params, idempotent=True)

    # -- runs ----------------------------------------------------------------------------------

    @staticmethod
    def run_body(
        *,
        dataset: str,
        name: str,
        mechanism: Mechanism,
        reservation: str = "plan",
        reproducible_noise: bool = False,
    ) -> dict[str, Any]:
        """Return the ``POST /v1/runs`` body of a run (``reproducible_noise`` sent when true)."""
        body = {"dataset": dataset, "name": name, "mechanism": mechanism.to_json(),
                "reservation": reservation}  # fmt: skip
        return {**body, "reproducible_noise": True} if reproducible_noise else body

    def create_run(
        self,
        *,
        dataset: str,
        name: str,
        mechanism: Mechanism,
        reservation: str = "plan",
        idempotency_key: str | None = None,
        reproducible_noise: bool = False,
    ) -> RunRead:
        """``POST /v1/runs``: admit a run (raises :class:`BudgetExceeded` when it does not fit).

        The call carries an ``Idempotency-Key`` (``idempotency_key``, or a new uuid4) and is
        retried with the same key, so a retry after a lost answer returns the run first
        registered instead of registering a second one. ``reproducible_noise``: the run's noise
        and sampling come from a public seed (the ledger records it and its statement says so).
        """
        key = idempotency_key or str(uuid.uuid4())
        body = self.run_body(
            dataset=dataset, name=name, mechanism=mechanism, reservation=reservation,
            reproducible_noise=reproducible_noise,
        )  # fmt: skip
        headers = {IDEMPOTENCY_HEADER: key}
        return self._call(RunRead, "POST", "/v1/runs", json=body, headers=headers, idempotent=True)

    def preview_run(
        self, *, dataset: str, name: str, mechanism: Mechanism, reservation: str = "plan"
    ) -> AdmissionPreview:
        """``POST /v1/runs?dry_run=true``: would the run be admitted? Writes nothing.

        Raises :class:`BudgetExceeded` (with ``run_id`` None) when it would not.
        """
        body = self.run_body(
            dataset=dataset, name=name, mechanism=mechanism, reservation=reservation
        )
        params = {"dry_run": "true"}
        return self._call(
            AdmissionPreview, "POST", "/v1/runs", json=body, params=params, idempotent=True
        )

    def get_run(self, run_id: int) -> RunRead:
        """``GET /v1/runs/{id}``."""
        return self._call(RunRead, "GET", f"/v1/runs/{run_id}", idempotent=True)

    def statement(self, run_id: int, *, records_per_user: int = 1) -> StatementRead:
        """``GET /v1/runs/{id}/statement``: the run's privacy statement (RDP and PLD, user level)."""
        return self._call(
            StatementRead,
            "GET",
            f"/v1/runs/{run_id}/statement",
            params={"records_per_user": records_per_user},
            idempotent=True,
        )

    def charge_epoch(self, run_id: int, epoch: int) -> EpochChargeRead:
        """``POST /v1/runs/{id}/epochs``: charge epoch ``epoch`` (0-based) before it starts.

        Idempotent per (run, epoch), hence retried. Raises :class:`BudgetExceeded` when a
        pay-as-you-go epoch no longer fits.
        """
        path = f"/v1/runs/{run_id}/epochs"
        return self._call(EpochChargeRead, "POST", path, json={"epoch": epoch}, idempotent=True)

    def charge_batch(self, run_id: int, batch: int) -> BatchChargeRead:
        """``POST /v1/runs/{id}/batches``: charge PATE batch ``batch`` before answering it."""
        path = f"/v1/runs/{run_id}/batches"
        return self._call(BatchChargeRead, "POST", path, json={"batch": batch}, idempotent=True)

    def finish_run(self, run_id: int) -> RunRead:
        """``POST /v1/runs/{id}/finish``: release what the run reserved and never charged."""
        return self._call(RunRead, "POST", f"/v1/runs/{run_id}/finish", idempotent=True)

    def add_audit(self, run_id: int, audit: Mapping[str, Any]) -> AuditRead:
        """``POST /v1/runs/{id}/audits``: store an audit of the run (never retried: it adds a row).

        ``audit`` is the JSON summary of ``dpledger audit --json`` (optionally with ``seed``).
        """
        path = f"/v1/runs/{run_id}/audits"
        return self._call(AuditRead, "POST", path, json=dict(audit), idempotent=False)

    def list_audits(self, run_id: int) -> AuditList:
        """``GET /v1/runs/{id}/audits``: the run's audits, oldest first."""
        return self._call(AuditList, "GET", f"/v1/runs/{run_id}/audits", idempotent=True)

    # -- stateless accountant ------------------------------------------------------------------

    def compute_epsilon(
        self,
        *,
        sample_rate: float,
        noise_multiplier: float,
        steps: int,
        delta: float,
        schedule: str = "constant",
        decay_rate: float = 0.0,
    ) -> EpsilonRead:
        """``POST /v1/accountant/epsilon``: epsilon of DP-SGD with a noise schedule."""
        body = {"sample_rate": sample_rate, "noise_multiplier": noise_multiplier, "steps": steps,
                "delta": delta, "schedule": schedule, "decay_rate": decay_rate}  # fmt: skip
        path = "/v1/accountant/epsilon"
        return self._call(EpsilonRead, "POST", path, json=body, idempotent=True)

    def calibrate_noise_multiplier(
        self,
        *,
        target_epsilon: float,
        delta: float,
        sample_rate: float,
        steps: int,
        schedule: str = "constant",
        decay_rate: float = 0.0,
    ) -> NoiseMultiplierRead:
        """``POST /v1/accountant/noise-multiplier``: the smallest sigma meeting the target."""
        body = {"target_epsilon": target_epsilon, "delta": delta, "sample_rate": sample_rate,
                "steps": steps, "schedule": schedule, "decay_rate": decay_rate}  # fmt: skip
        path = "/v1/accountant/noise-multiplier"
        return self._call(NoiseMultiplierRead, "POST", path, json=body, idempotent=True)

    def max_steps(
        self,
        *,
        target_epsilon: float,
        delta: float,
        sample_rate: float,
        noise_multiplier: float,
        schedule: str = "constant",
        decay_rate: float = 0.0,
        limit: int | None = None,
    ) -> MaxStepsRead:
        """``POST /v1/accountant/max-steps``: the most steps whose epsilon stays within target."""
        body: dict[str, Any] = {"target_epsilon": target_epsilon, "delta": delta,
                                "sample_rate": sample_rate, "noise_multiplier": noise_multiplier,
                                "schedule": schedule, "decay_rate": decay_rate}  # fmt: skip
        if limit is not None:
            body["limit"] = limit
        path = "/v1/accountant/max-steps"
        return self._call(MaxStepsRead, "POST", path, json=body, idempotent=True)

    # -- tokens --------------------------------------------------------------------------------

    def create_token(
        self,
        *,
        name: str,
        role: Literal["admin", "trainer", "viewer"],
        datasets: list[str] | None = None,
    ) -> TokenCreated:
        """``POST /v1/tokens`` (admin): a new token, shown only in this answer. Not retried."""
        body = {"name": name, "role": role, "datasets": list(datasets or [])}
        return self._call(TokenCreated, "POST", "/v1/tokens", json=body, idempotent=False)
