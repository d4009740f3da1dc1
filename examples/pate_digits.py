"""PATE on scikit-learn's digits: teachers on disjoint shards, a student on GNMax labels.

Run with ``python examples/pate_digits.py`` (needs scikit-learn, the trainer extra; no torch).
The 1797 digits are shuffled and split into a private part (the teachers' shards), a public part
whose first ``--queries`` images the teachers label through the noisy aggregator, and a test
part. One logistic regression per shard votes on each public image; the student is a logistic
regression trained on the noisy labels only. The script prints the accuracies and the epsilon
spent, data-independent (the DP guarantee, what the ledger charges) next to data-dependent
(computed from the votes, reporting only).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

import dp_core

PRIVATE, PUBLIC = 1300, 200  # the remaining 297 images are the test split


def _fit(x: np.ndarray, y: np.ndarray) -> LogisticRegression:
    return LogisticRegression(max_iter=1000, C=10.0).fit(x, y)


def run(
    *,
    teachers: int = 250,
    queries: int = 200,
    aggregator: str = "gnmax",
    noise_multiplier: float = 12.0,
    delta: float = 1e-5,
    seed: int = 0,
    reproducible_noise: bool = False,
    save_votes: str | None = None,
) -> dict[str, Any]:
    """Train the teachers and the student; return the measured accuracies and epsilons.

    ``seed`` splits the data (public); the aggregator's noise is secret unless
    ``reproducible_noise`` (then drawn from ``seed``: no guarantee against anyone who knows it).
    """
    start = time.perf_counter()
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    order = np.random.default_rng(seed).permutation(y.size)
    private, public, test = order[:PRIVATE], order[PRIVATE : PRIVATE + queries], order[-297:]
    shards = np.array_split(private, teachers)
    models = [_fit(x[shard], y[shard]) for shard in shards]
    predictions = np.stack([model.predict(x[public]) for model in models])

    votes = dp_core.votes_from_predictions(predictions, num_classes=10)
    if save_votes is not None:  # for `dpledger pate --votes FILE.npy`
        np.save(save_votes, votes)
    mechanism = dp_core.pate_mechanism(
        aggregator, noise_multiplier=noise_multiplier, queries=queries
    )
    labels = dp_core.aggregate_votes(votes, mechanism, seed=seed if reproducible_noise else None)
    report = dp_core.analyze_votes(votes, mechanism, delta=delta, warn=False)
    student = _fit(x[public], labels)
    baseline = _fit(x[public], y[public])  # same public images, true labels: not private
    return {
        "teachers": teachers,
        "queries": queries,
        "aggregator": aggregator,
        "noise_multiplier": noise_multiplier,
        "delta": delta,
        "reproducible_noise": reproducible_noise,
        "teacher_accuracy_mean": float(np.mean([m.score(x[test], y[test]) for m in models])),
        "plurality_label_accuracy": float(np.mean(np.argmax(votes, axis=1) == y[public])),
        "noisy_label_accuracy": float(np.mean(labels == y[public])),
        "student_test_accuracy": float(student.score(x[test], y[test])),
        "non_private_student_test_accuracy": float(baseline.score(x[test], y[test])),
        "epsilon_data_independent": report.epsilon_data_independent,
        "epsilon_data_dependent": report.epsilon_data_dependent,
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the options, run, and print one line per measured number."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", type=int, default=250)
    parser.add_argument("--queries", type=int, default=200, help=f"at most {PUBLIC}")
    parser.add_argument("--aggregator", choices=dp_core.pate.AGGREGATORS, default="gnmax")
    parser.add_argument("--noise-multiplier", type=float, default=12.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0, help="the data split (public)")
    parser.add_argument(
        "--reproducible-noise", action="store_true",
        help="draw the noise from --seed too: no guarantee against anyone who knows it",
    )  # fmt: skip
    parser.add_argument("--save-votes", help="also write the (queries x 10) votes to this .npy")
    args = parser.parse_args(argv)
    result = run(
        teachers=args.teachers,
        queries=min(args.queries, PUBLIC),
        aggregator=args.aggregator,
        noise_multiplier=args.noise_multiplier,
        delta=args.delta,
        seed=args.seed,
        reproducible_noise=args.reproducible_noise,
        save_votes=args.save_votes,
    )
    for key, value in result.items():
        print(f"{key:34s} {value:.4g}" if isinstance(value, float) else f"{key:34s} {value}")
    return result


if __name__ == "__main__":
    main()
