"""Turn a run's summary into tables a person reads at the end of a run or with `fleetsim report`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group
from rich.table import Table

COLUMNS = ("n", "p50", "p90", "p99", "p99.9", "max")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def phases_table(phases: Mapping[str, Mapping[str, Any]]) -> Table:
    t = Table(title="Connection phases (ms, connected attempts)", title_justify="left")
    t.add_column("phase")
    for c in COLUMNS:
        t.add_column(c, justify="right")
    for phase, dist in phases.items():
        t.add_row(phase, *(_fmt(dist.get(c)) for c in COLUMNS))
    return t


def outcomes_table(outcomes: Mapping[str, int]) -> Table:
    t = Table(title="Attempts by outcome", title_justify="left")
    t.add_column("outcome")
    t.add_column("attempts", justify="right")
    total = sum(outcomes.values()) or 1
    t.add_column("share", justify="right")
    for name, n in outcomes.items():
        t.add_row(name, _fmt(n), f"{100 * n / total:.1f}%")
    return t


def overview_table(s: Mapping[str, Any]) -> Table:
    t = Table(title=f"Run summary: {s.get('scenario', '')}", title_justify="left", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    m = s.get("messages", {})
    rows = [
        ("devices connected", f"{s.get('devices_connected', 0):,} / {s.get('devices', 0):,}"),
        ("connection attempts", _fmt(s.get("attempts"))),
        ("connects/s (peak, mean)", f"{_fmt(s['connect_rate']['peak_per_s'])}, "
                                    f"{_fmt(s['connect_rate']['mean_per_s'])}" if "connect_rate" in s else "-"),
        ("messages published", _fmt(m.get("published"))),
        ("messages acknowledged", _fmt(m.get("acknowledged"))),
        ("messages lost", _fmt(m.get("lost"))),
        ("ack latency p50 / p99 (ms)", f"{_fmt(m.get('ack_ms', {}).get('p50'))} / {_fmt(m.get('ack_ms', {}).get('p99'))}"),
        ("wall time (s)", _fmt(s.get("wall_s"))),
    ]
    broker = s.get("broker") or {}
    if broker.get("cpu_seconds") is not None:
        rows.append(("broker CPU (s)", _fmt(broker["cpu_seconds"])))
    if broker.get("cpu_ms_per_connect") is not None:
        rows.append(("broker CPU per connect (ms)", _fmt(broker["cpu_ms_per_connect"])))
    if s.get("interrupted"):
        rows.append(("ended early", str(s["interrupted"])))
    for what, value in rows:
        t.add_row(what, value)
    return t


def events_table(events: list[Mapping[str, Any]]) -> Table:
    t = Table(title="Timed events (each step's time)", title_justify="left")
    for c in ("at (s)", "action", "what happened"):
        t.add_column(c)
    for e in events:
        steps = ", ".join(f"{k} {_fmt(v)}" for k, v in e.items() if k not in ("at", "action", "fired_at_s"))
        t.add_row(_fmt(e.get("fired_at_s")), str(e.get("action")), steps)
    return t


def render(summary: Mapping[str, Any]) -> Group:
    parts: list[Any] = [overview_table(summary)]
    if summary.get("phases_ms"):
        parts.append(phases_table(summary["phases_ms"]))
    if summary.get("outcomes"):
        parts.append(outcomes_table(summary["outcomes"]))
    if summary.get("events"):
        parts.append(events_table(summary["events"]))
    return Group(*parts)


def print_summary(summary: Mapping[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(render(summary))
