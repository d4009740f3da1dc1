"""The DP-SGD training loop (Abadi et al. 2016, Algorithm 1) and its Python API.

Each logical step t: draw a Poisson batch (rate q), compute the sum of per-example clipped
gradients (clip norm C), add N(0, (s sigma_t C)^2) once, divide by the expected batch size qN,
and let any torch optimizer step on the result. Before each epoch the loop asks its
:class:`~dp_core.trainer.budget_gate.BudgetGate` (the only point where it meets the ledger) and
stops cleanly, with a checkpoint, when refused. Under an initialized ``torch.distributed`` group
the same mechanism runs on W ranks (see :mod:`dp_core.trainer.distributed`).

Two shapes of use, as Opacus users know them::

    trainer = make_private(model=model, optimizer=optimizer, dataset=train, loss_fn=F.cross_entropy,
                           noise_multiplier=1.1, max_grad_norm=1.0, expected_batch_size=256,
                           epochs=10, delta=1e-5,
                           gate=LocalBudgetGate(target_epsilon=3.0, delta=1e-5))
    for epoch in trainer.epochs():       # asks the gate before yielding each epoch
        for batch in epoch:              # Poisson-sampled logical batches
            stats = trainer.step(batch)
    # or, in one call:
    result = trainer.fit()
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset, default_collate

from dp_core.errors import InvalidParameterError
from dp_core.randomness import NOISE_STREAM, SAMPLING_STREAM, stream_seed
from dp_core.schedules import NoiseSchedule
from dp_core.trainer.adaptive_clipping import (
    AdaptiveClipping,
    gradient_noise_multiplier,
    update_clip_norm,
)
from dp_core.trainer.bookkeeping import BookkeepingEngine, supports
from dp_core.trainer.budget_gate import BudgetGate, GateDecision, RunPlan
from dp_core.trainer.checkpoint import load_checkpoint, save_checkpoint
from dp_core.trainer.class_sampling import (
    ClassSampling,
    class_counts,
    class_poisson_batch,
    dataset_labels,
)
from dp_core.trainer.clipping import (
    MICROBATCH_SENSITIVITY,
    FuncEngine,
    GradientEngine,
    MicrobatchAccumulator,
)
from dp_core.trainer.distributed import (
    DistributedContext,
    StepSums,
    detect_context,
    shard_indices,
)
from dp_core.trainer.guards import (
    SMOTE_MESSAGE,
    ResampledDataError,
    check_training_data,
    is_resampled,
)
from dp_core.trainer.noise import add_noise
from dp_core.trainer.per_sample import LossFn, check_model_supported
from dp_core.trainer.sampling import poisson_batch, split_physical, steps_per_epoch
from dp_core.trainer.user_level import UserAccumulator, UserIndex, user_poisson_batch
from dp_core.validation import non_negative_int, open_probability, positive_float

__all__ = [
    "DPTrainer",
    "EpochStart",
    "EpochStats",
    "LogicalBatch",
    "StepStats",
    "TrainResult",
    "make_private",
]

ENGINES = ("auto", "bookkeeping", "func")


@dataclass(frozen=True)
class LogicalBatch:
    """One Poisson-sampled logical batch: its global step and the indices of its examples."""

    step: int
    indices: Tensor


@dataclass(frozen=True)
class StepStats:
    """What one DP-SGD step saw (training loss/accuracy are of the sampled private examples)."""

    step: int
    batch_size: int
    loss_sum: float
    correct: int
    noise_multiplier: float
    max_grad_norm: float


@dataclass(frozen=True)
class EpochStart:
    """An epoch the gate has just charged, about to run (what a progress bar needs).

    Attributes:
        number: The epoch's number counted from 1 (1..epochs).
        epochs: The planned number of epochs.
        steps: The epoch's logical steps (each a Poisson batch of expected size qN).
    """

    number: int
    epochs: int
    steps: int


@dataclass
class EpochStats:
    """Totals of one epoch (``epoch`` is its 0-based index; :attr:`number` counts from 1)."""

    epoch: int
    examples: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    epsilon: float = 0.0

    @property
    def number(self) -> int:
        """The epoch's number counted from 1, as progress bars and logs show it."""
        return self.epoch + 1

    @property
    def loss(self) -> float:
        """Mean training loss of the epoch's sampled examples."""
        return self.loss_sum / max(self.examples, 1)

    @property
    def accuracy(self) -> float:
        """Training accuracy of the epoch's sampled examples (classification)."""
        return self.correct / max(self.examples, 1)


@dataclass(frozen=True)
class TrainResult:
    """How a run ended."""

    epochs_completed: int
    stop_reason: str
    epsilon: float
    delta: float
    checkpoint_path: str | None
    history: list[dict[str, Any]] = field(default_factory=list)


class _NoBudgetGate:
    """Gate used when none is given: charges everything (epsilon is still reported)."""

    def open(self, plan: RunPlan) -> GateDecision:
        return GateDecision(True, "admitted")

    def before_epoch(self, epoch: int) -> GateDecision:
        return GateDecision(True, "charged")

    def finish(self) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "none"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def _resolve_schedule(
    noise_multiplier: float | None, schedule: NoiseSchedule | None
) -> NoiseSchedule:
    if (noise_multiplier is None) == (schedule is None):
        raise InvalidParameterError(
            "noise_multiplier", noise_multiplier, "give exactly one of noise_multiplier or schedule"
        )
    if schedule is not None:
        return schedule
    return NoiseSchedule(
        kind="constant", noise_multiplier=positive_float("noise_multiplier", noise_multiplier)
    )


def _resolve_sample_rate(
    n: int, expected_batch_size: int | None, sample_rate: float | None
) -> float:
    if (expected_batch_size is None) == (sample_rate is None):
        raise InvalidParameterError(
            "expected_batch_size", expected_batch_size, "give exactly one of it or sample_rate"
        )
    q = (
        sample_rate
        if sample_rate is not None
        else non_negative_int("expected_batch_size", expected_batch_size) / n
    )
    if not 0.0 < q <= 1.0:
        raise InvalidParameterError(
            "sample_rate", q, f"must be in (0, 1] (dataset has {n} examples)"
        )
    return float(q)


class DPTrainer:
    """DP-SGD on a model, a torch optimizer and an in-memory dataset, gated before each epoch."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        dataset: Dataset[Any],
        *,
        loss_fn: LossFn,
        max_grad_norm: float,
        epochs: int,
        expected_batch_size: int | None = None,
        sample_rate: float | None = None,
        noise_multiplier: float | None = None,
        schedule: NoiseSchedule | None = None,
        delta: float = 1e-5,
        gate: BudgetGate | None = None,
        max_physical_batch_size: int | None = None,
        num_microbatches: int | None = None,
        adaptive_clipping: AdaptiveClipping | None = None,
        engine: str = "auto",
        noise_seed: int | None = None,
        secure_noise: bool = True,
        checkpoint_dir: str | Path | None = None,
        name: str = "dp-sgd",
        distributed: bool | None = None,
        dataset_is_shard: bool = False,
        max_records_per_individual: int | None = None,
        user_index: Tensor | None = None,
        class_sample_rates: Sequence[float] | None = None,
    ) -> None:
        """Wrap a model and optimizer for DP-SGD (see the module docstring for an example).

        Args:
            model: Any model without cross-example layers (BatchNorm is refused).
            optimizer: Any torch optimizer over ``model``'s parameters; it steps on the noisy
                gradient.
            dataset: A ``TensorDataset`` (fast path) or any map-style dataset of (x, y).
            loss_fn: Mean-reduced loss ``loss_fn(output, target)``.
            max_grad_norm: C, the per-example clip norm (the initial one with adaptive clipping).
            epochs: Planned epochs (the gate may stop earlier).
            expected_batch_size: qN; give this or ``sample_rate``.
            sample_rate: q; give this or ``expected_batch_size``.
            noise_multiplier: Constant sigma; give this or ``schedule``.
            schedule: A :class:`~dp_core.schedules.NoiseSchedule` over global steps.
            delta: The delta at which epsilon is reported.
            gate: The budget gate; ``None`` trains without a budget (epsilon is still reported).
            max_physical_batch_size: Cap on examples per forward/backward pass.
            num_microbatches: TF Privacy's microbatches (clip per microbatch mean).
            adaptive_clipping: Andrew et al. 2021's adaptive clip norm.
            engine: ``auto`` (book-keeping when the model allows, else torch.func),
                ``bookkeeping`` or ``func``.
            noise_seed: ``None`` (the default): the noise and the sampling are drawn from
                fresh OS entropy, never stored, and reseeded from fresh entropy on resume. An
                int makes them reproducible (derived from it, the rank and the step, see
                :mod:`dp_core.randomness`): for tests and debugging only, since the guarantee
                then does not hold against anyone who knows it (``reproducible_noise``).
            secure_noise: Draw each noise coordinate as Opacus' secure mode does (4 summed
                float64 normals, :mod:`dp_core.trainer.noise`); ``False`` only for benchmarks.
            checkpoint_dir: Where to save a checkpoint after each epoch and on a stop (used on
                rank 0 only when distributed).
            name: Run name given to the ledger.
            distributed: Data-parallel over ``torch.distributed``: ``None`` when a process group
                of two or more ranks is initialized, ``True`` to require one, ``False`` never.
                Every rank must construct the trainer with the same settings; only rank 0's
                ``gate`` is asked.
            dataset_is_shard: When distributed, ``dataset`` is this rank's own shard; by default
                it is the whole dataset on every rank and rank r trains on examples r, r + W, ...
            max_records_per_individual: K, the most records one individual may have; exact
                duplicate records are refused unless K is declared, and resampled (SMOTE) data
                always (see :mod:`dp_core.trainer.guards`). ``epsilon`` stays per record: use
                :func:`~dp_core.trainer.guards.group_epsilon` for the group of K.
            user_index: One user id per record (shape ``[N]``): user-level DP-SGD (see
                :mod:`dp_core.trainer.user_level`): users are Poisson-sampled, each sampled user's
                summed gradient is clipped to C, and ``sample_rate``/``expected_batch_size``
                count users; epsilon is then per user. Only for datasets whose unit is the user.
            class_sample_rates: q_c for each class c (indexed by label): each record of class c
                joins each step with probability q_c (:mod:`dp_core.trainer.class_sampling`).
                Give neither ``expected_batch_size`` nor ``sample_rate``: the expected batch is
                sum_c q_c n_c, an epoch ceil(N / that) steps, and the run is accounted (and
                charged) at q_max = max_c q_c; :func:`~dp_core.trainer.class_sampling.
                epsilon_per_class` gives each class's epsilon. Not with ``user_index`` or
                distributed.
        """
        check_model_supported(model)
        self.users = None if user_index is None else self._user_index(dataset, user_index)
        self.group_size = (
            check_training_data(dataset, max_records_per_individual=max_records_per_individual)
            if self.users is None
            else self._check_user_level(
                dataset, max_records_per_individual, num_microbatches, adaptive_clipping
            )  # fmt: skip
        )
        self.model, self.optimizer, self.dataset, self.loss_fn = model, optimizer, dataset, loss_fn
        self.dist = detect_context(distributed)
        if self.dist is not None and num_microbatches is not None:
            raise InvalidParameterError(
                "num_microbatches",
                num_microbatches,
                "is not supported with torch.distributed (a microbatch would span ranks)",
            )
        self.num_examples = self._partition(dataset_is_shard)
        if self.users is not None and self.dist is not None:
            raise InvalidParameterError("user_index", "given", "is not supported distributed")
        # The population sampled: users at the user level, else examples.
        self.population = self.num_examples if self.users is None else self.users.num_users
        self.class_sampling: ClassSampling | None = None
        if class_sample_rates is None:
            q = _resolve_sample_rate(self.population, expected_batch_size, sample_rate)
            steps = steps_per_epoch(q)
        else:
            self.class_sampling = self._class_sampling(
                class_sample_rates, expected_batch_size, sample_rate
            )
            q, steps = self.class_sampling.max_rate, self.class_sampling.steps_per_epoch
        self.plan = RunPlan(
            sample_rate=q,
            steps_per_epoch=steps,
            epochs=non_negative_int("epochs", epochs),
            schedule=_resolve_schedule(noise_multiplier, schedule),
            max_grad_norm=positive_float("max_grad_norm", max_grad_norm),
            delta=open_probability("delta", delta),
            name=name,
            group_size=self.group_size,
            privacy_unit="example" if self.users is None else "user",
            class_sample_rates=None if self.class_sampling is None else self.class_sampling.rates,
            reproducible_noise=noise_seed is not None,
        )
        self.gate: BudgetGate = gate if gate is not None else _NoBudgetGate()
        self.max_physical_batch_size = max_physical_batch_size
        self.num_microbatches = (
            None
            if num_microbatches is None
            else non_negative_int("num_microbatches", num_microbatches)
        )
        if self.num_microbatches == 0:
            raise InvalidParameterError("num_microbatches", 0, "must be >= 1")
        self.adaptive = adaptive_clipping
        if adaptive_clipping is not None:  # fails now if sigma_0 >= 2 sigma_b
            gradient_noise_multiplier(
                noise_multiplier=self.plan.schedule.noise_multiplier_at(0),
                count_noise_std=adaptive_clipping.count_noise_std,
            )
        self.engine_name = self._choose_engine(engine)
        self.engine: GradientEngine = (
            BookkeepingEngine(model, loss_fn)
            if self.engine_name == "bookkeeping"
            else FuncEngine(model, loss_fn)
        )
        self.noise_seed = None if noise_seed is None else non_negative_int("noise_seed", noise_seed)
        self.secure_noise = bool(secure_noise)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.epoch = 0
        self.global_step = 0
        self.reseed()
        self.clip = self.plan.max_grad_norm
        self.stop_reason: str | None = None
        self.history: list[EpochStats] = []
        if self.dist is not None:
            self._join(self.dist)

    @property
    def reproducible_noise(self) -> bool:
        """Whether noise and sampling come from ``noise_seed`` (no guarantee against its holders)."""
        return self.noise_seed is not None

    def reseed(self) -> None:
        """Seed the sampling and noise generators for the run from :attr:`global_step` on.

        Called when the trainer is built, at the start of every epoch and on resume. Each seed is
        fresh OS entropy (never stored), or with ``noise_seed`` derived from (seed, stream, rank,
        step), so that a reproducible run resumed at an epoch boundary continues exactly. Each
        rank samples its own shard with its own generator; the noise generator is used on rank
        0 only.
        """
        rank = 0 if self.dist is None else self.dist.rank
        sampling = stream_seed(
            self.noise_seed, stream=SAMPLING_STREAM, words=(rank, self.global_step)
        )
        noise = stream_seed(self.noise_seed, stream=NOISE_STREAM, words=(self.global_step,))
        self.sampling_rng = torch.Generator().manual_seed(sampling)
        self.noise_rng = torch.Generator().manual_seed(noise)

    @staticmethod
    def _user_index(dataset: Dataset[Any], user_index: Tensor) -> UserIndex:
        users = UserIndex(user_index)
        if users.num_records != len(dataset):  # type: ignore[arg-type]
            raise InvalidParameterError(
                "user_index",
                users.num_records,
                f"needs one user id per record ({len(dataset)})",  # type: ignore[arg-type]
            )
        return users

    @staticmethod
    def _check_user_level(
        dataset: Dataset[Any],
        max_records_per_individual: int | None,
        num_microbatches: int | None,
        adaptive_clipping: AdaptiveClipping | None,
    ) -> int:
        """Refuse what user-level training does not combine with; the unit (K = 1) is the user.

        A user's records may repeat: their summed gradient is clipped as one contribution.
        """
        if is_resampled(dataset):
            raise ResampledDataError(SMOTE_MESSAGE)
        for name, value in (("max_records_per_individual", max_records_per_individual),
                            ("num_microbatches", num_microbatches),
                            ("adaptive_clipping", adaptive_clipping)):  # fmt: skip
            if value is not None:
                raise InvalidParameterError(name, value, "is not supported with user_index")
        return 1

    def _class_sampling(
        self,
        rates: Sequence[float],
        expected_batch_size: int | None,
        sample_rate: float | None,
    ) -> ClassSampling:
        """Check per-class sampling applies here; keep each record's rate in ``_example_rates``."""
        for name, value in (("expected_batch_size", expected_batch_size),
                            ("sample_rate", sample_rate)):  # fmt: skip
            if value is not None:
                raise InvalidParameterError(name, value, "is set by class_sample_rates: drop it")
        if self.users is not None or self.dist is not None:
            raise InvalidParameterError(
                "class_sample_rates", "given", "is not supported with user_index or distributed"
            )
        labels = dataset_labels(self.dataset)
        sampling = ClassSampling(tuple(float(q) for q in rates), class_counts(labels, len(rates)))
        self._example_rates = sampling.example_rates(labels)
        return sampling

    def _partition(self, dataset_is_shard: bool) -> int:
        """Set this rank's examples (``_shard``, ``_local_examples``); return the global N."""
        local = len(self.dataset)  # type: ignore[arg-type]
        self._shard: Tensor | None = None
        self._local_examples = local
        if self.dist is None:
            return local
        if dataset_is_shard:
            return self.dist.global_count(local)
        self.dist.check_same("len(dataset)", local)
        self._shard = shard_indices(local, rank=self.dist.rank, world_size=self.dist.world_size)
        self._local_examples = int(self._shard.numel())
        return local

    def _join(self, context: DistributedContext) -> None:
        """Check every rank runs the same mechanism, then start from rank 0's model."""
        context.check_same(
            "settings",
            {
                "plan": self.plan.to_dict(),
                "num_examples": self.num_examples,
                "adaptive_clipping": self.adaptive,
                "checkpointing": self.checkpoint_dir is not None,
            },
        )
        context.sync_parameters([*self.model.parameters(), *self.model.buffers()])

    def _choose_engine(self, engine: str) -> str:
        if engine not in ENGINES:
            raise InvalidParameterError("engine", engine, f"must be one of {', '.join(ENGINES)}")
        fast_ok = self.num_microbatches is None and self.users is None and supports(self.model)
        if engine == "bookkeeping" and not fast_ok:
            raise InvalidParameterError(
                "engine",
                engine,
                "needs Linear/Conv2d-only models, no microbatches, no user_index; use 'func'",
            )
        return (
            "bookkeeping"
            if engine == "auto" and fast_ok
            else ("func" if engine == "auto" else engine)
        )

    # --- the DP step --------------------------------------------------------------------------

    @property
    def expected_units(self) -> float:
        """m: the expected number of clipped units per step (qN, or the number of microbatches)."""
        if self.num_microbatches is not None:
            return float(self.num_microbatches)
        if self.class_sampling is not None:  # sum_c q_c n_c
            return self.class_sampling.expected_batch_size
        return self.plan.sample_rate * self.population

    def _fetch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(self.dataset, TensorDataset):
            x, y = self.dataset[indices]
            return x, y
        batch = default_collate([self.dataset[int(i)] for i in indices])
        return batch[0], batch[1]

    def _clipped(self, indices: Tensor) -> tuple[list[Tensor] | None, int, int, float, int]:
        """Return (clipped sum or None when empty, units, unclipped units, loss sum, correct)."""
        chunks = split_physical(indices, self.max_physical_batch_size)
        if self.num_microbatches is not None:
            return self._clipped_microbatches(chunks)
        if self.users is not None:
            return self._clipped_users(chunks)
        total: list[Tensor] | None = None
        units = unclipped = correct = 0
        loss_sum = 0.0
        for chunk in chunks:
            part = self.engine.clipped_sum(*self._fetch(chunk), self.clip)
            total = (
                part.grads
                if total is None
                else [a + b for a, b in zip(total, part.grads, strict=True)]
            )
            units += int(part.norms.numel())
            unclipped += int((part.norms <= self.clip).sum())
            loss_sum += part.loss_sum
            correct += part.correct
        return total, units, unclipped, loss_sum, correct

    def _clipped_users(
        self, chunks: list[Tensor]
    ) -> tuple[list[Tensor] | None, int, int, float, int]:
        """Per-user clipping: sum each sampled user's gradients, clip the sum to C."""
        assert isinstance(self.engine, FuncEngine) and self.users is not None
        acc = UserAccumulator(self.engine, self.users)
        for chunk in chunks:
            acc.add(*self._fetch(chunk), chunk)
        part = acc.clipped_sum(self.clip)
        if part is None:
            return None, 0, 0, 0.0, 0
        units = int(part.norms.numel())
        unclipped = int((part.norms <= self.clip).sum())
        return part.grads, units, unclipped, part.loss_sum, part.correct

    def _clipped_microbatches(
        self, chunks: list[Tensor]
    ) -> tuple[list[Tensor] | None, int, int, float, int]:
        if not chunks:
            return None, 0, 0, 0.0, 0
        assert isinstance(self.engine, FuncEngine) and self.num_microbatches is not None
        acc = MicrobatchAccumulator(self.engine, self.num_microbatches)
        for chunk in chunks:
            # Microbatch of each example: uniform and independent of the data (see MicrobatchAccumulator).
            assignment = torch.randint(
                self.num_microbatches, (chunk.numel(),), generator=self.sampling_rng
            )
            acc.add(*self._fetch(chunk), assignment)
        summed, norms, _ = acc.clipped_sum(self.clip)
        return (
            summed,
            int(norms.numel()),
            int((norms <= self.clip).sum()),
            acc.loss_sum,
            acc.correct,
        )

    def _gradient_noise_multiplier(self, sigma: float) -> float:
        """Noise multiplier on the gradient sum, in units of C (sensitivity and adaptive count)."""
        if self.adaptive is not None:
            sigma = gradient_noise_multiplier(
                noise_multiplier=sigma, count_noise_std=self.adaptive.count_noise_std
            )
        return sigma * (MICROBATCH_SENSITIVITY if self.num_microbatches is not None else 1.0)

    def _release(self, sums: StepSums, *, sigma: float, clip: float) -> tuple[list[Tensor], float]:
        """Add the step's one noise draw, divide by m, and update the clip norm.

        Returns:
            (the noisy gradients divided by the expected units m, the next clip norm).
        """
        std = self._gradient_noise_multiplier(sigma) * clip
        noisy = add_noise(
            [g.detach() for g in sums.grads], std, self.noise_rng, secure=self.secure_noise
        )
        grads = [g / self.expected_units for g in noisy]
        if self.adaptive is None:
            return grads, clip
        next_clip, _ = update_clip_norm(
            clip=clip,
            unclipped=sums.unclipped,
            units=sums.units,
            expected_units=self.expected_units,
            settings=self.adaptive,
            generator=self.noise_rng,
            secure=self.secure_noise,
        )
        return grads, next_clip

    def step(self, batch: LogicalBatch) -> StepStats:
        """Run one DP-SGD step on a logical batch (Abadi et al. 2016, Algorithm 1).

        When distributed, every rank calls this with its own batch of the same step; the stats
        returned are those of the union of the ranks' batches.
        """
        if batch.step != self.global_step:
            raise InvalidParameterError("step", batch.step, f"the next step is {self.global_step}")
        sigma = self.plan.schedule.noise_multiplier_at(self.global_step)
        clip = self.clip
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.model.train()
        summed, units, unclipped, loss_sum, correct = self._clipped(batch.indices)
        if summed is None:  # empty Poisson batch: the step releases noise only
            summed = [torch.zeros_like(p) for p in params]
        sums = StepSums(summed, units, unclipped, int(batch.indices.numel()), loss_sum, correct)
        if self.dist is None:
            grads, self.clip = self._release(sums, sigma=sigma, clip=clip)
        else:
            grads, self.clip, sums = self.dist.reduce_release(
                sums, lambda total: self._release(total, sigma=sigma, clip=clip)
            )
        for p, g in zip(params, grads, strict=True):
            p.grad = g.to(p.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        return StepStats(
            self.global_step - 1, sums.examples, sums.loss_sum, sums.correct, sigma, clip
        )

    # --- epochs and the gate --------------------------------------------------------------------

    def _batches(self, epoch: int) -> Iterator[LogicalBatch]:
        first = epoch * self.plan.steps_per_epoch
        for step in range(first, first + self.plan.steps_per_epoch):
            # This rank's part of the Poisson sample: its own examples, each kept with rate q.
            if self.class_sampling is not None:  # each record kept with its class's rate
                indices = class_poisson_batch(self._example_rates, self.sampling_rng)
            elif self.users is None:
                indices = poisson_batch(
                    self._local_examples, self.plan.sample_rate, self.sampling_rng
                )
            else:
                indices = user_poisson_batch(self.users, self.plan.sample_rate, self.sampling_rng)
            yield LogicalBatch(step, indices if self._shard is None else self._shard[indices])

    def _ask_gate(self, ask: Callable[[BudgetGate], GateDecision]) -> GateDecision:
        """Ask the gate (rank 0's only, its decision broadcast, when distributed)."""
        if self.dist is None:
            return ask(self.gate)
        return self.dist.call_on_main("the budget gate", lambda: ask(self.gate))

    def epochs(self) -> Iterator[Iterator[LogicalBatch]]:
        """Yield each epoch's logical batches, asking the gate before each epoch.

        The caller must run :meth:`step` on every batch of an epoch. A checkpoint is saved after
        each epoch and when the gate refuses; :attr:`stop_reason` says why the run ended.
        """
        # A resumed gate answers without registering again.
        decision = self._ask_gate(lambda gate: gate.open(self.plan))
        if not decision.allowed:
            self._stop(f"refused: {decision.reason}")
            return
        while self.epoch < self.plan.epochs:
            # The one meeting point with the ledger.
            decision = self._ask_gate(lambda gate: gate.before_epoch(self.epoch))
            if not decision.allowed:
                self._stop(f"refused: {decision.reason}")
                return
            self.save()  # records the charge: a crash during this epoch will not pay for it again
            self.reseed()
            yield self._batches(self.epoch)
            if self.global_step != (self.epoch + 1) * self.plan.steps_per_epoch:
                raise RuntimeError(f"epoch {self.epoch} was not run to its end")
            self.epoch += 1
            self.save()
        self._stop("completed")

    def _stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.save()
        if self.dist is None:
            self.gate.finish()
        else:
            self.dist.call_on_main("the budget gate", self.gate.finish)

    def fit(
        self,
        *,
        on_step: Callable[[StepStats], None] | None = None,
        on_epoch: Callable[[EpochStats], None] | None = None,
        on_epoch_start: Callable[[EpochStart], None] | None = None,
    ) -> TrainResult:
        """Train until the planned epochs are done or the gate refuses; return how it ended.

        Args:
            on_step: Called after each step.
            on_epoch: Called after each epoch with its totals.
            on_epoch_start: Called once the gate has charged an epoch, before its first step;
                never called for a run refused up front.
        """
        for batches in self.epochs():
            if on_epoch_start is not None:
                on_epoch_start(
                    EpochStart(self.epoch + 1, self.plan.epochs, self.plan.steps_per_epoch)
                )
            stats = EpochStats(self.epoch)
            for batch in batches:
                step = self.step(batch)
                stats.examples += step.batch_size
                stats.loss_sum += step.loss_sum
                stats.correct += step.correct
                if on_step is not None:
                    on_step(step)
            stats.epsilon = self.plan.epsilon(self.epoch + 1)
            self.history.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
        return self.result()

    def result(self) -> TrainResult:
        """Return the run's outcome so far."""
        return TrainResult(
            epochs_completed=self.epoch,
            stop_reason=self.stop_reason or "running",
            epsilon=self.plan.epsilon(self.epoch),
            delta=self.plan.delta,
            checkpoint_path=str(self.checkpoint_path) if self.checkpoint_path else None,
            history=[{**asdict(h), "loss": h.loss, "accuracy": h.accuracy} for h in self.history],
        )

    # --- checkpoints ----------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path | None:
        """The checkpoint file (``<checkpoint_dir>/checkpoint.pt``), if checkpointing is on."""
        return None if self.checkpoint_dir is None else self.checkpoint_dir / "checkpoint.pt"

    def state_dict(self) -> dict[str, Any]:
        """Return everything needed to resume: model, optimizer, position, plan, gate.

        No generator state is saved (neither the noise's, the sampling's nor torch's global one):
        a leaked checkpoint must not reveal the noise of the models released before it. A
        resumed run reseeds from fresh entropy (:meth:`reseed`). The gate's state is
        rank 0's.
        """
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "max_grad_norm": self.clip,
            "plan": self.plan.to_dict(),
            "gate": self.gate.state_dict(),
            "stop_reason": self.stop_reason,
            "history": [asdict(h) for h in self.history],
        }
        if self.dist is not None:
            state["world_size"] = self.dist.world_size
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the plan must be the one this trainer was built with.

        The generators are reseeded for the resumed step (fresh entropy by default); generator
        states in checkpoints written by older versions are ignored.
        """
        if RunPlan.from_dict(state["plan"]) != self.plan:
            raise InvalidParameterError(
                "checkpoint",
                state["plan"],
                f"was saved for another plan than {self.plan.to_dict()}",
            )
        world_size = 1 if self.dist is None else self.dist.world_size
        if state.get("world_size", 1) != world_size:
            raise InvalidParameterError(
                "checkpoint",
                state.get("world_size", 1),
                f"was saved by another number of ranks than {world_size}",
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.reseed()
        self.clip = float(state["max_grad_norm"])
        if self.dist is None or self.dist.is_main:  # the gate of other ranks is never asked
            self.gate.load_state_dict(state["gate"])
        self.stop_reason = state["stop_reason"]
        self.history = [EpochStats(**h) for h in state["history"]]

    def save(self) -> None:
        """Save a checkpoint when ``checkpoint_dir`` is set (rank 0 writes when distributed)."""
        if self.checkpoint_path is None:
            return
        state = self.state_dict()
        if self.dist is None or self.dist.is_main:
            save_checkpoint(self.checkpoint_path, state)

    def _read_checkpoint(self) -> dict[str, Any] | None:
        path = self.checkpoint_path
        return None if path is None or not path.exists() else load_checkpoint(path)

    def resume(self) -> bool:
        """Load the checkpoint in ``checkpoint_dir`` if there is one; return whether it did.

        When distributed, rank 0 reads its checkpoint and broadcasts it to every rank.
        """
        if self.dist is None:
            state = self._read_checkpoint()
        else:
            state = self.dist.call_on_main("reading the checkpoint", self._read_checkpoint)
        if state is None:
            return False
        self.load_state_dict(state)
        if self.stop_reason is not None and self.stop_reason.startswith("refused"):
            self.stop_reason = None  # a refusal may be lifted (e.g. a larger budget): ask again
        return True


def make_private(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: Dataset[Any],
    loss_fn: LossFn,
    max_grad_norm: float,
    epochs: int,
    expected_batch_size: int | None = None,
    sample_rate: float | None = None,
    noise_multiplier: float | None = None,
    schedule: NoiseSchedule | None = None,
    delta: float = 1e-5,
    gate: BudgetGate | None = None,
    max_physical_batch_size: int | None = None,
    num_microbatches: int | None = None,
    adaptive_clipping: AdaptiveClipping | None = None,
    engine: str = "auto",
    noise_seed: int | None = None,
    secure_noise: bool = True,
    checkpoint_dir: str | Path | None = None,
    name: str = "dp-sgd",
    distributed: bool | None = None,
    dataset_is_shard: bool = False,
    max_records_per_individual: int | None = None,
    user_index: Tensor | None = None,
    class_sample_rates: Sequence[float] | None = None,
) -> DPTrainer:
    """Wrap ``model`` and ``optimizer`` for DP-SGD (Opacus' ``make_private`` shape).

    Every argument is keyword-only and means what it means for :class:`DPTrainer` (see its
    docstring); give exactly one of ``expected_batch_size``/``sample_rate`` and one of
    ``noise_multiplier``/``schedule``.
    """
    return DPTrainer(
        model,
        optimizer,
        dataset,
        loss_fn=loss_fn,
        max_grad_norm=max_grad_norm,
        epochs=epochs,
        expected_batch_size=expected_batch_size,
        sample_rate=sample_rate,
        noise_multiplier=noise_multiplier,
        schedule=schedule,
        delta=delta,
        gate=gate,
        max_physical_batch_size=max_physical_batch_size,
        num_microbatches=num_microbatches,
        adaptive_clipping=adaptive_clipping,
        engine=engine,
        noise_seed=noise_seed,
        secure_noise=secure_noise,
        checkpoint_dir=checkpoint_dir,
        name=name,
        distributed=distributed,
        dataset_is_shard=dataset_is_shard,
        max_records_per_individual=max_records_per_individual,
        user_index=user_index,
        class_sample_rates=class_sample_rates,
    )
