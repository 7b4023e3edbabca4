"""Topic authorization as pure logic (fleetsim.broker.topic_rules)."""

from __future__ import annotations

import pytest

from fleetsim.broker.topic_rules import (
    DEVICE_TOPICS,
    MONITOR_GRANT,
    NOTHING,
    check_patterns,
    covers,
    grant_for,
)


@pytest.mark.parametrize(("allowed", "requested", "expected"), [
    ("fleet/+/+/d1/#", "fleet/s/m/d1/alarm", True),
    ("fleet/+/+/d1/#", "fleet/s/m/d1", True),  # '#' matches its parent level
    ("fleet/+/+/d1/#", "fleet/+/+/d1/#", True),
    ("fleet/+/+/d1/#", "fleet/s/+/d1/+", True),
    ("fleet/+/+/d1/#", "fleet/s/m/d2/alarm", False),
    ("fleet/+/+/d1/#", "fleet/+/+/+/alarm", False),
    ("fleet/+/+/d1/#", "fleet/s/#", False),
    ("fleet/+/+/d1/#", "#", False),
    ("fleet/+/+/d1/#", "fleet/s/m", False),
    ("fleet/+/+/d1/#", "fleet/s/m/d1x/a", False),
    ("#", "$SYS/broker", False),  # a leading wildcard never matches $ topics
    ("$SYS/#", "$SYS/broker/load", True),
    ("#", "anything/at/all", True),
    ("a/+", "a/b/c", False),
    ("a/+", "a/#", False),
])
def test_covers(allowed: str, requested: str, expected: bool) -> None:
    assert covers(allowed, requested) is expected


def test_grants() -> None:
    dev = grant_for("device", "d1", DEVICE_TOPICS, "ecg-patch")
    assert dev.may_publish("fleet/w/ecg-patch/d1/telemetry") and not dev.may_publish("fleet/w/ecg-patch/d2/alarm")
    assert dev.may_subscribe("fleet/+/+/d1/#") and not dev.may_subscribe("#")
    assert grant_for("device", "d1", ("fleet/+/+/%c/#", "shared/%u/in")).may_publish("shared/d1/in")
    assert grant_for("monitor", "dash") is MONITOR_GRANT and not MONITOR_GRANT.may_publish("fleet/a/b/c/d")
    assert MONITOR_GRANT.may_subscribe("#") and MONITOR_GRANT.may_subscribe("$SYS/#")
    for name in ("+", "a/b", "#", ""):  # a name that would act as a wildcard gets nothing
        assert grant_for("device", name) is NOTHING
    assert grant_for("admin", "x") is NOTHING


@pytest.mark.parametrize(("model", "topic", "expected"), [
    ("pulse-oximeter", "fleet/ward9/pulse-oximeter/d1/alarm", True),
    ("pulse-oximeter", "fleet/ward9/infusion-pump/d1/alarm", False),  # another model's level: refused
    ("pulse-oximeter", "fleet/any-site/pulse-oximeter/d1/telemetry", True),  # the site is known to no PKI
    (None, "fleet/ward9/pulse-oximeter/d1/alarm", False),  # a certificate naming no model publishes under none
    ("a+b", "fleet/ward9/a+b/d1/alarm", False),
])
def test_the_model_level_is_the_certificates(model: str | None, topic: str, expected: bool) -> None:
    dev = grant_for("device", "d1", DEVICE_TOPICS, model)
    assert dev.may_publish(topic) is expected
    assert dev.may_subscribe("fleet/+/+/d1/#") and dev.may_subscribe("fleet/ward9/infusion-pump/d1/alarm")
    assert not dev.may_subscribe("fleet/+/+/d2/#")


def test_pattern_check() -> None:
    assert check_patterns(DEVICE_TOPICS) is None
    assert "empty" in (check_patterns([]) or "")
    assert "not a valid" in (check_patterns(["fleet/#/%u"]) or "")
    assert "not a valid" in (check_patterns(["fleet/a+/%u"]) or "")
