"""``--fail-on`` rules for CI: a run that breaches one exits non-zero, naming it. Pure: parse, then judge a summary.

A rule states the failure condition, e.g. ``connected<100%`` (fail when fewer than all devices are connected at
the end) or ``p99.total>200ms``. Metrics:

    connected, ever_connected       devices (count, or % of the fleet)
    pNN.PHASE                       phase latency of connected attempts: p50, p90, p99, p99.9 of setup, wait,
                                    tcp, tls, mqtt, total (ms, or s)
    ack.pNN                         QoS 1/2 acknowledgement latency (ms, or s)
    lost                            QoS 1/2 messages lost (count, or % of those published)
    failures                        failed attempts (count, or % of all attempts)
    drops                           connections lost other than by the run's stop (count)
    rate                            how fast the fleet came up (devices/s)
    lag.pNN                         the simulator's loop lag (ms)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleetsim.errors import FleetsimError
from fleetsim.results.shape import Summary, Verdict, phase_percentile

_RULE = re.compile(r"^\s*(?P<metric>[a-z_][a-z0-9_]*(?:\.[a-z0-9.]+)?)\s*(?P<op><=|>=|<|>|==|!=)\s*"
                   r"(?P<value>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>%|ms|s|/s)?\s*$")
_PERCENTILE = re.compile(r"^p(50|90|99|99\.9)$")
PHASES = ("setup", "wait", "tcp", "tls", "mqtt", "total")
_OPS = {"<": float.__lt__, ">": float.__gt__, "<=": float.__le__, ">=": float.__ge__, "==": float.__eq__,
        "!=": float.__ne__}
_HELP = "e.g. --fail-on 'connected<100%' --fail-on 'p99.total>200ms'; metrics: connected, ever_connected, " \
        "pNN.PHASE, ack.pNN, lost, failures, drops, rate, lag.pNN"


@dataclass(frozen=True)
class Rule:
    text: str
    metric: str
    op: str
    value: float
    unit: str  # "", "%", "ms" (seconds are turned into ms), "/s"


def parse(texts: Sequence[str]) -> list[Rule]:
    """Rules from ``--fail-on`` values (each may hold several, comma-separated); one clear line if one is wrong."""
    rules = []
    for text in (part for t in texts for part in t.split(",") if part.strip()):
        m = _RULE.match(text)
        if not m:
            raise FleetsimError(f"--fail-on {text!r} is not METRIC OP VALUE[UNIT]", _HELP)
        value, unit = float(m["value"]), m["unit"] or ""
        if unit == "s":
            value, unit = value * 1000.0, "ms"
        rule = Rule(text.strip(), m["metric"], m["op"], value, unit)
        _unit_of(rule)  # rejects unknown metrics and units that do not fit them
        rules.append(rule)
    return rules


def _split(metric: str) -> tuple[str, str]:
    """("p99.9", "total") for p99.9.total; ("ack", "p99.9") for ack.p99.9."""
    if metric.startswith(("ack.", "lag.")):
        head, _, tail = metric.partition(".")
    else:
        head, _, tail = metric.rpartition(".")
    return head, tail


def _unit_of(rule: Rule) -> str:
    """The units a metric can be compared in, checked against the rule's."""
    head, tail = _split(rule.metric)
    allowed: tuple[str, ...]
    if rule.metric in ("connected", "ever_connected", "lost", "failures"):
        allowed = ("", "%")
    elif rule.metric == "drops":
        allowed = ("",)
    elif rule.metric == "rate":
        allowed = ("", "/s")
    elif (_PERCENTILE.match(head) and tail in PHASES) or (head in ("ack", "lag") and _PERCENTILE.match(tail)):
        allowed = ("", "ms")
    else:
        raise FleetsimError(f"--fail-on {rule.text!r}: unknown metric {rule.metric!r}", _HELP)
    if rule.unit not in allowed:
        raise FleetsimError(f"--fail-on {rule.text!r}: {rule.metric} is not measured in {rule.unit}",
                            f"use {' or '.join(repr(u) if u else 'a bare number' for u in allowed)}")
    return rule.unit


def measure(rule: Rule, s: Summary) -> float | None:
    """The summary's value for the rule's metric, in the rule's unit; None when the run did not measure it."""
    head, tail = _split(rule.metric)
    fleet, devices = s.get("fleet", {}), s.get("devices") or 0
    q1 = s.get("messages", {}).get("qos1plus", {})
    count: float | None
    if rule.metric in ("connected", "ever_connected"):
        count = fleet.get("connected_at_end") if rule.metric == "connected" else fleet.get("ever_connected")
        whole = devices
    elif rule.metric == "lost":
        count, whole = q1.get("lost"), q1.get("published")
    elif rule.metric == "failures":
        count = s.get("attempts", 0) - s.get("outcomes", {}).get("connected", 0)
        whole = s.get("attempts")
    elif rule.metric == "drops":
        return float(sum(v for k, v in s.get("drops", {}).items() if k != "stop"))
    elif rule.metric == "rate":
        return _num(s.get("fleet_up", {}).get("rate_per_s"))
    elif head == "ack":
        return _num(q1.get("ack_ms", {}).get(tail))
    elif head == "lag":
        return _num(s.get("simulator", {}).get("loop_lag_ms", {}).get(tail))
    else:
        return phase_percentile(s, tail, head)
    if count is None:
        return None
    if rule.unit == "%":
        return 100.0 * count / whole if whole else None
    return float(count)


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


def judge(rules: Sequence[Rule], summary: Summary) -> list[Verdict]:
    """Each rule with the run's value and whether it was breached (a metric the run did not measure is not)."""
    out: list[Verdict] = []
    for r in rules:
        value = measure(r, summary)
        breached = value is not None and _OPS[r.op](value, r.value)
        out.append({"rule": r.text, "value": None if value is None else round(value, 3), "unit": r.unit,
                    "breached": breached})
    return out
