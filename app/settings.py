"""The service's one settings object, read from ``DPLEDGER_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

_REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Service configuration; every field can be set as ``DPLEDGER_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="DPLEDGER_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///./dpledger.db",
        description="SQLAlchemy URL: an SQLite file (default) or postgresql+psycopg://...",
    )
    bootstrap_token: SecretStr | None = Field(
        default=None, description="Registered as an admin token at start when set."
    )
    migrate_on_start: bool = Field(
        default=True, description="Apply Alembic migrations when the service starts."
    )
    migrations_dir: Path = Field(default=_REPO_ROOT / "migrations")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=30, ge=0)
    sqlite_busy_timeout_s: float = Field(default=30.0, gt=0)


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide settings (cached; tests pass their own to ``create_app``)."""
    return Settings()
