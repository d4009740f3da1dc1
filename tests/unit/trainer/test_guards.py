"""Data guards: duplicates, resampled (SMOTE) data, group privacy, class-weighted loss."""

import json
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from dp_core.errors import InvalidParameterError
from dp_core.mechanisms import SampledGaussianSchedule
from dp_core.schedules import NoiseSchedule
from dp_core.trainer.budget_gate import RunPlan
from dp_core.trainer.cli import register
from dp_core.trainer.guards import (
    DuplicateRecordsError,
    ResampledDataError,
    balanced_class_weights,
    calibrate_group_noise_multiplier,
    check_training_data,
    class_weighted_loss,
    find_duplicates,
    group_epsilon,
    is_resampled,
    parse_class_weights,
)
from dp_core.trainer.loop import DPTrainer
from dp_core.trainer.per_sample import per_sample_gradients

from .test_data import write_idx


def _data(n=40, copies=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    for src, dst in copies:
        x[dst], y[dst] = x[src], y[src]
    return TensorDataset(x, y)


def test_finds_exact_duplicates_only():
    clean = find_duplicates(_data())
    assert clean.largest_group == 1 and clean.duplicated_records == 0 and clean.example == ()
    report = find_duplicates(_data(copies=[(0, 5), (0, 9), (1, 2)]))
    assert report.largest_group == 3 and report.duplicated_records == 5
    assert report.example == (0, 5, 9)
    # Same features, other label: not a duplicate record.
    ds = _data(copies=[(0, 5)])
    ds.tensors[1][5] = (ds.tensors[1][0] + 1) % 3
    assert find_duplicates(ds).largest_group == 1


def test_duplicates_are_refused_unless_declared():
    ds = _data(copies=[(0, 5), (3, 4)])
    with pytest.raises(DuplicateRecordsError, match="--max-records-per-individual K") as info:
        check_training_data(ds)
    assert info.value.code == "duplicate_records" and "4 of 40" in str(info.value)
    assert check_training_data(ds, max_records_per_individual=2) == 2
    with pytest.raises(DuplicateRecordsError, match="smaller"):
        check_training_data(_data(copies=[(0, 5), (0, 6)]), max_records_per_individual=2)


def test_resampled_data_is_refused_with_the_reason():
    ds = _data()
    ds.oversampled = True
    with pytest.raises(ResampledDataError, match="class-weights balanced") as info:
        check_training_data(ds, max_records_per_individual=100)
    assert "SMOTE" in str(info.value) and info.value.code == "resampled_data"
    assert "--class-sample-rates" in str(info.value)  # the other DP-safe way to rebalance
    x, y = _data().tensors
    x.oversampled = True  # the marker on a tensor counts too
    assert is_resampled(TensorDataset(x, y))
    fake = types.new_class("SMOTEDataset")
    fake.__module__ = "imblearn.over_sampling._smote"
    assert is_resampled(fake())
    assert not is_resampled(_data())


def test_the_trainer_refuses_before_training():
    ds = _data(copies=[(0, 1)])
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kwargs = {"loss_fn": F.cross_entropy, "max_grad_norm": 1.0, "epochs": 1, "sample_rate": 0.5,
                  "noise_multiplier": 1.0}  # fmt: skip
    with pytest.raises(DuplicateRecordsError):
        DPTrainer(model, opt, ds, **kwargs)
    assert DPTrainer(model, opt, ds, max_records_per_individual=2, **kwargs).group_size == 2


def test_group_epsilon_is_per_record_for_one_and_grows_with_k():
    plan = RunPlan(sample_rate=0.01, steps_per_epoch=100, epochs=5,
                   schedule=NoiseSchedule(kind="constant", noise_multiplier=1.1), max_grad_norm=1.0, delta=1e-5)  # fmt: skip
    mech = plan.mechanism(0, 5)
    one = group_epsilon(mech, delta=1e-5, group_size=1)
    assert one == pytest.approx(plan.epsilon(5), rel=1e-9)
    two, four = (group_epsilon(mech, delta=1e-5, group_size=k) for k in (2, 4))
    assert one < two < four
    # K = 2 via Prop. 2 is 3x the RDP at half the order: well above the per-record epsilon.
    assert two > 1.5 * one and four > 2 * two


def test_group_calibration_never_overshoots():
    sigma = calibrate_group_noise_multiplier(
        target_epsilon=3.0, delta=1e-5, sample_rate=0.05, steps=200, group_size=2
    )

    def eps(s):
        mech = SampledGaussianSchedule(
            sample_rate=0.05, schedule=NoiseSchedule(kind="constant", noise_multiplier=s), steps=200
        )
        return group_epsilon(mech, delta=1e-5, group_size=2)

    assert eps(sigma) <= 3.0 < eps(sigma * 0.997)


def test_class_weighted_loss_weights_each_example_then_clips():
    model = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    ones = class_weighted_loss(torch.ones(3))
    assert torch.allclose(ones(model(x), y), F.cross_entropy(model(x), y))
    w = torch.tensor([0.5, 2.0, 3.0])
    plain = per_sample_gradients(model, F.cross_entropy, x, y).grads["weight"]
    weighted = per_sample_gradients(model, class_weighted_loss(w), x, y).grads["weight"]
    torch.testing.assert_close(weighted, plain * w[y].view(-1, 1, 1))


def test_balanced_weights_and_parsing():
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2])
    w = balanced_class_weights(labels, 4)
    torch.testing.assert_close(w, torch.tensor([9 / 24, 9 / 8, 9 / 4, 0.0]))
    torch.testing.assert_close(parse_class_weights("1,2.5,0", labels, 3), torch.tensor([1, 2.5, 0]))
    for bad in ("1,2", "a,b,c", "1,-1,1", "1,nan,1"):
        with pytest.raises(InvalidParameterError, match="class_weights"):
            parse_class_weights(bad, labels, 3)


def _app():
    app = typer.Typer()

    @app.callback()
    def root():
        pass

    register(app)
    return app


def _write_mnist_with_copies(directory, copies):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", 16)):
        images = rng.integers(0, 255, (n, 28, 28))
        labels = rng.integers(0, 10, n)
        if prefix == "train":
            for src, dst in copies:
                images[dst], labels[dst] = images[src], labels[src]
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels)


def _train(*args):
    return CliRunner().invoke(_app(), ["train", "--no-progress", "--threads", "1", *args])


def test_cli_refuses_duplicates_before_asking_the_ledger(tmp_path):
    _write_mnist_with_copies(tmp_path, [(0, 1), (0, 2)])
    # With an unreachable service: exit 2 (not the ledger's exit 1) proves nothing was sent.
    result = _train("--data", f"mnist:{tmp_path}", "--epochs", "1", "--noise-multiplier", "1",
                    "--batch-size", "16", "--service", "http://127.0.0.1:9", "--token", "t",
                    "--dataset", "d")  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "duplicates" in lines[0] and "max-records-per-individual" in lines[0]


def test_cli_group_privacy_for_declared_k(tmp_path):
    _write_mnist_with_copies(tmp_path, [(0, 1)])
    base = ["--data", f"mnist:{tmp_path}", "--epochs", "1", "--batch-size", "16"]
    result = _train(*base, "--noise-multiplier", "2", "--max-records-per-individual", "2")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["max_records_per_individual"] == 2
    assert summary["epsilon"] > summary["epsilon_per_record"] > 0
    calibrated = json.loads(
        _train(*base, "--target-epsilon", "3", "--max-records-per-individual", "2").stdout
    )
    assert 2.9 < calibrated["epsilon"] <= 3.0  # the group epsilon meets the target
    over = _train(*base, "--noise-multiplier", "0.8", "--budget-epsilon", "2",
                  "--max-records-per-individual", "2")  # fmt: skip
    assert over.exit_code == 2 and "group privacy" in over.output
    service = _train(*base, "--noise-multiplier", "2", "--max-records-per-individual", "2",
                     "--service", "http://127.0.0.1:9", "--token", "t", "--dataset", "d")  # fmt: skip
    # With --service, K is no longer refused: the run goes on to the ledger's gate (dp_core's own
    # CLI has none; `dpledger train` charges K there, tests/e2e/test_audit_service.py).
    assert service.exit_code == 2 and "needs a ledger gate" in service.output, service.output


def test_cli_class_weights_train_and_are_accounted_like_any_run():
    base = ["--epochs", "2", "--noise-multiplier", "1.0", "--lr", "2"]
    plain = json.loads(_train(*base).stdout)
    weighted = json.loads(_train(*base, "--class-weights", "balanced").stdout)
    assert weighted["epsilon"] == plain["epsilon"] and weighted["class_weights"] == "balanced"
    assert weighted["test_accuracy"] > 0.5
