"""--fail-on rules: parsed up front with one clear line for a mistake, judged against a summary. Pure."""

from typing import cast

import pytest

from fleetsim.errors import FleetsimError
from fleetsim.results import thresholds
from fleetsim.results.shape import Summary

SUMMARY = cast(Summary, {  # the part of a summary the rules read
    "devices": 200, "attempts": 210, "outcomes": {"connected": 200, "alert_revoked": 10},
    "fleet": {"connected_at_end": 190, "ever_connected": 200},
    "fleet_up": {"rate_per_s": 480.5},
    "phases_ms": {"total": {"p99": 150.0, "p50": 8.0}, "tls": {"p99": 90.0}},
    "messages": {"qos1plus": {"published": 1000, "lost": 3, "ack_ms": {"p99": 12.0}}},
    "drops": {"stop": 190, "reset": 2, "revoked": 8},
    "simulator": {"loop_lag_ms": {"p99": 4.0}},
})


@pytest.mark.parametrize("rule, value, breached", [
    ("connected<100%", 95.0, True),
    ("connected<190", 190.0, False),
    ("ever_connected<100%", 100.0, False),
    ("p99.total>200ms", 150.0, False),
    ("p99.total>0.1s", 150.0, True),
    ("p50.total>=8ms", 8.0, True),
    ("p99.tls>89", 90.0, True),
    ("lost>0", 3.0, True),
    ("lost>0.5%", 0.3, False),
    ("failures>4%", 100 * 10 / 210, True),
    ("drops>5", 10.0, True),
    ("rate<400/s", 480.5, False),
    ("ack.p99>10ms", 12.0, True),
    ("lag.p99>50ms", 4.0, False),
])
def test_each_metric_is_read_from_the_summary(rule: str, value: float, breached: bool) -> None:
    (result,) = thresholds.judge(thresholds.parse([rule]), SUMMARY)
    assert result["value"] == pytest.approx(value, abs=1e-3) and result["breached"] is breached


def test_several_rules_in_one_option_and_unmeasured_metrics_pass() -> None:
    rules = thresholds.parse(["connected<100%, p99.mqtt>5ms"])
    assert [r.text for r in rules] == ["connected<100%", "p99.mqtt>5ms"]
    assert thresholds.judge(rules, SUMMARY)[1] == {"rule": "p99.mqtt>5ms", "value": None, "unit": "ms",
                                                   "breached": False}


@pytest.mark.parametrize("rule, says", [
    ("p99.total", "METRIC OP VALUE"),
    ("latency>5", "unknown metric"),
    ("p98.total>5ms", "unknown metric"),
    ("drops>5%", "not measured in %"),
    ("connected<5ms", "not measured in ms"),
])
def test_a_bad_rule_is_one_line_naming_it(rule: str, says: str) -> None:
    with pytest.raises(FleetsimError) as e:
        thresholds.parse([rule])
    assert says in str(e.value) and rule in str(e.value) and "\n" not in str(e.value)
