"""The seed's imbalanced-data scenario on digits: plain vs class-weighted DP-SGD, and SMOTE refused.

Digits 5-9 keep 10% of their training examples (the minority); the test split is untouched.
Prints accuracy, balanced accuracy (mean per-class recall), minority recall and epsilon side by
side (asserts nothing). Usage: python bench/class_weights.py [--seeds 3] [--epochs 30]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from dp_core.schedules import NoiseSchedule
from dp_core.trainer.data import load_digits_data
from dp_core.trainer.guards import ResampledDataError, class_weighted_loss, parse_class_weights
from dp_core.trainer.loop import DPTrainer
from dp_core.trainer.models import mlp


def imbalanced(seed: int) -> tuple[TensorDataset, TensorDataset]:
    data = load_digits_data(seed=seed)
    x, y = data.train.tensors
    g = torch.Generator().manual_seed(seed)
    keep = (y < 5) | (torch.rand(len(y), generator=g) < 0.1)
    return TensorDataset(x[keep], y[keep]), data.test


def scores(model: torch.nn.Module, test: TensorDataset) -> tuple[float, float, float]:
    x, y = test.tensors
    with torch.no_grad():
        pred = model(x).argmax(1)
    recall = [float((pred[y == c] == c).double().mean()) for c in range(10)]
    return float((pred == y).double().mean()), statistics.mean(recall), statistics.mean(recall[5:])


def run(train: TensorDataset, test: TensorDataset, *, weights: str | None, seed: int, epochs: int):
    torch.manual_seed(seed)
    model = mlp(image_size=8, num_classes=10)
    loss = (
        F.cross_entropy
        if weights is None
        else class_weighted_loss(parse_class_weights(weights, train.tensors[1], 10))
    )
    trainer = DPTrainer(model, torch.optim.SGD(model.parameters(), lr=2.0), train, loss_fn=loss,
                        max_grad_norm=1.0, epochs=epochs, expected_batch_size=128,
                        schedule=NoiseSchedule(kind="constant", noise_multiplier=1.0), seed=seed)  # fmt: skip
    result = trainer.fit()
    return (*scores(model, test), result.epsilon)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| loss | accuracy | balanced accuracy | minority recall (5-9) | epsilon (delta 1e-5) |")
    print("|---|---|---|---|---|")
    for weights in (None, "balanced"):
        rows = [
            run(*imbalanced(s), weights=weights, seed=s, epochs=args.epochs)
            for s in range(args.seeds)
        ]
        acc, bal, minority, eps = (statistics.mean(col) for col in zip(*rows, strict=True))
        name = "cross-entropy" if weights is None else "--class-weights balanced"
        print(f"| {name} | {acc:.3f} | {bal:.3f} | {minority:.3f} | {eps:.2f} |")
    train, test = imbalanced(0)
    train.oversampled = True  # what a SMOTE/oversampling step before DP-SGD must declare
    try:
        run(train, test, weights=None, seed=0, epochs=1)
    except ResampledDataError as error:
        print(f"| SMOTE / oversampling | refused | - | - | no valid epsilon ({error.code}) |")


if __name__ == "__main__":
    main()
