"""Running a sweep: every cell's two runs through the runner `fleetsim run` uses, each in its own results
directory under the sweep's, with the machine's crypto floor and an `openssl s_time` cross-check beside them.

The sweep directory is named after the sweep, so running it again resumes: a cell whose ``cell.json`` exists is
not redone. A cell interrupted half-way is redone whole.

    sweep_dir/
      sweep.json                    the cells, their settings, figures and directories; the crypto floor
      crypto-floor.json             `openssl speed` for each key type (sign, verify) and X25519
      pki/crl-<N>/                  one PKI per CRL size (N earlier revocations on its CRL)
      cells/<cell>/cell.json        the cell's figures
      cells/<cell>/runs/<run>/      its burst and steady runs, as `fleetsim run` writes them
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from fleetsim import lifecycle
from fleetsim.broker.handle import BrokerOptions
from fleetsim.broker.launch import start_broker
from fleetsim.errors import FleetsimError, RunInterrupted
from fleetsim.pki import Layout, Pki
from fleetsim.results import files
from fleetsim.runner.orchestrate import run_scenario
from fleetsim.runner.progress import Reporter, Silent
from fleetsim.sweep.matrix import (
    OPENSSL_SPEED_NAMES,
    Cell,
    Sweep,
    cell_scenarios,
    figures,
    parse_openssl_speed,
)

SWEEP_JSON = "sweep.json"
S_TIME_SECONDS = 3
_S_TIME = re.compile(r"(\d+) connections in ([\d.]+) real seconds")


def run_sweep(sweep: Sweep, *, out: Path, reporter: Reporter | None = None) -> Path:
    """Run every cell not done yet; returns the sweep directory (``out/<sweep name>``)."""
    reporter = reporter or Silent()
    sweep_dir = out / sweep.name
    _check_resumable(sweep, sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    floor = crypto_floor(sweep_dir, {c.settings["key_type"] for c in sweep.cells}, reporter)
    done: list[dict[str, Any]] = []
    for i, cell in enumerate(sweep.cells, 1):
        record = _cell_record(sweep_dir, cell)
        if record is None:
            reporter.note(f"cell {i}/{len(sweep.cells)}: {cell.name}")
            record = run_cell(sweep, cell, sweep_dir, reporter)
        else:
            reporter.note(f"cell {i}/{len(sweep.cells)}: {cell.name} (done earlier, kept)")
        done.append(record)
        _write_index(sweep, sweep_dir, done, floor)
    cross = cross_check(sweep, sweep_dir, done, reporter)
    _write_index(sweep, sweep_dir, done, floor, cross)
    return sweep_dir


def _check_resumable(sweep: Sweep, sweep_dir: Path) -> None:
    """Cells kept from an earlier run must have been measured the same way, or the table would mix them."""
    if not (sweep_dir / SWEEP_JSON).is_file():
        return
    earlier = read_sweep(sweep_dir).get("measure") or {}
    changed = [f"{k} {earlier.get(k)} -> {v}" for k, v in vars(sweep.measure).items() if earlier.get(k) != v]
    if changed:
        raise FleetsimError(f"{sweep_dir} holds this sweep measured otherwise ({', '.join(changed)})",
                            "give another out directory, or remove that one to measure it again")


def _cell_record(sweep_dir: Path, cell: Cell) -> dict[str, Any] | None:
    path = sweep_dir / "cells" / cell.name / "cell.json"
    if not path.is_file():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def cell_pki(sweep_dir: Path, crl_size: int) -> Pki:
    """The PKI for cells of one CRL size, made once: ``crl_size`` earlier revocations on its CRL."""
    root = sweep_dir / "pki" / f"crl-{crl_size}"
    if Layout(root).is_pki():
        return Pki.open(root)
    shutil.rmtree(root, ignore_errors=True)  # a PKI whose making was interrupted
    pki = Pki.init(root)
    if crl_size:
        pki.pad_crl(crl_size)
    return pki


def run_cell(sweep: Sweep, cell: Cell, sweep_dir: Path, reporter: Reporter) -> dict[str, Any]:
    cell_dir = sweep_dir / "cells" / cell.name
    shutil.rmtree(cell_dir, ignore_errors=True)  # what an interrupted earlier try left
    runs = cell_dir / "runs"
    pki = cell_pki(sweep_dir, cell.settings["crl_size"])
    burst, steady = cell_scenarios(sweep, cell)
    measured = {}
    for what, scenario in (("burst", burst), ("steady", steady)):
        run_dir, summary = run_scenario(scenario, pki=pki, out_dir=runs, reporter=reporter)
        if (signalled := lifecycle.exit_code(summary.get("interrupted"))) is not None:
            raise RunInterrupted(f"{summary['interrupted']} in cell {cell.name}'s {what} run; the cells finished "
                                 "before it are kept", "run the same sweep again to resume it", exit_code=signalled)
        if summary.get("interrupted") or summary.get("stopped_early"):
            raise FleetsimError(f"cell {cell.name}: its {what} run ended early: "
                                f"{summary.get('interrupted') or summary.get('stopped_early')}",
                                "fix that and run the sweep again: finished cells are kept")
        measured[what] = (run_dir, summary)
    (b_dir, b_sum), (s_dir, s_sum) = measured["burst"], measured["steady"]
    fig = figures(b_sum, s_sum, _table(b_dir, "series"), _table(b_dir, "attempts"), _table(s_dir, "attempts"))
    record = {"name": cell.name, "settings": cell.settings, "dir": str(cell_dir.relative_to(sweep_dir)),
              "burst": str(b_dir.relative_to(sweep_dir)), "steady": str(s_dir.relative_to(sweep_dir)),
              "figures": fig}
    files.write_json(cell_dir / "cell.json", record)
    return record


def _table(run_dir: Path, name: str) -> dict[str, list[Any]]:
    data: dict[str, list[Any]] = pq.read_table(run_dir / f"{name}.parquet").to_pydict()
    return data


def _write_index(sweep: Sweep, sweep_dir: Path, cells: list[dict[str, Any]], floor: dict[str, Any],
                 cross: list[dict[str, Any]] | None = None) -> None:
    index = {"name": sweep.name, "description": sweep.description, "source": sweep.source,
             "measure": vars(sweep.measure), "cells": cells, "crypto_floor": floor,
             "complete": len(cells) == len(sweep.cells)}
    if cross is not None:
        index["cross_check"] = cross
    files.write_json(sweep_dir / SWEEP_JSON, index)


def read_sweep(sweep_dir: Path) -> dict[str, Any]:
    path = sweep_dir / SWEEP_JSON
    if not path.is_file():
        raise FleetsimError(f"no {SWEEP_JSON} in {sweep_dir}", "point at a directory written by `fleetsim sweep`")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# -- beside the cells --------------------------------------------------------------------------------------------
def crypto_floor(sweep_dir: Path, key_types: set[str], reporter: Reporter) -> dict[str, Any]:
    """`openssl speed` sign/verify per second for the sweep's key types (and X25519), measured once per sweep:
    how much of a handshake's cost is cryptography, and how much protocol and software."""
    path = sweep_dir / "crypto-floor.json"
    if path.is_file():
        cached: dict[str, Any] = json.loads(path.read_text())
        if set(key_types) <= set(cached.get("key_types", {})):
            return cached
    if shutil.which("openssl") is None:
        return {"available": False, "why": "openssl is not installed"}
    reporter.step("measuring the crypto floor (openssl speed)")
    algs = [OPENSSL_SPEED_NAMES[k] for k in sorted(key_types)] + ["ecdhx25519"]
    out = subprocess.run(["openssl", "speed", "-seconds", "1", "-elapsed", *algs], capture_output=True, text=True,
                         timeout=300)
    parsed = parse_openssl_speed(out.stdout)
    floor = {"available": True, "openssl": _openssl_version(), "key_types": {k: parsed[k] for k in key_types
                                                                              if k in parsed},
             "x25519": parsed.get("x25519")}
    files.write_json(path, floor)
    return floor


def _openssl_version() -> str:
    return subprocess.run(["openssl", "version"], capture_output=True, text=True, timeout=10).stdout.strip()


def cross_check(sweep: Sweep, sweep_dir: Path, cells: list[dict[str, Any]], reporter: Reporter) -> list[dict[str, Any]]:
    """For the first mTLS cell on each broker kind: `openssl s_time -new` (C, one client, full handshakes with a
    device certificate) against a broker with the same settings, beside that cell's steady tcp + tls p50."""
    if shutil.which("openssl") is None:
        return []
    out = []
    for kind in ("embedded", "mosquitto"):
        cell = next((c for c in cells if c["settings"]["auth"] == "mtls" and c["settings"]["broker"] == kind), None)
        if cell is None:
            continue
        reporter.step(f"cross-checking {cell['name']} with openssl s_time")
        s = cell["settings"]
        pki = cell_pki(sweep_dir, s["crl_size"])
        device = next(d.id for d in pki.devices(status="valid") if d.key_type == s["key_type"])
        opts = BrokerOptions(port=0, tls_version=s["tls_version"], session_tickets=s["session_resumption"])
        broker = start_broker(kind, pki.root, opts)
        try:
            rate = s_time(broker.host, broker.port, pki, device, s["tls_version"])
        finally:
            broker.stop()
        lat = cell["figures"]["latency_ms"]
        fleetsim_ms = (lat["tcp"]["p50"] or 0) + (lat["tls"]["p50"] or 0)
        out.append({"cell": cell["name"], "s_time_connections_per_s": round(rate, 1),
                    "s_time_ms_per_connection": round(1000 / rate, 3) if rate else None,
                    "fleetsim_tcp_tls_p50_ms": round(fleetsim_ms, 3)})
    return out


def s_time(host: str, port: int, pki: Pki, device: str, tls_version: str) -> float:
    lay = pki.layout
    cmd = ["openssl", "s_time", "-connect", f"{host}:{port}", "-cert", str(lay.device_cert(device)), "-key",
           str(lay.device_key(device)), "-CAfile", str(lay.ca_chain), "-new", "-time", str(S_TIME_SECONDS)]
    if tls_version in ("1.2", "1.3"):
        cmd.append("-tls1_2" if tls_version == "1.2" else "-tls1_3")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=S_TIME_SECONDS + 60)
    m = _S_TIME.search(r.stdout)
    if not m:
        raise FleetsimError(f"openssl s_time gave no count against {host}:{port}", (r.stderr or r.stdout)[-200:])
    return int(m.group(1)) / float(m.group(2))
