"""`HttpBudgetGate`: the trainer's :class:`~dp_core.trainer.budget_gate.BudgetGate` over the service.

It lives in ``dpledger`` (not in ``dp_core.trainer``) because it speaks HTTP through
:class:`dpledger.client.LedgerClient`, and ``dp_core`` never imports ``dpledger``. ``dpledger
train --service`` builds it (``dpledger.cli`` hands :func:`http_gate` to the train command);
Python users pass it to ``DPTrainer(gate=...)`` or ``make_private(gate=...)``.

A budget refusal (409 ``budget_exceeded``) is a :class:`GateDecision` that is not allowed, so the
training loop stops cleanly with a checkpoint; any other failure raises
:class:`dp_core.trainer.errors.LedgerError` with the service's status and code.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from dp_core.errors import InvalidParameterError
from dp_core.trainer.budget_gate import GateDecision, RunPlan
from dp_core.trainer.errors import LedgerError as TrainerLedgerError
from dpledger.client import (
    BudgetExceeded,
    DpSgd,
    LedgerClient,
    LedgerError,
    RetryPolicy,
    Tuning,
)
from dpledger.options import announcing_sleep

__all__ = [
    "HttpBudgetGate",
    "HttpTuningLedger",
    "http_gate",
    "http_tuning_ledger",
    "plan_mechanism",
    "refusal_reason",
]

_RESERVATIONS = ("plan", "epoch")


def plan_mechanism(plan: RunPlan) -> DpSgd:
    """Return the service's description of exactly the mechanism ``plan`` executes."""
    if plan.schedule.kind == "explicit":
        raise InvalidParameterError(
            "schedule", "explicit", "the ledger service accepts only parametric schedules"
        )
    return DpSgd(
        sample_rate=plan.sample_rate,
        steps_per_epoch=plan.steps_per_epoch,
        epochs=plan.epochs,
        noise_multiplier=plan.schedule.noise_multiplier,
        schedule=plan.schedule.kind,
        decay_rate=plan.schedule.decay_rate,
        max_grad_norm=plan.max_grad_norm,
        max_records_per_individual=plan.group_size,
        privacy_unit="user" if plan.privacy_unit == "user" else "example",
    )


def refusal_reason(refusal: BudgetExceeded) -> str:
    """Return one line saying why the ledger refused, with what would have fit when it says.

    The service's message already says what would fit (in the plan's units: epochs, batches or
    rounds); the numbers are added here only when it does not.
    """
    hints = []
    if "would fit" not in refusal.message:
        if refusal.epochs_that_fit:
            hints.append(f"{refusal.epochs_that_fit} of the planned units would fit")
        if refusal.noise_multiplier_that_fits is not None:
            hints.append(f"noise_multiplier {refusal.noise_multiplier_that_fits:.4g} would fit")
    suffix = f" ({'; '.join(hints)})" if hints else ""
    return f"{refusal.code}: {refusal.message}{suffix}"


class HttpBudgetGate:
    """A budget gate backed by the dpledger service, through :class:`LedgerClient`.

    ``reservation="plan"`` (default) reserves every planned epoch at admission, so the run can
    never be stopped by others; ``reservation="epoch"`` reserves nothing and passes each epoch
    through the service's filter when it is charged, so concurrent runs may stop it early.
    Charges and finish are retried by the client (they are idempotent); run creation is retried
    with one ``Idempotency-Key``.
    """

    def __init__(
        self,
        *,
        base_url: str = "http://localhost:8000",
        token: str | None = None,
        dataset: str,
        reservation: str = "plan",
        client: LedgerClient | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Create the gate; pass ``client`` to share one (tests: a client on the in-process app).

        ``sleep`` waits before each retry of a call (the command line's says so on stderr).
        """
        if reservation not in _RESERVATIONS:
            raise InvalidParameterError("reservation", reservation, "one of 'plan' or 'epoch'")
        self.dataset = dataset
        self.reservation = reservation
        self._owns_client = client is None
        self._connect: Callable[[], LedgerClient] = functools.partial(
            LedgerClient, base_url, token=token, retry=retry, timeout_s=timeout_s, sleep=sleep
        )
        self.client = client or self._connect()
        self.run_id: int | None = None
        self.epochs_charged = 0

    def _ledger(self) -> LedgerClient:
        if self._owns_client and self.client.http.is_closed:
            self.client = self._connect()  # used again after a failure or finish
        return self.client

    def _fail(self, what: str, error: LedgerError) -> TrainerLedgerError:
        """Return the trainer's error for ``error``; the run is aborting, so close our client."""
        self._close()
        return TrainerLedgerError(f"{what} failed: {error}", status=error.status,
                                  service_code=error.code)  # fmt: skip

    def _close(self) -> None:
        if self._owns_client:
            self.client.close()

    def open(self, plan: RunPlan) -> GateDecision:
        """Register the run (``POST /v1/runs``); a budget refusal refuses the plan up front."""
        if self.run_id is not None:
            return GateDecision(True, "admitted")
        mechanism = plan_mechanism(plan)
        try:
            run = self._ledger().create_run(
                dataset=self.dataset, name=plan.name, mechanism=mechanism,
                reservation=self.reservation, reproducible_noise=plan.reproducible_noise,
            )  # fmt: skip
        except BudgetExceeded as refusal:
            return GateDecision(False, refusal_reason(refusal))
        except LedgerError as error:
            raise self._fail("registering the run", error) from error
        self.run_id = run.id
        return GateDecision(True, "admitted", run.epsilon_run)

    def before_epoch(self, epoch: int) -> GateDecision:
        """Charge ``epoch`` (``POST /v1/runs/{id}/epochs``); a budget refusal stops the run.

        ``epsilon_spent`` of the decision is this run's own epsilon after the charge, as the
        service reports it (``epsilon_run``, at the dataset's target delta), as the local gate's
        is the run's epsilon at its delta.
        """
        if self.run_id is None:
            raise RuntimeError("the gate is not open")
        try:
            charge = self._ledger().charge_epoch(self.run_id, epoch)
        except BudgetExceeded as refusal:
            return GateDecision(False, refusal_reason(refusal))
        except LedgerError as error:
            raise self._fail(f"charging epoch {epoch}", error) from error
        self.epochs_charged = max(self.epochs_charged, epoch + 1)
        return GateDecision(True, "charged", charge.epsilon_run)

    def finish(self) -> None:
        """Release the reservation of epochs never started (``POST /v1/runs/{id}/finish``).

        A client the gate made itself is closed afterwards: the run is over.
        """
        try:
            if self.run_id is not None:
                self._ledger().finish_run(self.run_id)
        except LedgerError as error:
            raise self._fail("finishing the run", error) from error
        finally:
            self._close()

    def state_dict(self) -> dict[str, Any]:
        """Return the run id and the epochs charged."""
        return {"kind": "http", "run_id": self.run_id, "epochs_charged": self.epochs_charged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the run id (a resumed run re-charges nothing: charges are idempotent)."""
        run_id = state.get("run_id")
        self.run_id = None if run_id is None else int(run_id)
        self.epochs_charged = int(state.get("epochs_charged", 0))


def http_gate(*, base_url: str, token: str, dataset: str, reservation: str) -> HttpBudgetGate:
    """Build the gate of ``dpledger train --service`` (a ``RemoteGateFactory``)."""
    return HttpBudgetGate(
        base_url=base_url, token=token, dataset=dataset, reservation=reservation,
        sleep=announcing_sleep(base_url),  # from dpledger.options
    )  # fmt: skip


class HttpTuningLedger:
    """A tuning job registered as ONE ``tuning`` run on the service and charged up front.

    :meth:`admit` creates the run (its whole RDP bound reserved) and charges its one unit before
    any candidate trains; a budget refusal raises
    :class:`dp_core.trainer.tuning.TuningRefused`, any other failure the trainer's LedgerError.
    """

    def __init__(
        self, *, base_url: str, token: str | None, dataset: str, client: LedgerClient | None = None
    ) -> None:
        """Create the ledger; pass ``client`` to share one (tests: a client on the in-process app)."""
        self.dataset = dataset
        self._owns_client = client is None
        self.client = client or LedgerClient(base_url, token=token)
        self.run_id: int | None = None

    def admit(self, plan: Any) -> dict[str, Any]:
        """Register the job and charge it; return the ledger's run id and epsilon."""
        from dp_core.trainer.tuning import TuningRefused

        tune = plan.tune
        mechanism = Tuning(
            base=DpSgd(
                sample_rate=plan.sample_rate, steps_per_epoch=plan.steps_per_epoch,
                epochs=plan.epochs, noise_multiplier=plan.base_noise_multiplier,
                schedule=plan.schedule, decay_rate=plan.decay_rate,
                max_grad_norm=plan.max_grad_norm,
            ),
            candidates=len(tune.candidates()), distribution=tune.distribution, eta=tune.eta,
            gamma=tune.gamma, mu=tune.mu,
        )  # fmt: skip
        try:
            run = self.client.create_run(
                dataset=self.dataset, name=plan.name, mechanism=mechanism,
                reproducible_noise=plan.reproducible_noise,
            )  # fmt: skip
            self.run_id = run.id
            charge = self.client.charge_epoch(run.id, 0)
        except BudgetExceeded as refusal:
            self._close()
            raise TuningRefused(f"refused: {refusal_reason(refusal)}") from None
        except LedgerError as error:
            self._close()
            raise TrainerLedgerError(f"registering the tuning job failed: {error}",
                                     status=error.status, service_code=error.code) from error  # fmt: skip
        return {"ledger_run_id": run.id, "epsilon_ledger": charge.epsilon_run}

    def finish(self) -> None:
        """Finish the run (nothing is left reserved: its one unit was charged)."""
        try:
            if self.run_id is not None:
                self.client.finish_run(self.run_id)
        except LedgerError as error:
            raise TrainerLedgerError(f"finishing the tuning job failed: {error}",
                                     status=error.status, service_code=error.code) from error  # fmt: skip
        finally:
            self._close()

    def _close(self) -> None:
        if self._owns_client:
            self.client.close()


def http_tuning_ledger(*, base_url: str, token: str, dataset: str) -> HttpTuningLedger:
    """Build the tuning ledger of ``dpledger train --tune --service``."""
    return HttpTuningLedger(base_url=base_url, token=token, dataset=dataset)
