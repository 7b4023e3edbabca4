"""Who a verified client certificate names, by explicit rules: pure (DER bytes in, an identity or a refusal out).

OpenSSL has already checked the chain, validity and the CRL. These rules are the broker's own, so that what is
refused does not depend on what happens to be in the trust store: a leaf signed by the root, or the issuing CA's
own certificate presented as a client's, used to be refused only because no root CRL existed.

* a leaf: basicConstraints present with CA:FALSE;
* issued by the PKI's issuing CA (its subject as issuer, its key id as authority key id);
* extendedKeyUsage present and including clientAuth;
* exactly one CN, exactly one SPIFFE URI SAN ``spiffe://<trust domain>/<role>/<name>`` (fleetsim.pki.certs),
  and the two name the same identity: that name is the only MQTT client id the certificate may use.

The device's model is read from its subject's OU (fleetsim.pki.certs puts it there), for ``topic_rules`` to bind the
model level of its topics; a certificate with no single OU has no model, and may publish under no model level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetsim.pki.certs import parse_spiffe

NOT_A_LEAF = "certificate is not a leaf (CA:TRUE or no basicConstraints)"
WRONG_ISSUER = "certificate not issued by the issuing CA"
NO_CLIENT_AUTH = "certificate lacks extendedKeyUsage clientAuth"
BAD_CN = "certificate has no single CN"
BAD_SAN = "certificate has no single SPIFFE identity of this trust domain"
CN_SAN_MISMATCH = "certificate CN and SPIFFE SAN name different identities"
_E = TypeVar("_E", bound=x509.ExtensionType)
CACHE_LIMIT = 50_000  # judged certificates kept (reconnects skip the parse); emptied when full


@dataclass(frozen=True, slots=True)
class Identity:
    """What a certificate that passed the rules allows: the client id, the role, the serial (checked at CONNECT)."""

    name: str
    role: str
    serial: int
    model: str | None = None  # the subject's single OU; None when it has none or several


class Refused(Exception):
    """A certificate the rules refuse; ``reason`` is its stats key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CertRules:
    """The rules for one PKI: its issuing CA and trust domain (None: any trust domain)."""

    def __init__(self, issuing_ca: x509.Certificate, trust_domain: str | None) -> None:
        self._issuer = issuing_ca.subject
        self._key_id = x509.SubjectKeyIdentifier.from_public_key(issuing_ca.public_key()).digest
        self._trust_domain = trust_domain
        self._cache: dict[bytes, Identity | Refused] = {}

    def judge(self, der: bytes) -> Identity:
        """The identity ``der`` names, or raise Refused. Verdicts are cached by certificate bytes."""
        verdict = self._cache.get(der)
        if verdict is None:
            try:
                verdict = self._judge(x509.load_der_x509_certificate(der))
            except Refused as exc:
                verdict = exc
            except ValueError:
                verdict = Refused(BAD_SAN)  # undecodable extensions: no identity can be read from it
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[der] = verdict
        if isinstance(verdict, Refused):
            raise verdict
        return verdict

    def _judge(self, cert: x509.Certificate) -> Identity:
        ext = cert.extensions
        constraints = _extension(ext, x509.BasicConstraints)
        if constraints is None or constraints.ca:
            raise Refused(NOT_A_LEAF)
        key_id = _extension(ext, x509.AuthorityKeyIdentifier)
        if cert.issuer != self._issuer or key_id is None or key_id.key_identifier != self._key_id:
            raise Refused(WRONG_ISSUER)
        usage = _extension(ext, x509.ExtendedKeyUsage)
        if usage is None or ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
            raise Refused(NO_CLIENT_AUTH)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) != 1:
            raise Refused(BAD_CN)
        cn = str(cns[0].value)
        role, name = self._spiffe(ext)
        if name != cn:
            raise Refused(CN_SAN_MISMATCH)
        units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        model = str(units[0].value) if len(units) == 1 else None
        return Identity(name, role, cert.serial_number, model)

    def _spiffe(self, ext: x509.Extensions) -> tuple[str, str]:
        san = _extension(ext, x509.SubjectAlternativeName)
        uris = san.get_values_for_type(x509.UniformResourceIdentifier) if san is not None else []
        found = [parsed for uri in uris if uri.startswith("spiffe:") and (parsed := parse_spiffe(uri)) is not None]
        if len(found) != 1 or len([u for u in uris if u.startswith("spiffe:")]) != 1:
            raise Refused(BAD_SAN)
        domain, role, name = found[0]
        if self._trust_domain is not None and domain != self._trust_domain:
            raise Refused(BAD_SAN)
        return role, name


def _extension(extensions: x509.Extensions, kind: type[_E]) -> _E | None:
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
