"""What the Dask path costs: the same mTLS storm through `fleetsim run` on its own worker processes and on a
2-worker Dask LocalCluster (`--cluster local:2`), in alternating rounds against one Mosquitto.

    .venv/bin/python benchmarks/bench_cluster.py [--devices 4000] [--rounds 3]

Setup (outside the clock): a PKI on disk holding the storm's identities and one Mosquitto started by fleetsim
(``fleetsim.broker.mosquitto``), which every round targets as HOST:PORT. Each round runs the CLI a user runs twice,
back to back: ``--workers 2`` (local processes) and ``--cluster local:2`` (a LocalCluster of two worker processes
started by the run itself; its tasks read the identities from the PKI on disk, as workers on several hosts
would from a shared path). The figure compared is the summary's
own ``fleet_up`` rate (first attempt's start to the last first CONNACK), so the cluster's start-up before t0 does
not count and its per-task overhead after t0 does. Target: the cluster costs < 10% in connect rate.
Loopback only, bounded by --devices (max 5,000).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_storm import fleetsim_run, storm_figures, write_scenario

from fleetsim.broker.handle import BrokerOptions
from fleetsim.broker.mosquitto.broker import start_mosquitto
from fleetsim.pki import Pki
from fleetsim.runner import provision

PATHS = {"local": ["--workers", "2"], "cluster": ["--cluster", "local:2"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n = max(10, min(args.devices, 5000))
    duration = max(10.0, n / 150)
    rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in PATHS}
    with tempfile.TemporaryDirectory(prefix="fleetsim-bench-cluster-") as tmp_s:
        tmp = Path(tmp_s)
        pki = Pki.init(tmp / "pki")
        scenario = write_scenario(tmp / "storm.toml", n, target="127.0.0.1:1", duration=duration)
        provision.provision(pki, provision.plan(scenario))  # identities on disk before the first round
        with start_mosquitto(pki.root, BrokerOptions(port=0)) as broker:
            write_scenario(tmp / "storm.toml", n, target=f"127.0.0.1:{broker.port}", duration=duration)
            for r in range(args.rounds):
                order = list(PATHS) if r % 2 == 0 else list(reversed(PATHS))  # neither always goes first
                for path in order:
                    s = fleetsim_run(tmp / "storm.toml", pki.root, tmp / f"out-{path}", extra=PATHS[path])
                    rounds[path].append(storm_figures(s))
                    time.sleep(1.0)
                line = "   ".join(f"{p} {rounds[p][-1]['rate']:6.0f}/s ({rounds[p][-1]['ok']} ok, "
                                  f"{rounds[p][-1]['failed']} failed, lag p99 {rounds[p][-1]['lag_p99']:.0f} ms)"
                                  for p in PATHS)
                print(f"round {r + 1}: {line}", flush=True)
    med = {p: statistics.median(x["rate"] for x in v) for p, v in rounds.items()}
    cost = 1 - med["cluster"] / med["local"]
    print(f"\n{n} devices at once vs Mosquitto, {os.cpu_count()} cores, medians of {args.rounds} rounds:")
    print(f"  fleetsim run --workers 2:        {med['local']:8.0f} /s")
    print(f"  fleetsim run --cluster local:2:  {med['cluster']:8.0f} /s   ratio {med['cluster'] / med['local']:.2f}"
          f"  (cost {100 * cost:.1f}%, target < 10%)")
    ok = all(x["failed"] == 0 and x["ok"] == n for v in rounds.values() for x in v)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
