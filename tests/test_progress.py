"""The live progress line (pure rendering, and the terminal reporter over several runs, as a sweep makes)."""

from __future__ import annotations

import io

from rich.console import Console

from fleetsim.cli.live import ConsoleReporter
from fleetsim.runner.progress import Callback, Progress, View


def test_each_run_of_a_sweep_gets_its_own_totals_on_the_progress_line() -> None:
    """A sweep cell runs a burst of 60 devices, then a steady run of 20 through one reporter: the second run's
    line counts against 20 and its own duration, not the burst's."""
    out = io.StringIO()
    reporter = ConsoleReporter(Console(file=out, force_terminal=False, width=200))
    reporter.progress(Progress(elapsed=2.0, duration=8, devices=60, state={"connected": 60, "connects": 60}))
    reporter.done()
    reporter.progress(Progress(elapsed=5.0, duration=10, devices=20, state={"connected": 20, "connects": 20}))
    reporter.done()
    burst, steady = [line for line in out.getvalue().splitlines() if "connected" in line]
    assert "2.0/8 s  connected 60/60" in burst
    assert "5.0/10 s  connected 20/20" in steady and "connects/s 4" in steady, steady


def test_a_callback_hears_the_second_run_from_its_start() -> None:
    heard: list[float] = []
    reporter = Callback(lambda p: heard.append(p.elapsed), every=1.0)
    for elapsed in (0.0, 5.0, 9.0):
        reporter.progress(Progress(elapsed=elapsed, duration=10, devices=1))
    reporter.done()
    reporter.progress(Progress(elapsed=0.5, duration=10, devices=1))
    assert heard == [0.0, 5.0, 9.0, 0.5]


def test_the_progress_line_names_every_failure_class_the_summary_will() -> None:
    failures = {"alert_expired": 20, "alert_unknown_ca": 19, "client_key_mismatch": 15, "alert_revoked": 25,
                "client_key_rejected": 14, "connack_bad_client_id": 18, "alert_bad_certificate": 14}
    line = View(devices=500, duration=30).render({"failures": failures}, elapsed=3.0, events=0).plain
    listed = line.split("failures: ")[1]
    assert listed.split(", ")[:2] == ["alert_revoked 25", "alert_expired 20"]
    assert {part.rsplit(" ", 1)[0] for part in listed.split(", ")} == set(failures)
