"""Benchmark of the DP-SGD step (issue 4): median step time and peak memory vs non-private.

On the TF Privacy tutorial CNN with batch 256 on CPU, in one run: the non-private step
(forward, backward, SGD step), our DP step with each engine (book-keeping, Bu et al. 2023; and
torch.func vmap-of-grad), and Opacus' make_private in its grad-sample modes when Opacus is
installed. Step times are interleaved round-robin in one process, so background load hits every
variant alike. Peak memory is the peak RSS growth during 5 steps over the RSS after setup, in a
fresh subprocess per variant (CPU has no allocator statistics).

    .venv/bin/python bench/trainer.py [--threads 2] [--steps 30] [--batch 256]
    .venv/bin/python bench/trainer.py --utility      # the digits utility table (mean of 3 seeds)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

VARIANTS = [
    "non_private",
    "dp_bookkeeping",
    "dp_bookkeeping_plain_noise",  # the same step with one float normal per coordinate
    "dp_func",
    "dp_func_plain_noise",
    "opacus_hooks",
    "opacus_functorch",
    "opacus_ew",
    "opacus_ghost",
]


def _setup(batch: int, threads: int) -> tuple[Any, Any, Any, Any]:
    import torch

    from dp_core.trainer.models import tutorial_cnn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = tutorial_cnn()
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    return torch, model, x, y


def _step_fn(variant: str, batch: int, threads: int) -> Any:
    torch, model, x, y = _setup(batch, threads)
    import torch.nn.functional as F

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if variant == "non_private":

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        return step
    if variant.startswith("dp_"):
        from torch.utils.data import TensorDataset

        from dp_core.trainer.loop import DPTrainer, LogicalBatch

        # A dataset of exactly one batch with q = 1 makes every logical batch the same 256 examples.
        # Default noise is secure mode (4 float64 normals per coordinate); *_plain_noise is one.
        engine = variant[3:].removesuffix("_plain_noise")
        trainer = DPTrainer(
            model, opt, TensorDataset(x, y), loss_fn=F.cross_entropy, max_grad_norm=1.0, epochs=1,
            sample_rate=1.0, noise_multiplier=1.0, engine=engine,
            secure_noise=not variant.endswith("_plain_noise"),
        )  # fmt: skip
        indices = torch.arange(batch)

        def dp_step() -> None:
            trainer.step(LogicalBatch(trainer.global_step, indices))

        return dp_step
    return _opacus_step(variant, torch, model, opt, x, y)


def _opacus_step(variant: str, torch: Any, model: Any, opt: Any, x: Any, y: Any) -> Any:
    import torch.nn.functional as F
    from opacus import PrivacyEngine  # raises ImportError when not installed

    mode = {
        "opacus_hooks": "hooks",
        "opacus_functorch": "functorch",
        "opacus_ew": "ew",
        "opacus_ghost": "ghost",
    }[variant]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=len(y))
    engine = PrivacyEngine()
    kwargs: dict[str, Any] = {"grad_sample_mode": mode, "poisson_sampling": False}
    if mode == "ghost":
        kwargs["criterion"] = torch.nn.CrossEntropyLoss()
    out = engine.make_private(
        module=model,
        optimizer=opt,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        **kwargs,
    )
    pmodel, popt = out[0], out[1]
    crit = out[3] if len(out) > 3 else torch.nn.CrossEntropyLoss()

    def step() -> None:
        popt.zero_grad(set_to_none=True)
        loss = crit(pmodel(x), y) if mode == "ghost" else F.cross_entropy(pmodel(x), y)
        loss.backward()
        popt.step()

    return step


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _memory(variant: str, batch: int, threads: int, steps: int) -> dict[str, Any]:
    """Peak RSS growth (MB) over the current RSS after setup, in a fresh process."""
    step = _step_fn(variant, batch, threads)
    base = _rss_mb()
    for _ in range(steps):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "peak_mb": max(peak - base, 0.0)}


def _run_child(variant: str, args: argparse.Namespace) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--child", variant, "--batch", str(args.batch), "--threads", str(args.threads),
           "--steps", "5"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode == 3:
        return None  # not installed
    if proc.returncode != 0:
        print(f"{variant}: failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _timings(args: argparse.Namespace) -> dict[str, float]:
    """Median step time (ms) per variant, steps interleaved round-robin so load hits all alike."""
    steps = {}
    for variant in VARIANTS:
        try:
            steps[variant] = _step_fn(variant, args.batch, args.threads)
            steps[variant]()  # a variant whose first step fails is left out, said on stderr
        except ImportError:
            steps.pop(variant, None)
        except Exception as error:  # e.g. an Opacus mode this Opacus version does not run
            print(f"{variant}: skipped ({type(error).__name__}: {error})", file=sys.stderr)
            steps.pop(variant, None)
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {v: [] for v in steps}
    for _ in range(args.steps):
        for variant, step in steps.items():
            start = time.perf_counter()
            step()
            times[variant].append(time.perf_counter() - start)
    return {v: 1e3 * statistics.median(t) for v, t in times.items()}


def bench(args: argparse.Namespace) -> None:
    times = _timings(args)
    memory = {v: row["peak_mb"] for v in times if (row := _run_child(v, args)) is not None}
    base_t, base_m = times["non_private"], memory.get("non_private", float("nan"))
    print(
        f"TF Privacy tutorial CNN, batch {args.batch}, {args.threads} threads, median of {args.steps} interleaved steps"
    )
    print(
        f"{'variant':<18}{'median ms':>10}{'x non-priv':>12}{'step peak MB':>14}{'x non-priv':>12}"
    )
    for name, t in times.items():
        m = memory.get(name, float("nan"))
        print(f"{name:<18}{t:>10.2f}{t / base_t:>11.2f}x{m:>14.1f}{m / base_m:>11.2f}x")
    if not any(k.startswith("opacus") for k in times):
        print("(Opacus is not installed: its rows are skipped)")


def utility(args: argparse.Namespace) -> None:
    """Digits, 80/20 split, delta 1e-5, mean test accuracy of 3 seeds at epsilon 1, 3, 8 and non-private."""
    from dp_core.trainer.recipe import TrainConfig, run_training

    settings = {
        1.0: {"epochs": 10, "batch_size": 256, "lr": 2.0, "max_grad_norm": 1.0},
        3.0: {"epochs": 15, "batch_size": 256, "lr": 2.0, "max_grad_norm": 1.0},
        8.0: {"epochs": 40, "batch_size": 256, "lr": 2.0, "max_grad_norm": 1.0},
    }
    print(f"{'epsilon':>8}{'sigma':>8}{'epochs':>8}{'batch':>7}{'accuracy (mean of 3)':>24}")
    for eps, s in settings.items():
        accs, sigma = [], 0.0
        for seed in range(3):
            config = TrainConfig(data="digits", model="mlp", target_epsilon=eps, delta=1e-5, optimizer="sgd",
                                 seed=seed, threads=args.threads, **s)  # type: ignore[arg-type]  # fmt: skip
            out = run_training(config)
            accs.append(out["test_accuracy"])
            sigma = out["noise_multiplier"]
        print(
            f"{eps:>8g}{sigma:>8.3f}{s['epochs']:>8}{s['batch_size']:>7}{statistics.mean(accs):>16.3f} {[round(a, 3) for a in accs]}"
        )
    accs = [_non_private_digits(seed, args.threads) for seed in range(3)]
    print(
        f"{'inf':>8}{'-':>8}{30:>8}{64:>7}{statistics.mean(accs):>16.3f} {[round(a, 3) for a in accs]}"
    )


def _non_private_digits(seed: int, threads: int) -> float:
    import torch
    import torch.nn.functional as F

    from dp_core.trainer.data import load_digits_data
    from dp_core.trainer.models import mlp
    from dp_core.trainer.recipe import evaluate

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    data = load_digits_data(seed=seed)
    model = mlp(image_size=8, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = data.train.tensors
    for _ in range(30):
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return evaluate(model, data.test)[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--child", choices=VARIANTS)
    parser.add_argument("--utility", action="store_true")
    args = parser.parse_args()
    if args.child:
        try:
            row = _memory(args.child, args.batch, args.threads, args.steps)
        except ImportError:
            sys.exit(3)
        print(json.dumps(row))
    elif args.utility:
        utility(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
