"""`fleetsim run SCENARIO`.

Exit codes: 0 the run went as the scenario asked; 1 it ran but failed (nothing could connect, a --fail-on rule
breached, a worker lost); 2 bad input (one line, nothing run); 130 Ctrl-C, 143 SIGTERM (results still written;
a second signal ends it at once, without them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from fleetsim import lifecycle
from fleetsim.cli.console import tables
from fleetsim.cli.live import ConsoleReporter
from fleetsim.report import summary_tables
from fleetsim.results import thresholds
from fleetsim.runner.progress import Reporter
from fleetsim.words import count

RUN_FAILED = 1


def run(
    scenario: Path = typer.Argument(..., help="Scenario file (see scenarios/)."),
    pki: Path = typer.Option(Path("pki"), "--pki", help="PKI directory; created on first use, reused after."),
    broker: str | None = typer.Option(None, "--broker", help="embedded, mosquitto or HOST:PORT (overrides the scenario)."),
    out: Path = typer.Option(Path("results"), "--out", help="Where the run's results directory goes."),
    devices: int | None = typer.Option(None, "--devices", min=1, help="Fleet size (groups scaled to it)."),
    duration: float | None = typer.Option(None, "--duration", min=1, help="Run length in seconds."),
    workers: int | None = typer.Option(None, "--workers", min=1,
                                       help="Worker processes (default: one per core, less the cores a broker "
                                            "on this machine takes)."),
    isolate_broker: bool = typer.Option(False, "--isolate-broker",
                                        help="Give the broker fleetsim starts a core of its own, the workers the "
                                             "others (handshake timing on one machine)."),
    brokers: int | None = typer.Option(None, "--brokers", min=1, help="A pool of N brokers fleetsim starts, on "
                                       "consecutive ports; the fleet dealt over them."),
    cluster: str | None = typer.Option(None, "--cluster", metavar="ADDRESS",
                                       help="Run the shards on a Dask cluster: tcp://SCHEDULER:8786, or local:N."),
    fail_on: list[str] = typer.Option([], "--fail-on", metavar="RULE",
                                      help="Exit 1 when the run breaches RULE, e.g. 'connected<100%' or "
                                           "'p99.total>200ms' (repeatable; see "
                                           "fleetsim/results/thresholds.py)."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", min=0, max=65535, metavar="P",
                                            help="Serve live Prometheus metrics on 127.0.0.1:P/metrics during "
                                                 "the run (0: a free port; see dashboards/)."),
) -> None:
    """Run a fleet against a broker that requires client certificates, then print the summary."""
    from fleetsim import scenario as scenario_mod
    from fleetsim.runner.orchestrate import run_scenario

    rules = thresholds.parse(fail_on)  # a bad rule is one line before anything runs
    console = tables()
    full = scenario_mod.load(scenario)
    sc = full.with_overrides(devices=devices, duration=duration, workers=workers, broker=broker,
                             isolate=isolate_broker or None, brokers=brokers)
    if (dropped := full.events_dropped_by(sc)) is not None:
        console.print(Text.assemble(("warning: ", "bold yellow"), dropped))
    with _metrics(metrics_port, console) as wrap:
        run_dir, summary = run_scenario(sc, pki=pki, out_dir=out, reporter=wrap(ConsoleReporter(console)),
                                        cluster=cluster, rules=rules)
    summary_tables.print_summary(summary, console)
    console.print(Text(f"results: {run_dir}"))
    raise typer.Exit(exit_code(summary))


@contextlib.contextmanager
def _metrics(port: int | None, console: Console) -> Iterator[Callable[[Reporter], Reporter]]:
    """The live metrics endpoint for the run's length, bound before anything runs (a port in use is one line,
    exit 2); without --metrics-port the reporter is left as it is."""
    if port is None:
        yield lambda reporter: reporter
        return
    from fleetsim.runner.live_metrics import MetricsEndpoint  # prometheus_client only when asked for

    with MetricsEndpoint(port) as endpoint:
        console.print(Text(f"metrics: {endpoint.url}"))
        yield endpoint.reporter


def exit_code(summary: Mapping[str, Any]) -> int:
    err = Console(stderr=True, markup=False, highlight=False)
    if (signalled := lifecycle.exit_code(summary.get("interrupted"))) is not None:
        return signalled
    problems = [summary[k] for k in ("stopped_early", "interrupted") if summary.get(k)]
    if lost := summary.get("lost_with_worker"):
        problems.append(f"{count(lost['devices'], 'device')} were lost with their worker")
    problems += [f"--fail-on {t['rule']} breached (measured {t['value']}{t['unit']})"
                 for t in summary.get("thresholds", []) if t["breached"]]
    for p in problems:
        err.print(Text.assemble(("error: ", "bold red"), str(p)), soft_wrap=True)
    return RUN_FAILED if problems else 0


def register(app: typer.Typer) -> None:
    app.command("run")(run)
