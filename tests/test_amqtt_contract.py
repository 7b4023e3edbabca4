"""The amqtt internals the embedded broker relies on or overrides (amqtt 0.12), checked without a broker.

``fleetsim.broker.amqtt_fixes`` overrides private methods of amqtt's Broker and broker protocol handler, and the
front (``fleetsim.broker.embedded``) enforces keepalive and takeover because amqtt does not. If an amqtt release
renames one of those methods, changes what it calls, or starts doing one of those jobs itself, these tests fail
before the broker silently misbehaves (or does a job twice). The behaviour itself is tested end to end in
tests/test_broker_conformance.py.
"""

from __future__ import annotations

import inspect
import re

import pytest
from amqtt.broker import Broker
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.protocol.handler import ProtocolHandler

from fleetsim.broker.amqtt_fixes import AtMostQos, ConformingBroker, ConformingHandler


def _source(obj: object) -> str:
    return re.sub(r"\s+", " ", inspect.getsource(obj))  # type: ignore[arg-type]


def _params(obj: object) -> list[str]:
    return list(inspect.signature(obj).parameters)  # type: ignore[arg-type]


@pytest.mark.parametrize(("owner", "name", "params"), [
    (Broker, "_initialize_client_session", ["self", "reader", "writer", "remote_address", "remote_port"]),
    (Broker, "_handle_disconnect", ["self", "client_session", "handler", "disconnect_waiter"]),
    (Broker, "_publish_session_retained_messages", ["self", "session"]),
    (Broker, "_publish_retained_messages_for_subscription", ["self", "subscription", "session"]),
    (Broker, "_client_message_loop", ["self", "client_session", "handler"]),
    (Broker, "_handle_message_delivery", ["self", "client_session", "handler", "wait_deliver"]),
    (Broker, "_broadcast_message", ["self", "session", "topic", "data", "force_qos"]),
    (Broker, "_delete_session", ["self", "client_id"]),
    (Broker, "_get_handler", ["self", "session"]),
    (ProtocolHandler, "_handle_qos1_message_flow", ["self", "app_message"]),
    (ProtocolHandler, "_handle_qos2_message_flow", ["self", "app_message"]),
    (ProtocolHandler, "start", ["self"]),
])
def test_overridden_methods_keep_their_signatures(owner: type, name: str, params: list[str]) -> None:
    assert _params(getattr(owner, name)) == params, f"amqtt changed {owner.__name__}.{name}"


def test_the_session_flow_the_fixes_hook_into() -> None:
    flow = _source(Broker._handle_client_session)
    # CONNACK, then start() (which resends what is in flight), then the queued messages, then the CONNECT-time
    # replay of retained messages that ConformingBroker skips, then the message loop that ends the skipping.
    order = ["mqtt_connack_authorize", "handler.start()", "_publish_session_retained_messages",
             "_publish_retained_messages_for_subscription((topic, QOS_0)", "_client_message_loop"]
    positions = [flow.find(step) for step in order]
    assert -1 not in positions and positions == sorted(positions), positions
    init = _source(Broker._initialize_client_session)
    assert "BrokerProtocolHandler.init_from_connect(" in init  # a fresh, unattached handler ConformingBroker replaces
    assert "cls(plugins_manager, loop=loop)" in _source(BrokerProtocolHandler.init_from_connect)
    assert "self._broadcast_message(client_session, app_message.topic, app_message.data)" in _source(
        Broker._handle_message_delivery)  # the published QoS is not passed: AtMostQos brings it
    assert 'broadcast.get("qos", sub_qos)' in _source(Broker._run_broadcast)
    assert "await self._broadcast_queue.put(broadcast)" in _source(Broker._broadcast_message)


def test_redelivery_is_amqtts_retry_at_start() -> None:
    start = _source(ProtocolHandler.start)
    assert "self._reader_task = asyncio.create_task(self._reader_loop())" in start
    assert start.find("_reader_loop") < start.find("await self._retry_deliveries()")
    assert "self.session.inflight_out.values()" in _source(ProtocolHandler._retry_deliveries)
    qos1, qos2 = _source(ProtocolHandler._handle_qos1_message_flow), _source(ProtocolHandler._handle_qos2_message_flow)
    assert "build_publish_packet(dup=True)" in qos1 and "build_publish_packet(dup=True)" in qos2
    # the defect ConformingHandler undoes: the flow forgets its message however it ends
    assert "finally: self._puback_waiters.pop(app_message.packet_id, None) # Discard inflight message " \
           "self.session.inflight_out.pop(app_message.packet_id, None)" in qos1
    assert "self._reader_stopped.set()" in _source(ProtocolHandler._reader_loop)
    assert "self._disconnect_waiter = asyncio.Future()" in _source(BrokerProtocolHandler.start)


def test_keepalive_and_will_are_left_to_the_front() -> None:
    """amqtt's broker handler does nothing when a client's keepalive passes (the front closes the connection);
    a connection that ends without DISCONNECT gets its will published by amqtt."""
    assert _source(BrokerProtocolHandler.handle_read_timeout).strip().endswith("-> None: pass")
    assert "timeout=keepalive_timeout" in _source(ProtocolHandler._reader_loop)  # cancels a read: PacketReader
    disconnect = _source(Broker._handle_disconnect)
    assert "if client_session.will_flag:" in disconnect and "client_session.will_topic" in disconnect


def test_takeover_is_left_to_the_front() -> None:
    """amqtt's own takeover: a clean CONNECT deletes the old session without closing its connection, and a
    persistent one stops the old handler while both share one session. The front closes the old connection and
    waits for amqtt to end it before amqtt reads the new CONNECT, so neither path is taken."""
    assert "await self._delete_session(client_session.client_id)" in _source(Broker._initialize_client_session)
    assert "performing take-over" in _source(Broker._handle_client_session)


def test_the_fix_classes_are_amqtts() -> None:
    assert issubclass(ConformingBroker, Broker) and issubclass(ConformingHandler, BrokerProtocolHandler)
    at_most = AtMostQos(1, session=None, topic="t", data=b"x")
    assert at_most.get("qos", 2) == 1 and at_most.get("qos", 0) == 0 and at_most.get("topic") == "t"

