"""Live metrics: merged progress -> Prometheus families (pure), the endpoint over loopback HTTP, and a real run
scraped while it runs."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fleetsim.engine.phase_histogram import BOUNDS_S, PHASES, PhaseHistogram
from fleetsim.errors import FleetsimError
from fleetsim.runner import progress
from fleetsim.runner.live_metrics import MetricsEndpoint, cumulative_buckets, families
from fleetsim.runner.progress import Progress

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def sample_progress(*, connects: int = 3, elapsed: float = 2.0, cpu: float | None = 0.75) -> Progress:
    """What supervise() hands a reporter: two workers' snapshots merged."""
    h = PhaseHistogram()
    for total in (1.5, 4.0, 2500.0)[:connects]:
        h.observe({"setup_ms": 0.1, "wait_ms": 0.0, "tcp_ms": 0.3, "tls_ms": total - 0.6, "mqtt_ms": 0.2,
                   "total_ms": total})
    shard0 = {"connected": 2, "attempts": connects + 2, "connects": connects, "waiting": 1, "lag_max_ms": 40.0,
              "failures": {"alert_revoked": 2}, "messages": {"published_qos1": 10, "acked_qos1": 8,
                                                             "published_telemetry": 10}, **h.snapshot()}
    shard1 = {"connected": 0, "attempts": 1, "connects": 0, "waiting": 0, "lag_max_ms": 5.0,
              "failures": {"tcp_refused": 1}, "messages": {"published_qos0": 4, "sent_qos0": 4},
              **PhaseHistogram().snapshot()}
    return Progress(elapsed=elapsed, duration=10.0, devices=6, events=1, state=progress.merge({0: shard0, 1: shard1}),
                    broker={"kind": "embedded", "cpu_seconds": cpu})


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """Family name -> type, and every sample by (name, sorted labels)."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, samples


def exposition(p: Progress) -> str:
    ep = MetricsEndpoint(0)  # not started: generate_latest reads the registry directly, no network
    ep.update(p)
    return generate_latest(ep.registry).decode()


def test_families_name_type_and_value_every_metric() -> None:
    types, s = parse(exposition(sample_progress()))
    assert types == {
        "fleetsim_connection_attempts": "counter", "fleetsim_connection_failures": "counter",
        "fleetsim_devices_connected": "gauge", "fleetsim_fleet_devices": "gauge",
        "fleetsim_connect_phase_seconds": "histogram", "fleetsim_messages_published": "counter",
        "fleetsim_messages_acknowledged": "counter", "fleetsim_messages_written": "counter",
        "fleetsim_messages_unacknowledged": "gauge", "fleetsim_loop_lag_max_seconds": "gauge",
        "fleetsim_admission_waiting": "gauge", "fleetsim_events": "counter", "fleetsim_run_elapsed_seconds": "gauge",
        "fleetsim_run_duration_seconds": "gauge", "fleetsim_broker_cpu_seconds": "counter",
    }
    assert s[("fleetsim_connection_attempts_total", (("outcome", "connected"),))] == 3
    assert s[("fleetsim_connection_attempts_total", (("outcome", "failed"),))] == 3
    assert s[("fleetsim_connection_failures_total", (("failure", "alert_revoked"),))] == 2
    assert s[("fleetsim_connection_failures_total", (("failure", "tcp_refused"),))] == 1
    assert s[("fleetsim_devices_connected", ())] == 2 and s[("fleetsim_fleet_devices", ())] == 6
    assert s[("fleetsim_messages_published_total", (("qos", "1"),))] == 10
    assert s[("fleetsim_messages_published_total", (("qos", "0"),))] == 4
    assert s[("fleetsim_messages_acknowledged_total", (("qos", "1"),))] == 8
    assert s[("fleetsim_messages_written_total", ())] == 4
    assert s[("fleetsim_messages_unacknowledged", ())] == 2
    assert s[("fleetsim_loop_lag_max_seconds", ())] == pytest.approx(0.040)  # the worst worker
    assert s[("fleetsim_admission_waiting", ())] == 1 and s[("fleetsim_events_total", ())] == 1
    assert s[("fleetsim_broker_cpu_seconds_total", (("broker", "embedded"),))] == 0.75


def test_phase_histograms_are_cumulative_with_exact_counts_and_sums() -> None:
    _, s = parse(exposition(sample_progress()))
    total = {dict(labels)["le"]: v for (name, labels), v in s.items()
             if name == "fleetsim_connect_phase_seconds_bucket" and dict(labels)["phase"] == "total"}
    assert len(total) == len(BOUNDS_S) + 1
    assert total["0.001"] == 0 and total["0.002"] == 1 and total["0.005"] == 2 and total["2.0"] == 2
    assert total["5.0"] == 3 and total["+Inf"] == 3
    assert s[("fleetsim_connect_phase_seconds_count", (("phase", "total"),))] == 3
    assert s[("fleetsim_connect_phase_seconds_sum", (("phase", "total"),))] == pytest.approx(2.5055)
    phases = {dict(labels)["phase"] for (name, labels) in s if name == "fleetsim_connect_phase_seconds_count"}
    assert phases == set(PHASES)


def test_cumulative_buckets_refuses_counts_for_other_bounds() -> None:
    assert cumulative_buckets([1] * (len(BOUNDS_S) + 1))[-1] == ("+Inf", float(len(BOUNDS_S) + 1))
    with pytest.raises(ValueError):
        cumulative_buckets([1, 2, 3])


def test_no_broker_cpu_no_broker_metric_and_no_progress_no_samples() -> None:
    types, _ = parse(exposition(sample_progress(cpu=None)))
    assert "fleetsim_broker_cpu_seconds" not in types
    assert generate_latest(MetricsEndpoint(0).registry) == b""  # before the devices start
    assert families(Progress(elapsed=0.0, duration=1.0, devices=1))  # an empty state still names every metric


@pytest.fixture
def endpoint() -> Iterator[MetricsEndpoint]:
    with MetricsEndpoint(0) as ep:
        yield ep


def scrape(url: str) -> tuple[dict[str, str], Samples]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return parse(r.read().decode())


@pytest.mark.integration
def test_endpoint_serves_the_latest_progress_on_loopback(endpoint: MetricsEndpoint) -> None:
    assert endpoint.host == "127.0.0.1" and endpoint.port > 0
    assert endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics"
    _, before = scrape(endpoint.url)
    assert not any(name.startswith("fleetsim_") for name, _ in before)
    reporter = endpoint.reporter()
    reporter.progress(sample_progress(connects=2))
    _, first = scrape(endpoint.url)
    reporter.progress(sample_progress(connects=3))
    _, second = scrape(endpoint.url)
    key = ("fleetsim_connection_attempts_total", (("outcome", "connected"),))
    assert first[key] == 2 and second[key] == 3


@pytest.mark.integration
def test_port_in_use_is_one_clear_line(endpoint: MetricsEndpoint) -> None:
    with pytest.raises(FleetsimError, match="the port is in use") as err:
        MetricsEndpoint(endpoint.port).start()
    assert "\n" not in str(err.value) and err.value.exit_code == 2


@pytest.mark.integration
def test_stop_releases_the_port_and_is_idempotent() -> None:
    ep = MetricsEndpoint(0).start()
    port = ep.port
    ep.stop()
    ep.stop()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def note(self, text: str) -> None:
        self.calls.append(("note", text))

    def step(self, text: str) -> None:
        self.calls.append(("step", text))

    def progress(self, p: Progress) -> None:
        self.calls.append(("progress", p))

    def done(self) -> None:
        self.calls.append(("done", None))


def test_reporter_passes_everything_on_to_the_one_it_wraps() -> None:
    inner = Recorder()
    ep = MetricsEndpoint(0)
    r = ep.reporter(inner)
    p = sample_progress()
    r.note("n")
    r.step("s")
    r.progress(p)
    r.done()
    assert inner.calls == [("note", "n"), ("step", "s"), ("progress", p), ("done", None)]
    assert "fleetsim_devices_connected 2.0" in generate_latest(ep.registry).decode()


# -- a real run, scraped while it runs --------------------------------------------------------------------------
FLEETSIM = [sys.executable, "-m", "fleetsim"]
RUN_TOML = """
name = "live-metrics"
seed = 5
duration = 8
connect_timeout = 5
workers = 2
[broker]
target = "embedded"
[mqtt]
qos_telemetry = 1
[arrival]
pattern = "linear"
rate = 8
[[fleet]]
model = "pulse-oximeter"
count = 40
lot = "ward-m"
[faults]
revoked = 0.1
[reconnect]
max_attempts = 1
"""


def scrape_run(proc: subprocess.Popen[str], every: float = 0.8) -> tuple[list[str], list[Samples]]:
    """The run's stdout lines, and one scrape every ``every`` s from the metrics line until the run ends."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    url, scrapes = None, []
    while proc.poll() is None:
        url = url or next((ln.split("metrics: ", 1)[1].strip() for ln in lines if ln.startswith("metrics: ")), None)
        if url:
            with contextlib.suppress(OSError):  # the run ended between poll() and the scrape
                scrapes.append(scrape(url)[1])
        time.sleep(every)
    reader.join(timeout=10)
    return lines, scrapes


def value(s: Samples, name: str, **labels: str) -> float:
    return s.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_run_serves_growing_metrics_while_it_runs(tmp_path: Path) -> None:
    scenario = tmp_path / "live.toml"
    scenario.write_text(RUN_TOML)
    proc = subprocess.Popen([*FLEETSIM, "run", str(scenario), "--pki", str(tmp_path / "pki"), "--out",
                             str(tmp_path / "out"), "--metrics-port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines, scrapes = scrape_run(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    live = [s for s in scrapes if ("fleetsim_devices_connected", ()) in s]
    assert len(live) >= 3, f"{len(scrapes)} scrapes, {len(live)} during the devices' run; stdout: {lines}"
    connected = [value(s, "fleetsim_connection_attempts_total", outcome="connected") for s in live]
    published = [value(s, "fleetsim_messages_published_total", qos="1") for s in live]
    assert connected == sorted(connected) and connected[-1] > connected[0]
    assert published == sorted(published) and published[-1] > published[0]
    assert max(value(s, "fleetsim_devices_connected") for s in live) > 0
    last = live[-1]
    assert value(last, "fleetsim_connection_failures_total", failure="alert_revoked") > 0
    assert value(last, "fleetsim_fleet_devices") == 40
    assert value(last, "fleetsim_broker_cpu_seconds_total", broker="embedded") > 0
    for s in live:  # one snapshot, one state: the histograms count exactly the connected attempts
        n = value(s, "fleetsim_connection_attempts_total", outcome="connected")
        for phase in PHASES:
            assert value(s, "fleetsim_connect_phase_seconds_count", phase=phase) == n, phase
            assert value(s, "fleetsim_connect_phase_seconds_bucket", phase=phase, le="+Inf") == n, phase
    assert value(last, "fleetsim_connect_phase_seconds_sum", phase="tls") > 0


@pytest.mark.integration
def test_cli_metrics_port_in_use_is_one_line_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([*FLEETSIM, "run", "scenarios/ward.toml", "--pki", str(tmp_path / "pki"),
                            "--metrics-port", str(port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: cannot serve metrics on 127.0.0.1:{port}: the port is in use; pick " \
                               "another --metrics-port, or 0 for a free one"
    assert not (tmp_path / "pki").exists()  # nothing ran
