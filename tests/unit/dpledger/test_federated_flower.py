"""DP-FedAvg on Flower against the real ledger app: rounds charged one by one, budget cuts, SecAgg+."""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import partial

import numpy as np
import pytest

pytest.importorskip(
    "flwr", reason="Flower is the optional 'federated' extra (make test installs it)"
)

from flwr.common import parameters_to_ndarrays  # noqa: E402
from flwr.compat.common.recorddict_compat import recorddict_to_fitres  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from dp_core.federated import DpFedAvgRounds  # noqa: E402
from dp_core.rdp.compose import compute_rdp  # noqa: E402
from dpledger.cli import cli  # noqa: E402
from dpledger.federated.apps import DpFedAvgStrategy, FederatedConfig  # noqa: E402
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
)

from .app_client import ADMIN_TOKEN, running_app  # noqa: E402
from .test_fedavg_ledger import predicted_rounds  # noqa: E402

CONFIG = FederatedConfig(users=20, rounds=4, clients_per_round=5, noise_multiplier=3.0, clip=1.0)


@pytest.fixture
def ledger(tmp_path):
    with running_app(tmp_path) as running:
        with running.client() as admin:
            admin.create_dataset(
                name="users", target_epsilon=2.0, target_delta=1e-5, privacy_unit="user"
            )
            admin.create_dataset(
                name="roomy", target_epsilon=20.0, target_delta=1e-5, privacy_unit="user"
            )
        yield running


def gate_on(ledger, reservation="plan", dataset="users"):
    def make(record):
        return LedgerRoundGate(
            ledger.client(), dataset=dataset, name="fl", mechanism=ledger_mechanism(record),
            reservation=reservation,
        )  # fmt: skip

    return make


def test_each_round_is_charged_before_it_runs(ledger, tmp_path):
    order = []

    def on_round(r):  # called once the ledger admitted round r, before its clients train
        with ledger.client() as admin:
            order.append([e.epoch for e in admin.list_ledger("roomy").items if e.kind == "charge"])

    result, strategy = run_federated(
        CONFIG,
        engine="inprocess",
        gate_factory=gate_on(ledger, dataset="roomy"),
        on_round=on_round,
        out=tmp_path / "m.npz",
    )
    assert order == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]
    assert (result.rounds_completed, result.stop_reason, strategy.received) == (
        4,
        "completed",
        [5, 5, 5, 5],
    )
    with ledger.client() as admin:
        run = admin.get_run(result.run_id)
        assert (run.kind, run.status, run.epochs_charged) == ("dp_fedavg", "finished", 4)
    record = CONFIG.mechanism(650)
    assert result.epsilon == pytest.approx(user_epsilon(record, delta=1e-5))
    assert (tmp_path / "m.npz").exists()


def test_a_budget_cut_stops_the_server_at_the_predicted_round(ledger, tmp_path):
    config = FederatedConfig(
        users=20, rounds=100, clients_per_round=2, noise_multiplier=3.0, clip=1.0
    )
    with ledger.client() as admin:
        orders = admin.get_dataset("users").orders
    one = compute_rdp(
        DpFedAvgRounds(
            users=20, sampling="fixed", clients_per_round=2, noise_multiplier=3.0, clip=1.0
        ),
        orders,
    )
    expected = predicted_rounds(orders, 2.0, 1e-5, one)
    assert 0 < expected < 100
    result, strategy = run_federated(
        config, engine="inprocess", gate_factory=gate_on(ledger, "epoch"), out=tmp_path / "cut.npz"
    )
    assert result.rounds_completed == expected == len(strategy.received)
    assert result.stop_reason.startswith("budget_exceeded")
    with np.load(tmp_path / "cut.npz") as saved:  # the last admitted model
        np.testing.assert_array_equal(saved["arr_0"], strategy.current[0])


@pytest.fixture
def seen(monkeypatch):
    """What the strategy receives in aggregate_fit, round by round."""
    rounds = []
    original = DpFedAvgStrategy.aggregate_fit

    def spy(self, server_round, results, failures):
        rounds.append([parameters_to_ndarrays(res.parameters) for _, res in results])
        return original(self, server_round, results, failures)

    monkeypatch.setattr(DpFedAvgStrategy, "aggregate_fit", spy)
    return rounds


def clipped_models():
    """A client mod that sees each client's clipped model (just before SecAgg+ masks it)."""
    by_round = {}

    def mod(msg, ctxt, call_next):
        out = call_next(msg, ctxt)
        if msg.metadata.message_type == "train":
            fitres = recorddict_to_fitres(out.content, keep_input=True)
            by_round.setdefault(msg.metadata.group_id, []).append(
                parameters_to_ndarrays(fitres.parameters)
            )
        return out

    return mod, by_round


@pytest.mark.parametrize("secure", [True, False])
def test_with_secure_aggregation_the_strategy_never_holds_one_update(seen, secure):
    config = FederatedConfig(
        users=12,
        rounds=2,
        clients_per_round=4,
        noise_multiplier=1.0,
        clip=1.0,
        secure_aggregation=secure,
    )
    mod, clipped = clipped_models()
    run_federated(config, engine="inprocess", extra_mods=[mod])
    assert len(seen) == 2
    for received, individual in zip(seen, clipped.values(), strict=True):
        assert len(individual) == 4
        flat = [np.concatenate([a.ravel() for a in r]) for r in received]
        models = [np.concatenate([a.ravel() for a in m]) for m in individual]
        holds_one = any(np.allclose(f, m, atol=1e-4) for f in flat for m in models)
        if secure:
            assert not holds_one
            mean = np.mean(models, axis=0)  # the sum over 4 weight-1 clients, divided by 4
            for f in flat:
                np.testing.assert_allclose(f, mean, atol=1e-4)  # up to SecAgg+'s quantization
        else:
            assert holds_one  # the contrast: without SecAgg+ it sees each client's model


def test_secure_aggregation_charges_the_quantization(ledger):
    config = FederatedConfig(
        users=20,
        rounds=1,
        clients_per_round=5,
        noise_multiplier=3.0,
        clip=1.0,
        secure_aggregation=True,
    )
    record = config.mechanism(650)
    assert record.quantization_step == pytest.approx(16.0 / 2**22)
    assert record.sensitivity == pytest.approx(1.0 + np.sqrt(650) * 16.0 / 2**22)
    assert ledger_mechanism(record).to_json()["dimension"] == 650


def _route(monkeypatch, ledger):
    import dpledger.client as client_module

    monkeypatch.setattr(client_module, "LedgerClient", lambda _url, *, token: ledger.client(token))


def test_cli_json_summary(tmp_path):
    args = ["fl", "--engine", "inprocess", "--data", "digits", "--users", "20", "--rounds", "3", "--clients-per-round", "5",
            "--noise-multiplier", "1.0", "--clip", "1.0", "--json", "--out", str(tmp_path / "m.npz")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {
        "rounds_completed",
        "stop_reason",
        "epsilon",
        "delta",
        "test_accuracy",
        "secure_aggregation",
    } <= set(summary)
    assert (summary["rounds_completed"], summary["stop_reason"], summary["secure_aggregation"]) == (
        3,
        "completed",
        False,
    )
    assert 0.0 < summary["test_accuracy"] <= 1.0 and summary["epsilon"] > 0


def test_cli_refused_exits_3_with_one_line(ledger, monkeypatch):
    _route(monkeypatch, ledger)
    args = ["fl", "--engine", "inprocess", "--users", "20", "--rounds", "100", "--clients-per-round", "2", "--noise-multiplier", "3",
            "--clip", "1", "--json", "--service", "http://ledger", "--token", ADMIN_TOKEN, "--dataset", "users",
            "--reservation", "epoch"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)
    assert 0 < summary["rounds_completed"] < 100
    assert len(result.stderr.strip().splitlines()) == 1 and "budget_exceeded" in result.stderr


def test_cli_refused_up_front_prints_the_summary_like_train(ledger, monkeypatch):
    _route(monkeypatch, ledger)
    args = ["fl", "--engine", "inprocess", "--users", "20", "--rounds", "100", "--clients-per-round", "2", "--noise-multiplier", "3",
            "--clip", "1", "--json", "--service", "http://ledger", "--token", ADMIN_TOKEN, "--dataset", "users"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)  # the summary on stdout, as `train` prints one
    assert (summary["rounds_completed"], summary["rounds_planned"], summary["epsilon"]) == (
        0,
        100,
        0.0,
    )
    assert summary["stop_reason"].startswith("refused: budget_exceeded: ")
    (line,) = result.stderr.strip().splitlines()
    assert line == summary["stop_reason"]
    assert " rounds would fit" in line and "epochs" not in line  # the plan's unit, said once
    assert line.count("would fit") == 1  # not repeated in parentheses after the message
    with ledger.client() as admin:
        (run,) = admin.get_budget("users").runs
    assert (run.status, run.epochs_charged, summary["run_id"]) == ("refused", 0, run.id)


def test_cli_on_an_example_dataset_is_refused_as_input(ledger, monkeypatch):
    _route(monkeypatch, ledger)
    with ledger.client() as admin:
        admin.create_dataset(name="examples", target_epsilon=8.0, target_delta=1e-5)
    args = ["fl", "--engine", "inprocess", "--users", "20", "--rounds", "2", "--clients-per-round", "2", "--noise-multiplier", "3",
            "--clip", "1", "--service", "http://ledger", "--token", ADMIN_TOKEN, "--dataset", "examples"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "privacy_unit_mismatch" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_poisson_sampling_is_what_runs_and_what_is_charged(ledger, seen):
    # q = 0.05 over 20 users: many rounds draw nobody, and those rounds still release noise / qN.
    config = FederatedConfig(
        users=20, rounds=12, clients_per_round=0, sample_rate=0.05, noise_multiplier=3.0, clip=1.0
    )
    result, strategy = run_federated(
        config, engine="inprocess", gate_factory=gate_on(ledger, dataset="roomy")
    )
    assert result.rounds_completed == 12 == len(strategy.received)
    assert 0 in strategy.received and max(strategy.received) >= 1  # empty and non-empty rounds
    assert len(seen) == sum(1 for n in strategy.received if n)  # only non-empty rounds reach Flower
    with ledger.client() as admin:
        run = admin.get_run(result.run_id)
        assert run.mechanism["sampling"] == "poisson" and run.mechanism["sample_rate"] == 0.05
        assert run.epochs_charged == 12
    record = DpFedAvgRounds(
        users=20, sampling="poisson", sample_rate=0.05, noise_multiplier=3.0, clip=1.0, rounds=12
    )
    assert result.epsilon == pytest.approx(user_epsilon(record, delta=1e-5))


def test_poisson_with_secure_aggregation_is_refused():
    with pytest.raises(ValueError, match="secure aggregation"):
        FederatedConfig(
            users=20,
            rounds=1,
            clients_per_round=0,
            sample_rate=0.1,
            noise_multiplier=1.0,
            clip=1.0,
            secure_aggregation=True,
        )


SECURE_SIX = FederatedConfig(
    users=6, rounds=3, clients_per_round=6, noise_multiplier=2.0, clip=1.0, secure_aggregation=True
)


def test_secure_aggregation_sums_the_survivors_and_fails_cleanly_below_its_threshold(
    ledger, tmp_path, monkeypatch
):
    # All 6 users are drawn every round; SecAgg+ needs t = ceil(2*6/3) = 4 of them.
    assert SECURE_SIX.reconstruction_threshold == 4
    spy = ServerSpy(monkeypatch)
    record = RecordClipped(tmp_path)
    drop = DropOut({1: {1, 4}, 3: {0, 2, 5}})  # round 1: 4 survive; round 3: 3 survive
    result, strategy = run_federated(
        SECURE_SIX,
        engine="inprocess",
        gate_factory=gate_on(ledger, dataset="roomy"),
        extra_mods=[drop, record],
    )
    assert (strategy.sampled, strategy.received) == ([6, 6, 6], [4, 6])
    check_round_of_survivors(
        spy.received[0], spy.released[0], record.load(1), survivors={0, 2, 3, 5}, m=6,
        step=SECURE_SIX.quantization_step,
    )  # fmt: skip
    assert (result.rounds_completed, result.rounds_charged) == (2, 3)
    assert result.stop_reason == (
        "secure_aggregation_failed: round 3: 3 of the 6 sampled clients dropped out; SecAgg+"
        " needs 4 to unmask the sum (the round was charged, nothing was released)"
    )
    assert len(spy.released) == 2  # round 3 released nothing
    with ledger.client() as admin:
        charges = [e.epoch for e in admin.list_ledger("roomy").items if e.kind == "charge"]
        run = admin.get_run(result.run_id)
    assert charges == [0, 1, 2]  # each round once, the failed one included, nothing retried
    assert (run.status, run.epochs_charged) == ("finished", 3)
    completed = DpFedAvgRounds(**{**asdict(SECURE_SIX.mechanism(650)), "rounds": 2})
    assert result.epsilon == pytest.approx(user_epsilon(completed, delta=1e-5))


def test_cli_a_failed_round_exits_1_with_one_line(monkeypatch):
    import dpledger.federated.runner as runner

    monkeypatch.setattr(
        runner, "run_federated", partial(run_federated, extra_mods=[DropOut({2: {0, 1, 2}})])
    )
    args = ["fl", "--engine", "inprocess", "--users", "6", "--rounds", "3", "--clients-per-round", "6",
            "--noise-multiplier", "2", "--clip", "1", "--secure-aggregation", "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["rounds_completed"] == 1
    assert result.stderr.strip().splitlines() == [
        "error: secure_aggregation_failed: round 2: 3 of the 6 sampled clients dropped out;"
        " SecAgg+ needs 4 to unmask the sum (the round was charged, nothing was released)"
    ]


@pytest.mark.parametrize(("kind", "gz"), [("mnist", True), ("fashion-mnist", False)])
def test_cli_trains_on_idx_files_from_a_directory(tmp_path, monkeypatch, kind, gz):
    pytest.importorskip("torch", reason="the MNIST loaders are the trainer's (torch)")
    from tests.unit.trainer.test_data import write_mnist

    (tmp_path / "data").mkdir()
    write_mnist(tmp_path / "data", n_train=64, n_test=16, gz=gz)
    monkeypatch.chdir(tmp_path)  # a relative DIR is resolved before the nodes load their shards
    args = ["fl", "--engine", "inprocess", "--data", f"{kind}:data", "--users", "8", "--rounds", "2",
            "--clients-per-round", "4", "--noise-multiplier", "1", "--clip", "1", "--json",
            "--out", str(tmp_path / "m.npz")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["data"] == f"{kind}:{tmp_path.resolve() / 'data'}"
    assert summary["rounds_completed"] == 2 and 0.0 <= summary["test_accuracy"] <= 1.0
    # d = 28*28*10 + 10 parameters: what the reported epsilon's record would carry with SecAgg+.
    with np.load(tmp_path / "m.npz") as model:
        assert (model["arr_0"].shape, model["arr_1"].shape) == ((784, 10), (10,))


def test_idx_users_are_disjoint_shards_of_the_train_files(tmp_path):
    pytest.importorskip("torch", reason="the MNIST loaders are the trainer's (torch)")
    from dpledger.federated.data import UserSource
    from tests.unit.trainer.test_data import write_mnist

    write_mnist(tmp_path, n_train=64, n_test=16)
    source = UserSource(f"mnist:{tmp_path}", users=5)
    shards = [source.user(i) for i in range(5)]
    assert [len(s.labels) for s in shards] == [13, 13, 13, 13, 12]
    rows = np.concatenate([s.features for s in shards])
    assert rows.shape == (64, 784) and len(np.unique(rows, axis=0)) == 64  # each example once
    assert source.test().features.shape == (16, 784) and source.features == 784
    assert rows.min() >= 0.0 and rows.max() <= 1.0
    with pytest.raises(ValueError, match=r"users must be in \[1, 64\]"):
        UserSource(f"mnist:{tmp_path}", users=65).load()


@pytest.mark.parametrize("kind", ["mnist", "fashion-mnist"])
def test_cli_missing_directory_exits_2_saying_where_to_get_it(tmp_path, kind):
    pytest.importorskip("torch", reason="the MNIST loaders are the trainer's (torch)")
    args = ["fl", "--engine", "inprocess", "--data", f"{kind}:{tmp_path / 'nowhere'}", "--users", "4",
            "--rounds", "1", "--clients-per-round", "2", "--noise-multiplier", "1", "--clip", "1"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a directory" in lines[0]
    assert "t10k-labels-idx1-ubyte" in lines[0]  # which files, and where from
    assert ("yann.lecun.com" if kind == "mnist" else "zalandoresearch/fashion-mnist") in lines[0]


@pytest.mark.parametrize("kind", ["mnist", "fashion-mnist"])
def test_cli_data_without_a_directory_exits_2_saying_where_to_get_it(kind):
    pytest.importorskip("torch", reason="the wording is the trainer's (torch)")
    args = ["fl", "--engine", "inprocess", "--data", kind, "--users", "4", "--rounds", "1",
            "--clients-per-round", "2", "--noise-multiplier", "1", "--clip", "1"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"give {kind}:DIR" in lines[0] and "t10k-labels" in lines[0]


def test_cli_unknown_data_and_engine_exit_2():
    base = ["fl", "--users", "4", "--rounds", "1", "--clients-per-round", "2",
            "--noise-multiplier", "1", "--clip", "1"]  # fmt: skip
    result = CliRunner().invoke(cli, [*base, "--engine", "inprocess", "--data", "cifar10:/x"])
    assert result.exit_code == 2 and "--data must be one of" in result.stderr
    result = CliRunner().invoke(cli, [*base, "--engine", "ray"])
    assert result.exit_code == 2 and "--engine must be" in result.stderr


def test_cli_when_the_simulation_engine_dies_exits_1_with_one_line(monkeypatch):
    ray = pytest.importorskip("ray", reason="Flower's simulation engine is flwr[simulation] (Ray)")

    def broken(*args, **kwargs):
        raise OSError("no room for Ray")

    monkeypatch.setattr(ray, "init", broken)  # Flower's Ray backend cannot start
    args = ["fl", "--engine", "simulation", "--users", "6", "--rounds", "2", "--clients-per-round", "3",
            "--noise-multiplier", "1", "--clip", "1", "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, args)  # returns: the ServerApp's thread does not hang on
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [
        "error: Flower's simulation engine failed: OSError: no room for Ray"
    ]
