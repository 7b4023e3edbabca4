"""A run's raw rows, every shard's merged into one: what the timeline and every figure of the summary are
computed from (the shards' merge itself is :func:`fleetsim.runner.shards.merge_results`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Merged:
    """Every shard's raw records as one run's: the rows every figure of the summary is computed from."""

    attempts: dict[str, list[Any]]
    sessions: dict[str, list[Any]]
    devices: dict[str, list[Any]]
    bins: dict[str, list[Any]]  # per-second counters the rows cannot give (publishes, acks, loop lag, CPU)
    messages: dict[str, Any]
    loop_lag_ms: list[float] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)  # per shard: CPU and wall seconds, admission
