"""The one translation of errors into exit codes (dp_core.trainer.exit_codes) and the root CLI."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest
import typer
from typer.testing import CliRunner

from dp_core.errors import CalibrationError, InvalidParameterError
from dp_core.trainer.errors import LedgerError
from dp_core.trainer.exit_codes import (
    CommandError,
    ExitCode,
    exit_code_of,
    exit_on_error,
    one_line_errors,
)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidParameterError("delta", 2.0, "must be in (0, 1)"), ExitCode.USAGE),
        (CalibrationError("no sigma reaches the target"), ExitCode.USAGE),
        (LedgerError("registering failed: HTTP 404 not_found", status=404), ExitCode.USAGE),
        (LedgerError("HTTP 401 unauthorized", status=401), ExitCode.USAGE),
        (LedgerError("ledger unreachable", status=None), ExitCode.FAILURE),
        (LedgerError("HTTP 503", status=503), ExitCode.FAILURE),
        (CommandError("refused: budget_exceeded", exit_code=ExitCode.REFUSED), ExitCode.REFUSED),
        (FileNotFoundError(2, "No such file or directory", "votes.npy"), ExitCode.USAGE),
        (RuntimeError("a bug"), None),
        (KeyError("x"), None),
    ],
)
def test_exit_code_of(error, code):
    assert exit_code_of(error) == code


def test_known_errors_become_one_line_and_the_code(capsys):
    with pytest.raises(SystemExit) as leaving, one_line_errors():
        raise LedgerError("charging epoch 3 failed:\n HTTP 404 not_found", status=404)
    assert leaving.value.code == 2
    assert capsys.readouterr().err == "error: charging epoch 3 failed: HTTP 404 not_found\n"
    with pytest.raises(SystemExit) as leaving, one_line_errors():
        raise CommandError("refused: budget_exceeded: no", exit_code=ExitCode.REFUSED)
    assert leaving.value.code == 3
    assert capsys.readouterr().err == "refused: budget_exceeded: no\n"


def test_unknown_errors_pass_through():
    with pytest.raises(RuntimeError, match="a bug"), one_line_errors():
        raise RuntimeError("a bug")


def test_a_decorated_command_keeps_its_signature_for_typer():
    app = typer.Typer()
    app.callback()(lambda: None)

    @app.command()
    @exit_on_error
    def calibrate(target_epsilon: float = 1.0) -> None:
        raise InvalidParameterError("target_epsilon", target_epsilon, "must be > 0")

    result = CliRunner().invoke(app, ["calibrate", "--target-epsilon", "-1"])
    assert result.exit_code == 2
    assert result.stderr == "error: invalid target_epsilon=-1: must be > 0\n"


def test_the_root_group_translates_errors_of_every_command():
    from dpledger.cli import _Root

    app = typer.Typer(cls=_Root)
    app.callback()(lambda: None)

    @app.command()
    def plain() -> None:  # no decorator: the root group alone translates
        raise InvalidParameterError("steps", -1, "must be >= 0")

    result = CliRunner().invoke(app, ["plain"])
    assert result.exit_code == 2 and result.stderr == "error: invalid steps=-1: must be >= 0\n"


def test_version():
    done = subprocess.run([sys.executable, "-m", "dpledger", "--version"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert done.stdout == f"dpledger {version('dpledger')}\n"
