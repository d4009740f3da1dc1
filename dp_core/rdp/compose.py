"""RDP of a mechanism description: one dispatch table, composition by summation.

RDP composes additively per order, also under adaptive choice of the next mechanism (Mironov 2017,
"Renyi Differential Privacy", Prop. 1), so Repeated multiplies and Composed adds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dp_core.errors import UnsupportedMechanismError
from dp_core.mechanisms import (
    Composed,
    Gaussian,
    Laplace,
    PoissonSampled,
    Repeated,
    SampledGaussianSchedule,
    Tuning,
)
from dp_core.rdp.gaussian import rdp_gaussian
from dp_core.rdp.laplace import rdp_laplace
from dp_core.rdp.orders import FloatArray, validate_orders
from dp_core.rdp.sampled_gaussian import rdp_sampled_gaussian
from dp_core.rdp.schedule_sum import rdp_sampled_gaussian_sum
from dp_core.rdp.tuning import rdp_tuning

__all__ = ["compute_rdp", "register_rdp"]

RdpFunction = Callable[[Any, FloatArray], FloatArray]


def _gaussian(m: Gaussian, orders: FloatArray) -> FloatArray:
    return rdp_gaussian(noise_multiplier=m.noise_multiplier, orders=orders)


def _laplace(m: Laplace, orders: FloatArray) -> FloatArray:
    return rdp_laplace(noise_scale=m.noise_scale, orders=orders)


def _poisson_sampled(m: PoissonSampled, orders: FloatArray) -> FloatArray:
    if m.sample_rate == 0.0:
        return np.zeros(orders.size)
    if m.sample_rate == 1.0:
        return _rdp(m.inner, orders)
    if isinstance(m.inner, Gaussian):
        return rdp_sampled_gaussian(
            sample_rate=m.sample_rate, noise_multiplier=m.inner.noise_multiplier, orders=orders
        )
    raise UnsupportedMechanismError(
        f"no RDP bound for Poisson subsampling of {type(m.inner).__name__}; only the Gaussian is supported"
    )


def _repeated(m: Repeated, orders: FloatArray) -> FloatArray:
    return m.count * _rdp(m.inner, orders) if m.count else np.zeros(orders.size)


def _composed(m: Composed, orders: FloatArray) -> FloatArray:
    total = np.zeros(orders.size)
    for part in m.parts:
        total = total + _rdp(part, orders)
    return total


def _schedule(m: SampledGaussianSchedule, orders: FloatArray) -> FloatArray:
    if m.steps == 0 or m.sample_rate == 0.0:
        return np.zeros(orders.size)
    sigmas, counts = m.schedule.segments(m.start_step, m.start_step + m.steps)
    if m.sample_rate == 1.0:
        return np.asarray(np.sum(counts / sigmas**2) * orders / 2.0, dtype=np.float64)
    return rdp_sampled_gaussian_sum(
        sample_rate=m.sample_rate, noise_multipliers=sigmas, counts=counts, orders=orders
    )


def _tuning(m: Tuning, orders: FloatArray) -> FloatArray:
    return rdp_tuning(m, orders, _rdp)


_TABLE: dict[type, RdpFunction] = {
    Gaussian: _gaussian,
    Laplace: _laplace,
    PoissonSampled: _poisson_sampled,
    Repeated: _repeated,
    Composed: _composed,
    SampledGaussianSchedule: _schedule,
    Tuning: _tuning,
}


def register_rdp(mechanism_type: type, function: RdpFunction) -> None:
    """Add the RDP function of another mechanism type (e.g. PATE aggregators) to the table."""
    _TABLE[mechanism_type] = function


def _rdp(mechanism: Any, orders: FloatArray) -> FloatArray:
    try:
        function = _TABLE[type(mechanism)]
    except KeyError:
        raise UnsupportedMechanismError(
            f"no RDP accounting for mechanism type {type(mechanism).__name__}"
        ) from None
    return function(mechanism, orders)


def compute_rdp(mechanism: object, orders: object) -> FloatArray:
    """Return the RDP of ``mechanism`` at each of ``orders``, in the caller's order.

    Raises:
        UnsupportedMechanismError: if some part of the mechanism has no RDP bound here.
        InvalidParameterError: if ``orders`` is invalid.
    """
    validate_orders(orders)
    return np.asarray(
        _rdp(mechanism, np.asarray(orders, dtype=np.float64).reshape(-1)), dtype=np.float64
    )
