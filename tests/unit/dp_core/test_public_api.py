"""The public surface of dp_core and the import boundaries of the code base."""

from __future__ import annotations

import ast
from pathlib import Path

import dp_core

ROOT = Path(__file__).resolve().parents[3]


def test_public_all_is_exactly_the_facade():
    assert sorted(dp_core.__all__) == sorted(
        [
            "DEFAULT_ORDERS", "CalibrationError", "Composed", "DeltaReport", "DpCoreError", "EpsilonReport",
            "Gaussian", "InvalidParameterError", "Laplace", "NoiseCalibration", "NoiseSchedule",
            "PoissonSampled", "RdpAccountant", "Repeated", "SampledGaussianSchedule", "StepsCalibration",
            "UnsupportedMechanismError", "calibrate_noise_multiplier", "compute_epsilon", "max_steps",
            # PATE (dp_core.pate)
            "GNMaxQueries", "LNMaxQueries", "PateReport", "aggregate_votes", "analyze_votes",
            "mechanism_for_gaussian_release", "mechanism_for_laplace_release", "pate_mechanism",
            "votes_from_predictions",
            # PLD, user level, statement (issue 13)
            "PldEpsilon", "compute_epsilon_pld", "UserLevelEpsilon", "user_level_epsilon",
            "PrivacyStatement", "build_privacy_statement", "render_privacy_statement",
            # user-level DP-FedAvg (issue 14)
            "DpFedAvgRounds",
        ]
    )  # fmt: skip
    for name in dp_core.__all__:
        assert hasattr(dp_core, name)


def test_every_error_has_a_code():
    for error in (dp_core.DpCoreError, dp_core.InvalidParameterError, dp_core.CalibrationError,
                  dp_core.UnsupportedMechanismError):  # fmt: skip
        assert issubclass(error, ValueError)
        assert error.code and error.code == error.code.lower()


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_dp_core_stays_pure():
    forbidden = ("app", "fastapi", "pydantic", "sqlalchemy", "httpx", "uvicorn", "alembic")
    for path in python_files("dp_core"):
        for module in imported_modules(path):
            top = module.split(".")[0]
            assert top not in forbidden or "trainer" in path.parts and top == "httpx", (
                f"{path}: imports {module}"
            )
            if top == "torch":
                assert "trainer" in path.relative_to(ROOT).parts, (
                    f"{path}: only dp_core/trainer may import torch"
                )


def test_app_never_imports_the_trainer_or_torch():
    for path in python_files("app"):
        for module in imported_modules(path):
            assert not module.startswith("dp_core.trainer"), f"{path}: imports {module}"
            assert module.split(".")[0] != "torch", f"{path}: imports {module}"


def test_constructors_with_numbers_are_keyword_only():
    """sigma and q (or a count) cannot be swapped by position (issue 12)."""
    import pytest

    from dp_core import GNMaxQueries, LNMaxQueries

    for make in (
        lambda: dp_core.PoissonSampled(0.01, dp_core.Gaussian(1.1)),
        lambda: dp_core.Repeated(3, dp_core.Gaussian(1.1)),
        lambda: dp_core.SampledGaussianSchedule(0.01, dp_core.NoiseSchedule(), 10),
        lambda: dp_core.NoiseSchedule("exponential", 2.0, 1e-4),
        lambda: GNMaxQueries(40.0, 1),
        lambda: LNMaxQueries(5.0, 1),
    ):
        with pytest.raises(TypeError):
            make()
    assert dp_core.PoissonSampled(sample_rate=0.01, inner=dp_core.Gaussian(1.1)).sample_rate == 0.01
