"""`fleetsim report RESULTS`: a finished run's summary again, as tables or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from fleetsim import report, results
from fleetsim.errors import FleetsimError


def report_cmd(run_dir: Path = typer.Argument(..., help="A results directory written by `fleetsim run`."),
               as_json: bool = typer.Option(False, "--json", help="Print summary.json instead of tables.")) -> None:
    """Print a finished run's summary as tables (or as JSON)."""
    if not run_dir.is_dir():
        raise FleetsimError(f"no results directory {run_dir}", "pass a directory written by `fleetsim run`")
    summary = results.read_summary(run_dir)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    report.print_summary(summary, Console(markup=False, highlight=False))


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
