"""The one meeting point of training loop and privacy ledger: a gate asked before each epoch.

Like Opacus' single accountant hook, the loop calls :meth:`BudgetGate.before_epoch` at exactly one
point, before an epoch starts, and runs the epoch only when the gate has charged it. ``open`` and
``finish`` bracket the run. Two gates behave the same way:

* :class:`LocalBudgetGate`: the in-process :class:`dp_core.accountant.RdpAccountant` and a target
  epsilon (works offline);
* ``dpledger.gate.HttpBudgetGate``: the ledger service, through ``dpledger.client.LedgerClient``
  (it lives in ``dpledger`` because dp_core never imports it; ``dpledger train --service`` hands
  the train command a :class:`RemoteGateFactory` that builds it).

The mechanism of epoch e with S steps per epoch is ``SampledGaussianSchedule(sample_rate=q, schedule=schedule, steps=S, start_step=e*S)``:
the Poisson-subsampled Gaussian at the schedule's sigma_t for each global step t (Mironov, Talwar &
Zhang 2019), exactly what the loop executes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from dp_core.accountant import RdpAccountant
from dp_core.errors import InvalidParameterError
from dp_core.group import group_exponent
from dp_core.mechanisms import SampledGaussianSchedule
from dp_core.schedules import NoiseSchedule
from dp_core.validation import non_negative_int, open_probability, positive_float, probability

__all__ = [
    "BudgetGate",
    "GateDecision",
    "LocalBudgetGate",
    "RemoteGateFactory",
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
        group_size: K, the most records one individual holds (``--max-records-per-individual``);
            a ledger charges the group-privacy cost for K (1: per record).
        privacy_unit: ``"user"`` when the loop samples users and clips each user's summed
            gradient (``user_index``): the run is then charged to a user-level dataset.
        class_sample_rates: Per-class Poisson rates q_c (by class), when the loop samples each
            class at its own rate (:mod:`dp_core.trainer.class_sampling`); ``sample_rate`` is
            then their maximum, the rate the run is accounted and charged at.
        reproducible_noise: The noise and sampling are derived from a public seed
            (``--reproducible-noise``): a ledger records the run as such, and the guarantee does
            not hold against anyone who knows the seed.
    """

    sample_rate: float
    steps_per_epoch: int
    epochs: int
    schedule: NoiseSchedule
    max_grad_norm: float
    delta: float
    name: str = "dp-sgd"
    group_size: int = 1
    privacy_unit: str = "example"
    class_sample_rates: tuple[float, ...] | None = None
    reproducible_noise: bool = False

    def __post_init__(self) -> None:
        probability("sample_rate", self.sample_rate)
        if self.class_sample_rates is not None:
            rates = tuple(probability("class_sample_rates", q) for q in self.class_sample_rates)
            if not rates or max(rates) != self.sample_rate:
                raise InvalidParameterError(
                    "sample_rate", self.sample_rate, "must be the largest of class_sample_rates"
                )
            object.__setattr__(self, "class_sample_rates", rates)
        non_negative_int("steps_per_epoch", self.steps_per_epoch)
        non_negative_int("epochs", self.epochs)
        positive_float("max_grad_norm", self.max_grad_norm)
        open_probability("delta", self.delta)
        group_exponent(self.group_size)  # K >= 1
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
        rates = self.class_sample_rates
        return {
            **({} if rates is None else {"class_sample_rates": list(rates)}),
            **({"reproducible_noise": True} if self.reproducible_noise else {}),
            "sample_rate": self.sample_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "schedule": self.schedule.to_dict(),
            "max_grad_norm": self.max_grad_norm,
            "delta": self.delta,
            "name": self.name,
            "group_size": self.group_size,
            "privacy_unit": self.privacy_unit,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunPlan:
        """Inverse of :meth:`to_dict`."""
        rates = data.get("class_sample_rates")
        return cls(
            **{
                **data,
                "schedule": NoiseSchedule.from_dict(data["schedule"]),
                "class_sample_rates": None if rates is None else tuple(rates),
            }
        )


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


class RemoteGateFactory(Protocol):
    """Builds the gate of a ledger service (``dpledger.gate.http_gate``) from the CLI's options."""

    def __call__(self, *, base_url: str, token: str, dataset: str, reservation: str) -> BudgetGate:
        """Return a gate charging ``dataset`` on the service at ``base_url``."""
        ...
