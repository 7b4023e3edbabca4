"""Fidelity: does fleetsim time TLS handshakes like OpenSSL's own client does, at a low steady rate?

    .venv/bin/python benchmarks/bench_fidelity.py [--devices 200] [--rate 20] [--reps 3] [--brokers mosquitto,embedded]

Against one broker at a time (Mosquitto, then the embedded one), each repetition runs, back to back:
  * openssl: ``openssl s_time -connect HOST:PORT -cert -key -CAfile -new -verify 4 -time T``: sequential full
    TCP + TLS handshakes with a device certificate, no session reuse. s_time prints whole seconds of wall time
    only, so the wall time of the s_time process is measured here; per connection = wall / connections. That
    includes socket creation and close (and ~10 ms of process start over T s), which fleetsim's figure does not:
    a slightly generous reference, i.e. an honest upper bound on what fleetsim adds.
  * fleetsim: ``run_scenario`` (what ``fleetsim run`` does), N devices arriving linearly at R/s, the fleet pointed
    at that broker as HOST:PORT; per connection attempt tcp_ms + tls_ms from attempts.parquet.
  * python: the same handshakes with CPython's ssl module, blocking, paced at the same R/s, every device its
    own context built beforehand: the same quantity fleetsim reports (one device's TCP + TLS latency at that
    rate), without fleetsim's event loop. s_time's 1/rate is a closed-loop throughput instead: in TLS 1.3 the
    client is done before the server has verified its certificate, so back-to-back connections also wait for
    the server's work on the previous one. Both references are printed; judge the gap by both.
Same TLS settings everywhere: TLS 1.3 (the default), ECDSA P-256 device keys, broker and CA from the same PKI,
no session tickets. Compared: fleetsim median (and mean) of tcp+tls against s_time's mean per connection;
medians over the repetitions are printed with their ratio. Target: fleetsim adds no more than 10%.
Loopback only; bounded by --devices (max 1000), --rate (max 100/s), --reps (max 10).
"""

from __future__ import annotations

import argparse
import math
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console

from fleetsim import scenario as sc
from fleetsim.broker.handle import BrokerHandle, BrokerOptions
from fleetsim.broker.launch import start_broker
from fleetsim.pki import Layout, Pki
from fleetsim.runner import run_scenario

SCENARIO = """
name = "fidelity"
seed = 3
duration = {duration}
connect_timeout = 10
[broker]
target = "{target}"
[arrival]
pattern = "linear"
rate = {rate}
[reconnect]
max_attempts = 1
[[fleet]]
model = "thermometer"
count = {n}
"""
STIME_RE = re.compile(rb"(\d+) connections in [\d.]+s;")


def openssl_round(host: str, port: int, layout: Layout, dev: str, seconds: float) -> dict[str, float]:
    """Mean wall ms per sequential full handshake, from ``openssl s_time -new``."""
    cmd = ["openssl", "s_time", "-connect", f"{host}:{port}", "-cert", str(layout.device_cert(dev)),
           "-key", str(layout.device_key(dev)), "-CAfile", str(layout.ca_chain), "-new", "-verify", "4",
           "-time", str(int(seconds))]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, timeout=seconds + 30, check=True).stdout
    wall = time.perf_counter() - t
    m = STIME_RE.search(out)
    if m is None or int(m.group(1)) == 0:
        raise SystemExit(f"openssl s_time made no connection:\n{out.decode(errors='replace')}")
    n = int(m.group(1))
    return {"mean": wall / n * 1000.0, "n": n}


def fleetsim_round(broker: BrokerHandle, pki: Pki, n: int, rate: float, tmp: Path) -> dict[str, Any]:
    """Median and mean tcp_ms + tls_ms (and tls_ms alone) over fleetsim's connected attempts."""
    text = SCENARIO.format(duration=math.ceil(n / rate) + 2, target=f"{broker.host}:{broker.port}", rate=rate, n=n)
    run_dir, _ = run_scenario(sc.parse(text, "fidelity.toml"), pki_dir=pki.root, out_dir=tmp,
                              console=Console(quiet=True))
    a = pq.read_table(run_dir / "attempts.parquet", columns=["outcome", "tcp_ms", "tls_ms", "tls_version"]).to_pydict()
    ok = [i for i, o in enumerate(a["outcome"]) if o == "connected"]
    both = [a["tcp_ms"][i] + a["tls_ms"][i] for i in ok]
    return {"median": statistics.median(both), "mean": statistics.fmean(both),
            "tls_median": statistics.median(a["tls_ms"][i] for i in ok), "n": len(ok), "failed": len(a["outcome"]) - len(ok),
            "versions": ",".join(sorted({a["tls_version"][i] for i in ok}))}


def python_round(host: str, port: int, layout: Layout, devs: list[str], rate: float) -> dict[str, float]:
    """CPython's ssl, blocking, one connection every 1/rate s like fleetsim's arrivals, each device with its own
    context built before the clock starts (a context's first handshake costs ~0.2 ms more than later ones)."""
    ctxs = []
    for dev in devs:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verification on
        ctx.load_verify_locations(cafile=str(layout.ca_chain))
        ctx.load_cert_chain(str(layout.device_cert(dev)), str(layout.device_key(dev)))
        ctxs.append(ctx)
    times = []
    next_at = time.perf_counter()
    for ctx in ctxs:
        time.sleep(max(0.0, next_at - time.perf_counter()))
        next_at += 1.0 / rate
        t = time.perf_counter()
        raw = socket.create_connection((host, port), timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname="localhost"):
            times.append((time.perf_counter() - t) * 1000.0)
    return {"median": statistics.median(times), "mean": statistics.fmean(times), "n": len(times)}


def bench_broker(kind: str, pki: Pki, devs: list[str], args: argparse.Namespace, tmp: Path) -> dict[str, list[Any]]:
    dev = devs[0]
    rounds: dict[str, list[Any]] = {"openssl": [], "fleetsim": [], "python": []}
    broker = start_broker(kind, pki.root, BrokerOptions(port=0))
    try:
        openssl_round(broker.host, broker.port, pki.layout, dev, 1)  # warm-up: caches, page faults
        for r in range(args.reps):
            o = openssl_round(broker.host, broker.port, pki.layout, dev, args.stime_seconds)
            time.sleep(1.0)
            f = fleetsim_round(broker, pki, args.devices, args.rate, tmp)
            time.sleep(1.0)
            p = python_round(broker.host, broker.port, pki.layout, devs, args.rate)
            for k, v in (("openssl", o), ("fleetsim", f), ("python", p)):
                rounds[k].append(v)
            print(f"{kind} rep {r + 1}: s_time {o['mean']:.3f} ms/conn ({o['n']} conns) | fleetsim tcp+tls "
                  f"median {f['median']:.3f} mean {f['mean']:.3f} ms, tls median {f['tls_median']:.3f} ms "
                  f"({f['n']} ok, {f['failed']} failed, {f['versions']}) | python median {p['median']:.3f} "
                  f"mean {p['mean']:.3f} ms", flush=True)
            time.sleep(1.0)
    finally:
        broker.stop()
    return rounds


def summary(kind: str, rounds: dict[str, list[Any]]) -> None:
    def med(src: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[src])

    ref = med("openssl", "mean")
    fm, fmean, pm, pmean = (med("fleetsim", "median"), med("fleetsim", "mean"), med("python", "median"),
                            med("python", "mean"))
    print(f"\n{kind}: medians over {len(rounds['openssl'])} repetitions, ms per connection (TCP + TLS 1.3 mTLS)")
    print(f"  openssl s_time -new (mean per connection):  {ref:7.3f}")
    print(f"  fleetsim tcp_ms+tls_ms median / mean:       {fm:7.3f} / {fmean:.3f}   (tls_ms alone: "
          f"{med('fleetsim', 'tls_median'):.3f})")
    print(f"  python ssl, blocking, paced, median / mean: {pm:7.3f} / {pmean:.3f}")
    print(f"  ratio fleetsim/openssl s_time: median {fm / ref:.2f}, mean {fmean / ref:.2f}   (target <= 1.10)")
    print(f"  ratio fleetsim/python paced (same quantity: one device's TCP+TLS latency at the same rate): "
          f"median {fm / pm:.2f}, mean {fmean / pmean:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--stime-seconds", type=int, default=5)
    ap.add_argument("--brokers", default="mosquitto,embedded")
    args = ap.parse_args()
    args.devices = max(10, min(args.devices, 1000))
    args.rate = max(1.0, min(args.rate, 100.0))
    args.reps = max(1, min(args.reps, 10))
    args.stime_seconds = max(2, min(args.stime_seconds, 30))
    kinds = [k.strip() for k in args.brokers.split(",") if k.strip()]
    if unknown := set(kinds) - {"mosquitto", "embedded"}:
        ap.error(f"unknown broker(s) {', '.join(sorted(unknown))}: use mosquitto and/or embedded")
    with tempfile.TemporaryDirectory(prefix="fleetsim-fidelity-") as tmp:
        pki = Pki.init(Path(tmp) / "pki")
        devs = [d.id for d in pki.issue(args.devices, prefix="ref")]
        results = {k: bench_broker(k, pki, devs, args, Path(tmp) / "results") for k in kinds}
    for k, rounds in results.items():
        summary(k, rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
