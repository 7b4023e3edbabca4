"""The campus on this machine: 50,000 concurrent mTLS devices against a pool of three Mosquitto brokers, QoS 1
telemetry, through the shipped scenario as a user runs it.

    .venv/bin/python benchmarks/bench_campus.py                 # scenarios/campus.toml as shipped (~12 minutes)
    .venv/bin/python benchmarks/bench_campus.py --devices 5000  # the same fleet scaled down (~2 minutes)

Setup (outside the clock): a PKI on disk, and the reference beside it: in a fresh forked process, K devices each
holding only what a connected mTLS device cannot do without (its own SSLContext and one handshaken SSLSocket)
against a Mosquitto of its own, stopped before the fleet starts. Then ``fleetsim run scenarios/campus.toml --pki
DIR`` as a process of its own: it issues the identities, starts its broker pool, sizes its workers by their
open-files limit and spreads them over loopback source addresses. A thread samples the workers' RSS once a second.

Printed: devices connected at once (peak, and median over the steady window after the ramp), the ramp rate the
fleet came up at (the summary's own ``fleet_up``) against the scenario's rate, QoS 1 messages published /
acknowledged / lost, the simulator's loop lag, memory per connected device and its ratio to the reference floor,
and each broker's CPU and connection count. Loopback only, bounded by the scenario (50,000 devices, 560 s).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from _common import in_child
from bench_scale import KB, Sampler, _floor_round, fleetsim_run

from fleetsim import scenario as sc
from fleetsim.broker.handle import BrokerOptions
from fleetsim.broker.mosquitto.broker import start_mosquitto
from fleetsim.pki import Pki

CAMPUS = Path(__file__).resolve().parent.parent / "scenarios" / "campus.toml"


def scaled(devices: int | None) -> str:
    """The shipped campus, or the same mix scaled down to ``devices`` (its ramp and duration shortened to match)."""
    text = CAMPUS.read_text()
    if not devices:
        return text
    doc = tomllib.loads(text)
    total = sum(f["count"] for f in doc["fleet"])
    scenario = sc.parse(text, str(CAMPUS))
    counts = [max(1, round(f["count"] * devices / total)) for f in doc["fleet"]]
    steady = scenario.duration - total / doc["arrival"]["rate"]
    for f, c in zip(doc["fleet"], counts, strict=True):
        text = text.replace(f"count = {f['count']}", f"count = {c}", 1)
    return text.replace(f"duration = {scenario.duration:g}",
                        f"duration = {math.ceil(sum(counts) / doc['arrival']['rate'] + steady)}", 1)


def analyse(run_dir: Path, summary: dict[str, Any], sampler: Sampler, n: int, rate: float) -> dict[str, Any]:
    series = pq.read_table(run_dir / "series.parquet").to_pydict()
    t0 = float(summary["t0"])
    lo, hi = t0 + n / rate + 10.0, t0 + summary["duration_s"] - 3.0  # ramp done and settled, before the stop
    steady = [s for s in sampler.samples if lo <= s[0] <= hi]
    by_s = dict(zip(series["second"], series["connected"], strict=True))
    connected = statistics.median(by_s.get(math.floor(s[0] - t0), 0) for s in steady) if steady else 0.0
    pids = set.intersection(*(set(s[1]) for s in steady)) if steady else set()
    base = sum(sampler.first[p] for p in pids)
    rss = statistics.median(sum(s[1][p] for p in pids) for s in steady) if steady else float("nan")
    return {"connected_steady": connected, "workers": len(pids), "rss_start_mb": base / KB / KB,
            "rss_steady_mb": rss / KB / KB, "kb_per_device": (rss - base) / max(1.0, connected) / KB,
            "steady_samples": len(steady)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=None, help="scale the campus down to this many devices")
    ap.add_argument("--ref-devices", type=int, default=400)
    ap.add_argument("--verbose", action="store_true", help="show the runner's live progress")
    args = ap.parse_args()
    text = scaled(max(100, min(args.devices, 50_000)) if args.devices else None)
    scenario = sc.parse(text, "campus.toml")
    n = sum(f.count for f in scenario.fleet)
    rate = float(scenario.arrival.rate)
    with tempfile.TemporaryDirectory(prefix="fleetsim-campus-") as tmp_s:
        tmp = Path(tmp_s)
        pki = Pki.init(tmp / "pki")
        ref_ids = [d.id for d in pki.issue(args.ref_devices, prefix="ref")]
        with start_mosquitto(pki.root, BrokerOptions(port=0)) as broker:
            assert broker.pid is not None
            ref = in_child(_floor_round, broker.host, broker.port, pki.layout, ref_ids, broker.pid)
        print(f"reference: context {ref['ctx'] / KB:.1f} KB + socket {ref['sock'] / KB:.1f} KB = "
              f"{ref['floor'] / KB:.1f} KB per connected device", flush=True)
        print(f"campus: {n:,} devices, ramp {rate:g}/s, {scenario.duration:g} s, pool of "
              f"{scenario.broker.processes} Mosquitto ...", flush=True)
        path = tmp / "campus.toml"
        path.write_text(text)
        with Sampler(None) as sampler:
            run_dir, s = fleetsim_run(path, pki.root, tmp / "results", sampler, args.verbose)
        res = analyse(run_dir, s, sampler, n, rate)
    report(s, res, ref, n, rate)
    q1 = s["messages"]["qos1plus"]
    return 0 if s["fleet"]["ever_connected"] == n and q1["lost"] == 0 else 1


def report(s: dict[str, Any], res: dict[str, Any], ref: dict[str, float], n: int, rate: float) -> None:
    fleet, up, q1, sim = s["fleet"], s["fleet_up"], s["messages"]["qos1plus"], s["simulator"]
    lag, total = sim["loop_lag_ms"], s["phases_ms"]["total"]
    print(f"\n{n:,} devices, {os.cpu_count()} cores, {res['workers']} workers, Mosquitto pool on loopback")
    print(f"  connected: {fleet['ever_connected']:,} / {n:,} ever, peak {fleet['peak_connected']:,} at once, "
          f"median {res['connected_steady']:,.0f} over the steady window; attempts {s['attempts']:,}, "
          f"outcomes {s['outcomes']}")
    print(f"  ramp: fleet came up at {up['rate_per_s']:.1f}/s over {up['span_s']:.1f} s "
          f"(scenario {rate:g}/s: ratio {up['rate_per_s'] / rate:.2f}); connect p50 {total['p50']:.1f} ms, "
          f"p99 {total['p99']:.1f} ms")
    print(f"  simulator loop lag p50/p99/max {lag['p50']:.1f}/{lag['p99']:.1f}/{lag['max']:.1f} ms"
          + ("  SATURATED" if sim["saturated"] else ""))
    print(f"  messages (QoS 1): published {q1['published']:,}, acknowledged {q1['acknowledged']:,}, "
          f"lost {q1['lost']:,}; ack p50/p99 {q1['ack_ms']['p50']:.2f} / {q1['ack_ms']['p99']:.2f} ms")
    print(f"  worker RSS: {res['rss_start_mb']:.0f} MB at start, steady median {res['rss_steady_mb']:.0f} MB "
          f"({res['steady_samples']} samples)")
    print(f"  simulator memory per connected device: {res['kb_per_device']:.1f} KB; reference floor "
          f"{ref['floor'] / KB:.1f} KB; ratio {res['kb_per_device'] / (ref['floor'] / KB):.2f}")
    for p in s["broker"].get("processes", []) or []:
        print(f"  broker {p}")


if __name__ == "__main__":
    sys.exit(main())
