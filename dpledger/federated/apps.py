"""DP-FedAvg on Flower: a ServerApp/ClientApp pair charged to the ledger before every round.

* Clients: one per synthetic user, training a softmax regression (numpy) on its share of the
  data; Flower's ``fixedclipping_mod`` clips each client's whole model update to ``clip`` (C).
* Server: :class:`DpFedAvgStrategy` (a Flower ``Strategy``) draws ``clients_per_round`` (m) of
  the N users uniformly without replacement each round (the sampling accounted by
  :func:`dp_core.federated.rdp_fixed_size_gaussian`), asks the budget gate *before* the round,
  adds N(0, (sigma C)^2) once to the sum of the clipped updates and divides by the fixed m.
* ``secure_aggregation=True`` runs Flower's ``SecAggPlusWorkflow`` (clients use
  ``secaggplus_mod``): the strategy then receives one result, the unmasked *sum* of the
  quantized clipped models, never one client's update. The quantization step
  2 * clipping_range / quantization_range enters the accounting (C' = C + sqrt(d) s).

The server sees the exact (un-noised) sum: it is trusted to add the noise; the guarantee is for
whoever sees the model (see docs/readme/federated.md).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.common import (
    Context,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from dp_core.federated import DpFedAvgRounds
from dp_core.randomness import secret_generator, secure_normal
from dp_core.sampling import rate_down
from dpledger.federated.data import UserSource
from dpledger.federated.model import SoftmaxModel, UserData

__all__ = [
    "DpFedAvgStrategy",
    "EngineStopped",
    "FederatedConfig",
    "RoundFailed",
    "RoundGate",
    "RoundRefused",
    "make_client_app",
    "make_server_app",
]

Arrays = list[npt.NDArray[Any]]


class RoundGate(Protocol):
    """Asked before every round; returns None to go on, or the reason the round is refused."""

    def before_round(self, round_index: int) -> str | None: ...


class RoundRefused(Exception):
    """The budget gate refused a round: training stops with the last model."""

    def __init__(self, round_index: int, reason: str) -> None:
        super().__init__(reason)
        self.round_index = round_index
        self.reason = reason


class RoundFailed(Exception):
    """A round could not be aggregated (too many SecAgg+ drop-outs): training stops there.

    The round was charged before it ran and stays charged (nothing was released, so the ledger
    over-counts by that one round, toward privacy); it is not retried, so no round is charged twice.
    """

    def __init__(self, round_index: int, reason: str) -> None:
        super().__init__(reason)
        self.round_index = round_index
        self.reason = reason


class EngineStopped(RuntimeError):
    """The engine running the nodes stopped (or they never joined) while the ServerApp waited."""


@dataclass(frozen=True, kw_only=True)
class FederatedConfig:
    """One DP-FedAvg job over ``users`` users.

    Sampling: ``clients_per_round`` m of them uniformly without replacement (``sample_rate``
    None), or each user independently with probability ``sample_rate`` q (Poisson; the server
    then divides by the fixed qN and still adds noise when nobody is drawn).
    """

    users: int
    rounds: int
    clients_per_round: int
    noise_multiplier: float
    clip: float
    sample_rate: float | None = None
    secure_aggregation: bool = False
    local_epochs: int = 5
    learning_rate: float = 0.5
    seed: int = 0
    reproducible_noise: bool = False
    clipping_range: float = 8.0
    quantization_range: int = 1 << 22
    modulus_range: int = 1 << 32

    def __post_init__(self) -> None:
        if self.sample_rate is not None and not 0.0 < self.sample_rate <= 1.0:
            raise ValueError("the sample rate must be in (0, 1]")
        if self.sample_rate is None and not 1 <= self.clients_per_round <= self.users:
            raise ValueError("clients per round must be in [1, users]")
        if self.secure_aggregation and self.sample_rate is not None:
            raise ValueError(
                "secure aggregation needs a fixed number of clients per round (a Poisson round"
                " may draw fewer than SecAgg+'s threshold); use --clients-per-round"
            )

    @property
    def quantization_step(self) -> float:
        """s = 2 r / Q, the grid step of SecAgg+'s quantization (0 without it)."""
        return (
            2.0 * self.clipping_range / self.quantization_range if self.secure_aggregation else 0.0
        )

    @property
    def reconstruction_threshold(self) -> int:
        """SecAgg+'s t: a round needs t surviving clients (of m) to unmask the sum."""
        return max(2, math.ceil(2 * self.clients_per_round / 3))

    @property
    def poisson(self) -> bool:
        """Whether users are drawn by Poisson sampling."""
        return self.sample_rate is not None

    @property
    def denominator(self) -> float:
        """What the noisy sum is divided by: m, or the expected count qN (never the observed one)."""
        return (
            self.sample_rate * self.users
            if self.sample_rate is not None
            else self.clients_per_round
        )

    def mechanism(self, dimension: int) -> DpFedAvgRounds:
        """The dp_core record of this job's rounds (what the ledger charges)."""
        return DpFedAvgRounds(
            users=self.users,
            sampling="poisson" if self.poisson else "fixed",
            sample_rate=self.sample_rate,
            clients_per_round=None if self.poisson else self.clients_per_round,
            noise_multiplier=self.noise_multiplier,
            clip=self.clip,
            rounds=self.rounds,
            quantization_step=self.quantization_step,
            dimension=dimension if self.secure_aggregation else 0,
        )


@dataclass
class DpFedAvgStrategy(Strategy):
    """DP-FedAvg with fixed-size user sampling and one Gaussian noise draw on the sum."""

    config: FederatedConfig
    initial: Arrays
    gate: RoundGate | None = None
    # The server's noise and the users' sampling: secret (OS entropy) unless the job asked for
    # reproducible noise (see dp_core.randomness and the runner).
    rng: np.random.Generator = field(default_factory=secret_generator)
    current: Arrays = field(default_factory=list)
    rounds_completed: int = 0
    # Set when the engine running the nodes stopped: the ServerApp gives up waiting for them.
    cancel: threading.Event = field(default_factory=threading.Event)
    received: list[int] = field(default_factory=list)  # results per round, as the strategy saw them
    sampled: list[int] = field(default_factory=list)  # clients asked per round

    def __post_init__(self) -> None:
        self.current = [a.copy() for a in self.initial]

    def __repr__(self) -> str:
        return "DpFedAvgStrategy"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(self.current)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        index = server_round - 1
        if self.gate is not None:
            reason = self.gate.before_round(index)
            if reason is not None:
                raise RoundRefused(index, reason)
        # The strategy's own model is the truth (a Poisson round with nobody drawn updates it
        # without the workflow knowing).
        parameters = ndarrays_to_parameters(self.current)
        self._check_clipping_box()
        clients = sorted(self._all_nodes(client_manager).items())
        if self.config.sample_rate is not None:
            chosen = np.flatnonzero(
                self.rng.random(len(clients)) < rate_down(self.config.sample_rate)
            )  # P(chosen) = rate_down(q) <= q exactly (dp_core.sampling)
            if chosen.size == 0:  # nobody drawn: the mechanism still releases noise / qN
                self._apply([np.zeros_like(c) for c in self.current])
                self.sampled.append(0)
                self.received.append(0)
                return []
        else:
            chosen = self.rng.choice(
                len(clients), size=self.config.clients_per_round, replace=False
            )
        config: dict[str, Scalar] = {KEY_CLIPPING_NORM: self.config.clip}
        self.sampled.append(len(chosen))
        return [(clients[i][1], FitIns(parameters, config)) for i in sorted(chosen)]

    def _all_nodes(self, client_manager: ClientManager, timeout: float = 120.0) -> dict[str, Any]:
        """All N nodes: sampling m of fewer would not be the sampling the ledger charged.

        Flower's simulation registers its virtual nodes while the ServerApp is already running,
        so the first round waits for them.
        """
        deadline = time.monotonic() + timeout
        while client_manager.num_available() < self.config.users:
            if self.cancel.is_set():
                raise EngineStopped("the engine running the clients stopped")
            if time.monotonic() > deadline:
                raise EngineStopped(
                    f"only {client_manager.num_available()} of the {self.config.users} nodes"
                    f" joined within {timeout:g} s"
                )
            time.sleep(0.05)
        return client_manager.all()

    def _check_clipping_box(self) -> None:
        """SecAgg+ clips each coordinate to [-r, r]: sound only while the model lies inside."""
        if self.config.secure_aggregation:
            largest = max(float(np.max(np.abs(a))) for a in self.current)
            if largest > self.config.clipping_range:
                raise ValueError(
                    f"a model coordinate ({largest:.3g}) left SecAgg+'s clipping range"
                    f" {self.config.clipping_range:g}"
                )

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.received.append(len(results))
        self._apply(self._sum_of_updates(results))
        return ndarrays_to_parameters(self.current), {}

    def _apply(self, total: Arrays) -> None:
        """Add N(0, (sigma C)^2) to the sum, divide by the fixed denominator, step the model.

        The denominator is m (or qN), never the number of results: a round where some sampled
        clients dropped out releases (sum of the survivors + noise) / m, so neither the count of
        drop-outs nor the count drawn shows in the model beyond what the noisy sum shows.
        """
        noisy = [t + n for t, n in zip(total, self._noise(total), strict=True)]
        scale = self.config.denominator
        self.current = [c + n / scale for c, n in zip(self.current, noisy, strict=True)]
        self.rounds_completed += 1

    def _noise(self, total: Arrays) -> Arrays:
        """N(0, (sigma C)^2) per coordinate, in secure mode (:func:`dp_core.randomness.secure_normal`).

        The released model is a float vector, so the noise is a float Gaussian: the exact
        discrete sampler would need the sum rounded to a grid (adding sqrt(d) times the grid step
        to the sensitivity) and costs ~0.1 ms per coordinate in Python (see docs/guides/randomness.md).
        """
        sigma = self.config.noise_multiplier * self.config.clip
        return [sigma * secure_normal(self.rng, t.shape) for t in total]

    def _sum_of_updates(self, results: list[tuple[ClientProxy, FitRes]]) -> Arrays:
        """Sum of the clipped updates: from each result, or from SecAgg+'s single average."""
        if self.config.secure_aggregation:
            # SecAgg+ gives every result the same parameters: the unmasked mean of the
            # clients' (clipped, quantized) models, each of weight 1. Sum = count * (mean - w),
            # count = the clients whose masked vector was summed (drop-outs excluded).
            mean = parameters_to_ndarrays(results[0][1].parameters)
            count = len(results)
            return [count * (a - c) for a, c in zip(mean, self.current, strict=True)]
        total = [np.zeros_like(c) for c in self.current]
        for _, res in results:
            for t, a, c in zip(
                total, parameters_to_ndarrays(res.parameters), self.current, strict=True
            ):
                t += a - c
        return total

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]], failures: list[Any]
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return None


class _UserClient(NumPyClient):
    def __init__(self, data: UserData, model: SoftmaxModel, config: FederatedConfig) -> None:
        self.data, self.model, self.config = data, model, config

    def fit(
        self, parameters: Arrays, config: dict[str, Scalar]
    ) -> tuple[Arrays, int, dict[str, Scalar]]:
        trained = self.model.train(
            parameters,
            self.data,
            epochs=self.config.local_epochs,
            learning_rate=self.config.learning_rate,
        )
        return trained, 1, {}  # weight 1: every user counts once in the sum


def make_client_app(
    source: UserSource,
    model: SoftmaxModel,
    config: FederatedConfig,
    *,
    extra_mods: list[Any] | None = None,
) -> ClientApp:
    """The ClientApp: user ``partition-id`` trains locally; mods clip (and mask with SecAgg+).

    Each node loads its own shard from ``source`` (once per process). ``extra_mods`` run between
    the two (tests use them to see each clipped model before masking, or to drop a client out).
    """

    def client_fn(context: Context) -> Any:
        partition = int(context.node_config["partition-id"])
        return _UserClient(source.user(partition), model, config).to_client()

    # Mods run outermost first: SecAgg+ masks what fixedclipping_mod has already clipped.
    inner = [*(extra_mods or []), fixedclipping_mod]
    mods = [secaggplus_mod, *inner] if config.secure_aggregation else inner
    return ClientApp(client_fn=client_fn, mods=mods)


def make_server_app(
    strategy: DpFedAvgStrategy, on_stopped: Callable[[RoundRefused | RoundFailed], None]
) -> ServerApp:
    """The ServerApp: Flower's default workflow, with SecAgg+ as the fit workflow when asked.

    A refused round (the budget gate) or a failed one (too many SecAgg+ drop-outs) stops the run
    with the last model; ``on_stopped`` gets the reason. Setting ``strategy.cancel`` (the engine
    died) makes the ServerApp raise :class:`EngineStopped` instead of waiting for nodes forever.
    """
    app = ServerApp()
    config = strategy.config

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=config.rounds), strategy=strategy
        )
        fit_workflow = None
        if config.secure_aggregation:
            m = config.clients_per_round
            if m * config.quantization_range >= config.modulus_range:
                raise ValueError("the SecAgg+ sum could wrap around: lower quantization_range")
            fit_workflow = _CheckedSecAgg(
                SecAggPlusWorkflow(
                    num_shares=m,
                    reconstruction_threshold=config.reconstruction_threshold,
                    max_weight=1.0,
                    clipping_range=config.clipping_range,
                    quantization_range=config.quantization_range,
                    modulus_range=config.modulus_range,
                ),
                strategy,
            )
        try:
            DefaultWorkflow(fit_workflow=fit_workflow)(_WatchedGrid(grid, strategy.cancel), legacy)
        except (RoundRefused, RoundFailed) as stopped:
            on_stopped(stopped)

    return app


@dataclass
class _CheckedSecAgg:
    """SecAgg+ as the fit workflow, failing loudly when it halts.

    Flower's ``SecAggPlusWorkflow`` returns without aggregating when fewer than its
    reconstruction threshold of clients survive a stage, and ``DefaultWorkflow`` would then go on
    to the next round. This raises :class:`RoundFailed` instead, saying how many dropped out.
    """

    workflow: SecAggPlusWorkflow
    strategy: DpFedAvgStrategy

    def __call__(self, grid: Grid, context: Context) -> None:
        if not isinstance(grid, _WatchedGrid):
            grid = _WatchedGrid(grid, threading.Event())
        grid.dropped.clear()
        aggregated = len(self.strategy.received)
        self.workflow(grid, context)
        if len(self.strategy.received) == aggregated:
            index = len(self.strategy.sampled) - 1
            config = self.strategy.config
            raise RoundFailed(
                index,
                f"secure_aggregation_failed: round {index + 1}: {len(grid.dropped)} of the"
                f" {self.strategy.sampled[index]} sampled clients dropped out; SecAgg+ needs"
                f" {config.reconstruction_threshold} to unmask the sum (the round was charged,"
                " nothing was released)",
            )


class _WatchedGrid(Grid):
    """The engine's Grid, noting which nodes failed to answer, and giving up when cancelled."""

    def __init__(self, grid: Grid, cancel: threading.Event, *, interval: float = 0.05) -> None:
        self._grid, self._cancel, self._interval = grid, cancel, interval
        self.dropped: set[int] = set()

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Any:
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Any:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Any) -> Any:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Any) -> Any:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        """Push, then pull until every node answered (or ``timeout``, or cancelled)."""
        messages = list(messages)
        waiting = set(self.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Any] = []
        while waiting and (end is None or time.monotonic() < end):
            if self._cancel.is_set():
                raise EngineStopped("the engine running the clients stopped")
            pulled = list(self.pull_messages(waiting))
            replies += pulled
            waiting -= {r.metadata.reply_to_message_id for r in pulled}
            if waiting:
                time.sleep(self._interval)
        answered = {r.metadata.src_node_id for r in replies if not r.has_error()}
        self.dropped |= {m.metadata.dst_node_id for m in messages} - answered
        return replies
