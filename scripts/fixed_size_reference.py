"""Write tests/unit/dp_core/data/fixed_size_cases.json: dp_accounting's sampling-without-replacement RDP.

Reference values for the fixed-size (m of N without replacement, replace-one) bound of
``dp_core.federated.rdp_fixed_size_gaussian``, computed with Google's dp_accounting (not a
dependency of dpledger; install it only to regenerate, in a separate virtualenv, since it
downgrades attrs: ``pip install dp-accounting==0.6.0``, then run this with PYTHONPATH=.).

dp_accounting's Gaussian under REPLACE_ONE has RDP alpha / (2 s^2), s its noise multiplier
relative to the replace-one sensitivity. dpledger's fixed-size round adds std sigma C to a sum
whose replace-one sensitivity is 2C, so s = sigma / 2.

Usage: python scripts/fixed_size_reference.py
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant as rdp

OUT = Path(__file__).resolve().parents[1] / "tests/unit/dp_core/data/fixed_size_cases.json"
SAMPLE_RATES = (0.001, 0.01, 0.1, 0.3)
NOISE_MULTIPLIERS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
STEPS = (10, 100, 1000)
DELTA = 1e-5


def _epsilon(q: float, s: float, steps: int) -> float:
    accountant = rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        source_dataset_size=1000,
        sample_size=round(q * 1000),
        event=dp_accounting.GaussianDpEvent(s),
    )
    accountant.compose(event, steps)
    return float(accountant.get_epsilon(DELTA))


def main() -> None:
    """Compute the cases and write the JSON file."""
    orders = list(rdp.DEFAULT_RDP_ORDERS)
    cases = []
    for q in SAMPLE_RATES:
        for sigma in NOISE_MULTIPLIERS:
            values = rdp._compute_rdp_sample_wor_gaussian(q, sigma / 2.0, orders)
            cases.append(
                {
                    "sample_rate": q,
                    "noise_multiplier": sigma,
                    "rdp": [float(v) for v in values],
                    "epsilon": {str(t): _epsilon(q, sigma / 2.0, t) for t in STEPS},
                }
            )
    OUT.write_text(
        json.dumps(
            {
                "source": (
                    "Google dp_accounting "
                    f"{metadata.version('dp-accounting')}: rdp_privacy_accountant."
                    "_compute_rdp_sample_wor_gaussian(q, sigma / 2, DEFAULT_RDP_ORDERS) (WBK 2019 Thm. 27"
                    " at integer orders, Cor. 10 interpolation between them) and RdpAccountant("
                    "REPLACE_ONE).get_epsilon(delta) of SampledWithoutReplacementDpEvent(1000, 1000 q,"
                    " GaussianDpEvent(sigma / 2)) composed `steps` times. sigma is dpledger's noise"
                    " multiplier (std sigma C on a sum of replace-one sensitivity 2C)."
                ),
                "script": "scripts/fixed_size_reference.py",
                "delta": DELTA,
                "orders": orders,
                "cases": cases,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
