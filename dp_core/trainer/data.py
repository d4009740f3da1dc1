"""Bundled data for the CLI: scikit-learn's digits and MNIST from IDX files the user has.

IDX (LeCun et al., "The MNIST database"): a big-endian header of magic number (0x0000, a type
code, the number of dimensions), then one uint32 per dimension, then the raw data. Files may be
gzip-compressed (``.gz``).
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dp_core.errors import InvalidParameterError

__all__ = ["TrainTestData", "load_data", "load_digits_data", "load_mnist_dir", "read_idx"]

_IDX_TYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


@dataclass(frozen=True)
class TrainTestData:
    """A train/test split; inputs are float32 (N, C, H, W) images, labels int64."""

    train: TensorDataset
    test: TensorDataset
    image_size: int
    num_classes: int


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array.

    Raises:
        InvalidParameterError: if the file is not a well-formed IDX file.
    """
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise InvalidParameterError("data", str(path), "is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InvalidParameterError("data", str(path), "truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != count * dtype.itemsize:
        raise InvalidParameterError("data", str(path), f"IDX size does not match its shape {shape}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for name in (
        stem,
        f"{stem}.gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (directory / name).is_file():
            return directory / name
    raise InvalidParameterError("data", f"mnist:{directory}", f"has no {stem}[.gz]")


def _images(directory: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise InvalidParameterError(
            "data", f"mnist:{directory}", f"{prefix} images and labels do not match"
        )
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_mnist_dir(directory: Path) -> TrainTestData:
    """Load MNIST from ``train-*`` and ``t10k-*`` IDX files in ``directory``."""
    if not directory.is_dir():
        raise InvalidParameterError("data", f"mnist:{directory}", "is not a directory")
    x_train, y_train = _images(directory, "train")
    x_test, y_test = _images(directory, "t10k")
    classes = int(max(y_train.max(), y_test.max())) + 1
    return TrainTestData(
        TensorDataset(x_train, y_train), TensorDataset(x_test, y_test), x_train.shape[-1], classes
    )


def load_digits_data(*, seed: int = 0, test_fraction: float = 0.2) -> TrainTestData:
    """Load scikit-learn's bundled 8x8 digits, scaled to [0, 1], split 80/20 (stratified)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    train = TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr.astype(np.int64)))
    test = TensorDataset(torch.from_numpy(x_te), torch.from_numpy(y_te.astype(np.int64)))
    return TrainTestData(train, test, 8, 10)


def load_data(spec: str, *, seed: int = 0) -> TrainTestData:
    """Load ``digits`` or ``mnist:DIR``.

    Raises:
        InvalidParameterError: for any other spec or malformed files.
    """
    if spec == "digits":
        return load_digits_data(seed=seed)
    if spec.startswith("mnist:") and len(spec) > len("mnist:"):
        return load_mnist_dir(Path(spec[len("mnist:") :]).expanduser())
    raise InvalidParameterError("data", spec, "must be 'digits' or 'mnist:DIR'")
