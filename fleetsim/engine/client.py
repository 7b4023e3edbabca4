"""paho-mqtt on a socket that is already connected and through its TLS handshake, driven by an asyncio loop.

paho 2.2's ``connect()``/``reconnect()`` take their socket from the private ``Client._create_socket``; a subclass
returns ours (tests/test_paho_contract.py fails if paho changes that). paho then only frames MQTT: reads and
writes happen when the loop says the socket is ready (``on_socket_*`` callbacks + ``loop_read``/``loop_write``).
One paho client lives as long as its device, across reconnects, so with a persistent session the QoS 1 messages
not yet acknowledged are sent again after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

SockLike = socket.socket | ssl.SSLSocket
AckCallback = Callable[[int, float], None]  # (qos, latency ms)
SeqAckCallback = Callable[[str, int], None]  # (client id, seq of the message acknowledged)


KEEP_ALIVE_TIMEOUT = 141  # the reason code paho reports when it gives up waiting for PINGRESP (any MQTT version)


class ConnectionClosed(EOFError):
    """The broker closed the connection without saying why (no TLS alert, no CONNACK)."""


class KeepaliveTimeout(TimeoutError):
    """No PINGRESP within 1.5 keepalive intervals: the device gave up on a broker that stopped answering."""


class _Fifo(list[Any]):
    """The deque operations paho uses on its outgoing packet queue, on a list: an empty deque costs ~600 B
    (a 64-slot block), an empty list 56 B, and this queue holds a packet or two at a time."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


_IMMUTABLE = (type(None), bool, int, float, str, bytes, enum.Enum)
_MISSING = object()


class _Paho(mqtt.Client):
    """A paho client that uses the socket it is given and remembers the error that ended its last read.

    Slimmed for fleets (tests/test_paho_contract.py pins what paho does with what is changed): its message
    tables are plain dicts (insertion-ordered, all paho asks of them), its packet queue a :class:`_Fifo`, and
    its ~60 immutable settings that still hold paho's defaults are read from the class instead of each
    instance's dict (an assignment puts one back). ~2 KB less per device.
    """

    _shared_defaults: dict[str, object] | None = None

    def __init__(self, client_id: str, protocol: mqtt.MQTTProtocolVersion, clean_session: bool | None) -> None:
        super().__init__(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                         clean_session=clean_session)
        self._out_packet = _Fifo()  # type: ignore[assignment]
        self._out_messages = {}  # type: ignore[assignment]
        self._in_messages = {}  # type: ignore[assignment]
        self.given_socket: SockLike | None = None
        self.last_error: BaseException | None = None
        self._share_defaults()

    def _share_defaults(self) -> None:
        """Drop instance attributes equal to the class-level copy of an immutable default (set up once)."""
        cls = type(self)
        if cls._shared_defaults is None:
            cls._shared_defaults = {k: v for k, v in vars(self).items()
                                    if isinstance(v, _IMMUTABLE) and not hasattr(mqtt.Client, k)}
            for k, v in cls._shared_defaults.items():
                setattr(cls, k, v)
        shared = cls._shared_defaults
        self.__dict__ = {k: v for k, v in vars(self).items() if not _same(v, shared.get(k, _MISSING))}

    def _create_socket(self) -> Any:  # paho private API, pinned by tests/test_paho_contract.py
        sock, self.given_socket = self.given_socket, None
        if sock is None:
            raise ConnectionError("no connected socket was handed to the client")
        return sock

    def _sock_recv(self, bufsize: int) -> bytes:  # paho swallows the error: keep it to classify the failure
        try:
            return super()._sock_recv(bufsize)
        except BlockingIOError:
            raise
        except OSError as exc:
            self.last_error = exc
            raise

    def _sock_send(self, buf: bytes | bytearray) -> int:
        try:
            return super()._sock_send(buf)
        except BlockingIOError:
            raise
        except OSError as exc:
            self.last_error = exc
            raise


def _same(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b


class MqttConnection:
    """A device's MQTT client: connect over a given socket, publish, count acknowledgements, disconnect.

    ``connect`` returns the CONNACK code and its time; connection loss resolves :attr:`lost` with the error
    (None for a clean end). Callbacks run on the loop thread only.
    """

    __slots__ = (
        "_ack_cb",
        "_clean_start",
        "_closing",
        "_connack",
        "_fd",
        "_first",
        "_inflight",
        "_lost_cb",
        "_sent_at",
        "_seq_ack_cb",
        "client",
        "connack_at",
        "connected",
        "host",
        "keepalive",
        "last_session",
        "loop",
        "lost",
        "name",
        "port",
        "resume",
        "sock",
    )

    def __init__(self, client_id: str, *, host: str, port: int, version: str = "3.1.1", keepalive: int = 60,
                 clean_session: bool = True, on_ack: AckCallback | None = None,
                 username: str | None = None, password: str | None = None, resume: bool = True,
                 on_seq_ack: SeqAckCallback | None = None) -> None:
        v5 = version == "5"
        self.name = client_id
        self.client = _Paho(client_id, mqtt.MQTTv5 if v5 else mqtt.MQTTv311, None if v5 else clean_session)
        self._clean_start = clean_session
        if username is not None:
            self.client.username_pw_set(username, password)
        self.host, self.port, self.keepalive = host, port, keepalive
        self.loop = asyncio.get_running_loop()
        self._ack_cb = on_ack
        self._seq_ack_cb = on_seq_ack  # traced runs: which message (by its seq) the broker acknowledged
        self._inflight: dict[int, tuple[int, float, int]] = {}  # mid -> (qos, perf_counter at publish, seq)
        self._sent_at = 0.0
        self._fd = -1
        self._first = True
        self._closing = False
        self._connack: asyncio.Future[int] | None = None
        self.lost: asyncio.Future[BaseException | None] | None = None
        self._lost_cb: Callable[[BaseException | None], None] | None = None
        self.connected = False
        self.connack_at = 0.0
        self.sock: SockLike | None = None
        self.last_session: ssl.SSLSession | None = None
        self.resume = resume  # keep the TLS session at each close for the next connection to resume
        c = self.client
        c.on_socket_open = self._on_open
        c.on_socket_close = self._on_close
        c.on_socket_register_write = self._on_want_write
        c.on_socket_unregister_write = self._on_no_write
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish

    # -- connecting ----------------------------------------------------------------------------------------
    async def connect(self, sock: SockLike, timeout: float) -> tuple[int, float]:
        """Send CONNECT over ``sock`` and wait for CONNACK: (reason code, ms from CONNECT to CONNACK).

        Raises the error that ended the connection first (a TLS alert, a reset, ConnectionClosed for a bare
        EOF) or TimeoutError; the socket is closed in either case.
        """
        self._connack = self.loop.create_future()
        self.lost = self.loop.create_future()
        self.client.last_error = None
        self._closing = False
        self.client.given_socket = sock
        self.sock = sock
        self._sent_at = time.perf_counter()
        if self._first:
            kw: dict[str, Any] = {"clean_start": self._clean_start} if self.client.protocol == mqtt.MQTTv5 else {}
            self.client.connect(self.host, self.port, self.keepalive, **kw)
            self._first = False
        else:
            self.client.reconnect()
        try:
            async with asyncio.timeout(timeout):
                code = await self._connack
        except BaseException:
            self.abort()
            raise
        finally:
            self._connack = None  # done with: not kept for the whole connection
        if code != 0:
            self.abort()
        return code, (self.connack_at - self._sent_at) * 1000.0

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack_at = time.perf_counter()
        code = int(getattr(reason, "value", reason))
        self.connected = code == 0
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(code)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected = False
        err = self.client.last_error
        if err is None and getattr(reason, "value", None) == KEEP_ALIVE_TIMEOUT:
            err = KeepaliveTimeout("no PINGRESP within 1.5 keepalive intervals")
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(err or ConnectionClosed("connection closed before CONNACK"))
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None if self._closing else (err or ConnectionClosed("connection closed by broker")))

    # -- socket plumbing -------------------------------------------------------------------------------------
    def _on_open(self, client: Any, userdata: Any, sock: Any) -> None:
        self._fd = sock.fileno()
        self.loop.add_reader(self._fd, self._readable)

    def _on_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._save_session(sock)
        self._unregister()

    def _on_want_write(self, client: Any, userdata: Any, sock: Any) -> None:
        if self._fd >= 0:
            self.loop.add_writer(self._fd, self._writable)

    def _on_no_write(self, client: Any, userdata: Any, sock: Any) -> None:
        if self._fd >= 0:
            self.loop.remove_writer(self._fd)

    def _unregister(self) -> None:
        """Forget the fd before it is closed: a later fd with the same number belongs to someone else."""
        if self._fd >= 0:
            self.loop.remove_reader(self._fd)
            self.loop.remove_writer(self._fd)
            self._fd = -1

    def _readable(self) -> None:
        c = self.client
        c.loop_read()
        sock = self.sock
        # OpenSSL may hold a whole decrypted record the selector will never signal (field notes)
        while isinstance(sock, ssl.SSLSocket) and c.socket() is sock and sock.pending():  # type: ignore[union-attr]
            c.loop_read()

    def _writable(self) -> None:
        self.client.loop_write()

    def _save_session(self, sock: Any) -> None:
        if self.resume and isinstance(sock, ssl.SSLSocket):
            with contextlib.suppress(Exception):
                sess = sock.session
                if sess is not None and sess.has_ticket:
                    self.last_session = sess

    # -- messages --------------------------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int, seq: int = -1) -> bool:
        """Queue one message (``seq``: the device's number for it, handed back on its acknowledgement); False
        when paho refused it (not connected)."""
        info = self.client.publish(topic, payload, qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            return False
        self._inflight[info.mid] = (qos, time.perf_counter(), seq)
        return True

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        hit = self._inflight.pop(mid, None)
        if hit is None:
            return
        if self._ack_cb is not None:
            self._ack_cb(hit[0], (time.perf_counter() - hit[1]) * 1000.0)
        if self._seq_ack_cb is not None:
            self._seq_ack_cb(self.name, hit[2])

    def unacked(self) -> int:
        """QoS>0 messages published and not acknowledged yet (paho keeps them for a resend)."""
        return sum(1 for qos, _, _ in self._inflight.values() if qos > 0)

    def tick(self) -> None:
        """Keepalive: call about once a second while connected."""
        if self.connected:
            self.client.loop_misc()

    # -- ending ----------------------------------------------------------------------------------------------
    async def disconnect(self, timeout: float = 1.0) -> None:
        """Send DISCONNECT and wait for paho to close the socket; abort after ``timeout``."""
        if self.connected and self.lost is not None and not self.lost.done():
            self._closing = True
            self.client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self.lost)
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once (a device losing power, or a timeout); paho reuses its state later."""
        self.connected = False
        sock = self.sock
        self._unregister()
        if sock is not None:
            self._save_session(sock)
            with contextlib.suppress(OSError):
                sock.close()
        self.sock = None
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
