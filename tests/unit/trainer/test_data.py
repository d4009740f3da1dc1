import gzip
import struct

import numpy as np
import pytest

from dp_core.errors import InvalidParameterError
from dp_core.trainer.data import load_data, load_digits_data, read_idx


def write_idx(path, array, gz=False):
    array = np.asarray(array, dtype=np.uint8)
    raw = (
        bytes([0, 0, 0x08, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.tobytes()
    )
    path.write_bytes(gzip.compress(raw) if gz else raw)


def write_mnist(directory, n_train=64, n_test=16, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, 28, 28))
        images[np.arange(n), labels * 2 + 4, 4:24] = 255  # a learnable stripe per class
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, gz):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, array, gz)
    np.testing.assert_array_equal(read_idx(path), array)


def test_malformed_idx_is_refused(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(InvalidParameterError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(InvalidParameterError, match="size"):
        read_idx(short)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_dir_loads_scaled_images(tmp_path, gz):
    write_mnist(tmp_path, gz=gz)
    data = load_data(f"mnist:{tmp_path}")
    x, y = data.train.tensors
    assert x.shape == (64, 1, 28, 28) and y.shape == (64,)
    assert float(x.max()) == 1.0 and float(x.min()) >= 0.0
    assert data.image_size == 28 and len(data.test) == 16


def test_missing_mnist_files_and_unknown_specs_are_refused(tmp_path):
    with pytest.raises(InvalidParameterError, match="train-images"):
        load_data(f"mnist:{tmp_path}")
    with pytest.raises(InvalidParameterError, match="digits"):
        load_data("cifar")


def test_digits_split_is_80_20_and_scaled():
    data = load_digits_data(seed=0)
    assert len(data.train) == 1437 and len(data.test) == 360
    assert float(data.train.tensors[0].max()) == 1.0
