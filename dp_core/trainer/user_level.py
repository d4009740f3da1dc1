"""User-level DP-SGD: sample users, clip each user's summed gradient, account at the user level.

When a dataset's unit of privacy is the user and each record carries its user's id, DP-SGD
protects a whole user by making the user the unit everywhere (McMahan, Ramage, Talwar & Zhang
2018, "Learning differentially private recurrent language models", Alg. 1 with the server step of
DP-SGD; Kairouz et al. 2021, "Advances and open problems in federated learning", Sec. 4.3.2):

* **Sampling**: each user is included in a step's batch independently with probability q
  (Poisson sampling of users); a sampled user brings all of their records.
* **Clipping**: a sampled user's per-example gradients are *summed*, and the sum is clipped to
  norm C: min(1, C / ||sum_i g_i||) sum_i g_i. Adding or removing one user therefore changes the
  step's sum of clipped contributions by at most C, however many records the user has.
* **Accounting**: the step is the Poisson-subsampled Gaussian mechanism at rate q with noise
  multiplier sigma (noise std sigma C) over neighbouring datasets that differ in one user, so the
  usual RDP/PLD accountant applies with "example" read as "user" (Mironov, Talwar & Zhang 2019).

The average gradient divides by the expected number of sampled users, q U.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dp_core.errors import InvalidParameterError
from dp_core.trainer.clipping import (
    ClippedSum,
    FuncEngine,
    _flat_norms,
    clip_factors,
    count_correct,
)
from dp_core.trainer.sampling import bernoulli_mask

__all__ = ["UserAccumulator", "UserIndex", "user_poisson_batch"]


class UserIndex:
    """The records of each user, from one user id per record (any integers)."""

    def __init__(self, user_ids: Tensor) -> None:
        """Group records by user id (shape ``[N]``, integer)."""
        ids = torch.as_tensor(user_ids)
        if ids.ndim != 1 or ids.is_floating_point() or ids.is_complex():
            raise InvalidParameterError("user_index", tuple(ids.shape), "must be 1-D integer ids")
        self.user_of_record = ids.to(torch.int64)
        _, inverse, counts = torch.unique(self.user_of_record, return_inverse=True,
                                          return_counts=True)  # fmt: skip
        self.user_number = inverse  # record -> dense user number in [0, U)
        self.order = torch.argsort(inverse, stable=True)  # records grouped by user
        self.starts = torch.cumsum(counts, 0) - counts
        self.counts = counts

    @property
    def num_users(self) -> int:
        """U, the number of distinct users."""
        return int(self.counts.numel())

    @property
    def num_records(self) -> int:
        """N, the number of records."""
        return int(self.user_of_record.numel())

    def records_of(self, users: Tensor) -> Tensor:
        """Return the record indices of the dense user numbers ``users`` (grouped by user)."""
        if users.numel() == 0:
            return torch.zeros(0, dtype=torch.int64)
        parts = [self.order[int(s) : int(s) + int(c)]
                 for s, c in zip(self.starts[users], self.counts[users], strict=True)]  # fmt: skip
        return torch.cat(parts)


def user_poisson_batch(index: UserIndex, sample_rate: float, generator: torch.Generator) -> Tensor:
    """Sample each user with probability q; return the records of the sampled users."""
    keep = bernoulli_mask(sample_rate, index.num_users, generator)
    return index.records_of(torch.nonzero(keep).flatten())


class UserAccumulator:
    """Sum each sampled user's per-example gradients over physical batches, then clip the sums."""

    def __init__(self, engine: FuncEngine, index: UserIndex) -> None:
        """Start empty; ``index`` maps records to users."""
        self.engine = engine
        self.index = index
        self.sums: dict[int, list[Tensor]] = {}
        self.loss_sum = 0.0
        self.correct = 0

    def add(self, inputs: Tensor, targets: Tensor, records: Tensor) -> None:
        """Add the gradients of ``records`` (their inputs and targets) to their users' sums."""
        grads, losses, outputs = self.engine.per_sample(inputs, targets)
        users, local = torch.unique(self.index.user_number[records], return_inverse=True)
        for position, user in enumerate(users.tolist()):
            mask = local == position
            part = [g[mask].sum(dim=0) for g in grads]
            total = self.sums.get(user)
            self.sums[user] = part if total is None else [a + b for a, b in zip(total, part, strict=True)]  # fmt: skip
        self.loss_sum += float(losses.sum())
        self.correct += count_correct(outputs, targets)

    def clipped_sum(self, max_grad_norm: float) -> ClippedSum | None:
        """Return the sum of the users' clipped sums (norms: one per user), None if empty."""
        if not self.sums:
            return None
        stacked = [torch.stack(parts) for parts in zip(*self.sums.values(), strict=True)]
        norms = _flat_norms(stacked)
        factors = clip_factors(norms, max_grad_norm)
        summed = [torch.einsum("u,u...->...", factors.to(s.dtype), s) for s in stacked]
        return ClippedSum(summed, norms, self.loss_sum, self.correct)
