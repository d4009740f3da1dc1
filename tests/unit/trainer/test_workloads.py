"""The seeds' workloads: Fashion-MNIST and CIFAR-10 loaders, the GroupNorm VGG CNN, optimizers."""

import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from typer.testing import CliRunner

from dp_core.errors import InvalidParameterError
from dp_core.trainer.cli import register
from dp_core.trainer.data import load_data, read_cifar_batch
from dp_core.trainer.errors import UnsupportedModelError
from dp_core.trainer.loop import DPTrainer
from dp_core.trainer.models import build_model, vgg_cnn

from .test_data import write_mnist


def write_cifar(directory, per_batch=8, old_numpy_names=False, seed=0):
    """Write CIFAR-10 python batches as the real files hold them (dict of bytes keys)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch)
        data = rng.integers(0, 60, (per_batch, 3072)).astype(np.uint8)
        data[np.arange(per_batch), labels * 100] = 255  # a learnable mark per class
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data,
                 b"filenames": [f"{i}.png".encode() for i in range(per_batch)]}  # fmt: skip
        raw = pickle.dumps(batch, protocol=2)
        if old_numpy_names:  # files written by numpy 1 / Python 2 name numpy.core
            raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (directory / name).write_bytes(raw)


@pytest.mark.parametrize("old_numpy_names", [False, True])
def test_cifar10_batches_load_channel_major(tmp_path, old_numpy_names):
    write_cifar(tmp_path / "cifar-10-batches-py", old_numpy_names=old_numpy_names)
    data = load_data(f"cifar10:{tmp_path}")  # finds the cifar-10-batches-py child
    x, y = data.train.tensors
    assert x.shape == (40, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert data.test.tensors[0].shape == (8, 3, 32, 32)
    assert (data.image_size, data.channels) == (32, 3)
    raw, labels = read_cifar_batch(tmp_path / "cifar-10-batches-py" / "data_batch_1")
    assert raw.shape == (8, 3, 32, 32) and labels.tolist() == y[:8].tolist()
    # Row-major 3072 = red 1024, green 1024, blue 1024: pixel k*100 lies in channel k*100 // 1024.
    i = 0
    k = int(labels[i]) * 100
    assert x[i, k // 1024].flatten()[k % 1024] == 1.0


def test_hostile_pickle_is_refused_without_running(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    (tmp_path / "bad").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(InvalidParameterError, match="not a CIFAR-10 python batch"):
        read_cifar_batch(tmp_path / "bad")
    assert not (tmp_path / "pwned").exists()


def test_cifar10_wrong_shape_and_missing_files(tmp_path):
    (tmp_path / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})
    )
    with pytest.raises(InvalidParameterError, match="data_batch_1.*cs.toronto.edu"):
        load_data(f"cifar10:{tmp_path}")
    with pytest.raises(InvalidParameterError, match="3072"):
        read_cifar_batch(tmp_path / "test_batch")


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_reads_idx_files(tmp_path, gz):
    write_mnist(tmp_path, gz=gz)
    data = load_data(f"fashion-mnist:{tmp_path}")
    assert data.train.tensors[0].shape == (64, 1, 28, 28) and data.image_size == 28


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ("fashion-mnist", "zalandoresearch"),
        ("cifar10", "cs.toronto.edu"),
        ("mnist", "t10k-images"),
        ("fashion-mnist:/nonexistent/dir", "zalandoresearch"),
        ("cifar10:/nonexistent/dir", "cifar-10-python.tar.gz"),
    ],
)
def test_missing_data_says_how_to_get_it(spec, hint):
    with pytest.raises(InvalidParameterError, match=hint):
        load_data(spec)


def test_fashion_mnist_missing_file_names_the_dataset(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(InvalidParameterError, match="fashion-mnist:.*t10k-labels.*zalando"):
        load_data(f"fashion-mnist:{tmp_path}")


def test_vgg_uses_groupnorm_and_refuses_batchnorm():
    model = vgg_cnn(num_classes=10)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    with pytest.raises(UnsupportedModelError, match="BatchNorm mixes the examples"):
        vgg_cnn(norm="batch")
    with pytest.raises(InvalidParameterError, match="32x32"):
        build_model("vgg", image_size=28, num_classes=10)
    with pytest.raises(InvalidParameterError, match="28x28"):
        build_model("cnn", image_size=32, num_classes=10, channels=3)


def test_a_batchnorm_vgg_is_refused_by_the_trainer():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 30 * 30, 10))  # fmt: skip
    data = torch.utils.data.TensorDataset(torch.rand(8, 3, 32, 32), torch.arange(8))
    with pytest.raises(UnsupportedModelError, match="GroupNorm"):
        DPTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), data, loss_fn=F.cross_entropy,
                  max_grad_norm=1.0, epochs=1, sample_rate=0.5, noise_multiplier=1.0)  # fmt: skip


def _train(*args):
    app = typer.Typer()

    @app.callback()
    def root():
        pass

    register(app)
    return CliRunner().invoke(app, ["train", "--no-progress", "--threads", "1", *args])


def test_cli_trains_the_vgg_on_cifar10_files(tmp_path):
    write_cifar(tmp_path, per_batch=4)
    result = _train("--data", f"cifar10:{tmp_path}", "--model", "vgg", "--epochs", "1",
                    "--batch-size", "10", "--noise-multiplier", "1", "--optimizer", "adam",
                    "--lr", "0.001")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["epochs_completed"] == 1 and summary["engine"] == "func"


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adagrad"])
def test_the_dp_sgd_report_optimizers_train(optimizer):
    lr = {"sgd": "2", "adam": "0.01", "adagrad": "0.1"}[optimizer]
    result = _train(
        "--epochs", "2", "--noise-multiplier", "1", "--optimizer", optimizer, "--lr", lr
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["test_accuracy"] > 0.4
