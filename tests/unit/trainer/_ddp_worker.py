"""One rank of the distributed trainer tests: ``python -m tests.unit.trainer._ddp_worker OUT``.

Run by test_distributed.py as W processes with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set.
It joins a gloo group, runs every scenario in turn and saves what each saw to OUT/rank<r>.pt.
"""

import datetime
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dp_core.errors import InvalidParameterError
from dp_core.trainer.adaptive_clipping import AdaptiveClipping
from dp_core.trainer.budget_gate import GateDecision, LocalBudgetGate
from dp_core.trainer.errors import LedgerError, TrainerError
from dp_core.trainer.loop import DPTrainer, LogicalBatch
from dp_core.trainer.recipe import TrainConfig, run_training

EQUIVALENCE = {
    "plain": {"engine": "bookkeeping"},
    "adaptive": {
        "engine": "func",
        "max_physical_batch_size": 7,
        "adaptive_clipping": AdaptiveClipping(count_noise_std=2.0, learning_rate=0.5),
    },
}
"""Settings of the runs compared with one process (the test builds the same trainers)."""


def blobs(n=200, dim=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64) + 2.0 * (2 * y[:, None] - 1)
    return TensorDataset(x, y)


def equivalence_trainer(variant, *, dataset, init_seed, **kw):
    """A float64 model and trainer; every rank and the one-process reference build it so."""
    torch.manual_seed(init_seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    return DPTrainer(
        model,
        opt,
        dataset,
        loss_fn=F.cross_entropy,
        max_grad_norm=0.5,
        epochs=2,
        expected_batch_size=30,
        noise_multiplier=0.7,
        noise_seed=11,
        **EQUIVALENCE[variant],
        **kw,
    )


class UnaskableGate:
    """The gate of ranks other than 0: asking it is a bug (it would also refuse)."""

    asked = 0

    def _refuse(self, *args):
        UnaskableGate.asked += 1
        return GateDecision(False, "rank 1's gate was asked")

    open = before_epoch = _refuse

    def finish(self):
        UnaskableGate.asked += 1

    def state_dict(self):
        return {"kind": "unaskable"}

    def load_state_dict(self, state):
        UnaskableGate.asked += 1


class BrokenGate(UnaskableGate):
    """Rank 0's gate when the ledger fails: every rank must raise, none may hang."""

    def open(self, plan):
        raise LedgerError("ledger unreachable")


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def run_equivalence(rank, variant):
    # A different initial model on each rank: the trainer must start every rank from rank 0's.
    trainer = equivalence_trainer(variant, dataset=blobs(), init_seed=100 + rank)
    steps = []
    for epoch in trainer.epochs():
        for batch in epoch:
            stats = trainer.step(batch)
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, batch.indices.tolist())
            steps.append({"indices": gathered, "examples": stats.batch_size})
    return {"params": params(trainer.model), "steps": steps, "clip": trainer.clip}


def run_noise(rank):
    """One step on empty batches: the update is lr * (noise / qN), nothing else."""
    model = nn.Linear(400, 100, bias=False)
    nn.init.zeros_(model.weight)
    data = TensorDataset(torch.randn(1000, 400), torch.randint(0, 100, (1000,)))
    trainer = DPTrainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.5),
        data,
        loss_fn=F.cross_entropy,
        max_grad_norm=0.7,
        epochs=1,
        expected_batch_size=50,
        noise_multiplier=1.3,
        # noise: rank 0's secret generator only (the others never draw any)
    )
    trainer.step(LogicalBatch(0, torch.tensor([], dtype=torch.long)))
    return {"weight": model.weight.detach().clone(), "expected_units": trainer.expected_units}


def gated_trainer(rank, directory, *, target_epsilon, shard):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 2)).double()
    data = blobs()
    if shard:  # each rank is given only its own (uneven) part of the data
        data = TensorDataset(*(t[:120] if rank == 0 else t[120:] for t in data.tensors))
    gate = (
        LocalBudgetGate(target_epsilon=target_epsilon, delta=1e-5) if rank == 0 else UnaskableGate()
    )
    return DPTrainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.5),
        data,
        loss_fn=F.cross_entropy,
        max_grad_norm=1.0,
        epochs=6,
        expected_batch_size=40,
        noise_multiplier=1.5,
        gate=gate,
        noise_seed=5,
        checkpoint_dir=directory / f"ckpt-rank{rank}",
        dataset_is_shard=shard,
    )


GATE_TARGET_EPSILON = 3.5


def run_gate(rank, directory):
    trainer = gated_trainer(rank, directory, target_epsilon=GATE_TARGET_EPSILON, shard=True)
    first = trainer.fit()
    resumed = gated_trainer(rank, directory, target_epsilon=50.0, shard=True)
    did_resume = resumed.resume()
    second = resumed.fit()
    straight = gated_trainer(rank, directory / "straight", target_epsilon=50.0, shard=True)
    straight.fit()
    return {
        "first": (first.epochs_completed, first.stop_reason, first.history),
        "plan": trainer.plan.to_dict(),
        "num_examples": trainer.num_examples,
        "resumed": did_resume,
        "second": (second.epochs_completed, second.stop_reason),
        "params": params(resumed.model),
        "straight_params": params(straight.model),
        "gate_of_rank1_asked": UnaskableGate.asked,
        "checkpoint_written": (directory / f"ckpt-rank{rank}" / "checkpoint.pt").exists(),
    }


def run_refusals():
    model = nn.Linear(5, 2).double()
    try:
        DPTrainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            blobs(),
            loss_fn=F.cross_entropy,
            max_grad_norm=1.0,
            epochs=1,
            expected_batch_size=20,
            noise_multiplier=1.0,
            num_microbatches=4,
        )
    except InvalidParameterError as exc:
        microbatches = str(exc)
    else:
        microbatches = None
    try:  # the ranks disagree on the plan: every rank must raise, none may hang
        DPTrainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            blobs(),
            loss_fn=F.cross_entropy,
            max_grad_norm=1.0,
            epochs=1 + dist.get_rank(),
            expected_batch_size=20,
            noise_multiplier=1.0,
        )
    except InvalidParameterError as exc:
        mismatch = str(exc)
    else:
        mismatch = None
    trainer = DPTrainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        blobs(),
        loss_fn=F.cross_entropy,
        max_grad_norm=1.0,
        epochs=1,
        expected_batch_size=20,
        noise_multiplier=1.0,
        gate=BrokenGate(),
    )
    try:
        trainer.fit()
    except TrainerError as exc:  # LedgerError on rank 0, TrainerError naming rank 0 elsewhere
        broken_gate = f"{type(exc).__name__}: {exc}"
    else:
        broken_gate = None
    return {"microbatches": microbatches, "mismatch": mismatch, "broken_gate": broken_gate}


def run_recipe():
    config = TrainConfig(epochs=1, batch_size=200, noise_multiplier=1.0, distributed=True)
    return run_training(config)


def main(out):
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    torch.set_num_threads(1)
    results = {name: run_equivalence(rank, name) for name in EQUIVALENCE}
    results["noise"] = run_noise(rank)
    results["gate"] = run_gate(rank, out)
    results["refusals"] = run_refusals()
    results["recipe"] = run_recipe()
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    assert os.environ["WORLD_SIZE"] == "2"
