"""Every domain error has a status and a stable snake_case code (httpx's habit)."""

from __future__ import annotations

import re

import app.errors as errors_module
from app.errors import AppError


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_error_has_status_and_code():
    classes = list(_subclasses(AppError))
    assert len(classes) >= 10
    for cls in classes:
        assert cls.__name__.endswith("Error")
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", cls.code), cls
        assert cls.status_code in (401, 403, 404, 409, 413, 422, 429, 500, 503), cls
        body = cls("boom", extra=1).to_body()
        assert body == {"code": cls.code, "message": "boom", "extra": 1}


def test_codes_are_unique_except_inherited():
    codes = [cls.code for cls in _subclasses(AppError) if "code" in cls.__dict__]
    assert len(codes) == len(set(codes))


def test_public_names():
    assert set(errors_module.__all__) == {"AppError", *(c.__name__ for c in _subclasses(AppError))}


def test_non_finite_details_become_null_so_the_body_is_valid_json():
    import json

    from app.errors import BudgetExceededError

    body = BudgetExceededError(
        "no", epsilon_projected=float("inf"), epsilon_remaining=1.5
    ).to_body()
    assert body["epsilon_projected"] is None and body["epsilon_remaining"] == 1.5
    json.dumps(body, allow_nan=False)
