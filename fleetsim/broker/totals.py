"""A broker's counters over every process it ran in one run: a restart starts a process whose own counters and
CPU begin at zero, and a run's figures must cover the processes before it too. Pure bookkeeping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psutil

# Counters that grow within one process and add up across processes; everything else is the live process's.
ADDITIVE = ("accepted", "authorized", "rejected", "rejected_total", "cpu_seconds", "dropped_revoked",
            "disconnected", "identity_mismatch", "reloads", "takeovers",
            "qos0_discarded", "slow_consumers_dropped", "subscriptions_refused", "queued_dropped")


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _add(a.get(k, 0), b.get(k, 0)) for k in {*a, *b}}
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a + b
    return b


def combine(retired: Sequence[Mapping[str, Any]], current: Mapping[str, Any]) -> dict[str, Any]:
    """``current``'s snapshot with the additive counters of the ``retired`` processes added in, and one entry per
    process under ``processes`` (pid, CPU seconds, accepted)."""
    out = dict(current)
    for old in retired:
        for key in ADDITIVE:
            if key in old:
                out[key] = _add(old[key], out.get(key, 0 if not isinstance(old[key], dict) else {}))
    if "handshake_ms" in current and any("handshake_ms" in r for r in retired):
        out["handshake_ms"] = _handshakes([*(r["handshake_ms"] for r in retired if "handshake_ms" in r),
                                           current["handshake_ms"]])
    out["processes"] = [{k: p.get(k) for k in ("pid", "cpu_seconds", "accepted")} for p in (*retired, current)]
    return out


def _handshakes(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Broker-side handshake times of several processes: counts, mean and histogram add up; percentiles are only
    the live process's (the samples behind the others are gone)."""
    count = sum(p.get("count", 0) for p in parts)
    total = sum((p.get("mean") or 0.0) * p.get("count", 0) for p in parts)
    merged = dict(parts[-1])
    merged.update(count=count, mean=round(total / count, 3) if count else None,
                  percentiles_of="the last process only")
    if all("histogram" in p for p in parts):
        merged["histogram"] = [sum(col) for col in zip(*(p["histogram"] for p in parts), strict=True)]
    return merged


def process_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of a running process, read from /proc; None when it is gone."""
    if pid is None:
        return None
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system)
