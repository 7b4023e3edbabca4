"""The paho internals the engine relies on (paho 2.2), checked over a socketpair, no broker.

fleetsim.engine.client overrides paho's private ``Client._create_socket`` (to hand paho a socket already through
its TLS handshake) and wraps ``_sock_recv``/``_sock_send`` (to keep the error paho would swallow). If a paho
release changes those, these tests fail before any fleet run silently misbehaves.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import socket

import paho.mqtt.client as mqtt
import pytest

from fleetsim.engine.client import ConnectionClosed, MqttConnection
from fleetsim.engine.outcome import Failure, classify_connack

CONNACK_OK = bytes([0x20, 0x02, 0x00, 0x00])
CONNACK_NOT_AUTHORIZED = bytes([0x20, 0x02, 0x00, 0x05])


def test_private_hooks_still_exist() -> None:
    for name in ("_create_socket", "_sock_recv", "_sock_send"):
        assert callable(getattr(mqtt.Client, name, None)), f"paho.mqtt.client.Client.{name} is gone"
    assert "self._create_socket()" in inspect.getsource(mqtt.Client.reconnect)
    assert list(inspect.signature(mqtt.Client._create_socket).parameters) == ["self"]
    assert list(inspect.signature(mqtt.Client._sock_recv).parameters) == ["self", "bufsize"]
    for cb in ("on_socket_open", "on_socket_close", "on_socket_register_write", "on_socket_unregister_write"):
        assert hasattr(mqtt.Client, cb)


async def _read_packet(peer: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(peer, 1024), 2)


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def _connect(answer: bytes) -> tuple[MqttConnection, socket.socket, int | BaseException]:
    ours, peer = _pair()
    conn = MqttConnection("dev-1", host="127.0.0.1", port=1)
    task = asyncio.create_task(conn.connect(ours, timeout=2))
    first = await _read_packet(peer)
    assert first[0] == 0x10 and b"dev-1" in first  # CONNECT with our client id, sent over the given socket
    peer.sendall(answer)
    try:
        code, ms = await task
        assert ms >= 0
        return conn, peer, code
    except Exception as exc:
        return conn, peer, exc


def test_given_socket_used_and_connack_seen() -> None:
    async def main() -> None:
        conn, peer, code = await _connect(CONNACK_OK)
        assert code == 0 and conn.connected
        assert conn.publish("t/x", b"hello", 1)
        pub = await _read_packet(peer)
        assert pub[0] & 0xF0 == 0x30 and b"hello" in pub
        mid = int.from_bytes(pub[2 + 2 + len("t/x"):][:2], "big")
        peer.sendall(bytes([0x40, 0x02]) + mid.to_bytes(2, "big"))  # PUBACK
        for _ in range(50):
            if not conn.unacked():
                break
            await asyncio.sleep(0.01)
        assert conn.unacked() == 0
        await conn.disconnect(timeout=1)
        assert (await _read_packet(peer))[0] == 0xE0  # DISCONNECT
        peer.close()

    asyncio.run(main())


def test_refused_connack_code() -> None:
    async def main() -> None:
        _, peer, code = await _connect(CONNACK_NOT_AUTHORIZED)
        assert isinstance(code, int)
        assert classify_connack(code) is Failure.CONNACK_NOT_AUTHORIZED
        peer.close()

    asyncio.run(main())


def test_close_before_connack_is_reported() -> None:
    async def main() -> None:
        ours, peer = _pair()
        conn = MqttConnection("dev-2", host="127.0.0.1", port=1)
        task = asyncio.create_task(conn.connect(ours, timeout=2))
        await _read_packet(peer)
        peer.close()
        with pytest.raises((ConnectionClosed, ConnectionResetError)):
            await task

    asyncio.run(main())


class _ResettingSocket:
    """A socket whose reads fail the way a TLS alert or a reset does: paho must let the engine see the error."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def recv(self, n: int) -> bytes:
        raise ConnectionResetError(104, "Connection reset by peer")

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


def test_recv_error_kept_for_classification() -> None:
    async def main() -> None:
        ours, peer = _pair()
        conn = MqttConnection("dev-3", host="127.0.0.1", port=1)
        task = asyncio.create_task(conn.connect(_ResettingSocket(ours), timeout=2))  # type: ignore[arg-type]
        await _read_packet(peer)
        peer.sendall(CONNACK_OK)  # makes the socket readable; the read then fails
        with pytest.raises(ConnectionResetError):
            await task
        peer.close()

    asyncio.run(main())


def test_slimmed_structures_match_what_paho_does_with_them() -> None:
    """The client swaps paho's deque and OrderedDicts for a list-based FIFO and dicts: only these ops may be used."""
    fresh = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    assert type(fresh._out_packet).__name__ == "deque"
    assert type(fresh._out_messages).__name__ == type(fresh._in_messages).__name__ == "OrderedDict"
    source = inspect.getsource(mqtt.Client)
    assert set(re.findall(r"_out_packet\.(\w+)", source)) <= {"append", "appendleft", "popleft", "clear"}
    for table in ("_out_messages", "_in_messages"):
        assert set(re.findall(table + r"\.(\w+)", source)) <= {"values", "pop", "clear", "get", "items", "keys"}
        assert "move_to_end" not in source and "popitem" not in source

    async def main() -> None:
        client = MqttConnection("dev-1", host="127.0.0.1", port=1).client
        assert len(vars(client)) < 30  # immutable paho defaults are read from the class
        assert client._keepalive == 60 and client._client_id == b"dev-1" and callable(client._out_packet.popleft)

    asyncio.run(main())
