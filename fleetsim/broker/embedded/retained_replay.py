"""Retained messages sent to a new subscription without stalling the broker, and kept within their limits.

What amqtt 0.12 does at a SUBSCRIBE (``Broker._handle_subscription``): SUBACK, then for each granted filter
``_publish_retained_messages_for_subscription``, which matches the filter against every retained message on the
loop and starts one task per match. ``RetainedReplay`` (a Broker amqtt_fixes builds on) changes that:

* the granted filters of one SUBSCRIBE are gathered and replayed together: each retained topic is sent once, at the
  highest QoS of the filters matching it, capped by the message's own (amqtt's ``retained.qos or qos`` sent a QoS 0
  message at the filter's QoS), not once per filter;
* the topics come from the store's trie (``retained``), walked a slice at a time, and the messages go out a slice at
  a time; between slices the loop runs everybody else, and the client's ``ReplayBudget`` (work per second) and the
  unsent bytes of its connection (``unsent_of``, set by the front) pace the next slice;
* ``retain_message`` asks the store first: a retained PUBLISH past its limits is delivered live, not kept, and
  counted (``on_refused``, set by the front).

The contract tests (tests/test_amqtt_contract.py) fail when amqtt stops calling these methods this way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from amqtt.broker import Broker
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

from fleetsim.broker.embedded.retained import Limits, ReplayBudget, RetainedStore
from fleetsim.broker.handle import BrokerOptions

WALK_SLICE = 2_000  # trie nodes walked between two turns of the loop (~1 ms)
SEND_SLICE = 64  # messages started between two turns of the loop ...
SEND_SLICE_BYTES = 256 * 1024  # ... or this many payload bytes
REPLAY_RATE = 50_000.0  # work (trie nodes + messages) per second one client id's replays may take past ...
REPLAY_BURST = 200_000.0  # ... this much at once: a device's own replay is ~1,000, a monitor's "#" over 50,000
ROOM_POLL_S = 0.005
PACE_POLL_S = 0.1  # a replay waiting for its budget looks this often whether its client is still connected  # how often a paced replay looks at its connection's unsent bytes again
# The filters of the SUBSCRIBE being handled in this task, gathered for one replay (None: not in a SUBSCRIBE).
_GATHERING: ContextVar[dict[str, int] | None] = ContextVar("fleetsim_retained_gathering", default=None)


class RetainedReplay(Broker):
    """amqtt's Broker with an indexed, bounded retained store and a paced replay (module docstring)."""

    def __init__(self, *args: Any, limits: Limits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._retained_messages = RetainedStore(limits or Limits.of(BrokerOptions()))
        self.replay_budget = ReplayBudget(REPLAY_RATE, REPLAY_BURST)
        self.unsent_of: Callable[[str], int] = lambda client_id: 0  # the front: bytes a connection holds unsent
        self.room = 512 * 1024  # a replay waits while its connection holds more than this unsent
        self.on_refused: Callable[[str, str, str], None] = lambda owner, topic, reason: None

    @property
    def retained_store(self) -> RetainedStore:
        store = self._retained_messages
        assert isinstance(store, RetainedStore)
        return store

    async def retain_message(self, source_session: Session | None, topic_name: str | None,
                             data: bytes | bytearray | None, qos: int | None = None) -> None:
        if data and topic_name is not None:
            owner = source_session.client_id if source_session is not None else ""
            reason = self.retained_store.refusal(owner or "", topic_name, len(data))
            if reason is not None:
                self.on_refused(owner or "", topic_name, reason)
                return
        await super().retain_message(source_session, topic_name, data, qos)

    async def _handle_subscription(self, client_session: Session, handler: BrokerProtocolHandler,
                                   subscribe_waiter: asyncio.Future[Any]) -> None:
        gathered: dict[str, int] = {}
        token = _GATHERING.set(gathered)
        try:
            await super()._handle_subscription(client_session, handler, subscribe_waiter)
        finally:
            _GATHERING.reset(token)
        if gathered:
            await self.replay(gathered, client_session)

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Session) -> None:
        topic_filter, qos = subscription
        gathering = _GATHERING.get()
        if gathering is None:
            await self.replay({topic_filter: qos}, session)
        else:
            gathering[topic_filter] = max(gathering.get(topic_filter, 0), qos)

    async def replay(self, filters: dict[str, int], session: Session) -> None:
        """The retained messages ``filters`` (filter -> granted QoS) match, each once, at its highest QoS."""
        best = await self._matching(filters, session)
        if best:
            await self._send(best, session)

    async def _matching(self, filters: dict[str, int], session: Session) -> dict[str, int]:
        best: dict[str, int] = {}
        walked = 0
        for topic_filter, qos in filters.items():
            for topic in self.retained_store.walk(topic_filter):
                walked += 1
                if topic is not None and best.get(topic, -1) < qos:
                    best[topic] = qos
                if walked >= WALK_SLICE:
                    await self._pace(session, walked)
                    walked = 0
                    if session.transitions.state != "connected":
                        return {}
        await self._pace(session, walked + len(best))
        return best

    async def _send(self, best: dict[str, int], session: Session) -> None:
        sending: list[asyncio.Future[Any]] = []
        size = 0
        for topic, qos in best.items():
            handler = self._get_handler(session)
            message = self.retained_store.get(topic)
            if handler is None or session.transitions.state != "connected":
                break
            if message is None:  # cleared since the walk
                continue
            published = message.qos if message.qos is not None else qos  # amqtt's "or" made QoS 0 the filter's
            sending.append(asyncio.ensure_future(handler.mqtt_publish(
                message.topic, message.data, min(qos, published), retain=True)))
            size += len(message.data)
            if len(sending) >= SEND_SLICE or size >= SEND_SLICE_BYTES:
                await self._sent(sending, session)
                sending, size = [], 0
        if sending:
            await self._sent(sending, session)

    async def _sent(self, sending: list[asyncio.Future[Any]], session: Session) -> None:
        """A slice's deliveries done (QoS 1/2: acknowledged), then room on the connection for the next."""
        await asyncio.wait(sending)
        client_id = session.client_id or ""
        while self.unsent_of(client_id) > self.room and session.transitions.state == "connected":
            await asyncio.sleep(ROOM_POLL_S)

    async def _pace(self, session: Session, work: int) -> None:
        """A turn of the loop for everybody else, and the client's budget: past it, wait."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.replay_budget.take(session.client_id or "", work, loop.time())
        await asyncio.sleep(0)
        while loop.time() < until and session.transitions.state == "connected":  # a client gone ends its wait
            await asyncio.sleep(min(until - loop.time(), PACE_POLL_S))

