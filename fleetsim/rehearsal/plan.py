"""A mass-revocation rehearsal's logic, with no I/O: whom to revoke, when the re-enrolment waves go, and what the
rows of the run say about each step (summary["revocation"]) and about the fleet second by second.

Times are run seconds (since t0) unless named ``*_after_s``, which count from the revocation decision.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fleetsim.results.series import Concurrency, attempt_times, session_times
from fleetsim.results.summary import distribution

WAVE_EVERY_S = 0.5
CUTTING = {"reload", "poll", "restart", "kick"}  # strategies that claim to end revoked live sessions
COLLATERAL = {"restart"}  # strategies whose drops of healthy devices are the price, not a false reject


def targets(lot: str | None, model: str | None, devices: Sequence[str], fraction: float | None,
            fleet: Mapping[str, tuple[str, str]], seed: int) -> list[str]:
    """The healthy devices a rehearsal revokes; ``fleet`` maps device id -> (lot, model). Sorted, reproducible."""
    ids = sorted(fleet)
    if lot is not None:
        return [i for i in ids if fleet[i][0] == lot]
    if model is not None:
        return [i for i in ids if fleet[i][1] == model]
    if devices:
        return sorted(set(devices))
    assert fraction is not None  # the scenario allows exactly one target
    return sorted(random.Random(seed).sample(ids, max(1, round(len(ids) * fraction))))


def waves(ids: Sequence[str], rate: float, start: float) -> list[tuple[float, list[str]]]:
    """(run second, devices) of each re-enrolment wave: all at ``start`` at rate 0, else ``rate`` devices a
    second in waves WAVE_EVERY_S apart, so the re-enrolled devices do not come back as one storm."""
    if rate <= 0 or not ids:
        return [(start, list(ids))] if ids else []
    size = max(1, round(rate * WAVE_EVERY_S))
    return [(start + i * size / rate, list(ids[j:j + size])) for i, j in enumerate(range(0, len(ids), size))]


def reenrolled_at(events: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Device -> the run second its re-enrolment wave began."""
    return {d: float(e["fired_at_s"]) for e in events if e.get("action") == "reenroll" for d in e.get("device_ids", [])}


def presenting_revoked(attempts: Mapping[str, Sequence[Any]], events: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Per attempt: did it present a certificate the rehearsal revoked? Read from the serial each attempt
    records, so an attempt made while the PKI was re-enrolling its device is judged by what it really sent."""
    serials = {x for e in events if e.get("action") == "revoke" for x in e.get("serials", [])}
    return np.isin(np.asarray(attempts.get("serial", [None] * len(attempts.get("outcome", []))), dtype=object),
                   list(serials))


def _first(values: np.ndarray) -> float | None:
    return float(values.min()) if values.size else None


def _last(values: np.ndarray) -> float | None:
    return float(values.max()) if values.size else None


def _after(t: float | None, decision: float) -> float | None:
    return None if t is None else round(t - decision, 3)


def measure(events: Sequence[Mapping[str, Any]], attempts: Mapping[str, Sequence[Any]],
            sessions: Mapping[str, Sequence[Any]], devices: Mapping[str, Sequence[Any]], *, t0: float,
            stopped_s: float, healthy: Sequence[str], strategy: str,
            broker_samples: Sequence[Mapping[str, float]] = ()) -> dict[str, Any]:
    """summary["revocation"]: how long each step took and what it cost the healthy fleet (``healthy``: the
    devices without a fault that were not revoked)."""
    revoke = next((e for e in events if e.get("action") == "revoke"), None)
    if revoke is None:
        return {"revoked": 0, "strategy": strategy, "note": "the revocation never fired"}
    decision = float(revoke["fired_at_s"])
    revoked = set(revoke.get("device_ids", []))
    back = reenrolled_at(events)
    start, end, ok = attempt_times(attempts, t0)
    while_revoked = presenting_revoked(attempts, events) & (start >= decision)
    refused = while_revoked & ~ok
    enforced = revoke.get("enforced_at_s", decision)
    s_start, s_end, stopped = session_times(sessions, t0)
    s_dev = np.asarray(sessions.get("device_id", []), dtype=object)
    live_at_decision = np.isin(s_dev, list(revoked)) & (s_start <= decision) & (s_end > decision)
    still = int((live_at_decision & stopped).sum())
    out: dict[str, Any] = {
        "strategy": strategy, "revoked": len(revoked), "decided_at_s": round(decision, 3),
        "crl_written_after_s": round(float(revoke.get("revoke_and_crl_ms", 0)) / 1000, 3),
        "enforcement_step_after_s": _after(enforced, decision),
        "first_revoked_refused_after_s": _after(_first(end[refused]), decision),
        "revoked_live_at_decision": int(live_at_decision.sum()),
        "last_revoked_session_gone_after_s": None if still else _after(_last(s_end[live_at_decision]), decision),
        "revoked_still_connected_at_end": still,
        "last_revoked_refused_after_s": _after(_last(end[refused]), decision),
        "revoked_refused_attempts": int(refused.sum()),
        "refused_by": _classes(attempts, refused),
    }
    out.update(_honesty(attempts, sessions, ok, while_revoked, enforced, revoked, healthy, decision, t0, strategy))
    back_with_new = ok & np.isin(np.asarray(attempts.get("device_id", []), dtype=object), list(revoked)) \
        & ~presenting_revoked(attempts, events) & (start >= decision)
    out.update(_recovery(attempts, sessions, devices, events, back, back_with_new, decision, t0, healthy,
                         broker_samples))
    return out


def _classes(attempts: Mapping[str, Sequence[Any]], pick: np.ndarray) -> dict[str, int]:
    failure = np.asarray(attempts.get("failure", []), dtype=object)[pick]
    return dict(Counter(str(f) for f in failure).most_common())


def _honesty(attempts: Mapping[str, Sequence[Any]], sessions: Mapping[str, Sequence[Any]], ok: np.ndarray,
             while_revoked: np.ndarray, enforced: float, revoked: set[str], healthy: Sequence[str],
             decision: float, t0: float, strategy: str) -> dict[str, Any]:
    """False accepts (a revoked certificate let in, or left in where the strategy claims to cut it) and false
    rejects (a healthy device refused or dropped; a restart's drops are its collateral, counted apart)."""
    start, _end, _ = attempt_times(attempts, t0)
    accepted_after = int((while_revoked & ok & (start >= enforced)).sum())
    s_start, s_end, stopped = session_times(sessions, t0)
    s_dev = np.asarray(sessions.get("device_id", []), dtype=object)
    revoked_live = np.isin(s_dev, list(revoked)) & (s_start <= enforced) & (s_end > enforced + 1.0)
    left_in = int(revoked_live.sum()) if strategy in CUTTING else 0
    dev = np.asarray(attempts.get("device_id", []), dtype=object)
    healthy_set = list(set(healthy) - revoked)
    healthy_refused = int((np.isin(dev, healthy_set) & ~ok & (start >= decision)).sum())
    healthy_dropped = int((np.isin(s_dev, healthy_set) & ~stopped & (s_end >= decision)).sum())
    collateral = strategy in COLLATERAL
    return {"false_accepts": accepted_after + left_in, "revoked_accepted_after_enforcement": accepted_after,
            "revoked_left_connected_by_a_cutting_strategy": left_in,
            "false_rejects": 0 if collateral else healthy_refused + healthy_dropped,
            "healthy_refused": healthy_refused, "healthy_dropped": healthy_dropped,
            "collateral_drops": healthy_dropped if collateral else 0}


def _recovery(attempts: Mapping[str, Sequence[Any]], sessions: Mapping[str, Sequence[Any]],
              devices: Mapping[str, Sequence[Any]], events: Sequence[Mapping[str, Any]],
              back: Mapping[str, float], returned: np.ndarray, decision: float, t0: float,
              healthy: Sequence[str], samples: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    s_start, s_end, _ = session_times(sessions, t0)
    level = Concurrency(s_start, s_end)
    before = level.at(decision)
    out: dict[str, Any] = {"connected_before": before, "reenrolled": len(back)}
    lost = dict(zip(devices.get("device_id", []), devices.get("lost", []), strict=False))
    out["healthy_messages_lost"] = int(sum(lost.get(d, 0) for d in healthy))
    if not back:
        return out
    waves_at = sorted({float(e["fired_at_s"]) for e in events if e.get("action") == "reenroll"})
    out["waves"] = len(waves_at)
    out["reenroll_ms"] = round(sum(float(e.get("reenroll_ms", 0)) for e in events if e.get("action") == "reenroll"), 3)
    start, end, ok = attempt_times(attempts, t0)
    dev = np.asarray(attempts.get("device_id", []), dtype=object)
    first: dict[str, float] = {}
    for d, t in zip(dev[returned], end[returned], strict=True):
        first[d] = min(t, first.get(d, math.inf))
    out["reenrolled_back"] = len(first)
    out["all_back_after_s"] = _after(max(first.values()), decision) if len(first) == len(back) else None
    fleet_back = level.first_at_least(before, waves_at[-1])
    out["fleet_back_after_s"] = _after(fleet_back, decision)
    storm = np.isin(dev, list(back)) & (start >= waves_at[0]) & ~presenting_revoked(attempts, events)
    out["storm"] = _storm(attempts, storm, end, ok, waves_at[0], max(first.values(), default=waves_at[0]), samples)
    return out


def _storm(attempts: Mapping[str, Sequence[Any]], pick: np.ndarray, end: np.ndarray, ok: np.ndarray, lo: float,
           hi: float, samples: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """The re-enrolled devices coming back: peak connects in a second, handshake times, broker CPU meanwhile."""
    good = pick & ok
    seconds = np.floor(end[good]).astype(int)
    peak = int(np.bincount(seconds).max()) if seconds.size else 0
    tls = distribution(np.asarray(attempts.get("tls_ms", []), dtype=float)[good])
    total = distribution(np.asarray(attempts.get("total_ms", []), dtype=float)[good])
    out = {"window_s": [round(lo, 3), round(hi, 3)], "connects": int(good.sum()), "failed": int((pick & ~ok).sum()),
           "peak_connects_per_s": peak, "tls_ms": {k: tls[k] for k in ("p50", "p99")},
           "total_ms": {k: total[k] for k in ("p50", "p99")}}
    t = np.asarray([x["t"] for x in samples], dtype=float)
    cpu = np.asarray([x["cpu_seconds"] for x in samples], dtype=float)
    if t.size >= 2:
        out["broker_cpu_s"] = round(float(np.interp(max(hi, lo + 1), t, cpu) - np.interp(lo, t, cpu)), 3)
    return out


def timeline(series: Mapping[str, Sequence[Any]], attempts: Mapping[str, Sequence[Any]],
             sessions: Mapping[str, Sequence[Any]], events: Sequence[Mapping[str, Any]], *,
             t0: float) -> dict[str, list[Any]]:
    """Per-second columns a rehearsal adds to series.parquet: connected healthy and revoked (at each second's
    end), refusals of the revoked devices while revoked, by class, and the p99 TLS handshake of the second's
    connects."""
    revoked = {d for e in events if e.get("action") == "revoke" for d in e.get("device_ids", [])}
    n = len(series.get("second", []))
    s_start, s_end, _ = session_times(sessions, t0)
    s_dev = np.asarray(sessions.get("device_id", []), dtype=object)
    mine = np.isin(s_dev, list(revoked))
    out: dict[str, list[Any]] = {}
    for name, pick in (("connected_healthy", ~mine), ("connected_revoked", mine)):
        level = Concurrency(s_start[pick], s_end[pick])
        out[name] = [level.at(min(s + 1.0, float(n))) for s in range(n)]
    start, end, ok = attempt_times(attempts, t0)
    failure = np.asarray(attempts.get("failure", []), dtype=object)
    decided = min((float(e["fired_at_s"]) for e in events if e.get("action") == "revoke"), default=math.inf)
    refused = presenting_revoked(attempts, events) & ~ok & (start >= decided)
    for cls in sorted({str(f) for f in failure[refused]}):
        hit = refused & (failure == cls)
        out[f"refused_{cls}"] = np.bincount(np.clip(np.floor(end[hit]).astype(int), 0, None), minlength=n)[:n].tolist()
    tls = np.asarray(attempts.get("tls_ms", []), dtype=float)
    second = np.floor(end).astype(int) if end.size else np.zeros(0, int)
    out["tls_p99_ms"] = [float(np.nanpercentile(tls[ok & (second == s)], 99)) if (ok & (second == s)).any()
                         and not np.isnan(tls[ok & (second == s)]).all() else None for s in range(n)]
    return out
