"""What one session may hold of the QoS 1/2 messages it is sent: a window in flight, a bounded queue behind it.

Why: amqtt 0.12 gives up a QoS 1/2 message a connected client leaves unacknowledged for 5 s (never sent again, a
QoS 1 alarm to a stalled nurse station lost: MQTT-4.4.0-1 says it is resent on resume), and queues for an offline
persistent session without bound (a monitor offline on ``#`` grew the broker ~1 MB per MB published), then sends the
whole queue at once on resume, past the outbound bound (``outbound``), so the device was closed as a slow consumer
again and again. Mosquitto's rules, which this follows:

* at most ``max_inflight`` (Mosquitto's ``max_inflight_messages``, 20) outgoing QoS 1/2 messages await their
  acknowledgement per session; each stays in flight, however long, until acknowledged, and is resent with DUP when
  the session resumes;
* further messages, and every one that arrives while the client is offline, wait in the session's ``Outbox``,
  bounded by ``max_messages`` (``max_queued_messages``, 1,000) and ``max_bytes``; past either a message is dropped
  and counted (Mosquitto drops likewise);
* the outbox is sent as the window frees and only while the connection's unsent bytes leave room
  (``outbound.paced``): a return to more than ``max_queued_bytes`` queued is delivered in one connection.

The same window bounds the other direction: incoming QoS 2 messages awaiting their PUBREL (a device that never
sends it held each one, 65,535 x 64 KiB per device); past ``max_inflight`` the connection is closed (Mosquitto
2.0.11 holds 20 too, then answers PUBREC to the others without keeping them).

Pure bookkeeping (no I/O); ``amqtt_fixes`` drives it from amqtt's protocol handler.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

from fleetsim.broker.handle import (
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_MAX_QUEUED_MESSAGES,
    DEFAULT_MAX_SESSION_QUEUE_BYTES,
)

OUTBOX_KEY = "fleetsim.outbox"  # where a session keeps its outbox (amqtt's Session.attributes)


@dataclass(frozen=True)
class QueueBounds:
    """Per session: messages in flight each way, and what may wait behind them."""

    max_inflight: int = DEFAULT_MAX_INFLIGHT
    max_messages: int = DEFAULT_MAX_QUEUED_MESSAGES
    max_bytes: int = DEFAULT_MAX_SESSION_QUEUE_BYTES


@dataclass(frozen=True)
class Queued:
    """A QoS 1/2 message waiting for a place in its session's in-flight window."""

    topic: str
    data: bytes | bytearray
    qos: int
    retain: bool

    @property
    def size(self) -> int:
        """What it costs the queue: payload and topic (the PUBLISH is a few bytes more)."""
        return len(self.data) + len(self.topic)


def admits(count: int, nbytes: int, size: int, bounds: QueueBounds) -> bool:
    """Whether a queue holding ``count`` messages of ``nbytes`` takes one more of ``size``."""
    return count < bounds.max_messages and nbytes + size <= bounds.max_bytes


def window_open(in_flight: int, bounds: QueueBounds) -> bool:
    return in_flight < bounds.max_inflight


class Outbox:
    """One session's queue (see the module docstring). ``wake`` is set whenever the queue's sender may be able to
    send again: a message came, or one in flight was acknowledged."""

    def __init__(self, bounds: QueueBounds) -> None:
        self.bounds = bounds
        self._messages: deque[Queued] = deque()
        self._bytes = 0
        self.wake = asyncio.Event()

    def offer(self, message: Queued) -> bool:
        """Queue ``message``; False (and not queued) when the queue is full."""
        if not admits(len(self._messages), self._bytes, message.size, self.bounds):
            return False
        self._messages.append(message)
        self._bytes += message.size
        self.wake.set()
        return True

    def peek(self) -> Queued | None:
        return self._messages[0] if self._messages else None

    def take(self) -> Queued:
        message = self._messages.popleft()
        self._bytes -= message.size
        return message

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def nbytes(self) -> int:
        return self._bytes


def outbox_of(attributes: dict[str, Any], bounds: QueueBounds) -> Outbox:
    """The outbox kept in a session's attributes, made at first use (it lives as long as the session)."""
    outbox = attributes.get(OUTBOX_KEY)
    if not isinstance(outbox, Outbox):
        outbox = attributes[OUTBOX_KEY] = Outbox(bounds)
    return outbox
