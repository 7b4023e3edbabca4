"""What differs between runs: headline figures side by side with each run's difference from the first (the
baseline), attempts by outcome, and the scenario settings that differ. Pure: summaries and parsed scenarios in,
rows out; the terminal and the HTML page each draw the rows their own way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Better = Literal["lower", "higher"] | None
Getter = Callable[[Mapping[str, Any]], Any]


def _at(*path: str) -> Getter:
    def get(s: Mapping[str, Any]) -> Any:
        v: Any = s
        for k in path:
            v = v.get(k) if isinstance(v, Mapping) else None
        return v
    return get


def _share(part: Getter, whole: Getter) -> Getter:
    def get(s: Mapping[str, Any]) -> float | None:
        p, w = _num(part(s)), _num(whole(s))
        return None if p is None or not w else 100 * p / w
    return get


def _failed(s: Mapping[str, Any]) -> int | None:
    if not isinstance(s.get("outcomes"), Mapping):
        return None
    return sum(int(n) for k, n in s["outcomes"].items() if k != "connected")


@dataclass(frozen=True)
class Metric:
    label: str
    unit: str
    get: Getter
    better: Better = None


METRICS: tuple[Metric, ...] = (
    Metric("devices", "", _at("devices")),
    Metric("connected at end", "%", _share(_at("fleet", "connected_at_end"), _at("devices")), "higher"),
    Metric("ever connected", "%", _share(_at("fleet", "ever_connected"), _at("devices")), "higher"),
    Metric("fleet came up: rate", "/s", _at("fleet_up", "rate_per_s"), "higher"),
    Metric("fleet came up: span", "s", _at("fleet_up", "span_s"), "lower"),
    Metric("connects/s, peak second", "/s", _at("connect_rate", "peak_per_s")),
    Metric("attempts", "", _at("attempts")),
    Metric("failed attempts", "%", _share(_failed, _at("attempts")), "lower"),
    *(Metric(f"{phase} {p}", "ms", _at("phases_ms", phase, p), "lower")
      for phase in ("tcp", "tls", "mqtt", "total") for p in ("p50", "p99")),
    Metric("wait p99 (simulator's queue)", "ms", _at("phases_ms", "wait", "p99"), "lower"),
    Metric("QoS 1/2 lost", "", _at("messages", "qos1plus", "lost"), "lower"),
    Metric("ack p99", "ms", _at("messages", "qos1plus", "ack_ms", "p99"), "lower"),
    Metric("broker CPU per handshake", "ms", _at("broker", "cpu_ms_per_handshake"), "lower"),
    Metric("broker CPU per message", "ms", _at("broker", "cpu_ms_per_message"), "lower"),
    Metric("broker CPU", "s", _at("broker", "cpu_seconds"), "lower"),
    Metric("simulator loop lag p99", "ms", _at("simulator", "loop_lag_ms", "p99"), "lower"),
    Metric("simulator saturated", "", _at("simulator", "saturated"), "lower"),
    Metric("wall time", "s", _at("wall_s")),
)


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    return None


@dataclass(frozen=True)
class Row:
    """One figure across runs; ``values[0]`` is the baseline the others are compared with."""

    label: str
    unit: str
    values: list[float | None]
    better: Better = None
    is_flag: bool = False

    def delta(self, i: int) -> float | None:
        a, b = self.values[0], self.values[i]
        return None if a is None or b is None else b - a

    def change(self, i: int) -> float | None:
        """Relative change from the baseline, in percent (None when the baseline is 0 or missing)."""
        d, a = self.delta(i), self.values[0]
        return None if d is None or not a else 100 * d / abs(a)

    def verdict(self, i: int) -> str:
        """"better", "worse" or "" (same, unknown, or a figure with no better direction)."""
        d = self.delta(i)
        if d is None or self.better is None or math.isclose(d, 0.0, abs_tol=1e-9):
            return ""
        return "better" if (d < 0) == (self.better == "lower") else "worse"


def labels(names: Sequence[str]) -> list[str]:
    """A, B, C ... before each run's scenario name, so two runs of one scenario stay apart."""
    return [f"{chr(65 + i) if i < 26 else f'R{i + 1}'} {n}" for i, n in enumerate(names)]


def metric_rows(summaries: Sequence[Mapping[str, Any]]) -> list[Row]:
    """The headline figures that at least one run has."""
    rows = []
    for m in METRICS:
        raw = [m.get(s) for s in summaries]
        values = [_num(v) for v in raw]
        if any(v is not None for v in values):
            rows.append(Row(m.label, m.unit, values, m.better, is_flag=any(isinstance(v, bool) for v in raw)))
    return rows


def outcome_rows(summaries: Sequence[Mapping[str, Any]]) -> list[Row]:
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
    """``+1.2 ms (+15%)``; ``-`` when either side is missing."""
    d = row.delta(i)
    if d is None:
        return "-"
    if row.is_flag:
        return "same" if d == 0 else ("now yes" if d > 0 else "now no")
    text = ("+" if d > 0 else "") + fmt(d, "pp" if row.unit == "%" else row.unit)
    change = row.change(i)
    return text + (f" ({change:+.0f}%)" if change is not None and row.unit != "%" else "")
