"""Non-blocking TCP connect and TLS handshake on plain sockets, each phase timed on its own.

Not asyncio's TLS transport: it allocates a 256 KiB read buffer per connection (~300 KB each), where a plain
``ssl.SSLSocket`` costs ~32 KB (field notes). The handshake is driven here with add_reader/add_writer.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, write: bool) -> None:
    """Wait until ``fd`` is readable (or writable)."""
    fut = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def tcp_connect(host: str, port: int, *, source: str | None = None) -> tuple[socket.socket, float]:
    """A connected non-blocking TCP socket with TCP_NODELAY, and how long the connect took (ms).

    TCP_NODELAY matters: Nagle's algorithm meeting delayed ACKs adds ~40 ms to CONNECT-to-CONNACK (field notes).
    """
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source:
            sock.bind((source, 0))
        t = time.perf_counter()
        await loop.sock_connect(sock, (host, port))
        return sock, (time.perf_counter() - t) * 1000.0
    except BaseException:
        sock.close()
        raise


async def tls_handshake(tls: ssl.SSLSocket) -> tuple[ssl.SSLSocket, float]:
    """Complete the client handshake of a wrapped socket without blocking; returns it and its time (ms).

    On failure the socket is closed and the ssl error raised as is, for :mod:`fleetsim.engine.outcome`.
    """
    loop = asyncio.get_running_loop()
    t = time.perf_counter()
    try:
        fd = tls.fileno()
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await _ready(loop, fd, write=False)
            except ssl.SSLWantWriteError:
                await _ready(loop, fd, write=True)
        return tls, (time.perf_counter() - t) * 1000.0
    except BaseException:
        tls.close()
        raise
