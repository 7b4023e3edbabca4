"""Live progress of a run: worker snapshots merged into one line a person can follow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.text import Text

IGNORED = {"shard", "t", "stopping"}


def merge(snapshots: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the counters of every shard; take the worst (largest) of latency percentiles."""
    out: dict[str, Any] = {}
    for snap in snapshots.values():
        for key, value in snap.items():
            if isinstance(value, Mapping):
                inner = out.setdefault(key, {})
                for k, v in value.items():
                    inner[k] = inner.get(k, 0) + v
            elif key in IGNORED or value is None:
                continue
            elif isinstance(value, int | float) and not isinstance(value, bool):
                if (key.startswith("p") and key[1:2].isdigit()) or "_max" in key:
                    out[key] = max(out.get(key, 0.0), value)
                else:
                    out[key] = out.get(key, 0) + value
    return out


class View:
    """Renders merged snapshots; remembers the last one to turn cumulative connects into a rate."""

    def __init__(self, *, devices: int, duration: float) -> None:
        self.devices = devices
        self.duration = duration
        self._last: tuple[float, int] = (0.0, 0)
        self._rate = 0.0

    def render(self, state: Mapping[str, Any], *, elapsed: float, events: int) -> Text:
        connects = int(state.get("connects", 0))
        last_t, last_n = self._last
        if elapsed - last_t >= 1.0:
            self._rate = (connects - last_n) / (elapsed - last_t) if elapsed > last_t else 0.0
            self._last = (elapsed, connects)
        failures = state.get("failures", {})
        top = ", ".join(f"{k} {v:,}" for k, v in sorted(failures.items(), key=lambda kv: -kv[1])[:4])
        p99 = state.get("p99_ms")
        lag = state.get("lag_max_ms") or 0.0
        waiting = state.get("waiting", 0)
        line = Text.assemble(
            (f"{min(elapsed, self.duration):5.1f}/{self.duration:g} s", "bold"),
            "  connected ", (f"{state.get('connected', 0):,}", "green"), f"/{self.devices:,}",
            f"  attempts {state.get('attempts', 0):,}",
            f"  connects/s {self._rate:,.0f}",
            f"  published {state.get('published', 0):,}",
            f"  connect p99 {p99:,.1f} ms" if p99 else "",
            f"  events {events}" if events else "",
            (f"  simulator lag {lag:,.0f} ms" + (f", {waiting:,} waiting" if waiting else ""), "yellow")
            if lag >= 50 else "",
        )
        if top:
            line.append("\nfailures: ")
            line.append(top, "red")
        return line
