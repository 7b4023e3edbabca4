"""amqtt's subscription table, indexed: a publish is matched against the filters that can match its topic, not
against every filter of every device, and each client id's subscriptions are counted for its limit.

Why: amqtt 0.12 routes each message by walking its whole table (``for k_filter, ... in _subscriptions.items()``,
``_matches`` on each), so one device holding 84,000 filters raised every other device's publish-to-PUBACK
median from 0.28 ms to 27.6 ms. This layer is the only place fleetsim reaches into amqtt's routing, and it
changes no decision of amqtt's, only which filters it is shown:

* ``SubscriptionTable`` replaces ``Broker._subscriptions`` (a dict filter -> [(session, qos)]). It keeps a trie
  of the filters' levels beside the dict; ``items()`` right after a broadcast was taken off the queue returns
  only the filters that match that topic (amqtt still runs ``_matches`` on each), and each subscriber once
  (``once_per_client``): amqtt delivers once per (filter, subscriber), so a device holding 1,000 overlapping
  filters got 1,000 copies of each message; here it gets one, at the highest QoS of its matching filters (3.3.5,
  what Mosquitto does). Any other ``items()`` is the whole table, as a list (amqtt awaits inside that loop:
  iterating the live dict could fail with "dictionary changed size during iteration", which it did under load).
* ``FocusQueue`` replaces ``Broker._broadcast_queue``: its ``get`` tells the table which topic is being routed.
* the subscriber lists are ``Subscribers``, whose ``append``/``pop`` (amqtt's only ways to add and remove a
  subscriber) keep a count per client id, which ``held`` / ``holds`` read for the per-device limit.

tests/test_amqtt_contract.py fails if amqtt stops using its table this way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, SupportsIndex

from amqtt.broker import Broker
from amqtt.session import Session

Entry = tuple[Session, int]


class _Node:
    __slots__ = ("children", "filter")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.filter: str | None = None  # the filter ending at this node


class FilterTrie:
    """Topic filters by level; ``candidates(topic)`` walks only the branches the topic's levels can follow."""

    def __init__(self) -> None:
        self._root = _Node()

    def add(self, topic_filter: str) -> None:
        node = self._root
        for level in topic_filter.split("/"):
            node = node.children.setdefault(level, _Node())
        node.filter = topic_filter

    def remove(self, topic_filter: str) -> None:
        path, node = [], self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return
            path.append((node, level))
            node = child
        node.filter = None
        for parent, level in reversed(path):  # prune the branch it leaves empty
            child = parent.children[level]
            if child.filter is not None or child.children:
                break
            del parent.children[level]

    def candidates(self, topic: str) -> list[str]:
        """Every filter that matches ``topic`` by its levels (4.7; the ``$`` rule is left to amqtt's check)."""
        found: list[str] = []
        self._walk(self._root, topic.split("/"), 0, found)
        return found

    def _walk(self, node: _Node, levels: list[str], i: int, found: list[str]) -> None:
        rest = node.children.get("#")
        if rest is not None and rest.filter is not None:
            found.append(rest.filter)  # "#" also matches its parent level: "a/#" matches "a"
        if i == len(levels):
            if node.filter is not None:
                found.append(node.filter)
            return
        for key in (levels[i], "+"):
            child = node.children.get(key)
            if child is not None:
                self._walk(child, levels, i + 1, found)


class Subscribers(list[Entry]):
    """One filter's subscribers; tells the table of each added and removed client id."""

    def __init__(self, table: SubscriptionTable, topic_filter: str, entries: Iterable[Entry] = ()) -> None:
        super().__init__()
        self._table, self._filter = table, topic_filter
        for entry in entries:
            self.append(entry)

    def append(self, entry: Entry) -> None:
        super().append(entry)
        self._table._added(entry[0].client_id, self._filter)

    def pop(self, index: SupportsIndex = -1) -> Entry:
        entry = super().pop(index)
        self._table._removed(entry[0].client_id, self._filter)
        return entry


class SubscriptionTable(dict[str, list[Entry]]):
    """amqtt's ``_subscriptions`` with a trie of its filters and a count per client id (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._trie = FilterTrie()
        self._by_client: dict[str, set[str]] = {}
        self._focus: str | None = None

    # what amqtt does to its table
    def __setitem__(self, topic_filter: str, entries: list[Entry]) -> None:
        if topic_filter in self:
            self._forget(topic_filter)
        super().__setitem__(topic_filter, Subscribers(self, topic_filter))
        self._trie.add(topic_filter)
        for entry in entries:
            self[topic_filter].append(entry)

    def __delitem__(self, topic_filter: str) -> None:
        self._forget(topic_filter)
        super().__delitem__(topic_filter)

    def clear(self) -> None:
        super().clear()
        self._trie, self._by_client, self._focus = FilterTrie(), {}, None

    def items(self) -> list[tuple[str, list[Entry]]]:  # type: ignore[override]
        """The whole table as a list; right after a broadcast was taken, only that topic's candidate filters."""
        topic, self._focus = self._focus, None
        if topic is None:
            return list(super().items())
        return once_per_client(topic, [(f, self[f]) for f in self._trie.candidates(topic)])

    def focus(self, topic: str | None) -> None:
        """The next ``items()`` serves amqtt's routing of ``topic``."""
        self._focus = topic

    # the per-client count
    def held(self, client_id: str) -> int:
        return len(self._by_client.get(client_id, ()))

    def holds(self, client_id: str, topic_filter: str) -> bool:
        return topic_filter in self._by_client.get(client_id, ())

    def _added(self, client_id: str | None, topic_filter: str) -> None:
        self._by_client.setdefault(client_id or "", set()).add(topic_filter)

    def _removed(self, client_id: str | None, topic_filter: str) -> None:
        held = self._by_client.get(client_id or "")
        if held is not None:
            held.discard(topic_filter)
            if not held:
                del self._by_client[client_id or ""]

    def _forget(self, topic_filter: str) -> None:
        for session, _ in super().__getitem__(topic_filter):
            self._removed(session.client_id, topic_filter)
        self._trie.remove(topic_filter)


def once_per_client(topic: str, candidates: list[tuple[str, list[Entry]]]) -> list[tuple[str, list[Entry]]]:
    """The filters that match ``topic`` with their subscribers, each client id under one of them only (its first),
    at the highest QoS of its matching filters. A filter starting with a wildcard does not match a "$" topic
    (4.7.2-1): amqtt would skip it, and the subscriber with it."""
    best: dict[object, tuple[str, Entry]] = {}
    for topic_filter, entries in candidates:
        if topic.startswith("$") and topic_filter.startswith(("+", "#")):
            continue
        for session, qos in entries:
            key = session.client_id or id(session)
            held = best.get(key)
            if held is None:
                best[key] = (topic_filter, (session, qos))
            elif qos > held[1][1]:
                best[key] = (held[0], (session, qos))
    grouped: dict[str, list[Entry]] = {}
    for topic_filter, entry in best.values():
        grouped.setdefault(topic_filter, []).append(entry)
    return list(grouped.items())


class FocusQueue(asyncio.Queue[dict[str, Any]]):
    """amqtt's broadcast queue: taking a message off it points the table at the message's topic."""

    def __init__(self, table: SubscriptionTable) -> None:
        super().__init__()
        self._table = table

    async def get(self) -> dict[str, Any]:
        broadcast = await super().get()
        self._table.focus(broadcast.get("topic"))
        return broadcast


def install(broker: Broker) -> SubscriptionTable:
    """Put the indexed table and its queue into a Broker not yet started; returns the table."""
    table = SubscriptionTable()
    broker._subscriptions = table
    broker._broadcast_queue = FocusQueue(table)
    return table
