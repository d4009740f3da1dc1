"""DP-FedAvg on the ledger: user-level datasets, rounds charged one by one, units never mixed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dp_core.conversion import rdp_capacity
from dp_core.federated import DpFedAvgRounds
from dp_core.rdp.compose import compute_rdp
from dpledger.client import DpFedAvg, DpSgd, InvalidInput, LaplaceRelease, PrivacyUnitMismatch

from .app_client import running_app

FEDAVG = DpFedAvg(users=200, rounds=10, noise_multiplier=1.5, clip=1.0, sample_rate=0.05)


@pytest.fixture
def ledger(tmp_path):
    with running_app(tmp_path) as running:
        with running.client() as admin:
            admin.create_dataset(
                name="users", target_epsilon=2.0, target_delta=1e-5, privacy_unit="user"
            )
            admin.create_dataset(name="examples", target_epsilon=8.0, target_delta=1e-5)
        yield running


def test_the_privacy_unit_is_declared_and_shown(ledger):
    with ledger.client() as admin:
        assert admin.get_dataset("users").privacy_unit == "user"
        assert admin.get_budget("users").privacy_unit == "user"
        assert admin.get_dataset("examples").privacy_unit == "example"
        assert admin.get_budget("examples").privacy_unit == "example"


def test_rounds_are_charged_one_by_one(ledger):
    with ledger.client() as admin:
        run = admin.create_run(dataset="users", name="fl", mechanism=FEDAVG)
        assert (run.kind, run.epochs, run.epochs_charged) == ("dp_fedavg", 10, 0)
        for r in range(3):
            admin.charge_epoch(run.id, r)
        charges = [e.epoch for e in admin.list_ledger("users").items if e.kind == "charge"]
        assert charges == [0, 1, 2]
        assert admin.get_run(run.id).epochs_charged == 3
        # Three rounds cost exactly what dp_core says three rounds of this sampling cost.
        expected = compute_rdp(
            DpFedAvgRounds(
                users=200,
                sampling="poisson",
                sample_rate=0.05,
                noise_multiplier=1.5,
                clip=1.0,
                rounds=3,
            ),
            admin.get_dataset("users").orders,
        )
        committed = [o.rdp_committed for o in admin.get_budget("users").orders]
        np.testing.assert_allclose(committed, expected, rtol=2e-6)  # the rounding margin
        assert all(c >= e for c, e in zip(committed, expected, strict=True))  # rounded up


def predicted_rounds(orders, target_epsilon, target_delta, one_round):
    """Independent prediction of the pay-as-you-go filter: max over orders of floor(B(a) / c(a))."""
    capacity = rdp_capacity(
        orders=orders, epsilon=target_epsilon, deltas=target_delta / len(orders)
    )
    ratios = capacity / one_round
    best = float(np.max(ratios))
    assert 0.01 < best - math.floor(best) < 0.99, "pick parameters away from a rounding boundary"
    return math.floor(best)


@pytest.mark.parametrize(
    "mechanism",
    [
        DpFedAvg(users=100, rounds=400, noise_multiplier=2.0, clip=1.0, sample_rate=0.1),
        DpFedAvg(
            users=100,
            rounds=400,
            noise_multiplier=3.0,
            clip=1.0,
            sampling="fixed",
            clients_per_round=5,
        ),
    ],
)
def test_a_budget_cut_stops_at_the_round_the_ledger_predicts(ledger, mechanism):
    with ledger.client() as admin:
        orders = admin.get_dataset("users").orders
        record = DpFedAvgRounds(
            users=mechanism.users, sampling=mechanism.sampling, sample_rate=mechanism.sample_rate,
            clients_per_round=mechanism.clients_per_round, noise_multiplier=mechanism.noise_multiplier,
            clip=mechanism.clip, rounds=1,
        )  # fmt: skip
        expected = predicted_rounds(orders, 2.0, 1e-5, compute_rdp(record, orders))
        assert 0 < expected < 400
        run = admin.create_run(
            dataset="users", name="cut", mechanism=mechanism, reservation="epoch"
        )
        done = 0
        with pytest.raises(Exception) as refused:
            while True:
                admin.charge_epoch(run.id, done)
                done += 1
        assert refused.value.code == "budget_exceeded"
        assert done == expected


@pytest.mark.parametrize(
    ("dataset", "mechanism"),
    [
        ("users", DpSgd(sample_rate=0.01, epochs=1, noise_multiplier=1.0)),
        ("users", LaplaceRelease(sensitivity=1.0, noise_scale=1.0)),
        ("examples", FEDAVG),
    ],
)
def test_user_and_example_datasets_refuse_each_others_runs(ledger, dataset, mechanism):
    with ledger.client() as admin:
        with pytest.raises(PrivacyUnitMismatch) as refused:
            admin.create_run(dataset=dataset, name="wrong", mechanism=mechanism)
        assert refused.value.status == 409
        assert "privacy_unit" in refused.value.message
        assert admin.get_budget(dataset).runs == []  # nothing written
        assert admin.list_ledger(dataset).items == []


@pytest.mark.parametrize(
    "mechanism",
    [
        DpFedAvg(
            users=100, rounds=5, noise_multiplier=1.0, clip=1.0, sampling="fixed", sample_rate=0.1
        ),
        DpFedAvg(
            users=100,
            rounds=5,
            noise_multiplier=1.0,
            clip=1.0,
            sampling="fixed",
            clients_per_round=101,
        ),
        DpFedAvg(
            users=100,
            rounds=5,
            noise_multiplier=1.0,
            clip=1.0,
            sample_rate=0.1,
            quantization_step=0.1,
        ),
    ],
)
def test_an_inconsistent_federation_is_invalid_input(ledger, mechanism):
    with ledger.client() as admin, pytest.raises(InvalidInput):
        admin.create_run(dataset="users", name="bad", mechanism=mechanism)


def test_the_dashboard_shows_the_unit_and_rounds(ledger):
    import httpx

    from .app_client import ADMIN_TOKEN, BASE_URL

    with ledger.client() as admin:
        run = admin.create_run(dataset="users", name="fl", mechanism=FEDAVG)
        admin.charge_epoch(run.id, 0)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "text/html"}
    with httpx.Client(transport=ledger.transport, base_url=BASE_URL, headers=headers) as http:
        page = http.get("/dashboard/datasets/users")
        assert page.status_code == 200, page.text[:300]
        assert 'data-field="privacy_unit">user<' in page.text
        assert '<span class="unit" data-field="unit">rounds</span>' in page.text
        run_page = http.get(f"/dashboard/runs/{run.id}")
        assert run_page.status_code == 200
        assert "Rounds charged" in run_page.text and "DP-FedAvg over 200 users" in run_page.text
        examples = http.get("/dashboard/datasets/examples")
        assert 'data-field="privacy_unit">example<' in examples.text
