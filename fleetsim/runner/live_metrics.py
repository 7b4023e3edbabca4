"""Live metrics: the run's latest merged progress served as a Prometheus endpoint on the orchestrator.

The workers already keep cumulative counters and send them with every progress snapshot; the orchestrator
merges them across workers (``progress.merge``). So this module counts nothing itself: a custom
collector turns the latest merged ``Progress`` into metric families at scrape time, which exposes the workers'
totals exactly (a scrape cannot double-count or miss an update) and costs the orchestrator's loop one attribute
store per progress tick. A scrape reads that stored snapshot on the HTTP server's thread and never waits for a
worker.

From the CLI: ``fleetsim run SCENARIO --metrics-port 9464``. From Python::

    from fleetsim.runner.live_metrics import MetricsEndpoint
    with MetricsEndpoint(9464) as metrics:             # 127.0.0.1:9464/metrics
        fs.run(scenario, pki=pki, progress=metrics.update)

Before the devices start (PKI, broker) the endpoint answers with no fleetsim samples; after the run it keeps
the final values until it is stopped.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from fleetsim.engine.phase_histogram import BOUNDS_S, BUCKETS_KEY, PHASES, SUM_KEY
from fleetsim.errors import FleetsimError
from fleetsim.runner.progress import Progress, Reporter, Silent

DEFAULT_HOST = "127.0.0.1"  # loopback unless asked otherwise: a project rule
QOS_LEVELS = ("0", "1", "2")
LE = [floatToGoString(b) for b in BOUNDS_S] + ["+Inf"]


def families(p: Progress) -> list[Metric]:
    """Every metric family for one merged progress. Pure: the unit tests call it with a hand-made Progress."""
    return [*_connections(p), *_latency(p.state), *_messages(p.state), *_simulator(p), *_broker(p.broker)]


def _connections(p: Progress) -> Iterator[Metric]:
    s = p.state
    failures: Mapping[str, int] = s.get("failures", {})
    attempts = CounterMetricFamily("fleetsim_connection_attempts", "Connection attempts that ended, by outcome "
                                   "(connected: CONNACK accepted).", labels=["outcome"])
    attempts.add_metric(["connected"], s.get("connects", 0))
    attempts.add_metric(["failed"], sum(failures.values()))
    yield attempts
    by_class = CounterMetricFamily("fleetsim_connection_failures", "Failed connection attempts by failure class "
                                   "(fleetsim.engine.outcome.Failure).", labels=["failure"])
    for cls, n in sorted(failures.items()):
        by_class.add_metric([cls], n)
    yield by_class
    yield GaugeMetricFamily("fleetsim_devices_connected", "Devices connected now (CONNACK accepted, not yet lost).",
                            value=s.get("connected", 0))
    yield GaugeMetricFamily("fleetsim_fleet_devices", "Devices in the fleet.", value=p.devices)


def _latency(state: Mapping[str, Any]) -> Iterator[Metric]:
    counts: Mapping[str, list[int]] = state.get(BUCKETS_KEY, {})
    sums: Mapping[str, float] = state.get(SUM_KEY, {})
    hist = HistogramMetricFamily("fleetsim_connect_phase_seconds", "Time connected attempts spent in each phase "
                                 "(setup + wait + tcp + tls + mqtt = total; wait is the simulator's own queue).",
                                 labels=["phase"])
    for phase in PHASES:
        if phase in counts:
            hist.add_metric([phase], cumulative_buckets(counts[phase]), sums.get(phase, 0.0))
    yield hist


def cumulative_buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (as the shards keep them) as Prometheus's cumulative ``le`` buckets, +Inf last."""
    if len(counts) != len(LE):
        raise ValueError(f"{len(counts)} bucket counts for {len(LE)} bounds")
    out, running = [], 0
    for le, n in zip(LE, counts, strict=True):
        running += n
        out.append((le, float(running)))
    return out


def _messages(state: Mapping[str, Any]) -> Iterator[Metric]:
    m: Mapping[str, int] = state.get("messages", {})
    published = CounterMetricFamily("fleetsim_messages_published", "Messages the devices published, by QoS.",
                                    labels=["qos"])
    acked = CounterMetricFamily("fleetsim_messages_acknowledged", "QoS 1/2 messages the broker acknowledged "
                                "(PUBACK / PUBCOMP).", labels=["qos"])
    for q in QOS_LEVELS:
        published.add_metric([q], m.get(f"published_qos{q}", 0))
        if q != "0":
            acked.add_metric([q], m.get(f"acked_qos{q}", 0))
    yield published
    yield acked
    yield CounterMetricFamily("fleetsim_messages_written", "QoS 0 messages written to the socket (QoS 0 has no "
                              "acknowledgement).", value=m.get("sent_qos0", 0))
    unacked = sum(v for k, v in m.items() if k.startswith("published_qos") and k != "published_qos0") \
        - sum(v for k, v in m.items() if k.startswith("acked_qos"))
    yield GaugeMetricFamily("fleetsim_messages_unacknowledged", "QoS 1/2 messages published and not acknowledged: "
                            "in flight, or lost; at the end of a run, the summary's lost.", value=max(0, unacked))


def _simulator(p: Progress) -> Iterator[Metric]:
    s = p.state
    yield GaugeMetricFamily("fleetsim_loop_lag_max_seconds", "Worst event-loop lag of any worker over the last "
                            "2 s: the simulator's own saturation.", value=(s.get("lag_max_ms") or 0.0) / 1000.0)
    yield GaugeMetricFamily("fleetsim_admission_waiting", "Connection attempts waiting for admission (the "
                            "simulator holds them back while its loop is late).", value=s.get("waiting", 0))
    yield CounterMetricFamily("fleetsim_events", "Timed scenario events fired.", value=p.events)
    yield GaugeMetricFamily("fleetsim_run_elapsed_seconds", "Seconds since the run's t0.", value=p.elapsed)
    yield GaugeMetricFamily("fleetsim_run_duration_seconds", "The run's planned length.", value=p.duration)


def _broker(broker: Mapping[str, Any]) -> Iterator[Metric]:
    """What the orchestrator knows of the broker: its CPU when fleetsim can read it (not for a broker it did not
    start), labelled with the broker's kind."""
    cpu = broker.get("cpu_seconds")
    if cpu is None:
        return
    family = CounterMetricFamily("fleetsim_broker_cpu_seconds", "CPU seconds of every broker process (restarts "
                                 "included), sampled once a second.", labels=["broker"])
    family.add_metric([str(broker.get("kind") or "unknown")], float(cpu))
    yield family


class ProgressCollector(Collector):
    """A prometheus_client collector over whatever ``latest()`` returns (None: nothing to show yet)."""

    def __init__(self, latest: Callable[[], Progress | None]) -> None:
        self.latest = latest

    def collect(self) -> Iterator[Metric]:
        p = self.latest()
        return iter(families(p) if p is not None else ())


class MetricsEndpoint:
    """A Prometheus endpoint serving the latest Progress handed to ``update``; loopback unless told otherwise.

    ``port`` 0 picks a free one (``.port`` says which). Use as a context manager, or ``start()``/``stop()``.
    """

    def __init__(self, port: int, host: str = DEFAULT_HOST) -> None:
        self.host, self.requested_port = host, port
        self._latest: Progress | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ProgressCollector(lambda: self._latest))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsEndpoint:
        """Bind and serve on a daemon thread; a port in use is one clear line (FleetsimError, exit 2)."""
        try:
            self._server, self._thread = start_http_server(self.requested_port, self.host, self.registry)
        except OSError as exc:
            where = f"{self.host}:{self.requested_port}"
            if exc.errno == errno.EADDRINUSE:
                raise FleetsimError(f"cannot serve metrics on {where}: the port is in use",
                                    "pick another --metrics-port, or 0 for a free one") from None
            raise FleetsimError(f"cannot serve metrics on {where}: {exc.strerror or exc}",
                                "pick another --metrics-port") from None
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def update(self, p: Progress) -> None:
        """Keep ``p`` for the next scrape: one reference stored, so the caller's loop never waits."""
        self._latest = p

    def reporter(self, inner: Reporter | None = None) -> MetricsReporter:
        """A progress.Reporter feeding this endpoint and passing everything on to ``inner``."""
        return MetricsReporter(self, inner or Silent())

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def __enter__(self) -> MetricsEndpoint:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MetricsReporter:
    """Wraps another reporter (the terminal's, or Silent): every Progress also goes to the endpoint."""

    def __init__(self, endpoint: MetricsEndpoint, inner: Reporter) -> None:
        self.endpoint, self.inner = endpoint, inner

    def note(self, text: str) -> None:
        self.inner.note(text)

    def step(self, text: str) -> None:
        self.inner.step(text)

    def progress(self, p: Progress) -> None:
        self.endpoint.update(p)
        self.inner.progress(p)

    def done(self) -> None:
        self.inner.done()
