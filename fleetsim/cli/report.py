"""`fleetsim report RESULTS [--html FILE]` and `fleetsim compare RUN_A RUN_B [...] [--html FILE]`: a finished run's
summary again (tables, JSON or one HTML page), and what differs between runs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fleetsim.cli.console import tables
from fleetsim.errors import FleetsimError
from fleetsim.report import summary_tables
from fleetsim.report.run_results import Run, load_run
from fleetsim.results import compare, files, read

VERDICT_STYLE = {"better": "green", "worse": "bold red", "noise": "dim", "": ""}


def _console() -> Console:
    return tables()


def _wrote(out: Path, text: str, what: str) -> None:
    typer.echo(f"{what}: {out} ({len(text) / 1e6:,.1f} MB)")


def report_cmd(run_dir: Path = typer.Argument(..., help="A results directory written by `fleetsim run`."),
               as_json: bool = typer.Option(False, "--json", help="Print summary.json instead of tables."),
               html_out: Path | None = typer.Option(None, "--html", metavar="FILE",
                                                    help="Write one self-contained HTML page with the figures.")
               ) -> None:
    """Print a finished run's summary as tables (or as JSON), or write its HTML report."""
    kind = read.kind_of(run_dir)
    if html_out is not None:
        from fleetsim.report import html_page  # matplotlib only when a page is made

        html_page.check_writable(html_out)
        text = html_page.page_for(run_dir)
        html_page.write(html_out, text)
        _wrote(html_out, text, "report")
        return
    if kind != "run":
        raise FleetsimError(f"{run_dir} is a {kind}", "pass --html FILE for its report")
    summary = files.read_summary(run_dir)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    summary_tables.print_summary(summary, _console())


def _difference_table(title: str, rows: Sequence[compare.Row], names: Sequence[str]) -> Table:
    t = Table(title=Text(title), title_justify="left")
    t.add_column(Text("figure"))
    t.add_column(Text(names[0]), justify="right")
    for n in names[1:]:
        t.add_column(Text(n), justify="right")
        t.add_column(Text(f"{n.split()[0]} vs {names[0].split()[0]}"), justify="right")
    for r in rows:
        cells = [Text(r.label), Text(compare.fmt(r.values[0], r.unit, flag=r.is_flag))]
        for i in range(1, len(names)):
            cells += [Text(compare.fmt(r.values[i], r.unit, flag=r.is_flag)),
                      Text(compare.fmt_delta(r, i), VERDICT_STYLE[r.verdict(i)])]
        t.add_row(*cells)
    return t


def _settings_table(rows: Sequence[tuple[str, list[str]]], names: Sequence[str]) -> Table | Text:
    if not rows:
        return Text("Scenario settings: the same in every run.")
    t = Table(title=Text("Scenario settings that differ"), title_justify="left")
    for h in ("setting", *names):
        t.add_column(Text(h))
    for key, values in rows:
        t.add_row(Text(key), *(Text(v) for v in values))
    return t


def print_comparison(runs: Sequence[Run], console: Console) -> None:
    names = compare.labels([r.name for r in runs])
    summaries = [r.summary.raw for r in runs]
    for n, s, r in zip(names, summaries, runs, strict=True):
        console.print(Text(f"{n}: {r.path}"))
        if (sim := s.get("simulator", {})).get("saturated"):
            console.print(Text.assemble(("warning: ", "bold yellow"), f"{n}: SIMULATOR SATURATED: "
                                        + str(sim.get("warning", ""))))
    console.print(_difference_table("Headline figures (differences from the first run)",
                                    compare.metric_rows(summaries, [r.attempt_arrays for r in runs]), names))
    console.print(_difference_table("Attempts by outcome (share of attempts)", compare.outcome_rows(summaries), names))
    console.print(_settings_table(compare.setting_rows([r.settings for r in runs]), names))


def compare_cmd(run_dirs: list[Path] = typer.Argument(..., metavar="RUN_A RUN_B [...]",
                                                      help="Two or more results directories; the first is the baseline."),
                html_out: Path | None = typer.Option(None, "--html", metavar="FILE",
                                                     help="Also write the comparison as one HTML page with the figures."),
                as_json: bool = typer.Option(False, "--json", help="Print the differences as JSON.")) -> None:
    """Compare runs: headline figures side by side with their differences from the first run."""
    if len(run_dirs) < 2:
        raise FleetsimError(f"compare needs two or more runs, got {len(run_dirs)}", "pass RUN_A RUN_B [...]")
    if html_out is not None:
        from fleetsim.report import html_page

        html_page.check_writable(html_out)
    runs = [load_run(p) for p in run_dirs]
    if as_json:
        typer.echo(json.dumps(comparison_json(runs), indent=2))
    else:
        print_comparison(runs, _console())
    if html_out is not None:
        text = html_page.compare_page(runs)
        html_page.write(html_out, text)
        _wrote(html_out, text, "comparison")


def comparison_json(runs: Sequence[Run]) -> dict[str, object]:
    summaries = [r.summary.raw for r in runs]
    return {
        "runs": [str(r.path) for r in runs],
        "figures": [{"figure": r.label, "unit": r.unit, "values": r.values,
                     "delta": [r.delta(i) for i in range(1, len(runs))],
                     "verdict": [r.verdict(i) for i in range(1, len(runs))]}
                    for r in [*compare.metric_rows(summaries, [r.attempt_arrays for r in runs]),
                              *compare.outcome_rows(summaries)]],
        "settings": dict(compare.setting_rows([r.settings for r in runs])),
    }


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
    app.command("compare")(compare_cmd)
