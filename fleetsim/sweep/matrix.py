"""What authentication costs: the same fleet run across a matrix of settings, each cell measured the same way.

A sweep file (``scenarios/sweeps/*.toml``) names the fleet, how each cell is measured, and the cells: crossed
from a ``[matrix]`` (``mode = "cross"``), varied one setting at a time from the first value of each
(``mode = "one-at-a-time"``), and/or listed as ``[[cells]]``. Settings: ``auth`` (none, password, tls, mtls),
``key_type``, ``tls_version`` (1.2, 1.3), ``session_resumption``, ``crl_size`` (entries already on the CRL) and
``broker`` (embedded, mosquitto).

Each cell runs twice, both through the runner a user's ``fleetsim run`` uses: a burst (every device at once:
connects per second at saturation, broker and device CPU per handshake over the storm's window) and a steady,
low rate (per-phase latency, bytes on the wire per handshake, measured by the kernel). A cell whose simulator
was saturated is flagged, not compared. This module is pure (parsing, the matrix, the figures); running it is
:func:`fleetsim.sweep.run_cells.run_sweep`.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fleetsim.errors import ScenarioError
from fleetsim.names import NAME_HINT, is_name
from fleetsim.pki import KeyType
from fleetsim.results.summary import up_window
from fleetsim.scenario import AUTHS, Arrival, Churn, Reconnect, Scenario
from fleetsim.scenario.validate import validated

KEY_TYPES = tuple(k.value for k in KeyType if k is not KeyType.RSA_1024 and not k.post_quantum)  # the system stack's
DIMENSIONS: dict[str, tuple[Any, ...]] = {
    "auth": AUTHS,
    "key_type": KEY_TYPES,
    "tls_version": ("1.2", "1.3"),
    "session_resumption": (False, True),
    "broker": ("embedded", "mosquitto"),
}
MAX_CRL_SIZE = 200_000
DEFAULTS: dict[str, Any] = {"auth": "mtls", "key_type": "ecdsa-p256", "tls_version": "1.3",
                            "session_resumption": False, "crl_size": 0, "broker": "embedded"}
MAX_CELLS = 200


@dataclass(frozen=True)
class Measure:
    """How every cell is measured."""

    burst_devices: int = 200
    steady_devices: int = 40
    steady_rate: float = 10.0
    steady_duration: float = 10.0


@dataclass(frozen=True)
class Cell:
    name: str
    settings: dict[str, Any]


@dataclass(frozen=True)
class Sweep:
    name: str
    base: Scenario  # the fleet's model, site, MQTT settings; devices, arrival and duration are the sweep's
    cells: tuple[Cell, ...]
    measure: Measure = field(default_factory=Measure)
    description: str = ""
    source: str = "<sweep>"

    def with_measure(self, **changes: Any) -> Sweep:
        """The same cells measured otherwise (e.g. smaller, to try a sweep), checked like the file's [measure]."""
        return replace(self, measure=_measure(f"{self.source} (with measure changes)",
                                              {**vars(self.measure), **changes}))


def load(path: str | Path) -> Sweep:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read the sweep file ({exc.strerror or exc})",
                            "check the path; the shipped sweeps are scenarios/sweeps/*.toml") from None
    return parse(text, str(p), base_dir=p.parent)


def parse(text: str, source: str = "<sweep>", *, base_dir: Path | None = None) -> Sweep:
    """Validate a sweep file's text; every mistake is one line naming the file and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: invalid TOML: {exc}", "fix the syntax there (see https://toml.io)") from None
    _known(source, data, ("name", "description", "base", "fleet", "mqtt", "measure", "matrix", "cells"), "[top level]")
    base = _base(source, data, base_dir)
    cells = _cells(source, data)
    name = data.get("name", Path(source).stem)
    if not is_name(name):
        raise ScenarioError(f"{source}: name: {name!r} is not a valid name", NAME_HINT)
    return Sweep(name=name, base=base, cells=cells, measure=_measure(source, data.get("measure", {})),
                 description=str(data.get("description", "")), source=source)


def _known(source: str, data: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise ScenarioError(f"{source}: unknown key {key!r} in {where}", "allowed: " + ", ".join(allowed))


def _base(source: str, data: Mapping[str, Any], base_dir: Path | None) -> Scenario:
    """The fleet every cell runs: a scenario file (``base = "..."``) or a ``[fleet]`` table (one model)."""
    if "base" in data:
        from fleetsim.scenario import load as load_scenario

        path = Path(data["base"])
        return load_scenario(path if path.is_absolute() or base_dir is None else base_dir / path)
    fleet = dict(data.get("fleet", {"model": "pulse-oximeter"}))
    fleet.setdefault("count", 1)
    scenario = {"name": "cell", "fleet": [fleet], "mqtt": data.get("mqtt", {})}
    try:
        return Scenario(**validated(scenario, source))
    except ScenarioError:
        raise
    except TypeError as exc:
        raise ScenarioError(f"{source}: [fleet]: {exc}", "see scenarios/sweeps/small.toml") from None


def _measure(source: str, t: Any) -> Measure:
    if not isinstance(t, dict):
        raise ScenarioError(f"{source}: measure: must be a table", "write it as a [measure] section")
    _known(source, t, ("burst_devices", "steady_devices", "steady_rate", "steady_duration"), "[measure]")
    m = Measure(**t)
    for key, low, high in (("burst_devices", 1, 5000), ("steady_devices", 1, 5000), ("steady_rate", 0.1, 1000),
                           ("steady_duration", 1, 600)):
        value = getattr(m, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise ScenarioError(f"{source}: measure.{key}: must be a number from {low} to {high}, got {value!r}",
                                f"set measure.{key} within those bounds")
    return m


def _values(source: str, key: str, values: Any) -> list[Any]:
    if key not in (*DIMENSIONS, "crl_size"):
        raise ScenarioError(f"{source}: unknown setting {key!r}", "settings: " + ", ".join([*DIMENSIONS, "crl_size"]))
    values = values if isinstance(values, list) else [values]
    if not values:
        raise ScenarioError(f"{source}: {key}: no values", f"give at least one, e.g. {key} = {DEFAULTS[key]!r}")
    for v in values:
        if key == "crl_size":
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_CRL_SIZE:
                raise ScenarioError(f"{source}: crl_size: {v!r} is not a whole number from 0 to {MAX_CRL_SIZE:,}",
                                    "e.g. crl_size = [0, 1000, 10000]")
        elif v not in DIMENSIONS[key]:
            raise ScenarioError(f"{source}: {key}: unknown value {v!r}",
                                "choose from " + ", ".join(str(c).lower() for c in DIMENSIONS[key]))
    return values


def _cells(source: str, data: Mapping[str, Any]) -> tuple[Cell, ...]:
    combos: list[dict[str, Any]] = []
    matrix = dict(data.get("matrix", {}))
    mode = matrix.pop("mode", "cross")
    if mode not in ("cross", "one-at-a-time"):
        raise ScenarioError(f"{source}: matrix.mode: unknown value {mode!r}", 'use "cross" or "one-at-a-time"')
    axes = {k: _values(source, k, v) for k, v in matrix.items()}
    if axes and mode == "cross":
        combos += [dict(zip(axes, vs, strict=True)) for vs in itertools.product(*axes.values())]
    elif axes:
        baseline = {k: v[0] for k, v in axes.items()}
        combos.append(baseline)
        combos += [{**baseline, k: v} for k, vs in axes.items() for v in vs[1:]]
    listed = data.get("cells", [])
    if not isinstance(listed, list):
        raise ScenarioError(f"{source}: cells: must be [[cells]] tables", "write each cell as [[cells]]")
    for i, c in enumerate(listed):
        if not isinstance(c, dict):
            raise ScenarioError(f"{source}: cells[{i}]: must be a table", "write it as [[cells]]")
        combos.append({k: _values(source, k, v)[0] for k, v in c.items()})
    cells: dict[str, Cell] = {}
    for combo in combos:
        settings = {**DEFAULTS, **combo}
        cells.setdefault(cell_name(settings), Cell(cell_name(settings), settings))
    if not cells:
        raise ScenarioError(f"{source}: no cells", "add a [matrix] (e.g. auth = [\"mtls\", \"tls\"]) or [[cells]]")
    if len(cells) > MAX_CELLS:
        raise ScenarioError(f"{source}: {len(cells)} cells, more than {MAX_CELLS}",
                            'use mode = "one-at-a-time" or fewer values')
    return tuple(cells.values())


def cell_name(settings: Mapping[str, Any]) -> str:
    """A stable directory name for a cell: its settings in a fixed order."""
    resume = "resume" if settings["session_resumption"] else "full"
    return (f"{settings['broker']}-{settings['auth']}-{settings['key_type']}-tls{settings['tls_version']}-"
            f"{resume}-crl{settings['crl_size']}")


# -- a cell's two runs -------------------------------------------------------------------------------------------
def cell_scenarios(sweep: Sweep, cell: Cell) -> tuple[Scenario, Scenario]:
    """(burst, steady): the base fleet with the cell's settings, at saturation and at a low steady rate.

    The group's lot carries the key type, so cells of different key types never ask one PKI for the same id.
    With session resumption the steady devices each drop once (churn) so their second handshake can resume.
    """
    s, m = cell.settings, sweep.measure
    group = sweep.base.fleet[0]
    groups = [{"model": group.model, "site": group.site, "lot": f"sweep-{s['key_type']}", "key_type": s["key_type"],
               "count": 1}]
    broker = {"target": s["broker"], "auth": s["auth"], "tls_version": s["tls_version"],
              "session_resumption": s["session_resumption"]}
    base = sweep.base.replace(name=f"{sweep.name}-{cell.name}", broker=broker, fleet=groups, events=(), faults={},
                              reconnect=Reconnect(initial=0.2, cap=2.0), workers=0)
    burst = base.replace(name=base.name + "-burst", arrival=Arrival("burst", 100.0),
                         duration=float(max(8.0, m.burst_devices / 80 + 4)), connect_timeout=30.0)
    burst = burst.with_overrides(devices=m.burst_devices)
    churn = Churn(rate=2.0 / m.steady_duration, downtime=(0.2, 0.5)) if s["session_resumption"] else Churn()
    steady = base.replace(name=base.name + "-steady", arrival=Arrival("linear", float(m.steady_rate)),
                          duration=float(m.steady_duration + m.steady_devices / m.steady_rate), churn=churn)
    return burst, steady.with_overrides(devices=m.steady_devices)


def figures(burst: Mapping[str, Any], steady: Mapping[str, Any], burst_series: Mapping[str, Sequence[Any]],
            burst_attempts: Mapping[str, Sequence[Any]], steady_attempts: Mapping[str, Sequence[Any]]
            ) -> dict[str, Any]:
    """One cell's comparable figures, from its two runs' summaries and rows."""
    n, lo, hi = up_window(burst_attempts, float(burst["t0"]))
    cpu = np.asarray(burst_series.get("sim_cpu_s", []), dtype=float)
    worker_cpu = None
    if n and lo is not None and hi is not None and cpu.size:
        seconds = np.arange(cpu.size)
        worker_cpu = float(cpu[(seconds >= np.floor(lo)) & (seconds < np.ceil(hi))].sum()) * 1000 / n
    tls_cpu = [x for x, o in zip(steady_attempts.get("tls_cpu_ms", []), steady_attempts.get("outcome", []),
                                 strict=False) if x is not None and o == "connected"]
    broker = burst.get("broker", {})
    out: dict[str, Any] = {
        "connects_per_s": burst.get("fleet_up", {}).get("rate_per_s"),
        "broker_cpu_ms_per_handshake": broker.get("cpu_ms_per_handshake"),
        "device_tls_cpu_ms": round(float(np.median(tls_cpu)), 3) if tls_cpu else None,  # OpenSSL's handshake work
        "worker_cpu_ms_per_connect": round(worker_cpu, 3) if worker_cpu is not None else None,  # all of it
        "burst_failures": burst.get("attempts", 0) - burst.get("outcomes", {}).get("connected", 0),
        "steady_failures": steady.get("attempts", 0) - steady.get("outcomes", {}).get("connected", 0),
        "saturated": bool(burst.get("simulator", {}).get("saturated") or steady.get("simulator", {}).get("saturated")),
        "latency_ms": _latency(steady_attempts, resumed=False),
    }
    resumed = _latency(steady_attempts, resumed=True)
    if resumed["total"]["n"]:
        out["resumed_latency_ms"] = resumed
    out.update(_wire(steady_attempts))
    return out


def _latency(attempts: Mapping[str, Sequence[Any]], *, resumed: bool) -> dict[str, dict[str, Any]]:
    from fleetsim.results.summary import distribution

    ok = np.asarray(attempts.get("outcome", []), dtype=object) == "connected"
    was = np.asarray([bool(x) for x in attempts.get("resumed", [None] * ok.size)])
    pick = ok & (was == resumed)
    return {phase: {k: v for k, v in distribution(np.asarray(attempts[f"{phase}_ms"], dtype=float)[pick]).items()
                    if k in ("n", "p50", "p90", "p99")}
            for phase in ("tcp", "tls", "mqtt", "total") if f"{phase}_ms" in attempts}


def _wire(attempts: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """Median TLS handshake bytes each way, over full (not resumed) handshakes."""
    tx = [t for t, r in zip(attempts.get("tls_tx_bytes", []), attempts.get("resumed", []), strict=False)
          if t is not None and not r]
    rx = [t for t, r in zip(attempts.get("tls_rx_bytes", []), attempts.get("resumed", []), strict=False)
          if t is not None and not r]
    if not tx or not rx:
        return {}
    return {"handshake_bytes_sent": int(np.median(tx)), "handshake_bytes_received": int(np.median(rx))}


# -- the crypto floor --------------------------------------------------------------------------------------------
_SPEED_LINE = re.compile(r"^\s*(?:rsa (?P<rsa>\d+) bits|\d+ bits (?P<alg>ecdsa|EdDSA) \((?P<curve>\w+)\))"
                         r".*?(?P<a>[\d.]+)\s+(?P<b>[\d.]+)\s*$")  # ... sign/s verify/s
_ECDH_LINE = re.compile(r"^\s*\d+ bits ecdh \((?P<curve>\w+)\)\s+[\d.]+s\s+(?P<ops>[\d.]+)\s*$")  # ... op/s
OPENSSL_SPEED_NAMES = {"ecdsa-p256": "ecdsap256", "ecdsa-p384": "ecdsap384", "ed25519": "ed25519",
                       "rsa-2048": "rsa2048", "rsa-3072": "rsa3072", "rsa-4096": "rsa4096"}
_CURVES = {"nistp256": "ecdsa-p256", "nistp384": "ecdsa-p384", "Ed25519": "ed25519", "X25519": "x25519"}


def parse_openssl_speed(text: str) -> dict[str, dict[str, float]]:
    """`openssl speed` output -> {key type: {"sign_per_s", "verify_per_s"}}, and x25519's key exchanges/s."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if (e := _ECDH_LINE.match(line)) and e["curve"] in _CURVES:
            out[_CURVES[e["curve"]]] = {"exchange_per_s": float(e["ops"])}
        m = _SPEED_LINE.match(line)
        if not m:
            continue
        if m["rsa"]:
            out[f"rsa-{m['rsa']}"] = {"sign_per_s": float(m["a"]), "verify_per_s": float(m["b"])}
        elif m["curve"] in _CURVES:
            out[_CURVES[m["curve"]]] = {"sign_per_s": float(m["a"]), "verify_per_s": float(m["b"])}
    return out
