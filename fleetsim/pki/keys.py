"""Key types a device, server or CA can have, and how each signs a certificate."""

from __future__ import annotations

from enum import StrEnum

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
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

    @classmethod
    def parse(cls, text: str) -> KeyType:
        """Parse a key-type name, raising ValueError that lists the choices."""
        try:
            return cls(text.lower())
        except ValueError:
            choices = ", ".join(k.value for k in cls if k is not cls.RSA_1024)
            raise ValueError(f"unknown key type {text!r} (choose one of: {choices})") from None


def generate(key_type: KeyType) -> PrivateKey:
    """A fresh private key of ``key_type``."""
    if key_type is KeyType.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.ECDSA_P384:
        return ec.generate_private_key(ec.SECP384R1())
    if key_type is KeyType.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    bits = int(key_type.value.split("-")[1])
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def signing_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    """The digest a CA key signs with: none for Ed25519, SHA-384 for P-384, SHA-256 otherwise."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
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
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise ValueError(f"unsupported key {type(key).__name__}")
    return key
