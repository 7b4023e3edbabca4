"""The amqtt internals the embedded broker relies on (amqtt 0.12), so a release that changes them fails here first.

fleetsim.broker.subscriptions replaces ``Broker._subscriptions`` and ``Broker._broadcast_queue`` (to route a message
through the filters that can match it, and to count each client id's subscriptions); fleetsim.broker.outbound
judges each packet amqtt writes whole; the front's hold reads a session's ``delivered_message_queue``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re

from amqtt.broker import Broker
from amqtt.mqtt.publish import PublishPacket
from hypothesis import given, settings
from hypothesis import strategies as st
from mqtt_raw import connect, field, packet, publish, subscribe

from fleetsim.broker.embedded import EmbeddedBroker
from fleetsim.broker.handle import BrokerOptions
from fleetsim.broker.subscriptions import FilterTrie, SubscriptionTable
from fleetsim.pki import Pki


def _body(func: object) -> str:
    return re.sub(r"\s+", " ", inspect.getsource(func))  # type: ignore[arg-type]


def test_amqtt_routes_each_message_through_one_items_call_right_after_taking_it() -> None:
    route = _body(Broker._run_broadcast)
    take = "broadcast = await self._broadcast_queue.get()"
    taken, walk = route.index(take) + len(take), route.index("for k_filter, subscriptions in self._subscriptions.items():")
    assert taken < walk and "await" not in route[taken:walk], "something runs between take and routing"
    assert route.count("_subscriptions") == 1 and "self._matches(broadcast[\"topic\"], k_filter)" in route
    assert "self._subscriptions: dict" in _body(Broker.__init__) and "self._broadcast_queue" in _body(Broker.__init__)
    assert "self._subscriptions =" not in _body(Broker.start)  # cleared, never replaced, at start
    assert "self._broadcast_queue =" not in _body(Broker.start)


def test_amqtt_adds_and_removes_subscribers_only_by_append_and_pop() -> None:
    add, remove = _body(Broker.add_subscription), _body(Broker._del_subscription)
    assert "self._subscriptions[topic_filter] = []" in add and "self._subscriptions[topic_filter].append(" in add
    assert "subscriptions.pop(index)" in remove
    source = inspect.getsource(inspect.getmodule(Broker))  # type: ignore[arg-type]
    assert len(re.findall(r"_subscriptions\[[^\]]+\]\.(\w+)\(", source)) == 1  # the append above, nothing else


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
            got = [await asyncio.wait_for(_read(reader), 2) for _ in range(2)]  # amqtt: once per matching filter
            assert [kind for kind, _ in got] == [3, 3] and shown == [2]  # two candidates shown, not four
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
    """fleetsim.broker.outbound judges a packet by its first byte and size: it must see whole packets."""
    writes: list[bytes] = []

    class Recorder:
        def write(self, data: bytes) -> None:
            writes.append(bytes(data))

        async def drain(self) -> None:
            pass

    message = PublishPacket.build("t/x", b"y" * 70_000, None, False, 0, False)
    asyncio.run(message.to_stream(Recorder()))
    assert len(writes) == 1 and writes[0] == message.to_bytes() and writes[0][0] == 0x30
