"""Run one DP-FedAvg job on Flower, asking the ledger before every round.

:func:`run_federated` builds the users, the Flower apps, runs them on Flower's simulation engine
(or the in-process grid, see :mod:`dpledger.federated.engine`), and returns a :class:`FederatedResult` (what ``dpledger fl --json`` prints).
:class:`LedgerRoundGate` charges each round through :class:`dpledger.client.LedgerClient` before
it runs (``POST /v1/runs/{id}/epochs``; a unit of a ``dp_fedavg`` run is a round).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dp_core.conversion import rdp_to_epsilon
from dp_core.federated import DpFedAvgRounds
from dp_core.randomness import FEDERATED_STREAM, stream_generator
from dp_core.rdp.compose import compute_rdp
from dp_core.rdp.orders import DEFAULT_ORDERS
from dpledger.client import BudgetExceeded, DpFedAvg, LedgerClient, LedgerError
from dpledger.federated.apps import (
    DpFedAvgStrategy,
    FederatedConfig,
    RoundFailed,
    RoundGate,
    RoundRefused,
    make_client_app,
    make_server_app,
)
from dpledger.federated.data import UserSource
from dpledger.federated.engine import Engine, run_apps
from dpledger.federated.model import SoftmaxModel
from dpledger.gate import refusal_reason

__all__ = [
    "FederatedResult",
    "LedgerRefusedError",
    "LedgerRoundGate",
    "run_federated",
    "user_epsilon",
]


class LedgerRefusedError(Exception):
    """The ledger refused the whole job at admission (nothing ran)."""


@dataclass(frozen=True)
class FederatedResult:
    """The JSON summary of a job."""

    rounds_completed: int
    rounds_planned: int
    rounds_charged: int | None  # by the ledger (a failed round is charged, not completed)
    stop_reason: str
    epsilon: float | None
    delta: float
    test_accuracy: float
    secure_aggregation: bool
    users: int
    clients_per_round: int | None
    sample_rate: float | None
    noise_multiplier: float
    clip: float
    reproducible_noise: bool
    model_path: str | None
    run_id: int | None
    data: str
    engine: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class LedgerRoundGate:
    """Registers the job as a ``dp_fedavg`` run and charges round r before it runs (owns ``client``)."""

    def __init__(
        self,
        client: LedgerClient,
        *,
        dataset: str,
        name: str,
        mechanism: DpFedAvg,
        reservation: str = "plan",
        reproducible_noise: bool = False,
    ) -> None:
        self._client = client
        self.charged = 0
        try:
            self.run_id = client.create_run(
                dataset=dataset, name=name, mechanism=mechanism, reservation=reservation,
                reproducible_noise=reproducible_noise,
            ).id  # fmt: skip
        except BudgetExceeded as refusal:
            client.close()
            raise LedgerRefusedError(f"refused: {refusal_reason(refusal)}") from refusal
        except BaseException:
            client.close()
            raise

    def before_round(self, round_index: int) -> str | None:
        try:
            self._client.charge_epoch(self.run_id, round_index)
        except BudgetExceeded as refusal:
            return refusal_reason(refusal)
        self.charged += 1
        return None

    def close(self) -> None:
        """Finish the run (releases what it reserved and never charged); close the client."""
        with contextlib.suppress(LedgerError):
            self._client.finish_run(self.run_id)
        self._client.close()


def ledger_mechanism(record: DpFedAvgRounds) -> DpFedAvg:
    """The service's description of exactly the rounds the job runs."""
    return DpFedAvg(
        users=record.users,
        rounds=record.rounds,
        noise_multiplier=record.noise_multiplier,
        clip=record.clip,
        sampling="poisson" if record.sampling == "poisson" else "fixed",
        sample_rate=record.sample_rate,
        clients_per_round=record.clients_per_round,
        quantization_step=record.quantization_step,
        dimension=record.dimension,
    )


def user_epsilon(record: DpFedAvgRounds, *, delta: float) -> float:
    """User-level epsilon of ``record``'s rounds (RDP, converted at ``delta``)."""
    rdp = compute_rdp(record, DEFAULT_ORDERS)
    return float(rdp_to_epsilon(orders=DEFAULT_ORDERS, rdp=rdp, delta=delta, warn=False).epsilon)


def run_federated(
    config: FederatedConfig,
    *,
    data: str = "digits",
    engine: Engine = "simulation",
    delta: float = 1e-5,
    gate_factory: Callable[[DpFedAvgRounds], RoundGate] | None = None,
    out: Path | None = None,
    on_round: Callable[[int], None] | None = None,
    extra_mods: list[Any] | None = None,
) -> tuple[FederatedResult, DpFedAvgStrategy]:
    """Run the job; ``gate_factory`` gets the planned rounds' record and returns the gate.

    ``data`` is ``digits``, ``mnist:DIR`` or ``fashion-mnist:DIR``; it is loaded here first (a
    missing directory raises ``ValueError`` before anything starts or is charged).
    """
    source = UserSource(data, config.users, config.seed)
    source.load()
    model = SoftmaxModel(features=source.features, classes=10)
    private = config.noise_multiplier > 0
    record = config.mechanism(model.dimension) if private else None
    gate = gate_factory(record) if gate_factory is not None and record is not None else None
    strategy = DpFedAvgStrategy(
        config,
        model.initial(),
        gate=_Observed(gate, on_round),
        rng=stream_generator(
            config.seed if config.reproducible_noise else None, stream=FEDERATED_STREAM
        ),
    )
    stops: list[RoundRefused | RoundFailed] = []
    server = make_server_app(strategy, stops.append)
    client = make_client_app(source, model, config, extra_mods=extra_mods)
    try:
        run_apps(server, client, nodes=config.users, engine=engine, cancel=strategy.cancel)
    finally:
        if isinstance(gate, LedgerRoundGate):
            gate.close()
    completed = strategy.rounds_completed
    epsilon = None
    if record is not None:
        epsilon = user_epsilon(
            DpFedAvgRounds(**{**asdict(record), "rounds": completed}), delta=delta
        )
    path = None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, *strategy.current)
        path = str(out)
    ledger = gate if isinstance(gate, LedgerRoundGate) else None
    result = FederatedResult(
        rounds_completed=completed,
        rounds_planned=config.rounds,
        rounds_charged=ledger.charged if ledger is not None else None,
        stop_reason=stops[0].reason if stops else "completed",
        epsilon=epsilon,
        delta=delta,
        test_accuracy=model.accuracy(strategy.current, source.test()),
        secure_aggregation=config.secure_aggregation,
        users=config.users,
        clients_per_round=None if config.poisson else config.clients_per_round,
        sample_rate=config.sample_rate,
        noise_multiplier=config.noise_multiplier,
        clip=config.clip,
        reproducible_noise=config.reproducible_noise,
        model_path=path,
        run_id=ledger.run_id if ledger is not None else None,
        data=source.data,
        engine=engine,
    )
    return result, strategy


@dataclass
class _Observed:
    """The gate, plus a progress callback once a round is admitted."""

    gate: RoundGate | None
    on_round: Callable[[int], None] | None

    def before_round(self, round_index: int) -> str | None:
        reason = None if self.gate is None else self.gate.before_round(round_index)
        if reason is None and self.on_round is not None:
            self.on_round(round_index)
        return reason
