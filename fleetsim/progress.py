"""Live progress of a run: worker snapshots merged into one line a person can follow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table


def merge(snapshots: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the counters of every shard; take the worst (largest) of latency percentiles."""
    out: dict[str, Any] = {}
    for snap in snapshots.values():
        for key, value in snap.items():
            if isinstance(value, Mapping):
                inner = out.setdefault(key, {})
                for k, v in value.items():
                    inner[k] = inner.get(k, 0) + v
            elif isinstance(value, int | float) and not isinstance(value, bool):
                if key.startswith("p") and key[1:2].isdigit():
                    out[key] = max(out.get(key, 0.0), value)
                else:
                    out[key] = out.get(key, 0) + value
    return out


def render(state: Mapping[str, Any], *, elapsed: float, duration: float, devices: int, events: int) -> Table:
    t = Table.grid(padding=(0, 2))
    failures = state.get("failures", {})
    top = ", ".join(f"{k} {v}" for k, v in sorted(failures.items(), key=lambda kv: -kv[1])[:4]) or "none"
    p99 = state.get("p99_ms")
    t.add_row(
        f"[bold]{elapsed:5.1f}/{duration:.0f} s[/]",
        f"connected [green]{state.get('connected', 0):,}[/]/{devices:,}",
        f"attempts {state.get('attempts', 0):,}",
        f"connects/s {state.get('connect_rate', 0):,.0f}",
        f"published {state.get('published', 0):,}",
        f"p99 {p99:,.1f} ms" if p99 else "p99 -",
        f"events {events}",
    )
    t.add_row("", f"failures: [red]{top}[/]")
    return t
