"""The one-run audit with the trainer: canaries, the positive control, and soundness over seeds."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from dp_core.trainer.audit import (
    AuditConfig,
    GradientCanaryModel,
    gradient_canary_loss,
    make_canaries,
    run_audit,
)
from dp_core.trainer.loop import DPTrainer
from dp_core.trainer.per_sample import per_sample_gradients

KEYS = {"epsilon_theoretical", "epsilon_lower_bound", "confidence", "canaries"}


def test_canaries_are_seeded_and_about_half_included():
    a = make_canaries(count=1000, shape=(1, 8, 8), num_classes=10, seed=3)
    b = make_canaries(count=1000, shape=(1, 8, 8), num_classes=10, seed=3)
    c = make_canaries(count=1000, shape=(1, 8, 8), num_classes=10, seed=4)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.included, b.included)
    assert not torch.equal(a.included, c.included)
    # Bin(1000, 1/2) lies in [430, 570] with probability > 1 - 1e-5.
    assert 430 <= int(a.included.sum()) <= 570
    assert set(a.labels.tolist()) == set(range(10))


def test_gradient_canary_touches_only_its_own_parameter():
    base = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    model = GradientCanaryModel(base, 5)
    loss = gradient_canary_loss(3, 100.0)
    x = torch.randn(3, 1, 2, 2)
    y = torch.tensor([1, 3 + 2, 3 + 4])  # an ordinary example, canaries 2 and 4
    grads = per_sample_gradients(model, loss, x, y).grads
    assert grads["base.1.weight"][1:].abs().max() == 0 and grads["base.1.bias"][1:].abs().max() == 0
    assert grads["base.1.weight"][0].abs().max() > 0
    expected = torch.zeros(3, 5)
    expected[1, 2] = expected[2, 4] = 100.0
    torch.testing.assert_close(grads["canary"], expected)


@pytest.mark.parametrize(("kind", "epochs", "floor"), [("gradient", 5, 3.0), ("input", 60, 1.0)])
def test_non_private_run_is_caught(kind, epochs, floor):
    # No clipping, no noise: the canaries leak and the audit proves it.
    result = run_audit(AuditConfig(private=False, epochs=epochs, seed=0, canary_kind=kind))
    assert result.epsilon_theoretical is None
    assert result.epsilon_lower_bound > floor
    assert result.bound.correct > 0.85 * result.bound.guesses


class _NoiseBugTrainer(DPTrainer):
    """Adds 40x less noise than the accounted sigma (the kind of bug an audit exists for)."""

    def _gradient_noise_multiplier(self, sigma):
        return super()._gradient_noise_multiplier(sigma) / 40


def test_a_noise_bug_is_caught():
    config = AuditConfig(noise_multiplier=4.0, epochs=5, seed=0, reproducible_noise=True)
    honest = run_audit(config)
    buggy = run_audit(config, trainer_class=_NoiseBugTrainer)
    assert honest.epsilon_theoretical == buggy.epsilon_theoretical
    assert honest.epsilon_lower_bound < honest.epsilon_theoretical
    assert buggy.epsilon_lower_bound > 2 * buggy.epsilon_theoretical


def test_non_private_refuses_noise():
    from dp_core.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="non_private"):
        run_audit(AuditConfig(private=False, noise_multiplier=1.0, epochs=1))


@pytest.mark.parametrize("kind", ["gradient", "input"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_private_run_bound_stays_below_theory(seed, kind):
    result = run_audit(
        AuditConfig(
            noise_multiplier=1.0, epochs=5, seed=seed, reproducible_noise=True, canary_kind=kind
        )
    )
    assert result.epsilon_theoretical is not None and math.isfinite(result.epsilon_theoretical)
    assert 0.0 <= result.epsilon_lower_bound <= result.epsilon_theoretical
    assert result.noise_multiplier == 1.0


def _app():
    """The real root command: errors go through its one mapping to exit codes."""
    from dpledger.cli import cli

    return cli


def test_cli_json_has_the_contract_keys():
    result = CliRunner().invoke(
        _app(), ["audit", "--target-epsilon", "4", "--epochs", "2", "--canaries", "64", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary.keys() >= KEYS
    assert summary["canaries"] == 64 and summary["confidence"] == 0.95
    assert summary["canary_kind"] == "gradient"
    assert summary["epsilon_theoretical"] <= 4.0
    mia = summary["membership_inference"]
    assert 0.0 <= mia["auc"] <= 1.0 and set(mia["tpr_at_fpr"]) == {"0.001", "0.01", "0.1"}


@pytest.mark.parametrize(
    ("args", "word"),
    [
        ([], "noise_multiplier"),
        (["--noise-multiplier", "1", "--target-epsilon", "2"], "noise_multiplier"),
        (["--non-private", "--noise-multiplier", "1"], "non_private"),
        (["--data", "nope", "--noise-multiplier", "1"], "data"),
        (["--confidence", "1.5", "--noise-multiplier", "1"], "confidence"),
        (["--canary-kind", "dirac", "--noise-multiplier", "1"], "canary_kind"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, word):
    result = CliRunner().invoke(_app(), ["audit", "--epochs", "1", "--canaries", "8", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0]
