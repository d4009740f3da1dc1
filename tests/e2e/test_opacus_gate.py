"""`dpledger.integrations.opacus.LedgerGate` with Opacus 1.6 against the real app (in-process).

The run the gate registers must be the mechanism Opacus executes: on Opacus' own orders, the RDP
the ledger charged equals what Opacus' RDP accountant holds for the same steps, and so does the
epsilon, up to the ledger's stated margin toward privacy (``app.ledger.rounding``: every cost is
enlarged by a relative 1e-6, so the ledger is never below Opacus and at most that much above);
dpledger's default grid (a superset of Opacus' orders) can only lower the epsilon.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

opacus = pytest.importorskip(
    "opacus", reason="the Opacus integration needs `pip install dpledger[opacus]`"
)
torch = pytest.importorskip("torch", reason="Opacus needs torch")

from opacus import PrivacyEngine  # noqa: E402
from opacus.accountants.analysis import rdp as opacus_rdp  # noqa: E402
from opacus.accountants.rdp import RDPAccountant  # noqa: E402
from opacus.schedulers import ExponentialNoise  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import dp_core  # noqa: E402
from app.ledger.rounding import RDP_RELATIVE_MARGIN  # noqa: E402
from dpledger.client import BudgetExceeded, DpSgd  # noqa: E402
from dpledger.integrations.opacus import BudgetRefused, LedgerGate  # noqa: E402
from tests.unit.dpledger.app_client import running_app  # noqa: E402

DELTA = 1e-5
OPACUS_ORDERS = [float(a) for a in RDPAccountant.DEFAULT_ALPHAS]

# Opacus warns about its insecure default RNG and hooks; the test is about the accounting.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture
def ledger(tmp_path):
    torch.set_num_threads(1)
    with running_app(tmp_path) as running:
        yield running


def _opacus_setup(noise_multiplier=1.0, n=256, batch_size=32):
    torch.manual_seed(0)
    x, y = torch.randn(n, 6), torch.randint(0, 2, (n,))
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    engine = PrivacyEngine(accountant="rdp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, optimizer, loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader,
            noise_multiplier=noise_multiplier, max_grad_norm=1.0, poisson_sampling=True,
        )  # fmt: skip
    return engine, model, optimizer, loader


def _train_one_epoch(model, optimizer, loader):
    for x, y in loader:
        if len(y) == 0:  # an empty Poisson batch is a step too
            optimizer.zero_grad()
            optimizer.step()
            continue
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def _dataset(ledger, name, epsilon, orders=None):
    with ledger.client() as admin:
        admin.create_dataset(name=name, target_epsilon=epsilon, target_delta=DELTA, orders=orders)
    return ledger.trainer_token(name)


def _charged_rdp(ledger, dataset):
    with ledger.client() as admin:
        entries = admin.list_ledger(dataset, limit=1000).items
    return np.sum([e.rdp for e in entries if e.kind == "charge"], axis=0)


def assert_same_up_to_the_margin(ledger_values, opacus_values):
    """The ledger's values are Opacus', enlarged by at most the ledger's margin (never lowered)."""
    ours, theirs = np.asarray(ledger_values), np.asarray(opacus_values)
    assert np.all(ours >= theirs * (1 - 1e-12))
    np.testing.assert_allclose(ours, theirs, rtol=2 * RDP_RELATIVE_MARGIN)


def _opacus_rdp(engine):
    return np.sum(
        [opacus_rdp.compute_rdp(q=q, noise_multiplier=s, steps=n, orders=OPACUS_ORDERS)
         for s, q, n in engine.accountant.history],
        axis=0,
    )  # fmt: skip


def test_three_added_lines_register_charge_and_finish_what_opacus_runs(ledger):
    token = _dataset(ledger, "opacus-ok", 20.0, orders=OPACUS_ORDERS)
    engine, model, optimizer, loader = _opacus_setup()
    gate = LedgerGate(optimizer=optimizer, data_loader=loader, client=ledger.client(token),
                      dataset="opacus-ok", epochs=3)  # fmt: skip
    for _epoch in gate.epochs():
        _train_one_epoch(model, optimizer, loader)

    with ledger.client(token) as client:
        run = client.get_run(gate.run_id)
        budget = client.get_budget("opacus-ok")
    assert (run.sample_rate, run.steps_per_epoch) == (loader.sample_rate, len(loader)) == (1 / 8, 8)
    assert run.noise is not None and run.noise.noise_multiplier == optimizer.noise_multiplier == 1.0
    assert (run.status, run.epochs_charged, run.max_grad_norm) == ("finished", 3, 1.0)
    assert sum(n for _, _, n in engine.accountant.history) == 3 * len(loader)

    # Same RDP on Opacus' orders; same epsilon at the dataset's delta.
    assert_same_up_to_the_margin(_charged_rdp(ledger, "opacus-ok"), _opacus_rdp(engine))
    opacus_epsilon = engine.accountant.get_epsilon(delta=DELTA)
    assert_same_up_to_the_margin(
        [run.epsilon_run, budget.epsilon_non_adaptive], [opacus_epsilon] * 2
    )
    assert gate.last_charge.epsilon_run == run.epsilon_run
    # dpledger's default grid holds Opacus' orders: its epsilon can only be lower.
    ours = dp_core.compute_epsilon(
        sample_rate=loader.sample_rate, noise_multiplier=1.0, steps=24, delta=DELTA
    )
    assert ours.epsilon <= opacus_epsilon * (1 + 1e-12)


def test_per_epoch_noise_changes_are_charged_at_the_noise_each_epoch_runs_with(ledger):
    token = _dataset(ledger, "opacus-decay", 50.0, orders=OPACUS_ORDERS)
    engine, model, optimizer, loader = _opacus_setup(noise_multiplier=1.5)
    scheduler = ExponentialNoise(optimizer, gamma=0.8)
    gate = LedgerGate(optimizer=optimizer, data_loader=loader, client=ledger.client(token),
                      dataset="opacus-decay", epochs=3, reservation="epoch")  # fmt: skip
    for _epoch in gate.epochs():
        _train_one_epoch(model, optimizer, loader)
        scheduler.step()

    sigmas = [s.noise_multiplier for s in gate.segments]
    assert sigmas == pytest.approx([1.5, 1.2, 0.96])
    assert [s.first_epoch for s in gate.segments] == [0, 1, 2]
    assert sorted({s for s, _, _ in engine.accountant.history}) == pytest.approx(sorted(sigmas))
    assert_same_up_to_the_margin(_charged_rdp(ledger, "opacus-decay"), _opacus_rdp(engine))
    with ledger.client(token) as client:
        runs = client.get_budget("opacus-decay").runs
    assert [(r.status, r.epochs_charged) for r in runs] == [("finished", 1)] * 3


def test_a_plan_over_budget_is_refused_before_training(ledger):
    token = _dataset(ledger, "opacus-small", 0.5)
    _, _, optimizer, loader = _opacus_setup(noise_multiplier=0.7)
    with pytest.raises(BudgetRefused) as info:
        LedgerGate(optimizer=optimizer, data_loader=loader, client=ledger.client(token),
                   dataset="opacus-small", epochs=20)  # fmt: skip
    refusal = info.value
    assert isinstance(refusal, BudgetExceeded) and refusal.epoch is None
    assert refusal.epsilon_projected > 0.5 and refusal.run_id is not None
    assert str(refusal).startswith("HTTP 409 budget_exceeded: the ledger refused the run: ")


def test_a_refused_epoch_stops_the_loop_before_its_first_step(ledger):
    _, _, _, loader = _opacus_setup()
    # The filter epsilon of 2 and of 3 epochs, asked of a roomy dataset.
    with ledger.client() as admin:
        admin.create_dataset(name="probe", target_epsilon=1000.0, target_delta=DELTA)
        two = admin.preview_run(dataset="probe", name="p", mechanism=_mechanism(loader, 2))
        three = admin.preview_run(dataset="probe", name="p", mechanism=_mechanism(loader, 3))
    token = _dataset(ledger, "opacus-stop", 0.5 * (two.epsilon_projected + three.epsilon_projected))
    engine, model, optimizer, loader = _opacus_setup()
    gate = LedgerGate(optimizer=optimizer, data_loader=loader, client=ledger.client(token),
                      dataset="opacus-stop", epochs=5, reservation="epoch")  # fmt: skip
    trained = []
    with pytest.raises(BudgetRefused) as info:
        for epoch in gate.epochs():
            _train_one_epoch(model, optimizer, loader)
            trained.append(epoch)
    assert trained == [0, 1] and info.value.epoch == 2
    assert sum(n for _, _, n in engine.accountant.history) == 2 * len(loader)
    with ledger.client(token) as client:
        run = client.get_run(gate.run_id)
    assert (run.status, run.epochs_charged) == ("finished", 2)


def _mechanism(loader, epochs):
    return DpSgd(sample_rate=loader.sample_rate, steps_per_epoch=len(loader), epochs=epochs,
                 noise_multiplier=1.0)  # fmt: skip


def test_a_loader_without_poisson_sampling_is_refused(ledger):
    _, _, optimizer, _ = _opacus_setup()
    plain = DataLoader(TensorDataset(torch.zeros(4, 6)), batch_size=2)
    with pytest.raises(TypeError, match="poisson_sampling=True"):
        LedgerGate(
            optimizer=optimizer, data_loader=plain, service="http://x", dataset="d", epochs=1
        )


def test_a_restarted_script_continues_its_runs_and_pays_each_epoch_once(ledger):
    token = _dataset(ledger, "opacus-resume", 50.0)
    _, model, optimizer, loader = _opacus_setup(noise_multiplier=1.5)
    scheduler = ExponentialNoise(optimizer, gamma=0.8)
    gate = LedgerGate(optimizer=optimizer, data_loader=loader, client=ledger.client(token),
                      dataset="opacus-resume", epochs=4, idempotency_key="job-7")  # fmt: skip
    again = LedgerGate(optimizer=optimizer, data_loader=loader, client=ledger.client(token),
                       dataset="opacus-resume", epochs=4, idempotency_key="job-7")  # fmt: skip
    assert again.run_id == gate.run_id  # a restart before the first checkpoint: the same run
    gate.before_epoch(0)
    _train_one_epoch(model, optimizer, loader)
    scheduler.step()
    gate.before_epoch(1)
    checkpoint = {"gate": gate.state_dict(), "epoch": 1, "noise": optimizer.noise_multiplier}
    # ... the process dies during epoch 1; the script restarts from its checkpoint:
    _, model, optimizer, loader = _opacus_setup(noise_multiplier=checkpoint["noise"])
    scheduler = ExponentialNoise(optimizer, gamma=0.8)
    resumed = LedgerGate(optimizer=optimizer, data_loader=loader, client=ledger.client(token),
                         dataset="opacus-resume", epochs=4, state=checkpoint["gate"])  # fmt: skip
    for _epoch in resumed.epochs(start=checkpoint["epoch"]):
        _train_one_epoch(model, optimizer, loader)
        scheduler.step()

    assert [s.first_epoch for s in resumed.segments] == [0, 1, 2, 3]
    with ledger.client(token) as client:
        runs = client.get_budget("opacus-resume").runs
        charges = [(e.run_id, e.epoch) for e in client.list_ledger("opacus-resume").items
                   if e.kind == "charge"]  # fmt: skip
    assert [r.id for r in runs] == [s.run_id for s in resumed.segments]
    # The run open at the crash (epoch 1's) was continued and finished: nothing stays reserved.
    assert [(r.status, r.epochs_charged) for r in runs] == [("finished", 1)] * 4
    assert charges == [(s.run_id, 0) for s in resumed.segments]  # epoch 1 was paid once
