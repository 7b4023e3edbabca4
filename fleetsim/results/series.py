"""A run's timeline, rebuilt from its raw rows: per-second counts by when each event happened, and the exact
number of connected devices at any moment. Pure: numpy in, columns out.

Everything here is derived from attempts.parquet and sessions.parquet (plus the per-second counters of what is
not a row), so a figure read off the timeline can always be checked against the rows it came from:

* ``attempts`` at each attempt's start, ``connects`` at its CONNACK (start + total), ``failures`` when it failed
  (an event a hair before t0, a timer that fired early, is second 0's);
* ``drops`` when a connection CONNACK had accepted ended, other than by the run's own stop;
* ``connected`` at the end of each second (connections alive then; those the run's stop ended count until the
  stop), so the last second does not fall to zero as the simulator shuts its devices down;
* ``covered_s``: how much of each second lies before the stop (1.0, a fraction for the last one, 0 after it,
  where only late acknowledgements land), so a rate over a partial second is not read as a fall.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

STOP = "stop"


def _bincount(t: np.ndarray, n: int) -> list[int]:
    if t.size == 0:
        return [0] * n
    idx = np.clip(np.floor(t).astype(int), 0, None)
    return [int(v) for v in np.bincount(idx, minlength=n)[:n]]


def attempt_times(attempts: Mapping[str, Sequence[Any]], t0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, connected) per attempt: run seconds at which it began and ended, and whether CONNACK
    accepted it."""
    start = np.asarray(attempts.get("start", []), dtype=float) - t0
    total = np.asarray(attempts.get("total_ms", []), dtype=float)
    end = start + np.nan_to_num(total) / 1000.0
    ok = np.asarray(attempts.get("outcome", []), dtype=object) == "connected"
    return start, end, ok


def session_times(sessions: Mapping[str, Sequence[Any]], t0: float) -> tuple[np.ndarray, ...]:
    """(start, end, stopped) per connection, in run seconds. A connection the run's stop ended never ended as
    far as the timeline goes (end = inf): read the count at the stop, or before it."""
    start = np.asarray(sessions.get("start", []), dtype=float) - t0
    end = np.asarray(sessions.get("end", []), dtype=float) - t0
    stopped = np.asarray(sessions.get("cause", []), dtype=object) == STOP
    return start, np.where(stopped, np.inf, end), stopped


class Concurrency:
    """The connected count as an exact step function of time (from the session rows)."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray) -> None:
        times = np.concatenate([starts, ends])
        steps = np.concatenate([np.ones(starts.size, int), -np.ones(ends.size, int)])
        order = np.lexsort((steps, times))  # at equal times an end counts before a start
        self.times = times[order]
        self.levels = np.cumsum(steps[order])

    def at(self, t: float) -> int:
        """Connected devices at time t (after every change at or before t)."""
        i = int(np.searchsorted(self.times, t, side="right"))
        return int(self.levels[i - 1]) if i else 0

    def peak(self) -> tuple[int, float | None]:
        if not self.levels.size:
            return 0, None
        i = int(np.argmax(self.levels))
        return int(self.levels[i]), float(self.times[i])

    def first_at_least(self, level: int, after: float) -> float | None:
        """The first time >= ``after`` at which the count is at least ``level``."""
        if self.at(after) >= level:
            return after
        later = np.nonzero((self.times > after) & (self.levels >= level))[0]
        return float(self.times[later[0]]) if later.size else None


def run_series(attempts: Mapping[str, Sequence[Any]], sessions: Mapping[str, Sequence[Any]],
               bins: Mapping[str, Sequence[Any]], *, t0: float, stopped_s: float) -> dict[str, list[Any]]:
    """series.parquet: one row per second since t0."""
    a_start, a_end, ok = attempt_times(attempts, t0)
    s_start, s_end, stopped = session_times(sessions, t0)
    events = [float(x.max()) for x in (a_start, a_end, s_end[~stopped]) if x.size]
    n = max([int(np.ceil(stopped_s)), len(bins.get("second", []))] + [int(np.floor(t)) + 1 for t in events])
    level = Concurrency(s_start, s_end)
    out: dict[str, list[Any]] = {
        "second": list(range(n)),
        "covered_s": [round(float(np.clip(stopped_s - s, 0.0, 1.0)), 3) for s in range(n)],
        "connected": [level.at(min(s + 1.0, stopped_s)) for s in range(n)],
        "attempts": _bincount(a_start, n),
        "connects": _bincount(a_end[ok], n),
        "failures": _bincount(a_end[~ok], n),
        "drops": _bincount(s_end[~stopped], n),
    }
    for name, col in bins.items():
        if name != "second":
            out[name] = list(col) + [0] * (n - len(col))
    return out
