"""A run's results directory: the scenario as run, machine facts, summary.json and Parquet tables."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import ssl
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fleetsim.errors import FleetsimError
from fleetsim.results.shape import Summary

SUMMARY = "summary.json"


def new_run_dir(out: Path, name: str) -> Path:
    """``out/<UTC time>-<scenario name>``, created; never overwrites an earlier run."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name) or "run"
    path = out / f"{stamp}-{safe}"
    n = 1
    while path.exists():
        n += 1
        path = out / f"{stamp}-{safe}-{n}"
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise FleetsimError(f"cannot create results directory {path}: {exc.strerror}",
                            "pass a writable --out DIR") from None
    return path


def machine_facts() -> dict[str, Any]:
    """What a reader needs to compare two runs: versions and the machine's size."""
    versions: dict[str, str | None] = {}
    for pkg in ("fleetsim", "paho-mqtt", "amqtt", "cryptography", "numpy", "pyarrow", "uvloop"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "python": sys.version.split()[0],
        "openssl": ssl.OPENSSL_VERSION,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": versions,
        "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def write_table(path: Path, columns: Mapping[str, Sequence[Any]]) -> None:
    """One Parquet file from columnar lists (empty columns allowed)."""
    pq.write_table(pa.table({k: list(v) for k, v in columns.items()}), path)


def read_summary(run_dir: Path) -> Summary:
    """summary.json (its keys: fleetsim.results.shape.Summary; an older run's may lack some)."""
    path = run_dir / SUMMARY
    if not path.is_file():
        raise FleetsimError(f"no {SUMMARY} in {run_dir}", "point at a run directory written by `fleetsim run`")
    try:
        data: Summary = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FleetsimError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return data
