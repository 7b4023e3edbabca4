"""The PKI checked by an independent verifier: the OpenSSL command line, not the library that wrote it."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetsim.errors import PkiError
from fleetsim.pki import Fault, KeyType, Pki
from fleetsim.pki.inventory import Device
from fleetsim.pki.keys import CLASSICAL

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command line")

MakePki = Callable[..., Pki]


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)


def verify(pki: Pki, cert: Path, *extra: str | Path, root: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`openssl verify` of the first certificate in ``cert`` against the root, issuing CA as untrusted."""
    return openssl("verify", "-CAfile", root or pki.layout.root_ca, "-untrusted", pki.layout.issuing_ca,
                   *extra, cert)


def text(path: Path) -> str:
    return openssl("x509", "-in", path, "-noout", "-text").stdout


def crl_serials(pki: Pki) -> set[int]:
    return {r.serial_number for r in x509.load_pem_x509_crl(pki.layout.crl.read_bytes())}


def crl_number(pki: Pki) -> int:
    crl = x509.load_pem_x509_crl(pki.layout.crl.read_bytes())
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


# -- a healthy PKI ---------------------------------------------------------------------------------------
def test_healthy_devices_and_server_verify(pki: Pki) -> None:
    for d in pki.devices(fault="none"):
        r = verify(pki, pki.layout.device_cert(d.id), "-purpose", "sslclient")
        assert r.returncode == 0 and ": OK" in r.stdout, r.stderr
    r = verify(pki, pki.layout.server_cert, "-purpose", "sslserver")
    assert r.returncode == 0, r.stderr


def test_crl_signature_verifies(pki: Pki) -> None:
    r = openssl("crl", "-in", pki.layout.crl, "-CAfile", pki.layout.ca_chain, "-noout", "-verify")
    assert r.returncode == 0 and "verify OK" in r.stderr + r.stdout


def test_ca_extensions(pki: Pki) -> None:
    root, issuing = text(pki.layout.root_ca), text(pki.layout.issuing_ca)
    assert "X509v3 Basic Constraints: critical\n                CA:TRUE, pathlen:1" in root
    assert "X509v3 Basic Constraints: critical\n                CA:TRUE, pathlen:0" in issuing
    for t in (root, issuing):
        assert "X509v3 Key Usage: critical\n                Digital Signature, Certificate Sign, CRL Sign" in t
        assert "X509v3 Subject Key Identifier" in t
    assert "X509v3 Authority Key Identifier" in issuing


def test_device_extensions(pki: Pki) -> None:
    t = text(pki.layout.device_cert("dev-00001"))
    assert "X509v3 Basic Constraints: critical\n                CA:FALSE" in t
    assert "X509v3 Key Usage: critical\n                Digital Signature\n" in t
    assert "X509v3 Extended Key Usage: \n                TLS Web Client Authentication\n" in t
    assert "X509v3 Subject Key Identifier" in t and "X509v3 Authority Key Identifier" in t
    assert f"URI:spiffe://{pki.inventory.trust_domain}/device/dev-00001" in t
    assert f"X509v3 CRL Distribution Points: \n                Full Name:\n                  URI:{pki.layout.crl.as_uri()}" in t
    assert "CN = dev-00001" in t and "OU = generic" in t
    # the AKI of the device is the SKI of the issuing CA
    ca = x509.load_pem_x509_certificate(pki.layout.issuing_ca.read_bytes())
    dev = x509.load_pem_x509_certificate(pki.layout.device_cert("dev-00001").read_bytes())
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert dev.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == ski


def test_server_extensions(pki: Pki) -> None:
    t = text(pki.layout.server_cert)
    assert "CA:FALSE" in t and "TLS Web Server Authentication" in t
    assert "DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, DNS:broker.test" in t
    assert "X509v3 CRL Distribution Points" in t


def test_device_file_is_leaf_then_issuer(pki: Pki) -> None:
    chain = x509.load_pem_x509_certificates(pki.layout.device_cert("dev-00001").read_bytes())
    assert [c.subject.rfc4514_string() for c in chain][1] == \
        x509.load_pem_x509_certificate(pki.layout.issuing_ca.read_bytes()).subject.rfc4514_string()
    cert_pem, key_pem = pki.identity("dev-00001")
    assert b"PRIVATE KEY" in key_pem and cert_pem.count(b"BEGIN CERTIFICATE") == 2


def test_private_keys_are_0600(pki: Pki) -> None:
    keys = [pki.layout.root_key, pki.layout.issuing_key, pki.layout.rogue_key, pki.layout.server_key,
            *(pki.layout.device_key(d.id) for d in pki.devices())]
    for k in keys:
        assert stat.S_IMODE(k.stat().st_mode) == 0o600, k
    assert stat.S_IMODE(pki.layout.private.stat().st_mode) == 0o700


def test_inventory_matches_certificates(pki: Pki) -> None:
    for d in pki.devices():
        cert = x509.load_pem_x509_certificate(pki.layout.device_cert(d.id).read_bytes())
        assert cert.serial_number == d.serial
        assert cert.not_valid_after_utc == d.not_after
    assert Pki.open(pki.root).inventory.devices == pki.inventory.devices


# -- faults: each is what it says -----------------------------------------------------------------------
def test_fault_expired(pki: Pki, faulty_devices: dict[Fault, Device]) -> None:
    r = verify(pki, pki.layout.device_cert(faulty_devices[Fault.EXPIRED].id))
    assert r.returncode != 0 and "certificate has expired" in r.stdout + r.stderr


def test_fault_not_yet_valid(pki: Pki, faulty_devices: dict[Fault, Device]) -> None:
    r = verify(pki, pki.layout.device_cert(faulty_devices[Fault.NOT_YET_VALID].id))
    assert r.returncode != 0 and "certificate is not yet valid" in r.stdout + r.stderr


def test_fault_unknown_ca(pki: Pki, faulty_devices: dict[Fault, Device]) -> None:
    cert = pki.layout.device_cert(faulty_devices[Fault.UNKNOWN_CA].id)
    r = verify(pki, cert)
    assert r.returncode != 0 and "unable to get local issuer certificate" in r.stdout + r.stderr
    # ... but it is a well-formed certificate of the rogue CA
    r = openssl("verify", "-CAfile", pki.layout.rogue_ca, cert)
    assert r.returncode == 0, r.stderr


def pubkey_of_cert(path: Path) -> str:
    return openssl("x509", "-in", path, "-noout", "-pubkey").stdout


def pubkey_of_key(path: Path) -> str:
    return openssl("pkey", "-in", path, "-pubout").stdout


def test_fault_wrong_key(pki: Pki, faulty_devices: dict[Fault, Device]) -> None:
    did = faulty_devices[Fault.WRONG_KEY].id
    assert verify(pki, pki.layout.device_cert(did)).returncode == 0  # the certificate itself is fine
    assert pubkey_of_cert(pki.layout.device_cert(did)) != pubkey_of_key(pki.layout.device_key(did))
    assert pubkey_of_cert(pki.layout.device_cert("dev-00001")) == pubkey_of_key(pki.layout.device_key("dev-00001"))


def test_fault_cn_mismatch(pki: Pki, faulty_devices: dict[Fault, Device]) -> None:
    did = faulty_devices[Fault.CN_MISMATCH].id
    t = text(pki.layout.device_cert(did))
    assert f"CN = {did}-imposter" in t and f"/device/{did}-imposter" in t
    assert verify(pki, pki.layout.device_cert(did)).returncode == 0
    assert pki.device(did).fault is Fault.CN_MISMATCH


def test_fault_weak_key(pki: Pki, faulty_devices: dict[Fault, Device]) -> None:
    did = faulty_devices[Fault.WEAK_KEY].id
    assert "Public-Key: (1024 bit)" in text(pki.layout.device_cert(did))
    r = verify(pki, pki.layout.device_cert(did), "-auth_level", "2")
    assert r.returncode != 0 and "too weak" in r.stdout + r.stderr
    assert pki.device(did).key_type == "rsa-1024"


def test_faults_are_labelled(pki: Pki) -> None:
    assert {d.fault for d in pki.devices(lot="faults")} == set(Fault)
    assert all(d.fault is None for d in pki.devices(fault="none"))


# -- key types --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key_type", [k.value for k in CLASSICAL if k is not KeyType.RSA_1024])
def test_each_key_type_issues_and_verifies(make_pki: MakePki, key_type: str) -> None:
    ca_type = key_type if key_type in ("ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-2048") else "ecdsa-p256"
    p = make_pki(ca_key_type=ca_type, server_key_type=ca_type)
    (d,) = p.issue(1, key_type=key_type)
    assert d.key_type == key_type
    assert verify(p, p.layout.device_cert(d.id)).returncode == 0
    assert verify(p, p.layout.server_cert).returncode == 0
    assert pubkey_of_cert(p.layout.device_cert(d.id)) == pubkey_of_key(p.layout.device_key(d.id))
    r = openssl("crl", "-in", p.layout.crl, "-CAfile", p.layout.ca_chain, "-noout", "-verify")
    assert r.returncode == 0


# -- revocation and the CRL ---------------------------------------------------------------------------------
def test_revoked_device_fails_crl_check_others_pass(make_pki: MakePki) -> None:
    p = make_pki()
    p.issue(3)
    p.revoke(device_ids=["dev-00002"])
    r = verify(p, p.layout.device_cert("dev-00002"), "-crl_check", "-CRLfile", p.layout.crl)
    assert r.returncode != 0 and "certificate revoked" in r.stdout + r.stderr
    for ok in ("dev-00001", "dev-00003"):
        r = verify(p, p.layout.device_cert(ok), "-crl_check", "-CRLfile", p.layout.crl)
        assert r.returncode == 0, r.stdout + r.stderr
    assert p.device("dev-00002").status == "revoked"
    assert p.device("dev-00002").revocation_reason == "keyCompromise"


def test_crl_number_and_this_update_strictly_increase(make_pki: MakePki) -> None:
    p = make_pki()
    seen = []
    for _ in range(3):  # three CRLs within the same second or two
        p.write_crl()
        crl = x509.load_pem_x509_crl(p.layout.crl.read_bytes())
        seen.append((crl_number(p), crl.last_update_utc))
    numbers, times = zip(*seen, strict=True)
    assert list(numbers) == sorted(set(numbers)) and numbers[0] >= 2
    assert all(a < b for a, b in itertools.pairwise(times))


def test_revoke_by_lot(make_pki: MakePki) -> None:
    p = make_pki()
    p.issue(3, lot="a")
    b = p.issue(2, lot="b")
    revoked = p.revoke(lot="b")
    assert {d.id for d in revoked} == {d.id for d in b}
    assert crl_serials(p) == {d.serial for d in b}
    assert {d.id for d in p.devices(status="revoked")} == {d.id for d in b}


def test_revoke_fraction_is_reproducible_with_seed(make_pki: MakePki) -> None:
    picks = []
    for _ in range(2):
        p = make_pki()
        p.issue(20)
        picks.append(sorted(d.id for d in p.revoke(fraction=0.25, seed=7)))
    assert picks[0] == picks[1] and len(picks[0]) == 5
    p = make_pki()
    p.issue(20)
    assert sorted(d.id for d in p.revoke(fraction=0.25, seed=8)) != picks[0]


def test_reenroll_new_serial_old_stays_revoked(make_pki: MakePki) -> None:
    p = make_pki()
    p.issue(2)
    old = p.device("dev-00001")
    old_key = p.layout.device_key("dev-00001").read_bytes()
    p.revoke(device_ids=["dev-00001"])
    (new,) = p.reenroll(["dev-00001"])
    assert new.serial != old.serial and new.generation == 2 and new.status == "valid"
    assert p.layout.device_key("dev-00001").read_bytes() != old_key
    assert stat.S_IMODE(p.layout.device_key("dev-00001").stat().st_mode) == 0o600
    p.write_crl()
    assert old.serial in crl_serials(p) and new.serial not in crl_serials(p)
    r = verify(p, p.layout.device_cert("dev-00001"), "-crl_check", "-CRLfile", p.layout.crl)
    assert r.returncode == 0, r.stdout + r.stderr


def test_reenroll_supersedes_a_valid_certificate(make_pki: MakePki) -> None:
    p = make_pki()
    p.issue(1)
    old = p.device("dev-00001")
    (new,) = p.reenroll(["dev-00001"])
    assert old.serial in crl_serials(p) and new.serial not in crl_serials(p)
    reasons = {r.serial: r.reason for r in p.inventory.revoked}
    assert reasons[old.serial] == "superseded"


# -- incremental issuance and bad input --------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(f.relative_to(root)): (f.stat().st_ino, f.stat().st_mtime_ns)
            for f in root.rglob("*") if f.is_file()}


def test_incremental_issuance_touches_no_existing_file(make_pki: MakePki) -> None:
    p = make_pki()
    p.issue(300, workers=2)  # above the parallel threshold: the pool path
    before = snapshot(p.root)
    added = p.issue(5)
    after = snapshot(p.root)
    changed = {k for k in before if after[k] != before[k]}
    assert changed <= {"inventory.json", ".lock"}, changed
    assert [d.id for d in added] == [f"dev-{n:05d}" for n in range(301, 306)]
    assert len(Pki.open(p.root).devices()) == 305


def test_bad_init_leaves_nothing(tmp_path: Path) -> None:
    for options in ({"ca_key_type": "dsa"}, {"server_key_type": "rsa-512"}, {"crl_url": "ldap://x/crl"}):
        with pytest.raises(PkiError):
            Pki.init(tmp_path / "p", **options)
        assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs", [
    {"count": 0}, {"count": -1}, {"count": 2, "key_type": "dsa"}, {"count": 2, "fault": "meh"},
    {"count": 2, "days": 0}, {"count": 2, "prefix": "../x"},
])
def test_bad_issue_changes_nothing(pki: Pki, kwargs: dict[str, object]) -> None:
    before = snapshot(pki.root)
    with pytest.raises(PkiError):
        pki.issue(**kwargs)  # type: ignore[arg-type]
    assert snapshot(pki.root) == before


def test_bad_revoke_changes_nothing(pki: Pki) -> None:
    before = snapshot(pki.root)
    for kwargs in ({"device_ids": ["ghost"]}, {}, {"lot": "nope"}, {"fraction": 1.5},
                   {"device_ids": ["dev-00001"], "reason": "boredom"}):
        with pytest.raises(PkiError):
            pki.revoke(**kwargs)
    assert snapshot(pki.root) == before


def test_corrupt_files_give_pki_errors(make_pki: MakePki) -> None:
    p = make_pki()
    p.issue(1)
    armour = b"PRIVATE KEY-----"  # split so no key-looking block stands in the repository
    p.layout.issuing_key.write_bytes(b"-----BEGIN " + armour + b"\nnot base64\n-----END " + armour + b"\n")
    before = snapshot(p.root)
    with pytest.raises(PkiError, match="corrupt PEM"):
        p.issue(1)
    with pytest.raises(PkiError, match="corrupt PEM"):
        p.revoke(device_ids=["dev-00001"])
    assert snapshot(p.root) == before
    p.layout.inventory.write_text("{not json")
    with pytest.raises(PkiError, match="corrupt"):
        Pki.open(p.root)


def test_open_non_pki(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="no PKI"):
        Pki.open(tmp_path / "missing")
    with pytest.raises(PkiError, match="not a fleetsim PKI"):
        Pki.open(tmp_path)


def test_open_or_init_makes_the_pki_once_then_opens_it(tmp_path: Path) -> None:
    """The README's one call after `make demo` made pki/ (Pki.init said "already a PKI" there)."""
    made = Pki.open_or_init(tmp_path / "pki")
    made.issue(2, workers=1)
    again = Pki.open_or_init(tmp_path / "pki")
    assert again.root == made.root and set(again.inventory.devices) == {"dev-00001", "dev-00002"}
    (tmp_path / "other" / "x").mkdir(parents=True)
    with pytest.raises(PkiError, match=r"not a fleetsim PKI.*a new or empty one"):
        Pki.open_or_init(tmp_path / "other")


def test_inventory_is_json_with_every_device(pki: Pki) -> None:
    data = json.loads(pki.layout.inventory.read_text())
    assert {d["id"] for d in data["devices"]} == set(pki.inventory.devices)
    d = pki.device("dev-00001")
    assert d.not_before <= dt.datetime.now(dt.UTC) < d.not_after
    assert os.access(pki.layout.ca_chain, os.R_OK)


def test_fast_inventory_text_equals_its_json(make_pki: MakePki) -> None:
    p = make_pki()
    issued = p.issue(300, workers=2)  # the pooled path, with Device.batch's shared encoding
    on_disk = {d["id"]: d for d in json.loads(p.layout.inventory.read_text())["devices"]}
    assert [on_disk[d.id] for d in issued] == [json.loads(json.dumps(d.to_json())) for d in issued]
    p.issue(2, fault="expired", prefix="old")
    p.revoke(device_ids=["dev-00003"])
    inv = Pki.open(p.root).inventory
    assert json.loads(inv.dumps()) == json.loads(json.dumps(inv.to_json()))


def test_a_failed_issue_leaves_the_inventory_as_it_was(make_pki: MakePki) -> None:
    p = make_pki()
    p.issue(3)
    before = p.layout.inventory.read_bytes()
    p.layout.issuing_key.write_bytes(b"garbage")
    with pytest.raises(PkiError):
        p.issue(400, workers=2)
    assert p.layout.inventory.read_bytes() == before


def test_a_batch_that_fails_half_way_leaves_the_inventory_as_it_was(make_pki: MakePki) -> None:
    p = make_pki()
    p.issue(3)
    before = p.layout.inventory.read_bytes()
    (p.layout.devices / "dev-00200.key").mkdir()  # the writer fails there, with jobs signed and written before it
    with pytest.raises(OSError):
        p.issue(400, workers=2)
    assert p.layout.inventory.read_bytes() == before


def test_counts_are_checked_by_the_pki_itself(pki: Pki) -> None:
    before = pki.layout.inventory.read_bytes()
    with pytest.raises(PkiError, match="days must be positive, not 0"):
        pki.reenroll(["dev-00001"], days=0)
    with pytest.raises(PkiError, match="workers must be positive, not -2"):
        pki.issue(300, workers=-2)
    assert pki.layout.inventory.read_bytes() == before


def test_monitor_identity(make_pki: MakePki) -> None:
    """A monitor is named like a device (CN = client id) with its role in the SPIFFE SAN and the inventory."""
    p = make_pki()
    p.issue(2)
    m = p.issue_monitor("dashboard")
    cert = x509.load_pem_x509_certificate(p.layout.device_cert("dashboard").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://fleetsim.local/monitor/dashboard"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dashboard"
    assert ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert (m.role, m.serial) == ("monitor", cert.serial_number)
    assert p.layout.device_key("dashboard").stat().st_mode & 0o777 == 0o600
    again = Pki.open(p.root)
    assert [d.id for d in again.devices()] == ["dev-00001", "dev-00002"]  # devices only, by default
    assert [d.id for d in again.devices(role="monitor")] == ["dashboard"]
    with pytest.raises(PkiError, match="already an identity"):
        again.issue_monitor("dashboard")
    with pytest.raises(PkiError, match="bad device id"):
        again.issue_monitor("../x")
