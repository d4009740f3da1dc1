"""The seeds' experiments on the real data: bench/results/seeds.json and PNG plots (asserts nothing).

Every accuracy row is one exact ``dpledger train ...`` command (``{data}`` stands for the data
root given with ``--data-root``; get the files with ``dpledger data get``), run as a subprocess
and timed; its JSON summary gives the epsilon charged and the test accuracy. The recipe is
Tramer & Boneh (2021): fixed ScatterNet features (J=2, L=8), GroupNorm without parameters, a
linear head, DP-SGD with momentum 0.9, lr 4, C = 0.1, expected batch 8192 (q = 8192/60000, about
1/q = 8 steps per epoch), sigma calibrated by the trainer to the target epsilon (delta 1e-5).

Seed 003's figures, on MNIST and Fashion-MNIST: accuracy against the clipping norm C (1, 2, 4, 8
and the recipe's 0.1), against the noise multiplier, against epsilon, and epsilon against epochs
for several noise multipliers. Opacus (1.6.0) sits beside them where it applies: its RDP
accountant on the epsilon-against-epochs figure, and the same recipe trained with its
``make_private`` (Poisson sampling, same sigma, C, lr, momentum, epochs) on the headline rows.

    python bench/seeds.py --data-root /work/data                 # the reduced grid (default)
    python bench/seeds.py --data-root /work/data --only mnist-eps3 --only fmnist-eps3
    python bench/seeds.py --plots                                 # redraw the PNGs from the JSON

Rows are merged into the JSON by their ``id`` as they finish, so a partial run keeps what it had.
Set DPLEDGER_FEATURE_CACHE (a folder beside the data) to compute each data set's features once.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
DOCS_ASSETS = Path(__file__).resolve().parents[1] / "docs" / "assets"
TABLE = RESULTS / "seeds.json"
DELTA = 1e-5
BATCH = 8192
N_TRAIN = 60_000
DATASETS = {"mnist": "mnist", "fmnist": "fashion-mnist"}
RECIPE = ("--model scatternet-linear --batch-size 8192 --lr 4 --optimizer momentum "
          "--delta 1e-5 --threads 1 --no-progress --no-statement")  # fmt: skip


def train_command(dataset: str, *, epochs: int, clip: float = 0.1, epsilon: float | None = None,
                  sigma: float | None = None) -> str:  # fmt: skip
    privacy = (
        f"--target-epsilon {epsilon:g}" if epsilon is not None else f"--noise-multiplier {sigma:g}"
    )
    return (f"dpledger train --data {DATASETS[dataset]}:{{data}}/{DATASETS[dataset]} {RECIPE} "
            f"--epochs {epochs} --max-grad-norm {clip:g} {privacy}")  # fmt: skip


def grid(reduced: bool) -> list[dict[str, Any]]:
    """The rows: (id, figure, dataset, command). ``reduced`` trains the curves for fewer epochs."""
    curve_epochs = 15 if reduced else 40
    rows = [
        {"id": "mnist-eps3", "figure": "headline", "dataset": "mnist",
         "command": train_command("mnist", epochs=40, epsilon=3)},
        {"id": "mnist-eps1", "figure": "headline", "dataset": "mnist",
         "command": train_command("mnist", epochs=20, epsilon=1)},
        {"id": "fmnist-eps3", "figure": "headline", "dataset": "fmnist",
         "command": train_command("fmnist", epochs=40, epsilon=3)},
    ]  # fmt: skip
    for key in DATASETS:
        for clip in (1, 2, 4, 8):
            rows.append({"id": f"{key}-clip{clip}", "figure": "clip", "dataset": key,
                         "command": train_command(key, epochs=curve_epochs, clip=clip, epsilon=3)})  # fmt: skip
        for sigma in (2, 4, 8):
            rows.append({"id": f"{key}-sigma{sigma}", "figure": "sigma", "dataset": key,
                         "command": train_command(key, epochs=curve_epochs, sigma=sigma)})  # fmt: skip
        for eps in (0.5, 1, 2, 8):
            rows.append({"id": f"{key}-eps{eps:g}-curve", "figure": "epsilon", "dataset": key,
                         "command": train_command(key, epochs=curve_epochs, epsilon=eps)})  # fmt: skip
    for row in rows:
        row["reduced"] = reduced and row["figure"] != "headline"
    return rows


def run_row(row: dict[str, Any], data_root: str) -> dict[str, Any]:
    """Run one row's command; return the table row (accuracy, epsilon, seconds)."""
    argv = shlex.split(row["command"].replace("{data}", data_root))
    argv[0:1] = [sys.executable, "-m", "dpledger"]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{row['id']} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return table_row(row, summary, argv, seconds=seconds, cpu_seconds=None)


def table_row(
    row: dict[str, Any], summary: dict[str, Any], argv: list[str], *, seconds: float,
    cpu_seconds: float | None,
) -> dict[str, Any]:  # fmt: skip
    """The table's row from a command's JSON summary."""
    return {
        **row, "model": "scatternet-linear", "library": "dpledger",
        "dataset": DATASETS[row["dataset"]], "epsilon": summary["epsilon"], "delta": summary["delta"],
        "noise_multiplier": summary["noise_multiplier"], "max_grad_norm": _option(argv, "--max-grad-norm"),
        "epochs": summary["epochs_completed"], "test_accuracy": summary["test_accuracy"],
        "seconds": round(seconds, 1),
        "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 1),
    }  # fmt: skip


def _option(argv: list[str], name: str) -> float:
    return float(argv[argv.index(name) + 1])


def opacus_row(row: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """The same recipe with Opacus's make_private: same features, sigma, C, lr, epochs."""
    import numpy as np
    import torch
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    from dp_core.trainer.data import load_data
    from dp_core.trainer.features import scattering_features
    from dp_core.trainer.models import scatter_linear
    from dp_core.trainer.recipe import evaluate

    torch.set_num_threads(2)
    data = scattering_features(load_data(ours["command"].split()[3].replace("{data}", row["root"])))
    model = scatter_linear(channels=data.channels, size=data.image_size, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=4.0, momentum=0.9)
    loader = torch.utils.data.DataLoader(data.train, batch_size=BATCH)
    engine = PrivacyEngine(accountant="rdp")
    start = time.perf_counter()
    model, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, poisson_sampling=True,
        noise_multiplier=ours["noise_multiplier"], max_grad_norm=ours["max_grad_norm"],
    )  # fmt: skip
    for _ in range(ours["epochs"]):
        model.train()
        with BatchMemoryManager(data_loader=loader, max_physical_batch_size=1024,
                                optimizer=optimizer) as batches:  # fmt: skip
            for x, y in batches:
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
    _, accuracy = evaluate(model, data.test)
    return {
        **ours, "id": f"{row['id']}-opacus", "library": "opacus 1.6.0",
        "epsilon": float(engine.get_epsilon(DELTA)), "test_accuracy": float(np.round(accuracy, 4)),
        "seconds": round(time.perf_counter() - start, 1), "cpu_seconds": None,
        "command": f"python bench/seeds.py --data-root {{data}} --only {row['id']} --opacus",
    }  # fmt: skip


def epsilon_curves() -> list[dict[str, Any]]:
    """Epsilon after each epoch for several sigmas: dpledger's RDP vs Opacus's RDP accountant."""
    import dp_core
    from dp_core.trainer.sampling import steps_per_epoch

    q = BATCH / N_TRAIN
    steps = steps_per_epoch(q)
    rows = []
    for sigma in (2.0, 4.0, 8.0):
        for epochs in (1, 2, 5, 10, 20, 40, 60):
            ours = dp_core.compute_epsilon(sample_rate=q, noise_multiplier=sigma,
                                           steps=epochs * steps, delta=DELTA, warn=False)  # fmt: skip
            rows.append({"sigma": sigma, "epochs": epochs, "steps": epochs * steps,
                         "epsilon": ours.epsilon, "epsilon_opacus": _opacus_epsilon(q, sigma, epochs * steps)})  # fmt: skip
    return rows


def _opacus_epsilon(q: float, sigma: float, steps: int) -> float | None:
    try:
        from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    except ImportError:
        return None
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 256))
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    return float(get_privacy_spent(orders=orders, rdp=rdp, delta=DELTA)[0])


def load_table() -> dict[str, Any]:
    if TABLE.is_file():
        table: dict[str, Any] = json.loads(TABLE.read_text())
        return table
    return {"rows": [], "epsilon_vs_epochs": []}


def save_table(table: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    table["rows"].sort(key=lambda r: r["id"])
    partial = TABLE.with_suffix(".partial")
    partial.write_text(json.dumps(table, indent=1) + "\n")
    partial.replace(TABLE)


def merge(table: dict[str, Any], row: dict[str, Any]) -> None:
    table["rows"] = [r for r in table["rows"] if r["id"] != row["id"]] + [row]
    save_table(table)
    print(f"{row['id']}: acc {row['test_accuracy']:.4f} eps {row['epsilon']:.3f} "
          f"({row['seconds']:.0f} s)", flush=True)  # fmt: skip


def plots(table: dict[str, Any]) -> None:
    """Seed 003's four figures per data set (PNG), Opacus beside dpledger where present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, name in DATASETS.items():
        rows = [r for r in table["rows"] if r["dataset"] == name]
        fig, axes = plt.subplots(1, 4, figsize=(18, 4))
        for ax, figure, x_key, label in (
            (axes[0], "clip", "max_grad_norm", "clipping norm C (epsilon 3)"),
            (axes[1], "sigma", "noise_multiplier", "noise multiplier sigma"),
            (axes[2], "epsilon", "epsilon", "epsilon (delta 1e-5)"),
        ):
            _curve(ax, rows, figure, x_key, label)
        _epsilon_figure(axes[3], table["epsilon_vs_epochs"])
        fig.suptitle(f"{name}: ScatterNet + linear, DP-SGD (batch 8192, lr 4, momentum)")
        fig.tight_layout()
        fig.savefig(RESULTS / f"seeds_{key}.png", dpi=110)
        fig.savefig(DOCS_ASSETS / f"seeds_{key}.png", dpi=110)  # the copy the docs site shows
        plt.close(fig)


def _curve(ax: Any, rows: list[dict[str, Any]], figure: str, x_key: str, label: str) -> None:
    headline = [r for r in rows if r["figure"] == "headline" and r["library"] == "dpledger"]
    for library, marker in (("dpledger", "o-"), ("opacus 1.6.0", "s--")):
        points = [r for r in rows if r["figure"] == figure and r["library"] == library]
        if library == "dpledger" and figure == "clip":  # the recipe's C = 0.1 at epsilon 3
            points += [r for r in headline if round(r["epsilon"]) == 3]
        if library == "dpledger" and figure == "epsilon":  # the headline rows are points too
            points += headline
        points.sort(key=lambda r: r[x_key])
        if points:
            ax.plot([r[x_key] for r in points], [r["test_accuracy"] for r in points], marker,
                    label=library)  # fmt: skip
    if figure == "clip":
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "not run (compute)", ha="center", transform=ax.transAxes)


def _epsilon_figure(ax: Any, curves: list[dict[str, Any]]) -> None:
    for sigma in sorted({c["sigma"] for c in curves}):
        points = [c for c in curves if c["sigma"] == sigma]
        ax.plot([c["epochs"] for c in points], [c["epsilon"] for c in points], "o-",
                label=f"sigma {sigma:g} (dpledger)")  # fmt: skip
        if all(c["epsilon_opacus"] is not None for c in points):
            ax.plot([c["epochs"] for c in points], [c["epsilon_opacus"] for c in points], "x--",
                    label=f"sigma {sigma:g} (opacus)")  # fmt: skip
    ax.set_xlabel("epochs (q = 8192/60000)")
    ax.set_ylabel("epsilon (delta 1e-5)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def markdown(table: dict[str, Any]) -> str:
    """The rows as a Markdown table (for docs/guides/real-data.md)."""
    lines = ["| id | data set | library | epochs | C | sigma | epsilon | test accuracy | seconds (CPU s) |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in table["rows"]:
        cpu = f" ({r['cpu_seconds']:.0f})" if r.get("cpu_seconds") else ""
        lines.append(
            f"| {r['id']}{' (reduced)' if r.get('reduced') else ''} | {r['dataset']} | {r['library']} "
            f"| {r['epochs']} | {r['max_grad_norm']:g} | {r['noise_multiplier']:.2f} "
            f"| {r['epsilon']:.3f} | {r['test_accuracy']:.4f} | {r['seconds']:.0f}{cpu} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("DPLEDGER_DATA", "/work/data"))
    parser.add_argument("--full", action="store_true", help="curves at 40 epochs, not 15")
    parser.add_argument("--only", action="append", help="row ids to run (repeatable)")
    parser.add_argument("--opacus", action="store_true", help="also the Opacus twin of each row")
    parser.add_argument("--plots", action="store_true", help="only redraw the plots")
    parser.add_argument("--jobs", type=int, default=1, help="commands run at once")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--record", nargs=4, metavar=("ID", "SUMMARY", "SECONDS", "CPU_SECONDS"),
        help="add row ID from the JSON summary of its exact command, run by hand (timed apart)",
    )  # fmt: skip
    args = parser.parse_args()
    table = load_table()
    if args.markdown:
        print(markdown(table))
        return
    if args.record:
        row_id, summary, seconds, cpu = args.record
        (row,) = [r for r in grid(reduced=not args.full) if r["id"] == row_id]
        argv = shlex.split(row["command"])
        lines = Path(summary).read_text().strip().splitlines()
        merge(table, table_row(row, json.loads(lines[-1]), argv, seconds=float(seconds),
                               cpu_seconds=float(cpu)))  # fmt: skip
        return
    if not args.plots:
        table["epsilon_vs_epochs"] = epsilon_curves()
        rows = [r for r in grid(reduced=not args.full) if not args.only or r["id"] in args.only]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # subprocesses; merged here
            for row, ours in zip(
                rows, pool.map(lambda r: run_row(r, args.data_root), rows), strict=True
            ):
                merge(table, ours)
                if args.opacus:
                    merge(table, opacus_row({**row, "root": args.data_root}, ours))
    save_table(table)
    plots(table)


if __name__ == "__main__":
    main()
