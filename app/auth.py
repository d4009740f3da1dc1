"""Bearer tokens: generation, hashing, and what each role may do.

Tokens are random (256 bits) and stored as their SHA-256 hash only: a slow password hash buys
nothing for secrets with that much entropy, and a fast one keeps every request cheap.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from app.errors import PermissionDeniedError
from app.schemas import Role

TOKEN_PREFIX = "dpl_"


def generate_token() -> str:
    """Return a new random token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Return the stored form of ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's role and, for trainers, the datasets it may charge."""

    token_id: int
    name: str
    role: Role
    datasets: frozenset[str]

    @property
    def actor(self) -> str:
        """Return how ledger entries name this caller."""
        return f"{self.role.value}:{self.name}"

    def require_admin(self) -> None:
        """Refuse anyone but an admin."""
        if self.role is not Role.admin:
            raise PermissionDeniedError(f"this needs the admin role (token has {self.role.value})")

    def require_dataset_write(self, dataset: str) -> None:
        """Refuse viewers, and trainers whose token does not name ``dataset``."""
        if self.role is Role.admin:
            return
        if self.role is Role.trainer and dataset in self.datasets:
            return
        raise PermissionDeniedError(f"this token may not create runs or charge on {dataset!r}")

    def require_dataset_read(self, dataset: str) -> None:
        """Refuse trainers whose token does not name ``dataset``."""
        if self.role is Role.trainer and dataset not in self.datasets:
            raise PermissionDeniedError(f"this token may not read {dataset!r}")

    def can_read(self, dataset: str) -> bool:
        """Whether this caller may read ``dataset``."""
        return self.role is not Role.trainer or dataset in self.datasets
