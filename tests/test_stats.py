"""Pure statistics: percentiles, the timeline rebuilt from rows, and each summary figure from the rows it names."""

import math
from typing import Any

import numpy as np
import pytest

from fleetsim.results import summary
from fleetsim.results.rows import Merged
from fleetsim.results.series import Concurrency, run_series
from fleetsim.runner import progress

T0 = 1_000.0


def attempts(rows):
    """rows: (device, start s after T0, outcome, failure, total ms[, fault, detail])."""
    cols: dict[str, list[Any]] = {c: [] for c in ("device_id", "start", "outcome", "failure", "total_ms", "tcp_ms", "tls_ms", "mqtt_ms",
                            "fault", "detail")}
    for r in rows:
        device, start, outcome, failure, total, *rest = r
        fault, detail = ([*rest, None, ""])[:2] if rest else (None, "")
        for c, v in zip(("device_id", "start", "outcome", "failure", "total_ms", "fault", "detail"),
                        (device, T0 + start, outcome, failure, total, fault, detail), strict=True):
            cols[c].append(v)
        for c in ("tcp_ms", "tls_ms", "mqtt_ms"):
            cols[c].append(total / 3 if outcome == "connected" else math.nan)
    return cols


def sessions(rows):
    """rows: (device, start s, end s or None for the run's stop, cause)."""
    return {"device_id": [r[0] for r in rows], "attempt": [1] * len(rows), "start": [T0 + r[1] for r in rows],
            "end": [T0 + (r[2] if r[2] is not None else 10.0) for r in rows], "cause": [r[3] for r in rows]}


def merged(a, s, *, states=None, bins=None, lag=(), messages=None):
    devices = sorted(set(a["device_id"]))
    return Merged(attempts=a, sessions=s,
                  devices={"device_id": devices, "attempts": [a["device_id"].count(d) for d in devices],
                           "state": states or ["connected"] * len(devices)},
                  bins=bins or {"second": []}, messages=messages or {}, loop_lag_ms=list(lag))


def test_distribution_matches_numpy_percentiles():
    samples = np.arange(1, 1001, dtype=float)
    d = summary.distribution(samples)
    assert d["n"] == 1000
    assert d["p50"] == pytest.approx(np.percentile(samples, 50))
    assert d["p99.9"] == pytest.approx(np.percentile(samples, 99.9))
    assert d["max"] == 1000


def test_distribution_of_nothing_is_none_not_nan():
    d = summary.distribution([])
    assert d["n"] == 0 and d["p99"] is None and d["mean"] is None


def test_phases_only_count_connected_attempts():
    a = attempts([("d1", 0.0, "connected", None, 9.0), ("d2", 0.0, "failed", "alert_revoked", 51.0)])
    phases = summary.phase_summary(a)
    assert phases["tls"]["n"] == 1 and phases["tls"]["p50"] == 3.0
    assert phases["total"]["max"] == 9.0


def test_series_bins_each_event_by_when_it_happened():
    a = attempts([("d1", 0.2, "failed", "tcp_refused", 100.0), ("d1", 0.9, "connected", None, 1_300.0),
                  ("d2", 1.5, "connected", None, 200.0)])
    s = sessions([("d1", 2.2, 4.5, "broker_closed"), ("d2", 1.7, None, "stop")])
    series = run_series(a, s, {"second": [0, 1, 2], "published": [0, 3, 5]}, t0=T0, stopped_s=5.5)
    assert series["second"] == [0, 1, 2, 3, 4, 5]
    assert series["attempts"] == [2, 1, 0, 0, 0, 0]  # by start
    assert series["failures"] == [1, 0, 0, 0, 0, 0]  # at 0.3 s
    assert series["connects"] == [0, 1, 1, 0, 0, 0]  # CONNACKs at 1.7 and 2.2 s
    assert series["drops"] == [0, 0, 0, 0, 1, 0]
    assert series["connected"] == [0, 1, 2, 2, 1, 1]  # at each second's end; the stop does not empty the last one
    assert series["covered_s"] == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5]
    assert series["published"] == [0, 3, 5, 0, 0, 0]


def test_concurrency_is_exact_between_samples():
    level = Concurrency(np.array([1.0, 1.2, 2.0]), np.array([1.5, np.inf, 3.0]))
    assert [level.at(t) for t in (0.9, 1.1, 1.3, 1.6, 2.5, 3.0, 9.0)] == [0, 1, 2, 1, 2, 1, 1]
    assert level.peak() == (2, 1.2)
    assert level.first_at_least(2, after=1.6) == 2.0


def test_fleet_up_is_the_storm_rate_not_a_mean_of_busy_seconds():
    # 100 devices start at once; CONNACKs come evenly over 4 s, all of them in the last 2 s
    rows = [(f"d{i}", 0.0, "connected", None, 2_000.0 + 20.0 * i) for i in range(100)]
    up = summary.fleet_up(attempts(rows), T0)
    assert up["devices"] == 100 and up["span_s"] == pytest.approx(3.98)
    assert up["rate_per_s"] == pytest.approx(100 / 3.98, rel=1e-3)
    series = run_series(attempts(rows), sessions([]), {"second": []}, t0=T0, stopped_s=10.0)
    rate = summary.connect_rate(series, 10.0)
    assert rate["mean_per_s"] == pytest.approx(10.0)  # over the whole run, empty seconds included
    assert rate["peak_per_s"] == 50 and rate["peak_second"] in (2, 3)


def test_summary_states_drops_faults_and_identity_problems():
    a = attempts([
        ("d1", 0.0, "connected", None, 10.0),
        ("d2", 0.0, "failed", "client_identity", 0.5, None, "pki/devices/d2.key: not an unencrypted PEM private key"),
        ("f1", 0.0, "failed", "alert_expired", 5.0, "expired"),
        ("f1", 1.0, "failed", "alert_expired", 5.0, "expired"),
        ("d3", 0.0, "connected", None, 10.0),
    ])
    s = sessions([("d1", 0.01, 3.0, "broker_closed"), ("d3", 0.01, None, "stop"), ("d1", 4.0, None, "stop")])
    m = merged(a, s, states=["connected", "retrying", "connected", "gave_up"],
               messages={"qos0_published": 12, "qos0_sent": 10, "published": 5, "acknowledged": 4})
    series = run_series(a, s, m.bins, t0=T0, stopped_s=10.0)
    out = summary.summarise(m, series, t0=T0, stopped_s=10.0, devices=5, workers=1, wall_s=10.2,
                          broker_kind="external",
                          events=[{"at": 2.0, "action": "revoke", "fired_at_s": 2.0, "device_ids": ["d1"]}])
    f = out["fleet"]
    assert f["ever_connected"] == 2 and f["connected_at_end"] == 2 and f["peak_connected"] == 2
    assert f["states"] == {"connected": 2, "retrying": 1, "gave_up": 1, "never_tried": 0}
    assert f["gave_up_after_attempts"] == {"2": 1}
    assert out["drops"] == {"stop": 2, "revoked": 1}  # closed after its revocation
    assert out["faults"] == {"expired": {"alert_expired": 2}}
    assert out["identity_problems"]["devices"] == 1 and "d2.key" in out["identity_problems"]["example"]
    assert any("own identity" in w for w in out["warnings"])
    q0, q1 = out["messages"]["qos0"], out["messages"]["qos1plus"]
    assert q0 == {"published": 12, "sent": 10, "unsent": 2} and q1["lost"] == 1
    assert out["broker"]["available"] is False and "did not start" in out["broker"]["why"]
    (revoke,) = out["events"]
    assert "device_ids" not in revoke and revoke["revoked_live_at_event"] == 1
    assert revoke["revoked_cut_after_s"] == pytest.approx(1.0) and revoke["revoked_still_connected_at_end"] == 0
    assert revoke["revoked_connects_before_reenrolment"] == 1


def test_recovery_after_a_restart_is_the_time_until_the_count_is_back():
    s = sessions([(f"d{i}", 0.5, 3.2 + 0.01 * i, "broker_closed") for i in range(4)]
                 + [(f"d{i}", 3.5 + 0.3 * i, None, "stop") for i in range(4)])
    level = Concurrency(*[np.asarray(x) for x in (np.array(s["start"]) - T0,
                                                  np.where(np.array(s["cause"]) == "stop", np.inf,
                                                           np.array(s["end"]) - T0))])
    restart = {"at": 3.0, "action": "restart-broker", "fired_at_s": 3.0}
    (e,) = summary.event_effects([restart], level, s, T0, 10.0)
    assert e["connected_before"] == 4 and e["recovered_after_s"] == pytest.approx(4.4 - 3.0)


def test_a_rehearsals_revoked_serials_are_counted_in_the_summary_and_listed_in_events_json() -> None:
    from rich.console import Console

    from fleetsim.report.summary_tables import events_table

    ids, serials = [f"d{i}" for i in range(100)], [f"{0x5f3a9c00 + i:x}" * 4 for i in range(100)]
    event = {"at": 3.0, "action": "revoke", "fired_at_s": 3.0, "devices": 100, "device_ids": ids, "serials": serials}
    (e,) = summary.event_effects([event], Concurrency(np.zeros(0), np.zeros(0)), sessions([]), T0, 10.0)
    assert "serials" not in e and e["revoked_serials"] == 100 and e["listed_in"] == "events.json"
    console = Console(width=110, record=True, markup=False)
    console.print(events_table([e]))
    assert len(console.export_text().splitlines()) <= 8 and serials[0] not in console.export_text()


def test_simulator_saturation_is_flagged_with_what_it_means():
    a = attempts([("d1", 0.0, "connected", None, 10.0)])
    m = merged(a, sessions([]), lag=[1.0] * 90 + [400.0] * 10)
    series: dict[str, list[float]] = {"attempts": [1, 1, 1, 1], "sim_cpu_max": [1.0, 1.0, 1.0, 0.2]}
    sim = summary.simulator(m, series, workers=2)
    assert sim["saturated"] and sim["seconds_at_full_cpu"] == 3 and "bottleneck" in sim["warning"]
    light: dict[str, list[Any]] = {"attempts": [1], "sim_cpu_max": [0.3]}
    calm = summary.simulator(merged(a, sessions([]), lag=[1.0] * 100), light, 2)
    assert not calm["saturated"] and "warning" not in calm


def test_admission_is_stated_per_worker_with_its_cap_and_syn_ceiling():
    from fleetsim.report import summary_tables
    workers: list[dict[str, Any]] = [{"shard": 0, "admission_peak_in_flight": 48, "admission_cap": 48, "admission_ceiling": None,
                "admission_peak_waiting": 952},
               {"shard": 1, "admission_peak_in_flight": 40, "admission_cap": 48, "admission_ceiling": 34,
                "admission_peak_waiting": 960}]
    adm = summary.admission(workers)
    assert adm == {"peak_in_flight": [48, 40], "cap": [48, 48], "syn_ceiling": [None, 34], "peak_waiting": 960}
    assert summary_tables._admission_text(adm) == "48 / 48, 40 / 48  (held at 34 after dropped SYNs)"
    remote = summary.admission([{"admission_peak_in_flight": 700, "admission_cap": None}])
    assert summary_tables._admission_text(remote) == "700 / -"
    assert summary.admission([{"shard": 0, "cpu_s": 1.0}])["peak_in_flight"] == []  # a result from before


def test_devices_set_up_before_t0_are_summed_over_workers_and_a_shortfall_said():
    from fleetsim.report import summary_tables
    workers = [{"prepared": 1000, "to_prepare": 1000}, {"prepared": 717, "to_prepare": 1000}]
    ready = summary.set_up_before_t0(workers)
    assert ready == {"devices": 1717, "of": 2000}
    assert summary_tables._set_up_text(ready) == ("1,717 of 2,000  (283 set up at their first attempt, "
                                                  "inside the clock: their setup_ms is the simulator's)")
    assert summary_tables._set_up_text({"devices": 5, "of": 5}) == "5 of 5"
    assert summary.set_up_before_t0([{"prepared": 0, "to_prepare": 0}]) is None  # shared contexts: none ahead
    assert summary.set_up_before_t0([{"cpu_s": 1.0}]) is None  # a result from before


def test_the_lead_before_t0_follows_the_setup_time_measured_on_this_machine():
    from fleetsim.runner import orchestrate
    assert orchestrate.prepare_time(1000, 0.002) == pytest.approx(1000 * 0.002 * orchestrate.PREPARE_MARGIN)
    assert orchestrate.prepare_time(2000, 0.008) == orchestrate.PREPARE_BUDGET_S  # bounded, whatever the host
    assert orchestrate.prepare_time(1000, 0.0) == 0.0


def test_broker_cpu_per_handshake_comes_from_the_storm_window():
    rows = [(f"d{i}", 0.0, "connected", None, 1_000.0 + 10.0 * i) for i in range(200)]  # CONNACKs 1.0-2.99 s
    a = attempts(rows)
    samples = [{"t": t, "cpu_seconds": c} for t, c in ((0.0, 0.0), (1.0, 0.1), (2.0, 0.3), (3.0, 0.5), (4.0, 0.51),
                                                       (10.0, 0.57))]
    series = {"published": [0, 0, 0, 0, 100, 100, 100, 100, 100, 100], "acked": [0] * 10}
    b = summary.broker_cost({"cpu_seconds": 0.57, "accepted": 200}, samples, a, series, t0=T0, stopped_s=10.0,
                          kind="mosquitto")
    assert b["storm_window_s"] == [0.0, pytest.approx(2.99)] and b["handshakes_in_storm"] == 200
    assert b["cpu_ms_per_handshake"] == pytest.approx(1000 * 0.498 / 200, rel=1e-2)
    assert b["cpu_ms_per_message"] == pytest.approx(1000 * (0.57 - 0.498) / 600, rel=2e-2)


def test_machine_busy_is_read_over_whole_sample_intervals_inside_the_storm():
    a = attempts([(f"d{i}", 0.2, "connected", None, 1_000.0 + 10.0 * i) for i in range(200)])  # 0.2 s to 3.19 s
    samples = [{"t": t, "busy_s": b} for t, b in ((-0.5, 100.0), (0.1, 100.1), (0.4, 100.2), (1.4, 102.1),
                                                   (2.4, 103.9), (3.4, 104.0))]
    busy = summary.machine_busy(summary.Machine(2, samples), a, T0)
    # inside 0.2-3.19 s: the samples at 0.4, 1.4 and 2.4 s; 3.7 CPU seconds over 2 s of 2 cores
    assert busy == {"share": pytest.approx(3.7 / 4), "from_s": 0.4, "to_s": 2.4, "cores": 2}
    assert "92% busy across its 2 cores" in (summary.machine_warning(busy) or "")
    assert summary.machine_warning({**busy, "share": 0.5}) is None
    assert summary.machine_busy(summary.Machine(2, samples[:3]), a, T0) is None  # one sample inside: none
    assert summary.machine_busy(summary.Machine(2, samples), attempts([]), T0) is None


def test_progress_merge_sums_counters_and_takes_worst_percentile():
    merged_ = progress.merge({
        0: {"connected": 3, "failures": {"alert_revoked": 1}, "p99_ms": 12.0, "lag_max_ms": 3.0},
        1: {"connected": 4, "failures": {"alert_revoked": 2, "tcp_refused": 1}, "p99_ms": 30.0, "lag_max_ms": 1.0},
    })
    assert merged_ == {"connected": 7, "failures": {"alert_revoked": 3, "tcp_refused": 1}, "p99_ms": 30.0,
                       "lag_max_ms": 3.0}
