"""Accountant speed, measured side by side in one run (prints ratios, asserts nothing).

1. Decaying schedule, T = 100,000 distinct sigmas, default grid: our RDP fast path (goal: < 1 s),
   beside the fast path before issue 13 (bench/schedule_sum_before.py); checked against the exact
   per-step evaluation (batched) for accuracy; and Opacus' / dp_accounting's RDP accountants on
   the first 1,000 steps of the same schedule when they are installed.
2. Fixed noise (q = 0.01, sigma = 1.1, T = 10,000): RDP epsilon.
3. Calibration of sigma for epsilon 3, 60 epochs (q = 256/60000).
4. PLD accounting beside dp_accounting 0.6.0's PLDAccountant (pessimistic, grid 1e-4): fixed noise
   T = 10,000 (goal: >= 2x faster at equal or tighter epsilon); the 100,000-step decaying schedule
   (goal: < 2 s), and dp_accounting on its first steps (one event per step, as it composes).

Usage: python bench/accountant.py [--steps 100000] [--skip-exact] [--skip-peers]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable

import numpy as np

import dp_core
from dp_core.pld import compute_epsilon_pld
from dp_core.rdp.orders import DEFAULT_ORDERS, DP_ACCOUNTING_ORDERS
from dp_core.rdp.sampled_gaussian import rdp_sampled_gaussian_matrix
from dp_core.rdp.schedule_sum import rdp_sampled_gaussian_sum
from dp_core.schedules import NoiseSchedule

try:  # the baseline sits next to this script
    from schedule_sum_before import rdp_sampled_gaussian_sum as rdp_sum_before
except ImportError:  # pragma: no cover - run from another directory
    from bench.schedule_sum_before import rdp_sampled_gaussian_sum as rdp_sum_before

Q = 0.01
SCHEDULE = NoiseSchedule(kind="exponential", noise_multiplier=2.0, decay_rate=1e-5)


def timed(function: Callable[[], object], repeat: int = 1) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def opacus_rdp(sigmas: np.ndarray) -> Callable[[], object] | None:
    if importlib.util.find_spec("opacus") is None:
        return None
    from opacus.accountants.analysis.rdp import compute_rdp

    orders = list(DP_ACCOUNTING_ORDERS)
    return lambda: sum(
        compute_rdp(q=Q, noise_multiplier=float(s), steps=1, orders=orders) for s in sigmas
    )


def dp_accounting_rdp(sigmas: np.ndarray) -> Callable[[], object] | None:
    if importlib.util.find_spec("dp_accounting") is None:
        return None
    import dp_accounting

    def run() -> object:
        accountant = dp_accounting.rdp.RdpAccountant()
        for s in sigmas:
            accountant.compose(
                dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(float(s)))
            )
        return accountant.get_epsilon(1e-5)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--skip-exact", action="store_true", help="skip the slow exact reference")
    parser.add_argument("--skip-peers", action="store_true", help="skip Opacus/dp_accounting RDP")
    args = parser.parse_args()

    sigmas = SCHEDULE.noise_multipliers(0, args.steps)
    ones = np.ones(sigmas.size)
    fast_s, fast = timed(
        lambda: rdp_sampled_gaussian_sum(
            sample_rate=Q, noise_multipliers=sigmas, counts=ones, orders=DEFAULT_ORDERS
        )
    )
    before_s, _ = timed(
        lambda: rdp_sum_before(
            sample_rate=Q, noise_multipliers=sigmas, counts=ones, orders=DEFAULT_ORDERS
        )
    )
    print(f"decaying schedule, T={args.steps} distinct sigmas, {DEFAULT_ORDERS.size} orders")
    print(
        f"  dpledger fast path:          {fast_s:8.3f} s  ({1e6 * fast_s / args.steps:.2f} us/step)"
        f"  goal < 1 s: {'met' if fast_s < 1.0 else 'MISSED'}"
    )
    print(
        f"  fast path before issue 13:   {before_s:8.3f} s  -> now {before_s / fast_s:.2f}x faster"
    )
    if not args.skip_exact:
        exact_s, exact = timed(
            lambda: rdp_sampled_gaussian_matrix(
                sample_rate=Q, noise_multipliers=sigmas, orders=DEFAULT_ORDERS
            ).sum(0)
        )
        error = float(np.max(np.abs(np.asarray(fast) / np.asarray(exact) - 1.0)))
        print(
            f"  exact per-step (batched):    {exact_s:8.3f} s  -> fast path max relative error {error:.1e}"
        )
        print(f"  ratio exact / fast:          {exact_s / fast_s:8.1f}x")
    peer_steps = min(1000, args.steps)
    ours_small_s, _ = timed(
        lambda: rdp_sampled_gaussian_sum(
            sample_rate=Q,
            noise_multipliers=sigmas[:peer_steps],
            counts=ones[:peer_steps],
            orders=DEFAULT_ORDERS,
        )
    )
    peers = (
        () if args.skip_peers else (("opacus", opacus_rdp), ("dp_accounting", dp_accounting_rdp))
    )
    for name, factory in peers:
        run = factory(sigmas[:peer_steps])
        if run is None:
            print(f"  {name}: not installed (pip install {name.replace('_', '-')} to compare)")
            continue
        peer_s, _ = timed(run)
        print(f"  {name} on {peer_steps} steps:   {peer_s:8.3f} s; ours on the same: {ours_small_s:.3f} s "
              f"-> {peer_s / ours_small_s:.1f}x")  # fmt: skip

    fixed_s, fixed = timed(
        lambda: dp_core.compute_epsilon(
            sample_rate=0.01, noise_multiplier=1.1, steps=10_000, delta=1e-5
        ),
        repeat=5,
    )
    print(
        f"fixed noise (q=0.01, sigma=1.1, T=10,000): {1e3 * fixed_s:.1f} ms, epsilon {fixed.epsilon:.4f}"
    )  # type: ignore[attr-defined]
    calib_s, calib = timed(
        lambda: dp_core.calibrate_noise_multiplier(
            target_epsilon=3.0, delta=1e-5, sample_rate=256 / 60_000, steps=60 * 235
        ),
        repeat=3,
    )
    print(
        f"calibration (epsilon 3, 60 epochs): {calib_s:.3f} s, sigma {calib.noise_multiplier:.4f}"
    )  # type: ignore[attr-defined]

    bench_pld(sigmas)


def dp_accounting_pld(steps: int, noise: Callable[[int], float]) -> Callable[[], float] | None:
    """dp_accounting's PLD accountant: one self-composed event for constant noise, else per step."""
    if importlib.util.find_spec("dp_accounting") is None:
        return None
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    def run() -> float:
        accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
        if len({noise(0), noise(steps - 1)}) == 1:
            event = dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(noise(0)))
            accountant.compose(event, steps)
        else:
            for t in range(steps):
                event = dp_accounting.PoissonSampledDpEvent(
                    Q, dp_accounting.GaussianDpEvent(noise(t))
                )
                accountant.compose(event)
        return float(accountant.get_epsilon(1e-5))

    return run


def bench_pld(sigmas: np.ndarray) -> None:
    """PLD epsilon beside dp_accounting's PLD accountant (both pessimistic upper bounds)."""
    print("PLD accounting (epsilon at delta 1e-5, add/remove adjacency)")
    ours_s, ours = timed(
        lambda: compute_epsilon_pld(sample_rate=Q, noise_multiplier=1.1, steps=10_000, delta=1e-5),
        repeat=3,
    )
    eps = ours.epsilon  # type: ignore[attr-defined]
    print(
        f"  fixed noise (q=0.01, sigma=1.1, T=10,000): dpledger {ours_s:.3f} s, epsilon {eps:.6f}"
    )
    peer = dp_accounting_pld(10_000, lambda t: 1.1)
    if peer is None:
        print("  dp_accounting: not installed (pip install dp-accounting to compare)")
    else:
        peer_s, peer_eps = timed(peer)
        verdict = "met" if peer_s / ours_s >= 2.0 and eps <= float(peer_eps) else "MISSED"  # type: ignore[arg-type]
        print(
            f"  dp_accounting PLDAccountant:               {peer_s:.3f} s, epsilon {peer_eps:.6f}"
        )
        print(f"  ratio dp_accounting / dpledger: {peer_s / ours_s:.1f}x; epsilon difference "
              f"{eps - float(peer_eps):+.2e} (goal >= 2x at equal or tighter: {verdict})")  # type: ignore[arg-type]  # fmt: skip
    schedule = SCHEDULE
    long_s, long = timed(
        lambda: compute_epsilon_pld(sample_rate=Q, schedule=schedule, steps=sigmas.size, delta=1e-5)
    )
    r = long  # type: ignore[assignment]
    rdp = dp_core.compute_epsilon(
        sample_rate=Q, noise_multiplier=2.0, schedule="exponential", decay_rate=1e-5,
        steps=sigmas.size, delta=1e-5,
    )  # fmt: skip
    print(f"  decaying schedule, T={sigmas.size}: dpledger {long_s:.3f} s, epsilon {r.epsilon:.4f} "  # type: ignore[attr-defined]
          f"({r.buckets} sigma buckets, ratio {r.bucket_ratio}, grid {r.discretization:g}); "  # type: ignore[attr-defined]
          f"RDP epsilon {rdp.epsilon:.4f}; goal < 2 s: {'met' if long_s < 2.0 else 'MISSED'}")  # fmt: skip
    prefix = 100
    ours_prefix_s, ours_prefix = timed(
        lambda: compute_epsilon_pld(sample_rate=Q, schedule=schedule, steps=prefix, delta=1e-5)
    )
    peer = dp_accounting_pld(prefix, schedule.noise_multiplier_at)
    if peer is not None:
        peer_s, peer_eps = timed(peer)
        print(f"  first {prefix} steps: dp_accounting {peer_s:.2f} s (epsilon {peer_eps:.6f}), "
              f"dpledger {ours_prefix_s:.3f} s (epsilon {ours_prefix.epsilon:.6f}) "  # type: ignore[attr-defined]
              f"-> {peer_s / ours_prefix_s:.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()
