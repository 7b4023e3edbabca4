"""Run a scenario: PKI, broker, worker processes, timed events, live progress, and the results directory.

The engine's shard runner (fleetsim.engine.shard.run_shard) does the device work; this module only orchestrates:
it owns the processes, the clock, the events and the files, and it always writes what was measured, also after
Ctrl-C or SIGTERM, a broker that died, or a run stopped early because nothing could connect. A second Ctrl-C or
SIGTERM ends it at once, without results.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetsim import lifecycle
from fleetsim.broker.handle import BrokerHandle
from fleetsim.broker.launch import probe
from fleetsim.engine.shard import ShardResult, ShardSpec, setup_seconds
from fleetsim.errors import FleetsimError, PkiError
from fleetsim.pki import Layout, Pki
from fleetsim.rehearsal import plan
from fleetsim.rehearsal.drive import Rehearsal
from fleetsim.results import files, shape
from fleetsim.results.rows import Merged
from fleetsim.results.series import run_series
from fleetsim.results.summary import Ending, Machine, assemble, summarise
from fleetsim.results.thresholds import Rule
from fleetsim.runner import delivery_logs, placement, progress, provision
from fleetsim.runner.brokers import Auth, broker_auth, keep_log, pool_targets, safe_stats, start_brokers
from fleetsim.runner.events import EventRunner
from fleetsim.runner.executors import Executor, executor_for, shard_identities
from fleetsim.runner.open_files import check_broker_fds, fd_workers, raise_fd_limit
from fleetsim.runner.progress import Progress, Reporter, Silent
from fleetsim.runner.samples import CORES, SAMPLE_EVERY_S, broker_sample, machine_sample
from fleetsim.runner.shards import deal, merge_results, with_in_flight_caps, with_sources, with_subscribers
from fleetsim.scenario import Scenario
from fleetsim.scenario.schema import strategy_of
from fleetsim.scenario.validate import is_loopback
from fleetsim.words import count

PREPARE_MARGIN = 1.5  # the lead over the setup time measured at the start: the machine's speed drifts
PREPARE_BUDGET_S = 10.0  # at most this long before t0 for workers to build their devices' contexts
COLLECT_GRACE_S = 20.0
EARLY_CHECK_S = 5.0  # nothing connected this long after t0 ...
EARLY_MIN_ATTEMPTS = 20  # ... with at least this many attempts (or every healthy device) failed: stop


@dataclass
class Outcome:
    """What the workers brought back."""

    results: dict[int, ShardResult] = field(default_factory=dict)
    lost: dict[int, str] = field(default_factory=dict)  # shard -> why it never reported (its worker lost)
    lost_devices: dict[int, list[str]] = field(default_factory=dict)  # shard -> its devices
    interrupted: str | None = None
    stopped_early: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    broker_samples: list[dict[str, float]] = field(default_factory=list)
    machine_samples: list[dict[str, float]] = field(default_factory=list)  # this machine's busy CPU, same times
    wall_s: float = 0.0
    missing: list[int] = field(default_factory=list)


def open_pki(pki_dir: Path, reporter: Reporter) -> Pki:
    """The PKI at ``pki_dir``, created for the user on first use (in a new or empty directory only)."""
    if Layout(pki_dir).is_pki():
        return Pki.open(pki_dir)
    if pki_dir.exists() and (not pki_dir.is_dir() or any(pki_dir.iterdir())):
        raise PkiError(f"{pki_dir} is not a fleetsim PKI (no inventory.json or issuing CA key)",
                       "point --pki at a PKI directory, or at a new or empty one to create it there")
    reporter.note(f"creating a PKI in {pki_dir}")
    return Pki.init(pki_dir)


def prepare_time(per_worker: int, per_device_s: float) -> float:
    """Seconds before t0 the workers may spend setting their devices up (``per_device_s`` as measured on this
    machine at the start, with a margin), so a burst does not queue behind it: stated, bounded by
    PREPARE_BUDGET_S."""
    return min(PREPARE_BUDGET_S, per_worker * per_device_s * PREPARE_MARGIN)


def nothing_connects(state: Mapping[str, Any], elapsed: float, healthy: int, target: str) -> str | None:
    """Why to stop a run in which no healthy device could connect at all, or None to go on. Pure."""
    attempts, connects = state.get("healthy_attempts", 0), state.get("healthy_connects", 0)
    if connects or not healthy or elapsed < EARLY_CHECK_S or attempts < min(healthy, EARLY_MIN_ATTEMPTS):
        return None
    failures: dict[str, int] = dict(state.get("healthy_failures", {}))
    if sum(failures.values()) < attempts:
        return None  # some attempts are still under way
    cls, n = max(failures.items(), key=lambda kv: kv[1])
    hint = {
        "tcp_refused": f"nothing listens at {target}: start the broker or fix --broker",
        "tcp_timeout": f"{target} does not answer: check the address and the network",
        "server_untrusted": "the broker's certificate is not from this PKI: point --pki at the PKI the broker uses",
        "server_name_mismatch": "the broker's certificate does not name the address dialled",
        "alert_unknown_ca": "the broker does not trust this PKI's CA: give it ca-chain.pem of --pki",
    }.get(cls, "see attempts.parquet in the results for each attempt's detail")
    return f"no device could connect: {n:,} of {count(attempts, 'attempt')} ended in {cls}; {hint}"


def supervise(scenario: Scenario, shards: list[ShardSpec], pki: Pki, broker: BrokerHandle, reporter: Reporter,
              fleet: Mapping[str, tuple[str, str]], executor: Executor) -> Outcome:
    """Start the shards, fire events on time, show progress, collect results whatever happens.

    ``fleet``: the healthy devices, id -> (lot, model), the devices events and rehearsals act on. A shard lost
    mid-run (its worker gone) leaves the others running; the summary names its devices."""
    executor.start(scenario, shards)
    events = EventRunner(scenario.events, pki, broker, {d: lot for d, (lot, _) in fleet.items()}, scenario.seed)
    drivers: list[Any] = [events]
    if scenario.revocation is not None:
        drivers.append(Rehearsal(scenario, pki, broker, fleet))
    out = Outcome()
    t0 = shards[0].t0
    deadline = t0 + scenario.duration + scenario.connect_timeout + COLLECT_GRACE_S
    snapshots: dict[int, Mapping[str, Any]] = {}
    target = f"{broker.host}:{broker.port}"
    last_sample = 0.0
    stopped = signalled = False
    try:
        while len(out.results) + len(out.lost) < len(shards):
            try:
                polled = executor.poll(wait=0.25)
                snapshots.update(polled.snapshots)
                out.results.update(polled.results)
                out.lost.update(polled.lost)
                now = time.time()
                elapsed = now - t0
                state = progress.merge(snapshots)
                if now >= t0:
                    for driver in drivers:
                        out.events += driver.fire_due(elapsed, state)
                if now - last_sample >= SAMPLE_EVERY_S:
                    last_sample = now
                    broker_sample(broker, elapsed, out.broker_samples)
                    out.machine_samples.append(machine_sample(elapsed))
                cpu = out.broker_samples[-1]["cpu_seconds"] if out.broker_samples else None
                reporter.progress(Progress(elapsed=max(0.0, elapsed), duration=scenario.duration,
                                           devices=scenario.devices, events=len(out.events), state=state,
                                           broker={"kind": broker.kind, "cpu_seconds": cpu}))
                if not stopped and (why := nothing_connects(state, elapsed, len(fleet), target)):
                    out.stopped_early, stopped = why, True
                    executor.stop()
                if now > deadline:
                    out.interrupted = out.interrupted or "workers did not finish in time"
                    break
            except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM through the CLI (fleetsim.lifecycle)
                if signalled:  # the second: end now, without the workers' results
                    executor.abort()
                    raise
                out.interrupted, stopped, signalled = lifecycle.reason(exc), True, True
                executor.stop()
                deadline = min(deadline, time.time() + COLLECT_GRACE_S)
            except FleetsimError as exc:
                out.interrupted, stopped = f"event failed: {exc}", True
                executor.stop()
    finally:
        reporter.done()
        broker_sample(broker, time.time() - t0, out.broker_samples)
        out.machine_samples.append(machine_sample(time.time() - t0))
        out.wall_s = time.time() - t0
        out.missing = sorted({s.index for s in shards} - set(out.results))
        executor.stop()
        executor.close()
    return out


def broker_cores_here(scenario: Scenario, broker: BrokerHandle | None) -> int:
    """Cores a broker on this machine takes from the workers: one a process for a broker fleetsim starts (a
    pool's each), one a loopback address for a broker given or named by address, none for a remote one."""
    if broker is not None:
        return 1 if is_loopback(broker.host) else 0
    if scenario.broker.kind != "external":
        return scenario.broker.processes
    return sum(1 for host, _ in scenario.broker.addresses if is_loopback(host))


def _default_workers(scenario: Scenario, broker: BrokerHandle | None, cluster: str | None) -> int:
    usable = len(placement.usable_cores())
    if cluster is not None:  # the shards run on the cluster's machines, not beside the broker
        return usable
    return placement.default_workers(usable, broker_cores_here(scenario, broker))


def run_scenario(scenario: Scenario, *, pki: Pki | Path, out_dir: Path, broker: BrokerHandle | None = None,
                 reporter: Reporter | None = None, cluster: str | None = None, rules: Sequence[Rule] = ()
                 ) -> tuple[Path, shape.Summary]:
    """The whole job of `fleetsim run`; returns the results directory and the summary.

    ``pki``: a Pki, or a directory (created on first use). ``broker``: a running broker to use as it is (not
    stopped here); None starts the one the scenario names. ``reporter`` hears what is going on (silence by
    default; the CLI's draws a progress line). ``cluster``: run the shards on a Dask cluster
    (``tcp://SCHEDULER:8786``, or ``local:N`` for N worker processes here) instead of local processes.
    ``rules``: ``--fail-on`` rules, judged into the summary (``thresholds``) before it is written.
    """
    reporter = reporter or Silent()
    if broker is not None and scenario.broker.auth == "password":
        raise FleetsimError("a scenario with auth = \"password\" needs the broker fleetsim starts",
                            "leave broker out (fleetsim writes the password file), or use another auth mode")
    if broker is not None and scenario.broker.isolate:
        raise FleetsimError("isolate applies only to a broker fleetsim starts", "drop isolate, or leave broker out")
    cores = placement.split(placement.usable_cores()) if scenario.broker.isolate else placement.Placement()
    workers = scenario.workers or max(len(cores.workers) or _default_workers(scenario, broker, cluster),
                                      fd_workers(scenario.devices))
    workers = max(1, min(workers, scenario.devices))
    raise_fd_limit(scenario.devices, workers)
    if broker is None and scenario.broker.kind != "external":
        check_broker_fds(scenario.devices, scenario.broker.processes)
    for address in [(broker.host, broker.port)] if broker is not None else scenario.broker.addresses:
        probe(*address)
    pki = pki if isinstance(pki, Pki) else open_pki(Path(pki), reporter)
    fleet = _provision(pki, scenario, reporter)
    executor = executor_for(cluster, cores.workers)
    try:
        return _run(scenario, pki, fleet, out_dir, broker, reporter, executor, cores, workers, rules)
    except BaseException:
        executor.close()  # supervise() closes it on the way out; this covers what fails before it
        raise


def _run(scenario: Scenario, pki: Pki, fleet: list[provision.Provisioned], out_dir: Path,
         broker: BrokerHandle | None, reporter: Reporter, executor: Executor, cores: placement.Placement,
         workers: int, rules: Sequence[Rule]) -> tuple[Path, shape.Summary]:
    run_dir = files.new_run_dir(out_dir, scenario.name)
    (run_dir / "scenario.toml").write_text(scenario.to_toml())
    meta = {**files.machine_facts(), "pki": str(pki.root), "workers": workers, **cores.as_dict()}  # at the start
    healthy = {p.device_id: (p.slot.lot, p.slot.model) for p in fleet if p.slot.fault is None}
    if scenario.revocation is not None and scenario.revocation.crl_prefill:
        _prefill_crl(pki, scenario.revocation.crl_prefill, reporter)
    rows_dir = run_dir / ".rows" if scenario.subscribers else None  # the workers' message logs, gathered after
    with tempfile.TemporaryDirectory(prefix="fleetsim-secrets-") as secrets_dir:  # lives as long as the broker
        auth = broker_auth(scenario, Path(secrets_dir), [p.device_id for p in fleet])
        with placement.on_cores(cores.broker):  # the broker, its restarts and this mostly idle process
            outcome, broker_stats, t0, kind = _run_against_broker(scenario, fleet, pki, auth, workers, reporter,
                                                                  healthy, run_dir / "broker.log", cores, broker,
                                                                  executor, rows_dir)
    files.write_json(run_dir / "meta.json", {**meta, **executor.facts()})  # a Dask cluster's skew: as shards start
    summary = _write(run_dir, scenario, outcome, broker_stats, t0=t0, workers=workers, kind=kind,
                     healthy=list(healthy), rules=rules)
    if rows_dir is not None:
        reporter.step("accounting deliveries")
        counts = {k: v for r in outcome.results.values() for k, v in r.meta.get("subscribers", {}).items()}
        delivery_logs.gather(rows_dir, run_dir, scenario, counts)
    return run_dir, summary


def _provision(pki: Pki, scenario: Scenario, reporter: Reporter) -> list[provision.Provisioned]:
    """The fleet's identities, with a count of what is being issued."""
    reporter.step("checking device identities")

    def tell(done: int, total: int) -> None:
        reporter.step(f"issuing device identities: {done:,} / {total:,}")

    fleet = provision.provision(pki, provision.plan(scenario), progress=tell)
    if scenario.subscribers:
        reporter.step("checking subscriber identities")
        provision.provision_monitors(pki, scenario.subscriber_ids)
    return fleet


def _prefill_crl(pki: Pki, entries: int, reporter: Reporter) -> None:
    """Earlier revocations on the CRL up to ``entries`` (a rehearsal with a large CRL already in place)."""
    have = sum(1 for r in pki.inventory.revoked if not r.device_id)
    if have < entries:
        reporter.step(f"putting {entries - have:,} earlier revocations on the CRL")
        pki.pad_crl(entries - have)


def _run_against_broker(scenario: Scenario, fleet: list[provision.Provisioned], pki: Pki, auth: Auth,
                        workers: int, reporter: Reporter, healthy: dict[str, tuple[str, str]], broker_log: Path,
                        cores: placement.Placement, given: BrokerHandle | None, executor: Executor,
                        rows_dir: Path | None = None) -> tuple[Outcome, dict[str, Any], float, str]:
    if given is None:
        reporter.step(f"starting the {scenario.broker.target} broker"
                      + (f"s ({scenario.broker.processes})" if scenario.broker.processes > 1 else ""))
    broker = given or start_brokers(scenario, pki, auth, broker_log)
    try:
        port = broker.plain_port if scenario.broker.auth == "none" else broker.port
        targets = pool_targets(broker, scenario.broker.auth)
        template = ShardSpec(index=0, devices=(), host=broker.host, port=port or broker.port,
                             server_hostname="" if scenario.broker.kind == "external" else "localhost",
                             ca_pem=pki.layout.ca_chain.read_bytes(),
                             pki_dir=pki.root, password=auth.password, targets=targets, rows_dir=rows_dir)
        shards = deal(scenario, fleet, template, workers)
        if scenario.subscribers:
            shards = with_subscribers(shards, scenario)
        biggest = max(shards, key=lambda s: len(s.devices))
        prepare = prepare_time(len(biggest.devices), setup_seconds(scenario, biggest, shard_identities(biggest)))
        t0 = time.time() + executor.lead_s + prepare  # the workers start, then set their devices up
        shards = [dataclasses.replace(s, t0=t0) for s in shards]
        loopback = all(is_loopback(h) for h, _ in targets or [(broker.host, broker.port)])
        shards = with_sources(shards, len(targets) or 1, scenario.source_addresses, loopback)
        shards = with_in_flight_caps(shards, len(targets) or 1, loopback)
        sources = sorted({s.source_address for s in shards if s.source_address})
        on = count(len(shards), "worker")
        reporter.note(f"{count(scenario.devices, 'device')} on {on} against {broker.kind} broker "
                      + (f"pool of {len(targets)} from " if targets else "")
                      + f"{broker.host}:{broker.port}, auth {scenario.broker.auth}, {scenario.duration:g} s"
                      + (f"; from {', '.join(sources)}" if sources else "")
                      + (f"; up to {prepare:.1f} s before t0 to set devices up" if prepare else "")
                      + (f"; {cores.describe()}" if cores.broker else "")
                      + (f"; shards on Dask {executor.facts().get('cluster')}" if executor.kind == "dask" else ""))
        outcome = supervise(scenario, shards, pki, broker, reporter, healthy, executor)
        outcome.lost_devices = {i: [d.id for d in shards_by[i].devices]
                                for shards_by in [{s.index: s for s in shards}] for i in outcome.lost}
        broker_stats = safe_stats(broker)
        keep_log(broker_stats.get("log"), broker_log)
        return outcome, broker_stats, t0, broker.kind
    finally:
        if given is None:
            broker.stop()


def _rehearsal(scenario: Scenario, outcome: Outcome, m: Merged, series: dict[str, list[Any]], t0: float,
               stopped_s: float, healthy: list[str]) -> dict[str, Any]:
    """summary["revocation"], and the rehearsal's own columns added to the timeline (``series``, in place, before
    series.parquet is written)."""
    revoked = {d for e in outcome.events if e.get("action") == "revoke" for d in e.get("device_ids", [])}
    series.update(plan.timeline(series, m.attempts, m.sessions, outcome.events, t0=t0))
    return plan.measure(outcome.events, m.attempts, m.sessions, m.devices, t0=t0, stopped_s=stopped_s,
                        healthy=[d for d in healthy if d not in revoked], strategy=strategy_of(scenario),
                        broker_samples=outcome.broker_samples)


def _write(run_dir: Path, scenario: Scenario, outcome: Outcome, broker_stats: dict[str, Any], *, t0: float,
           workers: int, kind: str, healthy: list[str], rules: Sequence[Rule]) -> shape.Summary:
    """Every results file, each written once: the timeline and the summary are complete before they are."""
    m = merge_results(outcome.results)
    stops = [r.loop["stopped_at"] for r in outcome.results.values() if r.loop.get("stopped_at")]
    stopped_s = (max(stops) - t0) if stops else min(scenario.duration, outcome.wall_s)
    for name, table in (("attempts", m.attempts), ("sessions", m.sessions), ("devices", m.devices)):
        files.write_table(run_dir / f"{name}.parquet", table)  # the rows first: whatever fails after, they stay
    files.write_json(run_dir / "events.json", outcome.events)
    files.write_json(run_dir / "broker.json", {**broker_stats, "cpu_samples": outcome.broker_samples})
    files.write_json(run_dir / "machine.json", {"cores": CORES, "cpu_samples": outcome.machine_samples})
    series = run_series(m.attempts, m.sessions, m.bins, t0=t0, stopped_s=stopped_s)
    figures = summarise(m, series, t0=t0, stopped_s=stopped_s, devices=scenario.devices, workers=workers,
                        wall_s=outcome.wall_s, broker_kind=kind, broker_final=broker_stats,
                        broker_samples=outcome.broker_samples, events=outcome.events,
                        machine=Machine(CORES, outcome.machine_samples))
    revocation = (_rehearsal(scenario, outcome, m, series, t0, stopped_s, healthy)
                  if scenario.revocation is not None else None)
    ending = Ending(interrupted=outcome.interrupted, stopped_early=outcome.stopped_early,
                    shards_missing=outcome.missing, lost=outcome.lost,
                    lost_devices=[d for ids in outcome.lost_devices.values() for d in ids])
    summary = assemble(scenario.name, t0, figures, ending=ending, revocation=revocation, rules=rules)
    files.write_table(run_dir / "series.parquet", series)
    files.write_json(run_dir / files.SUMMARY, summary)
    return summary
