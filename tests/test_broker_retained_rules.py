"""The pure rules behind the embedded broker's retained store, its replay budget, its routing once per subscriber and
the clock its keepalive check reads (fleetsim.broker.embedded.retained, subscriptions, loop_clock). No sockets."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from amqtt.broker import Broker
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetsim.broker.embedded.loop_clock import LoopClock
from fleetsim.broker.embedded.retained import OVERHEAD, Limits, ReplayBudget, RetainedStore, TopicTrie, cost
from fleetsim.broker.embedded.subscriptions import once_per_client

BARE = Broker.__new__(Broker)  # only for its _matches, amqtt's own rule
BARE.logger = logging.getLogger("retained-rules")
atoms = st.sampled_from(["a", "b", "", "$SYS", "x"])
topics = st.lists(atoms, min_size=1, max_size=4).map("/".join)
filters = st.lists(st.sampled_from(["a", "b", "", "+", "x", "$SYS"]), min_size=1, max_size=4).flatmap(
    lambda ls: st.sampled_from(["/".join(ls), "/".join([*ls, "#"]), "#"]))


@settings(max_examples=500, deadline=None)
@given(st.lists(topics, max_size=10, unique=True), filters)
def test_the_topic_trie_finds_exactly_what_amqtt_matches(retained: list[str], topic_filter: str) -> None:
    trie = TopicTrie()
    for t in retained:
        trie.add(t)
    found = [t for t in trie.walk(topic_filter) if t is not None]
    assert sorted(found) == sorted(t for t in retained if Broker._matches(BARE, t, topic_filter))
    for t in retained:
        trie.remove(t)
    assert [t for t in trie.walk("#") if t is not None] == []


def test_a_filter_walks_only_what_it_can_reach() -> None:
    trie = TopicTrie()
    for device in range(100):
        for i in range(100):
            trie.add(f"fleet/s/m/dev-{device}/r/{i}")
    visited = sum(1 for t in trie.walk("fleet/+/+/dev-7/f1/#") if t is None)
    assert visited < 10  # root, fleet, s, m, dev-7: not the 10,000 retained topics


@dataclass
class Session:
    client_id: str


@dataclass
class Message:
    source_session: Session | None
    data: bytes
    qos: int = 0


LIMITS = Limits(per_client=3, per_client_bytes=3 * (OVERHEAD + 100), total_bytes=5 * (OVERHEAD + 100))


def put(store: RetainedStore, owner: str, topic: str, size: int = 10) -> str | None:
    """What the broker does: ask, then store if it fits."""
    reason = store.refusal(owner, topic, size)
    if reason is None:
        store[topic] = Message(Session(owner), b"x" * size)
    return reason


def test_the_store_caps_topics_and_bytes_per_client_and_in_all() -> None:
    store = RetainedStore(LIMITS)
    assert [put(store, "a", f"a/{i}") for i in range(3)] == [None] * 3
    assert put(store, "a", "a/3") == "retained topics over the client's limit"
    assert put(store, "a", "a/0", size=20) is None  # replacing one it holds: no new topic
    del store["a/1"]  # cleared: its place is free again
    assert put(store, "a", "a/3") is None
    assert store.held_by("a") == (3, cost("a/0", 20) + cost("a/2", 10) + cost("a/3", 10))
    assert put(store, "b", "b/big", size=3 * (OVERHEAD + 100)) == "retained bytes over the client's limit"
    assert put(store, "b", "b/0") is None and put(store, "b", "b/1") is None
    assert put(store, "c", "c/0", size=100) == "retained bytes over the broker's limit"
    assert len(store) == 5 and store.bytes == sum(store.held_by(o)[1] for o in "abc")
    store.clear()
    assert store.bytes == 0 and store.held_by("a") == (0, 0) and list(store.walk("#")) == [None]


def test_the_replay_budget_lets_a_burst_through_then_paces() -> None:
    budget = ReplayBudget(rate=1000, burst=5000)
    assert budget.take("a", 4000, now=0.0) == 0
    assert budget.take("a", 2000, now=0.0) == 1.0  # 1,000 short at 1,000 a second
    assert budget.take("b", 5000, now=0.0) == 0  # another client's budget is its own
    assert budget.take("a", 1000, now=3.0) == 0  # refilled meanwhile


def test_routing_gives_each_subscriber_one_copy_at_its_highest_qos() -> None:
    a, b = Session("a"), Session("b")
    routed = once_per_client("x/y", [("x/#", [(a, 0), (b, 1)]), ("x/+", [(a, 2)]), ("x/y", [(b, 0)])])
    assert routed == [("x/#", [(a, 2), (b, 1)])]
    dollar = once_per_client("$SYS/x", [("#", [(a, 1)]), ("$SYS/#", [(a, 0)])])
    assert dollar == [("$SYS/#", [(a, 0)])]  # "#" does not match a $ topic: not the one it goes under


class FakeTime:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_the_loop_clock_does_not_count_a_stall() -> None:
    now = FakeTime()
    clock = LoopClock(now, tick_s=0.1)
    start = clock.available()
    now.t += 0.1
    clock.tick()  # on time
    now.t += 3.0  # the loop blocked: the next tick is 2.9 s late
    assert clock.available() - start < 0.3  # overdue already counts, before the tick runs
    clock.tick()
    assert clock.available() - start < 0.3
    now.t += 1.0
    clock.tick()  # 0.9 s late (ticks are 0.1 s apart): also taken off
    now.t += 0.1
    clock.tick()
    assert 0.25 < clock.available() - start < 0.45
