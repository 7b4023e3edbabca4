"""Cumulative per-phase latency histograms of one shard's connected attempts, for live metrics.

The attempt rows hold every phase time exactly, but they reach the orchestrator only when the run ends; a live
endpoint needs distributions while it runs. So each shard also counts its connected attempts into fixed buckets
(counts per shard, never per device: 6 phases x 19 buckets whatever the fleet size), sends the counts with its
progress snapshot, and ``fleetsim.runner.progress.merge`` sums them across workers, which fixed bounds make
exact.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any

PHASES = ("setup", "wait", "tcp", "tls", "mqtt", "total")  # the attempt row's <phase>_ms columns
# Upper bounds (s), 1-2-5 from 0.1 ms to 30 s: a loopback handshake (~1 ms) and one stuck until a 30 s
# connect timeout both get buckets of their own. A last, open bucket (+Inf) follows.
BOUNDS_S: tuple[float, ...] = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
                               1.0, 2.0, 5.0, 10.0, 20.0, 30.0)
BUCKETS_KEY = "phase_buckets"  # snapshot field: phase -> counts per bucket (not cumulative), len(BOUNDS_S) + 1
SUM_KEY = "phase_sum_s"  # snapshot field: phase -> sum of the observed seconds


class PhaseHistogram:
    """Bucket counts and sums per phase since the shard started; cheap enough to run on every connect."""

    __slots__ = ("counts", "sums")

    def __init__(self) -> None:
        self.counts = {p: [0] * (len(BOUNDS_S) + 1) for p in PHASES}
        self.sums = dict.fromkeys(PHASES, 0.0)

    def observe(self, row: Mapping[str, Any]) -> None:
        """Count one attempt row; a phase it did not go through (tls without TLS) is left out of that phase."""
        for phase in PHASES:
            ms = row.get(f"{phase}_ms")
            if ms is None:
                continue
            seconds = ms / 1000.0
            self.counts[phase][bisect.bisect_left(BOUNDS_S, seconds)] += 1  # le: a value on a bound is in it
            self.sums[phase] += seconds

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Copies, so a snapshot handed to another thread or process never changes under it."""
        return {BUCKETS_KEY: {p: list(c) for p, c in self.counts.items()}, SUM_KEY: dict(self.sums)}
