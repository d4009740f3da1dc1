"""Mechanism descriptions: frozen dataclasses holding parameters only (no accounting here).

The accounting lives in :mod:`dp_core.rdp.compose`; these records only say *what happened*, so
the ledger can store them (as versioned JSON, see :func:`mechanism_to_dict`) and re-account later.
Parameters are validated on construction, so an invalid description cannot exist.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from dp_core.errors import InvalidParameterError
from dp_core.schedules import NoiseSchedule
from dp_core.validation import finite_float, non_negative_int, positive_float, probability

__all__ = [
    "MECHANISM_FORMAT_VERSION",
    "Composed",
    "Gaussian",
    "Grouped",
    "Laplace",
    "Mechanism",
    "PoissonSampled",
    "Repeated",
    "SampledGaussianSchedule",
    "Tuning",
    "mechanism_from_dict",
    "mechanism_to_dict",
    "neighbouring_relation",
]

MECHANISM_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Gaussian:
    """Gaussian mechanism with noise std ``noise_multiplier`` times the L2 sensitivity."""

    noise_multiplier: float

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "noise_multiplier", positive_float("noise_multiplier", self.noise_multiplier)
        )


@dataclass(frozen=True)
class Laplace:
    """Laplace mechanism with scale ``noise_scale`` times the L1 sensitivity."""

    noise_scale: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_scale", positive_float("noise_scale", self.noise_scale))


@dataclass(frozen=True, kw_only=True)
class PoissonSampled:
    """``inner`` run on a Poisson sample: each record included independently with ``sample_rate``."""

    sample_rate: float
    inner: Mechanism

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample_rate", probability("sample_rate", self.sample_rate))
        _check_mechanism("inner", self.inner)


@dataclass(frozen=True, kw_only=True)
class Repeated:
    """``inner`` run ``count`` times (adaptively); RDP adds up (Mironov 2017, Prop. 1)."""

    count: int
    inner: Mechanism

    def __post_init__(self) -> None:
        object.__setattr__(self, "count", non_negative_int("count", self.count))
        _check_mechanism("inner", self.inner)


@dataclass(frozen=True)
class Composed:
    """A sequence of mechanisms run one after the other."""

    parts: tuple[Mechanism, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(self.parts))
        for part in self.parts:
            _check_mechanism("parts", part)


@dataclass(frozen=True, kw_only=True)
class SampledGaussianSchedule:
    """DP-SGD steps [start_step, start_step + steps) of the Poisson-subsampled Gaussian.

    Step t uses noise multiplier ``schedule`` at global step t, so a charge for one epoch of a run
    with a decaying schedule is ``SampledGaussianSchedule(sample_rate=q, schedule=schedule, steps=steps_per_epoch, start_step=e * S)``.
    """

    sample_rate: float
    schedule: NoiseSchedule
    steps: int
    start_step: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample_rate", probability("sample_rate", self.sample_rate))
        object.__setattr__(self, "steps", non_negative_int("steps", self.steps))
        object.__setattr__(self, "start_step", non_negative_int("start_step", self.start_step))
        if not isinstance(self.schedule, NoiseSchedule):
            raise InvalidParameterError("schedule", self.schedule, "must be a NoiseSchedule")
        # Fails now (not at accounting time) when the decay drives sigma to 0 within these steps.
        if self.steps and not self.schedule.is_constant:
            self.schedule.noise_multipliers(self.start_step, self.start_step + self.steps)


@dataclass(frozen=True, kw_only=True)
class Grouped:
    """``inner`` protecting individuals who contribute up to ``records`` records each (group privacy).

    Its RDP is the group bound of Mironov 2017, Prop. 2 (see :mod:`dp_core.group`, which
    registers the rule): a change of one individual is a change of up to ``records`` records.
    ``records == 1`` is ``inner`` itself. Wrapping the description, rather than a flag beside it,
    keeps K attached to the mechanism through every composite (a tuning job over a grouped base
    is charged the tuning bound of the grouped base).
    """

    records: int
    inner: Mechanism

    def __post_init__(self) -> None:
        records = non_negative_int("records", self.records)
        if records < 1:
            raise InvalidParameterError("records", self.records, "must be >= 1")
        object.__setattr__(self, "records", records)
        _check_mechanism("inner", self.inner)


TUNING_DISTRIBUTIONS = ("negative_binomial", "poisson")


@dataclass(frozen=True, kw_only=True)
class Tuning:
    """Hyperparameter tuning: ``base`` run a random number K of times, the best run released.

    Papernot & Steinke 2022, "Hyperparameter tuning with Renyi differential privacy". K follows
    the truncated negative binomial D_{eta,gamma} (``distribution="negative_binomial"``; eta = 1
    is the geometric distribution, eta = 0 the logarithmic one), with
    P[K = k] proportional to (1 - gamma)^k prod_{l<k} (l + eta)/(l + 1) for k >= 1, or the
    Poisson distribution with mean ``mu`` (``distribution="poisson"``). Each run may use other
    hyperparameters; ``base`` must bound every candidate (e.g. the noisiest-spending one).
    """

    base: Mechanism
    distribution: str
    eta: float = 1.0
    gamma: float = 0.5
    mu: float = 1.0

    def __post_init__(self) -> None:
        _check_mechanism("base", self.base)
        if self.distribution not in TUNING_DISTRIBUTIONS:
            raise InvalidParameterError(
                "distribution",
                self.distribution,
                f"must be one of {', '.join(TUNING_DISTRIBUTIONS)}",
            )
        eta = finite_float("eta", self.eta)
        if eta <= -1.0:
            raise InvalidParameterError("eta", self.eta, "must be > -1")
        gamma = probability("gamma", self.gamma)
        if not 0.0 < gamma < 1.0:
            raise InvalidParameterError("gamma", self.gamma, "must be in (0, 1)")
        object.__setattr__(self, "eta", eta)
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "mu", positive_float("mu", self.mu))
        if self.distribution == "poisson" and self.mu < 1.0:
            # Thm. 6's log(mu)/(lambda - 1) term is negative for mu < 1 and unbounded below as
            # lambda -> 1, so the bound would claim a negative divergence: refuse, never clamp.
            raise InvalidParameterError(
                "mu", self.mu, "must be >= 1 (Papernot & Steinke's Poisson bound needs E[K] >= 1)"
            )

    @property
    def expected_runs(self) -> float:
        """E[K] (Papernot & Steinke 2022, Sec. 3 for the truncated negative binomial)."""
        if self.distribution == "poisson":
            return self.mu
        g, eta = self.gamma, self.eta
        if eta == 0.0:  # logarithmic distribution
            return (1.0 / g - 1.0) / math.log(1.0 / g)
        return float(eta * (1.0 - g) / (g * (1.0 - g**eta)))


Mechanism: TypeAlias = (
    Gaussian
    | Laplace
    | PoissonSampled
    | Repeated
    | Composed
    | SampledGaussianSchedule
    | Tuning
    | Grouped
)
MECHANISM_TYPES: tuple[type, ...] = (
    Gaussian,
    Laplace,
    PoissonSampled,
    Repeated,
    Composed,
    SampledGaussianSchedule,
    Tuning,
    Grouped,
)


def _check_mechanism(name: str, value: object) -> None:
    if not isinstance(value, MECHANISM_TYPES):
        raise InvalidParameterError(name, value, "must be a dp_core mechanism")


def register_mechanism_type(cls: type) -> None:
    """Let another module (e.g. PATE) add a mechanism record type to the accepted set."""
    global MECHANISM_TYPES
    if cls not in MECHANISM_TYPES:
        MECHANISM_TYPES = (*MECHANISM_TYPES, cls)


# --- versioned JSON (following dp_accounting's dp_event rules: a tagged, nested record) ---------

_Encoder = Callable[[Any], dict[str, Any]]
_Decoder = Callable[[dict[str, Any]], Any]


def _encode_schedule_mech(m: SampledGaussianSchedule) -> dict[str, Any]:
    return {
        "sample_rate": m.sample_rate,
        "schedule": m.schedule.to_dict(),
        "steps": m.steps,
        "start_step": m.start_step,
    }


_ENCODERS: dict[type, tuple[str, _Encoder]] = {
    Gaussian: ("gaussian", lambda m: {"noise_multiplier": m.noise_multiplier}),
    Laplace: ("laplace", lambda m: {"noise_scale": m.noise_scale}),
    PoissonSampled: (
        "poisson_sampled",
        lambda m: {"sample_rate": m.sample_rate, "inner": _encode(m.inner)},
    ),
    Repeated: ("repeated", lambda m: {"count": m.count, "inner": _encode(m.inner)}),
    Composed: ("composed", lambda m: {"parts": [_encode(p) for p in m.parts]}),
    SampledGaussianSchedule: ("sampled_gaussian_schedule", _encode_schedule_mech),
    Tuning: (
        "tuning",
        lambda m: {
            "base": _encode(m.base),
            "distribution": m.distribution,
            "eta": m.eta,
            "gamma": m.gamma,
            "mu": m.mu,
        },
    ),
    Grouped: ("grouped", lambda m: {"records": m.records, "inner": _encode(m.inner)}),
}

_DECODERS: dict[str, _Decoder] = {
    "gaussian": lambda d: Gaussian(d["noise_multiplier"]),
    "laplace": lambda d: Laplace(d["noise_scale"]),
    "poisson_sampled": lambda d: PoissonSampled(
        sample_rate=d["sample_rate"], inner=_decode(d["inner"])
    ),
    "repeated": lambda d: Repeated(count=d["count"], inner=_decode(d["inner"])),
    "composed": lambda d: Composed(tuple(_decode(p) for p in d["parts"])),
    "sampled_gaussian_schedule": lambda d: SampledGaussianSchedule(
        sample_rate=d["sample_rate"],
        schedule=NoiseSchedule.from_dict(d["schedule"]),
        steps=d["steps"],
        start_step=d.get("start_step", 0),
    ),
    "tuning": lambda d: Tuning(
        base=_decode(d["base"]),
        distribution=d["distribution"],
        eta=d.get("eta", 1.0),
        gamma=d.get("gamma", 0.5),
        mu=d.get("mu", 1.0),
    ),
    "grouped": lambda d: Grouped(records=d["records"], inner=_decode(d["inner"])),
}


def register_mechanism_codec(cls: type, tag: str, encoder: _Encoder, decoder: _Decoder) -> None:
    """Register the JSON tag, encoder and decoder of an additional mechanism type."""
    register_mechanism_type(cls)
    _ENCODERS[cls] = (tag, encoder)
    _DECODERS[tag] = decoder


def _encode(mechanism: Any) -> dict[str, Any]:
    try:
        tag, encoder = _ENCODERS[type(mechanism)]
    except KeyError:
        raise InvalidParameterError("mechanism", mechanism, "is not a dp_core mechanism") from None
    return {"type": tag, **encoder(mechanism)}


def _decode(data: Any) -> Any:
    if not isinstance(data, dict) or data.get("type") not in _DECODERS:
        raise InvalidParameterError("mechanism", data, "unknown or malformed mechanism record")
    try:
        return _DECODERS[data["type"]](data)
    except KeyError as missing:
        raise InvalidParameterError("mechanism", data, f"missing field {missing}") from None


def mechanism_to_dict(mechanism: object) -> dict[str, Any]:
    """Return the versioned JSON-ready description of ``mechanism``."""
    return {"version": MECHANISM_FORMAT_VERSION, "mechanism": _encode(mechanism)}


def mechanism_from_dict(data: dict[str, Any]) -> Mechanism:
    """Inverse of :func:`mechanism_to_dict`; refuses unknown versions."""
    if not isinstance(data, dict) or data.get("version") != MECHANISM_FORMAT_VERSION:
        raise InvalidParameterError(
            "version",
            data.get("version") if isinstance(data, dict) else data,
            "unsupported mechanism format version",
        )
    result: Mechanism = _decode(data.get("mechanism"))
    return result


# --- the neighbouring relation a description's guarantee is stated under ----------------------

#: Add or remove one unit (record or user): Poisson sampling, full-batch mechanisms, releases.
ADD_REMOVE = "add_remove"
#: Replace one unit by another (the dataset size is public): fixed-size sampling without
#: replacement (Wang, Balle & Kasiviswanathan 2019).
REPLACE_ONE = "replace_one"


def _children(mechanism: object) -> tuple[object, ...]:
    if isinstance(mechanism, Composed):
        return mechanism.parts
    if isinstance(mechanism, Tuning):
        return (mechanism.base,)
    inner = getattr(mechanism, "inner", None)
    return () if inner is None else (inner,)


def neighbouring_relation(mechanism: object) -> str:
    """Return the neighbouring relation the RDP of ``mechanism`` is stated under.

    A leaf states its own with a ``neighbouring_relation`` attribute (default add/remove);
    composites inherit their parts'. RDP curves under different relations do not add up to a
    guarantee under either, so a description that mixes them is refused.

    Raises:
        InvalidParameterError: when parts of ``mechanism`` use different relations.
    """
    own = getattr(mechanism, "neighbouring_relation", None)
    if isinstance(own, str):
        return own
    relations = {neighbouring_relation(child) for child in _children(mechanism)}
    if len(relations) > 1:
        raise InvalidParameterError(
            "mechanism", mechanism, f"mixes neighbouring relations {sorted(relations)}"
        )
    return relations.pop() if relations else ADD_REMOVE
