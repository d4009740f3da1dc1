"""User-level DP-SGD: whole users sampled, each user's summed gradient clipped to C."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dp_core import compute_epsilon
from dp_core.errors import InvalidParameterError
from dp_core.trainer.clipping import FuncEngine
from dp_core.trainer.loop import DPTrainer, make_private
from dp_core.trainer.user_level import UserAccumulator, UserIndex, user_poisson_batch

C = 0.5


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))


def _data(n=60, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 4, generator=gen) + 2.0 * (2 * y[:, None].float() - 1)
    return x, y


def _user_sum(model, x, y, users, records):
    acc = UserAccumulator(FuncEngine(model, F.cross_entropy), UserIndex(users))
    acc.add(x[records], y[records], records)
    return acc.clipped_sum(C)


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def test_a_duplicated_user_contributes_at_most_c_however_many_copies():
    model = _model()
    x, y = _data(20)
    # User 7 holds 40 identical copies of one record; users 0..19 one record each.
    x_all = torch.cat([x, x[:1].repeat(40, 1)])
    y_all = torch.cat([y, y[:1].repeat(40)])
    users = torch.cat([torch.arange(20), torch.full((40,), 7)])
    with_dup = _user_sum(model, x_all, y_all, users, torch.arange(60))
    without = _user_sum(model, x_all, y_all, users, torch.arange(60)[users != 7])
    difference = _flat(with_dup.grads) - _flat(without.grads)
    assert float(difference.norm()) <= C * (1 + 1e-5)  # one user: at most C
    assert with_dup.norms.numel() == 20  # one clipped contribution per user
    # Example-level clipping of the same records lets user 7 move the sum by far more than C.
    engine = FuncEngine(model, F.cross_entropy)
    per_example = engine.clipped_sum(x_all[users == 7], y_all[users == 7], C)
    assert float(_flat(per_example.grads).norm()) > 10 * C


def test_one_record_per_user_is_example_level_clipping():
    model = _model()
    x, y = _data(30)
    records = torch.arange(30)
    users = torch.arange(30) * 3 + 5  # any ids
    user_level = _user_sum(model, x, y, users, records)
    example = FuncEngine(model, F.cross_entropy).clipped_sum(x, y, C)
    for a, b in zip(user_level.grads, example.grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_users_are_sampled_whole_at_rate_q():
    users = torch.arange(400).repeat_interleave(3)[torch.randperm(1200)]
    index = UserIndex(users)
    gen = torch.Generator().manual_seed(0)
    sizes = []
    for _ in range(200):
        records = user_poisson_batch(index, 0.1, gen)
        sampled = users[records]
        counts = torch.bincount(sampled, minlength=400)
        assert set(counts[counts > 0].tolist()) <= {3}  # every sampled user brings all records
        sizes.append(int((counts > 0).sum()))
    assert sum(sizes) / len(sizes) == pytest.approx(40, rel=0.05)


def test_trainer_accounts_the_subsampled_gaussian_at_the_user_level():
    x, y = _data(120)
    users = torch.arange(40).repeat_interleave(3)  # 40 users, 3 records each
    model = _model()
    trainer = make_private(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        dataset=TensorDataset(x, y), loss_fn=F.cross_entropy, max_grad_norm=C, epochs=2,
        expected_batch_size=10, noise_multiplier=1.0, user_index=users,
    )  # fmt: skip
    assert trainer.plan.sample_rate == pytest.approx(10 / 40)  # users, not records
    assert trainer.engine_name == "func" and trainer.expected_units == pytest.approx(10)
    result = trainer.fit()
    steps = trainer.plan.steps_per_epoch * result.epochs_completed
    expected = compute_epsilon(sample_rate=0.25, noise_multiplier=1.0, steps=steps, delta=1e-5)
    assert result.epsilon == pytest.approx(expected.epsilon, rel=1e-6)


@pytest.mark.parametrize(
    ("extra", "word"),
    [({"num_microbatches": 4}, "num_microbatches"), ({"engine": "bookkeeping"}, "engine"),
     ({"user_index": torch.arange(5)}, "user_index"),
     ({"max_records_per_individual": 3}, "max_records_per_individual")],
)  # fmt: skip
def test_user_level_refuses_what_it_does_not_combine_with(extra, word):
    x, y = _data(30)
    settings = {"user_index": torch.arange(30) // 2, **extra}
    model = _model()
    with pytest.raises(InvalidParameterError, match=word):
        DPTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), TensorDataset(x, y),
                  loss_fn=F.cross_entropy, max_grad_norm=C, epochs=1, sample_rate=0.1,
                  noise_multiplier=1.0, **settings)  # fmt: skip


def _cli(*args):
    import typer
    from typer.testing import CliRunner

    from dp_core.trainer.cli import register

    app = typer.Typer()

    @app.callback()
    def root():
        pass

    register(app)
    return CliRunner().invoke(app, ["train", *args])


def test_cli_trains_at_the_user_level_from_a_user_index_file(tmp_path):
    import json

    import numpy as np

    from dp_core.trainer.data import load_data

    records = len(load_data("digits").train)
    path = tmp_path / "users.txt"
    np.savetxt(path, np.arange(records) // 3, fmt="%d")
    users = -(-records // 3)
    result = _cli("--epochs", "1", "--noise-multiplier", "1.0", "--batch-size", "40",
                  "--user-index", str(path), "--threads", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["sample_rate"] == pytest.approx(40 / users)  # users, not records
    assert summary["engine"] == "func" and summary["privacy_unit"] == "user"
    expected = compute_epsilon(sample_rate=40 / users, noise_multiplier=1.0,
                               steps=summary["steps_per_epoch"], delta=1e-5)  # fmt: skip
    assert summary["epsilon"] == pytest.approx(expected.epsilon, rel=1e-6)


def test_cli_refuses_a_user_index_of_the_wrong_length(tmp_path):
    path = tmp_path / "users.txt"
    path.write_text("1\n2\n3\n")
    result = _cli("--epochs", "1", "--noise-multiplier", "1.0", "--user-index", str(path))
    assert result.exit_code == 2 and "one integer user id per training record" in result.stderr


def test_a_user_level_run_is_charged_to_a_user_dataset_and_refused_by_a_dataset_of_examples(
    tmp_path,
):
    from dp_core.trainer.errors import LedgerError
    from dpledger.gate import HttpBudgetGate
    from tests.unit.dpledger.app_client import running_app

    x, y = _data(120)
    users = torch.arange(40).repeat_interleave(3)
    with running_app(tmp_path) as ledger, ledger.client() as admin:
        admin.create_dataset(
            name="clinics", target_epsilon=8.0, target_delta=1e-5, privacy_unit="user"
        )
        admin.create_dataset(name="rows", target_epsilon=8.0, target_delta=1e-5)
        for dataset in ("clinics", "rows"):
            model = _model()
            trainer = make_private(
                model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                dataset=TensorDataset(x, y), loss_fn=F.cross_entropy, max_grad_norm=C,
                epochs=2, expected_batch_size=10, noise_multiplier=1.0, user_index=users,
                gate=HttpBudgetGate(dataset=dataset, client=ledger.client()),
            )  # fmt: skip
            if dataset == "rows":
                before = [p.detach().clone() for p in model.parameters()]
                with pytest.raises(LedgerError, match="privacy_unit_mismatch"):
                    trainer.fit()
                assert all(
                    torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True)
                )
                assert admin.get_budget("rows").runs == []
                continue
            result = trainer.fit()
            assert result.epochs_completed == 2
            (run,) = admin.get_budget("clinics").runs
            assert run.epochs_charged == 2
            assert admin.get_run(run.id).mechanism["privacy_unit"] == "user"
            # The same mechanism on the dataset's coarser grid of orders: never below the
            # trainer's epsilon (dp_core's finer grid may only lower it), and close to it.
            assert result.epsilon <= run.epsilon_run <= 1.1 * result.epsilon
