"""Non-blocking TCP connect and TLS handshake on plain sockets, each phase timed on its own.

Not asyncio's TLS transport: it allocates a 256 KiB read buffer per connection (~300 KB each), where a plain
``ssl.SSLSocket`` costs ~32 KB (field notes). The handshake is driven here with add_reader/add_writer.

Every step is tried at once and the event loop is asked to wait only when the kernel says the step must wait:
on loopback a non-blocking connect says EINPROGRESS although the kernel has already finished it, and a wait
through the loop there (``loop.sock_connect``; uvloop also resolves the address first) cost ~0.2 ms per
connection that a device does not spend. The time reported is the device's, not the simulator's bookkeeping:
the time from the kernel saying "ready" to this task running again is the worker's own queue, and is handed to
a :class:`WaitSink` so the phase clock can book it apart from the network's and the broker's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
import struct
import sys
import time
from typing import Protocol

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux 4.2+
_PENDING = (errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class WaitSink(Protocol):
    def waited(self, seconds: float) -> None:
        """Time a ready socket waited for this task to run again (the simulator's queue, not the network's)."""

    def spent(self, cpu_seconds: float) -> None:
        """CPU this device's handshake steps used (OpenSSL's work in do_handshake), for CPU per handshake."""


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, write: bool, sink: WaitSink | None) -> None:
    """Wait until ``fd`` is readable (or writable); tell ``sink`` how long the wake-up took to reach us."""
    fut: asyncio.Future[float] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(time.perf_counter())

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        woke = await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
    if sink is not None:
        sink.waited(time.perf_counter() - woke)


def _numeric(host: str, family: int) -> bool:
    try:
        socket.inet_pton(family, host)
    except OSError:
        return False
    return True


async def _address(loop: asyncio.AbstractEventLoop, host: str, port: int, family: int) -> tuple[object, ...]:
    """``(host, port)`` as connect() takes it; a name is resolved off the loop's thread."""
    if _numeric(host, family):
        return (host, port)
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    return tuple(infos[0][4])


def _connected(sock: socket.socket, address: tuple[object, ...]) -> bool:
    """Drive a non-blocking connect one step: True once connected, False while pending, OSError on failure.

    connect() again on a socket in progress answers EISCONN once done (the ``connect`` man page's way to ask).
    """
    rc = sock.connect_ex(address)
    if rc in (0, errno.EISCONN):
        return True
    if rc in _PENDING:
        return False
    raise OSError(rc, os.strerror(rc))  # OSError picks the subclass: ConnectionRefusedError for ECONNREFUSED


async def tcp_connect(host: str, port: int, *, source: str | None = None,
                      sink: WaitSink | None = None) -> tuple[socket.socket, float]:
    """A connected non-blocking TCP socket with TCP_NODELAY, and how long the connect took (ms).

    TCP_NODELAY matters: Nagle's algorithm meeting delayed ACKs adds ~40 ms to CONNECT-to-CONNACK (field notes).
    """
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = await _address(loop, host, port, family)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source:  # the port is chosen at connect(), per destination: more than 28,000 from one address
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        t = time.perf_counter()
        if not _connected(sock, address) and not _connected(sock, address):
            fd = sock.fileno()
            while True:  # writable means done: SO_ERROR tells success from failure
                await _ready(loop, fd, True, sink)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
                if _connected(sock, address):
                    break
        return sock, (time.perf_counter() - t) * 1000.0
    except BaseException:
        sock.close()
        raise


async def tls_handshake(tls: ssl.SSLSocket, sink: WaitSink | None = None) -> tuple[ssl.SSLSocket, float]:
    """Complete the client handshake of a wrapped socket without blocking; returns it and its time (ms).

    The first step runs at once (the ClientHello goes out without a trip through the loop); the loop is
    waited on only when OpenSSL needs the peer. On failure the socket is closed and the ssl error raised as
    is, for :mod:`fleetsim.engine.outcome`.
    """
    loop = asyncio.get_running_loop()
    t = time.perf_counter()
    try:
        fd = tls.fileno()
        while True:
            cpu = time.thread_time()
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                write = False
            except ssl.SSLWantWriteError:
                write = True
            finally:
                if sink is not None:
                    sink.spent(time.thread_time() - cpu)
            await _ready(loop, fd, write, sink)
        return tls, (time.perf_counter() - t) * 1000.0
    except BaseException:
        tls.close()
        raise


# Linux's struct tcp_info: tcpi_bytes_received (u64) at offset 128, tcpi_bytes_sent (u64, Linux 4.19+) at 200.
_TCP_INFO_SIZE, _RECEIVED_AT, _SENT_AT = 232, 128, 200


def wire_bytes(sock: socket.socket) -> tuple[int, int] | None:
    """(bytes sent, bytes received) of TCP payload on this connection so far, as the kernel counted them
    (measured, not estimated: a TLS handshake's size depends on chains, key types and extensions); None off
    Linux or on a kernel too old to say."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _SENT_AT + 8:
        return None
    return struct.unpack_from("Q", info, _SENT_AT)[0], struct.unpack_from("Q", info, _RECEIVED_AT)[0]
