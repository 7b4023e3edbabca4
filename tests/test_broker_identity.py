"""Which certificates may be a client at all, and as whom: the broker's explicit identity rules (hole 6).

The odd certificates are signed at test time with the PKI's own CA keys. The PKI's ca-chain.pem also gets a root
CRL, as an operator might add one: then OpenSSL's chain and CRL checks pass for a leaf signed by the root and for
the issuing CA's own certificate, and only a rule can refuse them. Each test runs against the embedded broker and
Mosquitto; what Mosquitto 2.0 cannot refuse is asserted as its documented limitation (brokers/README.md).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mqtt_raw import Raw, connect, device_context

from fleetsim.broker.embedded.cert_rules import (
    BAD_SAN,
    CN_SAN_MISMATCH,
    NO_CLIENT_AUTH,
    NOT_A_LEAF,
    WRONG_ISSUER,
    CertRules,
    Refused,
)
from fleetsim.pki import Pki, keys
from fleetsim.pki.certs import Issuer, crl, spiffe_uri

HAVE_MOSQUITTO = os.access("/usr/sbin/mosquitto", os.X_OK)
NOW = dt.datetime.now(dt.UTC)


def _issuer(pki: Pki, which: str) -> Issuer:
    lay = pki.layout
    cert_path, key_path = (lay.root_ca, lay.root_key) if which == "root" else (lay.issuing_ca, lay.issuing_key)
    return Issuer(x509.load_pem_x509_certificate(cert_path.read_bytes()), keys.from_pem(key_path.read_bytes()))


def odd_identity(pki: Pki, file_id: str, *, cn: str, uris: list[str], issuer: str = "issuing", ca: bool = False,
                 eku: list[x509.ObjectIdentifier] | None = None) -> str:
    """Sign a client certificate the PKI itself would never issue; its files go to devices/<file_id>.pem/.key."""
    signer = _issuer(pki, issuer)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(signer.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(NOW - dt.timedelta(minutes=5)).not_valid_after(NOW + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
                              critical=False))
    if uris:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    cert = builder.sign(signer.key, keys.signing_hash(signer.key))
    lay = pki.layout
    lay.device_cert(file_id).write_bytes(cert.public_bytes(Encoding.PEM) + signer.cert.public_bytes(Encoding.PEM))
    fd = os.open(lay.device_key(file_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(keys.to_pem(key))
    return file_id


def issuing_ca_as_client(pki: Pki) -> str:
    """The issuing CA's own certificate and key, presented as a client's."""
    lay = pki.layout
    lay.device_cert("issuing-ca-itself").write_bytes(lay.issuing_ca.read_bytes())
    fd = os.open(lay.device_key("issuing-ca-itself"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(lay.issuing_key.read_bytes())
    return "issuing-ca-itself"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    p = Pki.init(tmp_path_factory.mktemp("identity") / "pki")
    p.issue(4, prefix="dev", workers=1)
    td = p.inventory.trust_domain
    clients = [ExtendedKeyUsageOID.CLIENT_AUTH]
    odd_identity(p, "cn-a-san-b", cn="twin-a", uris=[spiffe_uri(td, "dev-00002")], eku=clients)
    odd_identity(p, "root-signed", cn="dev-00003", uris=[spiffe_uri(td, "dev-00003")], issuer="root", eku=clients)
    odd_identity(p, "ca-true-leaf", cn="ca-leaf", uris=[spiffe_uri(td, "ca-leaf")], ca=True, eku=clients)
    odd_identity(p, "no-eku", cn="no-eku", uris=[spiffe_uri(td, "no-eku")])
    odd_identity(p, "two-sans", cn="dev-00004", uris=[spiffe_uri(td, "dev-00004"), spiffe_uri(td, "dev-00001")],
                 eku=clients)
    odd_identity(p, "foreign-domain", cn="dev-00004", uris=[spiffe_uri("evil.example", "dev-00004")], eku=clients)
    issuing_ca_as_client(p)
    root = _issuer(p, "root")
    root_crl = crl(root, [], number=1, this_update=NOW - dt.timedelta(minutes=1))
    with open(p.layout.ca_chain, "ab") as chain:  # an operator's root CRL: the chain check now passes for all
        chain.write(root_crl.public_bytes(Encoding.PEM))
    return p



def outcome(target: object, pki: Pki, file_id: str, client_id: str) -> str:
    """'connack N', 'closed' or the TLS error the client saw."""
    try:
        conn = Raw(target.port, device_context(pki, file_id))  # type: ignore[attr-defined]
        conn.send(connect(client_id))
        ack = conn.connack()
    except (OSError, TimeoutError) as exc:
        return f"tls: {exc}"
    conn.close()
    return "closed" if ack is None else f"connack {ack[1]}"


# (certificate files, client id it tries, why the embedded broker refuses it)
CASES = [
    ("cn-a-san-b", "twin-a", CN_SAN_MISMATCH),
    ("cn-a-san-b", "dev-00002", CN_SAN_MISMATCH),
    ("root-signed", "dev-00003", WRONG_ISSUER),
    ("issuing-ca-itself", "fleetsim Issuing CA", NOT_A_LEAF),
    ("ca-true-leaf", "ca-leaf", NOT_A_LEAF),
    ("no-eku", "no-eku", NO_CLIENT_AUTH),
    ("two-sans", "dev-00004", BAD_SAN),
    ("foreign-domain", "dev-00004", BAD_SAN),
]


@pytest.mark.parametrize(("file_id", "client_id", "reason"), CASES, ids=[f"{c[0]}-as-{c[1]}" for c in CASES])
def test_certificate_outside_the_rules_is_refused(target: object, pki: Pki, file_id: str, client_id: str,
                                                  reason: str) -> None:
    seen = outcome(target, pki, file_id, client_id)
    if target.kind == "embedded":  # type: ignore[attr-defined]
        assert seen == "connack 5", seen
        assert target.stats()["rejected"].get(reason, 0) >= 1  # type: ignore[attr-defined]
    else:  # Mosquitto 2.0 has no such rules: it admits whatever verifies (documented limitation)
        assert seen == "connack 0", seen


def test_server_certificate_as_client_fails_the_handshake(target: object, pki: Pki) -> None:
    """serverAuth only: OpenSSL's purpose check refuses it on both brokers, before any rule."""
    lay = pki.layout
    lay.device_cert("server-itself").write_bytes(lay.server_cert.read_bytes())
    fd = os.open(lay.device_key("server-itself"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(lay.server_key.read_bytes())
    seen = outcome(target, pki, "server-itself", "localhost")
    assert seen == "closed" or seen.startswith("tls"), seen


def test_healthy_device_still_admitted(target: object, pki: Pki) -> None:
    assert outcome(target, pki, "dev-00001", "dev-00001") == "connack 0"


# --- the rules as pure logic --------------------------------------------------------------------------------------
def _der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


def test_rules_name_the_identity_and_its_role(pki: Pki, tmp_path: Path) -> None:
    rules = CertRules(x509.load_pem_x509_certificate(pki.layout.issuing_ca.read_bytes()), pki.inventory.trust_domain)
    device = rules.judge(_der(pki.layout.device_cert("dev-00001")))
    assert (device.name, device.role, device.serial) == ("dev-00001", "device", pki.device("dev-00001").serial)
    fresh = Pki.init(tmp_path / "p")
    fresh.issue_monitor("dashboard")
    rules2 = CertRules(x509.load_pem_x509_certificate(fresh.layout.issuing_ca.read_bytes()), None)
    monitor = rules2.judge(_der(fresh.layout.device_cert("dashboard")))
    assert (monitor.name, monitor.role) == ("dashboard", "monitor")
    with pytest.raises(Refused, match="not issued by the issuing CA"):  # another PKI's device
        rules.judge(_der(fresh.layout.device_cert("dashboard")))
    for file_id, _, reason in CASES:
        with pytest.raises(Refused) as info:
            rules.judge(_der(pki.layout.device_cert(file_id)))
        assert info.value.reason == reason
