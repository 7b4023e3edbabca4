"""What fleetsim's devices and its broker front need from a TLS stack, and what each stack reports.

Two stacks implement it: ``system`` (Python's ``ssl`` on the system OpenSSL, today's default) and ``bundled``
(pyOpenSSL on the OpenSSL that ``cryptography``'s wheel ships, which has ML-KEM and ML-DSA). Both raise the
``ssl`` module's exception classes (``SSLWantReadError``, ``SSLCertVerificationError`` with ``verify_code`` and
``verify_message``, ``SSLError`` with OpenSSL's ``reason``...), so the engine's failure classes and paho, which
catches only ``ssl.SSLWantReadError``, work on either without a branch.

Client side (a device), over a non-blocking connected socket: ``ClientTls`` is what the engine drives and hands to
paho (``do_handshake``, ``recv``, ``send``, ``pending``, ``fileno``, ``close``, ``getsockopt`` for the kernel's byte
counts), then ``facts()``, ``resumable_session()`` (given back to ``connect`` to resume) and ``drop_identity()`` (the device's key and certificate
let go once the handshake is done). Server side (the broker front), over memory buffers driven by asyncio:
``ServerTls`` takes the wire's bytes with ``feed`` and gives what TLS wants sent with ``take``.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


def load_pem_file(load: Callable[[str], object], data: bytes) -> None:
    """Call ``load`` with the path of a file holding ``data``: Python's ssl reads chains, keys and CRLs from paths
    only, and pyOpenSSL reads an ML-DSA key only so. An in-memory file (memfd), so key bytes never touch a disk
    (a private temporary file off Linux)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("fleetsim-tls", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, data)
            load(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(prefix="fleetsim-tls-") as f:  # created 0600
        f.write(data)
        f.flush()
        load(f.name)


UNKNOWN = "unknown"  # what a stack that cannot say reports (Python 3.11's ssl and the negotiated group)


@dataclass(frozen=True)
class Settings:
    """A TLS endpoint's choices. ``groups``: the key-exchange groups offered (client) or accepted (server) in
    order of preference, OpenSSL's names (``X25519MLKEM768``, ``X25519``, ``P-256``...); empty: the stack's
    default. ``tickets``: a server sends session tickets (resumption), off where revocation must bite at once."""

    tls_version: str = "any"  # fleetsim.names.TLS_VERSIONS
    groups: tuple[str, ...] = ()
    tickets: bool = False


@dataclass(frozen=True)
class Facts:
    """What a finished handshake negotiated, read from the stack, never assumed: a silent fallback to a classical
    group shows here."""

    version: str
    cipher: str
    group: str  # UNKNOWN where the stack cannot say
    resumed: bool


class ClientTls(Protocol):
    """A device's TLS connection over its own socket; the handshake is driven by the caller."""

    def do_handshake(self) -> None: ...

    def recv(self, size: int) -> bytes: ...

    def send(self, data: bytes | bytearray | memoryview) -> int: ...

    def pending(self) -> int: ...

    def fileno(self) -> int: ...

    def getsockopt(self, level: int, option: int, size: int) -> bytes: ...

    def close(self) -> None: ...

    def facts(self) -> Facts: ...

    def resumable_session(self) -> Any: ...

    def drop_identity(self) -> None: ...


class ClientContext(Protocol):
    """One device's client side: the broker's CA, the device's chain and key, the settings."""

    def connect(self, sock: socket.socket, server_hostname: str, session: Any = None) -> ClientTls: ...


class ServerTls(Protocol):
    """One accepted connection's TLS over memory buffers: bytes in with ``feed``, bytes out with ``take``."""

    def feed(self, data: bytes) -> None: ...

    def take(self) -> bytes: ...

    def do_handshake(self) -> None: ...

    def read(self, size: int) -> bytes: ...

    def write(self, data: bytes) -> int: ...

    def unwrap(self) -> None: ...

    def peer_certificate_der(self) -> bytes | None: ...

    def facts(self) -> Facts: ...


class ServerContext(Protocol):
    def accept(self) -> ServerTls: ...


class Stack(Protocol):
    """A TLS stack: its name, its OpenSSL, and the contexts it makes. ``check`` says in one line (TlsStackError)
    what it cannot do before anything runs."""

    name: str
    openssl_version: str
    chooses_groups: bool

    def check(self, settings: Settings, key_types: Sequence[str] = ()) -> None: ...

    def client(self, ca_pem: bytes, settings: Settings, cert_pem: bytes | None = None,
               key_pem: bytes | None = None) -> ClientContext: ...

    def server(self, cert_chain: Path, key: Path, settings: Settings, *, ca_pem: bytes | None,
               crl_pem: bytes | None) -> ServerContext: ...
