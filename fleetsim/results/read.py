"""Reading results directories back: what kind a directory is, and its files as numpy arrays and JSON (the
Run made of them is :class:`fleetsim.report.run_results.Run`).

A directory's kind follows from what it holds, so one command reads all of them:

* ``run``: ``summary.json`` (and the Parquet tables beside it), written by ``fleetsim run``;
* ``sweep``: ``sweep.json`` naming its cells, each cell a run directory (``fleetsim sweep``).

A kind added later (a rehearsal) adds a detector to ``KINDS`` and a page in :mod:`fleetsim.report.html_page`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fleetsim.errors import FleetsimError
from fleetsim.results.files import SUMMARY

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


def read_json(path: Path, default: Any) -> Any:
    """A JSON file's data, ``default`` when it is missing; one line naming the file when it is not JSON."""
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FleetsimError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
