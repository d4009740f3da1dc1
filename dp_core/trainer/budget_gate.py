"""The one meeting point of training loop and privacy ledger: a gate asked before each epoch.

Like Opacus' single accountant hook, the loop calls :meth:`BudgetGate.before_epoch` at exactly one
point, before an epoch starts, and runs the epoch only when the gate has charged it. ``open`` and
``finish`` bracket the run. Two gates behave the same way:

* :class:`LocalBudgetGate`: the in-process :class:`dp_core.accountant.RdpAccountant` and a target
  epsilon (works offline);
* :class:`HttpBudgetGate`: the ledger service of issue 3 over httpx (``POST /v1/runs``,
  ``POST /v1/runs/{id}/epochs``, ``POST /v1/runs/{id}/finish``).

The mechanism of epoch e with S steps per epoch is ``SampledGaussianSchedule(sample_rate=q, schedule=schedule, steps=S, start_step=e*S)``:
the Poisson-subsampled Gaussian at the schedule's sigma_t for each global step t (Mironov, Talwar &
Zhang 2019), exactly what the loop executes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import httpx

from dp_core.accountant import RdpAccountant
from dp_core.errors import InvalidParameterError
from dp_core.mechanisms import SampledGaussianSchedule
from dp_core.schedules import NoiseSchedule
from dp_core.trainer.errors import LedgerError
from dp_core.validation import non_negative_int, open_probability, positive_float, probability

__all__ = [
    "BudgetGate",
    "GateDecision",
    "HttpBudgetGate",
    "LocalBudgetGate",
    "RunPlan",
]


@dataclass(frozen=True)
class RunPlan:
    """The mechanism a training run will execute, epoch by epoch.

    Attributes:
        sample_rate: q, the Poisson sampling rate.
        steps_per_epoch: S, DP-SGD steps per epoch.
        epochs: Planned number of epochs.
        schedule: Noise multiplier per global step (the accounted one, see adaptive clipping).
        max_grad_norm: Initial clip norm (informational for the ledger).
        delta: The delta at which the run's epsilon is reported.
        name: A human-readable run name.
    """

    sample_rate: float
    steps_per_epoch: int
    epochs: int
    schedule: NoiseSchedule
    max_grad_norm: float
    delta: float
    name: str = "dp-sgd"

    def __post_init__(self) -> None:
        probability("sample_rate", self.sample_rate)
        non_negative_int("steps_per_epoch", self.steps_per_epoch)
        non_negative_int("epochs", self.epochs)
        positive_float("max_grad_norm", self.max_grad_norm)
        open_probability("delta", self.delta)
        # Fails now when a decaying schedule reaches sigma = 0 within the plan.
        self.mechanism(0, self.epochs)

    def mechanism(self, start_epoch: int, stop_epoch: int) -> SampledGaussianSchedule:
        """Return the mechanism of epochs [start_epoch, stop_epoch)."""
        s = self.steps_per_epoch
        return SampledGaussianSchedule(
            sample_rate=self.sample_rate,
            schedule=self.schedule,
            steps=(stop_epoch - start_epoch) * s,
            start_step=start_epoch * s,
        )

    def epoch_mechanism(self, epoch: int) -> SampledGaussianSchedule:
        """Return the mechanism of one epoch (what a gate charges before it)."""
        return self.mechanism(epoch, epoch + 1)

    def epsilon(self, epochs: int, delta: float | None = None) -> float:
        """Return the epsilon of the first ``epochs`` epochs (at ``delta``, default the plan's)."""
        if epochs == 0:
            return 0.0
        accountant = RdpAccountant()
        accountant.compose(self.mechanism(0, epochs))
        return float(accountant.get_epsilon(self.delta if delta is None else delta).epsilon)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description (stored in checkpoints)."""
        return {
            "sample_rate": self.sample_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "schedule": self.schedule.to_dict(),
            "max_grad_norm": self.max_grad_norm,
            "delta": self.delta,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunPlan:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**data, "schedule": NoiseSchedule.from_dict(data["schedule"])})


@dataclass(frozen=True)
class GateDecision:
    """A gate's answer.

    Attributes:
        allowed: Whether the run (or epoch) may go ahead.
        reason: ``charged``, ``already_charged``, ``admitted``, or why it was refused.
        epsilon_spent: Epsilon spent so far as the gate sees it, when it knows.
    """

    allowed: bool
    reason: str
    epsilon_spent: float | None = None


@runtime_checkable
class BudgetGate(Protocol):
    """The protocol between the training loop and a privacy ledger."""

    def open(self, plan: RunPlan) -> GateDecision:
        """Register (admit) the run; a resumed gate that is already open answers ``admitted``."""
        ...

    def before_epoch(self, epoch: int) -> GateDecision:
        """Charge epoch ``epoch`` (0-based) before it starts, or refuse; idempotent per epoch."""
        ...

    def finish(self) -> None:
        """Tell the ledger the run ended (releasing what was reserved and never charged)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Return the gate's state for a checkpoint."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`."""
        ...


class LocalBudgetGate:
    """A gate backed by the in-process RDP accountant and a target epsilon.

    Before epoch e it computes the epsilon of epochs [0, e] and charges e only if that is at most
    ``target_epsilon``: the run stops at the last epoch that fits, never overspends.
    """

    def __init__(
        self, *, target_epsilon: float, delta: float, refuse_over_budget_plan: bool = False
    ):
        """Create the gate.

        Args:
            target_epsilon: The budget.
            delta: The delta of the budget.
            refuse_over_budget_plan: Refuse at ``open`` a plan whose full length exceeds the
                budget (as the service does) instead of training until the budget is spent.
        """
        self.target_epsilon = positive_float("target_epsilon", target_epsilon)
        self.delta = open_probability("delta", delta)
        self.refuse_over_budget_plan = refuse_over_budget_plan
        self.plan: RunPlan | None = None
        self.epochs_charged = 0

    def _plan(self) -> RunPlan:
        if self.plan is None:
            raise RuntimeError("the gate is not open")
        return self.plan

    def _epsilon(self, epochs: int) -> float:
        return self._plan().epsilon(epochs, self.delta)

    def open(self, plan: RunPlan) -> GateDecision:
        """Admit the run (refusing an over-budget plan when so configured)."""
        self.plan = plan
        if self.refuse_over_budget_plan:
            projected = self._epsilon(plan.epochs)
            if projected > self.target_epsilon:
                return GateDecision(
                    False,
                    f"budget_exceeded: the plan needs epsilon {projected:.4g} "
                    f"> target {self.target_epsilon:g}",
                )
        return GateDecision(True, "admitted", self._epsilon(self.epochs_charged))

    def before_epoch(self, epoch: int) -> GateDecision:
        """Charge ``epoch`` if the run's epsilon stays within the target."""
        if epoch < self.epochs_charged:
            return GateDecision(True, "already_charged", self._epsilon(self.epochs_charged))
        if epoch != self.epochs_charged:
            raise InvalidParameterError(
                "epoch", epoch, f"next epoch to charge is {self.epochs_charged}"
            )
        spent = self._epsilon(epoch + 1)
        if spent > self.target_epsilon:
            return GateDecision(
                False,
                f"budget_exceeded: epoch {epoch} would bring epsilon to {spent:.4g} "
                f"> target {self.target_epsilon:g}",
                self._epsilon(self.epochs_charged),
            )
        self.epochs_charged = epoch + 1
        return GateDecision(True, "charged", spent)

    def finish(self) -> None:
        """Nothing to release locally."""

    def state_dict(self) -> dict[str, Any]:
        """Return the epochs charged (the plan is in the checkpoint too)."""
        return {"kind": "local", "epochs_charged": self.epochs_charged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the epochs charged."""
        self.epochs_charged = int(state["epochs_charged"])


_RETRY_STATUSES = frozenset({502, 503, 504})
_RESERVATIONS = ("plan", "epoch")


class HttpBudgetGate:
    """A gate backed by the dpledger service (issue 3's HTTP contract), with bearer auth.

    Network errors and 502/503/504 answers are retried with exponential backoff; this is safe
    because the service's charges are idempotent per (run, epoch). A 409 is a refusal (the loop
    stops cleanly); any other error status raises :class:`LedgerError`.

    ``reservation="plan"`` (default) reserves every planned epoch at admission, so the run can
    never be stopped by others; ``reservation="epoch"`` reserves nothing and passes each epoch
    through the service's filter when it is charged, so concurrent runs may stop it early.
    """

    def __init__(
        self,
        *,
        base_url: str,
        token: str,
        dataset: str,
        client: httpx.Client | None = None,
        max_retries: int = 5,
        backoff_seconds: float = 0.5,
        timeout_seconds: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        reservation: str = "plan",
    ) -> None:
        """Create the gate; pass ``client`` (e.g. with a MockTransport or ASGITransport) to test."""
        if reservation not in _RESERVATIONS:
            raise InvalidParameterError("reservation", reservation, "one of 'plan' or 'epoch'")
        self.dataset = dataset
        self.reservation = reservation
        self.client = client or httpx.Client(base_url=base_url, timeout=timeout_seconds)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.sleep = sleep
        self.run_id: str | None = None
        self.epochs_charged = 0

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            try:
                response = self.client.post(path, json=body, headers=self.headers)
            except httpx.TransportError as exc:
                if attempt == self.max_retries:
                    raise LedgerError(f"ledger unreachable at {path}: {exc}") from exc
            else:
                if response.status_code not in _RETRY_STATUSES or attempt == self.max_retries:
                    return response
            self.sleep(self.backoff_seconds * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _error(response: httpx.Response) -> tuple[str, str]:
        try:
            body = response.json()
        except ValueError:
            return "http_error", response.text[:200]
        if isinstance(body, dict):
            return str(body.get("code", "http_error")), str(body.get("message", body))
        return "http_error", str(body)

    def _fail(self, what: str, response: httpx.Response) -> LedgerError:
        code, message = self._error(response)
        return LedgerError(
            f"{what} failed: HTTP {response.status_code} {code}: {message}",
            status=response.status_code,
            service_code=code,
        )

    @staticmethod
    def run_body(plan: RunPlan, dataset: str, reservation: str = "plan") -> dict[str, Any]:
        """Return the ``POST /v1/runs`` body describing ``plan`` exactly."""
        if plan.schedule.kind == "explicit":
            raise InvalidParameterError(
                "schedule", "explicit", "the ledger service accepts only parametric schedules"
            )
        return {
            "dataset": dataset,
            "name": plan.name,
            "sample_rate": plan.sample_rate,
            "steps_per_epoch": plan.steps_per_epoch,
            "epochs": plan.epochs,
            "noise": {
                "schedule": plan.schedule.kind,
                "noise_multiplier": plan.schedule.noise_multiplier,
                "decay_rate": plan.schedule.decay_rate,
            },
            "max_grad_norm": plan.max_grad_norm,
            "reservation": reservation,
        }

    def open(self, plan: RunPlan) -> GateDecision:
        """Register the run (``POST /v1/runs``); a 409 refuses the whole plan up front."""
        if self.run_id is not None:
            return GateDecision(True, "admitted")
        response = self._post("/v1/runs", self.run_body(plan, self.dataset, self.reservation))
        if response.status_code == 409:
            code, message = self._error(response)
            return GateDecision(False, f"{code}: {message}")
        if response.status_code not in (200, 201):
            raise self._fail("registering the run", response)
        self.run_id = str(response.json()["id"])
        return GateDecision(True, "admitted")

    def before_epoch(self, epoch: int) -> GateDecision:
        """Charge ``epoch`` (``POST /v1/runs/{id}/epochs``); a 409 is a refusal."""
        if self.run_id is None:
            raise RuntimeError("the gate is not open")
        response = self._post(f"/v1/runs/{self.run_id}/epochs", {"epoch": epoch})
        if response.status_code == 409:
            code, message = self._error(response)
            return GateDecision(False, f"{code}: {message}")
        if response.status_code not in (200, 201):
            raise self._fail(f"charging epoch {epoch}", response)
        self.epochs_charged = max(self.epochs_charged, epoch + 1)
        body = response.json()
        spent = body.get("epsilon_spent") if isinstance(body, dict) else None
        return GateDecision(
            True, "charged", float(spent) if isinstance(spent, int | float) else None
        )

    def finish(self) -> None:
        """Release the reservation of epochs never started (``POST /v1/runs/{id}/finish``)."""
        if self.run_id is None:
            return
        response = self._post(f"/v1/runs/{self.run_id}/finish", {})
        if response.status_code not in (200, 201, 204):
            raise self._fail("finishing the run", response)

    def state_dict(self) -> dict[str, Any]:
        """Return the run id and the epochs charged."""
        return {"kind": "http", "run_id": self.run_id, "epochs_charged": self.epochs_charged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the run id (a resumed run re-charges nothing: charges are idempotent)."""
        self.run_id = state.get("run_id")
        self.epochs_charged = int(state.get("epochs_charged", 0))
