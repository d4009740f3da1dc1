"""`dpledger pate`: JSON contract, labels file, exit code 2 with one line; the digits example."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dp_core import GNMaxQueries, LNMaxQueries, aggregate_votes, analyze_votes
from dp_core.mechanisms import mechanism_from_dict
from dpledger.cli import cli

ROOT = Path(__file__).resolve().parents[3]
runner = CliRunner()


def run(*args: str):
    return runner.invoke(cli, [str(a) for a in args])


@pytest.fixture
def votes_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    votes = rng.integers(0, 6, size=(50, 10))
    votes[:, 2] = 150
    path = tmp_path / "votes.npy"
    np.save(path, votes)
    return path


def test_json_report_matches_the_library_and_labels_are_written(votes_file, tmp_path):
    out = tmp_path / "labels.npy"
    result = run(
        "pate", "--votes", votes_file, "--aggregator", "gnmax", "--noise-multiplier", "40",
        "--delta", "1e-5", "--seed", "5", "--reproducible-noise", "--out", out, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    votes = np.load(votes_file)
    expected = analyze_votes(
        votes, GNMaxQueries(noise_multiplier=40.0, queries=50), delta=1e-5, warn=False
    )
    assert payload["epsilon_data_independent"] == pytest.approx(expected.epsilon_data_independent)
    assert payload["epsilon_data_dependent"] == pytest.approx(expected.epsilon_data_dependent)
    assert payload["epsilon_data_dependent"] < payload["epsilon_data_independent"]
    assert mechanism_from_dict(payload["mechanism"]) == GNMaxQueries(
        noise_multiplier=40.0, queries=50
    )
    assert payload["labels_path"] == str(out.resolve()) and payload["seed"] == 5
    labels = np.load(out)
    assert np.array_equal(
        labels, aggregate_votes(votes, GNMaxQueries(noise_multiplier=40.0, queries=50), seed=5)
    )
    assert payload["agreement_with_plurality"] == pytest.approx(np.mean(labels == 2))


def test_predictions_and_human_output(tmp_path):
    predictions = np.random.default_rng(1).integers(0, 3, size=(30, 12))
    path = tmp_path / "preds.npy"
    np.save(path, predictions)
    result = run(
        "pate", "--predictions", path, "--num-classes", "4", "--aggregator", "lnmax",
        "--noise-multiplier", "5", "--delta", "1e-6",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    default_out = tmp_path / "preds.labels.npy"
    assert str(default_out.resolve()) in result.stdout
    assert "epsilon_data_independent =" in result.stdout
    assert "epsilon_data_dependent =" in result.stdout
    assert np.load(default_out).shape == (12,)
    again = run(
        "pate", "--predictions", path, "--num-classes", "4", "--aggregator", "lnmax",
        "--noise-multiplier", "5", "--delta", "1e-6", "--json", "--seed", "1", "--reproducible-noise",
    )  # fmt: skip
    payload = json.loads(again.stdout)
    assert payload["classes"] == 4 and payload["queries"] == 12
    assert mechanism_from_dict(payload["mechanism"]) == LNMaxQueries(noise_scale=5.0, queries=12)


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "one_d": np.arange(5),
        "negative": np.array([[3, -1], [2, 2]]),
        "one_class": np.array([[3], [2]]),
        "fractional": np.array([[1.5, 2.0]]),
    }
    paths = {}
    for name, array in files.items():
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], array)
    paths["text"] = tmp_path / "text.npy"
    paths["text"].write_text("not an array")
    paths["pickled"] = tmp_path / "pickled.npy"
    np.save(paths["pickled"], np.array([{"a": 1}], dtype=object), allow_pickle=True)
    paths["npz"] = tmp_path / "arrays.npz"
    np.savez(paths["npz"], a=np.ones((2, 2)))
    paths["empty"] = tmp_path / "empty.npy"
    paths["empty"].write_bytes(b"")
    return paths


@pytest.mark.parametrize(
    ("args", "parameter"),
    [
        (["--votes", "{missing}"], "votes"),
        (["--votes", "{one_d}"], "votes"),
        (["--votes", "{negative}"], "votes"),
        (["--votes", "{one_class}"], "votes"),
        (["--votes", "{fractional}"], "votes"),
        (["--votes", "{text}"], "votes"),
        (["--votes", "{pickled}"], "votes"),
        (["--votes", "{npz}"], "votes"),
        (["--votes", "{empty}"], "votes"),
        (["--predictions", "{negative}"], "predictions"),
        (["--predictions", "{good}", "--num-classes", "2"], "predictions"),
        (["--votes", "{good}", "--predictions", "{good}"], "--predictions"),
        ([], "--predictions"),
        (["--votes", "{good}", "--noise-multiplier", "0"], "noise_multiplier"),
        (["--votes", "{good}", "--noise-multiplier", "nan"], "noise_multiplier"),
        (["--votes", "{good}", "--noise-multiplier", "-3"], "noise_multiplier"),
        (["--votes", "{good}", "--aggregator", "softmax"], "aggregator"),
        (["--votes", "{good}", "--delta", "1"], "delta"),
        (["--votes", "{good}", "--seed", "-4", "--reproducible-noise"], "seed"),
        (["--votes", "{good}", "--seed", "4"], "reproducible-noise"),
        (["--votes", "{good}", "--num-classes", "7"], "num_classes"),
        (["--votes", "{good}", "--out", "{missing_dir}/labels.npy"], "out"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, parameter):
    paths = {k: str(v) for k, v in _bad_files(tmp_path).items()}
    good = tmp_path / "good.npy"
    np.save(good, np.array([[5, 1, 0], [0, 2, 7]]))
    paths.update(good=str(good), missing=str(tmp_path / "missing.npy"))
    paths["missing_dir"] = str(tmp_path / "no" / "such" / "dir")
    options = {"--aggregator": "gnmax", "--noise-multiplier": "4", "--delta": "1e-5"}
    filled = [a.format(**paths) for a in args]
    for flag, value in options.items():
        if flag not in filled:
            filled += [flag, value]
    before = set(tmp_path.rglob("*"))
    result = run("pate", *filled)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert parameter in lines[0] and "Traceback" not in result.output
    assert set(tmp_path.rglob("*")) == before


def _example():
    spec = importlib.util.spec_from_file_location(
        "pate_digits", ROOT / "examples" / "pate_digits.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_example_runs_small(capsys):
    result = _example().main(["--teachers", "10", "--queries", "40", "--noise-multiplier", "2"])
    assert result["queries"] == 40 and result["teachers"] == 10
    assert 0.5 < result["student_test_accuracy"] <= 1.0
    assert 0.0 < result["epsilon_data_dependent"] <= result["epsilon_data_independent"]
    assert "epsilon_data_independent" in capsys.readouterr().out
