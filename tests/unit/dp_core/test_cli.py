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
    assert set(payload) == {
        "epsilon", "epsilon_rdp", "epsilon_pld", "epsilon_grid", "order", "delta", "steps",
        "sample_rate",
    }  # fmt: skip
    expected = dp_core.compute_epsilon(
        sample_rate=1 / 240, noise_multiplier=1.3, steps=720, delta=1e-5
    )
    assert payload["epsilon"] == payload["epsilon_rdp"]  # `epsilon` stays the RDP value
    assert payload["epsilon_rdp"] == pytest.approx(expected.epsilon, rel=1e-9)
    pld = dp_core.compute_epsilon_pld(
        sample_rate=1 / 240, noise_multiplier=1.3, steps=720, delta=1e-5
    )
    assert payload["epsilon_pld"] == pytest.approx(pld.epsilon, rel=1e-9)
    assert payload["epsilon_pld"] < payload["epsilon_rdp"]
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
    assert "epsilon_rdp =" in result.stdout and "epsilon_pld =" in result.stdout


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


def test_tf_privacy_form_derives_sample_rate_and_steps():
    result = run(
        "epsilon", "--dataset-size", "60000", "--batch-size", "256", "--epochs", "3",
        "--noise-multiplier", "1.1", "--delta", "1e-5", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["sample_rate"] == 256 / 60000
    assert payload["steps_per_epoch"] == 235 and payload["steps"] == 3 * 235
    direct = run(
        "epsilon", "--sample-rate", repr(256 / 60000), "--steps", "705",
        "--noise-multiplier", "1.1", "--delta", "1e-5", "--json",
    )  # fmt: skip
    assert json.loads(direct.stdout)["epsilon_rdp"] == payload["epsilon_rdp"]
    human = run(
        "epsilon", "-N", "60000", "-B", "256", "-E", "3", "--noise-multiplier", "1.1",
        "--delta", "1e-5",
    )  # fmt: skip
    assert "steps = 705 (235 steps per epoch)" in human.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--dataset-size", "100", "--batch-size", "10"],  # no epochs
        ["--dataset-size", "100", "--batch-size", "10", "--epochs", "1", "--steps", "5"],
        ["--dataset-size", "10", "--batch-size", "100", "--epochs", "1"],
        ["--steps", "5"],  # no sample rate
    ],
)
def test_incomplete_sampling_exits_2(args):
    result = run("epsilon", *args, "--noise-multiplier", "1", "--delta", "1e-5")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_orders_option_replaces_the_grid():
    base = ["epsilon", "--sample-rate", "0.01", "--noise-multiplier", "5", "--steps", "100",
            "--delta", "1e-5", "--json"]  # fmt: skip
    narrow = run(*base, "--orders", "2,4,8")
    assert narrow.exit_code == 0, narrow.output
    assert "--orders" in narrow.stderr  # the grid-edge warning names the option
    wide = run(*base, "--orders", "2,4,8,16,32,64,128,256,512")
    assert json.loads(wide.stdout)["epsilon"] < json.loads(narrow.stdout)["epsilon"]
    bad = run(*base, "--orders", "2,x")
    assert bad.exit_code == 2 and "orders" in bad.stderr


def test_unreachable_max_steps_exits_2():
    result = run(
        "max-steps", "--target-epsilon", "0.01", "--delta", "1e-5", "--sample-rate", "0.5",
        "--noise-multiplier", "0.5",
    )  # fmt: skip
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0]


def test_statement_json_equals_the_library():
    args = ["--sample-rate", "0.01", "--steps", "300", "--noise-multiplier", "1.1",
            "--delta", "1e-5", "--records-per-user", "2"]  # fmt: skip
    result = run("statement", *args, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    expected = dp_core.build_privacy_statement(
        sample_rate=0.01, steps=300, delta=1e-5,
        schedule=dp_core.NoiseSchedule(kind="constant", noise_multiplier=1.1), records_per_user=2,
    )  # fmt: skip
    assert payload["epsilon_rdp"] == expected.epsilon_rdp
    assert payload["epsilon_pld"] == expected.epsilon_pld
    assert payload["user"]["epsilon"] == expected.user.epsilon
    assert payload["text"] == dp_core.render_privacy_statement(expected)
    human = run("statement", *args)
    assert human.stdout.strip() == payload["text"]
    assert "Renyi order" in human.stdout and "once per epoch" in human.stdout
