"""fleetsim from Python (a notebook, a test, a script): the runs the CLI makes, with no terminal UI.

    import fleetsim as fs
    pki = fs.Pki.open_or_init("pki")
    scenario = fs.Scenario(fleet=[fs.Group("pulse-oximeter", 500)], duration=30)
    with fs.start_broker("embedded", pki) as broker:
        run = fs.run(scenario, pki=pki, broker=broker)
    run.summary.phases["tls"].p99
    run.attempts.to_pandas()
    run = fs.load_run(run.dir)

Works from a plain interpreter and from inside a running asyncio loop (Jupyter): the devices run in worker
processes, never on the caller's loop.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fleetsim.broker.handle import BrokerHandle, BrokerOptions
from fleetsim.broker.launch import start_broker as _start
from fleetsim.errors import FleetsimError
from fleetsim.pki import Pki
from fleetsim.results import files
from fleetsim.runner.orchestrate import run_scenario
from fleetsim.runner.progress import Callback, Progress
from fleetsim.scenario import Scenario, load
from fleetsim.scenario import parse as parse_scenario

TABLES = ("attempts", "sessions", "devices", "series")


class View(Mapping[str, Any]):
    """Read-only attribute access to a summary's nested dicts: ``s.fleet.connected_at_end``,
    ``s.phases["tls"].p99`` (``p99_9`` for "p99.9"); ``dict(view)`` or ``view.raw`` for the data."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.raw = data

    def __getitem__(self, key: str) -> Any:
        return _wrap(self.raw[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __getattr__(self, name: str) -> Any:
        for key in (name, name.replace("_9", ".9"), name.replace("_", "-")):
            if key in self.raw:
                return _wrap(self.raw[key])
        raise AttributeError(f"no {name!r} here; keys: {', '.join(self.raw)}")

    def __repr__(self) -> str:
        return f"View({self.raw!r})"


class Summary(View):
    """summary.json, readable as attributes; ``phases`` is ``phases_ms`` (milliseconds)."""

    @property
    def phases(self) -> View:
        return View(self.raw.get("phases_ms", {}))


def _wrap(value: Any) -> Any:
    if isinstance(value, Mapping):
        return View(value)
    if isinstance(value, list) and value and isinstance(value[0], Mapping):
        return [View(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished run's results directory: its summary, its tables (pyarrow: ``.to_pandas()``, ``.to_pydict()``)
    and what it ran."""

    dir: Path

    @classmethod
    def load(cls, path: str | Path) -> Run:
        run_dir = Path(path)
        files.read_summary(run_dir)  # one clear line if it is not a run
        return cls(run_dir)

    @cached_property
    def summary(self) -> Summary:
        return Summary(files.read_summary(self.dir))

    def table(self, name: str) -> pa.Table:
        path = self.dir / f"{name}.parquet"
        if not path.is_file():
            raise FleetsimError(f"no {path.name} in {self.dir}", f"tables of a run: {', '.join(TABLES)}")
        return pq.read_table(path)

    @property
    def attempts(self) -> pa.Table:
        return self.table("attempts")

    @property
    def sessions(self) -> pa.Table:
        return self.table("sessions")

    @property
    def devices(self) -> pa.Table:
        return self.table("devices")

    @property
    def series(self) -> pa.Table:
        return self.table("series")

    @property
    def events(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = json.loads((self.dir / "events.json").read_text())
        return data

    @property
    def broker(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.dir / "broker.json").read_text())
        return data

    @property
    def scenario(self) -> Scenario:
        return parse_scenario((self.dir / "scenario.toml").read_text(), str(self.dir / "scenario.toml"))


def load_run(path: str | Path) -> Run:
    """A run written earlier (by ``fleetsim run`` or :func:`run`), the same object :func:`run` returns."""
    return Run.load(path)


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
        cluster: str | None = None) -> Run:
    """Run ``scenario`` (a Scenario or a TOML file) and return its results.

    ``broker``: a running broker (from :func:`start_broker`, or any BrokerHandle) to use as it is; a name
    ("embedded", "mosquitto", "HOST:PORT") to start or target instead of the scenario's; None: the scenario's.
    ``progress`` is called about once a second with a :class:`fleetsim.runner.progress.Progress`. ``cluster``:
    run the shards as tasks on a Dask cluster (``"tcp://SCHEDULER:8786"``, or ``"local:N"``).
    """
    s = scenario if isinstance(scenario, Scenario) else load(scenario)
    handle = None
    if isinstance(broker, str):
        s = s.with_overrides(broker=broker)
    elif broker is not None:
        handle = broker
    run_dir, _ = run_scenario(s, pki=pki if isinstance(pki, Pki) else Path(pki), out_dir=Path(out), broker=handle,
                              reporter=Callback(progress) if progress else None, cluster=cluster)
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
