"""What differs between runs: headline figures side by side with each run's difference from the first (the
baseline), attempts by outcome, and the scenario settings that differ. Pure: summaries, attempts' columns and
parsed scenarios in, rows out; the terminal and the HTML page each draw the rows their own way.

A difference is better or worse only outside the runs' own spread (``Row.verdict``), defined here once:
  * a phase's percentile (tcp p50, total p99, ...), when both runs' attempts are at hand: the two runs' 95%
    intervals of that percentile, distribution-free from the order statistics of each run's connected attempts
    (``quantile_interval``), do not overlap;
  * any other figure: it moved by at least NOISE_SHARE (5%) of the baseline (any change from a baseline of 0, any
    change of a yes/no flag): a figure with no rows behind it here has no spread to judge by.
Inside that the verdict is "noise": printed with ``≈``, not coloured as better or worse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fleetsim.results.shape import Summary, phase_percentile

Better = Literal["lower", "higher"] | None
Getter = Callable[[Summary], Any]
Interval = tuple[float, float]

NOISE_SHARE = 0.05  # a figure without rows behind it must move by this share of the baseline to count
Z95 = 1.959964  # two-sided 95%


def _share(part: Getter, whole: Getter) -> Getter:
    def get(s: Summary) -> float | None:
        p, w = _num(part(s)), _num(whole(s))
        return None if p is None or not w else 100 * p / w
    return get


def _failed(s: Summary) -> int | None:
    if not isinstance(s.get("outcomes"), Mapping):
        return None
    return sum(int(n) for k, n in s["outcomes"].items() if k != "connected")


@dataclass(frozen=True)
class Metric:
    label: str
    unit: str
    get: Getter
    better: Better = None
    quantile: tuple[str, float] | None = None  # (attempts column, q): a percentile of the connected attempts


def _phase(phase: str, p: str) -> Getter:
    return lambda s: phase_percentile(s, phase, p)


METRICS: tuple[Metric, ...] = (  # each read through the summary's shape (fleetsim.results.shape): mypy checks the keys
    Metric("devices", "", lambda s: s.get("devices")),
    Metric("connected at end", "%", _share(lambda s: s.get("fleet", {}).get("connected_at_end"),
                                           lambda s: s.get("devices")), "higher"),
    Metric("ever connected", "%", _share(lambda s: s.get("fleet", {}).get("ever_connected"),
                                         lambda s: s.get("devices")), "higher"),
    Metric("fleet came up: rate", "/s", lambda s: s.get("fleet_up", {}).get("rate_per_s"), "higher"),
    Metric("fleet came up: span", "s", lambda s: s.get("fleet_up", {}).get("span_s"), "lower"),
    Metric("connects/s, peak second", "/s", lambda s: s.get("connect_rate", {}).get("peak_per_s")),
    Metric("attempts", "", lambda s: s.get("attempts")),
    Metric("failed attempts", "%", _share(_failed, lambda s: s.get("attempts")), "lower"),
    *(Metric(f"{phase} {p}", "ms", _phase(phase, p), "lower", (f"{phase}_ms", q))
      for phase in ("tcp", "tls", "mqtt", "total") for p, q in (("p50", 0.5), ("p99", 0.99))),
    Metric("wait p99 (simulator's queue)", "ms", _phase("wait", "p99"), "lower", ("wait_ms", 0.99)),
    Metric("QoS 1/2 lost", "", lambda s: s.get("messages", {}).get("qos1plus", {}).get("lost"), "lower"),
    Metric("ack p99", "ms", lambda s: s.get("messages", {}).get("qos1plus", {}).get("ack_ms", {}).get("p99"),
           "lower"),
    Metric("broker CPU per handshake", "ms", lambda s: s.get("broker", {}).get("cpu_ms_per_handshake"), "lower"),
    Metric("broker CPU per message", "ms", lambda s: s.get("broker", {}).get("cpu_ms_per_message"), "lower"),
    Metric("broker CPU", "s", lambda s: s.get("broker", {}).get("cpu_seconds"), "lower"),
    Metric("simulator loop lag p99", "ms", lambda s: s.get("simulator", {}).get("loop_lag_ms", {}).get("p99"),
           "lower"),
    Metric("simulator saturated", "", lambda s: s.get("simulator", {}).get("saturated"), "lower"),
    Metric("wall time", "s", lambda s: s.get("wall_s")),
)


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    return None


def quantile_interval(samples: np.ndarray, q: float) -> Interval | None:
    """A 95% interval of the ``q`` quantile from the sample's order statistics (distribution-free: the ranks
    n*q -/+ 1.96*sqrt(n*q*(1-q)), the binomial count of samples below the true quantile); None without samples."""
    a = np.sort(np.asarray(samples, dtype=float)[~np.isnan(np.asarray(samples, dtype=float))])
    n = a.size
    if n == 0:
        return None
    half = Z95 * math.sqrt(n * q * (1 - q))
    lo, hi = math.ceil(n * q - half), math.ceil(n * q + half)
    return float(a[min(max(lo, 1), n) - 1]), float(a[min(max(hi, 1), n) - 1])


def _connected(attempts: Mapping[str, Any], column: str) -> np.ndarray:
    ok = np.asarray(attempts.get("outcome", []), dtype=object) == "connected"
    values = np.asarray(attempts.get(column, np.full(ok.size, np.nan)), dtype=float)
    return values[ok] if values.size == ok.size else np.zeros(0)


@dataclass(frozen=True)
class Row:
    """One figure across runs; ``values[0]`` is the baseline the others are compared with; ``spread[i]`` is run
    i's own 95% interval of the figure, where its rows give one."""

    label: str
    unit: str
    values: list[float | None]
    better: Better = None
    is_flag: bool = False
    spread: list[Interval | None] | None = None

    def delta(self, i: int) -> float | None:
        a, b = self.values[0], self.values[i]
        return None if a is None or b is None else b - a

    def change(self, i: int) -> float | None:
        """Relative change from the baseline, in percent (None when the baseline is 0 or missing)."""
        d, a = self.delta(i), self.values[0]
        return None if d is None or not a else 100 * d / abs(a)

    def verdict(self, i: int) -> str:
        """"better", "worse", "noise" (a difference inside the runs' spread: see the module's docstring) or ""
        (same, unknown, or a figure with no better direction)."""
        d = self.delta(i)
        if d is None or self.better is None or math.isclose(d, 0.0, abs_tol=1e-9):
            return ""
        if not self.outside_spread(i):
            return "noise"
        return "better" if (d < 0) == (self.better == "lower") else "worse"

    def outside_spread(self, i: int) -> bool:
        a, b, d = self.values[0], self.values[i], self.delta(i)
        assert a is not None and b is not None and d is not None
        ours, theirs = (self.spread[0], self.spread[i]) if self.spread else (None, None)
        if ours is not None and theirs is not None:
            return ours[1] < theirs[0] or theirs[1] < ours[0]
        return self.is_flag or abs(d) >= NOISE_SHARE * abs(a)


def labels(names: Sequence[str]) -> list[str]:
    """A, B, C ... before each run's scenario name, so two runs of one scenario stay apart."""
    return [f"{chr(65 + i) if i < 26 else f'R{i + 1}'} {n}" for i, n in enumerate(names)]


def metric_rows(summaries: Sequence[Summary],
                attempts: Sequence[Mapping[str, Any]] | None = None) -> list[Row]:
    """The headline figures that at least one run has; with each run's attempts (columns), the percentiles'
    spread too."""
    rows = []
    for m in METRICS:
        raw = [m.get(s) for s in summaries]
        values = [_num(v) for v in raw]
        if any(v is not None for v in values):
            spread = None
            if m.quantile is not None and attempts is not None:
                column, q = m.quantile
                spread = [quantile_interval(_connected(a, column), q) for a in attempts]
            rows.append(Row(m.label, m.unit, values, m.better, is_flag=any(isinstance(v, bool) for v in raw),
                            spread=spread))
    return rows


def outcome_rows(summaries: Sequence[Summary]) -> list[Row]:
    """Each outcome's share of the attempts, connected first, then failure classes by their total."""
    totals: dict[str, int] = {}
    for s in summaries:
        for k, n in s.get("outcomes", {}).items():
            totals[k] = totals.get(k, 0) + int(n)
    order = sorted(totals, key=lambda k: (k != "connected", -totals[k], k))
    rows = []
    for k in order:
        values: list[float | None] = []
        for s in summaries:
            n, total = s.get("outcomes", {}).get(k, 0), s.get("attempts") or 0
            values.append(100 * n / total if total else None)
        rows.append(Row(k, "%", values, "higher" if k == "connected" else "lower"))
    return rows


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested tables and lists as dotted keys (``fleet[0].count``), so two scenarios compare key by key."""
    if isinstance(data, Mapping):
        items: list[tuple[str, Any]] = [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in data.items()]
    elif isinstance(data, list) and any(isinstance(v, Mapping | list) for v in data):
        items = [(f"{prefix}[{i}]", v) for i, v in enumerate(data)]
    else:
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, key))
    return out


def setting_rows(scenarios: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """Scenario keys whose values differ between runs (``-`` where a run does not set the key)."""
    flat = [flatten(s) for s in scenarios]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    out = []
    for k in keys:
        values = ["-" if k not in f else show(f[k]) for f in flat]
        if len(set(values)) > 1:
            out.append((k, values))
    return out


def show(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def fmt(v: float | None, unit: str = "", *, flag: bool = False) -> str:
    if v is None:
        return "-"
    if flag:
        return "yes" if v else "no"
    text = f"{v:,.0f}" if float(v).is_integer() and abs(v) >= 1 else f"{v:,.3g}" if abs(v) < 10 else f"{v:,.1f}"
    return f"{text} {unit}".rstrip() if unit and unit != "%" else text + unit


def fmt_delta(row: Row, i: int) -> str:
    """``+1.2 ms (+15%)``; ``≈ -0.001 ms (-1%)`` inside the runs' spread; ``-`` when either side is missing."""
    d = row.delta(i)
    if d is None:
        return "-"
    if row.is_flag:
        return "same" if d == 0 else ("now yes" if d > 0 else "now no")
    text = ("≈ " if row.verdict(i) == "noise" else "") + ("+" if d > 0 else "") \
        + fmt(d, "pp" if row.unit == "%" else row.unit)
    change = row.change(i)
    return text + (f" ({change:+.0f}%)" if change is not None and row.unit != "%" else "")
