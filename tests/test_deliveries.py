"""Delivery accounting on hand-built rows: one case per figure (fleetsim.results.deliveries). Pure, fast tier."""

from __future__ import annotations

from typing import Any

import pytest

from fleetsim.results.deliveries import DELIVERY_COLUMNS, PUBLISH_COLUMNS, Accounting, Subscription, account

MS = 1_000_000  # ns
ALARMS = "fleet/+/+/+/alarm"


def topic(device: str, kind: str, site: str = "icu") -> str:
    return f"fleet/{site}/pump/{device}/{kind}"


class Rows:
    """Publish and delivery rows built by hand: times in ms from 0, stored in ns like a run's."""

    def __init__(self) -> None:
        self.pub: dict[str, list[Any]] = {c: [] for c in PUBLISH_COLUMNS}
        self.rx: dict[str, list[Any]] = {c: [] for c in DELIVERY_COLUMNS}
        self.at: dict[tuple[str, int], tuple[str, int, int]] = {}

    def publish(self, device: str, seq: int, kind: str = "alarm", qos: int = 1, at: float = 0.0,
                acked: bool = True, site: str = "icu") -> Rows:
        for c, v in zip(PUBLISH_COLUMNS, (device, seq, kind, qos, topic(device, kind, site), int(at * MS), acked),
                        strict=True):
            self.pub[c].append(v)
        self.at[(device, seq)] = (kind, qos, int(at * MS))
        return self

    def receive(self, subscriber: str, device: str, seq: int, after: float = 1.0, qos: int = 1,
                dup: bool = False) -> Rows:
        kind, _, at = self.at[(device, seq)]
        for c, v in zip(DELIVERY_COLUMNS, (subscriber, device, seq, kind, qos, at, at + int(after * MS), dup),
                        strict=True):
            self.rx[c].append(v)
        return self

    def account(self, *subs: Subscription, **kw: Any) -> Accounting:
        return account(self.pub, self.rx, subs, **kw)


def sub(name: str = "nurse-001", *filters: str, qos: int = 1, clean: bool = True,
        windows: tuple[tuple[int, int | None], ...] = ((0, None),)) -> Subscription:
    return Subscription(name, filters or (ALARMS,), qos, clean, windows)


def pair(acc: Accounting, audience: str, device: str, qos: int) -> dict[str, int]:
    p = acc.pairs
    rows = [i for i in range(len(p["device"])) if (p["audience"][i], p["device"][i], p["qos"][i]) ==
            (audience, device, qos)]
    assert len(rows) == 1, (audience, device, qos, p)
    return {c: p[c][rows[0]] for c in ("owed", "delivered", "duplicated", "out_of_order", "lost", "unconfirmed")}


def test_every_acknowledged_alarm_delivered_and_timed() -> None:
    r = Rows()
    for seq, after in enumerate((1.0, 2.0, 4.0)):
        r.publish("d1", seq, at=10.0 * seq).receive("nurse-001", "d1", seq, after=after)
    acc = r.account(sub())
    assert pair(acc, "nurse-001", "d1", 1) == {"owed": 3, "delivered": 3, "duplicated": 0, "out_of_order": 0,
                                                 "lost": 0, "unconfirmed": 0}
    lat = acc.latency_ms["alarm/qos1"]
    assert (lat["n"], lat["p50"], lat["max"]) == (3, 2.0, 4.0)
    assert acc.totals() == {"qos1": {"owed": 3, "delivered": 3, "duplicated": 0, "out_of_order": 0, "lost": 0,
                                     "unconfirmed": 0}}
    assert acc.alarms["expected"] == acc.alarms["received"] == 3 and acc.alarms["missed"] == 0


def test_acknowledged_and_missing_is_lost_unacknowledged_and_missing_is_unconfirmed() -> None:
    r = Rows().publish("d1", 0).publish("d1", 1, acked=False).publish("d1", 2).receive("nurse-001", "d1", 2)
    p = pair(r.account(sub()), "nurse-001", "d1", 1)
    assert (p["owed"], p["delivered"], p["lost"], p["unconfirmed"]) == (3, 1, 1, 1)


def test_a_qos1_duplicate_is_counted_and_a_qos2_duplicate_is_a_broker_fault() -> None:
    r = Rows().publish("d1", 0, qos=1).publish("d2", 0, qos=2)
    r.receive("nurse-001", "d1", 0).receive("nurse-001", "d1", 0, dup=True)
    r.receive("nurse-001", "d2", 0, qos=2).receive("nurse-001", "d2", 0, qos=2)
    acc = r.account(sub(qos=2))
    assert pair(acc, "nurse-001", "d1", 1)["duplicated"] == 1 and pair(acc, "nurse-001", "d2", 2)["duplicated"] == 1
    assert pair(acc, "nurse-001", "d2", 2)["delivered"] == 1  # a duplicate is not a second delivery
    assert acc.faults["qos2_duplicates"] == 1 and acc.redelivered == 1
    assert acc.latency_ms["alarm/qos2"]["n"] == 1  # only first copies are timed
    assert r.account(sub(qos=2), downgrades_qos2=True).faults["qos2_duplicates"] == 0


def test_out_of_order_per_device_topic() -> None:
    r = Rows()
    for seq in range(4):
        r.publish("d1", seq, at=seq)
    r.publish("d1", 4, kind="telemetry", qos=0, at=4).publish("d2", 0, at=5)
    for dev, seq in (("d1", 0), ("d1", 2), ("d1", 1), ("d1", 3), ("d1", 4), ("d2", 0)):
        r.receive("dash-001", dev, seq, qos=1 if seq < 4 else 0)
    r.rx["kind"][r.rx["seq"].index(4)] = "telemetry"
    acc = r.account(sub("dash-001", "fleet/#"))
    assert pair(acc, "dash-001", "d1", 1)["out_of_order"] == 1  # seq 1 after 2
    assert pair(acc, "dash-001", "d1", 0)["out_of_order"] == 0  # telemetry may overtake alarms (another topic)
    assert pair(acc, "dash-001", "d2", 1)["out_of_order"] == 0


def test_qos0_is_sent_and_delivered_only() -> None:
    r = Rows().publish("d1", 0, kind="telemetry", qos=0).publish("d1", 1, kind="telemetry", qos=0)
    r.receive("dash-001", "d1", 1, qos=0)
    acc = r.account(sub("dash-001", "fleet/icu/#", qos=1))
    assert acc.totals() == {"qos0": {"owed": 2, "delivered": 1, "duplicated": 0, "out_of_order": 0}}


def test_counted_at_the_lower_of_publish_and_subscription_qos() -> None:
    r = Rows().publish("d1", 0, qos=2).publish("d1", 1, qos=1)  # neither received
    acc = r.account(sub(qos=1), sub("low-001", ALARMS, qos=0))
    assert pair(acc, "nurse-001", "d1", 1)["lost"] == 2  # QoS 2 publish, QoS 1 subscription
    assert pair(acc, "low-001", "d1", 0) == {"owed": 2, "delivered": 0, "duplicated": 0, "out_of_order": 0,
                                               "lost": 0, "unconfirmed": 0}  # QoS 0 subscription: never lost


def test_owed_only_while_the_subscription_held_but_every_alarm_counts_end_to_end() -> None:
    r = Rows().publish("d1", 0, at=5).publish("d1", 1, at=15).publish("d1", 2, at=25).publish("d1", 3, at=35)
    r.receive("nurse-001", "d1", 0)  # published before its SUBACK, delivered anyway: owed and delivered
    window = ((10 * MS, 20 * MS), (30 * MS, None))  # reconnected at 30 ms, clean session
    clean = r.account(sub(windows=window))
    p = pair(clean, "nurse-001", "d1", 1)
    assert (p["owed"], p["delivered"], p["lost"]) == (3, 1, 2)  # seq 2 (away) not owed; 1 and 3 lost
    persistent = pair(r.account(sub(clean=False, windows=window)), "nurse-001", "d1", 1)
    assert (persistent["owed"], persistent["lost"]) == (4, 3)  # its session held seq 2 while it was away
    assert clean.alarms == {**clean.alarms, "expected": 4, "received": 1, "missed": 3}
    assert clean.alarms["latency_ms"]["n"] == 1


def test_a_shared_subscription_is_owed_each_message_once_across_its_members() -> None:
    r = Rows()
    for seq in range(4):
        r.publish("d1", seq, at=seq)
    r.receive("st-001", "d1", 0).receive("st-002", "d1", 1).receive("st-001", "d1", 3)
    share = "$share/stations/" + ALARMS
    acc = r.account(sub("st-001", share), sub("st-002", share))
    p = pair(acc, share, "d1", 1)
    assert (p["owed"], p["delivered"], p["lost"], p["duplicated"]) == (4, 3, 1, 0)
    assert acc.alarms["expected"] == 4 and acc.fan_out() == {"alarm": 0.75}


def test_fan_out_and_rows_that_fit_no_publish_or_subscription() -> None:
    r = Rows().publish("d1", 0).publish("d1", 1, kind="telemetry", qos=0)
    r.receive("nurse-001", "d1", 0).receive("nurse-002", "d1", 0)
    r.receive("nurse-001", "d1", 1, qos=0)  # telemetry: nurse-001 subscribed to alarms only
    r.rx["kind"][-1] = "telemetry"
    r.receive("nurse-001", "d1", 0)
    r.rx["seq"][-1] = 99  # no such publish
    acc = r.account(sub("nurse-001"), sub("nurse-002"))
    assert acc.fan_out() == {"alarm": 2.0, "telemetry": 0.0}
    assert acc.faults == {"qos2_duplicates": 0, "unsubscribed": 1, "unknown_publish": 1}


@pytest.mark.parametrize("site", ["icu", "ward"])
def test_only_matching_filters_are_owed(site: str) -> None:
    r = Rows().publish("d1", 0, site=site)
    acc = r.account(sub("icu-001", "fleet/icu/#"))
    assert acc.alarms["expected"] == (1 if site == "icu" else 0)
    assert sum(acc.pairs["owed"]) == (1 if site == "icu" else 0)
