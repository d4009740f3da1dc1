import json
import os
import re
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

import dp_core
from dp_core.trainer.cli import register

from .test_data import write_mnist


def _app():
    app = typer.Typer()

    @app.callback()
    def root():
        pass

    register(app)
    return app


def _run(*args):
    return CliRunner().invoke(_app(), ["train", *args])


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, dp_core.trainer.cli, dp_core.trainer; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


SERVICE = ["--service", "http://x", "--token", "t", "--dataset", "d"]


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["--data", "cifar", "--noise-multiplier", "1"], "data"),
        (["--noise-multiplier", "1", "--target-epsilon", "2"], "noise_multiplier"),
        ([], "noise_multiplier"),
        (["--model", "cnn", "--noise-multiplier", "1"], "28x28"),
        (["--optimizer", "rmsprop", "--noise-multiplier", "1"], "optimizer"),
        (["--schedule", "cubic", "--noise-multiplier", "1"], "schedule"),
        (["--noise-multiplier", "-1"], "noise_multiplier"),
        (["--max-grad-norm", "0", "--noise-multiplier", "1"], "max_grad_norm"),
        (["--service", "http://x", "--noise-multiplier", "1"], "token"),
        ([*SERVICE, "--reserve", "x", "--noise-multiplier", "1"], "reservation"),
        (["--batch-size", "5000", "--noise-multiplier", "1"], "sample_rate"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, word):
    result = _run("--no-progress", "--epochs", "1", *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0]


def test_train_digits_prints_a_json_summary_and_resumes(tmp_path):
    args = ["--epochs", "2", "--noise-multiplier", "1.0", "--budget-epsilon", "50", "--lr", "2",
            "--checkpoint-dir", str(tmp_path), "--threads", "1"]  # fmt: skip
    result = _run(*args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["epochs_completed"] == 2 and summary["stop_reason"] == "completed"
    assert summary["engine"] == "bookkeeping" and 0 < summary["epsilon"] < 50
    assert summary["test_accuracy"] > 0.3
    assert summary["checkpoint_path"] == str(tmp_path / "checkpoint.pt")
    again = json.loads(_run(*args).stdout.strip().splitlines()[-1])
    assert again["epochs_completed"] == 2 and again["test_accuracy"] == summary["test_accuracy"]


def _one_stderr_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_run_refused_up_front_exits_3_with_one_line_and_no_accuracy(tmp_path):
    result = _run("--progress", "--epochs", "20", "--noise-multiplier", "0.8", "--budget-epsilon", "1.0",
                  "--checkpoint-dir", str(tmp_path), "--threads", "1")  # fmt: skip
    assert result.exit_code == 3, result.output
    line = _one_stderr_line(result)  # and no progress bar: no epoch was charged
    assert line.startswith("refused: budget_exceeded") and "trained 0 of 20 planned epochs" in line
    summary = json.loads(result.stdout)
    assert summary["epochs_completed"] == 0 and summary["stop_reason"] == line.split(" (trained")[0]
    assert summary["test_accuracy"] is None and summary["test_loss"] is None
    assert summary["epsilon"] == 0.0


def test_a_run_stopped_by_the_budget_exits_3_and_reports_what_ran(tmp_path):
    # q = 0.178, 6 steps/epoch, sigma 2: epsilon 1.35, 1.77, 2.11 after 1, 2, 3 epochs.
    result = _run("--no-progress", "--epochs", "20", "--noise-multiplier", "2", "--budget-epsilon", "2",
                  "--lr", "2", "--checkpoint-dir", str(tmp_path), "--threads", "1")  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "trained 2 of 20 planned epochs" in _one_stderr_line(result)
    summary = json.loads(result.stdout)
    assert summary["epochs_completed"] == 2 and summary["stop_reason"].startswith(
        "refused: budget_exceeded"
    )
    assert summary["epsilon"] <= 2.0 and summary["test_accuracy"] > 0.3


def test_the_progress_bar_counts_epochs_from_1_over_each_epochs_steps(tmp_path):
    result = _run("--progress", "--epochs", "2", "--noise-multiplier", "1.0", "--threads", "1",
                  "--run-name", "my-run")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    steps = summary["steps_per_epoch"]
    bars = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in bars] == ["1/2", "2/2"]
    assert all(f"{steps}/{steps}" in line for line in bars)
    assert summary["run_name"] == "my-run"


def test_no_bar_by_default_when_stderr_is_not_a_terminal():
    result = _run("--epochs", "1", "--noise-multiplier", "1.0", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert re.fullmatch(r"dpledger-train-digits-\d{8}-\d{6}", json.loads(result.stdout)["run_name"])


def test_bad_input_draws_no_bar():
    result = _run("--progress", "--epochs", "1", "--noise-multiplier", "-1")
    assert result.exit_code == 2
    assert _one_stderr_line(result).startswith("error: invalid noise_multiplier")


def test_help_fits_80_columns_with_every_option_name_whole():
    # A real process (not CliRunner, which turns rich's help formatting off), as a user runs it.
    env = {**os.environ, "COLUMNS": "80", "TERM": "xterm"}
    done = subprocess.run([sys.executable, "-m", "dpledger", "train", "--help"], env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
    for option in ("--max-physical-batch-size", "--adaptive-quantile", "--noise-multiplier",
                   "--run-name", "--no-progress", "--no-distributed", "--budget-epsilon"):  # fmt: skip
        assert option in done.stdout, option
    assert "…" not in done.stdout


def test_train_cnn_on_mnist_idx_files(tmp_path):
    write_mnist(tmp_path)
    result = _run("--no-progress", "--data", f"mnist:{tmp_path}", "--model", "cnn", "--epochs", "1",
                  "--batch-size", "32", "--noise-multiplier", "1.0", "--optimizer", "adam", "--lr", "0.01",
                  "--threads", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["epochs_completed"] == 1 and summary["steps_per_epoch"] == 2


def test_target_epsilon_is_calibrated_and_never_overshot():
    result = _run(
        "--no-progress",
        "--epochs",
        "2",
        "--target-epsilon",
        "2.0",
        "--threads",
        "1",
        "--adaptive-quantile",
        "0.5",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["stop_reason"] == "completed" and summary["epochs_completed"] == 2
    assert summary["noise_multiplier"] > 0 and 1.9 < summary["epsilon"] <= 2.0


def test_the_summary_holds_the_statement_and_prints_it_on_request():
    result = _run("--epochs", "1", "--noise-multiplier", "1.0", "--threads", "1", "--statement")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    statement = summary["statement"]
    expected = dp_core.build_privacy_statement(
        sample_rate=summary["sample_rate"],
        steps=summary["steps_per_epoch"],
        delta=summary["delta"],
        schedule=dp_core.NoiseSchedule(kind="constant", noise_multiplier=1.0),
    )
    assert statement["epsilon_pld"] == summary["epsilon_pld"] == expected.epsilon_pld
    assert summary["epsilon_rdp"] == pytest.approx(expected.epsilon_rdp, rel=1e-6)
    assert summary["epsilon_pld"] < summary["epsilon_rdp"] == summary["epsilon"]
    assert result.stderr.strip() == statement["text"] == dp_core.render_privacy_statement(expected)


def test_same_settings_and_seed_twice_release_different_models_unless_reproducible(tmp_path):
    """--seed fixes the public split and initial model only; noise and sampling stay secret."""
    common = ["--epochs", "1", "--noise-multiplier", "1.0", "--lr", "2", "--threads", "1",
              "--seed", "3", "--no-progress", "--no-statement"]  # fmt: skip

    def train(name, *extra):
        result = _run(*common, "--checkpoint-dir", str(tmp_path / name), *extra)
        assert result.exit_code == 0, result.output
        import torch

        state = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
        params = torch.cat([t.reshape(-1).double() for t in state["model"].values()])
        return params, json.loads(result.stdout.strip().splitlines()[-1]), result.stderr

    a, summary, stderr = train("a")
    b, _, _ = train("b")
    assert float((a - b).abs().max()) > 1e-4
    assert summary["reproducible_noise"] is False and summary["secure_noise"] is True
    assert "WARNING" not in stderr
    c, summary, stderr = train("c", "--reproducible-noise")
    d, _, _ = train("d", "--reproducible-noise")
    assert bool((c == d).all())
    assert summary["reproducible_noise"] is True and summary["statement"]["reproducible_noise"]
    assert "does NOT hold against anyone who knows the seed" in stderr
    assert "does not hold against anyone who knows the seed" in summary["statement"]["text"]
