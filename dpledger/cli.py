"""Root of the `dpledger` command line.

Composes three groups without importing what they do not need:
accounting commands (here, pure dp_core), service/admin commands (`app.cli.register`),
and `train` (`dp_core.trainer.cli.register`, which imports torch only when it runs).
"""

from __future__ import annotations

import typer

cli = typer.Typer(
    name="dpledger",
    help="Privacy-budget accounting for DP machine learning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_all() -> None:
    import importlib

    from dpledger import accounting_cli

    accounting_cli.register(cli)
    # Service and trainer commands; each module imports its heavy dependencies only when run.
    for name in ("dpledger.statement_cli", "dpledger.pate_cli", "app.cli", "dp_core.trainer.cli"):
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
