"""The real MNIST and Fashion-MNIST files, when `dpledger data get` has put them in $DPLEDGER_DATA.

Skipped (with the reason) where the folder is absent, as in CI: the data is never committed.
    dpledger data get mnist --dir "$DPLEDGER_DATA/mnist"
    dpledger data get fashion-mnist --dir "$DPLEDGER_DATA/fashion-mnist"
"""

import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from dp_core.trainer.data import TrainTestData, load_data
from dp_core.trainer.features import scattering_features
from dpledger.data_fetch import verified_copy
from dpledger.data_formats import DECODED_MD5

ROOT = os.environ.get("DPLEDGER_DATA")

pytestmark = pytest.mark.slow


def real_dir(name: str) -> Path:
    if not ROOT:
        pytest.skip("DPLEDGER_DATA is not set (the folder `dpledger data get` wrote to)")
    folder = Path(ROOT) / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: run `dpledger data get {name} --dir {folder}`")
    return folder


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_files_verify_and_load(name):
    folder = real_dir(name)
    manifest = verified_copy(folder, name)
    assert manifest is not None, f"{folder} does not hold a verified copy"
    assert {row["name"]: row["md5"] for row in manifest["files"]} == dict(DECODED_MD5[name])
    data = load_data(f"{name}:{folder}")
    x, y = data.train.tensors
    assert x.shape == (60_000, 1, 28, 28) and len(data.test) == 10_000
    counts = torch.bincount(y, minlength=10)
    assert counts.sum() == 60_000 and int(counts.min()) >= 5_000  # every class well present
    images, labels = data.test.tensors[0][:256], data.test.tensors[1][:256]
    subset = TrainTestData(
        TensorDataset(images, labels), TensorDataset(images[:8], labels[:8]), 28, 10
    )
    low_pass = scattering_features(subset).train.tensors[0][:, 0]  # order 0: a local average
    assert torch.allclose(low_pass.mean(dim=(1, 2)), images.mean(dim=(1, 2, 3)), atol=0.05)
