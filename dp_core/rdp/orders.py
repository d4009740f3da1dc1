"""Grids of Renyi orders.

``DP_ACCOUNTING_ORDERS`` is Google dp_accounting's default grid (1.1 to 10.9 by 0.1, 11 to 63,
128, 256, 512, 1024). ``DEFAULT_ORDERS`` is a superset of it, so that on the same RDP curve our
grid epsilon is never worse than theirs; the extra orders fill the gaps above 63 and below 1.1,
where the optimum lands for very large or very small epsilon.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from dp_core.errors import InvalidParameterError

FloatArray = npt.NDArray[np.float64]


def _frozen(values: list[float]) -> FloatArray:
    array = np.array(sorted(set(values)), dtype=np.float64)
    array.setflags(write=False)
    return array


DP_ACCOUNTING_ORDERS: FloatArray = _frozen(
    [1.0 + x / 10.0 for x in range(1, 100)]
    + [float(a) for a in range(11, 64)]
    + [128.0, 256.0, 512.0, 1024.0]
)

_EXTRA_ORDERS = [1.01, 1.02, 1.05, 72.0, 80.0, 96.0, 112.0, 160.0, 192.0, 384.0, 768.0, 2048.0]

DEFAULT_ORDERS: FloatArray = _frozen(list(DP_ACCOUNTING_ORDERS) + _EXTRA_ORDERS)


def validate_orders(orders: object) -> FloatArray:
    """Return ``orders`` as a sorted, de-duplicated, read-only float array of finite values > 1."""
    array = np.asarray(orders, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise InvalidParameterError("orders", orders, "must hold at least one order")
    if not np.all(np.isfinite(array)) or np.any(array <= 1.0):
        raise InvalidParameterError("orders", orders, "every order must be finite and > 1")
    return _frozen([float(a) for a in array])
