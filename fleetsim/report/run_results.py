"""A finished run, read back from its results directory: the one ``Run`` the Python API returns, the terminal and
HTML reports read and ``compare`` lines up. Everything is read when first asked for, so a notebook that looks at the
summary never loads the Parquet tables, and the figures are drawn (matplotlib) only by :meth:`Run.figures`.

* ``run.summary``: summary.json (shape: :mod:`fleetsim.results.shape`) readable as attributes,
  ``run.summary.phases["tls"].p99``; ``run.summary.raw`` is the dict itself;
* ``run.attempts``, ``.sessions``, ``.devices``, ``.series``: pyarrow tables (``.to_pandas()``);
  ``run.attempt_arrays``, ``run.series_arrays``: their columns as numpy arrays, what the figures are computed from;
* ``run.scenario``: the :class:`~fleetsim.scenario.Scenario` as run (a dict for an old directory whose scenario.toml
  this version cannot parse); ``run.events``, ``run.broker``, ``run.meta``;
* ``run.figures()``: the report's figures (the same as ``fleetsim report --html`` draws), by name.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fleetsim.errors import FleetsimError
from fleetsim.results import figure_data, files, shape
from fleetsim.results.read import ATTEMPT_COLUMNS, SWEEP, kind_of, read_json, read_table
from fleetsim.scenario import Scenario
from fleetsim.scenario import parse as parse_scenario

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TABLES = ("attempts", "sessions", "devices", "series")


# -- the summary, readable as attributes -------------------------------------------------------------------------
class View(Mapping[str, Any]):
    """Read-only attribute access to a summary's nested dicts: ``s.fleet.connected_at_end``,
    ``s.phases["tls"].p99`` (``p99_9`` for "p99.9"); ``dict(view)`` or ``view.raw`` for the data. Completes in
    Jupyter (``__dir__`` lists the keys as attribute names)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.raw = data

    def __getitem__(self, key: str) -> Any:
        return _wrap(self.raw[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __getattr__(self, name: str) -> Any:
        if name == "raw":  # not set yet (unpickling, copy): no recursion through the keys
            raise AttributeError(name)
        for key in (name, name.replace("_9", ".9"), name.replace("_", "-")):
            if key in self.raw:
                return _wrap(self.raw[key])
        raise AttributeError(f"no {name!r} here; keys: {', '.join(self.raw)}")

    def __dir__(self) -> list[str]:
        keys = [k.replace(".", "_").replace("-", "_") for k in self.raw]
        return sorted({*super().__dir__(), *(k for k in keys if k.isidentifier())})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.raw!r})"


class Summary(View):
    """summary.json (keys: :class:`fleetsim.results.shape.Summary`), readable as attributes; ``phases`` is
    ``phases_ms`` (milliseconds)."""

    raw: shape.Summary

    def __init__(self, data: shape.Summary) -> None:
        super().__init__(data)

    @property
    def phases(self) -> View:
        return View(self.raw.get("phases_ms", {}))

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), "phases"})


def _wrap(value: Any) -> Any:
    if isinstance(value, Mapping):
        return View(value)
    if isinstance(value, list) and value and isinstance(value[0], Mapping):
        return [View(v) for v in value]
    return value


# -- one run -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Run:
    """A finished run's results directory (see the module's docstring for what it reads)."""

    dir: Path

    @classmethod
    def load(cls, path: str | Path) -> Run:
        """One clear line now if ``path`` is not one run's results directory."""
        run_dir = Path(path)
        if (kind := kind_of(run_dir)) != "run":
            raise FleetsimError(f"{run_dir} is a {kind}, not a run", "pass one run's results directory")
        return cls(run_dir)

    @property
    def path(self) -> Path:
        return self.dir

    @cached_property
    def summary(self) -> Summary:
        return Summary(files.read_summary(self.dir))

    @property
    def name(self) -> str:
        return str(self.summary.raw.get("scenario") or self.dir.name)

    @property
    def t0(self) -> float:
        return float(self.summary.raw.get("t0") or 0.0)

    # the tables, for people (pyarrow) and for the figures (numpy)
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

    @cached_property
    def attempt_arrays(self) -> dict[str, np.ndarray]:
        """The attempts' columns the figures use, as numpy arrays."""
        return read_table(self.dir / "attempts.parquet", ATTEMPT_COLUMNS)

    @cached_property
    def series_arrays(self) -> dict[str, np.ndarray]:
        """series.parquet's columns as numpy arrays."""
        return read_table(self.dir / "series.parquet")

    # the other files
    @cached_property
    def events(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = read_json(self.dir / "events.json", [])
        return data

    @cached_property
    def broker(self) -> dict[str, Any]:
        data = read_json(self.dir / "broker.json", {})
        return dict(data) if isinstance(data, Mapping) else {}

    @property
    def broker_samples(self) -> list[dict[str, float]]:
        """The broker's CPU seconds, sampled about once a second (``t``, ``cpu_seconds``)."""
        return list(self.broker.get("cpu_samples", []))

    @cached_property
    def meta(self) -> dict[str, Any]:
        data = read_json(self.dir / "meta.json", {})
        return dict(data) if isinstance(data, Mapping) else {}

    @cached_property
    def scenario_toml(self) -> str:
        path = self.dir / "scenario.toml"
        return path.read_text() if path.is_file() else ""

    @cached_property
    def settings(self) -> dict[str, Any]:
        """scenario.toml as plain tables, what ``compare`` lines up (empty when missing or unreadable)."""
        try:
            return tomllib.loads(self.scenario_toml)
        except tomllib.TOMLDecodeError:
            return {}

    @cached_property
    def scenario(self) -> Scenario | dict[str, Any]:
        """The Scenario as run; for an older directory whose scenario.toml this version cannot parse, its plain
        tables (``settings``)."""
        try:
            return parse_scenario(self.scenario_toml, str(self.dir / "scenario.toml"))
        except FleetsimError:
            return self.settings

    @property
    def breached(self) -> list[shape.Verdict]:
        """The ``--fail-on`` rules (``fs.run(fail_on=...)``) the run breached; empty when none was."""
        return [v for v in self.summary.raw.get("thresholds", []) if v["breached"]]

    def figures(self) -> Figures:
        """The report's figures of this run (matplotlib Figures, as ``fleetsim report --html`` draws them), by
        name: timeline, phases, failures, machine, and rehearsal for a rehearsal; each drawn when first looked
        up, so a notebook showing one pays for one."""
        return Figures(self, figures_of(self))


# -- the report's figures ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RunFigure:
    """One figure of the report: its name, what it shows (alt text, caption) and how it is drawn from one or more
    runs (overlaid, labelled)."""

    name: str
    alt: str
    caption: str
    draw: Callable[[Sequence[Run], Sequence[str]], Figure]


def _timeline(runs: Sequence[Run], labels: Sequence[str]) -> Figure:
    from fleetsim.report import plots

    return plots.timeline_figure([(lb, figure_data.timeline(r.series_arrays))
                                  for lb, r in zip(labels, runs, strict=True)],
                                 [figure_data.event_marks(r.summary.raw) for r in runs])


def _phases(runs: Sequence[Run], labels: Sequence[str]) -> Figure:
    from fleetsim.report import plots

    return plots.phase_cdfs_figure([(lb, figure_data.phase_cdfs(r.attempt_arrays))
                                    for lb, r in zip(labels, runs, strict=True)])


def _failures(runs: Sequence[Run], labels: Sequence[str]) -> Figure:
    from fleetsim.report import plots

    return plots.failures_figure(
        [(lb, figure_data.failures_by_class(r.attempt_arrays, r.t0, len(r.series_arrays.get("second", []))))
         for lb, r in zip(labels, runs, strict=True)], [figure_data.event_marks(r.summary.raw) for r in runs])


def _machine(runs: Sequence[Run], labels: Sequence[str]) -> Figure:
    from fleetsim.report import plots

    return plots.machine_figure([(lb, figure_data.machine(r.series_arrays, r.broker_samples))
                                 for lb, r in zip(labels, runs, strict=True)],
                                [figure_data.event_marks(r.summary.raw) for r in runs],
                                [bool(r.summary.raw.get("simulator", {}).get("saturated")) for r in runs])


def _rehearsal(runs: Sequence[Run], labels: Sequence[str]) -> Figure:
    from fleetsim.report import plots

    (run,) = runs
    return plots.rehearsal_figure(figure_data.rehearsal_timeline(run.series_arrays, run.summary.raw))


RUN_FIGURES = (
    RunFigure("timeline", "connections over time", "Whole run, x in run seconds. From series.parquet: devices "
              "connected at each second's end; connects (by CONNACK time) and attempts (by start) per second, a "
              "partial last second scaled to its share. Dashed lines: timed events.", _timeline),
    RunFigure("phases", "connect phase latency CDFs", "Whole run, x in ms (log), y the share of attempts. From "
              "attempts.parquet, connected attempts only: setup, wait (the simulator's own queue), tcp, tls, mqtt "
              "(CONNECT to CONNACK) and total. Dotted line: p99.", _phases),
    RunFigure("failures", "failures by class over time", "Whole run, x in run seconds, y failed attempts per "
              "second. From attempts.parquet: binned by the second they failed (start + total), stacked by failure "
              "class.", _failures),
    RunFigure("machine", "simulator loop lag and CPU", "Whole run, x in run seconds. From series.parquet: the worst "
              "worker's loop lag (ms) and the busiest worker's CPU (% of a core) per second; from broker.json: the "
              "broker's CPU (% of a core) between its once-a-second samples.", _machine),
)
REHEARSAL_FIGURE = RunFigure(
    "rehearsal", "rehearsal timeline", "From series.parquet (completed by the rehearsal from the rows): devices "
    "connected at each second's end, healthy and revoked apart; the revoked devices' refusals per second; the "
    "steps.", _rehearsal)


class Figures(Mapping[str, "Figure"]):
    """A run's figures by name, each drawn on first use and kept."""

    def __init__(self, run: Run, which: Sequence[RunFigure]) -> None:
        self._run, self._which = run, {f.name: f for f in which}
        self._drawn: dict[str, Figure] = {}

    def __getitem__(self, name: str) -> Figure:
        if name not in self._which:
            raise KeyError(f"no figure {name!r}; figures: {', '.join(self._which)}")
        if name not in self._drawn:
            self._drawn[name] = self._which[name].draw([self._run], [self._run.name])
        return self._drawn[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._which)

    def __len__(self) -> int:
        return len(self._which)

    def __repr__(self) -> str:
        return f"Figures({', '.join(self._which)})"


def figures_of(run: Run) -> list[RunFigure]:
    """The figures of one run's report: every run's, and a rehearsal's own."""
    return [*RUN_FIGURES, *([REHEARSAL_FIGURE] if run.summary.raw.get("revocation") else [])]


def load_run(path: str | Path) -> Run:
    """A run written earlier (by ``fleetsim run`` or ``fs.run``); one line naming what is missing otherwise."""
    return Run.load(path)


# -- a sweep's cells ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of a sweep: its name, the settings that made it, its (burst) run, and the figures fleetsim sweep
    computed from both its runs (``cell.json``)."""

    name: str
    settings: dict[str, Any]
    run: Run
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def summary(self) -> shape.Summary:
        """The run's summary, with the cell's comparable figures in place where the sweep has them: broker CPU
        per handshake from the burst, p99 total from the steady run, saturated if either was."""
        f, s = self.figures, self.run.summary.raw
        if not f:
            return s
        total = f.get("latency_ms", {}).get("total", {})
        return cast(shape.Summary, {
            **s, "broker": {**s.get("broker", {}), "cpu_ms_per_handshake": f.get("broker_cpu_ms_per_handshake")},
            "phases_ms": {**s.get("phases_ms", {}), "total": total},
            "simulator": {**s.get("simulator", {}), "saturated": bool(f.get("saturated"))}})


def load_sweep(path: Path) -> list[Cell]:
    """A sweep's cells, in the order sweep.json lists them; each cell's ``dir`` is relative to the sweep."""
    spec = read_json(path / SWEEP, {})
    cells = spec.get("cells") if isinstance(spec, Mapping) else None
    if not isinstance(cells, list) or not cells:
        raise FleetsimError(f"{path / SWEEP} names no cells", "it needs {\"cells\": [{\"name\", \"dir\", \"settings\"}]}")
    out = []
    for i, c in enumerate(cells):
        if not isinstance(c, Mapping) or "dir" not in c:
            raise FleetsimError(f"cell {i + 1} of {path / SWEEP} has no \"dir\"")
        run_dir = path / str(c.get("burst") or c["dir"])  # fleetsim sweep: a cell's burst and steady runs
        out.append(Cell(name=str(c.get("name") or c["dir"]), settings=dict(c.get("settings") or {}),
                        run=load_run(run_dir), figures=dict(c.get("figures") or {})))
    return out


def sweep_overheads(cells: Sequence[Cell]) -> list[figure_data.Overhead]:
    """What each overhead figure of a sweep's report shows: one per setting the sweep varied."""
    return figure_data.sweep_overhead([{"name": c.name, "settings": c.settings, "summary": c.summary}
                                       for c in cells])


def sweep_figures(cells: Sequence[Cell]) -> dict[str, Figure]:
    """A sweep report's figures (as ``fleetsim report --html`` draws them) by the setting each groups by."""
    from fleetsim.report import plots

    return {o.setting: plots.overhead_figure(o) for o in sweep_overheads(cells)}
