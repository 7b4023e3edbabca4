"""The system TLS stack: Python's ``ssl`` on the OpenSSL it was built with (3.0 on Debian 12).

What the engine and the broker front do today, behind fleetsim.tls.stack's interface. Python 3.11's ``ssl`` can
neither choose nor report the key-exchange group, and OpenSSL 3.0 has no ML-KEM or ML-DSA: asking for groups or an
ML-DSA key type is one clear line (``check``), never a silent fallback.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleetsim.errors import TlsStackError
from fleetsim.names import TLS12_CIPHERS, TLS_VERSIONS, tls_range
from fleetsim.pki.keys import POST_QUANTUM_NAMES
from fleetsim.tls.stack import UNKNOWN, Facts, Settings, load_pem_file

NAME = "system"
TICKETS_WHEN_ON = 2  # as the embedded broker's front


def _check_version(settings: Settings) -> None:
    if settings.tls_version not in TLS_VERSIONS:
        raise TlsStackError(f"unknown TLS version {settings.tls_version!r}", f"use {', '.join(TLS_VERSIONS)}")


class SystemStack:
    name = NAME
    openssl_version = ssl.OPENSSL_VERSION
    chooses_groups = False

    def check(self, settings: Settings, key_types: Sequence[str] = ()) -> None:
        _check_version(settings)
        if settings.groups:
            raise TlsStackError(f"the system TLS stack ({self.openssl_version}) cannot choose key-exchange groups "
                                f"(asked for {', '.join(settings.groups)})",
                                'use tls_stack = "bundled", or leave the groups to the stack\'s default')
        pq = sorted(set(key_types) & POST_QUANTUM_NAMES)
        if pq:
            raise TlsStackError(f"the system TLS stack ({self.openssl_version}) has no ML-DSA: it cannot present or "
                                f"verify {', '.join(pq)} certificates", 'use tls_stack = "bundled"')

    def client(self, ca_pem: bytes, settings: Settings, cert_pem: bytes | None = None,
               key_pem: bytes | None = None) -> SystemClientContext:
        self.check(settings)
        return SystemClientContext(ca_pem, settings, cert_pem, key_pem)

    def server(self, cert_chain: Path, key: Path, settings: Settings, *, ca_pem: bytes | None,
               crl_pem: bytes | None) -> SystemServerContext:
        self.check(settings)
        return SystemServerContext(cert_chain, key, settings, ca_pem, crl_pem)


def _facts(obj: ssl.SSLSocket | ssl.SSLObject) -> Facts:
    return Facts(obj.version() or "", (obj.cipher() or ("",))[0], UNKNOWN, bool(obj.session_reused))


class SystemClientTls(ssl.SSLSocket):
    """An ``ssl.SSLSocket`` with the interface's two extras; the engine and paho use the rest as they do today."""

    _fleetsim_anonymous: ssl.SSLContext | None = None

    def facts(self) -> Facts:
        return _facts(self)

    def resumable_session(self) -> ssl.SSLSession | None:
        """The session to resume with next time: only one the broker gave a ticket for (TLS 1.3 sends it after
        the handshake, so ask once some data has been read)."""
        sess = self.session
        return sess if sess is not None and sess.has_ticket else None

    def drop_identity(self) -> None:
        """Move the connection to a context without a client certificate (OpenSSL's SSL_set_SSL_CTX): OpenSSL
        frees its copy of the device's chain and key (fleetsim.engine.identity)."""
        if self._fleetsim_anonymous is not None:
            self.context = self._fleetsim_anonymous


class SystemClientContext:
    def __init__(self, ca_pem: bytes, settings: Settings, cert_pem: bytes | None, key_pem: bytes | None) -> None:
        self._anonymous = self._build(ca_pem, settings)
        if cert_pem is None or key_pem is None:
            self._ctx = self._anonymous
        else:
            self._ctx = self._build(ca_pem, settings)
            load_pem_file(self._ctx.load_cert_chain, cert_pem.rstrip(b"\n") + b"\n" + key_pem)

    @staticmethod
    def _build(ca_pem: bytes, settings: Settings) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname, no system CAs loaded
        ctx.sslsocket_class = SystemClientTls
        ctx.load_verify_locations(cadata=ca_pem.decode())
        ctx.minimum_version, ctx.maximum_version = tls_range(settings.tls_version)
        return ctx

    def connect(self, sock: socket.socket, server_hostname: str, session: Any = None) -> SystemClientTls:
        tls = self._ctx.wrap_socket(sock, server_side=False, do_handshake_on_connect=False,
                                    server_hostname=server_hostname, session=session)
        assert isinstance(tls, SystemClientTls)
        if self._ctx is not self._anonymous:
            tls._fleetsim_anonymous = self._anonymous
        return tls


class SystemServerTls:
    """One accepted connection over two ``ssl.MemoryBIO``s (what the broker front drives today)."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.sslobj = ctx.wrap_bio(self._in, self._out, server_side=True)

    def feed(self, data: bytes) -> None:
        self._in.write(data)

    def take(self) -> bytes:
        return self._out.read()

    def do_handshake(self) -> None:
        self.sslobj.do_handshake()

    def read(self, size: int) -> bytes:
        return self.sslobj.read(size)

    def write(self, data: bytes) -> int:
        return self.sslobj.write(data)

    def unwrap(self) -> None:
        self.sslobj.unwrap()

    def peer_certificate_der(self) -> bytes | None:
        return self.sslobj.getpeercert(binary_form=True)

    def facts(self) -> Facts:
        return _facts(self.sslobj)


class SystemServerContext:
    """The broker front's context (as fleetsim.broker.embedded.tls_context builds it): client certificates
    required and checked against the CA chain and the leaf's CRL when ``ca_pem`` is given."""

    def __init__(self, cert_chain: Path, key: Path, settings: Settings, ca_pem: bytes | None,
                 crl_pem: bytes | None) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version, ctx.maximum_version = tls_range(settings.tls_version)
        ctx.set_ciphers(TLS12_CIPHERS)
        ctx.num_tickets = TICKETS_WHEN_ON if settings.tickets else 0
        if not settings.tickets:
            ctx.options |= ssl.OP_NO_TICKET
        ctx.load_cert_chain(cert_chain, key)
        if ca_pem is not None:
            if crl_pem is None:
                raise TlsStackError("no CRL to check client certificates against",
                                    "create one with `fleetsim pki crl DIR`")
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=ca_pem.decode())
            load_pem_file(lambda path: ctx.load_verify_locations(cafile=path), crl_pem)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        self.ctx = ctx

    def accept(self) -> SystemServerTls:
        return SystemServerTls(self.ctx)
