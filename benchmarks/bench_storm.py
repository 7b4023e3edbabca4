"""Connection storm on the path a user runs: `fleetsim run` against Mosquitto, beside a bare asyncio client and
`openssl s_time` C clients against the same broker, in alternating rounds.

    .venv/bin/python benchmarks/bench_storm.py [--devices 2000] [--rounds 3] [--reconnect/--no-reconnect]

Setup (outside the clock): a PKI on disk holding the storm scenario's identities (as a user's PKI does after its
first run), and one Mosquitto started by fleetsim (``fleetsim.broker.mosquitto``: ECDSA P-256 leaf + issuing CA,
CRL on, TCP_NODELAY) that every burst round targets as HOST:PORT.

Each round, back to back (in the order A B, then B A in the next round, so a drift in the machine's speed
favours neither side):
  * fleetsim: the CLI itself (``fleetsim run storm.toml --broker 127.0.0.1:PORT --pki DIR``: its worker processes,
    identities read from the PKI on disk), all N devices at once (``pattern = "burst"``), full mTLS + MQTT
    CONNECT/CONNACK, connections held. Its rate is the summary's own ``fleet_up`` (first attempt's start to the
    last first CONNACK), with the simulator's loop lag beside it and the CPU its processes (runner and workers)
    spent in that window, sampled every 50 ms as the broker's is. Identity loading is inside the clock, except
    what the devices' set-up before t0 (the lead the runner states) does.
  * bare asyncio: one process, contexts built before the clock, 100 handshakes in flight, TLS + CONNECT/CONNACK,
    connections held; its rate comes from the same function (``summary.fleet_up``) over its own rows.
  * C clients: one ``openssl s_time -new`` per core in parallel for a few seconds (full handshakes with a device
    certificate, no MQTT), summed.
With --reconnect (default) a reconnect storm follows: N devices connected to a Mosquitto fleetsim starts, the
broker restarted (``restart-broker`` event), time from the restart until every device is back; the bare client
does the same against the same kind of broker. Loopback only, bounded by --devices (max 5,000).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil
from _common import in_child

from fleetsim import scenario as sc
from fleetsim.broker.handle import BrokerOptions
from fleetsim.broker.mosquitto.broker import start_mosquitto
from fleetsim.pki import Layout, Pki
from fleetsim.results import summary
from fleetsim.runner import provision

STORM = """
name = "storm"
seed = 1
duration = {duration}
connect_timeout = 30
[broker]
target = "{target}"
[mqtt]
keepalive = 300
[arrival]
pattern = "burst"
[reconnect]
initial = {initial}
cap = 2
[[fleet]]
model = "glucose-monitor"
count = {n}
lot = "storm"
{events}
"""
IN_FLIGHT = 100
CORES = os.cpu_count() or 1
S_TIME = re.compile(r"(\d+) connections in ([\d.]+) real seconds")


def abba(r: int, sides: tuple[str, str]) -> tuple[str, str]:
    """Round r's order: A B, then B A, so a machine speeding up or slowing down over a round favours neither."""
    return sides if r % 2 == 0 else (sides[1], sides[0])


def write_scenario(path: Path, n: int, *, target: str, duration: float, initial: float = 0.5,
                   events: str = "") -> sc.Scenario:
    text = STORM.format(n=n, target=target, duration=duration, initial=initial, events=events)
    path.write_text(text)
    return sc.parse(text, str(path))


# ---------------------------------------------------------------- fleetsim, the CLI a user runs
def fleetsim_run(scenario: Path, pki: Path, out: Path, broker: str | None = None,
                 extra: list[str] | None = None) -> dict[str, Any]:
    """The CLI's summary, plus ``cpu``: the CPU of its process tree (runner and workers) sampled as it ran."""
    cmd = [sys.executable, "-m", "fleetsim", "run", str(scenario), "--pki", str(pki), "--out", str(out), *(extra or [])]
    if broker:
        cmd += ["--broker", broker]
    before = set(out.iterdir()) if out.exists() else set()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        cpu = CpuSampler(functools.partial(tree_cpu_seconds, psutil.Process(proc.pid)))
        try:
            _, err = proc.communicate(timeout=600)
        finally:
            cpu.close()
    (run_dir,) = set(out.iterdir()) - before
    summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    summary["run_dir"], summary["cpu"] = str(run_dir), cpu
    if proc.returncode != 0:
        raise RuntimeError(f"fleetsim run failed ({proc.returncode}): {err[-500:]}")
    return summary


def machine_busy_seconds() -> float:
    """CPU seconds the machine's cores have run anything since boot (user, system, interrupts; not steal)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def tree_cpu_seconds(root: psutil.Process) -> float:
    """User + system CPU of a process and every process below it that is alive now."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        for p in (root, *root.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def storm_window(up: Mapping[str, Any], t0: float) -> tuple[float, float]:
    """Wall-clock start and end of a storm: its first attempt and its last first CONNACK."""
    return t0 + up["first_attempt_s"], t0 + up["last_first_connect_s"]


def storm_figures(s: dict[str, Any]) -> dict[str, Any]:
    sim, phases = s["simulator"], s["phases_ms"]
    window = storm_window(s["fleet_up"], s["t0"])
    return {"rate": s["fleet_up"]["rate_per_s"], "ok": s["fleet_up"]["devices"],
            "failed": s["attempts"] - s["outcomes"].get("connected", 0),
            "lag_p99": sim["loop_lag_ms"]["p99"], "lag_max": sim["loop_lag_ms"]["max"],
            "cpu_ms": 1000.0 * s["cpu"].over(*window) / max(1, s["fleet_up"]["devices"]), "saturated": sim["saturated"],
            "window": window, "ready": sim.get("set_up_before_t0") or {},
            **{f"p50_{p}": phases[p]["p50"] for p in ("wait", "tls", "mqtt", "total")}}


class CpuSampler:
    """A process's CPU seconds sampled every 50 ms in a thread, so a storm's share is read over the storm's own
    window (first attempt to last first CONNACK), neither the set-up before it nor the hold and the disconnects
    after it."""

    def __init__(self, read: Callable[[], float | None]) -> None:
        self.read, self.samples = read, [(time.time(), read() or 0.0)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append((time.time(), self.read() or 0.0))

    def over(self, start: float, end: float) -> float:
        times, cpu = zip(*self.samples, strict=True)
        return summary.cpu_between(times, cpu, start, end)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- bare asyncio reference
def _connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x01\x2c" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


async def _bare_storm(host: str, port: int, ctxs: dict[str, ssl.SSLContext], held: list[Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(IN_FLIGHT)
    rows: dict[str, list[Any]] = {"device_id": [], "start": [], "total_ms": [], "outcome": []}

    class Mqtt(asyncio.Protocol):
        def __init__(self) -> None:
            self.connack: asyncio.Future[float] = loop.create_future()

        def data_received(self, data: bytes) -> None:
            if not self.connack.done() and data[:1] == b"\x20":
                self.connack.set_result(time.time())

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.connack.done():
                self.connack.set_exception(exc or ConnectionError("closed"))

    async def one(device: str, ctx: ssl.SSLContext, t0: float) -> None:
        async with gate:
            try:
                tr, proto = await loop.create_connection(Mqtt, host, port, ssl=ctx, server_hostname="localhost",
                                                         ssl_handshake_timeout=30)
                tr.write(_connect_packet(device))
                done = await asyncio.wait_for(proto.connack, 30)
                held.append(tr)
                rows["outcome"].append("connected")
            except Exception:
                done = time.time()
                rows["outcome"].append("failed")
        rows["device_id"].append(device)
        rows["start"].append(t0)
        rows["total_ms"].append((done - t0) * 1000)

    t0 = time.time()
    await asyncio.gather(*(one(d, c, t0) for d, c in ctxs.items()))
    return rows


def _contexts(pki_dir: Path, ids: list[str]) -> dict[str, ssl.SSLContext]:
    lay = Layout(pki_dir)
    out = {}
    for i in ids:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verification on: CERT_REQUIRED + check_hostname
        ctx.load_verify_locations(cafile=str(lay.ca_chain))
        ctx.load_cert_chain(str(lay.device_cert(i)), str(lay.device_key(i)))
        out[i] = ctx
    return out


def bare_round(host: str, port: int, pki_dir: Path, ids: list[str]) -> dict[str, Any]:
    ctxs = _contexts(pki_dir, ids)  # before the clock

    async def main() -> tuple[dict[str, Any], float]:
        held: list[Any] = []
        cpu = time.process_time()
        rows = await _bare_storm(host, port, ctxs, held)
        cpu = time.process_time() - cpu
        for tr in held:
            tr.close()
        await asyncio.sleep(0.2)
        return rows, cpu

    rows, cpu = asyncio.run(main())
    t0 = min(rows["start"])
    up = summary.fleet_up(rows, t0)
    return {"rate": up["rate_per_s"], "ok": up["devices"], "failed": rows["outcome"].count("failed"),
            "cpu_ms": 1000.0 * cpu / max(1, up["devices"]), "window": storm_window(up, t0)}


def bare_reconnect_round(pki_dir: Path, ids: list[str]) -> dict[str, Any]:
    """All connected to a Mosquitto of its own, broker restarted, all reconnected: devices per second back."""
    ctxs = _contexts(pki_dir, ids)
    with start_mosquitto(pki_dir, BrokerOptions(port=0)) as broker:
        async def main() -> dict[str, Any]:
            first: list[Any] = []
            await _bare_storm(broker.host, broker.port, ctxs, first)
            broker.restart()  # the held connections are cut
            for tr in first:
                tr.close()
            back: list[Any] = []
            rows = await _bare_storm(broker.host, broker.port, ctxs, back)  # from the restart's return
            up = summary.fleet_up(rows, min(rows["start"]))
            for tr in back:
                tr.close()
            return {"rate": up["rate_per_s"], "ok": up["devices"]}

        return asyncio.run(main())


# ---------------------------------------------------------------- C clients
def s_time_round(host: str, port: int, pki: Pki, ids: list[str], seconds: int) -> dict[str, Any]:
    lay = pki.layout
    procs = [subprocess.Popen(["openssl", "s_time", "-connect", f"{host}:{port}", "-cert", str(lay.device_cert(i)),
                               "-key", str(lay.device_key(i)), "-CAfile", str(lay.ca_chain), "-new", "-time",
                               str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for i in ids[: os.cpu_count() or 2]]
    total = 0.0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        m = S_TIME.search(out)
        if not m:
            raise RuntimeError(f"s_time gave no count: {out[-200:]}")
        total += int(m.group(1)) / float(m.group(2))
    return {"rate": total, "processes": len(procs)}


# ---------------------------------------------------------------- reconnect storm through fleetsim
def fleetsim_reconnect(tmp: Path, pki_dir: Path, n: int) -> dict[str, Any]:
    at = max(4.0, n / 300)
    path = tmp / "reconnect.toml"
    write_scenario(path, n, target="mosquitto", duration=at + max(12.0, n / 150), initial=0.05,
                   events=f'[[events]]\nat = {at:g}\naction = "restart-broker"\n')
    s = fleetsim_run(path, pki_dir, tmp / "out-reconnect")
    (event,) = s["events"]
    back = event["recovered_after_s"]
    ready = event["restart_ms"] / 1000  # from the restart's return, when the broker accepts again
    return {"rate": n / (back - ready) if back else float("nan"), "back_after_s": back, "restart_s": ready,
            "lag_p99": s["simulator"]["loop_lag_ms"]["p99"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--s-time", type=int, default=5, help="seconds each s_time round runs")
    ap.add_argument("--reconnect", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    n = max(10, min(args.devices, 5000))
    with tempfile.TemporaryDirectory(prefix="fleetsim-bench-storm-") as tmp_s:
        tmp = Path(tmp_s)
        pki = Pki.init(tmp / "pki")
        scenario = write_scenario(tmp / "storm.toml", n, target="127.0.0.1:1", duration=max(10.0, n / 150))
        ids = [p.device_id for p in provision.provision(pki, provision.plan(scenario))]
        rounds: dict[str, list[dict[str, Any]]] = {"fleetsim": [], "bare": [], "c": []}
        with start_mosquitto(pki.root, BrokerOptions(port=0)) as broker:
            target = f"127.0.0.1:{broker.port}"
            write_scenario(tmp / "storm.toml", n, target=target, duration=max(10.0, n / 150))
            broker_cpu, machine_cpu = CpuSampler(broker.cpu_seconds), CpuSampler(machine_busy_seconds)
            sides = {"fleetsim": lambda: storm_figures(fleetsim_run(tmp / "storm.toml", pki.root, tmp / "out")),
                     "bare": lambda: in_child(bare_round, broker.host, broker.port, pki.root, ids)}
            for r in range(args.rounds):
                for side in abba(r, ("fleetsim", "bare")):
                    rounds[side].append(sides[side]())
                    time.sleep(1.0)
                for side in ("fleetsim", "bare"):
                    x = rounds[side][-1]
                    x["broker_ms"] = 1000.0 * broker_cpu.over(*x["window"]) / max(1, x["ok"])
                    x["broker_busy"] = x["rate"] * x["broker_ms"] / 1000.0  # of its one core (single-threaded)
                    start, end = x["window"]
                    x["machine_busy"] = machine_cpu.over(start, end) / ((end - start) * CORES)
                rounds["c"].append(s_time_round(broker.host, broker.port, pki, ids, args.s_time))
                time.sleep(1.0)
                f, b, c = rounds["fleetsim"][-1], rounds["bare"][-1], rounds["c"][-1]
                print(f"round {r + 1}: fleetsim {f['rate']:6.0f}/s ({f['ok']} ok, {f['failed']} failed; p50 "
                      f"wait/tls/mqtt/total {f['p50_wait']:.1f}/{f['p50_tls']:.1f}/{f['p50_mqtt']:.1f}/"
                      f"{f['p50_total']:.0f} ms; loop lag p99 {f['lag_p99']:.0f} ms, max {f['lag_max']:.0f} ms; "
                      f"CPU per connect: fleetsim {f['cpu_ms']:.2f} ms, broker {f['broker_ms']:.2f} ms, broker busy "
                      f"{f['broker_busy']:.0%}, machine busy {f['machine_busy']:.0%}; "
                      f"set up before t0 {f['ready'].get('devices', 0)}/{f['ready'].get('of', 0)}"
                      f"{'; SATURATED' if f['saturated'] else ''})   bare asyncio {b['rate']:6.0f}/s ({b['ok']} ok; "
                      f"CPU per connect {b['cpu_ms']:.2f} ms, broker {b['broker_ms']:.2f} ms, busy {b['broker_busy']:.0%}, machine {b['machine_busy']:.0%})   "
                      f"s_time x{c['processes']} {c['rate']:6.0f}/s", flush=True)
            broker_cpu.close()
            machine_cpu.close()
        reconnect: dict[str, list[dict[str, Any]]] = {"fleetsim": [], "bare": []}
        if args.reconnect:
            again = {"fleetsim": lambda: fleetsim_reconnect(tmp, pki.root, n),
                     "bare": lambda: in_child(bare_reconnect_round, pki.root, ids)}
            for r in range(args.rounds):
                for side in abba(r, ("fleetsim", "bare")):
                    reconnect[side].append(again[side]())
                    time.sleep(1.0)
                f, b = reconnect["fleetsim"][-1], reconnect["bare"][-1]
                print(f"reconnect round {r + 1}: fleetsim all {n} back {f['back_after_s']:.2f} s after the restart "
                      f"event (restart itself {f['restart_s']:.2f} s): {f['rate']:6.0f}/s, lag p99 "
                      f"{f['lag_p99']:.0f} ms   bare asyncio {b['rate']:6.0f}/s", flush=True)
    med = {k: statistics.median(x["rate"] for x in v) for k, v in rounds.items()}
    print(f"\n{n} devices at once vs Mosquitto, {os.cpu_count()} cores, medians of {args.rounds} rounds:")
    print(f"  fleetsim run (CLI, workers, PKI on disk): {med['fleetsim']:8.0f} /s")
    paired = statistics.median(f["rate"] / b["rate"] for f, b in zip(rounds["fleetsim"], rounds["bare"], strict=True))
    print(f"  bare asyncio, contexts prebuilt:          {med['bare']:8.0f} /s   ratio {med['fleetsim'] / med['bare']:.2f}"
          f"  (target >= 1.0; median of the rounds' own ratios {paired:.2f})")
    cpu = {k: statistics.median(x[key] for x in rounds[k]) for k, key in (("fleetsim", "cpu_ms"), ("bare", "cpu_ms"))}
    mq = {k: statistics.median(x["broker_ms"] for x in rounds[k]) for k in ("fleetsim", "bare")}
    print(f"  CPU per connect over each storm's window, medians: fleetsim (runner + workers) {cpu['fleetsim']:.2f} ms, bare loop {cpu['bare']:.2f} ms; "
          f"Mosquitto {mq['fleetsim']:.2f} ms under fleetsim, {mq['bare']:.2f} ms under the bare loop")
    busy = {k: statistics.median(x["broker_busy"] for x in rounds[k]) for k in ("fleetsim", "bare")}
    whole = {k: statistics.median(x["machine_busy"] for x in rounds[k]) for k in ("fleetsim", "bare")}
    print(f"  busy over the storm, medians: Mosquitto (one thread) {busy['fleetsim']:.0%} of its core under fleetsim, "
          f"{busy['bare']:.0%} under the bare loop; the machine ({CORES} cores) {whole['fleetsim']:.0%} and "
          f"{whole['bare']:.0%}")
    print(f"  openssl s_time C clients, summed:         {med['c']:8.0f} /s   ratio {med['fleetsim'] / med['c']:.2f}"
          "  (target >= 0.7)")
    if reconnect["fleetsim"]:
        rf = statistics.median(x["rate"] for x in reconnect["fleetsim"])
        rb = statistics.median(x["rate"] for x in reconnect["bare"])
        print(f"  reconnect storm: fleetsim {rf:.0f}/s back, bare asyncio {rb:.0f}/s (ratio {rf / rb:.2f}), "
              f"C clients' steady rate {med['c']:.0f}/s (ratio {rf / med['c']:.2f})")


if __name__ == "__main__":
    main()
