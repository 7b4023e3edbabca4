"""The embedded broker's packet rules (fleetsim.broker.embedded.mqtt_wire): pure functions, no network."""

from __future__ import annotations

import pytest
from mqtt_raw import connect, field, packet, publish, subscribe

from fleetsim.broker.embedded import mqtt_wire as w


def header(data: bytes) -> w.Header:
    h = w.parse_header(data)
    assert h is not None
    return h


def test_fixed_header_lengths() -> None:
    assert w.parse_header(b"") is None and w.parse_header(b"\x30") is None and w.parse_header(b"\x30\x80") is None
    assert header(b"\x30\x00") == w.Header(3, 0, 0, 2)
    assert header(b"\x10\xff\xff\xff\x7f").length == 268_435_455
    with pytest.raises(w.Violation, match="four bytes"):
        w.parse_header(b"\x10\x80\x80\x80\x80\x01")


@pytest.mark.parametrize(("data", "first", "reason"), [
    (b"\x30\x00", True, w.NOT_CONNECT),
    (b"\x10\x00", False, w.SECOND_CONNECT),
    (b"\x20\x02", False, w.NOT_FROM_CLIENT),  # CONNACK goes the other way
    (b"\x90\x03", False, w.NOT_FROM_CLIENT),
    (b"\xf0\x00", False, w.NOT_FROM_CLIENT),
    (b"\x80\x05", False, w.MALFORMED),  # SUBSCRIBE must carry flags 0010
    (b"\x36\x05", False, w.MALFORMED),  # PUBLISH QoS 3
    (b"\xc0\x02", False, w.MALFORMED),  # PINGREQ with a body
    (b"\x40\x03", False, w.MALFORMED),  # PUBACK is two bytes
    (b"\x10\x81\x80\x04", True, w.TOO_LARGE),
    (b"\x32\x81\x80\x04", False, w.TOO_LARGE),
])
def test_header_rules(data: bytes, first: bool, reason: str) -> None:
    with pytest.raises(w.Violation) as info:
        w.check_header(header(data), first=first, max_packet=65536)
    assert info.value.reason == reason
    assert info.value.connack == (w.NOT_AUTHORIZED if reason == w.TOO_LARGE and first else None)


def test_accepted_headers() -> None:
    for data in (b"\x10\x20", b"\x30\x05", b"\x3d\x05", b"\x62\x02", b"\x82\x06", b"\xa2\x05", b"\xc0\x00", b"\xe0\x00"):
        w.check_header(header(data), first=data[0] == 0x10, max_packet=65536)
    w.check_header(header(b"\x10\xfa\xff\x03"), first=True, max_packet=65536)  # exactly 65536 with its header


def body(pkt: bytes) -> bytes:
    return pkt[header(pkt).size:]


def test_connect_fields() -> None:
    c = w.parse_connect(body(connect("dev-1", clean=False, keepalive=90, user=b"u", password=b"p",
                                     will=("fleet/a/b/dev-1/w", b"x"))))
    assert c == w.Connect("dev-1", "u", b"p", False, "fleet/a/b/dev-1/w", keepalive=90)
    assert c.credentials == ("dev-1", "u", b"p")


def _connect_body(flags: int, payload: bytes, *, name: bytes = b"MQTT", level: int = 4) -> bytes:
    return field(name) + bytes([level, flags]) + b"\x00\x3c" + payload


@pytest.mark.parametrize(("data", "reason", "code"), [
    (body(connect("dev-1", user=b"\xff\xfe")), w.BAD_UTF8, None),
    (body(connect(b"dev-\xc0\x80")), w.BAD_UTF8, None),  # overlong NUL
    (body(connect("dev\x00")), w.BAD_UTF8, None),
    (body(connect("dev-1")) + b"\xc0\x00", w.MALFORMED_CONNECT, None),  # trailing bytes
    (body(connect("dev-1"))[:-2], w.MALFORMED_CONNECT, None),
    (_connect_body(0x02, field(b"d"), name=b"MQIsdp", level=3), w.MALFORMED_CONNECT, None),
    (_connect_body(0x02, field(b"d"), level=5), w.BAD_PROTOCOL, w.UNACCEPTABLE_PROTOCOL_VERSION),
    (_connect_body(0x03, field(b"d")), w.MALFORMED_CONNECT, None),  # reserved flag
    (_connect_body(0x42, field(b"d") + field(b"p")), w.MALFORMED_CONNECT, None),  # password without username
    (_connect_body(0x0A, field(b"d")), w.MALFORMED_CONNECT, None),  # will QoS without will flag
    (_connect_body(0x1E, field(b"d") + field(b"t") + field(b"m")), w.MALFORMED_CONNECT, None),  # will QoS 3
    (_connect_body(0x06, field(b"d") + field(b"a/#") + field(b"m")), w.MALFORMED, None),  # wildcard will topic
    (_connect_body(0x00, field(b"")), w.BAD_CLIENT_ID, w.IDENTIFIER_REJECTED),
])
def test_connect_refusals(data: bytes, reason: str, code: int | None) -> None:
    with pytest.raises(w.Violation) as info:
        w.parse_connect(data)
    assert (info.value.reason, info.value.connack) == (reason, code)


def test_bodies() -> None:
    w.check_body(header(publish("fleet/a", b"x", qos=1)), body(publish("fleet/a", b"x", qos=1)))
    w.check_body(header(subscribe(1, "a/#", "b/+")), body(subscribe(1, "a/#", "b/+")))
    for bad in (publish("fleet/#", b"x"), packet(0x30, field(b"\xff") + b"x"), packet(0x82, b"\x00\x01"),
                packet(0x82, b"\x00\x01" + field(b"a") + b"\x03"), packet(0x82, b"\x00\x01" + field(b"a")),
                packet(0xA2, b"\x00\x01" + field(b"")), packet(0x32, field(b"a"))):
        with pytest.raises(w.Violation):
            w.check_body(header(bad), body(bad))



def test_a_topic_or_filter_over_200_levels_is_refused() -> None:
    """Mosquitto's limit; fleetsim's own topics have five levels."""
    ok, deep = "/".join(["a"] * 200), "/".join(["a"] * 201)
    assert w.topic_name(ok.encode()) == ok
    w.check_body(header(subscribe(1, ok)), body(subscribe(1, ok)))
    unsubscribe = packet(0xA2, (1).to_bytes(2, "big") + field(deep.encode()))
    for bad in (publish(deep, b"x"), subscribe(1, "a/#", deep), unsubscribe):
        with pytest.raises(w.Violation, match="over 200 levels"):
            w.check_body(header(bad), body(bad))
