"""Certificate and CRL builders: pure functions from keys and names to signed objects, no I/O."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetsim.pki.keys import PrivateKey, signing_hash

CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Issuer:
    """A CA that signs: its certificate and private key."""

    cert: x509.Certificate
    key: PrivateKey


@dataclass(frozen=True)
class Revocation:
    serial: int
    when: dt.datetime
    reason: x509.ReasonFlags


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


DEVICE, MONITOR = "device", "monitor"
ROLES = (DEVICE, MONITOR)  # a device publishes and subscribes under its own topics; a monitor only reads, all of them
SPIFFE_SCHEME = "spiffe://"


def spiffe_uri(trust_domain: str, name: str, role: str = DEVICE) -> str:
    """The URI SAN naming an identity: ``spiffe://<trust domain>/<role>/<name>`` (amqtt's certificate auth plugin
    reads the device form)."""
    return f"{SPIFFE_SCHEME}{trust_domain}/{role}/{name}"


def parse_spiffe(uri: str) -> tuple[str, str, str] | None:
    """(trust domain, role, name) of a URI :func:`spiffe_uri` wrote; None for any other URI."""
    if not uri.startswith(SPIFFE_SCHEME):
        return None
    domain, _, path = uri[len(SPIFFE_SCHEME):].partition("/")
    role, _, name = path.partition("/")
    if not domain or role not in ROLES or not name or "/" in name:
        return None
    return domain, role, name


def _name(cn: str, org: str, unit: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]
    if unit:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _key_usage(**granted: bool) -> x509.KeyUsage:
    """KeyUsage with only the ``granted`` bits set (digital_signature, key_cert_sign, ...)."""
    bits = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
            "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{b: granted.get(b, False) for b in bits})


def _leaf_key_usage(key: PrivateKey, *, server: bool) -> x509.KeyUsage:
    """RSA key transport needs keyEncipherment on a TLS 1.2 server; everything else only signs."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    return _key_usage(digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPrivateKey) and server)


def _ca_key_usage() -> x509.KeyUsage:
    return _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True)


def _crl_dp(url: str | None) -> list[x509.Extension[x509.ExtensionType]]:
    if not url:
        return []
    point = x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)
    return [x509.Extension(x509.CRLDistributionPoints([point]).oid, False, x509.CRLDistributionPoints([point]))]


def root_ca(key: PrivateKey, org: str, *, days: int = 3650) -> x509.Certificate:
    """A self-signed root: pathlen 1 allows exactly the issuing CA below it."""
    now = utcnow()
    name = _name(f"{org} Root CA", org)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, signing_hash(key))
    )


def _signed_by(
    builder: x509.CertificateBuilder, issuer: Issuer, public_key: object, extensions: Iterable[x509.Extension]
) -> x509.Certificate:
    builder = builder.issuer_name(issuer.cert.subject).public_key(public_key)  # type: ignore[arg-type]
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False  # type: ignore[arg-type]
    )
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
        critical=False,
    )
    for ext in extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder.sign(issuer.key, signing_hash(issuer.key))


def _validity(
    builder: x509.CertificateBuilder, not_before: dt.datetime, not_after: dt.datetime
) -> x509.CertificateBuilder:
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def issuing_ca(key: PrivateKey, root: Issuer, org: str, *, days: int = 1825) -> x509.Certificate:
    """The intermediate that signs devices, the server and the CRL: pathlen 0, no CA below it."""
    now = utcnow()
    builder = _validity(x509.CertificateBuilder().subject_name(_name(f"{org} Issuing CA", org)), now - CLOCK_SKEW,
                        now + dt.timedelta(days=days))
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    builder = builder.add_extension(_ca_key_usage(), critical=True)
    return _signed_by(builder, root, key.public_key(), [])


def server(
    key: PrivateKey, issuer: Issuer, org: str, names: Sequence[str], *, days: int = 825, crl_url: str | None = None
) -> x509.Certificate:
    """The broker's certificate: serverAuth, SANs for loopback plus ``names``."""
    now = utcnow()
    sans: list[x509.GeneralName] = []
    for n in ["localhost", "127.0.0.1", "::1", *names]:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    builder = _validity(x509.CertificateBuilder().subject_name(_name(names[0] if names else "localhost", org)),
                        now - CLOCK_SKEW, now + dt.timedelta(days=days))
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(_leaf_key_usage(key, server=True), critical=True)
    builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    builder = builder.add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(sans))), critical=False)
    return _signed_by(builder, issuer, key.public_key(), _crl_dp(crl_url))


def _naive_utc(when: dt.datetime) -> dt.datetime:
    """What CertificateBuilder's setters store; its constructor, used here for speed, expects it as given."""
    return when.astimezone(dt.UTC).replace(tzinfo=None) if when.tzinfo else when


def _encoded(value: x509.ExtensionType, *, critical: bool) -> x509.Extension[x509.ExtensionType]:
    """An extension pre-encoded to DER: the builder copies its bytes instead of re-encoding it per certificate.
    The certificate is byte-for-byte the same; readers parse it back to the typed extension."""
    return x509.Extension(value.oid, critical, x509.UnrecognizedExtension(value.oid, value.public_bytes()))


class DeviceSigner:
    """Signs device certificates for one issuer, computing what all of them share (issuer name, AKI,
    fixed extensions, digest) once: at fleet scale the per-device Python work is what bulk issuance costs."""

    def __init__(self, issuer: Issuer, *, org: str, trust_domain: str, crl_url: str | None = None) -> None:
        self.issuer = issuer
        self.trust_domain = trust_domain
        self._issuer_name = issuer.cert.subject
        self._org = x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)
        self._units: dict[str, x509.NameAttribute] = {}
        self._hash = signing_hash(issuer.key)
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
        fixed: list[x509.ExtensionType] = [
            x509.BasicConstraints(ca=False, path_length=None),
            _key_usage(digital_signature=True),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
        ]
        self._head = [_encoded(e, critical=isinstance(e, x509.BasicConstraints | x509.KeyUsage)) for e in fixed]
        self._tail = [_encoded(aki, critical=False), *(_encoded(e.value, critical=False) for e in _crl_dp(crl_url))]

    def _subject(self, device_id: str, model: str) -> x509.Name:
        unit = self._units.get(model)
        if unit is None:
            unit = self._units[model] = x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, model)
        return x509.Name([self._org, unit, x509.NameAttribute(NameOID.COMMON_NAME, device_id)])

    def sign(
        self, key: PrivateKey, device_id: str, model: str, not_before: dt.datetime, not_after: dt.datetime,
        role: str = DEVICE,
    ) -> x509.Certificate:
        """A client certificate: CN and SPIFFE URI SAN both name the identity (its MQTT client id) and the SAN
        says its role."""
        public_key = key.public_key()
        uri = spiffe_uri(self.trust_domain, device_id, role)
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)])
        ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
        extensions = [*self._head, x509.Extension(san.oid, False, san), x509.Extension(ski.oid, False, ski),
                      *self._tail]
        builder = x509.CertificateBuilder(
            self._issuer_name, self._subject(device_id, model), public_key,
            x509.random_serial_number(), _naive_utc(not_before), _naive_utc(not_after), extensions,
        )
        return builder.sign(self.issuer.key, self._hash)


CRL_VALIDITY = dt.timedelta(days=7)  # brokers renew at half of it (fleetsim.pki.crl_policy)


def crl(
    issuer: Issuer, revoked: Iterable[Revocation], *, number: int, this_update: dt.datetime,
    valid_for: dt.timedelta = CRL_VALIDITY,
) -> x509.CertificateRevocationList:
    """A CRL signed by ``issuer``; callers keep ``number`` and ``this_update`` strictly increasing.

    The entries go to the builder in one list: adding them one by one copies the list each time (O(n^2): a
    100,000-entry CRL would take minutes).
    """
    entries = [
        x509.RevokedCertificateBuilder()
        .serial_number(r.serial)
        .revocation_date(r.when)
        .add_extension(x509.CRLReason(r.reason), critical=False)
        .build()
        for r in revoked
    ]
    extensions = [
        x509.Extension(x509.oid.ExtensionOID.CRL_NUMBER, False, x509.CRLNumber(number)),
        x509.Extension(x509.oid.ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False,
                       x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())),
    ]
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.cert.subject, last_update=this_update, next_update=this_update + valid_for,
        extensions=extensions, revoked_certificates=entries)
    return builder.sign(issuer.key, signing_hash(issuer.key))
