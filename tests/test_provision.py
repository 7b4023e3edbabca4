"""From a scenario's fleet to identities in a real PKI: faults spread by seed, pools reused across runs."""

from collections import Counter

from fleetsim import provision
from fleetsim.pki import Pki
from fleetsim.scenario import parse

SCENARIO = """
name = "t"
seed = 7
duration = 10
[[fleet]]
model = "pulse-oximeter"
count = 30
lot = "ward-a"
[[fleet]]
model = "ecg-patch"
count = 10
lot = "ward-b"
key_type = "ed25519"
[faults]
expired = 0.1
revoked = 0.05
weak_key = 0.05
"""


def test_plan_spreads_faults_reproducibly():
    sc = parse(SCENARIO, "t.toml")
    slots = provision.plan(sc)
    assert len(slots) == 40
    assert Counter(s.fault for s in slots) == {None: 32, "expired": 4, "revoked": 2, "weak-key": 2}
    assert provision.plan(sc) == slots


def test_provision_issues_once_and_reuses(tmp_path):
    pki = Pki.init(tmp_path / "pki")
    slots = provision.plan(parse(SCENARIO, "t.toml"))
    first = provision.provision(pki, slots)
    assert len({p.device_id for p in first}) == 40
    issued = len(pki.inventory.devices)
    second = provision.provision(Pki.open(pki.root), slots)
    assert second == first
    assert len(Pki.open(pki.root).inventory.devices) == issued
    by_id = pki.inventory.devices
    for p in first:
        d = by_id[p.device_id]
        if p.slot.fault == "revoked":
            assert d.status == "revoked"
        elif p.slot.fault == "weak-key":
            assert d.key_type == "rsa-1024"
        elif p.slot.fault is None:
            assert d.status == "valid" and d.fault is None and d.key_type == p.slot.key_type
        else:
            assert d.fault is not None and d.fault.value == p.slot.fault
