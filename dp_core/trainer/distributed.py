"""Data-parallel DP-SGD over ``torch.distributed``: one mechanism, executed by W processes.

The accountant assumes one Poisson-sampled Gaussian mechanism per step (Mironov, Talwar & Zhang
2019): every example of the *whole* dataset joins the batch independently with rate q, the sum of
clipped gradients gets N(0, (s sigma_t C)^2) once, and the result is divided by qN. Run on W
ranks, the trainer keeps exactly that mechanism:

* **Sharding.** Each example lives on exactly one rank. By default every rank is given the whole
  dataset and trains on examples ``rank, rank + W, rank + 2W, ...`` (like ``DistributedSampler``);
  a rank may instead be given only its own shard. N is the *global* size (the sum of the shard
  sizes), so q, qN and the steps per epoch ceil(1/q) are the same on every rank.
* **Sampling.** Each rank Poisson-samples its own shard at rate q from its own generator (seeded
  from the rank's own fresh OS entropy, or with a reproducible ``noise_seed`` derived from it and
  the rank, see :mod:`dp_core.randomness`), so inclusions are independent across ranks and the
  union of the ranks' batches is a Poisson sample of the whole dataset at rate q.
* **One noise draw.** Each rank clips and sums its own examples' gradients; the sums (and the
  counts of adaptive clipping) are *reduced* onto rank 0. Rank 0 alone adds the Gaussian noise
  (and the count noise), divides by qN, updates the clip norm, and *broadcasts* the released
  gradient and clip norm. Noise drawn per rank would be summed and have std sqrt(W) too large;
  a shared seeded generator on every rank would also be correct, but relies on every rank
  keeping an identical generator and producing bit-identical all-reduce results. With
  reduce-then-broadcast the noise exists in one place by construction, every rank steps its
  optimizer on the very same bits (the models stay bit-identical), rank 0's noise generator is
  seeded as in a single process (secret; with a reproducible ``noise_seed`` a W-rank run adds
  exactly the noise a one-process run with that seed adds), and the traffic is that of one
  all-reduce.
* **One ledger client.** Only rank 0 asks the budget gate; its decision is broadcast so every rank
  stops at the same epoch. Only rank 0 writes checkpoints; on resume rank 0 reads the checkpoint
  and broadcasts it, so the checkpoint directory need not be shared.

TF Privacy's microbatches are refused: a microbatch mean would span ranks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from dp_core.errors import InvalidParameterError
from dp_core.trainer.errors import TrainerError

__all__ = [
    "DistributedContext",
    "Release",
    "StepSums",
    "detect_context",
    "shard_indices",
]

T = TypeVar("T")


@dataclass
class StepSums:
    """What a DP-SGD step has summed before noise: on one rank, or over all ranks.

    Attributes:
        grads: Sum of the clipped per-example gradients, one tensor per trainable parameter.
        units: Number of clipped units (examples, or non-empty microbatches).
        unclipped: Units whose norm was at most the clip norm (adaptive clipping's count).
        examples: Number of sampled examples.
        loss_sum: Sum of the per-example losses.
        correct: Number of correct argmax predictions.
    """

    grads: list[Tensor]
    units: int
    unclipped: int
    examples: int
    loss_sum: float
    correct: int

    def counts(self) -> Tensor:
        """Return the scalars as one float64 tensor (exact for integers below 2^53)."""
        return torch.tensor(
            [self.units, self.unclipped, self.examples, self.loss_sum, self.correct],
            dtype=torch.float64,
        )

    def with_counts(self, grads: list[Tensor], counts: Tensor) -> StepSums:
        """Return sums holding ``grads`` and the scalars of :meth:`counts` layout."""
        units, unclipped, examples, loss_sum, correct = counts[:5].tolist()
        return StepSums(grads, int(units), int(unclipped), int(examples), loss_sum, int(correct))


Release = Callable[[StepSums], tuple[list[Tensor], float]]
"""Noise, scale and clip update of a step: global sums -> (released gradients, next clip norm)."""


def shard_indices(num_examples: int, *, rank: int, world_size: int) -> Tensor:
    """Return the dataset indices rank ``rank`` owns: ``rank, rank + W, ...`` (a partition)."""
    return torch.arange(rank, num_examples, world_size)


def _flatten(tensors: list[Tensor], dtype: torch.dtype) -> Tensor:
    if not tensors:
        return torch.zeros(0, dtype=dtype)
    return torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors])


def _unflatten(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    out, start = [], 0
    for t in like:
        out.append(flat[start : start + t.numel()].view(t.shape).to(t.dtype))
        start += t.numel()
    return out


def _common_dtype(tensors: list[Tensor]) -> torch.dtype:
    dtypes = [t.dtype for t in tensors]
    return functools.reduce(torch.promote_types, dtypes) if dtypes else torch.float32


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in an initialized ``torch.distributed`` group of W >= 2 ranks."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that adds noise, asks the gate and checkpoints)."""
        return self.rank == 0

    def global_count(self, local: int) -> int:
        """Return the sum over ranks of ``local``."""
        total = torch.tensor([local], dtype=torch.int64)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return int(total.item())

    def check_same(self, name: str, value: Any) -> None:
        """Raise on every rank (never on one only) unless all ranks passed an equal ``value``."""
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        if any(v != values[0] for v in values):
            raise InvalidParameterError(name, values, "must be the same on every rank")

    def broadcast(self, value: T | None) -> T:
        """Return rank 0's ``value`` on every rank (other ranks may pass ``None``)."""
        box: list[Any] = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[no-any-return]

    def call_on_main(self, what: str, call: Callable[[], T]) -> T:
        """Run ``call`` on rank 0 only and return its result on every rank.

        An exception on rank 0 is re-raised there and reported on the other ranks as a
        :class:`~dp_core.trainer.errors.TrainerError`, so no rank waits forever.
        """
        result: tuple[bool, Any] | None = None
        if self.is_main:
            try:
                result = (True, call())
            except Exception as exc:
                self.broadcast((False, f"{type(exc).__name__}: {exc}"))
                raise
        ok, value = self.broadcast(result)
        if not ok:
            raise TrainerError(f"{what} failed on rank 0: {value}")
        return value  # type: ignore[no-any-return]

    def sync_parameters(self, tensors: list[Tensor]) -> None:
        """Overwrite ``tensors`` (parameters, buffers) with rank 0's values, as DDP does."""
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def reduce_release(
        self, local: StepSums, release: Release
    ) -> tuple[list[Tensor], float, StepSums]:
        """Sum ``local`` over ranks on rank 0, release there once, and broadcast the result.

        Args:
            local: This rank's clipped sums and counts.
            release: Rank 0's noise, scaling and clip update on the global sums.

        Returns:
            (released gradients, next clip norm, the global sums without noise), equal on every
            rank.
        """
        dtype = _common_dtype(local.grads)
        flat, counts = _flatten(local.grads, dtype), local.counts()
        for work in (
            dist.reduce(flat, dst=0, async_op=True),
            dist.reduce(counts, dst=0, async_op=True),
        ):
            assert work is not None
            work.wait()
        released = torch.cat([counts, torch.zeros(1, dtype=torch.float64)])
        if self.is_main:  # only rank 0 holds the reduced sums: the one place noise is added
            grads, clip = release(local.with_counts(_unflatten(flat, local.grads), counts))
            flat = _flatten(grads, dtype)
            released[-1] = clip
        for work in (
            dist.broadcast(flat, src=0, async_op=True),
            dist.broadcast(released, src=0, async_op=True),
        ):
            assert work is not None
            work.wait()
        return _unflatten(flat, local.grads), float(released[-1]), local.with_counts([], released)


def detect_context(distributed: bool | None) -> DistributedContext | None:
    """Return the distributed context the trainer runs in, or ``None`` for a single process.

    Args:
        distributed: ``None`` detects an initialized process group of two or more ranks;
            ``True`` requires one (a group of one rank runs as a single process); ``False``
            ignores any group.

    Raises:
        InvalidParameterError: if ``distributed`` is true and no process group is initialized.
    """
    if distributed is False:
        return None
    ready = dist.is_available() and dist.is_initialized()
    if not ready:
        if distributed:
            raise InvalidParameterError(
                "distributed",
                distributed,
                "needs torch.distributed.init_process_group() first (e.g. launch with torchrun)",
            )
        return None
    world_size = dist.get_world_size()
    return None if world_size < 2 else DistributedContext(dist.get_rank(), world_size)
