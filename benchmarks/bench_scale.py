"""Scale: 10,000 concurrent mTLS devices against Mosquitto on loopback, QoS 1 telemetry every 10 s for 2 minutes.

    .venv/bin/python benchmarks/bench_scale.py            # 10,000 devices, ramp at 150/s, 120 s steady (~4 min)
    .venv/bin/python benchmarks/bench_scale.py --quick    # 2,000 devices, 30 s steady (~1 min)

One Mosquitto (fleetsim's own config, started by fleetsim.broker.mosquitto.broker) serves the whole run:

  * reference: in a fresh forked process, R rounds of K devices each holding only what a connected mTLS device
    cannot do without -- its own SSLContext (CA + its certificate and key; Python's ssl takes a client certificate
    only per context) and one connected, handshaken ssl.SSLSocket. RSS growth / K is the memory floor per device
    of any Python simulator on the ssl module. Mosquitto's own RSS growth per connection is printed beside it.
  * fleet: the ``fleetsim run`` CLI itself, as a process of its own, with the fleet pointed at that
    broker as HOST:PORT. infusion-pump devices publish every 10 s (the model's own interval), QoS 1, so every
    message is either acknowledged or counted lost. A thread samples the RSS of the runner's worker processes
    (children of this process running this Python; the broker is told apart by its pid) once a second.

Simulator memory per device = (median summed worker RSS over the steady window - summed RSS at their start, the
same code loaded) / devices connected. Ratio to the reference = how far above the floor the engine sits.
Loopback only; bounded by --devices (max 15,000) and --steady (max 600 s).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.parquet as pq
from _common import in_child

from fleetsim import scenario as sc
from fleetsim.broker.handle import BrokerOptions
from fleetsim.broker.mosquitto.broker import start_mosquitto
from fleetsim.pki import Layout, Pki
from fleetsim.telemetry import MODELS, TelemetryStream

MODEL = "infusion-pump"  # publishes every 10 s: the cadence the scale target asks for
KB = 1024.0
SCENARIO = """
name = "scale"
seed = 1
duration = {duration}
connect_timeout = 20
workers = {workers}
[broker]
target = "{target}"
[mqtt]
keepalive = 60
qos_telemetry = 1
qos_alarm = 1
[arrival]
pattern = "linear"
rate = {rate}
[reconnect]
initial = 1.0
cap = 10
[[fleet]]
model = "{model}"
count = {n}
lot = "scale"
site = "bench"
"""


# ---------------------------------------------------------------- reference: the floor per connected device


def _rss(pid: int | None = None) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def _floor_round(host: str, port: int, layout: Layout, ids: list[str], broker_pid: int) -> dict[str, float]:
    """Own context + connected mTLS socket per device, nothing else; RSS growth per device (bytes)."""
    gc.collect()
    rss0, broker0 = _rss(), _rss(broker_pid)
    ctxs = []
    for i in ids:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verification on: CERT_REQUIRED + check_hostname
        ctx.load_verify_locations(cafile=str(layout.ca_chain))
        ctx.load_cert_chain(str(layout.device_cert(i)), str(layout.device_key(i)))
        ctxs.append(ctx)
    rss_ctx = _rss()
    socks = []
    for ctx in ctxs:
        raw = socket.create_connection((host, port), timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(ctx.wrap_socket(raw, server_hostname="localhost"))  # full handshake, blocking
    time.sleep(0.5)  # let the broker finish its side of the last handshakes
    rss_sock, broker1 = _rss(), _rss(broker_pid)
    for s in socks:
        s.close()
    n = len(ids)
    return {"ctx": (rss_ctx - rss0) / n, "sock": (rss_sock - rss_ctx) / n, "floor": (rss_sock - rss0) / n,
            "broker": (broker1 - broker0) / n}


# ---------------------------------------------------------------- fleet: memory sampler


@dataclass
class Sampler:
    """Samples the runner's worker processes (and the broker) from a thread while fleetsim run runs."""

    broker_pid: int | None  # None: the run starts its own brokers (not Python, so never taken for workers)
    every: float = 1.0
    exclude: set[int] = field(default_factory=set)  # the CLI's own process: not a worker
    first: dict[int, int] = field(default_factory=dict)  # worker pid -> RSS when first seen
    samples: list[tuple[float, dict[int, int], int]] = field(default_factory=list)  # (time, pid -> RSS, broker)
    _stop: threading.Event = field(default_factory=threading.Event)

    def workers(self) -> list[psutil.Process]:
        exe = os.path.realpath(sys.executable)
        out = []
        for p in psutil.Process().children(recursive=True):
            try:
                if p.pid != self.broker_pid and p.pid not in self.exclude and os.path.realpath(p.exe()) == exe:
                    out.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out

    def run(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            rss: dict[int, int] = {}
            for p in self.workers():
                try:
                    rss[p.pid] = int(p.memory_info().rss)
                except psutil.NoSuchProcess:
                    continue
                self.first.setdefault(p.pid, rss[p.pid])  # polled at 20 Hz: within 50 ms of the fork
            now = time.time()
            if rss and now - last >= self.every:
                last = now
                self.samples.append((now, rss, _rss(self.broker_pid) if self.broker_pid else 0))
            self._stop.wait(0.05)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- fleet: what the run says


def expected_publishes(att: dict[str, list[Any]], end: float, seed: int) -> int:
    """Messages the connected devices should have sent by ``end`` at their model's interval and phase."""
    total = 0
    for dev, out, start, ms in zip(att["device_id"], att["outcome"], att["start"], att["total_ms"], strict=True):
        if out != "connected":
            continue
        s = TelemetryStream(MODEL, dev, seed)
        first = start + ms / 1000.0 + s.phase
        total += max(0, math.floor((end - first) / s.interval) + 1)
    return total


def analyse(run_dir: Path, summary: dict[str, Any], sampler: Sampler, n: int, rate: float,
            duration: float, broker_before: int) -> dict[str, Any]:
    att = pq.read_table(run_dir / "attempts.parquet").to_pydict()
    series = pq.read_table(run_dir / "series.parquet").to_pydict()
    ok = [i for i, o in enumerate(att["outcome"]) if o == "connected"]
    firsts = sorted(att["start"][i] for i, a in enumerate(att["attempt"]) if a == 1)
    t0 = firsts[0]
    ramp = n / rate
    lo, hi = t0 + ramp + 10.0, t0 + duration - 3.0  # steady window: ramp done and settled, before the stop
    steady = [s for s in sampler.samples if lo <= s[0] <= hi]
    conn_by_s = dict(zip(series["second"], series["connected"], strict=True))
    connected = statistics.median(conn_by_s.get(math.floor(s[0] - t0), 0) for s in steady) if steady else 0
    # the shard workers: alive through the steady window (short-lived helpers, e.g. PKI issuing, are not)
    pids = set.intersection(*(set(s[1]) for s in steady)) if steady else set()
    base = sum(sampler.first[p] for p in pids)
    rss_steady = statistics.median(sum(s[1][p] for p in pids) for s in steady) if steady else float("nan")
    msgs = summary["messages"]["qos1plus"]
    during = [i for i in ok if att["start"][i] - t0 <= ramp]  # the attempts of the ramp itself
    return {
        "connected_devices": summary["fleet"]["ever_connected"], "attempts": summary["attempts"],
        "outcomes": summary["outcomes"], "connected_steady": connected,
        "ramp_s": firsts[-1] - t0, "ramp_planned_s": ramp * (n - 1) / n,
        "p50": {k: statistics.median(att[f"{k}_ms"][i] for i in ok) for k in ("tcp", "tls", "mqtt", "total")},
        "p99_total": summary["phases_ms"]["total"]["p99"],
        "p99_ramp": float(np.percentile([att["total_ms"][i] for i in during], 99)) if during else float("nan"),
        "up_rate": summary["fleet_up"]["rate_per_s"], "lag": summary["simulator"]["loop_lag_ms"],
        "saturated": summary["simulator"]["saturated"],
        "published": msgs["published"], "acknowledged": msgs["acknowledged"], "lost": msgs["lost"],
        "unacked": msgs["lost"], "ack_p50": msgs["ack_ms"]["p50"],
        "ack_p99": msgs["ack_ms"]["p99"], "expected": expected_publishes(att, t0 + duration, 1),
        "workers": len(pids), "rss_start_mb": base / KB / KB, "rss_steady_mb": rss_steady / KB / KB,
        "rss_peak_mb": max((sum(s[1].get(p, 0) for p in pids) for s in sampler.samples), default=0) / KB / KB,
        "rss_per_worker_mb": {p: (sampler.first[p] / KB / KB, steady[-1][1][p] / KB / KB) for p in pids},
        "kb_per_device": (rss_steady - base) / max(1.0, connected) / KB,
        "broker_kb_per_conn": ((statistics.median(s[2] for s in steady) - broker_before) / max(1.0, connected) / KB
                               if steady else float("nan")),
        "steady_samples": len(steady),
    }


def fleetsim_run(path: Path, pki: Path, out: Path, sampler: Sampler, verbose: bool) -> tuple[Path, dict[str, Any]]:
    """The CLI a user runs, as a process of its own (not counted as a worker by the sampler)."""
    proc = subprocess.Popen([sys.executable, "-m", "fleetsim", "run", str(path), "--pki", str(pki), "--out", str(out)],
                            stdout=None if verbose else subprocess.DEVNULL, stderr=None if verbose else subprocess.PIPE)
    sampler.exclude.add(proc.pid)
    _, err = proc.communicate(timeout=3600)
    (run_dir,) = out.iterdir()
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"fleetsim run failed ({proc.returncode}): {(err or b'').decode()[-500:]}")
    return run_dir, json.loads((run_dir / "summary.json").read_text())


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 devices, 30 s steady")
    ap.add_argument("--devices", type=int, default=None)
    ap.add_argument("--steady", type=float, default=None, help="seconds after the ramp (default 120, quick 30)")
    ap.add_argument("--rate", type=float, default=150.0,
                    help="arrivals per second (this 2-core machine: connect p99 10.6 ms at 150/s)")
    ap.add_argument("--workers", type=int, default=0,
                    help="worker processes (default 0: fleetsim's own rule, one per core less the broker's)")
    ap.add_argument("--ref-devices", type=int, default=400, help="devices per reference round")
    ap.add_argument("--ref-rounds", type=int, default=3)
    ap.add_argument("--verbose", action="store_true", help="show the runner's live progress")
    args = ap.parse_args()
    n = max(10, min(args.devices or (2000 if args.quick else 10_000), 15_000))
    steady = max(20.0, min(args.steady or (30.0 if args.quick else 120.0), 600.0))
    duration = math.ceil(n / args.rate + steady)
    k = max(50, min(args.ref_devices, 2000))
    with tempfile.TemporaryDirectory(prefix="fleetsim-scale-") as tmp:
        pki = Pki.init(Path(tmp) / "pki")
        ref_ids = [d.id for d in pki.issue(k, prefix="ref")]
        text = SCENARIO.format(duration=duration, workers=args.workers, target="mosquitto", rate=args.rate,
                               model=MODEL, n=n)
        with start_mosquitto(pki.root, BrokerOptions(port=0)) as broker:  # mTLS, any TLS, no tickets: the defaults
            assert broker.pid is not None
            refs = []
            for r in range(args.ref_rounds):
                refs.append(in_child(_floor_round, broker.host, broker.port, pki.layout, ref_ids, broker.pid))
                print(f"reference round {r + 1}: context {refs[-1]['ctx'] / KB:.1f} KB + socket "
                      f"{refs[-1]['sock'] / KB:.1f} KB = {refs[-1]['floor'] / KB:.1f} KB per device; "
                      f"mosquitto {refs[-1]['broker'] / KB:.1f} KB per connection", flush=True)
                time.sleep(1.0)
            scenario = sc.parse(text.replace('"mosquitto"', f'"{broker.host}:{broker.port}"'), "scale.toml")
            print(f"fleet: {n:,} {MODEL} devices, QoS 1 every {MODELS[MODEL].interval:g} s, ramp {args.rate:g}/s, "
                  f"{duration} s in all, {args.workers or 'default'} workers ...", flush=True)
            broker_before = _rss(broker.pid)
            path = Path(tmp) / "scale.toml"
            path.write_text(scenario.to_toml())
            with Sampler(broker.pid) as sampler:
                run_dir, summary = fleetsim_run(path, pki.root, Path(tmp) / "results", sampler, args.verbose)
            res = analyse(run_dir, summary, sampler, n, args.rate, duration, broker_before)
            res["broker_stats"] = broker.stats()
    report(res, refs, n, k)
    good = (res["connected_devices"] == n and res["lost"] == 0 and res["connected_steady"] >= n)
    return 0 if good else 1


def report(res: dict[str, Any], refs: list[dict[str, float]], n: int, k: int) -> None:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in refs) / KB

    floor = med("floor")
    p50 = res["p50"]
    print(f"\n{n:,} devices, {os.cpu_count()} cores, Mosquitto on loopback")
    print(f"  connected: {res['connected_devices']:,} / {n:,} (median {res['connected_steady']:,.0f} during the "
          f"steady window), attempts {res['attempts']:,}, outcomes {res['outcomes']}")
    print(f"  ramp: last first-arrival {res['ramp_s']:.1f} s after the first (planned {res['ramp_planned_s']:.1f} s)")
    print(f"  connect p50 tcp/tls/mqtt/total: {p50['tcp']:.2f} / {p50['tls']:.2f} / {p50['mqtt']:.2f} / "
          f"{p50['total']:.2f} ms, total p99 {res['p99_total']:.1f} ms, p99 during the ramp {res['p99_ramp']:.1f} ms "
          f"(target < 100 ms); fleet came up at {res['up_rate']:.0f}/s")
    lag = res["lag"]
    print(f"  simulator loop lag p50/p99/max {lag['p50']:.1f}/{lag['p99']:.1f}/{lag['max']:.1f} ms"
          + ("  SATURATED" if res["saturated"] else ""))
    print(f"  messages (QoS 1): published {res['published']:,} (expected ~{res['expected']:,}), acknowledged "
          f"{res['acknowledged']:,}, lost {res['lost']:,}, unacked at the end {res['unacked']:,}; "
          f"ack p50/p99 {res['ack_p50']:.2f} / {res['ack_p99']:.2f} ms")
    print(f"  worker RSS ({res['workers']} workers): start {res['rss_start_mb']:.0f} MB, steady median "
          f"{res['rss_steady_mb']:.0f} MB, peak {res['rss_peak_mb']:.0f} MB ({res['steady_samples']} steady samples)")
    for pid, (a, b) in sorted(res["rss_per_worker_mb"].items()):
        print(f"    worker pid {pid}: {a:.0f} MB at start, {b:.0f} MB at the end of the steady window")
    print(f"  simulator memory per connected device: {res['kb_per_device']:.1f} KB   (target < 40 KB)")
    print(f"  reference floor (own SSLContext + connected mTLS SSLSocket), median of {len(refs)} x {k}: "
          f"{floor:.1f} KB  (context {med('ctx'):.1f} + socket {med('sock'):.1f})")
    print(f"  ratio simulator / floor: {res['kb_per_device'] / floor:.2f}")
    print(f"  mosquitto RSS per connection: {res['broker_kb_per_conn']:.1f} KB in the fleet run, "
          f"{refs[0]['broker'] / KB:.1f} KB in the first reference round (later rounds reuse its freed memory); "
          f"broker CPU "
          f"{res['broker_stats'].get('cpu_seconds', float('nan')):.1f} s")


if __name__ == "__main__":
    sys.exit(main())
