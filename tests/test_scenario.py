"""Scenario parsing and validation: pure logic, no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetsim.errors import ScenarioError
from fleetsim.scenario import (
    Arrival,
    Reconnect,
    arrival_times,
    assign_faults,
    backoff,
    load,
    parse,
)

SCENARIOS = sorted((Path(__file__).parent.parent / "scenarios").glob("*.toml"))
MINIMAL = '[[fleet]]\nmodel = "thermometer"\ncount = 10\n'


def error(text: str, source: str = "x.toml") -> str:
    with pytest.raises(ScenarioError) as info:
        parse(text, source)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_shipped_scenarios_load_and_round_trip(path: Path) -> None:
    sc = load(path)
    assert sc.devices > 0 and sc.name == path.stem
    assert parse(sc.to_toml(), str(path)) == sc


def test_shipped_set_and_demo_bounds() -> None:
    names = {p.stem for p in SCENARIOS}
    assert {"ward", "hospital", "reconnect-storm", "faulty-fleet", "revocation-drill"} <= names
    ward = load(SCENARIOS[[p.stem for p in SCENARIOS].index("ward")])
    assert 250 <= ward.devices <= 350 and ward.duration < 60 and ward.broker.kind == "embedded"


def test_defaults() -> None:
    sc = parse(MINIMAL, "scenarios/mini.toml")
    assert sc.name == "mini" and sc.devices == 10 and sc.broker.kind == "embedded"
    assert sc.broker.address is None and sc.mqtt.qos_alarm == 1 and sc.churn.rate == 0
    g = sc.fleet[0]
    assert (g.lot, g.key_type, g.site) == ("lot-1", "ecdsa-p256", "site-1")
    assert sc.faults == {} and sc.events == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[fleet]]\nmodel = "thermometer"\ncount = -3\n', "x.toml: fleet[0].count: must be a positive integer, got -3"),
        ("duraton = 5\n" + MINIMAL, "x.toml: unknown key 'duraton' in [top level]; did you mean 'duration'?"),
        ("[broker]\ntarjet = 'embedded'\n" + MINIMAL, "unknown key 'tarjet' in [broker]; did you mean 'target'?"),
        ('[[fleet]]\nmodel = "thermometer"\ncount = 1\nsitee = "a"\n', "unknown key 'sitee' in fleet[0]"),
        ("duration = 7200\n" + MINIMAL, "duration: must be a number more than 0 and at most 3600, got 7200"),
        ("duration = '10'\n" + MINIMAL, 'duration: must be a number more than 0 and at most 3600, got "10" (string)'),
        ("seed = true\n" + MINIMAL, "seed: must be an integer from 0 to"),
        ('[[fleet]]\nmodel = "heart-rate"\ncount = 1\n', "fleet[0].model: unknown value 'heart-rate'; did you mean"),
        ('[[fleet]]\nmodel = "thermometer"\ncount = 1\nkey_type = "dsa"\n', "fleet[0].key_type: unknown key type"),
        ('[[fleet]]\nmodel = "thermometer"\ncount = 1\nkey_type = "rsa-1024"\n', "weak_key"),
        ('[[fleet]]\nmodel = "thermometer"\ncount = 1\nkey_type = "ml-dsa-65"\n',
         "fleet[0].key_type: ml-dsa-65 needs the bundled TLS stack, which runs cannot use yet"),
        ('[[fleet]]\nmodel = "thermometer"\ncount = 1\nsite = "a/b"\n', "fleet[0].site: 'a/b' is not a valid name"),
        ('[[fleet]]\nmodel = "thermometer"\n', "fleet[0].count: missing"),
        ("seed = 1\n", "x.toml: fleet: no device groups"),
        ('[[fleet]]\nmodel = "thermometer"\ncount = 50001\n', "fleet[0].count: must be at most 50000, got 50001"),
        (MINIMAL.replace("10", "30000") * 2, "fleet: 60000 devices in total, more than 50000"),
        ("[broker]\ntarget = 'mosquito'\n" + MINIMAL, "did you mean 'mosquitto'?"),
        ("[broker]\ntarget = '10.1.2.3:8883'\n" + MINIMAL, "broker.target: 10.1.2.3 is not a loopback address"),
        ("[broker]\ntarget = 'example.org:8883'\n" + MINIMAL, "allow_remote = true"),
        ("[broker]\ntls_version = '1.1'\n" + MINIMAL, "broker.tls_version: unknown value '1.1'"),
        ("[broker]\nauth = 'mTLS'\n" + MINIMAL, "did you mean 'mtls'?"),
        ("[broker]\ntarget = '127.0.0.1:1883'\nisolate = true\n" + MINIMAL,
         "broker.isolate: applies only to a broker fleetsim starts, not 127.0.0.1:1883"),
        ("[mqtt]\nversion = '5'\n" + MINIMAL, "mqtt.version: the embedded broker (amqtt) speaks MQTT 3.1.1 only"),
        ("[mqtt]\nqos_alarm = 3\n" + MINIMAL, "mqtt.qos_alarm: must be an integer from 0 to 2, got 3"),
        ("[arrival]\npattern = 'ramp'\n" + MINIMAL, "arrival.pattern: unknown value 'ramp'"),
        ("[arrival]\nrate = 0\n" + MINIMAL, "arrival.rate: must be a number more than 0"),
        ("[churn]\ndowntime = [5, 1]\n" + MINIMAL, "churn.downtime: min 5 is more than max 1"),
        ("[churn]\ndowntime = 3\n" + MINIMAL, "churn.downtime: must be [min, max] seconds"),
        ("[reconnect]\ninitial = 5\ncap = 1\n" + MINIMAL, "reconnect.cap: 1 is less than initial 5"),
        ("[faults]\nexpired = 0.6\nrevoked = 0.6\n" + MINIMAL, "faults: fractions add up to 1.2, more than 1"),
        ("[faults]\nexpird = 0.1\n" + MINIMAL, "unknown key 'expird' in [faults]; did you mean 'expired'?"),
        ("broker = 'embedded'\n" + MINIMAL, "x.toml: broker: must be a table"),
        ("duration = 10\n" + MINIMAL + "[[events]]\nat = 20\naction = 'reload-crl'\n", "events[0].at: 20 s is not"),
        (MINIMAL + "[[events]]\nat = 1\naction = 'revoke'\n", "revoke needs exactly one of fraction or lot"),
        (MINIMAL + "[[events]]\nat = 1\naction = 'revoke'\nlot = 'nope'\n", "events[0].lot: no [[fleet]] group"),
        (MINIMAL + "[[events]]\nat = 1\naction = 'reenroll'\n", "reenroll has no earlier revoke event"),
        (MINIMAL + "[[events]]\nat = 1\naction = 'restart-broker'\nfraction = 0.1\n", "takes no fraction or lot"),
        (MINIMAL + "[[events]]\nat = 1\naction = 'explode'\n", "events[0].action: unknown value 'explode'"),
        (MINIMAL + "[[events]]\naction = 'reload-crl'\n", "events[0].at: missing"),
    ],
)
def test_errors_are_precise_one_liners(text: str, expected: str) -> None:
    message = error(text)
    assert message.startswith("x.toml")
    assert expected in message
    assert ";" in message  # every error carries a fix


def test_invalid_toml_gives_line_and_column() -> None:
    message = error('name = "a"\nduration = = 3\n')
    assert message.startswith("x.toml:2:12: invalid TOML:") and "(at line" not in message


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "ward.toml").write_text(MINIMAL)
    with pytest.raises(ScenarioError, match=r"no such scenario file; did you mean .*ward\.toml\?"):
        load(tmp_path / "wrad.toml")
    with pytest.raises(ScenarioError, match="is a directory"):
        load(tmp_path)
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ScenarioError, match="not UTF-8"):
        load(tmp_path / "bin.toml")


def test_remote_and_loopback_targets() -> None:
    for target, address in [("127.0.0.1:1883", ("127.0.0.1", 1883)), ("[::1]:8883", ("::1", 8883)),
                            ("localhost:8883", ("localhost", 8883))]:  # fmt: skip
        sc = parse(f"[broker]\ntarget = '{target}'\n" + MINIMAL, "x.toml")
        assert sc.broker.kind == "external" and sc.broker.address == address
    sc = parse("[broker]\ntarget = '10.0.0.5:8883'\nallow_remote = true\n" + MINIMAL, "x.toml")
    assert sc.broker.address == ("10.0.0.5", 8883)
    assert "not a loopback" in error("[broker]\ntarget = '[2001:db8::1]:8883'\n" + MINIMAL)
    assert "neither embedded" in error("[broker]\ntarget = '127.0.0.1:70000'\n" + MINIMAL)


def test_events_sorted_and_revoke_reenroll() -> None:
    text = MINIMAL + "[[events]]\nat = 30\naction = 'reenroll'\n[[events]]\nat = 20\naction = 'revoke'\nfraction = 0.1\n"
    sc = parse(text, "x.toml")
    assert [(e.at, e.action, e.fraction) for e in sc.events] == [(20, "revoke", 0.1), (30, "reenroll", None)]


def test_overrides_scale_and_revalidate() -> None:
    sc = parse(
        "duration = 60\n[[fleet]]\nmodel = 'thermometer'\ncount = 30\n[[fleet]]\nmodel = 'bp-cuff'\ncount = 10\n"
        "[[events]]\nat = 40\naction = 'reload-crl'\n",
        "x.toml",
    )
    big = sc.with_overrides(devices=1001, duration=20, workers=2, broker="mosquitto")
    assert big.devices == 1001 and [g.count for g in big.fleet] == [751, 250]
    assert big.duration == 20 and big.events == () and big.workers == 2 and big.broker.kind == "mosquitto"
    assert [g.count for g in sc.with_overrides(devices=1).fleet] == [1]
    assert sc.with_overrides() == sc
    assert sc.with_overrides(isolate=True).broker.isolate and not sc.broker.isolate
    with pytest.raises(ScenarioError, match=r"--devices: must be at most 50000"):
        sc.with_overrides(devices=60_000)
    with pytest.raises(ScenarioError, match=r"--duration: must be a number"):
        sc.with_overrides(duration=0)
    with pytest.raises(ScenarioError, match=r"\(with overrides\): broker.target: 192.0.2.1 is not a loopback"):
        sc.with_overrides(broker="192.0.2.1:8883")


def test_to_toml_escapes_strings() -> None:
    sc = parse('description = "quote \\" backslash \\\\ tab \\t é"\n' + MINIMAL, "x.toml")
    assert parse(sc.to_toml(), "y.toml").description == sc.description


def test_arrival_patterns() -> None:
    rng = np.random.default_rng(1)
    linear = arrival_times(Arrival("linear", 50), 300, rng)
    assert len(linear) == 300 and linear[0] == 0 and np.all(np.diff(linear) > 0)
    assert linear[-1] == pytest.approx(299 / 50)
    poisson = arrival_times(Arrival("poisson", 200), 5000, np.random.default_rng(2))
    assert len(poisson) == 5000 and poisson[0] == 0 and np.all(np.diff(poisson) >= 0)
    assert 5000 / poisson[-1] == pytest.approx(200, rel=0.05)
    again = arrival_times(Arrival("poisson", 200), 5000, np.random.default_rng(2))
    assert np.array_equal(poisson, again)
    burst = arrival_times(Arrival("burst", 1), 1000, rng)
    assert len(burst) == 1000 and not burst.any()
    assert len(arrival_times(Arrival("linear", 1), 0, rng)) == 0


def test_backoff_full_jitter_bounds() -> None:
    rc = Reconnect(initial=0.5, cap=8.0, max_attempts=0)
    rng = np.random.default_rng(3)
    for attempt in range(12):
        ceiling = min(8.0, 0.5 * 2**attempt)
        draws = [backoff(attempt, rc, rng) for _ in range(300)]
        assert all(0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.8 * ceiling and min(draws) < 0.2 * ceiling
    assert 0 <= backoff(10_000, rc, rng) <= 8.0


def test_assign_faults_reproducible_and_disjoint() -> None:
    sc = parse(
        "seed = 9\n[[fleet]]\nmodel = 'thermometer'\ncount = 600\n[[fleet]]\nmodel = 'bp-cuff'\ncount = 400\n"
        "[faults]\nexpired = 0.05\ncn_mismatch = 0.03\nrevoked = 0.04\nweak_key = 0.0\n",
        "x.toml",
    )
    ids = [[f"t-{i}" for i in range(600)], [f"b-{i}" for i in range(400)]]
    out = assign_faults(sc, ids)
    assert {k: len(v) for k, v in out.items()} == {"expired": 50, "cn_mismatch": 30, "revoked": 40}
    chosen = [d for v in out.values() for d in v]
    assert len(set(chosen)) == len(chosen) == 120
    assert {d[0] for d in chosen} == {"t", "b"}  # drawn from the whole fleet
    assert assign_faults(sc, ids) == out
    other = assign_faults(parse(sc.to_toml().replace("seed = 9", "seed = 10"), "x.toml"), ids)
    assert other != out


def test_a_shorter_run_names_the_timed_events_it_drops() -> None:
    """`fleetsim run scenarios/revocation-drill.toml --duration 10` once ran a drill without its revoke and said
    nothing; the CLI now prints this line."""
    drill = load(Path(__file__).parent.parent / "scenarios" / "revocation-drill.toml")
    line = drill.events_dropped_by(drill.with_overrides(duration=10))
    assert line is not None and "revoke at 20 s" in line and "reenroll at 30 s" in line and "2 timed events" in line
    assert drill.events_dropped_by(drill.with_overrides(duration=25)) is not None
    assert drill.events_dropped_by(drill.with_overrides(duration=40)) is None
    assert drill.events_dropped_by(drill) is None


SUBSCRIBED = MINIMAL + 'site = "icu"\n'


def subscribers(body: str, broker: str = "") -> str:
    return broker + SUBSCRIBED + "[[subscribers]]\n" + body


def test_subscriber_groups_parse_round_trip_and_name_each_instance() -> None:
    text = subscribers('name = "nurse"\ncount = 2\ntopics = ["fleet/icu/+/+/alarm", "$share/s/fleet/+/+/+/telemetry"]\n'
                       "qos = 2\nclean_session = false\n", "[broker]\ntarget = 'mosquitto'\n")
    sc = parse(text, "x.toml")
    g, = sc.subscribers
    assert (g.name, g.count, g.qos, g.clean_session) == ("nurse", 2, 2, False)
    assert g.topics == ("fleet/icu/+/+/alarm", "$share/s/fleet/+/+/+/telemetry")
    assert sc.subscriber_ids == ["nurse-001", "nurse-002"] and sc.devices == 10  # counted apart from the fleet
    assert parse(sc.to_toml(), "x.toml") == sc
    one = parse(subscribers('name = "dash"\ntopics = ["fleet/#"]\n'), "x.toml").subscribers[0]
    assert (one.count, one.qos, one.clean_session) == (1, 1, True)
    assert "subscribers" not in parse(MINIMAL, "x.toml").to_dict()  # scenarios without them are written as before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (subscribers('topics = ["fleet/#"]\n'), "subscribers[0].name: missing"),
        (subscribers('name = "n"\n'), "subscribers[0].topics: missing"),
        (subscribers('name = "n"\ntopics = []\n'), "topics: must be a non-empty list of topic filters"),
        (subscribers('name = "n"\ntopics = "fleet/#"\n'), "topics: must be a non-empty list"),
        (subscribers('name = "n"\ntopics = ["fleet/#/alarm"]\n'), "'fleet/#/alarm' is not a valid topic filter"),
        (subscribers('name = "n"\ntopics = ["fleet/ic+/#"]\n'), "is not a valid topic filter"),
        (subscribers('name = "n"\ntopics = ["fleet/ward/#"]\n'), "'fleet/ward/#' matches nothing this fleet publishes"),
        (subscribers('name = "n"\ntopics = ["fleet/+/+/alarm"]\n'), "matches nothing this fleet publishes"),
        (subscribers('name = "n"\ntopics = ["fleet/#", "fleet/+/+/+/alarm"]\n'), "overlap: a message matching both"),
        (subscribers('name = "n"\ntopics = ["$share/s/fleet/#"]\n'),
         "the embedded broker (amqtt, MQTT 3.1.1) has no shared subscriptions"),
        (subscribers('name = "n"\ntopics = ["$share//fleet/#"]\n', "[broker]\ntarget = 'mosquitto'\n"),
         "has no share name"),
        (subscribers('name = "n"\ntopics = ["$share/a+/fleet/#"]\n', "[broker]\ntarget = 'mosquitto'\n"),
         "a share name may not hold + or #"),
        (subscribers('name = "n"\ntopics = ["fleet/#"]\nqos = 3\n'), "subscribers[0].qos: must be an integer from 0 to 2"),
        (subscribers('name = "n"\ntopics = ["fleet/#"]\ncount = 0\n'), "subscribers[0].count: must be a positive"),
        (subscribers('name = "n"\ntopics = ["fleet/#"]\ncount = 1001\n'), "count: must be at most 1000"),
        (subscribers('name = "n"\ntopics = ["fleet/#"]\nclean_sesion = true\n'),
         "unknown key 'clean_sesion' in subscribers[0]; did you mean 'clean_session'?"),
        (subscribers('name = "a/b"\ntopics = ["fleet/#"]\n'), "subscribers[0].name: 'a/b' is not a valid name"),
        (subscribers('name = "n"\ntopics = ["fleet/#"]\n[[subscribers]]\nname = "n"\ntopics = ["fleet/#"]\n'),
         "subscribers[1].name: 'n' names an earlier group too"),
        (subscribers('name = "n"\ntopics = ["fleet/#"]\n', "[broker]\nauth = 'tls'\n"),
         "broker.auth: 'tls': subscribers connect with monitor certificates"),
        ("subscribers = 3\n" + MINIMAL, "subscribers: must be [[subscribers]] tables"),
        (subscribers('name = "n"\ntopics = ["fleet/#"]\n', "[broker]\nprocesses = 2\n"),
         "broker.processes: 2 separate brokers forward no messages to one another"),
    ],
)
def test_subscriber_errors_are_one_line_each(text: str, expected: str) -> None:
    message = error(text)
    assert expected in message and ";" in message


def test_a_shared_subscription_is_refused_when_an_override_picks_the_embedded_broker() -> None:
    sc = parse(subscribers('name = "n"\ntopics = ["$share/s/fleet/#"]\n', "[broker]\ntarget = 'mosquitto'\n"), "x.toml")
    with pytest.raises(ScenarioError, match=r"\(with overrides\): subscribers\[0\].topics: .* no shared subscriptions"):
        sc.with_overrides(broker="embedded")


def test_payload_size_is_a_scenario_setting() -> None:
    assert parse(MINIMAL, "x.toml").mqtt.payload_bytes == 0
    sc = parse("[mqtt]\npayload_bytes = 1024\n" + MINIMAL, "x.toml")
    assert sc.mqtt.payload_bytes == 1024 and parse(sc.to_toml(), "x.toml") == sc
    assert "mqtt.payload_bytes: must be an integer from 0 to 60000, got 70000" in error(
        "[mqtt]\npayload_bytes = 70000\n" + MINIMAL)
