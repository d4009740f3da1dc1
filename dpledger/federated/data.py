"""Where the users' data comes from: digits, or MNIST / Fashion-MNIST from the user's IDX files.

A :class:`UserSource` is a small picklable description (the ``--data`` spec, N, the seed): every
process that needs a user's data (the server for the test split, each simulated node for its
partition) loads and splits it once, cached per process, so a simulation never ships the data
set with every message. MNIST and Fashion-MNIST are read by the trainer's loaders
(:func:`dp_core.trainer.data.load_data`: IDX files, optionally gzipped; nothing is downloaded),
which need torch (the ``trainer`` extra).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dpledger.federated.model import UserData, load_digits_users

__all__ = ["DATA_SPECS", "UserSource"]

DATA_SPECS = ("digits", "mnist:DIR", "fashion-mnist:DIR")
_IDX_KINDS = ("mnist", "fashion-mnist")


def _how_to_get(kind: str) -> str:
    """Where to get ``kind``'s files (the trainer's words; nothing is ever downloaded)."""
    try:
        from dp_core.trainer.data import HOW_TO_GET
    except ImportError:  # no torch: the trainer extra is missing, and MNIST needs it anyway
        return "the four IDX files (train-images-idx3-ubyte.gz, ..., t10k-labels-idx1-ubyte.gz)"
    return HOW_TO_GET[kind]


@dataclass(frozen=True)
class UserSource:
    """N users' shards of one data set, and its test split (each user: a near-equal shard)."""

    data: str
    users: int
    seed: int = 0

    def __post_init__(self) -> None:
        kind, _, directory = self.data.partition(":")
        if kind in _IDX_KINDS and not directory:
            raise ValueError(
                f"--data {kind}: give {kind}:DIR, a directory holding {_how_to_get(kind)}"
            )
        if self.data != "digits" and kind not in _IDX_KINDS:
            raise ValueError(f"--data must be one of {', '.join(DATA_SPECS)}, not {self.data!r}")
        if kind in _IDX_KINDS:  # simulated nodes may run in another directory
            object.__setattr__(self, "data", f"{kind}:{Path(directory).expanduser().resolve()}")

    def user(self, index: int) -> UserData:
        """User ``index``'s shard (0 <= index < users)."""
        return _split(self)[0][index]

    def test(self) -> UserData:
        """The held-out test examples."""
        return _split(self)[1]

    @property
    def features(self) -> int:
        return int(self.test().features.shape[1])

    def load(self) -> None:
        """Load now (raises ``ValueError`` for a missing directory or bad files, or too many users)."""
        _split(self)


@functools.lru_cache(maxsize=2)
def _split(source: UserSource) -> tuple[list[UserData], UserData]:
    if source.data == "digits":
        return load_digits_users(source.users, seed=source.seed)
    return _idx_users(source)


def _idx_users(source: UserSource) -> tuple[list[UserData], UserData]:
    try:
        from dp_core.trainer.data import load_data
    except ModuleNotFoundError as missing:  # torch: the trainer extra
        raise ValueError(
            f"--data {source.data.partition(':')[0]} needs the trainer's loaders ({missing.name}):"
            " pip install 'dpledger[trainer]'"
        ) from None
    loaded = load_data(source.data, seed=source.seed)
    x_train, y_train = (_flat(t) for t in loaded.train.tensors)
    x_test, y_test = (_flat(t) for t in loaded.test.tensors)
    if source.users < 1 or source.users > len(y_train):
        raise ValueError(f"users must be in [1, {len(y_train)}] for {source.data}")
    order = np.random.default_rng(source.seed).permutation(len(y_train))
    shards = np.array_split(order, source.users)
    users = [UserData(x_train[s], y_train[s]) for s in shards]
    return users, UserData(x_test, y_test)


def _flat(tensor: Any) -> Any:
    """A torch tensor as numpy: images (N, C, H, W) flattened to (N, C*H*W), labels int64."""
    array = tensor.numpy()
    return array.reshape(len(array), -1) if array.ndim > 1 else array.astype(np.int64)
