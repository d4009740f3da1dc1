import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dp_core.errors import InvalidParameterError
from dp_core.schedules import NoiseSchedule
from dp_core.trainer.adaptive_clipping import AdaptiveClipping, gradient_noise_multiplier
from dp_core.trainer.budget_gate import LocalBudgetGate
from dp_core.trainer.loop import DPTrainer, LogicalBatch, make_private


def _blobs(n=400, dim=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, dim, generator=gen) + 2.0 * (2 * y[:, None].float() - 1)
    return TensorDataset(x, y)


def _trainer(dataset=None, model=None, optimizer="sgd", **kw):
    torch.manual_seed(0)
    dataset = dataset if dataset is not None else _blobs()
    model = (
        model if model is not None else nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    )
    opt = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.5),
        "momentum": lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9),
        "adam": lambda p: torch.optim.Adam(p, lr=0.05),
        "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.2),
    }[optimizer](model.parameters())
    settings = {
        "loss_fn": F.cross_entropy,
        "max_grad_norm": 1.0,
        "epochs": 3,
        "expected_batch_size": 50,
        "noise_multiplier": 0.8,
        "noise_seed": 1,
    }
    settings.update(kw)
    return make_private(model=model, optimizer=opt, dataset=dataset, **settings)


def _accuracy(model, dataset):
    x, y = dataset.tensors
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adagrad"])
def test_dp_sgd_learns_with_every_optimizer(optimizer):
    trainer = _trainer(optimizer=optimizer)
    result = trainer.fit()
    assert result.stop_reason == "completed" and result.epochs_completed == 3
    assert _accuracy(trainer.model, trainer.dataset) > 0.9
    assert 0 < result.epsilon < float("inf")
    assert len(result.history) == 3 and result.history[-1]["accuracy"] > 0.8


@pytest.mark.parametrize(
    ("kw", "factor"),
    [
        ({}, 1.0),
        ({"num_microbatches": 10}, 2.0),  # sensitivity 2C with microbatches
        ({"adaptive_clipping": AdaptiveClipping(count_noise_std=2.0)}, None),
    ],
)
def test_noise_of_a_step_has_std_sigma_c_over_expected_batch(kw, factor):
    sigma, clip, expected_batch = 1.3, 0.7, 50
    model = nn.Linear(400, 100, bias=False)  # 40,000 coordinates
    nn.init.zeros_(model.weight)
    trainer = _trainer(
        model=model,
        dataset=TensorDataset(torch.randn(1000, 400), torch.randint(0, 100, (1000,))),
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=expected_batch,
        **kw,
    )
    trainer.step(
        LogicalBatch(0, torch.tensor([], dtype=torch.long))
    )  # empty Poisson batch: noise only
    if factor is None:
        factor = gradient_noise_multiplier(noise_multiplier=sigma, count_noise_std=2.0) / sigma
    units = kw.get("num_microbatches", expected_batch)
    want = 0.5 * factor * sigma * clip / units  # lr 0.5
    got = float(model.weight.detach().std())
    assert abs(got / want - 1) < 5 / (2 * 40_000) ** 0.5
    assert abs(float(model.weight.detach().mean())) < 5 * want / 200


def test_physical_batch_cap_does_not_change_the_step():
    ds = _blobs(n=120)
    a = _trainer(dataset=ds, model=nn.Sequential(nn.Linear(5, 2)).double(), engine="func", epochs=1)
    b = _trainer(
        dataset=ds,
        model=nn.Sequential(nn.Linear(5, 2)).double(),
        engine="func",
        epochs=1,
        max_physical_batch_size=7,
    )
    a.dataset = b.dataset = TensorDataset(ds.tensors[0].double(), ds.tensors[1])
    a.fit()
    b.fit()
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=1e-12)


def test_engine_choice():
    assert _trainer().engine_name == "bookkeeping"
    assert _trainer(engine="func").engine_name == "func"
    assert _trainer(num_microbatches=4).engine_name == "func"
    norm_model = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    assert _trainer(model=norm_model).engine_name == "func"
    with pytest.raises(InvalidParameterError, match="engine"):
        _trainer(model=norm_model, engine="bookkeeping")


def test_batchnorm_model_is_refused_before_training():
    with pytest.raises(ValueError, match="GroupNorm"):
        _trainer(model=nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)))


def test_adaptive_clipping_moves_the_clip_norm_toward_the_quantile():
    trainer = _trainer(
        max_grad_norm=100.0,
        adaptive_clipping=AdaptiveClipping(
            target_quantile=0.5, learning_rate=0.5, count_noise_std=2.0
        ),
        epochs=2,
    )
    trainer.fit()
    assert trainer.clip < 100.0 * 0.5  # every gradient was unclipped, so C shrank geometrically


def test_local_gate_stops_at_the_epoch_the_accountant_predicts(tmp_path):
    trainer = _trainer(epochs=30, noise_multiplier=1.0, checkpoint_dir=tmp_path)
    target = 0.5 * (trainer.plan.epsilon(6) + trainer.plan.epsilon(7))
    predicted = max(k for k in range(31) if trainer.plan.epsilon(k) <= target)
    trainer.gate = LocalBudgetGate(target_epsilon=target, delta=1e-5)
    result = trainer.fit()
    assert predicted == 6
    assert result.epochs_completed == predicted
    assert result.stop_reason.startswith("refused: budget_exceeded")
    assert result.epsilon <= target
    assert (tmp_path / "checkpoint.pt").exists() and result.checkpoint_path == str(
        tmp_path / "checkpoint.pt"
    )


def test_local_gate_can_refuse_an_over_budget_plan_up_front():
    trainer = _trainer(
        epochs=30,
        gate=LocalBudgetGate(target_epsilon=0.5, delta=1e-5, refuse_over_budget_plan=True),
    )
    result = trainer.fit()
    assert result.epochs_completed == 0 and "plan needs epsilon" in result.stop_reason


class RecordingGate(LocalBudgetGate):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.charged = []

    def before_epoch(self, epoch):
        decision = super().before_epoch(epoch)
        if decision.reason == "charged":
            self.charged.append(epoch)
        return decision


def test_resume_continues_exactly_and_does_not_pay_twice(tmp_path):
    straight = _trainer(epochs=4)
    straight.fit()

    gate1 = RecordingGate(target_epsilon=50.0, delta=1e-5)
    first = _trainer(epochs=4, checkpoint_dir=tmp_path, gate=gate1)
    for n, batches in enumerate(first.epochs()):
        for batch in batches:
            first.step(batch)
        if n == 1:
            break  # the process dies at the end of epoch 1, before its end-of-epoch checkpoint
    assert gate1.charged == [0, 1]

    gate2 = RecordingGate(target_epsilon=50.0, delta=1e-5)
    second = _trainer(epochs=4, checkpoint_dir=tmp_path, gate=gate2)
    assert second.resume()
    assert second.epoch == 1 and gate2.epochs_charged == 2  # epoch 1 was charged, then interrupted
    result = second.fit()
    assert gate2.charged == [2, 3]  # epoch 1 is re-run without paying again
    assert result.epochs_completed == 4 and result.stop_reason == "completed"
    for p, q in zip(straight.model.parameters(), second.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
    assert result.epsilon == pytest.approx(straight.result().epsilon)


def test_checkpoint_of_another_plan_is_refused(tmp_path):
    _trainer(epochs=1, checkpoint_dir=tmp_path).fit()
    with pytest.raises(InvalidParameterError, match="checkpoint"):
        _trainer(epochs=1, noise_multiplier=2.0, checkpoint_dir=tmp_path).resume()


def test_steps_must_be_run_in_order():
    trainer = _trainer()
    with pytest.raises(InvalidParameterError, match="step"):
        trainer.step(LogicalBatch(3, torch.tensor([0, 1])))


def test_generic_map_style_dataset_is_supported():
    class ListDataset(torch.utils.data.Dataset):
        def __init__(self, ds):
            self.x, self.y = ds.tensors

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.x[i], self.y[i]

    trainer = _trainer(dataset=ListDataset(_blobs()), epochs=1)
    assert trainer.fit().epochs_completed == 1


def test_bad_settings_are_refused():
    with pytest.raises(InvalidParameterError, match="noise_multiplier"):
        _trainer(schedule=NoiseSchedule(kind="constant", noise_multiplier=1.0))
    with pytest.raises(InvalidParameterError, match="sample_rate"):
        _trainer(expected_batch_size=5000)
    with pytest.raises(InvalidParameterError, match="count_noise_std"):
        _trainer(adaptive_clipping=AdaptiveClipping(count_noise_std=0.1))
    assert isinstance(_trainer(), DPTrainer)


# --- secret randomness (issue 20) -------------------------------------------------------------


def _final_params(trainer):
    trainer.fit()
    return torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])


def test_same_settings_twice_release_different_models_by_default():
    # Same data, same initial model (torch.manual_seed(0)), same settings: only the secret
    # noise and sampling differ, and they must.
    a = _final_params(_trainer(epochs=1, noise_seed=None))
    b = _final_params(_trainer(epochs=1, noise_seed=None))
    assert float((a - b).abs().max()) > 1e-3


def test_a_noise_seed_makes_the_run_reproducible_and_says_so():
    first, second = _trainer(epochs=1, noise_seed=4), _trainer(epochs=1, noise_seed=4)
    assert first.reproducible_noise and first.plan.reproducible_noise
    assert torch.equal(_final_params(first), _final_params(second))
    assert not _trainer(epochs=1, noise_seed=None).plan.reproducible_noise


def _walk(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _walk(v)


def test_checkpoints_hold_no_generator_state_and_resume_with_unchanged_accounting(tmp_path):
    from dp_core.trainer.checkpoint import load_checkpoint

    gate1 = RecordingGate(target_epsilon=50.0, delta=1e-5)
    first = _trainer(epochs=3, checkpoint_dir=tmp_path, gate=gate1, noise_seed=None)
    for n, batches in enumerate(first.epochs()):
        for batch in batches:
            first.step(batch)
        if n == 0:
            break
    state = load_checkpoint(first.checkpoint_path)
    keys = {k for k, _ in _walk(state)}
    assert not keys & {"noise_rng", "sampling_rng", "sampling_rngs", "torch_rng"}
    # torch generator states are uint8 tensors (5056 bytes for mt19937): none anywhere
    assert not [
        v for _, v in _walk(state) if isinstance(v, torch.Tensor) and v.dtype == torch.uint8
    ]
    gate2 = RecordingGate(target_epsilon=50.0, delta=1e-5)
    second = _trainer(epochs=3, checkpoint_dir=tmp_path, gate=gate2, noise_seed=None)
    old_noise_state = second.noise_rng.get_state()
    assert second.resume()
    assert not torch.equal(second.noise_rng.get_state(), old_noise_state)  # reseeded, fresh
    result = second.fit()
    assert gate2.charged == [1, 2] and result.epochs_completed == 3
    straight = _trainer(epochs=3, noise_seed=None)
    straight.fit()
    assert result.epsilon == straight.result().epsilon


def test_a_checkpoint_with_generator_states_from_an_older_version_still_resumes(tmp_path):
    old = _trainer(epochs=2, checkpoint_dir=tmp_path)
    state = old.state_dict()
    state.update(noise_rng=old.noise_rng.get_state(), sampling_rng=old.sampling_rng.get_state())
    resumed = _trainer(epochs=2, checkpoint_dir=tmp_path)
    resumed.load_state_dict(state)
    assert resumed.global_step == 0 and resumed.fit().epochs_completed == 2
