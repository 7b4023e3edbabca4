"""Per-phase bucket counts a shard sends with its progress snapshot, and how the orchestrator merges them."""

from __future__ import annotations

import pytest

from fleetsim.engine.phase_histogram import BOUNDS_S, BUCKETS_KEY, PHASES, SUM_KEY, PhaseHistogram
from fleetsim.runner import progress


def row(total_ms: float, tls_ms: float | None = 1.0) -> dict[str, float | None]:
    return {"setup_ms": 0.05, "wait_ms": 0.0, "tcp_ms": 0.2, "tls_ms": tls_ms, "mqtt_ms": 0.5, "total_ms": total_ms}


def test_bounds_span_a_tenth_of_a_millisecond_to_thirty_seconds_in_order() -> None:
    assert BOUNDS_S[0] == 0.0001 and BOUNDS_S[-1] == 30.0
    assert list(BOUNDS_S) == sorted(set(BOUNDS_S))


def test_a_value_on_a_bound_counts_in_that_bucket_and_beyond_the_last_in_the_open_one() -> None:
    h = PhaseHistogram()
    h.observe(row(total_ms=1.0))  # exactly 0.001 s
    h.observe(row(total_ms=45_000.0))  # past 30 s
    total = h.counts["total"]
    assert total[BOUNDS_S.index(0.001)] == 1 and total[-1] == 1 and sum(total) == 2
    assert h.sums["total"] == pytest.approx(45.001)


def test_a_phase_not_gone_through_is_left_out_of_that_phase_only() -> None:
    h = PhaseHistogram()
    h.observe(row(total_ms=3.0, tls_ms=None))  # auth = "none": no TLS
    assert sum(h.counts["tls"]) == 0 and h.sums["tls"] == 0.0
    assert all(sum(h.counts[p]) == 1 for p in PHASES if p != "tls")


def test_snapshot_is_a_copy_and_merges_by_sum_across_workers() -> None:
    a, b = PhaseHistogram(), PhaseHistogram()
    a.observe(row(total_ms=2.0))
    b.observe(row(total_ms=2.0))
    b.observe(row(total_ms=600.0))
    snap_a = a.snapshot()
    a.observe(row(total_ms=2.0))  # after the snapshot: must not show in it
    merged = progress.merge({0: {"connects": 1, **snap_a}, 1: {"connects": 2, **b.snapshot()}})
    counts = merged[BUCKETS_KEY]["total"]
    assert counts[BOUNDS_S.index(0.002)] == 2 and counts[BOUNDS_S.index(1.0)] == 1 and sum(counts) == 3
    assert merged[SUM_KEY]["total"] == pytest.approx(0.604)
    assert merged["connects"] == 3
    assert snap_a[BUCKETS_KEY]["total"][BOUNDS_S.index(0.002)] == 1  # merge built new lists
