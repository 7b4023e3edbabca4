"""Device identities (certificate chain + key bytes) and the client TLS connections they turn into.

Python's ssl module takes a client certificate only per context. Two ways to give every device its own:

* per-device contexts (the default for shards up to ``PER_DEVICE_CONTEXTS_UP_TO`` devices): each device's
  SSLContext is built once (~0.8 ms here: OpenSSL 3.0's PEM key decoder dominates) and cached, so a reconnect
  storm never pays that again; it costs ~25-35 KB per device for as long as the shard runs;
* one shared context: the device's chain is loaded into it immediately before ``wrap_socket``, with no await in
  between. OpenSSL's SSL_new copies the context's certificate and key into the new connection, so the next
  device's load does not touch it. ~0.8 ms of CPU per attempt, ~22 KB less per connected device: what a fleet of
  tens of thousands needs. (Loading only the leaf and letting OpenSSL build the chain from the trust store saves
  ~5 KB per connection but costs a chain verification per handshake and sends the root too: at 400 connects/s on
  2 cores it pushed connect p50 from ~12 ms to ~340 ms. Not done.)

Either way the connection holds its own reference to the device's certificate, chain and key, which a client
needs only during its handshake. On the shared context those references are the only ones left, so
:meth:`ContextFactory.handshaken` moves the connection to a context without a client certificate
(``SSLSocket.context``, OpenSSL's SSL_set_SSL_CTX, which replaces the connection's certificate set): OpenSSL frees
the parsed copies, ~13 KB per connected device (38.6 -> 25.1 KB of heap per connection, measured here).
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fleetsim.engine.outcome import DeviceError, Failure
from fleetsim.names import TLS_PINNED as TLS_VERSIONS
from fleetsim.pki.layout import DEVICE_CERT_SUFFIX, DEVICE_KEY_SUFFIX, Layout

PER_DEVICE_CONTEXTS_UP_TO = 2_000  # devices per shard; above it, one shared context keeps memory per device low
MIN_RSA_BITS = 2048  # OpenSSL's default security level 2 (112 bits): what the device's own library enforces


@dataclass(frozen=True, slots=True)
class Identity:
    """What a device presents: its certificate chain (leaf first), its private key, its key type.

    ``version`` changes whenever the files behind it do, so cached contexts know when to rebuild.
    """

    cert_pem: bytes
    key_pem: bytes
    key_type: str = ""
    version: object = 0
    cert_source: str = "the device certificate"  # where each came from, for the one line a failure gets
    key_source: str = "the device key"


class IdentitySource(Protocol):
    def get(self, device_id: str) -> Identity:
        """The device's identity now (read fresh on each connection attempt)."""


class MemoryIdentities:
    """Identities handed over as bytes (what a shard receives from the orchestrator)."""

    def __init__(self, identities: Mapping[str, Identity]) -> None:
        self._ids = identities

    def get(self, device_id: str) -> Identity:
        return self._ids[device_id]


class PkiIdentities:
    """Identities read from a PKI directory: a device re-enrolled mid-run uses its new certificate next time.

    Read afresh on every attempt, not cached: ~2 KB of PEM per device would otherwise stay in memory for the
    whole run to save two small file reads per attempt. The paths are plain strings read with os.open: pathlib's
    joins and buffered file objects took 26 us an attempt here, strings and os.read 10 us.
    """

    def __init__(self, pki_dir: Path | str, key_types: Mapping[str, str] | None = None) -> None:
        self._devices = str(Layout(Path(pki_dir)).devices) + os.sep
        self._key_types = key_types or {}

    def get(self, device_id: str) -> Identity:
        """Raises DeviceError (client_identity) naming the file when one is missing or unreadable."""
        cert_path = f"{self._devices}{device_id}{DEVICE_CERT_SUFFIX}"
        key_path = f"{self._devices}{device_id}{DEVICE_KEY_SUFFIX}"
        cert, cert_v = _read(cert_path)
        key, key_v = _read(key_path)
        return Identity(cert, key, self._key_types.get(device_id, ""), (*cert_v, *key_v), cert_path, key_path)


def _read(path: str) -> tuple[bytes, tuple[int, int]]:
    """A file's bytes and (inode, mtime) of that same file: files are replaced atomically, a new inode each."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DeviceError(Failure.CLIENT_IDENTITY, f"{path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        data = os.read(fd, st.st_size + 1)
        while len(data) > st.st_size and (more := os.read(fd, 65536)):  # it grew since fstat
            data += more
        return data, (st.st_ino, st.st_mtime_ns)
    except OSError as exc:
        raise DeviceError(Failure.CLIENT_IDENTITY, f"{path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def check(ident: Identity) -> str:
    """Refuse, before anything reaches the broker, an identity the device could not present; return the serial
    (hex) of the certificate it presents, so each attempt says which certificate it used.

    A corrupt or missing file is the simulator's (or its user's) problem, not the broker's: without this, garbage
    PEM surfaced after the TCP connect as a TLS error and the broker logged an aborted handshake. The two faults
    made on purpose (a key of another certificate, an RSA key below OpenSSL's security level 2) keep their own
    classes. Parsing with ``cryptography`` costs ~40 us (EC); the shard runs it once per identity version.
    """
    try:
        leaf = x509.load_pem_x509_certificates(ident.cert_pem)[0]
    except ValueError:
        raise DeviceError(Failure.CLIENT_IDENTITY, f"{ident.cert_source}: not a PEM certificate") from None
    try:  # the key's own RSA consistency check costs ~40 ms (RSA-2048) and proves nothing the match below does not
        key = serialization.load_pem_private_key(ident.key_pem, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError):  # TypeError: encrypted, and no password to give
        raise DeviceError(Failure.CLIENT_IDENTITY, f"{ident.key_source}: not an unencrypted PEM private key") \
            from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise DeviceError(Failure.CLIENT_KEY_MISMATCH, f"{ident.key_source} is not the key of its certificate")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise DeviceError(Failure.CLIENT_KEY_REJECTED, f"RSA-{key.key_size} key: the device's TLS library refuses "
                                                       f"keys below {MIN_RSA_BITS} bits (security level 2)")
    return format(leaf.serial_number, "x")


def as_source(identities: Mapping[str, Identity] | IdentitySource) -> IdentitySource:
    if isinstance(identities, Mapping):
        return MemoryIdentities(identities)
    return identities


def _load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """load_cert_chain wants a path: give it an in-memory file (memfd) so key bytes never touch a disk."""
    data = cert_pem.rstrip(b"\n") + b"\n" + key_pem
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("fleetsim-identity", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(prefix="fleetsim-id-") as f:  # created 0600
        f.write(data)
        f.flush()
        ctx.load_cert_chain(f.name)


class ContextFactory:
    """Builds and caches each device's client SSLContext: the broker's CA, its own chain and key, TLS versions.

    Verification stays on (CERT_REQUIRED + check_hostname): the device checks the broker it talks to.
    """

    def __init__(self, ca_pem: bytes, tls_version: str = "any", *, shared: bool = False) -> None:
        self._ca = ca_pem.decode()
        self._tls_version = tls_version
        self._cache: dict[str, tuple[object, ssl.SSLContext]] = {}
        self.shared = shared
        self._shared: ssl.SSLContext | None = None
        self._anonymous: ssl.SSLContext | None = None

    def wrap(self, device_id: str, ident: Identity, sock: socket.socket, server_hostname: str,
             session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        """``sock`` wrapped as ``device_id``'s client side, handshake not started; ssl.SSLError for a bad key."""
        if self.shared:
            if self._shared is None:
                self._shared = self.build(ident, client_cert=False)
            ctx = self._shared
            _load_chain(ctx, ident.cert_pem, ident.key_pem)  # no await until wrap_socket has copied it
        else:
            ctx = self.context(device_id, ident)
        return ctx.wrap_socket(sock, server_side=False, do_handshake_on_connect=False,
                               server_hostname=server_hostname, session=session)

    def anonymous(self) -> ssl.SSLContext:
        """The one context without a client certificate: server-only TLS, and connections past their handshake."""
        if self._anonymous is None:
            self._anonymous = self.build(Identity(b"", b""), client_cert=False)
        return self._anonymous

    def handshaken(self, tls: ssl.SSLSocket) -> None:
        """Let OpenSSL free the connection's copy of the device's certificate, chain and key (shared context only).

        Safe once the handshake is done: a client presents its certificate only in a handshake, and fleetsim's
        devices neither allow TLS 1.3 post-handshake authentication nor meet renegotiating brokers.
        """
        if self.shared:
            tls.context = self.anonymous()

    def context(self, device_id: str, ident: Identity) -> ssl.SSLContext:
        """The device's context; raises ssl.SSLError when the key does not fit the certificate."""
        key = (id(ident.cert_pem), ident.version) if ident.version == 0 else ident.version
        hit = self._cache.get(device_id)
        if hit is not None and hit[0] == key:
            return hit[1]
        ctx = self.build(ident)
        self._cache[device_id] = (key, ctx)
        return ctx

    def build(self, ident: Identity, *, client_cert: bool = True) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname, no system CAs loaded
        ctx.load_verify_locations(cadata=self._ca)
        if self._tls_version in TLS_VERSIONS:
            ctx.minimum_version = ctx.maximum_version = TLS_VERSIONS[self._tls_version]
        else:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if client_cert:
            _load_chain(ctx, ident.cert_pem, ident.key_pem)
        return ctx

    def forget(self, device_id: str) -> None:
        self._cache.pop(device_id, None)
