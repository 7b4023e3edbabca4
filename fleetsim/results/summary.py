"""A run's summary, computed from its raw rows: what a reader of a load test looks at first. Pure: no I/O.

Every headline figure names the span it describes and is derived from attempts/sessions rows (see
:mod:`fleetsim.results.series`), so a test can recompute each one from the Parquet files:

* ``fleet_up``: how fast the fleet came up, over the span from the first attempt to the last device's first
  CONNACK (a storm's or a ramp's rate);
* ``connect_rate``: per-second connects binned by CONNACK time; the mean is over the whole run, empty seconds
  included;
* ``simulator``: the workers' loop lag and CPU, and a plain warning when the simulator, not the broker, was the
  bottleneck;
* ``broker``: counters summed over every broker process of the run, CPU per handshake from the storm's window
  and CPU per message from the rest, or why they are not available;
* ``machine``: how busy the cores of the machine fleetsim ran on were over the storm, and a warning when they
  were nearly all in use (the workers, and a broker on the same machine, then waited for a core).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from fleetsim.results import shape, thresholds
from fleetsim.results.rows import Merged
from fleetsim.results.series import Concurrency, attempt_times, session_times
from fleetsim.words import count

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
PHASES = ("setup_ms", "wait_ms", "tcp_ms", "tls_ms", "mqtt_ms", "total_ms")
LAG_P99_LATE_MS = 50.0  # loop lag p99 above this: the simulator, not the broker, set the pace
BUSY_CPU = 0.95  # a worker at or above this share of its core in a second was saturated
BUSY_SHARE = 0.25  # ... for more than this share of the seconds in which anything happened
MACHINE_BUSY = 0.9  # the machine's cores at least this busy over a storm: devices and broker queued for a core
BUNCH_FACTOR = 3.0  # the busiest second held this many times the storm's mean rate
NOT_AT_BROKER = {"tcp_refused", "tcp_timeout", "tcp_error", "client_identity", "client_key_mismatch",
                 "client_key_rejected", "client_error"}  # attempts that cost the broker no TLS handshake


def distribution(samples: Sequence[float] | np.ndarray) -> shape.Distribution:
    """n, mean, max and p50/p90/p99/p99.9 (``PERCENTILES``) of ``samples``; None where there is nothing to
    measure."""
    a = np.asarray(samples, dtype=float)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return {"n": 0, "mean": None, "max": None, "p50": None, "p90": None, "p99": None, "p99.9": None}
    p50, p90, p99, p99_9 = (round(float(v), 3) for v in np.percentile(a, PERCENTILES))
    return {"n": int(a.size), "mean": round(float(a.mean()), 3), "max": round(float(a.max()), 3),
            "p50": p50, "p90": p90, "p99": p99, "p99.9": p99_9}


def phase_summary(attempts: Mapping[str, Sequence[Any]]) -> dict[str, shape.Distribution]:
    """Latency distribution of each phase over the attempts that connected."""
    ok = np.asarray(attempts.get("outcome", []), dtype=object) == "connected"
    return {
        phase.removesuffix("_ms"): distribution(np.asarray(attempts[phase], dtype=float)[ok])
        for phase in PHASES
        if phase in attempts
    }


def outcome_counts(attempts: Mapping[str, Sequence[Any]]) -> dict[str, int]:
    """Attempts per outcome: "connected" or the failure class."""
    counts = Counter(
        "connected" if o == "connected" else (f or "unknown")
        for o, f in zip(attempts.get("outcome", []), attempts.get("failure", []), strict=True)
    )
    return dict(counts.most_common())


# -- the fleet ---------------------------------------------------------------------------------------------------
def up_window(attempts: Mapping[str, Sequence[Any]], t0: float) -> tuple[int, float | None, float | None]:
    """(devices connected at least once, first attempt's start, last device's first CONNACK), in run seconds."""
    start, end, ok = attempt_times(attempts, t0)
    if not ok.any():
        return 0, float(start.min()) if start.size else None, None
    ids = np.asarray(attempts.get("device_id", []), dtype=object)
    first: dict[str, float] = {}
    for device, t in zip(ids[ok], end[ok], strict=True):
        if device not in first or t < first[device]:
            first[device] = t
    return len(first), float(start.min()), max(first.values())


def fleet_up(attempts: Mapping[str, Sequence[Any]], t0: float) -> shape.FleetUp:
    """How fast the fleet came up: devices connected at least once, over the span from the first attempt's start
    to the last device's first CONNACK."""
    n, t_first, t_last = up_window(attempts, t0)
    if t_last is None or t_first is None:
        return {"devices": 0, "first_attempt_s": _r(t_first) if t_first is not None else None,
                "last_first_connect_s": None, "span_s": None, "rate_per_s": None}
    span = t_last - t_first
    return {"devices": n, "first_attempt_s": _r(t_first), "last_first_connect_s": _r(t_last),
            "span_s": _r(span), "rate_per_s": _r(n / span) if span > 0 else None}


def connect_rate(series: Mapping[str, Sequence[Any]], stopped_s: float) -> shape.ConnectRate:
    connects = np.asarray(series.get("connects", []), dtype=float)
    if not connects.size or stopped_s <= 0:
        return {"mean_per_s": 0.0, "peak_per_s": 0.0, "peak_second": None}
    peak = int(np.argmax(connects))
    return {"mean_per_s": _r(connects.sum() / stopped_s), "peak_per_s": float(connects[peak]), "peak_second": peak}


def fleet_state(m: Merged, level: Concurrency, stopped_s: float) -> shape.Fleet:
    """Devices by state when the run ended, and the connected count at its peak and at the end."""
    states = Counter(m.devices.get("state", []))
    gave_up = Counter(str(n) for n, s in zip(m.devices.get("attempts", []), m.devices.get("state", []),
                                             strict=True) if s == "gave_up")
    peak, peak_at = level.peak()
    ever = {d for d, o in zip(m.attempts.get("device_id", []), m.attempts.get("outcome", []), strict=True)
            if o == "connected"}
    return {"ever_connected": len(ever), "connected_at_end": level.at(stopped_s),
            "peak_connected": peak, "peak_at_s": _r(peak_at) if peak_at is not None else None,
            "states": {"connected": states.get("connected", 0), "retrying": states.get("retrying", 0),
                       "gave_up": states.get("gave_up", 0), "never_tried": states.get("never_tried", 0)},
            "gave_up_after_attempts": dict(sorted(gave_up.items(), key=lambda kv: int(kv[0])))}


def faults_table(attempts: Mapping[str, Sequence[Any]]) -> dict[str, dict[str, int]]:
    """Attempts of each faulty identity kind by how they ended."""
    out: dict[str, Counter[str]] = {}
    for fault, outcome, failure in zip(attempts.get("fault", []), attempts.get("outcome", []),
                                       attempts.get("failure", []), strict=True):
        if fault:
            out.setdefault(fault, Counter())["connected" if outcome == "connected" else failure or "unknown"] += 1
    return {f: dict(c.most_common()) for f, c in sorted(out.items())}


def identity_problems(attempts: Mapping[str, Sequence[Any]]) -> shape.IdentityProblems | None:
    """Devices whose own certificate or key could not be loaded (never reached the broker)."""
    hits = [(d, detail) for d, f, detail in zip(attempts.get("device_id", []), attempts.get("failure", []),
                                                attempts.get("detail", []), strict=True) if f == "client_identity"]
    if not hits:
        return None
    return {"devices": len({d for d, _ in hits}), "example": hits[0][1]}


def messages(m: Merged) -> shape.Messages:
    """QoS 0 is sent (fire and forget); QoS 1/2 is published, acknowledged or lost. Lost = published at QoS >= 1
    and not acknowledged when the run ended, after its drain."""
    msg = m.messages
    qos0_published, qos0_sent = int(msg.get("qos0_published", 0)), int(msg.get("qos0_sent", 0))
    published, acked = int(msg.get("published", 0)), int(msg.get("acknowledged", 0))
    return {
        "qos0": {"published": qos0_published, "sent": qos0_sent, "unsent": max(0, qos0_published - qos0_sent)},
        "qos1plus": {"published": published, "acknowledged": acked, "lost": max(0, published - acked),
                     "ack_ms": distribution(msg.get("ack_ms", []))},
        "by_kind": dict(msg.get("by_kind", {})),
        "by_qos": dict(msg.get("by_qos", {})),
    }


def revoked_at(events: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Device -> run second its certificate was revoked by a timed event (the first such event)."""
    out: dict[str, float] = {}
    for e in events:
        if e.get("action") == "revoke":
            for device in e.get("device_ids", []):
                out.setdefault(device, float(e["fired_at_s"]))
    return out


def drops(m: Merged, t0: float, revoked: Mapping[str, float]) -> dict[str, int]:
    """Connections that ended, by cause; one the broker closed after the device's revocation counts as revoked."""
    out: Counter[str] = Counter()
    for device, end, cause in zip(m.sessions.get("device_id", []), m.sessions.get("end", []),
                                  m.sessions.get("cause", []), strict=True):
        if cause in ("broker_closed", "reset") and device in revoked and end - t0 >= revoked[device]:
            cause = "revoked"
        out[cause] += 1
    return dict(out.most_common())


# -- the simulator -----------------------------------------------------------------------------------------------
def simulator(m: Merged, series: Mapping[str, Sequence[Any]], workers: int) -> shape.Simulator:
    """The workers' own saturation, and a warning saying what it means for the figures when it was reached."""
    lag = distribution(m.loop_lag_ms)
    busiest = np.asarray(series.get("sim_cpu_max", []), dtype=float)
    active = np.zeros(busiest.size, bool)  # seconds in which anything happened
    for column in ("attempts", "published"):
        col = np.asarray(series.get(column, []), dtype=float)[:busiest.size]
        active[:col.size] |= col > 0
    busy_s = int((busiest[active] >= BUSY_CPU).sum())
    share = busy_s / max(1, int(active.sum()))
    saturated = (lag["p99"] or 0.0) > LAG_P99_LATE_MS or share > BUSY_SHARE
    out: shape.Simulator = {
        "workers": workers, "loop_lag_ms": {"n": lag["n"], "p50": lag["p50"], "p99": lag["p99"], "max": lag["max"]},
        "busiest_worker_cpu": {"p50": _r(np.percentile(busiest[active], 50)) if active.any() else None,
                               "max": _r(busiest.max()) if busiest.size else None},
        "seconds_at_full_cpu": busy_s, "saturated": bool(saturated),
        "worker_cpu_s": _r(sum(w.get("cpu_s", 0.0) for w in m.workers)),
        "admission": admission(m.workers),
        "set_up_before_t0": set_up_before_t0(m.workers),
    }
    if saturated:
        out["warning"] = (
            f"the simulator was the bottleneck: its event loop ran late (lag p99 {lag['p99']:,.0f} ms, max "
            f"{lag['max']:,.0f} ms) and a worker used its whole core for {busy_s} s; devices waited for their own "
            "worker, so tls and mqtt times include that wait beyond what wait_ms could book apart. Use more "
            "cores or workers (--workers), or a lower arrival rate, to measure the broker.")
    return out


def admission(workers: Sequence[Mapping[str, Any]]) -> shape.Admission:
    """Per worker: the most attempts it had in flight, its cap (a broker on this machine), and the limit dropped
    SYNs held it at; so a reader can tell a run that sat at its cap from one the broker's answers paced."""
    seen = [w for w in workers if w.get("admission_peak_in_flight") is not None]
    return {"peak_in_flight": [int(w["admission_peak_in_flight"]) for w in seen],
            "cap": [w.get("admission_cap") for w in seen],
            "syn_ceiling": [w.get("admission_ceiling") for w in seen],
            "peak_waiting": max((int(w.get("admission_peak_waiting") or 0) for w in seen), default=0)}  # at one worker


def set_up_before_t0(workers: Sequence[Mapping[str, Any]]) -> shape.SetUp | None:
    """Devices set up before t0 (identity checked, TLS context built) of those their workers set up in advance;
    None when none do. Any shortfall was set up at its first attempt, inside the clock."""
    of = sum(int(w.get("to_prepare") or 0) for w in workers)
    return {"devices": sum(int(w.get("prepared") or 0) for w in workers), "of": of} if of else None


def bunched(rate: shape.ConnectRate, up: shape.FleetUp, lag: shape.Lag) -> str | None:
    """Say so when completions came in bunches because the simulator advanced its devices together."""
    mean, peak = up.get("rate_per_s"), rate.get("peak_per_s") or 0.0
    if not mean or (up.get("span_s") or 0) < 2 or peak < BUNCH_FACTOR * mean or (lag.get("p99") or 0) < LAG_P99_LATE_MS:
        return None
    return (f"connects arrived in bunches (peak {peak:,.0f}/s against {mean:,.0f}/s over the storm) while the "
            "simulator's loop was late: read the per-second peak as the simulator's batching, not the broker's")


# -- the machine -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Machine:
    """The machine's cores and its busy CPU seconds (all cores, cumulative) sampled through the run: ``t`` in run
    seconds, ``busy_s``."""

    cores: int
    samples: Sequence[Mapping[str, float]] = ()


def machine_busy(machine: Machine, attempts: Mapping[str, Sequence[Any]], t0: float) -> shape.Busy | None:
    """The share of the machine's cores busy over the storm (first attempt to last first CONNACK), read between
    the first and the last sample inside it: whole sample intervals, no interpolation, so the idle time around a
    short storm does not dilute it. None when fewer than two samples (~1 s apart) fall inside the storm."""
    _, lo, hi = up_window(attempts, t0)
    if lo is None or hi is None:
        return None
    inside = [s for s in machine.samples if lo <= s["t"] <= hi]
    if len(inside) < 2 or inside[-1]["t"] - inside[0]["t"] <= 0:
        return None
    first, last = inside[0], inside[-1]
    share = (last["busy_s"] - first["busy_s"]) / ((last["t"] - first["t"]) * machine.cores)
    return {"share": _r(share), "from_s": first["t"], "to_s": last["t"], "cores": machine.cores}


def machine_warning(busy: shape.Busy | None) -> str | None:
    if busy is None or busy["share"] < MACHINE_BUSY:
        return None
    return (f"the machine fleetsim ran on was {busy['share']:.0%} busy across its "
            f"{count(busy['cores'], 'core')} over the storm ({busy['from_s']:.1f}-{busy['to_s']:.1f} s): "
            "whatever ran on it (the workers, and the broker if it runs there too) may have queued for a core, and "
            "connect times then include that wait (wait_ms books only the worker's own queue). To time the broker "
            "alone, give it cores of its own (--isolate-broker, for a broker fleetsim starts) or run the fleet on "
            "another machine.")


# -- the broker --------------------------------------------------------------------------------------------------
def broker_cost(final: Mapping[str, Any] | None, samples: Sequence[Mapping[str, Any]],
                attempts: Mapping[str, Sequence[Any]], series: Mapping[str, Sequence[Any]], *, t0: float,
                stopped_s: float, kind: str) -> shape.Broker:
    """Broker counters and CPU, per handshake from the storm's window and per message from the rest."""
    if kind == "external":
        return {"kind": kind, "available": False,
                "why": "fleetsim did not start this broker, so it cannot read its process: counters and CPU are "
                       "the broker's own to report (its metrics or $SYS topics)"}
    if not final or "error" in final:
        return {"kind": kind, "available": False,
                "why": f"the broker's counters could not be read at the end ({(final or {}).get('error', 'no answer')})"}
    counters = {k: v for k, v in final.items() if not isinstance(v, list) or k in ("members", "processes")}
    out = cast(shape.Broker, {"kind": kind, "available": True, **counters})  # per member and process: a pool's
    t = np.asarray([s["t"] for s in samples], dtype=float)
    cpu = np.asarray([s["cpu_seconds"] for s in samples], dtype=float)
    _, lo_, hi_ = up_window(attempts, t0)
    if t.size < 2 or lo_ is None or hi_ is None:
        return out
    lo, hi = max(0.0, lo_), max(hi_, lo_ + 1.0)  # the samples come once a second; a hair before t0 is t0
    _, end, ok = attempt_times(attempts, t0)
    failure = np.asarray(attempts.get("failure", []), dtype=object)
    at_broker = ok | ~np.isin(failure, list(NOT_AT_BROKER))
    handshakes = int(((end >= lo) & (end <= hi) & at_broker).sum())
    window_cpu = cpu_between(t, cpu, lo, hi)
    moved = np.asarray(series.get("published", []), dtype=float) + np.asarray(series.get("acked", []), dtype=float)
    seconds = np.arange(moved.size)
    in_window = int(moved[(seconds >= np.floor(lo)) & (seconds < np.ceil(hi))].sum())
    out["storm_window_s"] = [_r(lo), _r(hi)]
    out["cpu_s_in_storm"] = _r(window_cpu)
    if handshakes:
        out["cpu_ms_per_handshake"] = _r(1000 * window_cpu / handshakes)
        out["handshakes_in_storm"] = handshakes
        out["messages_in_storm"] = in_window
    after = moved[seconds >= np.ceil(hi)].sum()
    rest_cpu = cpu_between(t, cpu, hi, stopped_s)
    if after > 0 and stopped_s - hi >= 2:
        out["cpu_ms_per_message"] = _r(1000 * rest_cpu / after)
        out["messages_after_storm"] = int(after)
    return out


def cpu_between(t: Any, cpu: Any, start: float, end: float) -> float:
    """CPU seconds spent between two times, read off cumulative samples (times ``t``, totals ``cpu``)."""
    return float(np.interp(end, t, cpu) - np.interp(start, t, cpu))


# -- events ------------------------------------------------------------------------------------------------------
EVENTS_FILE = "events.json"
PER_DEVICE = ("device_ids", "serials")  # an event's per-device lists: in EVENTS_FILE, not in the summary


def event_effects(events: Sequence[Mapping[str, Any]], level: Concurrency, sessions: Mapping[str, Sequence[Any]],
                  t0: float, stopped_s: float) -> list[dict[str, Any]]:
    """Each timed event with what it did to the fleet: how long until the connected count was back (or the
    revoked devices were cut, or the re-enrolled ones back)."""
    out = []
    back = {d: float(e["fired_at_s"]) for e in events if e.get("action") == "reenroll" for d in e.get("device_ids", [])}
    for i, e in enumerate(events):
        at = float(e["fired_at_s"])
        horizon = float(events[i + 1]["fired_at_s"]) if i + 1 < len(events) else stopped_s
        rec = {k: v for k, v in e.items() if k not in PER_DEVICE}
        if e.get("serials"):  # a count here; the list (one per revoked device) stays in events.json
            rec.update(revoked_serials=len(e["serials"]), listed_in=EVENTS_FILE)
        rec["connected_before"] = level.at(at)
        ids = set(e.get("device_ids", []))
        if e.get("action") == "revoke" and ids:
            rec.update(_cut(ids, sessions, at, t0, back))
        elif e.get("action") == "reenroll" and ids:
            rec.update(_back(ids, sessions, at, t0))
        else:
            rec["recovered_after_s"] = _recovery(level, at, horizon, rec["connected_before"])
        out.append(rec)
    return out


def _recovery(level: Concurrency, at: float, horizon: float, target: int) -> float | None:
    """Seconds from ``at`` until the count, having dipped below ``target``, is back to it; 0 if it never dipped."""
    dips = np.nonzero((level.times >= at) & (level.times <= horizon) & (level.levels < target))[0]
    if not dips.size:
        return 0.0
    back = level.first_at_least(target, float(level.times[dips[0]]))
    return _r(back - at) if back is not None else None


def _cut(ids: set[str], sessions: Mapping[str, Sequence[Any]], at: float, t0: float,
         reenrolled: Mapping[str, float]) -> dict[str, Any]:
    """How the revoked devices' connections ended; connects after the event before the device's re-enrolment
    (with its revoked certificate) are the ones a broker should not have let in."""
    start, end, _ = session_times(sessions, t0)
    dev = np.asarray(sessions.get("device_id", []), dtype=object)
    live = np.isin(dev, list(ids)) & (start <= at) & (end > at)
    still = int(np.isinf(end[live]).sum())
    ended = end[live][~np.isinf(end[live])]
    until = np.asarray([reenrolled.get(d, np.inf) for d in dev], dtype=float)
    later = np.isin(dev, list(ids)) & (start > at) & (start < until)
    return {"revoked_live_at_event": int(live.sum()), "revoked_cut_after_s": _r(ended.max() - at) if ended.size
            and not still else None, "revoked_still_connected_at_end": still,
            "revoked_connects_before_reenrolment": int(later.sum())}


def _back(ids: set[str], sessions: Mapping[str, Sequence[Any]], at: float, t0: float) -> dict[str, Any]:
    start = np.asarray(sessions.get("start", []), dtype=float) - t0
    dev = np.asarray(sessions.get("device_id", []), dtype=object)
    first: dict[str, float] = {}
    for d, s in zip(dev, start, strict=True):
        if d in ids and s >= at and (d not in first or s < first[d]):
            first[d] = s
    return {"devices_back": len(first), "all_back_after_s": _r(max(first.values()) - at)
            if len(first) == len(ids) else None}


# -- the whole summary -------------------------------------------------------------------------------------------
def summarise(m: Merged, series: Mapping[str, Sequence[Any]], *, t0: float, stopped_s: float, devices: int,
              workers: int, wall_s: float, broker_kind: str, broker_final: Mapping[str, Any] | None = None,
              broker_samples: Sequence[Mapping[str, Any]] = (), events: Sequence[Mapping[str, Any]] = (),
              machine: Machine | None = None) -> shape.Figures:
    """Every figure computed from the rows, in summary.json's order: a new figure is a line here and a field in
    :class:`fleetsim.results.shape.Figures`."""
    s_start, s_end, _ = session_times(m.sessions, t0)
    level = Concurrency(s_start, s_end)
    up = fleet_up(m.attempts, t0)
    rate = connect_rate(series, stopped_s)
    sim = simulator(m, series, workers)
    busy = machine_busy(machine, m.attempts, t0) if machine is not None else None
    problems = identity_problems(m.attempts)
    warnings = [w for w in (sim.get("warning"), machine_warning(busy), bunched(rate, up, sim["loop_lag_ms"])) if w]
    if problems:
        warnings.append(f"{count(problems['devices'], 'device')} could not load their own identity and never "
                        f"reached the broker, e.g. {problems['example']}")
    figures: shape.Figures = {
        "devices": devices,
        "duration_s": _r(stopped_s),
        "fleet": fleet_state(m, level, stopped_s),
        "fleet_up": up,
        "connect_rate": rate,
        "attempts": len(m.attempts.get("outcome", [])),
        "outcomes": outcome_counts(m.attempts),
        "phases_ms": phase_summary(m.attempts),
        "messages": messages(m),
        "drops": drops(m, t0, revoked_at(events)),
        "simulator": sim,
        "broker": broker_cost(broker_final, broker_samples, m.attempts, series, t0=t0, stopped_s=stopped_s,
                              kind=broker_kind),
        "events": event_effects(events, level, m.sessions, t0, stopped_s),
        "wall_s": _r(wall_s),
        "warnings": warnings,
    }
    if machine is not None:
        figures["machine"] = {"cores": machine.cores, "busy_in_storm": busy}
    if faults := faults_table(m.attempts):
        figures["faults"] = faults
    if problems:
        figures["identity_problems"] = problems
    return cast(shape.Figures, {**{k: v for k, v in figures.items() if k != "warnings"}, "warnings": warnings})


@dataclass(frozen=True)
class Ending:
    """How the run ended, as the orchestrator saw it: a signal or a timeout, a stop because nothing could connect,
    shards that never reported and those lost with their worker (shard -> why; their devices)."""

    interrupted: str | None = None
    stopped_early: str | None = None
    shards_missing: Sequence[int] = ()
    lost: Mapping[int, str] = field(default_factory=dict)
    lost_devices: Sequence[str] = ()


LOST_IDS_KEPT = 1000  # device ids of a lost worker listed in the summary; the count is always whole


def assemble(scenario: str, t0: float, figures: shape.Figures, *, ending: Ending = Ending(),
             revocation: Mapping[str, Any] | None = None,
             rules: Sequence[thresholds.Rule] = ()) -> shape.Summary:
    """summary.json, whole, in one place: the run's name and clock, its figures, a rehearsal's ``revocation``, how
    the run ended, and the ``--fail-on`` verdicts judged on all of it (as ``fleetsim run --fail-on`` and
    ``fs.run(fail_on=...)`` do); written once by the orchestrator."""
    summary = cast(shape.Summary, {"scenario": scenario, "t0": t0, **figures})
    summary["warnings"] = list(figures["warnings"])
    if revocation is not None:
        summary["revocation"] = dict(revocation)
    if ending.interrupted:
        summary["interrupted"] = ending.interrupted
    if ending.stopped_early:
        summary["stopped_early"] = ending.stopped_early
    if ending.shards_missing:
        summary["shards_missing"] = list(ending.shards_missing)
    if ending.lost:
        devices = list(ending.lost_devices)
        summary["lost_with_worker"] = {"shards": {str(i): why for i, why in ending.lost.items()},
                                       "devices": len(devices), "device_ids": devices[:LOST_IDS_KEPT]}
        summary["warnings"].append(f"{count(len(devices), 'device')} were lost with their worker "
                                   f"({'; '.join(ending.lost.values())}); the rest of the run is complete")
    if rules:
        summary["thresholds"] = thresholds.judge(rules, summary)
    return summary


def _r(x: float) -> float:
    return round(float(x), 3)
