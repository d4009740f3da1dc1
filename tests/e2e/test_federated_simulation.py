"""DP-FedAvg on Flower's own simulation engine (Ray) against a real ledger server (uvicorn, SQLite).

Each test is one Flower simulation: Ray starts, N virtual SuperNodes run the ClientApp in Ray
actor processes, the ServerApp runs Flower's workflows (SecAgg+ included) against Flower's
in-memory SuperLink state, and the gate charges the server over HTTP before every round.
Starting and stopping Ray costs ~10 s of each test.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest

pytest.importorskip("flwr", reason="Flower is the optional 'federated' extra")
pytest.importorskip("ray", reason="Flower's simulation engine is flwr[simulation] (Ray)")

from typer.testing import CliRunner  # noqa: E402

from dp_core.conversion import rdp_capacity  # noqa: E402
from dp_core.federated import DpFedAvgRounds  # noqa: E402
from dp_core.rdp.compose import compute_rdp  # noqa: E402
from dpledger.cli import cli  # noqa: E402
from dpledger.client import LedgerClient  # noqa: E402
from dpledger.federated.apps import FederatedConfig  # noqa: E402
from dpledger.federated.runner import (  # noqa: E402
    LedgerRoundGate,
    ledger_mechanism,
    run_federated,
    user_epsilon,
)
from tests.federated_helpers import (  # noqa: E402
    DropOut,
    RecordClipped,
    ServerSpy,
    check_round_of_survivors,
    flat,
)
from tests.integration.conftest import ADMIN_TOKEN as ADMIN  # noqa: E402
from tests.integration.server import Server  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ledger")
    running = Server(f"sqlite:///{tmp / 'ledger.db'}", tmp / "server.log").start()
    try:
        yield running
    finally:
        running.stop()


def _dataset(server, name, target_epsilon):
    with LedgerClient(server.url, token=ADMIN) as admin:
        admin.create_dataset(
            name=name, target_epsilon=target_epsilon, target_delta=1e-5, privacy_unit="user"
        )


def _charges(server, name):
    with LedgerClient(server.url, token=ADMIN) as admin:
        return [e.epoch for e in admin.list_ledger(name).items if e.kind == "charge"]


def _gate(server, dataset, reservation="plan"):
    def make(record):
        return LedgerRoundGate(
            LedgerClient(server.url, token=ADMIN), dataset=dataset, name="fl",
            mechanism=ledger_mechanism(record), reservation=reservation,
        )  # fmt: skip

    return make


def test_rounds_are_charged_one_by_one_and_secagg_shows_the_server_only_sums(
    server, tmp_path, monkeypatch
):
    _dataset(server, "clinics", 20.0)
    config = FederatedConfig(
        users=12, rounds=3, clients_per_round=4, noise_multiplier=2.0, clip=1.0,
        secure_aggregation=True,
    )  # fmt: skip
    spy = ServerSpy(monkeypatch)
    record = RecordClipped(tmp_path)
    seen_by_round = []

    def on_round(r):  # the ledger admitted round r; its clients have not trained yet
        seen_by_round.append((_charges(server, "clinics"), len(record.load(r + 1))))

    result, strategy = run_federated(
        config,
        engine="simulation",
        gate_factory=_gate(server, "clinics"),
        on_round=on_round,
        extra_mods=[record],
    )
    assert seen_by_round == [([0], 0), ([0, 1], 0), ([0, 1, 2], 0)]
    assert (result.engine, result.rounds_completed, result.stop_reason) == (
        "simulation", 3, "completed",
    )  # fmt: skip
    with LedgerClient(server.url, token=ADMIN) as admin:
        run = admin.get_run(result.run_id)
    assert (run.status, run.epochs_charged) == ("finished", 3)
    assert result.epsilon == pytest.approx(user_epsilon(config.mechanism(650), delta=1e-5))
    # The strategy (all the server-side code above Flower's SecAgg+ workflow) got 4 results a
    # round, each the mean of the 4 clipped models, never one client's model.
    assert strategy.received == [4, 4, 4] and len(spy.received) == 3
    for r, received in enumerate(spy.received, start=1):
        models = [flat(m) for m in record.load(r).values()]
        assert len(models) == 4
        for got in map(flat, received):
            assert not any(np.allclose(got, one, atol=1e-4) for one in models)
            np.testing.assert_allclose(
                got, np.mean(models, axis=0), rtol=0, atol=2 * config.quantization_step
            )


def test_dropouts_under_secagg_on_the_simulation_engine(server, tmp_path, monkeypatch):
    # 6 users, all drawn each round; SecAgg+ needs 4. Round 1 loses 2 (aggregates the other 4),
    # round 3 loses 3 (fails: charged once, nothing released, the run stops).
    _dataset(server, "wards", 20.0)
    config = FederatedConfig(
        users=6, rounds=3, clients_per_round=6, noise_multiplier=2.0, clip=1.0,
        secure_aggregation=True,
    )  # fmt: skip
    spy = ServerSpy(monkeypatch)
    record = RecordClipped(tmp_path)
    result, strategy = run_federated(
        config,
        engine="simulation",
        gate_factory=_gate(server, "wards"),
        extra_mods=[DropOut({1: {1, 4}, 3: {0, 2, 5}}), record],
    )
    assert (strategy.sampled, strategy.received) == ([6, 6, 6], [4, 6])
    check_round_of_survivors(
        spy.received[0], spy.released[0], record.load(1), survivors={0, 2, 3, 5}, m=6,
        step=config.quantization_step,
    )  # fmt: skip
    assert (result.rounds_completed, result.rounds_charged) == (2, 3)
    assert result.stop_reason.startswith(
        "secure_aggregation_failed: round 3: 3 of the 6 sampled clients dropped out"
    )
    assert _charges(server, "wards") == [0, 1, 2]
    completed = DpFedAvgRounds(**{**asdict(config.mechanism(650)), "rounds": 2})
    assert result.epsilon == pytest.approx(user_epsilon(completed, delta=1e-5))


def test_cli_on_mnist_files_stops_at_the_round_the_ledger_predicts(server, tmp_path):
    pytest.importorskip("torch", reason="the MNIST loaders are the trainer's (torch)")
    from tests.unit.trainer.test_data import write_mnist

    (tmp_path / "mnist").mkdir()
    write_mnist(tmp_path / "mnist", n_train=64, n_test=16, gz=True)
    _dataset(server, "hospitals", 2.0)
    with LedgerClient(server.url, token=ADMIN) as admin:
        orders = admin.get_dataset("hospitals").orders
    one_round = compute_rdp(
        DpFedAvgRounds(users=16, sampling="fixed", clients_per_round=2, noise_multiplier=4.0,
                       clip=1.0),
        orders,
    )  # fmt: skip
    capacity = rdp_capacity(orders=orders, epsilon=2.0, deltas=1e-5 / len(orders))
    best = float(np.max(capacity / one_round))  # the pay-as-you-go filter: max_a floor(B/c)
    assert 0.01 < best - math.floor(best) < 0.99
    expected = math.floor(best)
    assert 0 < expected < 20
    args = ["fl", "--data", f"mnist:{tmp_path / 'mnist'}", "--users", "16", "--rounds", "20",
            "--clients-per-round", "2", "--noise-multiplier", "4", "--clip", "1", "--json",
            "--service", server.url, "--token", ADMIN, "--dataset", "hospitals",
            "--reservation", "epoch", "--out", str(tmp_path / "model.npz")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)
    assert (summary["engine"], summary["rounds_completed"]) == ("simulation", expected)
    assert summary["rounds_charged"] == expected
    assert summary["data"] == f"mnist:{(tmp_path / 'mnist').resolve()}"
    assert result.stderr.strip().splitlines()[-1].startswith("refused: budget_exceeded")
    assert _charges(server, "hospitals") == list(range(expected))
    with np.load(tmp_path / "model.npz") as model:
        assert model["arr_0"].shape == (784, 10)
