"""Accountant speed, measured side by side in one run (prints ratios, asserts nothing).

1. Decaying schedule, T = 100,000 distinct sigmas, default grid: our fast path; checked against
   the exact per-step evaluation (batched) for accuracy; and Opacus' / dp_accounting's RDP
   accountants on the first 1,000 steps of the same schedule when they are installed.
2. Fixed noise (q = 0.01, sigma = 1.1, T = 10,000): epsilon.
3. Calibration of sigma for epsilon 3, 60 epochs (q = 256/60000).

Usage: python bench/accountant.py [--steps 100000] [--skip-exact]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable

import numpy as np

import dp_core
from dp_core.rdp.orders import DEFAULT_ORDERS, DP_ACCOUNTING_ORDERS
from dp_core.rdp.sampled_gaussian import rdp_sampled_gaussian_matrix
from dp_core.rdp.schedule_sum import rdp_sampled_gaussian_sum
from dp_core.schedules import NoiseSchedule

Q = 0.01
SCHEDULE = NoiseSchedule("exponential", 2.0, 1e-5)


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
    args = parser.parse_args()

    sigmas = SCHEDULE.noise_multipliers(0, args.steps)
    ones = np.ones(sigmas.size)
    fast_s, fast = timed(
        lambda: rdp_sampled_gaussian_sum(
            sample_rate=Q, noise_multipliers=sigmas, counts=ones, orders=DEFAULT_ORDERS
        )
    )
    print(f"decaying schedule, T={args.steps} distinct sigmas, {DEFAULT_ORDERS.size} orders")
    print(
        f"  dpledger fast path:          {fast_s:8.3f} s  ({1e6 * fast_s / args.steps:.2f} us/step)"
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
    for name, factory in (("opacus", opacus_rdp), ("dp_accounting", dp_accounting_rdp)):
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


if __name__ == "__main__":
    main()
