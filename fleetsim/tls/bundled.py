"""The bundled TLS stack: pyOpenSSL on the OpenSSL that ``cryptography``'s wheel ships (4.0 with cryptography 50),
which has ML-KEM key exchange (X25519MLKEM768 is its default group) and ML-DSA certificates.

Errors are raised as the ``ssl`` module's classes (fleetsim.tls.stack), with OpenSSL's reason in ``reason`` as
Python's ssl spells it (``TLSV13_ALERT_CERTIFICATE_REVOKED``), so callers classify both stacks alike.

pyOpenSSL has no public call for four things the system stack does or reports, so this module reaches its binding
(``OpenSSL._util.lib``) for them, all in the section marked "private binding" and fenced by
tests/test_pyopenssl_contract.py: choosing the key-exchange groups (``SSL_CTX_set1_curves_list``: the binding has no
``SSL_CTX_set1_groups_list``; OPENSSL_CONF cannot do it, being per process, read by both OpenSSLs and fixed once
forked workers start), checking the broker's name during the handshake as Python's ``check_hostname`` does
(``X509_VERIFY_PARAM_set1_host``/``_ip``), whether a session was resumed (``SSL_session_reused``), and the
verification error behind a "certificate verify failed" (``SSL_get_verify_result``).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from fleetsim.errors import TlsStackError
from fleetsim.names import TLS12_CIPHERS, TLS_VERSIONS
from fleetsim.tls.stack import UNKNOWN, Facts, Settings, load_pem_file

NAME = "bundled"
READ_CHUNK = 65536
_VERSIONS = {"1.2": (SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION), "1.3": (SSL.TLS1_3_VERSION, SSL.TLS1_3_VERSION),
             "any": (SSL.TLS1_2_VERSION, 0)}  # 0: the highest the library has


# -- private binding (tests/test_pyopenssl_contract.py) -----------------------------------------------------------
def set_groups(ctx: SSL.Context, groups: Sequence[str]) -> None:
    """Offer (client) or accept (server) exactly ``groups``, in order of preference."""
    if _lib.SSL_CTX_set1_curves_list(ctx._context, ":".join(groups).encode()) != 1:
        _lib.ERR_clear_error()
        raise TlsStackError(f"the bundled TLS stack ({openssl_version()}) does not know the group list "
                            f"{':'.join(groups)!r}", "use OpenSSL's names: X25519MLKEM768, X25519, P-256, MLKEM768...")


def _expect_peer_name(conn: SSL.Connection, name: str) -> None:
    """Make OpenSSL verify, during the handshake, that the broker's certificate names ``name`` (a SAN IP address
    or DNS name), as Python's ssl does with check_hostname."""
    param = _lib.SSL_get0_param(conn._ssl)
    try:
        packed = ipaddress.ip_address(name).packed
    except ValueError:
        ok = _lib.X509_VERIFY_PARAM_set1_host(param, name.encode(), len(name.encode()))
    else:
        ok = _lib.X509_VERIFY_PARAM_set1_ip(param, packed, len(packed))
    if ok != 1:
        raise TlsStackError(f"cannot check the broker's name {name!r}", "give a host name or an IP address")


def _session_reused(conn: SSL.Connection) -> bool:
    return bool(_lib.SSL_session_reused(conn._ssl))


def _verify_result(conn: SSL.Connection) -> tuple[int, str]:
    code = int(_lib.SSL_get_verify_result(conn._ssl))
    return code, _ffi.string(_lib.X509_verify_cert_error_string(code)).decode()
# -- end of private binding ---------------------------------------------------------------------------------------


def openssl_version() -> str:
    return SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()


def _translated(exc: SSL.Error, conn: SSL.Connection | None) -> OSError:
    """pyOpenSSL's error as the ``ssl`` module would have raised it (see the module docstring)."""
    if isinstance(exc, SSL.WantReadError):
        return ssl.SSLWantReadError(ssl.SSL_ERROR_WANT_READ, "The operation did not complete (read)")
    if isinstance(exc, SSL.WantWriteError):
        return ssl.SSLWantWriteError(ssl.SSL_ERROR_WANT_WRITE, "The operation did not complete (write)")
    if isinstance(exc, SSL.ZeroReturnError):
        return ssl.SSLZeroReturnError(ssl.SSL_ERROR_ZERO_RETURN, "TLS/SSL connection has been closed (EOF)")
    if isinstance(exc, SSL.SysCallError):
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else -1
        if code <= 0:  # the peer closed the TCP connection without a TLS alert
            return ssl.SSLEOFError(ssl.SSL_ERROR_EOF, "EOF occurred in violation of protocol")
        return OSError(code, str(exc.args[1]) if len(exc.args) > 1 else "")  # ConnectionResetError, ...
    entries = exc.args[0] if exc.args and isinstance(exc.args[0], list) and exc.args[0] else [("", "", str(exc))]
    library, _, text = (str(part) for part in entries[0])
    reason = _reason_name(text)
    if reason == "CERTIFICATE_VERIFY_FAILED" and conn is not None:
        code, message = _verify_result(conn)
        err: ssl.SSLError = ssl.SSLCertVerificationError(1, f"[SSL: {reason}] {text}: {message}")
        err.verify_code, err.verify_message = code, message  # type: ignore[attr-defined]
    else:
        err = ssl.SSLError(1, f"[SSL: {reason}] {text}")
    err.reason, err.library = reason, "SSL" if library == "SSL routines" else library
    return err


# OpenSSL 4 says "tls alert certificate revoked" where 3.0 said "sslv3 alert certificate revoked"; Python's ssl names
# reasons by 3.0's table, and fleetsim.engine.outcome classifies by those names.
_SSLV3_ALERTS = frozenset({"CLOSE_NOTIFY", "UNEXPECTED_MESSAGE", "BAD_RECORD_MAC", "DECOMPRESSION_FAILURE",
                           "HANDSHAKE_FAILURE", "NO_CERTIFICATE", "BAD_CERTIFICATE", "UNSUPPORTED_CERTIFICATE",
                           "CERTIFICATE_REVOKED", "CERTIFICATE_EXPIRED", "CERTIFICATE_UNKNOWN", "ILLEGAL_PARAMETER"})
_TLSV13_ALERTS = frozenset({"CERTIFICATE_REQUIRED", "MISSING_EXTENSION"})
_ALERT_PREFIX = "tls alert "


def _reason_name(text: str) -> str:
    """OpenSSL's reason text as Python's ssl names it: 'tls alert unknown ca' -> TLSV1_ALERT_UNKNOWN_CA."""
    if not text.startswith(_ALERT_PREFIX):
        return text.upper().replace(" ", "_")
    alert = text[len(_ALERT_PREFIX):].upper().replace(" ", "_")
    family = "SSLV3" if alert in _SSLV3_ALERTS else "TLSV13" if alert in _TLSV13_ALERTS else "TLSV1"
    return f"{family}_ALERT_{alert}"


def _raise(exc: SSL.Error, conn: SSL.Connection | None) -> NoReturn:
    raise _translated(exc, conn) from None


def _facts(conn: SSL.Connection) -> Facts:
    return Facts(conn.get_protocol_version_name(), conn.get_cipher_name() or "", conn.get_group_name() or UNKNOWN,
                 _session_reused(conn))


def _context(method: int, settings: Settings, ca_pem: bytes | None) -> SSL.Context:
    ctx = SSL.Context(method)
    low, high = _VERSIONS[settings.tls_version]
    ctx.set_min_proto_version(low)
    ctx.set_max_proto_version(high)
    ctx.set_cipher_list(TLS12_CIPHERS.encode())  # TLS 1.3 suites: OpenSSL's defaults, as on the system stack
    if settings.groups:
        set_groups(ctx, settings.groups)
    if ca_pem is not None:
        store = ctx.get_cert_store()
        assert store is not None
        for cert in x509.load_pem_x509_certificates(ca_pem):
            store.add_cert(crypto.X509.from_cryptography(cert))
    return ctx


class BundledStack:
    name = NAME
    chooses_groups = True

    def __init__(self) -> None:
        self.openssl_version = openssl_version()

    def check(self, settings: Settings, key_types: Sequence[str] = ()) -> None:
        if settings.tls_version not in TLS_VERSIONS:
            raise TlsStackError(f"unknown TLS version {settings.tls_version!r}", f"use {', '.join(TLS_VERSIONS)}")
        if settings.groups:
            set_groups(SSL.Context(SSL.TLS_METHOD), settings.groups)  # one line for a name OpenSSL does not know

    def client(self, ca_pem: bytes, settings: Settings, cert_pem: bytes | None = None,
               key_pem: bytes | None = None) -> BundledClientContext:
        self.check(settings)
        return BundledClientContext(ca_pem, settings, cert_pem, key_pem)

    def server(self, cert_chain: Path, key: Path, settings: Settings, *, ca_pem: bytes | None,
               crl_pem: bytes | None) -> BundledServerContext:
        self.check(settings)
        return BundledServerContext(cert_chain, key, settings, ca_pem, crl_pem)


class BundledClientTls:
    """A device's connection: pyOpenSSL over its socket, speaking the ``ssl`` module's exceptions to its callers
    (paho included). ``recv`` returns b"" at the peer's close, as ``ssl.SSLSocket`` does."""

    __slots__ = ("_anonymous", "_conn", "_sock")

    def __init__(self, conn: SSL.Connection, sock: socket.socket, anonymous: SSL.Context | None) -> None:
        self._conn, self._sock, self._anonymous = conn, sock, anonymous

    def do_handshake(self) -> None:
        try:
            self._conn.do_handshake()
        except SSL.Error as exc:
            _raise(exc, self._conn)

    def recv(self, size: int) -> bytes:
        try:
            return self._conn.recv(size)
        except SSL.ZeroReturnError:
            return b""
        except SSL.SysCallError as exc:
            if exc.args and exc.args[0] in (-1, 0):
                return b""  # a TCP close without close_notify: ssl's suppress_ragged_eofs
            _raise(exc, self._conn)
        except SSL.Error as exc:
            _raise(exc, self._conn)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return self._conn.send(bytes(data) if isinstance(data, memoryview) else data)
        except SSL.Error as exc:
            _raise(exc, self._conn)

    def pending(self) -> int:
        return self._conn.pending()

    def fileno(self) -> int:
        return self._sock.fileno()

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        return self._sock.getsockopt(level, option, size)

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def settimeout(self, value: float | None) -> None:
        self._sock.settimeout(value)

    def close(self) -> None:
        """Close the socket without a close_notify, as ``ssl.SSLSocket.close`` does. OpenSSL marks the session of a
        connection freed without one not resumable (ssl_clear_bad_session), which CPython's ssl sidesteps by
        keeping a duplicate; here the connection is flagged as shut down instead, so its session still resumes."""
        self._conn.set_shutdown(SSL.SENT_SHUTDOWN)
        self._sock.close()

    def facts(self) -> Facts:
        return _facts(self._conn)

    def resumable_session(self) -> Any:
        return self._conn.get_session()

    def drop_identity(self) -> None:
        """Move the connection to the context without a client certificate (SSL_set_SSL_CTX), as the system stack
        does: OpenSSL lets go of its copy of the device's chain and key."""
        if self._anonymous is not None:
            self._conn.set_context(self._anonymous)


class BundledClientContext:
    """One device's client side. Verification is always on: the broker's chain against ``ca_pem`` and its name
    against the one dialled, in the handshake."""

    def __init__(self, ca_pem: bytes, settings: Settings, cert_pem: bytes | None, key_pem: bytes | None) -> None:
        self._anonymous = _context(SSL.TLS_CLIENT_METHOD, settings, ca_pem)
        self._anonymous.set_verify(SSL.VERIFY_PEER)
        if cert_pem is None or key_pem is None:
            self._ctx = self._anonymous
            return
        self._ctx = _context(SSL.TLS_CLIENT_METHOD, settings, ca_pem)
        self._ctx.set_verify(SSL.VERIFY_PEER)
        leaf, *chain = x509.load_pem_x509_certificates(cert_pem)
        self._ctx.use_certificate(leaf)
        for cert in chain:
            self._ctx.add_extra_chain_cert(cert)
        load_pem_file(self._ctx.use_privatekey_file, key_pem)  # OpenSSL's own reader: ML-DSA keys too
        self._ctx.check_privatekey()

    def connect(self, sock: socket.socket, server_hostname: str, session: Any = None) -> BundledClientTls:
        conn = SSL.Connection(self._ctx, sock)
        conn.set_connect_state()
        try:
            ipaddress.ip_address(server_hostname)
        except ValueError:
            conn.set_tlsext_host_name(server_hostname.encode())  # SNI for names only, as Python's ssl
        _expect_peer_name(conn, server_hostname)
        if session is not None:
            conn.set_session(session)
        return BundledClientTls(conn, sock, None if self._ctx is self._anonymous else self._anonymous)


class BundledServerTls:
    """One accepted connection over pyOpenSSL's memory BIOs (a Connection without a socket)."""

    __slots__ = ("_conn",)

    def __init__(self, ctx: SSL.Context) -> None:
        self._conn = SSL.Connection(ctx, None)
        self._conn.set_accept_state()

    def feed(self, data: bytes) -> None:
        self._conn.bio_write(data)

    def take(self) -> bytes:
        out = []
        while True:
            try:
                out.append(self._conn.bio_read(READ_CHUNK))
            except SSL.WantReadError:
                return b"".join(out)

    def do_handshake(self) -> None:
        try:
            self._conn.do_handshake()
        except SSL.Error as exc:
            _raise(exc, self._conn)

    def read(self, size: int) -> bytes:
        try:
            return self._conn.recv(size)
        except SSL.Error as exc:
            _raise(exc, self._conn)

    def write(self, data: bytes) -> int:
        try:
            return self._conn.send(data)
        except SSL.Error as exc:
            _raise(exc, self._conn)

    def unwrap(self) -> None:
        try:
            self._conn.shutdown()
        except SSL.Error as exc:
            _raise(exc, self._conn)

    def peer_certificate_der(self) -> bytes | None:
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        return None if cert is None else cert.public_bytes(Encoding.DER)

    def facts(self) -> Facts:
        return _facts(self._conn)


class BundledServerContext:
    """The broker front's context on the bundled OpenSSL: client certificates required and checked against the CA
    chain and the leaf's CRL when ``ca_pem`` is given; tickets and the session cache off unless asked for."""

    def __init__(self, cert_chain: Path, key: Path, settings: Settings, ca_pem: bytes | None,
                 crl_pem: bytes | None) -> None:
        ctx = _context(SSL.TLS_SERVER_METHOD, settings, ca_pem)
        try:
            ctx.use_certificate_chain_file(str(cert_chain))
            ctx.use_privatekey_file(str(key))
            ctx.check_privatekey()
        except SSL.Error as exc:
            raise TlsStackError(f"the server key {key} is unreadable or does not match {cert_chain} ({exc})",
                                "re-create the PKI's server identity") from None
        if settings.tickets:
            ctx.set_session_id(b"fleetsim")  # resumption with client certificates needs a session id context
        else:
            ctx.set_options(SSL.OP_NO_TICKET)
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        if ca_pem is not None:
            if crl_pem is None:
                raise TlsStackError("no CRL to check client certificates against",
                                    "create one with `fleetsim pki crl DIR`")
            ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
            store = ctx.get_cert_store()
            assert store is not None
            store.add_crl(x509.load_pem_x509_crl(crl_pem))
            store.set_flags(crypto.X509StoreFlags.CRL_CHECK)  # the leaf's CRL, as VERIFY_CRL_CHECK_LEAF
        self.ctx = ctx

    def accept(self) -> BundledServerTls:
        return BundledServerTls(self.ctx)
