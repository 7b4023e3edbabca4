"""amqtt's retained messages, indexed by topic level and bounded per device and in all.

Why: amqtt 0.12 keeps retained messages in a plain dict and, for every filter of a SUBSCRIBE, runs its matcher
over every retained message, synchronously on the broker's loop (``Broker._publish_retained_messages_for_
subscription``). One device holding 10,000 small retained messages and sending one SUBSCRIBE of 1,000 filters
under its own subtree stalled every device for 14.5 s (~1.2 us per filter x message), and nothing bounded how many
retained messages a device could leave in the broker. Here (pure logic; the sending is ``retained_replay``'s):

* ``RetainedStore`` replaces ``Broker._retained_messages`` (a dict topic -> message). Beside the dict it keeps a trie
  of the topics' levels, which a filter walks (``walk``): the work is the trie nodes the filter can reach, not every
  retained message. It also charges each message to the client id that published it (its topic, its payload and
  ``OVERHEAD`` bytes for the objects that hold it), so ``refusal`` can refuse a retained PUBLISH past the limits:
  ``Limits.per_client`` topics and ``Limits.per_client_bytes`` bytes per client id, ``Limits.total_bytes`` for
  the whole broker. A device publishes under its own subtree only (the front's topic rules), so its share is its own.
* ``ReplayBudget``: the work one client id may have the broker do for it in retained replays (trie nodes walked
  plus messages sent), a token bucket. Subscribing again to a filter it holds replays its retained messages again
  (3.8.4 wants that), so it is not a free way to repeat the work: past the budget the replay waits, which delays
  only that client's own SUBSCRIBE handling.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fleetsim.broker.handle import RETAINED_BYTES_PER_TOPIC, BrokerOptions

OVERHEAD = 640  # bytes charged per retained message besides its topic and payload: amqtt's message object, the
# dict slot, the trie node holding it, the charge (measured: 10,000 retained messages of 5 bytes on 37-byte topics
# grew the broker 6.7 MB; amqtt's plain dict alone grew it 2.3-3.0 MB)
WALK = -1  # a trie walk's position meaning "everything below" (a "#" was reached)


@dataclass(frozen=True)
class Limits:
    """What the store may hold (see BrokerOptions: max_retained_per_client, max_retained_bytes)."""

    per_client: int  # retained topics one client id may hold
    per_client_bytes: int  # bytes charged to one client id
    total_bytes: int  # bytes charged in all

    @classmethod
    def of(cls, options: BrokerOptions) -> Limits:
        return cls(options.max_retained_per_client, options.max_retained_per_client * RETAINED_BYTES_PER_TOPIC,
                   options.max_retained_bytes)


class _Node:
    __slots__ = ("children", "topic")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.topic: str | None = None  # the retained topic ending at this node


class TopicTrie:
    """Retained topics by level; ``walk(filter)`` visits only the nodes the filter's levels can follow (4.7)."""

    def __init__(self) -> None:
        self._root = _Node()

    def add(self, topic: str) -> None:
        node = self._root
        for level in topic.split("/"):
            node = node.children.setdefault(level, _Node())
        node.topic = topic

    def remove(self, topic: str) -> None:
        path, node = [], self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                return
            path.append((node, level))
            node = child
        node.topic = None
        for parent, level in reversed(path):  # prune the branch it leaves empty
            child = parent.children[level]
            if child.topic is not None or child.children:
                break
            del parent.children[level]

    def walk(self, topic_filter: str) -> Iterator[str | None]:
        """The topics ``topic_filter`` matches, with a None for every node visited: the walk's cost, for the caller
        to pace itself by. Iterative (a deep topic cannot exhaust the stack) and safe to suspend: the trie may
        change between two steps (a node's children are taken in one step; a topic gone since is the caller's to
        skip). A filter starting with a wildcard does not match topics starting with "$" (4.7.2-1)."""
        levels = topic_filter.split("/")
        stack: list[tuple[_Node, int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            yield None
            if i == WALK or (i < len(levels) and levels[i] == "#"):
                if node.topic is not None:
                    yield node.topic  # "#" matches its parent level too: "a/#" matches "a"
                stack.extend((child, WALK) for key, child in node.children.items()
                             if not (i == 0 and key.startswith("$")))
            elif i == len(levels):
                if node.topic is not None:
                    yield node.topic
            elif levels[i] == "+":
                stack.extend((child, i + 1) for key, child in node.children.items()
                             if not (i == 0 and key.startswith("$")))
            elif (child := node.children.get(levels[i])) is not None:
                stack.append((child, i + 1))


class RetainedStore(dict[str, Any]):
    """amqtt's ``_retained_messages`` with a topic trie and a charge per publishing client id (module docstring)."""

    def __init__(self, limits: Limits) -> None:
        super().__init__()
        self.limits = limits
        self._trie = TopicTrie()
        self._charge: dict[str, tuple[str, int]] = {}  # topic -> (client id, bytes charged)
        self._topics_of: dict[str, int] = {}
        self._bytes_of: dict[str, int] = {}
        self.bytes = 0

    # what amqtt does to its dict
    def __setitem__(self, topic: str, message: Any) -> None:
        if topic in self:
            self._forget(topic)
        super().__setitem__(topic, message)
        self._trie.add(topic)
        owner, charge = owner_of(message), cost(topic, len(message.data or b""))
        self._charge[topic] = (owner, charge)
        self._topics_of[owner] = self._topics_of.get(owner, 0) + 1
        self._bytes_of[owner] = self._bytes_of.get(owner, 0) + charge
        self.bytes += charge

    def __delitem__(self, topic: str) -> None:
        self._forget(topic)
        super().__delitem__(topic)

    def clear(self) -> None:
        super().clear()
        self._trie, self._charge, self._topics_of, self._bytes_of, self.bytes = TopicTrie(), {}, {}, {}, 0

    def walk(self, topic_filter: str) -> Iterator[str | None]:
        return self._trie.walk(topic_filter)

    # the limits
    def refusal(self, owner: str, topic: str, size: int) -> str | None:
        """Why retaining ``size`` bytes on ``topic`` for ``owner`` would break a limit, or None when it fits. A
        message replacing one on the same topic is judged with the old one's charge given back."""
        old_owner, old_charge = self._charge.get(topic, ("", 0))
        mine = old_owner == owner and topic in self._charge
        topics = self._topics_of.get(owner, 0) + (0 if mine else 1)
        owned = self._bytes_of.get(owner, 0) - (old_charge if mine else 0) + cost(topic, size)
        if topics > self.limits.per_client:
            return "retained topics over the client's limit"
        if owned > self.limits.per_client_bytes:
            return "retained bytes over the client's limit"
        if self.bytes - old_charge + cost(topic, size) > self.limits.total_bytes:
            return "retained bytes over the broker's limit"
        return None

    def held_by(self, owner: str) -> tuple[int, int]:
        """(topics, bytes charged) of one client id."""
        return self._topics_of.get(owner, 0), self._bytes_of.get(owner, 0)

    def _forget(self, topic: str) -> None:
        owner, charge = self._charge.pop(topic, ("", 0))
        for held, amount in ((self._topics_of, 1), (self._bytes_of, charge)):
            left = held.get(owner, 0) - amount
            if left > 0:
                held[owner] = left
            else:
                held.pop(owner, None)
        self.bytes -= charge
        self._trie.remove(topic)


def cost(topic: str, size: int) -> int:
    """Bytes one retained message is charged: its topic, its payload and the broker's objects holding it."""
    return len(topic.encode()) + size + OVERHEAD


def owner_of(message: Any) -> str:
    """The client id that published an amqtt retained message ("" for the broker's own)."""
    session = getattr(message, "source_session", None)
    return str(getattr(session, "client_id", "") or "")


class ReplayBudget:
    """A token bucket per client id of retained-replay work (module docstring). Pure: the time is given."""

    MAX_CLIENTS = 10_000  # past this many buckets, full ones (idle clients) are forgotten

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # client id -> (tokens, when)

    def take(self, client_id: str, work: float, now: float) -> float:
        """Spend ``work``; returns how long the client's replay should wait first (0: at once)."""
        tokens, when = self._buckets.get(client_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate) - work
        if len(self._buckets) >= self.MAX_CLIENTS and client_id not in self._buckets:
            self._forget_idle(now)
        self._buckets[client_id] = (tokens, now)
        return max(0.0, -tokens / self.rate)

    def _forget_idle(self, now: float) -> None:
        for client_id, (tokens, when) in list(self._buckets.items()):
            if tokens + (now - when) * self.rate >= self.burst:
                del self._buckets[client_id]
