"""One steps-per-epoch rule for the trainer and the ledger (dp_core.epochs)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dp_core.epochs import steps_per_epoch
from dp_core.errors import InvalidParameterError


def test_the_rule_the_trainer_and_the_service_disagreed_on():
    # q = 1/99,940 in floats: 1/q comes out a hair above 99,940; the epoch still has 99,940 steps.
    q = 1 / 99_940
    assert math.ceil(1 / q) == 99_941, "the service's old rule"
    assert steps_per_epoch(q) == 99_940


@given(n=st.integers(1, 10**7), b=st.integers(1, 10**4))
def test_q_b_over_n_takes_ceil_n_over_b_steps(n, b):
    if b > n:
        b = n
    assert steps_per_epoch(b / n) == math.ceil(n / b)


def test_the_trainer_and_the_ledger_use_the_same_rule():
    torch = pytest.importorskip("torch", reason="the trainer needs torch")
    del torch
    from app.services.accounting import default_steps_per_epoch
    from dp_core.trainer.sampling import steps_per_epoch as trainer_rule

    for q in (1 / 99_940, 256 / 60_000, 0.004, 1.0, 1 / 3):
        assert trainer_rule(q) == default_steps_per_epoch(q) == steps_per_epoch(q)


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5, 5e-324, 1e-9])
def test_rates_without_a_sane_epoch_are_refused(q):
    with pytest.raises(InvalidParameterError):
        steps_per_epoch(q)
