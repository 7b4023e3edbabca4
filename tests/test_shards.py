"""Dealing a fleet into shards and merging their results: pure, no network."""

from fleetsim.engine.shard import DeviceSpec, ShardResult, ShardSpec
from fleetsim.runner import provision
from fleetsim.runner.shards import deal, merge_results
from fleetsim.scenario import parse

SCENARIO = """
name = "deal"
seed = 1
duration = 10
[arrival]
pattern = "linear"
rate = 10
[[fleet]]
model = "thermometer"
count = 7
[[fleet]]
model = "ecg-patch"
count = 3
"""


def test_deal_spreads_devices_and_keeps_the_fleet_ramp_exact() -> None:
    sc = parse(SCENARIO, "deal.toml")
    fleet = [provision.Provisioned(s, f"d{i}") for i, s in enumerate(provision.plan(sc))]
    shards = deal(sc, fleet, ShardSpec(index=0, devices=(), host="127.0.0.1", port=1), workers=3)
    assert [s.index for s in shards] == [0, 1, 2]
    devices = [d for s in shards for d in s.devices]
    assert sorted(d.id for d in devices) == sorted(p.device_id for p in fleet)
    offsets = sorted(d.offset for d in devices if d.offset is not None)
    assert offsets == [i / 10 for i in range(10)]  # 10 devices/s, one arrival every 0.1 s across all shards
    assert {d.model for d in shards[0].devices} <= {"thermometer", "ecg-patch"}


def test_deal_never_makes_an_empty_shard() -> None:
    sc = parse(SCENARIO.replace("count = 3", "count = 1").replace("count = 7", "count = 1"), "deal.toml")
    fleet = [provision.Provisioned(s, f"d{i}") for i, s in enumerate(provision.plan(sc))]
    assert len(deal(sc, fleet, ShardSpec(index=0, devices=(), host="h", port=1), workers=8)) == 2


def part(index: int, second: list[int], published: list[int], lag: list[float], n: int) -> ShardResult:
    return ShardResult(
        index=index,
        attempts={"device_id": [f"s{index}"], "outcome": ["connected"]},
        sessions={"device_id": [f"s{index}"], "cause": ["stop"]},
        devices={"device_id": [f"s{index}"], "state": ["connected"]},
        series={"second": second, "published": published, "loop_lag_ms_max": lag},
        messages={"published": n, "acknowledged": n, "lost": 0, "ack_ms": [1.0], "by_kind": {"telemetry": n}},
        loop={"lag_ms": lag, "cpu_s": 1.0},
    )


def test_merge_adds_counters_by_second_and_takes_the_worst_lag() -> None:
    m = merge_results({0: part(0, [0, 1], [2, 3], [1.0, 9.0], 5), 1: part(1, [0, 1, 2], [4, 1, 1], [5.0, 2.0, 3.0], 7)})
    assert m.attempts["device_id"] == ["s0", "s1"] and m.sessions["cause"] == ["stop", "stop"]
    assert m.bins == {"second": [0, 1, 2], "published": [6, 4, 1], "loop_lag_ms_max": [5.0, 9.0, 3.0]}
    assert m.messages["published"] == 12 and m.messages["by_kind"] == {"telemetry": 12}
    assert m.messages["ack_ms"] == [1.0, 1.0] and len(m.loop_lag_ms) == 5
    assert [w["cpu_s"] for w in m.workers] == [1.0, 1.0]


def test_sources_are_given_per_shard_only_when_one_address_cannot_hold_the_fleet() -> None:
    from fleetsim.runner.shards import with_sources

    def shards(n: int, each: int) -> list[ShardSpec]:
        return [ShardSpec(index=i, devices=tuple(DeviceSpec(id=f"d{i}-{k}", model="thermometer")
                                                 for k in range(each)), host="127.0.0.1", port=1) for i in range(n)]

    small = shards(2, 100)
    assert with_sources(small, 1, (), loopback=True) == small
    big = with_sources(shards(3, 10_000), 1, (), loopback=True)  # 30,000 to one broker: more than one address holds
    assert [s.source_address for s in big] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert with_sources(shards(3, 10_000), 2, (), loopback=True)[0].source_address is None  # a pool of two holds it
    given = with_sources(small, 1, ("10.0.0.5", "10.0.0.6"), loopback=False)
    assert [s.source_address for s in given] == ["10.0.0.5", "10.0.0.6"]


def test_workers_share_a_local_brokers_listen_backlog_and_a_remote_one_is_not_capped() -> None:
    from fleetsim.runner.shards import LOOPBACK_IN_FLIGHT, with_in_flight_caps

    two = [ShardSpec(index=i, devices=(), host="127.0.0.1", port=1) for i in range(2)]
    assert [s.in_flight_cap for s in with_in_flight_caps(two, 1, loopback=True)] == [LOOPBACK_IN_FLIGHT // 2] * 2
    assert with_in_flight_caps(two, 3, loopback=True)[0].in_flight_cap == 3 * LOOPBACK_IN_FLIGHT // 2
    many = [ShardSpec(index=i, devices=(), host="127.0.0.1", port=1) for i in range(64)]
    assert with_in_flight_caps(many, 1, loopback=True)[0].in_flight_cap == 4  # never below the rule's floor
    assert with_in_flight_caps(two, 1, loopback=False) == two


def test_a_pool_sums_its_members_and_keeps_each() -> None:
    from fleetsim.broker.pool import pooled

    a = {"kind": "mosquitto", "port": 1, "accepted": 3, "cpu_seconds": 1.5, "rejected": {"x": 1}, "pid": 10}
    b = {"kind": "mosquitto", "port": 2, "accepted": 4, "cpu_seconds": 0.5, "rejected": {"x": 2, "y": 1}, "pid": 11}
    p = pooled([a, b])
    assert p["accepted"] == 7 and p["cpu_seconds"] == 2.0 and p["rejected"] == {"x": 3, "y": 1}
    assert [m["port"] for m in p["members"]] == [1, 2] and [x["pid"] for x in p["processes"]] == [10, 11]


def test_subscribers_are_dealt_to_the_workers_round_robin() -> None:
    from fleetsim.runner.shards import with_subscribers

    sc = parse(SCENARIO + '[[subscribers]]\nname = "st"\ncount = 5\ntopics = ["fleet/+/+/+/alarm"]\nqos = 2\n'
               '[[subscribers]]\nname = "dash"\ntopics = ["fleet/site-1/#"]\nclean_session = false\n', "deal.toml")
    fleet = [provision.Provisioned(s, f"d{i}") for i, s in enumerate(provision.plan(sc))]
    shards = with_subscribers(deal(sc, fleet, ShardSpec(index=0, devices=(), host="127.0.0.1", port=1), workers=3), sc)
    assert [[s.id for s in shard.subscribers] for shard in shards] == [
        ["st-001", "st-004"], ["st-002", "st-005"], ["st-003", "dash-001"]]
    dash = shards[2].subscribers[1]
    assert (dash.topics, dash.qos, dash.clean_session) == (("fleet/site-1/#",), 1, False)
    assert sum(len(s.devices) for s in shards) == 10  # counted apart from the devices
