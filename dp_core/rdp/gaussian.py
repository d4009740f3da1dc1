"""RDP of the Gaussian mechanism."""

from __future__ import annotations

import numpy as np

from dp_core.rdp.orders import FloatArray


def rdp_gaussian(*, noise_multiplier: float, orders: FloatArray) -> FloatArray:
    """Return the RDP of the Gaussian mechanism: alpha / (2 sigma^2).

    Mironov 2017, "Renyi Differential Privacy", Prop. 7 (sensitivity 1, std ``noise_multiplier``).
    """
    return np.asarray(orders, dtype=np.float64) / (2.0 * noise_multiplier**2)
