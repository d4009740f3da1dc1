"""The root `dpledger` command: light start-up, one error mapping, the same options everywhere."""

from __future__ import annotations

import importlib
import json
import socket
import subprocess
import sys

import click
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from dpledger import cli as root
from dpledger.cli import COMMANDS, cli, load_command
from dpledger.errors import BudgetRefusal, ExitCode, RuntimeFailure, UsageError, exit_code_of

runner = CliRunner()
HEAVY = ("scipy", "numpy", "torch", "fastapi", "sqlalchemy", "httpx", "flwr", "pydantic", "rich")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _every_command() -> list[tuple[str, click.Command]]:
    """(path, command) of every command and subcommand."""
    found = []
    for name in COMMANDS:
        command = load_command(name)
        found.append((name, command))
        if isinstance(command, click.Group):
            found += [(f"{name} {sub}", c) for sub, c in command.commands.items()]
    return found


# --- start-up -----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [[], ["--help"], ["--version"]])
def test_the_root_imports_no_heavy_library(argv):
    script = (
        "import sys\n"
        "from dpledger.cli import cli\n"
        f"try:\n    cli({argv!r}, prog_name='dpledger')\n"
        "except SystemExit:\n    pass\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines()[-1] == "LOADED []", done.stdout
    if argv == ["--help"]:
        assert all(name in done.stdout for name in COMMANDS)


def test_a_command_loads_its_own_module_only():
    script = (
        "import sys\n"
        "from dpledger.cli import cli\n"
        "try:\n    cli(['epsilon', '--help'], prog_name='dpledger')\n"
        "except SystemExit:\n    pass\n"
        "print('LOADED', sorted(m for m in ('torch', 'fastapi', 'sqlalchemy', 'app.cli',"
        " 'dpledger.fl_cli') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines()[-1] == "LOADED []"


def test_the_table_of_commands_is_what_the_modules_register():
    by_module: dict[str, set[str]] = {}
    for name, entry in COMMANDS.items():
        by_module.setdefault(entry.module, set()).add(name)
    for module, names in by_module.items():
        app = typer.Typer()
        importlib.import_module(module).register(app)
        assert set(typer.main.get_group(app).commands) == names, module
    for name, entry in COMMANDS.items():
        assert load_command(name).get_short_help_str(limit=1000) == entry.summary, name


def test_help_is_plain_text_with_its_brackets():
    for path, command in _every_command():
        with click.Context(command, info_name=path) as ctx:
            text = command.get_help(ctx)
        assert "\\[" not in text, path
    statement = runner.invoke(cli, ["statement", "--help"], env={"COLUMNS": "200"}).stdout
    assert "[env var: DPLEDGER_URL]" in statement and "[env var: DPLEDGER_TOKEN]" in statement
    assert "[required]" in runner.invoke(cli, ["epsilon", "--help"]).stdout


def test_a_mistyped_command_is_suggested_once():
    result = runner.invoke(cli, ["epsilom"])
    assert result.exit_code == 2
    assert result.stderr.count("Did you mean 'epsilon'?") == 1


# --- options ------------------------------------------------------------------------------------


def test_every_service_and_token_option_reads_the_environment():
    services, tokens = [], []
    for path, command in _every_command():
        for param in command.params:
            if param.name == "service":
                services.append((path, param.envvar))
            if param.name == "token":
                tokens.append((path, param.envvar))
    assert {path for path, _ in services} == {"statement", "pate", "train", "audit", "fl"}
    assert all(envvar == "DPLEDGER_URL" for _, envvar in services), services
    assert all(envvar == "DPLEDGER_TOKEN" for _, envvar in tokens), tokens


def test_every_delta_defaults_to_the_same_value():
    defaults = {
        path: param.default
        for path, command in _every_command()
        for param in command.params
        if param.name == "delta"
    }
    assert set(defaults) >= {"epsilon", "noise-multiplier", "max-steps", "statement", "pate",
                             "train", "audit", "fl"}  # fmt: skip
    assert set(defaults.values()) == {1e-5}, defaults


def test_epsilon_runs_without_delta():
    args = ["epsilon", "--sample-rate", "0.004", "--steps", "2500", "--noise-multiplier", "1.1"]
    without = runner.invoke(cli, [*args, "--json"])
    given = runner.invoke(cli, [*args, "--delta", "1e-5", "--json"])
    assert without.exit_code == 0, without.output
    assert json.loads(without.stdout) == json.loads(given.stdout)


def test_the_url_from_the_environment_reaches_the_ledger(monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr("time.sleep", lambda _s: None)
    result = runner.invoke(cli, ["statement", "--run", "1"], env={"DPLEDGER_URL": url})
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: the ledger at {url}")


def test_a_url_from_the_environment_alone_leaves_a_local_command_local(tmp_path):
    votes = tmp_path / "votes.npy"
    np.save(votes, np.random.default_rng(0).multinomial(50, [0.8, 0.1, 0.1], size=5))
    env = {"DPLEDGER_URL": f"http://127.0.0.1:{_closed_port()}", "DPLEDGER_TOKEN": "dpl_x"}
    args = ["pate", "--votes", str(votes), "--aggregator", "gnmax", "--noise-multiplier", "5"]
    local = runner.invoke(cli, [*args, "--json"], env=env)
    assert local.exit_code == 0, local.output
    assert "run_id" not in json.loads(local.stdout)  # answered locally, nothing charged
    explicit = runner.invoke(cli, [*args, "--service", env["DPLEDGER_URL"]], env=env)
    assert explicit.exit_code == 2 and "needs --token and --dataset" in explicit.stderr


# --- exit codes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UsageError("bad"), ExitCode.USAGE),
        (BudgetRefusal("refused: budget_exceeded"), ExitCode.REFUSED),
        (RuntimeFailure("engine stopped"), ExitCode.FAILURE),
        (RuntimeError("a bug"), None),
    ],
)
def test_the_hierarchy_maps_to_its_codes(error, code):
    assert exit_code_of(error) == code


def test_client_errors_map_by_what_they_mean():
    from dpledger import client

    assert exit_code_of(client.BudgetExceeded("no", status=409)) == ExitCode.REFUSED
    assert exit_code_of(client.NotFound("no run 7", status=404)) == ExitCode.USAGE
    assert exit_code_of(client.Unreachable("no answer")) == ExitCode.FAILURE
    assert exit_code_of(client.ServerError("boom", status=500)) == ExitCode.FAILURE


# One invalid input per command: exit 2 and one line on stderr, from the one mapping.
USAGE_ERRORS = {
    "epsilon": ["epsilon", "--sample-rate", "2", "--steps", "10", "--noise-multiplier", "1"],
    "noise-multiplier": [
        "noise-multiplier",
        "--target-epsilon",
        "-1",
        "--sample-rate",
        "0.01",
        "--steps",
        "10",
    ],  # fmt: skip
    "max-steps": [
        "max-steps",
        "--target-epsilon",
        "1e-9",
        "--sample-rate",
        "0.5",
        "--noise-multiplier",
        "0.5",
    ],  # fmt: skip
    "statement": ["statement", "--sample-rate", "0.01", "--steps", "10"],
    "pate": [
        "pate",
        "--votes",
        "/nonexistent/votes.npy",
        "--aggregator",
        "gnmax",
        "--noise-multiplier",
        "5",
    ],  # fmt: skip
    "serve": ["serve"],  # DPLEDGER_BOOTSTRAP_TOKEN too weak (set below)
    "data": ["data", "get", "bogus", "--dir", "/nonexistent/data"],
    "train": ["train", "--data", "nowhere:/x", "--epochs", "1", "--noise-multiplier", "1"],
    "audit": [
        "audit",
        "--non-private",
        "--service",
        "http://127.0.0.1:9",
        "--token",
        "t",
        "--dataset",
        "d",
    ],  # fmt: skip
    "fl": [
        "fl",
        "--users",
        "4",
        "--rounds",
        "1",
        "--noise-multiplier",
        "1",
        "--clip",
        "1",
        "--clients-per-round",
        "2",
        "--engine",
        "warp",
    ],  # fmt: skip
    "db": ["db", "upgrade", "no-such-revision"],
    "dataset": [
        "dataset",
        "create",
        "--name",
        "Not A Slug",
        "--target-epsilon",
        "1",
        "--target-delta",
        "1e-5",
    ],  # fmt: skip
    "token": ["token", "create", "--role", "root"],
    "ledger": ["ledger", "export", "--dataset", "nope"],
}


def test_the_usage_table_covers_every_command():
    assert set(USAGE_ERRORS) == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(USAGE_ERRORS))
def test_invalid_input_exits_2_with_one_line(name, tmp_path, monkeypatch):
    from app.settings import get_settings

    monkeypatch.setenv("DPLEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    if name == "serve":
        monkeypatch.setenv("DPLEDGER_BOOTSTRAP_TOKEN", "short")
    if name in ("dataset", "token", "ledger"):
        get_settings.cache_clear()
        assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    get_settings.cache_clear()
    try:
        result = runner.invoke(cli, USAGE_ERRORS[name])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if not line.startswith("database: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_serve_on_a_busy_port_exits_1_with_one_line(tmp_path, monkeypatch):
    from app.settings import get_settings

    monkeypatch.setenv("DPLEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    get_settings.cache_clear()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        try:
            result = runner.invoke(cli, ["serve", "--host", "127.0.0.1", "--port", str(port)])
        finally:
            get_settings.cache_clear()
    assert result.exit_code == 1, result.output  # not 3: that is the budget's refusal
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}: address already in use")


@pytest.mark.parametrize(
    "args",
    [
        ["statement", "--run", "1"],
        [
            "pate",
            "--votes",
            "VOTES",
            "--aggregator",
            "gnmax",
            "--noise-multiplier",
            "5",
            "--dataset",
            "d",
        ],  # fmt: skip
        [
            "train",
            "--data",
            "digits",
            "--epochs",
            "1",
            "--noise-multiplier",
            "1",
            "--dataset",
            "d",
        ],  # fmt: skip
    ],
    ids=["statement", "pate", "train"],
)
def test_an_unreachable_service_exits_1_and_says_it_retries(args, tmp_path, monkeypatch):
    import dp_core.trainer.recipe as recipe

    def must_not_train(*_a, **_k):
        raise AssertionError("train loaded its data before asking the ledger")

    monkeypatch.setattr(recipe, "run_training", must_not_train)
    monkeypatch.setattr("time.sleep", lambda _s: None)
    votes = tmp_path / "votes.npy"
    np.save(votes, np.ones((3, 3)))
    url = f"http://127.0.0.1:{_closed_port()}"
    argv = [str(votes) if a == "VOTES" else a for a in args]
    result = runner.invoke(cli, argv, env={"DPLEDGER_URL": url, "DPLEDGER_TOKEN": "dpl_x"})
    assert result.exit_code == 1, result.output
    *retries, last = result.stderr.strip().splitlines()
    assert last.startswith(f"error: the ledger at {url}") and "unreachable" in last
    if args[0] == "train":  # asked before torch and the data; each retry said on stderr
        assert retries and all(r.startswith(f"dpledger: no answer from the ledger at {url}")
                               for r in retries)  # fmt: skip


def test_the_root_help_documents_the_exit_codes():
    text = runner.invoke(cli, ["--help"]).stdout
    assert "3 refused by the privacy budget" in " ".join(text.split())
    assert root.__doc__ is not None
