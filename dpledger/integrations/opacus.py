"""`LedgerGate`: the dpledger ledger for a training script that already uses Opacus.

Three added lines in an Opacus script (``PrivacyEngine.make_private`` with Poisson sampling)::

    model, optimizer, train_loader = privacy_engine.make_private(...)
    gate = LedgerGate(optimizer=optimizer, data_loader=train_loader, service=URL, token=TOKEN,
                      dataset="mnist", epochs=EPOCHS)          # registers the run, or refuses
    for epoch in gate.epochs():                                # charges before each epoch
        train_one_epoch(model, optimizer, train_loader)

The gate registers exactly the mechanism Opacus executes: each epoch is ``len(data_loader)``
steps of the Poisson-subsampled Gaussian at the loader's ``sample_rate`` and the optimizer's
``noise_multiplier`` (Mironov, Talwar & Zhang 2019, the analysis Opacus' RDP accountant uses).
Before each epoch it charges that epoch; a refusal raises :class:`BudgetRefused` (a
:class:`~dpledger.client.BudgetExceeded`) before any step of the epoch is taken. When the
noise multiplier (or the sample rate or steps per epoch) changes between epochs, e.g. under
``opacus.schedulers.ExponentialNoise``, the run so far is finished and a new run is registered
for the remaining epochs at the new noise: every epoch is charged at the noise it runs with.

Nothing here imports opacus or torch: the gate reads ``sample_rate`` and ``len()`` of the
loader and ``noise_multiplier``/``max_grad_norm`` of the optimizer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from dpledger.client import BudgetExceeded, DpSgd, EpochChargeRead, LedgerClient, RunRead

__all__ = ["BudgetRefused", "LedgerGate", "Segment"]


class PoissonLoader(Protocol):
    """What the gate reads of Opacus' ``DPDataLoader``."""

    sample_rate: float

    def __len__(self) -> int: ...


class NoisyOptimizer(Protocol):
    """What the gate reads of Opacus' ``DPOptimizer``."""

    noise_multiplier: float


class BudgetRefused(BudgetExceeded):
    """The ledger refused the run (or one of its epochs): stop training here.

    Carries everything :class:`BudgetExceeded` does (``epsilon_projected``,
    ``epsilon_remaining``, ``run_id``, ``epochs_that_fit``, ...) and ``epoch``, the refused
    epoch (None when the plan was refused before training).
    """

    epoch: int | None = None

    @classmethod
    def from_refusal(cls, refusal: BudgetExceeded, *, epoch: int | None) -> BudgetRefused:
        what = "the run" if epoch is None else f"epoch {epoch}"
        error = cls(f"the ledger refused {what}: {refusal.message}", status=refusal.status,
                    code=refusal.code, body=refusal.body)  # fmt: skip
        error.epoch = epoch
        return error


@dataclass(frozen=True)
class Segment:
    """Epochs ``[first_epoch, ...)`` registered as one run at one noise level."""

    run_id: int
    first_epoch: int
    sample_rate: float
    steps_per_epoch: int
    noise_multiplier: float


class LedgerGate:
    """Registers an Opacus run with the ledger and charges each epoch before it runs.

    Args:
        optimizer: The ``DPOptimizer`` that ``make_private`` returned.
        data_loader: The ``DPDataLoader`` that ``make_private`` returned (Poisson sampling).
        dataset: The dataset's name in the ledger.
        epochs: The planned number of epochs.
        service: The ledger's URL (or pass ``client``).
        token: A trainer token allowed to charge ``dataset``.
        client: A :class:`LedgerClient` to use instead of ``service``/``token``.
        name: The run's name in the ledger.
        reservation: ``plan`` reserves every epoch now (the run can't be stopped by others);
            ``epoch`` passes each epoch through the ledger when it starts.
        idempotency_key: A key of this training job (e.g. the scheduler's job id): a script
            restarted with the same key (and token) before it saved ``state_dict()`` gets the run
            it registered instead of a second one.
        state: What :meth:`state_dict` returned, saved in the script's checkpoint: the gate
            continues those runs (nothing is registered) and ``gate.epochs(start=k)`` resumes at
            epoch k; re-charging an epoch charged before the restart costs nothing.

    Raises:
        BudgetRefused: The plan does not fit the dataset's budget (nothing was trained).
        TypeError: The loader is not Poisson-sampled (``make_private(poisson_sampling=True)``).
    """

    def __init__(
        self,
        *,
        optimizer: NoisyOptimizer,
        data_loader: PoissonLoader,
        dataset: str,
        epochs: int,
        service: str | None = None,
        token: str | None = None,
        client: LedgerClient | None = None,
        name: str = "opacus",
        reservation: str = "plan",
        idempotency_key: str | None = None,
        state: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(getattr(data_loader, "sample_rate", None), float | int):
            raise TypeError(
                "data_loader must be the Poisson-sampled DPDataLoader returned by"
                " PrivacyEngine.make_private(..., poisson_sampling=True)"
            )
        if client is None and service is None:
            raise ValueError("give the ledger's service URL (or a LedgerClient)")
        if epochs < 1:
            raise ValueError("epochs must be at least 1")
        self.optimizer = optimizer
        self.data_loader = data_loader
        self.dataset = dataset
        self.planned_epochs = epochs
        self.name = name
        self.reservation = reservation
        self.idempotency_key = idempotency_key
        self._owns_client = client is None
        self.client = client or LedgerClient(service or "", token=token)
        self.segments: list[Segment] = []
        self.last_charge: EpochChargeRead | None = None
        self._finished = False
        if state is not None:
            self.load_state_dict(state)
            return
        try:
            self._register(first_epoch=0)
        except BaseException:
            if self._owns_client:
                self.client.close()
            raise

    # -- the mechanism Opacus executes ---------------------------------------------------------

    def _executed(self) -> tuple[float, int, float]:
        return (
            float(self.data_loader.sample_rate),
            len(self.data_loader),
            float(self.optimizer.noise_multiplier),
        )

    def _max_grad_norm(self) -> float | None:
        """The clip norm, informational for the ledger (None for per-layer clipping's list)."""
        norm = getattr(self.optimizer, "max_grad_norm", None)
        return float(norm) if isinstance(norm, float | int) else None

    def _register(self, *, first_epoch: int) -> RunRead:
        q, steps, sigma = self._executed()
        mechanism = DpSgd(
            sample_rate=q, steps_per_epoch=steps, epochs=self.planned_epochs - first_epoch,
            noise_multiplier=sigma, max_grad_norm=self._max_grad_norm(),
        )  # fmt: skip
        key = None if self.idempotency_key is None else f"{self.idempotency_key}:{first_epoch}"
        try:
            run = self.client.create_run(
                dataset=self.dataset, name=self.name, mechanism=mechanism,
                reservation=self.reservation, idempotency_key=key,
            )  # fmt: skip
        except BudgetExceeded as refusal:
            epoch = None if first_epoch == 0 else first_epoch
            raise BudgetRefused.from_refusal(refusal, epoch=epoch) from refusal
        # What the ledger holds for this run: a replayed key returns the run registered before,
        # whose noise may differ from now (a restart after a noise change).
        noise = run.noise.noise_multiplier if run.noise is not None else sigma
        self.segments.append(
            Segment(run.id, first_epoch, run.sample_rate or q, run.steps_per_epoch or steps, noise)
        )
        return run

    @property
    def run_id(self) -> int:
        """The ledger run of the current noise level."""
        return self.segments[-1].run_id

    # -- per epoch -----------------------------------------------------------------------------

    def before_epoch(self, epoch: int) -> EpochChargeRead:
        """Charge ``epoch`` (0-based) before its first step; raise :class:`BudgetRefused` if refused.

        If the optimizer's noise multiplier (or the loader) changed since the run was registered,
        the run is finished and a new one registered for epochs ``epoch`` onwards first.
        """
        if self._finished:
            raise RuntimeError("the gate is finished")
        current = self.segments[-1]
        if self._executed() != (current.sample_rate, current.steps_per_epoch,
                                current.noise_multiplier):  # fmt: skip
            self.client.finish_run(current.run_id)
            self._register(first_epoch=epoch)
            current = self.segments[-1]
        try:
            charge = self.client.charge_epoch(current.run_id, epoch - current.first_epoch)
        except BudgetExceeded as refusal:
            raise BudgetRefused.from_refusal(refusal, epoch=epoch) from refusal
        self.last_charge = charge
        return charge

    def epochs(self, start: int = 0) -> Iterator[int]:
        """Yield start, ..., epochs - 1, charging each before it is yielded; finish at the end.

        The run is finished (its unused reservation released) also when the loop ends early:
        a refusal, an exception in the training code, or a ``break``.
        """
        try:
            for epoch in range(start, self.planned_epochs):
                self.before_epoch(epoch)
                yield epoch
        finally:
            self.finish()

    def finish(self) -> None:
        """Tell the ledger the run ended (idempotent); close a client the gate made itself."""
        if self._finished:
            return
        self._finished = True
        try:
            self.client.finish_run(self.run_id)
        finally:
            if self._owns_client:
                self.client.close()

    def state_dict(self) -> dict[str, Any]:
        """Return the runs registered so far (JSON-ready), for the script's checkpoint."""
        return {"segments": [dataclasses.asdict(segment) for segment in self.segments]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the runs of :meth:`state_dict` (a restarted script)."""
        self.segments = [Segment(**segment) for segment in state["segments"]]
        if not self.segments:
            raise ValueError("the state holds no run")

    def __enter__(self) -> LedgerGate:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.finish()
