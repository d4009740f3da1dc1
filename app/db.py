"""Engine, sessions, write transactions and migrations.

The engine is made by :func:`create_db_engine`, called from ``create_app``'s lifespan (never at
import time), so tests and the CLI can point the service at any database.

Write transactions take the dataset lock up front:

* SQLite: the transaction opens with ``BEGIN IMMEDIATE`` (the database's one write lock, waited
  for with ``busy_timeout``), so two writers never read the same state and then both write.
* PostgreSQL: the service reads the dataset row with ``SELECT ... FOR UPDATE`` (see
  :func:`app.services.datasets.lock_dataset`), which serialises writers per dataset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings

_WRITE_OPTION = "dpledger_write"
T = TypeVar("T")
logger = logging.getLogger("dpledger")


class SchemaOutOfDateError(RuntimeError):
    """The database's schema is not the revision this code needs (migrations were not applied)."""


def is_sqlite(url: str) -> bool:
    """Whether ``url`` names an SQLite database."""
    return url.startswith("sqlite")


def display_url(url: str) -> str:
    """Return ``url`` with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "<invalid database URL>"


def sqlite_path(url: str) -> Path | None:
    """Return the file of an SQLite URL (None for PostgreSQL or an in-memory database)."""
    if not is_sqlite(url):
        return None
    database = make_url(url).database
    return None if not database or database == ":memory:" else Path(database)


def ensure_sqlite_directory(url: str) -> None:
    """Create the directory of an SQLite file (the default one lives in the user's data dir)."""
    path = sqlite_path(url)
    if path is not None:
        path.expanduser().parent.mkdir(parents=True, exist_ok=True)


def database_exists(settings: Settings) -> bool:
    """Whether the configured database was created already (has dpledger's migrations table).

    An SQLite file that does not exist is not opened (opening it would create it).
    """
    path = sqlite_path(settings.database_url)
    if path is not None and not path.expanduser().exists():
        return False
    engine = create_db_engine(settings)
    try:
        with engine.connect() as connection:
            return inspect(connection).has_table("alembic_version")
    finally:
        engine.dispose()


def is_database_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means "the database cannot be reached or the connection was lost".

    Those are answered 503 with Retry-After: a retry later may succeed. Other database errors
    (a constraint, a bug) are not.
    """
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    return isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated


def create_db_engine(settings: Settings) -> Engine:
    """Create the engine for ``settings.database_url``."""
    url = settings.database_url
    if is_sqlite(url):
        engine = create_engine(
            url,
            connect_args={"timeout": settings.sqlite_busy_timeout_s, "check_same_thread": False},
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        pool_pre_ping=True,
    )


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling would defer BEGIN until the first write; take it over so
    # write transactions can start with BEGIN IMMEDIATE (SQLAlchemy's documented recipe).
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return the session factory bound to ``engine``."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def write_transaction(session: Session) -> Iterator[Session]:
    """Run one write transaction: commit on success, roll back on any error.

    The session must not be inside a transaction already (the lock has to be taken first).
    """
    if session.in_transaction():
        raise RuntimeError("write_transaction needs a session outside any transaction")
    options: Any = {_WRITE_OPTION: True}  # a plain dict: the key is a module constant
    session.connection(execution_options=options)
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    session.commit()


@contextmanager
def write_connection(engine: Engine) -> Iterator[Connection]:
    """Run one write transaction on a bare Core connection (no ORM session: the charge's hot
    path). Commits on success, rolls back on any error; SQLite opens it with BEGIN IMMEDIATE."""
    with engine.connect() as connection:
        connection.execution_options(**{_WRITE_OPTION: True})
        with connection.begin():
            yield connection


@contextmanager
def read_transaction(session: Session) -> Iterator[Session]:
    """Run one read-only transaction and end it (so a later write can take its lock)."""
    try:
        yield session
    finally:
        session.rollback()


def alembic_config(settings: Settings) -> Config:
    """Return an Alembic config for ``settings`` (the URL travels in attributes, not the ini)."""
    config = Config()
    config.set_main_option("script_location", str(Path(settings.migrations_dir)))
    config.attributes["database_url"] = settings.database_url
    return config


def upgrade_database(settings: Settings, revision: str = "head") -> None:
    """Apply the migrations up to ``revision`` (creating an SQLite file and its directory)."""
    ensure_sqlite_directory(settings.database_url)
    command.upgrade(alembic_config(settings), revision)


def schema_problem(engine: Engine, settings: Settings) -> str | None:
    """Return why the database's schema does not match this code's migrations (None: it does)."""
    script = ScriptDirectory.from_config(alembic_config(settings))
    heads = set(script.get_heads())
    with engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    if current == heads:
        return None
    found = ", ".join(sorted(current)) or "none (an empty database)"
    known = {revision.revision for revision in script.walk_revisions()}
    if not current <= known:
        return (
            f"the database schema is at revision {found}, newer than this dpledger knows"
            f" ({', '.join(sorted(heads))}): run the dpledger release that migrated it"
        )
    return (
        f"the database schema is at revision {found}, this dpledger needs"
        f" {', '.join(sorted(heads))}: run `dpledger db upgrade` (or set"
        " DPLEDGER_MIGRATE_ON_START=true)"
    )


def with_database_retries(action: Callable[[], T], *, settings: Settings) -> T:
    """Run ``action``, retrying with exponential backoff while the database is unreachable.

    A replica starting before its database (or losing the connection during its startup
    migration) waits for it, up to ``settings.startup_timeout_s``; other errors propagate at once.
    """
    deadline = time.monotonic() + settings.startup_timeout_s
    delay = 0.1
    while True:
        try:
            return action()
        except sa_exc.SQLAlchemyError as error:
            if not is_database_unavailable(error) or time.monotonic() + delay > deadline:
                raise
            logger.warning(
                "database unavailable at startup (%s); retrying in %.1f s",
                type(getattr(error, "orig", None) or error).__name__,
                delay,
                extra={"fields": {"event": "startup_retry", "delay_s": delay}},
            )
        time.sleep(delay)
        delay = min(delay * 2.0, 5.0)
