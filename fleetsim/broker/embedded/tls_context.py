"""The embedded broker's TLS server context and CRL, built from a fleetsim PKI directory.

Client certificates are REQUIRED (amqtt's own listener only asks for them) and checked against
DIR/ca-chain.pem with the issuing CA's CRL (the bytes crl.py accepted, VERIFY_CRL_CHECK_LEAF). A reload builds a fresh
context rather than adding the CRL to the live one: an un-revoked (removeFromCRL) serial really leaves, the
store does not grow with every reload, and old TLS session tickets stop resuming.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from fleetsim.broker.handle import BrokerOptions
from fleetsim.errors import BrokerError
from fleetsim.names import TLS12_CIPHERS, TLS_VERSIONS, tls_range
from fleetsim.pki.layout import Layout

TICKETS_WHEN_ON = 2


def check_layout(layout: Layout, *, require_certificate: bool = True) -> None:
    """Fail with one line when DIR is not a PKI the broker can serve from."""
    if not layout.root.is_dir():
        raise BrokerError(f"PKI directory {layout.root} does not exist", "create it with `fleetsim pki init DIR`")
    needed = [layout.server_cert, layout.server_key]
    if require_certificate:
        needed += [layout.ca_chain, layout.crl, layout.issuing_ca]
    missing = [p.name for p in needed if not p.exists()]
    if missing:
        raise BrokerError(
            f"{layout.root} is not a fleetsim PKI (missing {', '.join(missing)})",
            "point the broker at a directory made by `fleetsim pki init`",
        )


def trust_domain(layout: Layout) -> str | None:
    """The SPIFFE trust domain the PKI issues device ids in (None without an inventory: any is accepted)."""
    try:
        value = json.loads(layout.inventory.read_bytes()).get("trust_domain")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def build_context(layout: Layout, options: BrokerOptions, crl_pem: bytes | None = None) -> ssl.SSLContext:
    """A server context: server identity, TLS version range, tickets, and client verification with ``crl_pem``:
    the CRL bytes the broker judged (crl.py), not whatever crl.pem holds by the time OpenSSL reads it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if options.tls_version not in TLS_VERSIONS:
        raise BrokerError(f"unknown TLS version {options.tls_version!r}", f"use {', '.join(TLS_VERSIONS)}")
    ctx.minimum_version, ctx.maximum_version = tls_range(options.tls_version)
    ctx.set_ciphers(TLS12_CIPHERS)  # Mosquitto is given the same (mosquitto/config.py)
    ctx.num_tickets = TICKETS_WHEN_ON if options.session_tickets else 0
    if not options.session_tickets:
        ctx.options |= ssl.OP_NO_TICKET  # TLS 1.2 tickets too
    _load_server_identity(ctx, layout)
    if options.require_certificate:
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_verify(ctx, layout.ca_chain, "CA chain")
        if crl_pem is None:
            raise BrokerError("no CRL to check client certificates against", "create one with `fleetsim pki crl DIR`")
        _load_crl(ctx, crl_pem)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    # else: the server-only-TLS baseline asked for on purpose (require_certificate=False): no client
    # certificate is requested; PROTOCOL_TLS_SERVER's default verify_mode already is "do not ask".
    return ctx


def _load_server_identity(ctx: ssl.SSLContext, layout: Layout) -> None:
    try:
        ctx.load_cert_chain(layout.server_cert, layout.server_key)
    except ssl.SSLError:  # before OSError: SSLError is one
        raise BrokerError(
            f"the broker's key {layout.server_key} is unreadable or does not match {layout.server_cert}",
            "re-create the PKI's server identity (`fleetsim pki init` in a new directory)",
        ) from None
    except OSError as exc:
        raise BrokerError(
            f"cannot read the broker's certificate or key ({exc.strerror or exc}: {layout.server_key})",
            "check the files exist and are readable by this user",
        ) from None


def _load_verify(ctx: ssl.SSLContext, path: Path, what: str) -> None:
    try:
        ctx.load_verify_locations(cafile=path)
    except OSError as exc:  # ssl.SSLError included
        raise BrokerError(f"cannot load the {what} {path}: {exc}", "check it is a PEM file from the PKI") from None


def issuing_ca(layout: Layout) -> x509.Certificate:
    """The CA whose leaves the broker admits (see cert_rules)."""
    try:
        return x509.load_pem_x509_certificate(layout.issuing_ca.read_bytes())
    except (OSError, ValueError) as exc:
        raise BrokerError(f"cannot read the issuing CA {layout.issuing_ca}: {exc}",
                          "point the broker at a directory made by `fleetsim pki init`") from None


def _load_crl(ctx: ssl.SSLContext, pem: bytes) -> None:
    """Python's ssl loads CRLs from files only (``cadata`` takes none): a private temporary file, gone at once."""
    with tempfile.NamedTemporaryFile(prefix="fleetsim-crl-", suffix=".pem") as tmp:
        tmp.write(pem)
        tmp.flush()
        _load_verify(ctx, Path(tmp.name), "CRL")


@dataclass(frozen=True)
class FileStamp:
    """Enough of stat() to see an atomic replace or an in-place rewrite."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)
