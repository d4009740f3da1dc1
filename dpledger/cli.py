"""Root of the `dpledger` command line.

Composes three groups without importing what they do not need:
accounting commands (here, pure dp_core), service/admin commands (`app.cli.register`),
and `train` (`dp_core.trainer.cli.register`, which imports torch only when it runs).
"""

from __future__ import annotations

from typing import Any

import typer


def _http_gate(*, base_url: str, token: str, dataset: str, reservation: str) -> Any:
    """Build the trainer's ledger gate (imported when ``train --service`` runs, not before)."""
    from dpledger.gate import http_gate

    return http_gate(base_url=base_url, token=token, dataset=dataset, reservation=reservation)


cli = typer.Typer(
    name="dpledger",
    help="Privacy-budget accounting for DP machine learning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # `train --service` builds its ledger gate with this (dp_core never imports dpledger).
    context_settings={"obj": {"remote_gate": _http_gate}},
)


def _register_all() -> None:
    import importlib

    from dpledger import accounting_cli

    accounting_cli.register(cli)
    # Service and trainer commands; each module imports its heavy dependencies only when run.
    for name in ("dpledger.pate_cli", "app.cli", "dp_core.trainer.cli", "dpledger.audit_cli"):
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
