"""How close the one-run audit comes to the theoretical epsilon, over seeds (asserts nothing).

For each canary kind and noise multiplier, trains digits with m canaries once per seed and prints
the empirical lower bound beside the run's RDP epsilon, then the positive control (no clipping,
no noise).

Usage: python bench/audit_seeds.py [--seeds 10] [--epochs 10] [--canaries 256]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from dp_core.trainer.audit import AuditConfig, run_audit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--canaries", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        "| canaries | sigma | eps (theory) | lower bound: max | mean | seeds with bound > 0 "
        "| max bound / theory |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind in ("gradient", "input"):
        for sigma in (0.5, 1.0, 2.0, 4.0):
            bounds, theory = [], 0.0
            for seed in range(args.seeds):
                r = run_audit(
                    AuditConfig(noise_multiplier=sigma, epochs=args.epochs,
                                canaries=args.canaries, seed=seed, canary_kind=kind)
                )  # fmt: skip
                assert r.epsilon_theoretical is not None
                theory = r.epsilon_theoretical
                bounds.append(r.epsilon_lower_bound)
            print(
                f"| {kind} | {sigma} | {theory:.2f} | {max(bounds):.3f} | "
                f"{statistics.mean(bounds):.3f} | {sum(b > 0 for b in bounds)}/{args.seeds} | "
                f"{max(bounds) / theory:.3f} |"
            )
        epochs = 5 if kind == "gradient" else 60
        control = [
            run_audit(
                AuditConfig(private=False, epochs=epochs, canaries=args.canaries, seed=seed,
                            canary_kind=kind)
            ).epsilon_lower_bound
            for seed in range(args.seeds)
        ]  # fmt: skip
        print(
            f"| {kind} | none (no clip, no noise, {epochs} epochs) | - | {max(control):.3f} | "
            f"{statistics.mean(control):.3f} | {sum(b > 0 for b in control)}/{args.seeds} | - |"
        )


if __name__ == "__main__":
    main()
