"""amqtt 0.12's MQTT 3.1.1 session defects, fixed in one contained subclass of its Broker and protocol handler.

amqtt stays the embedded broker's engine; these are the places where it breaks the standard, each one fixed by
overriding one (private) method and fenced by ``tests/test_amqtt_contract.py``, which fails when an amqtt release
changes what is relied on here. Each is worth reporting upstream.

* Clean sessions outlive their connection (3.1.2-6): amqtt keeps a disconnected clean session, subscriptions and
  all, until its once-a-second sweep; a CleanSession=0 CONNECT in that second resumes it with session present = 1.
  Here a clean session's state goes when its connection ends.
* Unacknowledged messages are forgotten (4.4.0-1): amqtt's QoS 1/2 send flow gives its message up when the client
  has not acknowledged it within 5 s, or when the connection ends first (a QoS 2 one already at its PUBREC), so a
  resumed session had nothing to send again: a QoS 1 alarm to a stalled nurse station was lost. Here each outgoing
  QoS 1/2 message stays in ``session.inflight_out`` until acknowledged, however long, and is sent again at the next
  CONNECT (PUBLISH with DUP, or PUBREL); at most ``max_inflight`` per session (Mosquitto's 20), the rest waiting in
  the session's outbox (``session_queue``).
* The offline queue has no bound (a monitor offline on ``#`` grew the broker ~1 MB per MB published) and is sent
  all at once on resume, past the outbound bound (the device was closed as a slow consumer, resume after resume).
  Here it is the session's outbox: bounded in messages and bytes (past them dropped, counted), sent as the window
  frees and while the connection's unsent bytes allow (``outbound.paced``).
* QoS 2 messages received and never released (PUBREL) are held one for one, up to 65,535 per device: here past
  ``max_inflight`` awaiting PUBREL the connection is closed, counted. (Mosquitto 2.0.11 holds 20 likewise, then
  answers PUBREC to the others without keeping them: lost, and a 3.1.1 client cannot know. A closed connection
  tells it, as ``outbound`` does for a slow consumer.)
* At CONNECT amqtt awaits every in-flight message's acknowledgement (up to 10 s) before the session's message loop
  runs; here each is resent and awaited in a task of its own.
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
import logging
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any, TypeAlias

from amqtt.errors import ProtocolHandlerError
from amqtt.mqtt.constants import QOS_1, QOS_2
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.pubrel import PubrelPacket
from amqtt.session import INCOMING, IncomingApplicationMessage, OutgoingApplicationMessage, Session

from fleetsim.broker.embedded.outbound import BoundedWriter
from fleetsim.broker.embedded.retained_replay import RetainedReplay
from fleetsim.broker.embedded.session_queue import QueueBounds, Queued, outbox_of, window_open

log = logging.getLogger("fleetsim.broker.embedded")
# How often a paced sender looks at the connection's unsent bytes again while they are over (``outbound.paced``):
# from 2 ms, doubling up to 50 ms while the client does not read (a stalled client costs ~20 wakeups a second).
PACE_POLL_S, PACE_POLL_MAX_S = 0.002, 0.05

# The QoS a client published the message with that its connection's task is broadcasting now (None: none).
_PUBLISHED_QOS: ContextVar[int | None] = ContextVar("fleetsim_amqtt_published_qos", default=None)
# True in a connection's task between its CONNACK and its message loop: amqtt's "publish retained messages to a
# pre-existing session's subscriptions" step, which is skipped here (see the module docstring).
_CONNECTING: ContextVar[bool] = ContextVar("fleetsim_amqtt_connecting", default=False)
Message: TypeAlias = IncomingApplicationMessage | OutgoingApplicationMessage


def _nothing() -> None:
    """A counter's default: nothing counts."""


class ConformingHandler(BrokerProtocolHandler):
    """amqtt's broker protocol handler; outgoing QoS 1/2 messages go through the session's window and outbox
    (``session_queue``), incoming QoS 2 ones awaiting PUBREL are bounded by the same window."""

    def __init__(self, *args: Any, bounds: QueueBounds = QueueBounds(), on_queue_full: Callable[[], None] = _nothing,
                 on_unreleased: Callable[[], None] = _nothing, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bounds = bounds
        self._on_queue_full = on_queue_full
        self._on_unreleased: Callable[[], None] | None = on_unreleased
        self._sender: asyncio.Task[None] | None = None
        self._flows: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """amqtt's start (the reader, then ``_retry_deliveries``), then the outbox's sender. A connection that ends
        meanwhile stops the reader, and amqtt's start then arms a fresh disconnect waiter nothing will ever complete
        (the session would stay "connected" with no connection): complete it."""
        await super().start()
        if self._reader_stopped.is_set():
            await self.handle_connection_closed()
            return
        self._sender = asyncio.create_task(self._send_outbox())

    async def stop(self) -> None:
        """Stop the sender and the flows waiting for acknowledgements: what they carried stays in flight (in the
        session's ``inflight_out``) or queued, for the session's next connection."""
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None
        for flow in list(self._flows):
            flow.cancel()
        await super().stop()

    async def _retry_deliveries(self) -> None:
        """MQTT-4.4.0-1 at CONNECT: every message in flight each way is sent again (outgoing: PUBLISH with DUP, or
        PUBREL once PUBREC came), each awaiting its acknowledgement in a task of its own. amqtt awaited them all, for
        up to 10 s, before the session's message loop could run, and then gave them up."""
        assert self.session is not None
        for incoming in list(self.session.inflight_in.values()):
            self._spawn(self._handle_message_flow(incoming))
        for outgoing in list(self.session.inflight_out.values()):
            self._spawn(self._deliver(outgoing))

    async def mqtt_publish(self, topic: str, data: bytes | bytearray, qos: int | None, retain: bool,
                           ack_timeout: int | None = None) -> OutgoingApplicationMessage:
        """A QoS 1/2 message to this client joins its session's outbox (dropped and counted when full); QoS 0 is
        amqtt's (written at once, within the outbound bound)."""
        if qos is None or qos not in (QOS_1, QOS_2) or self.session is None:
            return await super().mqtt_publish(topic, data, qos, retain, ack_timeout)
        if not outbox_of(self.session.attributes, self._bounds).offer(Queued(topic, data, qos, retain)):
            self._on_queue_full()
        return OutgoingApplicationMessage(None, topic, qos, data, retain)

    async def _send_outbox(self) -> None:
        """Send queued messages while the window has room and the connection's unsent bytes allow (``paced``)."""
        assert self.session is not None
        session, outbox = self.session, outbox_of(self.session.attributes, self._bounds)
        poll = PACE_POLL_S
        while True:
            head = outbox.peek()
            if head is None or not window_open(len(session.inflight_out), self._bounds):
                outbox.wake.clear()
                await outbox.wake.wait()
                continue
            if isinstance(self.writer, BoundedWriter) and not self.writer.has_room(head.size):
                await asyncio.sleep(poll)
                poll = min(2 * poll, PACE_POLL_MAX_S)
                continue
            poll = PACE_POLL_S
            queued = outbox.take()
            message = OutgoingApplicationMessage(session.next_packet_id, queued.topic, queued.qos, queued.data,
                                                 queued.retain)
            assert message.packet_id is not None
            session.inflight_out[message.packet_id] = message
            self._spawn(self._deliver(message))

    async def _deliver(self, message: OutgoingApplicationMessage) -> None:
        """One outgoing QoS 1/2 flow, to its end however long the client takes; the message leaves the session's
        in-flight set only when acknowledged (amqtt's flow gave up after 5 s, and forgot a QoS 2 message at its
        PUBREC, so its PUBREL was never sent again). Cancelled (the connection ended), it stays in flight."""
        assert self.session is not None and message.packet_id is not None
        pid = message.packet_id
        if message.pubrec_packet is None:  # QoS 1, or QoS 2 not received yet: the PUBLISH, DUP if sent before
            publish = message.build_publish_packet(dup=message.publish_packet is not None)
            waiters: dict[int, Any] = self._puback_waiters if message.qos == QOS_1 else self._pubrec_waiters
            ack = await self._exchange(publish, waiters, pid, lambda: setattr(message, "publish_packet", publish))
            if message.qos == QOS_1:
                message.puback_packet = ack
            else:
                message.pubrec_packet = ack
        if message.qos == QOS_2:
            message.pubrel_packet = PubrelPacket.build(pid)
            message.pubcomp_packet = await self._exchange(message.pubrel_packet, self._pubcomp_waiters, pid)
        if self.session.inflight_out.get(pid) is message:
            del self.session.inflight_out[pid]
        outbox_of(self.session.attributes, self._bounds).wake.set()

    async def _exchange(self, packet: Any, waiters: dict[int, Any], pid: int,
                        sent: Callable[[], None] = _nothing) -> Any:
        """Send ``packet`` and await its acknowledgement through amqtt's waiters (its reader completes them)."""
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiters[pid] = waiter
        try:
            await self._send_packet(packet)
            sent()
            return await waiter
        finally:
            if waiters.get(pid) is waiter:
                del waiters[pid]

    async def _handle_qos2_message_flow(self, app_message: Message) -> None:
        """An incoming QoS 2 PUBLISH that would take the messages awaiting PUBREL past the window closes the
        connection, counted (Mosquitto holds as many, then drops the others after their PUBREC); a resent one (same
        packet id) is not
        new. amqtt held every one, 64 KiB each, up to 65,535 per device."""
        session = self.session
        if (app_message.direction == INCOMING and session is not None and app_message.packet_id is not None
                and app_message.packet_id not in session.inflight_in
                and not window_open(len(session.inflight_in), self._bounds)):
            report, self._on_unreleased = self._on_unreleased, None
            if report is not None:
                report()
                if self._reader_task is not None:
                    self._reader_task.cancel()  # amqtt's reader then ends the session as at a dropped connection
            return
        await super()._handle_qos2_message_flow(app_message)

    def _spawn(self, flow: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(flow)
        self._flows.add(task)
        task.add_done_callback(self._flow_done)

    def _flow_done(self, task: asyncio.Task[None]) -> None:
        self._flows.discard(task)
        failure = None if task.cancelled() else task.exception()
        if failure is not None and not isinstance(failure, ProtocolHandlerError):  # that one: cancelled mid-send
            log.warning("a message flow of %s failed: %r", self.session.client_id if self.session else "?",
                        failure)


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
    """amqtt's Broker with the defects of the module docstring fixed. ``bounds``: each session's in-flight window
    and outbox (``session_queue``); ``on_queue_full`` is called for each message dropped from a full outbox,
    ``on_unreleased`` for each connection closed for holding too many QoS 2 messages without PUBREL."""

    def __init__(self, config: dict[str, Any], *, bounds: QueueBounds = QueueBounds(),
                 on_queue_full: Callable[[], None] = _nothing, on_unreleased: Callable[[], None] = _nothing, **retained: Any) -> None:
        super().__init__(config, **retained)
        self.bounds = bounds
        self._on_queue_full = on_queue_full
        self._on_unreleased = on_unreleased

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
        handler = ConformingHandler(self.plugins_manager, loop=self._loop, bounds=self.bounds,
                                    on_queue_full=self._on_queue_full, on_unreleased=self._on_unreleased)
        return handler, session  # amqtt's was new and unattached

    async def _handle_disconnect(self, client_session: Session, handler: BrokerProtocolHandler,
                                 disconnect_waiter: asyncio.Future[Any]) -> None:
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)
        client_id = client_session.client_id
        if client_session.clean_session and client_id and self._sessions.get(client_id, (None,))[0] is client_session:
            await self._delete_session(client_id)  # 3.1.2-6: ends with the connection, not at the next sweep

    async def _retain_broadcast_message(self, broadcast: dict[str, Any], qos: int, target_session: Session) -> None:
        """A QoS 1/2 message for an offline persistent session joins its bounded outbox (``session_queue``), to be
        sent with RETAIN 0 (3.3.1-9) when it returns; amqtt's queue had no bound."""
        queued = Queued(broadcast["topic"], broadcast["data"], qos, retain=False)
        if not outbox_of(target_session.attributes, self.bounds).offer(queued):
            self._on_queue_full()

    async def _publish_session_retained_messages(self, session: Session) -> None:
        """amqtt's replay of its offline queue (all at once, RETAIN set): none is left in it (see
        ``_retain_broadcast_message``); the handler's sender sends the outbox. What follows is skipped (see
        ``_CONNECTING``)."""
        _CONNECTING.set(True)

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Session) -> None:
        if not _CONNECTING.get():
            await super()._publish_retained_messages_for_subscription(subscription, session)

    async def _client_message_loop(self, client_session: Session, handler: BrokerProtocolHandler) -> None:
        _CONNECTING.set(False)
        await super()._client_message_loop(client_session, handler)
