"""Noise schedules over the 0-based global step t (one definition for trainer and accountant).

Kinds (MindArmour's AdaGaussian names in brackets, accepted as aliases):

* ``constant``: sigma_t = s0
* ``inverse-time`` ['Time']: sigma_t = s0 / (1 + k t)
* ``geometric`` ['Step']: sigma_t = s0 (1 - k)^t
* ``exponential`` ['Exp']: sigma_t = s0 exp(-k t)
* ``explicit``: a given list, one noise multiplier per step.

For accounting only the multiset of sigmas matters (RDP composes by summation, Mironov 2017,
Prop. 1), so :meth:`NoiseSchedule.segments` returns distinct values with their step counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dp_core.errors import InvalidParameterError
from dp_core.rdp.orders import FloatArray
from dp_core.validation import finite_float, non_negative_int, positive_float

__all__ = ["SCHEDULE_KINDS", "NoiseSchedule", "parse_schedule_kind"]

SCHEDULE_KINDS = ("constant", "inverse-time", "geometric", "exponential", "explicit")
_ALIASES = {"time": "inverse-time", "step": "geometric", "exp": "exponential"}


def parse_schedule_kind(name: object) -> str:
    """Return the canonical schedule name for ``name`` (case-insensitive, MindArmour aliases ok)."""
    if not isinstance(name, str):
        raise InvalidParameterError("schedule", name, f"must be one of {', '.join(SCHEDULE_KINDS)}")
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in SCHEDULE_KINDS:
        raise InvalidParameterError(
            "schedule", name, f"must be one of {', '.join(SCHEDULE_KINDS)} (or Time, Step, Exp)"
        )
    return key


@dataclass(frozen=True, kw_only=True)
class NoiseSchedule:
    """Noise multiplier as a function of the 0-based global step.

    Attributes:
        kind: One of :data:`SCHEDULE_KINDS` (aliases are canonicalised on construction).
        noise_multiplier: s0, the noise multiplier at step 0 (ignored for ``explicit``).
        decay_rate: k >= 0; for ``geometric`` k < 1. Must be 0 for ``constant``.
        values: The per-step noise multipliers of an ``explicit`` schedule.
    """

    kind: str = "constant"
    noise_multiplier: float = 1.0
    decay_rate: float = 0.0
    values: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        kind = parse_schedule_kind(self.kind)
        object.__setattr__(self, "kind", kind)
        if kind == "explicit":
            self._validate_explicit()
            return
        object.__setattr__(
            self, "noise_multiplier", positive_float("noise_multiplier", self.noise_multiplier)
        )
        rate = finite_float("decay_rate", self.decay_rate)
        if rate < 0.0:
            raise InvalidParameterError("decay_rate", self.decay_rate, "must be >= 0")
        if kind == "constant" and rate != 0.0:
            raise InvalidParameterError(
                "decay_rate", self.decay_rate, "must be 0 for the constant schedule"
            )
        if kind == "geometric" and rate >= 1.0:
            raise InvalidParameterError(
                "decay_rate",
                self.decay_rate,
                "must be < 1 for the geometric schedule (sigma would reach 0)",
            )
        object.__setattr__(self, "decay_rate", rate)

    def _validate_explicit(self) -> None:
        if len(self.values) == 0:
            raise InvalidParameterError("values", self.values, "an explicit schedule needs values")
        clean = tuple(positive_float("values", v) for v in self.values)
        object.__setattr__(self, "values", clean)
        object.__setattr__(self, "noise_multiplier", clean[0])
        object.__setattr__(self, "decay_rate", 0.0)

    @property
    def is_constant(self) -> bool:
        """Whether every step has the same noise multiplier."""
        return self.kind == "constant" or (self.kind != "explicit" and self.decay_rate == 0.0)

    def noise_multipliers(self, start: int, stop: int) -> FloatArray:
        """Return sigma_t for t in [start, stop), refusing a decay that drives sigma to 0.

        Raises:
            InvalidParameterError: if a step is outside an explicit schedule, or sigma_t
                underflows to 0 (or is not finite) at some step.
        """
        start = non_negative_int("start_step", start)
        stop = non_negative_int("steps", stop)
        t = np.arange(start, max(start, stop), dtype=np.float64)
        sigmas = self._raw(t, start, stop)
        if sigmas.size and (not np.all(np.isfinite(sigmas)) or float(sigmas.min()) <= 0.0):
            bad = int(start + np.argmax(~np.isfinite(sigmas) | (sigmas <= 0.0)))
            raise InvalidParameterError(
                "decay_rate",
                self.decay_rate,
                f"drives the noise multiplier to 0 at step {bad} ({self.kind} schedule, s0={self.noise_multiplier:g})",
            )
        return sigmas

    def _raw(self, t: FloatArray, start: int, stop: int) -> FloatArray:
        s0, k = self.noise_multiplier, self.decay_rate
        if self.kind == "explicit":
            if stop > len(self.values):
                raise InvalidParameterError(
                    "steps", stop, f"the explicit schedule has only {len(self.values)} values"
                )
            return np.asarray(self.values[start:stop], dtype=np.float64)
        if self.is_constant:
            return np.full(t.shape, s0)
        with np.errstate(under="ignore", over="ignore"):
            if self.kind == "inverse-time":
                values = s0 / (1.0 + k * t)
            elif self.kind == "geometric":
                # exp(t log1p(-k)) is (1-k)^t without the power's loss of accuracy for small k.
                values = s0 * np.exp(t * np.log1p(-k))
            else:
                values = s0 * np.exp(-k * t)
        return np.asarray(values, dtype=np.float64)

    def noise_multiplier_at(self, step: int) -> float:
        """Return sigma at one global step."""
        return float(self.noise_multipliers(step, step + 1)[0])

    def segments(self, start: int, stop: int) -> tuple[FloatArray, FloatArray]:
        """Return the distinct sigmas of steps [start, stop) and how many steps use each."""
        if self.is_constant and stop > start:
            self.noise_multipliers(start, start + 1)
            return np.array([self.noise_multiplier]), np.array([float(stop - start)])
        values, counts = np.unique(self.noise_multipliers(start, stop), return_counts=True)
        return values, counts.astype(np.float64)

    def scaled(self, factor: float) -> NoiseSchedule:
        """Return the same schedule with every sigma multiplied by ``factor`` (> 0)."""
        factor = positive_float("factor", factor)
        if self.kind == "explicit":
            return NoiseSchedule(kind="explicit", values=tuple(v * factor for v in self.values))
        return NoiseSchedule(
            kind=self.kind,
            noise_multiplier=self.noise_multiplier * factor,
            decay_rate=self.decay_rate,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description."""
        if self.kind == "explicit":
            return {"kind": "explicit", "values": list(self.values)}
        return {
            "kind": self.kind,
            "noise_multiplier": self.noise_multiplier,
            "decay_rate": self.decay_rate,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseSchedule:
        """Inverse of :meth:`to_dict`."""
        if data.get("kind") == "explicit":
            return cls(kind="explicit", values=tuple(data.get("values", ())))
        return cls(
            kind=data.get("kind", "constant"),
            noise_multiplier=data.get("noise_multiplier", float("nan")),
            decay_rate=data.get("decay_rate", 0.0),
        )
