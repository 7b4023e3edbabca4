"""`fleetsim rehearse SCENARIO`: a mass revocation, end to end, with its own report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from fleetsim.cli.console import tables
from fleetsim.cli.live import ConsoleReporter
from fleetsim.errors import ScenarioError
from fleetsim.report import summary_tables
from fleetsim.scenario.toml_writer import dump


def rehearse(
    scenario: Path = typer.Argument(..., help="A scenario with a [revocation] section (see scenarios/rehearsal.toml)."),
    pki: Path = typer.Option(Path("pki"), "--pki", help="PKI directory; created on first use, reused after."),
    broker: str | None = typer.Option(None, "--broker", help="embedded, mosquitto or HOST:PORT (overrides the scenario)."),
    strategy: str | None = typer.Option(None, "--strategy", help="How the broker is made to enforce the CRL "
                                        "(overrides [revocation] strategy): reload, poll, sighup, restart, kick, "
                                        "none, hook."),
    out: Path = typer.Option(Path("results"), "--out", help="Where the run's results directory goes."),
    devices: int | None = typer.Option(None, "--devices", min=1, help="Fleet size (groups scaled to it)."),
    duration: float | None = typer.Option(None, "--duration", min=1, help="Run length in seconds (a try at a "
                                          "smaller scale: steps it no longer reaches are not taken)."),
) -> None:
    """Revoke a batch of devices mid-run, make the broker enforce it, re-enrol them; say how long each step took."""
    from fleetsim import scenario as scenario_mod
    from fleetsim.cli.run import exit_code
    from fleetsim.runner.orchestrate import run_scenario

    sc = scenario_mod.load(scenario).with_overrides(devices=devices, duration=duration, broker=broker)
    if sc.revocation is None:
        raise ScenarioError(f"{scenario}: no [revocation] section", "add one (see scenarios/rehearsal.toml), "
                                                                    "or use fleetsim run")
    if strategy is not None:
        data = sc.to_dict()
        data["revocation"]["strategy"] = strategy
        sc = scenario_mod.parse(dump(data), f"{scenario} (with --strategy)")
    console = tables()
    run_dir, summary = run_scenario(sc, pki=pki, out_dir=out, reporter=ConsoleReporter(console))
    summary_tables.print_summary(summary, console)
    console.print(Text(f"results: {run_dir}"))
    raise typer.Exit(exit_code(summary))


def register(app: typer.Typer) -> None:
    app.command("rehearse")(rehearse)
