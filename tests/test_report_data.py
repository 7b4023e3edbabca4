"""Pure tests of what the report's figures show and what `fleetsim compare` reports: no broker, no matplotlib, no
browser (fleetsim.results.figure_data, fleetsim.results.compare)."""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import pytest

from fleetsim.results import compare, figure_data
from fleetsim.results.shape import Summary


def test_cdf_is_sorted_floored_and_thinned_without_losing_its_ends() -> None:
    x, y = figure_data.cdf([3.0, 0.0, np.nan, 1.0, 2.0])
    assert x.tolist() == [figure_data.FLOOR_MS, 1.0, 2.0, 3.0]  # NaN dropped, 0 drawn at the log axis's floor
    assert y.tolist() == [0.25, 0.5, 0.75, 1.0]
    big = np.arange(1, 100_001, dtype=float)
    x, y = figure_data.cdf(big, max_points=500)
    assert x.size <= 500 and x[0] == 1.0 and x[-1] == 100_000.0 and y[-1] == 1.0
    assert round(1 / y[0]) == 100_000  # the first step still tells n
    assert np.all(np.diff(x) > 0) and np.all(np.diff(y) > 0)
    assert figure_data.cdf([])[0].size == 0


def test_phase_cdfs_take_only_connected_attempts() -> None:
    attempts = {"outcome": np.array(["connected", "failed", "connected"], dtype=object),
                "tls_ms": np.array([2.0, 500.0, 4.0]), "total_ms": np.array([5.0, 900.0, 7.0])}
    cdfs = figure_data.phase_cdfs(attempts)
    assert list(cdfs) == ["tls", "total"]
    assert cdfs["tls"][0].tolist() == [2.0, 4.0] and cdfs["total"][0].tolist() == [5.0, 7.0]


def test_timeline_rates_scale_the_partial_last_second_and_drop_seconds_after_the_stop() -> None:
    series = {"second": np.arange(4), "covered_s": np.array([1.0, 1.0, 0.5, 0.0]),
              "connected": np.array([10, 20, 20, 0]), "connects": np.array([10, 10, 2, 0]),
              "attempts": np.array([12, 10, 2, 0]), "failures": np.array([2, 0, 0, 0]), "drops": np.zeros(4)}
    t = figure_data.timeline(series)
    assert t.second.tolist() == [0, 1, 2]
    assert t.connects.tolist() == [10, 10, 4]  # 2 in half a second is 4/s, not a fall
    assert t.connected.tolist() == [10, 20, 20] and t.failures.tolist() == [2, 0, 0]


def test_failures_by_class_bins_by_when_each_attempt_failed_and_folds_the_tail() -> None:
    t0 = 1000.0
    classes = ["a"] * 5 + ["b"] * 3 + ["c", "d"]
    attempts = {"start": np.array([t0 + 0.2] * 10 + [t0]), "total_ms": np.array([900.0] * 9 + [2000.0, 1.0]),
                "outcome": np.array(["failed"] * 10 + ["connected"], dtype=object),
                "failure": np.array([*classes, None], dtype=object)}
    by = figure_data.failures_by_class(attempts, t0, seconds=3, top=2)
    assert list(by) == ["a", "b", "other (2 classes)"]
    assert by["a"].tolist() == [0, 5, 0]  # 0.2 s + 900 ms: failed in second 1
    assert by["other (2 classes)"].tolist() == [0, 1, 1]  # "d" took 2 s: second 2.2
    assert sum(v.sum() for v in by.values()) == 10


def test_broker_cpu_rate_is_per_second_and_skips_a_counter_that_went_back() -> None:
    samples = [{"t": 0.0, "cpu_seconds": 1.0}, {"t": 1.0, "cpu_seconds": 1.5}, {"t": 3.0, "cpu_seconds": 3.5},
               {"t": 4.0, "cpu_seconds": 0.2}]
    t, cores = figure_data.broker_cpu_rate(samples)
    assert t.tolist() == [0.5, 2.0] and cores.tolist() == [0.5, 1.0]
    assert figure_data.broker_cpu_rate(samples[:1])[0].size == 0


def test_event_marks_and_saturation_come_from_the_summary() -> None:
    s: dict[str, Any] = {"events": [{"action": "revoke", "fired_at_s": 20.1}, {"action": "x", "fired_at_s": None}],
                         "simulator": {"saturated": False}}
    assert figure_data.event_marks(s) == [(20.1, "revoke")]
    assert figure_data.saturation(s) is None
    s["simulator"] = {"saturated": True, "warning": "the simulator was the bottleneck: lag"}
    assert figure_data.saturation(s) == "the simulator was the bottleneck: lag"


def cell(name: str, cpu: float | None, p99: float | None, **settings: Any) -> dict[str, Any]:
    base = {"auth": "mtls", "key_type": "ecdsa-p256", "tls_version": "1.3", "session_resumption": False,
            "crl_size": 0, "broker": "embedded"}
    return {"name": name, "settings": {**base, **settings},
            "summary": {"broker": {"cpu_ms_per_handshake": cpu}, "phases_ms": {"total": {"p99": p99}}}}


def test_sweep_overhead_groups_cells_by_each_setting_that_varies() -> None:
    cells = [cell("rsa-full", 4.0, 30.0, key_type="rsa-2048"), cell("ec-full", 2.0, 20.0),
             cell("ec-resumed", 1.0, 10.0, session_resumption=True), cell("ec-crl", None, 25.0, crl_size=100_000),
             cell("rsa-crl", 5.0, None, key_type="rsa-2048", crl_size=100_000)]
    assert figure_data.varying_settings(cells) == ["key_type", "session_resumption", "crl_size"]
    by = {o.setting: o for o in figure_data.sweep_overhead(cells)}
    key = by["key_type"]
    assert key.values == ["rsa-2048", "ecdsa-p256"]  # the sweep's own order
    assert key.cells == [["rsa-full", "rsa-crl"], ["ec-full", "ec-resumed", "ec-crl"]]
    assert key.cpu_ms[0] == [4.0, 5.0] and math.isnan(key.cpu_ms[1][2])  # not measured stays apart, not 0
    assert math.isnan(key.p99_ms[0][1])
    assert by["session_resumption"].values == ["false", "true"]
    assert by["crl_size"].values == ["0", "100000"]
    assert figure_data.sweep_overhead([cell("only", 1.0, 1.0)]) == []


def summary(**over: Any) -> Summary:
    """The part of a summary compare reads (an older run's may hold no more)."""
    s: dict[str, Any] = {"devices": 100, "attempts": 120, "outcomes": {"connected": 100, "alert_revoked": 20},
                         "fleet": {"connected_at_end": 90, "ever_connected": 100},
                         "phases_ms": {"total": {"p50": 10.0, "p99": 40.0}},
                         "broker": {"cpu_ms_per_handshake": 2.0}, "simulator": {"saturated": False}}
    for k, v in over.items():
        s[k] = v
    return cast(Summary, s)


def test_metric_rows_give_each_figure_its_difference_and_verdict() -> None:
    a = summary()
    b = summary(phases_ms={"total": {"p50": 8.0, "p99": 60.0}}, broker={"cpu_ms_per_handshake": 2.0},
                simulator={"saturated": True}, fleet={"connected_at_end": 95, "ever_connected": 100})
    rows = {r.label: r for r in compare.metric_rows([a, b])}
    assert "tls p99" not in rows  # neither run has it
    p99 = rows["total p99"]
    assert p99.values == [40.0, 60.0] and p99.delta(1) == 20.0 and p99.change(1) == 50.0
    assert p99.verdict(1) == "worse" and rows["total p50"].verdict(1) == "better"
    assert rows["broker CPU per handshake"].verdict(1) == ""  # the same
    assert rows["connected at end"].values == [90.0, 95.0] and rows["connected at end"].verdict(1) == "better"
    assert rows["failed attempts"].values[0] == pytest.approx(100 * 20 / 120)
    sat = rows["simulator saturated"]
    assert sat.is_flag and compare.fmt_delta(sat, 1) == "now yes" and sat.verdict(1) == "worse"
    assert compare.fmt_delta(p99, 1) == "+20 ms (+50%)"
    assert compare.fmt_delta(rows["connected at end"], 1) == "+5 pp"


def attempts_drawn(rng: np.random.Generator, n: int, tcp_ms: float) -> dict[str, np.ndarray]:
    return {"outcome": np.full(n, "connected", dtype=object), "tcp_ms": rng.lognormal(math.log(tcp_ms), 0.5, n)}


def test_a_difference_inside_the_runs_spread_is_neither_better_nor_worse() -> None:
    """The issue's case: two runs of one scenario, tcp p50 -0.001 ms (-1%), was coloured an improvement."""
    rng = np.random.default_rng(1)
    same = [attempts_drawn(rng, 400, 0.1), attempts_drawn(rng, 400, 0.1)]
    faster = attempts_drawn(rng, 400, 0.05)
    p50 = [float(np.percentile(a["tcp_ms"], 50)) for a in (*same, faster)]
    runs = [summary(phases_ms={"tcp": {"p50": v}}) for v in p50]
    noise = {r.label: r for r in compare.metric_rows(runs[:2], same)}["tcp p50"]
    assert noise.delta(1) != 0 and noise.verdict(1) == "noise" and compare.fmt_delta(noise, 1).startswith("≈ ")
    real = {r.label: r for r in compare.metric_rows([runs[0], runs[2]], [same[0], faster])}["tcp p50"]
    assert real.verdict(1) == "better" and not compare.fmt_delta(real, 1).startswith("≈")
    one_percent = summary(phases_ms={"total": {"p50": 10.1, "p99": 40.0}})  # no rows: the stated 5% rule
    assert {r.label: r for r in compare.metric_rows([summary(), one_percent])}["total p50"].verdict(1) == "noise"


def test_a_percentiles_interval_comes_from_the_order_statistics() -> None:
    assert compare.quantile_interval(np.arange(1.0, 101.0), 0.5) == (41.0, 60.0)
    assert compare.quantile_interval(np.arange(1.0, 101.0), 0.99) == (98.0, 100.0)
    assert compare.quantile_interval(np.array([np.nan]), 0.5) is None


def test_missing_figures_compare_as_unknown_not_as_zero() -> None:
    a, b = summary(), summary(broker={"available": False})
    row = {r.label: r for r in compare.metric_rows([a, b])}["broker CPU per handshake"]
    assert row.values == [2.0, None] and row.delta(1) is None and row.verdict(1) == ""
    assert compare.fmt(None) == "-" and compare.fmt_delta(row, 1) == "-"


def test_outcome_rows_put_connected_first_and_count_classes_a_run_lacks_as_zero() -> None:
    a = summary()
    b = summary(attempts=100, outcomes={"connected": 90, "alert_expired": 10})
    rows = compare.outcome_rows([a, b])
    assert [r.label for r in rows] == ["connected", "alert_revoked", "alert_expired"]
    assert rows[1].values == [pytest.approx(100 * 20 / 120), 0.0] and rows[1].verdict(1) == "better"
    assert rows[2].values == [0.0, 10.0]


def test_setting_rows_name_only_the_scenario_keys_that_differ() -> None:
    a = {"name": "x", "broker": {"auth": "mtls", "target": "embedded"}, "fleet": [{"count": 10}],
         "events": [{"at": 2.0, "action": "revoke"}]}
    b = {"name": "x", "broker": {"auth": "tls", "target": "embedded"}, "fleet": [{"count": 10}, {"count": 5}]}
    rows = dict(compare.setting_rows([a, b]))
    assert rows == {"broker.auth": ["mtls", "tls"], "fleet[1].count": ["-", "5"], "events[0].at": ["2.0", "-"],
                    "events[0].action": ["revoke", "-"]}
    assert compare.flatten({"a": {"b": [1, 2]}}) == {"a.b": [1, 2]}


def test_labels_keep_two_runs_of_one_scenario_apart() -> None:
    assert compare.labels(["ward", "ward"]) == ["A ward", "B ward"]
    assert compare.labels(["x"] * 28)[-1] == "R28 x"


def test_the_crypto_floor_puts_the_key_exchange_in_its_own_column() -> None:
    from rich.console import Console

    from fleetsim.report.summary_tables import floor_table

    console = Console(width=120, record=True, markup=False)
    console.print(floor_table({"openssl": "OpenSSL 3", "key_types": {"ecdsa-p256": {"sign_per_s": 43000.0,
                  "verify_per_s": 14600.0}}, "x25519": {"exchange_per_s": 27100.0}}))
    lines = console.export_text().splitlines()
    header = next(line for line in lines if "sign/s" in line)
    cells = next(line for line in lines if "x25519" in line).split("│")[1:-1]
    assert "key exchange/s" in header and [c.strip() for c in cells] == ["x25519", "-", "-", "27,100.00"]
