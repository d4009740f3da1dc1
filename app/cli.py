"""Service commands of the ``dpledger`` CLI: ``serve``, ``db upgrade``, ``token create``.

Heavy imports (FastAPI, uvicorn, SQLAlchemy) happen inside the commands, so ``dpledger epsilon``
does not pay for them.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

db_cli = typer.Typer(help="Database maintenance.", no_args_is_help=True)
token_cli = typer.Typer(help="API tokens.", no_args_is_help=True)


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: settings).")] = None,
) -> None:
    """Run the ledger service (applies migrations first; SQLite by default)."""
    import uvicorn

    from app.main import create_app
    from app.settings import get_settings

    settings = get_settings()
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level="info",
    )


@db_cli.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply the database migrations (DPLEDGER_DATABASE_URL)."""
    from app.db import upgrade_database
    from app.settings import get_settings

    upgrade_database(get_settings(), revision)
    typer.echo(f"database upgraded to {revision}")


@token_cli.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="admin, trainer or viewer.")],
    dataset: Annotated[
        list[str] | None, typer.Option(help="A dataset a trainer token may charge (repeatable).")
    ] = None,
    name: Annotated[str, typer.Option(help="A label for the token.")] = "cli",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create an API token and print it (the only time it is shown)."""
    from pydantic import ValidationError

    from app.db import create_db_engine, make_session_factory, upgrade_database
    from app.schemas import TokenCreate
    from app.services.tokens import create_token
    from app.settings import get_settings

    try:
        body = TokenCreate(name=name, role=role, datasets=dataset or [])  # type: ignore[arg-type]
    except ValidationError as error:
        first = error.errors()[0]
        typer.echo(f"invalid {'.'.join(map(str, first['loc']))}: {first['msg']}", err=True)
        raise typer.Exit(2) from None
    settings = get_settings()
    upgrade_database(settings)
    engine = create_db_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            created = create_token(session, body, None)
    finally:
        engine.dispose()
    if as_json:
        typer.echo(json.dumps(created.model_dump()))
    else:
        typer.echo(created.token)


def register(cli: typer.Typer) -> None:
    """Add the service commands to the root ``dpledger`` app."""
    cli.command("serve")(serve)
    cli.add_typer(db_cli, name="db")
    cli.add_typer(token_cli, name="token")
