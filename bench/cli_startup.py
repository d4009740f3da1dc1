"""CPU time of `dpledger --help` and `dpledger --version` (goal: under 0.3 s), beside bare Python.

Each command runs in a fresh interpreter several times; the median user+system CPU seconds of
each are printed side by side with `python -c pass` (the interpreter's own start-up) and with
`dpledger epsilon --help` (a command that loads numpy and scipy), so the ratios hold on a busy
machine. Run: `python bench/cli_startup.py [--runs N]`.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "dpledger --version": [sys.executable, "-m", "dpledger", "--version"],
    "dpledger --help": [sys.executable, "-m", "dpledger", "--help"],
    "dpledger epsilon --help": [sys.executable, "-m", "dpledger", "epsilon", "--help"],
}


def cpu_seconds(argv: list[str]) -> float:
    """User+system CPU seconds of one run of ``argv`` (a child process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(argv, check=True, capture_output=True, cwd=ROOT, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    medians = {}
    for name, argv in CASES.items():
        cpu_seconds(argv)  # warm the file cache (.pyc files)
        medians[name] = statistics.median(cpu_seconds(argv) for _ in range(runs))
    bare = medians["python -c pass"]
    print(f"{'command':<26} {'CPU s (median)':>15} {'minus bare python':>18}")
    for name, seconds in medians.items():
        print(f"{name:<26} {seconds:>15.3f} {seconds - bare:>18.3f}")
    for name in ("dpledger --version", "dpledger --help"):
        verdict = "meets" if medians[name] < 0.3 else "MISSES"
        print(f"{name}: {medians[name]:.3f} s of CPU {verdict} the 0.3 s goal")


if __name__ == "__main__":
    main()
