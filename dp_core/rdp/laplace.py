"""RDP of the Laplace mechanism."""

from __future__ import annotations

import numpy as np

from dp_core.rdp.orders import FloatArray


def rdp_laplace(*, noise_scale: float, orders: FloatArray) -> FloatArray:
    """Return the RDP of the Laplace mechanism with scale b = ``noise_scale`` (L1 sensitivity 1).

    Mironov 2017, "Renyi Differential Privacy", Prop. 6 (table 2), for alpha > 1:

        1/(alpha-1) * log( alpha/(2 alpha-1) exp((alpha-1)/b) + (alpha-1)/(2 alpha-1) exp(-alpha/b) ).

    Evaluated as a log-sum-exp so that large alpha/b does not overflow.
    """
    a = np.asarray(orders, dtype=np.float64)
    b = noise_scale
    log_mix = np.logaddexp(
        np.log(a / (2.0 * a - 1.0)) + (a - 1.0) / b,
        np.log((a - 1.0) / (2.0 * a - 1.0)) - a / b,
    )
    # The exact value is >= 0 (Renyi divergence); clip rounding noise of order 1e-17.
    return np.maximum(log_mix / (a - 1.0), 0.0)
