"""`fleetsim run SCENARIO` and `fleetsim report RESULTS`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from fleetsim import report, results
from fleetsim.errors import FleetsimError


def run(
    scenario: Path = typer.Argument(..., help="Scenario file (see scenarios/)."),
    pki: Path = typer.Option(Path("pki"), "--pki", help="PKI directory; created on first use, reused after."),
    broker: str | None = typer.Option(None, "--broker", help="embedded, mosquitto or HOST:PORT (overrides the scenario)."),
    out: Path = typer.Option(Path("results"), "--out", help="Where the run's results directory goes."),
    devices: int | None = typer.Option(None, "--devices", min=1, help="Fleet size (groups scaled to it)."),
    duration: float | None = typer.Option(None, "--duration", min=1, help="Run length in seconds."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Worker processes (default: one per core)."),
    isolate_broker: bool = typer.Option(False, "--isolate-broker",
                                        help="Give the broker fleetsim starts a core of its own, the workers the "
                                             "others (handshake timing on one machine)."),
) -> None:
    """Run a fleet against a broker that requires client certificates, then print the summary."""
    from fleetsim import scenario as scenario_mod
    from fleetsim.runner import run_scenario

    console = Console()
    sc = scenario_mod.load(scenario).with_overrides(devices=devices, duration=duration, workers=workers,
                                                     broker=broker, isolate=isolate_broker or None)
    run_dir, summary = run_scenario(sc, pki_dir=pki, out_dir=out, console=console)
    report.print_summary(summary, console)
    console.print(f"results: {run_dir}")
    if summary.get("interrupted"):
        raise typer.Exit(130 if "Ctrl-C" in summary["interrupted"] else 1)


def report_cmd(run_dir: Path = typer.Argument(..., help="A results directory written by `fleetsim run`.")) -> None:
    """Print a finished run's summary as tables."""
    if not run_dir.is_dir():
        raise FleetsimError(f"no results directory {run_dir}", "pass a directory written by `fleetsim run`")
    report.print_summary(results.read_summary(run_dir))


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("report")(report_cmd)
