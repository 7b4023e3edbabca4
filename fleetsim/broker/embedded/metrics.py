"""Broker-side counters: what the broker itself saw, apart from what the devices measured.

Pure bookkeeping (no I/O), so the embedded broker, its HTTP endpoint and tests share one shape.
"""

from __future__ import annotations

import bisect
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Upper edges (ms) of the handshake-time histogram buckets; the last bucket is open-ended.
HISTOGRAM_EDGES_MS: tuple[float, ...] = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000)
MAX_SAMPLES = 100_000  # raw samples kept for percentiles; the histogram keeps counting past it


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list; None when empty."""
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[rank]


@dataclass
class BrokerMetrics:
    """Counters one broker process keeps. ``snapshot()`` is the JSON shape of ``stats()``."""

    started_at: float = field(default_factory=time.time)
    accepted: int = 0  # TLS handshakes completed (or plain TCP accepted)
    authorized: int = 0  # MQTT CONNECTs answered with CONNACK accepted
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> count (TLS and MQTT)
    dropped_revoked: int = 0  # live sessions ended because a new CRL revoked their certificate
    takeovers: int = 0  # connections closed because their client id connected again (3.1.4-2): a clone?
    qos0_discarded: int = 0  # QoS 0 messages not sent to a consumer whose unsent bytes reached max_queued_bytes
    slow_consumers_dropped: int = 0  # connections closed: any other packet past max_queued_bytes
    subscriptions_refused: int = 0  # SUBACK 0x80 because the client id held max_subscriptions already
    queued_dropped: int = 0  # QoS 1/2 messages dropped: their session's queue held max_queued_messages or _bytes
    retained_refused: int = 0  # retained PUBLISHes delivered but not kept: past the retained limits
    handshake_count: int = 0
    handshake_sum_ms: float = 0.0
    histogram: list[int] = field(default_factory=lambda: [0] * (len(HISTOGRAM_EDGES_MS) + 1))
    samples: list[float] = field(default_factory=list)

    def handshake(self, ms: float) -> None:
        """Record one completed broker-side TLS handshake time."""
        self.handshake_count += 1
        self.handshake_sum_ms += ms
        self.histogram[bisect.bisect_left(HISTOGRAM_EDGES_MS, ms)] += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(ms)

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def snapshot(self, *, current_connections: int) -> dict[str, Any]:
        """Counters as plain JSON-able data, with process CPU time read now (and the broker's gauge)."""
        ordered = sorted(self.samples)
        cpu = os.times()
        return {
            "uptime_s": round(time.time() - self.started_at, 3),
            "pid": os.getpid(),
            "cpu_seconds": round(cpu.user + cpu.system, 3),
            "accepted": self.accepted,
            "authorized": self.authorized,
            "rejected": dict(self.rejected),
            "rejected_total": sum(self.rejected.values()),
            "current_connections": current_connections,
            "dropped_revoked": self.dropped_revoked,
            "takeovers": self.takeovers,
            "qos0_discarded": self.qos0_discarded,
            "slow_consumers_dropped": self.slow_consumers_dropped,
            "subscriptions_refused": self.subscriptions_refused,
            "queued_dropped": self.queued_dropped,
            "retained_refused": self.retained_refused,
            "handshake_ms": {
                "count": self.handshake_count,
                "mean": round(self.handshake_sum_ms / self.handshake_count, 3) if self.handshake_count else None,
                "p50": percentile(ordered, 50),
                "p90": percentile(ordered, 90),
                "p99": percentile(ordered, 99),
                "max": ordered[-1] if ordered else None,
                "histogram_edges": list(HISTOGRAM_EDGES_MS),
                "histogram": list(self.histogram),
            },
        }
