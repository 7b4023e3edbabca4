"""Subscribers in a real run: monitor identities over mTLS in the workers, every copy logged, accounted from rows."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fleetsim.pki import Pki
from fleetsim.results.deliveries import DELIVERY_COLUMNS, PUBLISH_COLUMNS
from fleetsim.runner.orchestrate import run_scenario
from fleetsim.scenario import parse

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SCENARIO = """
name = "delivery-{target}"
seed = 5
duration = 6
connect_timeout = 5
workers = 2
[broker]
target = "{target}"
[mqtt]
qos_telemetry = 1
qos_alarm = 1
[arrival]
pattern = "burst"
[[fleet]]
model = "ecg-patch"
count = 20
site = "icu"
[[subscribers]]
name = "station"
topics = ["fleet/icu/#"]
qos = 1
"""


@pytest.mark.parametrize("target", ["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def test_every_acknowledged_qos1_message_reaches_the_subscriber(tmp_path: Path, target: str) -> None:
    run_dir, summary = run_scenario(parse(SCENARIO.format(target=target), "delivery.toml"), pki=tmp_path / "pki",
                                    out_dir=tmp_path / "out")
    assert summary["fleet"]["connected_at_end"] == 20  # the subscriber is not one of the fleet
    pub = pq.read_table(run_dir / "publishes.parquet").to_pydict()
    rx = pq.read_table(run_dir / "deliveries.parquet").to_pydict()
    assert tuple(pub) == PUBLISH_COLUMNS and tuple(rx) == DELIVERY_COLUMNS
    assert len(pub["device"]) >= 60 and all(pub["acked"])  # ~1 message per device per second, all acknowledged
    # counted from the rows themselves: every publish received exactly once, by the one subscriber
    sent = set(zip(pub["device"], pub["seq"], strict=True))
    got = list(zip(rx["device"], rx["seq"], strict=True))
    assert set(got) == sent and len(got) == len(sent) and set(rx["subscriber"]) == {"station-001"}
    assert all(r >= p for p, r in zip(rx["published_at"], rx["received_at"], strict=True))
    figures = json.loads((run_dir / "deliveries.json").read_text())
    assert figures["totals"]["qos1"]["owed"] == figures["totals"]["qos1"]["delivered"] == len(sent)
    assert figures["totals"]["qos1"]["lost"] == figures["totals"]["qos1"]["unconfirmed"] == 0
    assert figures["faults"] == {"qos2_duplicates": 0, "unsubscribed": 0, "unknown_publish": 0}
    assert figures["subscribers"]["station-001"]["connects"] == 1
    assert figures["alarms"]["expected"] == figures["alarms"]["received"]
    assert Pki.open(tmp_path / "pki").device("station-001").role == "monitor"


@pytest.mark.mosquitto
def test_a_shared_subscription_gets_each_message_once_across_its_members(tmp_path: Path) -> None:
    text = SCENARIO.format(target="mosquitto").replace(
        'name = "station"\ntopics = ["fleet/icu/#"]', 'name = "station"\ncount = 2\ntopics = ["$share/st/fleet/icu/#"]')
    run_dir, _ = run_scenario(parse(text, "shared.toml"), pki=tmp_path / "pki", out_dir=tmp_path / "out")
    pub = pq.read_table(run_dir / "publishes.parquet").to_pydict()
    rx = pq.read_table(run_dir / "deliveries.parquet").to_pydict()
    got = list(zip(rx["device"], rx["seq"], strict=True))
    assert len(got) == len(set(got)) == len(pub["device"]) >= 60  # once to the group, not once to each member
    assert set(rx["subscriber"]) == {"station-001", "station-002"}  # Mosquitto shares them out
    figures = json.loads((run_dir / "deliveries.json").read_text())
    assert figures["totals"]["qos1"]["delivered"] == len(got) and figures["totals"]["qos1"]["lost"] == 0
    assert figures["fan_out"] == {"telemetry": 1.0}


@pytest.mark.mosquitto
def test_a_persistent_subscriber_loses_nothing_at_qos1_across_a_broker_restart(tmp_path: Path) -> None:
    """Mosquitto is started with persistence when a subscriber's session is persistent: its subscription and
    what is queued for it survive the restart, and the devices resend what was not acknowledged."""
    text = SCENARIO.format(target="mosquitto").replace("duration = 6", "duration = 8").replace(
        "qos_alarm = 1\n", "qos_alarm = 1\nclean_session = false\n[reconnect]\ninitial = 0.2\ncap = 1\n").replace(
        "qos = 1\n", "qos = 1\nclean_session = false\n[[events]]\nat = 3\naction = \"restart-broker\"\n")
    run_dir, summary = run_scenario(parse(text, "restart.toml"), pki=tmp_path / "pki", out_dir=tmp_path / "out")
    assert [e["action"] for e in summary["events"]] == ["restart-broker"]
    pub = pq.read_table(run_dir / "publishes.parquet").to_pydict()
    figures = json.loads((run_dir / "deliveries.json").read_text())
    qos1 = figures["totals"]["qos1"]
    assert qos1["owed"] == len(pub["device"]) >= 100 and qos1["lost"] == qos1["unconfirmed"] == 0
    assert qos1["delivered"] == qos1["owed"]
    assert figures["subscribers"]["station-001"]["connects"] == 2  # it was cut by the restart and came back
