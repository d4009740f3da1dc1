"""The accounting CLI: JSON contract and exit code 2 with one line for bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import dp_core
from dpledger.cli import cli

runner = CliRunner()


def run(*args: str):
    return runner.invoke(cli, list(args))


def test_epsilon_json_matches_the_library():
    result = run(
        "epsilon", "--sample-rate", "0.0041666666666666667", "--noise-multiplier", "1.3",
        "--steps", "720", "--delta", "1e-5", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"epsilon", "epsilon_grid", "order", "delta", "steps"}
    expected = dp_core.compute_epsilon(
        sample_rate=1 / 240, noise_multiplier=1.3, steps=720, delta=1e-5
    )
    assert payload["epsilon"] == pytest.approx(expected.epsilon, rel=1e-9)
    assert payload["steps"] == 720


def test_human_output_names_the_numbers():
    result = run(
        "epsilon",
        "--sample-rate",
        "0.01",
        "--noise-multiplier",
        "1.1",
        "--steps",
        "100",
        "--delta",
        "1e-5",
    )
    assert result.exit_code == 0
    assert "epsilon =" in result.stdout


def test_noise_multiplier_and_max_steps_json():
    noise = run(
        "noise-multiplier",
        "--target-epsilon",
        "2",
        "--delta",
        "1e-5",
        "--sample-rate",
        "0.01",
        "--steps",
        "1000",
        "--json",
    )
    assert noise.exit_code == 0, noise.output
    payload = json.loads(noise.stdout)
    assert payload["epsilon"] <= 2.0 and payload["noise_multiplier"] > 0
    steps = run(
        "max-steps", "--target-epsilon", "2", "--delta", "1e-5", "--sample-rate", "0.01",
        "--noise-multiplier", "1.0", "--schedule", "Exp", "--decay-rate", "0.0001", "--json",
    )  # fmt: skip
    assert steps.exit_code == 0, steps.output
    assert json.loads(steps.stdout)["epsilon"] <= 2.0


@pytest.mark.parametrize(
    ("args", "parameter"),
    [
        (["--sample-rate", "1.5", "--noise-multiplier", "1", "--steps", "10", "--delta", "1e-5"], "sample_rate"),
        (["--sample-rate", "0.1", "--noise-multiplier", "0", "--steps", "10", "--delta", "1e-5"], "noise_multiplier"),
        (["--sample-rate", "0.1", "--noise-multiplier", "nan", "--steps", "10", "--delta", "1e-5"], "noise_multiplier"),
        (["--sample-rate", "0.1", "--noise-multiplier", "1", "--steps", "-1", "--delta", "1e-5"], "steps"),
        (["--sample-rate", "0.1", "--noise-multiplier", "1", "--steps", "10", "--delta", "1"], "delta"),
        (["--sample-rate", "0.1", "--noise-multiplier", "1", "--steps", "10", "--delta", "1e-5", "--schedule", "x"], "schedule"),
        (
            ["--sample-rate", "0.1", "--noise-multiplier", "1", "--steps", "10", "--delta", "1e-5",
             "--schedule", "exponential", "--decay-rate", "1000"],
            "decay_rate",
        ),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(args, parameter):
    result = run("epsilon", *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert parameter in lines[0] and "Traceback" not in result.output


def test_python_dash_m_runs_the_same_cli():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "dpledger", "epsilon", "--sample-rate", "0.01",
         "--noise-multiplier", "1.1", "--steps", "100", "--delta", "1e-5", "--json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert '"epsilon"' in out
