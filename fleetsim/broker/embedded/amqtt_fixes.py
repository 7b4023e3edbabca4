"""amqtt 0.12's MQTT 3.1.1 session defects, fixed in one contained subclass of its Broker and protocol handler.

amqtt stays the embedded broker's engine; these are the places where it breaks the standard, each one fixed by
overriding one (private) method and fenced by ``tests/test_amqtt_contract.py``, which fails when an amqtt release
changes what is relied on here. Each is worth reporting upstream.

* Clean sessions outlive their connection (3.1.2-6): amqtt keeps a disconnected clean session, subscriptions and
  all, until its once-a-second sweep; a CleanSession=0 CONNECT in that second resumes it with session present = 1.
  Here a clean session's state goes when its connection ends.
* Unacknowledged messages are forgotten (4.4.0-1): the QoS 1/2 send flow drops its message from
  ``session.inflight_out`` when the connection ends before the PUBACK/PUBREC/PUBCOMP, so a resumed session has
  nothing to send again. Here a flow ended by the connection's end puts its message back, and amqtt's own retry
  at the next CONNECT sends it with DUP set. (A message a connected client leaves unacknowledged for amqtt's 5 s
  is still given up, as amqtt does: nothing grows without bound while the client stays connected.)
* Messages queued for an offline session are delivered with RETAIN set (3.3.1-9): here with RETAIN 0.
* A connection that ends while amqtt resends in-flight messages at CONNECT leaves a session that never ends
  (amqtt re-arms its disconnect waiter after the reader stopped); here it ends.
* Delivered QoS (3.8.4): amqtt delivers at the subscription's QoS whatever the message's; here at the lower of the
  two (a QoS 0 message is not upgraded to QoS 1 and queued for an offline session).
* Retained messages at SUBSCRIBE: matched against every retained message on the loop, once per filter, unbounded:
  ``retained_replay.RetainedReplay``, which ConformingBroker builds on, indexes, paces and bounds them.
* Retained messages at CONNECT (3.3.1-6): amqtt sends every connecting client the retained messages matching
  every subscription any session holds in the broker, without asking the topic plugin: a device connecting
  received another device's retained messages whenever a monitor had subscribed to them. Retained messages go to
  new subscriptions only; none are sent at CONNECT here.

Keepalive (3.1.2-24) and session takeover (3.1.4-2) are enforced by the front (``embedded``), which reads every
packet and knows each client id's connection: amqtt's broker handler ignores its read timeout, and its takeover
either leaves the old connection up (clean session) or ends the resumed session with the old one (persistent).
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Any, TypeAlias

from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import OUTGOING, IncomingApplicationMessage, OutgoingApplicationMessage, Session

from fleetsim.broker.embedded.retained_replay import RetainedReplay

# The QoS a client published the message with that its connection's task is broadcasting now (None: none).
_PUBLISHED_QOS: ContextVar[int | None] = ContextVar("fleetsim_amqtt_published_qos", default=None)
# True in a connection's task between its CONNACK and its message loop: amqtt's "publish retained messages to a
# pre-existing session's subscriptions" step, which is skipped here (see the module docstring).
_CONNECTING: ContextVar[bool] = ContextVar("fleetsim_amqtt_connecting", default=False)
Message: TypeAlias = IncomingApplicationMessage | OutgoingApplicationMessage


class ConformingHandler(BrokerProtocolHandler):
    """amqtt's broker protocol handler; an outgoing QoS 1/2 flow the connection's end cut short stays in flight."""

    async def start(self) -> None:
        """amqtt's start, which resends what is in flight and waits for its acknowledgements; a connection that
        ends meanwhile stops the reader, and amqtt's start then arms a fresh disconnect waiter nothing will ever
        complete (the session would stay "connected" with no connection): complete it."""
        await super().start()
        if self._reader_stopped.is_set():
            await self.handle_connection_closed()

    async def _handle_qos1_message_flow(self, app_message: Message) -> None:
        try:
            await super()._handle_qos1_message_flow(app_message)
        except asyncio.CancelledError:
            self._keep_in_flight(app_message)
            raise

    async def _handle_qos2_message_flow(self, app_message: Message) -> None:
        try:
            await super()._handle_qos2_message_flow(app_message)
        except asyncio.CancelledError:
            self._keep_in_flight(app_message)
            raise

    def _keep_in_flight(self, message: Message) -> None:
        """Back into the session for amqtt's retry at the next CONNECT (it then sets DUP, or resends PUBREL)."""
        if (message.direction == OUTGOING and isinstance(message, OutgoingApplicationMessage)
                and message.packet_id is not None and self.session is not None
                and message.puback_packet is None and message.pubcomp_packet is None):
            self.session.inflight_out[message.packet_id] = message


class AtMostQos(dict[str, Any]):
    """A broadcast of amqtt's: a dict whose ``get("qos", subscription_qos)`` is the lower of the published and
    the subscription QoS, which is how amqtt's broadcast loop picks the QoS it delivers each subscriber at."""

    def __init__(self, published_qos: int, **broadcast: Any) -> None:
        super().__init__(**broadcast)
        self.published_qos = published_qos

    def get(self, key: str, default: Any = None) -> Any:
        if key == "qos" and key not in self and isinstance(default, int):
            return min(self.published_qos, default)
        return super().get(key, default)


class ConformingBroker(RetainedReplay):
    """amqtt's Broker with the defects of the module docstring fixed."""

    async def _handle_message_delivery(self, client_session: Session, handler: BrokerProtocolHandler,
                                       wait_deliver: asyncio.Future[Any]) -> bool:
        message = wait_deliver.result()
        token = _PUBLISHED_QOS.set(message.qos if message is not None else None)
        try:
            return await super()._handle_message_delivery(client_session, handler, wait_deliver)
        finally:
            _PUBLISHED_QOS.reset(token)

    async def _broadcast_message(self, session: Session | None, topic: str | None, data: bytes | bytearray | None,
                                 force_qos: int | None = None) -> None:
        published = _PUBLISHED_QOS.get()
        if force_qos is not None or published is None:
            await super()._broadcast_message(session, topic, data, force_qos)
            return
        await self._broadcast_queue.put(AtMostQos(published, session=session, topic=topic, data=data))

    async def _initialize_client_session(self, reader: Any, writer: Any, remote_address: str,
                                         remote_port: int) -> tuple[BrokerProtocolHandler, Session]:
        _, session = await super()._initialize_client_session(reader, writer, remote_address, remote_port)
        return ConformingHandler(self.plugins_manager, loop=self._loop), session  # amqtt's was new and unattached

    async def _handle_disconnect(self, client_session: Session, handler: BrokerProtocolHandler,
                                 disconnect_waiter: asyncio.Future[Any]) -> None:
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)
        client_id = client_session.client_id
        if client_session.clean_session and client_id and self._sessions.get(client_id, (None,))[0] is client_session:
            await self._delete_session(client_id)  # 3.1.2-6: ends with the connection, not at the next sweep

    async def _publish_session_retained_messages(self, session: Session) -> None:
        """What was queued while the session was offline, with RETAIN 0 (3.3.1-9); then no CONNECT-time replay."""
        _CONNECTING.set(True)
        handler = self._get_handler(session)
        sending = []
        while handler is not None and not session.retained_messages.empty():
            queued = session.retained_messages.get_nowait()
            sending.append(asyncio.ensure_future(handler.mqtt_publish(queued.topic, queued.data, queued.qos,
                                                                      retain=False)))
        if sending:
            await asyncio.wait(sending)

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Session) -> None:
        if not _CONNECTING.get():
            await super()._publish_retained_messages_for_subscription(subscription, session)

    async def _client_message_loop(self, client_session: Session, handler: BrokerProtocolHandler) -> None:
        _CONNECTING.set(False)
        await super()._client_message_loop(client_session, handler)
