"""Topic filters: overlap and shared subscriptions (fleetsim.topics; covers is tested in test_broker_topics)."""

from __future__ import annotations

import pytest

from fleetsim.topics import covers, overlap, shared, shared_problem


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("fleet/#", "fleet/+/+/+/alarm", True),
        ("fleet/icu/#", "fleet/ward/#", False),
        ("fleet/+/pump/+/alarm", "fleet/icu/+/+/telemetry", False),
        ("fleet/a/+", "fleet/+/b", True),
        ("fleet/a", "fleet/a/#", True),  # "#" matches its parent level
        ("fleet/a", "fleet/a/+", False),
        ("fleet/a/b", "fleet/a/b", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
    ],
)
def test_overlap_is_symmetric_and_agrees_with_the_matcher(a: str, b: str, expected: bool) -> None:
    assert overlap(a, b) is expected and overlap(b, a) is expected
    for f, t in ((a, b), (b, a)):
        if "+" not in t and "#" not in t and covers(f, t):  # a topic matched by a filter: they overlap
            assert overlap(f, t)


def test_shared_subscriptions() -> None:
    assert shared("$share/stations/fleet/+/+/+/alarm") == ("stations", "fleet/+/+/+/alarm")
    assert shared("fleet/#") is None
    assert shared("$share/stations") is None and "no share name" in (shared_problem("$share/stations") or "")
    assert shared("$share/s/#/x") is None and "not a valid topic filter" in (shared_problem("$share/s/#/x") or "")
    assert shared_problem("$share/s/fleet/#") is None
