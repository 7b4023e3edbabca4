"""What each figure of a report shows, derived from a run's rows (attempts, series, broker CPU samples) or its
summary. Pure: numpy in, plain data out, no matplotlib, so every plotted number is unit-tested.

Times are run seconds (since the run's t0); rates are per second of run time, a partial last second divided by
the share of it the run covered (``covered_s``), so the stop is not read as a fall.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetsim.results.series import attempt_times
from fleetsim.results.summary import PHASES
from fleetsim.words import count

FLOOR_MS = 0.01  # a log axis has no 0: faster phases (an empty wait) are drawn at this
CDF_POINTS = 2000  # enough for the p99.9 of a large run, small enough to draw
TOP_CLASSES = 7  # failure classes drawn by name; the rest are "other"
SWEEP_SETTINGS = ("auth", "key_type", "tls_version", "session_resumption", "crl_size", "broker")


# -- latency ---------------------------------------------------------------------------------------------------
def cdf(values: Sequence[float] | np.ndarray, max_points: int = CDF_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(sorted values floored at FLOOR_MS, share of samples at or below each), thinned to ``max_points``."""
    a = np.asarray(values, dtype=float)
    a = np.sort(a[np.isfinite(a)])
    if not a.size:
        return a, a
    y = np.arange(1, a.size + 1) / a.size
    if a.size > max_points:
        idx = np.unique(np.linspace(0, a.size - 1, max_points).round().astype(int))
        a, y = a[idx], y[idx]
    return np.maximum(a, FLOOR_MS), y


def phase_cdfs(attempts: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each phase's CDF over the attempts that connected (as summary.json's phases_ms)."""
    ok = np.asarray(attempts.get("outcome", []), dtype=object) == "connected"
    return {p.removesuffix("_ms"): cdf(np.asarray(attempts[p], dtype=float)[ok]) for p in PHASES if p in attempts}


# -- the timeline ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timeline:
    """Per second before the run's stop: the connected count at the second's end and event rates per second."""

    second: np.ndarray  # each bin's start
    connected: np.ndarray
    connects: np.ndarray  # per second, by CONNACK time
    attempts: np.ndarray  # per second, by start
    failures: np.ndarray  # per second, by when they failed
    drops: np.ndarray


def timeline(series: Mapping[str, np.ndarray]) -> Timeline:
    covered = np.asarray(series.get("covered_s", []), dtype=float)
    keep = covered > 0  # seconds after the stop hold only late acknowledgements

    def rate(name: str) -> np.ndarray:
        return np.asarray(series.get(name, np.zeros(covered.size)), dtype=float)[keep] / covered[keep]

    return Timeline(second=np.asarray(series.get("second", []), dtype=float)[keep],
                    connected=np.asarray(series.get("connected", []), dtype=float)[keep],
                    connects=rate("connects"), attempts=rate("attempts"), failures=rate("failures"),
                    drops=rate("drops"))


def failures_by_class(attempts: Mapping[str, Any], t0: float, seconds: int,
                      top: int = TOP_CLASSES) -> dict[str, np.ndarray]:
    """Failed attempts per second by failure class, binned by when they failed (as series' ``failures``); the
    ``top`` commonest classes by name, most first, the rest as one "other (N classes)"."""
    _, end, ok = attempt_times(attempts, t0)
    failure = np.asarray(attempts.get("failure", []), dtype=object)
    classes = np.asarray([str(f or "unknown") for f in failure[~ok]], dtype=object)
    bins = np.clip(np.floor(end[~ok]).astype(int), 0, max(0, seconds - 1))
    ranked = [c for c, _ in Counter(classes.tolist()).most_common()]
    named, rest = ranked[:top], ranked[top:]
    out = {c: np.bincount(bins[classes == c], minlength=seconds)[:seconds] for c in named}
    if rest:
        other = np.bincount(bins[np.isin(classes, rest)], minlength=seconds)[:seconds]
        out[f"other ({count(len(rest), 'class')})"] = other
    return out


def event_marks(summary: Mapping[str, Any]) -> list[tuple[float, str]]:
    """(run second, action) of each timed event that fired."""
    return [(float(e["fired_at_s"]), str(e.get("action", "event"))) for e in summary.get("events", [])
            if e.get("fired_at_s") is not None]


# -- the machines ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Machine:
    """The simulator's loop lag and busiest worker per second, and the broker's CPU between samples."""

    second: np.ndarray
    loop_lag_ms: np.ndarray  # the worst lag of any worker in that second
    worker_cpu: np.ndarray  # the busiest worker's share of its core
    broker_t: np.ndarray  # middle of each sampling interval
    broker_cores: np.ndarray  # broker CPU seconds per second (1.0 = one core)


def broker_cpu_rate(samples: Sequence[Mapping[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Broker CPU per second of run time between consecutive samples; an interval whose counter went back (a
    process that was not counted) is left out, not drawn as negative."""
    t = np.asarray([s["t"] for s in samples], dtype=float)
    cpu = np.asarray([s["cpu_seconds"] for s in samples], dtype=float)
    if t.size < 2:
        return np.empty(0), np.empty(0)
    dt, dc = np.diff(t), np.diff(cpu)
    good = (dt > 0) & (dc >= 0)
    return ((t[1:] + t[:-1]) / 2)[good], (dc / np.where(dt > 0, dt, 1))[good]


def machine(series: Mapping[str, np.ndarray], samples: Sequence[Mapping[str, float]]) -> Machine:
    covered = np.asarray(series.get("covered_s", []), dtype=float)
    keep = covered > 0
    n = covered.size
    bt, cores = broker_cpu_rate(samples)
    return Machine(second=np.asarray(series.get("second", np.arange(n)), dtype=float)[keep],
                   loop_lag_ms=np.asarray(series.get("loop_lag_ms_max", np.zeros(n)), dtype=float)[keep],
                   worker_cpu=np.asarray(series.get("sim_cpu_max", np.zeros(n)), dtype=float)[keep],
                   broker_t=bt, broker_cores=cores)


def saturation(summary: Mapping[str, Any]) -> str | None:
    """The simulator's own warning when it was the bottleneck (or a plain one when only the flag is set)."""
    sim = summary.get("simulator", {})
    if not sim.get("saturated"):
        return None
    return str(sim.get("warning") or "the simulator was the bottleneck: its latency figures include its own wait")


# -- sweeps ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Overhead:
    """For one setting a sweep varied: each value's cells, with broker CPU per handshake and p99 total."""

    setting: str
    values: list[str]
    cells: list[list[str]]  # cell names per value
    cpu_ms: list[list[float]]  # broker CPU ms per handshake per cell (NaN: not measured)
    p99_ms: list[list[float]]  # p99 of total connect time per cell (NaN: nothing connected)


def _value(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def varying_settings(cells: Sequence[Mapping[str, Any]]) -> list[str]:
    """Settings with more than one value across the cells: the known ones in SWEEP_SETTINGS order, then others."""
    seen: dict[str, set[str]] = {}
    for c in cells:
        for k, v in c.get("settings", {}).items():
            seen.setdefault(k, set()).add(_value(v))
    varying = [k for k, vs in seen.items() if len(vs) > 1]
    return [k for k in SWEEP_SETTINGS if k in varying] + sorted(k for k in varying if k not in SWEEP_SETTINGS)


def _number(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else float("nan")


def sweep_overhead(cells: Sequence[Mapping[str, Any]]) -> list[Overhead]:
    """``cells``: [{"name", "settings": {...}, "summary": summary.json}]. One Overhead per varying setting,
    values in the order the sweep lists them."""
    out = []
    for setting in varying_settings(cells):
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for c in cells:
            if setting in c.get("settings", {}):
                groups.setdefault(_value(c["settings"][setting]), []).append(c)
        out.append(Overhead(
            setting=setting, values=list(groups),
            cells=[[str(c.get("name", "")) for c in g] for g in groups.values()],
            cpu_ms=[[_number(c["summary"].get("broker", {}).get("cpu_ms_per_handshake")) for c in g]
                    for g in groups.values()],
            p99_ms=[[_number(c["summary"].get("phases_ms", {}).get("total", {}).get("p99")) for c in g]
                    for g in groups.values()]))
    return out


@dataclass(frozen=True)
class RehearsalTimeline:
    seconds: np.ndarray
    healthy: np.ndarray
    revoked: np.ndarray
    refused: np.ndarray  # the revoked devices' refusals per second, every class together
    steps: list[tuple[float, str]]


def rehearsal_timeline(s: Mapping[str, np.ndarray], summary: Mapping[str, Any]) -> RehearsalTimeline:
    """What a rehearsal's page draws, from the columns the rehearsal added to series.parquet (``s``) and the
    summary's events."""
    n = len(s.get("second", []))
    refused = np.zeros(n)
    for name, col in s.items():
        if name.startswith("refused_"):
            refused = refused + np.asarray(col, dtype=float)
    steps = [(float(e["fired_at_s"]), str(e["action"])) for e in summary.get("events", [])]
    return RehearsalTimeline(np.asarray(s.get("second", []), dtype=float),
                             np.asarray(s.get("connected_healthy", np.zeros(n)), dtype=float),
                             np.asarray(s.get("connected_revoked", np.zeros(n)), dtype=float), refused, steps)
