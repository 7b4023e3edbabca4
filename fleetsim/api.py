"""fleetsim from Python (a notebook, a test, a script): the runs the CLI makes, with no terminal UI.

    import fleetsim as fs
    pki = fs.Pki.open_or_init("pki")
    scenario = fs.Scenario(fleet=[fs.Group("pulse-oximeter", 500)], duration=30)
    with fs.start_broker("embedded", pki) as broker:
        run = fs.run(scenario, pki=pki, broker=broker)
    run.summary.phases["tls"].p99
    run.attempts.to_pandas()
    run.figures()["timeline"]             # the report's figures, as matplotlib Figures
    run = fs.load_run(run.dir)

A run is :class:`fleetsim.report.run_results.Run` (one class, whoever reads it: the API, the reports,
``compare``); the summary's keys are defined in :mod:`fleetsim.results.shape`.

Works from a plain interpreter and from inside a running asyncio loop (Jupyter): the devices run in worker
processes, never on the caller's loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from fleetsim.broker.handle import BrokerHandle, BrokerOptions
from fleetsim.broker.launch import start_broker as _start
from fleetsim.errors import FleetsimError
from fleetsim.pki import Pki
from fleetsim.report.run_results import Run, Summary, View, load_run, sweep_figures
from fleetsim.report.run_results import load_sweep as load_sweep_cells
from fleetsim.results import thresholds
from fleetsim.runner.orchestrate import run_scenario
from fleetsim.runner.progress import Callback, Progress
from fleetsim.scenario import Scenario, load

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Run", "Summary", "SweepResult", "View", "load_run", "load_sweep", "run", "run_sweep", "start_broker"]

def start_broker(kind: str = "embedded", pki: Pki | str | Path = "pki", **options: Any) -> BrokerHandle:
    """Start a broker that requires this PKI's client certificates, on a free loopback port; stop it with
    ``.stop()`` or use it as a context manager. ``kind``: "embedded" or "mosquitto"; ``options`` are
    fleetsim.broker.handle.BrokerOptions fields (tls_version, session_tickets, drop_revoked, ...)."""
    if kind not in ("embedded", "mosquitto"):
        raise FleetsimError(f"unknown broker kind {kind!r}", 'use start_broker("embedded") or ("mosquitto")')
    root = pki.root if isinstance(pki, Pki) else Path(pki)
    try:
        opts = BrokerOptions(**{"port": 0, **options})
    except TypeError as exc:
        names = ", ".join(f.name for f in dataclasses.fields(BrokerOptions))
        raise FleetsimError(f"start_broker: {exc}", f"options: {names}") from None
    return _start(kind, root, opts)


def run(scenario: Scenario | str | Path, *, pki: Pki | str | Path = "pki", broker: BrokerHandle | str | None = None,
        out: str | Path = "results", progress: Callable[[Progress], None] | None = None,
        cluster: str | None = None, fail_on: Sequence[str] = ()) -> Run:
    """Run ``scenario`` (a Scenario or a TOML file) and return its results.

    ``broker``: a running broker (from :func:`start_broker`, or any BrokerHandle) to use as it is; a name
    ("embedded", "mosquitto", "HOST:PORT") to start or target instead of the scenario's; None: the scenario's.
    ``progress`` is called about once a second with a :class:`fleetsim.runner.progress.Progress`. ``cluster``:
    run the shards as tasks on a Dask cluster (``"tcp://SCHEDULER:8786"``, or ``"local:N"``). ``fail_on``:
    ``--fail-on`` rules (``["connected<100%", "p99.total>200ms"]``), judged as the CLI does into
    ``run.summary.thresholds`` (``run.breached`` lists those breached); a bad rule is one FleetsimError before
    anything runs.
    """
    rules = thresholds.parse(list(fail_on))
    s = scenario if isinstance(scenario, Scenario) else load(scenario)
    handle = None
    if isinstance(broker, str):
        s = s.with_overrides(broker=broker)
    elif broker is not None:
        handle = broker
    run_dir, _ = run_scenario(s, pki=pki if isinstance(pki, Pki) else Path(pki), out_dir=Path(out), broker=handle,
                              reporter=Callback(progress) if progress else None, cluster=cluster, rules=rules)
    return Run(run_dir)


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """A sweep's directory: every cell's settings and figures (``table()`` flattens them, one row per cell), the
    crypto floor, the s_time cross-check, and each cell's two runs."""

    dir: Path

    @cached_property
    def index(self) -> dict[str, Any]:
        from fleetsim.sweep.run_cells import read_sweep

        return read_sweep(self.dir)

    @property
    def cells(self) -> list[View]:
        return [View(c) for c in self.index["cells"]]

    @property
    def crypto_floor(self) -> View:
        return View(self.index.get("crypto_floor", {}))

    @property
    def cross_check(self) -> list[View]:
        return [View(x) for x in self.index.get("cross_check", [])]

    def run(self, cell: str, which: str = "steady") -> Run:
        """One of a cell's runs ("burst" or "steady") as a :class:`Run`."""
        for c in self.index["cells"]:
            if c["name"] == cell:
                return Run(self.dir / c[which])
        raise FleetsimError(f"no cell {cell!r} in {self.dir}", "cells: " + ", ".join(c["name"] for c in self.index["cells"]))

    def figures(self) -> dict[str, Figure]:
        """The sweep report's figures (``fleetsim report --html`` on the sweep's directory): broker CPU per
        handshake and p99 connect time, one figure per setting the sweep varied, by that setting."""
        return sweep_figures(load_sweep_cells(self.dir))

    def table(self) -> pa.Table:
        """One row per cell: its settings, then its figures (latencies as <phase>_<pNN>_ms)."""
        rows = []
        for c in self.index["cells"]:
            f = c["figures"]
            row = {"cell": c["name"], **c["settings"],
                   **{k: v for k, v in f.items() if not isinstance(v, dict)}}
            for phase, dist in f.get("latency_ms", {}).items():
                row.update({f"{phase}_{p}_ms": dist.get(p) for p in ("p50", "p90", "p99")})
            rows.append(row)
        return pa.Table.from_pylist(rows)


def run_sweep(definition: str | Path | Any, *, out: str | Path = "results",
              progress: Callable[[Progress], None] | None = None, measure: Mapping[str, Any] | None = None
              ) -> SweepResult:
    """Run a sweep (a sweep file, or a fleetsim.sweep.matrix.Sweep); cells finished earlier in ``out`` are
    kept.
    ``measure`` changes the sweep's [measure] (e.g. ``{"burst_devices": 20}`` to try it small); cells kept from
    an earlier run measured otherwise are refused with one line, never mixed in."""
    from fleetsim.sweep.matrix import Sweep, load
    from fleetsim.sweep.run_cells import run_sweep as run_all

    s = definition if isinstance(definition, Sweep) else load(definition)
    if measure:
        s = s.with_measure(**measure)
    return SweepResult(run_all(s, out=Path(out), reporter=Callback(progress) if progress else None))


def load_sweep(path: str | Path) -> SweepResult:
    result = SweepResult(Path(path))
    result.index  # noqa: B018 - one clear line now if it is not a sweep
    return result
