"""Live progress of a run: worker snapshots merged, handed to whoever follows the run (a terminal's progress
line, a notebook's callback, nobody), and drawn as one line a person can follow."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from rich.text import Text


@dataclass(frozen=True)
class Progress:
    """Where a run is: seconds since t0, and the workers' merged counters (connected, attempts, connects,
    failures by class, published, p50_ms/p99_ms of connects, lag_max_ms, waiting)."""

    elapsed: float
    duration: float
    devices: int
    events: int = 0
    state: Mapping[str, Any] = field(default_factory=dict)
    broker: Mapping[str, Any] = field(default_factory=dict)  # kind, and cpu_seconds when fleetsim can read it


class Reporter(Protocol):
    """Who hears about a run as it goes. The runner calls these; they must return quickly."""

    def note(self, text: str) -> None:
        """A line worth telling the person running it."""

    def step(self, text: str) -> None:
        """What is being done now, before the devices start (replaces the previous step)."""

    def progress(self, p: Progress) -> None:
        """The run's state, several times a second while devices run."""

    def done(self) -> None:
        """The devices stopped."""


class Silent:
    """A reporter that tells nobody: the default for the Python API."""

    def note(self, text: str) -> None:
        pass

    def step(self, text: str) -> None:
        pass

    def progress(self, p: Progress) -> None:
        pass

    def done(self) -> None:
        pass


class Callback(Silent):
    """Hands a Progress to ``fn`` at most every ``every`` seconds (a notebook's progress bar, a log line)."""

    def __init__(self, fn: Callable[[Progress], None], every: float = 1.0) -> None:
        self.fn, self.every = fn, every
        self._last = -1e9

    def progress(self, p: Progress) -> None:
        if p.elapsed - self._last >= self.every:
            self._last = p.elapsed
            self.fn(p)

    def done(self) -> None:
        self._last = -1e9  # a next run (a sweep's) starts its clock at 0 again

IGNORED = {"shard", "t", "stopping"}


def merge(snapshots: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the counters of every shard (lists in a mapping, such as histogram buckets, element by element);
    take the worst (largest) of latency percentiles."""
    out: dict[str, Any] = {}
    for snap in snapshots.values():
        for key, value in snap.items():
            if isinstance(value, Mapping):
                inner = out.setdefault(key, {})
                for k, v in value.items():
                    inner[k] = _add(inner.get(k), v)
            elif key in IGNORED or value is None:
                continue
            elif isinstance(value, int | float) and not isinstance(value, bool):
                if (key.startswith("p") and key[1:2].isdigit()) or "_max" in key:
                    out[key] = max(out.get(key, 0.0), value)
                else:
                    out[key] = out.get(key, 0) + value
    return out


def _add(total: Any, value: Any) -> Any:
    """``total + value`` for counts, element-wise for lists of counts; a new list, never the shard's own."""
    if isinstance(value, list | tuple):
        return [a + b for a, b in zip(total or [0] * len(value), value, strict=True)]
    return (total or 0) + value


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
        top = failure_classes(state.get("failures", {}))
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


def failure_classes(failures: Mapping[str, int]) -> str:
    """Every failure class so far, most frequent first: the summary's failure table names them all, and a line
    that named only the first few would not add up to it."""
    return ", ".join(f"{k} {v:,}" for k, v in sorted(failures.items(), key=lambda kv: (-kv[1], kv[0])) if v)
