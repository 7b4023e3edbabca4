"""Statistics over a run's records: percentiles per phase, counts per outcome. Pure: numpy in, dicts out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
PHASES = ("setup_ms", "tcp_ms", "tls_ms", "mqtt_ms", "total_ms")


def distribution(samples: Sequence[float] | np.ndarray) -> dict[str, float | int | None]:
    """n, mean, max and p50/p90/p99/p99.9 of ``samples``; None where there is nothing to measure."""
    a = np.asarray(samples, dtype=float)
    a = a[~np.isnan(a)]
    out: dict[str, float | int | None] = {"n": int(a.size)}
    if a.size == 0:
        out.update({"mean": None, "max": None, **{_pname(p): None for p in PERCENTILES}})
        return out
    out["mean"] = round(float(a.mean()), 3)
    out["max"] = round(float(a.max()), 3)
    for p, v in zip(PERCENTILES, np.percentile(a, PERCENTILES), strict=True):
        out[_pname(p)] = round(float(v), 3)
    return out


def _pname(p: float) -> str:
    return f"p{p:g}"


def phase_summary(attempts: Mapping[str, Sequence[Any]]) -> dict[str, dict[str, float | int | None]]:
    """Latency distribution of each phase over the attempts that connected."""
    ok = np.asarray(attempts.get("outcome", []), dtype=object) == "connected"
    return {
        phase.removesuffix("_ms"): distribution(np.asarray(attempts[phase], dtype=float)[ok])
        for phase in PHASES
        if phase in attempts
    }


def outcome_counts(attempts: Mapping[str, Sequence[Any]]) -> dict[str, int]:
    """Attempts per outcome: "connected" or the failure class."""
    counts = Counter(
        "connected" if o == "connected" else (f or "unknown")
        for o, f in zip(attempts.get("outcome", []), attempts.get("failure", []), strict=True)
    )
    return dict(counts.most_common())


def rates(series: Mapping[str, Sequence[float]], column: str) -> dict[str, float]:
    """Peak and mean per-second rate of ``column`` over the seconds where it was non-zero."""
    a = np.asarray(series.get(column, []), dtype=float)
    busy = a[a > 0]
    if busy.size == 0:
        return {"peak_per_s": 0.0, "mean_per_s": 0.0}
    return {"peak_per_s": float(busy.max()), "mean_per_s": round(float(busy.mean()), 2)}


def summarise(
    attempts: Mapping[str, Sequence[Any]],
    series: Mapping[str, Sequence[float]],
    messages: Mapping[str, Any],
    *,
    devices: int,
    wall_s: float,
    broker: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's summary.json: what a reader of a load test looks at first."""
    outcomes = outcome_counts(attempts)
    ok_devices = {d for d, o in zip(attempts.get("device_id", []), attempts.get("outcome", []), strict=True)
                  if o == "connected"}
    ack = messages.get("ack_ms", [])
    published = int(messages.get("published", 0))
    summary: dict[str, Any] = {
        "devices": devices,
        "devices_connected": len(ok_devices),
        "attempts": len(attempts.get("outcome", [])),
        "outcomes": outcomes,
        "phases_ms": phase_summary(attempts),
        "connect_rate": rates(series, "connects"),
        "messages": {
            "published": published,
            "acknowledged": int(messages.get("acknowledged", 0)),
            "lost": int(messages.get("lost", 0)),
            "by_kind": dict(messages.get("by_kind", {})),
            "ack_ms": distribution(ack),
        },
        "wall_s": round(wall_s, 3),
    }
    if broker:
        summary["broker"] = dict(broker)
        cpu = broker.get("cpu_seconds")
        handshakes = outcomes.get("connected", 0)
        if cpu is not None and handshakes:
            summary["broker"]["cpu_ms_per_connect"] = round(1000 * float(cpu) / handshakes, 3)
    return summary
