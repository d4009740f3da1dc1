"""Make sure the PostgreSQL database of ``DATABASE_URL`` exists before ``make test`` runs.

Without ``DATABASE_URL`` (or with a SQLite one) there is nothing to do: the PostgreSQL tests skip
and say why. Otherwise the database is created when the server answers and the database is
missing; when the server does not answer, the script fails with one line saying so (exit 2), so
``make test`` does not fail every PostgreSQL test one by one.
"""

from __future__ import annotations

import os
import sys

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError


def ensure(url_text: str) -> str:
    """Create the database of ``url_text`` if missing; return what was done (one line)."""
    url = make_url(url_text)
    if not url.drivername.startswith("postgresql") or not url.database:
        return f"DATABASE_URL is not PostgreSQL ({url.drivername}): nothing to create"
    name = url.database
    engine = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            exists = connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            )
            if exists:
                return f"database {name!r} exists"
            quoted = connection.dialect.identifier_preparer.quote(name)
            connection.execute(text(f"CREATE DATABASE {quoted}"))
            return f"created database {name!r} for the PostgreSQL tests"
    finally:
        engine.dispose()


def main() -> int:
    """Entry point: print one line; exit 2 when the server cannot be reached."""
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        return 0
    try:
        print(f"make test: {ensure(url)}", file=sys.stderr)
    except SQLAlchemyError as error:
        cause = " ".join(str(getattr(error, "orig", None) or error).split())[:300]
        safe = make_url(url).render_as_string(hide_password=True)
        print(f"make test: cannot create the test database of DATABASE_URL={safe}: {cause}",
              file=sys.stderr)  # fmt: skip
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
