"""The amqtt internals the embedded broker relies on or overrides (amqtt 0.12), checked here so that an amqtt
release that changes them fails before the broker silently misbehaves (or does a job twice).

In fleetsim.broker.embedded:

* ``amqtt_fixes`` overrides private methods of amqtt's Broker and broker protocol handler, and the front
  (``broker``) enforces keepalive and takeover because amqtt does not: the behaviour itself is tested end to
  end in tests/test_broker_conformance.py.
* ``amqtt_fixes`` also takes over amqtt's outgoing QoS 1/2 flow (``mqtt_publish``, ``_retry_deliveries``, the
  offline queue ``_retain_broadcast_message``) for the session's window and outbox (``session_queue``), completing
  amqtt's acknowledgement waiters; ``outbound`` paces that outbox.
* ``subscriptions`` replaces ``Broker._subscriptions`` and ``Broker._broadcast_queue`` (to route a message
  through the filters that can match it, once per subscriber, and to count each client id's subscriptions);
  ``retained_replay`` replaces ``Broker._retained_messages`` (``retained``: indexed, bounded) and the replay of
  retained messages at SUBSCRIBE; ``outbound`` judges
  each packet amqtt writes whole; the front's hold reads a session's ``delivered_message_queue``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re

import pytest
from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.protocol.handler import ProtocolHandler
from amqtt.mqtt.publish import PublishPacket
from amqtt.session import Session
from hypothesis import given, settings
from hypothesis import strategies as st
from mqtt_raw import connect, field, packet, publish, subscribe

from fleetsim.broker.embedded.amqtt_fixes import AtMostQos, ConformingBroker, ConformingHandler
from fleetsim.broker.embedded.broker import EmbeddedBroker
from fleetsim.broker.embedded.subscriptions import FilterTrie, SubscriptionTable
from fleetsim.broker.handle import BrokerOptions
from fleetsim.pki import Pki


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
    (Broker, "_retain_broadcast_message", ["self", "broadcast", "qos", "target_session"]),
    (Broker, "_handle_subscription", ["self", "client_session", "handler", "subscribe_waiter"]),
    (Broker, "retain_message", ["self", "source_session", "topic_name", "data", "qos"]),
    (BrokerProtocolHandler, "mqtt_publish", ["self", "topic", "data", "qos", "retain", "ack_timeout"]),
    (ProtocolHandler, "_handle_qos1_message_flow", ["self", "app_message"]),
    (ProtocolHandler, "_handle_qos2_message_flow", ["self", "app_message"]),
    (ProtocolHandler, "_handle_message_flow", ["self", "app_message"]),
    (ProtocolHandler, "_retry_deliveries", ["self"]),
    (ProtocolHandler, "_send_packet", ["self", "packet"]),
    (ProtocolHandler, "mqtt_publish", ["self", "topic", "data", "qos", "retain", "ack_timeout"]),
    (ProtocolHandler, "start", ["self"]),
    (BrokerProtocolHandler, "stop", ["self"]),
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


def test_outgoing_qos12_messages_all_pass_through_mqtt_publish() -> None:
    """ConformingHandler.mqtt_publish puts every outgoing QoS 1/2 message in its session's outbox
    (session_queue), and ConformingBroker._retain_broadcast_message every one for an offline session: amqtt must
    reach a client only through those two."""
    module = inspect.getsource(inspect.getmodule(Broker))  # type: ignore[arg-type]
    assert "handler.mqtt_publish(" in _source(Broker._run_broadcast)
    assert "await self._retain_broadcast_message(broadcast, qos, target_session)" in _source(Broker._run_broadcast)
    assert "await target_session.retained_messages.put(retained_message)" in _source(Broker._retain_broadcast_message)
    assert module.count("retained_messages.put(") == 1  # the offline queue is filled there only
    assert "._handle_message_flow(" not in module and "_handle_qos1_message_flow" not in module
    flow = _source(ProtocolHandler.mqtt_publish)
    assert "await self._handle_message_flow(message)" in flow  # amqtt's own flow: the one the outbox replaces


def test_the_acknowledgements_complete_amqtts_waiters() -> None:
    """ConformingHandler._deliver awaits its PUBACK / PUBREC / PUBCOMP through amqtt's waiter dicts, which the
    reader completes by packet id, and which stop() cancels (the flow ends, its message stays in flight)."""
    for name, waiters in [("handle_puback", "_puback_waiters"), ("handle_pubrec", "_pubrec_waiters"),
                          ("handle_pubcomp", "_pubcomp_waiters")]:
        assert f"waiter = self.{waiters}[packet_id] waiter.set_result(" in _source(getattr(ProtocolHandler, name))
    assert "self._puback_waiters.values(), self._pubcomp_waiters.values()" in _source(ProtocolHandler._stop_waiters)
    assert "self._stop_waiters()" in _source(ProtocolHandler.stop)
    assert "await super().stop()" in _source(BrokerProtocolHandler.stop)
    assert "while self._packet_id in self.inflight_in or self._packet_id in self.inflight_out:" in _source(Session)


def test_redelivery_is_at_start_and_incoming_qos2_waits_in_inflight_in() -> None:
    """ConformingHandler replaces _retry_deliveries (called by start once the reader runs) and bounds the incoming
    QoS 2 messages awaiting PUBREL, which amqtt's flow holds in session.inflight_in."""
    start = _source(ProtocolHandler.start)
    assert "self._reader_task = asyncio.create_task(self._reader_loop())" in start
    assert start.find("_reader_loop") < start.find("await self._retry_deliveries()")
    assert "self.session.inflight_out.values()" in _source(ProtocolHandler._retry_deliveries)
    qos2 = _source(ProtocolHandler._handle_qos2_message_flow)
    assert "self.session.inflight_in[app_message.packet_id] = app_message" in qos2
    assert "del self.session.inflight_in[app_message.packet_id]" in qos2
    assert "await self._handle_message_flow(incoming_message)" in _source(ProtocolHandler.handle_publish)
    reader = _source(ProtocolHandler._reader_loop)
    assert "except asyncio.CancelledError: self.logger.debug(\"Task cancelled, reader loop ending\") break" in reader
    assert "self._reader_stopped.set()" in reader
    assert "self._disconnect_waiter = asyncio.Future()" in _source(BrokerProtocolHandler.start)
    assert "self.attributes: dict[str, Any] = {}" in _source(Session.__init__)  # where the outbox is kept


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


# --- the subscription table and the bounded writer ---


def test_amqtt_routes_each_message_through_one_items_call_right_after_taking_it() -> None:
    route = _source(Broker._run_broadcast)
    take = "broadcast = await self._broadcast_queue.get()"
    taken, walk = route.index(take) + len(take), route.index("for k_filter, subscriptions in self._subscriptions.items():")
    assert taken < walk and "await" not in route[taken:walk], "something runs between take and routing"
    assert route.count("_subscriptions") == 1 and "self._matches(broadcast[\"topic\"], k_filter)" in route
    assert "self._subscriptions: dict" in _source(Broker.__init__) and "self._broadcast_queue" in _source(Broker.__init__)
    assert "self._subscriptions =" not in _source(Broker.start)  # cleared, never replaced, at start
    assert "self._broadcast_queue =" not in _source(Broker.start)


def test_amqtt_adds_and_removes_subscribers_only_by_append_and_pop() -> None:
    add, remove = _source(Broker.add_subscription), _source(Broker._del_subscription)
    assert "self._subscriptions[topic_filter] = []" in add and "self._subscriptions[topic_filter].append(" in add
    assert "subscriptions.pop(index)" in remove
    source = inspect.getsource(inspect.getmodule(Broker))  # type: ignore[arg-type]
    assert len(re.findall(r"_subscriptions\[[^\]]+\]\.(\w+)\(", source)) == 1  # the append above, nothing else


def test_the_retained_store_is_amqtts_dict_written_in_two_places() -> None:
    """RetainedStore keeps its index and charges in __setitem__/__delitem__/clear: amqtt must change its retained
    messages only there, through retain_message (asked first by RetainedReplay), and never replace the dict."""
    source = inspect.getsource(inspect.getmodule(Broker))  # type: ignore[arg-type]
    writes = re.findall(r"self\._retained_messages(\[\w+\] =|\.(?:clear|pop|update|setdefault)\(|: dict| = )", source)
    assert sorted(writes) == sorted([": dict", ".clear(", ".clear(", "[topic_name] ="]), writes  # + del, below
    assert source.count("del self._retained_messages[") == 1
    retain = _source(Broker.retain_message)
    assert "self._retained_messages[topic_name] = RetainedApplicationMessage(source_session, topic_name, data, qos)" \
        in retain and "del self._retained_messages[topic_name]" in retain
    assert "self.retain_message(client_session, app_message.topic, app_message.data, app_message.qos)" in _source(
        Broker._handle_message_delivery)
    assert "await self.retain_message(" in _source(Broker._handle_disconnect)  # a will with RETAIN
    assert "self._retained_messages.items()" in _source(Broker._publish_retained_messages_for_subscription)
    assert {"source_session", "data", "qos", "topic"} <= set(RetainedApplicationMessage.__slots__)


def test_a_subscribe_acknowledges_then_replays_each_granted_filter_in_its_task() -> None:
    """RetainedReplay gathers the filters of one SUBSCRIBE (a context variable set around amqtt's handling) and
    replays them once, together: amqtt must call the per-filter replay from inside _handle_subscription, after the
    SUBACK, only for granted filters, and nowhere else but the CONNECT-time replay ConformingBroker skips."""
    handle = _source(Broker._handle_subscription)
    ack, replay = handle.find("mqtt_acknowledge_subscription"), handle.find(
        "await self._publish_retained_messages_for_subscription(subscription, client_session)")
    assert -1 < ack < replay and "if return_codes[index] != AMQTT_MAGIC_VALUE_RET_SUBSCRIBED:" in handle
    source = inspect.getsource(inspect.getmodule(Broker))  # type: ignore[arg-type]
    assert source.count("self._publish_retained_messages_for_subscription(") == 2  # here and at CONNECT
    assert "await self._handle_subscription(client_session, handler, subscribe_waiter)" in _source(
        Broker._client_message_loop)
    assert 'transitions.state != "connected"' in _source(Broker._run_broadcast)  # the state a replay stops at


BARE = Broker.__new__(Broker)  # only for its _matches, amqtt's own rule
BARE.logger = logging.getLogger("amqtt-contract")
atoms = st.sampled_from(["a", "b", "", "$SYS", "x"])
levels = st.lists(atoms, min_size=1, max_size=4)
filters = st.lists(st.sampled_from(["a", "b", "", "+", "x", "$SYS"]), min_size=1, max_size=4).flatmap(
    lambda ls: st.sampled_from(["/".join(ls), "/".join([*ls, "#"]), "#"]))


@settings(max_examples=400, deadline=None)
@given(st.lists(filters, max_size=8, unique=True), levels)
def test_the_trie_finds_every_filter_amqtt_would_match(subscribed: list[str], topic_levels: list[str]) -> None:
    topic = "/".join(topic_levels)
    trie = FilterTrie()
    for f in subscribed:
        trie.add(f)
    matches = {f for f in subscribed if Broker._matches(BARE, topic, f)}
    assert matches <= set(trie.candidates(topic))
    for f in subscribed:
        trie.remove(f)
    assert trie.candidates(topic) == []


async def _read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first >> 4, await reader.readexactly(length)


def test_a_real_broker_routes_through_the_table_and_counts_per_client(pki: Pki) -> None:
    async def scenario() -> None:
        async with EmbeddedBroker(pki.root, BrokerOptions(port=0, plain_port=0)) as b:
            assert b._amqtt is not None
            table = b._amqtt._subscriptions
            assert isinstance(table, SubscriptionTable)
            shown: list[int] = []
            items = table.items

            def spy() -> list[tuple[str, list[object]]]:
                focused, out = table._focus is not None, items()
                if focused:
                    shown.append(len(out))
                return out  # type: ignore[return-value]

            table.items = spy  # type: ignore[method-assign,assignment]
            reader, writer = await asyncio.open_connection("127.0.0.1", b.plain_port)
            writer.write(connect("c1"))
            assert (await _read(reader))[0] == 2
            writer.write(subscribe(1, "a/+/c", "a/#", "z/z", "q/#", qos=0))
            assert (await _read(reader))[0] == 9
            assert table.held("c1") == 4 and table.holds("c1", "a/#")
            writer.write(publish("a/b/c", b"hello"))
            got = await asyncio.wait_for(_read(reader), 2)  # once, though two filters match (amqtt: once each)
            assert got[0] == 3 and shown == [1]  # one filter shown, holding the one subscriber
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(_read(reader), 0.3)
            session = b._amqtt.sessions["c1"][0]
            assert isinstance(session.delivered_message_queue, asyncio.Queue)  # what the front's hold reads
            writer.write(packet(0xA2, (2).to_bytes(2, "big") + field(b"z/z")))
            assert (await _read(reader))[0] == 11
            assert table.held("c1") == 3
            writer.write(b"\xe0\x00")  # DISCONNECT: a clean session's subscriptions go
            await writer.drain()
            for _ in range(100):
                if not table.held("c1"):
                    break
                await asyncio.sleep(0.02)
            assert table.held("c1") == 0 and not table._trie.candidates("a/b/c")
            writer.close()

    asyncio.run(scenario())


def test_amqtt_writes_each_packet_in_one_write() -> None:
    """The embedded broker's outbound.py judges a packet by its first byte and size: whole packets only."""
    writes: list[bytes] = []

    class Recorder:
        def write(self, data: bytes) -> None:
            writes.append(bytes(data))

        async def drain(self) -> None:
            pass

    message = PublishPacket.build("t/x", b"y" * 70_000, None, False, 0, False)
    asyncio.run(message.to_stream(Recorder()))
    assert len(writes) == 1 and writes[0] == message.to_bytes() and writes[0][0] == 0x30


def test_amqtt_deletes_a_clean_session_before_it_asks_the_auth_plugin() -> None:
    """Why the front reads and admits the CONNECT itself (auth.py, mqtt_wire.py): amqtt ends the clean session
    the client id names while it reads the CONNECT, and asks its auth plugins only after that, so an imposter
    let through to amqtt would cost the real device its session before any refusal."""
    connected = _source(Broker._client_connected)
    steps = [connected.find("self._initialize_client_session("), connected.find("self._handle_client_session(")]
    assert -1 not in steps and steps == sorted(steps), steps
    init = _source(Broker._initialize_client_session)
    assert "await self._delete_session(client_session.client_id)" in init and "_authenticate" not in init
    handle = _source(Broker._handle_client_session)
    asked = [handle.find("self._authenticate("), handle.find("mqtt_connack_authorize")]
    assert -1 not in asked and asked == sorted(asked), asked
    assert "self.plugins_manager.map_plugin_auth(session=session)" in _source(Broker._authenticate)


def test_amqtt_runs_the_auth_plugin_in_a_task_that_copies_the_connections_context() -> None:
    """plugins.py hands each connection's gate to the auth plugin in a context variable set by the task that
    gives amqtt the connection: amqtt must call its plugins from tasks started there (asyncio copies the context
    into them), not from a task of its own made elsewhere."""
    from amqtt.plugins.manager import PluginManager

    from fleetsim.broker.embedded.plugins import CURRENT_GATE

    assert "self._map_plugin_method( self._auth_plugins, \"authenticate\"" in _source(PluginManager.map_plugin_auth)
    assert "asyncio.ensure_future(coro_instance)" in _source(PluginManager._map_plugin_method)

    class Plugin:
        async def authenticate(self, *, session: object) -> bool:
            return CURRENT_GATE.get(None) is gate

    def gate(connect: object) -> object:
        return connect

    async def one_connection() -> dict[object, object]:
        CURRENT_GATE.set(gate)  # type: ignore[arg-type]  # as broker.py's _serve sets it, per connection
        return await PluginManager._map_plugin_method([Plugin()], "authenticate", {"session": None})

    assert list(asyncio.run(one_connection()).values()) == [True]


def test_external_connected_hands_the_stream_to_amqtts_own_session_handling() -> None:
    """The front (broker.py) gives amqtt each admitted connection through ``external_connected`` with the name of
    the listener it came in on; amqtt runs it as one of its own listeners' connections."""
    assert _params(Broker.external_connected) == ["self", "reader", "writer", "listener_name"]
    assert "await self._client_connected(listener_name, reader, writer)" in _source(Broker.external_connected)
    assert "server = self._servers.get(listener_name)" in _source(Broker._client_connected)
