"""How many mutual-TLS MQTT connections per second each broker accepts, beside `openssl s_time`.

    .venv/bin/python benchmarks/bench_brokers.py [--seconds 2] [--reps 3] [--concurrency 1,4] [--s-time 5]

For every broker fleetsim can start (Mosquitto, the embedded amqtt broker; whatever is missing is skipped and
said so) it runs, against the same broker in the same run:
  * fleetsim's raw client: N threads, each looping full TLS handshake (no session resumption) with a device
    certificate + MQTT CONNECT/CONNACK + DISCONNECT, for a few seconds; connects/s.
  * `openssl s_time -new`: full handshakes only, no MQTT, the C baseline.
Prints medians over the repetitions, the ratio to s_time, and the broker's CPU seconds per 1,000 connects.
Loopback only, bounded in time. The PKI is made in a temporary directory and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from fleetsim.broker.handle import BrokerOptions
from fleetsim.pki import Pki

DEVICES = 8
DISCONNECT = b"\xe0\x00"


def connect_packet(client_id: str) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, keepalive 30 s, built by hand."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x1e" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


@dataclass
class Device:
    id: str
    ctx: ssl.SSLContext
    packet: bytes


def load_devices(pki: Pki, ids: list[str]) -> list[Device]:
    out = []
    for did in ids:
        ctx = ssl.create_default_context(cafile=str(pki.layout.ca_chain))
        ctx.load_cert_chain(pki.layout.device_cert(did), pki.layout.device_key(did))
        out.append(Device(did, ctx, connect_packet(did)))
    return out


def one_connect(host: str, port: int, dev: Device) -> bool:
    """Full handshake + CONNECT/CONNACK; True if the broker accepted."""
    with socket.create_connection((host, port), timeout=10) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with dev.ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(dev.packet)
            ok = tls.recv(4) == b"\x20\x02\x00\x00"
            if ok:
                tls.sendall(DISCONNECT)
            return ok


@dataclass
class Run:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def fleetsim_rate(host: str, port: int, devices: list[Device], seconds: float, concurrency: int) -> tuple[float, Run]:
    """Connects accepted per second by ``concurrency`` threads looping for ``seconds``."""
    run = Run()
    deadline = time.monotonic() + seconds

    def worker(k: int) -> None:
        i = k
        while time.monotonic() < deadline:
            dev = devices[i % len(devices)]
            i += concurrency
            try:
                good = one_connect(host, port, dev)
            except (OSError, ssl.SSLError) as exc:
                good = False
                with run.lock:
                    if len(run.errors) < 3:
                        run.errors.append(f"{type(exc).__name__}: {exc}")
            with run.lock:
                run.ok += good
                run.failed += not good

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return run.ok / (time.monotonic() - t0), run


S_TIME_COUNT = re.compile(r"(\d+) connections in ([\d.]+) real seconds")


def s_time_rate(host: str, port: int, pki: Pki, device: str, seconds: int) -> float:
    """`openssl s_time -new`: full mTLS handshakes per wall-clock second (no MQTT)."""
    lay = pki.layout
    cmd = ["openssl", "s_time", "-connect", f"{host}:{port}", "-cert", str(lay.device_cert(device)),
           "-key", str(lay.device_key(device)), "-CAfile", str(lay.ca_chain), "-new", "-time", str(seconds)]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    wall = time.monotonic() - t0
    m = S_TIME_COUNT.search(out.stdout)
    if not m:
        raise RuntimeError(f"s_time gave no count: {out.stdout[-200:]} {out.stderr[-200:]}")
    return int(m.group(1)) / wall


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return float("nan")


# -- brokers ------------------------------------------------------------------------------------------------
Starter = Callable[[Path, BrokerOptions], Any]


DYNSEC_ADMIN = "dynsec-admin"


def available_brokers(dynsec: bool = False) -> tuple[dict[str, Starter], list[str]]:
    """The brokers importable/installed here, and a line for each one skipped."""
    found: dict[str, Starter] = {}
    skipped = []
    try:
        from fleetsim.broker.mosquitto.broker import find_binary, start_mosquitto
        from fleetsim.broker.mosquitto.config import Extras

        find_binary()
        found["mosquitto"] = start_mosquitto
        if dynsec:  # the same, with the dynamic-security plugin loaded (opt-in, to cut live clients)
            found["mosq+dynsec"] = lambda root, opts: start_mosquitto(root, opts,
                                                                       extras=Extras(dynsec_admin=DYNSEC_ADMIN))
    except Exception as exc:
        skipped.append(f"mosquitto: {exc}")
    try:
        from fleetsim.broker.embedded.process import start_embedded

        found["embedded"] = start_embedded
    except Exception as exc:
        skipped.append(f"embedded: {type(exc).__name__}: {exc}")
    return found, skipped


@contextmanager
def started(starter: Starter, pki_dir: Path, options: BrokerOptions) -> Iterator[Any]:
    broker = starter(pki_dir, options)
    try:
        yield broker
    finally:
        broker.stop()


def median_of(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def bench_one(name: str, starter: Starter, pki: Pki, devices: list[Device], args: argparse.Namespace,
              have_openssl: bool) -> dict[str, Any]:
    res: dict[str, Any] = {"broker": name}
    with started(starter, pki.root, BrokerOptions(port=0, tls_version=args.tls)) as broker:
        pid = getattr(broker, "pid", None)
        one_connect(broker.host, broker.port, devices[0])  # warm-up, and proof it accepts
        for c in args.concurrency:
            rates, cpu, total, failures = [], 0.0, 0, 0
            for _ in range(args.reps):
                c0 = cpu_seconds(pid)
                rate, run = fleetsim_rate(broker.host, broker.port, devices, args.seconds, c)
                cpu += cpu_seconds(pid) - c0
                total += run.ok
                failures += run.failed
                rates.append(rate)
                if run.errors:
                    res.setdefault("errors", []).extend(run.errors)
            res[f"fleetsim_c{c}"] = {"median_per_s": median_of(rates), "runs": [round(r, 1) for r in rates],
                                     "failed": failures,
                                     "broker_cpu_s_per_1000": 1000 * cpu / total if total else float("nan")}
        if have_openssl:
            rates = [s_time_rate(broker.host, broker.port, pki, devices[0].id, args.s_time) for _ in range(args.reps)]
            res["s_time"] = {"median_per_s": median_of(rates), "runs": [round(r, 1) for r in rates]}
    return res


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nmTLS connects/s, loopback, {os.cpu_count()} cores, TLS {args.tls}, ECDSA P-256, "
          f"median of {args.reps} x {args.seconds:g} s (s_time: {args.s_time} s each)")
    print(f"{'broker':<11} {'client':<14} {'median/s':>9} {'vs s_time':>9} {'broker cpu s/1k':>16}  runs")
    for r in results:
        base = r.get("s_time", {}).get("median_per_s")
        for key, v in r.items():
            if not isinstance(v, dict):
                continue
            ratio = f"{v['median_per_s'] / base:.2f}" if base and key != "s_time" else ""
            cpu = v.get("broker_cpu_s_per_1000")
            cpu_txt = f"{cpu:.2f}" if cpu is not None else ""
            client = "openssl s_time" if key == "s_time" else f"fleetsim c={key.split('_c')[1]}"
            print(f"{r['broker']:<11} {client:<14} {v['median_per_s']:>9.1f} {ratio:>9} {cpu_txt:>16}  {v['runs']}")
        for err in r.get("errors", [])[:3]:
            print(f"  {r['broker']} client error: {err}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=2.0, help="length of each fleetsim-client run")
    p.add_argument("--reps", type=int, default=3, help="repetitions; medians are printed")
    p.add_argument("--concurrency", default="1,4", help="comma-separated client thread counts")
    p.add_argument("--s-time", type=int, default=4, help="seconds per `openssl s_time` run")
    p.add_argument("--tls", choices=["1.2", "1.3", "any"], default="any")
    p.add_argument("--only", choices=["mosquitto", "embedded", "mosq+dynsec"], help="benchmark one broker")
    p.add_argument("--dynsec", action="store_true", help="also Mosquitto with its dynamic-security plugin loaded")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    brokers, skipped = available_brokers(args.dynsec or args.only == "mosq+dynsec")
    if args.only:
        brokers = {k: v for k, v in brokers.items() if k == args.only}
    have_openssl = shutil.which("openssl") is not None
    if not have_openssl:
        skipped.append("openssl s_time: openssl not on PATH")
    for line in skipped:
        print(f"skipped {line}")
    if not brokers:
        print("nothing to benchmark")
        return 1
    results = []
    with tempfile.TemporaryDirectory(prefix="fleetsim-bench-") as tmp:
        pki = Pki.init(Path(tmp) / "pki")
        ids = [d.id for d in pki.issue(DEVICES)]
        pki.issue_monitor(DYNSEC_ADMIN)
        devices = load_devices(pki, ids)
        for name, starter in brokers.items():
            print(f"benchmarking {name} ...", flush=True)
            results.append(bench_one(name, starter, pki, devices, args, have_openssl))
    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "json"},
                                         "skipped": skipped, "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
