"""A TLS server connection that sends its alert before closing, and amqtt reader/writer adapters over it.

Why not asyncio's own TLS server: it closes a failed handshake without flushing the TLS alert, so a device
sees EOF instead of "certificate revoked". Here plain TCP is accepted by asyncio and the TLS state machine is
driven by hand (``SSLContext.wrap_bio`` over two ``MemoryBIO``s): whatever OpenSSL queued after a failed
``do_handshake()`` — the alert — is written out, the write side is shut (FIN, not RST) and the connection
lingers briefly reading until the device closes, so the alert is not lost to a reset. Reads are buffered
in a small bytearray, not asyncio's 256 KiB TLS transport buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from typing import Protocol

from amqtt.adapters import ReaderAdapter, WriterAdapter

HANDSHAKE_TIMEOUT_S = 10.0
LINGER_S = 2.0  # how long a closing connection waits for the peer's FIN before closing anyway
READ_CHUNK = 65536
PAUSE_ABOVE = 256 * 1024  # stop reading from the socket when this much decrypted data waits for amqtt


def tls_failure_reason(exc: BaseException) -> str:
    """The reason a handshake failed, in OpenSSL's words ('certificate revoked', 'peer did not return a ...')."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message)
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason).lower().replace("_", " ")
    return type(exc).__name__


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Nagle's algorithm meeting delayed ACKs adds ~40 ms to every CONNECT/CONNACK round trip."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class TlsHooks(Protocol):
    """What the server wants to hear about each connection."""

    def established(self, conn: TlsConnection) -> None: ...

    def rejected(self, conn: TlsConnection, reason: str) -> None: ...

    def closed(self, conn: TlsConnection) -> None: ...


class TlsConnection(asyncio.Protocol):
    """One accepted TCP connection carrying TLS, driven over memory BIOs."""

    def __init__(self, context_of: Callable[[], ssl.SSLContext], hooks: TlsHooks) -> None:
        self._context_of = context_of  # read at accept time: a reloaded CRL applies to the next connection
        self._hooks = hooks
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.sslobj: ssl.SSLObject | None = None
        self.transport: asyncio.Transport | None = None
        self.peername: tuple[str, int] | None = None
        self.established = False
        self.handshake_ms: float | None = None
        self.peer_der: bytes | None = None  # the client certificate OpenSSL verified, DER
        self._t0: float | None = None
        self._buffer = bytearray()
        self._eof = False
        self._closing = False
        self._paused = False
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        set_nodelay(transport)
        peer = transport.get_extra_info("peername")
        self.peername = (peer[0], peer[1]) if peer else None
        self.sslobj = self._context_of().wrap_bio(self._in, self._out, server_side=True)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HANDSHAKE_TIMEOUT_S, self._fail, "handshake timeout")

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # lingering after an alert or close_notify: drain and ignore
        self._in.write(data)
        if not self.established:
            self._handshake()
            if not self.established:
                return
        self._read_records()

    def eof_received(self) -> bool:
        if not self.established and not self._closing:
            self._closing = True
            self._hooks.rejected(self, "eof during handshake")
        self._set_eof()
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._closing = True
        self._set_eof()
        self._wake_drain()
        self._hooks.closed(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # --- TLS ---------------------------------------------------------------------------------------------
    def _handshake(self) -> None:
        assert self.sslobj is not None
        if self._t0 is None:
            self._t0 = time.perf_counter()  # broker-side time runs from the ClientHello
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._flush()  # the alert OpenSSL queued: the reason the device will read
            self._fail(tls_failure_reason(exc))
            return
        self._flush()  # Finished, and session tickets if enabled
        self.established = True
        self.handshake_ms = (time.perf_counter() - self._t0) * 1000
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.peer_der = self.sslobj.getpeercert(binary_form=True)
        self._hooks.established(self)

    def _read_records(self) -> None:
        assert self.sslobj is not None
        while True:
            try:
                chunk = self.sslobj.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLError):
                self._set_eof()
                break
            if not chunk:
                self._set_eof()
                break
            self._buffer += chunk
        self._flush()
        if len(self._buffer) > PAUSE_ABOVE and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def _flush(self) -> None:
        pending = self._out.read()
        if pending and self.transport is not None and not self.transport.is_closing():
            self.transport.write(pending)

    def _fail(self, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self._hooks.rejected(self, reason)
        self._shutdown()

    def _shutdown(self) -> None:
        """FIN after what was written, then read until the peer closes (bounded): no RST eats the alert."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            if transport.can_write_eof():
                transport.write_eof()
        except OSError:  # the device already hung up: nothing left to flush
            transport.close()
            return
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    # --- what the adapters use ----------------------------------------------------------------------------
    def _set_eof(self) -> None:
        self._eof = True
        self._wake_reader()

    def _wake_reader(self) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)

    def _wake_drain(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    async def read(self, n: int) -> bytes:
        """Exactly n bytes (n > 0) or all until EOF (n < 0); short at EOF raises IncompleteReadError.

        Reading resumes whenever a reader waits for more than is buffered: pausing at PAUSE_ABOVE bounds what a
        connection buffers, it must never leave a reader of a larger packet waiting for bytes it will not get.
        """
        while (n < 0 or len(self._buffer) < n) and not self._eof:
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            self._data_waiter = asyncio.get_running_loop().create_future()
            await self._data_waiter
        if n < 0:
            n = len(self._buffer)
        if len(self._buffer) < n:
            raise asyncio.IncompleteReadError(bytes(self._buffer), n)
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        if self._paused and len(self._buffer) < PAUSE_ABOVE // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        if self._closing or self.sslobj is None:
            return
        try:
            self.sslobj.write(data)
        except ssl.SSLError:
            self._set_eof()
            return
        self._flush()

    def unsent(self) -> int:
        """Bytes written to this connection that have not reached the socket yet (what a slow reader piles up)."""
        transport = self.transport
        return (transport.get_write_buffer_size() if transport is not None else 0) + self._out.pending

    async def drain(self) -> None:
        if self._write_paused and not self._closing:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter

    def close(self) -> None:
        """close_notify, FIN, linger: used by amqtt's close and to drop a revoked device's live session."""
        if self._closing:
            return
        self._closing = True
        if self.sslobj is not None and self.established:
            with contextlib.suppress(ssl.SSLError):  # SSLWantReadError: the peer's close_notify is not awaited
                self.sslobj.unwrap()
            self._flush()
        self._set_eof()
        self._shutdown()


class TlsReader(ReaderAdapter):
    """amqtt's view of the decrypted byte stream."""

    def __init__(self, conn: TlsConnection) -> None:
        self._conn = conn

    async def read(self, n: int = -1) -> bytes:
        return await self._conn.read(n)

    def feed_eof(self) -> None:
        self._conn._set_eof()


class TlsWriter(WriterAdapter):
    """amqtt writes MQTT packets here; they leave encrypted. ``get_ssl_info`` is this connection's own TLS."""

    def __init__(self, conn: TlsConnection) -> None:
        self._conn = conn

    def write(self, data: bytes) -> None:
        self._conn.write(data)

    async def drain(self) -> None:
        await self._conn.drain()

    def get_peer_info(self) -> tuple[str, int] | None:
        return self._conn.peername

    def get_ssl_info(self) -> ssl.SSLObject | None:
        return self._conn.sslobj

    async def close(self) -> None:
        self._conn.close()
