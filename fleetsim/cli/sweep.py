"""`fleetsim sweep SWEEP.toml`: the same fleet across a matrix of authentication settings, then a comparison."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from fleetsim.cli.console import tables
from fleetsim.cli.live import ConsoleReporter
from fleetsim.report import summary_tables
from fleetsim.words import count


def sweep(
    sweep_file: Path = typer.Argument(..., metavar="SWEEP", help="Sweep file (see scenarios/sweeps/*.toml)."),
    out: Path = typer.Option(Path("results"), "--out", help="The sweep's directory goes here, named after it; "
                                                            "running again resumes it."),
) -> None:
    """Run every cell of a sweep (a burst and a steady run each) and print the overhead comparison."""
    from fleetsim.sweep import matrix as sweep_mod
    from fleetsim.sweep.run_cells import read_sweep, run_sweep

    console = tables()
    definition = sweep_mod.load(sweep_file)
    console.print(Text(f"sweep {definition.name}: {count(len(definition.cells), 'cell')}, results in "
                       f"{out / definition.name}"))
    sweep_dir = run_sweep(definition, out=out, reporter=ConsoleReporter(console))
    summary_tables.print_sweep(read_sweep(sweep_dir), console)
    console.print(Text(f"results: {sweep_dir}"))


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
