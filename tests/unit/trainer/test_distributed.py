"""Data-parallel DP-SGD: 2 CPU processes on the gloo backend against one process.

The two ranks are launched once per module (``_ddp_worker`` runs every scenario in one process
group, about 5 s in all); each test then checks one property of what they saved.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dp_core.errors import InvalidParameterError
from dp_core.randomness import NOISE_STREAM, SAMPLING_STREAM, stream_seed
from dp_core.trainer.budget_gate import RunPlan
from dp_core.trainer.cli import register
from dp_core.trainer.distributed import detect_context, shard_indices
from dp_core.trainer.loop import LogicalBatch
from dp_core.trainer.recipe import TrainConfig, launched_distributed

from ._ddp_worker import EQUIVALENCE, GATE_TARGET_EPSILON, blobs, equivalence_trainer

WORLD_SIZE = 2
REPO = Path(__file__).resolve().parents[3]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out):
    port = _free_port()
    procs = []
    for rank in range(WORLD_SIZE):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD_SIZE),
            "OMP_NUM_THREADS": "1",
        }
        if sys.platform == "linux":  # gloo over loopback, whatever the hostname resolves to
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        cmd = [sys.executable, "-W", "error", "-m", "tests.unit.trainer._ddp_worker", str(out)]
        procs.append(
            subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=180)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    return [p.returncode for p in procs], logs


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each rank saved, in rank order."""
    for _ in range(3):  # the free port may be taken between choosing and binding it
        out = tmp_path_factory.mktemp("ddp")
        codes, logs = _launch(out)
        if codes == [0] * WORLD_SIZE or "address already in use" not in "".join(logs).lower():
            break
    assert codes == [0] * WORLD_SIZE, "\n\n".join(logs)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


# --- two processes ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(EQUIVALENCE))
def test_two_ranks_equal_one_process_on_the_union_of_their_batches(ranks, variant):
    steps = ranks[0][variant]["steps"]
    assert len(steps) == 14  # 2 epochs of ceil(1 / q) = ceil(200 / 30) = 7 steps
    reference = equivalence_trainer(variant, dataset=blobs(), init_seed=100, distributed=False)
    for t, step in enumerate(steps):
        for rank, part in enumerate(step["indices"]):  # each rank sampled only its own shard
            assert all(i % WORLD_SIZE == rank for i in part)
        union = sorted(i for part in step["indices"] for i in part)
        assert step["examples"] == len(union)
        if t % 7 == 0:  # the ranks' trainers reseed (from noise_seed) at each epoch's start
            reference.reseed()
        reference.step(LogicalBatch(t, torch.tensor(union, dtype=torch.long)))
    assert sum(s["examples"] for s in steps) > 100
    # Independent sampling: the ranks do not pick the same positions of their shards.
    positions = [[[i // WORLD_SIZE for i in part] for part in s["indices"]] for s in steps]
    assert sum(p[0] == p[1] for p in positions) < len(steps) // 2
    for got, want in zip(ranks[0][variant]["params"], reference.model.parameters(), strict=True):
        torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-10)
    assert ranks[0][variant]["clip"] == pytest.approx(reference.clip, rel=1e-12)


def test_the_comparison_is_sensitive_to_the_noise():
    """Another noise draw moves the reference far beyond the tolerance used above."""
    finals = []
    for seed in (11, 12):
        trainer = equivalence_trainer("plain", dataset=blobs(), init_seed=100, distributed=False)
        trainer.noise_rng.manual_seed(seed)
        for t in range(5):
            trainer.step(LogicalBatch(t, torch.arange(t, 200, 7)))
        finals.append(torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()]))
    assert float((finals[0] - finals[1]).abs().max()) > 1e-3


@pytest.mark.slow
def test_models_are_bit_identical_on_every_rank(ranks):
    for key in ("plain", "adaptive"):
        for a, b in zip(ranks[0][key]["params"], ranks[1][key]["params"], strict=True):
            assert torch.equal(a, b)
        assert ranks[0][key]["clip"] == ranks[1][key]["clip"]
    assert torch.equal(ranks[0]["noise"]["weight"], ranks[1]["noise"]["weight"])
    assert ranks[0]["recipe"] == ranks[1]["recipe"]


@pytest.mark.slow
def test_noise_is_added_once_globally(ranks):
    sigma, clip, lr, coords = 1.3, 0.7, 0.5, 40_000
    assert ranks[0]["noise"]["expected_units"] == 50  # qN with the global N = 1000
    weight = ranks[0]["noise"]["weight"]  # lr * N(0, (sigma C)^2) / (qN) from empty batches
    want = lr * sigma * clip / 50
    got = float(weight.std())
    # 5 standard errors of a std estimate (1.8%); noise per rank would give sqrt(2) = +41%.
    assert abs(got / want - 1) < 5 / (2 * coords) ** 0.5
    assert abs(float(weight.mean())) < 5 * want / coords**0.5


@pytest.mark.slow
def test_every_rank_stops_where_the_gate_of_rank_0_refuses(ranks):
    plan = RunPlan.from_dict(ranks[0]["gate"]["plan"])
    fits = max(e for e in range(plan.epochs + 1) if plan.epsilon(e) <= GATE_TARGET_EPSILON)
    assert 0 < fits < plan.epochs
    for rank, seen in enumerate(ranks):
        gate = seen["gate"]
        completed, reason, history = gate["first"]
        assert completed == fits and len(history) == fits
        assert reason.startswith("refused: budget_exceeded")
        assert gate["num_examples"] == 200  # global N from the uneven shards 120 + 80
        assert gate["gate_of_rank1_asked"] == 0
        assert gate["checkpoint_written"] == (rank == 0)
    assert ranks[0]["gate"]["first"] == ranks[1]["gate"]["first"]


@pytest.mark.slow
def test_a_resumed_distributed_run_continues_exactly(ranks):
    for seen in ranks:
        gate = seen["gate"]
        assert gate["resumed"] and gate["second"] == (6, "completed")
        for a, b in zip(gate["params"], gate["straight_params"], strict=True):
            assert torch.equal(a, b)


@pytest.mark.slow
def test_unsupported_settings_or_a_failing_gate_raise_on_every_rank(ranks):
    for seen in ranks:
        assert "num_microbatches" in seen["refusals"]["microbatches"]
        assert "torch.distributed" in seen["refusals"]["microbatches"]
        assert "same on every rank" in seen["refusals"]["mismatch"]
    assert ranks[0]["refusals"]["broken_gate"] == "LedgerError: ledger unreachable"
    assert ranks[1]["refusals"]["broken_gate"] == (
        "TrainerError: the budget gate failed on rank 0: LedgerError: ledger unreachable"
    )


@pytest.mark.slow
def test_the_recipe_trains_data_parallel(ranks):
    summary = ranks[0]["recipe"]
    assert summary["world_size"] == 2 and summary["epochs_completed"] == 1
    assert summary["steps_per_epoch"] == 8  # ceil(1437 / 200): the global N


# --- one process -----------------------------------------------------------------------------


def test_shards_partition_the_dataset():
    shards = [shard_indices(10, rank=r, world_size=3) for r in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(10))
    assert [s.numel() for s in shards] == [4, 3, 3]


def test_each_rank_samples_with_its_own_generator():
    seeds = [stream_seed(7, stream=SAMPLING_STREAM, words=(r, 0)) for r in range(4)]
    assert len(set(seeds)) == 4 and stream_seed(7, stream=NOISE_STREAM, words=(0,)) not in seeds
    fresh = [stream_seed(None, stream=SAMPLING_STREAM, words=(r, 0)) for r in range(4)]
    assert len(set(fresh)) == 4  # by default each rank draws its own OS entropy


def test_without_a_process_group_the_trainer_runs_alone():
    assert detect_context(None) is None and detect_context(False) is None
    with pytest.raises(InvalidParameterError, match="torchrun"):
        detect_context(True)


def test_the_recipe_goes_distributed_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_distributed(TrainConfig())
    assert not launched_distributed(TrainConfig(distributed=False))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not launched_distributed(TrainConfig())


def test_cli_distributed_outside_torchrun_exits_2(monkeypatch):
    import typer
    from typer.testing import CliRunner

    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    result = CliRunner().invoke(
        app, ["train", "--distributed", "--no-progress", "--noise-multiplier", "1"]
    )
    assert result.exit_code == 2 and "torchrun" in result.output
