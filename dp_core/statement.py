"""A privacy statement for one DP-SGD run, in the spirit of TF Privacy's statement.

Like TF Privacy's ``compute_dp_sgd_privacy_statement``: what was trained, what sampling is
assumed, and the epsilons that hold (example level with RDP and PLD, each example once per epoch,
user level).

Pure: :func:`build_privacy_statement` returns a :class:`PrivacyStatement` (JSON-ready through
:meth:`PrivacyStatement.to_dict`) and :func:`render_privacy_statement` its text, so the CLI and the
service print the same numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from dp_core.calibration import epsilon_of_schedule
from dp_core.conversion import rdp_to_epsilon
from dp_core.errors import DpCoreError, InvalidParameterError
from dp_core.group import UserLevelEpsilon, user_level_epsilon, user_level_result
from dp_core.mechanisms import SampledGaussianSchedule
from dp_core.pld import SCHEDULE_DISCRETIZATION, compute_epsilon_pld
from dp_core.rdp.compose import compute_rdp
from dp_core.rdp.orders import FloatArray
from dp_core.schedules import NoiseSchedule
from dp_core.validation import non_negative_int, open_probability, positive_float, probability

__all__ = [
    "OPACUS_ORDERS",
    "REPRODUCIBLE_NOISE_NOTE",
    "PrivacyStatement",
    "build_privacy_statement",
    "gaussian_delta",
    "gaussian_epsilon",
    "render_privacy_statement",
    "reproducible_noise_note",
    "user_discretization",
    "steps_per_epoch",
]

#: Opacus 1.6's default RDP grid (``RDPAccountant.DEFAULT_ALPHAS``): 1.1 to 10.9 by 0.1, 12 to 63.
OPACUS_ORDERS: FloatArray = np.array(
    [1.0 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(12, 64)]
)

#: What a statement adds for a run registered with reproducible noise (``--reproducible-noise``).
REPRODUCIBLE_NOISE_NOTE = (
    "Reproducible noise: this run drew its noise and sampling from a public seed{seed}, not from "
    "secret OS entropy. The guarantee above does not hold against anyone who knows the seed."
)


def reproducible_noise_note(seed: int | None = None) -> str:
    """Return :data:`REPRODUCIBLE_NOISE_NOTE`, naming the seed when it is known."""
    return REPRODUCIBLE_NOISE_NOTE.format(seed="" if seed is None else f" ({seed})")


SHUFFLING_NOTE = (
    "Poisson sampling is not usually done in training pipelines, but assuming that the data was "
    "randomly shuffled, it is believed that the actual epsilon should be closer to this value "
    "than the conservative assumption of an arbitrary data order (TF Privacy's wording)."
)


@dataclass(frozen=True)
class PrivacyStatement:
    """The numbers of a privacy statement (all epsilons at ``delta``, add/remove adjacency).

    Attributes:
        sample_rate: Poisson sampling rate q.
        steps: Number of DP-SGD steps.
        steps_per_epoch: ceil(1/q): steps of one pass over the data.
        epochs: steps * q, the expected number of passes.
        schedule: The noise schedule (kind, noise_multiplier, decay_rate or values).
        delta: The delta every epsilon holds for.
        epsilon_rdp: Example-level epsilon by RDP (CKS conversion, refined over real orders).
        order: The Renyi order of ``epsilon_rdp``.
        epsilon_pld: Example-level epsilon by PLD accounting (an upper bound, tighter than RDP).
        epoch_epsilon_rdp: Each example once per epoch in any order, without amplification by
            sampling: one Gaussian mechanism per epoch at the epoch's smallest sigma (RDP).
        epoch_order: The Renyi order of ``epoch_epsilon_rdp``.
        epoch_epsilon_pld: The same guarantee by the exact Gaussian curve (PLD).
        user: User-level epsilons for ``user.records_per_user`` records per user.
        opacus_epsilon: Epsilon on Opacus' grid (orders 1.1-63) from the same RDP curve.
        opacus_grid_lacks_order: The optimum lies outside Opacus' grid, so Opacus reports more.
    """

    sample_rate: float
    steps: int
    steps_per_epoch: int
    epochs: float
    schedule: dict[str, Any]
    delta: float
    epsilon_rdp: float
    order: float
    epsilon_pld: float
    epoch_epsilon_rdp: float
    epoch_order: float
    epoch_epsilon_pld: float
    user: UserLevelEpsilon
    opacus_epsilon: float
    opacus_grid_lacks_order: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite floats become None)."""
        result: dict[str, Any] = _finite(dataclasses.asdict(self))
        return result


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def steps_per_epoch(sample_rate: float) -> int:
    """ceil(1/q): with q = B/N this is ceil(N/B), TF Privacy's steps per epoch."""
    q = probability("sample_rate", sample_rate)
    return max(1, math.ceil(1.0 / q - 1e-9)) if q > 0.0 else 1


def _epoch_sigmas(schedule: NoiseSchedule, steps: int, per_epoch: int) -> FloatArray:
    """Smallest sigma of each (possibly partial) epoch: an example's one step may be any of them."""
    if schedule.is_constant:  # every epoch's smallest sigma is the one sigma
        sigma = float(schedule.noise_multipliers(0, 1)[0])
        return np.full(-(-steps // per_epoch), sigma)
    sigmas = schedule.noise_multipliers(0, steps)
    return np.minimum.reduceat(sigmas, np.arange(0, steps, per_epoch))


def gaussian_delta(*, noise_multiplier: float, epsilon: float) -> float:
    """Exact delta(epsilon) of the Gaussian mechanism with sensitivity 1 and noise sigma.

    Balle & Wang 2018, "Improving the Gaussian mechanism for differential privacy", Thm. 8:
    delta = Phi(1/(2 s) - eps s) - e^eps Phi(-1/(2 s) - eps s). The second term is computed in log
    space (log_ndtr) so that e^eps cannot overflow.
    """
    s = noise_multiplier
    first = float(special.ndtr(1.0 / (2.0 * s) - epsilon * s))
    second = math.exp(epsilon + float(special.log_ndtr(-1.0 / (2.0 * s) - epsilon * s)))
    return max(first - second, 0.0)


def gaussian_epsilon(*, noise_multiplier: float, delta: float) -> float:
    """Exact epsilon at ``delta`` of the Gaussian mechanism (Balle & Wang 2018, Thm. 8).

    delta(eps) decreases in eps, so bisection finds it; the upper end of the final bracket is
    returned (its delta is at most ``delta``): rounded toward privacy, within 1e-12 relative.
    """
    s = positive_float("noise_multiplier", noise_multiplier)
    delta = open_probability("delta", delta)
    if gaussian_delta(noise_multiplier=s, epsilon=0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(noise_multiplier=s, epsilon=hi) > delta:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        if gaussian_delta(noise_multiplier=s, epsilon=mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def user_discretization(records_per_user: int) -> float:
    """PLD grid width for users of K > 1 records: the loss range grows K^2-fold, so does h.

    Keeps the user-level PLD's work that of one record at :data:`dp_core.pld.SCHEDULE_DISCRETIZATION`
    (a coarser grid is still an upper bound, only looser; the statement takes the smallest of the
    RDP, PLD and classical bounds).
    """
    return SCHEDULE_DISCRETIZATION * max(1.0, records_per_user**2 / 4.0)


def _epoch_level(
    schedule: NoiseSchedule, steps: int, per_epoch: int, delta: float, orders: object
) -> tuple[float, float, float]:
    """(RDP epsilon, order, exact epsilon) of one Gaussian mechanism per epoch (no sampling).

    RDP adds up, alpha / (2 sigma_e^2) per epoch (Mironov 2017, Prop. 1 and Cor. 3); the Gaussians
    compose exactly into one with sigma_eff = (sum_e sigma_e^-2)^(-1/2) (Dong, Roth & Su 2022,
    "Gaussian differential privacy", Cor. 3.3), whose exact curve is Balle & Wang 2018, Thm. 8
    (:func:`gaussian_epsilon`; what a PLD accountant approaches from above).
    """
    if steps == 0:
        return 0.0, math.nan, 0.0
    epoch_sigmas = _epoch_sigmas(schedule, steps, per_epoch)
    explicit = NoiseSchedule(kind="explicit", values=tuple(float(s) for s in epoch_sigmas))
    rdp = epsilon_of_schedule(
        sample_rate=1.0, schedule=explicit, steps=epoch_sigmas.size, delta=delta, orders=orders,
        warn=False,
    )  # fmt: skip
    sigma_eff = float(np.sum(epoch_sigmas**-2.0) ** -0.5)
    return rdp.epsilon, rdp.order, gaussian_epsilon(noise_multiplier=sigma_eff, delta=delta)


_COARSER = (1.0, 4.0, 16.0, 64.0)  # retries of a bounded PLD: grid width times these


def _bounded(compute: Callable[[float | None], float], base: float | None) -> float:
    """Run a PLD computation, coarsening its grid while its window is too wide; inf if never.

    A coarser grid is still an upper bound (Doroshenko et al. 2022, Thm. 9), only looser; inf
    reports "not computed" (the statement then shows the RDP numbers alone).
    """
    for factor in _COARSER:
        h = None if base is None and factor == 1.0 else (base or SCHEDULE_DISCRETIZATION) * factor
        try:
            return compute(h)
        except InvalidParameterError:
            raise
        except DpCoreError:  # the composed window exceeded max_fft_points: try a coarser grid
            continue
    return math.inf


def _user_level(
    *, example: tuple[float, float], pld: float, sample_rate: float, schedule: NoiseSchedule,
    steps: int, delta: float, records_per_user: int, orders: object, max_fft_points: int | None,
) -> UserLevelEpsilon:  # fmt: skip
    """User-level epsilon; for K = 1 the example-level numbers themselves (nothing recomputed)."""
    k = records_per_user
    if k == 1:
        rate = sample_rate
        return user_level_result(1, example, pld, rate, delta, (min(example[0], pld), delta))
    return user_level_epsilon(
        sample_rate=sample_rate, schedule=schedule, steps=steps, delta=delta,
        records_per_user=k, orders=orders, discretization=user_discretization(k),
        max_fft_points=max_fft_points,
    )  # fmt: skip


def build_privacy_statement(
    *,
    sample_rate: float,
    steps: int,
    delta: float,
    schedule: NoiseSchedule,
    records_per_user: int = 1,
    orders: object = None,
    max_fft_points: int | None = None,
) -> PrivacyStatement:
    """Compute every number of the privacy statement of one DP-SGD run (see the module doc).

    ``max_fft_points`` bounds each PLD composition's FFT work (a service bounding its work):
    a wider one is retried on a coarser grid, and a PLD epsilon that never fits is inf ("not
    computed"; the RDP numbers stand alone).
    """
    q = probability("sample_rate", sample_rate)
    steps = non_negative_int("steps", steps)
    delta = open_probability("delta", delta)
    per_epoch = steps_per_epoch(q) if q > 0.0 else max(steps, 1)
    example = epsilon_of_schedule(
        sample_rate=q, schedule=schedule, steps=steps, delta=delta, orders=orders, warn=False
    )
    pld = _bounded(
        lambda h: compute_epsilon_pld(
            sample_rate=q, schedule=schedule, steps=steps, delta=delta, discretization=h,
            max_fft_points=max_fft_points,
        ).epsilon,
        None,
    )  # fmt: skip
    # q = 0 samples no example, so no epoch touches one.
    epoch_steps = steps if q > 0.0 else 0
    epoch_rdp, epoch_order, epoch_pld = _epoch_level(
        schedule, epoch_steps, per_epoch, delta, orders
    )
    user = _user_level(
        example=(example.epsilon, example.order), pld=pld, sample_rate=q, schedule=schedule,
        steps=steps, delta=delta, records_per_user=records_per_user, orders=orders,
        max_fft_points=max_fft_points,
    )  # fmt: skip
    mechanism = SampledGaussianSchedule(sample_rate=q, schedule=schedule, steps=steps)
    opacus = rdp_to_epsilon(
        orders=OPACUS_ORDERS, rdp=compute_rdp(mechanism, OPACUS_ORDERS), delta=delta, warn=False
    ).epsilon
    lacks = bool(
        not OPACUS_ORDERS[0] <= example.order <= OPACUS_ORDERS[-1]
        and opacus > example.epsilon * (1.0 + 1e-9)
    )
    return PrivacyStatement(
        sample_rate=q, steps=steps, steps_per_epoch=per_epoch, epochs=steps * q,
        schedule=schedule.to_dict(), delta=delta, epsilon_rdp=example.epsilon,
        order=example.order, epsilon_pld=pld, epoch_epsilon_rdp=epoch_rdp,
        epoch_order=epoch_order, epoch_epsilon_pld=epoch_pld, user=user,
        opacus_epsilon=opacus, opacus_grid_lacks_order=lacks,
    )  # fmt: skip


def _noise_text(schedule: dict[str, Any]) -> str:
    if schedule["kind"] == "explicit":
        values = schedule["values"]
        return f"explicit noise multipliers ({min(values):g} to {max(values):g})"
    if schedule["kind"] == "constant":
        return f"noise multiplier {schedule['noise_multiplier']:g}"
    return (
        f"noise multiplier {schedule['noise_multiplier']:g} decaying ({schedule['kind']}, "
        f"rate {schedule['decay_rate']:g})"
    )


def _pld(epsilon: float) -> str:
    return f"{epsilon:.4f}" if math.isfinite(epsilon) else "not computed (beyond the work bound)"


def _classical(user: UserLevelEpsilon) -> str:
    if not math.isfinite(user.epsilon_classical):
        return "none (no example-level delta1 keeps the group's delta within delta)"
    return (
        f"{user.epsilon_classical:.4f} (K x example-level epsilon at delta1 = "
        f"{user.example_delta:.3g})"
    )


def render_privacy_statement(statement: PrivacyStatement) -> str:
    """The statement as text (TF Privacy's layout, with RDP and PLD side by side)."""
    s, u = statement, statement.user
    lines = [
        f"DP-SGD with Poisson sampling rate q = {s.sample_rate:.6g} for {s.steps} steps "
        f"({s.epochs:.4g} epochs of {s.steps_per_epoch} steps) and {_noise_text(s.schedule)}.",
        "This guarantee protects the release of all intermediate models as well as the final one.",
        "",
        f"Example-level DP with add-or-remove-one adjacency at delta = {s.delta:g}:",
        f"    Epsilon assuming Poisson sampling (*):   RDP {s.epsilon_rdp:.4f} (Renyi order "
        f"{s.order:.3g}), PLD {_pld(s.epsilon_pld)}",
        f"    Epsilon with each example occurring once per epoch (any order, no sampling "
        f"assumed):  RDP {s.epoch_epsilon_rdp:.4f} (Renyi order {s.epoch_order:.3g}), "
        f"PLD {s.epoch_epsilon_pld:.4f}",
    ]
    if u.records_per_user > 1:  # at K = 1 the user level is the example level above
        lines += [
            "",
            f"User-level DP for users with up to {u.records_per_user} records "
            f"(add-or-remove-{u.records_per_user} adjacency), assuming Poisson sampling: "
            f"epsilon {u.epsilon:.4f} ({u.bound}), the smallest of",
            f"    RDP {u.epsilon_rdp:.4f} (Renyi order {u.order:.3g}; group privacy, Mironov "
            f"2017 Prop. 2), PLD {_pld(u.epsilon_pld)} (sampling rate 1-(1-q)^K = "
            f"{u.group_sample_rate:.4g}, noise / K),",
            f"    classical {_classical(u)} (group privacy of (epsilon, delta)-DP)",
        ]
    if s.opacus_grid_lacks_order:
        lines += [
            "",
            f"Note: Opacus' RDP grid (orders 1.1 to 63) lacks order {s.order:.3g}; a re-check "
            f"with Opacus reports epsilon {s.opacus_epsilon:.4f}.",
        ]
    lines += ["", f"(*) {SHUFFLING_NOTE}"]
    return "\n".join(lines)
