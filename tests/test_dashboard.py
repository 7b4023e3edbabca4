"""The Grafana dashboard in dashboards/: valid JSON, its datasource a template variable, and every PromQL
expression in it naming only metrics and labels the live metrics endpoint serves."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fleetsim.engine.phase_histogram import PhaseHistogram
from fleetsim.runner import progress
from fleetsim.runner.live_metrics import MetricsEndpoint
from fleetsim.runner.progress import Progress

DASHBOARD = Path(__file__).parent.parent / "dashboards" / "fleetsim-live.json"
FUNCTIONS = {"sum", "max", "min", "avg", "count", "rate", "irate", "increase", "changes", "histogram_quantile",
             "clamp_min", "label_values"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
            "offset"}
TARGET_LABELS = {"instance", "job"}  # Prometheus adds these to every scraped series


def served() -> dict[str, set[str]]:
    """Every sample name the endpoint serves (histogram _bucket/_sum/_count, counter _total), with its labels."""
    h = PhaseHistogram()
    h.observe({"setup_ms": 0.1, "wait_ms": 0.0, "tcp_ms": 0.2, "tls_ms": 2.0, "mqtt_ms": 0.5, "total_ms": 2.8})
    state = progress.merge({0: {"connected": 1, "connects": 1, "failures": {"tcp_refused": 1},
                                "messages": {"published_qos1": 2, "acked_qos1": 2}, **h.snapshot()}})
    ep = MetricsEndpoint(0)
    ep.update(Progress(elapsed=1.0, duration=5.0, devices=2, events=1, state=state,
                       broker={"kind": "embedded", "cpu_seconds": 0.1}))
    names: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(generate_latest(ep.registry).decode()):
        for s in fam.samples:
            names.setdefault(s.name, set()).update(s.labels)
    return names


def expressions(node: Any) -> Iterator[str]:
    """Every PromQL string in the dashboard: panel targets, annotations, template variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def references(expr: str) -> tuple[set[str], set[str], set[str]]:
    """(metric names, label names, function names) an expression uses."""
    metrics: set[str] = set()
    labels: set[str] = set()
    for name, matchers in re.findall(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", expr):
        metrics.add(name)
        labels.update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    for grouping in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels.update(x.strip() for x in grouping.split(",") if x.strip())
    for metric, label in re.findall(r"label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)", expr):
        metrics.add(metric)
        labels.add(label)
    bare = re.sub(r'"[^"]*"|\[[^\]]*\]|\{[^}]*\}', " ", expr)
    bare = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", bare)
    functions = set(re.findall(r"([A-Za-z_]\w*)\s*\(", bare))
    tokens = {m.group() for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", bare)
              if not bare[m.end():].lstrip().startswith("(")}
    metrics |= tokens - KEYWORDS - functions - labels
    return metrics, labels, functions


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def test_every_expression_names_only_served_metrics_and_their_labels(dashboard: dict[str, Any]) -> None:
    serves = served()
    exprs = list(expressions(dashboard))
    assert len(exprs) >= 15
    used: set[str] = set()
    for expr in exprs:
        metrics, labels, functions = references(expr)
        assert metrics, expr
        assert functions <= FUNCTIONS, f"{expr}: unknown function {functions - FUNCTIONS}"
        for m in metrics:
            assert m in serves, f"{expr}: {m} is not served (served: {sorted(serves)})"
        known = TARGET_LABELS.union(*(serves[m] for m in metrics))
        assert labels <= known, f"{expr}: labels {labels - known} are on none of its metrics"
        used |= metrics
    families = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used}
    for shown in ("fleetsim_devices_connected", "fleetsim_connection_attempts_total",
                  "fleetsim_connect_phase_seconds", "fleetsim_messages_published_total",
                  "fleetsim_loop_lag_max_seconds", "fleetsim_broker_cpu_seconds_total"):
        assert shown in families, f"the dashboard does not show {shown}"


def test_the_parser_catches_a_metric_the_endpoint_does_not_serve() -> None:
    metrics, labels, functions = references(
        'histogram_quantile(0.99, sum by (le, phase) (rate(fleetsim_nope_bucket{instance=~"$instance"}[5m])))')
    assert metrics == {"fleetsim_nope_bucket"} and labels == {"le", "phase", "instance"}
    assert functions == {"histogram_quantile", "sum", "rate"}
    assert references("fleetsim_a / fleetsim_b > 1e3")[0] == {"fleetsim_a", "fleetsim_b"}


def test_datasource_is_a_template_variable_used_by_every_panel_and_query(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    for p in panels:
        for node in (p, *p["targets"]):
            assert node["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
    assert variables["instance"]["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)
