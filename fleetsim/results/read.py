"""Reading results directories back for reports and comparisons: what kind a directory is, and a run's files as
arrays. The only module of the report that touches the disk on the way in; everything after it is pure.

A directory's kind follows from what it holds, so one command reads all of them:

* ``run``: ``summary.json`` (and the Parquet tables beside it), written by ``fleetsim run``;
* ``sweep``: ``sweep.json`` naming its cells, each cell a run directory (``fleetsim sweep``).

A kind added later (a rehearsal) adds a detector to ``KINDS`` and a page in :mod:`fleetsim.report.html_page`.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fleetsim.errors import FleetsimError
from fleetsim.results.files import SUMMARY, read_summary

SWEEP = "sweep.json"
ATTEMPT_COLUMNS = ("device_id", "start", "setup_ms", "wait_ms", "tcp_ms", "tls_ms", "mqtt_ms", "total_ms",
                   "outcome", "failure")
KINDS: dict[str, Callable[[Path], bool]] = {
    "sweep": lambda p: (p / SWEEP).is_file(),
    "run": lambda p: (p / SUMMARY).is_file(),
}


def kind_of(path: Path) -> str:
    """"run" or "sweep" (the first detector in ``KINDS`` that matches), or one line saying what is missing."""
    if not path.is_dir():
        raise FleetsimError(f"no results directory {path}", "pass a directory written by `fleetsim run`")
    for kind, holds in KINDS.items():
        if holds(path):
            return kind
    raise FleetsimError(f"{path} is not a results directory (no {SUMMARY} or {SWEEP})",
                        "pass a directory written by `fleetsim run` or `fleetsim sweep`")


@dataclass(frozen=True)
class Run:
    """One run's results: its summary, and the rows figures are computed from (columns as numpy arrays)."""

    path: Path
    summary: dict[str, Any]
    attempts: dict[str, np.ndarray]
    series: dict[str, np.ndarray]
    broker_samples: list[dict[str, float]] = field(default_factory=list)
    scenario_toml: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.summary.get("scenario") or self.path.name)

    @property
    def t0(self) -> float:
        return float(self.summary.get("t0") or 0.0)

    def scenario(self) -> dict[str, Any]:
        """The scenario as run, parsed (empty when the file was missing or unreadable)."""
        try:
            return tomllib.loads(self.scenario_toml)
        except tomllib.TOMLDecodeError:
            return {}


def read_table(path: Path, columns: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """A Parquet file's columns as numpy arrays (strings as object arrays, nulls as None/NaN)."""
    if not path.is_file():
        raise FleetsimError(f"no {path.name} in {path.parent}", "the run directory is incomplete: run it again")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise FleetsimError(f"{path} is not a readable Parquet file ({exc})") from None
    wanted = [c for c in (columns or table.column_names) if c in table.column_names]
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in wanted}


def _json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FleetsimError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def load_run(path: Path) -> Run:
    """Everything a report of one run needs; one line naming the file when something is missing."""
    if (kind := kind_of(path)) != "run":
        raise FleetsimError(f"{path} is a {kind}, not a run", "pass one run's results directory")
    summary = read_summary(path)
    broker = _json(path / "broker.json", {})
    scenario = path / "scenario.toml"
    return Run(
        path=path,
        summary=summary,
        attempts=read_table(path / "attempts.parquet", ATTEMPT_COLUMNS),
        series=read_table(path / "series.parquet"),
        broker_samples=list(broker.get("cpu_samples", [])) if isinstance(broker, Mapping) else [],
        scenario_toml=scenario.read_text() if scenario.is_file() else "",
        meta=_json(path / "meta.json", {}),
    )


@dataclass(frozen=True)
class Cell:
    """One cell of a sweep: its name, the settings that made it, its (burst) run, and the figures fleetsim sweep
    computed from both its runs (``cell.json``)."""

    name: str
    settings: dict[str, Any]
    run: Run
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, Any]:
        """The run's summary, with the cell's comparable figures in place where the sweep has them: broker CPU
        per handshake from the burst, p99 total from the steady run, saturated if either was."""
        f = self.figures
        if not f:
            return self.run.summary
        return {**self.run.summary,
                "broker": {**self.run.summary.get("broker", {}), "cpu_ms_per_handshake": f.get("broker_cpu_ms_per_handshake")},
                "phases_ms": {**self.run.summary.get("phases_ms", {}), "total": f.get("latency_ms", {}).get("total", {})},
                "simulator": {**self.run.summary.get("simulator", {}), "saturated": bool(f.get("saturated"))}}


def load_sweep(path: Path) -> list[Cell]:
    """A sweep's cells, in the order sweep.json lists them; each cell's ``dir`` is relative to the sweep."""
    spec = _json(path / SWEEP, {})
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
