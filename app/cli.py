"""Service and admin commands of the ``dpledger`` CLI.

``serve``, ``db upgrade``, ``dataset create|list``, ``token create|list|revoke`` and
``ledger export``. They work on the database of ``DPLEDGER_DATABASE_URL`` directly (whoever can
run them can read that database anyway) and go through the same services, hence the same
validation, as the API. Bad input or an unknown name: one line on stderr, exit code 2, nothing
written.

Each admin command names the database it used (a ``database: ...`` line on stderr, or in its error
line) and never creates one: only ``serve`` and ``db upgrade`` do, so a command run with another
working directory or environment cannot silently start an empty ledger.

Heavy imports (FastAPI, uvicorn, SQLAlchemy) happen inside the commands, so ``dpledger epsilon``
does not pay for them.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.auth import Principal
    from app.settings import Settings

db_cli = typer.Typer(help="Database maintenance.", no_args_is_help=True)
token_cli = typer.Typer(help="API tokens.", no_args_is_help=True)
dataset_cli = typer.Typer(help="Datasets and their budgets.", no_args_is_help=True)
ledger_cli = typer.Typer(help="The append-only ledger.", no_args_is_help=True)

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


#: The database the current command opened (named in its error line, if it fails).
_database_in_use: list[str] = []


class AdminCommandError(Exception):
    """An admin command's failure, printed as one line; ``dpledger.errors`` maps it to its status.

    Attributes:
        exit_code: 2 for invalid input (the default), 1 for a failure at run time.
    """

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        self.exit_code = exit_code
        super().__init__(message)


def _fail(message: str) -> NoReturn:
    where = f" (database {_database_in_use[-1]})" if _database_in_use else ""
    raise AdminCommandError(f"error: {message}{where}")


def _check_port_free(host: str, port: int) -> None:
    """Fail (exit 1, one line) when ``host:port`` cannot be bound, before the app starts.

    uvicorn would log the bind error and exit 3, the code of a budget refusal.
    """
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as error:
            reason = error.strerror or str(error)
            raise AdminCommandError(
                f"error: cannot listen on {host}:{port}: {reason.lower()}"
                " (choose another with --port or DPLEDGER_PORT)",
                exit_code=1,
            ) from None


def _say_database() -> None:
    if _database_in_use:
        typer.echo(f"database: {_database_in_use[-1]}", err=True)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn invalid input, domain and database errors into one line on stderr and exit code 2."""
    from alembic.util.exc import CommandError as MigrationError
    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError

    from app.errors import AppError

    _database_in_use.clear()
    try:
        yield
    except ValidationError as error:
        first = error.errors()[0]
        _fail(f"invalid {'.'.join(map(str, first['loc']))}: {first['msg']}")
    except AppError as error:
        _fail(f"{error.code}: {error.message}")
    except SQLAlchemyError as error:
        cause = getattr(error, "orig", None) or error
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        _fail(f"database: {detail}")
    except MigrationError as error:  # e.g. an unknown revision for `db upgrade`
        _fail(f"migrations: {' '.join(str(error).split())}")


@contextmanager
def _session() -> Iterator[Session]:
    """Open a session on the configured, existing database, migrated to the latest revision.

    Refuses (exit code 2) when there is no dpledger database there yet; names it on stderr after
    the command succeeded.
    """
    from app.db import (
        create_db_engine,
        database_exists,
        display_url,
        make_session_factory,
        upgrade_database,
    )
    from app.settings import get_settings

    settings = get_settings()
    _database_in_use.append(display_url(settings.database_url))
    if not database_exists(settings):
        _fail(
            "no dpledger database here: start the service (dpledger serve) or create it with"
            " dpledger db upgrade, or set DPLEDGER_DATABASE_URL"
        )
    upgrade_database(settings)
    engine = create_db_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()
    _say_database()


def _cli_principal() -> Principal:
    """The local operator: an admin (ledger entries and datasets name it ``admin:cli``)."""
    from app.auth import Principal
    from app.schemas import Role

    return Principal(token_id=0, name="cli", role=Role.admin, datasets=frozenset())


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


# --- serve, db --------------------------------------------------------------------------------


def _load_settings() -> Settings:
    """Return the settings, or exit 2 with one line naming the first bad ``DPLEDGER_*`` value."""
    from pydantic import ValidationError

    from app.settings import get_settings

    try:
        return get_settings()
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(map(str, first["loc"]))
        _fail(f"invalid DPLEDGER_{field.upper()}: {first['msg']}")


def _require_current_schema(settings: Settings) -> None:
    """Exit 2 with one line when the database's schema is behind (migrations are off)."""
    from app.db import create_db_engine, schema_problem, with_database_retries

    engine = create_db_engine(settings)
    try:
        problem = with_database_retries(lambda: schema_problem(engine, settings), settings=settings)
    finally:
        engine.dispose()
    if problem is not None:
        _fail(problem)


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: settings).")] = None,
) -> None:
    """Run the ledger service (applies migrations first; SQLite by default).

    Logs go to stderr, one JSON object per line (DPLEDGER_LOG_FORMAT, DPLEDGER_LOG_LEVEL).
    """
    import logging

    import uvicorn

    from app.db import display_url
    from app.http_protocol import protocol_with_header_timeout
    from app.logging_config import configure_logging, log_fields
    from app.main import create_app

    settings = _load_settings()
    configure_logging(settings)
    if not settings.migrate_on_start:
        _require_current_schema(settings)
    bind_host, bind_port = host or settings.host, port or settings.port
    _check_port_free(bind_host, bind_port)
    base = f"http://{'127.0.0.1' if bind_host in ('0.0.0.0', '::') else bind_host}:{bind_port}"
    database = display_url(settings.database_url)
    logging.getLogger("dpledger").info(
        "dpledger %s: dashboard %s/dashboard, API docs %s/docs; database %s",
        base,
        base,
        base,
        database,
        extra=log_fields(event="start", url=base, database=database),
    )
    uvicorn.run(
        create_app(settings),
        host=bind_host,
        port=bind_port,
        log_config=None,  # keep the handler configure_logging installed on the root logger
        log_level=settings.log_level.lower(),
        access_log=False,  # the request middleware logs each request, with its id and latency
        http=protocol_with_header_timeout(settings.header_timeout_s),
        timeout_keep_alive=int(math.ceil(settings.keep_alive_timeout_s)),
    )


@db_cli.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply the database migrations (DPLEDGER_DATABASE_URL); creates the database if needed."""
    from app.db import display_url, upgrade_database

    settings = _load_settings()
    with _one_line_errors():
        _database_in_use.append(display_url(settings.database_url))
        upgrade_database(settings, revision)
    typer.echo(f"database {_database_in_use[-1]} upgraded to {revision}")


# --- datasets ---------------------------------------------------------------------------------


@dataset_cli.command("create")
def dataset_create(
    name: Annotated[str, typer.Option(help="Dataset name (lowercase letters, digits, - and _).")],
    target_epsilon: Annotated[float, typer.Option(help="The dataset's total epsilon.")],
    target_delta: Annotated[float, typer.Option(help="The dataset's total delta, in (0, 1).")],
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    approx_dp_epsilon: Annotated[
        float,
        typer.Option(help="Part of the epsilon set aside for black-box (epsilon, delta) releases."),
    ] = 0.0,
    approx_dp_delta: Annotated[
        float, typer.Option(help="Part of the delta set aside for black-box releases.")
    ] = 0.0,
    as_json: AsJson = False,
) -> None:
    """Create a dataset with its budget (the default grid of orders, uniform weights)."""
    from app.schemas import DatasetCreate
    from app.services.datasets import create_dataset

    with _one_line_errors():
        body = DatasetCreate(
            name=name,
            description=description,
            target_epsilon=target_epsilon,
            target_delta=target_delta,
            approx_dp_epsilon=approx_dp_epsilon,
            approx_dp_delta=approx_dp_delta,
        )
        with _session() as session:
            created = create_dataset(session, body, _cli_principal())
    if as_json:
        typer.echo(created.model_dump_json())
    else:
        typer.echo(
            f"created dataset {created.name} (epsilon {created.target_epsilon:g},"
            f" delta {created.target_delta:g}, {len(created.orders)} orders)"
        )


def _all_datasets(session: Session) -> list[dict[str, Any]]:
    from app.schemas import DatasetRead
    from app.services.budgets import summarize_budgets
    from app.services.datasets import list_datasets

    principal, page = _cli_principal(), 1000
    items: list[DatasetRead] = []
    while True:
        listed = list_datasets(session, principal, limit=page, offset=len(items))
        items.extend(listed.items)
        if len(items) >= listed.total or not listed.items:
            break
    budgets = {summary.dataset: summary for summary in summarize_budgets(session)}
    rows = []
    for dataset in items:
        row = dataset.model_dump(mode="json", exclude={"orders", "weights"})
        budget = budgets.get(dataset.name)
        for key in ("epsilon_spent", "epsilon_reserved", "epsilon_remaining"):
            value = None if budget is None else getattr(budget, key)
            row[key] = value if value is not None and math.isfinite(value) else None
        rows.append(row)
    return rows


@dataset_cli.command("list")
def dataset_list(as_json: AsJson = False) -> None:
    """List the datasets with their budgets (epsilons as the admission filter sees them)."""
    with _one_line_errors(), _session() as session:
        rows = _all_datasets(session)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    header = ["name", "target_epsilon", "target_delta", "spent", "reserved", "remaining"]
    cells = [
        [
            row["name"],
            _number(row["target_epsilon"]),
            _number(row["target_delta"]),
            _number(row["epsilon_spent"]),
            _number(row["epsilon_reserved"]),
            _number(row["epsilon_remaining"]),
        ]
        for row in rows
    ]
    typer.echo(_table(cells, header))


# --- tokens -----------------------------------------------------------------------------------


@token_cli.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="admin, trainer or viewer.")],
    dataset: Annotated[
        list[str] | None, typer.Option(help="A dataset a trainer token may charge (repeatable).")
    ] = None,
    name: Annotated[str, typer.Option(help="A label for the token.")] = "cli",
    as_json: AsJson = False,
) -> None:
    """Create an API token and print it (the only time it is shown)."""
    from app.schemas import TokenCreate
    from app.services.tokens import create_token

    with _one_line_errors():
        body = TokenCreate(name=name, role=role, datasets=dataset or [])  # type: ignore[arg-type]
        with _session() as session:
            created = create_token(session, body, None)
    if as_json:
        typer.echo(json.dumps(created.model_dump()))
    else:
        typer.echo(created.token)


@token_cli.command("list")
def token_list(as_json: AsJson = False) -> None:
    """List the tokens, revoked ones too (never the secrets, which are not stored).

    Names are printed with control characters escaped, so a name cannot drive the terminal.
    """
    from app.services.tokens import list_tokens
    from app.text import printable

    with _one_line_errors(), _session() as session:
        tokens = list_tokens(session)
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "id": t.id,
                        "name": t.name,
                        "role": t.role.value,
                        "datasets": t.datasets,
                        "created_at": t.created_at.isoformat(),
                        "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
                    }
                    for t in tokens
                ]
            )  # ensure_ascii: every control character is escaped
        )
        return
    cells = [
        [
            str(t.id),
            printable(t.name),
            t.role.value,
            printable(",".join(t.datasets)) or "-",
            t.created_at.isoformat(),
            t.revoked_at.isoformat() if t.revoked_at else "-",
        ]
        for t in tokens
    ]
    typer.echo(_table(cells, ["id", "name", "role", "datasets", "created_at", "revoked_at"]))


@token_cli.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(metavar="ID", help="The token's id (token list).")],
) -> None:
    """Revoke a token: every replica refuses it from its next request on, for good."""
    from app.services.tokens import BOOTSTRAP_NAME, revoke_token
    from app.text import printable

    with _one_line_errors(), _session() as session:
        revoked = revoke_token(session, token_id)
    typer.echo(f"revoked token {revoked.id} ({printable(revoked.name)}, {revoked.role.value})")
    if revoked.name == BOOTSTRAP_NAME:
        typer.echo(
            "note: DPLEDGER_BOOTSTRAP_TOKEN stays revoked (also after restarts); set a new one",
            err=True,
        )


# --- ledger -----------------------------------------------------------------------------------


@contextmanager
def _atomic_output(output: Path | None) -> Iterator[Any]:
    """Yield a text stream: stdout, or a temporary file renamed to ``output`` only on success."""
    if output is None:
        yield sys.stdout
        return
    target = output.expanduser().resolve()
    if not target.parent.is_dir():
        _fail(f"invalid output: directory {str(target.parent)!r} does not exist")
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            yield stream
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@ledger_cli.command("export")
def ledger_export(
    dataset: Annotated[str, typer.Option(help="The dataset whose ledger to export.")],
    output: Annotated[
        Path | None, typer.Option(help="Write here instead of stdout (replaced atomically).")
    ] = None,
) -> None:
    """Export every ledger entry as JSON lines, in id order (for audit)."""
    from app.services.ledger_export import export_ledger

    with _one_line_errors(), _session() as session, _atomic_output(output) as stream:
        count = export_ledger(session, dataset, stream.write)
    if output is not None:
        typer.echo(f"exported {count} ledger entries of {dataset} to {output}", err=True)


def register(cli: typer.Typer) -> None:
    """Add the service commands to the root ``dpledger`` app."""
    cli.command("serve")(serve)
    cli.add_typer(db_cli, name="db")
    cli.add_typer(dataset_cli, name="dataset")
    cli.add_typer(token_cli, name="token")
    cli.add_typer(ledger_cli, name="ledger")
