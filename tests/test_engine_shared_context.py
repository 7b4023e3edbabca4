"""One shared client context for a whole shard (big fleets): every device must still present its own identity.

The embedded broker refuses (CONNACK 5) any client id its certificate does not name, so a device that went out
with its neighbour's certificate would show up here as connack_not_authorized. Past its handshake a connection
moves to a context without a client certificate (so OpenSSL frees the device's copy): it must keep working.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fleetsim import scenario as sc
from fleetsim.broker.embedded.broker import start_embedded
from fleetsim.broker.handle import BrokerOptions
from fleetsim.engine import DeviceSpec, Identity, ShardSpec, run_shard
from fleetsim.engine import shard as shard_module
from fleetsim.engine.identity import ContextFactory
from fleetsim.pki import Pki

DEVICES = 40


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    p = Pki.init(tmp_path_factory.mktemp("shared") / "pki")
    p.issue(DEVICES, workers=1)
    return p


@pytest.fixture(scope="module")
def broker(pki: Pki) -> Iterator[Any]:
    with start_embedded(pki.root, BrokerOptions(port=0)) as b:
        yield b


@pytest.mark.parametrize("tls_version", ["1.2", "1.3"])
def test_burst_on_one_shared_context_keeps_identities_apart(pki: Pki, broker: Any, tls_version: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shard_module, "PER_DEVICE_CONTEXTS_UP_TO", 0)
    scenario = sc.parse(f"""
name = "shared"
duration = 6
[broker]
tls_version = "{tls_version}"
[mqtt]
qos_telemetry = 1
[arrival]
pattern = "burst"
[reconnect]
max_attempts = 1
[[fleet]]
model = "heart-rate-monitor"
count = {DEVICES}
""", "shared.toml")
    ids = sorted(d.id for d in pki.devices())
    spec = ShardSpec(index=0, devices=tuple(DeviceSpec(id=i, model="heart-rate-monitor") for i in ids),
                     host=broker.host, port=broker.port, ca_pem=pki.layout.ca_chain.read_bytes(),
                     t0=time.time() + 0.2)
    result = run_shard(scenario, spec, {i: Identity(*pki.identity(i)) for i in ids})
    outcomes = result.attempts["outcome"]
    assert outcomes.count("connected") == DEVICES, set(zip(outcomes, result.attempts["failure"], strict=True))
    messages = result.messages
    assert messages["published"] >= DEVICES  # every 5 s for ~6 s, on connections past their context switch
    assert messages["acknowledged"] == messages["published"] and messages["lost"] == 0


def test_a_handshaken_connection_lets_go_of_the_device_identity(pki: Pki, broker: Any) -> None:
    device = sorted(d.id for d in pki.devices())[0]
    factory = ContextFactory(pki.layout.ca_chain.read_bytes(), shared=True)
    raw = socket.create_connection((broker.host, broker.port), timeout=5)
    with factory.wrap(device, Identity(*pki.identity(device)), raw, "localhost") as tls:
        tls.settimeout(5)
        tls.do_handshake()
        factory.handshaken(tls)
        assert tls.context is factory.anonymous()
        tls.sendall(_connect_packet(device))  # the broker reads the identity from its side of the handshake
        assert tls.recv(4) == bytes([0x20, 0x02, 0x00, 0x00])  # CONNACK, accepted


def _connect_packet(client_id: str) -> bytes:
    """A bare MQTT 3.1.1 CONNECT (clean session, keepalive 60 s)."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body
