"""The federated task: softmax regression (numpy) on digits split across synthetic users."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["SoftmaxModel", "UserData", "load_digits_users"]

Arrays = list[npt.NDArray[Any]]


@dataclass(frozen=True)
class UserData:
    """One user's examples: features (n x d, scaled to [0, 1]) and integer labels."""

    features: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]


@dataclass(frozen=True)
class SoftmaxModel:
    """Multinomial logistic regression: parameters [W (d x k), b (k)]."""

    features: int
    classes: int

    def initial(self) -> Arrays:
        return [np.zeros((self.features, self.classes)), np.zeros(self.classes)]

    @property
    def dimension(self) -> int:
        """Number of parameters d (what SecAgg+'s rounding error scales with)."""
        return self.features * self.classes + self.classes

    def probabilities(self, params: Arrays, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        logits = x @ params[0] + params[1]
        logits -= logits.max(axis=1, keepdims=True)  # stable softmax
        e = np.exp(logits)
        return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)

    def train(self, params: Arrays, data: UserData, *, epochs: int, learning_rate: float) -> Arrays:
        """Full-batch gradient descent on the cross-entropy, ``epochs`` steps."""
        w, b = params[0].copy(), params[1].copy()
        onehot = np.eye(self.classes)[data.labels]
        n = max(1, len(data.labels))
        for _ in range(epochs):
            error = self.probabilities([w, b], data.features) - onehot
            w -= learning_rate * data.features.T @ error / n
            b -= learning_rate * error.sum(axis=0) / n
        return [w, b]

    def accuracy(self, params: Arrays, data: UserData) -> float:
        predicted = self.probabilities(params, data.features).argmax(axis=1)
        return float(np.mean(predicted == data.labels))


def load_digits_users(
    users: int, *, seed: int = 0, test_share: float = 0.2
) -> tuple[list[UserData], UserData]:
    """Split scikit-learn's digits into ``users`` users (shuffled, near-equal) and a test set."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.asarray(digits.data, dtype=np.float64) / 16.0
    y = np.asarray(digits.target, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    cut = int(len(y) * (1.0 - test_share))
    if users < 1 or users > cut:
        raise ValueError(f"users must be in [1, {cut}] for digits")
    shards = np.array_split(np.arange(cut), users)
    return [UserData(x[s], y[s]) for s in shards], UserData(x[cut:], y[cut:])
