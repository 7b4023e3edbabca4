"""ML-DSA identities in the PKI, checked by the OpenSSL that ``cryptography`` bundles (through pyOpenSSL's X509Store):
the system's ``openssl`` command (3.0 here) cannot read them, which is the point of the clear refusals tested last."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto

from fleetsim.errors import PkiError
from fleetsim.pki import KeyType, Pki
from fleetsim.pki.keys import CLASSICAL, POST_QUANTUM_NAMES

MakePki = Callable[..., Pki]
ML_DSA = [k.value for k in KeyType if k.post_quantum]


def bundled_verify(p: Pki, cert_path: Path, *, crl: bool = True) -> str | None:
    """None when the bundled OpenSSL verifies the leaf of ``cert_path`` up to the PKI's root (with the CRL), else
    OpenSSL's reason."""
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(x509.load_pem_x509_certificate(p.layout.root_ca.read_bytes())))
    if crl:
        store.add_crl(x509.load_pem_x509_crl(p.layout.crl.read_bytes()))
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
    leaf, *chain = (crypto.X509.from_cryptography(c) for c in x509.load_pem_x509_certificates(cert_path.read_bytes()))
    try:
        crypto.X509StoreContext(store, leaf, chain).verify_certificate()
    except crypto.X509StoreContextError as exc:
        return str(exc)
    return None


def test_key_types_split_into_classical_and_post_quantum() -> None:
    assert set(ML_DSA) == POST_QUANTUM_NAMES == {"ml-dsa-44", "ml-dsa-65", "ml-dsa-87"}
    assert all(not k.post_quantum for k in CLASSICAL) and len(CLASSICAL) + len(ML_DSA) == len(KeyType)
    assert KeyType.parse("ML-DSA-65") is KeyType.ML_DSA_65


@pytest.mark.parametrize(("ca_type", "device_type"), [
    ("ml-dsa-44", "ml-dsa-44"), ("ml-dsa-65", "ml-dsa-65"), ("ml-dsa-87", "ml-dsa-87"),
    ("ml-dsa-65", "ecdsa-p256"),  # post-quantum CAs signing classical devices
    ("ecdsa-p256", "ml-dsa-44"),  # and the reverse
])
def test_ml_dsa_identities_verify_in_the_bundled_openssl(make_pki: MakePki, ca_type: str, device_type: str) -> None:
    p = make_pki(ca_key_type=ca_type)
    (d,) = p.issue(1, key_type=device_type)
    assert d.key_type == device_type
    assert bundled_verify(p, p.layout.device_cert(d.id)) is None
    assert bundled_verify(p, p.layout.server_cert) is None
    leaf = x509.load_pem_x509_certificates(p.layout.device_cert(d.id).read_bytes())[0]
    crl = x509.load_pem_x509_crl(p.layout.crl.read_bytes())
    issuing = x509.load_pem_x509_certificate(p.layout.issuing_ca.read_bytes())
    assert crl.is_signature_valid(issuing.public_key())  # type: ignore[arg-type]
    assert (leaf.signature_hash_algorithm is None) == ca_type.startswith("ml-dsa")  # ML-DSA hashes inside
    for key in (p.layout.device_key(d.id), p.layout.issuing_key, p.layout.root_key, p.layout.server_key):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600


def test_a_revoked_ml_dsa_device_fails_the_crl_check_others_pass(make_pki: MakePki) -> None:
    p = make_pki(ca_key_type="ml-dsa-65")
    p.issue(2, key_type="ml-dsa-65")
    p.revoke(device_ids=["dev-00001"])
    assert "certificate revoked" in (bundled_verify(p, p.layout.device_cert("dev-00001")) or "")
    assert bundled_verify(p, p.layout.device_cert("dev-00002")) is None


def test_an_ml_dsa_device_is_reenrolled_with_its_key_type(make_pki: MakePki) -> None:
    p = make_pki()
    (d,) = p.issue(1, key_type="ml-dsa-44")
    (again,) = p.reenroll([d.id])
    assert again.key_type == "ml-dsa-44" and again.serial != d.serial
    assert "certificate revoked" not in (bundled_verify(p, p.layout.device_cert(d.id)) or "")


def test_sizes_grow_with_the_ml_dsa_level(make_pki: MakePki) -> None:
    """DER size of a device certificate under a CA of its own key type: fleetsim's carry a SAN, a CRL distribution
    point and key identifiers, so ~0.6 KB for ECDSA (the field notes' bare probe: 329 B); the ML-DSA key and
    signature add kilobytes (field notes: ~3.9 KB for ML-DSA-44, ~5.5 KB for -65)."""
    sizes = {}
    for kt in ("ecdsa-p256", "ml-dsa-44", "ml-dsa-65", "ml-dsa-87"):
        p = make_pki(ca_key_type=kt)
        (d,) = p.issue(1, key_type=kt)
        leaf = x509.load_pem_x509_certificates(p.layout.device_cert(d.id).read_bytes())[0]
        sizes[kt] = len(leaf.public_bytes(Encoding.DER))
    assert sizes["ecdsa-p256"] < 1_000 < 3_000 < sizes["ml-dsa-44"] < sizes["ml-dsa-65"] < sizes["ml-dsa-87"]


def test_the_system_stack_refuses_an_ml_dsa_device_in_one_line(make_pki: MakePki) -> None:
    p = make_pki()
    (pq,) = p.issue(1, key_type="ml-dsa-65")
    (ec,) = p.issue(1, key_type="ecdsa-p256", lot="ec")
    p.client_context(ec.id)  # a classical device of the same PKI still works
    with pytest.raises(PkiError, match=r"ml-dsa-65 device keys, which Python's ssl .* cannot use") as info:
        p.client_context(pq.id)
    assert "\n" not in str(info.value) and "bundled" in str(info.value)


def test_a_pki_with_an_ml_dsa_ca_says_it_serves_only_the_bundled_stack(make_pki: MakePki) -> None:
    p = make_pki(ca_key_type="ml-dsa-44", server_key_type="ecdsa-p256")
    (d,) = p.issue(1, key_type="ecdsa-p256")
    assert p.post_quantum_cas() == ["root-ca.pem", "issuing-ca.pem"]
    with pytest.raises(PkiError, match=r"ML-DSA CA .* directory of its own"):
        p.client_context(d.id)
