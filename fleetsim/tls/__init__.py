"""TLS stacks fleetsim's devices and broker front can run on, behind one small interface (fleetsim.tls.stack).

    from fleetsim.tls import stack, Settings
    tls = stack("bundled")                        # or "system" (Python's ssl, the default)
    tls.openssl_version                           # 'OpenSSL 4.0.3 ...'
    ctx = tls.client(ca_pem, Settings(groups=("X25519MLKEM768",)), cert_pem, key_pem)
    conn = ctx.connect(sock, "localhost")         # drive conn.do_handshake(), then conn.facts().group
"""

from __future__ import annotations

from fleetsim.errors import TlsStackError
from fleetsim.tls.stack import (
    UNKNOWN,
    ClientContext,
    ClientTls,
    Facts,
    ServerContext,
    ServerTls,
    Settings,
    Stack,
)

STACKS = ("system", "bundled")

__all__ = ["STACKS", "UNKNOWN", "ClientContext", "ClientTls", "Facts", "ServerContext", "ServerTls", "Settings",
           "Stack", "stack"]


def stack(name: str) -> Stack:
    """The TLS stack called ``name``; one clear line for an unknown name or a bundled stack without pyOpenSSL."""
    if name == "system":
        from fleetsim.tls.system import SystemStack

        return SystemStack()
    if name == "bundled":
        try:
            from fleetsim.tls.bundled import BundledStack
        except ImportError as exc:
            raise TlsStackError(f"the bundled TLS stack needs pyOpenSSL ({exc})",
                                "install it with: pip install 'fleetsim[pq]'") from None
        return BundledStack()
    raise TlsStackError(f"unknown TLS stack {name!r}", f"use one of: {', '.join(STACKS)}")
