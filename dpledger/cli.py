"""Root of the `dpledger` command line.

Composes three groups without importing what they do not need:
accounting commands (here, pure dp_core), service/admin commands (`app.cli.register`),
and `train` (`dp_core.trainer.cli.register`, which imports torch only when it runs).

Errors become exit codes in one place, `dp_core.trainer.exit_codes.one_line_errors`, which the
root group wraps around every command: 2 and one line on stderr for invalid input, 3 when the
privacy budget refused, 1 when the ledger service failed; never a traceback for those.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from dp_core.trainer.exit_codes import one_line_errors


class _Root(TyperGroup):
    """The root group: every subcommand runs inside the one error translation."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click.Context
        with one_line_errors():
            return super().invoke(ctx)


def _http_gate(*, base_url: str, token: str, dataset: str, reservation: str) -> Any:
    """Build the trainer's ledger gate (imported when ``train --service`` runs, not before)."""
    from dpledger.gate import http_gate

    return http_gate(base_url=base_url, token=token, dataset=dataset, reservation=reservation)


def _http_tuning_ledger(*, base_url: str, token: str, dataset: str) -> Any:
    """Build the ledger of ``train --tune --service`` (imported when it runs, not before)."""
    from dpledger.gate import http_tuning_ledger

    return http_tuning_ledger(base_url=base_url, token=token, dataset=dataset)


cli = typer.Typer(
    name="dpledger",
    cls=_Root,
    help="Privacy-budget accounting for DP machine learning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # `train --service` builds its ledger gate with this (dp_core never imports dpledger).
    context_settings={"obj": {"remote_gate": _http_gate, "remote_tuning": _http_tuning_ledger}},
    # Plain click help: rich's option tables cut long option names at 80 columns.
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
    """Privacy-budget accounting for DP machine learning."""


def _register_all() -> None:
    import importlib

    from dpledger import accounting_cli

    accounting_cli.register(cli)
    # Service and trainer commands; each module imports its heavy dependencies only when run.
    for name in (
        "dpledger.statement_cli",
        "dpledger.pate_cli",
        "app.cli",
        "dp_core.trainer.cli",
        "dpledger.audit_cli",
        "dpledger.fl_cli",
        "dpledger.data_cli",
    ):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as missing:
            if missing.name is None or not name.startswith(missing.name):
                raise
            continue
        module.register(cli)


_register_all()


def main() -> None:
    """Console-script entry point."""
    cli()
