"""The service's one settings object, read from ``DPLEDGER_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
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
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics without a token (else a viewer or admin token is needed).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Level of the service's logs (set up by `dpledger serve`)."
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="json: one JSON object per line on stderr; text: for humans."
    )

    max_noise_levels: int = Field(
        default=100_000,
        ge=1,
        description=(
            "Most per-step noise levels one run's accounting may evaluate (a decaying schedule"
            " has one per step); more is refused with 422. Constant noise always needs one."
        ),
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide settings (cached; tests pass their own to ``create_app``)."""
    return Settings()
