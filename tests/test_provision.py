"""From a scenario's fleet to identities in a real PKI: faults spread by seed, pools reused across runs."""

from collections import Counter

from fleetsim.pki import Pki
from fleetsim.runner import provision
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


def test_device_ids_follow_from_the_scenario_not_from_what_the_pki_holds(tmp_path):
    slots = provision.plan(parse(SCENARIO, "t.toml"))
    empty = Pki.init(tmp_path / "a")
    busy = Pki.init(tmp_path / "b")
    busy.issue(7, prefix="ward-a-pulse-oximeter", model="pulse-oximeter", lot="ward-a", workers=1)  # 00001-00007
    busy.issue(3, prefix="fault-expired-ecdsa-p256", fault="expired", workers=1)
    ids_a = [p.device_id for p in provision.provision(empty, slots)]
    ids_b = [p.device_id for p in provision.provision(busy, slots)]
    assert ids_a == ids_b == provision.device_ids(slots)
    assert ids_a[0] == "ward-a-pulse-oximeter-00001" and "ward-b-ecg-patch-00001" in ids_a
    assert len(set(ids_a)) == 40


def test_an_id_held_with_other_properties_is_one_line(tmp_path):
    pki = Pki.init(tmp_path / "pki")
    pki.issue(ids=["ward-b-ecg-patch-00001"], model="ecg-patch", lot="ward-b", key_type="ecdsa-p384", workers=1)
    import pytest

    from fleetsim.errors import PkiError

    with pytest.raises(PkiError) as e:
        provision.provision(pki, provision.plan(parse(SCENARIO, "t.toml")))
    assert "ward-b-ecg-patch-00001" in str(e.value) and "key type ecdsa-p384" in str(e.value)
    assert "ed25519" in str(e.value) and "\n" not in str(e.value)
    assert "group 2 (lot 'ward-b') another lot" in str(e.value) and "--pki on another directory" in str(e.value)


def test_a_healthy_device_an_earlier_run_revoked_is_re_enrolled(tmp_path):
    pki = Pki.init(tmp_path / "pki")
    slots = provision.plan(parse(SCENARIO, "t.toml"))
    first = provision.provision(pki, slots)
    victim = next(p.device_id for p in first if p.slot.fault is None)
    old_serial = pki.device(victim).serial
    pki.revoke(device_ids=[victim])
    again = provision.provision(Pki.open(pki.root), slots)
    assert again == first
    d = Pki.open(pki.root).device(victim)
    assert d.status == "valid" and d.serial != old_serial


def test_subscribers_get_monitor_identities_of_their_own(tmp_path):
    import pytest

    from fleetsim.errors import PkiError

    pki = Pki.init(tmp_path / "pki")
    provision.provision_monitors(pki, ["station-001", "station-002"])
    held = Pki.open(pki.root).inventory.devices
    assert {held[i].role for i in ("station-001", "station-002")} == {"monitor"}
    provision.provision_monitors(Pki.open(pki.root), ["station-001"])  # held already: nothing issued
    assert Pki.open(pki.root).inventory.devices["station-001"].serial == held["station-001"].serial
    pki.issue(ids=["dev-1"], model="thermometer", workers=1)
    with pytest.raises(PkiError, match="holds dev-1 as a device, not a subscriber's monitor identity"):
        provision.provision_monitors(Pki.open(pki.root), ["dev-1"])
    pki.revoke(device_ids=["station-002"])
    with pytest.raises(PkiError, match="the subscriber identity station-002 is revoked"):
        provision.provision_monitors(Pki.open(pki.root), ["station-002"])
