"""One shared client context for a whole shard (big fleets): every device must still present its own identity.

The embedded broker refuses (CONNACK 5) any client id its certificate does not name, so a device that went out
with its neighbour's certificate would show up here as connack_not_authorized.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from fleetsim import scenario as sc
from fleetsim.broker.embedded import start_embedded
from fleetsim.broker.handle import BrokerOptions
from fleetsim.engine import DeviceSpec, Identity, ShardSpec, run_shard
from fleetsim.engine import shard as shard_module
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
duration = 2
[broker]
tls_version = "{tls_version}"
[arrival]
pattern = "burst"
[reconnect]
max_attempts = 1
[[fleet]]
model = "thermometer"
count = {DEVICES}
""", "shared.toml")
    ids = sorted(d.id for d in pki.devices())
    spec = ShardSpec(index=0, devices=tuple(DeviceSpec(id=i, model="thermometer") for i in ids),
                     host=broker.host, port=broker.port, ca_pem=pki.layout.ca_chain.read_bytes(),
                     t0=time.time() + 0.2)
    result = run_shard(scenario, spec, {i: Identity(*pki.identity(i)) for i in ids})
    outcomes = result.attempts["outcome"]
    assert outcomes.count("connected") == DEVICES, set(zip(outcomes, result.attempts["failure"], strict=True))
