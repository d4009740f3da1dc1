"""The service's one settings object, read from ``DPLEDGER_*`` environment variables."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.ledger.plans import DEFAULT_MAX_NOISE_LEVELS

_REPO_ROOT = Path(__file__).resolve().parent.parent

#: A bootstrap token: at least 32 characters of the URL-safe alphabet (letters, digits, ``_``,
#: ``-``), e.g. ``dpl_$(openssl rand -hex 32)``; shorter or other tokens are refused at start.
BOOTSTRAP_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{32,256}")
BOOTSTRAP_TOKEN_RULE = "at least 32 characters of A-Z, a-z, 0-9, '_' and '-'"
#: Default largest request body (1 MiB): every valid request is far smaller.
DEFAULT_MAX_BODY_BYTES = 1 << 20


def data_dir() -> Path:
    """Return the per-user data directory: ``$XDG_DATA_HOME/dpledger`` or ``~/.local/share/dpledger``."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return (base / "dpledger").resolve()


def default_database_url() -> str:
    """Return the default database: an SQLite file in :func:`data_dir` (an absolute path)."""
    return f"sqlite:///{data_dir() / 'dpledger.db'}"


class Settings(BaseSettings):
    """Service configuration; every field can be set as ``DPLEDGER_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="DPLEDGER_", extra="ignore")

    database_url: str = Field(
        default_factory=default_database_url,
        description="SQLAlchemy URL: an SQLite file (default: in the per-user data directory)"
        " or postgresql+psycopg://...",
    )
    bootstrap_token: SecretStr | None = Field(
        default=None,
        description=f"Registered as an admin token at start when set ({BOOTSTRAP_TOKEN_RULE}).",
    )
    initial_token_file: Path | None = Field(
        default=None,
        description="Where the first admin token is written (mode 0600) when stderr is not a"
        " terminal; default: initial-admin-token in the data directory.",
    )
    migrate_on_start: bool = Field(
        default=True, description="Apply Alembic migrations when the service starts."
    )
    migrations_dir: Path = Field(default=_REPO_ROOT / "migrations")
    startup_timeout_s: float = Field(
        default=60.0,
        ge=0,
        description="How long a starting service retries an unreachable database (with"
        " backoff) before it gives up.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=30, ge=0)
    db_pool_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest wait for a free database connection."
    )
    sqlite_busy_timeout_s: float = Field(default=30.0, gt=0)
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES,
        ge=1024,
        le=1 << 30,
        description="Largest request body; larger ones get 413 payload_too_large before parsing.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection must send a request's headers within this many seconds of"
        " opening (or of its previous response); else it is closed (`dpledger serve`).",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A request's whole body must arrive within this many seconds; else 408"
        " request_timeout.",
    )
    keep_alive_timeout_s: float = Field(
        default=5.0, gt=0, description="An idle keep-alive connection is closed after this."
    )
    retry_after_s: int = Field(
        default=5, ge=1, le=3600, description="Retry-After of a 503 database_unavailable."
    )
    run_rate_per_s: float = Field(
        default=20.0,
        ge=0,
        description="Run requests (POST /v1/runs) one token may make per second and process,"
        " after a burst of run_rate_burst; more get 429 rate_limited with Retry-After. 0: off.",
    )
    run_rate_burst: int = Field(default=200, ge=1, description="See run_rate_per_s.")
    session_max_age_s: int = Field(
        default=12 * 3600, ge=60, le=30 * 24 * 3600, description="Life of a dashboard login."
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics without a token (else a viewer or admin token is needed).",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="A static scrape token for /metrics that needs no database (so an outage"
        f" can be scraped); {BOOTSTRAP_TOKEN_RULE}.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Level of the service's logs (set up by `dpledger serve`)."
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="json: one JSON object per line on stderr; text: for humans."
    )

    max_noise_levels: int = Field(
        default=DEFAULT_MAX_NOISE_LEVELS,
        ge=1,
        description=(
            "Most per-step noise levels one request's accounting may evaluate (a decaying"
            " schedule has one per step; searches such as noise-multiplier calibration get half);"
            " more is refused with 422 invalid_input. Constant noise always needs one. The"
            " default keeps every request under about 1 s of CPU."
        ),
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("bootstrap_token", "metrics_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not BOOTSTRAP_TOKEN_PATTERN.fullmatch(value.get_secret_value()):
            raise ValueError(f"must be {BOOTSTRAP_TOKEN_RULE} (e.g. dpl_$(openssl rand -hex 32))")
        return value

    def token_file(self) -> Path:
        """Return where the first admin token is written when no terminal is attached."""
        return self.initial_token_file or data_dir() / "initial-admin-token"


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide settings (cached; tests pass their own to ``create_app``)."""
    return Settings()
