"""A device that speaks MQTT 3.1.1 byte by byte over a real TLS socket: what the attack and fuzz tests send.

Not a client library: it builds exactly the packets a test asks for (including broken ones) and reads what the
broker answers, so a test can tell "refused with CONNACK 5" from "closed" from "still open after N seconds".
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass

from fleetsim.pki import Pki

CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP = 2, 3, 4, 9, 13


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def field(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def connect(client_id: str | bytes, *, clean: bool = True, keepalive: int = 60, user: bytes | None = None,
            password: bytes | None = None, will: tuple[str, bytes] | None = None, will_qos: int = 0) -> bytes:
    """A CONNECT; ``user`` is raw bytes so a test can send invalid UTF-8."""
    cid = client_id.encode() if isinstance(client_id, str) else client_id
    flags = (0x02 if clean else 0) | (0x80 if user is not None else 0) | (0x40 if password is not None else 0)
    payload = field(cid)
    if will is not None:
        flags |= 0x04 | (will_qos << 3)
        payload += field(will[0].encode()) + field(will[1])
    if user is not None:
        payload += field(user)
    if password is not None:
        payload += field(password)
    return packet(0x10, b"\x00\x04MQTT\x04" + bytes([flags]) + keepalive.to_bytes(2, "big") + payload)


def subscribe(packet_id: int, *filters: str, qos: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(field(f.encode()) + bytes([qos]) for f in filters)
    return packet(0x82, body)


def publish(topic: str, payload: bytes, *, qos: int = 0, packet_id: int = 1, retain: bool = False) -> bytes:
    body = field(topic.encode()) + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    return packet(0x30 | (qos << 1) | int(retain), body)


def device_context(pki: Pki, device_id: str | None, *, tls: str = "any") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.layout.ca_chain)
    if tls == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if device_id is not None:
        ctx.load_cert_chain(pki.layout.device_cert(device_id), pki.layout.device_key(device_id))
    return ctx


@dataclass(frozen=True)
class Packet:
    type: int
    flags: int
    body: bytes


class Raw:
    """One TLS connection to the broker, as a device (or an attacker holding a device's certificate)."""

    def __init__(self, port: int, ctx: ssl.SSLContext, *, timeout: float = 5.0,
                 session: ssl.SSLSession | None = None) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        self._buf = b""
        self._eof = False
        self._next_id = 1
        self.alert: str | None = None  # the TLS error that ended the connection (TLS 1.3: at the first read)

    # -- bytes -----------------------------------------------------------------------------------------------
    def send(self, data: bytes) -> bool:
        """False when the broker already closed (a refusal can arrive while a big packet is still going out)."""
        try:
            self.sock.sendall(data)
            return True
        except (OSError, ssl.SSLError):
            return False

    def _fill(self, timeout: float) -> None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise
        except ssl.SSLError as exc:  # an alert: the broker said why it hung up
            self.alert, chunk = str(exc), b""
        except OSError:  # reset: the broker hung up
            chunk = b""
        if not chunk:
            self._eof = True
        self._buf += chunk

    def read_packet(self, timeout: float = 3.0) -> Packet | None:
        """The next packet from the broker; None at EOF; TimeoutError if nothing complete arrives in time."""
        deadline = time.monotonic() + timeout
        while True:
            parsed = _split(self._buf)
            if parsed is not None:
                pkt, self._buf = parsed
                return pkt
            if self._eof:
                return None
            self._fill(deadline - time.monotonic())

    def closed_within(self, seconds: float) -> bool:
        """True when the broker closes the connection within ``seconds`` (packets before that are skipped)."""
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                if self.read_packet(deadline - time.monotonic()) is None:
                    return True
        except TimeoutError:
            return False
        return False

    def close(self) -> None:
        self.sock.close()

    # -- MQTT ------------------------------------------------------------------------------------------------
    def connack(self, timeout: float = 3.0) -> tuple[int, int] | None:
        """(session present, return code) of the CONNACK, or None when the broker closed without one."""
        pkt = self.read_packet(timeout)
        if pkt is None:
            return None
        assert pkt.type == CONNACK, pkt
        return pkt.body[0], pkt.body[1]

    def subscribe(self, *filters: str, qos: int = 1) -> list[int]:
        """The SUBACK return codes, one per filter (0x80: refused)."""
        pid = self._take_id()
        self.send(subscribe(pid, *filters, qos=qos))
        pkt = self._wait_for(SUBACK, pid)
        return list(pkt.body[2:])

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, timeout: float = 3.0) -> bool:
        """Publish; at QoS 1 wait for the PUBACK (False when none arrives in time or the broker hung up)."""
        pid = self._take_id()
        if not self.send(publish(topic, payload, qos=qos, packet_id=pid)):
            return False
        if qos == 0:
            return True
        try:
            self._wait_for(PUBACK, pid, timeout)
        except (TimeoutError, ConnectionError):
            return False
        return True

    def receives(self, payload: bytes, timeout: float = 2.0) -> bool:
        """Whether a PUBLISH carrying ``payload`` arrives within ``timeout`` (QoS 1 ones are acknowledged)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                pkt = self.read_packet(max(deadline - time.monotonic(), 0.001))
                if pkt is None:
                    return False
                if pkt.type == PUBLISH and self._delivered(pkt) == payload:
                    return True
        except TimeoutError:
            return False

    def echo(self, topic: str, payload: bytes) -> bool:
        """Publish on a topic this connection subscribes to and see it come back: the session still works."""
        return self.publish(topic, payload, qos=0) and self.receives(payload)

    def ping(self, timeout: float = 3.0) -> bool:
        self.send(b"\xc0\x00")
        try:
            self._wait_for(PINGRESP, None, timeout)
        except (TimeoutError, ConnectionError):
            return False
        return True

    def _take_id(self) -> int:
        pid, self._next_id = self._next_id, self._next_id % 65535 + 1
        return pid

    def _wait_for(self, kind: int, pid: int | None, timeout: float = 3.0) -> Packet:
        deadline = time.monotonic() + timeout
        while True:
            pkt = self.read_packet(max(deadline - time.monotonic(), 0.001))
            if pkt is None:
                raise ConnectionError("broker closed the connection")
            if pkt.type == PUBLISH:
                self._delivered(pkt)
            elif pkt.type == kind and (pid is None or pkt.body[:2] == pid.to_bytes(2, "big")):
                return pkt

    def _delivered(self, pkt: Packet) -> bytes:
        """The payload of a PUBLISH from the broker; QoS 1 gets its PUBACK."""
        size = int.from_bytes(pkt.body[:2], "big")
        pos = 2 + size
        qos = (pkt.flags >> 1) & 3
        if qos:
            self.send(b"\x40\x02" + pkt.body[pos:pos + 2])
            pos += 2
        return pkt.body[pos:]


def _split(buf: bytes) -> tuple[Packet, bytes] | None:
    """One whole packet off the front of ``buf``, or None when it is not all there yet."""
    if len(buf) < 2:
        return None
    length, shift, pos = 0, 0, 1
    while True:
        if pos >= len(buf):
            return None
        byte = buf[pos]
        length |= (byte & 0x7F) << shift
        shift += 7
        pos += 1
        if not byte & 0x80:
            break
    if len(buf) < pos + length:
        return None
    return Packet(buf[0] >> 4, buf[0] & 0x0F, buf[pos:pos + length]), buf[pos + length:]


def connected(port: int, ctx: ssl.SSLContext, client_id: str, **connect_options: object) -> Raw:
    """A device with an accepted session (asserts CONNACK 0)."""
    conn = Raw(port, ctx)
    conn.send(connect(client_id, **connect_options))  # type: ignore[arg-type]
    ack = conn.connack()
    assert ack is not None and ack[1] == 0, f"{client_id} was not admitted: {ack}"
    return conn


def attempt(port: int, ctx: ssl.SSLContext, client_id: str) -> str:
    """One connection attempt: 'connack N', 'closed', or the TLS error the device saw (handshake or first read)."""
    try:
        conn = Raw(port, ctx)
        conn.send(connect(client_id))
        ack = conn.connack()
    except ssl.SSLError as exc:
        return str(exc)
    except OSError as exc:
        return f"connection error {exc}"
    conn.close()
    if ack is None:
        return conn.alert or "closed"
    return f"connack {ack[1]}"
