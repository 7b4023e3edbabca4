"""Pure statistics: percentiles, outcome counts, the summary's shape."""

import math

import numpy as np
import pytest

from fleetsim import progress, stats


def attempts(rows):
    cols = ("device_id", "outcome", "failure", "tcp_ms", "tls_ms", "mqtt_ms", "total_ms")
    return {c: [r[i] for r in rows] for i, c in enumerate(cols)}


def test_distribution_matches_numpy_percentiles():
    samples = np.arange(1, 1001, dtype=float)
    d = stats.distribution(samples)
    assert d["n"] == 1000
    assert d["p50"] == pytest.approx(np.percentile(samples, 50))
    assert d["p99.9"] == pytest.approx(np.percentile(samples, 99.9))
    assert d["max"] == 1000


def test_distribution_of_nothing_is_none_not_nan():
    d = stats.distribution([])
    assert d["n"] == 0 and d["p99"] is None and d["mean"] is None


def test_phases_only_count_connected_attempts():
    a = attempts([
        ("d1", "connected", None, 1.0, 5.0, 2.0, 8.0),
        ("d2", "failed", "alert_revoked", 1.0, 50.0, math.nan, 51.0),
    ])
    phases = stats.phase_summary(a)
    assert phases["tls"]["n"] == 1 and phases["tls"]["p50"] == 5.0
    assert phases["total"]["max"] == 8.0


def test_summary_counts_outcomes_devices_and_broker_cost():
    a = attempts([
        ("d1", "failed", "tcp_refused", 0.1, math.nan, math.nan, 0.1),
        ("d1", "connected", None, 1.0, 5.0, 2.0, 8.0),
        ("d2", "connected", None, 1.0, 6.0, 2.0, 9.0),
    ])
    series = {"second": [0, 1, 2], "connects": [0, 2, 0]}
    s = stats.summarise(a, series, {"published": 10, "acknowledged": 9, "lost": 1, "ack_ms": [1.0, 2.0]},
                        devices=3, wall_s=2.5, broker={"cpu_seconds": 0.02})
    assert s["outcomes"] == {"connected": 2, "tcp_refused": 1}
    assert s["devices_connected"] == 2 and s["attempts"] == 3
    assert s["connect_rate"]["peak_per_s"] == 2
    assert s["messages"]["lost"] == 1
    assert s["broker"]["cpu_ms_per_connect"] == pytest.approx(10.0)


def test_progress_merge_sums_counters_and_takes_worst_percentile():
    merged = progress.merge({
        0: {"connected": 3, "failures": {"alert_revoked": 1}, "p99_ms": 12.0},
        1: {"connected": 4, "failures": {"alert_revoked": 2, "tcp_refused": 1}, "p99_ms": 30.0},
    })
    assert merged == {"connected": 7, "failures": {"alert_revoked": 3, "tcp_refused": 1}, "p99_ms": 30.0}
