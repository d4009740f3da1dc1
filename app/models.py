"""SQLAlchemy 2.0 tables: datasets (with the filter state), runs, the append-only ledger, tokens.

RDP vectors are stored as JSON lists of floats, one per order of the dataset's grid; ``null``
stands for +inf (JSON has no infinity), see :class:`RdpVector`.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    JSON,
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

FloatArray = npt.NDArray[np.float64]


def utc_now() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


class RdpVector(TypeDecorator[FloatArray]):
    """A float vector as a JSON list, with ``null`` for +inf (NaN is refused)."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: FloatArray | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        array = np.asarray(value, dtype=np.float64)
        if np.any(np.isnan(array)) or np.any(array == -np.inf):
            raise ValueError("an RDP vector cannot hold NaN or -inf")
        return [None if math.isinf(v) else float(v) for v in array.tolist()]

    def compare_values(self, x: Any, y: Any) -> bool:
        if x is None or y is None:
            return x is y
        return bool(np.array_equal(x, y))

    def process_result_value(self, value: Any, dialect: Dialect) -> FloatArray | None:
        if value is None:
            return None
        return np.array([math.inf if v is None else float(v) for v in value], dtype=np.float64)


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

    ``rdp_reserved`` is S(a) (committed plus open reservations), ``rdp_committed`` the charged
    part, ``alive`` the alive set L as one flag per order.
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
    capacity: Mapped[FloatArray] = mapped_column(RdpVector)
    rdp_reserved: Mapped[FloatArray] = mapped_column(RdpVector)
    rdp_committed: Mapped[FloatArray] = mapped_column(RdpVector)
    alive: Mapped[list[bool]] = mapped_column(JSON)
    #: The approximate-DP sub-budget carved out of (target_epsilon, target_delta) at creation for
    #: black-box releases (basic composition), and what they spent; the filter gets the rest.
    approx_epsilon: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    approx_delta: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    approx_epsilon_spent: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    approx_delta_spent: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    created_by: Mapped[str] = mapped_column(String(128))


class Run(Base):
    """A planned training run: its mechanism, its status and how many epochs were charged."""

    __tablename__ = "runs"

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
    epochs_charged: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    created_by: Mapped[str] = mapped_column(String(128))


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
    rdp: Mapped[FloatArray] = mapped_column(RdpVector)
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
