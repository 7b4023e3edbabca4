"""Between a device's byte stream and amqtt: whole packets, each judged first, and a watch on the CONNACK.

``PacketReader`` is what amqtt reads from. It reads one packet at a time from the connection (header, then at
most ``max_packet`` bytes of body), checks it with ``mqtt_wire`` and only then lets amqtt read it, so an oversized
or malformed packet closes the connection before amqtt waits on it, and amqtt can never read across a packet's
end. Once ``hold_while`` is given the session's backlog (amqtt reads a device's PUBLISHes into a queue faster
than it routes them: 60 KB messages sent at wire speed piled up 800 there), the next packet waits while that backlog
is full, so the device's own socket and TCP push back instead of the broker's memory growing (outbound.py
bounds the other direction). ``ConnackWatch`` is what amqtt writes to: its first write (the CONNACK) ends the CONNECT
timeout.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from amqtt.adapters import ReaderAdapter, WriterAdapter

from fleetsim.broker.embedded.mqtt_wire import (
    MALFORMED,
    Connect,
    Header,
    Violation,
    check_body,
    check_header,
    parse_connect,
    parse_header,
)

BACKLOG_POLL_S = 0.002  # how often a held device's backlog is looked at again (only while it is full)


class PacketReader(ReaderAdapter):
    """A device's stream, framed and checked packet by packet (see the module docstring)."""

    def __init__(self, inner: ReaderAdapter, max_packet: int, on_violation: Callable[[Violation], None],
                 clock: Callable[[], float] | None = None) -> None:
        self._inner = inner
        self._clock = clock or asyncio.get_running_loop().time  # what last_packet_at is read on (loop_clock)
        self._max = max_packet
        self._on_violation = on_violation
        self._packet = b""  # the packet amqtt is reading, and how far it has read
        self._pos = 0
        self._first = True
        self._failed = False
        self._loading: asyncio.Task[tuple[Header, bytes]] | None = None
        self.last_packet_at = self._clock()
        self._backlog: Callable[[], int] | None = None
        self._max_backlog = 0

    def hold_while(self, backlog: Callable[[], int], limit: int) -> None:
        """From now on, read no further packet while ``backlog()`` (messages read, not yet routed) is ``limit`` or
        more."""
        self._backlog, self._max_backlog = backlog, max(1, limit)

    async def first_connect(self) -> Connect:
        """The first packet, parsed as a CONNECT; it stays here for amqtt to read once admitted.

        Raises Violation (not a CONNECT, too large, malformed) and asyncio.IncompleteReadError (the device left).
        """
        _, body = await self._next()
        return parse_connect(body)

    async def _next(self) -> tuple[Header, bytes]:
        """The next packet; a cancelled wait leaves the load running for the next read."""
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load())
        loading = self._loading
        try:
            return await asyncio.shield(loading)
        finally:
            if loading.done():
                self._loading = None

    async def _load(self) -> tuple[Header, bytes]:
        head = bytearray(await self._inner.read(1))
        while (header := parse_header(head)) is None:
            head += await self._inner.read(1)
        check_header(header, first=self._first, max_packet=self._max)
        body = await self._inner.read(header.length) if header.length else b""
        if not self._first:
            check_body(header, body)
        self._first = False
        self._packet, self._pos = bytes(head) + body, 0
        self.last_packet_at = self._clock()
        return header, body

    def _fail(self, violation: Violation, n: int) -> asyncio.IncompleteReadError:
        self._failed = True
        self._on_violation(violation)
        return asyncio.IncompleteReadError(b"", n)  # amqtt's reader ends as at EOF

    async def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        if self._pos >= len(self._packet):
            if self._failed:
                raise asyncio.IncompleteReadError(b"", n)
            while self._backlog is not None and self._backlog() >= self._max_backlog:
                await asyncio.sleep(BACKLOG_POLL_S)
                self.last_packet_at = self._clock()  # the broker's wait is not the device's silence
            try:
                await self._next()
            except Violation as exc:
                raise self._fail(exc, n) from None
        end = len(self._packet) if n < 0 else self._pos + n
        if end > len(self._packet):  # amqtt's parse of this packet disagrees with its length
            raise self._fail(Violation(MALFORMED), n)
        data = self._packet[self._pos:end]
        self._pos = end
        return data

    def feed_eof(self) -> None:
        self._inner.feed_eof()

    def close(self) -> None:
        """Stop a load still waiting on the connection (the session is over)."""
        if self._loading is not None:
            self._loading.cancel()


class WrappedWriter(WriterAdapter):
    """amqtt's writer around another: everything passes through; subclasses change what they must."""

    def __init__(self, inner: WriterAdapter) -> None:
        self._inner = inner

    def write(self, data: bytes) -> None:
        self._inner.write(data)

    async def drain(self) -> None:
        await self._inner.drain()

    def get_peer_info(self) -> tuple[str, int] | None:
        return self._inner.get_peer_info()

    def get_ssl_info(self) -> ssl.SSLObject | None:
        return self._inner.get_ssl_info()

    async def close(self) -> None:
        await self._inner.close()


class ConnackWatch(WrappedWriter):
    """amqtt's writer; calls ``on_connack`` once, at amqtt's first write, which is always its CONNACK."""

    def __init__(self, inner: WriterAdapter, on_connack: Callable[[], None]) -> None:
        super().__init__(inner)
        self._on_connack: Callable[[], None] | None = on_connack

    def write(self, data: bytes) -> None:
        notify = self._on_connack
        if notify is not None:
            self._on_connack = None
            notify()
        self._inner.write(data)
