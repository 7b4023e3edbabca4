"""MQTT 3.1.1 from a device, judged the way the embedded broker's front judges it: pure functions, no I/O.

Why the front parses what amqtt parses again: amqtt acts on a CONNECT before its auth plugin is asked (it
deletes the clean session named by the client id), decodes invalid UTF-8 into the text of its bytes instead of
refusing it, and reads a packet's declared length whole. So every packet is framed and checked here first, and
amqtt only ever sees packets that are well formed, within the size limit, and (for the CONNECT) admitted.
Section numbers are the MQTT 3.1.1 standard's.
"""

from __future__ import annotations

from dataclasses import dataclass

CONNECT, PUBLISH, SUBSCRIBE, UNSUBSCRIBE = 1, 3, 8, 10
MAX_LENGTH_BYTES = 4  # 2.2.3: the remaining length takes at most four bytes
# Levels a topic or filter may have. The standard sets none; Mosquitto refuses past 200. Without one, a filter of
# 30,000 levels in one 64 KiB SUBSCRIBE cost the embedded broker ~7 MB (the subscription index keeps a node a
# level) and a 1,500-level topic ~32 ms of CPU per PUBLISH. fleetsim's own topics have five.
MAX_TOPIC_LEVELS = 200
UNACCEPTABLE_PROTOCOL_VERSION, IDENTIFIER_REJECTED, NOT_AUTHORIZED = 1, 2, 5  # CONNACK return codes

# Reasons, as they are counted in the broker's stats["rejected"].
TOO_LARGE = "packet too large"
NOT_CONNECT = "first packet not CONNECT"
SECOND_CONNECT = "second CONNECT"
NOT_FROM_CLIENT = "packet type not sent by clients"
MALFORMED = "malformed packet"
MALFORMED_CONNECT = "malformed CONNECT"
BAD_UTF8 = "invalid UTF-8"
BAD_LENGTH = "remaining length over four bytes"
BAD_PROTOCOL = "unsupported protocol level"
BAD_CLIENT_ID = "client id rejected"
TOO_DEEP = "topic over 200 levels"

# Packet types a client may send (2.2.1), with the flags each must carry (2.2.2); None: PUBLISH's own flags.
_CLIENT_FLAGS: dict[int, int | None] = {1: 0, 3: None, 4: 0, 5: 0, 6: 2, 7: 0, 8: 2, 10: 2, 12: 0, 14: 0}
# Remaining length of the fixed-size ones: a longer packet would leave bytes amqtt reads as the next header.
_FIXED_LENGTH = {4: 2, 5: 2, 6: 2, 7: 2, 12: 0, 14: 0}


class Violation(Exception):
    """A packet the broker refuses. ``reason`` is its stats key; ``connack`` the CONNACK return code to answer
    with before closing, or None where the standard says to close without one."""

    def __init__(self, reason: str, connack: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.connack = connack


@dataclass(frozen=True, slots=True)
class Header:
    kind: int  # packet type, 1..15
    flags: int
    length: int  # remaining length: the body after the fixed header
    size: int  # bytes of the fixed header itself

    @property
    def total(self) -> int:
        return self.size + self.length


def parse_header(data: bytes | bytearray) -> Header | None:
    """The fixed header at the start of ``data``; None while it is incomplete. Raises Violation for a remaining
    length longer than four bytes."""
    if not data:
        return None
    length, shift = 0, 0
    for pos in range(1, MAX_LENGTH_BYTES + 1):
        if pos >= len(data):
            return None
        byte = data[pos]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return Header(data[0] >> 4, data[0] & 0x0F, length, pos + 1)
        shift += 7
    raise Violation(BAD_LENGTH)


def check_header(header: Header, *, first: bool, max_packet: int) -> None:
    """Whether a client may send this packet here: CONNECT first and only first (3.1), a type clients send with
    its fixed flags (2.2), the fixed-size types at their size, and no larger than ``max_packet`` in total."""
    kind = header.kind
    if first and kind != CONNECT:
        raise Violation(NOT_CONNECT)
    if not first and kind == CONNECT:
        raise Violation(SECOND_CONNECT)  # 3.1.0-2
    if kind not in _CLIENT_FLAGS:
        raise Violation(NOT_FROM_CLIENT)
    expected = _CLIENT_FLAGS[kind]
    if expected is None:
        if (header.flags >> 1) & 3 == 3:  # 3.3.1-4: QoS 3
            raise Violation(MALFORMED)
    elif header.flags != expected:
        raise Violation(MALFORMED)
    if kind in _FIXED_LENGTH and header.length != _FIXED_LENGTH[kind]:
        raise Violation(MALFORMED)
    if header.total > max_packet:
        raise Violation(TOO_LARGE, NOT_AUTHORIZED if first else None)


def _field(body: bytes, pos: int, what: str = MALFORMED) -> tuple[bytes, int]:
    """A two-byte-length-prefixed field (1.5.2, 1.5.3) at ``pos``, and where the next begins."""
    if pos + 2 > len(body):
        raise Violation(what)
    end = pos + 2 + int.from_bytes(body[pos:pos + 2], "big")
    if end > len(body):
        raise Violation(what)
    return body[pos + 2:end], end


def _text(raw: bytes) -> str:
    """1.5.3: well-formed UTF-8 without U+0000, or the connection is closed."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Violation(BAD_UTF8) from None
    if "\x00" in text:
        raise Violation(BAD_UTF8)
    return text


@dataclass(frozen=True, slots=True)
class Connect:
    """A CONNECT as the front read it: what admission and topic authorization decide on."""

    client_id: str
    username: str | None = None
    password: bytes | None = None
    clean: bool = True
    will_topic: str | None = None
    keepalive: int = 0  # seconds (3.1.2.10); 0: the client asked for no keepalive

    @property
    def credentials(self) -> tuple[str, str | None, bytes | None]:
        return self.client_id, self.username, self.password


def parse_connect(body: bytes) -> Connect:
    """Every field of a CONNECT body (3.1.2, 3.1.3), strictly: anything amqtt would read differently is refused.

    Raises Violation: MALFORMED_CONNECT / BAD_UTF8 close without CONNACK (3.1.4-1, 1.5.3-1); an unsupported
    protocol level answers CONNACK 1 (3.1.2-2); an empty client id with a persistent session CONNACK 2 (3.1.3-8).
    """
    name, pos = _field(body, 0, MALFORMED_CONNECT)
    if name != b"MQTT" or pos + 4 > len(body):
        raise Violation(MALFORMED_CONNECT)  # 3.1.2-1 (MQIsdp, 3.1, is amqtt's "unsupported" too)
    level, flags, keepalive = body[pos], body[pos + 1], int.from_bytes(body[pos + 2:pos + 4], "big")
    if level != 4:
        raise Violation(BAD_PROTOCOL, UNACCEPTABLE_PROTOCOL_VERSION)
    pos += 4  # level, flags, keep-alive
    will, will_qos, will_retain = flags & 0x04, (flags >> 3) & 3, flags & 0x20
    if flags & 0x01 or will_qos == 3 or (not will and (will_qos or will_retain)) or (flags & 0x40 and not flags & 0x80):
        raise Violation(MALFORMED_CONNECT)  # 3.1.2-3, -14, -11/-13/-15, -22
    raw_id, pos = _field(body, pos, MALFORMED_CONNECT)
    client_id, clean = _text(raw_id), bool(flags & 0x02)
    will_topic = username = password = None
    if will:
        raw_topic, pos = _field(body, pos, MALFORMED_CONNECT)
        will_topic = topic_name(raw_topic)
        _message, pos = _field(body, pos, MALFORMED_CONNECT)
    if flags & 0x80:
        raw_user, pos = _field(body, pos, MALFORMED_CONNECT)
        username = _text(raw_user)
    if flags & 0x40:
        password, pos = _field(body, pos, MALFORMED_CONNECT)
    if pos != len(body):
        raise Violation(MALFORMED_CONNECT)  # bytes after the last field: amqtt would read them as a packet
    if not client_id and not clean:
        raise Violation(BAD_CLIENT_ID, IDENTIFIER_REJECTED)
    return Connect(client_id, username, password, clean, will_topic, keepalive)


def topic_name(raw: bytes) -> str:
    """A topic a client publishes to (4.7): UTF-8, not empty, no wildcard, at most MAX_TOPIC_LEVELS levels."""
    text = _text(raw)
    if not text or "+" in text or "#" in text:
        raise Violation(MALFORMED)
    _shallow(text)
    return text


def _shallow(text: str) -> None:
    if text.count("/") >= MAX_TOPIC_LEVELS:
        raise Violation(TOO_DEEP)


def check_body(header: Header, body: bytes) -> None:
    """The strings a PUBLISH, SUBSCRIBE or UNSUBSCRIBE carries are well-formed UTF-8 and fill the packet exactly:
    amqtt re-encodes what it decoded to find where a payload starts, so a broken string would shift its framing."""
    if header.kind == PUBLISH:
        raw, pos = _field(body, 0)
        topic_name(raw)
        if (header.flags >> 1) & 3 and pos + 2 > len(body):
            raise Violation(MALFORMED)
    elif header.kind in (SUBSCRIBE, UNSUBSCRIBE):
        pos, per_filter = 2, 1 if header.kind == SUBSCRIBE else 0
        if len(body) <= pos:
            raise Violation(MALFORMED)  # 3.8.3-3, 3.10.3-2: at least one filter
        while pos < len(body):
            raw, pos = _field(body, pos)
            text = _text(raw)
            if not text:
                raise Violation(MALFORMED)
            _shallow(text)
            pos += per_filter
            if pos > len(body) or (per_filter and body[pos - 1] > 2):
                raise Violation(MALFORMED)  # 3.8.3-4: requested QoS 0..2
