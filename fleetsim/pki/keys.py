"""Key types a device, server or CA can have, and how each signs a certificate.

The ML-DSA types (FIPS 204) sign with the OpenSSL that ``cryptography`` bundles (4.x with cryptography >= 50);
the system OpenSSL that Python's ``ssl`` is built on here (3.0) can neither load nor verify them, so only the
bundled TLS stack (fleetsim.tls.bundled) can present or check them (field notes, post-quantum).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

PrivateKey = CertificateIssuerPrivateKeyTypes


class KeyType(StrEnum):
    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"
    ED25519 = "ed25519"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"
    RSA_1024 = "rsa-1024"  # only for the weak-key fault: OpenSSL's default security level refuses it
    ML_DSA_44 = "ml-dsa-44"
    ML_DSA_65 = "ml-dsa-65"
    ML_DSA_87 = "ml-dsa-87"

    @property
    def post_quantum(self) -> bool:
        """True for ML-DSA: a key the system OpenSSL (3.0) cannot use."""
        return self in _ML_DSA

    @classmethod
    def parse(cls, text: str) -> KeyType:
        """Parse a key-type name, raising ValueError that lists the choices."""
        try:
            return cls(text.lower())
        except ValueError:
            choices = ", ".join(k.value for k in cls if k is not cls.RSA_1024)
            raise ValueError(f"unknown key type {text!r} (choose one of: {choices})") from None


_ML_DSA: dict[KeyType, Callable[[], PrivateKey]] = {
    KeyType.ML_DSA_44: mldsa.MLDSA44PrivateKey.generate,
    KeyType.ML_DSA_65: mldsa.MLDSA65PrivateKey.generate,
    KeyType.ML_DSA_87: mldsa.MLDSA87PrivateKey.generate,
}
CLASSICAL = tuple(k for k in KeyType if not k.post_quantum)  # what the system TLS stack can present and verify
POST_QUANTUM_NAMES = frozenset(k.value for k in _ML_DSA)


_ML_DSA_PRIVATE = mldsa.MLDSA44PrivateKey | mldsa.MLDSA65PrivateKey | mldsa.MLDSA87PrivateKey
_ML_DSA_PUBLIC = mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey | mldsa.MLDSA87PublicKey


def post_quantum(key: object) -> bool:
    """True for an ML-DSA private or public key."""
    return isinstance(key, _ML_DSA_PRIVATE | _ML_DSA_PUBLIC)


def generate(key_type: KeyType) -> PrivateKey:
    """A fresh private key of ``key_type``."""
    if key_type in _ML_DSA:
        return _ML_DSA[key_type]()
    if key_type is KeyType.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.ECDSA_P384:
        return ec.generate_private_key(ec.SECP384R1())
    if key_type is KeyType.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    bits = int(key_type.value.split("-")[1])
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def signing_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    """The digest a CA key signs with: none for Ed25519 and ML-DSA (they hash inside the signature), SHA-384 for
    P-384, SHA-256 otherwise."""
    if isinstance(key, ed25519.Ed25519PrivateKey) or post_quantum(key):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def to_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: devices and brokers load it without a passphrase."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def from_pem(data: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | _ML_DSA_PRIVATE
    ):
        raise ValueError(f"unsupported key {type(key).__name__}")
    return key
