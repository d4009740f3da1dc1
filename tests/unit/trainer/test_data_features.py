"""ScatterNet features and heads (Tramer & Boneh 2021), and the cifar10-jpeg label."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from dp_core.errors import InvalidParameterError
from dp_core.trainer import bookkeeping
from dp_core.trainer.data import TrainTestData, load_data
from dp_core.trainer.features import CACHE_ENV, features_for_model, scattering_features
from dp_core.trainer.models import build_model
from dp_core.trainer.recipe import TrainConfig, run_training

from .test_data import write_mnist


def images(n, channels=1, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, size, size, generator=g)
    return TrainTestData(
        TensorDataset(x, torch.arange(n) % 10), TensorDataset(x[:3], torch.arange(len(x[:3]))),
        size, 10, channels,
    )  # fmt: skip


def test_shapes_follow_the_paper():
    mnist = scattering_features(images(4))
    assert mnist.train.tensors[0].shape == (4, 81, 7, 7) and mnist.channels == 81
    cifar = scattering_features(images(2, channels=3, size=32))
    assert cifar.train.tensors[0].shape == (2, 243, 8, 8) and cifar.image_size == 8
    assert mnist.train.tensors[1].tolist() == [0, 1, 2, 3]  # labels untouched


def test_constant_image_keeps_only_its_low_pass_channel():
    # Independent oracle: the order-0 channel is a low-pass average (its filter sums to 1), and
    # every wavelet (zero-mean) channel of a constant image is zero.
    x = torch.full((1, 1, 28, 28), 0.7)
    data = TrainTestData(TensorDataset(x, torch.zeros(1, dtype=torch.long)),
                         TensorDataset(x, torch.zeros(1, dtype=torch.long)), 28, 10)  # fmt: skip
    out = scattering_features(data).train.tensors[0][0]
    assert torch.allclose(out[0], torch.full((7, 7), 0.7), atol=1e-4)
    assert float(out[1:].abs().max()) < 1e-4


def test_features_do_not_depend_on_other_examples():
    data = images(6)
    alone = scattering_features(images(1)).train.tensors[0][0]
    together = scattering_features(data).train.tensors[0][0]
    assert torch.allclose(alone, together, atol=1e-5)


def test_cache_returns_the_same_features(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    first = scattering_features(images(5)).train.tensors[0]
    (cached,) = list(tmp_path.iterdir())
    assert cached.name.startswith("scatternet-") and cached.suffix == ".pt"
    again = scattering_features(images(5)).train.tensors[0]
    assert torch.equal(first, again)
    scattering_features(images(5, seed=1))  # other images, another file
    assert len(list(tmp_path.iterdir())) == 2


def test_heads_train_only_linear_and_conv_weights():
    for name in ("scatternet-linear", "scatternet-cnn"):
        model = build_model(name, image_size=7, num_classes=10, channels=81)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
        assert norms and all(not list(m.parameters()) for m in norms)  # nothing fitted
        assert bookkeeping.supports(model)
        assert model(torch.randn(2, 81, 7, 7)).shape == (2, 10)


def test_heads_refuse_raw_images():
    with pytest.raises(InvalidParameterError, match="ScatterNet features"):
        build_model("scatternet-linear", image_size=28, num_classes=10, channels=1)
    assert features_for_model("mlp", images(2)).channels == 1


def test_scatternet_run_trains_and_is_charged(tmp_path):
    write_mnist(tmp_path, n_train=200, n_test=50)
    config = TrainConfig(data=f"mnist:{tmp_path}", model="scatternet-linear", epochs=3,
                         batch_size=50, lr=4.0, optimizer="momentum", max_grad_norm=0.1,
                         target_epsilon=3.0, seed=0)  # fmt: skip
    summary = run_training(config)
    assert summary["epochs_completed"] == 3 and summary["engine"] == "bookkeeping"
    assert 2.5 < summary["epsilon"] <= 3.0  # calibrated, never above the target
    assert summary["test_accuracy"] > 0.5  # the stripes are learnable (10% by chance)


def test_cifar10_jpeg_is_labelled_both_ways(tmp_path):
    from dpledger.data_formats import encode_cifar_batch

    rng = np.random.default_rng(0)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch"]:  # fmt: skip
        x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        (tmp_path / name).write_bytes(encode_cifar_batch(x, np.arange(4), name=name))
    assert len(load_data(f"cifar10:{tmp_path}").train) == 20  # no manifest: plain CIFAR-10
    with pytest.raises(InvalidParameterError, match="not the JPEG copy"):
        load_data(f"cifar10-jpeg:{tmp_path}")
    (tmp_path / "dpledger-data.json").write_text(json.dumps({"dataset": "cifar10-jpeg"}))
    assert len(load_data(f"cifar10-jpeg:{tmp_path}").test) == 4
    with pytest.raises(InvalidParameterError, match="use cifar10-jpeg:DIR"):
        load_data(f"cifar10:{tmp_path}")
