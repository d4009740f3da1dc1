"""SQLAlchemy 2.0 tables: datasets (with the filter state), runs, the append-only ledger, tokens.

RDP vectors are stored exactly, as JSON lists of integers (quanta of 2^-64), one per order of the
dataset's grid; ``null`` stands for +inf (JSON has no infinity), see :class:`QuantaVector`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import false

from app.ledger import quanta
from app.ledger.quanta import Vec


def utc_now() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


class QuantaVector(TypeDecorator[tuple[int | None, ...]]):
    """An exact RDP vector in quanta of 2^-64 (:mod:`app.ledger.quanta`): JSON integers, null = +inf."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: tuple[int | None, ...] | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return quanta.to_json(tuple(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> tuple[int | None, ...] | None:
        if value is None:
            return None
        return quanta.from_json(value)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class Dataset(Base):
    """A dataset with its budget, the filter's grid and the filter's state.

    ``capacity`` is B(a), ``rdp_reserved`` S(a) (committed plus open reservations),
    ``rdp_committed`` the charged part, all exact quanta (:mod:`app.ledger.quanta`); ``alive`` is
    the alive set L as one flag per order. :mod:`app.ledger.budget` keeps the rule.
    """

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", name="uq_datasets_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    target_epsilon: Mapped[float] = mapped_column(Float)
    target_delta: Mapped[float] = mapped_column(Float)
    orders: Mapped[list[float]] = mapped_column(JSON)
    weights: Mapped[list[float]] = mapped_column(JSON)
    capacity: Mapped[Vec] = mapped_column(QuantaVector)
    rdp_reserved: Mapped[Vec] = mapped_column(QuantaVector)
    rdp_committed: Mapped[Vec] = mapped_column(QuantaVector)
    alive: Mapped[list[bool]] = mapped_column(JSON)
    #: The approximate-DP sub-budget carved out of (target_epsilon, target_delta) at creation for
    #: black-box releases (basic composition), and what they spent; the filter gets the rest.
    approx_epsilon: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    approx_delta: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    approx_epsilon_spent: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    approx_delta_spent: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    #: What one unit of privacy protects: "example" (a record) or "user" (all of a user's data,
    #: federated learning). Fixed at creation; mechanisms of the other unit are refused.
    privacy_unit: Mapped[str] = mapped_column(
        String(16), default="example", server_default="example"
    )
    #: The neighbouring relation every admitted run's accounting uses ("add_remove" or
    #: "replace_one"), fixed by the first admitted run (null before); runs of the other relation
    #: are refused (:mod:`app.ledger.compatibility`).
    neighbouring_relation: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: Refused runs deleted to keep only the last few (the refusal count stays exact).
    refused_runs_forgotten: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    created_by: Mapped[str] = mapped_column(String(128))


class Run(Base):
    """A planned run: its mechanism, its per-unit costs and its status.

    ``status`` is ``admitted``, ``finished`` or ``refused``; how many units were charged (and so
    whether an admitted run is running) is read from its charges in the ledger, never stored
    twice. ``costs`` are the per-unit costs fixed at admission (:class:`app.ledger.costs.UnitCosts`).
    """

    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_runs_idempotency_key"),
        Index("ix_runs_dataset_id_status_id", "dataset_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32), default="dp_sgd", server_default="dp_sgd")
    #: The mechanism as requested (defaults filled), for every kind; the DP-SGD columns below
    #: repeat it for DP-SGD runs and are null for the other kinds.
    spec: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    sample_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    steps_per_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    epochs: Mapped[int] = mapped_column(Integer)
    noise_schedule: Mapped[str | None] = mapped_column(String(32), nullable=True)
    noise_multiplier: Mapped[float | None] = mapped_column(Float, nullable=True)
    decay_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_grad_norm: Mapped[float | None] = mapped_column(Float, nullable=True)
    reservation: Mapped[str] = mapped_column(String(16), default="plan", server_default="plan")
    status: Mapped[str] = mapped_column(String(16))
    costs: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    #: "<token id>:<client key>" of ``Idempotency-Key``: a retried creation finds this run.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: SHA-256 of the canonical JSON of the creating request (with an idempotency key only).
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    created_by: Mapped[str] = mapped_column(String(128))
    #: The run drew its noise and sampling from a public seed: no guarantee against its holders.
    reproducible_noise: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class LedgerEntry(Base):
    """One append-only ledger line: a reservation, a charge or a release."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("run_id", "kind", "epoch", name="uq_ledger_run_kind_epoch"),
        Index("ix_ledger_dataset_id_id", "dataset_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    kind: Mapped[str] = mapped_column(String(16))
    epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rdp: Mapped[Vec] = mapped_column(QuantaVector)
    mechanism: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    actor: Mapped[str] = mapped_column(String(128))


class ApiToken(Base):
    """A bearer token, stored as its SHA-256 hash only."""

    __tablename__ = "api_tokens"
    __table_args__ = (UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    datasets: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    #: Set when revoked; the row (its hash) stays so the token is never registered again.
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True, default=None)


class DashboardSession(Base):
    """A dashboard login: the cookie holds a random id, stored here as its SHA-256 hash only."""

    __tablename__ = "dashboard_sessions"
    __table_args__ = (
        UniqueConstraint("session_hash", name="uq_dashboard_sessions_session_hash"),
        Index("ix_dashboard_sessions_token_id", "token_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_hash: Mapped[str] = mapped_column(String(64))
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)


class RunAudit(Base):
    """An empirical privacy audit of a run (one-run canary audit plus a membership-inference report).

    Stored as reported by the auditor (``dpledger audit --service``); it never changes the budget.
    """

    __tablename__ = "run_audits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    epsilon_theoretical: Mapped[float | None] = mapped_column(Float, nullable=True)
    epsilon_lower_bound: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float] = mapped_column(Float)
    delta: Mapped[float | None] = mapped_column(Float, nullable=True)
    canaries: Mapped[int] = mapped_column(Integer)
    canaries_included: Mapped[int] = mapped_column(Integer)
    guesses: Mapped[int] = mapped_column(Integer)
    correct_guesses: Mapped[int] = mapped_column(Integer)
    canary_kind: Mapped[str] = mapped_column(String(32))
    noise_multiplier: Mapped[float | None] = mapped_column(Float, nullable=True)
    test_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    membership_inference: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    seed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    actor: Mapped[str] = mapped_column(String(128))
