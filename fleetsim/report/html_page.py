"""`fleetsim report --html` and `fleetsim compare --html`: one self-contained HTML page (figures embedded as base64
PNG, inline CSS, no scripts, nothing fetched), every text from a user or a file escaped.

The seam for new kinds of results directories: ``PAGES`` maps the kind :func:`fleetsim.results.read.kind_of`
finds to the function that builds its page from the directory, so a rehearsal adds ``"rehearsal":
rehearsal_page`` (and a detector in ``read.KINDS``) and nothing else changes.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fleetsim.errors import FleetsimError
from fleetsim.report import plots, summary_tables
from fleetsim.report.run_results import (
    REHEARSAL_FIGURE,
    RUN_FIGURES,
    Cell,
    Run,
    load_run,
    load_sweep,
    sweep_overheads,
)
from fleetsim.results import compare, figure_data
from fleetsim.results.read import kind_of
from fleetsim.results.shape import Summary, phase_percentile
from fleetsim.words import count

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin-top: 0; } code, pre { font-family: ui-monospace, monospace; font-size: .9em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f4f4; }
td.text { text-align: left; } .better { color: #1a7f37; } .worse { color: #b00020; font-weight: 600; } .noise { color: #777; }
.alert { background: #fde7ea; border-left: 6px solid #b00020; padding: .6em 1em; margin: .6em 0; }
.warn { background: #fff6dd; border-left: 6px solid #c98a00; padding: .6em 1em; margin: .6em 0; }
figure { margin: 1em 0; } figure img { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .85em; } pre { background: #f7f7f7; padding: .8em; overflow-x: auto; }
"""


# -- building blocks -------------------------------------------------------------------------------------------
def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, text_cols: Iterable[int] = ()) -> str:
    """A table of escaped cells; a cell given as (text, css class) gets the class."""
    left = set(text_cols)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for j, cell in enumerate(row):
            text, cls = cell if isinstance(cell, tuple) else (cell, "")
            classes = " ".join(c for c in (cls, "text" if j in left else "") if c)
            cells.append(f"<td class=\"{classes}\">{esc(text)}</td>" if classes else f"<td>{esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(fig: Figure, alt: str, caption: str) -> str:
    """A figure as an embedded PNG, with a caption saying what it is computed from."""
    data = base64.b64encode(plots.png(fig)).decode("ascii")
    return (f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{esc(alt)}\">"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def banner(text: str, cls: str = "warn") -> str:
    return f"<div class=\"{cls}\">{esc(text)}</div>"


def _version() -> str:
    """fleetsim's version as installed (read from the package's metadata, not from ``fleetsim``: the API, which
    returns runs that draw these figures, is imported by fleetsim/__init__.py, so importing it here would make a
    circle)."""
    try:
        return metadata.version("fleetsim")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def page(title: str, body: Sequence[str]) -> str:
    made = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(body)
            + f"\n<footer class=\"sub\"><p>fleetsim {esc(_version())}, page made {esc(made)}</p></footer>"
            "\n</body></html>\n")


# -- one run ---------------------------------------------------------------------------------------------------
def run_banners(run: Run, label: str = "") -> list[str]:
    """The simulator's saturation first (it changes how every latency reads), then how the run ended."""
    s, who = run.summary.raw, (f"{label}: " if label else "")
    out = []
    if sat := figure_data.saturation(s):
        out.append(banner(f"{who}SIMULATOR SATURATED. {sat}", "alert"))
    for why, what in ((s.get("interrupted"), "ended early"), (s.get("stopped_early"), "stopped early")):
        if why:
            out.append(banner(f"{who}{what}: {why}", "alert"))
    out += [banner(who + str(w)) for w in s.get("warnings", []) if w != s.get("simulator", {}).get("warning")]
    return out


def overview(s: Summary) -> str:
    rows = [*summary_tables.fleet_rows(s), *summary_tables.message_rows(s),
            *summary_tables.machine_rows(s), ("wall time (s)", summary_tables.fmt(s.get("wall_s")))]
    return table(("what", "value"), rows, text_cols=(0, 1))


def phases(s: Summary) -> str:
    cols = summary_tables.COLUMNS
    return table(("phase (ms, connected attempts)", *cols),
                 ([p, *(summary_tables.fmt(d.get(c)) for c in cols)]
                  for p, d in s.get("phases_ms", {}).items()))


def outcomes(s: Summary) -> str:
    total = sum(s.get("outcomes", {}).values()) or 1
    return table(("outcome", "attempts", "share"),
                 ((k, f"{n:,}", f"{100 * n / total:.1f}%") for k, n in s.get("outcomes", {}).items()))


def events(s: Summary) -> str:
    rows = ((summary_tables.fmt(e.get("fired_at_s")), e.get("action"),
             ", ".join(f"{k} {summary_tables.fmt(v)}" for k, v in e.items()
                       if k not in ("at", "action", "fired_at_s")))
            for e in s.get("events", []))
    return table(("at (s)", "action", "what happened"), rows, text_cols=(1, 2))


def run_figures(runs: Sequence[Run], labels: Sequence[str]) -> list[str]:
    """The figures of one run, or of several overlaid (failures side by side), each captioned with its source
    (the figures themselves: fleetsim.report.run_results.RUN_FIGURES, also ``run.figures()``)."""
    return [figure(f.draw(runs, labels), f.alt, f.caption) for f in RUN_FIGURES]


def _workers(s: Summary) -> str:
    workers = s.get("simulator", {}).get("workers")
    return count(workers, "worker") if isinstance(workers, int) else "? workers"


def run_page(run: Run) -> str:
    s = run.summary.raw
    sub = (f"{count(s.get('devices', 0), 'device')}, {summary_tables.fmt(s.get('duration_s'))} s, broker "
           f"{s.get('broker', {}).get('kind', '?')}, {_workers(s)}; "
           f"started {run.meta.get('started_utc', '?')}; results {run.path}")
    body = [f"<h1>fleetsim run: {esc(run.name)}</h1>", f"<p class=\"sub\">{esc(sub)}</p>", *run_banners(run),
            "<h2>Summary</h2>", overview(s), "<h2>Figures</h2>", *run_figures([run], [run.name]),
            "<h2>Connection phases</h2>", phases(s), "<h2>Attempts by outcome</h2>", outcomes(s)]
    if s.get("faults"):
        body += ["<h2>Faulty identities</h2>",
                 table(("fault", "ended as"), ((f, ", ".join(f"{k} {v:,}" for k, v in c.items()))
                                              for f, c in s["faults"].items()), text_cols=(1,))]
    if s.get("events"):
        body += ["<h2>Timed events</h2>", events(s)]
    if s.get("revocation"):
        body += rehearsal_section(run)
    if s.get("thresholds"):
        body += ["<h2>--fail-on</h2>", table(("rule", "measured", "verdict"), (
            (r["rule"], "-" if r["value"] is None else f"{r['value']:,.3f}{r['unit']}",
             ("BREACHED", "worse") if r["breached"] else ("ok", "better")) for r in s["thresholds"]))]
    body += scenario_block(run)
    return page(f"fleetsim run: {run.name}", body)


def rehearsal_section(run: Run) -> list[str]:
    """A rehearsal's timeline (healthy and revoked devices connected, the revoked lot's refusals, its steps) and
    each step's time from the decision (summary_tables.revocation_rows, the same words as the terminal)."""
    rows = summary_tables.revocation_rows(run.summary.raw.get("revocation", {}))
    f = REHEARSAL_FIGURE
    return ["<h2>Revocation rehearsal</h2>", figure(f.draw([run], [run.name]), f.alt, f.caption),
            table(("step", "value"), rows, text_cols=(1,))]


def scenario_block(run: Run, label: str = "") -> list[str]:
    if not run.scenario_toml:
        return []
    return [f"<details><summary>Scenario as run{esc(' (' + label + ')' if label else '')}</summary>"
            f"<pre>{esc(run.scenario_toml)}</pre></details>"]


# -- several runs ----------------------------------------------------------------------------------------------
def difference_table(rows: Sequence[compare.Row], names: Sequence[str]) -> str:
    headers = ["figure", names[0]] + [h for n in names[1:] for h in (n, f"{n.split()[0]} vs {names[0].split()[0]}")]
    out = []
    for r in rows:
        cells: list[Any] = [r.label, compare.fmt(r.values[0], r.unit, flag=r.is_flag)]
        for i in range(1, len(names)):
            cells += [compare.fmt(r.values[i], r.unit, flag=r.is_flag), (compare.fmt_delta(r, i), r.verdict(i))]
        out.append(cells)
    return table(headers, out)


def compare_page(runs: Sequence[Run]) -> str:
    if len(runs) < 2:
        raise FleetsimError("compare needs two or more runs", "pass RUN_A RUN_B [...]")
    names = compare.labels([r.name for r in runs])
    summaries = [r.summary.raw for r in runs]
    settings = compare.setting_rows([r.settings for r in runs])
    body = [f"<h1>fleetsim compare: {esc(' vs '.join(names))}</h1>",
            "<p class=\"sub\">Differences are from the first run (the baseline); green is better, red worse; "
            "≈ in grey: inside the runs' own spread (neither).</p>",
            table(("run", "results", "started", "devices", "duration (s)"),
                  ((n, str(r.path), r.meta.get("started_utc", "?"), f"{r.summary.raw.get('devices', 0):,}",
                    summary_tables.fmt(r.summary.raw.get("duration_s")))
                   for n, r in zip(names, runs, strict=True)),
                  text_cols=(1, 2)),
            *(b for n, r in zip(names, runs, strict=True) for b in run_banners(r, n)),
            "<h2>Headline figures</h2>",
            difference_table(compare.metric_rows(summaries, [r.attempt_arrays for r in runs]), names),
            "<h2>Attempts by outcome (share of attempts)</h2>",
            difference_table(compare.outcome_rows(summaries), names),
            "<h2>Scenario settings that differ</h2>",
            table(("setting", *names), ([k, *v] for k, v in settings), text_cols=range(len(names) + 1))
            if settings else "<p>None: the scenarios are the same.</p>",
            "<h2>Figures</h2>", *run_figures(runs, names)]
    for n, r in zip(names, runs, strict=True):
        body += scenario_block(r, n)
    return page(f"fleetsim compare: {' vs '.join(names)}", body)


# -- a sweep ---------------------------------------------------------------------------------------------------
def sweep_figures(cells: Sequence[Cell]) -> list[str]:
    """One overhead figure per setting the sweep varied."""
    return [figure(plots.overhead_figure(o), f"overhead by {o.setting}",
                   f"From each cell's summary.json: broker CPU per handshake over the storm window and p99 of total "
                   f"connect time, cells grouped by {o.setting} ({count(len(o.values), 'value')}).")
            for o in sweep_overheads(cells)]


def sweep_page(path: Path, cells: Sequence[Cell]) -> str:
    keys = list(dict.fromkeys(k for c in cells for k in c.settings))
    rows = [[c.name, *(compare.show(compare.flatten(c.settings).get(k, "-")) for k in keys),
             summary_tables.fmt(c.summary.get("broker", {}).get("cpu_ms_per_handshake")),
             summary_tables.fmt(phase_percentile(c.summary, "total", "p99")),
             "yes" if c.summary.get("simulator", {}).get("saturated") else "no"] for c in cells]
    saturated = [c.name for c in cells if c.summary.get("simulator", {}).get("saturated")]
    body = [f"<h1>fleetsim sweep: {esc(path.name)}</h1>",
            f"<p class=\"sub\">{count(len(cells), 'cell')}; results {esc(path)}</p>"]
    if saturated:
        body.append(banner(f"SIMULATOR SATURATED in {count(len(saturated), 'cell')} "
                           f"({', '.join(saturated)}): their latencies include the simulator's own wait",
                           "alert"))
    body += ["<h2>Cells</h2>", table(("cell", *keys, "CPU/handshake (ms)", "p99 total (ms)", "saturated"), rows,
                                     text_cols=range(len(keys) + 1)),
             "<h2>Overhead by setting</h2>", *(sweep_figures(cells) or ["<p>No setting varies.</p>"])]
    return page(f"fleetsim sweep: {path.name}", body)


# -- the seam: a page for whatever a directory holds -----------------------------------------------------------
PAGES: dict[str, Callable[[Path], str]] = {
    "run": lambda p: run_page(load_run(p)),
    "sweep": lambda p: sweep_page(p, load_sweep(p)),
}


def page_for(path: Path) -> str:
    """The page for a results directory, chosen by what it holds (see ``read.KINDS``)."""
    kind = kind_of(path)
    if kind not in PAGES:
        raise FleetsimError(f"{path} is a {kind}: its HTML report is not there yet")
    return PAGES[kind](path)


def check_writable(out: Path) -> None:
    """Fail before the figures are drawn, not after."""
    if out.is_dir():
        raise FleetsimError(f"--html {out} is a directory", "pass a file name, e.g. report.html")
    if not out.parent.is_dir():
        raise FleetsimError(f"cannot write {out}: no directory {out.parent}", "create it or pass another --html path")


def write(out: Path, text: str) -> None:
    check_writable(out)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise FleetsimError(f"cannot write {out}: {exc.strerror or exc}", "pass a writable --html path") from None
