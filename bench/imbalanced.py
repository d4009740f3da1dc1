"""The seed's imbalanced-data scenario, side by side: DP-SGD's ways to rebalance, and SMOTE.

Digits 5-9 keep 10% of their training examples (the minority); the test split is untouched.
Rows (mean over seeds; asserts nothing):

* non-private SGD (no clipping, no noise): the utility ceiling, no guarantee;
* DP-SGD, plain cross-entropy;
* DP-SGD with ``--class-weights balanced`` (the loss reweighted; same epsilon as plain);
* DP-SGD with per-class sampling rates (``--class-sample-rates``), explicit rates fixed before
  looking at the data: the minority sampled at a higher rate. The run's guarantee is the one at
  the largest rate (shown with the majority classes' own epsilon), so it costs more epsilon at
  the same sigma; a second row calibrates sigma so the guarantee equals plain DP-SGD's;
* SMOTE (k-NN interpolation of minority records, written here, never in the trainer) then DP-SGD:
  utility measured, but its epsilon is void: a synthetic point mixes two real records and each
  real record seeds many synthetic points, so no per-record guarantee holds. The trainer refuses
  such data when it is flagged (last line).

Usage: python bench/imbalanced.py [--seeds 3] [--epochs 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from dp_core.epochs import steps_per_epoch
from dp_core.schedules import NoiseSchedule
from dp_core.trainer.class_sampling import ClassSampling, epsilon_per_class
from dp_core.trainer.guards import ResampledDataError, class_weighted_loss, parse_class_weights
from dp_core.trainer.loop import DPTrainer
from dp_core.trainer.models import mlp

MINORITY = range(5, 10)
KEEP = 0.1  # the minority's share of its training examples
Q = 0.16  # plain DP-SGD's Poisson rate (expected batch about 127 of 790 records)
BATCH = 128  # the non-private baseline's batch
SIGMA = 2.0
LR = 2.0
DELTA = 1e-5
#: Explicit per-class rates, fixed by the design (not read from the data). "Minority up": the
#: majority keeps plain DP-SGD's rate (and epsilon), the minority is sampled 2.5x as often.
#: "Majority down": the minority keeps plain's rate, so the run's guarantee is plain's.
MINORITY_UP = tuple(0.4 if c in MINORITY else Q for c in range(10))
MAJORITY_DOWN = tuple(Q if c in MINORITY else 0.1 for c in range(10))


def imbalanced(seed: int) -> tuple[TensorDataset, TensorDataset]:
    from dp_core.trainer.data import load_digits_data

    data = load_digits_data(seed=seed)
    x, y = data.train.tensors
    g = torch.Generator().manual_seed(seed)
    keep = (y < 5) | (torch.rand(len(y), generator=g) < KEEP)
    return TensorDataset(x[keep], y[keep]), data.test


def smote(train: TensorDataset, seed: int, k: int = 5) -> TensorDataset:
    """SMOTE (Chawla et al. 2002): add minority points x + u (x_nn - x) until classes balance."""
    x, y = train.tensors
    g = torch.Generator().manual_seed(seed)
    target = int(torch.bincount(y).max())
    xs, ys = [x], [y]
    for c in MINORITY:
        members = x[y == c].flatten(1)
        need = target - members.shape[0]
        dist = torch.cdist(members, members)
        dist.fill_diagonal_(float("inf"))
        neighbours = dist.topk(min(k, members.shape[0] - 1), largest=False).indices
        base = torch.randint(members.shape[0], (need,), generator=g)
        pick = neighbours[base, torch.randint(neighbours.shape[1], (need,), generator=g)]
        u = torch.rand(need, 1, generator=g)
        new = members[base] + u * (members[pick] - members[base])
        xs.append(new.reshape(need, *x.shape[1:]))
        ys.append(torch.full((need,), c, dtype=y.dtype))
    return TensorDataset(torch.cat(xs), torch.cat(ys))


def scores(model: torch.nn.Module, test: TensorDataset) -> tuple[float, float, float]:
    x, y = test.tensors
    with torch.no_grad():
        pred = model(x).argmax(1)
    recall = [float((pred[y == c] == c).double().mean()) for c in range(10)]
    minority = statistics.mean(recall[c] for c in MINORITY)
    return float((pred == y).double().mean()), statistics.mean(recall), minority


def non_private(
    train: TensorDataset, test: TensorDataset, seed: int, epochs: int, *, weights: str | None = None
) -> tuple:
    torch.manual_seed(seed)
    loss = (
        F.cross_entropy
        if weights is None
        else class_weighted_loss(parse_class_weights(weights, train.tensors[1], 10))
    )
    model = mlp(image_size=8, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # the best of 0.5, 1, 2, 4 on seed 0
    x, y = train.tensors
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(BATCH):
            opt.zero_grad()
            loss(model(x[idx]), y[idx]).backward()
            opt.step()
    return (*scores(model, test), None)


def dp_sgd(
    train: TensorDataset, test: TensorDataset, seed: int, epochs: int, *,
    weights: str | None = None, rates: Sequence[float] | None = None, sigma: float,
) -> tuple:  # fmt: skip
    torch.manual_seed(seed)
    model = mlp(image_size=8, num_classes=10)
    loss = (
        F.cross_entropy
        if weights is None
        else class_weighted_loss(parse_class_weights(weights, train.tensors[1], 10))
    )
    sampling = {"sample_rate": Q} if rates is None else {"class_sample_rates": rates}
    trainer = DPTrainer(model, torch.optim.SGD(model.parameters(), lr=LR), train, loss_fn=loss,
                        max_grad_norm=1.0, epochs=epochs, delta=DELTA,
                        schedule=NoiseSchedule(kind="constant", noise_multiplier=sigma),
                        **sampling)  # fmt: skip
    result = trainer.fit()
    majority = None if rates is None else min(epsilon_per_class(trainer.plan, epochs))
    return (*scores(model, test), (result.epsilon, majority))


def same_steps(train: TensorDataset, rates: Sequence[float], epochs: int) -> int:
    """Epochs of per-class sampling that take as many steps as ``epochs`` of plain DP-SGD."""
    counts = tuple(torch.bincount(train.tensors[1], minlength=10).tolist())
    per_epoch = ClassSampling(tuple(rates), counts).steps_per_epoch
    return max(1, round(epochs * steps_per_epoch(Q) / per_epoch))


def _epsilon(value: tuple[float, float | None] | str | None) -> str:
    if value is None:
        return "none (not private)"
    if isinstance(value, str):
        return value
    run, majority = value
    return f"{run:.2f}" if majority is None else f"{run:.2f} (set by 5-9; 0-4: {majority:.2f})"


def row(name: str, runs: list[tuple], epsilon: str | None = None) -> None:
    acc, bal, minority = (statistics.mean(col) for col in list(zip(*runs, strict=True))[:3])
    eps = epsilon if epsilon is not None else _epsilon(runs[0][3])
    print(f"| {name} | {acc:.3f} | {bal:.3f} | {minority:.3f} | {eps} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--sigma", type=float, default=SIGMA)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    seeds, epochs, sigma0 = range(args.seeds), args.epochs, args.sigma
    data = {s: imbalanced(s) for s in seeds}
    counts = torch.bincount(data[0][0].tensors[1]).tolist()
    print(f"train class counts (seed 0): {counts}\n")
    print("| training | accuracy | balanced accuracy | minority recall (5-9) "
          f"| epsilon (delta {DELTA:g}) |")  # fmt: skip
    print("|---|---|---|---|---|")

    def each(fn: Callable[..., tuple], **kw: object) -> list[tuple]:
        return [fn(*data[s], s, epochs, **kw) for s in seeds]

    row(f"non-private SGD (batch {BATCH}, {epochs} epochs)", each(non_private))
    row("non-private SGD + balanced class weights", each(non_private, weights="balanced"))
    plain = each(dp_sgd, sigma=sigma0)
    row(f"DP-SGD (q = {Q:g}, sigma {sigma0:g}, {epochs} epochs)", plain)
    row("DP-SGD + --class-weights balanced", each(dp_sgd, weights="balanced", sigma=sigma0))
    for name, rates in (("minority up", MINORITY_UP), ("majority down", MAJORITY_DOWN)):
        runs = [
            dp_sgd(*data[s], s, same_steps(data[s][0], rates, epochs), rates=rates, sigma=sigma0)
            for s in seeds
        ]
        label = f"{rates[0]:g} for 0-4, {rates[5]:g} for 5-9"
        row(f"DP-SGD + --class-sample-rates ({name}: {label})", runs)
    smoted = [dp_sgd(smote(data[s][0], s), data[s][1], s, epochs, sigma=sigma0) for s in seeds]
    row("SMOTE (minority to majority size), then DP-SGD", smoted,
        f"void / undefined: per-record guarantee broken (the accountant would print "
        f"{smoted[0][3][0]:.2f})")  # fmt: skip
    flagged = smote(data[0][0], 0)
    flagged.oversampled = True  # type: ignore[attr-defined]
    try:
        dp_sgd(flagged, data[0][1], 0, 1, sigma=sigma0)
    except ResampledDataError as error:
        print(f"\nflagged SMOTE data in the trainer: refused ({error.code})")
    print(f"({len(seeds)} seeds, {epochs} epochs, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
