"""Stateless accountant endpoints (same answers as the CLI)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import PrincipalDep, SettingsDep
from app.schemas import (
    EpsilonRead,
    EpsilonRequest,
    MaxStepsRead,
    MaxStepsRequest,
    NoiseMultiplierRead,
    NoiseMultiplierRequest,
)
from app.services import accounting as accountant

router = APIRouter(prefix="/v1/accountant", tags=["accountant"])


@router.post("/epsilon")
def compute_epsilon(
    body: EpsilonRequest, _principal: PrincipalDep, settings: SettingsDep
) -> EpsilonRead:
    """Epsilon of DP-SGD with a (possibly decaying) noise schedule."""
    return accountant.compute_epsilon(body, max_noise_levels=settings.max_noise_levels)


@router.post("/noise-multiplier")
def calibrate_noise_multiplier(
    body: NoiseMultiplierRequest, _principal: PrincipalDep, settings: SettingsDep
) -> NoiseMultiplierRead:
    """The smallest noise multiplier whose epsilon stays within the target."""
    return accountant.calibrate_noise_multiplier(body, max_noise_levels=settings.max_noise_levels)


@router.post("/max-steps")
def max_steps(
    body: MaxStepsRequest, _principal: PrincipalDep, settings: SettingsDep
) -> MaxStepsRead:
    """The most DP-SGD steps whose epsilon stays within the target (422 if not even one)."""
    return accountant.max_steps(body, max_noise_levels=settings.max_noise_levels)
