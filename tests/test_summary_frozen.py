"""The summary and the timeline recomputed from one frozen set of raw rows: a refactor of how they are assembled
must leave every key and value as it was. ``tests/data/summary_frozen.json`` holds what the code computed from
these rows when the test was written (regenerate it only for a deliberate change of a figure:
``FLEETSIM_FREEZE=1 pytest tests/test_summary_frozen.py``).

The rows are made here, deterministically (a seeded generator, values rounded), so no fixture file holds rows or
key material: 40 devices over 10 s, with failures of several classes, a faulty identity, a device whose own
identity could not be loaded, drops, a revocation of five devices at 4 s and their re-enrolment at 6 s (a
rehearsal's columns and ``revocation``), a worker lost, ``--fail-on`` rules, broker counters and CPU samples, machine samples.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from fleetsim.results.rows import Merged

FROZEN = Path(__file__).parent / "data" / "summary_frozen.json"
T0 = 1_000.0
STOPPED_S = 10.0
REVOKED = [f"d{i:02d}" for i in range(5)]
RULES = ["connected<100%", "p99.total>200ms", "lost>1%", "drops>3"]
FAILURES = ("tcp_refused", "tls_handshake_timeout", "alert_certificate_revoked", "mqtt_refused")


def _attempts(rng: np.random.Generator) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {c: [] for c in ("device_id", "start", "setup_ms", "wait_ms", "tcp_ms", "tls_ms",
                                                  "mqtt_ms", "total_ms", "outcome", "failure", "fault", "detail",
                                                  "serial")}
    for i in range(40):
        device = f"d{i:02d}"
        starts = [round(float(rng.uniform(0.0, 2.0)), 3)]
        if i % 4 == 0 or device in REVOKED:
            starts.append(round(starts[0] + 3.5 + i / 20, 3))
        if device in REVOKED:
            starts.append(round(6.2 + i / 10, 3))
        for k, start in enumerate(starts):
            phases = [round(float(x), 3) for x in rng.gamma(2.0, [0.3, 0.2, 1.5, 6.0, 1.2])]
            failed = (i % 7 == 3 and k == 0) or (device in REVOKED and k == 1)
            failure = (FAILURES[2] if device in REVOKED else FAILURES[i % len(FAILURES)]) if failed else None
            fault = "expired" if i == 39 else None
            if i == 38:
                failed, failure = True, "client_identity"
            total = round(sum(phases), 3)
            row = {"device_id": device, "start": T0 + start, "setup_ms": phases[0], "wait_ms": phases[1],
                   "tcp_ms": phases[2], "tls_ms": phases[3] if not failed else math.nan,
                   "mqtt_ms": phases[4] if not failed else math.nan, "total_ms": total,
                   "outcome": "failed" if failed else "connected", "failure": failure, "fault": fault,
                   "detail": "cannot read key: bad password" if failure == "client_identity" else "",
                   "serial": f"old-{device}" if device in REVOKED and k < 2 else f"s-{device}-{k}"}
            for c, v in row.items():
                cols[c].append(v)
    return cols


def _sessions(attempts: dict[str, list[Any]]) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {c: [] for c in ("device_id", "attempt", "start", "end", "cause")}
    for n, (d, start, total, outcome) in enumerate(zip(attempts["device_id"], attempts["start"],
                                                       attempts["total_ms"], attempts["outcome"], strict=True)):
        if outcome != "connected":
            continue
        up = start + total / 1000
        idx = int(d[1:])
        if d in REVOKED and up - T0 < 4.0:
            end, cause = T0 + 4.3 + idx / 10, "broker_closed"
        elif idx % 9 == 5 and up - T0 < 3.0:
            end, cause = T0 + 3.0 + idx / 20, "reset"
        else:
            end, cause = T0 + STOPPED_S, "stop"
        for c, v in zip(cols, (d, n, round(up, 3), round(end, 3), cause), strict=True):
            cols[c].append(v)
    return cols


def raw() -> dict[str, Any]:
    """Everything a run's summary is computed from, as the orchestrator has it after the workers report."""
    rng = np.random.default_rng(24)
    attempts = _attempts(rng)
    sessions = _sessions(attempts)
    ids = sorted(set(attempts["device_id"]))
    devices = {"device_id": ids, "attempts": [attempts["device_id"].count(d) for d in ids],
               "state": ["gave_up" if d == "d38" else "connected" for d in ids],
               "lost": [1 if int(d[1:]) % 10 == 7 else 0 for d in ids]}
    n = 11
    bins: dict[str, list[Any]] = {"second": list(range(n)), "published": [int(x) for x in rng.integers(0, 30, n)],
            "acked": [int(x) for x in rng.integers(0, 25, n)],
            "loop_lag_ms_max": [round(float(x), 3) for x in rng.gamma(2.0, 2.0, n)],
            "sim_cpu_max": [round(float(x), 3) for x in rng.uniform(0.1, 0.7, n)]}
    merged = Merged(attempts=attempts, sessions=sessions, devices=devices, bins=bins,
                    messages={"qos0_published": 120, "qos0_sent": 118, "published": 200, "acknowledged": 197,
                              "ack_ms": [round(float(x), 3) for x in rng.gamma(2.0, 3.0, 197)],
                              "by_kind": {"telemetry": 300, "alarm": 20}, "by_qos": {"0": 120, "1": 200}},
                    loop_lag_ms=[round(float(x), 3) for x in rng.gamma(2.0, 1.5, 300)],
                    workers=[{"shard": 0, "cpu_s": 1.25, "wall_s": 10.5, "admission_peak_in_flight": 12,
                              "admission_cap": 48, "admission_ceiling": None, "admission_peak_waiting": 3,
                              "to_prepare": 20, "prepared": 19},
                             {"shard": 1, "cpu_s": 1.5, "wall_s": 10.5, "admission_peak_in_flight": 9,
                              "admission_cap": 48, "admission_ceiling": 30, "admission_peak_waiting": 0,
                              "to_prepare": 20, "prepared": 20}])
    events = [{"at": 4.0, "action": "revoke", "fired_at_s": 4.0, "devices": 5, "device_ids": REVOKED,
               "serials": [f"old-{d}" for d in REVOKED], "enforced_at_s": 4.2, "revoke_and_crl_ms": 35.5},
              {"at": 6.0, "action": "reenroll", "fired_at_s": 6.0, "devices": 5, "device_ids": REVOKED,
               "reenroll_ms": 80.25}]
    broker_samples = [{"t": float(t), "cpu_seconds": round(0.15 * t + 0.01 * t * t, 3)} for t in range(-1, 12)]
    machine_samples = [{"t": float(t), "busy_s": round(1.6 * t, 3)} for t in range(-1, 12)]
    broker_final = {"pid": 1, "connections": 3, "clients_connected": 33, "cpu_seconds": 2.0,
                    "qos0_discarded": 0, "members": [{"port": 1, "clients": 33}]}
    return {"merged": merged, "events": events, "broker_samples": broker_samples,
            "machine_samples": machine_samples, "broker_final": broker_final}


def computed() -> dict[str, Any]:
    """The summary and series of the frozen rows, as the orchestrator assembles them for summary.json and
    series.parquet (fleetsim.runner.orchestrate._write, less the files)."""
    from fleetsim.rehearsal import plan
    from fleetsim.results import thresholds
    from fleetsim.results.series import run_series
    from fleetsim.results.summary import Ending, Machine, assemble, summarise

    r = raw()
    m = r["merged"]
    series = run_series(m.attempts, m.sessions, m.bins, t0=T0, stopped_s=STOPPED_S)
    figures = summarise(m, series, t0=T0, stopped_s=STOPPED_S, devices=40, workers=2, wall_s=11.5,
                        broker_kind="embedded", broker_final=r["broker_final"], broker_samples=r["broker_samples"],
                        events=r["events"], machine=Machine(2, r["machine_samples"]))
    healthy = [d for d in m.devices["device_id"] if d not in ("d38", "d39") and d not in REVOKED]
    series.update(plan.timeline(series, m.attempts, m.sessions, r["events"], t0=T0))
    revocation = plan.measure(r["events"], m.attempts, m.sessions, m.devices, t0=T0, stopped_s=STOPPED_S,
                              healthy=healthy, strategy="restart", broker_samples=r["broker_samples"])
    ending = Ending(interrupted="SIGTERM", shards_missing=[2], lost={2: "its worker process died (exit code -9)"},
                    lost_devices=["d40", "d41"])
    summary = assemble("frozen", T0, figures, ending=ending, revocation=revocation,
                       rules=thresholds.parse(RULES))
    return {"summary": summary, "series": series}


def _as_written(data: Any) -> Any:
    """As summary.json holds it (the files are written with default=str); NaN as a string, so it compares."""
    return json.loads(json.dumps(data, default=str).replace("NaN", '"NaN"'))


def test_the_summary_of_the_frozen_rows_is_unchanged() -> None:
    now = _as_written(computed())
    if os.environ.get("FLEETSIM_FREEZE"):
        FROZEN.parent.mkdir(exist_ok=True)
        FROZEN.write_text(json.dumps(now, indent=1, sort_keys=False) + "\n")
    frozen = json.loads(FROZEN.read_text())
    assert list(now["summary"]) == list(frozen["summary"])  # the keys, in order
    for key in frozen["summary"]:
        assert now["summary"][key] == frozen["summary"][key], key
    assert now["series"] == frozen["series"]
