"""Root of the `dpledger` command line: it starts at once and loads a command only to run it.

Each command lives in its own module (accounting commands in ``dpledger.accounting_cli``, service
and admin commands in ``app.cli``, ``train`` in ``dp_core.trainer.cli``, ...), which imports
numpy, scipy, torch, httpx, FastAPI or SQLAlchemy as it needs them. This module imports none of
them: ``dpledger --help`` and ``dpledger --version`` read the table :data:`COMMANDS` (name,
module, one-line help) and import only typer; ``dpledger NAME ...`` imports the module of NAME
alone. ``tests/unit/dpledger/test_cli_root.py`` checks the table against the modules.

Every command runs inside :func:`dpledger.errors.one_line_errors`: the one mapping from errors
to exit codes (0 done, 1 service unreachable or failed, 2 invalid input, 3 refused by the privacy
budget), one line on stderr, never a traceback.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, NamedTuple

import click
import typer
import typer.core
from typer.core import TyperGroup

# typer 0.20 escapes the brackets of "[default: ...]" and "[env var: ...]" for rich whenever rich
# is installed, even with rich_markup_mode=None, so plain help showed "\[env var: ...]". The
# command line uses click's plain help everywhere (rich's option tables also cut long option
# names at 80 columns), so it tells typer that rich is absent. The progress bars of `train` and
# `fl` import rich themselves.
typer.core.HAS_RICH = False


class CommandEntry(NamedTuple):
    """A command of the root: the module whose ``register(cli)`` adds it, and its one-line help."""

    module: str
    summary: str


COMMANDS: dict[str, CommandEntry] = {
    "epsilon": CommandEntry(
        "dpledger.accounting_cli",
        "Epsilon spent by DP-SGD: RDP (CKS conversion) and PLD accounting, side by side.",
    ),
    "noise-multiplier": CommandEntry(
        "dpledger.accounting_cli",
        "Smallest noise multiplier (s0 for a decay) whose epsilon stays within the target.",
    ),
    "max-steps": CommandEntry(
        "dpledger.accounting_cli",
        "Largest number of DP-SGD steps whose epsilon stays within the target.",
    ),
    "statement": CommandEntry(
        "dpledger.statement_cli",
        "Privacy statement: example-level (RDP and PLD), once-per-epoch and user-level epsilon.",
    ),
    "pate": CommandEntry(
        "dpledger.pate_cli",
        "Noisy-max labels (PATE) from teacher votes, with data-independent and data-dependent "
        "epsilon.",
    ),
    "serve": CommandEntry(
        "app.cli", "Run the ledger service (applies migrations first; SQLite by default)."
    ),
    "train": CommandEntry(
        "dp_core.trainer.cli",
        "Train with DP-SGD, asking the ledger (or a local budget) before each epoch; print JSON.",
    ),
    "audit": CommandEntry(
        "dpledger.audit_cli",
        "Audit a DP-SGD run in one training run: theoretical epsilon vs empirical lower bound.",
    ),
    "fl": CommandEntry(
        "dpledger.fl_cli",
        "Federated learning with user-level DP (DP-FedAvg on Flower), charged to the ledger.",
    ),
    "db": CommandEntry("app.cli", "Database maintenance."),
    "dataset": CommandEntry("app.cli", "Datasets and their budgets."),
    "token": CommandEntry("app.cli", "API tokens."),
    "ledger": CommandEntry("app.cli", "The append-only ledger."),
    "data": CommandEntry(
        "dpledger.data_cli",
        "Get the real data sets (MNIST, Fashion-MNIST, CIFAR-10), verified by checksum.",
    ),
}

_loaded: dict[str, click.Command] = {}


def load_command(name: str) -> click.Command:
    """Import the module of command ``name`` and return its click command (cached)."""
    if name not in _loaded:
        app = typer.Typer()
        importlib.import_module(COMMANDS[name].module).register(app)
        group = typer.main.get_group(app)
        for command_name, command in group.commands.items():
            _loaded.setdefault(command_name, command)
    return _loaded[name]


class _Root(TyperGroup):
    """The root group: commands load on use, and every one runs inside the one error mapping."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *(name for name in self.commands if name not in COMMANDS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:  # added to this group directly (tests, other roots)
            return self.commands[cmd_name]
        return load_command(cmd_name) if cmd_name in COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(len(name) for name in self.list_commands(ctx))
        rows = [(name, _shorten(entry.summary, limit)) for name, entry in COMMANDS.items()]
        rows += [
            (name, command.get_short_help_str(limit))
            for name, command in self.commands.items()
            if name not in COMMANDS
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        # typer's override appended its "Did you mean" to click's message once per call (twice
        # here): the suggestion is made once, from the table.
        try:
            return click.Group.resolve_command(self, ctx, args)
        except click.UsageError as error:
            matches = difflib.get_close_matches(args[0], COMMANDS) if args else []
            if not matches or "Did you mean" in error.message:
                raise
            suggestions = ", ".join(repr(match) for match in matches)
            message = f"{error.message.rstrip('.')}. Did you mean {suggestions}?"
            raise click.UsageError(message, error.ctx) from None

    def invoke(self, ctx: click.Context) -> Any:
        from dpledger.errors import one_line_errors

        with one_line_errors():
            return super().invoke(ctx)


def _shorten(text: str, limit: int) -> str:
    """``text`` cut at a word to fit ``limit`` characters, as click cuts a command's short help."""
    if len(text) <= limit:
        return text
    return text[: max(limit - 3, 1)].rsplit(" ", 1)[0].rstrip(",;:") + "..."


def _http_gate(*, base_url: str, token: str, dataset: str, reservation: str) -> Any:
    """Build the trainer's ledger gate (imported when ``train --service`` runs, not before)."""
    from dpledger.gate import http_gate

    return http_gate(base_url=base_url, token=token, dataset=dataset, reservation=reservation)


def _probe_ledger(base_url: str) -> None:
    """Check early that the ledger answers (``train --service``, before torch is loaded)."""
    from dpledger.options import probe_ledger

    probe_ledger(base_url)


def _http_tuning_ledger(*, base_url: str, token: str, dataset: str) -> Any:
    """Build the ledger of ``train --tune --service`` (imported when it runs, not before)."""
    from dpledger.gate import http_tuning_ledger

    return http_tuning_ledger(base_url=base_url, token=token, dataset=dataset)


cli = typer.Typer(
    name="dpledger",
    cls=_Root,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # `train --service` builds its ledger gate with this (dp_core never imports dpledger).
    context_settings={
        "obj": {
            "remote_gate": _http_gate,
            "remote_tuning": _http_tuning_ledger,
            "probe_ledger": _probe_ledger,
        }
    },
    rich_markup_mode=None,
)


def package_version() -> str:
    """The installed distribution's version (``0+unknown`` when run from an uninstalled tree)."""
    try:
        return version("dpledger")
    except PackageNotFoundError:
        return "0+unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"dpledger {package_version()}")
        raise typer.Exit()


@cli.callback()
def root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Privacy-budget accounting for DP machine learning.

    The ledger's address and token come from --service and --token, or from the environment
    variables DPLEDGER_URL and DPLEDGER_TOKEN. Exit status: 0 done, 1 the service was
    unreachable or failed, 2 invalid input, 3 refused by the privacy budget.
    """


def main() -> None:
    """Console-script entry point."""
    cli()
