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
    from dpledger import accounting_cli

    accounting_cli.register(cli)
    try:
        from app import cli as service_cli
    except ImportError:  # the service part is optional for a dp_core-only install
        service_cli = None  # type: ignore[assignment]
    if service_cli is not None and hasattr(service_cli, "register"):
        service_cli.register(cli)
    try:
        from dp_core.trainer import cli as trainer_cli
    except ImportError:
        trainer_cli = None  # type: ignore[assignment]
    if trainer_cli is not None and hasattr(trainer_cli, "register"):
        trainer_cli.register(cli)


_register_all()


def main() -> None:
    """Console-script entry point."""
    cli()
