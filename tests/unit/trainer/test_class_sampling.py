"""Per-class Poisson sampling rates: the sampler, the plan it is charged as, and the CLI."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

import dp_core
from dp_core.epochs import steps_per_epoch
from dp_core.errors import InvalidParameterError
from dp_core.schedules import NoiseSchedule
from dp_core.trainer.budget_gate import GateDecision, RunPlan
from dp_core.trainer.class_sampling import (
    ClassSampling,
    class_poisson_batch,
    epsilon_per_class,
    parse_class_sample_rates,
)
from dp_core.trainer.loop import DPTrainer
from dp_core.trainer.sampling import poisson_batch
from dpledger.gate import plan_mechanism

from .test_cli import _app

# --- the sampler -------------------------------------------------------------------------------


def test_each_record_is_included_with_its_class_rate():
    labels = torch.arange(60) % 3  # 20 records per class
    sampling = ClassSampling((0.05, 0.3, 0.8), (20, 20, 20))
    rates = sampling.example_rates(labels)
    gen = torch.Generator().manual_seed(7)
    draws = 3000
    counts = torch.zeros(60)
    for _ in range(draws):
        counts[class_poisson_batch(rates, gen)] += 1
    freq = counts / draws
    for c, q in enumerate(sampling.rates):
        se = math.sqrt(q * (1 - q) / draws)
        # Each record alone within 5 standard errors; the class's pooled rate within 4 of its own.
        assert torch.all((freq[labels == c] - q).abs() < 5 * se), c
        assert abs(float(freq[labels == c].mean()) - q) < 4 * se / math.sqrt(20), c


def test_equal_rates_draw_exactly_the_ordinary_poisson_sample():
    labels = torch.arange(100) % 4
    rates = ClassSampling((0.2,) * 4, (25,) * 4).example_rates(labels)
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(20):
        assert torch.equal(class_poisson_batch(rates, a), poisson_batch(100, 0.2, b))


def test_expected_batch_and_steps_per_epoch_follow_the_one_rule():
    sampling = ClassSampling((0.01, 0.5), (100, 10))
    assert sampling.expected_batch_size == pytest.approx(6.0)
    assert sampling.steps_per_epoch == math.ceil(110 / 6) == steps_per_epoch(6 / 110)
    assert sampling.max_rate == 0.5 and sampling.limiting_classes == (1,)


# --- parsing -----------------------------------------------------------------------------------

LABELS = torch.tensor([0] * 90 + [1] * 10 + [2] * 30)


def test_explicit_rates_parse_in_any_order():
    sampling = parse_class_sample_rates(
        "2:0.1, 0:0.02,1:1", labels=LABELS, num_classes=3, batch_size=999
    )
    assert sampling.rates == (0.02, 1.0, 0.1) and sampling.counts == (90, 10, 30)
    assert not sampling.from_class_counts


def test_balanced_rates_give_each_class_the_same_expected_share():
    sampling = parse_class_sample_rates("balanced", labels=LABELS, num_classes=3, batch_size=15)
    assert sampling.rates == pytest.approx((15 / 270, 15 / 30, 15 / 90))
    assert sampling.from_class_counts
    # Capped at 1: class 1 (10 records) cannot give 20 per step.
    capped = parse_class_sample_rates("balanced", labels=LABELS, num_classes=3, batch_size=60)
    assert capped.rates[1] == 1.0


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("0:0.1,1:0.1,3:0.1", "names class 3"),
        ("0:0.1,1:0.1", "no rate for class(es) 2"),
        ("0:0.1,1:0,2:0.1", "(0, 1]"),
        ("0:0.1,1:1.5,2:0.1", "(0, 1]"),
        ("0:0.1,1:nan,2:0.1", "(0, 1]"),
        ("0:0.1,0:0.2,1:0.1,2:0.1", "twice"),
        ("0=0.1,1=0.1,2=0.1", "CLASS:q"),
        ("a:0.1", "CLASS:q"),
        ("-1:0.1", "CLASS:q"),
    ],
)
def test_invalid_specs_are_refused(spec, words):
    with pytest.raises(InvalidParameterError, match="class_sample_rates") as info:
        parse_class_sample_rates(spec, labels=LABELS, num_classes=3, batch_size=10)
    assert words in str(info.value)


def test_balanced_refuses_a_class_without_records():
    with pytest.raises(InvalidParameterError, match="class 3 has no training records"):
        parse_class_sample_rates("balanced", labels=LABELS, num_classes=4, batch_size=10)


# --- the trainer and what it is charged --------------------------------------------------------


class RecordingGate:
    def __init__(self):
        self.plan = None
        self.charged = []

    def open(self, plan):
        self.plan = plan
        return GateDecision(True, "admitted")

    def before_epoch(self, epoch):
        self.charged.append(self.plan.epoch_mechanism(epoch))
        return GateDecision(True, "charged")

    def finish(self):
        pass

    def state_dict(self):
        return {"kind": "recording"}

    def load_state_dict(self, state):
        pass


def _imbalanced_blobs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.zeros(360, dtype=torch.long), torch.ones(40, dtype=torch.long)])
    x = torch.randn(400, 5, generator=gen) + 2.0 * (2 * y[:, None].float() - 1)
    return TensorDataset(x, y)


def _trainer(rates=(0.05, 0.4), **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    settings = {"loss_fn": F.cross_entropy, "max_grad_norm": 1.0, "epochs": 2,
                "noise_multiplier": 1.0, "noise_seed": 1, "class_sample_rates": rates, **kw}  # fmt: skip
    return DPTrainer(model, torch.optim.SGD(model.parameters(), lr=0.5), _imbalanced_blobs(),
                     **settings)  # fmt: skip


def test_the_run_is_planned_and_charged_at_the_largest_rate():
    gate = RecordingGate()
    trainer = _trainer(gate=gate)
    expected_batch = 0.05 * 360 + 0.4 * 40  # 34
    assert trainer.expected_units == pytest.approx(expected_batch)
    result = trainer.fit()
    assert result.epochs_completed == 2
    plan = gate.plan
    assert plan.sample_rate == 0.4 and plan.class_sample_rates == (0.05, 0.4)
    assert plan.steps_per_epoch == math.ceil(400 / expected_batch) == 12
    assert [m.sample_rate for m in gate.charged] == [0.4, 0.4]
    # What the ledger service is sent: a dp_sgd mechanism at q_max and the run's steps per epoch.
    sent = plan_mechanism(plan)
    assert (sent.sample_rate, sent.steps_per_epoch) == (0.4, 12)
    assert result.epsilon == pytest.approx(
        dp_core.compute_epsilon(
            sample_rate=0.4, noise_multiplier=1.0, steps=24, delta=1e-5
        ).epsilon,
        rel=1e-9,
    )


def test_each_class_has_dp_cores_epsilon_at_its_rate():
    plan = RunPlan(sample_rate=0.3, steps_per_epoch=7, epochs=3,
                   schedule=NoiseSchedule(kind="constant", noise_multiplier=1.2),
                   max_grad_norm=1.0, delta=1e-6, class_sample_rates=(0.01, 0.3, 0.05))  # fmt: skip
    epsilons = epsilon_per_class(plan, 2)
    for q, eps in zip((0.01, 0.3, 0.05), epsilons, strict=True):
        ref = dp_core.compute_epsilon(sample_rate=q, noise_multiplier=1.2, steps=14, delta=1e-6)
        assert eps == pytest.approx(ref.epsilon, rel=1e-9)
    assert max(epsilons) == epsilons[1] == pytest.approx(plan.epsilon(2), rel=1e-12)
    assert epsilons[0] < epsilons[2] < epsilons[1]


def test_the_plan_keeps_its_rates_through_a_checkpoint(tmp_path):
    trainer = _trainer(checkpoint_dir=tmp_path, epochs=1)
    trainer.fit()
    assert RunPlan.from_dict(trainer.plan.to_dict()) == trainer.plan
    other = _trainer(rates=(0.1, 0.4), checkpoint_dir=tmp_path, epochs=1)
    with pytest.raises(InvalidParameterError, match="another plan"):
        other.resume()


def test_a_plan_whose_rate_is_not_the_largest_class_rate_is_refused():
    with pytest.raises(InvalidParameterError, match="largest of class_sample_rates"):
        RunPlan(sample_rate=0.1, steps_per_epoch=3, epochs=1,
                schedule=NoiseSchedule(kind="constant", noise_multiplier=1.0), max_grad_norm=1.0,
                delta=1e-5, class_sample_rates=(0.1, 0.2))  # fmt: skip


@pytest.mark.parametrize(
    ("kw", "word"),
    [
        ({"expected_batch_size": 30}, "expected_batch_size"),
        ({"sample_rate": 0.1}, "sample_rate"),
        ({"user_index": torch.arange(400) // 4}, "user_index"),
        ({"rates": (0.1,)}, "no rate for class 1"),
        ({"rates": (0.1, 0.0)}, "(0, 1]"),
    ],
)
def test_the_trainer_refuses_what_per_class_rates_do_not_combine_with(kw, word):
    with pytest.raises(InvalidParameterError) as info:
        _trainer(**kw)
    assert word in str(info.value)


# --- the CLI -----------------------------------------------------------------------------------

RATES = "0:0.05,1:0.05,2:0.05,3:0.05,4:0.05,5:0.05,6:0.05,7:0.05,8:0.3,9:0.05"


def _run(*args):
    return CliRunner().invoke(_app(), ["train", "--no-progress", "--threads", "1", *args])


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["--class-sample-rates", "0:0.1,1:0.1"], "no rate for class(es) 2, 3"),
        (["--class-sample-rates", RATES.replace("9:0.05", "10:0.05")], "names class 10"),
        (["--class-sample-rates", RATES.replace("8:0.3", "8:1.2")], "(0, 1]"),
        (["--class-sample-rates", RATES, "--batch-size", "64"], "batch_size"),
        (["--class-sample-rates", RATES, "--tune"], "not supported with --tune"),
        (["--class-sample-rates", RATES, "--distributed"], "not supported with --class-sample"),
    ],
)
def test_bad_class_rates_exit_2_with_one_line(args, word):
    result = _run("--epochs", "1", "--noise-multiplier", "1", *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0], lines


def test_cli_reports_per_class_epsilons_and_composes_with_class_weights():
    result = _run("--epochs", "2", "--noise-multiplier", "1.0", "--lr", "2",
                  "--class-sample-rates", RATES, "--class-weights", "balanced")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    rates = summary["class_sample_rates"]
    assert summary["sample_rate"] == 0.3 and rates["limiting_classes"] == [8]
    assert summary["class_weights"] == "balanced" and rates["from_class_counts"] is False
    expected_batch = sum(q * n for q, n in zip(rates["rates"], rates["class_counts"], strict=True))
    assert summary["steps_per_epoch"] == math.ceil(sum(rates["class_counts"]) / expected_batch)
    per_class = summary["epsilon_per_class"]
    assert per_class[8] == max(per_class) == pytest.approx(summary["epsilon_rdp"], rel=1e-12)
    assert all(e < per_class[8] for c, e in enumerate(per_class) if c != 8)
    statement = summary["statement"]
    assert statement["epsilon_per_class"] == per_class and statement["limiting_classes"] == [8]
    assert "set by class(es) 8" in statement["text"] and "DECLARED PUBLIC" not in statement["text"]
    assert summary["test_accuracy"] > 0.3


def test_cli_balanced_rates_declare_the_class_counts_public():
    result = _run("--epochs", "1", "--noise-multiplier", "1.0", "--batch-size", "100",
                  "--class-sample-rates", "balanced")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    rates = summary["class_sample_rates"]
    assert rates["from_class_counts"] is True and "DECLARED PUBLIC" in rates["note"]
    assert rates["expected_batch_size"] == pytest.approx(100.0)
    assert summary["statement"]["class_counts_public"] is True
    assert "DECLARED PUBLIC" in summary["statement"]["text"]


def test_target_epsilon_calibrates_the_guarantee_at_the_largest_rate():
    result = _run("--epochs", "2", "--target-epsilon", "3", "--class-sample-rates", RATES)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["sample_rate"] == 0.3
    assert 2.9 < summary["epsilon"] == max(summary["epsilon_per_class"]) <= 3.0
    # The guarantee is dp_core's epsilon at q_max over the run's steps (not over ceil(1/q_max)).
    ref = dp_core.compute_epsilon(sample_rate=0.3, noise_multiplier=summary["noise_multiplier"],
                                  steps=2 * summary["steps_per_epoch"], delta=1e-5)  # fmt: skip
    assert summary["epsilon"] == pytest.approx(ref.epsilon, rel=1e-9)
