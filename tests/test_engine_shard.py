"""The shard runner against a real Mosquitto on loopback, with real certificates issued at test time."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from fleetsim import scenario as sc
from fleetsim.broker.handle import BrokerOptions
from fleetsim.engine import DeviceSpec, Identity, PkiIdentities, ShardResult, ShardSpec, run_shard
from fleetsim.engine.identity import PER_DEVICE_CONTEXTS_UP_TO
from fleetsim.engine.shard import keepalive_slices, setup_seconds
from fleetsim.pki import Fault, Pki

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(120)]
HEALTHY = 40
FAULT_EXPECTED = {
    "expired-00001": "alert_expired",
    "not-yet-valid-00001": "alert_bad_certificate",
    "unknown-ca-00001": "alert_unknown_ca",
    "wrong-key-00001": "client_key_mismatch",
    "weak-key-00001": "client_key_rejected",
    "revoked-00001": "alert_revoked",
    "cn-mismatch-00001": None,  # Mosquitto never compares the CN with the client id: it connects (ACL'd)
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    p = Pki.init(tmp_path_factory.mktemp("engine") / "pki")
    p.issue(HEALTHY, workers=1)
    for fault in Fault:
        p.issue(1, prefix=fault.value, lot="faults", fault=fault, workers=1)
    p.issue(1, prefix="revoked", lot="faults", workers=1)
    p.issue(1, prefix="renew", lot="renew", workers=1)
    p.revoke(device_ids=["revoked-00001", "renew-00001"])
    return p


@pytest.fixture(scope="module")
def broker(pki: Pki) -> Iterator[Any]:
    from fleetsim.broker.mosquitto.broker import start_mosquitto

    with start_mosquitto(pki.root, BrokerOptions(port=0)) as b:
        yield b


def scenario(duration: float = 3.0, **mqtt: Any) -> sc.Scenario:
    s = sc.parse(f"""
name = "engine-test"
seed = 7
duration = {duration}
connect_timeout = 3
[broker]
target = "mosquitto"
[arrival]
pattern = "burst"
[reconnect]
initial = 0.1
cap = 0.3
[[fleet]]
model = "ecg-patch"
count = 1
""")
    return replace(s, mqtt=replace(s.mqtt, **mqtt)) if mqtt else s


def shard(pki: Pki, broker: Any, ids: list[str], **over: Any) -> ShardSpec:
    spec = ShardSpec(index=0, devices=tuple(DeviceSpec(id=i, model="ecg-patch") for i in ids), host=broker.host,
                     port=broker.port, ca_pem=pki.layout.ca_chain.read_bytes(), t0=time.time() + 0.3)
    return replace(spec, **over)


def identities(pki: Pki, ids: list[str]) -> dict[str, Identity]:
    return {i: Identity(*pki.identity(i), key_type="ecdsa-p256") for i in ids}


def rows(result: ShardResult) -> list[dict[str, Any]]:
    cols = result.attempts
    return [{k: cols[k][i] for k in cols} for i in range(len(cols["device_id"]))]


def test_fleet_connects_publishes_and_accounts_for_every_message(pki: Pki, broker: Any) -> None:
    ids = [f"dev-{i:05d}" for i in range(1, HEALTHY + 1)]
    snaps: list[dict[str, Any]] = []
    result = run_shard(scenario(3.0, qos_telemetry=1), shard(pki, broker, ids), identities(pki, ids),
                       progress=snaps.append)
    attempts = rows(result)
    assert len(attempts) == HEALTHY and all(r["outcome"] == "connected" for r in attempts)
    for r in attempts:
        parts = r["setup_ms"] + r["wait_ms"] + r["tcp_ms"] + r["tls_ms"] + r["mqtt_ms"]
        assert abs(r["total_ms"] - parts) < 1e-6, r  # contiguous phases add up to the total
        assert r["tls_version"] == "TLSv1.3" and r["cipher"]
    m = result.messages
    assert m["published"] >= HEALTHY * 2  # ecg-patch publishes every second
    assert m["published"] == m["acknowledged"] + m["lost"] and m["qos0_published"] == 0
    assert m["lost"] == 0 and m["acknowledged"] == m["published"]
    assert len(m["ack_ms"]) == m["acknowledged"]
    assert sum(result.series["acked"]) == m["acknowledged"] == sum(result.series["published"])
    assert sorted(result.sessions["device_id"]) == ids and set(result.sessions["cause"]) == {"stop"}
    assert set(result.devices["state"]) == {"connected"}
    assert snaps and [s for s in snaps if not s["stopping"]][-1]["connected"] == HEALTHY  # before the stop


def test_devices_are_set_up_before_t0_as_far_as_the_lead_allows_and_counted(pki: Pki, broker: Any) -> None:
    ids = [f"dev-{i:05d}" for i in range(1, 11)]
    per_device = setup_seconds(scenario(), shard(pki, broker, ids), identities(pki, ids))
    assert 0 < per_device < 0.5  # measured: a TLS context built from the device's identity, its client made
    password = scenario()
    password = replace(password, broker=replace(password.broker, auth="password"))
    assert setup_seconds(password, shard(pki, broker, ids), identities(pki, ids)) == 0.0  # nothing to build
    many = [ids[i % 10] for i in range(PER_DEVICE_CONTEXTS_UP_TO + 1)]  # one shared context: nothing ahead
    assert setup_seconds(scenario(), shard(pki, broker, many), identities(pki, ids)) == 0.0
    ahead = run_shard(scenario(1.0), shard(pki, broker, ids, t0=time.time() + 0.5), identities(pki, ids))
    assert (ahead.loop["prepared"], ahead.loop["to_prepare"]) == (10, 10)
    late = run_shard(scenario(1.0), shard(pki, broker, ids, t0=time.time()), identities(pki, ids))
    assert (late.loop["prepared"], late.loop["to_prepare"]) == (0, 10)
    assert [r["outcome"] for r in rows(late)] == ["connected"] * 10  # set up at their first attempt instead


@pytest.mark.parametrize("tls_version", ["1.2", "1.3"])
def test_each_fault_lands_in_its_class(pki: Pki, broker: Any, tls_version: str) -> None:
    s = scenario(1.5)
    s = replace(s, broker=replace(s.broker, tls_version=tls_version), reconnect=replace(s.reconnect, max_attempts=1))
    ids = list(FAULT_EXPECTED)
    result = run_shard(s, shard(pki, broker, ids), identities(pki, ids))
    got = {r["device_id"]: r["failure"] for r in rows(result)}
    assert got.keys() == FAULT_EXPECTED.keys()
    for device, failure in got.items():
        expected = FAULT_EXPECTED[device]
        if tls_version == "1.3" and expected and expected.startswith("alert_"):
            # TLS 1.3: the alert comes at the first read; when our CONNECT reaches the broker after it closed,
            # its RST can wipe the alert before we read it (a real race, seen here): then there is no reason.
            assert failure in (expected, "rejected_after_handshake"), device
        else:
            assert failure == expected, device
    for r in rows(result):
        if r["failure"] and r["failure"].startswith("alert"):
            assert r["tls_ms"] is not None and r["total_ms"] >= r["tls_ms"]


def test_server_side_failures_and_no_broker(pki: Pki, broker: Any) -> None:
    s = replace(scenario(1.0), reconnect=sc.Reconnect(0.1, 0.2, 1))
    ids = ["dev-00001"]
    rogue = run_shard(s, shard(pki, broker, ids, ca_pem=pki.layout.rogue_ca.read_bytes()), identities(pki, ids))
    assert rows(rogue)[0]["failure"] == "server_untrusted"
    name = run_shard(s, shard(pki, broker, ids, server_hostname="not-the-broker.test"), identities(pki, ids))
    assert rows(name)[0]["failure"] == "server_name_mismatch"
    from fleetsim.broker.mosquitto.broker import free_port

    down = run_shard(s, shard(pki, broker, ids, port=free_port("127.0.0.1")), identities(pki, ids))
    assert rows(down)[0]["failure"] == "tcp_refused"


def test_reenrolled_identity_used_on_next_attempt(pki: Pki, broker: Any) -> None:
    ids = ["renew-00001"]
    timer = threading.Timer(0.9, pki.reenroll, args=(ids,))
    timer.start()
    try:
        result = run_shard(scenario(2.5), shard(pki, broker, ids), PkiIdentities(pki.root))
    finally:
        timer.join()
    outcomes = [r["failure"] or "connected" for r in rows(result)]
    assert outcomes[0] in ("alert_revoked", "rejected_after_handshake")  # see the TLS 1.3 race above
    assert outcomes[-1] == "connected"
    assert set(outcomes[:-1]) <= {"alert_revoked", "rejected_after_handshake"}


def test_stop_event_ends_the_shard_early(pki: Pki, broker: Any) -> None:
    ids = [f"dev-{i:05d}" for i in range(1, 11)]
    stop = threading.Event()
    threading.Timer(1.2, stop.set).start()
    t = time.monotonic()
    result = run_shard(scenario(30.0), shard(pki, broker, ids), identities(pki, ids), stop=stop)
    assert time.monotonic() - t < 6
    assert Counter(r["outcome"] for r in rows(result)) == {"connected": 10}
    assert result.messages["lost"] == 0


def test_one_publish_timer_fires_each_device_in_time_order_and_honours_cancels() -> None:
    """Pure scheduling logic: the shard's single publish timer (no broker)."""
    import asyncio

    from fleetsim.engine.shard import _Device, _Publishes

    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[str, float]] = []
        devs = {n: _Device(DeviceSpec(id=n, model="thermometer")) for n in "abcd"}
        t0 = loop.time()

        def fire(dev: _Device) -> None:
            fired.append((dev.spec.id, loop.time() - t0))
            if dev.spec.id == "a" and len(fired) < 3:
                pubs.at(loop.time() + 0.15, dev)  # rescheduled from inside the timer: others keep their times

        pubs = _Publishes(loop, fire)
        pubs.at(t0 + 0.10, devs["a"])
        pubs.at(t0 + 0.20, devs["b"])
        pubs.at(t0 + 0.05, devs["c"])
        pubs.at(t0 + 0.12, devs["d"])
        devs["d"].pub_due = None  # cancelled
        await asyncio.sleep(0.5)
        return fired

    fired = asyncio.run(main())
    assert [n for n, _ in fired] == ["c", "a", "b", "a"]
    for (_, at), want in zip(fired, (0.05, 0.10, 0.20, 0.25), strict=True):
        assert want - 0.002 <= at < want + 0.04


def test_keepalive_ticks_cover_the_fleet_once_a_second_a_slice_at_a_time() -> None:
    devices = list(range(10_001))
    ticks = keepalive_slices(len(devices), 0.1)
    second = [devices[next(ticks)] for _ in range(10)]
    assert sorted(d for part in second for d in part) == devices
    assert max(len(part) for part in second) == 1_001
    assert devices[next(ticks)] == second[0]  # and again the next second
    assert list(range(3))[next(keepalive_slices(3, 0.1))] == [0]  # fewer devices than periods: one at a time
