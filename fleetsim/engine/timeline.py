"""Per-second counters binned by when each event happened, not by when a loop got round to counting it.

A publish, an acknowledgement or a loop-lag sample is filed under ``floor(t)``, ``t`` being seconds since the
run's shared t0 (its own timestamp), so a worker that is late does not move events into later seconds. Columns
named ``*_max`` keep the largest value seen in the second (and merge across workers by max); the others count
(and merge by sum). Pure: no clocks are read here.
"""

from __future__ import annotations

import math
from typing import Any

MAX_SUFFIX = "_max"


def is_max(column: str) -> bool:
    return column.endswith(MAX_SUFFIX)


class Bins:
    """Growing per-second columns; ``second`` is implied by the position."""

    __slots__ = ("_cols",)

    def __init__(self, *columns: str) -> None:
        self._cols: dict[str, list[float]] = {c: [] for c in columns}

    def _slot(self, column: str, t: float) -> tuple[list[float], int]:
        col = self._cols[column]
        i = max(0, math.floor(t))
        if i >= len(col):
            for c in self._cols.values():
                c.extend([0.0] * (i + 1 - len(c)))
        return col, i

    def add(self, column: str, t: float, n: float = 1.0) -> None:
        col, i = self._slot(column, t)
        col[i] += n

    def peak(self, column: str, t: float, value: float) -> None:
        col, i = self._slot(column, t)
        if value > col[i]:
            col[i] = value

    def columns(self) -> dict[str, list[Any]]:
        """Columnar data with an explicit ``second``; counters as ints where they are whole."""
        n = max((len(c) for c in self._cols.values()), default=0)
        out: dict[str, list[Any]] = {"second": list(range(n))}
        for name, col in self._cols.items():
            padded = col + [0.0] * (n - len(col))
            out[name] = padded if is_max(name) or name.endswith("_s") else [int(v) for v in padded]
        return out


def merge(parts: list[dict[str, list[Any]]]) -> dict[str, list[Any]]:
    """Per-second columns of several workers as one: sums, or maxima for ``*_max`` columns."""
    n = max((len(p.get("second", [])) for p in parts), default=0)
    names = sorted({k for p in parts for k in p if k != "second"})
    out: dict[str, list[Any]] = {"second": list(range(n))}
    for name in names:
        acc: list[Any] = [0] * n
        for p in parts:
            for i, v in enumerate(p.get(name, [])):
                acc[i] = max(acc[i], v) if is_max(name) else acc[i] + v
        out[name] = acc
    return out
