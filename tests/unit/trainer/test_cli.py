import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

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


def test_local_budget_stops_the_run_and_says_why(tmp_path):
    result = _run("--no-progress", "--epochs", "20", "--noise-multiplier", "0.8", "--budget-epsilon", "1.0",
                  "--checkpoint-dir", str(tmp_path), "--threads", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["epochs_completed"] < 20 and summary["stop_reason"].startswith(
        "refused: budget_exceeded"
    )
    assert summary["epsilon"] <= 1.0


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
