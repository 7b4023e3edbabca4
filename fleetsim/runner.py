"""Run a scenario: PKI, broker, worker processes, timed events, live progress, and the results directory.

The engine's shard runner (fleetsim.engine.shard.run_shard) does the device work; this module only orchestrates:
it owns the processes, the clock, the events and the files, and it always writes what was measured, also after
Ctrl-C or a broker that died.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import queue
import resource
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from fleetsim import placement, progress, provision, results, stats
from fleetsim.broker.embedded_auth import write_password_file
from fleetsim.broker.handle import BrokerHandle, BrokerOptions
from fleetsim.broker.launch import start_broker
from fleetsim.engine.identity import PkiIdentities
from fleetsim.engine.shard import ShardResult, ShardSpec, run_shard
from fleetsim.errors import FleetsimError
from fleetsim.events import EventRunner
from fleetsim.pki import Layout, Pki
from fleetsim.scenario import Scenario
from fleetsim.shards import deal, merge_results

FDS_PER_WORKER_SPARE = 64
START_DELAY_S = 1.0  # lets every worker be up before the shared t0
COLLECT_GRACE_S = 20.0


@dataclass
class Outcome:
    """What the workers brought back."""

    results: dict[int, ShardResult] = field(default_factory=dict)
    interrupted: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    missing: list[int] = field(default_factory=list)


def raise_fd_limit(devices: int, workers: int) -> None:
    """Raise the open-files limit as far as allowed; say clearly when the fleet cannot fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    per_worker = -(-devices // workers) + FDS_PER_WORKER_SPARE
    if per_worker > hard:
        need = -(-devices // (hard - FDS_PER_WORKER_SPARE))
        raise FleetsimError(f"{devices:,} devices on {workers} workers need {per_worker:,} open files per worker, "
                            f"the limit is {hard:,}", f"use --workers {need} or more, or raise `ulimit -Hn`")


def open_pki(pki_dir: Path, console: Console) -> Pki:
    """The PKI at ``pki_dir``, created for the user on first use."""
    if Layout(pki_dir).is_pki():
        return Pki.open(pki_dir)
    console.print(f"creating a PKI in {pki_dir}")
    return Pki.init(pki_dir)


@dataclass(frozen=True)
class Auth:
    """How devices authenticate, for the overhead comparisons: the broker's side and the devices' side."""

    options: BrokerOptions
    password: str | None = None  # every device's password when auth = "password"


def broker_auth(scenario: Scenario, secrets_dir: Path, device_ids: list[str]) -> Auth:
    """mtls: client certificates required; tls: server-only TLS; password: server-only TLS + a password each;
    none: plain TCP on a second listener. Verification of the broker by the device stays on in every mode."""
    b = scenario.broker
    options = BrokerOptions(port=0, tls_version=b.tls_version, session_tickets=b.session_resumption,  # type: ignore[arg-type]
                            require_certificate=b.auth == "mtls", plain_port=0 if b.auth == "none" else None)
    if b.auth != "password":
        return Auth(options)
    password = secrets.token_urlsafe(16)
    path = secrets_dir / "passwords"
    write_password_file(path, device_ids, password.encode())
    return Auth(dataclasses.replace(options, password_file=path), password)


def _worker(scenario: Scenario, shard: ShardSpec, progress_q: Any, result_q: Any, stop: Any,
            cores: frozenset[int]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into `stop`, then collects
    placement.pin(cores)  # before any thread starts (the progress queue's feeder), so all of them stay there
    _name_process(f"fsim-shard-{shard.index}")
    assert shard.pki_dir is not None
    ids = PkiIdentities(shard.pki_dir, {d.id: d.key_type for d in shard.devices})  # fresh per attempt
    result = run_shard(scenario, shard, ids, progress=lambda snap: progress_q.put((shard.index, snap)), stop=stop)
    result_q.put((shard.index, result))


def _name_process(name: str) -> None:
    """What ps and psutil show (15 characters at most), so a user can tell the workers apart."""
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(name[:15])


def supervise(scenario: Scenario, shards: list[ShardSpec], pki: Pki, broker: BrokerHandle, console: Console,
              fleet: Mapping[str, str], worker_cores: frozenset[int] = frozenset()) -> Outcome:
    """Start one process per shard, fire events on time, show progress, collect results whatever happens."""
    ctx = mp.get_context("fork")
    progress_q, result_q, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(scenario, s, progress_q, result_q, stop, worker_cores),
                         name=f"fleetsim-shard-{s.index}", daemon=True) for s in shards]
    for p in procs:
        p.start()
    events = EventRunner(scenario.events, pki, broker, dict(fleet), scenario.seed)
    out = Outcome()
    t0 = shards[0].t0
    deadline = t0 + scenario.duration + scenario.connect_timeout + COLLECT_GRACE_S
    snapshots: dict[int, Mapping[str, Any]] = {}
    view = progress.View(devices=scenario.devices, duration=scenario.duration)
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        while len(out.results) < len(shards):
            try:
                _collect(result_q, progress_q, snapshots, out)
                now = time.time()
                if now >= t0:
                    out.events += events.fire_due(now - t0)
                live.update(view.render(progress.merge(snapshots), elapsed=max(0.0, now - t0),
                                        events=len(out.events)))
                if not any(p.is_alive() for p in procs):
                    _collect(result_q, progress_q, snapshots, out, wait=1.0)
                    if len(out.results) < len(shards):
                        out.interrupted = out.interrupted or "a worker died before returning its results"
                    break
                if now > deadline:
                    out.interrupted = out.interrupted or "workers did not finish in time"
                    break
            except KeyboardInterrupt:
                out.interrupted = "interrupted (Ctrl-C)"
                stop.set()
                deadline = min(deadline, time.time() + COLLECT_GRACE_S)
            except FleetsimError as exc:
                out.interrupted = f"event failed: {exc}"
                stop.set()
    out.wall_s = time.time() - t0
    out.missing = sorted({s.index for s in shards} - set(out.results))
    for p in procs:
        p.join(timeout=2)
        if p.is_alive():
            p.terminate()
    return out


def _collect(result_q: Any, progress_q: Any, snapshots: dict[int, Mapping[str, Any]], out: Outcome,
             wait: float = 0.25) -> None:
    while True:
        try:
            index, snap = progress_q.get_nowait()
        except queue.Empty:
            break
        snapshots[index] = snap
    try:
        while True:
            index, result = result_q.get(timeout=wait)
            out.results[index] = result
            wait = 0.0
    except queue.Empty:
        pass


def run_scenario(scenario: Scenario, *, pki_dir: Path, out_dir: Path, console: Console) -> tuple[Path, dict[str, Any]]:
    """The whole job of `fleetsim run`; returns the results directory and the summary."""
    cores = placement.split(placement.usable_cores()) if scenario.broker.isolate else placement.Placement()
    workers = max(1, min(scenario.workers or len(cores.workers) or os.cpu_count() or 1, scenario.devices))
    raise_fd_limit(scenario.devices, workers)
    pki = open_pki(pki_dir, console)
    with console.status("provisioning device identities"):
        fleet = provision.provision(pki, provision.plan(scenario))
    run_dir = results.new_run_dir(out_dir, scenario.name)
    (run_dir / "scenario.toml").write_text(scenario.to_toml())
    results.write_json(run_dir / "meta.json", {**results.machine_facts(), "pki": str(pki.root), "workers": workers,
                                               **cores.as_dict()})
    healthy = {p.device_id: p.slot.lot for p in fleet if p.slot.fault is None}
    with tempfile.TemporaryDirectory(prefix="fleetsim-secrets-") as secrets_dir:  # lives as long as the broker
        auth = broker_auth(scenario, Path(secrets_dir), [p.device_id for p in fleet])
        with placement.on_cores(cores.broker):  # the broker, its restarts and this mostly idle process
            outcome, broker_stats = _run_against_broker(scenario, fleet, pki, auth, workers, console, healthy,
                                                        run_dir / "broker.log", cores)
    summary = _write(run_dir, scenario, outcome, broker_stats)
    return run_dir, summary


def _run_against_broker(scenario: Scenario, fleet: list[provision.Provisioned], pki: Pki, auth: Auth,
                        workers: int, console: Console, healthy: dict[str, str],
                        broker_log: Path, cores: placement.Placement) -> tuple[Outcome, dict[str, Any]]:
    with console.status(f"starting the {scenario.broker.target} broker"):
        broker = start_broker(scenario.broker.target, pki.root, auth.options, log_file=broker_log)
    try:
        port = broker.plain_port if scenario.broker.auth == "none" else broker.port
        template = ShardSpec(index=0, devices=(), host=broker.host, port=port or broker.port,
                             server_hostname="localhost", ca_pem=pki.layout.ca_chain.read_bytes(),
                             t0=time.time() + START_DELAY_S, pki_dir=pki.root, password=auth.password)
        shards = deal(scenario, fleet, template, workers)
        console.print(f"{scenario.devices:,} devices on {len(shards)} workers against {broker.kind} broker "
                      f"{broker.host}:{broker.port}, auth {scenario.broker.auth}, {scenario.duration:g} s"
                      + (f"; {cores.describe()}" if cores.broker else ""))
        outcome = supervise(scenario, shards, pki, broker, console, healthy, cores.workers)
        broker_stats = _safe_stats(broker)
        _keep_log(broker_stats.get("log"), broker_log)
        return outcome, broker_stats
    finally:
        broker.stop()


def _keep_log(source: object, target: Path) -> None:
    """Mosquitto logs into its private runtime directory, gone at stop: keep a copy with the results."""
    if isinstance(source, str) and Path(source).is_file() and not target.exists():
        with contextlib.suppress(OSError):
            shutil.copyfile(source, target)


def _safe_stats(broker: BrokerHandle) -> dict[str, Any]:
    try:
        return broker.stats()
    except Exception as exc:  # a dead broker still lets the run write what the devices measured
        return {"error": str(exc)}


def _write(run_dir: Path, scenario: Scenario, outcome: Outcome, broker_stats: dict[str, Any]) -> dict[str, Any]:
    attempts, series, messages = merge_results(outcome.results)
    results.write_table(run_dir / "attempts.parquet", attempts)
    results.write_table(run_dir / "series.parquet", series)
    results.write_json(run_dir / "events.json", outcome.events)
    results.write_json(run_dir / "broker.json", broker_stats)
    summary = stats.summarise(attempts, series, messages, devices=scenario.devices, wall_s=outcome.wall_s,
                              broker={k: v for k, v in broker_stats.items() if not isinstance(v, list | dict)})
    summary["scenario"] = scenario.name
    summary["events"] = outcome.events
    if outcome.interrupted:
        summary["interrupted"] = outcome.interrupted
    if outcome.missing:
        summary["shards_missing"] = outcome.missing
    results.write_json(run_dir / results.SUMMARY, summary)
    return summary
