"""A run's cost per unit of charge (epoch, PATE batch, release), as runs of identical units.

A plan of n units whose costs repeat is stored as segments ``((count, cost), ...)``: a
constant-noise DP-SGD run is one segment, a PATE job with an uneven last batch two, a decaying
schedule one per epoch. Totals over any range of units are exact sums of multiples
(:func:`app.ledger.quanta.scale`), so the work is bounded by the number of segments, never by the
number of units (a 1e8-query PATE job costs two multiplications).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.ledger import quanta
from app.ledger.quanta import Vec


@dataclass(frozen=True)
class UnitCosts:
    """Per-unit costs: ``segments[i] = (count, cost)``, count >= 1 consecutive units each."""

    segments: tuple[tuple[int, Vec], ...]

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError("a plan has at least one unit")
        sizes = {len(cost) for _, cost in self.segments}
        if len(sizes) != 1 or any(count < 1 for count, _ in self.segments):
            raise ValueError("segments need counts >= 1 and costs of one length")

    @classmethod
    def uniform(cls, cost: Vec, units: int) -> UnitCosts:
        """Return ``units`` units of the same cost."""
        return cls(((units, cost),))

    @classmethod
    def from_units(cls, costs: Sequence[Vec]) -> UnitCosts:
        """Return the costs of consecutive units, merging equal neighbours into segments."""
        segments: list[tuple[int, Vec]] = []
        for cost in costs:
            if segments and segments[-1][1] == cost:
                segments[-1] = (segments[-1][0] + 1, cost)
            else:
                segments.append((1, cost))
        return cls(tuple(segments))

    @property
    def units(self) -> int:
        """How many units the plan has."""
        return sum(count for count, _ in self.segments)

    @property
    def size(self) -> int:
        """How many orders each cost has."""
        return len(self.segments[0][1])

    def unit(self, index: int) -> Vec:
        """Return the cost of unit ``index`` (0-based)."""
        if index < 0:
            raise IndexError(index)
        for count, cost in self.segments:
            if index < count:
                return cost
            index -= count
        raise IndexError("unit beyond the plan")

    def total(self, start: int, stop: int) -> Vec:
        """Return the exact cost of units [start, stop)."""
        total = quanta.zeros(self.size)
        first = 0
        for count, cost in self.segments:
            overlap = min(stop, first + count) - max(start, first)
            if overlap > 0:
                total = quanta.add(total, quanta.scale(cost, overlap))
            first += count
        return total

    def to_json(self) -> list[list[Any]]:
        """Return the stored form: ``[[count, [quanta...]], ...]``."""
        return [[count, quanta.to_json(cost)] for count, cost in self.segments]

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> UnitCosts:
        """Inverse of :meth:`to_json`."""
        return cls(tuple((int(count), quanta.from_json(cost)) for count, cost in data))
