"""dp_core: privacy accounting for DP machine learning (numpy/scipy only).

The facade below covers the common DP-SGD questions (RDP and PLD epsilons, calibration, user-level
epsilon, the privacy statement); the building blocks live in
:mod:`dp_core.mechanisms`, :mod:`dp_core.rdp`, :mod:`dp_core.conversion`,
:mod:`dp_core.accountant` and :mod:`dp_core.calibration`; PATE's aggregators and their analysis
in :mod:`dp_core.pate`.
"""

from __future__ import annotations

from dp_core.accountant import DeltaReport, EpsilonReport, RdpAccountant
from dp_core.calibration import (
    NoiseCalibration,
    StepsCalibration,
    calibrate_noise_multiplier,
    epsilon_of_schedule,
    max_steps_within_budget,
)
from dp_core.errors import (
    CalibrationError,
    DpCoreError,
    InvalidParameterError,
    UnsupportedMechanismError,
)
from dp_core.federated import DpFedAvgRounds
from dp_core.group import UserLevelEpsilon, user_level_epsilon
from dp_core.mechanisms import (
    Composed,
    Gaussian,
    Laplace,
    PoissonSampled,
    Repeated,
    SampledGaussianSchedule,
)
from dp_core.pate import (
    GNMaxQueries,
    LNMaxQueries,
    PateReport,
    aggregate_votes,
    analyze_votes,
    mechanism_for_gaussian_release,
    mechanism_for_laplace_release,
    pate_mechanism,
    votes_from_predictions,
)
from dp_core.pld import PldEpsilon, compute_epsilon_pld
from dp_core.rdp.orders import DEFAULT_ORDERS
from dp_core.schedules import NoiseSchedule
from dp_core.statement import PrivacyStatement, build_privacy_statement, render_privacy_statement
from dp_core.validation import non_negative_int

__all__ = [
    "DEFAULT_ORDERS",
    "CalibrationError",
    "Composed",
    "DeltaReport",
    "DpFedAvgRounds",
    "DpCoreError",
    "EpsilonReport",
    "GNMaxQueries",
    "Gaussian",
    "InvalidParameterError",
    "LNMaxQueries",
    "Laplace",
    "NoiseCalibration",
    "NoiseSchedule",
    "PateReport",
    "PldEpsilon",
    "PrivacyStatement",
    "PoissonSampled",
    "RdpAccountant",
    "Repeated",
    "SampledGaussianSchedule",
    "StepsCalibration",
    "UnsupportedMechanismError",
    "UserLevelEpsilon",
    "aggregate_votes",
    "analyze_votes",
    "build_privacy_statement",
    "calibrate_noise_multiplier",
    "compute_epsilon",
    "compute_epsilon_pld",
    "max_steps",
    "mechanism_for_gaussian_release",
    "mechanism_for_laplace_release",
    "pate_mechanism",
    "render_privacy_statement",
    "user_level_epsilon",
    "votes_from_predictions",
]


def compute_epsilon(
    *,
    sample_rate: float,
    noise_multiplier: float,
    steps: int,
    delta: float,
    schedule: str = "constant",
    decay_rate: float = 0.0,
    orders: object = None,
    warn: bool = True,
) -> EpsilonReport:
    """Epsilon of ``steps`` DP-SGD steps at sampling rate q with the given noise schedule.

    ``warn=False`` leaves the grid-edge warning to the report's ``at_grid_edge`` field.

    Returns:
        An :class:`EpsilonReport`: ``epsilon`` (refined over real orders), ``epsilon_grid`` (best
        on the grid), ``order``, ``order_grid``, ``delta`` and ``at_grid_edge``.
    """
    steps = non_negative_int("steps", steps)
    return epsilon_of_schedule(
        sample_rate=sample_rate,
        schedule=NoiseSchedule(
            kind=schedule, noise_multiplier=noise_multiplier, decay_rate=decay_rate
        ),
        steps=steps,
        delta=delta,
        orders=orders,
        warn=warn,
    )


def max_steps(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    noise_multiplier: float,
    schedule: str = "constant",
    decay_rate: float = 0.0,
    orders: object = None,
) -> StepsCalibration:
    """Largest number of steps whose epsilon stays within ``target_epsilon`` (see calibration)."""
    return max_steps_within_budget(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        noise_multiplier=noise_multiplier,
        schedule=schedule,
        decay_rate=decay_rate,
        orders=orders,
    )
