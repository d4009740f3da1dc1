"""make_private's signature is explicit, typed and the same as DPTrainer's (style guide: explicit edges)."""

from __future__ import annotations

import inspect
import typing

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dp_core.trainer import DPTrainer, make_private


def _trainer_options() -> dict[str, inspect.Parameter]:
    params = inspect.signature(DPTrainer.__init__).parameters
    return {name: p for name, p in params.items() if name != "self"}


def test_every_argument_is_keyword_only_and_typed():
    params = inspect.signature(make_private).parameters
    hints = typing.get_type_hints(make_private)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert set(params) <= set(hints) and "return" in hints
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def test_the_arguments_are_dptrainers_with_the_same_defaults():
    ours = inspect.signature(make_private).parameters
    theirs = _trainer_options()
    assert list(ours) == list(theirs)
    for name, param in ours.items():
        assert param.default == theirs[name].default, name
    hints, trainer_hints = (
        typing.get_type_hints(make_private),
        typing.get_type_hints(DPTrainer.__init__),
    )
    assert {k: v for k, v in hints.items() if k != "return"} == {
        k: v for k, v in trainer_hints.items() if k != "return"
    }


def _parts():
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    model = nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1), TensorDataset(x, y)


def test_it_passes_every_setting_through():
    model, optimizer, data = _parts()
    trainer = make_private(
        model=model, optimizer=optimizer, dataset=data, loss_fn=F.cross_entropy,
        max_grad_norm=0.5, epochs=3, expected_batch_size=16, noise_multiplier=1.3, delta=1e-6,
        name="explicit", noise_seed=1, engine="func", max_physical_batch_size=8,
    )  # fmt: skip
    plan = trainer.plan
    assert (plan.max_grad_norm, plan.epochs, plan.sample_rate, plan.delta, plan.name) == (
        0.5, 3, 0.25, 1e-6, "explicit",
    )  # fmt: skip
    assert plan.schedule.noise_multiplier == 1.3 and trainer.engine_name == "func"
    assert trainer.max_physical_batch_size == 8
    assert trainer.noise_seed == 1 and trainer.reproducible_noise and trainer.secure_noise


def test_a_misspelt_or_positional_argument_is_refused():
    model, optimizer, data = _parts()
    common = {"model": model, "optimizer": optimizer, "dataset": data, "loss_fn": F.cross_entropy,
              "max_grad_norm": 1.0, "epochs": 1, "noise_multiplier": 1.0}  # fmt: skip
    with pytest.raises(TypeError, match="batch_sise"):
        make_private(**common, batch_sise=16)
    with pytest.raises(TypeError):
        make_private(model, optimizer, data, loss_fn=F.cross_entropy)  # type: ignore[misc]
